//! The `llmd-kv` binary as an operator runs it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bind_pub, send};
use llmd_kv_index::events::{BlockStored, EventBatch, KvEvent, Layout, encode_message};
use llmd_kv_index::hashing::BlockKey;
use serde_json::Value;

fn llmd_kv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llmd-kv"))
}

fn json_out(cmd: &mut Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn hash_prints_keys_and_digests() {
    let tokens: Vec<String> = (1..=40).map(|t| t.to_string()).collect();
    let v = json_out(llmd_kv().args([
        "hash",
        "--seed",
        "42",
        "--block-size",
        "16",
        "--tokens",
        &tokens.join(","),
    ]));
    assert_eq!(v["partial_block_tokens"], 8);
    let keys: Vec<u64> = v["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["key"].as_u64().unwrap())
        .collect();
    assert_eq!(keys, vec![16300212363532267629, 8671309795006503672]);
    assert_eq!(
        v["blocks"][0]["digest"],
        "476e88fb0c175c0b4ef0343e158b5157c2ac537d37d97830e235fcc84bc5706d"
    );
    let v = json_out(llmd_kv().args([
        "hash",
        "--algo",
        "cbor-fnv",
        "--seed",
        "",
        "--block-size",
        "4",
        "--model",
        "ibm-granite/granite-3.1-8b-instruct",
        "--tokens",
        "8197,438,322,18926,432,45600,49",
    ]));
    assert_eq!(v["blocks"][0]["key"], 1334984470577408192u64);
}

/// Finding 5: no tokens hash to no blocks (it used to be a parse error).
#[test]
fn hash_of_no_tokens_prints_no_blocks() {
    for algo in ["sha256_cbor", "cbor-fnv"] {
        let v = json_out(llmd_kv().args(["hash", "--tokens", "", "--algo", algo]));
        assert_eq!(v["num_tokens"], 0, "{algo}");
        assert_eq!(v["blocks"], serde_json::json!([]), "{algo}");
    }
    // A bad id is still a clear error.
    let out = llmd_kv()
        .args(["hash", "--tokens", "1,x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token id \"x\""));
}

#[test]
fn usage_errors_are_clear() {
    let out = llmd_kv()
        .args(["hash", "--prompt", "hi"])
        .env_remove("LLMD_TOKENIZER")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tokenizer is needed"));
    let out = llmd_kv()
        .args(["tokenize", "--tokenizer", "no/such-model", "--prompt", "hi"])
        .env("HF_HUB_CACHE", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tokenizer for \"no/such-model\""));
    let out = llmd_kv().args(["listen"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn tokenize_a_chat_request() {
    if llmd_testkit::tokenizer::real_tokenizer("meta-llama/Llama-3.1-8B-Instruct").is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("llmd-kv-cli-{}.json", std::process::id()));
    std::fs::write(
        &dir,
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .unwrap();
    let v = json_out(
        llmd_kv()
            .args([
                "tokenize",
                "--tokenizer",
                "meta-llama/Llama-3.1-8B-Instruct",
                "--request",
            ])
            .arg(&dir)
            .env("HF_HUB_CACHE", llmd_testkit::peers::tokenizer_hub()),
    );
    assert_eq!(
        v["ids"],
        serde_json::json!([
            128000, 128006, 882, 128007, 271, 6151, 128009, 128006, 78191, 128007, 271
        ])
    );
    assert!(
        v["rendered"]
            .as_str()
            .unwrap()
            .starts_with("<|begin_of_text|><|start_header_id|>user")
    );
    std::fs::remove_file(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_events_gaps_and_errors() {
    let (mut publisher, endpoint) = bind_pub();
    let mut child = llmd_kv()
        .args([
            "listen",
            "--endpoint",
            &format!("pod-1={endpoint}"),
            "--count",
            "1000",
            "--duration",
            "30",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let topic = "kv@pod-1@m";
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).unwrap());
        }
    });
    // Warm up until the listener prints something (PUB drops before the subscription).
    let mut seq = 0u64;
    let first = loop {
        send(
            &mut publisher,
            encode_message(topic, seq, &EventBatch::default(), Layout::Map).to_vec(),
        )
        .await;
        seq += 1;
        if let Ok(Some(v)) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
            break v;
        }
        assert!(seq < 400, "listener printed nothing");
    };
    assert_eq!(first["pod"], "pod-1");
    let stored = EventBatch {
        events: vec![KvEvent::BlockStored(BlockStored {
            block_hashes: vec![BlockKey(7)],
            token_ids: vec![1, 2],
            block_size: 2,
            ..Default::default()
        })],
        ..Default::default()
    };
    send(
        &mut publisher,
        encode_message(topic, seq + 3, &stored, Layout::Array).to_vec(),
    )
    .await;
    send(
        &mut publisher,
        vec![topic.as_bytes().to_vec(), vec![0; 8], vec![0xc1]],
    )
    .await;
    let mut lines = Vec::new();
    let wanted = |lines: &[Value]| {
        lines.iter().any(|l| l["gap"]["missing"] == 3)
            && lines.iter().any(|l| {
                l["events"][0]["type"] == "BlockStored" && l["events"][0]["block_hashes"][0] == 7
            })
            && lines.iter().any(|l| l["decode_error"]["reason"] == "batch")
    };
    while !wanted(&lines) {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(v)) => lines.push(v),
            _ => panic!("missing lines: {lines:?}"),
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
