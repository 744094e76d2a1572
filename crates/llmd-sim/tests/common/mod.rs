//! Starting simulators in-process for tests, with the real tokenizer when fetched.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::OnceLock;

use llmd_sim::{EngineArgs, Sim};
use llmd_telemetry::MetricsHandle;
use tokio_util::sync::CancellationToken;

static METRICS: OnceLock<MetricsHandle> = OnceLock::new();

/// The process's Prometheus recorder (installed once).
pub fn metrics() -> MetricsHandle {
    METRICS
        .get_or_init(|| {
            llmd_telemetry::install_prometheus(&[llmd_telemetry::names::vllm::ALL], &[]).unwrap()
        })
        .clone()
}

/// Where `scripts/fetch-tokenizers.sh` puts tokenizers.
pub fn hub() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/hf/hub")
}

/// The Llama-3.1 tokenizer dir, if fetched (in CI its absence is a failure).
pub fn llama_tokenizer() -> Option<String> {
    match llmd_tokenizer::locate("meta-llama/Llama-3.1-8B-Instruct", Some(&hub())) {
        Ok(files) => Some(files.tokenizer_json.parent().unwrap().display().to_string()),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must fetch tokenizers: {e}"
            );
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

/// Engine flags from a command line (as `llmd-sim` would parse them).
pub fn engine_args(flags: &[&str]) -> EngineArgs {
    llmd_sim::EngineArgs::from_flags(flags.iter().copied()).unwrap()
}

/// Starts a simulator on 127.0.0.1 with these flags.
pub async fn start(flags: &[&str]) -> (Sim, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let sim = llmd_sim::start(
        engine_args(flags),
        listener,
        Some(metrics()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    (sim, shutdown)
}

/// The test venv's Python (None outside CI when missing).
pub fn python() -> Option<std::path::PathBuf> {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    let found = std::env::var_os("LLMD_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .filter(|p| p.exists())
        .or_else(|| venv.exists().then_some(venv));
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide the Python test venv"
        );
        eprintln!("SKIPPED: no Python test venv");
    }
    found
}
