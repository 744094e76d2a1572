//! The receivers live in `llmd_telemetry::testing` (feature `testing`).
#![allow(unused_imports)]

pub use llmd_telemetry::testing::*;
