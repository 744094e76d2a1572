//! Any frames as a ZMQ message: never panics. The input is split into up to 4 frames at
//! the positions its first bytes name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmd_kv_index::events::{decode_message, parse_topic};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let n = usize::from(data[0] % 5);
    let mut cuts: Vec<usize> = data[1..3]
        .iter()
        .map(|b| 3 + usize::from(*b) % (data.len() - 2))
        .collect();
    cuts.sort_unstable();
    let body = &data[3..];
    let mut frames: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for c in cuts.iter().map(|c| (c - 3).min(body.len())) {
        frames.push(&body[start.min(c)..c]);
        start = c;
    }
    frames.push(&body[start.min(body.len())..]);
    frames.truncate(n);
    if let Ok(msg) = decode_message(&frames) {
        let _ = parse_topic(&msg.topic);
    }
});
