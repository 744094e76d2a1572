//! Starting simulators for tests: in-process (the `testing` feature) or as `llmd-sim`
//! processes (for what is per process: the metrics recorder's buckets, RSS), with the real
//! tokenizer when fetched.
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

/// A simulator process (killed when dropped).
pub struct SimProc {
    pub child: std::process::Child,
    pub base: String,
    pub port: u16,
}

impl Drop for SimProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `llmd-sim --host 127.0.0.1 --port 0 <flags>` and waits for its address.
pub fn spawn_process(flags: &[&str]) -> SimProc {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_llmd-sim"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(flags)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("llmd-sim listening on ")
        .unwrap_or_else(|| panic!("unexpected: {line:?}"))
        .to_owned();
    let port = base.rsplit(':').next().unwrap().parse().unwrap();
    SimProc { child, base, port }
}

/// The parsed `/metrics` of a simulator at `base`.
pub async fn scrape(base: &str) -> llmd_telemetry::exposition::Exposition {
    llmd_telemetry::exposition::parse(
        &reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap()
}

/// POSTs JSON to `base` + `path`; returns the status and the JSON body.
pub async fn post_json(
    base: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}
