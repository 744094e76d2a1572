//! The proxy against scripted engines: prefill retries on 502/503/504 only, the prefill
//! timeout, a decode engine that sends malformed SSE or breaks mid-stream, a prefill that
//! answers something that is not JSON, a client that goes away (both the prefill and the decode
//! call are cancelled), and the status each failure gets.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use clap::Parser;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Script {
    /// Prefill answers 503 this many times first.
    prefill_503s: AtomicUsize,
    /// Prefill answers 500 (never retried).
    prefill_500: AtomicBool,
    /// Prefill sleeps this long (ms) before answering.
    prefill_sleep_ms: AtomicUsize,
    prefill_calls: AtomicUsize,
    /// Set when a prefill handler was dropped before finishing (its client went away).
    prefill_cancelled: AtomicBool,
    /// Prefill answers 200 with a body that is not JSON.
    prefill_not_json: AtomicBool,
    /// Decode streams malformed SSE.
    decode_malformed: AtomicBool,
    /// Decode sends two events, then its connection breaks.
    decode_break: AtomicBool,
    /// Decode sends one event, then goes silent for 5 s.
    decode_stall: AtomicBool,
    /// Set when the slow decode stream was dropped before its end.
    decode_cancelled: AtomicBool,
    decode_bodies: parking_lot::Mutex<Vec<Value>>,
}

struct DropFlag(Arc<Script>, bool, fn(&Script) -> &AtomicBool);

impl DropFlag {
    /// Finished normally: no flag on drop.
    fn disarm(&mut self) {
        self.1 = true;
    }
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        if !self.1 {
            (self.2)(&self.0).store(true, Ordering::SeqCst);
        }
    }
}

async fn prefill(
    axum::extract::State(s): axum::extract::State<Arc<Script>>,
    _body: axum::body::Bytes,
) -> Response {
    s.prefill_calls.fetch_add(1, Ordering::SeqCst);
    let mut guard = DropFlag(s.clone(), false, |s| &s.prefill_cancelled);
    let sleep = s.prefill_sleep_ms.load(Ordering::SeqCst);
    if sleep > 0 {
        tokio::time::sleep(Duration::from_millis(sleep as u64)).await;
    }
    guard.disarm();
    if s.prefill_not_json.load(Ordering::SeqCst) {
        return (axum::http::StatusCode::OK, "<html>proxy login</html>").into_response();
    }
    if s.prefill_500.load(Ordering::SeqCst) {
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
    }
    if s.prefill_503s
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
    }
    axum::Json(json!({"choices": [{"text": "x"}], "kv_transfer_params": {"remote_block_ids": [1], "remote_engine_id": "fake"},
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 3}}}))
    .into_response()
}

async fn decode(
    axum::extract::State(s): axum::extract::State<Arc<Script>>,
    body: axum::extract::Json<Value>,
) -> Response {
    s.decode_bodies.lock().push(body.0.clone());
    let sse = |b: Body| {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(b)
            .unwrap()
    };
    if s.decode_malformed.load(Ordering::SeqCst) {
        return sse(Body::from(
            "data: {not json\n\ndata: {\"usage\": {\"prompt_tokens\": \n\n: a comment\n\nevent: odd\ndata: [DONE]\n\n",
        ));
    }
    // 200 events, 20 ms apart: 4 s unless the client goes away.
    let stall = s.decode_stall.load(Ordering::SeqCst);
    let broken = s.decode_break.load(Ordering::SeqCst);
    let guard = DropFlag(s.clone(), false, |s| &s.decode_cancelled);
    let stream = futures::stream::unfold((0, guard), move |(i, mut g)| async move {
        if i == 200 {
            g.disarm();
            return None;
        }
        if broken && i == 2 {
            g.disarm();
            return Some((Err(std::io::Error::other("engine died")), (i + 1, g)));
        }
        let pause = if stall && i == 1 { 5_000 } else { 20 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        Some((
            Ok::<_, std::io::Error>(format!("data: {{\"choices\":[{{\"text\":\"t{i}\"}}]}}\n\n")),
            (i + 1, g),
        ))
    });
    sse(Body::from_stream(stream))
}

async fn engines() -> (Arc<Script>, SocketAddr, SocketAddr) {
    let s = Arc::new(Script::default());
    let serve = |app: axum::Router| async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        a
    };
    let p = serve(
        axum::Router::new()
            .route("/v1/completions", axum::routing::post(prefill))
            .with_state(s.clone()),
    )
    .await;
    let d = serve(
        axum::Router::new()
            .route("/v1/completions", axum::routing::post(decode))
            .with_state(s.clone()),
    )
    .await;
    (s, p, d)
}

async fn proxy(decode: SocketAddr, extra: &[&str]) -> SocketAddr {
    let decoder = format!("http://{decode}");
    let mut flags = vec![
        "llmd-pd-proxy",
        "--decoder",
        &decoder,
        "--allow-prefill",
        "127.0.0.0/8",
    ];
    flags.extend_from_slice(extra);
    if !extra
        .iter()
        .any(|f| f.starts_with("--cert-path") || f.starts_with("--secure-proxy"))
    {
        flags.push("--secure-proxy=false");
    }
    let args = llmd_pd_proxy::Args::parse_from(flags);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    llmd_pd_proxy::start(
        args.config().unwrap(),
        listener,
        None,
        CancellationToken::new(),
    )
    .await
    .unwrap()
    .addr
}

fn request(proxy: SocketAddr, prefill: SocketAddr, stream: bool) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("http://{proxy}/v1/completions"))
        .header("x-prefiller-host-port", prefill.to_string())
        .json(&json!({"model": "m", "prompt": "hello", "max_tokens": 200, "stream": stream}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_retries_only_on_gateway_errors() {
    let (s, p, d) = engines().await;
    let px = proxy(
        d,
        &[
            "--prefill-max-retries",
            "2",
            "--prefill-retry-backoff-ms",
            "10",
        ],
    )
    .await;
    s.prefill_503s.store(2, Ordering::SeqCst);
    let r = request(px, p, true).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.prefill_calls.load(Ordering::SeqCst),
        3,
        "two 503s, then success"
    );
    drop(r);
    // The decode leg got the prefill's parameters verbatim.
    let bodies = s.decode_bodies.lock().clone();
    assert_eq!(
        bodies[0]["kv_transfer_params"],
        json!({"remote_block_ids": [1], "remote_engine_id": "fake"})
    );
    assert_eq!(bodies[0]["max_tokens"], 200);
    // More 503s than retries: the last one reaches the client verbatim.
    s.prefill_calls.store(0, Ordering::SeqCst);
    s.prefill_503s.store(5, Ordering::SeqCst);
    let r = request(px, p, false).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "busy");
    assert_eq!(s.prefill_calls.load(Ordering::SeqCst), 3);
    // A 500 is never retried.
    s.prefill_503s.store(0, Ordering::SeqCst);
    s.prefill_calls.store(0, Ordering::SeqCst);
    s.prefill_500.store(true, Ordering::SeqCst);
    let r = request(px, p, false).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(s.prefill_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_prefill_times_out_with_504() {
    let (s, p, d) = engines().await;
    let px = proxy(d, &["--prefill-timeout-ms", "200"]).await;
    s.prefill_sleep_ms.store(3_000, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let r = request(px, p, false).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "GatewayTimeout");
    assert!(
        s.decode_bodies.lock().is_empty(),
        "no decode after a failed prefill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sse_from_the_engine_is_relayed_not_fatal() {
    let (s, p, d) = engines().await;
    let px = proxy(d, &[]).await;
    s.decode_malformed.store(true, Ordering::SeqCst);
    let r = request(px, p, true).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("data: {not json"), "{text}");
    assert!(text.contains(": a comment"));
    assert!(text.ends_with("data: [DONE]\n\n"));
    // And the proxy keeps serving.
    s.decode_malformed.store(false, Ordering::SeqCst);
    let r = request(px, p, true).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_both_legs() {
    let (s, p, d) = engines().await;
    let px = proxy(d, &[]).await;
    // Mid-stream: read two events, then drop the response.
    let r = request(px, p, true).send().await.unwrap();
    let mut body = r.bytes_stream();
    use futures::StreamExt;
    let mut seen = 0;
    while seen < 2 {
        let chunk = body.next().await.unwrap().unwrap();
        seen += String::from_utf8_lossy(&chunk).matches("data: ").count();
    }
    drop(body);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !s.decode_cancelled.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the decode stream was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // During prefill: the client gives up after 100 ms of a 3 s prefill.
    s.prefill_sleep_ms.store(3_000, Ordering::SeqCst);
    let _ = request(px, p, false)
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !s.prefill_cancelled.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the prefill call was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_decode_stream_is_cut_after_the_idle_timeout() {
    use futures::StreamExt;
    let (s, p, d) = engines().await;
    let px = proxy(d, &["--decode-idle-timeout-ms", "300"]).await;
    s.decode_stall.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let r = request(px, p, true).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let mut failed = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut after the idle timeout, not the stall"
    );
    assert!(text.contains("t0"), "{text}");
    assert!(
        failed || !text.contains("[DONE]"),
        "the client sees an incomplete stream"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !s.decode_cancelled.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the silent decode call was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn metrics() -> llmd_telemetry::MetricsHandle {
    static METRICS: std::sync::OnceLock<llmd_telemetry::MetricsHandle> = std::sync::OnceLock::new();
    METRICS
        .get_or_init(|| {
            llmd_telemetry::install_prometheus(&[llmd_telemetry::names::pd_proxy::ALL], &[])
                .unwrap()
        })
        .clone()
}

fn metric(name: &str, labels: &[&str]) -> f64 {
    metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_gets_its_status_stage_and_outcome() {
    let (s, p, d) = engines().await;
    let _ = metrics();
    let px = proxy(d, &[]).await;
    let count = |outcome: &str| {
        metric(
            "llm_d_inference_scheduler_pd_proxy_requests_total",
            &[&format!("outcome=\"{outcome}\"")],
        )
    };
    // A prefill pod that answers 200 with something that is not JSON failed upstream: 502
    // (it was 400, as if the client were at fault), counted as a prefill error.
    s.prefill_not_json.store(true, Ordering::SeqCst);
    let before = count("prefill_error");
    let r = request(px, p, false).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "error");
    assert_eq!(v["code"], 502);
    assert_eq!(count("prefill_error"), before + 1.0);
    s.prefill_not_json.store(false, Ordering::SeqCst);
    // A target outside the allowlist: 403 in vLLM's error JSON like every other error (it was
    // text/plain), counted as denied.
    let before = count("denied");
    let r = reqwest::Client::new()
        .post(format!("http://{px}/v1/completions"))
        .header("x-prefiller-host-port", "10.1.2.3:8000")
        .json(&json!({"model": "m", "prompt": "hello", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["object"].as_str(), v["code"].as_u64()),
        (Some("error"), Some(403))
    );
    assert_eq!(count("denied"), before + 1.0);
    // A Content-Length no body can have is over any limit: 413, not 400.
    let mut tcp = tokio::net::TcpStream::connect(px).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nx-prefiller-host-port: 127.0.0.1:1\r\ncontent-type: application/json\r\ncontent-length: 99999999999\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 64];
    let n = tcp.read(&mut head).await.unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_body_cut_short_is_the_clients_fault() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_s, p, d) = engines().await;
    let _ = metrics();
    let px = proxy(d, &[]).await;
    let errors = |stage: &str| {
        metric(
            "llm_d_inference_scheduler_pd_proxy_errors_total",
            &[&format!("stage=\"{stage}\"")],
        )
    };
    let (client_before, decode_before) = (errors("client"), errors("decode"));
    // Half a body, then the client stops writing: 400 (it was 502, counted as a decode error).
    let mut tcp = tokio::net::TcpStream::connect(px).await.unwrap();
    tcp.write_all(
        format!(
            "POST /v1/completions HTTP/1.1\r\nhost: x\r\nx-prefiller-host-port: {p}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"prompt\": \"hel"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tcp.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while errors("client") < client_before + 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "not counted as the client's"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(errors("decode"), decode_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_stream_that_breaks_is_an_error_the_client_sees() {
    use futures::StreamExt;
    let (s, p, d) = engines().await;
    let px = proxy(d, &[]).await;
    s.decode_break.store(true, Ordering::SeqCst);
    // Streaming client: the body is aborted, never ended cleanly.
    let r = request(px, p, true).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let mut failed = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "a clean end after a broken stream: {text}");
    assert!(text.contains("t0") && !text.contains("[DONE]"), "{text}");
    // Non-streaming client: nothing was sent yet, so the failure is a proper 502.
    let r = request(px, p, false).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "error");
}
