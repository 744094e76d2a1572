//! Kubernetes discovery against a fake API server speaking the real REST shapes: the
//! InferencePool's selector and target port give the endpoints, only ready pods count, the
//! `llm-d.ai/role` label drives P/D, changes are followed (by watch), and API failures keep the
//! last set.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;

use common::{Routed, completion, route, wait_until};
use llmd_epp::config::EndpointPickerConfig;
use llmd_epp::discovery::PoolRef;
use llmd_epp::endpoints::{EndpointsFile, Role};
use llmd_epp::testing::PD_CONFIG;
use llmd_epp::{KubeSource, Listeners, Options};
use llmd_k8s::testing::{self as fake, FakeKube, pod, set_ready};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_pool_pods_become_endpoints() {
    // The routable pods are 127.0.0.1-3 (loopback addresses of this machine), one port, where
    // `/metrics` answers: the EPP's scrape finds them healthy whenever it runs relative to
    // discovery.
    let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = first.local_addr().unwrap().port();
    let mut engines = vec![first];
    for ip in ["127.0.0.2", "127.0.0.3"] {
        engines.push(tokio::net::TcpListener::bind((ip, port)).await.unwrap());
    }
    for engine in engines {
        serve_metrics(engine);
    }
    let at = |n: u8| format!("127.0.0.{n}:{port}");
    let api = FakeKube::start(
        fake::pool("vllm", port),
        vec![
            pod("d1", Some("127.0.0.1"), "decode", "vllm", true, false),
            pod("p1", Some("127.0.0.2"), "prefill", "vllm", true, false),
            pod("d2", Some("127.0.0.3"), "decode", "vllm", false, false), // not ready yet
            pod("d3", None, "decode", "vllm", false, false),              // pending, no IP
            pod("d4", Some("127.0.0.5"), "decode", "vllm", true, true),   // terminating
            pod("x1", Some("127.0.0.6"), "decode", "other", true, false), // another app
        ],
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let epp = start_epp(&api, PD_CONFIG, &shutdown).await;
    let pool = epp.scheduler.pool().clone();
    let mut client =
        llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::connect(
            format!("http://{}", epp.grpc),
        )
        .await
        .unwrap();

    wait_until("the ready pods discovered", || pool.snapshot().len() == 2).await;
    let eps = pool.snapshot();
    let by_id: HashMap<&str, _> = eps.iter().map(|e| (&*e.id, &*e.spec)).collect();
    assert_eq!(by_id[at(1).as_str()].role, Role::Decode);
    assert_eq!(by_id[at(2).as_str()].role, Role::Prefill);
    assert_eq!(
        by_id[at(1).as_str()].kv_events.as_deref(),
        Some("tcp://127.0.0.1:5557")
    );
    assert!(api.selectors().iter().all(|s| s == "app=vllm"));
    let r = route(&mut client, "/v1/completions", &completion("hello", 1)).await;
    assert_eq!(r.destination(), at(1));
    assert_eq!(r.prefiller().as_deref(), Some(at(2).as_str()));

    // A pod turns ready: both decode pods get traffic.
    api.edit(|o| set_ready(&mut o.pods[2], true));
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
    api.set_fail(true);
    let refused = api.requests().len();
    wait_until("the EPP refused twice", || {
        api.requests().len() >= refused + 2
    })
    .await;
    assert_eq!(pool.snapshot().len(), 3);
    api.set_fail(false);

    // A pod goes away; then the prefill pod too (P/D falls back to decode-only).
    api.edit(|o| {
        o.pods.remove(0);
    });
    wait_until("d1 removed", || pool.snapshot().len() == 2).await;
    let r = route(&mut client, "/v1/completions", &completion("x", 1)).await;
    assert_eq!(r.destination(), at(3));
    api.edit(|o| o.pods.retain(|p| p["metadata"]["name"] != "p1"));
    wait_until("p1 removed", || pool.snapshot().len() == 1).await;
    assert_eq!(
        route(&mut client, "/v1/completions", &completion("x", 1))
            .await
            .prefiller(),
        None
    );

    // A pool with an empty selector is refused (it would select everything); nothing changes.
    let pool_lists = api.lists(fake::Kind::Pool);
    api.edit(|o| o.pool["spec"]["selector"] = json!({"matchLabels": {}}));
    // Seen by the watch, and listed again at least once (resync) while refused.
    wait_until("the refused spec listed again", || {
        api.lists(fake::Kind::Pool) > pool_lists + 1
    })
    .await;
    assert_eq!(pool.snapshot().len(), 1);
    // Every pod gone: 503.
    api.edit(|o| {
        o.pool["spec"]["selector"] = json!({"matchLabels": {"app": "vllm"}});
        o.pods.clear();
    });
    wait_until("the pool emptied", || pool.snapshot().is_empty()).await;
    match route(&mut client, "/v1/completions", &completion("x", 1)).await {
        Routed::Rejected(503, _) => {}
        other => panic!("expected 503, got {other:?}"),
    }
    shutdown.cancel();
}

/// An EPP following the fake API server's pool `ai/llama` (KV events dialled on 5557, their
/// replay on 5600, resync every 100 ms).
async fn start_epp(api: &FakeKube, config: &str, shutdown: &CancellationToken) -> llmd_epp::Epp {
    llmd_epp::start(
        Options {
            scrape_interval: std::time::Duration::from_secs(5),
            max_body_bytes: 1 << 20,
            pool_name: "llama".into(),
            grace_period: std::time::Duration::from_secs(1),
            kubernetes: Some(KubeSource {
                client: api.client().unwrap(),
                pool: PoolRef {
                    name: "llama".into(),
                    namespace: "ai".into(),
                    group: "inference.networking.k8s.io".into(),
                    kv_events_port: Some(5557),
                    kv_events_replay_port: Some(5600),
                    resync: std::time::Duration::from_millis(100),
                },
            }),
            ..Options::new(
                EndpointPickerConfig::parse(config).unwrap(),
                EndpointsFile {
                    endpoints: Vec::new(),
                },
            )
        },
        Listeners::loopback().await.unwrap(),
        Some(common::metrics()),
        shutdown.clone(),
    )
    .await
    .unwrap()
}

/// `/metrics` answering on this listener.
fn serve_metrics(engine: tokio::net::TcpListener) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { "vllm:num_requests_waiting 0\n" }),
    );
    tokio::spawn(async move { axum::serve(engine, app).await });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_port_is_an_endpoint_with_its_ranks_kv_events() {
    // GIE v1: one pod, two target ports (data-parallel ranks 0 and 1, each an engine with its
    // own queue and its own KV-event publisher at the base port + rank, as vLLM offsets it).
    let ranks = [
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    ];
    let ports: Vec<u16> = ranks
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    for l in ranks {
        serve_metrics(l);
    }
    let api = FakeKube::start(
        fake::pool_ports("vllm", &ports),
        vec![pod("d1", Some("127.0.0.1"), "decode", "vllm", true, false)],
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let epp = start_epp(&api, llmd_epp::config::ROUND_ROBIN_CONFIG, &shutdown).await;
    let pool = epp.scheduler.pool().clone();
    wait_until("both ranks discovered", || pool.snapshot().len() == 2).await;
    let eps = pool.snapshot();
    let kv: HashMap<String, (Option<String>, Option<String>)> = eps
        .iter()
        .map(|e| {
            let s = &e.spec;
            (
                e.id.to_string(),
                (s.kv_events.clone(), s.kv_events_replay.clone()),
            )
        })
        .collect();
    let at = |rank: usize| format!("127.0.0.1:{}", ports[rank]);
    let tcp = |port: u16| Some(format!("tcp://127.0.0.1:{port}"));
    assert_eq!(kv[&at(0)], (tcp(5557), tcp(5600)));
    assert_eq!(kv[&at(1)], (tcp(5558), tcp(5601)));
    let mut client =
        llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::connect(
            format!("http://{}", epp.grpc),
        )
        .await
        .unwrap();
    let mut per_rank: HashMap<String, usize> = HashMap::new();
    for i in 0..8 {
        let r = route(
            &mut client,
            "/v1/completions",
            &completion(&format!("q{i}"), 1),
        )
        .await;
        *per_rank.entry(r.destination().to_owned()).or_default() += 1;
    }
    assert_eq!(per_rank.get(&at(0)), Some(&4), "{per_rank:?}");
    assert_eq!(per_rank.get(&at(1)), Some(&4), "{per_rank:?}");
    shutdown.cancel();
}

/// The pool's InferenceObjectives are followed by watch (llm-d's API group; GIE's, not served by
/// this fake, answers 404 and does not hold the other back): a request naming
/// one gets its priority as soon as the watch sees it, a change or deletion follows, and an
/// objective of another pool is not this pool's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_objectives_are_followed_by_watch() {
    use llmd_epp::scheduling::Picker;
    let engine = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = engine.local_addr().unwrap().port();
    serve_metrics(engine);
    let mut other_pool = fake::objective("elsewhere", Some(50));
    other_pool["spec"]["poolRef"]["name"] = json!("another-pool");
    let api = FakeKube::start(
        fake::pool("vllm", port),
        vec![pod("d1", Some("127.0.0.1"), "decode", "vllm", true, false)],
    )
    .await
    .unwrap();
    api.edit(|o| {
        o.objectives = vec![
            fake::objective("premium", Some(100)),
            fake::objective("batch", Some(-10)),
            fake::objective("plain", None),
            other_pool,
        ];
    });
    let shutdown = CancellationToken::new();
    let epp = start_epp(&api, PD_CONFIG, &shutdown).await;
    let priority = |objective: &str| {
        epp.scheduler
            .classify(
                &[(
                    "x-llm-d-inference-objective".to_owned(),
                    objective.to_owned(),
                )],
                None,
            )
            .priority
    };
    wait_until("the objectives watched", || priority("premium") == 100).await;
    assert_eq!(priority("batch"), -10);
    assert_eq!(priority("plain"), 0);
    assert_eq!(priority("elsewhere"), 0, "another pool's objective");
    // Listed once, then watched (not polled).
    assert_eq!(api.lists(fake::Kind::Objective), 1, "{:?}", api.requests());
    assert!(
        api.requests()
            .iter()
            .any(|r| r.kind == fake::Kind::Objective && r.watch)
    );

    api.edit(|o| {
        o.objectives[1]["spec"]["priority"] = json!(5);
        o.objectives.remove(0);
    });
    wait_until("the change followed", || {
        priority("batch") == 5 && priority("premium") == 0
    })
    .await;
    shutdown.cancel();
}
