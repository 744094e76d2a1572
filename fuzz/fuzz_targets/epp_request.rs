//! Any bytes as an inference request body on any path, as the EPP receives them from Envoy:
//! parsing never panics, and what parses has a model and a prompt; chat bodies that parse
//! also convert to the tokenizer's chat request without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmd_epp::request::{Prompt, parse};
use llmd_tokenizer::ChatRequest;

const PATHS: &[&str] = &[
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/completions?x=1",
    "/v1/embeddings",
    "/",
];

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let path = PATHS[*selector as usize % PATHS.len()];
    // The same bytes as the end of a response body: usage extraction never panics.
    let _ = llmd_epp::protocol::find_usage(body);
    if let Ok(req) = parse(path, body) {
        assert!(!req.model.is_empty());
        if let Prompt::Chat(chat) = &req.prompt {
            let _ = ChatRequest::from_openai_body(chat);
        }
    }
});
