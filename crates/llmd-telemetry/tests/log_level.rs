//! The log layer at the default `info`, with tracing off: `tracing`'s process-wide maximum level
//! stays `info` (a filter without a level hint would raise it to `trace`, and every `trace!` call
//! site of the process, h2's and hyper's included, would then be evaluated on every call: that
//! cost the EPP ~25 CPU-µs per request behind Envoy), info events are logged, and info spans
//! are not created (their fields would be formatted for nothing; see the crate docs).

use llmd_telemetry::TelemetryConfig;
use tracing::level_filters::LevelFilter;

#[test]
fn info_keeps_the_process_at_info_and_spans_out_of_the_log() {
    let config = TelemetryConfig::from_lookup(|_| None);
    assert_eq!(config.log_filter, "info");
    let _guard = llmd_telemetry::init("llmd-test", &config).expect("init");
    assert_eq!(LevelFilter::current(), LevelFilter::INFO);
    assert!(tracing::enabled!(tracing::Level::INFO));
    assert!(!tracing::enabled!(tracing::Level::DEBUG));
    let span = tracing::info_span!("epp.request", x_request_id = "r1");
    assert!(span.is_disabled(), "an info span is not created at info");
}
