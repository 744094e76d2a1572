//! The real Python `openai` client through the proxy (P/D, streaming and not, completions and
//! chat) gets exactly what it gets from the decode engine directly.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use serde_json::Value;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_sees_pd_exactly_as_direct_decode() {
    let Some(python) = llmd_testkit::peers::python() else {
        return;
    };
    let sim_flags = [
        "--dummy-tokenizer",
        "--time-scale",
        "0",
        "--mode",
        "echo",
        "--block-size",
        "16",
    ];
    let p = common::pair(&sim_flags, &[], &[], None).await;
    let (prefill, proxy, decoder) = (p.prefill, p.proxy, format!("http://{}", p.decode));
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
