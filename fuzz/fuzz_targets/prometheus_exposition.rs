//! Any text as Prometheus exposition (the EPP parses engines' /metrics): never panics, and the
//! scrape's partial read (`parse_samples_of`) accepts every exposition the full parse accepts,
//! with the same samples for the names it keeps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmd_telemetry::exposition::{parse, parse_samples_of};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let keep = |name: &str| name.len() % 2 == 0;
        let some = parse_samples_of(text, keep);
        if let Ok(full) = parse(text) {
            let kept: Vec<_> = full.samples.into_iter().filter(|s| keep(&s.name)).collect();
            let some = some.expect("a valid exposition is read by parse_samples_of too");
            // NaN != NaN: compare as text.
            assert_eq!(format!("{kept:?}"), format!("{some:?}"));
        }
    }
});
