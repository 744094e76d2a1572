//! Encoding event batches exactly as vLLM's msgspec encoder does, for the simulator and tests.
//!
//! msgspec writes every integer, string, array and map head in its shortest form, the batch as
//! a 3-element array, and events in one of two layouts:
//!
//! - [`Layout::Map`] (vLLM 0.33): `{"type": tag, <required fields, nil if unset>, <optional
//!   fields only when set>}`. The map head's width follows the number of *declared* fields + 1:
//!   map16 for `BlockStored` (15 declared fields in 0.33), fixmap for the others.
//! - [`Layout::Array`] (vLLM 0.23): `[tag, every declared field, nil if unset]`.
//!
//! The unit tests re-encode vLLM's own payloads from `testdata/` and compare bytes.

use rmp::encode as enc;

use super::{BlockRemoved, BlockStored, EventBatch, KvEvent, WireValue};
use crate::hashing::BlockKey;

/// Event layout, i.e. which vLLM generation to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Layout {
    /// Tagged maps (vLLM >= 0.25; byte-exact with 0.33).
    #[default]
    Map,
    /// Positional arrays (vLLM <= 0.23; byte-exact with 0.23).
    Array,
}

/// Encodes a batch as vLLM would put it in the payload frame.
pub fn encode_batch(batch: &EventBatch, layout: Layout) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + batch.events.len() * 64);
    // Writes to a Vec cannot fail.
    let _ = enc::write_array_len(&mut out, 3);
    let _ = enc::write_f64(&mut out, batch.ts);
    let _ = enc::write_array_len(&mut out, batch.events.len() as u32);
    for event in &batch.events {
        match layout {
            Layout::Map => map_event(&mut out, event),
            Layout::Array => array_event(&mut out, event),
        }
    }
    opt_int(&mut out, batch.data_parallel_rank);
    out
}

/// The three frames of one ZMQ message.
pub fn encode_message(topic: &str, seq: u64, batch: &EventBatch, layout: Layout) -> [Vec<u8>; 3] {
    [
        topic.as_bytes().to_vec(),
        seq.to_be_bytes().to_vec(),
        encode_batch(batch, layout),
    ]
}

/// Declared fields of `BlockStored` in vLLM 0.33 (the map head width depends on it).
const BLOCK_STORED_DECLARED_0_33: u32 = 15;

fn map_event(out: &mut Vec<u8>, event: &KvEvent) {
    match event {
        KvEvent::BlockStored(e) => {
            let optional = [
                e.extra_keys.is_some(),
                e.group_idx.is_some(),
                e.kv_cache_spec_kind.is_some(),
                e.kv_cache_spec_sliding_window.is_some(),
            ];
            let entries = 1 + 7 + optional.iter().filter(|x| **x).count() as u32;
            map_head(out, BLOCK_STORED_DECLARED_0_33 + 1, entries);
            str(out, "type");
            str(out, "BlockStored");
            stored_required(out, e, true);
            if let Some(v) = &e.extra_keys {
                str(out, "extra_keys");
                values(out, v);
            }
            if let Some(v) = e.group_idx {
                str(out, "group_idx");
                int(out, v);
            }
            if let Some(v) = &e.kv_cache_spec_kind {
                str(out, "kv_cache_spec_kind");
                str(out, v);
            }
            if let Some(v) = e.kv_cache_spec_sliding_window {
                str(out, "kv_cache_spec_sliding_window");
                int(out, v);
            }
        }
        KvEvent::BlockRemoved(e) => {
            let entries = 3 + u32::from(e.group_idx.is_some());
            let _ = enc::write_map_len(out, entries);
            str(out, "type");
            str(out, "BlockRemoved");
            removed_required(out, e, true);
            if let Some(v) = e.group_idx {
                str(out, "group_idx");
                int(out, v);
            }
        }
        KvEvent::AllBlocksCleared => {
            let _ = enc::write_map_len(out, 1);
            str(out, "type");
            str(out, "AllBlocksCleared");
        }
    }
}

fn array_event(out: &mut Vec<u8>, event: &KvEvent) {
    match event {
        KvEvent::BlockStored(e) => {
            let _ = enc::write_array_len(out, 12);
            str(out, "BlockStored");
            stored_required(out, e, false);
            match &e.extra_keys {
                Some(v) => values(out, v),
                None => nil(out),
            }
            opt_int(out, e.group_idx);
            opt_str(out, e.kv_cache_spec_kind.as_deref());
            opt_int(out, e.kv_cache_spec_sliding_window);
        }
        KvEvent::BlockRemoved(e) => {
            let _ = enc::write_array_len(out, 4);
            str(out, "BlockRemoved");
            removed_required(out, e, false);
            opt_int(out, e.group_idx);
        }
        KvEvent::AllBlocksCleared => {
            let _ = enc::write_array_len(out, 1);
            str(out, "AllBlocksCleared");
        }
    }
}

fn stored_required(out: &mut Vec<u8>, e: &BlockStored, named: bool) {
    let key = |out: &mut Vec<u8>, k: &str| {
        if named {
            str(out, k);
        }
    };
    key(out, "block_hashes");
    hashes(out, &e.block_hashes);
    key(out, "parent_block_hash");
    match e.parent_block_hash {
        Some(h) => uint(out, h.0),
        None => nil(out),
    }
    key(out, "token_ids");
    let _ = enc::write_array_len(out, e.token_ids.len() as u32);
    for &t in &e.token_ids {
        uint(out, u64::from(t));
    }
    key(out, "block_size");
    uint(out, u64::from(e.block_size));
    key(out, "lora_id");
    opt_int(out, e.lora_id);
    key(out, "medium");
    opt_str(out, e.medium.as_deref());
    key(out, "lora_name");
    opt_str(out, e.lora_name.as_deref());
}

fn removed_required(out: &mut Vec<u8>, e: &BlockRemoved, named: bool) {
    if named {
        str(out, "block_hashes");
    }
    hashes(out, &e.block_hashes);
    if named {
        str(out, "medium");
    }
    opt_str(out, e.medium.as_deref());
}

/// msgspec picks fixmap vs map16 from the declared field count, then writes the real count.
fn map_head(out: &mut Vec<u8>, declared_plus_tag: u32, entries: u32) {
    if declared_plus_tag <= 15 {
        let _ = enc::write_map_len(out, entries);
    } else {
        out.push(0xde);
        out.extend_from_slice(&(entries as u16).to_be_bytes());
    }
}

fn hashes(out: &mut Vec<u8>, keys: &[BlockKey]) {
    let _ = enc::write_array_len(out, keys.len() as u32);
    for k in keys {
        uint(out, k.0);
    }
}

fn values(out: &mut Vec<u8>, vals: &[WireValue]) {
    let _ = enc::write_array_len(out, vals.len() as u32);
    for v in vals {
        value(out, v);
    }
}

fn value(out: &mut Vec<u8>, v: &WireValue) {
    match v {
        WireValue::Nil => nil(out),
        WireValue::Bool(b) => {
            let _ = enc::write_bool(out, *b);
        }
        WireValue::Int(i) => match u64::try_from(*i) {
            Ok(u) => uint(out, u),
            Err(_) => int(out, i64::try_from(*i).unwrap_or(i64::MIN)),
        },
        WireValue::Float(f) => {
            let _ = enc::write_f64(out, *f);
        }
        WireValue::Str(s) => str(out, s),
        WireValue::Bin(b) => {
            let _ = enc::write_bin(out, b);
        }
        WireValue::Array(items) => values(out, items),
        WireValue::Map(entries) => {
            let _ = enc::write_map_len(out, entries.len() as u32);
            for (k, v) in entries {
                value(out, k);
                value(out, v);
            }
        }
    }
}

fn uint(out: &mut Vec<u8>, v: u64) {
    let _ = enc::write_uint(out, v);
}

fn int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        uint(out, v as u64);
    } else {
        let _ = enc::write_sint(out, v);
    }
}

fn opt_int(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(v) => int(out, v),
        None => nil(out),
    }
}

fn str(out: &mut Vec<u8>, s: &str) {
    let _ = enc::write_str(out, s);
}

fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => str(out, s),
        None => nil(out),
    }
}

fn nil(out: &mut Vec<u8>) {
    let _ = enc::write_nil(out);
}
