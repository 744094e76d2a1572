//! The plugin contracts, llm-d's kinds: a [`Filter`] removes candidates, a [`Scorer`] scores
//! them in `[0, 1]` (and may learn from the decision, as llm-d's `PreRequest` plugins do), a
//! [`Pick`] orders them, a [`ProfileHandler`] decides which profiles run and turns their picks
//! into a [`Decision`], a [`Decider`] tells a disaggregating handler whether a request gets a
//! prefill pod. Plugins share what one request's scheduling learns through its [`CycleState`].

use std::collections::HashMap;

use super::{Decision, PickError, Profiles};
use crate::config::ConfigError;
use crate::endpoints::Endpoint;
use crate::request::InferenceRequest;

/// Per-endpoint consecutive prefix blocks, computed once per request by the prefix scorer and
/// read by the P/D profile handler.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrefixMatch {
    /// Tokens per block.
    pub block_size: usize,
    /// Full blocks of the prompt.
    pub total_blocks: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Endpoint id → consecutive matched blocks from block 0 (confirmed or provisional).
    pub matched: HashMap<String, u32>,
    /// Endpoint id → how many of its matched blocks are only provisional (speculative
    /// entries of requests just routed there; absent: none).
    pub provisional: HashMap<String, u32>,
}

/// What an approximate prefix scorer (`prefix-cache-scorer` without KV events) learned: the
/// prompt's block hashes, to record on the chosen pods once the decision is made.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApproxPrefix {
    /// Block hashes of the prompt (characters, chained).
    pub hashes: Vec<u64>,
    /// Characters per block.
    pub block_chars: usize,
}

/// State shared by the plugins while one request is scheduled.
#[derive(Debug)]
pub struct CycleState<'a> {
    /// The request (`None` without a body).
    pub request: Option<&'a InferenceRequest>,
    /// Request headers, lower-cased.
    pub headers: &'a [(String, String)],
    /// Filled by the precise prefix scorer.
    pub prefix: Option<PrefixMatch>,
    /// Filled by an approximate prefix scorer (blocks of 4 characters a token, as llm-d counts
    /// them), read by the P/D deciders when there is no precise match.
    pub approx_prefix: Option<PrefixMatch>,
    /// Approximate prefix scorers' hashes, by plugin name.
    pub approx_hashes: HashMap<String, ApproxPrefix>,
    /// Plugin scores per profile, for `/debug/route`: (profile, plugin, endpoint, score).
    pub explain: Option<Vec<(String, String, String, f64)>>,
    /// The prompt's block keys, once computed (for lookups of more candidates).
    pub keys: Option<Vec<llmd_kv_index::hashing::BlockKey>>,
    /// The `service.name` the scheduler's spans carry when it shares a process.
    pub service_name: Option<&'a str>,
    /// Fallback endpoints a profile adds after its picker's choice.
    pub fallbacks: usize,
    /// Each profile run so far and its first pick (endpoint id), for plugins that act on one
    /// profile's result (the session-affinity scorer's `profileName`).
    pub picks: HashMap<String, String>,
    /// Session-affinity scorers (`session_id` strategy) by plugin name: whether the session's
    /// bound pod was among the candidates they scored (a session moves only when it was not).
    pub session_bound_present: HashMap<String, bool>,
}

impl CycleState<'static> {
    /// An empty state (no request), for plugin tests.
    #[cfg(test)]
    pub(crate) fn for_test() -> Self {
        CycleState {
            request: None,
            headers: &[],
            prefix: None,
            approx_prefix: None,
            approx_hashes: HashMap::new(),
            explain: None,
            keys: None,
            service_name: None,
            fallbacks: 0,
            picks: HashMap::new(),
            session_bound_present: HashMap::new(),
        }
    }
}

impl CycleState<'_> {
    /// Puts the scheduler's own `service.name` on a plugin's span, when it has one.
    pub fn name_service(&self, span: &tracing::Span) {
        if let Some(name) = self.service_name {
            span.record(llmd_telemetry::names::services::SPAN_ATTR, name);
        }
    }
}

/// Removes candidates.
pub trait Filter: Send + Sync {
    /// The candidates that remain.
    fn filter(&self, cs: &mut CycleState<'_>, candidates: Vec<Endpoint>) -> Vec<Endpoint>;
}

/// Scores candidates in `[0, 1]` (higher is better).
pub trait Scorer: Send + Sync {
    /// One score per candidate, in order.
    fn score(&self, cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64>;

    /// After the decision (llm-d's `PreRequest`): e.g. the approximate prefix scorer records
    /// the prompt's blocks on the chosen pods.
    fn pre_request(&self, _cs: &CycleState<'_>, _decision: &Decision) {}

    /// After the decision: headers to set on the response to the client (llm-d's
    /// `ResponseHeader` hook; the session-affinity scorer names the chosen pod). Carried in
    /// [`Decision::response_headers`] and applied by the protocol layer.
    fn response_headers(
        &self,
        _cs: &CycleState<'_>,
        _decision: &Decision,
    ) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Tells a disaggregating profile handler whether a request, whose decode pod is chosen,
/// also gets a prefill pod (llm-d's `prefix-based-pd-decider`, `always-disagg-pd-decider`).
pub trait Decider: Send + Sync {
    /// True: run the prefill profile.
    fn disaggregate(&self, cs: &CycleState<'_>, decode: &Endpoint) -> bool;

    /// The threshold it decides by, recorded on the pick span as `pd_threshold` (in the
    /// decider's own unit), if it has one.
    fn threshold(&self) -> Option<u64> {
        None
    }
}

/// Orders scored candidates; the first is the destination, the rest fallbacks.
pub trait Pick: Send + Sync {
    /// The chosen endpoints, best first.
    fn pick(&self, scored: &[(Endpoint, f64)]) -> Vec<Endpoint>;
}

/// Runs profiles and makes the decision.
pub trait ProfileHandler: Send + Sync {
    /// The decision for the candidates.
    fn handle(
        &self,
        profiles: &Profiles,
        cs: &mut CycleState<'_>,
        candidates: Vec<Endpoint>,
    ) -> Result<Decision, PickError>;

    /// Checks the profiles it needs exist.
    fn validate(&self, _profiles: &Profiles) -> Result<(), ConfigError> {
        Ok(())
    }
}
