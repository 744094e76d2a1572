//! Routing quality on a shared-prefix workload: precise prefix-cache routing against the
//! random and round-robin baselines, as the simulators report it (prefix-cache hit rate from
//! `usage.prompt_tokens_details.cached_tokens`, and time to first token).
//!
//! Each policy gets four fresh in-process `llmd-sim` pods (real Llama-3.1 tokenizer, real KV
//! events over ZMQ, vLLM-like timing: 50 µs/prompt token, 120 blocks of 64 tokens each, so a
//! pod holds about 4 of the 16 prefixes). 16 groups of ~1,500-token shared prefixes, 12 rounds
//! in shuffled order, one new question per request, 4 concurrent clients. Every request is
//! routed through the EPP's ext_proc gRPC service, then sent (streaming) to the chosen pod.
//! The precise row uses the prefix scorer alone: in one process the simulators share one
//! metrics registry, so per-pod load scraped from `/metrics` would be meaningless here.
//! Run: `cargo bench -p llmd-epp --bench routing_quality`

#![allow(clippy::unwrap_used)] // benchmark setup: a failed unwrap is a broken benchmark

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use futures::StreamExt;
use llmd_epp::config::EndpointPickerConfig;
use llmd_epp::endpoints::EndpointsFile;
use llmd_epp::{Listeners, Options};
use llmd_testkit::sim::SimBuilder;
use tokio_util::sync::CancellationToken;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const GROUPS: usize = 16;
const ROUNDS: usize = 12;

fn document(seed: u64, words: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "serving",
        "prefix",
        "cache",
        "of",
        "large",
        "language",
        "models",
        "routes",
        "requests",
        "to",
        "pods",
        "that",
        "already",
        "hold",
        "their",
        "blocks,",
        "which",
        "cuts",
        "time",
        "first",
        "token.",
        "Decode",
        "prefill",
        "disaggregation",
        "KV",
        "transfer",
    ];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..words)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{} ", WORDS[(x % WORDS.len() as u64) as usize])
        })
        .collect()
}

async fn route(
    client: &mut ExternalProcessorClient<tonic::transport::Channel>,
    body: &[u8],
) -> String {
    let headers = [(":method", "POST"), (":path", "/v1/completions")];
    let answer = llmd_wire::ext_proc::decide(client, &headers, body, Duration::from_secs(10))
        .await
        .unwrap();
    answer.destinations()[0].to_owned()
}

/// Streams a completion from `pod`; returns (TTFT, prompt tokens, cached tokens).
async fn complete(http: &reqwest::Client, pod: &str, prompt: &str) -> (Duration, u64, u64) {
    let started = Instant::now();
    let resp = http
        .post(format!("http://{pod}/v1/completions"))
        .json(&serde_json::json!({"model": MODEL, "prompt": prompt, "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut ttft = None;
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if ttft.is_none() && chunk.windows(5).any(|w| w == b"data:") {
            ttft = Some(started.elapsed());
        }
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let usage = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .unwrap()["usage"]
        .clone();
    (
        ttft.unwrap(),
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
    )
}

async fn run_policy(
    name: &str,
    config: &str,
    tok: &str,
    prefixes: &Arc<Vec<String>>,
) -> (f64, f64, f64) {
    let stop = CancellationToken::new();
    let mut specs = String::from("endpoints:\n");
    let mut pods = Vec::new();
    let mut sims = Vec::new(); // stopped when dropped, with the EPP at the end
    for _ in 0..4 {
        let sim = llmd_testkit::sim::start(SimBuilder::new().flags([
            "--model",
            MODEL,
            "--tokenizer",
            tok,
            "--hash-seed",
            "0",
            "--num-gpu-blocks",
            "120",
            "--kv-events-endpoint",
            "tcp://*:0",
        ]))
        .await;
        let kv_port = sim
            .kv_events_endpoint()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        specs.push_str(&format!(
            "  - {{address: 127.0.0.1, port: {}, model: {MODEL}, kvEvents: \"tcp://127.0.0.1:{kv_port}\"}}\n",
            sim.addr().port()
        ));
        pods.push(format!("127.0.0.1:{}", sim.addr().port()));
        sims.push(sim);
    }
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let epp = llmd_epp::start(
        Options {
            config: EndpointPickerConfig::parse(config).unwrap(),
            endpoints_file: None,
            endpoints: EndpointsFile::parse(&specs).unwrap(),
            kv_events_bind: None,
            scrape_interval: Duration::from_secs(1),
            max_body_bytes: 4 << 20,
            metric_names: Default::default(),
            metrics_staleness: None,
            objectives: Vec::new(),
            subset_filter: true,
            pool_name: "bench".into(),
            kubernetes: None,
            limits: Default::default(),
            grace_period: std::time::Duration::from_secs(1),
            service_name: None,
            tls: None,
        },
        Listeners {
            grpc: bind().await,
            health: None,
            metrics: bind().await,
        },
        None,
        stop.clone(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    // Until every subscription is live (the EPP dials the pods' PUB sockets).
    if let Some(kv) = epp.scheduler.kv() {
        for (i, pod) in pods.iter().enumerate() {
            let mut n = 0;
            while kv.index.pods().get(pod).is_none() {
                complete(
                    &http,
                    pod,
                    &format!("warm-up {i} {n} {}", document(1000 + n, 100)),
                )
                .await;
                n += 1;
                assert!(n < 200);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // The workload: rounds of all groups in a shuffled order.
    let mut order = Vec::new();
    let mut x = 12345u64;
    for r in 0..ROUNDS {
        let mut groups: Vec<usize> = (0..GROUPS).collect();
        for i in (1..GROUPS).rev() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            groups.swap(i, (x >> 33) as usize % (i + 1));
        }
        order.extend(groups.into_iter().map(|g| (r, g)));
    }
    let queue = Arc::new(parking_lot::Mutex::new(order.into_iter()));
    let client = ExternalProcessorClient::connect(format!("http://{}", epp.grpc))
        .await
        .unwrap();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (queue, mut client, http, prefixes) = (
                queue.clone(),
                client.clone(),
                http.clone(),
                prefixes.clone(),
            );
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let next = queue.lock().next();
                    let Some((r, g)) = next else { break };
                    let prompt = format!("{}\nQuestion {r}: what does part {g} say?", prefixes[g]);
                    let body = serde_json::to_vec(
                        &serde_json::json!({"model": MODEL, "prompt": prompt, "max_tokens": 4}),
                    )
                    .unwrap();
                    let pod = route(&mut client, &body).await;
                    out.push(complete(&http, &pod, &prompt).await);
                }
                out
            })
        })
        .collect();
    let mut results = Vec::new();
    for w in workers {
        results.extend(w.await.unwrap());
    }
    stop.cancel();
    drop(sims);
    let prompt: u64 = results.iter().map(|r| r.1).sum();
    let cached: u64 = results.iter().map(|r| r.2).sum();
    let mut ttfts: Vec<f64> = results.iter().map(|r| r.0.as_secs_f64() * 1e3).collect();
    ttfts.sort_by(f64::total_cmp);
    let mean = ttfts.iter().sum::<f64>() / ttfts.len() as f64;
    let p90 = ttfts[ttfts.len() * 9 / 10];
    let hit = cached as f64 / prompt as f64;
    eprintln!(
        "{name:>12}: {} requests, prefix-cache hit rate {:.1}% of prompt tokens, TTFT mean {mean:.1} ms, p90 {p90:.1} ms",
        results.len(),
        hit * 100.0
    );
    (hit, mean, p90)
}

fn main() {
    let Some(tok) = llmd_testkit::tokenizer::tokenizer_dir(MODEL) else {
        return;
    };
    let precise = format!(
        r#"
plugins:
  - type: precise-prefix-cache-scorer
    parameters: {{hashSeed: "0", tokenizer: "{tok}"}}
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {{pluginRef: precise-prefix-cache-scorer}}
      - {{pluginRef: max-score-picker}}
"#
    );
    let random = "plugins:\n  - type: random-picker\nschedulingProfiles:\n  - name: default\n    plugins:\n      - {pluginRef: random-picker}\n";
    let prefixes: Arc<Vec<String>> = Arc::new(
        (0..GROUPS as u64)
            .map(|g| format!("Document {g}.\n{}", document(g + 1, 1_100)))
            .collect(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let rr = run_policy("round-robin", llmd_epp::config::ROUND_ROBIN_CONFIG, &tok, &prefixes).await;
        let rnd = run_policy("random", random, &tok, &prefixes).await;
        let pp = run_policy("precise", &precise, &tok, &prefixes).await;
        eprintln!(
            "precise vs round-robin: hit rate {:.2}x, mean TTFT {:.2}x; vs random: hit rate {:.2}x, mean TTFT {:.2}x",
            pp.0 / rr.0,
            pp.1 / rr.1,
            pp.0 / rnd.0,
            pp.1 / rnd.1
        );
    });
}
