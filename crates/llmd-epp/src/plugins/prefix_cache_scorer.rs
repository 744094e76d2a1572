//! `prefix-cache-scorer`, with both of its llm-d meanings:
//!
//! - **fed by a precise producer** (llm-d's current precise guide: `parameters:
//!   {prefixMatchInfoProducerName: <a precise-prefix-cache-producer>}`): the precise prefix
//!   cache of the EPP's [`crate::kv::KvService`], as `precise-prefix-cache-scorer`;
//! - **otherwise** the approximate prefix cache of GIE (and llm-d's
//!   `approx-prefix-cache-producer`): what the EPP itself sent where
//!   ([`super::approx_prefix`]), for pools without KV events (the simulator guide's default
//!   config).
//!
//! Score: `matchLengthWeight × min(1, matched tokens / matchLengthScaleTokens)² + (1 −
//! matchLengthWeight) × matched blocks / total blocks` (weight 0 by default: the plain ratio,
//! as GIE's classic scorer).
//!
//! llm-d ≤ v0.3 chose with `mode`: `estimate` (approximate) or `cache_tracking` (precise, its
//! parameters those of `precise-prefix-cache-scorer`, beside `mode`).
//!
//! Parameters: `prefixMatchInfoProducerName`, `matchLengthWeight` (0), `matchLengthScaleTokens`
//! (8192); for the approximate cache (here, or on the named `approx-prefix-cache-producer`):
//! `blockSize` (64 characters; GIE's), or `blockSizeTokens` (llm-d's; ×4 characters, llm-d's own
//! characters-per-token estimate), `maxPrefixBlocksToMatch` (256), `maxPrefixTokensToMatch`
//! (×4 characters), `lruCapacityPerServer` (31250), `autoTune` (true: block size = the pods'
//! `vllm:cache_config_info` block size × 4 characters, LRU = their `num_gpu_blocks`).

use std::sync::Arc;

use llmd_telemetry::names;
use serde::Deserialize;

use super::approx_prefix::{ApproxIndex, hash_prompt, user_input};
use super::precise_prefix_cache_scorer::MatchLength;
use crate::endpoints::{Endpoint, Pool};
use crate::scheduling::{ApproxPrefix, CycleState, Decision, PrefixMatch, Scorer};

/// The llm-d type name.
pub const TYPE: &str = "prefix-cache-scorer";
/// llm-d's approximate producer type.
pub const APPROX_PRODUCER_TYPE: &str = "approx-prefix-cache-producer";

/// llm-d's (and GIE's) characters-per-token estimate.
pub const CHARS_PER_TOKEN: usize = 4;

/// Parameters of the scorer.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Params {
    /// The producer whose match this scorer reads.
    pub prefix_match_info_producer_name: Option<String>,
    /// Weight of the absolute match length (0..=1).
    pub match_length_weight: Option<f64>,
    /// Tokens at which the match-length term saturates.
    pub match_length_scale_tokens: Option<f64>,
    /// Characters per block (GIE; `hashBlockSize` in llm-d ≤ v0.3).
    #[serde(alias = "hashBlockSize")]
    pub block_size: Option<usize>,
    /// Tokens per block (llm-d), ×4 characters.
    pub block_size_tokens: Option<usize>,
    /// Blocks looked at.
    pub max_prefix_blocks_to_match: Option<usize>,
    /// Tokens looked at (llm-d), ×4 characters.
    pub max_prefix_tokens_to_match: Option<usize>,
    /// Blocks remembered per pod.
    pub lru_capacity_per_server: Option<usize>,
    /// Take block size and LRU size from the pods' `vllm:cache_config_info`.
    pub auto_tune: Option<bool>,
    /// llm-d ≤ v0.3: `estimate` (this approximate cache) or `cache_tracking` (the precise
    /// cache, with the precise parameters beside it).
    pub mode: Option<String>,
}

/// The approximate cache's settings (GIE's classic names and llm-d's producer's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApproxParams {
    /// Characters per block (GIE).
    pub block_size: Option<usize>,
    /// Tokens per block (llm-d), ×4 characters.
    pub block_size_tokens: Option<usize>,
    /// Blocks looked at.
    pub max_prefix_blocks_to_match: Option<usize>,
    /// Tokens looked at (llm-d), ×4 characters.
    pub max_prefix_tokens_to_match: Option<usize>,
    /// Blocks remembered per pod.
    pub lru_capacity_per_server: Option<usize>,
    /// Take block size and LRU size from the pods' `vllm:cache_config_info`.
    pub auto_tune: Option<bool>,
}

/// Parameters of `approx-prefix-cache-producer` (refuses unknown fields).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApproxProducerParams {
    /// Tokens per block.
    pub block_size_tokens: Option<usize>,
    /// Blocks looked at.
    pub max_prefix_blocks_to_match: Option<usize>,
    /// Tokens looked at.
    pub max_prefix_tokens_to_match: Option<usize>,
    /// Blocks remembered per pod.
    pub lru_capacity_per_server: Option<usize>,
    /// Take block size and LRU size from the pods.
    pub auto_tune: Option<bool>,
}

impl From<ApproxProducerParams> for ApproxParams {
    fn from(p: ApproxProducerParams) -> Self {
        Self {
            block_size: None,
            block_size_tokens: p.block_size_tokens,
            max_prefix_blocks_to_match: p.max_prefix_blocks_to_match,
            max_prefix_tokens_to_match: p.max_prefix_tokens_to_match,
            lru_capacity_per_server: p.lru_capacity_per_server,
            auto_tune: p.auto_tune,
        }
    }
}

impl Params {
    /// Its approximate-cache settings.
    pub fn approx(&self) -> ApproxParams {
        ApproxParams {
            block_size: self.block_size,
            block_size_tokens: self.block_size_tokens,
            max_prefix_blocks_to_match: self.max_prefix_blocks_to_match,
            max_prefix_tokens_to_match: self.max_prefix_tokens_to_match,
            lru_capacity_per_server: self.lru_capacity_per_server,
            auto_tune: self.auto_tune,
        }
    }

    /// True when it sets an approximate-cache setting.
    pub fn sets_approx(&self) -> bool {
        self.approx() != ApproxParams::default()
    }

    /// The match-length term (validated).
    pub fn match_length(&self) -> Result<MatchLength, String> {
        let weight = self.match_length_weight.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&weight) {
            return Err(format!("matchLengthWeight must be in [0, 1], got {weight}"));
        }
        let scale_tokens = self.match_length_scale_tokens.unwrap_or(8192.0);
        if !(scale_tokens.is_finite() && scale_tokens > 0.0) {
            return Err(format!(
                "matchLengthScaleTokens must be positive, got {scale_tokens}"
            ));
        }
        Ok(MatchLength {
            weight,
            scale_tokens,
        })
    }
}

/// The approximate cache's resolved settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApproxSettings {
    /// Characters per block.
    pub block_chars: usize,
    /// Blocks looked at.
    pub max_blocks: usize,
    /// Blocks remembered per pod.
    pub lru_capacity: usize,
    /// Take block size and LRU size from the pods.
    pub auto_tune: bool,
}

impl ApproxParams {
    /// Resolved over GIE's defaults.
    pub fn settings(&self) -> Result<ApproxSettings, String> {
        if self.block_size.is_some() && self.block_size_tokens.is_some() {
            return Err("set blockSize (characters) or blockSizeTokens, not both".into());
        }
        let block_chars = match (self.block_size, self.block_size_tokens) {
            (Some(c), _) => c,
            (_, Some(t)) => t * CHARS_PER_TOKEN,
            _ => 64,
        };
        if block_chars == 0 {
            return Err("the block size must be positive".into());
        }
        let max_blocks = match (
            self.max_prefix_blocks_to_match,
            self.max_prefix_tokens_to_match,
        ) {
            (Some(b), Some(t)) => b.min((t * CHARS_PER_TOKEN).div_ceil(block_chars)),
            (Some(b), None) => b,
            (None, Some(t)) => (t * CHARS_PER_TOKEN).div_ceil(block_chars),
            (None, None) => 256,
        };
        Ok(ApproxSettings {
            block_chars,
            max_blocks: max_blocks.max(1),
            lru_capacity: self
                .lru_capacity_per_server
                .filter(|c| *c > 0)
                .unwrap_or(31250),
            auto_tune: self.auto_tune.unwrap_or(true),
        })
    }
}

/// The approximate `prefix-cache-scorer`.
#[derive(Debug)]
pub struct ApproxPrefixCacheScorer {
    name: String,
    settings: ApproxSettings,
    match_length: MatchLength,
    index: Arc<ApproxIndex>,
    pool: Option<Arc<Pool>>,
}

impl ApproxPrefixCacheScorer {
    /// A scorer named `name` over `index` (shared by every scorer of one producer).
    pub fn new(
        name: &str,
        settings: ApproxSettings,
        match_length: MatchLength,
        index: Arc<ApproxIndex>,
        pool: Option<Arc<Pool>>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            settings,
            match_length,
            index,
            pool,
        }
    }

    fn block_chars(&self, candidates: &[Endpoint]) -> usize {
        if self.settings.auto_tune
            && let Some(bs) = candidates
                .first()
                .and_then(|e| e.load)
                .and_then(|(l, _)| l.cache_block_size)
                .filter(|b| *b > 0)
        {
            return bs as usize * CHARS_PER_TOKEN;
        }
        self.settings.block_chars
    }
}

impl Scorer for ApproxPrefixCacheScorer {
    fn score(&self, cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64> {
        let Some(req) = cs.request else {
            return vec![0.0; candidates.len()];
        };
        let block_chars = self.block_chars(candidates);
        let hashes = hash_prompt(req, block_chars, self.settings.max_blocks);
        let matched = self.index.match_longest(&hashes);
        let total = hashes.len();
        let block_tokens = (block_chars / CHARS_PER_TOKEN).max(1);
        let scores = candidates
            .iter()
            .map(|e| {
                self.match_length.score(
                    f64::from(*matched.get(&*e.id).unwrap_or(&0)),
                    total,
                    block_tokens,
                )
            })
            .collect();
        cs.approx_prefix = Some(PrefixMatch {
            block_size: block_tokens,
            total_blocks: total,
            prompt_tokens: user_input(req).len() / CHARS_PER_TOKEN,
            matched,
            provisional: Default::default(),
        });
        cs.approx_hashes.insert(
            self.name.clone(),
            ApproxPrefix {
                hashes,
                block_chars,
            },
        );
        scores
    }

    fn pre_request(&self, cs: &CycleState<'_>, decision: &Decision) {
        let Some(state) = cs.approx_hashes.get(&self.name) else {
            return;
        };
        let mut chosen: Vec<&str> = decision
            .endpoints
            .iter()
            .take(1)
            .map(String::as_str)
            .collect();
        if let Some((_, p)) = decision
            .headers
            .iter()
            .find(|(k, _)| k == super::pd_profile_handler::PREFILLER_HEADER)
        {
            chosen.push(p);
        }
        let pods = self.pool.as_ref().map(|p| p.snapshot());
        for pod in &chosen {
            let capacity = pods
                .as_ref()
                .filter(|_| self.settings.auto_tune)
                .and_then(|eps| eps.iter().find(|e| &*e.id == *pod))
                .and_then(|e| e.load)
                .and_then(|(l, _)| l.num_gpu_blocks)
                .filter(|n| *n > 0)
                .map_or(self.settings.lru_capacity, |n| n as usize);
            self.index.add(&state.hashes, pod, capacity);
        }
        if let Some(eps) = &pods {
            self.index.prune(&|p| eps.iter().any(|e| &*e.id == p));
        }
        // GIE's hit metrics, for the primary pod.
        if let (Some(first), Some(m)) = (chosen.first(), &cs.approx_prefix) {
            let matched = f64::from(*m.matched.get(*first).unwrap_or(&0));
            let total = m.total_blocks as f64;
            let bytes = matched * state.block_chars as f64;
            metrics::histogram!(names::epp::PREFIX_INDEXER_HIT_BYTES.name).record(bytes);
            metrics::histogram!(names::epp::LLMD_PREFIX_INDEXER_HIT_BYTES.name, "plugin_name" => self.name.clone(), "plugin_type" => TYPE).record(bytes);
            if total > 0.0 {
                metrics::histogram!(names::epp::PREFIX_INDEXER_HIT_RATIO.name)
                    .record(matched / total);
                metrics::histogram!(names::epp::LLMD_PREFIX_INDEXER_HIT_RATIO.name, "plugin_name" => self.name.clone(), "plugin_type" => TYPE).record(matched / total);
            }
        }
        let size = self.index.size() as f64;
        metrics::gauge!(names::epp::PREFIX_INDEXER_SIZE.name).set(size);
        metrics::gauge!(names::epp::LLMD_PREFIX_INDEXER_SIZE.name, "plugin_name" => self.name.clone(), "plugin_type" => TYPE).set(size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_gie_and_llm_d() {
        let s = ApproxParams::default().settings().unwrap();
        assert_eq!(
            s,
            ApproxSettings {
                block_chars: 64,
                max_blocks: 256,
                lru_capacity: 31250,
                auto_tune: true
            }
        );
        let s = ApproxParams {
            block_size_tokens: Some(16),
            max_prefix_tokens_to_match: Some(1024),
            auto_tune: Some(false),
            ..Default::default()
        }
        .settings()
        .unwrap();
        assert_eq!((s.block_chars, s.max_blocks, s.auto_tune), (64, 64, false));
        assert!(
            ApproxParams {
                block_size: Some(4),
                block_size_tokens: Some(4),
                ..Default::default()
            }
            .settings()
            .is_err()
        );
        let p: Params =
            serde_json::from_value(serde_json::json!({"matchLengthWeight": 0.5, "blockSize": 32}))
                .unwrap();
        assert_eq!(p.match_length().unwrap().weight, 0.5);
        assert_eq!(p.approx().block_size, Some(32));
        assert!(serde_json::from_value::<Params>(serde_json::json!({"blockSze": 1})).is_err());
    }

    #[test]
    fn the_match_length_term() {
        let m = MatchLength {
            weight: 0.5,
            scale_tokens: 128.0,
        };
        // 2 of 4 blocks of 16 tokens: ratio 0.5, length (32/128)^2 = 1/16.
        assert!((m.score(2.0, 4, 16) - (0.5 * 0.0625 + 0.5 * 0.5)).abs() < 1e-12);
        assert_eq!(m.score(0.0, 0, 16), 0.0);
    }
}
