//! `utilization-detector` (GIE, llm-d): the saturation detector behind shedding
//! ([`crate::scheduling::saturation`]); named by `saturationDetector: {pluginRef}` (or
//! `flowControl.saturationDetector`). In a profile it is a filter: endpoints over its
//! thresholds × (1 + `headroom`) are dropped unless that drops them all.
//!
//! Parameters (GIE's): `queueDepthThreshold` (5), `kvCacheUtilThreshold` (0.8),
//! `metricsStalenessThreshold` (200ms; never less than three scrape intervals here),
//! `headroom` (0).

use std::time::Duration;

use crate::config::SaturationThresholds;
use crate::endpoints::Endpoint;
use crate::scheduling::saturation::UtilizationDetector;
use crate::scheduling::{CycleState, Filter};

/// The llm-d type name.
pub const TYPE: &str = "utilization-detector";

/// Parameters.
pub type Params = SaturationThresholds;

/// `utilization-detector` as a plugin.
#[derive(Debug)]
pub struct UtilizationDetectorPlugin {
    /// The detector.
    pub detector: UtilizationDetector,
}

impl UtilizationDetectorPlugin {
    /// From parameters, for endpoints scraped every `scrape_interval`.
    pub fn new(params: Params, scrape_interval: Duration) -> Result<Self, String> {
        params.validate()?;
        Ok(Self {
            detector: UtilizationDetector::new(params, scrape_interval),
        })
    }
}

impl Filter for UtilizationDetectorPlugin {
    fn filter(&self, _cs: &mut CycleState<'_>, candidates: Vec<Endpoint>) -> Vec<Endpoint> {
        self.detector.filter(candidates)
    }
}
