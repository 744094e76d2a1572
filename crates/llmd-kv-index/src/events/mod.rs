//! vLLM KV-cache events: the wire format, decoded into typed events and encoded back.
//!
//! A ZMQ message from vLLM's `ZmqEventPublisher` has three frames (`vllm/distributed/kv_events.py`):
//!
//! | frame | content |
//! |---|---|
//! | topic | UTF-8; llm-d deployments use `kv@<pod>@<model>` (vLLM's default is empty) |
//! | seq | `u64` big-endian, per publisher, from 0, +1 per batch |
//! | payload | msgpack `[ts: f64, [event...], data_parallel_rank: int \| nil]` |
//!
//! Events come in two encodings, and both are accepted:
//! - **array** (vLLM <= 0.23): `["BlockStored", field1, ..., fieldN]`, every declared field in
//!   order, nil when unset;
//! - **map** (vLLM >= 0.25): `{"type": "BlockStored", "block_hashes": ..., ...}`, optional
//!   fields omitted when unset.
//!
//! Block hashes are msgpack ints (the default `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`: the last 8
//! digest bytes, big-endian) or raw digest bytes (`=0`), which decode to the same `u64`. Unknown
//! event types and unknown fields are skipped and counted, never fatal; an event that cannot be
//! decoded is dropped alone, the rest of its batch is kept. Nothing here panics on input.

mod decode;
mod encode;

pub use decode::{DecodeError, decode_batch, decode_message, parse_topic};
pub use encode::{Layout, encode_batch, encode_message};

use crate::hashing::BlockKey;

/// Where a cached block lives (vLLM's `medium`; absent means GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Tier {
    /// Device memory (`"GPU"`, or no medium).
    #[default]
    Gpu,
    /// Host memory offload (`"CPU"`).
    Cpu,
    /// Disk or remote storage offload.
    Disk,
    /// A medium this version does not know.
    Other,
}

impl Tier {
    /// The tier of a `medium` field.
    pub fn from_medium(medium: Option<&str>) -> Self {
        match medium {
            None => Tier::Gpu,
            Some(m) if m.eq_ignore_ascii_case("gpu") || m.eq_ignore_ascii_case("cuda") => Tier::Gpu,
            Some(m) if m.eq_ignore_ascii_case("cpu") => Tier::Cpu,
            Some(m) if m.eq_ignore_ascii_case("disk") || m.eq_ignore_ascii_case("lmcache") => {
                Tier::Disk
            }
            Some(_) => Tier::Other,
        }
    }

    /// Name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Gpu => "gpu",
            Tier::Cpu => "cpu",
            Tier::Disk => "disk",
            Tier::Other => "other",
        }
    }
}

/// An untyped msgpack value, for `extra_keys` entries whose shape varies by vLLM version.
#[derive(Debug, Clone, PartialEq)]
pub enum WireValue {
    /// nil
    Nil,
    /// bool
    Bool(bool),
    /// Integer (negative values keep their sign).
    Int(i128),
    /// Float
    Float(f64),
    /// UTF-8 string
    Str(String),
    /// Binary
    Bin(Vec<u8>),
    /// Array
    Array(Vec<WireValue>),
    /// Map (in wire order)
    Map(Vec<(WireValue, WireValue)>),
}

/// `BlockStored`: newly full blocks of one request, in chain order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockStored {
    /// The blocks' hashes (as the engine publishes them).
    pub block_hashes: Vec<BlockKey>,
    /// Hash of the block before the first one; `None` when the first is block 0.
    pub parent_block_hash: Option<BlockKey>,
    /// The blocks' tokens, `block_hashes.len() * block_size` of them.
    pub token_ids: Vec<u32>,
    /// Tokens per block.
    pub block_size: u32,
    /// Deprecated LoRA int id.
    pub lora_id: Option<i64>,
    /// `"GPU"`, `"CPU"`, ...
    pub medium: Option<String>,
    /// LoRA adapter name (vLLM >= 0.20).
    pub lora_name: Option<String>,
    /// Per-block extra keys (nil entries for blocks without).
    pub extra_keys: Option<Vec<WireValue>>,
    /// KV-cache group (0 for plain models).
    pub group_idx: Option<i64>,
    /// KV-cache spec kind (`full_attention`, `sliding_window`, ...), vLLM >= 0.23.
    pub kv_cache_spec_kind: Option<String>,
    /// Sliding window size for sliding-window groups.
    pub kv_cache_spec_sliding_window: Option<i64>,
}

impl BlockStored {
    /// The tier of these blocks.
    pub fn tier(&self) -> Tier {
        Tier::from_medium(self.medium.as_deref())
    }
}

/// `BlockRemoved`: blocks evicted from the engine's prefix cache.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockRemoved {
    /// Evicted hashes.
    pub block_hashes: Vec<BlockKey>,
    /// Tier they were evicted from.
    pub medium: Option<String>,
    /// KV-cache group.
    pub group_idx: Option<i64>,
}

impl BlockRemoved {
    /// The tier these blocks left.
    pub fn tier(&self) -> Tier {
        Tier::from_medium(self.medium.as_deref())
    }
}

/// One KV-cache event.
#[derive(Debug, Clone, PartialEq)]
pub enum KvEvent {
    /// Blocks stored.
    BlockStored(BlockStored),
    /// Blocks removed.
    BlockRemoved(BlockRemoved),
    /// The engine's prefix cache was reset.
    AllBlocksCleared,
}

/// One decoded payload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventBatch {
    /// Engine wall-clock time of the step, seconds since the epoch.
    pub ts: f64,
    /// Events that decoded.
    pub events: Vec<KvEvent>,
    /// The publisher's data-parallel rank.
    pub data_parallel_rank: Option<i64>,
    /// What was skipped while decoding (counted, never fatal).
    pub skipped: Skipped,
}

/// Counts of skipped input in one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Skipped {
    /// Events of a type this decoder does not know (e.g. future vLLM events).
    pub unknown_events: u32,
    /// Map keys or positional elements beyond the known fields.
    pub unknown_fields: u32,
    /// Events that were malformed and dropped (wrong types, missing required fields).
    pub malformed_events: u32,
}

/// One decoded ZMQ message.
#[derive(Debug, Clone, PartialEq)]
pub struct KvMessage {
    /// Raw topic.
    pub topic: String,
    /// Publisher sequence number.
    pub seq: u64,
    /// The payload.
    pub batch: EventBatch,
}

#[cfg(test)]
mod tests;
