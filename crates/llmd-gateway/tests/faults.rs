//! Faults through real sockets (issue 14): a stream silent for longer than the EPP timeout, an
//! upstream that dies mid-stream (the client must see an error, also the Python `openai`
//! client), the access line written at the end with the true outcome, an absurd
//! Content-Length.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{MODEL, cut_upstream, epp, gateway, metric, silent_upstream};
use futures::StreamExt;
use llmd_epp::config::ROUND_ROBIN_CONFIG;
use llmd_epp::endpoints::Role;
use llmd_telemetry::names::gateway as m;
use serde_json::{Value, json};

fn stream_body() -> Value {
    json!({"model": MODEL, "prompt": "a streamed answer", "max_tokens": 8, "stream": true})
}

/// A gateway (with these extra flags) over a real EPP routing to `pod`.
async fn front(pod: SocketAddr, extra: &[&str]) -> SocketAddr {
    let epp = epp(ROUND_ROBIN_CONFIG, &[(pod, Role::Both)]).await;
    let epp_url = format!("http://{epp}");
    let mut flags = vec!["--epp", epp_url.as_str()];
    flags.extend_from_slice(extra);
    gateway(&flags).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_silent_for_longer_than_the_epp_timeout_completes() {
    common::metrics();
    // The upstream pauses 1.5 s mid-stream; the EPP answers every chunk it is sent within
    // 500 ms, so the stream must complete.
    let pod = silent_upstream(Duration::from_millis(1500)).await;
    for extra in [&[][..], &["--no-response-processing"][..]] {
        let gw = front(pod, &[&["--epp-timeout-ms", "500"][..], extra].concat()).await;
        let r = reqwest::Client::new()
            .post(format!("http://{gw}/v1/completions"))
            .json(&stream_body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{extra:?}");
        let text = r.text().await.unwrap();
        assert!(text.contains("before the pause"), "{extra:?}: {text}");
        assert!(text.contains("after the pause"), "{extra:?}: {text}");
        assert!(
            text.trim_end().ends_with("data: [DONE]"),
            "{extra:?}: {text}"
        );
    }
    // Nothing was taken for an EPP failure, and both requests were counted whole.
    assert_eq!(metric(m::ERRORS_TOTAL.name, &[]), 0.0);
    wait_for(|| {
        metric(
            m::REQUESTS_TOTAL.name,
            &[("code", "200"), ("outcome", "ok")],
        ) == 2.0
    })
    .await;
}

/// Waits up to 10 s for `done` (a response's end is recorded just after its last byte).
async fn wait_for(done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not reached in 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cut_mid_stream_is_an_error_the_client_sees() {
    common::metrics();
    let pod = cut_upstream(3).await;
    // Through the EPP and passed through, to an HTTP/1.1 client (a chunked body without its last
    // chunk) and to an HTTP/2 one (RST_STREAM).
    let cases = [
        (&[][..], false),
        (&["--no-response-processing"][..], false),
        (&[][..], true),
    ];
    for (extra, h2) in cases {
        let gw = front(pod, extra).await;
        let http = if h2 {
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap()
        } else {
            reqwest::Client::new()
        };
        let r = http
            .post(format!("http://{gw}/v1/completions"))
            .json(&stream_body())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "{extra:?} h2 {h2}: the headers were already out"
        );
        // Every event the pod sent reaches the client, then the body fails: never a clean
        // end of a short answer.
        let mut got = String::new();
        let mut stream = r.bytes_stream();
        let mut failed = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => got.push_str(&String::from_utf8_lossy(&b)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        assert!(
            failed.is_some(),
            "{extra:?} h2 {h2}: the cut stream ended cleanly: {got}"
        );
        assert_eq!(got.matches("data: ").count(), 3, "{extra:?} h2 {h2}: {got}");
        assert!(!got.contains("[DONE]"), "{extra:?} h2 {h2}");
    }
    // Counted once each, by reason and as requests cut.
    wait_for(|| {
        metric(
            m::REQUESTS_TOTAL.name,
            &[("code", "200"), ("outcome", "cut")],
        ) == 3.0
    })
    .await;
    assert_eq!(
        metric(m::ERRORS_TOTAL.name, &[("reason", "upstream_cut")]),
        3.0
    );
    assert_eq!(metric(m::ERRORS_TOTAL.name, &[]), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_raises_on_a_cut_stream() {
    let Some(python) = llmd_testkit::peers::python() else {
        return;
    };
    let pod = cut_upstream(3).await;
    let gw = front(pod, &[]).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_cut_stream.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(format!("http://{gw}"))
        .arg(MODEL)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("the openai client: {v}");
    assert!(
        v["raised"].is_string(),
        "the SDK took the cut stream for a complete answer: {v}"
    );
    assert_eq!(v["text"], "token 0 token 1 token 2 ", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_content_length_is_413_without_reading_the_body() {
    common::metrics();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pod = silent_upstream(Duration::ZERO).await;
    let gw = front(pod, &[]).await;
    let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
    s.write_all(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 99999999999\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    // The client keeps the connection open (it claims 100 GB are coming): the answer must
    // not wait for them.
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("no answer while the body was still 'coming'")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(
        metric(m::ERRORS_TOTAL.name, &[("reason", "body_too_large")]),
        1.0
    );
}

/// A TCP relay in front of `to` whose connections can all be dropped at once (a process dying).
async fn killable_relay(to: SocketAddr) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let kill = tokio_util::sync::CancellationToken::new();
    let k = kill.clone();
    tokio::spawn(async move {
        loop {
            let (mut a, _) = tokio::select! {
                () = k.cancelled() => return,
                r = l.accept() => r.unwrap(),
            };
            let k = k.clone();
            tokio::spawn(async move {
                let mut b = tokio::net::TcpStream::connect(to).await.unwrap();
                tokio::select! {
                    () = k.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                }
            });
        }
    });
    (addr, kill)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outlives_an_epp_that_dies_mid_response() {
    common::metrics();
    let pod = silent_upstream(Duration::from_millis(800)).await;
    let epp = epp(ROUND_ROBIN_CONFIG, &[(pod, Role::Both)]).await;
    let (relay, kill) = killable_relay(epp).await;
    let gw = gateway(&["--epp", &format!("http://{relay}")]).await;
    let r = reqwest::Client::new()
        .post(format!("http://{gw}/v1/completions"))
        .json(&stream_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut text = String::new();
    while !text.contains("before the pause") {
        text.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    // The EPP goes away while the upstream is silent: the rest passes through untouched.
    kill.cancel();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(
            &chunk.expect("the stream was cut"),
        ));
    }
    assert!(text.contains("after the pause"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(
        metric(m::ERRORS_TOTAL.name, &[("reason", "epp_response_phase")]),
        1.0
    );
}
