//! The EPP end to end: real simulators publish KV events over ZMQ, the EPP indexes them, and
//! requests routed through its ext_proc gRPC service land where their prefix is cached; P/D
//! decisions follow the threshold and the cache; bad input and pool churn get the right
//! answers.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{
    MODEL, Routed, completion, epp, metric, pd_config, prefix_config, route, route_with, serve,
    sim, sim_flags, spec_of, text, wait_until, warm_up,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_prefixes_land_on_the_pod_that_holds_them() {
    let Some(tok) = common::llama_tokenizer() else {
        return;
    };
    let mut sims = Vec::new();
    for _ in 0..4 {
        sims.push(sim(&sim_flags(&tok, "tcp://*:0")).await);
    }
    let specs: Vec<_> = sims.iter().map(|(s, _)| spec_of(s, "both")).collect();
    let pods: Vec<String> = specs.iter().map(|s| s.host_port()).collect();
    let mut e = epp(&prefix_config(&tok), specs, None, None).await;
    let kv = e.epp.scheduler.kv().unwrap().index.clone();
    warm_up(&kv, &pods).await;
    // The EPP's tokenizer loaded (through /debug/route, which has no deadline) before the
    // routed requests, whose data-plane deadline is 10 s: a debug build on a busy machine can
    // take that long to load it.
    common::matched(e.epp.metrics, "warm up").await;

    let hits_before = metric("llm_d_epp_prefix_cache_hits_total", &[MODEL]);
    for doc in 0..4 {
        let document = text(&format!("doc{doc}w"), 350); // ~700 tokens: 10+ blocks of 64
        let first = format!("{document}Question 0: what is this about?");
        let holder = route(&mut e.client, "/v1/completions", &completion(&first, 4))
            .await
            .primary();
        assert!(pods.contains(&holder));
        let usage = serve(&holder, &completion(&first, 4)).await;
        let full_blocks = usage["prompt_tokens"].as_u64().unwrap() / 64;
        assert!(full_blocks >= 10, "{usage}");
        common::wait_indexed(e.epp.metrics, &first, &holder, full_blocks).await;
        for q in 1..4 {
            let follow_up = format!("{document}Question {q}: and what else?");
            let routed = route(&mut e.client, "/v1/completions", &completion(&follow_up, 4)).await;
            assert_eq!(routed.primary(), holder, "doc {doc} question {q}");
            // The pod really had it: vLLM-style cached tokens on the follow-up.
            let usage = serve(&holder, &completion(&follow_up, 4)).await;
            let cached = usage["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap();
            assert!(cached >= (full_blocks - 1) * 64, "doc {doc} q {q}: {usage}");
        }
    }
    let hits = metric("llm_d_epp_prefix_cache_hits_total", &[MODEL]) - hits_before;
    assert!(hits >= 12.0, "prefix-cache hits counted: {hits}");
    assert!(
        metric(
            "llm_d_epp_prefix_cache_scorer_matched_blocks_count",
            &[MODEL]
        ) >= 16.0
    );
    wait_until("the pool gauge", || {
        metric("inference_pool_ready_pods", &["test-pool"]) == 4.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pd_is_chosen_for_long_uncached_prompts_only() {
    let Some(tok) = common::llama_tokenizer() else {
        return;
    };
    // This time the EPP binds and the pods connect to it (vLLM's usual setup), and the pods
    // arrive through the endpoints file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(&file, "endpoints: []\n").unwrap();
    let mut e = epp(
        &pd_config(&tok),
        Vec::new(),
        Some(file.clone()),
        Some("tcp://127.0.0.1:0"),
    )
    .await;
    let bound = e.epp.kv_events_bound.clone().unwrap();
    let (decode, _d) = sim(&sim_flags(&tok, &bound)).await;
    let (p1, _p1) = sim(&sim_flags(&tok, &bound)).await;
    let (p2, _p2) = sim(&sim_flags(&tok, &bound)).await;
    let yaml = |s: &llmd_sim::Sim, role: &str| {
        format!(
            "  - {{address: 127.0.0.1, port: {}, role: {role}, model: {MODEL}}}\n",
            s.addr.port()
        )
    };
    std::fs::write(
        &file,
        format!(
            "endpoints:\n{}{}{}",
            yaml(&decode, "decode"),
            yaml(&p1, "prefill"),
            yaml(&p2, "prefill")
        ),
    )
    .unwrap();
    let pool = e.epp.scheduler.pool().clone();
    wait_until("the endpoints file reloaded", || pool.snapshot().len() == 3).await;
    let decode_pod = format!("127.0.0.1:{}", decode.addr.port());
    let prefill_pods = [
        format!("127.0.0.1:{}", p1.addr.port()),
        format!("127.0.0.1:{}", p2.addr.port()),
    ];
    let kv = e.epp.scheduler.kv().unwrap().index.clone();
    warm_up(&kv, std::slice::from_ref(&decode_pod)).await;

    let pd_before = metric(
        "llm_d_inference_scheduler_pd_decision_total",
        &["prefill-decode"],
    );
    let short = "Say hello.";
    let r = route(&mut e.client, "/v1/completions", &completion(short, 4)).await;
    assert_eq!(r.destination(), decode_pod, "only the decode pod decodes");
    assert_eq!(r.prefiller(), None, "a short prompt stays decode-only");

    let long = text("ctx", 500); // ~1,000 uncached tokens > threshold 256
    let r = route(&mut e.client, "/v1/completions", &completion(&long, 4)).await;
    assert_eq!(r.destination(), decode_pod);
    let prefiller = r.prefiller().expect("a long uncached prompt gets P/D");
    assert!(prefill_pods.contains(&prefiller), "{prefiller}");

    // Once the decode pod holds the prompt, only a few tokens are uncached: decode-only.
    let usage = serve(&decode_pod, &completion(&long, 4)).await;
    let blocks = usage["prompt_tokens"].as_u64().unwrap() / 64;
    common::wait_indexed(e.epp.metrics, &long, &decode_pod, blocks).await;
    let r = route(&mut e.client, "/v1/completions", &completion(&long, 4)).await;
    assert_eq!(r.prefiller(), None, "cached prompt: decode-only");
    // The same prefix with 600 new tokens: P/D again.
    let extended = format!("{long}{}", text("more", 300));
    let r = route(&mut e.client, "/v1/completions", &completion(&extended, 4)).await;
    assert!(r.prefiller().is_some(), "600 uncached tokens: P/D");
    let pd = metric(
        "llm_d_inference_scheduler_pd_decision_total",
        &["prefill-decode"],
    ) - pd_before;
    assert!(pd >= 2.0, "P/D decisions counted: {pd}");

    // No prefill pods left: decode-only rather than an error.
    std::fs::write(&file, format!("endpoints:\n{}", yaml(&decode, "decode"))).unwrap();
    wait_until("the prefill pods removed", || pool.snapshot().len() == 1).await;
    let r = route(&mut e.client, "/v1/completions", &completion(&extended, 4)).await;
    assert_eq!(r.destination(), decode_pod);
    assert_eq!(r.prefiller(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_pool_churn_get_clear_answers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    let (live, stop_live) = sim(&["--model", MODEL, "--dummy-tokenizer"]).await;
    let live_pod = format!("127.0.0.1:{}", live.addr.port());
    // A pod whose port nobody listens on: its metrics never arrive.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_pod = dead.local_addr().unwrap().to_string();
    drop(dead);
    let both = format!(
        "endpoints:\n  - {{address: 127.0.0.1, port: {}, model: {MODEL}}}\n  - {{address: 127.0.0.1, port: {}, model: {MODEL}}}\n",
        live.addr.port(),
        dead_pod.rsplit(':').next().unwrap()
    );
    std::fs::write(&file, &both).unwrap();
    let initial = llmd_epp::endpoints::EndpointsFile::load(&file).unwrap();
    let config = llmd_epp::config::DEFAULT_CONFIG;
    let mut e = epp(config, initial.endpoints, Some(file.clone()), None).await;

    // Bad input: the right status, an OpenAI-style error, and the stream keeps working.
    for (body, status) in [
        (b"{not json".to_vec(), 400),
        (br#"{"model": 5, "prompt": "x"}"#.to_vec(), 400),
        (br#"{"prompt": "no model"}"#.to_vec(), 400),
        (vec![b' '; 2 << 20], 413),
        (br#"{"model": "not-served", "prompt": "x"}"#.to_vec(), 404),
    ] {
        match route(&mut e.client, "/v1/completions", &body).await {
            Routed::Rejected(s, text) => {
                assert_eq!(s, status, "{text}");
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert!(v["error"]["message"].is_string(), "{text}");
            }
            other => panic!("expected {status}, got {other:?}"),
        }
    }
    assert!(
        metric(
            "inference_objective_request_error_total",
            &["not-served", "error_code=\"NotFound\""]
        ) >= 1.0
    );

    // Stale metrics on one pod: requests still route, and the pool gauge counts one ready pod.
    wait_until("one ready pod", || {
        metric("inference_pool_ready_pods", &["test-pool"]) == 1.0
    })
    .await;
    for i in 0..8 {
        let r = route(
            &mut e.client,
            "/v1/completions",
            &completion(&format!("p{i}"), 1),
        )
        .await;
        assert!([&live_pod, &dead_pod].contains(&&r.primary()), "{r:?}");
    }

    // The live pod goes away and is removed from the file: only the other one is chosen.
    stop_live.cancel();
    std::fs::write(
        &file,
        format!(
            "endpoints:\n  - {{address: 127.0.0.1, port: {}, model: {MODEL}}}\n",
            dead_pod.rsplit(':').next().unwrap()
        ),
    )
    .unwrap();
    let pool = e.epp.scheduler.pool().clone();
    wait_until("the pod removed", || pool.snapshot().len() == 1).await;
    for i in 0..4 {
        let r = route(
            &mut e.client,
            "/v1/completions",
            &completion(&format!("q{i}"), 1),
        )
        .await;
        assert_eq!(r.destination(), dead_pod);
    }

    // An empty pool: 503, and a broken file is ignored (the last good set stays).
    std::fs::write(&file, "endpoints: []\n").unwrap();
    wait_until("the pool emptied", || pool.snapshot().is_empty()).await;
    match route(&mut e.client, "/v1/completions", &completion("x", 1)).await {
        Routed::Rejected(503, _) => {}
        other => panic!("expected 503, got {other:?}"),
    }
    std::fs::write(&file, &both).unwrap();
    wait_until("the pool refilled", || pool.snapshot().len() == 2).await;
    std::fs::write(&file, "endpoints: [{address: 127.0.0.1}]\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        pool.snapshot().len(),
        2,
        "an invalid file must not empty the pool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_sheds_only_sheddable_requests_and_recovers() {
    // GIE's admission: only requests whose InferenceObjective priority is below 0 are shed,
    // and only while the pool as a whole is saturated.
    // One sequence at a time, 20 ms per token: four 50-token requests queue three deep.
    let (pod, _stop) = sim(&[
        "--model",
        MODEL,
        "--dummy-tokenizer",
        "--max-num-seqs",
        "1",
        "--decode-itl-ms",
        "20",
    ])
    .await;
    let config = format!(
        "{}saturationDetector: {{queueDepthThreshold: 2, kvCacheUtilThreshold: 0.9, metricsStalenessThreshold: 2s}}\ninferenceObjectives: [{{name: batch, priority: -1}}, {{name: critical, priority: 10}}]\n",
        llmd_epp::config::ROUND_ROBIN_CONFIG
    );
    let spec = spec_of(&pod, "both");
    let id = spec.host_port();
    let mut e = epp(&config, vec![spec], None, None).await;
    let pool = e.epp.scheduler.pool().clone();
    wait_until("the first scrape", || {
        pool.snapshot()[0]
            .fresh_load(std::time::Duration::from_secs(1))
            .is_some()
    })
    .await;
    let batch = [("x-gateway-inference-objective", "batch")];
    let ok = route_with(
        &mut e.client,
        "/v1/completions",
        &completion("hi", 1),
        &batch,
    )
    .await;
    assert_eq!(
        ok.destination(),
        id,
        "not saturated: even sheddable requests go"
    );

    let busy: Vec<_> = (0..4)
        .map(|i| {
            let id = id.clone();
            tokio::spawn(async move { serve(&id, &completion(&format!("busy {i}"), 50)).await })
        })
        .collect();
    let mut shed = None;
    for _ in 0..200 {
        match route_with(
            &mut e.client,
            "/v1/completions",
            &completion("hi", 1),
            &batch,
        )
        .await
        {
            Routed::Rejected(status, body) => {
                shed = Some((status, body));
                break;
            }
            Routed::To(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    let (status, body) = shed.expect("the queue never looked saturated");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("RateLimitError"), "{body}");
    assert!(
        body.contains(
            "inference error: ResourceExhausted - system saturated, sheddable request dropped"
        ),
        "GIE's text: {body}"
    );
    // While saturated, requests of priority >= 0 (no objective, or a positive one) still go.
    let plain = route(&mut e.client, "/v1/completions", &completion("hi", 1)).await;
    assert_eq!(plain.destination(), id, "priority 0 is never shed");
    let critical = route_with(
        &mut e.client,
        "/v1/completions",
        &completion("hi", 1),
        &[("x-llm-d-inference-objective", "critical")],
    )
    .await;
    assert_eq!(critical.destination(), id);
    for b in busy {
        b.await.unwrap();
    }
    let mut recovered = false;
    for _ in 0..200 {
        if let Routed::To(_) = route_with(
            &mut e.client,
            "/v1/completions",
            &completion("hi", 1),
            &batch,
        )
        .await
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(recovered, "still shedding after the queue drained");
    assert!(
        metric(
            "inference_objective_request_error_total",
            &["error_code=\"ResourceExhausted\""]
        ) >= 1.0
    );
    assert!(
        metric(
            "llm_d_epp_request_error_total",
            &[
                "error_code=\"ResourceExhausted\"",
                "priority=\"-1\"",
                "fairness_id=\"default-flow\""
            ]
        ) >= 1.0
    );
    assert!(
        metric(
            "llm_d_epp_request_total",
            &["priority=\"10\"", "fairness_id=\"default-flow\""]
        ) >= 1.0
    );
}
