//! `disagg-profile-handler`, llm-d's current handler: runs the decode profile, then the prefill
//! profile when its prefill decider (`deciders.prefill`, e.g. `prefix-based-pd-decider`)
//! agrees; without a prefill decider every request is decode-only, as in llm-d. The prefill pick
//! goes in `x-prefiller-host-port` (llm-d's handler sets it itself; `prefill-header-handler`
//! and `disagg-headers-handler` are accepted and have nothing left to do). Decisions count in
//! `llm_d_inference_scheduler_disagg_decision_total` and `llm_d_epp_disagg_decision_total`.
//!
//! Parameters: `profiles.{decode ("decode"), prefill ("prefill"), encode}`,
//! `deciders.prefill`, `stageOrder` (`decode-first`); llm-d's deprecated flat forms
//! `decodeProfile`, `prefillProfile`, `encodeProfile`, `prefillDeciderPluginName` and
//! `deciderPluginName` (the P/D guide's older shape). Refused: an encode decider (no encode
//! stage here: E/P/D), `stageOrder: prefill-first`, `primaryPort`.

use std::sync::Arc;

use serde::Deserialize;

use super::disagg::{self, HandlerId, Stages};
use crate::config::ConfigError;
use crate::endpoints::Endpoint;
use crate::scheduling::{CycleState, Decider, Decision, PickError, ProfileHandler, Profiles};

/// The llm-d type name.
pub const TYPE: &str = "disagg-profile-handler";

/// `profiles`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileNames {
    /// Decode profile.
    pub decode: Option<String>,
    /// Prefill profile.
    pub prefill: Option<String>,
    /// Encode profile (accepted; no encode stage runs here).
    pub encode: Option<String>,
}

/// `deciders`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeciderNames {
    /// The prefill decider plugin.
    pub prefill: Option<String>,
    /// The encode decider plugin (refused).
    pub encode: Option<String>,
}

/// Parameters (current and deprecated flat forms).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Params {
    /// `decode-first` (default) or `prefill-first` (refused).
    pub stage_order: Option<String>,
    /// Profile names.
    #[serde(default)]
    pub profiles: ProfileNames,
    /// Decider plugin names.
    #[serde(default)]
    pub deciders: DeciderNames,
    /// Deprecated: `profiles.decode`.
    pub decode_profile: Option<String>,
    /// Deprecated: `profiles.prefill`.
    pub prefill_profile: Option<String>,
    /// Deprecated: `profiles.encode`.
    pub encode_profile: Option<String>,
    /// Deprecated: `deciders.prefill`.
    pub prefill_decider_plugin_name: Option<String>,
    /// Deprecated: `deciders.encode`.
    pub encode_decider_plugin_name: Option<String>,
    /// Deprecated (from `pd-profile-handler`): `deciders.prefill`.
    pub decider_plugin_name: Option<String>,
    /// `pd-profile-handler`'s prefix plugin type (accepted, as llm-d ignores it).
    pub prefix_plugin_type: Option<String>,
    /// `pd-profile-handler`'s prefix plugin name (accepted, as llm-d ignores it).
    pub prefix_plugin_name: Option<String>,
    /// `pd-profile-handler`'s data-parallel port (refused unless 0).
    pub primary_port: Option<u32>,
}

impl Params {
    /// The decode profile, prefill profile and prefill decider, with llm-d's precedence
    /// (nested, then deprecated flat; `deciderPluginName` last).
    pub fn resolved(&self) -> Result<(String, String, Option<String>), String> {
        if let Some(order) = &self.stage_order {
            let o = order.to_ascii_lowercase().replace(['-', '_'], "");
            if !matches!(o.as_str(), "" | "decodefirst" | "decode") {
                return Err(format!(
                    "stageOrder {order:?}: only decode-first is supported (the decode pod is chosen first, then the prefill pod)"
                ));
            }
        }
        if self.deciders.encode.is_some() || self.encode_decider_plugin_name.is_some() {
            return Err("deciders.encode: encode disaggregation (E/P/D) is not supported; use decode and prefill profiles only".into());
        }
        if self.primary_port.is_some_and(|p| p != 0) {
            return Err("primaryPort: data-parallel port rewriting is not supported".into());
        }
        let decode = self
            .profiles
            .decode
            .clone()
            .or_else(|| self.decode_profile.clone())
            .unwrap_or_else(|| "decode".into());
        let prefill = self
            .profiles
            .prefill
            .clone()
            .or_else(|| self.prefill_profile.clone())
            .unwrap_or_else(|| "prefill".into());
        let decider = self
            .deciders
            .prefill
            .clone()
            .or_else(|| self.prefill_decider_plugin_name.clone())
            .or_else(|| self.decider_plugin_name.clone());
        Ok((decode, prefill, decider))
    }
}

/// `disagg-profile-handler`.
pub struct DisaggProfileHandler {
    id: HandlerId,
    decode: String,
    prefill: String,
    decider: Option<Arc<dyn Decider>>,
}

impl std::fmt::Debug for DisaggProfileHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisaggProfileHandler")
            .field("decode", &self.decode)
            .field("prefill", &self.prefill)
            .field("decider", &self.decider.is_some())
            .finish()
    }
}

impl DisaggProfileHandler {
    /// From resolved profile names and the prefill decider.
    pub fn new(
        name: &str,
        decode: String,
        prefill: String,
        decider: Option<Arc<dyn Decider>>,
    ) -> Self {
        Self {
            id: HandlerId {
                name: name.to_owned(),
                kind: TYPE,
                metrics: disagg::DISAGG_METRICS,
            },
            decode,
            prefill,
            decider,
        }
    }
}

impl ProfileHandler for DisaggProfileHandler {
    fn handle(
        &self,
        profiles: &Profiles,
        cs: &mut CycleState<'_>,
        candidates: Vec<Endpoint>,
    ) -> Result<Decision, PickError> {
        let stages = Stages {
            decode: &self.decode,
            prefill: self.decider.as_ref().map(|_| self.prefill.as_str()),
            threshold: self.decider.as_ref().and_then(|d| d.threshold()),
        };
        disagg::handle(&self.id, profiles, cs, candidates, stages, &|cs, decode| {
            self.decider
                .as_ref()
                .is_some_and(|d| d.disaggregate(cs, decode))
        })
    }

    fn validate(&self, profiles: &Profiles) -> Result<(), ConfigError> {
        let mut needed = vec![&self.decode];
        if self.decider.is_some() {
            needed.push(&self.prefill);
        }
        for p in needed {
            if !profiles.by_name.contains_key(p) {
                return Err(ConfigError::Invalid(format!(
                    "{TYPE}: no profile named {p:?}"
                )));
            }
        }
        Ok(())
    }
}
