//! Kubernetes discovery against a fake API server speaking the real REST shapes: the
//! InferencePool's selector and target port give the endpoints, only ready pods count, the
//! `llm-d.ai/role` label drives P/D, changes are followed, and API failures keep the last set.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;

use common::{Routed, completion, route, wait_until};
use llmd_epp::config::EndpointPickerConfig;
use llmd_epp::discovery::PoolRef;
use llmd_epp::endpoints::{EndpointsFile, Role};
use llmd_epp::testing::{self as fake, FakeKube, pod};
use llmd_epp::{KubeSource, Listeners, Options};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_pool_pods_become_endpoints() {
    let api = FakeKube::start(
        fake::pool("vllm", 8000),
        vec![
            pod("d1", Some("10.1.0.1"), "decode", "vllm", true, false),
            pod("p1", Some("10.1.0.2"), "prefill", "vllm", true, false),
            pod("d2", Some("10.1.0.3"), "decode", "vllm", false, false), // not ready yet
            pod("d3", None, "decode", "vllm", false, false),             // pending, no IP
            pod("d4", Some("10.1.0.5"), "decode", "vllm", true, true),   // terminating
            pod("x1", Some("10.1.0.6"), "decode", "other", true, false), // another app
        ],
    )
    .await
    .unwrap();
    let state = api.state.clone();
    let client = api.client().unwrap();
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let shutdown = CancellationToken::new();
    let epp = llmd_epp::start(
        Options {
            config: EndpointPickerConfig::parse(fake::PD_CONFIG).unwrap(),
            endpoints_file: None,
            endpoints: EndpointsFile {
                endpoints: Vec::new(),
            },
            kv_events_bind: None,
            scrape_interval: std::time::Duration::from_secs(5),
            max_body_bytes: 1 << 20,
            metric_names: Default::default(),
            metrics_staleness: None,
            objectives: Vec::new(),
            subset_filter: true,
            pool_name: "llama".into(),
            limits: Default::default(),
            grace_period: std::time::Duration::from_secs(1),
            service_name: None,
            kubernetes: Some(KubeSource {
                client,
                pool: PoolRef {
                    name: "llama".into(),
                    namespace: "ai".into(),
                    group: "inference.networking.k8s.io".into(),
                    kv_events_port: Some(5557),
                    resync: std::time::Duration::from_millis(100),
                },
            }),
        },
        Listeners {
            grpc: bind().await,
            health: None,
            metrics: bind().await,
        },
        Some(common::metrics()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let pool = epp.scheduler.pool().clone();
    let mut client =
        envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::connect(
            format!("http://{}", epp.grpc),
        )
        .await
        .unwrap();

    wait_until("the ready pods discovered", || pool.snapshot().len() == 2).await;
    let eps = pool.snapshot();
    let by_id: HashMap<&str, _> = eps.iter().map(|e| (&*e.id, &*e.spec)).collect();
    assert_eq!(by_id["10.1.0.1:8000"].role, Role::Decode);
    assert_eq!(by_id["10.1.0.2:8000"].role, Role::Prefill);
    assert_eq!(
        by_id["10.1.0.1:8000"].kv_events.as_deref(),
        Some("tcp://10.1.0.1:5557")
    );
    assert!(state.lock().selectors.iter().all(|s| s == "app=vllm"));
    let r = route(&mut client, "/v1/completions", &completion("hello", 1)).await;
    assert_eq!(r.destination(), "10.1.0.1:8000");
    assert_eq!(r.prefiller().as_deref(), Some("10.1.0.2:8000"));

    // A pod turns ready: both decode pods get traffic.
    state.lock().pods[2] = pod("d2", Some("10.1.0.3"), "decode", "vllm", true, false);
    wait_until("the second decode pod", || pool.snapshot().len() == 3).await;
    let mut seen = std::collections::HashSet::new();
    for i in 0..40 {
        seen.insert(
            route(
                &mut client,
                "/v1/completions",
                &completion(&format!("q{i}"), 1),
            )
            .await
            .destination()
            .to_owned(),
        );
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // The API server fails: the last good set stays.
    state.lock().fail = true;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(pool.snapshot().len(), 3);
    state.lock().fail = false;

    // A pod goes away; then the prefill pod too (P/D falls back to decode-only).
    state.lock().pods.remove(0);
    wait_until("d1 removed", || pool.snapshot().len() == 2).await;
    let r = route(&mut client, "/v1/completions", &completion("x", 1)).await;
    assert_eq!(r.destination(), "10.1.0.3:8000");
    state.lock().pods.retain(|p| p["metadata"]["name"] != "p1");
    wait_until("p1 removed", || pool.snapshot().len() == 1).await;
    assert_eq!(
        route(&mut client, "/v1/completions", &completion("x", 1))
            .await
            .prefiller(),
        None
    );

    // A pool with an empty selector is refused (it would select everything); nothing changes.
    state.lock().pool["spec"]["selector"] = json!({"matchLabels": {}});
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(pool.snapshot().len(), 1);
    // Every pod gone: 503.
    state.lock().pool["spec"]["selector"] = json!({"matchLabels": {"app": "vllm"}});
    state.lock().pods.clear();
    wait_until("the pool emptied", || pool.snapshot().is_empty()).await;
    match route(&mut client, "/v1/completions", &completion("x", 1)).await {
        Routed::Rejected(503, _) => {}
        other => panic!("expected 503, got {other:?}"),
    }
    shutdown.cancel();
}

#[test]
fn pool_spec_shapes() {
    use llmd_epp::discovery::pool_spec;
    let v1 = json!({"spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 8200}]}});
    let s = pool_spec("p", &v1).unwrap();
    assert_eq!((s.selector["a"].as_str(), s.port), ("b", 8200));
    let alpha = json!({"spec": {"selector": {"a": "b"}, "targetPortNumber": 8000}});
    assert_eq!(pool_spec("p", &alpha).unwrap().port, 8000);
    for bad in [
        json!({}),
        json!({"spec": {"selector": {"matchLabels": {}}, "targetPorts": [{"number": 1}]}}),
        json!({"spec": {"selector": {"matchLabels": {"a": 1}}, "targetPorts": [{"number": 1}]}}),
        json!({"spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 70000}]}}),
        json!({"spec": {"selector": {"matchLabels": {"a": "b"}}}}),
    ] {
        assert!(pool_spec("p", &bad).is_err(), "{bad}");
    }
}
