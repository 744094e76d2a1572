//! Missing and malformed objects from the API server: each failure is reported in the view with
//! a message naming what is wrong, counted in `llmd_kubernetes_watch_errors_total`, and the last
//! good snapshot keeps serving; fixing the object recovers. One test in this file: it installs
//! the process's metrics recorder.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use llmd_k8s::testing::{self as fake, FakeKube, named, pod};
use llmd_k8s::{PoolRef, PoolView, PoolWatch, watch_pool};
use llmd_telemetry::names::kubernetes;
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn until(w: &PoolWatch, what: &str, cond: impl Fn(&PoolView) -> bool) -> PoolView {
    let mut rx = w.receiver();
    match tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| cond(v))).await {
        Ok(Ok(v)) => v.clone(),
        _ => panic!("timed out waiting for {what}; last view: {:?}", w.view()),
    }
}

fn routable(v: &PoolView) -> Vec<String> {
    v.snapshot
        .iter()
        .flat_map(|s| s.pods.iter())
        .filter(|p| p.routable())
        .map(|p| p.name.clone())
        .collect()
}

/// The counter's value for these labels in the rendered exposition (0 when absent).
fn errors(metrics: &llmd_telemetry::MetricsHandle, resource: &str, reason: &str) -> f64 {
    let text = metrics.render();
    let parsed = llmd_telemetry::exposition::parse(&text).unwrap();
    parsed
        .samples
        .iter()
        .filter(|s| s.name == kubernetes::WATCH_ERRORS.name)
        .filter(|s| s.label("resource") == Some(resource) && s.label("reason") == Some(reason))
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn malformed_and_missing_objects_are_reported_counted_and_survived() {
    let metrics = llmd_telemetry::install_prometheus(&[kubernetes::ALL], &[]).unwrap();
    let api = FakeKube::start(
        fake::pool("vllm", 8000),
        vec![pod("a", Some("10.0.0.1"), "decode", "vllm", true, false)],
    )
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let (w, task) = watch_pool(
        api.client().unwrap(),
        PoolRef::new(fake::NAMESPACE, fake::POOL),
        Duration::from_secs(3600),
        cancel.clone(),
    );
    tokio::spawn(task);
    until(&w, "a", |v| routable(v) == ["a"]).await;
    assert_eq!(errors(&metrics, "inferencepools", "invalid_spec"), 0.0);

    // A pool whose target port is not a port: refused, named, counted; `a` still served.
    api.edit(|o| o.pool["spec"]["targetPorts"] = json!([{"number": "eight thousand"}]));
    let v = until(&w, "the spec refused", |v| v.error.is_some()).await;
    assert!(v.error.as_deref().unwrap().contains("targetPorts"), "{v:?}");
    assert_eq!(routable(&v), ["a"]);
    assert!(errors(&metrics, "inferencepools", "invalid_spec") >= 1.0);
    api.edit(|o| o.pool = fake::pool("vllm", 8000));
    until(&w, "the spec usable again", |v| v.error.is_none()).await;

    // A pod object that is not a Pod (conditions is not a list): the pod watch fails on it,
    // the failure is reported and counted, and the pods known before keep serving.
    api.edit(|o| {
        let mut b = pod("b", Some("10.0.0.2"), "decode", "vllm", true, false);
        b["status"]["conditions"] = json!("Ready");
        o.pods.push(b);
    });
    let v = until(&w, "the malformed pod reported", |v| v.error.is_some()).await;
    assert!(v.error.as_deref().unwrap().contains("pods"), "{v:?}");
    assert_eq!(routable(&v), ["a"]);
    assert!(errors(&metrics, "pods", "api") >= 1.0);

    // Fixed: both pods, no error.
    api.edit(|o| {
        named(&mut o.pods, "b")["status"]["conditions"] =
            json!([{"type": "Ready", "status": "True"}]);
    });
    until(&w, "recovered with b", |v| {
        routable(v) == ["a", "b"] && v.error.is_none()
    })
    .await;

    // The API server refuses everything: reported and counted; the pods keep serving.
    api.set_fail(true);
    let v = until(&w, "the outage reported", |v| v.error.is_some()).await;
    assert_eq!(routable(&v), ["a", "b"]);
    assert!(errors(&metrics, "inferencepools", "api") + errors(&metrics, "pods", "api") >= 2.0);
    cancel.cancel();
}
