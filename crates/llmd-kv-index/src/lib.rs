//! `llmd-kv-index`: know, for any prompt, how many of its leading KV blocks each pod holds.
//!
//! It will own: vLLM's block hashing (`sha256_cbor` chain, block size 64 by default, extra keys
//! for LoRA, cache salt and multimodal inputs) and llm-d's `tokens` mode; decoding of the
//! KV events vLLM publishes over ZMQ (both the positional-array and the tagged-map encodings);
//! a ZMQ subscriber for many pods with per-pod sequence tracking, gap detection and replay; the
//! concurrent, memory-bounded prefix index (block key → pods and tier) whose lookups never wait
//! long on writers. Token ids come from `llmd-tokenizer`. Decisions: `shared/design.md` §2.
//!
//! Status: not built yet (issue 3).

pub mod cli;
pub mod events;
pub mod hashing;
pub mod index;
pub mod kv;
pub mod subscriber;
pub mod transport;

pub use hashing::{BlockDigest, BlockKey, HashAlgo, TokensHasher, VllmHasher};
pub use kv::{KvIndex, KvIndexConfig};
