//! llm-d's sidecar flags with llm-d's meaning, on running proxies: `--secure-proxy` is on by
//! default and serves a self-signed certificate when no `--cert-path` is given (plain HTTP is
//! then refused), `--secure-proxy=false` serves plain HTTP; `--data-parallel-size 2` puts a
//! second proxy on `--port + 1` in front of the engine's `--model-server-port + 1`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const SIM: &[&str] = &[
    "--dummy-tokenizer",
    "--time-scale",
    "0",
    "--mode",
    "echo",
    "--record-requests",
    "8",
];

fn body() -> Value {
    json!({"model": MODEL, "prompt": "which rank am I", "max_tokens": 3})
}

/// Starts a proxy from exactly these flags (no `--secure-proxy` added).
async fn proxy_as_given(flags: &[&str]) -> SocketAddr {
    let args = llmd_pd_proxy::Args::parse_from(
        std::iter::once("llmd-pd-proxy").chain(flags.iter().copied()),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_proxy_is_on_by_default_with_a_self_signed_certificate() {
    let sim = common::sim(SIM, None).await;
    let decoder = format!("http://{sim}");
    let secure = proxy_as_given(&["--decoder", &decoder]).await;

    // HTTPS, with a certificate no CA signed: a client that skips verification is served...
    let tls = llmd_pd_proxy::tls::client_config(None, true).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let req = http::Request::post(format!("https://{secure}/v1/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body().to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(v["choices"][0]["text"].is_string(), "{v}");
    // ... one that verifies against the system roots is not, and neither is plain HTTP.
    let verifying = llmd_pd_proxy::tls::client_config(None, false).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(verifying)
        .https_only()
        .enable_http1()
        .build();
    let strict: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let req = http::Request::get(format!("https://{secure}/health"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(
        strict.request(req).await.is_err(),
        "a self-signed certificate"
    );
    assert!(
        reqwest::Client::new()
            .get(format!("http://{secure}/health"))
            .send()
            .await
            .is_err()
    );

    // --secure-proxy=false: plain HTTP.
    let plain = proxy_as_given(&["--decoder", &decoder, "--secure-proxy=false"]).await;
    let r = reqwest::Client::new()
        .post(format!("http://{plain}/v1/completions"))
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A port `p` with `p` and `p + 1` free, both bound.
async fn two_ports() -> (TcpListener, TcpListener) {
    for _ in 0..100 {
        let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = a.local_addr().unwrap().port();
        if p == u16::MAX {
            continue;
        }
        if let Ok(b) = TcpListener::bind(("127.0.0.1", p + 1)).await {
            return (a, b);
        }
    }
    panic!("no two consecutive free ports");
}

async fn recorded(sim: SocketAddr) -> usize {
    let v: Value = reqwest::get(format!("http://{sim}/debug/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_parallel_ranks_listen_on_port_plus_rank() {
    // Two engine ranks on consecutive ports, as vLLM's data-parallel ranks listen.
    let (e0, e1) = two_ports().await;
    let mut engines = Vec::new();
    for l in [e0, e1] {
        let builder = llmd_testkit::sim::SimBuilder::new().flags(SIM.iter().copied());
        engines.push(llmd_testkit::sim::start_on(builder, l).await.detach());
    }
    let (p0, p1) = two_ports().await;
    let port = p0.local_addr().unwrap().port();
    drop((p0, p1)); // the proxy binds them
    let port_s = port.to_string();
    let engine_s = engines[0].port().to_string();
    let args = llmd_pd_proxy::Args::parse_from([
        "llmd-pd-proxy",
        "--host",
        "127.0.0.1",
        "--port",
        &port_s,
        "--model-server-port",
        &engine_s,
        "--data-parallel-size",
        "2",
        "--secure-proxy=false",
        "--metrics-port",
        "0",
    ]);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(llmd_pd_proxy::run(args, shutdown.clone()));

    let client = reqwest::Client::new();
    let post = |port: u16| {
        let client = client.clone();
        async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                match client
                    .post(format!("http://127.0.0.1:{port}/v1/completions"))
                    .json(&body())
                    .send()
                    .await
                {
                    Ok(r) => return r.status(),
                    Err(e) => {
                        assert!(tokio::time::Instant::now() < deadline, "{e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
    };
    // Rank 1's proxy (port + 1) reaches rank 1's engine only.
    assert_eq!(post(port + 1).await, 200);
    assert_eq!(
        (recorded(engines[0]).await, recorded(engines[1]).await),
        (0, 1)
    );
    // Rank 0's proxy (port) reaches rank 0's engine.
    assert_eq!(post(port).await, 200);
    assert_eq!(
        (recorded(engines[0]).await, recorded(engines[1]).await),
        (1, 1)
    );
    shutdown.cancel();
    run.await.unwrap().unwrap();
}
