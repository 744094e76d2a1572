//! `prefix-based-pd-decider` (llm-d): disaggregate when the part of the prompt the chosen
//! decode pod does not hold is at least `nonCachedTokens` tokens. Exactly llm-d's rule:
//! never when `nonCachedTokens` is 0 (disabled); never when the prompt is shorter than
//! `promptTokens` (when set) or than `nonCachedTokens`; otherwise when `prompt tokens − cached
//! tokens ≥ nonCachedTokens`, the cached tokens being the decode pod's matched blocks × block
//! size from the prefix scorer (precise: real tokens; approximate: 4 characters a token, as
//! llm-d estimates). Without any prefix scorer nothing counts as cached.
//!
//! Parameters: `nonCachedTokens` (0), `promptTokens` (0).

use serde::Deserialize;

use super::cached_on;
use crate::endpoints::Endpoint;
use crate::scheduling::{CycleState, Decider};

/// The llm-d type name.
pub const TYPE: &str = "prefix-based-pd-decider";

/// Parameters.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Params {
    /// Uncached tokens from which a request is disaggregated (0: never).
    pub non_cached_tokens: i64,
    /// Prompts shorter than this are never disaggregated (0: no gate).
    pub prompt_tokens: i64,
}

/// `prefix-based-pd-decider`.
#[derive(Debug)]
pub struct PrefixBasedPdDecider {
    non_cached: u64,
    prompt_gate: u64,
}

impl PrefixBasedPdDecider {
    /// From parameters (llm-d refuses negative values).
    pub fn new(params: Params) -> Result<Self, String> {
        if params.non_cached_tokens < 0 {
            return Err("nonCachedTokens cannot be negative".into());
        }
        if params.prompt_tokens < 0 {
            return Err("promptTokens cannot be negative".into());
        }
        if params.non_cached_tokens == 0 {
            tracing::info!(
                "prefix-based-pd-decider: nonCachedTokens is 0, so P/D is disabled (as in llm-d)"
            );
        }
        Ok(Self {
            non_cached: params.non_cached_tokens as u64,
            prompt_gate: params.prompt_tokens as u64,
        })
    }
}

impl Decider for PrefixBasedPdDecider {
    fn disaggregate(&self, cs: &CycleState<'_>, decode: &Endpoint) -> bool {
        if self.non_cached == 0 {
            return false;
        }
        let (prompt, cached) = cached_on(cs, &decode.id);
        if self.prompt_gate > 0 && prompt < self.prompt_gate {
            return false;
        }
        if prompt < self.non_cached {
            return false;
        }
        prompt.saturating_sub(cached) >= self.non_cached
    }

    fn threshold(&self) -> Option<u64> {
        Some(self.non_cached)
    }
}
