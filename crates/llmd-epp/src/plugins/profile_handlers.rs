//! Profile handlers.
//!
//! - `single-profile-handler`: runs the only profile; its picks are the destination and
//!   fallbacks.
//! - `pd-profile-handler` (`shared/design.md` §3): runs the decode profile; when the part of the
//!   prompt the best decode pod does not hold exceeds `threshold` tokens (0: always), also runs
//!   the prefill profile and names its pick in `x-prefiller-host-port` (prefill-decode);
//!   otherwise the request is decode-only. Without a prefill pod it falls back to decode-only.
//!   Parameters: `threshold` (tokens, default 0), `decodeProfile` ("decode"), `prefillProfile`
//!   ("prefill").

use llmd_telemetry::names;
use serde_json::Value;

use super::{CycleState, ProfileHandler, Profiles, param};
use crate::config::ConfigError;
use crate::endpoints::Endpoint;
use crate::extproc::{Decision, PREFILLER_HEADER, PickError};

/// Checks that a handler's profiles exist.
pub fn validate(
    handler: &std::sync::Arc<dyn ProfileHandler>,
    profiles: &Profiles,
) -> Result<(), ConfigError> {
    handler.validate(profiles)
}

/// `single-profile-handler`.
#[derive(Debug, Default)]
pub struct SingleProfileHandler;

impl ProfileHandler for SingleProfileHandler {
    fn handle(
        &self,
        profiles: &Profiles,
        cs: &mut CycleState<'_>,
        candidates: Vec<Endpoint>,
    ) -> Result<Decision, PickError> {
        let Some(name) = profiles.by_name.keys().next().cloned() else {
            return Err(PickError::Internal("no profile".into()));
        };
        let picked = profiles.run(&name, cs, candidates)?;
        if picked.is_empty() {
            return Err(PickError::NoEndpoints(Some(format!(
                "profile {name:?} filtered out every endpoint"
            ))));
        }
        Ok(Decision {
            endpoints: picked.into_iter().map(|e| e.id).collect(),
            ..Default::default()
        })
    }

    fn validate(&self, profiles: &Profiles) -> Result<(), ConfigError> {
        if profiles.by_name.len() == 1 {
            Ok(())
        } else {
            Err(ConfigError::Invalid(
                "single-profile-handler needs exactly one profile".into(),
            ))
        }
    }
}

/// `pd-profile-handler`.
#[derive(Debug)]
pub struct PdProfileHandler {
    threshold: u64,
    decode: String,
    prefill: String,
}

impl PdProfileHandler {
    /// From parameters.
    pub fn new(params: &Option<Value>) -> Result<Self, ConfigError> {
        let threshold = match param(params, "threshold") {
            None => 0,
            Some(v) => v.as_u64().ok_or_else(|| {
                ConfigError::Invalid(
                    "pd-profile-handler: threshold must be a token count >= 0".into(),
                )
            })?,
        };
        let name = |key: &str, default: &str| {
            param(params, key)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_owned()
        };
        Ok(Self {
            threshold,
            decode: name("decodeProfile", "decode"),
            prefill: name("prefillProfile", "prefill"),
        })
    }
}

impl ProfileHandler for PdProfileHandler {
    fn handle(
        &self,
        profiles: &Profiles,
        cs: &mut CycleState<'_>,
        candidates: Vec<Endpoint>,
    ) -> Result<Decision, PickError> {
        let span = tracing::info_span!(
            names::spans::EPP_PROFILE_HANDLER_PICK,
            decision = tracing::field::Empty,
            cache_hit_ratio = tracing::field::Empty,
            pd_threshold = self.threshold,
            user_input_bytes = cs.request.map_or(0, |r| r.user_input_bytes) as u64,
            llm_d.epp.decode_pod = tracing::field::Empty,
            llm_d.epp.prefill_pod = tracing::field::Empty,
        );
        let _e = span.enter();
        let decode = profiles.run(&self.decode, cs, candidates.clone())?;
        let Some(best) = decode.first() else {
            return Err(PickError::NoEndpoints(Some("no decode endpoint".into())));
        };
        span.record("llm_d.epp.decode_pod", best.id.as_str());
        let (prompt_tokens, cached_tokens) = match &cs.prefix {
            Some(p) => (
                p.prompt_tokens as u64,
                u64::from(*p.matched.get(&best.id).unwrap_or(&0)) * p.block_size as u64,
            ),
            None => (cs.request.map_or(0, |r| r.user_input_bytes / 4) as u64, 0),
        };
        let uncached = prompt_tokens.saturating_sub(cached_tokens);
        if prompt_tokens > 0 {
            span.record(
                "cache_hit_ratio",
                cached_tokens.min(prompt_tokens) as f64 / prompt_tokens as f64,
            );
        }
        let mut decision = Decision {
            endpoints: decode.iter().map(|e| e.id.clone()).collect(),
            ..Default::default()
        };
        let wants_pd = cs.request.is_some() && (self.threshold == 0 || uncached > self.threshold);
        let mut kind = "decode-only";
        if wants_pd {
            let prefill = profiles.run(&self.prefill, cs, candidates)?;
            match prefill.first() {
                Some(p) => {
                    decision
                        .headers
                        .push((PREFILLER_HEADER.to_owned(), p.id.clone()));
                    span.record("llm_d.epp.prefill_pod", p.id.as_str());
                    kind = "prefill-decode";
                }
                None => tracing::debug!("no prefill endpoint: decode-only"),
            }
        }
        span.record("decision", kind);
        let model = cs.request.map(|r| r.model.clone()).unwrap_or_default();
        metrics::counter!(names::epp::PD_DECISION_TOTAL.name, "model_name" => model, "decision_type" => kind).increment(1);
        Ok(decision)
    }

    fn validate(&self, profiles: &Profiles) -> Result<(), ConfigError> {
        for p in [&self.decode, &self.prefill] {
            if !profiles.by_name.contains_key(p) {
                return Err(ConfigError::Invalid(format!(
                    "pd-profile-handler: no profile named {p:?}"
                )));
            }
        }
        Ok(())
    }
}
