//! `pd-profile-handler` (`shared/design.md` §3): runs the decode profile; when the part of the
//! prompt the chosen decode pod does not hold exceeds `threshold` tokens (0: always), also runs
//! the prefill profile and names its pick in `x-prefiller-host-port` (prefill-decode);
//! otherwise the request is decode-only. Without a prefill pod it falls back to decode-only.
//!
//! Parameters: `threshold` (tokens, 0), `decodeProfile` ("decode"), `prefillProfile`
//! ("prefill"), `hashBlockSize` (accepted for llm-d compatibility: the block size is the
//! precise scorer's).

use llmd_telemetry::names;
use serde::Deserialize;

use super::{cached_on, pick_span, record_hit_ratio};
use crate::config::ConfigError;
use crate::endpoints::Endpoint;
use crate::scheduling::{CycleState, Decision, PickError, ProfileHandler, Profiles};

/// The llm-d type name.
pub const TYPE: &str = "pd-profile-handler";

/// The header naming the prefill pod for the P/D sidecar.
pub const PREFILLER_HEADER: &str = "x-prefiller-host-port";

/// Parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Params {
    /// Uncached prompt tokens above which a request is disaggregated (0: always).
    pub threshold: u64,
    /// The decode profile's name.
    pub decode_profile: String,
    /// The prefill profile's name.
    pub prefill_profile: String,
    /// llm-d's block size for its own estimate; accepted, not used (the precise scorer's
    /// block size is the one that counts).
    pub hash_block_size: Option<u64>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            threshold: 0,
            decode_profile: "decode".into(),
            prefill_profile: "prefill".into(),
            hash_block_size: None,
        }
    }
}

/// `pd-profile-handler`.
#[derive(Debug)]
pub struct PdProfileHandler {
    params: Params,
}

impl PdProfileHandler {
    /// From parameters.
    pub fn new(params: Params) -> Self {
        Self { params }
    }
}

impl ProfileHandler for PdProfileHandler {
    fn handle(
        &self,
        profiles: &Profiles,
        cs: &mut CycleState<'_>,
        candidates: Vec<Endpoint>,
    ) -> Result<Decision, PickError> {
        let span = pick_span(cs, Some(self.params.threshold));
        let _e = span.enter();
        let decode = profiles.run(&self.params.decode_profile, cs, candidates.clone())?;
        let Some(best) = decode.first() else {
            return Err(PickError::NoEndpoints(Some("no decode endpoint".into())));
        };
        span.record(names::attrs::EPP_DECODE_POD, &*best.id);
        let (prompt_tokens, cached_tokens) = cached_on(cs, &best.id);
        record_hit_ratio(&span, prompt_tokens, cached_tokens);
        let uncached = prompt_tokens.saturating_sub(cached_tokens);
        let mut decision = Decision {
            endpoints: decode.iter().map(|e| e.id.to_string()).collect(),
            ..Default::default()
        };
        let threshold = self.params.threshold;
        let wants_pd = cs.request.is_some() && (threshold == 0 || uncached > threshold);
        let mut kind = "decode-only";
        if wants_pd {
            let prefill = profiles.run(&self.params.prefill_profile, cs, candidates)?;
            match prefill.first() {
                Some(p) => {
                    decision
                        .headers
                        .push((PREFILLER_HEADER.to_owned(), p.id.to_string()));
                    span.record(names::attrs::EPP_PREFILL_POD, &*p.id);
                    kind = "prefill-decode";
                }
                None => tracing::debug!("no prefill endpoint: decode-only"),
            }
        }
        span.record(names::attrs::EPP_DECISION, kind);
        let model = cs.request.map(|r| r.model.clone()).unwrap_or_default();
        metrics::counter!(names::epp::PD_DECISION_TOTAL.name, "model_name" => model, "decision_type" => kind).increment(1);
        Ok(decision)
    }

    fn validate(&self, profiles: &Profiles) -> Result<(), ConfigError> {
        for p in [&self.params.decode_profile, &self.params.prefill_profile] {
            if !profiles.by_name.contains_key(p) {
                return Err(ConfigError::Invalid(format!(
                    "{TYPE}: no profile named {p:?}"
                )));
            }
        }
        Ok(())
    }
}
