//! In-flight accounting and speculative prefix entries through the real ext_proc interface:
//! requests whose streams stay open count on their pod until the response ends or the data
//! plane drops the stream; a burst sharing a new prefix stays on one pod before any KV event
//! could tell the EPP where it is cached.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{MODEL, completion, epp, sim, sim_flags, spec_of, text};
use http::{HeaderMap, HeaderValue, StatusCode};
use llmd_epp::endpoints::{EndpointSpec, EndpointsFile};
use llmd_wire::ext_proc::{Client, RequestDecision, RequestHead, Stream};

/// A pod answering `/metrics` with 404 (no engine metrics: the load scorers have nothing,
/// the pod stays routable).
async fn bare_pod() -> EndpointSpec {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { (axum::http::StatusCode::NOT_FOUND, "no metrics") }),
    );
    tokio::spawn(async move { axum::serve(l, app).await });
    EndpointsFile::parse(&format!(
        "endpoints: [{{address: 127.0.0.1, port: {port}}}]"
    ))
    .unwrap()
    .endpoints
    .remove(0)
}

/// Runs the request phase and keeps the stream open: (destination, the open stream).
async fn open(client: &Client, body: &[u8]) -> (String, Stream) {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let head = RequestHead {
        method: "POST",
        path: "/v1/completions",
        authority: b"gateway",
        scheme: "http",
        headers: &headers,
    };
    match client
        .request(&head, &Bytes::copy_from_slice(body))
        .await
        .unwrap()
    {
        RequestDecision::Continue(c) => {
            let dest = c
                .headers
                .get("x-gateway-destination-endpoint")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            (dest, c.stream)
        }
        RequestDecision::Immediate(i) => panic!("rejected: {i:?}"),
    }
}

/// The response as the data plane relays it: headers, chunks, the end.
async fn respond(mut stream: Stream, sse: bool, chunks: &[&str], end: bool) -> Option<Stream> {
    let mut h = HeaderMap::new();
    h.insert(
        "content-type",
        HeaderValue::from_static(if sse {
            "text/event-stream"
        } else {
            "application/json"
        }),
    );
    stream
        .response_headers(StatusCode::OK, &mut h)
        .await
        .unwrap();
    if chunks.is_empty() && !end {
        return Some(stream);
    }
    let (tx, mut answers) = stream.into_body();
    for (i, c) in chunks.iter().enumerate() {
        let last = end && i + 1 == chunks.len();
        tx.reserve()
            .await
            .unwrap()
            .send(&Bytes::copy_from_slice(c.as_bytes()), last);
        answers.next().await.unwrap();
    }
    if end && chunks.is_empty() {
        tx.reserve().await.unwrap().send(&Bytes::new(), true);
        answers.next().await.unwrap();
    }
    // Kept open by the caller only through the returned value; here the stream ends.
    drop((tx, answers));
    None
}

const ACTIVE: &str = r"
plugins:
  - type: active-request-scorer
    parameters: {requestTimeout: 2m}
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: active-request-scorer}
      - {pluginRef: max-score-picker}
";

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_requests_spread_and_a_finished_or_dropped_one_frees_its_pod() {
    let pods = vec![bare_pod().await, bare_pod().await, bare_pod().await];
    let e = epp(ACTIVE, pods, None, None).await;
    let client =
        Client::connect_lazy(&format!("http://{}", e.epp.grpc), Duration::from_secs(10)).unwrap();
    let inflight = || e.epp.scheduler.pool().inflight();
    let body = completion("hello", 4);

    let (a, sa) = open(&client, &body).await;
    let (b, sb) = open(&client, &body).await;
    let (c, sc) = open(&client, &body).await;
    let mut seen = vec![a.clone(), b.clone(), c.clone()];
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        3,
        "three open requests on three pods: {a} {b} {c}"
    );
    assert_eq!(inflight().requests(), 3);

    // A finishes (a whole non-streamed response): its pod is the only idle one.
    respond(sa, false, &["{\"usage\":{}}"], true).await;
    until("a's end", || inflight().get(&a).requests == 0).await;
    let (d, sd) = open(&client, &body).await;
    assert_eq!(d, a, "the freed pod takes the next request");

    // B's stream is dropped by the data plane (client gone): its pod is freed too.
    drop(sb);
    until("b's drop", || inflight().get(&b).requests == 0).await;
    let (f, sf) = open(&client, &body).await;
    assert_eq!(f, b);
    assert_eq!(inflight().get(&c).requests, 1);
    drop((sc, sd, sf));
    until("all released", || inflight().requests() == 0).await;
}

const TOKENS: &str = r"
plugins:
  - type: token-load-scorer
    parameters: {queueThresholdTokens: 100000}
  - type: inflight-load-producer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: token-load-scorer}
      - {pluginRef: max-score-picker}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_tokens_count_until_the_first_streamed_chunk() {
    let pods = vec![bare_pod().await, bare_pod().await];
    let e = epp(TOKENS, pods, None, None).await;
    let client =
        Client::connect_lazy(&format!("http://{}", e.epp.grpc), Duration::from_secs(10)).unwrap();
    let inflight = || e.epp.scheduler.pool().inflight();
    // Without a prefix scorer the prompt is estimated at 4 bytes a token.
    let big = completion(&"word ".repeat(4_000), 4);
    let (x, sx) = open(&client, &big).await;
    let tokens = inflight().get(&x).tokens;
    assert!(tokens >= 4_000, "20,000 bytes ≈ 5,000 tokens: {tokens}");
    // Small requests go to the other pod while the big prompt is being computed.
    let small = completion("hi", 4);
    let (y, sy) = open(&client, &small).await;
    assert_ne!(y, x);
    // The first streamed chunk: the big prompt is computed, its request still runs.
    let sx = respond(sx, true, &[], false).await.unwrap();
    assert!(
        inflight().get(&x).tokens > 0,
        "headers alone do not release the tokens"
    );
    let (tx, mut answers) = sx.into_body();
    tx.reserve()
        .await
        .unwrap()
        .send(&Bytes::from_static(b"data: {\"choices\":[]}\n\n"), false);
    answers.next().await.unwrap();
    until("tokens released", || inflight().get(&x).tokens == 0).await;
    assert_eq!(inflight().get(&x).requests, 1);
    drop((tx, answers, sy));
    until("all released", || inflight().requests() == 0).await;
}

fn precise(tok: &str, speculative: bool) -> String {
    format!(
        r#"
plugins:
  - type: precise-prefix-cache-scorer
    parameters: {{hashSeed: "7", tokenizer: "{tok}", speculativeIndexing: {speculative}, speculativeTTL: 5s}}
  - type: active-request-scorer
  - type: max-score-picker
schedulingProfiles:
  - name: default
    plugins:
      - {{pluginRef: precise-prefix-cache-scorer, weight: 2}}
      - {{pluginRef: active-request-scorer}}
      - {{pluginRef: max-score-picker}}
"#
    )
}

/// A burst of requests sharing a new prefix, all open at once (none has finished, so no pod
/// has published a KV event for it): with speculative entries they stay on one pod; without,
/// the in-flight count spreads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_sharing_a_new_prefix_stays_on_one_pod() {
    let Some(tok) = common::llama_tokenizer() else {
        return;
    };
    for speculative in [true, false] {
        let mut sims = Vec::new();
        for _ in 0..4 {
            sims.push(sim(&sim_flags(&tok, "tcp://*:0")).await);
        }
        let specs: Vec<_> = sims.iter().map(|(s, _)| spec_of(s, "both")).collect();
        let e = epp(&precise(&tok, speculative), specs, None, None).await;
        // The tokenizer loaded before the burst (the first decision would load it).
        common::matched(e.epp.metrics, "warm up").await;
        let client =
            Client::connect_lazy(&format!("http://{}", e.epp.grpc), Duration::from_secs(10))
                .unwrap();
        let document = text(&format!("burst{speculative}w"), 600);
        let mut dests = Vec::new();
        let mut streams = Vec::new();
        for q in 0..8 {
            let body = completion(&format!("{document}Question {q}?"), 4);
            let (d, s) = open(&client, &body).await;
            dests.push(d);
            streams.push(s);
        }
        let first = dests[0].clone();
        let on_first = dests.iter().filter(|d| **d == first).count();
        if speculative {
            assert_eq!(
                on_first, 8,
                "speculative entries keep the burst together: {dests:?}"
            );
        } else {
            assert!(
                on_first <= 3,
                "without them the in-flight count spreads the burst: {dests:?}"
            );
        }
        assert!(dests.iter().all(|d| !d.is_empty()), "{MODEL}");
        drop(streams);
    }
}
