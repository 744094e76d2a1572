//! Prompt tokenization (the same tokenizer and chat template as vLLM, from `llmd-tokenizer`, so
//! the sim's KV events match what an EPP computes) and output text.

use std::sync::Arc;

use llmd_tokenizer::{ChatRequest, ModelTokenizer, PromptCache, PromptCacheStats, TokenizerError};

/// Filler the random mode generates from.
const FILLER: &str = "The quick brown fox jumps over the lazy dog. Serving large language models \
is a matter of moving bytes: weights for every decode step, KV blocks between prefill and decode \
pods, and prompts through routers that remember which pod already holds them. ";

/// The sim's tokenizer.
#[allow(clippy::large_enum_variant)] // one per simulator, never moved around
pub enum SimTokenizer {
    /// The model's HF tokenizer, with a prompt cache for long shared prefixes.
    Hf(Arc<ModelTokenizer>, PromptCache),
    /// Byte-level stand-in: token ids are UTF-8 bytes; chat is `<|role|>content\n` lines.
    Bytes,
}

impl std::fmt::Debug for SimTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimTokenizer::Hf(t, _) => write!(f, "SimTokenizer::Hf({})", t.name()),
            SimTokenizer::Bytes => write!(f, "SimTokenizer::Bytes"),
        }
    }
}

impl SimTokenizer {
    /// Loads the model's tokenizer (with a prompt cache of at most `cache_tokens` tokens), or
    /// the byte stand-in when asked for.
    pub fn load(
        model: &str,
        tokenizer: Option<&str>,
        dummy: bool,
        cache_tokens: usize,
    ) -> Result<Self, TokenizerError> {
        if dummy {
            return Ok(SimTokenizer::Bytes);
        }
        // Shared with the other simulators and the EPP of the same process (`llmd demo`).
        let tok = ModelTokenizer::shared(tokenizer.unwrap_or(model))?;
        Ok(SimTokenizer::Hf(tok, PromptCache::new(cache_tokens, 1024)))
    }

    /// The prompt cache's counters (the byte stand-in has none).
    pub fn prompt_cache_stats(&self) -> Option<PromptCacheStats> {
        match self {
            SimTokenizer::Hf(_, cache) => Some(cache.stats()),
            SimTokenizer::Bytes => None,
        }
    }

    /// Token ids of a completions prompt (special tokens added, as vLLM does).
    pub fn encode_completion(&self, prompt: &str) -> Result<Vec<u32>, TokenizerError> {
        match self {
            SimTokenizer::Hf(t, cache) => cache.encode(t, prompt, true),
            SimTokenizer::Bytes => Ok(prompt.bytes().map(u32::from).collect()),
        }
    }

    /// Token ids of a chat request.
    pub fn encode_chat(&self, request: &ChatRequest) -> Result<Vec<u32>, TokenizerError> {
        match self {
            SimTokenizer::Hf(t, cache) => {
                let text = t.render_chat(request)?;
                cache.encode(t, &text, false)
            }
            SimTokenizer::Bytes => {
                let mut text = String::new();
                for m in &request.messages {
                    let role = m["role"].as_str().unwrap_or("user");
                    let content = match &m["content"] {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    text.push_str(&format!("<|{role}|>{content}\n"));
                }
                if request.add_generation_prompt {
                    text.push_str("<|assistant|>");
                }
                Ok(text.bytes().map(u32::from).collect())
            }
        }
    }

    /// Text of `ids` (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            SimTokenizer::Hf(t, _) => t.inner().decode(ids, true).unwrap_or_default(),
            SimTokenizer::Bytes => {
                let bytes: Vec<u8> = ids.iter().map(|i| (*i).min(255) as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }

    /// Token ids of the filler text (no special tokens).
    pub fn filler(&self) -> Vec<u32> {
        match self {
            SimTokenizer::Hf(t, _) => t.encode(FILLER, false).unwrap_or_default(),
            SimTokenizer::Bytes => FILLER.bytes().map(u32::from).collect(),
        }
    }

    /// Ids of `text` without special tokens (echo mode).
    pub fn plain(&self, text: &str) -> Vec<u32> {
        match self {
            SimTokenizer::Hf(t, _) => t.encode(text, false).unwrap_or_default(),
            SimTokenizer::Bytes => text.bytes().map(u32::from).collect(),
        }
    }
}
