//! What only llmd-gateway does (the behaviour it shares with Envoy is in `parity.rs`): the
//! client's trace continued to the pod, 503 or fail-open when the EPP is unreachable.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{MODEL, epp, gateway, recorded, sim};
use llmd_epp::config::ROUND_ROBIN_CONFIG;
use llmd_epp::endpoints::Role;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_trace_continues_to_the_pod() {
    let a = sim(&[]).await;
    let epp = epp(ROUND_ROBIN_CONFIG, &[(a, Role::Both)]).await;
    let gw = gateway(&["--epp", &format!("http://{epp}")]).await;
    let r = reqwest::Client::new()
        .post(format!("http://{gw}/v1/completions"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({"model": MODEL, "prompt": "trace me", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = recorded(a).await;
    let tp = seen[0]["traceparent"][0].as_str().unwrap();
    assert!(tp.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{tp}");
    assert_eq!(seen[0]["body"]["prompt"], "trace me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_epp_is_503_or_fail_open() {
    let a = sim(&[]).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 2});
    let closed = gateway(&[
        "--epp",
        &format!("http://{dead}"),
        "--epp-timeout-ms",
        "500",
    ])
    .await;
    let r = reqwest::Client::new()
        .post(format!("http://{closed}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("endpoint picker"),
        "{v}"
    );
    let open = gateway(&[
        "--epp",
        &format!("http://{dead}"),
        "--epp-timeout-ms",
        "500",
        "--fail-open",
        "--default-endpoint",
        &a.to_string(),
    ])
    .await;
    let r = reqwest::Client::new()
        .post(format!("http://{open}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(recorded(a).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_413_before_the_epp_is_asked() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // The EPP address is dead: a 413 proves the body limit is checked first.
    let gw = gateway(&[
        "--epp",
        &format!("http://{dead}"),
        "--max-body-bytes",
        "1024",
    ])
    .await;
    let r = reqwest::Client::new()
        .post(format!("http://{gw}/v1/completions"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 413);
}
