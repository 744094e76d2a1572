//! Streamed responses while cold long prompts are being scored: the delay the EPP adds to each
//! streamed token, with and without scheduling on the blocking pool.
//!
//! With `FULL_DUPLEX_STREAMED` response bodies (GIE's default) Envoy sends every response body
//! chunk to the EPP and passes it on to the client only when the EPP answers. A runtime worker
//! busy tokenising an 8k-token prompt therefore delays every other request's tokens.
//!
//! Setup: an in-process EPP (`llmd_epp::start`, the default precise profile: precise
//! prefix-cache scorer with the real Llama-3.1 tokenizer, queue and KV-usage scorers) over four
//! endpoints that run no engine (the picker needs none; their scrapes fail), its gRPC server on
//! a tokio runtime with **2 worker threads** (a 2-core pod). A twin `ExtProcService` over the
//! same scheduler, on the same runtime, runs the picker inline on the stream's async task
//! (`pick_inline_for_bench`: the EPP before picks moved to the blocking pool). The data plane
//! ("Envoy") is `llmd_wire::ext_proc::Client` on its own 2-thread runtime: the real ext_proc
//! wire, one HTTP/2 connection for the streams and one for the cold prompts.
//!
//! - **Streams**: 8 responses, each routed (a short completion request), then response
//!   headers, then one ~200-byte SSE chunk every 10 ms for 5 s. Per chunk: the time from
//!   sending it to the EPP's answer (the delay the EPP adds to that token) and the gap between
//!   consecutive answers as the data plane sees them (the client's inter-token gap; 10 ms when
//!   nothing interferes).
//! - **Cold prompts**: 4 loops, each sending unique ~8.6k-token completion prompts (a unique
//!   first line, so the prompt cache and the prefix index miss and the tokenizer runs over the
//!   whole text) as fast as they are answered.
//!
//! Conditions, one run: (a) streams alone (the baseline), (b) streams + cold prompts, picks on
//! the blocking pool (the EPP as it is), (c) streams + cold prompts, picks inline on the
//! runtime (before). Printed: added delay p50/p99/max, inter-answer gap p99 and max, cold
//! decisions/s, and (b), (c) as ratios to (a). About 20 s.
//! Needs the Llama-3.1 tokenizer (`bash scripts/fetch-tokenizers.sh`).
//! Run: `cargo bench -p llmd-epp --bench stream_gaps`

#![allow(clippy::unwrap_used)] // benchmark setup: a failed unwrap is a broken benchmark

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use llmd_epp::config::EndpointPickerConfig;
use llmd_epp::endpoints::EndpointsFile;
use llmd_epp::protocol::{ExtProcConfig, ExtProcService};
use llmd_epp::{Listeners, Options};
use llmd_testkit::corpus::document;
use llmd_wire::ext_proc::{BodyAnswer, Client, RequestDecision, RequestHead};
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use tokio_util::sync::CancellationToken;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const STREAMS: usize = 8;
const COLD_LOOPS: usize = 4;
const CADENCE: Duration = Duration::from_millis(10);
const STREAM_FOR: Duration = Duration::from_secs(5);
/// Words of a cold prompt's document (~8.6k Llama-3.1 tokens).
const COLD_WORDS: usize = 6_000;

/// One condition's measurements.
struct Measured {
    /// Per chunk: send → the EPP's answer.
    delays: Vec<Duration>,
    /// Between consecutive answers of one stream.
    gaps: Vec<Duration>,
    /// Cold decisions per second (0 without cold prompts).
    cold_per_s: f64,
    /// Cold decisions: end of request → decision, median.
    cold_p50: Duration,
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

fn body(prompt: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(
            &serde_json::json!({"model": MODEL, "prompt": prompt, "max_tokens": 256, "stream": true}),
        )
        .unwrap(),
    )
}

fn head(headers: &HeaderMap) -> RequestHead<'_> {
    RequestHead {
        method: "POST",
        path: "/v1/completions",
        authority: b"gateway",
        scheme: "http",
        headers,
    }
}

/// A realistic SSE chunk of a streamed completion: one token.
fn sse_chunk(n: usize) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"cmpl-7f3a9c\",\"object\":\"text_completion\",\"created\":1764655200,\"model\":\"{MODEL}\",\"choices\":[{{\"index\":0,\"text\":\" token{n}\",\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
    ))
}

/// One streamed response: routed, then a chunk every [`CADENCE`] until `STREAM_FOR` is over.
/// Returns (delays, gaps).
async fn stream(client: Client, id: usize) -> (Vec<Duration>, Vec<Duration>) {
    let headers = HeaderMap::new();
    let RequestDecision::Continue(c) = client
        .request(
            &head(&headers),
            &body(&format!("Stream {id}: tell me a story.")),
        )
        .await
        .unwrap()
    else {
        panic!("stream {id} not routed")
    };
    let mut stream = c.stream;
    let mut response_headers = HeaderMap::new();
    response_headers.insert("content-type", "text/event-stream".parse().unwrap());
    assert!(
        stream
            .response_headers(StatusCode::OK, &mut response_headers)
            .await
            .unwrap()
            .is_none()
    );
    let (sender, mut answers) = stream.into_body();
    let chunks = (STREAM_FOR.as_millis() / CADENCE.as_millis()) as usize;
    let sent_at = Arc::new(parking_lot::Mutex::new(Vec::with_capacity(chunks)));
    let sent = sent_at.clone();
    // Spread the streams' chunks over the cadence, as unrelated streams are.
    tokio::time::sleep(CADENCE * id as u32 / STREAMS as u32).await;
    let sending = tokio::spawn(async move {
        let mut tick = tokio::time::interval(CADENCE);
        for n in 0..chunks {
            tick.tick().await;
            let permit = sender.reserve().await.unwrap();
            let chunk = sse_chunk(n);
            sent.lock().push(Instant::now());
            permit.send(&chunk, false);
        }
        // The end of the body; kept until its answer came so the stream stays open.
        sender.reserve().await.unwrap().send(&Bytes::new(), true);
        sender
    });
    let mut answered = Vec::with_capacity(chunks);
    while answered.len() <= chunks {
        match answers.next().await.unwrap() {
            Some(BodyAnswer::Streamed { .. }) => answered.push(Instant::now()),
            other => panic!("stream {id}: unexpected answer {other:?}"),
        }
    }
    let _sender = sending.await.unwrap();
    let sent = sent_at.lock();
    let delays = sent
        .iter()
        .zip(&answered)
        .map(|(s, a)| a.duration_since(*s))
        .collect();
    let gaps = answered[..chunks]
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .collect();
    (delays, gaps)
}

/// Cold prompts until `stop`: each decision's time (end of request → decision).
async fn cold(
    client: Client,
    loop_id: usize,
    tag: char,
    docs: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let headers = HeaderMap::new();
    let mut took = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        // A unique first line: nothing of the prompt is in the prompt cache or the index.
        let b = body(&format!(
            "Request {tag}-{loop_id}-{n}.\n{}\nQuestion: summarize.",
            docs[(loop_id + n) % docs.len()]
        ));
        let started = Instant::now();
        match client.request(&head(&headers), &b).await.unwrap() {
            RequestDecision::Continue(_) => took.push(started.elapsed()),
            RequestDecision::Immediate(i) => panic!("cold prompt refused: {i:?}"),
        }
        n += 1;
    }
    took
}

async fn condition(
    addr: SocketAddr,
    cold_loops: usize,
    tag: char,
    docs: &Arc<Vec<String>>,
) -> Measured {
    let uri = format!("http://{addr}");
    let streams_client = Client::connect_lazy(&uri, Duration::from_secs(30)).unwrap();
    let cold_client = Client::connect_lazy(&uri, Duration::from_secs(30)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let colds: Vec<_> = (0..cold_loops)
        .map(|l| {
            tokio::spawn(cold(
                cold_client.clone(),
                l,
                tag,
                docs.clone(),
                stop.clone(),
            ))
        })
        .collect();
    // The cold loops are running before the streams start, and until they end.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let streams: Vec<_> = (0..STREAMS)
        .map(|i| tokio::spawn(stream(streams_client.clone(), i)))
        .collect();
    let (mut delays, mut gaps) = (Vec::new(), Vec::new());
    for s in streams {
        let (d, g) = s.await.unwrap();
        delays.extend(d);
        gaps.extend(g);
    }
    stop.store(true, Ordering::Relaxed);
    let mut took = Vec::new();
    for c in colds {
        took.extend(c.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    took.sort();
    Measured {
        delays,
        gaps,
        cold_per_s: took.len() as f64 / elapsed,
        cold_p50: took.get(took.len() / 2).copied().unwrap_or_default(),
    }
}

/// (delay p50, p99, max, gap p99, gap max) in ms.
fn summary(name: &str, m: &mut Measured) -> [f64; 5] {
    let s = [
        pct(&mut m.delays, 0.5),
        pct(&mut m.delays, 0.99),
        pct(&mut m.delays, 1.0),
        pct(&mut m.gaps, 0.99),
        pct(&mut m.gaps, 1.0),
    ];
    let cold = if m.cold_per_s > 0.0 {
        format!(
            "; cold prompts {:.0} decisions/s, decision p50 {:.1} ms",
            m.cold_per_s,
            m.cold_p50.as_secs_f64() * 1e3
        )
    } else {
        String::new()
    };
    eprintln!(
        "{name}: {} chunks, added delay p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; inter-answer gap p99 {:.2} ms, max {:.1} ms (cadence {} ms){cold}",
        m.delays.len(),
        s[0],
        s[1],
        s[2],
        s[3],
        s[4],
        CADENCE.as_millis()
    );
    s
}

fn main() {
    let Some(tok) = llmd_testkit::tokenizer::tokenizer_dir(MODEL) else {
        eprintln!("SKIPPED: run scripts/fetch-tokenizers.sh first");
        return;
    };
    // llmd_epp::config::DEFAULT_CONFIG, with the tokenizer found in this clone.
    let config = format!(
        r#"
plugins:
  - type: precise-prefix-cache-scorer
    parameters: {{tokenizer: "{tok}"}}
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
    // Four endpoints with no engine behind them: nothing listens on these ports.
    let mut specs = String::from("endpoints:\n");
    for _ in 0..4 {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        specs.push_str(&format!(
            "  - {{address: 127.0.0.1, port: {}, model: {MODEL}}}\n",
            free.local_addr().unwrap().port()
        ));
    }
    let docs: Arc<Vec<String>> = Arc::new(
        (0..16)
            .map(|d| format!("System: be brief.\n{}", document(d + 1, COLD_WORDS)))
            .collect(),
    );

    // The EPP: 2 runtime workers, as in a 2-core pod (its blocking pool is tokio's own).
    let epp_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("epp")
        .enable_all()
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let (epp, inline) = epp_rt.block_on(async {
        let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let epp = llmd_epp::start(
            Options {
                scrape_interval: Duration::from_secs(1),
                max_body_bytes: 4 << 20,
                pool_name: "bench".into(),
                grace_period: Duration::from_secs(1),
                ..Options::new(
                    EndpointPickerConfig::parse(&config).unwrap(),
                    EndpointsFile::parse(&specs).unwrap(),
                )
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
        // The twin server, picks inline; served the way `start` serves its own.
        let listener = bind().await;
        let inline = listener.local_addr().unwrap();
        let svc = ExtProcService::new(
            epp.scheduler.clone(),
            ExtProcConfig {
                max_body_bytes: 4 << 20,
                service_name: None,
            },
        )
        .pick_inline_for_bench();
        let stop = stop.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(ExternalProcessorServer::new(svc))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stop.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        (epp, inline)
    });

    // The data plane, on its own threads.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("envoy")
        .enable_all()
        .build()
        .unwrap();
    let grpc = epp.grpc;
    client_rt.block_on(async {
        // Warm-up: the tokenizer loaded, both servers answering, a few cold prompts each.
        for addr in [grpc, inline] {
            let client = Client::connect_lazy(&format!("http://{addr}"), Duration::from_secs(60)).unwrap();
            for n in 0..4 {
                let b = body(&format!("Warm-up {addr} {n}.\n{}", docs[n]));
                let RequestDecision::Continue(c) = client.request(&head(&HeaderMap::new()), &b).await.unwrap() else {
                    panic!("warm-up not routed")
                };
                assert!(!c.set_headers.is_empty());
            }
        }
        eprintln!(
            "{STREAMS} streams, a ~{}-byte chunk every {} ms for {} s; {COLD_LOOPS} loops of unique ~8.6k-token prompts; EPP runtime: 2 workers",
            sse_chunk(0).len(),
            CADENCE.as_millis(),
            STREAM_FOR.as_secs()
        );
        let a = summary("(a) streams alone             ", &mut condition(grpc, 0, 'a', &docs).await);
        let b = summary("(b) + cold, picks blocking pool", &mut condition(grpc, COLD_LOOPS, 'b', &docs).await);
        let c = summary("(c) + cold, picks inline       ", &mut condition(inline, COLD_LOOPS, 'c', &docs).await);
        for (name, x) in [("(b) blocking pool", b), ("(c) inline       ", c)] {
            eprintln!(
                "{name} vs (a): added delay p50 {:.1}x, p99 {:.1}x, max {:.1}x; inter-answer gap p99 {:.2}x, max {:.2}x",
                x[0] / a[0],
                x[1] / a[1],
                x[2] / a[2],
                x[3] / a[3],
                x[4] / a[4]
            );
        }
    });
    stop.cancel();
    drop(epp);
}
