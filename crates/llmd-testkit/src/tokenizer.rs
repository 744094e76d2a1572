//! The real tokenizers of `.cache/hf` for tests (feature `tokenizer`).

use crate::peers;

/// The directory holding `model`'s `tokenizer.json` in [`peers::tokenizer_hub`], as the
/// simulator's `--tokenizer` flag and the EPP's `tokenizer` parameter take it. `None` (skip)
/// when it was not fetched, outside `CI`; under `CI` a panic ([`peers::missing`]).
#[track_caller]
pub fn tokenizer_dir(model: &str) -> Option<String> {
    match llmd_tokenizer::locate(model, Some(&peers::tokenizer_hub())) {
        Ok(files) => Some(
            files
                .tokenizer_json
                .parent()
                .expect("a located tokenizer.json is in a directory")
                .display()
                .to_string(),
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
            peers::missing(
                &format!("{model}'s tokenizer: {e}"),
                peers::FETCH_TOKENIZERS,
            );
            None
        }
    }
}
