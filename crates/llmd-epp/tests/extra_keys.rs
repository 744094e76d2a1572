//! `cache_salt` and LoRA adapters in the EPP's request keys.
//!
//! - Golden: the keys the EPP computes for a request body (parsed as routed requests are, with
//!   the scorer's parameters from a config) equal the block hashes vLLM 0.33.0's and 0.29.0's
//!   own hashing functions give (`llmd-kv-index/testdata/vllm-extra-keys.json`).
//! - The prompt cache: salted, LoRA and plain requests for one prompt share its tokens, never
//!   its digests, whatever the order they arrive in; a LoRA request is tokenized with the base
//!   model's tokenizer.
//! - End to end: simulators serving a LoRA adapter publish KV events over ZMQ; requests routed
//!   through the EPP's ext_proc service reach the pod holding their salted (or adapter) blocks,
//!   and the same prompt with another salt, no salt, or the base model matches nothing there.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{MODEL, epp, metric, route, serve, sim, sim_flags, spec_of, text, warm_up};
use llmd_epp::config::EndpointPickerConfig;
use llmd_epp::kv::KvService;
use llmd_kv_index::hashing::BlockKey;
use serde_json::{Value, json};

const VECTORS: &str = include_str!("../../llmd-kv-index/testdata/vllm-extra-keys.json");

fn service(params: &str) -> std::sync::Arc<KvService> {
    let config = EndpointPickerConfig::parse(&format!(
        "plugins: [{{type: precise-prefix-cache-scorer, parameters: {params}}}]\n"
    ))
    .unwrap();
    KvService::for_config(&config).unwrap().unwrap()
}

fn keys(svc: &KvService, path: &str, body: &Value) -> (Vec<BlockKey>, usize) {
    let req = llmd_epp::request::parse(path, body.to_string().as_bytes()).unwrap();
    svc.keys(&req).unwrap()
}

#[test]
fn salted_and_lora_keys_equal_vllms_own_hashes_in_both_styles() {
    let v: Value = serde_json::from_str(VECTORS).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    let mut by_id = std::collections::HashMap::new();
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let style = case["style"].as_str().unwrap();
        let lora = &case["lora"];
        // The adapter is configured with the path the engine was given; the base model's
        // name is the request's model when no adapter is named.
        let adapter_path = lora["path"].as_str().unwrap_or("/adapters/sql-lora");
        let svc = service(&format!(
            "{{blockSize: 16, hashSeed: '7', extraKeyStyle: {style}, loraAdapters: [{{name: sql-lora, path: '{adapter_path}', baseModel: base}}]}}"
        ));
        let mut body = json!({
            "model": lora["name"].as_str().unwrap_or("base"),
            "prompt": case["tokens"],
            "max_tokens": 1,
        });
        if let Some(salt) = case["cache_salt"].as_str() {
            body["cache_salt"] = salt.into();
        }
        let (got, tokens) = keys(&svc, "/v1/completions", &body);
        let want: Vec<BlockKey> = case["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| BlockKey(b["event_int"].as_u64().unwrap()))
            .collect();
        assert_eq!(tokens, case["tokens"].as_array().unwrap().len(), "{id}");
        assert_eq!(got, want, "{id}");
        by_id.insert(
            id.rsplit("extra=").next().unwrap().to_owned() + "/" + style,
            got,
        );
    }
    // What the vectors pin down, spelled out: the salt is keyed on block 0 only (later blocks
    // differ through the chain alone, so a salt on every block would give other keys), and
    // vLLM >= 0.31 hashes the adapter's path (0.29 its name only).
    for style in ["tagged", "untagged"] {
        let plain = &by_id[&format!("plain/{style}")];
        let salt = &by_id[&format!("salt/{style}")];
        assert!(plain.iter().zip(salt).all(|(a, b)| a != b), "{style}");
    }
    assert_ne!(by_id["lora/tagged"], by_id["lora_other_path/tagged"]);
    assert_eq!(by_id["lora/untagged"], by_id["lora_other_path/untagged"]);
}

#[test]
fn the_prompt_cache_shares_tokens_not_digests_and_lora_uses_the_base_tokenizer() {
    let Some(tok) = common::llama_tokenizer() else {
        return;
    };
    let prompt = text("cache", 300); // ~600 tokens: 9 blocks of 64
    let plain = json!({"model": MODEL, "prompt": prompt});
    let salted = json!({"model": MODEL, "prompt": prompt, "cache_salt": "tenant-a"});
    let lora = json!({"model": "sql", "prompt": prompt});
    let chat_salted = json!({"model": MODEL, "messages": [{"role": "user", "content": prompt}], "cache_salt": "tenant-a"});
    let chat_plain = json!({"model": MODEL, "messages": [{"role": "user", "content": prompt}]});
    let params = format!(
        "{{hashSeed: '7', tokenizer: '{tok}', loraAdapters: [{{name: sql, path: /adapters/sql}}]}}"
    );

    // One service sees them interleaved, so each finds the others' prompt-cache entries.
    let mixed = service(&params);
    let c = "/v1/completions";
    let p1 = keys(&mixed, c, &plain);
    let s1 = keys(&mixed, c, &salted);
    let l1 = keys(&mixed, c, &lora);
    let p2 = keys(&mixed, c, &plain);
    let s2 = keys(&mixed, c, &salted);
    let cp = keys(&mixed, "/v1/chat/completions", &chat_plain);
    let cs = keys(&mixed, "/v1/chat/completions", &chat_salted);
    assert!(p1.0.len() >= 8, "{} blocks", p1.0.len());
    assert_eq!((p1.1, s1.1, l1.1), (p1.1, p1.1, p1.1), "the same tokens");
    assert_eq!(p1, p2);
    assert_eq!(s1, s2);
    // Fresh services, each seeing one kind only: the same keys.
    for (body, path, seen) in [
        (&salted, c, &s1),
        (&lora, c, &l1),
        (&plain, c, &p1),
        (&chat_salted, "/v1/chat/completions", &cs),
    ] {
        assert_eq!(&keys(&service(&params), path, body), seen, "{body}");
    }
    for (a, b) in [(&p1, &s1), (&p1, &l1), (&s1, &l1), (&cp, &cs)] {
        assert!(a.0.iter().zip(&b.0).all(|(x, y)| x != y));
    }
    // No `tokenizer`: the adapter's requests use its baseModel's tokenizer (no tokenizer is
    // named after the adapter), giving the same keys.
    let by_base = service(&format!(
        "{{hashSeed: '7', loraAdapters: [{{name: sql, path: /adapters/sql, baseModel: '{tok}'}}]}}"
    ));
    assert_eq!(by_base.tokenizer_name("sql"), tok);
    assert_eq!(keys(&by_base, c, &lora), l1);
}

/// `POST /debug/route` for this body: the blocks each pod holds of its prefix.
async fn matched(metrics: std::net::SocketAddr, body: &Value) -> Value {
    let v: Value = reqwest::Client::new()
        .post(format!("http://{metrics}/debug/route"))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["prefix"]["matched_blocks"].clone()
}

/// The sum of the matched-blocks histogram (the chosen pod's blocks, per routed request).
fn matched_sum(model: &str) -> f64 {
    metric(
        "llm_d_epp_prefix_cache_scorer_matched_blocks_sum",
        &[&format!("model_name=\"{model}\"")],
    )
}

/// Routes `body` through ext_proc; returns the pod and the blocks the pick matched there.
async fn pick(e: &mut common::TestEpp, body: &Value) -> (String, f64) {
    let model = body["model"].as_str().unwrap();
    let before = matched_sum(model);
    let pod = route(
        &mut e.client,
        "/v1/completions",
        body.to_string().as_bytes(),
    )
    .await
    .primary();
    (pod, matched_sum(model) - before)
}

async fn wait_indexed(metrics: std::net::SocketAddr, body: &Value, pod: &str, blocks: u64) {
    let mut waited = 0;
    while matched(metrics, body).await[pod].as_u64().unwrap_or(0) < blocks {
        waited += 1;
        assert!(
            waited < 500,
            "the EPP never indexed {pod}'s blocks of {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salted_and_lora_requests_go_where_their_blocks_are_and_only_there() {
    let Some(tok) = common::llama_tokenizer() else {
        return;
    };
    let mut sims = Vec::new();
    for _ in 0..2 {
        let mut flags = sim_flags(&tok, "tcp://*:0");
        flags.extend(["--enable-lora", "--lora-modules", "sql=/adapters/sql"]);
        sims.push(sim(&flags).await);
    }
    // Each pod serves the base model and the adapter (as vLLM lists both in /v1/models).
    let specs: Vec<_> = sims
        .iter()
        .map(|(s, _)| {
            let mut spec = spec_of(s, "both");
            spec.model.push("sql".into());
            spec
        })
        .collect();
    let pods: Vec<String> = specs.iter().map(|s| s.host_port()).collect();
    let config = format!(
        r#"
plugins:
  - type: precise-prefix-cache-scorer
    parameters:
      hashSeed: "7"
      tokenizer: "{tok}"
      loraAdapters: [{{name: sql, path: /adapters/sql}}]
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {{pluginRef: precise-prefix-cache-scorer}}
      - {{pluginRef: max-score-picker}}
"#
    );
    let mut e = epp(&config, specs, None, None).await;
    let kv = e.epp.scheduler.kv().unwrap().index.clone();
    warm_up(&kv, &pods).await;
    let metrics = e.epp.metrics;
    // Loads the tokenizer before the routed requests (which have a 10 s deadline).
    matched(metrics, &json!({"model": MODEL, "prompt": "warm up"})).await;

    // A salted prompt cached on pod A.
    let doc = text("salted", 350); // ~700 tokens: 10+ blocks of 64
    let body = |salt: Option<&str>| {
        let mut b = json!({"model": MODEL, "prompt": doc, "max_tokens": 4});
        if let Some(s) = salt {
            b["cache_salt"] = s.into();
        }
        b
    };
    let a = &pods[0];
    let usage = serve(a, body(Some("tenant-a")).to_string().as_bytes()).await;
    let blocks = usage["prompt_tokens"].as_u64().unwrap() / 64;
    assert!(blocks >= 10, "{usage}");
    wait_indexed(metrics, &body(Some("tenant-a")), a, blocks).await;

    let (pod, hit) = pick(&mut e, &body(Some("tenant-a"))).await;
    assert_eq!(
        &pod, a,
        "the same salt goes to the pod that holds its blocks"
    );
    assert_eq!(hit, blocks as f64, "every block matched in the pick");
    for other in [body(Some("tenant-b")), body(None)] {
        let (_, hit) = pick(&mut e, &other).await;
        assert_eq!(hit, 0.0, "{other}: another salt or none matches nothing");
        assert_eq!(matched(metrics, &other).await[a], 0, "{other}");
    }
    // The engine agrees: the salt's blocks are reused, another salt's are not.
    let again = serve(a, body(Some("tenant-a")).to_string().as_bytes()).await;
    let cached = |u: &Value| {
        u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    assert!(cached(&again) >= blocks * 64 - 64, "{again}");
    let other = serve(a, body(Some("tenant-b")).to_string().as_bytes()).await;
    assert_eq!(cached(&other), 0, "{other}");

    // A prompt for the LoRA adapter cached on pod B.
    let doc = text("adapter", 350);
    let lora = json!({"model": "sql", "prompt": doc, "max_tokens": 4});
    let base = json!({"model": MODEL, "prompt": doc, "max_tokens": 4});
    let b = &pods[1];
    let usage = serve(b, lora.to_string().as_bytes()).await;
    let blocks = usage["prompt_tokens"].as_u64().unwrap() / 64;
    assert!(blocks >= 10, "{usage}");
    wait_indexed(metrics, &lora, b, blocks).await;
    let (pod, hit) = pick(&mut e, &lora).await;
    assert_eq!(
        &pod, b,
        "the adapter's request goes to the pod that holds its blocks"
    );
    assert_eq!(hit, blocks as f64);
    let (_, hit) = pick(&mut e, &base).await;
    assert_eq!(
        hit, 0.0,
        "the base model does not share the adapter's blocks"
    );
    assert_eq!(matched(metrics, &base).await[b], 0);
    let salted_lora =
        json!({"model": "sql", "prompt": doc, "max_tokens": 4, "cache_salt": "tenant-a"});
    assert_eq!(matched(metrics, &salted_lora).await[b], 0);

    // A bad salt is a 400 through the EPP's one error path, counted with the others.
    let errors = metric("inference_objective_request_error_total", &[]);
    let bad = json!({"model": MODEL, "prompt": "x", "cache_salt": 7});
    match route(&mut e.client, "/v1/completions", bad.to_string().as_bytes()).await {
        common::Routed::Rejected(400, msg) => assert!(msg.contains("cache_salt"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        metric("inference_objective_request_error_total", &[]) - errors,
        1.0
    );
}
