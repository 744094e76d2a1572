//! Any bytes as a KV-event payload: never panics; what decodes re-encodes and decodes to the
//! same batch (in both layouts).
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmd_kv_index::events::{Layout, decode_batch, encode_batch};

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = decode_batch(data) {
        for layout in [Layout::Map, Layout::Array] {
            let again =
                decode_batch(&encode_batch(&batch, layout)).expect("our own encoding decodes");
            assert_eq!(again.events, batch.events);
        }
    }
});
