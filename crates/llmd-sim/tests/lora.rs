//! LoRA adapters and `cache_salt` as vLLM serves them: `--lora-modules` in both of vLLM's
//! forms, adapters listed in `/v1/models` under their parent, a request naming an adapter is
//! served by it, its KV blocks hashed with the adapter as an extra key and published with
//! `lora_id`/`lora_name`/`extra_keys` (checked against hashing the tokens independently),
//! `--max-loras` holding other adapters back (seen in `vllm:lora_requests_info`), runtime
//! loading and unloading; `cache_salt` keyed into block 0 so salted and unsalted prompts never
//! share cache.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use llmd_kv_index::events::{KvEvent, WireValue, decode_message};
use llmd_kv_index::hashing::{BlockKey, LoraKey, RequestExtras, VllmHasher};
use llmd_kv_index::transport::{SocketOptions, SocketType, ZmqSocket};
use llmd_sim::testing::{SimBuilder, spawn};
use serde_json::{Value, json};

const BASE: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// The next `BlockStored` events until one satisfies `want`.
async fn stored_until(
    sub: &mut ZmqSocket,
    mut want: impl FnMut(&llmd_kv_index::events::BlockStored) -> bool,
) -> Vec<llmd_kv_index::events::BlockStored> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, sub.recv())
            .await
            .expect("no matching BlockStored")
            .unwrap();
        let frames = msg.frames;
        let decoded = decode_message(&frames).unwrap();
        for e in decoded.batch.events {
            if let KvEvent::BlockStored(s) = e {
                let done = want(&s);
                seen.push(s);
                if done {
                    return seen;
                }
            }
        }
    }
}

fn keys(tokens: &[u32], extras: &RequestExtras) -> Vec<BlockKey> {
    VllmHasher::new(Some("7"), 16).unwrap().keys(tokens, extras)
}

async fn complete(base: &str, body: Value) -> Value {
    let (status, body) = common::post_json(base, "/v1/completions", body).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_and_salts_as_vllm_serves_them() {
    let mut sub = ZmqSocket::new(SocketType::SUB, &SocketOptions::default()).unwrap();
    sub.subscribe(b"").unwrap();
    let endpoint = sub.bind("tcp://127.0.0.1:0").unwrap();
    let sim = spawn(
        SimBuilder::new()
            .flags([
                "--dummy-tokenizer",
                "--time-scale",
                "0.2",
                "--block-size",
                "16",
                "--hash-seed",
                "7",
                "--data-parallel-rank",
                "41",
                "--enable-lora",
                "--max-loras",
                "1",
                "--allow-runtime-lora-updating",
                "true",
                "--kv-events-endpoint",
                &endpoint,
                "--lora-modules",
                "sql=/adapters/sql",
                r#"{"name": "chat", "path": "/adapters/chat", "base_model_name": "meta-llama/Llama-3.1-8B-Instruct"}"#,
            ])
            .metrics(common::metrics()),
    )
    .await
    .unwrap();
    let base = sim.url();

    // Listed as vLLM lists them: base models, then adapters with root = path, parent = base.
    let models: Value = reqwest::get(format!("{base}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [BASE, "sql", "chat"]);
    assert_eq!(models["data"][1]["root"], "/adapters/sql");
    assert_eq!(models["data"][1]["parent"], BASE);
    assert_eq!(models["data"][0]["parent"], Value::Null);

    // Warm up until the PUB side has our subscription (a slow joiner loses the first batches).
    let mut n = 0;
    loop {
        complete(
            &base,
            json!({"prompt": format!("warm-up {n} with enough bytes for one block"), "max_tokens": 1}),
        )
        .await;
        if tokio::time::timeout(Duration::from_millis(300), sub.recv())
            .await
            .is_ok()
        {
            break;
        }
        n += 1;
        assert!(n < 50, "no KV events arrive");
    }

    // An adapter request: answered under its name, blocks keyed with the adapter.
    let prompt = "a prompt of forty-eight bytes for the sql adapt";
    assert_eq!(prompt.len(), 47);
    let tokens: Vec<u32> = prompt.bytes().map(u32::from).collect();
    let body = complete(
        &base,
        json!({"model": "sql", "prompt": prompt, "max_tokens": 1}),
    )
    .await;
    assert_eq!(body["model"], "sql");
    let sql = RequestExtras {
        lora: Some(LoraKey {
            name: "sql".into(),
            path: "/adapters/sql".into(),
        }),
        ..RequestExtras::default()
    };
    let want = keys(&tokens, &sql);
    assert_eq!(want.len(), 2);
    let stored = stored_until(&mut sub, |s| s.lora_name.as_deref() == Some("sql")).await;
    let s = stored.last().unwrap();
    // The prompt's two blocks (a third holds the output token, in the same step).
    assert_eq!(
        s.block_hashes[..2],
        want[..],
        "hashed with the adapter, as vLLM >= 0.31"
    );
    assert_ne!(want, keys(&tokens, &RequestExtras::default()));
    assert_eq!(s.lora_id, Some(1));
    assert_eq!(
        s.extra_keys,
        Some(vec![
            WireValue::Array(vec![WireValue::Str("sql".into())]);
            s.block_hashes.len()
        ]),
        "published extra keys: the adapter's name per block"
    );

    // cache_salt: keyed into block 0 (and the rest through the chain); salted and unsalted
    // prompts never share blocks.
    let salted_prompt = "another prompt, this one for a salted tenant!!!";
    let salted_tokens: Vec<u32> = salted_prompt.bytes().map(u32::from).collect();
    let plain = complete(&base, json!({"prompt": salted_prompt, "max_tokens": 1})).await;
    assert_eq!(plain["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let salted = complete(
        &base,
        json!({"prompt": salted_prompt, "max_tokens": 1, "cache_salt": "tenant-a"}),
    )
    .await;
    assert_eq!(
        salted["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "the unsalted blocks are not the salted prompt's"
    );
    let salt = RequestExtras {
        cache_salt: Some("tenant-a".into()),
        ..RequestExtras::default()
    };
    let want = keys(&salted_tokens, &salt);
    let stored = stored_until(&mut sub, |s| s.block_hashes.first() == want.first()).await;
    let s = stored.last().unwrap();
    assert_eq!(s.block_hashes[..2], want[..]);
    let extra = s.extra_keys.as_ref().unwrap();
    assert_eq!(
        extra[0],
        WireValue::Array(vec![WireValue::Str("tenant-a".into())])
    );
    assert!(
        extra[1..].iter().all(|k| *k == WireValue::Nil),
        "salt on block 0 only"
    );
    let again = complete(
        &base,
        json!({"prompt": salted_prompt, "max_tokens": 1, "cache_salt": "tenant-a"}),
    )
    .await;
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"], 32);
    let (status, e) = common::post_json(
        &base,
        "/v1/completions",
        json!({"prompt": "x", "cache_salt": ""}),
    )
    .await;
    assert_eq!(status, 400, "{e}");

    // --max-loras 1: a request for another adapter waits while one runs.
    let long = {
        let base = base.clone();
        tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(format!("{base}/v1/completions"))
                .json(&json!({"model": "sql", "prompt": "long running", "max_tokens": 200, "stream": true}))
                .send()
                .await
                .unwrap();
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                chunk.unwrap();
            }
        })
    };
    // Wait until the sql request runs (its stream has started), then ask for `chat`.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = llmd_telemetry::exposition::parse(&common::metrics().render()).unwrap();
        if m.value("vllm:num_requests_running", &[("engine", "41")]) == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the long request never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let chat = complete(
        &base,
        json!({"model": "chat", "prompt": "short", "max_tokens": 3}),
    )
    .await;
    assert_eq!(chat["model"], "chat");
    long.await.unwrap();
    let m = llmd_telemetry::exposition::parse(&common::metrics().render()).unwrap();
    let info: Vec<_> = m.find("vllm:lora_requests_info", &[]).collect();
    assert!(info.iter().all(|s| s.label("max_lora") == Some("1")));
    assert!(
        info.iter()
            .any(|s| s.label("running_lora_adapters") == Some("sql")
                && s.label("waiting_lora_adapters") == Some("chat")),
        "chat waited while sql ran: {info:?}"
    );
    assert!(
        !info.iter().any(|s| s
            .label("running_lora_adapters")
            .is_some_and(|r| r.contains(','))),
        "never two adapters in one step with --max-loras 1"
    );
    let latest = info
        .iter()
        .max_by(|a, b| a.value.total_cmp(&b.value))
        .unwrap();
    assert_eq!(latest.label("running_lora_adapters"), Some(""));
    assert!(latest.value > 1.7e9, "the value is the update's Unix time");

    // Runtime loading and unloading (VLLM_ALLOW_RUNTIME_LORA_UPDATING).
    let client = reqwest::Client::new();
    let load = |name: &str, path: &str| {
        client
            .post(format!("{base}/v1/load_lora_adapter"))
            .json(&json!({"lora_name": name, "lora_path": path}))
            .send()
    };
    let r = load("extra", "/adapters/extra").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "Success: LoRA adapter 'extra' added successfully."
    );
    assert_eq!(
        complete(
            &base,
            json!({"model": "extra", "prompt": "hi", "max_tokens": 1})
        )
        .await["model"],
        "extra"
    );
    let r = load("extra", "/elsewhere").await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["type"], "InvalidUserInput");
    let unload = || {
        client
            .post(format!("{base}/v1/unload_lora_adapter"))
            .json(&json!({"lora_name": "extra"}))
            .send()
    };
    assert_eq!(unload().await.unwrap().status(), 200);
    let (status, _) = common::post_json(
        &base,
        "/v1/completions",
        json!({"model": "extra", "prompt": "hi"}),
    )
    .await;
    assert_eq!(status, 404);
    let r = unload().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["type"], "NotFoundError");
    sim.stop().await;

    // Without the variable, the routes do not exist (as in vLLM).
    let plain = spawn(SimBuilder::fast().flags(["--enable-lora", "--data-parallel-rank", "42"]))
        .await
        .unwrap();
    let r = client
        .post(format!("{}/v1/load_lora_adapter", plain.url()))
        .json(&json!({"lora_name": "x", "lora_path": "/x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
