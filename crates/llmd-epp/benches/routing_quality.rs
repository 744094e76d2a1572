//! Routing quality, as the simulators report it: a scenario runner over 8 simulator pods, each
//! with its own engine metrics (so per-pod load scraped by the EPP is real), for routing
//! policies side by side in one run.
//!
//! Every request goes through the EPP's ext_proc gRPC service with the real client
//! (`llmd_wire::ext_proc`), is streamed from the chosen pod, and its response is relayed back
//! through the same ext_proc stream as a gateway does (headers, the first chunk, the end), so
//! the EPP sees each request finish. Pods: in-process `llmd-sim`s with the real Llama-3.1
//! tokenizer, real KV events over ZMQ, vLLM-like timing (`--time-scale 1`: ~50 µs per
//! uncached prompt token, 6.5 ms per output token) and 80 blocks of 64 tokens each (about four
//! 1,000-token prefixes), each on its own engine label behind its own `/metrics` view
//! (`llmd_sim::engine_view`). Fresh pods for every (scenario, policy).
//!
//! Scenarios:
//! - `shared-prefix` (the demo's part 1): 16 groups of a ~1,000-token prefix with a ~100-token
//!   question, group-interleaved (request i uses group i mod 16), 12 in flight, 192 requests.
//! - `bursts`: 6 times, a new ~1,500-token prefix arrives as 8 requests within 20 ms.
//! - `multi-turn`: 16 conversations of 4 turns (each turn's prompt extends the previous one),
//!   8 in flight; a follow-up "hits" when it goes to the pod that served the turn before.
//! - `trace`: a Mooncake-style trace (prompts of shared `hash_ids` blocks under 8 roots of
//!   unequal popularity, 240 requests arriving open-loop at 40/s).
//! - `mixed`: all three at once (shared prefixes with 6 in flight, conversations with 4,
//!   bursts every 400 ms).
//!
//! Policies: `random`; `load` (queue + KV-utilization scorers); `precise-today` (the default
//! precise configuration: prefix ×2 + queue + KV utilization, with the scorers blind to the
//! in-flight count, as the EPP was before it); `precise` (the same configuration with the
//! in-flight count and `speculativeIndexing`).
//!
//! Prints, per scenario and policy: engine prefix-cache hit rate (cached / prompt tokens, from
//! the responses' `usage`), TTFT p50/p90/p99 (client clock), requests per pod (largest
//! deviation from the mean), goodput (requests/s, and their share, with TTFT within 100 ms),
//! and the scenario's own figure. A LoRA mix is not here: in one process the simulators share
//! one `vllm:lora_requests_info` series (it has no engine label), so LoRA affinity is shown by
//! `tests/affinity.rs` with simulators in processes of their own.
//! Run: `cargo bench -p llmd-epp --bench routing_quality` (about 3 minutes);
//! `LLMD_ROUTING_SCENARIOS=bursts,mixed` and `LLMD_ROUTING_POLICIES=precise` select.

#![allow(clippy::unwrap_used)] // benchmark setup: a failed unwrap is a broken benchmark

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue};
use llmd_epp::config::EndpointPickerConfig;
use llmd_epp::endpoints::EndpointsFile;
use llmd_epp::{Listeners, Options};
use llmd_telemetry::MetricsHandle;
use llmd_testkit::sim::SimBuilder;
use llmd_wire::ext_proc::{Client, RequestDecision, RequestHead};
use tokio_util::sync::CancellationToken;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const PODS: usize = 8;

/// Engine labels, unique over the whole run (old pods' series stay in the registry).
static NEXT_RANK: AtomicU32 = AtomicU32::new(0);

fn words(seed: u64, n: usize) -> String {
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
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{} ", WORDS[(x % WORDS.len() as u64) as usize])
        })
        .collect()
}

/// One request's outcome.
#[derive(Debug, Clone)]
struct Outcome {
    pod: String,
    ttft_ms: f64,
    prompt: u64,
    cached: u64,
}

/// A pool of simulators, an EPP over them, and a client of its ext_proc service.
struct Stack {
    client: Client,
    http: reqwest::Client,
    pods: Vec<String>,
    stop: CancellationToken,
    _epp: llmd_epp::Epp,
    _sims: Vec<llmd_testkit::sim::SimHandle>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Policy {
    Random,
    Load,
    PreciseToday,
    Precise,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::Random => "random",
            Policy::Load => "load",
            Policy::PreciseToday => "precise-today",
            Policy::Precise => "precise",
        }
    }

    fn config(self, tok: &str) -> String {
        let precise = |speculative: bool| {
            format!(
                r#"
plugins:
  - type: precise-prefix-cache-scorer
    parameters: {{hashSeed: "0", tokenizer: "{tok}", speculativeIndexing: {speculative}}}
  - type: queue-scorer
  - type: kv-cache-utilization-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {{pluginRef: precise-prefix-cache-scorer, weight: 2}}
      - {{pluginRef: queue-scorer, weight: 1}}
      - {{pluginRef: kv-cache-utilization-scorer, weight: 1}}
      - {{pluginRef: max-score-picker}}
"#
            )
        };
        match self {
            Policy::Random => "plugins:\n  - type: random-picker\nschedulingProfiles:\n  - name: default\n    plugins:\n      - {pluginRef: random-picker}\n".into(),
            Policy::Load => "plugins:\n  - type: queue-scorer\n  - type: kv-cache-utilization-scorer\n  - type: max-score-picker\nschedulingProfiles:\n  - name: default\n    plugins:\n      - {pluginRef: queue-scorer}\n      - {pluginRef: kv-cache-utilization-scorer}\n      - {pluginRef: max-score-picker}\n".into(),
            Policy::PreciseToday => precise(false),
            Policy::Precise => precise(true),
        }
    }
}

/// A fresh stack; rebuilt (at most twice) when a pod's KV events never reach the new EPP.
async fn stack(policy: Policy, tok: &str, metrics: &MetricsHandle) -> Stack {
    for _ in 0..2 {
        match try_stack(policy, tok, metrics).await {
            Ok(s) => return s,
            Err(pod) => eprintln!(
                "  (warm-up: no KV events from {pod} reached the EPP in 10 s; building the stack again)"
            ),
        }
    }
    try_stack(policy, tok, metrics).await.unwrap()
}

async fn try_stack(policy: Policy, tok: &str, metrics: &MetricsHandle) -> Result<Stack, String> {
    let stop = CancellationToken::new();
    let mut specs = String::from("endpoints:\n");
    let mut pods = Vec::new();
    let mut sims = Vec::new();
    for _ in 0..PODS {
        let rank = NEXT_RANK.fetch_add(1, Ordering::Relaxed).to_string();
        let sim = llmd_testkit::sim::start(
            SimBuilder::new()
                .flags([
                    "--model",
                    MODEL,
                    "--tokenizer",
                    tok,
                    "--hash-seed",
                    "0",
                    "--num-gpu-blocks",
                    "80",
                    "--max-model-len",
                    "16384",
                    "--data-parallel-rank",
                    rank.as_str(),
                    "--kv-events-endpoint",
                    "tcp://*:0",
                ])
                .metrics(metrics.clone()),
        )
        .await;
        let view = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let view_port = view.local_addr().unwrap().port();
        let app = llmd_sim::engine_view::router(metrics.clone(), rank.parse().unwrap());
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(view, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await
        });
        let kv_port = sim
            .kv_events_endpoint()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        specs.push_str(&format!(
            "  - {{address: 127.0.0.1, port: {}, model: {MODEL}, kvEvents: \"tcp://127.0.0.1:{kv_port}\", metricsPort: {view_port}}}\n",
            sim.addr().port()
        ));
        pods.push(format!("127.0.0.1:{}", sim.addr().port()));
        sims.push(sim);
    }
    let mut options = Options::new(
        EndpointPickerConfig::parse(&policy.config(tok)).unwrap(),
        EndpointsFile::parse(&specs).unwrap(),
    );
    options.max_body_bytes = 4 << 20;
    // `llmd epp`'s default (--refresh-metrics-interval).
    options.scrape_interval = Duration::from_millis(500);
    options.pool_name = "bench".into();
    let epp = llmd_epp::start(
        options,
        Listeners::loopback().await.unwrap(),
        None,
        stop.clone(),
    )
    .await
    .unwrap();
    if policy == Policy::PreciseToday {
        epp.scheduler.pool().hide_inflight_for_bench();
    }
    let http = reqwest::Client::new();
    // Until every KV-event subscription is live (the EPP dials the pods' PUB sockets).
    if let Some(kv) = epp.scheduler.kv() {
        for (i, pod) in pods.iter().enumerate() {
            let mut n = 0;
            while kv.index.pods().get(pod).is_none() {
                let body = serde_json::json!({"model": MODEL, "prompt": format!("warm-up {i} {n} {}", words(1000 + n, 100)), "max_tokens": 1});
                http.post(format!("http://{pod}/v1/completions"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                n += 1;
                if n >= 1_000 {
                    stop.cancel();
                    return Err(pod.clone());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Every pod scraped at least once.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let client =
        Client::connect_lazy(&format!("http://{}", epp.grpc), Duration::from_secs(30)).unwrap();
    let stack = Stack {
        client,
        http,
        pods,
        stop,
        _epp: epp,
        _sims: sims,
    };
    // The EPP's tokenizer loaded before anything is measured.
    request(&stack, &words(7, 50), 1).await;
    Ok(stack)
}

/// Routes `prompt` through the EPP, streams it from the chosen pod, and relays the response
/// through the ext_proc stream (headers, first chunk, end).
async fn request(stack: &Stack, prompt: &str, max_tokens: u32) -> Outcome {
    let body = serde_json::to_vec(&serde_json::json!({
        "model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": true,
        "stream_options": {"include_usage": true}
    }))
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let started = Instant::now();
    let head = RequestHead {
        method: "POST",
        path: "/v1/completions",
        authority: b"bench",
        scheme: "http",
        headers: &headers,
    };
    let RequestDecision::Continue(c) = stack
        .client
        .request(&head, &Bytes::from(body.clone()))
        .await
        .unwrap()
    else {
        panic!("the EPP refused a request");
    };
    let pod = c
        .headers
        .get("x-gateway-destination-endpoint")
        .unwrap()
        .to_str()
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    let mut stream = c.stream;
    let resp = stack
        .http
        .post(format!("http://{pod}/v1/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut rh = HeaderMap::new();
    rh.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    stream
        .response_headers(resp.status(), &mut rh)
        .await
        .unwrap();
    let (tx, mut answers) = stream.into_body();
    let mut chunks = resp.bytes_stream();
    let mut ttft = None;
    let mut text = String::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap();
        if ttft.is_none() && chunk.windows(5).any(|w| w == b"data:") {
            ttft = Some(started.elapsed());
            tx.reserve().await.unwrap().send(&chunk, false);
            answers.next().await.unwrap();
        }
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    tx.reserve().await.unwrap().send(&Bytes::new(), true);
    answers.next().await.unwrap();
    let usage = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .unwrap()["usage"]
        .clone();
    Outcome {
        pod,
        ttft_ms: ttft.unwrap().as_secs_f64() * 1e3,
        prompt: usage["prompt_tokens"].as_u64().unwrap(),
        cached: usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
    }
}

/// The shared-prefix load: `n` requests over `groups` prefixes, `inflight` at a time.
async fn shared_prefix(stack: &Arc<Stack>, n: usize, inflight: usize, seed: u64) -> Vec<Outcome> {
    let groups = 16;
    let prefixes: Arc<Vec<String>> = Arc::new(
        (0..groups as u64)
            .map(|g| format!("Document {g}.\n{}", words(seed * 100 + g + 1, 700)))
            .collect(),
    );
    let next = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..inflight)
        .map(|_| {
            let (stack, prefixes, next) = (stack.clone(), prefixes.clone(), next.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        break;
                    }
                    let g = i % groups;
                    let prompt = format!(
                        "{}\nQuestion {i}: {}",
                        prefixes[g],
                        words(seed * 10_000 + i as u64, 60)
                    );
                    out.push(request(&stack, &prompt, 16).await);
                }
                out
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.extend(t.await.unwrap());
    }
    out
}

/// Bursts: each a new prefix as 8 requests within 20 ms. Returns the outcomes and, per
/// burst, the most requests one pod got.
async fn bursts(
    stack: &Arc<Stack>,
    count: usize,
    pause: Duration,
    seed: u64,
) -> (Vec<Outcome>, Vec<usize>) {
    let mut out = Vec::new();
    let mut together = Vec::new();
    for b in 0..count {
        let prefix = format!(
            "Burst {seed}-{b}.\n{}",
            words(seed * 1_000 + b as u64, 1_000)
        );
        let tasks: Vec<_> = (0..8)
            .map(|q| {
                let stack = stack.clone();
                let prompt = format!("{prefix}\nAsk {q}: {}", words(q + 50, 20));
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(2_500 * q)).await;
                    request(&stack, &prompt, 16).await
                })
            })
            .collect();
        let mut pods: HashMap<String, usize> = HashMap::new();
        for t in tasks {
            let o = t.await.unwrap();
            *pods.entry(o.pod.clone()).or_default() += 1;
            out.push(o);
        }
        together.push(pods.values().copied().max().unwrap_or(0));
        tokio::time::sleep(pause).await;
    }
    (out, together)
}

/// Conversations: `sessions` of `turns` turns, `inflight` conversations at a time. Returns
/// the outcomes and (follow-ups on the previous turn's pod, follow-ups).
async fn multi_turn(
    stack: &Arc<Stack>,
    sessions: usize,
    turns: usize,
    inflight: usize,
    seed: u64,
) -> (Vec<Outcome>, (usize, usize)) {
    let next = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..inflight)
        .map(|_| {
            let (stack, next) = (stack.clone(), next.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                let (mut same, mut follow) = (0, 0);
                loop {
                    let s = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if s >= sessions {
                        break;
                    }
                    let mut prompt = format!(
                        "System: you are assistant {s}.\n{}",
                        words(seed * 777 + s as u64, 300)
                    );
                    let mut last: Option<String> = None;
                    for t in 0..turns {
                        prompt.push_str(&format!(
                            "\nUser turn {t}: {}",
                            words(seed * 31 + (s * 10 + t) as u64, 120)
                        ));
                        let o = request(&stack, &prompt, 16).await;
                        if let Some(prev) = &last {
                            follow += 1;
                            same += usize::from(*prev == o.pod);
                        }
                        last = Some(o.pod.clone());
                        prompt.push_str(&format!(
                            "\nAssistant: {}",
                            words(seed * 13 + (s * 10 + t) as u64, 60)
                        ));
                        out.push(o);
                    }
                }
                (out, same, follow)
            })
        })
        .collect();
    let mut out = Vec::new();
    let (mut same, mut follow) = (0, 0);
    for t in tasks {
        let (o, s, f) = t.await.unwrap();
        out.extend(o);
        same += s;
        follow += f;
    }
    (out, (same, follow))
}

/// A Mooncake-style trace (`hash_ids` of shared blocks, open-loop arrivals), generated: `n`
/// requests at `rate`/s (exponential gaps); each prompt is a root block chosen from 8 (the
/// first ones far more often, as system prompts are), 1-3 blocks shared under that root, and 1-2
/// blocks of its own; a block is ~250 tokens of the same text wherever its id recurs.
async fn trace(stack: &Arc<Stack>, n: usize, rate: f64, seed: u64) -> Vec<Outcome> {
    let mut x = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut at = 0.0f64;
    let mut tasks = Vec::new();
    let started = Instant::now();
    for i in 0..n {
        let u = (next() % 1_000_000) as f64 / 1_000_000.0;
        at += -(1.0 - u).ln() / rate;
        // Root: 0 half the time, 1 a quarter, ... (8 roots).
        let root = (next() % 255 + 1).leading_zeros().saturating_sub(56) as u64;
        let mut ids = vec![root];
        for depth in 0..1 + next() % 3 {
            ids.push(1_000 + root * 100 + depth * 10 + next() % 3);
        }
        for k in 0..1 + next() % 2 {
            ids.push(1_000_000 + i as u64 * 10 + k);
        }
        let prompt: String = ids
            .iter()
            .map(|id| format!("[{id}] {}", words(seed * 99_991 + id, 125)))
            .collect();
        let stack = stack.clone();
        let due = Duration::from_secs_f64(at);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
            request(&stack, &prompt, 16).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// TTFT objective for the goodput column.
const SLO_MS: f64 = 100.0;

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Summary of a run: (hit rate, TTFT p50, p90, p99, largest per-pod deviation from the mean).
fn summary(out: &[Outcome], pods: &[String]) -> (f64, f64, f64, f64, f64) {
    let prompt: u64 = out.iter().map(|o| o.prompt).sum();
    let cached: u64 = out.iter().map(|o| o.cached).sum();
    let mut t: Vec<f64> = out.iter().map(|o| o.ttft_ms).collect();
    t.sort_by(f64::total_cmp);
    let mut per: HashMap<&str, usize> = pods.iter().map(|p| (p.as_str(), 0)).collect();
    for o in out {
        *per.entry(o.pod.as_str()).or_default() += 1;
    }
    let mean = out.len() as f64 / pods.len() as f64;
    let dev = per
        .values()
        .map(|c| (*c as f64 - mean).abs() / mean)
        .fold(0.0, f64::max);
    (
        cached as f64 / prompt.max(1) as f64,
        pct(&t, 0.5),
        pct(&t, 0.9),
        pct(&t, 0.99),
        dev,
    )
}

fn per_pod(out: &[Outcome], pods: &[String]) -> String {
    let mut per: HashMap<&str, usize> = pods.iter().map(|p| (p.as_str(), 0)).collect();
    for o in out {
        *per.entry(o.pod.as_str()).or_default() += 1;
    }
    let mut v: Vec<usize> = pods.iter().map(|p| per[p.as_str()]).collect();
    v.sort_unstable();
    format!("{v:?}")
}

fn main() {
    let Some(tok) = llmd_testkit::tokenizer::tokenizer_dir(MODEL) else {
        return;
    };
    let select = |var: &str| -> Option<Vec<String>> {
        std::env::var(var)
            .ok()
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
    };
    let scenarios = select("LLMD_ROUTING_SCENARIOS").unwrap_or_else(|| {
        ["shared-prefix", "bursts", "multi-turn", "trace", "mixed"]
            .map(String::from)
            .to_vec()
    });
    let policies: Vec<Policy> = [
        Policy::Random,
        Policy::Load,
        Policy::PreciseToday,
        Policy::Precise,
    ]
    .into_iter()
    .filter(|p| select("LLMD_ROUTING_POLICIES").is_none_or(|s| s.iter().any(|n| n == p.name())))
    .collect();
    let metrics =
        llmd_telemetry::install_prometheus(&[llmd_telemetry::names::vllm::ALL], &[]).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for scenario in &scenarios {
            eprintln!("\n== {scenario}: {PODS} pods");
            eprintln!(
                "{:>14} | {:>6} | {:>8} {:>8} {:>8} | {:>6} | goodput (TTFT <= {SLO_MS} ms) | figure",
                "policy", "hit", "TTFT p50", "p90", "p99", "spread"
            );
            for &policy in &policies {
                let stack = Arc::new(stack(policy, &tok, &metrics).await);
                let began = Instant::now();
                let (out, figure) = match scenario.as_str() {
                    "shared-prefix" => {
                        let out = shared_prefix(&stack, 192, 12, 1).await;
                        let f = format!("requests per pod {}", per_pod(&out, &stack.pods));
                        (out, f)
                    }
                    "bursts" => {
                        let (out, together) =
                            bursts(&stack, 6, Duration::from_millis(300), 2).await;
                        let f = format!("most of a burst's 8 on one pod: {together:?}");
                        (out, f)
                    }
                    "multi-turn" => {
                        let (out, (same, follow)) = multi_turn(&stack, 16, 4, 8, 3).await;
                        let f = format!(
                            "follow-ups on the conversation's pod: {same}/{follow} = {:.1}%",
                            100.0 * same as f64 / follow.max(1) as f64
                        );
                        (out, f)
                    }
                    "trace" => {
                        let out = trace(&stack, 240, 40.0, 7).await;
                        (out, "open loop at 40 requests/s".to_owned())
                    }
                    "mixed" => {
                        let (a, b, c) = tokio::join!(
                            shared_prefix(&stack, 128, 6, 4),
                            multi_turn(&stack, 12, 4, 4, 5),
                            bursts(&stack, 5, Duration::from_millis(400), 6),
                        );
                        let mut out = a;
                        out.extend(b.0);
                        out.extend(c.0);
                        let f = format!(
                            "follow-ups {}/{}, bursts {:?}",
                            b.1.0, b.1.1, c.1
                        );
                        (out, f)
                    }
                    other => panic!("unknown scenario {other}"),
                };
                let secs = began.elapsed().as_secs_f64();
                let (hit, p50, p90, p99, dev) = summary(&out, &stack.pods);
                let good = out.iter().filter(|o| o.ttft_ms <= SLO_MS).count();
                eprintln!(
                    "{:>14} | {:>5.1}% | {p50:>8.1} {p90:>8.1} {p99:>8.1} | ±{:>4.0}% | {:>5.1}/s {:>5.1}% | {figure} ({} requests)",
                    policy.name(),
                    hit * 100.0,
                    dev * 100.0,
                    good as f64 / secs,
                    100.0 * good as f64 / out.len().max(1) as f64,
                    out.len()
                );
                drop(stack);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
}
