//! `pd-profile-handler`, llm-d's older P/D handler, in both of its shapes:
//!
//! - **with `threshold`** (llm-d ≤ v0.5, the P/D guide's `threshold: 0, hashBlockSize: 5`):
//!   runs the decode profile; when `threshold` is 0 every request also gets a prefill pod;
//!   otherwise the request is disaggregated when the part of its user input (prompt characters,
//!   or the chat messages as JSON) the chosen decode pod does not hold is at least `threshold`
//!   characters: `(1 − hit ratio) × input bytes ≥ threshold`, the hit ratio being the cached
//!   share of the prompt from the prefix scorer (precise, or approximate);
//! - **with `deciderPluginName`** (llm-d v0.8–current): the named decider
//!   (`prefix-based-pd-decider`, `always-disagg-pd-decider`) decides.
//!
//! The prefill pick goes in `x-prefiller-host-port`; without a prefill pod the request stays
//! decode-only. Decisions count in `llm_d_inference_scheduler_pd_decision_total` and
//! `llm_d_epp_pd_decision_total`.
//!
//! Parameters: `threshold` (characters, 0), `decodeProfile` ("decode"), `prefillProfile`
//! ("prefill"), `deciderPluginName`, `hashBlockSize` (> 0; llm-d's block size for its
//! approximate hit ratio: the hit ratio here comes from the prefix scorer),
//! `prefixPluginType` / `prefixPluginName` / `prefixMatchInfoProducerName` (accepted: the
//! match of whichever prefix scorer runs is used), `primaryPort` (refused: data-parallel
//! port rewriting is not supported).

use std::sync::Arc;

use serde::Deserialize;

use super::cached_on;
use super::disagg::{self, HandlerId, Stages};
use crate::config::ConfigError;
use crate::endpoints::Endpoint;
use crate::scheduling::{CycleState, Decider, Decision, PickError, ProfileHandler, Profiles};

/// The llm-d type name.
pub const TYPE: &str = "pd-profile-handler";

pub use super::disagg::PREFILLER_HEADER;

/// Parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Params {
    /// Uncached user-input characters from which a request is disaggregated (0: always).
    pub threshold: i64,
    /// The decode profile's name.
    pub decode_profile: String,
    /// The prefill profile's name.
    pub prefill_profile: String,
    /// llm-d's approximate block size (accepted, must be positive).
    pub hash_block_size: Option<i64>,
    /// The decider that decides instead of `threshold`.
    pub decider_plugin_name: Option<String>,
    /// llm-d's prefix plugin type (accepted).
    pub prefix_plugin_type: Option<String>,
    /// llm-d's prefix plugin name (accepted).
    pub prefix_plugin_name: Option<String>,
    /// llm-d's producer of the prefix match (accepted).
    pub prefix_match_info_producer_name: Option<String>,
    /// llm-d's data-parallel port rewrite (refused unless 0).
    pub primary_port: Option<u32>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            threshold: 0,
            decode_profile: "decode".into(),
            prefill_profile: "prefill".into(),
            hash_block_size: None,
            decider_plugin_name: None,
            prefix_plugin_type: None,
            prefix_plugin_name: None,
            prefix_match_info_producer_name: None,
            primary_port: None,
        }
    }
}

/// How the handler decides.
pub enum Rule {
    /// llm-d ≤ v0.5: uncached characters ≥ threshold (0: always).
    Threshold(u64),
    /// A decider plugin.
    Decider(Arc<dyn Decider>),
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::Threshold(t) => write!(f, "Threshold({t})"),
            Rule::Decider(_) => f.write_str("Decider"),
        }
    }
}

/// `pd-profile-handler`.
#[derive(Debug)]
pub struct PdProfileHandler {
    id: HandlerId,
    params: Params,
    rule: Rule,
}

impl PdProfileHandler {
    /// Checks llm-d's constraints on the parameters (the decider, if named, is resolved by the
    /// registry and passed in).
    pub fn new(
        name: &str,
        params: Params,
        decider: Option<Arc<dyn Decider>>,
    ) -> Result<Self, String> {
        if params.threshold < 0 {
            return Err(format!("threshold must be >= 0, got {}", params.threshold));
        }
        if params.hash_block_size.is_some_and(|b| b <= 0) {
            return Err("hashBlockSize must be > 0".into());
        }
        if params.primary_port.is_some_and(|p| p != 0) {
            return Err("primaryPort: rewriting the decode port for data-parallel engines (x-data-parallel-host-port) is not supported; route to each rank's own port instead".into());
        }
        let rule = match decider {
            Some(d) => Rule::Decider(d),
            None => Rule::Threshold(params.threshold as u64),
        };
        Ok(Self {
            id: HandlerId {
                name: name.to_owned(),
                kind: TYPE,
                metrics: disagg::PD_METRICS,
            },
            params,
            rule,
        })
    }
}

/// llm-d ≤ v0.5's rule: disaggregate when the uncached part of the user input, in characters,
/// is at least `threshold` (always when it is 0).
pub fn uncached_chars_reach(cs: &CycleState<'_>, decode: &Endpoint, threshold: u64) -> bool {
    if threshold == 0 {
        return true;
    }
    let input = cs.request.map_or(0, |r| r.user_input_bytes) as f64;
    let (prompt_tokens, cached_tokens) = cached_on(cs, &decode.id);
    let hit = if prompt_tokens == 0 {
        0.0
    } else {
        (cached_tokens.min(prompt_tokens) as f64) / prompt_tokens as f64
    };
    (1.0 - hit) * input >= threshold as f64
}

impl ProfileHandler for PdProfileHandler {
    fn handle(
        &self,
        profiles: &Profiles,
        cs: &mut CycleState<'_>,
        candidates: Vec<Endpoint>,
    ) -> Result<Decision, PickError> {
        let stages = Stages {
            decode: &self.params.decode_profile,
            prefill: Some(&self.params.prefill_profile),
            threshold: match self.rule {
                Rule::Threshold(t) => Some(t),
                Rule::Decider(_) => None,
            },
        };
        disagg::handle(
            &self.id,
            profiles,
            cs,
            candidates,
            stages,
            &|cs, decode| match &self.rule {
                Rule::Threshold(t) => uncached_chars_reach(cs, decode, *t),
                Rule::Decider(d) => d.disaggregate(cs, decode),
            },
        )
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
