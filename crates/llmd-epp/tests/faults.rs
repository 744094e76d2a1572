//! The EPP under the faults of an operator's bad day, through its real interfaces: SIGTERM
//! (the shutdown token the binary cancels on it) with streams in flight, and a pod that dies
//! while it holds the hottest prefix.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{
    MODEL, completion, epp, prefix_config, route, serve, sim, sim_flags, spec_of, text, warm_up,
};
use llmd_epp::config::EndpointPickerConfig;
use llmd_epp::endpoints::EndpointsFile;
use llmd_epp::{Listeners, Options};
use llmd_wire::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use llmd_wire::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, processing_request,
    processing_response,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn headers(pairs: &[(&str, &str)]) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: pairs
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: (*k).into(),
                        value: String::new(),
                        raw_value: v.as_bytes().to_vec(),
                    })
                    .collect(),
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn request_body(bytes: &[u8]) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(processing_request::Request::RequestBody(HttpBody {
            body: bytes.to_vec(),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn response_body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(processing_request::Request::ResponseBody(HttpBody {
            body: bytes.to_vec(),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn next(rx: &mut tonic::Streaming<ProcessingResponse>) -> ProcessingResponse {
    tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

/// SIGTERM with a stream in flight: gRPC health turns NOT_SERVING at once, the stream's
/// response chunks are still answered until it ends, and the EPP then stops well before its
/// grace period (it does not wait out the grace when nothing is in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_streams_in_flight() {
    let (pod, _pod_stop) = sim(&["--model", MODEL, "--dummy-tokenizer", "--time-scale", "0"]).await;
    let config = "plugins:\n  - type: random-picker\nschedulingProfiles:\n  - name: default\n    plugins: [{pluginRef: random-picker}]\n";
    let shutdown = CancellationToken::new();
    let grace = Duration::from_secs(30);
    let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let epp = llmd_epp::start(
        Options {
            grace_period: grace,
            scrape_interval: Duration::from_millis(100),
            ..Options::new(
                EndpointPickerConfig::parse(config).unwrap(),
                EndpointsFile {
                    endpoints: vec![spec_of(&pod, "both")],
                },
            )
        },
        Listeners {
            grpc: listener().await,
            health: None,
            metrics: listener().await,
        },
        Some(common::metrics()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", epp.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let serving = |s: i32| s == ServingStatus::Serving as i32;
    // A watch opened before the signal sees the change, as the data plane's health checker
    // does. It first sees the EPP become ready (the pool scraped once).
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    while !serving(
        tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .status,
    ) {}

    // One request routed; its response is streaming when the signal comes.
    let mut client = ExternalProcessorClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let outbound =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut inbound = client.process(outbound).await.unwrap().into_inner();
    tx.send(headers(&[
        (":method", "POST"),
        (":path", "/v1/completions"),
        ("content-type", "application/json"),
    ]))
    .await
    .unwrap();
    tx.send(request_body(&completion("drain me", 8)))
        .await
        .unwrap();
    let routed = next(&mut inbound).await;
    assert!(matches!(
        routed.response,
        Some(processing_response::Response::RequestHeaders(_))
    ));
    next(&mut inbound).await; // the body, passed on
    tx.send(ProcessingRequest {
        request: Some(processing_request::Request::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![HeaderValue {
                    key: ":status".into(),
                    value: "200".into(),
                    raw_value: vec![],
                }],
            }),
            ..Default::default()
        })),
        ..Default::default()
    })
    .await
    .unwrap();
    next(&mut inbound).await;

    let signalled = Instant::now();
    shutdown.cancel();
    let status = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status.status, ServingStatus::NotServing as i32);
    drop(watch);

    // The stream in flight goes on: every chunk is still answered, to the end.
    for (chunk, eos) in [
        (&b"data: {\"choices\":[{\"text\":\"a\"}]}\n\n"[..], false),
        (&b"data: [DONE]\n\n"[..], false),
        (&b""[..], true),
    ] {
        tx.send(response_body(chunk, eos)).await.unwrap();
        match next(&mut inbound).await.response {
            Some(processing_response::Response::ResponseBody(_)) => {}
            other => panic!("after SIGTERM, a response chunk got {other:?}"),
        }
    }
    drop(tx);
    // Nothing left in flight: the EPP ends cleanly, long before the grace period is out.
    tokio::time::timeout(grace - Duration::from_secs(5), epp.wait())
        .await
        .expect("the EPP waited out its grace period with nothing in flight")
        .unwrap();
    eprintln!(
        "stopped {:.0} ms after the signal (grace {} s)",
        signalled.elapsed().as_secs_f64() * 1e3,
        grace.as_secs()
    );
}

/// The pod holding a prefix dies: its blocks are still in the index (no event says they are
/// gone), but requests for that prefix go to a live pod within seconds, because the failed
/// metrics scrape (connection refused) takes the dead pod out of routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_pods_prefix_is_routed_elsewhere() {
    let Some(tok) = common::llama_tokenizer() else {
        return;
    };
    let mut sims = Vec::new();
    for _ in 0..2 {
        sims.push(sim(&sim_flags(&tok, "tcp://*:0")).await);
    }
    let specs: Vec<_> = sims.iter().map(|(s, _)| spec_of(s, "both")).collect();
    let pods: Vec<String> = specs.iter().map(|s| s.host_port()).collect();
    let mut e = epp(&prefix_config(&tok), specs, None, None).await;
    let kv = e.epp.scheduler.kv().unwrap().index.clone();
    warm_up(&kv, &pods).await;
    common::matched(e.epp.metrics, "warm up").await;

    let document = text("hotdoc", 350);
    let first = format!("{document}Question 0: what is this about?");
    let holder = route(&mut e.client, "/v1/completions", &completion(&first, 4))
        .await
        .primary();
    let usage = serve(&holder, &completion(&first, 4)).await;
    let blocks = usage["prompt_tokens"].as_u64().unwrap() / 64;
    common::wait_indexed(e.epp.metrics, &first, &holder, blocks).await;
    let follow_up = format!("{document}Question 1: and what else?");
    assert_eq!(
        route(&mut e.client, "/v1/completions", &completion(&follow_up, 4))
            .await
            .primary(),
        holder,
        "before: the holder wins"
    );

    // Kill the holder (its listeners close).
    let i = pods.iter().position(|p| *p == holder).unwrap();
    sims[i].1.cancel();
    let killed = Instant::now();
    let survivor = pods.iter().find(|p| **p != holder).unwrap().clone();
    let mut to_dead = 0;
    loop {
        let routed = route(&mut e.client, "/v1/completions", &completion(&follow_up, 4)).await;
        if routed.primary() == survivor {
            break;
        }
        to_dead += 1;
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "still routed to the dead pod after {to_dead} requests"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = killed.elapsed();
    // And it stays away while the pod is dead.
    for _ in 0..5 {
        let routed = route(&mut e.client, "/v1/completions", &completion(&follow_up, 4)).await;
        assert_eq!(routed.primary(), survivor);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "dead holder left routing {:.0} ms after it died ({to_dead} requests routed to it meanwhile)",
        after.as_secs_f64() * 1e3
    );
    assert!(
        common::metric("llmd_epp_metrics_scrape_failures_total", &["connect"]) >= 1.0,
        "the failed scrape is counted"
    );
}

/// Readiness: liveness answers SERVING at once, readiness (and the ext_proc service) only after
/// the first round of metrics scrapes, here held up by a pod whose `/metrics` never answers
/// (the round ends with the scrape's timeout); both turn NOT_SERVING on shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_after_the_pool_is_scraped() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let config = "plugins:\n  - type: random-picker\nschedulingProfiles:\n  - name: default\n    plugins: [{pluginRef: random-picker}]\n";
    let endpoints = EndpointsFile::parse(&format!(
        "endpoints: [{{address: 127.0.0.1, port: {silent_port}, model: {MODEL}}}]"
    ))
    .unwrap();
    let shutdown = CancellationToken::new();
    let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let health_listener = listener().await;
    let health_addr = health_listener.local_addr().unwrap();
    let epp = llmd_epp::start(
        Options {
            scrape_interval: Duration::from_secs(1),
            ..Options::new(EndpointPickerConfig::parse(config).unwrap(), endpoints)
        },
        Listeners {
            grpc: listener().await,
            health: Some(health_listener),
            metrics: listener().await,
        },
        Some(common::metrics()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{health_addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let checker = health.clone();
    let status = |service: &str| {
        let mut health = checker.clone();
        let service = service.to_owned();
        async move {
            health
                .check(HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    let started = Instant::now();
    assert_eq!(status("liveness").await, ServingStatus::Serving as i32);
    let early = status("readiness").await;
    let mut became_ready = None;
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
    {
        if m.status == ServingStatus::Serving as i32 {
            became_ready = Some(started.elapsed());
            break;
        }
    }
    assert_eq!(
        early,
        ServingStatus::NotServing as i32,
        "readiness before the first scrape round ended"
    );
    let took = became_ready.expect("never ready");
    assert_eq!(
        status("envoy.service.ext_proc.v3.ExternalProcessor").await,
        ServingStatus::Serving as i32
    );
    eprintln!(
        "ready {:.0} ms after start (the silent pod's scrape times out)",
        took.as_secs_f64() * 1e3
    );
    shutdown.cancel();
    let m = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.status, ServingStatus::NotServing as i32);
    drop(watch);
    hold.abort();
    let _ = epp.wait().await;
}

/// A pod answering `/metrics` with this status and body.
async fn metrics_pod(status: u16, body: &'static str) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let code = axum::http::StatusCode::from_u16(status).unwrap();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move { (code, body) }),
    );
    tokio::spawn(async move { axum::serve(l, app).await });
    port
}

/// What a failed scrape does to routing: a pod that answers HTTP without metrics at the path
/// (404) stays routable, as a busy one (timeout) does; one that fails (500) is left out until a
/// scrape succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_metrics_stays_routable_a_failing_one_does_not() {
    let ok = metrics_pod(200, "vllm:num_requests_waiting 0\n").await;
    let no_metrics = metrics_pod(404, "not found").await;
    let failing = metrics_pod(500, "boom").await;
    let endpoints = EndpointsFile::parse(&format!(
        "endpoints: [{{address: 127.0.0.1, port: {ok}, model: {MODEL}}}, \
         {{address: 127.0.0.1, port: {no_metrics}, model: {MODEL}}}, \
         {{address: 127.0.0.1, port: {failing}, model: {MODEL}}}]"
    ))
    .unwrap();
    let shutdown = CancellationToken::new();
    let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let epp = llmd_epp::start(
        Options {
            scrape_interval: Duration::from_secs(30),
            ..Options::new(
                EndpointPickerConfig::parse(llmd_epp::config::ROUND_ROBIN_CONFIG).unwrap(),
                endpoints,
            )
        },
        Listeners {
            grpc: listener().await,
            health: None,
            metrics: listener().await,
        },
        Some(common::metrics()),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let pool = epp.scheduler.pool().clone();
    let at = |port: u16| format!("127.0.0.1:{port}");
    // The first scrape round has run once the 200 pod has a load.
    common::wait_until("the first scrape round", || {
        pool.snapshot()
            .iter()
            .any(|e| *e.id == *at(ok) && e.fresh_load(Duration::from_secs(60)).is_some())
    })
    .await;
    let mut client = ExternalProcessorClient::connect(format!("http://{}", epp.grpc))
        .await
        .unwrap();
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for i in 0..12 {
        let r = common::route(
            &mut client,
            "/v1/completions",
            &common::completion(&format!("q{i}"), 1),
        )
        .await;
        *seen.entry(r.destination().to_owned()).or_default() += 1;
    }
    assert_eq!(seen.get(&at(ok)), Some(&6), "{seen:?}");
    assert_eq!(seen.get(&at(no_metrics)), Some(&6), "{seen:?}");
    assert_eq!(seen.get(&at(failing)), None, "{seen:?}");
    shutdown.cancel();
}
