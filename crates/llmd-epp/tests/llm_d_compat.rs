//! Drop-in compatibility with llm-d: the scheduler configs of llm-d's guides and releases
//! (`tests/llm-d/`, written from llm-d's documentation) load unchanged, and with traffic
//! against simulators they route as llm-d does: shared prefixes to the pod holding them
//! (precise, every shape from v0.3 to the current producer split, central ZMQ and pod
//! discovery); P/D decided by `threshold` (characters), by `prefix-based-pd-decider`
//! (`nonCachedTokens`, `promptTokens`) with the approximate prefix cache, always with
//! `threshold: 0`; the least loaded pod by `load-aware-scorer`; repeated prompts kept on their
//! pod by the simulator guide's default plugins. The `llmd-epp` binary takes llm-d's flags as
//! GIE's chart renders them, and refuses what it does not implement.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{
    MODEL, Routed, completion, epp, metric, route, serve, sim, sim_flags, spec_of, text,
    wait_until, warm_up,
};
use llmd_epp::endpoints::Load;

/// A config of `tests/llm-d/` with its placeholders filled in.
fn config(name: &str, vars: &[(&str, &str)]) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/llm-d")
        .join(name);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (k, v) in vars {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    assert!(!text.contains("${"), "{name}: unfilled placeholder");
    text
}

/// A loopback TCP port free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One document shared by a first question and its follow-ups: the first lands somewhere, the
/// pod then holds its blocks, the follow-ups land there.
async fn follow_ups_land_on_the_holder(e: &mut common::TestEpp, pods: &[String], doc: &str) {
    let document = text(doc, 350); // ~700 tokens: 10+ blocks of 64
    let first = format!("{document}Question 0: what is this about?");
    let holder = route(&mut e.client, "/v1/completions", &completion(&first, 4))
        .await
        .primary();
    assert!(pods.contains(&holder), "{holder}");
    let usage = serve(&holder, &completion(&first, 4)).await;
    let full_blocks = usage["prompt_tokens"].as_u64().unwrap() / 64;
    common::wait_indexed(e.epp.metrics, &first, &holder, full_blocks).await;
    for q in 1..3 {
        let follow_up = format!("{document}Question {q}: and what else?");
        let routed = route(&mut e.client, "/v1/completions", &completion(&follow_up, 4)).await;
        assert_eq!(routed.primary(), holder, "{doc}: question {q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precise_guides_send_shared_prefixes_to_the_pod_holding_them() {
    let Some(tok) = common::llama_tokenizer() else {
        return;
    };
    // Central ZMQ (the guides' default): the EPP binds the config's zmqEndpoint, the pods
    // publish to it.
    for name in [
        "precise-v0.3.yaml",
        "precise-v0.5.yaml",
        "precise-v0.8.yaml",
    ] {
        let zmq = format!("tcp://127.0.0.1:{}", free_port());
        let cfg = config(name, &[("TOKENIZER", &tok), ("ZMQ", &zmq)]);
        // The pods start first and connect to an address nobody binds yet: ZMQ retries until
        // the EPP binds it. The EPP knows them from the start (the bound socket applies only
        // topics naming known pods).
        let (a, _sa) = sim(&sim_flags(&tok, &zmq)).await;
        let (b, _sb) = sim(&sim_flags(&tok, &zmq)).await;
        let specs: Vec<_> = [&a, &b]
            .iter()
            .map(|s| {
                let mut spec = spec_of(s, "both");
                spec.kv_events = None; // they connect to us
                spec
            })
            .collect();
        let pods: Vec<String> = specs.iter().map(|s| s.host_port()).collect();
        let mut e = epp(&cfg, specs, None, None).await;
        assert_eq!(
            e.epp.kv_events_bound.as_deref(),
            Some(zmq.as_str()),
            "{name}: kvEventsConfig.zmqEndpoint is bound"
        );
        let kv = e.epp.scheduler.kv().unwrap().index.clone();
        warm_up(&kv, &pods).await;
        common::matched(e.epp.metrics, "warm up").await;
        follow_ups_land_on_the_holder(&mut e, &pods, &format!("{name}-doc")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_precise_guide_dials_each_pod() {
    let Some(tok) = common::llama_tokenizer() else {
        return;
    };
    // llm-d-router's layout: a token producer, the precise producer feeding the generic
    // prefix-cache-scorer, and pod discovery (the EPP dials every pod's publisher on
    // podDiscoveryConfig.socketPort).
    let port = free_port();
    let cfg = config(
        "precise-current.yaml",
        &[("TOKENIZER", &tok), ("SOCKET_PORT", &port.to_string())],
    );
    let bind = format!("tcp://*:{port}");
    let (a, _sa) = sim(&sim_flags(&tok, &bind)).await;
    let (b, _sb) = sim(&sim_flags(&tok, "tcp://*:0")).await;
    let mut spec_a = spec_of(&a, "both");
    spec_a.kv_events = None; // dialled on socketPort
    let spec_b = spec_of(&b, "both"); // its own port: listed explicitly
    let pods = vec![spec_a.host_port(), spec_b.host_port()];
    let mut e = epp(&cfg, vec![spec_a, spec_b], None, None).await;
    assert_eq!(e.epp.kv_events_bound, None, "no zmqEndpoint: nothing bound");
    let kv = e.epp.scheduler.kv().unwrap().index.clone();
    warm_up(&kv, &pods).await;
    common::matched(e.epp.metrics, "warm up").await;
    follow_ups_land_on_the_holder(&mut e, &pods, "current-doc").await;
    // llm-d's label on the KV-event series.
    assert!(
        metric(
            "llm_d_epp_kv_cache_events_messages_received_total",
            &[&format!("pod_identifier=\"{}\"", pods[0])]
        ) >= 1.0
    );
}

/// Pods that answer at once and do not publish KV events (P/D and load configs).
async fn plain_sim(extra: &[&str]) -> (llmd_sim::Sim, tokio_util::sync::CancellationToken) {
    let mut flags = vec!["--model", MODEL, "--dummy-tokenizer", "--time-scale", "0"];
    flags.extend_from_slice(extra);
    sim(&flags).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pd_guides_disaggregate_as_llm_d_decides() {
    let (d, _sd) = plain_sim(&[]).await;
    let (p, _sp) = plain_sim(&[]).await;
    let decode = spec_of(&d, "decode");
    let prefill = spec_of(&p, "prefill");
    let (decode_id, prefill_id) = (decode.host_port(), prefill.host_port());
    let specs = vec![decode, prefill];
    let short = "Say hello."; // 10 characters
    // The approximate cache's autoTune follows the pods' scraped block size: let every EPP
    // below see it before its first request.
    let scraped = |e: &common::TestEpp| {
        let pool = e.epp.scheduler.pool().clone();
        async move {
            wait_until("the first scrapes", || {
                pool.snapshot()
                    .iter()
                    .all(|e| e.fresh_load(Duration::from_secs(5)).is_some())
            })
            .await
        }
    };
    let chars = |n: usize| "abcdefghij ".repeat(n / 11 + 1)[..n].to_owned();

    let check = |r: &Routed, pd: bool, what: &str| {
        assert_eq!(r.primary(), decode_id, "{what}: decoded on the decode pod");
        assert_eq!(
            r.prefiller(),
            pd.then(|| prefill_id.clone()),
            "{what}: prefill pod"
        );
    };

    // v0.5: threshold 0, always P/D (profiles without pickers get max-score-picker).
    let mut e = epp(&config("pd-v0.5.yaml", &[]), specs.clone(), None, None).await;
    let before = metric(
        "llm_d_epp_pd_decision_total",
        &[
            "plugin_type=\"pd-profile-handler\"",
            "decision_type=\"prefill-decode\"",
        ],
    );
    for prompt in [short.to_owned(), chars(2000)] {
        let r = route(&mut e.client, "/v1/completions", &completion(&prompt, 2)).await;
        check(&r, true, "threshold 0");
        serve(&r.primary(), &completion(&prompt, 2)).await;
    }
    assert!(
        metric(
            "llm_d_epp_pd_decision_total",
            &[
                "plugin_type=\"pd-profile-handler\"",
                "decision_type=\"prefill-decode\""
            ]
        ) - before
            >= 2.0
    );
    assert!(
        metric(
            "llm_d_inference_scheduler_pd_decision_total",
            &["decision_type=\"prefill-decode\""]
        ) >= 2.0
    );
    drop(e);

    // threshold 100 characters (llm-d's unit), with the approximate prefix cache: 60
    // uncached characters stay decode-only, 300 get P/D; the same 300 again are cached on the
    // decode pod (it was sent there) and stay decode-only.
    let mut e = epp(
        &config("pd-threshold-v0.4.yaml", &[]),
        specs.clone(),
        None,
        None,
    )
    .await;
    scraped(&e).await;
    let r = route(&mut e.client, "/v1/completions", &completion(&chars(60), 2)).await;
    check(&r, false, "60 characters < threshold 100");
    let long = chars(300);
    let r = route(&mut e.client, "/v1/completions", &completion(&long, 2)).await;
    check(&r, true, "300 uncached characters");
    let r = route(&mut e.client, "/v1/completions", &completion(&long, 2)).await;
    check(
        &r,
        false,
        "the same 300 characters, now cached on the decode pod",
    );
    drop(e);

    // v0.8: prefix-based-pd-decider, nonCachedTokens 16 (4 characters a token, as llm-d
    // estimates without a tokenizer), approximate prefix cache of 16-token blocks.
    let mut e = epp(&config("pd-v0.8.yaml", &[]), specs.clone(), None, None).await;
    let before = metric(
        "llm_d_epp_disagg_decision_total",
        &[
            "plugin_type=\"disagg-profile-handler\"",
            "decision_type=\"decode-only\"",
        ],
    );
    let r = route(&mut e.client, "/v1/completions", &completion(short, 2)).await;
    check(&r, false, "2 tokens < nonCachedTokens 16");
    let long = chars(400); // 100 tokens
    let r = route(&mut e.client, "/v1/completions", &completion(&long, 2)).await;
    check(&r, true, "100 uncached tokens");
    serve(&r.primary(), &completion(&long, 2)).await;
    let r = route(&mut e.client, "/v1/completions", &completion(&long, 2)).await;
    check(&r, false, "96 of 100 tokens cached on the decode pod");
    assert!(
        metric(
            "llm_d_epp_disagg_decision_total",
            &[
                "plugin_type=\"disagg-profile-handler\"",
                "decision_type=\"decode-only\""
            ]
        ) - before
            >= 2.0
    );
    assert!(
        metric(
            "llm_d_inference_scheduler_disagg_decision_total",
            &["decision_type=\"prefill-decode\""]
        ) >= 1.0
    );
    drop(e);

    // Current: promptTokens 64 gates short prompts even when they are all uncached.
    let mut e = epp(&config("pd-current.yaml", &[]), specs.clone(), None, None).await;
    let r = route(
        &mut e.client,
        "/v1/completions",
        &completion(&chars(200), 2),
    )
    .await;
    check(&r, false, "50 tokens < promptTokens 64");
    let r = route(
        &mut e.client,
        "/v1/completions",
        &completion(&chars(400), 2),
    )
    .await;
    check(&r, true, "100 tokens, all uncached");
}

/// A pod's `/metrics` as vLLM writes it, with a waiting queue the test sets: simulators in one
/// process share one metrics registry, so their own `/metrics` cannot tell their queues apart.
async fn metrics_stub(waiting: std::sync::Arc<std::sync::atomic::AtomicU32>) -> u16 {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let w = waiting.load(std::sync::atomic::Ordering::Relaxed);
            async move {
                format!(
                    "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{engine=\"0\",model_name=\"{MODEL}\"}} {w}\n# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{engine=\"0\",model_name=\"{MODEL}\"}} 1\n# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{engine=\"0\",model_name=\"{MODEL}\"}} 0.1\n"
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_aware_and_simulator_guides_balance_and_keep_prefixes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let (a, _sa) = plain_sim(&[]).await;
    let (b, _sb) = plain_sim(&[]).await;

    // load-aware-scorer (llm-d's range): an idle pod scores 0.5, one with w waiting
    // 0.5 × (1 − w/128); the pods' queues come from their /metrics.
    let queues = [Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0))];
    let mut specs = vec![spec_of(&a, "both"), spec_of(&b, "both")];
    for (spec, q) in specs.iter_mut().zip(&queues) {
        spec.metrics_port = Some(metrics_stub(q.clone()).await);
    }
    let ids: Vec<String> = specs.iter().map(|s| s.host_port()).collect();
    let mut e = epp(&config("load-aware-v0.5.yaml", &[]), specs, None, None).await;
    let pool = e.epp.scheduler.pool().clone();
    let seen = |i: usize, w: f64| {
        let pool = pool.clone();
        let id = ids[i].clone();
        move || {
            pool.snapshot()
                .iter()
                .find(|e| *e.id == *id)
                .and_then(|e| e.fresh_load(Duration::from_secs(5)))
                .is_some_and(|l: Load| l.waiting == w)
        }
    };
    for (busy, idle) in [(0, 1), (1, 0)] {
        queues[busy].store(3, Ordering::Relaxed);
        queues[idle].store(0, Ordering::Relaxed);
        wait_until("the queues scraped", seen(busy, 3.0)).await;
        wait_until("the queues scraped", seen(idle, 0.0)).await;
        for i in 0..5 {
            let prompt = format!("new prompt {busy} {i}");
            let r = route(&mut e.client, "/v1/completions", &completion(&prompt, 1)).await;
            assert_eq!(r.primary(), ids[idle], "the idle pod wins");
            serve(&r.primary(), &completion(&prompt, 1)).await;
        }
    }
    // llm-d's range decides against a prefix: a pod holding 3 of 10 blocks (prefix score
    // 0.3) with 64 waiting scores 0.3 + 0.5 × (1 − 64/128) = 0.55, an idle pod 0.5, so the
    // holder wins; with a 0..1 range it would be 0.3 + 0.5 = 0.8 against 1.0.
    queues[0].store(0, Ordering::Relaxed);
    queues[1].store(0, Ordering::Relaxed);
    wait_until("the queues scraped", seen(0, 0.0)).await;
    wait_until("the queues scraped", seen(1, 0.0)).await;
    let head = "0123456789abcdef".repeat(12); // 192 characters: 3 blocks of 64
    let holder = route(&mut e.client, "/v1/completions", &completion(&head, 1))
        .await
        .primary();
    let (h, other) = if holder == ids[0] { (0, 1) } else { (1, 0) };
    queues[h].store(64, Ordering::Relaxed);
    wait_until("the queues scraped", seen(h, 64.0)).await;
    let longer = format!("{head}{}", "zyxwvutsrqponmlk".repeat(28)); // 640 characters
    let r = route(&mut e.client, "/v1/completions", &completion(&longer, 1)).await;
    assert_eq!(
        r.primary(),
        holder,
        "0.3 + 0.25 beats 0.5 (other: {})",
        ids[other]
    );
    drop(e);
    let specs = vec![spec_of(&a, "both"), spec_of(&b, "both")];

    // The simulator guide (GIE's default plugins, no handler or picker: the loader adds them)
    // and the v0.3 sim sample: a repeated prompt stays on its pod; distinct prompts spread.
    for name in ["simulator-default.yaml", "simulator-v0.3.yaml"] {
        let mut e = epp(&config(name, &[]), specs.clone(), None, None).await;
        // autoTune: the block size follows the pods' vllm:cache_config_info, once scraped.
        let pool = e.epp.scheduler.pool().clone();
        wait_until("the first scrapes", || {
            pool.snapshot()
                .iter()
                .all(|e| e.fresh_load(Duration::from_secs(5)).is_some())
        })
        .await;
        let prompt = text(&format!("{name}-sticky"), 100);
        let first = route(&mut e.client, "/v1/completions", &completion(&prompt, 1))
            .await
            .primary();
        for _ in 0..5 {
            let r = route(&mut e.client, "/v1/completions", &completion(&prompt, 1)).await;
            assert_eq!(
                r.primary(),
                first,
                "{name}: the prompt stays where it was sent"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for i in 0..16 {
            let r = route(
                &mut e.client,
                "/v1/completions",
                &completion(&text(&format!("{name}-spread{i}-"), 40), 1),
            )
            .await;
            seen.insert(r.primary());
        }
        assert_eq!(seen.len(), 2, "{name}: distinct prompts use both pods");
        assert!(
            metric(
                "llm_d_epp_prefix_indexer_size",
                &["plugin_type=\"prefix-cache-scorer\""]
            ) > 0.0
        );
    }
}

/// Runs the `llmd-epp` binary with these flags until it serves (or exits): (serving, output,
/// the ext_proc and metrics addresses).
fn run_binary(args: &[&str]) -> (std::process::Child, bool, String, Option<(String, String)>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_llmd-epp"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        out.push_str(&line);
        out.push('\n');
        if line.contains("llmd-epp serving") {
            let field = |k: &str| {
                let at = line.find(&format!("\"{k}\":\""))? + k.len() + 4;
                line[at..].split('"').next().map(str::to_owned)
            };
            let addrs = field("grpc").zip(field("metrics"));
            return (child, true, out, addrs);
        }
    }
    (child, false, out, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_llm_d_flags_and_refuses_what_it_lacks() {
    let (s, _stop) = plain_sim(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, config("simulator-default.yaml", &[])).unwrap();
    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(
        &eps,
        format!(
            "endpoints: [{{address: 127.0.0.1, port: {}, model: {MODEL}}}]\n",
            s.addr.port()
        ),
    )
    .unwrap();
    let (cfg, eps) = (cfg.to_str().unwrap(), eps.to_str().unwrap());
    // As GIE's chart renders llm-d's flags (flag and value as two arguments) and as llm-d's
    // guides set them.
    let (mut child, serving, out, addrs) = run_binary(&[
        "--config-file",
        cfg,
        "--endpoints-file",
        eps,
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--grpc-health-port",
        "0",
        "--metrics-port",
        "0",
        "--zap-encoder",
        "json",
        "--v",
        "4",
        "--kv-cache-usage-percentage-metric",
        "vllm:kv_cache_usage_perc",
        "--refresh-metrics-interval",
        "50ms",
        "--metrics-staleness-threshold",
        "2s",
        "--tracing=false",
        "--secure-serving=false",
        "--metrics-endpoint-auth=false",
        "--pool-group",
        "inference.networking.k8s.io",
        "--enable-pprof",
        "--drain-timeout",
        "5s",
    ]);
    assert!(serving, "{out}");
    let (grpc, metrics) = addrs.unwrap();
    let mut client = llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let r = route(&mut client, "/v1/completions", &completion("hello", 1)).await;
    assert_eq!(r.primary(), format!("127.0.0.1:{}", s.addr.port()));
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "llm_d_epp_request_total",
        "inference_objective_request_total",
        "llm_d_epp_info",
        "llm_d_epp_scheduler_e2e_duration_seconds",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // What would change behaviour and is not implemented: refused at startup, saying why.
    for (extra, why) in [
        (vec!["--tls-min-version", "VersionTLS11"], "VersionTLS12"),
        (vec!["--metrics-endpoint-auth=true"], "not implemented"),
        (vec!["--endpoint-selector", "app=vllm"], "--endpoints-file"),
        (
            vec![
                "--config-text",
                "featureGates: [flowControl]\nflowControl: {enableEviction: true}\n",
            ],
            "flowControl.enableEviction",
        ),
        (
            vec![
                "--config-text",
                "plugins: [{type: session-affinity-filter}]\n",
            ],
            "nearest supported: session-affinity-scorer",
        ),
    ] {
        let mut args = vec![
            "--endpoints-file",
            eps,
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--grpc-health-port",
            "0",
            "--metrics-port",
            "0",
        ];
        args.extend(extra.iter().copied());
        let (mut child, serving, out, _) = run_binary(&args);
        let _ = child.kill();
        let status = child.wait().unwrap();
        assert!(
            !serving && !status.success(),
            "{extra:?} was accepted:\n{out}"
        );
        assert!(out.contains(why), "{extra:?}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_tls_by_default() {
    use llmd_wire::ext_proc::{Client, RequestDecision, RequestHead};
    let (s, _stop) = plain_sim(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(
        &eps,
        format!(
            "endpoints: [{{address: 127.0.0.1, port: {}, model: {MODEL}}}]\n",
            s.addr.port()
        ),
    )
    .unwrap();
    let eps = eps.to_str().unwrap();
    let base = [
        "--endpoints-file",
        eps,
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--grpc-health-port",
        "0",
        "--metrics-port",
        "0",
        "--log-format",
        "json",
    ];
    // No TLS flag: TLS on the ext_proc port with a self-signed certificate, llm-d's default
    // (--secure-serving=true).
    let (mut child, serving, out, addrs) = run_binary(&base);
    assert!(serving, "{out}");
    let (grpc, _) = addrs.unwrap();
    let headers = http::HeaderMap::new();
    let head = RequestHead {
        method: "POST",
        path: "/v1/completions",
        authority: b"llmd",
        scheme: "http",
        headers: &headers,
    };
    let body = bytes::Bytes::from(completion("over TLS", 1));
    // The first request loads the default configuration's tokenizer: a debug build on a busy
    // machine took over 10 s for it once.
    let tls = Client::connect_lazy(&format!("https://{grpc}"), Duration::from_secs(60)).unwrap();
    match tls.request(&head, &body).await.unwrap() {
        RequestDecision::Continue(c) => assert_eq!(
            c.headers
                .get(llmd_wire::headers::DESTINATION_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some(format!("127.0.0.1:{}", s.addr.port()).as_str())
        ),
        RequestDecision::Immediate(i) => panic!("{i:?}"),
    }
    // gRPC health on the ext_proc port is served over the same TLS.
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .connect_with_connector(llmd_wire::tls::grpc_connector(
            llmd_wire::tls::client_config(None, true).unwrap(),
        ))
        .await
        .unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // Plaintext gRPC to the TLS port gets nowhere.
    let plain = Client::connect_lazy(&format!("http://{grpc}"), Duration::from_secs(2)).unwrap();
    assert!(plain.request(&head, &body).await.is_err());
    child.kill().unwrap();
    child.wait().unwrap();

    // A --cert-path without the secret's files: refused at startup, naming the file.
    let missing = dir.path().join("no-secret");
    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--secure-serving", "--cert-path", missing.to_str().unwrap()])
        .collect();
    let (mut child, serving, out, _) = run_binary(&args);
    assert!(!serving, "{out}");
    assert!(out.contains("tls.crt"), "{out}");
    let _ = child.kill();
    let _ = child.wait();
}
