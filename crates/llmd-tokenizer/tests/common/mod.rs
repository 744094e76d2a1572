//! Shared helpers: the Python test venv and the real tokenizers of `.cache/hf`.
#![allow(dead_code, clippy::unwrap_used)]

/// The test venv's Python (`LLMD_TEST_PYTHON`, or `.venv/bin/python` at the workspace root).
/// `None` outside CI when there is none (the test then says it skipped); in CI a missing venv
/// is a failure, never a silent pass.
pub fn python() -> Option<std::path::PathBuf> {
    let from_env = std::env::var_os("LLMD_TEST_PYTHON").map(std::path::PathBuf::from);
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    let found = from_env
        .filter(|p| p.exists())
        .or_else(|| venv.exists().then_some(venv));
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide the Python test venv (scripts/setup-python.sh)"
        );
        eprintln!("SKIPPED: no Python test venv; run scripts/setup-python.sh");
    }
    found
}

/// The HF-cache-layout directory `scripts/fetch-tokenizers.sh` fills.
pub fn tokenizer_hub() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/hf/hub")
}

/// The real tokenizer of `model` from `.cache/hf` (`None` outside CI when it was not fetched;
/// in CI its absence is a failure).
pub fn real_tokenizer(model: &str) -> Option<llmd_tokenizer::ModelTokenizer> {
    match llmd_tokenizer::locate(model, Some(&tokenizer_hub())) {
        Ok(files) => Some(llmd_tokenizer::ModelTokenizer::from_files(model, &files).unwrap()),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must fetch tokenizers (scripts/fetch-tokenizers.sh): {e}"
            );
            eprintln!("SKIPPED: {e}; run scripts/fetch-tokenizers.sh");
            None
        }
    }
}
