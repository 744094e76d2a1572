//! `precise-prefix-cache-scorer`: score = consecutive prompt blocks (from block 0) a pod holds
//! / the prompt's full blocks, from the KV-event-fed index of the EPP's [`KvService`].
//!
//! Per request: the prompt is tokenized as vLLM would (completions with special tokens, chat
//! through the model's template) through a prompt cache, its block keys computed (reusing the
//! cached prefix's digests), and the index looked up once for all candidates; the matches are
//! kept in the cycle state for the P/D handler and the other profile.
//!
//! Parameters (llm-d's names): `blockSize` (64; must equal the engines' `--block-size`;
//! `blockSizeTokens` is accepted too), `hashSeed` (the engines' `PYTHONHASHSEED`; unset: vLLM's
//! `"vllm-none-hash"` root), `hashAlgorithm` (`sha256_cbor` default, or `cbor-fnv`),
//! `tokenizer` (a path or HF-cache model name; default: the request's model), `maxIndexBytes`
//! (512 MiB). They configure the EPP's one [`KvService`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use llmd_kv_index::hashing::{BlockKey, HashAlgo};
use llmd_telemetry::names;
use serde::Deserialize;

use crate::endpoints::Endpoint;
use crate::kv::KvService;
use crate::scheduling::{CycleState, PrefixMatch, Scorer};

/// The llm-d type name.
pub const TYPE: &str = "precise-prefix-cache-scorer";

/// How block keys are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum HashAlgorithm {
    /// vLLM's own `sha256_cbor` block hashes (engine-exact; the default).
    #[default]
    #[serde(rename = "sha256_cbor", alias = "vllm")]
    Sha256Cbor,
    /// llm-d's chained FNV-1a over canonical CBOR, recomputed from the events' token ids.
    #[serde(rename = "cbor-fnv", alias = "tokens")]
    CborFnv,
}

impl HashAlgorithm {
    /// The index's mode.
    pub fn algo(self) -> HashAlgo {
        match self {
            HashAlgorithm::Sha256Cbor => HashAlgo::Sha256Cbor,
            HashAlgorithm::CborFnv => HashAlgo::CborFnv,
        }
    }
}

/// Parameters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PrecisePrefixCacheParams {
    /// Tokens per block (the engines' `--block-size`).
    #[serde(alias = "blockSizeTokens")]
    pub block_size: usize,
    /// The engines' `PYTHONHASHSEED` (a string or a number).
    #[serde(deserialize_with = "string_or_number")]
    pub hash_seed: Option<String>,
    /// How block keys are computed.
    pub hash_algorithm: HashAlgorithm,
    /// Tokenizer to use (path or model name) instead of the request's model.
    pub tokenizer: Option<String>,
    /// The index's memory budget, bytes.
    pub max_index_bytes: usize,
}

impl Default for PrecisePrefixCacheParams {
    fn default() -> Self {
        Self {
            block_size: 64,
            hash_seed: None,
            hash_algorithm: HashAlgorithm::default(),
            tokenizer: None,
            max_index_bytes: 512 << 20,
        }
    }
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seed {
        S(String),
        N(serde_json::Number),
    }
    Ok(match Option::<Seed>::deserialize(d)? {
        None => None,
        Some(Seed::S(s)) => Some(s),
        Some(Seed::N(n)) => Some(n.to_string()),
    })
}

/// `precise-prefix-cache-scorer`.
#[derive(Debug)]
pub struct PrecisePrefixCacheScorer {
    kv: Arc<KvService>,
}

impl PrecisePrefixCacheScorer {
    /// Over the EPP's KV service.
    pub fn new(kv: Arc<KvService>) -> Self {
        Self { kv }
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
                    if let Some(p) = &cs.prefix {
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
        candidates
            .iter()
            .map(|e| {
                if p.total_blocks == 0 {
                    0.0
                } else {
                    f64::from(*p.matched.get(&*e.id).unwrap_or(&0)) / p.total_blocks as f64
                }
            })
            .collect()
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
        metrics::histogram!(names::kv_cache::INDEX_LOOKUP_LATENCY.name)
            .record(started.elapsed().as_secs_f64());
        for (id, c) in missing.into_iter().zip(counts) {
            p.matched.insert(id.to_owned(), c);
        }
    }
}
