//! `concurrency-detector` (llm-d): a saturation detector and filter from the EPP's own
//! in-flight count ([`crate::inflight`]) instead of the pods' scraped metrics, so it is right
//! the moment a decision is made or a response ends. Named by `saturationDetector:
//! {pluginRef}` or `flowControl.saturationDetector`; in a profile, a filter dropping the
//! endpoints whose in-flight load reached capacity × (1 + `headroom`), unless that drops them
//! all. The arithmetic is in [`crate::scheduling::saturation`].
//!
//! Parameters (llm-d's): `concurrencyMode` (`requests`, `tokens`, `hybrid`; default
//! `requests`), `maxConcurrency` (100 requests an endpoint), `maxTokenConcurrency` (1,000,000
//! uncached prompt tokens an endpoint), `headroom` (0), `inFlightLoadProducerName` (accepted:
//! the EPP has one in-flight count). `maxTokenConcurrencyByRole` and `decodeSafety` are
//! refused, naming the field.

use serde::Deserialize;
use serde_json::Value;

use super::utilization_detector::UtilizationDetectorPlugin;
use crate::scheduling::saturation::{ConcurrencyLimits, ConcurrencyMode, UtilizationDetector};

/// The llm-d type name.
pub const TYPE: &str = "concurrency-detector";

/// Parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Params {
    /// `requests`, `tokens` or `hybrid`.
    pub concurrency_mode: String,
    /// Requests an endpoint is meant to hold.
    pub max_concurrency: i64,
    /// Uncached prompt tokens an endpoint is meant to hold.
    pub max_token_concurrency: i64,
    /// Burst allowed above them (fraction, ≥ 0).
    pub headroom: f64,
    /// The in-flight producer to read (accepted; there is one).
    pub in_flight_load_producer_name: Option<String>,
    /// Refused: per-role token capacities.
    pub max_token_concurrency_by_role: Option<Value>,
    /// Refused: combining with the pods' telemetry.
    pub decode_safety: Option<Value>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            concurrency_mode: "requests".into(),
            max_concurrency: 100,
            max_token_concurrency: 1_000_000,
            headroom: 0.0,
            in_flight_load_producer_name: None,
            max_token_concurrency_by_role: None,
            decode_safety: None,
        }
    }
}

/// The plugin (a [`UtilizationDetectorPlugin`] whose detector counts in-flight load), or why
/// the parameters are refused: (field, reason).
pub fn build(p: &Params) -> Result<UtilizationDetectorPlugin, (&'static str, String)> {
    let mode = match p.concurrency_mode.as_str() {
        "requests" => ConcurrencyMode::Requests,
        "tokens" => ConcurrencyMode::Tokens,
        "hybrid" => ConcurrencyMode::Hybrid,
        other => {
            return Err((
                "concurrencyMode",
                format!("{other:?}: requests, tokens or hybrid"),
            ));
        }
    };
    if p.max_concurrency <= 0 {
        return Err(("maxConcurrency", "must be > 0".into()));
    }
    if p.max_token_concurrency <= 0 {
        return Err(("maxTokenConcurrency", "must be > 0".into()));
    }
    if !(p.headroom >= 0.0 && p.headroom.is_finite()) {
        return Err(("headroom", "must be >= 0".into()));
    }
    if p.max_token_concurrency_by_role.is_some() {
        return Err((
            "maxTokenConcurrencyByRole",
            "per-role token capacities are not supported: one maxTokenConcurrency for every endpoint".into(),
        ));
    }
    if p.decode_safety.is_some() {
        return Err((
            "decodeSafety",
            "not supported: use utilization-detector for the pods' own queue and KV metrics".into(),
        ));
    }
    Ok(UtilizationDetectorPlugin {
        detector: UtilizationDetector::concurrency(ConcurrencyLimits {
            mode,
            max_requests: p.max_concurrency as f64,
            max_tokens: p.max_token_concurrency as f64,
            headroom: p.headroom,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked() {
        assert!(build(&Params::default()).is_ok());
        let bad = |f: fn(&mut Params)| {
            let mut p = Params::default();
            f(&mut p);
            build(&p).err().map(|(field, _)| field)
        };
        assert_eq!(
            bad(|p| p.concurrency_mode = "bytes".into()),
            Some("concurrencyMode")
        );
        assert_eq!(bad(|p| p.max_concurrency = 0), Some("maxConcurrency"));
        assert_eq!(bad(|p| p.headroom = -0.1), Some("headroom"));
        assert_eq!(
            bad(|p| p.decode_safety = Some(Value::Bool(true))),
            Some("decodeSafety")
        );
    }
}
