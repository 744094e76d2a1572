//! `llmd-tokenizer`: tokenization exactly as vLLM does it, so request keys match the engine's
//! blocks. At the bottom of the crate graph: the KV index, the EPP, the simulator and the load
//! generator use it; it uses none of them.
//!
//! - **Completions**: `tokenizer(prompt, add_special_tokens=True)` (vLLM's default), so
//!   Llama-3's `<|begin_of_text|>` is prepended by the tokenizer's post-processor.
//! - **Chat**: the model's chat template (from `tokenizer_config.json`) is rendered the way
//!   `transformers.apply_chat_template` renders it, with vLLM's message normalization
//!   ([`chat`]), and the text is tokenized with `add_special_tokens=False` (the template writes
//!   the special tokens itself).
//!
//! Files are found in a local directory (or a `tokenizer.json` path), or in the HuggingFace
//! cache layout `$HF_HUB_CACHE` / `$HF_HOME/hub` / `~/.cache/huggingface/hub`
//! `/models--org--name/snapshots/<rev>/` (revision from `refs/main`), never downloaded.
//!
//! [`PromptCache`] keeps recent prompts' token ids so a long shared prefix is not re-tokenized.
//!
//! **Fast path.** For byte-level BPE tokenizers of the Llama-3 / Qwen2-3 kind, ids come from
//! [`FastBpe`] (the same ids as HF `tokenizers`, in a fraction of the time: see the crate
//! README); any other tokenizer is encoded by HF `tokenizers` ([`ModelTokenizer::fast_path`]
//! says which, [`ModelTokenizer::fast_path_unsupported`] why not).
//!
//! ```no_run
//! use llmd_tokenizer::{ChatRequest, ModelTokenizer, PromptCache};
//!
//! let tok = ModelTokenizer::load("meta-llama/Llama-3.1-8B-Instruct")?;
//! let ids = tok.encode_completion("The capital of France is")?; // BOS first
//! let chat = ChatRequest::new(vec![serde_json::json!({"role": "user", "content": "Hi"})]);
//! let chat_ids = tok.encode_chat(&chat)?;
//! let cache = PromptCache::new(1_000_000, 256);
//! assert_eq!(cache.encode(&tok, "The capital of France is", true)?, ids);
//! # let _ = chat_ids;
//! # Ok::<(), llmd_tokenizer::TokenizerError>(())
//! ```

pub mod chat;
mod fast;
mod locate;
mod prompt_cache;

pub use chat::{ChatError, ChatRequest, ChatTemplate};
pub use fast::{FastBpe, Unsupported};
pub use locate::{TokenizerFiles, hf_hub_cache, locate};
pub use prompt_cache::{CacheEntry, PromptCache, PromptCacheStats, PromptTokens};

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// Errors loading or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// No tokenizer files where we looked.
    #[error("no tokenizer for {model:?}: looked in {searched}")]
    NotFound {
        /// Model or path asked for.
        model: String,
        /// Where we looked.
        searched: String,
    },
    /// `tokenizer.json` could not be loaded.
    #[error("cannot load {path}: {source}")]
    Load {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `tokenizer_config.json` is not valid JSON.
    #[error("cannot read {path}: {source}")]
    Config {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Encoding failed.
    #[error("cannot tokenize: {0}")]
    Encode(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The chat request could not be rendered.
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// The model has no chat template.
    #[error("model {0:?} has no chat template")]
    NoChatTemplate(String),
    /// `tokenizer.json` could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Token ids and their byte offsets in the text.
type IdsAndOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// A model's tokenizer and chat template.
pub struct ModelTokenizer {
    name: String,
    tokenizer: tokenizers::Tokenizer,
    chat: Option<ChatTemplate>,
    /// `encode(x, true)` = `special_prefix` + `encode(x, false)`, with nothing appended:
    /// the condition under which a prompt can be resumed from a cached prefix.
    resumable: bool,
    /// Resumable also at a space before an ASCII letter (see [`Self::resumes_at_spaces`]).
    at_spaces: bool,
    /// The byte-level BPE fast path, or why this tokenizer has none.
    fast: Result<FastBpe, Unsupported>,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("name", &self.name)
            .field("vocab", &self.tokenizer.get_vocab_size(true))
            .field("chat_template", &self.chat.is_some())
            .field("fast_path", &self.fast.is_ok())
            .finish()
    }
}

/// What makes two loads the same for [`ModelTokenizer::shared`]: the name and each file's path,
/// size and modification time (`None` where the file is absent or unreadable).
#[derive(Debug, PartialEq, Eq)]
struct SharedKey {
    name: String,
    files: Vec<(PathBuf, Option<FileStamp>)>,
}

/// A file's size and modification time.
type FileStamp = (u64, Option<std::time::SystemTime>);

impl SharedKey {
    fn of(name: &str, files: &TokenizerFiles) -> Self {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.len(), m.modified().ok()))
        };
        let mut paths = vec![files.tokenizer_json.clone()];
        paths.extend(files.tokenizer_config.clone());
        Self {
            name: name.to_owned(),
            files: paths
                .into_iter()
                .map(|p| {
                    let s = stamp(&p);
                    (p, s)
                })
                .collect(),
        }
    }
}

impl ModelTokenizer {
    /// Finds and loads the tokenizer of `model` (a HF model name or a local path).
    pub fn load(model: &str) -> Result<Self, TokenizerError> {
        let files = locate(model, None)?;
        Self::from_files(model, &files)
    }

    /// Like [`Self::load`], but shared within the process: while an `Arc` from an earlier
    /// call for the same name and the same files (path, size and modification time of
    /// `tokenizer.json` and `tokenizer_config.json`) is alive, it is returned instead of a new
    /// load. A Llama-3.1 tokenizer takes about 0.75 s and 150 MB to load; `llmd demo` runs an
    /// EPP and several simulators in one process, which all read the same files. Concurrent
    /// first calls load once (the others wait for it).
    pub fn shared(model: &str) -> Result<Arc<Self>, TokenizerError> {
        static SHARED: Mutex<Vec<(SharedKey, Weak<ModelTokenizer>)>> = Mutex::new(Vec::new());
        static LOADING: Mutex<()> = Mutex::new(());
        let files = locate(model, None)?;
        let key = SharedKey::of(model, &files);
        let find = |key: &SharedKey| {
            SHARED
                .lock()
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, t)| t.upgrade())
        };
        if let Some(t) = find(&key) {
            return Ok(t);
        }
        let _loading = LOADING.lock();
        if let Some(t) = find(&key) {
            return Ok(t);
        }
        let t = Arc::new(Self::from_files(model, &files)?);
        let mut shared = SHARED.lock();
        shared.retain(|(_, t)| t.strong_count() > 0);
        shared.push((key, Arc::downgrade(&t)));
        Ok(t)
    }

    /// Loads from located files.
    pub fn from_files(name: &str, files: &TokenizerFiles) -> Result<Self, TokenizerError> {
        let path = || files.tokenizer_json.display().to_string();
        let text = std::fs::read_to_string(&files.tokenizer_json).map_err(|source| {
            TokenizerError::Read {
                path: path(),
                source,
            }
        })?;
        // Parsed once: HF and the fast path read the same document.
        let load_error = |e: serde_json::Error| TokenizerError::Load {
            path: path(),
            source: Box::new(e),
        };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(load_error)?;
        drop(text);
        let tokenizer = <tokenizers::Tokenizer as serde::Deserialize>::deserialize(&json)
            .map_err(load_error)?;
        let fast = FastBpe::from_json(&json);
        drop(json);
        let chat = match &files.tokenizer_config {
            Some(path) => ChatTemplate::from_tokenizer_config(path)?,
            None => None,
        };
        let mut t = Self {
            name: name.to_owned(),
            tokenizer,
            chat,
            resumable: false,
            at_spaces: false,
            fast,
        };
        let pre_tokenizer = serde_json::to_value(t.tokenizer.get_pre_tokenizer())
            .map(|v| v.to_string())
            .unwrap_or_default();
        t.resumable = t.probe_resumable(&pre_tokenizer);
        t.at_spaces = t.resumable && t.probe_spaces(&pre_tokenizer);
        Ok(t)
    }

    /// Loads `tokenizer.json` (and `tokenizer_config.json` beside it, if any) from `dir`.
    pub fn from_dir(name: &str, dir: &Path) -> Result<Self, TokenizerError> {
        Self::from_files(name, &locate(&dir.display().to_string(), None)?)
    }

    /// The model name it was loaded for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    /// The underlying HF tokenizer (what [`Self::encode`] falls back to, and the reference
    /// the fast path is tested against).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// The byte-level BPE fast path, when this tokenizer has one (then [`Self::encode`] uses
    /// it).
    pub fn fast_path(&self) -> Option<&FastBpe> {
        self.fast.as_ref().ok()
    }

    /// Why this tokenizer has no fast path (`None` when it has one).
    pub fn fast_path_unsupported(&self) -> Option<&Unsupported> {
        self.fast.as_ref().err()
    }

    /// Token ids of `text` (`add_special_tokens` as in HF: BOS etc. from the post-processor).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        if let Ok(fast) = &self.fast {
            return Ok(fast.encode(text, add_special_tokens));
        }
        let enc = self
            .tokenizer
            .encode_fast(text, add_special_tokens)
            .map_err(TokenizerError::Encode)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids and byte offsets of `text`.
    fn encode_with_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<IdsAndOffsets, TokenizerError> {
        if let Ok(fast) = &self.fast
            && let Some(found) = fast.encode_with_offsets(text, add_special_tokens)
        {
            return Ok(found);
        }
        let enc = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(TokenizerError::Encode)?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Token ids of a completions `prompt`, as vLLM computes them (special tokens added).
    pub fn encode_completion(&self, prompt: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode(prompt, true)
    }

    /// The rendered chat text, as `apply_chat_template(..., tokenize=False)` returns it.
    pub fn render_chat(&self, request: &ChatRequest) -> Result<String, TokenizerError> {
        let chat = self
            .chat
            .as_ref()
            .ok_or_else(|| TokenizerError::NoChatTemplate(self.name.clone()))?;
        Ok(chat.render(request)?)
    }

    /// Token ids of a chat request, as vLLM computes them.
    pub fn encode_chat(&self, request: &ChatRequest) -> Result<Vec<u32>, TokenizerError> {
        self.encode(&self.render_chat(request)?, false)
    }

    /// True when a prompt can be resumed from a cached prefix (see [`PromptCache`]).
    pub fn resumable(&self) -> bool {
        self.resumable
    }

    /// True when a prompt can also be resumed at a space that follows a visible ASCII character
    /// and precedes an ASCII letter (`word| word`), as well as after a newline run: the
    /// pre-tokenizer's regex starts a pre-token at the space of `\s?\p{L}+` (GPT-2's
    /// ` ?\p{L}+`, Llama-3's and Qwen's `[^\r\n\p{L}\p{N}]?\p{L}+`), and no alternative
    /// before it can take that space (punctuation runs and digit runs end before it, and
    /// whitespace runs leave their last space to the next pre-token). Prompts without
    /// newlines (a completions prompt that is one paragraph) then reuse a cached prefix too.
    pub fn resumes_at_spaces(&self) -> bool {
        self.at_spaces
    }

    /// The pre-tokenizer has the letter-run alternative with its optional leading character,
    /// no added token holds a space (an added token spanning the cut would be split), and
    /// splitting a probe at each such space gives the same ids as the whole.
    fn probe_spaces(&self, pre_tokenizer: &str) -> bool {
        let letters =
            pre_tokenizer.contains("\"use_regex\":true") || pre_tokenizer.contains("?\\\\p{L}+");
        let spaced_added = self
            .tokenizer
            .get_added_tokens_decoder()
            .values()
            .any(|t| t.content.contains(' '));
        if !letters || spaced_added {
            return false;
        }
        let probe = "The quick brown fox, 42 times; jumps over it's lazy dog.Then  two spaces \
                     and\ta tab: x=1 y The END";
        let Ok(whole) = self.encode(probe, false) else {
            return false;
        };
        (0..probe.len())
            .filter(|&p| prompt_cache::is_space_point(probe.as_bytes(), p))
            .all(|p| {
                match (
                    self.encode(&probe[..p], false),
                    self.encode(&probe[p..], false),
                ) {
                    (Ok(mut head), Ok(tail)) => {
                        head.extend(tail);
                        head == whole
                    }
                    _ => false,
                }
            })
    }

    /// The post-processor must only prepend (BOS), never append, and the pre-tokenizer must be
    /// a byte-level regex split: then tokenizing `text[cut..]` after a newline run followed by an
    /// ASCII graphic character gives the tail of `text`'s tokens exactly.
    fn probe_resumable(&self, pre_tokenizer: &str) -> bool {
        let byte_level = pre_tokenizer.contains("ByteLevel")
            && (pre_tokenizer.contains("Split") || pre_tokenizer.contains("\"use_regex\":true"));
        let probe = "Hello world.\nNext line";
        let (Ok(with), Ok(without)) = (self.encode(probe, true), self.encode(probe, false)) else {
            return false;
        };
        byte_level && with.ends_with(&without)
    }
}
