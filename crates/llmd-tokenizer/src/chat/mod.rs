//! Chat templates rendered as `transformers.apply_chat_template` renders them, after vLLM's
//! normalization of the request.
//!
//! transformers compiles templates in a Jinja2 sandbox with `trim_blocks=True`,
//! `lstrip_blocks=True` and loop controls, adds `raise_exception`, `strftime_now` and its own
//! `tojson` (Python's `json.dumps(x, ensure_ascii=False)`: `", "` and `": "` separators, key
//! order kept, floats in Python's `repr`), and passes `messages`, `tools`, `documents`,
//! `add_generation_prompt`, the special tokens (`bos_token`, `eos_token`, ...) and any
//! `chat_template_kwargs`. minijinja with `minijinja-contrib`'s Python string methods provides
//! the same environment; the tests compare its output with transformers' on real templates.
//!
//! vLLM's normalization (`vllm/entrypoints/chat_utils.py`): text content parts are joined with
//! `"\n"` for templates that expect string content; tool-call `arguments` strings are parsed
//! into objects; tools are dumped with every declared field (`description` and `parameters`
//! as `null` when absent).

mod normalize;
mod pyjson;
mod request;
mod strftime;
mod template;

pub use request::ChatRequest;
pub use template::ChatTemplate;

use minijinja::Error as JinjaError;

/// Errors of chat rendering.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The request is not a valid chat request.
    #[error("invalid chat request: {0}")]
    InvalidRequest(String),
    /// The template failed to compile or render (including `raise_exception`).
    #[error("chat template: {0}")]
    Template(#[from] JinjaError),
    /// `tokenizer_config.json` could not be read.
    #[error("cannot read {path}: {reason}")]
    Config {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
}
