//! `llmd-k8s`: Kubernetes for llmd-rs. An `InferencePool` (GIE `inference.networking.k8s.io/v1`)
//! and the pods it selects, followed by watch, in a neutral form the EPP and the P/D proxy map
//! to what they need; and, behind the `testing` feature, a fake API server that answers GET,
//! LIST and WATCH as the real one does.
//!
//! | module | what it does |
//! |---|---|
//! | `pool` | [`PoolRef`] (which pool), [`PoolSpec`] (its selector and target ports, parsed with errors naming the field) |
//! | `snapshot` | [`PoolSnapshot`] and [`PoolPod`] (what a watch publishes); [`PoolSnapshot::endpoints`]: one [`DiscoveredEndpoint`] per ready pod and target port, with its rank and KV-event endpoints |
//! | `watch` | [`watch_pool`]: one task running kube-runtime watchers on the pool and its pods, publishing a [`PoolView`] on a `tokio::sync::watch` channel |
//! | `objectives` | [`watch_objectives`]: a namespace's `InferenceObjective`s (llm-d's and GIE's API groups), followed by watch |
//! | `testing` | (feature `testing`) `FakeKube`, the fake API server |
//!
//! Of llmd-rs it depends on `llmd-telemetry` only (the metric name it counts failures under).
//! See the README for the concurrency model.

pub mod objectives;
pub mod pool;
pub mod snapshot;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watch;

pub use objectives::{Objective, watch_objectives};
pub use pool::{DEFAULT_GROUP, InvalidPool, PoolRef, PoolSpec};
pub use snapshot::{DiscoveredEndpoint, KvEventPorts, PoolPod, PoolSnapshot};
pub use watch::{PoolView, PoolWatch, watch_pool};
