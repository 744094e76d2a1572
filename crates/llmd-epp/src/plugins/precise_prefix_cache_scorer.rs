//! `precise-prefix-cache-scorer`: score = consecutive prompt blocks (from block 0) a pod holds
//! / the prompt's full blocks, from the KV-event-fed index (`llmd-kv-index`).
//!
//! Per request: the prompt is tokenized as vLLM would (completions with special tokens, chat
//! through the model's template) through a prompt cache, its block keys computed (reusing the
//! cached prefix's digests), and the index looked up once for all candidates; the matches are
//! kept in the cycle state for the P/D handler and the other profile.
//!
//! Parameters (llm-d's names): `blockSize` (64; must equal the engines' `--block-size`),
//! `hashSeed` (the engines' `PYTHONHASHSEED`; unset: vLLM's `"vllm-none-hash"` root),
//! `hashAlgorithm` (`sha256_cbor` default, or `cbor-fnv`), `tokenizer` (a path or HF-cache model
//! name; default: the request's model), `maxIndexBytes` (512 MiB).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use llmd_kv_index::hashing::{BlockKey, HashAlgo, RequestExtras};
use llmd_kv_index::index::IndexConfig;
use llmd_kv_index::{KvIndex, KvIndexConfig};
use llmd_telemetry::names;
use llmd_tokenizer::{ChatRequest, ModelTokenizer, PromptCache};
use parking_lot::Mutex;
use serde_json::Value;

use super::{CycleState, PluginEnv, PrefixMatch, Scorer, param};
use crate::config::ConfigError;
use crate::endpoints::Endpoint;
use crate::request::{InferenceRequest, Prompt};

struct TokenizerEntry {
    tokenizer: ModelTokenizer,
    cache: PromptCache,
}

/// The prefix-cache state one EPP shares: the index (fed by the KV-event subscriber) and the
/// tokenizers.
pub struct PrefixEnv {
    /// The index.
    pub kv: Arc<KvIndex>,
    tokenizer_override: Option<String>,
    tokenizers: Mutex<HashMap<String, Option<Arc<TokenizerEntry>>>>,
}

impl std::fmt::Debug for PrefixEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixEnv").field("kv", &self.kv).finish()
    }
}

impl PrefixEnv {
    fn tokenizer(&self, model: &str) -> Option<Arc<TokenizerEntry>> {
        let mut map = self.tokenizers.lock();
        if let Some(entry) = map.get(model) {
            return entry.clone();
        }
        let name = self.tokenizer_override.as_deref().unwrap_or(model);
        let entry = match ModelTokenizer::load(name) {
            Ok(t) => Some(Arc::new(TokenizerEntry {
                tokenizer: t,
                cache: PromptCache::new(4_000_000, 1024),
            })),
            Err(error) => {
                tracing::warn!(model, %error, "no tokenizer: prefix-cache scores are 0 for this model");
                None
            }
        };
        map.insert(model.to_owned(), entry.clone());
        entry
    }

    /// The block keys and token count of a request's prompt.
    pub fn keys(&self, req: &InferenceRequest) -> Result<(Vec<BlockKey>, usize), String> {
        let none = RequestExtras::default();
        if let Prompt::Tokens(ids) = &req.prompt {
            return Ok((self.kv.request_keys(&req.model, ids, &none), ids.len()));
        }
        let entry = self
            .tokenizer(&req.model)
            .ok_or_else(|| format!("no tokenizer for {}", req.model))?;
        let looked_up = match &req.prompt {
            Prompt::Text(text) => entry.cache.lookup(&entry.tokenizer, text, true),
            Prompt::Chat(body) => {
                let chat = ChatRequest::from_openai_body(body).map_err(|e| e.to_string())?;
                let text = entry
                    .tokenizer
                    .render_chat(&chat)
                    .map_err(|e| e.to_string())?;
                entry.cache.lookup(&entry.tokenizer, &text, false)
            }
            Prompt::Tokens(_) => return Err("token-id prompts are keyed above".into()),
        }
        .map_err(|e| e.to_string())?;
        Ok((
            self.kv.prompt_keys(&req.model, &looked_up, &none),
            looked_up.len(),
        ))
    }
}

/// `precise-prefix-cache-scorer`.
#[derive(Debug)]
pub struct PrecisePrefixCacheScorer {
    env: Arc<PrefixEnv>,
}

impl PrecisePrefixCacheScorer {
    /// From parameters; the first one creates the shared [`PrefixEnv`].
    pub fn new(params: &Option<Value>, env: &mut PluginEnv) -> Result<Self, ConfigError> {
        if let Some(existing) = &env.prefix {
            return Ok(Self {
                env: existing.clone(),
            });
        }
        let block_size = param(params, "blockSize")
            .or_else(|| param(params, "blockSizeTokens"))
            .and_then(Value::as_u64)
            .unwrap_or(64) as usize;
        let hash_seed = param(params, "hashSeed").and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        let algo = match param(params, "hashAlgorithm").and_then(Value::as_str) {
            None | Some("sha256_cbor") | Some("vllm") => HashAlgo::Sha256Cbor,
            Some("cbor-fnv") | Some("tokens") => HashAlgo::CborFnv,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "precise-prefix-cache-scorer: unknown hashAlgorithm {other:?}"
                )));
            }
        };
        let max_bytes = param(params, "maxIndexBytes")
            .and_then(Value::as_u64)
            .unwrap_or(512 << 20) as usize;
        let kv = KvIndex::new(KvIndexConfig {
            algo,
            block_size,
            hash_seed,
            index: IndexConfig {
                max_bytes,
                ..Default::default()
            },
        })
        .map_err(|e| ConfigError::Invalid(format!("precise-prefix-cache-scorer: {e}")))?;
        let prefix = Arc::new(PrefixEnv {
            kv: Arc::new(kv),
            tokenizer_override: param(params, "tokenizer")
                .and_then(Value::as_str)
                .map(str::to_owned),
            tokenizers: Mutex::new(HashMap::new()),
        });
        env.prefix = Some(prefix.clone());
        Ok(Self { env: prefix })
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
                llm_d.epp.prefix_cache.total_blocks = tracing::field::Empty,
                llm_d.epp.prefix_cache.matched_blocks = tracing::field::Empty,
                error = tracing::field::Empty,
            );
            let _e = span.enter();
            let bs = self.env.kv.config().block_size;
            match self.env.keys(req) {
                Ok((keys, tokens)) => {
                    cs.prefix = Some(PrefixMatch {
                        block_size: bs,
                        total_blocks: keys.len(),
                        prompt_tokens: tokens,
                        matched: HashMap::new(),
                    });
                    span.record("llm_d.epp.prefix_cache.total_blocks", keys.len() as u64);
                    self.lookup(cs, &keys, candidates);
                    if let Some(p) = &cs.prefix {
                        let mut pairs: Vec<String> =
                            p.matched.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        pairs.sort();
                        span.record(
                            "llm_d.epp.prefix_cache.matched_blocks",
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
                    f64::from(*p.matched.get(&e.id).unwrap_or(&0)) / p.total_blocks as f64
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
            .map(|e| e.id.as_str())
            .filter(|id| !p.matched.contains_key(*id))
            .collect();
        if missing.is_empty() {
            return;
        }
        let started = Instant::now();
        let counts = self.env.kv.lookup(keys, &missing);
        metrics::histogram!(names::kv_cache::INDEX_LOOKUP_LATENCY.name)
            .record(started.elapsed().as_secs_f64());
        for (id, c) in missing.into_iter().zip(counts) {
            p.matched.insert(id.to_owned(), c);
        }
    }
}
