//! A real peer: a Python publisher using `pyzmq` and `msgspec` with vLLM's event classes, in
//! both encodings, hashing blocks with `hashlib` + `cbor2` as vLLM's `sha256_cbor` does. The
//! Rust subscriber indexes its events; the keys Rust computes for the same tokens (including
//! LoRA and cache-salt extra keys) must equal the published ones; the gap, the garbage and the
//! publisher restart are detected.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::{Notice, Recorder, wait_until};
use llmd_kv_index::hashing::{BlockKey, ExtraKeyStyle, LoraKey, RequestExtras};
use llmd_kv_index::subscriber::{PodEndpoint, Subscriber, SubscriberConfig};

const BS: usize = 16;

fn keys_of(v: &serde_json::Value) -> Vec<BlockKey> {
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| BlockKey(k.as_u64().unwrap()))
        .collect()
}

fn tokens_of(v: &serde_json::Value) -> Vec<u32> {
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

async fn run(layout: &str) {
    let Some(python) = llmd_testkit::peers::python() else {
        return;
    };
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/vllm_kv_publisher.py");
    let pod = "10.1.2.3:8000";
    let topic = format!("kv@{pod}@meta-llama/Llama-3.1-8B-Instruct");
    let mut child = Command::new(python)
        .arg(script)
        .args([
            "--layout",
            layout,
            "--topic",
            &topic,
            "--seed",
            "0",
            "--block-size",
            &BS.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).unwrap());
        }
    });
    let endpoint = next(&mut rx).await["endpoint"].as_str().unwrap().to_owned();

    let rec = Recorder::new(BS);
    let sub = Subscriber::new(rec.clone(), SubscriberConfig::default());
    sub.add_pod(PodEndpoint {
        pod: pod.into(),
        endpoint: Some(endpoint),
        replay_endpoint: None,
        model: "unused".into(),
    });
    wait_until("warm-up batches", || !rec.batches_from(pod).is_empty()).await;
    writeln!(stdin, "go").unwrap();

    let phase1 = next(&mut rx).await["phase1"].clone();
    let (a, b, c) = (&phase1["a"], &phase1["b"], &phase1["c"]);
    // Rust computes the same keys as Python's hashlib + cbor2 for the same tokens.
    assert_eq!(
        rec.kv
            .request_keys("m", &tokens_of(a), &RequestExtras::default()),
        keys_of(a)
    );
    assert_eq!(
        rec.kv
            .request_keys("m", &tokens_of(b), &RequestExtras::default()),
        keys_of(b)
    );
    let extras = RequestExtras {
        style: ExtraKeyStyle::Tagged,
        lora: Some(LoraKey {
            name: c["lora"].as_str().unwrap().into(),
            path: c["path"].as_str().unwrap().into(),
        }),
        mm_items: vec![],
        cache_salt: Some(c["salt"].as_str().unwrap().into()),
    };
    assert_eq!(
        rec.kv.request_keys("m", &tokens_of(c), &extras),
        keys_of(c),
        "LoRA + salt extra keys"
    );

    // Everything indexed: A lost its last block to the BlockRemoved, B and C are complete.
    let last_seq = phase1["last_seq"].as_u64().unwrap();
    wait_until("phase 1 applied", || {
        rec.batches_from(pod).contains(&last_seq)
    })
    .await;
    assert_eq!(rec.kv.lookup(&keys_of(a), &[pod]), vec![3]);
    assert_eq!(rec.kv.lookup(&keys_of(b), &[pod]), vec![2]);
    assert_eq!(rec.kv.lookup(&keys_of(c), &[pod]), vec![3]);
    let notices = rec.notices();
    let gap = &phase1["gap"];
    assert!(
        notices.contains(&Notice::Gap {
            pod: pod.into(),
            expected: gap["expected"].as_u64().unwrap(),
            got: gap["got"].as_u64().unwrap()
        }),
        "{notices:?}"
    );
    let errors: Vec<&str> = notices
        .iter()
        .filter_map(|n| match n {
            Notice::DecodeError { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(errors, vec!["frame_count", "batch"]);
    assert!(notices.iter().any(
        |n| matches!(n, Notice::Batch { model, .. } if model == "meta-llama/Llama-3.1-8B-Instruct")
    ));

    // The publisher restarts: the pod's old entries go, the new ones arrive.
    writeln!(stdin, "restart").unwrap();
    let d = next(&mut rx).await["phase2"]["d"].clone();
    wait_until("restart applied", || {
        rec.kv.lookup(&keys_of(&d), &[pod]) == vec![1]
    })
    .await;
    assert_eq!(rec.kv.lookup(&keys_of(b), &[pod]), vec![0]);
    assert!(
        rec.notices()
            .iter()
            .any(|n| matches!(n, Notice::Restart { got: 0, .. }))
    );
    sub.shutdown();
    let status = child.wait().unwrap();
    assert!(status.success());
}

async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) -> serde_json::Value {
    tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publisher_map_layout() {
    run("map").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publisher_array_layout() {
    run("array").await;
}
