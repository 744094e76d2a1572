//! Decoding ZMQ frames and msgpack payloads into [`KvMessage`]s.
//!
//! The batch envelope is walked with a small bounds-checked msgpack reader; each event's bytes
//! are then handed to a serde visitor that accepts both the positional-array (vLLM <= 0.23) and
//! the tagged-map (vLLM >= 0.25) encodings. Because every event is decoded from its own byte
//! span, one malformed event is dropped and counted while the rest of its batch is kept.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{BlockRemoved, BlockStored, EventBatch, KvEvent, KvMessage, WireValue};
use crate::hashing::BlockKey;

/// Why a message or payload could not be decoded. Each variant names a metric `reason` label
/// through [`DecodeError::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not the 3 frames `[topic, seq, payload]`.
    #[error("expected 3 frames (topic, seq, payload), got {0}")]
    FrameCount(usize),
    /// The topic frame is not UTF-8.
    #[error("topic frame is not UTF-8")]
    TopicNotUtf8,
    /// The topic does not name a pod (`kv@<pod>@<model>`) where one is needed.
    #[error("topic {0:?} is not kv@<pod>@<model>")]
    Topic(String),
    /// The sequence frame is not 8 bytes.
    #[error("sequence frame must be 8 bytes, got {0}")]
    SeqLength(usize),
    /// The payload is not a `[ts, events, rank]` array.
    #[error("payload is not an event batch: {0}")]
    Batch(&'static str),
    /// The payload ended in the middle of a value.
    #[error("payload truncated at byte {0}")]
    Truncated(usize),
    /// Bytes after the batch.
    #[error("{0} unexpected bytes after the batch")]
    TrailingBytes(usize),
}

impl DecodeError {
    /// Every value [`Self::reason`] returns.
    pub const REASONS: [&'static str; 6] = [
        "frame_count",
        "topic",
        "seq",
        "batch",
        "truncated",
        "trailing_bytes",
    ];

    /// Short label for the `reason` of the decode-error metric.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::FrameCount(_) => "frame_count",
            DecodeError::TopicNotUtf8 | DecodeError::Topic(_) => "topic",
            DecodeError::SeqLength(_) => "seq",
            DecodeError::Batch(_) => "batch",
            DecodeError::Truncated(_) => "truncated",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
        }
    }
}

/// Decodes one ZMQ multipart message `[topic, seq, payload]`.
pub fn decode_message<F: AsRef<[u8]>>(frames: &[F]) -> Result<KvMessage, DecodeError> {
    let [topic, seq, payload] = frames else {
        return Err(DecodeError::FrameCount(frames.len()));
    };
    let topic = std::str::from_utf8(topic.as_ref()).map_err(|_| DecodeError::TopicNotUtf8)?;
    let seq_bytes: [u8; 8] = seq
        .as_ref()
        .try_into()
        .map_err(|_| DecodeError::SeqLength(seq.as_ref().len()))?;
    Ok(KvMessage {
        topic: topic.to_owned(),
        seq: u64::from_be_bytes(seq_bytes),
        batch: decode_batch(payload.as_ref())?,
    })
}

/// Splits a `kv@<pod>@<model>` topic into `(pod, model)`. `None` for any other shape.
pub fn parse_topic(topic: &str) -> Option<(&str, &str)> {
    let mut parts = topic.split('@');
    let (Some(_prefix), Some(pod), Some(model), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    (!pod.is_empty()).then_some((pod, model))
}

/// Decodes a msgpack `[ts, [events...], data_parallel_rank]` payload.
pub fn decode_batch(payload: &[u8]) -> Result<EventBatch, DecodeError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let len = r.array_len().ok_or(DecodeError::Batch("not an array"))?;
    if !(2..=3).contains(&len) {
        return Err(DecodeError::Batch("expected 2 or 3 elements"));
    }
    let ts = r
        .number()
        .ok_or(DecodeError::Batch("timestamp is not a number"))?;
    let n_events = r
        .array_len()
        .ok_or(DecodeError::Batch("events is not an array"))?;
    // The declared length is untrusted: every event takes at least one byte.
    let mut batch = EventBatch {
        ts,
        events: Vec::with_capacity(n_events.min(r.remaining())),
        ..Default::default()
    };
    for _ in 0..n_events {
        let start = r.pos;
        r.skip_value()?;
        match rmp_serde::from_slice::<RawEvent>(&payload[start..r.pos]) {
            Ok(RawEvent::Known(event, unknown_fields)) => {
                batch.skipped.unknown_fields += unknown_fields;
                batch.events.push(event);
            }
            Ok(RawEvent::Unknown) => batch.skipped.unknown_events += 1,
            Err(_) => batch.skipped.malformed_events += 1,
        }
    }
    if len == 3 {
        batch.data_parallel_rank = r
            .optional_int()
            .ok_or(DecodeError::Batch("rank is not an int or nil"))?;
    }
    match r.remaining() {
        0 => Ok(batch),
        n => Err(DecodeError::TrailingBytes(n)),
    }
}

/// A bounds-checked cursor over msgpack bytes: just enough to walk the envelope and find each
/// event's byte span.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        )
    }

    fn array_len(&mut self) -> Option<usize> {
        match self.byte()? {
            b @ 0x90..=0x9f => Some(usize::from(b & 0x0f)),
            0xdc => self.be(2).map(|n| n as usize),
            0xdd => self.be(4).map(|n| n as usize),
            _ => None,
        }
    }

    fn number(&mut self) -> Option<f64> {
        let b = self.byte()?;
        Some(match b {
            0x00..=0x7f => f64::from(b),
            0xe0..=0xff => f64::from(b as i8),
            0xca => f64::from(f32::from_bits(self.be(4)? as u32)),
            0xcb => f64::from_bits(self.be(8)?),
            0xcc => self.be(1)? as f64,
            0xcd => self.be(2)? as f64,
            0xce => self.be(4)? as f64,
            0xcf => self.be(8)? as f64,
            0xd0 => f64::from(self.be(1)? as u8 as i8),
            0xd1 => f64::from(self.be(2)? as u16 as i16),
            0xd2 => f64::from(self.be(4)? as u32 as i32),
            0xd3 => self.be(8)? as i64 as f64,
            _ => return None,
        })
    }

    /// `Some(None)` for nil, `Some(Some(v))` for an int, `None` otherwise.
    fn optional_int(&mut self) -> Option<Option<i64>> {
        let b = *self.buf.get(self.pos)?;
        if b == 0xc0 {
            self.pos += 1;
            return Some(None);
        }
        let v = self.number()?;
        (v.fract() == 0.0).then_some(Some(v as i64))
    }

    /// Skips one complete value (iteratively: nesting depth cannot exhaust the stack).
    fn skip_value(&mut self) -> Result<(), DecodeError> {
        let mut pending: usize = 1;
        while pending > 0 {
            pending -= 1;
            let at = self.pos;
            let truncated = DecodeError::Truncated(at);
            let b = self.byte().ok_or(truncated.clone())?;
            let (skip, children): (usize, usize) = match b {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
                0x80..=0x8f => (0, 2 * usize::from(b & 0x0f)),
                0x90..=0x9f => (0, usize::from(b & 0x0f)),
                0xa0..=0xbf => (usize::from(b & 0x1f), 0),
                0xcc | 0xd0 => (1, 0),
                0xcd | 0xd1 => (2, 0),
                0xca | 0xce | 0xd2 => (4, 0),
                0xcb | 0xcf | 0xd3 => (8, 0),
                0xc4 | 0xd9 => (self.be(1).ok_or(truncated.clone())? as usize, 0),
                0xc5 | 0xda => (self.be(2).ok_or(truncated.clone())? as usize, 0),
                0xc6 | 0xdb => (self.be(4).ok_or(truncated.clone())? as usize, 0),
                0xdc => (0, self.be(2).ok_or(truncated.clone())? as usize),
                0xdd => (0, self.be(4).ok_or(truncated.clone())? as usize),
                0xde => (0, 2 * self.be(2).ok_or(truncated.clone())? as usize),
                0xdf => (0, 2 * self.be(4).ok_or(truncated.clone())? as usize),
                // fixext 1/2/4/8/16: type byte + data
                0xd4 => (2, 0),
                0xd5 => (3, 0),
                0xd6 => (5, 0),
                0xd7 => (9, 0),
                0xd8 => (17, 0),
                // ext 8/16/32: length, type byte, data
                0xc7 => (self.be(1).ok_or(truncated.clone())? as usize + 1, 0),
                0xc8 => (self.be(2).ok_or(truncated.clone())? as usize + 1, 0),
                0xc9 => (self.be(4).ok_or(truncated.clone())? as usize + 1, 0),
                // 0xc1 is never used by msgpack.
                _ => return Err(DecodeError::Batch("invalid msgpack marker")),
            };
            self.take(skip).ok_or(truncated)?;
            pending = pending
                .checked_add(children)
                .ok_or(DecodeError::Truncated(at))?;
            if pending > self.remaining() {
                // Each pending value needs at least one more byte.
                return Err(DecodeError::Truncated(self.buf.len()));
            }
        }
        Ok(())
    }
}

/// One event as decoded from its own bytes.
#[allow(clippy::large_enum_variant)] // short-lived, moved straight into the batch
enum RawEvent {
    /// A known event and how many unknown fields it had.
    Known(KvEvent, u32),
    /// An event type this decoder does not know.
    Unknown,
}

/// A block hash: a msgpack int (signed values are reinterpreted) or digest bytes (last 8 bytes,
/// big-endian; shorter input is left-padded).
struct WireHash(u64);

impl<'de> serde::Deserialize<'de> for WireHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireHash;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a block hash (int or bytes)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WireHash, E> {
                Ok(WireHash(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WireHash, E> {
                Ok(WireHash(v as u64))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<WireHash, E> {
                if v.is_empty() {
                    return Err(E::custom("empty hash bytes"));
                }
                let tail = &v[v.len().saturating_sub(8)..];
                Ok(WireHash(
                    tail.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
                ))
            }
        }
        d.deserialize_any(V)
    }
}

fn keys(v: Vec<WireHash>) -> Vec<BlockKey> {
    v.into_iter().map(|h| BlockKey(h.0)).collect()
}

impl<'de> serde::Deserialize<'de> for WireValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any msgpack value")
            }
            fn visit_unit<E>(self) -> Result<WireValue, E> {
                Ok(WireValue::Nil)
            }
            fn visit_none<E>(self) -> Result<WireValue, E> {
                Ok(WireValue::Nil)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<WireValue, D2::Error> {
                <WireValue as serde::Deserialize>::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<WireValue, E> {
                Ok(WireValue::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<WireValue, E> {
                Ok(WireValue::Int(i128::from(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<WireValue, E> {
                Ok(WireValue::Int(i128::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<WireValue, E> {
                Ok(WireValue::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<WireValue, E> {
                Ok(WireValue::Str(v.to_owned()))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<WireValue, E> {
                Ok(WireValue::Bin(v.to_vec()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<WireValue, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(WireValue::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireValue, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = map.next_entry()? {
                    out.push(kv);
                }
                Ok(WireValue::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Every field any event type has, filled from either encoding.
#[derive(Default)]
struct Fields {
    block_hashes: Option<Vec<BlockKey>>,
    parent_block_hash: Option<BlockKey>,
    token_ids: Option<Vec<u32>>,
    block_size: Option<u32>,
    lora_id: Option<i64>,
    medium: Option<String>,
    lora_name: Option<String>,
    extra_keys: Option<Vec<WireValue>>,
    group_idx: Option<i64>,
    kv_cache_spec_kind: Option<String>,
    kv_cache_spec_sliding_window: Option<i64>,
}

/// Map keys of newer vLLM versions that the index does not use (not counted as unknown).
const KNOWN_UNUSED_KEYS: &[&str] = &[
    "locality",
    "ownership",
    "session_id",
    "lookahead_token_ids",
    "event_version",
];

impl Fields {
    fn into_event<E: de::Error>(self, tag: &str) -> Result<Option<KvEvent>, E> {
        let need = |name: &'static str| E::missing_field(name);
        Ok(Some(match tag {
            "BlockStored" => KvEvent::BlockStored(BlockStored {
                block_hashes: self.block_hashes.ok_or_else(|| need("block_hashes"))?,
                parent_block_hash: self.parent_block_hash,
                token_ids: self.token_ids.ok_or_else(|| need("token_ids"))?,
                block_size: self.block_size.ok_or_else(|| need("block_size"))?,
                lora_id: self.lora_id,
                medium: self.medium,
                lora_name: self.lora_name,
                extra_keys: self.extra_keys,
                group_idx: self.group_idx,
                kv_cache_spec_kind: self.kv_cache_spec_kind,
                kv_cache_spec_sliding_window: self.kv_cache_spec_sliding_window,
            }),
            "BlockRemoved" => KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: self.block_hashes.ok_or_else(|| need("block_hashes"))?,
                medium: self.medium,
                group_idx: self.group_idx,
            }),
            "AllBlocksCleared" => KvEvent::AllBlocksCleared,
            _ => return Ok(None),
        }))
    }
}

impl<'de> serde::Deserialize<'de> for RawEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EventVisitor)
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = RawEvent;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a KV event as [tag, fields...] or {\"type\": tag, ...}")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawEvent, A::Error> {
        let tag: Cow<'de, str> = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let mut f = Fields::default();
        match tag.as_ref() {
            "BlockStored" => {
                f.block_hashes = seq.next_element::<Vec<WireHash>>()?.map(keys);
                f.parent_block_hash = seq
                    .next_element::<Option<WireHash>>()?
                    .flatten()
                    .map(|h| BlockKey(h.0));
                f.token_ids = seq.next_element()?;
                f.block_size = seq.next_element()?;
                f.lora_id = seq.next_element::<Option<i64>>()?.flatten();
                f.medium = seq.next_element::<Option<String>>()?.flatten();
                f.lora_name = seq.next_element::<Option<String>>()?.flatten();
                f.extra_keys = seq.next_element::<Option<Vec<WireValue>>>()?.flatten();
                f.group_idx = seq.next_element::<Option<i64>>()?.flatten();
                f.kv_cache_spec_kind = seq.next_element::<Option<String>>()?.flatten();
                f.kv_cache_spec_sliding_window = seq.next_element::<Option<i64>>()?.flatten();
            }
            "BlockRemoved" => {
                f.block_hashes = seq.next_element::<Vec<WireHash>>()?.map(keys);
                f.medium = seq.next_element::<Option<String>>()?.flatten();
                f.group_idx = seq.next_element::<Option<i64>>()?.flatten();
            }
            _ => {}
        }
        let mut unknown = 0u32;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            unknown = unknown.saturating_add(1);
        }
        Ok(match f.into_event(&tag)? {
            Some(event) => RawEvent::Known(event, unknown),
            None => RawEvent::Unknown,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEvent, A::Error> {
        let mut tag: Option<String> = None;
        let mut f = Fields::default();
        let mut unknown = 0u32;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "type" => tag = Some(map.next_value()?),
                "block_hashes" => f.block_hashes = Some(keys(map.next_value()?)),
                "parent_block_hash" => {
                    f.parent_block_hash =
                        map.next_value::<Option<WireHash>>()?.map(|h| BlockKey(h.0))
                }
                "token_ids" => f.token_ids = Some(map.next_value()?),
                "block_size" => f.block_size = Some(map.next_value()?),
                "lora_id" => f.lora_id = map.next_value()?,
                "medium" => f.medium = map.next_value()?,
                "lora_name" => f.lora_name = map.next_value()?,
                "extra_keys" => f.extra_keys = map.next_value()?,
                "group_idx" => f.group_idx = map.next_value()?,
                "kv_cache_spec_kind" => f.kv_cache_spec_kind = map.next_value()?,
                "kv_cache_spec_sliding_window" => {
                    f.kv_cache_spec_sliding_window = map.next_value()?
                }
                k => {
                    map.next_value::<IgnoredAny>()?;
                    if !KNOWN_UNUSED_KEYS.contains(&k) {
                        unknown = unknown.saturating_add(1);
                    }
                }
            }
        }
        let tag = tag.ok_or_else(|| de::Error::missing_field("type"))?;
        Ok(match f.into_event(&tag)? {
            Some(event) => RawEvent::Known(event, unknown),
            None => RawEvent::Unknown,
        })
    }
}
