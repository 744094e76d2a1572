//! Starting simulators from tests (feature `sim`): `llmd_sim::testing` with a test's manners
//! (a simulator that does not start fails the test, with the reason).
//!
//! ```no_run
//! # async fn demo() {
//! use llmd_testkit::sim::{self, SimBuilder};
//!
//! // Echo mode, no tokenizer files, no simulated time, on 127.0.0.1 (any free port).
//! let pod = sim::start(SimBuilder::fast().flags(["--mode", "echo"])).await;
//! let url = pod.url();
//! // Dropping `pod` stops it; `pod.detach()` keeps it serving until the test ends.
//! # }
//! ```
//!
//! Flags are `llmd-sim`'s, in order (later ones win, as clap does). `/metrics` is served only
//! with [`SimBuilder::metrics`]: the Prometheus recorder is process-wide, so each test binary
//! installs its own (with the catalogs it reads) and hands it over.

pub use llmd_sim::Sim;
pub use llmd_sim::testing::{SimBuilder, SimHandle};
use tokio::net::TcpListener;

/// Starts a simulator on `127.0.0.1:0` (or the builder's host); panics with the reason when it
/// cannot (bad flags, no tokenizer files, a port in use).
#[track_caller]
pub fn start(builder: SimBuilder) -> impl Future<Output = SimHandle> {
    let caller = std::panic::Location::caller();
    async move {
        llmd_sim::testing::spawn(builder)
            .await
            .unwrap_or_else(|e| panic!("{caller}: the simulator did not start: {e}"))
    }
}

/// [`start`] on a listener the test bound itself (a chosen port, e.g. data-parallel ranks on
/// consecutive ports).
#[track_caller]
pub fn start_on(builder: SimBuilder, listener: TcpListener) -> impl Future<Output = SimHandle> {
    let caller = std::panic::Location::caller();
    async move {
        llmd_sim::testing::spawn_on(builder, listener)
            .await
            .unwrap_or_else(|e| panic!("{caller}: the simulator did not start: {e}"))
    }
}
