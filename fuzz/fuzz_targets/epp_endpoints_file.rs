//! Any text as the EPP's endpoints file (YAML/JSON) or scheduler config: parsing and building
//! never panic; an accepted endpoints file has unique, non-empty endpoints.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmd_epp::config::EndpointPickerConfig;
use llmd_epp::endpoints::{EndpointsFile, Pool};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = EndpointsFile::parse(text) {
        let mut seen = std::collections::HashSet::new();
        for e in &file.endpoints {
            assert!(!e.address.is_empty() && e.port != 0);
            assert!(seen.insert(e.host_port()));
        }
    }
    if let Ok(config) = EndpointPickerConfig::parse(text) {
        let _ = llmd_epp::scheduling::Scheduler::new(
            &config,
            std::sync::Arc::new(Pool::default()),
            None,
        );
    }
});
