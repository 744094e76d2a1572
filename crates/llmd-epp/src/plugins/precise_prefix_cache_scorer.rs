//! `precise-prefix-cache-scorer`: score = consecutive prompt blocks (from block 0) a pod holds
//! / the prompt's full blocks, from the KV-event-fed index of the EPP's [`KvService`].
//!
//! Per request: the prompt is tokenized as vLLM would (completions with special tokens, chat
//! through the model's template) through a prompt cache, its block keys computed (reusing the
//! cached prefix's digests), and the index looked up once for all candidates; the matches are
//! kept in the cycle state for the P/D handler and the other profile.
//!
//! Parameters: see [`super::precise_params`] (ours flat, or llm-d's nested
//! `tokenProcessorConfig` / `indexerConfig` / `kvEventsConfig`). They configure the EPP's one
//! [`KvService`].
//!
//! llm-d's newer split (`precise-prefix-cache-producer` + `prefix-cache-scorer` with
//! `prefixMatchInfoProducerName`) scores the same way, with the scorer's `matchLengthWeight`
//! term added when set ([`MatchLength`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use llmd_kv_index::hashing::{BlockKey, HashAlgo};
use llmd_telemetry::HotHistogram;
use llmd_telemetry::names;
use serde::Deserialize;

use crate::endpoints::Endpoint;
use crate::kv::KvService;
use crate::scheduling::{CycleState, Decision, PrefixMatch, Scorer};

/// The llm-d type name.
pub const TYPE: &str = "precise-prefix-cache-scorer";

/// How block keys are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum HashAlgorithm {
    /// vLLM's own `sha256_cbor` block hashes (engine-exact; our default).
    #[default]
    #[serde(rename = "sha256_cbor", alias = "vllm")]
    Sha256Cbor,
    /// llm-d's chained FNV-1a over canonical CBOR, recomputed from the events' token ids
    /// (llm-d's default).
    #[serde(rename = "cbor-fnv", alias = "tokens")]
    CborFnv,
    /// llm-d's XXH64 request keys: read as [`HashAlgorithm::CborFnv`] (the keys never leave
    /// this EPP's index, so the hash does not change a decision).
    #[serde(rename = "xxh64")]
    Xxh64,
}

impl HashAlgorithm {
    /// The algorithm actually used.
    pub fn effective(self) -> Self {
        match self {
            HashAlgorithm::Xxh64 => HashAlgorithm::CborFnv,
            other => other,
        }
    }

    /// The index's mode.
    pub fn algo(self) -> HashAlgo {
        match self.effective() {
            HashAlgorithm::Sha256Cbor => HashAlgo::Sha256Cbor,
            _ => HashAlgo::CborFnv,
        }
    }
}

pub use super::precise_params::PrecisePrefixCacheParams;

/// llm-d `prefix-cache-scorer`'s match-length term: `weight × min(1, matched tokens /
/// scaleTokens)² + (1 − weight) × matched / total blocks`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchLength {
    /// `matchLengthWeight` (0..=1).
    pub weight: f64,
    /// `matchLengthScaleTokens`.
    pub scale_tokens: f64,
}

impl MatchLength {
    /// The score of `matched` of `total` blocks of `block_tokens` tokens (`matched` is
    /// fractional when provisional blocks count less than confirmed ones).
    pub fn score(&self, matched: f64, total: usize, block_tokens: usize) -> f64 {
        if total == 0 {
            return 0.0;
        }
        let ratio = matched / total as f64;
        let length = (matched * block_tokens as f64 / self.scale_tokens).min(1.0);
        self.weight * length * length + (1.0 - self.weight) * ratio
    }
}

/// `precise-prefix-cache-scorer`.
#[derive(Debug)]
pub struct PrecisePrefixCacheScorer {
    kv: Arc<KvService>,
    match_length: Option<MatchLength>,
}

impl PrecisePrefixCacheScorer {
    /// Over the EPP's KV service.
    pub fn new(kv: Arc<KvService>) -> Self {
        Self {
            kv,
            match_length: None,
        }
    }

    /// With llm-d `prefix-cache-scorer`'s match-length term.
    pub fn with_match_length(mut self, m: MatchLength) -> Self {
        self.match_length = Some(m);
        self
    }
}

impl Scorer for PrecisePrefixCacheScorer {
    fn score(&self, cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64> {
        let Some(req) = cs.request else {
            return vec![0.0; candidates.len()];
        };
        if cs.prefix.is_none() {
            let span = tracing::info_span!(
                names::spans::EPP_SCORER_PREFIX_CACHE,
                service.name = tracing::field::Empty,
                llm_d.epp.prefix_cache.total_blocks = tracing::field::Empty,
                llm_d.epp.prefix_cache.matched_blocks = tracing::field::Empty,
                llm_d.epp.prefix_cache.prompt_tokens = tracing::field::Empty,
                error = tracing::field::Empty,
            );
            cs.name_service(&span);
            let _e = span.enter();
            let bs = self.kv.block_size();
            match self.kv.keys(req) {
                Ok((keys, tokens)) => {
                    cs.prefix = Some(PrefixMatch {
                        block_size: bs,
                        total_blocks: keys.len(),
                        prompt_tokens: tokens,
                        matched: HashMap::new(),
                        provisional: HashMap::new(),
                    });
                    span.record(
                        names::attrs::EPP_PREFIX_TOTAL_BLOCKS,
                        i64::try_from(keys.len()).unwrap_or(i64::MAX),
                    );
                    span.record(
                        "llm_d.epp.prefix_cache.prompt_tokens",
                        i64::try_from(tokens).unwrap_or(i64::MAX),
                    );
                    self.lookup(cs, &keys, candidates);
                    // The per-pod list is built only for a span something records.
                    if let Some(p) = &cs.prefix
                        && !span.is_disabled()
                    {
                        let mut pairs: Vec<String> =
                            p.matched.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        pairs.sort();
                        span.record(
                            names::attrs::EPP_PREFIX_MATCHED_BLOCKS,
                            pairs.join(",").as_str(),
                        );
                    }
                    cs.keys = Some(keys);
                }
                Err(error) => {
                    span.record("error", error.as_str());
                    cs.prefix = Some(PrefixMatch {
                        block_size: bs,
                        total_blocks: 0,
                        prompt_tokens: req.user_input_bytes / 4,
                        matched: HashMap::new(),
                        provisional: HashMap::new(),
                    });
                }
            }
        } else if let Some(keys) = cs.keys.take() {
            // Another profile with other candidates: look up the ones not seen yet.
            self.lookup(cs, &keys, candidates);
            cs.keys = Some(keys);
        }
        let Some(p) = &cs.prefix else {
            return vec![0.0; candidates.len()];
        };
        let m = self.match_length.unwrap_or(MatchLength {
            weight: 0.0,
            scale_tokens: 1.0,
        });
        let discount = 1.0 - self.kv.speculative.as_ref().map_or(1.0, |s| s.weight());
        candidates
            .iter()
            .map(|e| {
                let matched = f64::from(*p.matched.get(&*e.id).unwrap_or(&0));
                let provisional = f64::from(*p.provisional.get(&*e.id).unwrap_or(&0));
                m.score(
                    matched - discount * provisional,
                    p.total_blocks,
                    p.block_size,
                )
            })
            .collect()
    }

    /// llm-d's `PreRequest` with `speculativeIndexing`: the prompt's blocks are recorded for
    /// every pod the decision names, past what each already holds.
    fn pre_request(&self, cs: &CycleState<'_>, decision: &Decision) {
        let (Some(spec), Some(keys), Some(p)) = (&self.kv.speculative, &cs.keys, &cs.prefix) else {
            return;
        };
        for leg in &decision.legs {
            let from = *p.matched.get(&leg.endpoint).unwrap_or(&0) as usize;
            spec.insert(&leg.endpoint, keys, from);
        }
    }
}

impl PrecisePrefixCacheScorer {
    fn lookup(&self, cs: &mut CycleState<'_>, keys: &[BlockKey], candidates: &[Endpoint]) {
        let Some(p) = cs.prefix.as_mut() else { return };
        let missing: Vec<&str> = candidates
            .iter()
            .map(|e| &*e.id)
            .filter(|id| !p.matched.contains_key(*id))
            .collect();
        if missing.is_empty() {
            return;
        }
        let started = Instant::now();
        let counts = self.kv.index.lookup(keys, &missing);
        let took = started.elapsed().as_secs_f64();
        static LOOKUP: [HotHistogram; 2] = [
            HotHistogram::new(&names::kv_cache::INDEX_LOOKUP_LATENCY),
            HotHistogram::new(&names::kv_cache::LEGACY_INDEX_LOOKUP_LATENCY),
        ];
        for h in &LOOKUP {
            h.record(took);
        }
        for (id, c) in missing.into_iter().zip(counts) {
            let m = match &self.kv.speculative {
                Some(s) => s.matched(id, keys, c),
                None => c,
            };
            if m > c {
                p.provisional.insert(id.to_owned(), m - c);
            }
            p.matched.insert(id.to_owned(), m);
        }
    }
}
