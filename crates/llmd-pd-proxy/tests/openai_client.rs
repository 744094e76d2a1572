//! The real Python `openai` client through the proxy (P/D, streaming and not, completions and
//! chat) gets exactly what it gets from the decode engine directly.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use clap::Parser;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn python() -> Option<std::path::PathBuf> {
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

async fn sim(flags: &[&str]) -> std::net::SocketAddr {
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        engine: llmd_sim::EngineArgs,
    }
    let args = Wrap::parse_from(std::iter::once("llmd-sim").chain(flags.iter().copied())).engine;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    llmd_sim::start(args, listener, None, CancellationToken::new())
        .await
        .unwrap()
        .addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_sees_pd_exactly_as_direct_decode() {
    let Some(python) = python() else {
        return;
    };
    let common = [
        "--dummy-tokenizer",
        "--time-scale",
        "0",
        "--mode",
        "echo",
        "--block-size",
        "16",
    ];
    let prefill = sim(&[&common[..], &["--role", "prefill"]].concat()).await;
    let decode = sim(&[&common[..], &["--role", "decode"]].concat()).await;
    let decoder = format!("http://{decode}");
    let args = llmd_pd_proxy::Args::parse_from([
        "llmd-pd-proxy",
        "--decoder",
        &decoder,
        "--allow-prefill",
        "127.0.0.1/32",
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = llmd_pd_proxy::start(
        args.config().unwrap(),
        listener,
        None,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_pd.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(format!("http://{proxy}"))
        .arg(&decoder)
        .arg(prefill.to_string())
        .arg(MODEL)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (pd, direct) = (&v["pd"], &v["direct"]);
    for key in [
        "text",
        "finish",
        "stream_text",
        "stream_events",
        "chat",
        "chat_stream",
    ] {
        assert_eq!(pd[key], direct[key], "{key}");
    }
    assert!(!pd["text"].as_str().unwrap().is_empty());
    assert_eq!(
        pd["usage"]["prompt_tokens"],
        direct["usage"]["prompt_tokens"]
    );
    assert_eq!(pd["usage"]["completion_tokens"], 8);
    assert_eq!(pd["stream_usage"].as_array().unwrap().len(), 1);
    assert_eq!(v["denied"], 403);
}
