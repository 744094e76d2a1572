//! Starting simulators for tests: in-process (`llmd_sim::testing`, the way other crates'
//! tests start them through `llmd_testkit::sim`) or as `llmd-sim` processes (for what is per
//! process: the metrics recorder's buckets, RSS). Peers and tokenizer files: `llmd_testkit`.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::OnceLock;

use llmd_sim::Sim;
use llmd_sim::testing::{SimBuilder, spawn};
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

/// The Llama-3.1 tokenizer dir, if fetched (in CI its absence is a failure).
pub fn llama_tokenizer() -> Option<String> {
    llmd_testkit::tokenizer::tokenizer_dir("meta-llama/Llama-3.1-8B-Instruct")
}

/// Starts a simulator on 127.0.0.1 with these flags, serving `/metrics` from [`metrics`];
/// it serves until the token is cancelled.
pub async fn start(flags: &[&str]) -> (Sim, CancellationToken) {
    spawn(
        SimBuilder::new()
            .flags(flags.iter().copied())
            .metrics(metrics()),
    )
    .await
    .unwrap()
    .into_parts()
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
