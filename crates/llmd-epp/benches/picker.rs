//! The EPP's hot path: picking endpoints for 8k-token prompts over 64 pods.
//!
//! 1. `scheduler.pick` in-process (criterion), precise-prefix (`DEFAULT_CONFIG`: prefix +
//!    queue + KV-usage scorers) against the round-robin baseline.
//! 2. Picker-added latency over gRPC, as Envoy sees it: end of request body → headers
//!    response, p50/p99 over 2,000 requests, each on its own ext_proc stream; the baseline is
//!    the same path with the round-robin config (so the difference is what scheduling adds).
//! 3. Sustained decisions/s with 10k-character prompts: 16 concurrent streams for 5 s.
//!
//! The index holds 64 documents of ~8k tokens (each cached on 2 of the 64 pods) and 20,000
//! unrelated blocks per pod; the prompt cache is warm (a question follows each document).
//! Needs the Llama-3.1 tokenizer (`bash scripts/fetch-tokenizers.sh`).
//! Run: `cargo bench -p llmd-epp --bench picker`

#![allow(clippy::unwrap_used)] // benchmark setup: a failed unwrap is a broken benchmark

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use llmd_epp::config::{EndpointPickerConfig, ROUND_ROBIN_CONFIG};
use llmd_epp::endpoints::{EndpointsFile, Load, Pool};
use llmd_epp::protocol::{ExtProcConfig, ExtProcService};
use llmd_epp::scheduling::{PickContext, Picker, Scheduler};
use llmd_kv_index::events::Tier;
use llmd_kv_index::hashing::BlockKey;
use llmd_kv_index::index::IndexOps;
use llmd_testkit::corpus::document;
use llmd_wire::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use llmd_wire::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, processing_request,
};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const PODS: usize = 64;

fn body(prompt: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"model": MODEL, "prompt": prompt, "max_tokens": 16}))
        .unwrap()
}

fn pool() -> Arc<Pool> {
    let yaml = format!(
        "endpoints:\n{}",
        (0..PODS)
            .map(|i| format!(
                "  - {{address: 10.0.{}.{}, port: 8000, model: {MODEL}}}\n",
                i / 250,
                i % 250
            ))
            .collect::<String>()
    );
    let pool = Arc::new(Pool::default());
    pool.replace(EndpointsFile::parse(&yaml).unwrap().endpoints);
    for (i, e) in pool.snapshot().iter().enumerate() {
        pool.set_load(
            &e.id,
            Load {
                waiting: (i % 5) as f64,
                running: (i % 9) as f64,
                kv_usage: (i % 10) as f64 / 10.0,
                ..Default::default()
            },
        );
    }
    pool
}

fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

async fn serve(scheduler: Arc<Scheduler>) -> ExternalProcessorClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = ExtProcService::new(
        scheduler,
        ExtProcConfig {
            max_body_bytes: 4 << 20,
            service_name: None,
        },
    );
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(svc))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await
            .unwrap();
    });
    ExternalProcessorClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// One request on its own stream; returns end-of-body → headers-response time.
async fn one(
    client: &mut ExternalProcessorClient<tonic::transport::Channel>,
    body: Vec<u8>,
) -> Duration {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let headers = ProcessingRequest {
        request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: [(":method", "POST"), (":path", "/v1/completions")]
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: (*k).into(),
                        value: String::new(),
                        raw_value: v.as_bytes().to_vec(),
                    })
                    .collect(),
            }),
            end_of_stream: false,
            ..Default::default()
        })),
        ..Default::default()
    };
    tx.send(headers).await.unwrap();
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut responses = client.process(stream).await.unwrap().into_inner();
    let msg = ProcessingRequest {
        request: Some(processing_request::Request::RequestBody(HttpBody {
            body,
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    };
    let started = Instant::now();
    tx.send(msg).await.unwrap();
    let r = responses.message().await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(
        matches!(r.response, Some(llmd_wire::pb::envoy::service::ext_proc::v3::processing_response::Response::RequestHeaders(_))),
        "not routed: {r:?}"
    );
    took
}

fn main() {
    let Some(tok_dir) = llmd_testkit::tokenizer::tokenizer_dir(MODEL) else {
        return;
    };
    let precise_yaml = format!(
        r#"
plugins:
  - type: precise-prefix-cache-scorer
    parameters: {{hashSeed: "0", tokenizer: "{tok_dir}", maxIndexBytes: 1073741824}}
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
    );
    let pool = pool();
    let precise = Arc::new(
        Scheduler::from_config(
            &EndpointPickerConfig::parse(&precise_yaml).unwrap(),
            pool.clone(),
        )
        .unwrap(),
    );
    let baseline = Arc::new(
        Scheduler::from_config(
            &EndpointPickerConfig::parse(ROUND_ROBIN_CONFIG).unwrap(),
            pool.clone(),
        )
        .unwrap(),
    );
    let ids: Vec<String> = pool.snapshot().iter().map(|e| e.id.to_string()).collect();

    // 64 documents of ~8k tokens, each held by pods 2d and 2d+1 (mod 64).
    let service = precise.kv().unwrap().clone();
    let kv = service.index.clone();
    let docs: Vec<String> = (0..64)
        .map(|d| format!("System: be brief.\n{}\n", document(d + 1, 6_000)))
        .collect();
    let span = tracing::Span::none();
    let pick = |s: &Scheduler, b: &[u8]| {
        let req = llmd_epp::request::parse("/v1/completions", b).unwrap();
        s.pick(&PickContext {
            request: Some(&req),
            headers: &[],
            subset: None,
            span: &span,
        })
        .unwrap()
    };
    let mut tokens = 0;
    for (d, doc) in docs.iter().enumerate() {
        let req = llmd_epp::request::parse(
            "/v1/completions",
            &body(&format!("{doc}Question: summarize.")),
        )
        .unwrap();
        let (keys, n) = service.keys(&req).unwrap();
        tokens = n;
        for p in [2 * d % PODS, (2 * d + 1) % PODS] {
            let idx = kv.pods().intern(&ids[p]).unwrap();
            kv.index().store(idx, Tier::Gpu, &keys);
        }
    }
    let mut x = 7u64;
    for id in &ids {
        let idx = kv.pods().intern(id).unwrap();
        let other: Vec<BlockKey> = (0..20_000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                BlockKey(x)
            })
            .collect();
        kv.index().store(idx, Tier::Gpu, &other);
    }
    eprintln!(
        "documents: {} of ~{tokens} tokens, {PODS} pods, {} index entries",
        docs.len(),
        kv.index().snapshot().entries
    );
    // The right pods are chosen.
    let d = pick(&precise, &body(&format!("{}Question: who?", docs[5])));
    assert!(
        d.endpoints[0] == ids[10] || d.endpoints[0] == ids[11],
        "{d:?}"
    );

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("pick_8k_tokens_64_pods");
    let mut q = 0usize;
    g.bench_function("baseline_round_robin", |b| {
        b.iter(|| {
            q += 1;
            black_box(pick(
                &baseline,
                &body(&format!("{}Question #{q}?", docs[q % 64])),
            ))
        })
    });
    g.bench_function("precise_prefix_queue_kv", |b| {
        b.iter(|| {
            q += 1;
            black_box(pick(
                &precise,
                &body(&format!("{}Question #{q}?", docs[q % 64])),
            ))
        })
    });
    g.finish();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut results = Vec::new();
        for (name, s) in [("round-robin", baseline.clone()), ("precise", precise.clone())] {
            let mut client = serve(s).await;
            for i in 0..200 {
                one(&mut client, body(&format!("{}Warm-up #{i}?", docs[i % 64]))).await;
            }
            let mut lat = Vec::new();
            for i in 0..2_000 {
                lat.push(one(&mut client, body(&format!("{}Question #{i} for {name}?", docs[i % 64]))).await);
            }
            let (p50, p99) = (pct(lat.clone(), 0.5), pct(lat, 0.99));
            eprintln!("ext_proc end-of-body -> headers response, 8k tokens, {name}: p50 {p50:.0} us, p99 {p99:.0} us");
            results.push((p50, p99));
        }
        eprintln!(
            "picker-added latency (precise - round-robin): p50 {:.0} us, p99 {:.0} us",
            results[1].0 - results[0].0,
            results[1].1 - results[0].1
        );

        // Sustained decisions/s: 10k-character prompts, 16 streams in flight for 5 s.
        let short: Vec<String> = docs.iter().map(|d| d[..10_000].to_owned()).collect();
        for (name, s) in [("round-robin", baseline.clone()), ("precise", precise.clone())] {
            let client = serve(s).await;
            let deadline = Instant::now() + Duration::from_secs(5);
            let started = Instant::now();
            let tasks: Vec<_> = (0..16)
                .map(|t| {
                    let mut client = client.clone();
                    let short = short.clone();
                    tokio::spawn(async move {
                        let mut n = 0usize;
                        while Instant::now() < deadline {
                            one(&mut client, body(&format!("{}Q{t}-{n}?", short[(t + n) % 64]))).await;
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            eprintln!(
                "sustained decisions/s, 10k-char prompts, 16 streams, {name}: {:.0}/s (client in the same process)",
                total as f64 / started.elapsed().as_secs_f64()
            );
        }
    });
}
