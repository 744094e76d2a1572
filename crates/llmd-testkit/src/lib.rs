//! `llmd-testkit`: what the workspace's tests and benchmarks share, in one place.
//!
//! | module | feature | what it is |
//! |---|---|---|
//! | [`peers`] | (always) | the external peers (Python venv, Envoy, promtool, tokenizer files) and the missing-peer policy: skip locally, fail under `CI` |
//! | `sim` | `sim` | starting simulators: `llmd_sim::testing`'s builder, started the tests' way |
//! | [`corpus`] | (always) | the benchmarks' text: deterministic pseudo-English, the same in every crate's bench |
//! | `tokenizer` | `tokenizer` | the real tokenizers of `.cache/hf` (`tokenizer_dir`, `real_tokenizer`) |
//!
//! Only ever a dev-dependency (`publish = false`). `peers` and `corpus` need nothing of the
//! workspace, so the crates under the simulator (telemetry, tokenizer, KV index) use them with no
//! features; each feature pulls just the crates it names. The README explains the dependency rule.

pub mod corpus;
pub mod peers;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "tokenizer")]
pub mod tokenizer;
