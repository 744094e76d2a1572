//! The prefill allowlist fed by the InferencePool's pods, listed through `kube::Client` from a
//! fake API server speaking the real REST shapes: a pod of the pool may be called, others get
//! 403, the set follows the pods, and an API outage keeps the last set.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use clap::Parser;
use llmd_epp::testing::{self as fake, FakeKube, pod};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SIM: &[&str] = &["--dummy-tokenizer", "--time-scale", "0", "--mode", "echo"];

async fn status(proxy: std::net::SocketAddr, prefill: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{proxy}/v1/completions"))
        .header("x-prefiller-host-port", prefill)
        .json(&json!({"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "allowed or not", "max_tokens": 3}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn until(proxy: std::net::SocketAddr, prefill: &str, what: &str, ok: impl Fn(u16) -> bool) {
    for _ in 0..100 {
        if ok(status(proxy, prefill).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{prefill} never {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_pods_are_the_allowed_prefill_targets() {
    let prefill = common::sim(&[SIM, &["--role", "prefill"]].concat(), None).await;
    let decode = common::sim(&[SIM, &["--role", "decode"]].concat(), None).await;
    // The prefill sim listens on 127.0.0.1: a pod of the pool has that IP. 127.0.0.2 (also
    // this machine) belongs to another app's pod; 127.0.0.3 to a pod being deleted.
    let api = FakeKube::start(
        fake::pool("vllm", 8000),
        vec![
            pod(
                "prefill-0",
                Some("127.0.0.1"),
                "prefill",
                "vllm",
                true,
                false,
            ),
            pod(
                "other-0",
                Some("127.0.0.2"),
                "prefill",
                "other",
                true,
                false,
            ),
            pod(
                "prefill-1",
                Some("127.0.0.3"),
                "prefill",
                "vllm",
                true,
                true,
            ),
        ],
    )
    .await
    .unwrap();
    let args = llmd_pd_proxy::Args::parse_from([
        "llmd-pd-proxy",
        "--decoder",
        &format!("http://{decode}"),
        "--secure-proxy=false",
    ]);
    let mut config = args.config().unwrap();
    config.pool = Some(llmd_pd_proxy::pool::PoolSource {
        client: api.client().unwrap(),
        namespace: fake::NAMESPACE.into(),
        name: fake::POOL.into(),
        group: "inference.networking.k8s.io".into(),
        resync: Duration::from_millis(100),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = llmd_pd_proxy::start(config, listener, None, CancellationToken::new())
        .await
        .unwrap()
        .addr;
    let port = prefill.port();

    // The first listing happened before the proxy served: no warm-up needed.
    assert_eq!(status(proxy, &format!("127.0.0.1:{port}")).await, 200);
    assert_eq!(status(proxy, &format!("127.0.0.2:{port}")).await, 403);
    assert_eq!(status(proxy, &format!("127.0.0.3:{port}")).await, 403);
    assert!(api.state.lock().selectors.iter().all(|s| s == "app=vllm"));

    // The API server fails: the last set stays.
    api.state.lock().fail = true;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(status(proxy, &format!("127.0.0.1:{port}")).await, 200);
    api.state.lock().fail = false;

    // The other app's pod joins the pool (its label changes): allowed, so it is called (no
    // engine listens there: 502/503, not 403); the prefill pod goes: denied.
    api.state.lock().pods[1]["metadata"]["labels"]["app"] = json!("vllm");
    until(
        proxy,
        &format!("127.0.0.2:{port}"),
        "got past the allowlist",
        |s| s != 403,
    )
    .await;
    api.state.lock().pods.remove(0);
    until(proxy, &format!("127.0.0.1:{port}"), "got 403", |s| s == 403).await;
}

#[test]
fn a_bad_pool_reference_is_a_startup_error() {
    for bad in ["", "ns/", "/name", "Upper", "a/b/c", "x y"] {
        let err = llmd_pd_proxy::Args::parse_from(["p", "--inference-pool", bad])
            .config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("--inference-pool"), "{bad}: {err}");
    }
    assert!(
        llmd_pd_proxy::Args::parse_from(["p", "--inference-pool", "ai/llama"])
            .config()
            .is_ok()
    );
}
