//! The real tokenizers of `.cache/hf` for this crate's tests. Other crates' tests have this as
//! `llmd_testkit::tokenizer` (feature `tokenizer`, which depends on this crate); these tests use
//! only the test kit's dependency-free part (crates/llmd-testkit/README.md).
#![allow(dead_code)]

use llmd_testkit::peers;

/// The real tokenizer of `model` from `.cache/hf`; `None` (skip) when it was not fetched,
/// outside `CI` ([`peers::missing`]).
pub fn real_tokenizer(model: &str) -> Option<llmd_tokenizer::ModelTokenizer> {
    match llmd_tokenizer::locate(model, Some(&peers::tokenizer_hub())) {
        Ok(files) => Some(
            llmd_tokenizer::ModelTokenizer::from_files(model, &files)
                .unwrap_or_else(|e| panic!("{model}'s tokenizer does not load: {e}")),
        ),
        Err(e) => {
            peers::missing(
                &format!("{model}'s tokenizer: {e}"),
                peers::FETCH_TOKENIZERS,
            );
            None
        }
    }
}
