//! What the disaggregating profile handlers (`pd-profile-handler`, `disagg-profile-handler`)
//! share: run the decode profile; ask whether the request also gets a prefill pod; if so run
//! the prefill profile and name its pick in `x-prefiller-host-port` (without a prefill pod the
//! request stays decode-only); record the decision on the pick span and in llm-d's decision
//! counters (the deprecated `llm_d_inference_scheduler_*` name and the current `llm_d_epp_*`
//! one with `plugin_name` / `plugin_type`).

use llmd_telemetry::names::{self, MetricDef};

use super::{cached_on, pick_span, record_hit_ratio};
use crate::endpoints::Endpoint;
use crate::labels::model_label;
use crate::scheduling::{CycleState, Decision, PickError, Profiles};

/// The header naming the prefill pod for the P/D sidecar.
pub const PREFILLER_HEADER: &str = "x-prefiller-host-port";

/// `decode-only`.
pub const DECODE_ONLY: &str = "decode-only";
/// `prefill-decode`.
pub const PREFILL_DECODE: &str = "prefill-decode";

/// Which counters a handler records its decisions in.
#[derive(Debug, Clone, Copy)]
pub struct DecisionMetrics {
    /// llm-d's deprecated name (`model_name`, `decision_type`).
    pub legacy: &'static MetricDef,
    /// llm-d's current name (+ `plugin_name`, `plugin_type`).
    pub current: &'static MetricDef,
}

/// `pd-profile-handler`'s counters.
pub const PD_METRICS: DecisionMetrics = DecisionMetrics {
    legacy: &names::epp::PD_DECISION_TOTAL,
    current: &names::epp::LLMD_PD_DECISION_TOTAL,
};
/// `disagg-profile-handler`'s counters.
pub const DISAGG_METRICS: DecisionMetrics = DecisionMetrics {
    legacy: &names::epp::DISAGG_DECISION_TOTAL,
    current: &names::epp::LLMD_DISAGG_DECISION_TOTAL,
};

/// One handler instance, for its metrics.
#[derive(Debug, Clone)]
pub struct HandlerId {
    /// Instance name.
    pub name: String,
    /// llm-d type.
    pub kind: &'static str,
    /// Its counters.
    pub metrics: DecisionMetrics,
}

/// The profiles a handler runs.
#[derive(Debug, Clone, Copy)]
pub struct Stages<'a> {
    /// The decode profile (always run).
    pub decode: &'a str,
    /// The prefill profile (`None`: never disaggregate).
    pub prefill: Option<&'a str>,
    /// The threshold recorded on the pick span, if the handler has one.
    pub threshold: Option<u64>,
}

/// Runs the decode profile, then the prefill profile when `wants_prefill` says so.
pub fn handle(
    id: &HandlerId,
    profiles: &Profiles,
    cs: &mut CycleState<'_>,
    candidates: Vec<Endpoint>,
    stages: Stages<'_>,
    wants_prefill: &dyn Fn(&CycleState<'_>, &Endpoint) -> bool,
) -> Result<Decision, PickError> {
    let (decode_profile, prefill_profile) = (stages.decode, stages.prefill);
    let span = pick_span(cs, stages.threshold);
    let _e = span.enter();
    let decode = profiles.run(decode_profile, cs, candidates.clone())?;
    let Some(best) = decode.first() else {
        return Err(PickError::NoEndpoints(Some("no decode endpoint".into())));
    };
    span.record(names::attrs::EPP_DECODE_POD, &*best.id);
    let (prompt_tokens, cached_tokens) = cached_on(cs, &best.id);
    record_hit_ratio(&span, prompt_tokens, cached_tokens);
    let mut decision = Decision {
        endpoints: decode.iter().map(|e| e.id.to_string()).collect(),
        ..Default::default()
    };
    let mut kind = DECODE_ONLY;
    if let Some(prefill_profile) = prefill_profile
        && cs.request.is_some()
        && wants_prefill(cs, best)
    {
        let prefill = profiles.run(prefill_profile, cs, candidates)?;
        match prefill.first() {
            Some(p) => {
                decision
                    .headers
                    .push((PREFILLER_HEADER.to_owned(), p.id.to_string()));
                span.record(names::attrs::EPP_PREFILL_POD, &*p.id);
                kind = PREFILL_DECODE;
            }
            None => tracing::debug!("no prefill endpoint: decode-only"),
        }
    }
    span.record(names::attrs::EPP_DECISION, kind);
    let model = cs
        .request
        .map(|r| r.model.as_str())
        .filter(|m| !m.is_empty())
        .map_or_else(|| "unknown".to_owned(), model_label);
    metrics::counter!(id.metrics.legacy.name, "model_name" => model.clone(), "decision_type" => kind)
        .increment(1);
    metrics::counter!(
        id.metrics.current.name,
        "plugin_name" => id.name.clone(),
        "plugin_type" => id.kind,
        "model_name" => model,
        "decision_type" => kind
    )
    .increment(1);
    Ok(decision)
}
