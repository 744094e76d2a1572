//! The `llm_d_epp_kv_cache_*` metrics move with real traffic: a pod added before its publisher
//! exists connects once it appears (retry with backoff), and messages, gaps, decode errors,
//! restarts, admissions and lookups show on `/metrics` (rendered by the real exporter), and so
//! do rejected topics on the bound socket and replays (requests by reason, duration).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{Recorder, send, wait_until};
use llmd_kv_index::events::{BlockStored, EventBatch, KvEvent, Layout, encode_message};
use llmd_kv_index::hashing::BlockKey;
use llmd_kv_index::index::IndexOps;
use llmd_kv_index::subscriber::{PodEndpoint, Subscriber, SubscriberConfig};
use llmd_kv_index::transport::{SocketOptions, SocketType, ZmqSocket};
use llmd_telemetry::{exposition, names};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_cache_metrics_follow_the_event_stream() {
    let metrics = llmd_telemetry::install_prometheus(&[names::kv_cache::ALL], &[]).unwrap();
    let rec = Recorder::new(2);

    // A free port nobody listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let config = SubscriberConfig {
        connect_timeout: Duration::from_millis(200),
        backoff_min: Duration::from_millis(50),
        ..Default::default()
    };
    let sub = Subscriber::new(rec.clone(), config);
    sub.add_pod(PodEndpoint {
        pod: "pod-m".into(),
        endpoint: Some(endpoint.clone()),
        replay_endpoint: None,
        model: "m".into(),
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut publisher = ZmqSocket::new(SocketType::PUB, &SocketOptions::default()).unwrap();
    publisher.bind(&endpoint).unwrap();

    let topic = "kv@pod-m@m";
    let mut seq = 0;
    while rec.batches_from("pod-m").is_empty() {
        send(
            &mut publisher,
            encode_message(topic, seq, &EventBatch::default(), Layout::Map).to_vec(),
        )
        .await;
        seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(seq < 500, "never connected");
    }
    let stored = EventBatch {
        events: vec![KvEvent::BlockStored(BlockStored {
            block_hashes: vec![BlockKey(1), BlockKey(2)],
            token_ids: vec![1, 2, 3, 4],
            block_size: 2,
            ..Default::default()
        })],
        ..Default::default()
    };
    send(
        &mut publisher,
        encode_message(topic, seq + 2, &stored, Layout::Map).to_vec(),
    )
    .await; // a gap of 2
    send(
        &mut publisher,
        vec![topic.as_bytes().to_vec(), vec![0; 8], b"\xff".to_vec()],
    )
    .await; // garbage
    send(
        &mut publisher,
        encode_message(topic, 0, &EventBatch::default(), Layout::Map).to_vec(),
    )
    .await; // restart
    wait_until("restart seen", || {
        rec.notices()
            .iter()
            .any(|n| matches!(n, common::Notice::Restart { .. }))
    })
    .await;
    // The bound socket: a topic naming no followed pod is rejected and counted.
    let bound = sub.bind("tcp://127.0.0.1:0").await.unwrap();
    let mut stranger = common::connect_pub(&bound);
    while !rec
        .notices()
        .iter()
        .any(|n| matches!(n, common::Notice::Rejected { .. }))
    {
        send(
            &mut stranger,
            encode_message("kv@10.66.0.1@m", 0, &EventBatch::default(), Layout::Map).to_vec(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A pod with a replay socket (empty buffer): asked at once, timed.
    let mut router = ZmqSocket::new(SocketType::ROUTER, &SocketOptions::default()).unwrap();
    let replay = router.bind("tcp://127.0.0.1:0").unwrap();
    tokio::spawn(async move {
        while let Ok(r) = router.recv().await {
            let id = r.frames[0].to_vec();
            router
                .send(&[id, vec![], vec![], vec![0xff; 8], vec![]])
                .await
                .unwrap();
        }
    });
    sub.add_pod(PodEndpoint {
        pod: "pod-r".into(),
        endpoint: None,
        replay_endpoint: Some(replay),
        model: "m".into(),
    });
    wait_until("start replay answered", || {
        rec.notices()
            .iter()
            .any(|n| matches!(n, common::Notice::Replay { pod, .. } if pod == "pod-r"))
    })
    .await;

    rec.kv.index().store(
        rec.kv.pods().intern("pod-m").unwrap(),
        llmd_kv_index::events::Tier::Gpu,
        &[BlockKey(1), BlockKey(2)],
    );
    assert_eq!(
        rec.kv
            .lookup(&[BlockKey(1), BlockKey(2), BlockKey(3)], &["pod-m"]),
        vec![2]
    );
    rec.kv.index().export_metrics();

    let text = metrics.render();
    let m = exposition::parse(&text).unwrap();
    // Our `pod` label and llm-d's `pod_identifier`, same value, on the same series.
    let pod = [("pod", "pod-m"), ("pod_identifier", "pod-m")];
    assert!(
        m.value(names::kv_cache::EVENTS_MESSAGES_RECEIVED.name, &pod)
            .unwrap()
            >= 3.0,
        "{text}"
    );
    assert_eq!(
        m.value(names::kv_cache::EVENTS_SEQUENCE_GAPS.name, &pod),
        Some(1.0)
    );
    assert_eq!(
        m.value(names::kv_cache::EVENTS_PUBLISHER_RESTARTS.name, &pod),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            names::kv_cache::EVENTS_DECODE_ERRORS.name,
            &[("reason", "batch")]
        ),
        Some(1.0)
    );
    assert!(
        m.value(
            names::kv_cache::EVENTS_ZMQ_ERRORS.name,
            &[("operation", "connect")]
        )
        .unwrap()
            >= 1.0,
        "retries counted"
    );
    assert_eq!(
        m.value(names::kv_cache::EVENTS_ACTIVE_SUBSCRIBERS.name, &[]),
        Some(2.0),
        "the dialled socket and the bound one"
    );
    let kv = |def: &names::MetricDef, labels: &[(&str, &str)]| m.value(def.name, labels);
    assert_eq!(
        kv(
            &names::kv_cache::EVENTS_REJECTED,
            &[("reason", "unknown_pod")]
        ),
        Some(1.0)
    );
    for reason in ["ambiguous_pod", "dialled_pod", "peer_address"] {
        assert_eq!(
            kv(&names::kv_cache::EVENTS_REJECTED, &[("reason", reason)]),
            Some(0.0),
            "{reason} registered at zero"
        );
    }
    let start = [("pod", "pod-r"), ("reason", "start")];
    assert_eq!(
        kv(&names::kv_cache::EVENTS_REPLAY_REQUESTS, &start),
        Some(1.0)
    );
    for reason in ["gap", "reconnect", "restart"] {
        assert_eq!(
            kv(
                &names::kv_cache::EVENTS_REPLAY_REQUESTS,
                &[("pod", "pod-r"), ("reason", reason)]
            ),
            Some(0.0)
        );
    }
    assert_eq!(
        kv(
            &names::kv_cache::EVENTS_REPLAYED_BATCHES,
            &[("pod", "pod-r")]
        ),
        Some(0.0)
    );
    assert_eq!(
        m.value(
            &format!("{}_count", names::kv_cache::EVENTS_REPLAY_DURATION.name),
            &[]
        ),
        Some(1.0)
    );
    // Each with llm-d's deprecated `kvcache_index_*` twin.
    for (def, twin, want) in [
        (
            &names::kv_cache::INDEX_ADMISSIONS,
            &names::kv_cache::LEGACY_INDEX_ADMISSIONS,
            4.0,
        ),
        (
            &names::kv_cache::INDEX_LOOKUP_REQUESTS,
            &names::kv_cache::LEGACY_INDEX_LOOKUP_REQUESTS,
            1.0,
        ),
        // llm-d's meaning: the blocks the best pod matched, summed over lookups.
        (
            &names::kv_cache::INDEX_LOOKUP_HITS,
            &names::kv_cache::LEGACY_INDEX_LOOKUP_HITS,
            2.0,
        ),
        (
            &names::kv_cache::INDEX_MAX_POD_HIT_COUNT,
            &names::kv_cache::LEGACY_INDEX_MAX_POD_HIT_COUNT,
            2.0,
        ),
    ] {
        assert_eq!(m.value(def.name, &[]), Some(want), "{}", def.name);
        assert_eq!(m.value(twin.name, &[]), Some(want), "{}", twin.name);
    }
    assert_eq!(m.value(names::kv_cache::INDEX_ENTRIES.name, &[]), Some(2.0));
    assert!(m.value(names::kv_cache::INDEX_BYTES.name, &[]).unwrap() > 0.0);
    sub.shutdown();
}
