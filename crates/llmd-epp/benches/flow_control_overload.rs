//! Flow control under overload (issue 19): three tenants at two priorities offer twice what
//! the pool can serve, through the EPP's ext_proc service, to in-process `llmd-sim` pods.
//!
//! Pool: 2 simulators, `--max-num-seqs 4` each, 20 ms prefill overhead, 10 ms per output token,
//! 16 output tokens (≈ 180 ms a request, 8 slots: ≈ 44 requests/s). The EPP counts what it has
//! in flight (`queueDepthThreshold: 4`: the pool is saturated with 4 requests per pod); the
//! pods' scraped load is pinned idle (a separate `/metrics` server per pod, scraped hourly:
//! in one process the simulators share one metrics registry) so that the saturation the
//! dispatcher sees is the EPP's own count of what runs.
//!
//! Tenants: `gold` (priority 10) offers 0.5x the pool's capacity, `silver` and `bronze`
//! (priority 0, one band, round-robin between them) 0.75x each: 2.0x in all, Poisson arrivals
//! for `SECONDS`. Each request is decided by the EPP (it may wait there), then sent streaming to
//! the chosen pod; TTFT is the client's clock from sending to the first streamed token. The
//! ext_proc stream is held until the response ends, as a data plane holds it.
//!
//! Rows: gold alone at 0.25x (the unloaded TTFT), then the 2x mix with flow control, with
//! flow control and llm-d's priority holdback (the low band stops at half the pool while gold
//! is active), and without flow control (legacy admission: nothing queues in the EPP,
//! everything queues in the pods).
//!
//! Run: `cargo bench -p llmd-epp --bench flow_control_overload` (or with `--profile dev`).

#![allow(clippy::unwrap_used)] // benchmark setup: a failed unwrap is a broken benchmark

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue};
use llmd_epp::config::EndpointPickerConfig;
use llmd_epp::endpoints::{EndpointSpec, EndpointsFile};
use llmd_epp::scheduling::Picker;
use llmd_epp::{Listeners, Options};
use llmd_testkit::sim::SimBuilder;
use llmd_wire::ext_proc::{Client, RequestDecision, RequestHead};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const PODS: usize = 2;
const SLOTS: usize = 4;
const MAX_TOKENS: u32 = 16;
const SECONDS: f64 = 20.0;
const TTL_S: f64 = 5.0;

/// One tenant: name, objective, share of the pool's capacity offered.
const MIX: &[(&str, &str, f64)] = &[
    ("gold", "high", 0.5),
    ("silver", "low", 0.75),
    ("bronze", "low", 0.75),
];

/// `holdback`: llm-d's priority-holdback policy (the lower band stops at this saturation
/// while the higher one is active).
fn config(flow_control: bool, holdback: Option<f64>) -> String {
    let gate = if flow_control {
        format!(
            "featureGates: [flowControl]\nflowControl:\n  defaultRequestTTL: {TTL_S}s\n  maxRequests: 400\n  priorityBands: [{{priority: 0, fairnessPolicyRef: rr}}]\n{}",
            if holdback.is_some() {
                "  usageLimitPolicyPluginRef: holdback\n"
            } else {
                ""
            }
        )
    } else {
        String::new()
    };
    let holdback = holdback
        .map(|m| format!("  - {{type: priority-holdback-policy, name: holdback, parameters: {{strategy: stepwise-spread, minCeiling: {m}}}}}\n"))
        .unwrap_or_default();
    format!(
        "{gate}inferenceObjectives: [{{name: high, priority: 10}}, {{name: low, priority: 0}}]
saturationDetector: {{queueDepthThreshold: {SLOTS}}}
plugins:
{holdback}  - {{type: round-robin-fairness-policy, name: rr}}
  - type: active-request-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins: [{{pluginRef: active-request-scorer}}, {{pluginRef: max-score-picker}}]
"
    )
}

/// A `/metrics` server reporting an idle engine.
async fn idle_metrics() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n"
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await });
    port
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    ttft: Option<Duration>,
    /// Time the EPP took to answer (its queue wait and the decision, for a dispatched request).
    decided: Duration,
    refused: Option<(u16, String)>,
}

type Results = Arc<Mutex<BTreeMap<&'static str, Vec<Outcome>>>>;

struct Stack {
    client: Client,
    epp: llmd_epp::Epp,
    stop: CancellationToken,
    _sims: Vec<llmd_testkit::sim::SimHandle>,
}

async fn stack(flow_control: bool, holdback: Option<f64>) -> Stack {
    let mut sims = Vec::new();
    let mut specs: Vec<EndpointSpec> = Vec::new();
    for _ in 0..PODS {
        let sim = llmd_testkit::sim::start(SimBuilder::new().flags([
            "--dummy-tokenizer",
            "--max-num-seqs",
            &SLOTS.to_string(),
            "--prefill-overhead-ms",
            "20",
            "--prefill-us-per-token",
            "0",
            "--decode-itl-ms",
            "10",
            "--decode-itl-per-seq-us",
            "0",
            "--served-model-name",
            MODEL,
        ]))
        .await;
        let metrics = idle_metrics().await;
        specs.push(
            EndpointsFile::parse(&format!(
                "endpoints: [{{address: 127.0.0.1, port: {}, metricsPort: {metrics}, model: {MODEL}}}]",
                sim.addr().port()
            ))
            .unwrap()
            .endpoints
            .remove(0),
        );
        sims.push(sim);
    }
    let stop = CancellationToken::new();
    let mut options = Options::new(
        EndpointPickerConfig::parse(&config(flow_control, holdback)).unwrap(),
        EndpointsFile { endpoints: specs },
    );
    options.scrape_interval = Duration::from_secs(3600);
    options.grace_period = Duration::from_secs(1);
    let epp = llmd_epp::start(
        options,
        Listeners::loopback().await.unwrap(),
        None,
        stop.clone(),
    )
    .await
    .unwrap();
    let pool = epp.scheduler.pool().clone();
    for _ in 0..500 {
        if pool.snapshot().iter().all(|e| e.load.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client =
        Client::connect_lazy(&format!("http://{}", epp.grpc), Duration::from_secs(60)).unwrap();
    Stack {
        client,
        epp,
        stop,
        _sims: sims,
    }
}

async fn one(
    client: Client,
    http: reqwest::Client,
    tenant: &str,
    objective: &str,
    seq: u64,
) -> Outcome {
    let body = serde_json::to_vec(&serde_json::json!({
        "model": MODEL, "prompt": format!("{tenant} request {seq}: tell me a story"),
        "max_tokens": MAX_TOKENS, "stream": true,
    }))
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "x-llm-d-inference-objective",
        HeaderValue::from_str(objective).unwrap(),
    );
    headers.insert(
        "x-llm-d-inference-fairness-id",
        HeaderValue::from_str(tenant).unwrap(),
    );
    let head = RequestHead {
        method: "POST",
        path: "/v1/completions",
        authority: b"gateway",
        scheme: "http",
        headers: &headers,
    };
    let started = Instant::now();
    let decision = client
        .request(&head, &Bytes::from(body.clone()))
        .await
        .unwrap();
    let decided = started.elapsed();
    let (dest, stream) = match decision {
        RequestDecision::Immediate(i) => {
            let reason = i
                .headers
                .get("x-llm-d-request-dropped-reason")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            return Outcome {
                ttft: None,
                decided,
                refused: Some((i.status.as_u16(), reason)),
            };
        }
        RequestDecision::Continue(c) => (
            c.headers
                .get("x-gateway-destination-endpoint")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned(),
            c.stream,
        ),
    };
    let resp = http
        .post(format!("http://{dest}/v1/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut chunks = resp.bytes_stream();
    let mut ttft = None;
    while let Some(c) = chunks.next().await {
        let c = c.unwrap();
        if ttft.is_none() && c.windows(5).any(|w| w == b"data:") {
            ttft = Some(started.elapsed());
        }
    }
    // The response ended: the data plane closes the ext_proc stream.
    drop(stream);
    Outcome {
        ttft,
        decided,
        refused: None,
    }
}

/// Offers `mix` (tenant, objective, share of capacity) for `seconds`; waits for every request.
async fn offer(
    s: &Stack,
    mix: &[(&'static str, &'static str, f64)],
    seconds: f64,
) -> (Results, u64) {
    // ≈ 180 ms a request, PODS × SLOTS at once.
    let capacity = (PODS * SLOTS) as f64 / (0.020 + f64::from(MAX_TOKENS) * 0.010);
    let results: Results = Arc::default();
    let http = reqwest::Client::new();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watching = CancellationToken::new();
    {
        let (peak, stop, sched) = (peak.clone(), watching.clone(), s.epp.scheduler.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Some(fc) = sched.flow_control() {
                    peak.fetch_max(fc.queued(), std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    let mut tasks = Vec::new();
    for (i, &(tenant, objective, share)) in mix.iter().enumerate() {
        let rate = capacity * share;
        let (client, http, results) = (s.client.clone(), http.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1);
            let start = Instant::now();
            let mut at = 0.0;
            let mut seq = 0;
            let mut inflight = Vec::new();
            loop {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                at += -(1.0 - u).ln() / rate;
                if at > seconds {
                    break;
                }
                tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
                seq += 1;
                let (client, http, results) = (client.clone(), http.clone(), results.clone());
                inflight.push(tokio::spawn(async move {
                    let o = one(client, http, tenant, objective, seq).await;
                    results.lock().entry(tenant).or_default().push(o);
                }));
            }
            for t in inflight {
                t.await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    watching.cancel();
    (results, peak.load(std::sync::atomic::Ordering::Relaxed))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn report(
    name: &str,
    results: &Results,
    seconds: f64,
    peak: u64,
) -> BTreeMap<&'static str, (f64, f64)> {
    println!("\n## {name}  (EPP queue peak: {peak} requests)");
    println!(
        "| tenant | sent | served | served/s | refused (status reason: n) | TTFT p50 ms | TTFT p90 ms | EPP answer p90 ms | longest EPP answer ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut out = BTreeMap::new();
    for (tenant, os) in results.lock().iter() {
        let mut ttft: Vec<f64> = os
            .iter()
            .filter_map(|o| o.ttft)
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        let mut refused: BTreeMap<String, usize> = BTreeMap::new();
        for (st, why) in os.iter().filter_map(|o| o.refused.clone()) {
            *refused.entry(format!("{st} {why}")).or_default() += 1;
        }
        let mut waits: Vec<f64> = os
            .iter()
            .filter(|o| o.refused.is_none())
            .map(|o| o.decided.as_secs_f64() * 1e3)
            .collect();
        let wait = waits.iter().copied().fold(0.0, f64::max);
        let wait90 = pct(&mut waits, 0.9);
        let served = ttft.len();
        let p90 = pct(&mut ttft, 0.9);
        println!(
            "| {tenant} | {} | {served} | {:.1} | {:?} | {:.0} | {p90:.0} | {wait90:.0} | {wait:.0} |",
            os.len(),
            served as f64 / seconds,
            refused,
            pct(&mut ttft, 0.5),
        );
        out.insert(*tenant, (served as f64 / seconds, p90));
    }
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = stack(true, None).await;
        let (r, peak) = offer(&s, &[("gold", "high", 0.25)], SECONDS / 2.0).await;
        let unloaded = report("gold alone at 0.25x capacity, flow control on", &r, SECONDS / 2.0, peak);
        let (r, peak) = offer(&s, MIX, SECONDS).await;
        let loaded = report("2x capacity (gold 0.5x at priority 10; silver, bronze 0.75x each at 0), flow control on", &r, SECONDS, peak);
        s.stop.cancel();
        drop(s);
        let s = stack(true, Some(0.5)).await;
        let (r, peak) = offer(&s, MIX, SECONDS).await;
        let held = report("the same 2x mix, flow control with priority holdback (stepwise-spread, minCeiling 0.5)", &r, SECONDS, peak);
        s.stop.cancel();
        drop(s);
        // Gold offers half the pool: a lower band held to a quarter leaves gold a free slot
        // most of the time.
        let s = stack(true, Some(0.25)).await;
        let (r, peak) = offer(&s, MIX, SECONDS).await;
        let held_more = report("the same 2x mix, flow control with priority holdback (stepwise-spread, minCeiling 0.25)", &r, SECONDS, peak);
        s.stop.cancel();
        drop(s);
        let s = stack(false, None).await;
        let (r, peak) = offer(&s, MIX, SECONDS).await;
        let legacy = report("the same 2x mix, flow control off (legacy admission)", &r, SECONDS, peak);
        s.stop.cancel();

        let base = unloaded["gold"].1;
        let (silver, bronze) = (loaded["silver"].0, loaded["bronze"].0);
        let jain = (silver + bronze).powi(2) / (2.0 * (silver * silver + bronze * bronze));
        println!("\n## Against issue 19's targets");
        println!("- gold TTFT p90: unloaded {base:.0} ms, 2x with flow control {:.0} ms ({:.2}x; target <= 1.3x), without {:.0} ms ({:.2}x)",
            loaded["gold"].1, loaded["gold"].1 / base, legacy["gold"].1, legacy["gold"].1 / base);
        println!("- gold TTFT p90 with priority holdback (minCeiling 0.5): {:.0} ms ({:.2}x); low band then {:.1}/s",
            held["gold"].1, held["gold"].1 / base, held["silver"].0 + held["bronze"].0);
        println!("- gold TTFT p90 with priority holdback (minCeiling 0.25): {:.0} ms ({:.2}x); low band then {:.1}/s",
            held_more["gold"].1, held_more["gold"].1 / base, held_more["silver"].0 + held_more["bronze"].0);
        println!("- low band: silver {silver:.1}/s, bronze {bronze:.1}/s: Jain's fairness {jain:.3} (target >= 0.95), ratio {:.3}", silver.min(bronze) / silver.max(bronze));
        println!("- gold served {:.1}/s of {:.1}/s offered", loaded["gold"].0, 0.5 * (PODS * SLOTS) as f64 / (0.020 + f64::from(MAX_TOKENS) * 0.010));
    });
}
