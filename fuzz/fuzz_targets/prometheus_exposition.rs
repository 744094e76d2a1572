//! Any text as Prometheus exposition (the EPP parses engines' /metrics): never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = llmd_telemetry::exposition::parse(text);
    }
});
