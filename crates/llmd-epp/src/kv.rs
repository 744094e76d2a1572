//! The KV service: what the precise prefix-cache scorer reads, owned by the EPP.
//!
//! One [`KvService`] per EPP holds the prefix index (fed by the KV-event subscriber that
//! [`crate::start`] wires to the endpoint set), the tokenizers, and the prompt caches. It is
//! built from the precise scorer's parameters before any plugin ([`KvService::for_config`])
//! and handed to the plugins that need it, so the EPP owns its lifetime and its tasks (the
//! index metrics export runs in the EPP's task set).
//!
//! Tokenizers are loaded once per model (once in all when the config names one: ours
//! `tokenizer`, llm-d's `modelName`): the first request for a model loads it (on the
//! scheduling thread, never under a lock other models wait on), concurrent requests for the
//! same model wait for that one load, and [`KvService::preload`] loads the configured one at
//! start.
//!
//! A request's keys carry what vLLM folds into its block hashes besides the tokens: its
//! `cache_salt` (block 0) and, when its `model` names a configured LoRA adapter, the adapter
//! (every block), spelt as the configured vLLM generation spells them. A LoRA request is
//! tokenized with its base model's tokenizer (the configured `tokenizer`, else the adapter's
//! `baseModel`), never one named after the adapter. The prompt caches hold tokens and plain
//! digests only: keys with extra keys are hashed afresh, so a salted request never reuses (or
//! leaves behind) another request's digests.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use llmd_kv_index::hashing::{BlockKey, HashAlgo, LoraKey, RequestExtras};
use llmd_kv_index::index::IndexConfig;
use llmd_kv_index::{KvIndex, KvIndexConfig};
use llmd_tokenizer::{ChatRequest, ModelTokenizer, PromptCache};
use parking_lot::RwLock;

use crate::config::{ConfigError, EndpointPickerConfig};
use crate::plugins::precise_prefix_cache_scorer::{self, PrecisePrefixCacheParams};
use crate::request::{InferenceRequest, Prompt};

/// Tokens the prompt cache keeps per model (~16 MB of ids).
const PROMPT_CACHE_TOKENS: usize = 4_000_000;
/// Bytes between the prompt cache's resume points: a prompt sharing a prefix with a cached one
/// is tokenized from at most this far before where they part. A point costs ~40 bytes.
const PROMPT_CACHE_SPACING: usize = 256;

/// A model's tokenizer and its prompt cache.
struct TokenizerEntry {
    /// Shared with other components of the process that load the same files.
    tokenizer: Arc<ModelTokenizer>,
    cache: PromptCache,
}

type Slot = Arc<OnceLock<Option<Arc<TokenizerEntry>>>>;

/// The prefix index and the tokenizers of one EPP.
pub struct KvService {
    /// The index (the subscriber applies KV events to it).
    pub index: Arc<KvIndex>,
    params: PrecisePrefixCacheParams,
    tokenizers: RwLock<HashMap<String, Slot>>,
    /// `loraAdapters` by name: the key vLLM hashes, and the tokenizer to use.
    adapters: HashMap<String, Adapter>,
    /// Provisional entries of what was just routed (`speculativeIndexing`).
    pub speculative: Option<crate::speculative::Speculative>,
}

/// A configured LoRA adapter.
#[derive(Debug)]
struct Adapter {
    key: LoraKey,
    /// The tokenizer its requests use (the scorer's `tokenizer`, else its `baseModel`).
    tokenizer: String,
}

impl std::fmt::Debug for KvService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvService")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl KvService {
    /// The KV service a configuration needs: `None` when no plugin reads the index; otherwise
    /// built from the precise plugins' parameters (every instance must agree on them).
    pub fn for_config(config: &EndpointPickerConfig) -> Result<Option<Arc<Self>>, ConfigError> {
        let mut found: Option<PrecisePrefixCacheParams> = None;
        for spec in config
            .plugins
            .iter()
            .filter(|p| crate::plugins::is_precise(p))
        {
            let params = crate::plugins::precise_params::resolve(spec, config)?;
            match &found {
                Some(first) if *first != params => {
                    return Err(ConfigError::Invalid(format!(
                        "plugin {:?}: every {} must use the same parameters (one index per EPP)",
                        spec.name(),
                        crate::plugins::PRECISE_TYPES.join(" / ")
                    )));
                }
                _ => found = Some(params),
            }
        }
        found.map(Self::new).transpose().map(|s| s.map(Arc::new))
    }

    /// A service with these parameters.
    pub fn new(params: PrecisePrefixCacheParams) -> Result<Self, ConfigError> {
        let index = KvIndex::new(KvIndexConfig {
            algo: params.hash_algorithm.algo(),
            block_size: params.block_size,
            hash_seed: params.hash_seed.clone(),
            index: IndexConfig {
                max_bytes: params.max_index_bytes,
                ..Default::default()
            },
        })
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", precise_prefix_cache_scorer::TYPE)))?;
        let mut adapters = HashMap::new();
        for a in &params.lora_adapters {
            let tokenizer = params
                .tokenizer
                .clone()
                .or_else(|| a.base_model.clone())
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "{}: loraAdapters {:?}: baseModel needed when there is no tokenizer",
                        precise_prefix_cache_scorer::TYPE,
                        a.name
                    ))
                })?;
            let key = LoraKey {
                name: a.name.clone(),
                path: a.path.clone(),
            };
            adapters.insert(a.name.clone(), Adapter { key, tokenizer });
        }
        let speculative = params
            .speculative
            .map(|sp| crate::speculative::Speculative::new(sp.ttl, sp.weight));
        Ok(Self {
            index: Arc::new(index),
            params,
            tokenizers: RwLock::new(HashMap::new()),
            adapters,
            speculative,
        })
    }

    /// Its parameters.
    pub fn params(&self) -> &PrecisePrefixCacheParams {
        &self.params
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.params.block_size
    }

    /// The hashing mode.
    pub fn algo(&self) -> HashAlgo {
        self.params.hash_algorithm.algo()
    }

    /// Loads the configured tokenizer (the `tokenizer` parameter) now, when there is one
    /// (blocking: call it off the async runtime), so that the first request does not wait for
    /// it.
    pub fn preload(&self) {
        if let Some(name) = &self.params.tokenizer {
            let _ = self.tokenizer(name);
        }
    }

    /// The name of the tokenizer for requests to `model`: the configured one, else a LoRA
    /// adapter's base model, else the model's own.
    pub fn tokenizer_name<'a>(&'a self, model: &'a str) -> &'a str {
        if let Some(t) = &self.params.tokenizer {
            return t;
        }
        self.adapters
            .get(model)
            .map_or(model, |a| a.tokenizer.as_str())
    }

    /// What vLLM folds into a request's block hashes besides its tokens.
    pub fn extras(&self, req: &InferenceRequest) -> RequestExtras {
        RequestExtras {
            style: self.params.extra_key_style,
            lora: self.adapters.get(&req.model).map(|a| a.key.clone()),
            mm_items: Vec::new(),
            cache_salt: req.cache_salt.clone(),
        }
    }

    /// Whether the tokenizer for requests to `model` was loaded (or found missing) already, so
    /// that keying such a request reads no file.
    pub fn tokenizer_loaded(&self, model: &str) -> bool {
        let name = self.tokenizer_name(model);
        self.tokenizers
            .read()
            .get(name)
            .is_some_and(|slot| slot.get().is_some())
    }

    /// The tokenizer for requests to `model` (see [`Self::tokenizer_name`]).
    fn tokenizer(&self, model: &str) -> Option<Arc<TokenizerEntry>> {
        let name = self.tokenizer_name(model);
        let slot = {
            let read = self.tokenizers.read();
            read.get(name).cloned()
        };
        let slot = match slot {
            Some(s) => s,
            None => self
                .tokenizers
                .write()
                .entry(name.to_owned())
                .or_default()
                .clone(),
        };
        slot.get_or_init(|| {
            match ModelTokenizer::shared(name) {
                Ok(t) => Some(Arc::new(TokenizerEntry {
                    tokenizer: t,
                    cache: PromptCache::new(PROMPT_CACHE_TOKENS, PROMPT_CACHE_SPACING),
                })),
                Err(error) => {
                    tracing::warn!(model, tokenizer = name, %error, "no tokenizer: prefix-cache scores are 0 for this model");
                    None
                }
            }
        })
        .clone()
    }

    /// The block keys and token count of a request's prompt, as vLLM would hash them.
    pub fn keys(&self, req: &InferenceRequest) -> Result<(Vec<BlockKey>, usize), String> {
        let extras = self.extras(req);
        if let Prompt::Tokens(ids) = &req.prompt {
            return Ok((self.index.request_keys(&req.model, ids, &extras), ids.len()));
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
            self.index.prompt_keys(&req.model, &looked_up, &extras),
            looked_up.len(),
        ))
    }
}
