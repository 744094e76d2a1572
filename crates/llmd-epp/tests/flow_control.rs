//! Flow control (llm-d's `flowControl` gate) through the real ext_proc interface. The pods
//! answer `/metrics` with an empty queue and are scraped once an hour: what saturates them is
//! the EPP's own in-flight count (`queueDepthThreshold: 1`, one pod: one request at a time),
//! and the only thing that can release a queued request is a stream ending (no scrape, no
//! poll comes in between).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{MODEL, completion, metric, metrics, wait_until};
use http::{HeaderMap, HeaderValue, StatusCode};
use llmd_epp::config::EndpointPickerConfig;
use llmd_epp::endpoints::{EndpointSpec, EndpointsFile};
use llmd_epp::scheduling::Picker;
use llmd_epp::{Epp, Listeners, Options};
use llmd_wire::ext_proc::{Client, Immediate, RequestDecision, RequestHead, Stream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A pod whose `/metrics` reports an idle engine.
async fn idle_pod() -> EndpointSpec {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n"
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await });
    EndpointsFile::parse(&format!(
        "endpoints: [{{address: 127.0.0.1, port: {port}, model: {MODEL}}}]"
    ))
    .unwrap()
    .endpoints
    .remove(0)
}

struct Running {
    epp: Epp,
    client: Client,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Running {
    fn queued(&self) -> u64 {
        self.epp.scheduler.flow_control().map_or(0, |f| f.queued())
    }

    fn inflight(&self) -> usize {
        self.epp.scheduler.pool().inflight().requests()
    }
}

/// An EPP over one idle pod, scraped once (then every hour).
async fn start(config: &str) -> Running {
    let shutdown = CancellationToken::new();
    let mut options = Options::new(
        EndpointPickerConfig::parse(config).unwrap(),
        EndpointsFile {
            endpoints: vec![idle_pod().await],
        },
    );
    options.scrape_interval = Duration::from_secs(3600);
    options.pool_name = "fc-pool".into();
    options.grace_period = Duration::from_secs(1);
    let epp = llmd_epp::start(
        options,
        Listeners::loopback().await.unwrap(),
        Some(metrics()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let pool = epp.scheduler.pool().clone();
    wait_until("the first scrape", || {
        pool.snapshot().iter().all(|e| e.load.is_some())
    })
    .await;
    let client =
        Client::connect_lazy(&format!("http://{}", epp.grpc), Duration::from_secs(30)).unwrap();
    Running {
        epp,
        client,
        shutdown,
    }
}

/// Sends one request: its objective and fairness id as headers.
async fn send(client: &Client, objective: &str, tenant: &str) -> RequestDecision {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "x-llm-d-inference-objective",
        HeaderValue::from_str(objective).unwrap(),
    );
    headers.insert(
        "x-llm-d-inference-fairness-id",
        HeaderValue::from_str(tenant).unwrap(),
    );
    let head = RequestHead {
        method: "POST",
        path: "/v1/completions",
        authority: b"gateway",
        scheme: "http",
        headers: &headers,
    };
    let body = Bytes::from(completion("hello", 4));
    client.request(&head, &body).await.unwrap()
}

fn routed(d: RequestDecision) -> Stream {
    match d {
        RequestDecision::Continue(c) => c.stream,
        RequestDecision::Immediate(i) => panic!("refused: {i:?}"),
    }
}

fn refused(d: RequestDecision) -> Immediate {
    match d {
        RequestDecision::Immediate(i) => i,
        RequestDecision::Continue(_) => panic!("routed"),
    }
}

fn reason(i: &Immediate) -> &str {
    i.headers
        .get("x-llm-d-request-dropped-reason")
        .map_or("", |v| v.to_str().unwrap())
}

/// Sends a request that will queue; returns once it is in the queue.
async fn queue(
    e: &Running,
    objective: &'static str,
    tenant: &'static str,
) -> JoinHandle<RequestDecision> {
    let before = e.queued();
    let client = e.client.clone();
    let h = tokio::spawn(async move { send(&client, objective, tenant).await });
    wait_until("the request to queue", || e.queued() == before + 1).await;
    h
}

/// Sends a request into a full queue where it displaces one: returns once it is in (the
/// queue holds as many as before, one of them this one at priority 0).
async fn displacing(e: &Running, objective: &'static str) -> JoinHandle<RequestDecision> {
    let client = e.client.clone();
    let before = metric(
        "llm_d_epp_flow_control_requests_total",
        &["outcome=\"EvictedDisplaced\""],
    );
    let h = tokio::spawn(async move { send(&client, objective, "t").await });
    wait_until("a displacement", || {
        metric(
            "llm_d_epp_flow_control_requests_total",
            &["outcome=\"EvictedDisplaced\""],
        ) > before
    })
    .await;
    h
}

const OBJECTIVES: &str = "
inferenceObjectives:
  - {name: high, priority: 10}
  - {name: normal, priority: 0}
  - {name: batch, priority: -1}
saturationDetector: {queueDepthThreshold: 1}
plugins:
  - type: round-robin-fairness-policy
  - type: round-robin-picker
schedulingProfiles:
  - name: default
    plugins: [{pluginRef: round-robin-picker}]
";

fn gated(flow_control: &str) -> String {
    format!("featureGates: [flowControl]\nflowControl:\n{flow_control}{OBJECTIVES}")
}

const ROUND_ROBIN_BAND: &str =
    "  priorityBands: [{priority: 0, fairnessPolicyRef: round-robin-fairness-policy}]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_request_queued_last_dispatches_first_on_release() {
    let e = start(&gated(ROUND_ROBIN_BAND)).await;
    let holder = routed(send(&e.client, "normal", "t").await);
    assert_eq!(e.inflight(), 1);
    let low1 = queue(&e, "normal", "t").await;
    let low2 = queue(&e, "batch", "t").await;
    let high = queue(&e, "high", "t").await;
    assert_eq!(e.queued(), 3);
    assert_eq!(
        metric(
            "llm_d_epp_flow_control_queue_size",
            &["inference_pool=\"fc-pool\"", "priority=\"0\""]
        ),
        1.0
    );
    // The pool is scraped hourly: only the release of the holder's stream can wake the
    // dispatcher.
    drop(holder);
    let high = routed(high.await.unwrap());
    assert_eq!(e.queued(), 2, "one released for one freed");
    assert!(!low1.is_finished() && !low2.is_finished());
    drop(high);
    let low1 = routed(low1.await.unwrap());
    assert!(!low2.is_finished(), "priority 0 before -1");
    drop(low1);
    drop(routed(low2.await.unwrap()));
    wait_until("all released", || e.inflight() == 0 && e.queued() == 0).await;
    assert_eq!(
        metric(
            "llm_d_epp_flow_control_requests_total",
            &["outcome=\"Dispatched\"", "priority=\"10\""]
        ),
        1.0
    );
    assert_eq!(metric("llm_d_epp_flow_control_queue_size", &[]), 0.0);
}

/// llm-d's `concurrency-detector` as the flow controller's saturation detector: the pool is
/// full at `maxConcurrency` requests in flight per endpoint (the EPP's own count, no scrape),
/// and the next request waits until one of them ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_detector_queues_past_max_concurrency() {
    let e = start(
        "
featureGates: [flowControl]
flowControl:
  saturationDetector: {pluginRef: cd}
inferenceObjectives: [{name: normal, priority: 0}]
plugins:
  - {type: concurrency-detector, name: cd, parameters: {maxConcurrency: 2}}
  - type: round-robin-picker
schedulingProfiles:
  - name: default
    plugins: [{pluginRef: round-robin-picker}]
",
    )
    .await;
    let first = routed(send(&e.client, "normal", "t").await);
    let second = routed(send(&e.client, "normal", "t").await);
    assert_eq!(e.inflight(), 2);
    let third = queue(&e, "normal", "t").await;
    assert!(!third.is_finished());
    drop(first);
    let third = routed(third.await.unwrap());
    assert_eq!(e.queued(), 0);
    drop((second, third));
    wait_until("all released", || e.inflight() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_of_a_band_take_turns() {
    let e = start(&gated(ROUND_ROBIN_BAND)).await;
    let mut holder = routed(send(&e.client, "normal", "t").await);
    let mut waiting = Vec::new();
    for tenant in ["a", "a", "a", "b", "b", "b"] {
        waiting.push((tenant, queue(&e, "normal", tenant).await));
    }
    let mut order = Vec::new();
    for _ in 0..6 {
        drop(holder);
        // Exactly one request is released per release: find it.
        let mut next = None;
        wait_until("one release", || {
            if let Some(i) = waiting.iter().position(|(_, h)| h.is_finished()) {
                next = Some(waiting.remove(i));
                true
            } else {
                false
            }
        })
        .await;
        let (tenant, h) = next.unwrap();
        order.push(tenant);
        holder = routed(h.await.unwrap());
        assert_eq!(e.queued() as usize, waiting.len());
    }
    assert_eq!(order, ["a", "b", "a", "b", "a", "b"]);
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_ttl_gets_503_ttl_expired() {
    let e = start(&gated("  defaultRequestTTL: 300ms\n")).await;
    let holder = routed(send(&e.client, "normal", "t").await);
    let before = metric(
        "llm_d_epp_flow_control_requests_total",
        &["outcome=\"EvictedTTL\""],
    );
    let i = refused(send(&e.client, "high", "t").await);
    assert_eq!(i.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reason(&i), "rejected-ttl-expired");
    assert!(
        String::from_utf8_lossy(&i.body).contains("ServiceUnavailable"),
        "{i:?}"
    );
    assert_eq!(e.queued(), 0);
    assert_eq!(
        metric(
            "llm_d_epp_flow_control_requests_total",
            &["outcome=\"EvictedTTL\"", "priority=\"10\""]
        ) - before,
        1.0
    );
    assert_eq!(
        metric(
            "inference_extension_flow_control_request_queue_duration_seconds_count",
            &["outcome=\"EvictedTTL\""]
        ),
        1.0
    );
    assert_eq!(
        metric("inference_extension_flow_control_queue_size", &[]),
        0.0
    );
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_leaves_the_queue_at_once() {
    let e = start(&gated("")).await;
    let holder = routed(send(&e.client, "normal", "t").await);
    let gone = queue(&e, "normal", "gone").await;
    let stays = queue(&e, "normal", "stays").await;
    assert_eq!(metric("llm_d_epp_flow_control_queue_size", &[]), 2.0);
    // The data plane drops the stream (its client left).
    gone.abort();
    wait_until("the dropped request to leave", || e.queued() == 1).await;
    assert_eq!(metric("llm_d_epp_flow_control_queue_size", &[]), 1.0);
    assert_eq!(
        metric(
            "llm_d_epp_flow_control_requests_total",
            &[
                "outcome=\"EvictedContextCancelled\"",
                "fairness_id=\"gone\""
            ]
        ),
        1.0
    );
    // Capacity freed goes to the request that stayed, not to the one that left.
    drop(holder);
    let s = routed(stays.await.unwrap());
    assert_eq!(e.inflight(), 1);
    drop(s);
    wait_until("all released", || e.inflight() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_sheds_priority_below_zero_first() {
    let e = start(&gated("  maxRequests: 2\n")).await;
    let holder = routed(send(&e.client, "normal", "t").await);
    let batch1 = queue(&e, "batch", "t").await;
    let batch2 = queue(&e, "batch", "t").await;
    // Full: a priority-0 request displaces the newest sheddable one.
    let normal1 = displacing(&e, "normal").await;
    let i = refused(batch2.await.unwrap());
    assert_eq!(
        (i.status, reason(&i)),
        (StatusCode::TOO_MANY_REQUESTS, "rejected-saturated")
    );
    assert_eq!(e.queued(), 2);
    // Full again: a sheddable newcomer has nothing below it to displace.
    let i = refused(send(&e.client, "batch", "t").await);
    assert_eq!(
        (i.status, reason(&i)),
        (StatusCode::TOO_MANY_REQUESTS, "rejected-saturated")
    );
    let normal2 = displacing(&e, "normal").await;
    let i = refused(batch1.await.unwrap());
    assert_eq!(i.status, StatusCode::TOO_MANY_REQUESTS);
    // Nothing of priority ≥ 0 was shed.
    drop(holder);
    let n1 = routed(normal1.await.unwrap());
    drop(n1);
    drop(routed(normal2.await.unwrap()));
    assert_eq!(
        metric(
            "llm_d_epp_flow_control_requests_total",
            &["outcome=\"Dispatched\"", "priority=\"0\""]
        ),
        3.0
    );
}

/// llm-d's priority-holdback usage-limit policy: with both priorities active, the lower band
/// stops at half the pool (`minCeiling: 0.5`) while the higher one may fill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_holdback_keeps_headroom_for_the_higher_band() {
    let config = format!(
        "featureGates: [flowControl]\nflowControl: {{usageLimitPolicyPluginRef: holdback}}\n{}",
        OBJECTIVES
            .replace("queueDepthThreshold: 1", "queueDepthThreshold: 4")
            .replace(
                "plugins:\n",
                "plugins:\n  - {type: priority-holdback-policy, name: holdback, parameters: {strategy: stepwise-spread, minCeiling: 0.5}}\n",
            )
    );
    let e = start(&config).await;
    // Both priorities become active.
    drop(routed(send(&e.client, "high", "t").await));
    wait_until("released", || e.inflight() == 0).await;
    let l1 = routed(send(&e.client, "normal", "t").await);
    let l2 = routed(send(&e.client, "normal", "t").await);
    // Half the pool (2 of 4) is the lower band's ceiling: the third waits...
    let l3 = queue(&e, "normal", "t").await;
    // ...while the higher band still gets in.
    let h = routed(send(&e.client, "high", "t").await);
    assert_eq!((e.inflight(), e.queued()), (3, 1));
    assert!(!l3.is_finished());
    drop((l1, h));
    let l3 = routed(l3.await.unwrap());
    drop((l2, l3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_gate_nothing_queues_and_sheddable_requests_get_429() {
    let e = start(OBJECTIVES).await;
    assert!(e.epp.scheduler.flow_control().is_none());
    let a = routed(send(&e.client, "normal", "t").await);
    // Saturated (one in flight on the only pod): priority 0 is still routed at once...
    let b = routed(send(&e.client, "normal", "t").await);
    // ...and a sheddable request is refused, as llm-d's legacy admission does.
    let i = refused(send(&e.client, "batch", "t").await);
    assert_eq!(
        (i.status, reason(&i)),
        (StatusCode::TOO_MANY_REQUESTS, "rejected-saturated")
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_get_503_shutting_down_when_the_epp_stops() {
    let e = start(&gated("")).await;
    let holder = routed(send(&e.client, "normal", "t").await);
    let waiting = queue(&e, "normal", "t").await;
    e.shutdown.cancel();
    let i = refused(waiting.await.unwrap());
    assert_eq!(
        (i.status, reason(&i)),
        (StatusCode::SERVICE_UNAVAILABLE, "rejected-shutting-down")
    );
    assert_eq!(e.queued(), 0);
    drop(holder);
}

#[test]
fn misspelt_flow_control_fields_are_startup_errors_naming_them() {
    let e =
        EndpointPickerConfig::parse("featureGates: [flowControl]\nflowControl: {maxRequest: 5}\n")
            .unwrap_err()
            .to_string();
    assert!(e.contains("maxRequest"), "{e}");
    let e = EndpointPickerConfig::parse(
        "featureGates: [flowControl]\nflowControl: {priorityBands: [{priority: 1, maxBytes: lots}]}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("flowControl.priorityBands[0].maxBytes"), "{e}");
    let e = EndpointPickerConfig::parse("featureGates: [flowControll]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("flowControll"), "{e}");
}

/// Every flow-control series the dashboards' "Flow control" row reads is emitted by an EPP with
/// the gate (the demo the live dashboard test scrapes runs without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_row_reads_series_an_epp_with_the_gate_emits() {
    let e = start(&gated("  defaultRequestTTL: 300ms\n")).await;
    let holder = routed(send(&e.client, "normal", "t").await);
    refused(send(&e.client, "normal", "t").await);
    let next = queue(&e, "high", "t").await;
    drop(holder);
    drop(routed(next.await.unwrap()));
    let board: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../dashboards/epp-routing.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in board["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("llm_d_epp_flow_control_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            used.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    assert!(used.len() >= 5, "the row reads {used:?}");
    let exposed = metrics().render();
    for name in &used {
        assert!(
            exposed
                .lines()
                .any(|l| l.starts_with(name.as_str()) && !l.starts_with('#')),
            "{name} is read by the dashboard and not emitted"
        );
    }
}

/// A queued request whose client goes away (the data plane resets its ext_proc stream) leaves
/// the queue at once, is counted `EvictedContextCancelled`, and takes no capacity: the next
/// request is the one released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_whose_client_leaves_leaves_the_queue() {
    let e = start(&gated("")).await;
    let holder = routed(send(&e.client, "normal", "t").await);
    let before = metric(
        "llm_d_epp_flow_control_requests_total",
        &["outcome=\"EvictedContextCancelled\""],
    );
    let leaving = queue(&e, "normal", "t").await;
    leaving.abort(); // drops the client's stream
    wait_until("the request to leave the queue", || e.queued() == 0).await;
    wait_until("the cancellation to be counted", || {
        metric(
            "llm_d_epp_flow_control_requests_total",
            &["outcome=\"EvictedContextCancelled\""],
        ) - before
            == 1.0
    })
    .await;
    assert_eq!(e.inflight(), 1, "the leaver was never counted in flight");
    let next = queue(&e, "normal", "t").await;
    drop(holder);
    let next = routed(next.await.unwrap());
    drop(next);
    wait_until("all released", || e.inflight() == 0).await;
}
