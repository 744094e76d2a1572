//! Tokenizer files for tests and the benchmark corpus (feature `tokenizer`).

use std::path::PathBuf;

pub use llmd_tokenizer::corpus;

use crate::peers;

/// The directory holding `model`'s `tokenizer.json` in [`peers::tokenizer_hub`] (what
/// `--tokenizer` and the EPP's `tokenizer` parameter take). `None` (skip) when it was not
/// fetched, outside `CI`; under `CI` a panic ([`peers::missing`]).
#[track_caller]
pub fn tokenizer_dir(model: &str) -> Option<PathBuf> {
    match llmd_tokenizer::locate(model, Some(&peers::tokenizer_hub())) {
        Ok(files) => Some(
            files
                .tokenizer_json
                .parent()
                .expect("a located tokenizer.json is in a directory")
                .to_path_buf(),
        ),
        Err(e) => {
            peers::missing(&format!("{model}'s tokenizer: {e}"), peers::FETCH_TOKENIZERS);
            None
        }
    }
}

/// `model`'s real tokenizer from [`peers::tokenizer_hub`]; `None` (skip) when it was not
/// fetched, outside `CI`. Files that are there but do not load are a panic.
#[track_caller]
pub fn real_tokenizer(model: &str) -> Option<llmd_tokenizer::ModelTokenizer> {
    match llmd_tokenizer::locate(model, Some(&peers::tokenizer_hub())) {
        Ok(files) => Some(
            llmd_tokenizer::ModelTokenizer::from_files(model, &files)
                .unwrap_or_else(|e| panic!("{model}'s tokenizer does not load: {e}")),
        ),
        Err(e) => {
            peers::missing(&format!("{model}'s tokenizer: {e}"), peers::FETCH_TOKENIZERS);
            None
        }
    }
}
