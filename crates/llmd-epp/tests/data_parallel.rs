//! Data-parallel ranks as endpoints of their own: one simulator process with
//! `--data-parallel-size 2` serves rank r on port + r, publishes rank r's KV events on the
//! KV-event port + r (as vLLM offsets them) and shows rank r's series only on rank r's
//! `/metrics`; the EPP, given each rank as an endpoint with its own KV-event stream, indexes
//! the ranks apart and routes a prompt to the rank that holds it.
//!
//! The simulator runs through `llmd_sim::run` (its own Prometheus recorder: this test binary
//! installs no other).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use clap::Parser;
use common::{MODEL, completion, route, serve, text, wait_indexed, warm_up};
use llmd_epp::config::EndpointPickerConfig;
use llmd_epp::endpoints::EndpointsFile;
use llmd_epp::{Listeners, Options};
use tokio_util::sync::CancellationToken;

/// A port `p` such that `p` and `p + 1` are free now.
fn two_free_ports() -> u16 {
    for _ in 0..100 {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two consecutive free ports");
}

async fn get(url: &str) -> Option<String> {
    let r = reqwest::get(url).await.ok()?;
    r.status().is_success().then_some(())?;
    r.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rank_is_an_endpoint_with_its_own_kv_events_queue_and_metrics() {
    let Some(tok) = common::llama_tokenizer() else {
        return;
    };
    let stop = CancellationToken::new();
    let port = two_free_ports();
    let kv = two_free_ports();
    let args = llmd_sim::Args::try_parse_from([
        "llmd-sim",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--model",
        MODEL,
        "--tokenizer",
        &tok,
        "--hash-seed",
        "7",
        "--time-scale",
        "0",
        "--data-parallel-size",
        "2",
        "--kv-events-endpoint",
        &format!("tcp://*:{kv}"),
    ])
    .unwrap();
    let sim = tokio::spawn(llmd_sim::run(args, stop.clone()));
    let ranks = [
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{}", port + 1),
    ];
    for r in &ranks {
        let mut n = 0;
        while get(&format!("http://{r}/health")).await.is_none() {
            n += 1;
            assert!(n < 500, "rank {r} never served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let yaml = format!(
        "endpoints:\n  - {{address: 127.0.0.1, port: {port}, kvEvents: \"tcp://127.0.0.1:{kv}\"}}\n  - {{address: 127.0.0.1, port: {}, kvEvents: \"tcp://127.0.0.1:{}\"}}\n",
        port + 1,
        kv + 1
    );
    let mut options = Options::new(
        EndpointPickerConfig::parse(&common::prefix_config(&tok)).unwrap(),
        EndpointsFile::parse(&yaml).unwrap(),
    );
    options.scrape_interval = Duration::from_millis(100);
    options.pool_name = "dp".into();
    let epp = llmd_epp::start(
        options,
        Listeners::loopback().await.unwrap(),
        None,
        stop.clone(),
    )
    .await
    .unwrap();
    let index = epp.scheduler.kv().unwrap().index.clone();
    warm_up(&index, &ranks).await;
    common::matched(epp.metrics, "warm up").await;
    let mut client = llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::connect(format!("http://{}", epp.grpc))
        .await
        .unwrap();

    // A document served by rank 1 only: the index learns it from rank 1's stream (port + 1),
    // and a follow-up goes there, not to rank 0.
    for (r, holder) in [(1, &ranks[1]), (0, &ranks[0])] {
        let document = text(&format!("rank{r}doc"), 400);
        let first = format!("{document}Question 0?");
        let usage = serve(holder, &completion(&first, 2)).await;
        let blocks = usage["prompt_tokens"].as_u64().unwrap() / 64;
        wait_indexed(epp.metrics, &first, holder, blocks).await;
        let other = &ranks[1 - r];
        assert_eq!(
            common::matched(epp.metrics, &first).await[other.as_str()]
                .as_u64()
                .unwrap_or(0),
            0,
            "rank {r}'s blocks are not on the other rank"
        );
        let routed = route(
            &mut client,
            "/v1/completions",
            &completion(&format!("{document}Question 1?"), 2),
        )
        .await;
        assert_eq!(&routed.primary(), holder, "rank {r}");
    }

    // Each rank's /metrics: its own engine's series, its own request count.
    let before = |text: &str, engine: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("vllm:request_success_total{"))
            .filter(|l| l.contains(&format!("engine=\"{engine}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // The process's registry is rendered at most every 100 ms for the ranks' views: wait out a
    // rendering from before the last request above.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let m1 = get(&format!("http://{}/metrics", ranks[1])).await.unwrap();
    assert!(!m1.contains("engine=\"0\""), "rank 1 shows rank 0's series");
    let served1 = before(&m1, "1");
    serve(&ranks[1], &completion("one more for rank one", 2)).await;
    // The process's registry is rendered at most every 100 ms for the ranks' views.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let m1 = get(&format!("http://{}/metrics", ranks[1])).await.unwrap();
    let m0 = get(&format!("http://{}/metrics", ranks[0])).await.unwrap();
    assert_eq!(before(&m1, "1"), served1 + 1.0);
    assert!(!m0.contains("engine=\"1\""), "rank 0 shows rank 1's series");
    assert!(before(&m0, "0") >= 1.0);
    stop.cancel();
    let _ = sim.await;
}
