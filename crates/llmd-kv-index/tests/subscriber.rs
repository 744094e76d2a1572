//! The subscriber against real ZMQ sockets on 127.0.0.1: a vLLM-style publisher (encoded with
//! vLLM's exact bytes) dialled by the subscriber, several publishers connecting to a bound
//! subscriber, gaps, publisher restarts, garbage, and replay over a ROUTER endpoint.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{Notice, Recorder, bind_pub, connect_pub, wait_until};
use llmd_kv_index::events::{BlockStored, EventBatch, KvEvent, Layout, encode_message};
use llmd_kv_index::hashing::{BlockKey, RequestExtras};
use llmd_kv_index::subscriber::{PodEndpoint, RejectReason, Subscriber, SubscriberConfig};
use llmd_kv_index::transport::{SocketOptions, SocketType, ZmqSocket};

const BS: usize = 16;

fn message(frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    frames
}

fn dialled(pod: &str, endpoint: &str, replay: Option<String>) -> PodEndpoint {
    PodEndpoint {
        pod: pod.into(),
        endpoint: Some(endpoint.into()),
        replay_endpoint: replay,
        model: "fallback".into(),
    }
}

fn bound(pod: &str, replay: Option<String>) -> PodEndpoint {
    PodEndpoint {
        pod: pod.into(),
        endpoint: None,
        replay_endpoint: replay,
        model: "m".into(),
    }
}

fn stored(keys: &[BlockKey], parent: Option<BlockKey>, tokens: &[u32]) -> EventBatch {
    EventBatch {
        ts: 1.0,
        events: vec![KvEvent::BlockStored(BlockStored {
            block_hashes: keys.to_vec(),
            parent_block_hash: parent,
            token_ids: tokens.to_vec(),
            block_size: BS as u32,
            medium: Some("GPU".into()),
            group_idx: Some(0),
            ..Default::default()
        })],
        data_parallel_rank: Some(0),
        ..Default::default()
    }
}

fn empty() -> EventBatch {
    EventBatch {
        ts: 1.0,
        data_parallel_rank: Some(0),
        ..Default::default()
    }
}

/// Publishes empty batches with increasing seq until the subscriber sees one (PUB drops
/// messages until the subscription reaches it); returns the next seq.
async fn warm_up(socket: &mut ZmqSocket, topic: &str, rec: &Recorder, pod: &str) -> u64 {
    let mut seq = 0;
    loop {
        socket
            .send(&message(
                encode_message(topic, seq, &empty(), Layout::Map).to_vec(),
            ))
            .await
            .unwrap();
        seq += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if !rec.batches_from(pod).is_empty() {
            return seq;
        }
        assert!(seq < 500, "subscriber never received");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialled_pod_gaps_restarts_and_garbage() {
    let rec = Recorder::new(BS);
    let (mut publisher, endpoint) = bind_pub();
    let sub = Subscriber::new(rec.clone(), SubscriberConfig::default());
    sub.add_pod(dialled("10.0.0.1:8000", &endpoint, None));
    let topic = "kv@10.0.0.1:8000@meta-llama/Llama-3.1-8B-Instruct";
    let mut seq = warm_up(&mut publisher, topic, &rec, "10.0.0.1:8000").await;

    // A prompt of 3 blocks stored in two steps, with the real vLLM keys.
    let tokens: Vec<u32> = (1000..1000 + 3 * BS as u32).collect();
    let keys = rec.kv.request_keys("m", &tokens, &RequestExtras::default());
    for (batch, layout) in [
        (stored(&keys[..2], None, &tokens[..2 * BS]), Layout::Map),
        (
            stored(&keys[2..], Some(keys[1]), &tokens[2 * BS..]),
            Layout::Array,
        ),
    ] {
        publisher
            .send(&message(
                encode_message(topic, seq, &batch, layout).to_vec(),
            ))
            .await
            .unwrap();
        seq += 1;
    }
    wait_until("3 blocks indexed", || {
        rec.kv.lookup(&keys, &["10.0.0.1:8000"]) == vec![3]
    })
    .await;

    // Garbage: 2 frames, a short seq, a broken payload; then a valid message still works.
    publisher
        .send(&message(vec![b"kv@x@y".to_vec(), vec![0; 8]]))
        .await
        .unwrap();
    publisher
        .send(&message(vec![
            topic.as_bytes().to_vec(),
            vec![1, 2],
            b"\x93".to_vec(),
        ]))
        .await
        .unwrap();
    publisher
        .send(&message(vec![
            topic.as_bytes().to_vec(),
            seq.to_be_bytes().to_vec(),
            b"\xc1\xc1".to_vec(),
        ]))
        .await
        .unwrap();
    let after_garbage = seq;
    publisher
        .send(&message(
            encode_message(topic, after_garbage, &empty(), Layout::Map).to_vec(),
        ))
        .await
        .unwrap();
    wait_until("message after garbage", || {
        rec.batches_from("10.0.0.1:8000").contains(&after_garbage)
    })
    .await;
    let reasons: Vec<&str> = rec
        .notices()
        .into_iter()
        .filter_map(|n| match n {
            Notice::DecodeError { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, vec!["frame_count", "seq", "batch"]);

    // A gap of 3 batches.
    let gapped = after_garbage + 4;
    publisher
        .send(&message(
            encode_message(topic, gapped, &empty(), Layout::Map).to_vec(),
        ))
        .await
        .unwrap();
    wait_until("gap", || {
        rec.notices()
            .iter()
            .any(|n| matches!(n, Notice::Gap { .. }))
    })
    .await;
    assert!(rec.notices().contains(&Notice::Gap {
        pod: "10.0.0.1:8000".into(),
        expected: after_garbage + 1,
        got: gapped
    }));

    // The publisher restarts (seq back to 0): the pod's entries are dropped.
    publisher
        .send(&message(
            encode_message(
                topic,
                0,
                &stored(&keys[..1], None, &tokens[..BS]),
                Layout::Map,
            )
            .to_vec(),
        ))
        .await
        .unwrap();
    wait_until("restart", || {
        rec.notices()
            .iter()
            .any(|n| matches!(n, Notice::Restart { .. }))
    })
    .await;
    wait_until("only block 0 after restart", || {
        rec.kv.lookup(&keys, &["10.0.0.1:8000"]) == vec![1]
    })
    .await;
    assert!(rec.notices().iter().any(
        |n| matches!(n, Notice::Batch { model, .. } if model == "meta-llama/Llama-3.1-8B-Instruct")
    ));

    // Removing the pod stops its subscription.
    assert!(sub.remove_pod("10.0.0.1:8000"));
    assert!(sub.dialled_pods().is_empty());
    sub.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_connect_to_a_bound_subscriber_and_are_told_apart_by_topic() {
    let rec = Recorder::new(BS);
    let sub = Subscriber::new(rec.clone(), SubscriberConfig::default());
    let bound = sub.bind("tcp://127.0.0.1:0").await.unwrap();
    assert!(bound.starts_with("tcp://127.0.0.1:"), "{bound}");
    let tokens: Vec<u32> = (0..4 * BS as u32).collect();
    let keys = rec.kv.request_keys("m", &tokens, &RequestExtras::default());

    let mut publishers = Vec::new();
    for pod in ["pod-a", "pod-b", "pod-c"] {
        sub.add_pod(self::bound(pod, None));
    }
    for (i, pod) in ["pod-a", "pod-b", "pod-c"].iter().enumerate() {
        let mut p = connect_pub(&bound);
        let topic = format!("kv@{pod}@m");
        let rec = rec.clone();
        let keys = keys.clone();
        let tokens = tokens.clone();
        let pod = pod.to_string();
        publishers.push(tokio::spawn(async move {
            let mut seq = warm_up(&mut p, &topic, &rec, &pod).await;
            // pod-a holds 4 blocks, pod-b 2, pod-c 1, each sent one block per batch.
            for b in 0..(4 >> i) {
                let parent = (b > 0).then(|| keys[b - 1]);
                let batch = stored(&keys[b..=b], parent, &tokens[b * BS..(b + 1) * BS]);
                p.send(&message(
                    encode_message(&topic, seq, &batch, Layout::Map).to_vec(),
                ))
                .await
                .unwrap();
                seq += 1;
            }
            p
        }));
    }
    let mut sockets: Vec<ZmqSocket> = futures_join(publishers).await;
    wait_until("all three pods indexed", || {
        rec.kv.lookup(&keys, &["pod-a", "pod-b", "pod-c", "pod-d"]) == vec![4, 2, 1, 0]
    })
    .await;
    assert!(
        !rec.notices()
            .iter()
            .any(|n| matches!(n, Notice::Gap { .. } | Notice::Restart { .. }))
    );
    // A topic that names no pod is reported, not applied (the filter lets "kv@..." through).
    sockets[0]
        .send(&message(
            encode_message(
                "kv@nobody",
                0,
                &stored(&keys[..1], None, &tokens[..BS]),
                Layout::Map,
            )
            .to_vec(),
        ))
        .await
        .unwrap();
    wait_until("topic error", || {
        rec.notices().contains(&Notice::DecodeError {
            pod: "?".into(),
            reason: "topic",
        })
    })
    .await;
    assert_eq!(rec.kv.pods().len(), 3);
    sub.shutdown();
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// A vLLM-style replay service: a ROUTER that answers `[id, "", start]` with every buffered
/// batch `>= start` as `[id, "", topic, seq, payload]`, then the end marker.
async fn replay_service(mut router: ZmqSocket, buffer: Vec<(u64, Vec<Vec<u8>>)>) {
    while let Ok(request) = router.recv().await {
        let frames = request.frames;
        if frames.len() != 3 {
            continue;
        }
        let id = frames[0].clone();
        let start = u64::from_be_bytes(<[u8; 8]>::try_from(frames[2].as_ref()).unwrap());
        for (seq, message_frames) in buffer.iter().filter(|(s, _)| *s >= start) {
            let mut reply = vec![id.to_vec(), vec![]];
            reply.push(message_frames[0].clone());
            reply.push(seq.to_be_bytes().to_vec());
            reply.push(message_frames[2].clone());
            router.send(&message(reply)).await.unwrap();
        }
        router
            .send(&message(vec![
                id.to_vec(),
                vec![],
                vec![],
                vec![0xff; 8],
                vec![],
            ]))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_filled_from_the_replay_endpoint() {
    let rec = Recorder::new(BS);
    let (mut publisher, endpoint) = bind_pub();
    let (router, replay_endpoint) = bind_router();
    let topic = "kv@pod-r@m";

    let sub = Subscriber::new(rec.clone(), SubscriberConfig::default());
    sub.add_pod(dialled("pod-r", &endpoint, Some(replay_endpoint)));
    let mut seq = warm_up(&mut publisher, topic, &rec, "pod-r").await;

    // Five blocks, one per batch; batches 2 and 3 are "lost" (only in the replay buffer).
    let tokens: Vec<u32> = (0..5 * BS as u32).map(|t| t * 7).collect();
    let keys = rec.kv.request_keys("m", &tokens, &RequestExtras::default());
    let mut buffer = Vec::new();
    for b in 0..5 {
        let parent = (b > 0).then(|| keys[b - 1]);
        let frames = encode_message(
            topic,
            seq + b as u64,
            &stored(&keys[b..=b], parent, &tokens[b * BS..(b + 1) * BS]),
            Layout::Map,
        );
        buffer.push((seq + b as u64, frames.to_vec()));
    }
    tokio::spawn(replay_service(router, buffer.clone()));
    for (i, (_, frames)) in buffer.iter().enumerate() {
        if i == 2 || i == 3 {
            continue;
        }
        publisher.send(&message(frames.clone())).await.unwrap();
    }
    seq += 5;
    wait_until("all five blocks, two of them replayed", || {
        rec.kv.lookup(&keys, &["pod-r"]) == vec![5]
    })
    .await;
    let notices = rec.notices();
    assert!(
        notices.contains(&Notice::Replay {
            pod: "pod-r".into(),
            from: seq - 3,
            to: seq - 1,
            recovered: 2
        }),
        "{notices:?}"
    );
    // Replayed batches were delivered in order, before the batch that revealed the gap.
    let seqs = rec.batches_from("pod-r");
    assert_eq!(
        &seqs[seqs.len() - 5..],
        &[seq - 5, seq - 4, seq - 3, seq - 2, seq - 1]
    );
    sub.shutdown();
}

fn bind_router() -> (ZmqSocket, String) {
    let mut router = ZmqSocket::new(SocketType::ROUTER, &SocketOptions::default()).unwrap();
    let ep = router.bind("tcp://127.0.0.1:0").unwrap();
    (router, ep)
}

fn one_block(keys: &[BlockKey], tokens: &[u32], b: usize) -> EventBatch {
    let parent = (b > 0).then(|| keys[b - 1]);
    stored(&keys[b..=b], parent, &tokens[b * BS..(b + 1) * BS])
}

/// Finding 2: on the bound socket only known pods' topics are applied. An unknown pod, another
/// port of a known IP, a bare IP two pods share, and a pod whose events are dialled are all
/// rejected and counted; nobody can plant blocks under those names or wipe the dialled pod.
/// llm-d's `kv@<ip>@<model>` reaches the one pod with that IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_socket_applies_only_known_pods_topics() {
    let rec = Recorder::new(BS);
    let sub = Subscriber::new(rec.clone(), SubscriberConfig::default());
    let bound_ep = sub.bind("tcp://127.0.0.1:0").await.unwrap();
    // A dialled pod, with its own publisher.
    let (mut dialled_pub, dialled_ep) = bind_pub();
    sub.add_pod(dialled("10.1.0.3:8000", &dialled_ep, None));
    for pod in [
        "10.1.0.1:8000",
        "10.1.0.2:8000",
        "10.1.0.4:8000",
        "10.1.0.4:8001",
    ] {
        sub.add_pod(bound(pod, None));
    }
    let tokens: Vec<u32> = (0..2 * BS as u32).collect();
    let keys = rec.kv.request_keys("m", &tokens, &RequestExtras::default());
    let two = stored(&keys, None, &tokens);

    let dialled_topic = "kv@10.1.0.3:8000@m";
    let seq = warm_up(&mut dialled_pub, dialled_topic, &rec, "10.1.0.3:8000").await;
    send_batch(&mut dialled_pub, dialled_topic, seq, &two).await;
    wait_until("dialled pod indexed", || {
        rec.kv.lookup(&keys, &["10.1.0.3:8000"]) == vec![2]
    })
    .await;

    let mut attacker = connect_pub(&bound_ep);
    warm_up(&mut attacker, "kv@10.1.0.1:8000@m", &rec, "10.1.0.1:8000").await;
    for topic in [
        "kv@10.9.9.9:8000@m", // nobody
        "kv@10.1.0.1:9999@m", // another port of a known IP
        "kv@10.1.0.4@m",      // two pods on that IP
        "kv@pod-x@m",         // a name nobody follows
    ] {
        send_batch(&mut attacker, topic, 0, &two).await;
    }
    // The dialled pod's topic on the bound socket: an empty batch at seq 0 (a "restart") and
    // an AllBlocksCleared would wipe it if they were applied.
    let wipe = EventBatch {
        events: vec![KvEvent::AllBlocksCleared],
        ..empty()
    };
    send_batch(&mut attacker, dialled_topic, 0, &empty()).await;
    send_batch(&mut attacker, dialled_topic, 1, &wipe).await;
    // llm-d's usual topic without a port reaches the one pod on 10.1.0.2.
    send_batch(&mut attacker, "kv@10.1.0.2@m", 0, &two).await;
    wait_until("ip-only topic applied", || {
        rec.kv.lookup(&keys, &["10.1.0.2:8000"]) == vec![2]
    })
    .await;
    wait_until("six rejections", || {
        rec.notices()
            .iter()
            .filter(|n| matches!(n, Notice::Rejected { .. }))
            .count()
            == 6
    })
    .await;
    let rejected: Vec<(String, RejectReason)> = rec
        .notices()
        .into_iter()
        .filter_map(|n| match n {
            Notice::Rejected { topic, reason } => Some((topic, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        rejected,
        vec![
            ("kv@10.9.9.9:8000@m".into(), RejectReason::UnknownPod),
            ("kv@10.1.0.1:9999@m".into(), RejectReason::UnknownPod),
            ("kv@10.1.0.4@m".into(), RejectReason::AmbiguousPod),
            ("kv@pod-x@m".into(), RejectReason::UnknownPod),
            (dialled_topic.into(), RejectReason::DialledPod),
            (dialled_topic.into(), RejectReason::DialledPod),
        ]
    );
    // Nothing was planted under unknown names, and the dialled pod kept its blocks.
    for pod in [
        "10.9.9.9:8000",
        "10.1.0.1:9999",
        "pod-x",
        "10.1.0.4:8000",
        "10.1.0.4:8001",
    ] {
        assert_eq!(rec.kv.lookup(&keys, &[pod]), vec![0], "{pod}");
        assert_eq!(rec.kv.pods().get(pod), None, "{pod} registered");
    }
    assert_eq!(rec.kv.lookup(&keys, &["10.1.0.3:8000"]), vec![2]);
    sub.shutdown();
}

async fn send_batch(p: &mut ZmqSocket, topic: &str, seq: u64, batch: &EventBatch) {
    p.send(&encode_message(topic, seq, batch, Layout::Map))
        .await
        .unwrap();
}

/// With `verify_peer_address`, a known pod's topic is applied only from the pod's own IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_address_must_be_the_pods_when_verified() {
    let rec = Recorder::new(BS);
    let sub = Subscriber::new(
        rec.clone(),
        SubscriberConfig {
            verify_peer_address: true,
            ..Default::default()
        },
    );
    let ep = sub.bind("tcp://127.0.0.1:0").await.unwrap();
    sub.add_pod(bound("127.0.0.1:8000", None));
    sub.add_pod(bound("10.2.0.1:8000", None));
    let mut p = connect_pub(&ep);
    warm_up(&mut p, "kv@127.0.0.1:8000@m", &rec, "127.0.0.1:8000").await;
    send_batch(&mut p, "kv@10.2.0.1:8000@m", 0, &empty()).await;
    wait_until("rejected", || {
        rec.notices().contains(&Notice::Rejected {
            topic: "kv@10.2.0.1:8000@m".into(),
            reason: RejectReason::PeerAddress,
        })
    })
    .await;
    assert!(rec.batches_from("10.2.0.1:8000").is_empty());
    sub.shutdown();
}

/// Finding 3: a batch whose sequence number goes forward but whose timestamp goes back comes
/// from another instance: the pod's entries are cleared (no replay socket here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_going_back_are_a_restart() {
    let rec = Recorder::new(BS);
    let (mut publisher, endpoint) = bind_pub();
    let sub = Subscriber::new(rec.clone(), SubscriberConfig::default());
    sub.add_pod(dialled("pod-t", &endpoint, None));
    let topic = "kv@pod-t@m";
    let seq = warm_up(&mut publisher, topic, &rec, "pod-t").await;
    let tokens: Vec<u32> = (0..2 * BS as u32).map(|t| t + 500).collect();
    let keys = rec.kv.request_keys("m", &tokens, &RequestExtras::default());
    let mut old = stored(&keys, None, &tokens);
    old.ts = 2000.0;
    send_batch(&mut publisher, topic, seq, &old).await;
    wait_until("indexed", || rec.kv.lookup(&keys, &["pod-t"]) == vec![2]).await;
    let mut new = empty();
    new.ts = 1000.0;
    send_batch(&mut publisher, topic, seq + 1, &new).await;
    wait_until("cleared", || rec.kv.lookup(&keys, &["pod-t"]) == vec![0]).await;
    assert!(rec.notices().contains(&Notice::Restart {
        pod: "pod-t".into(),
        last: seq,
        got: seq + 1
    }));
    sub.shutdown();
}

/// Finding 3 without a replay socket: the pod's publisher goes away and another instance binds
/// the same port; the first batch seen after the reconnection numbers past the old last one.
/// That is taken as a restart (old entries cleared), not as "next" or a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_after_a_reconnection_is_a_restart() {
    let rec = Recorder::new(BS);
    let (mut publisher, endpoint) = bind_pub();
    let sub = Subscriber::new(rec.clone(), SubscriberConfig::default());
    sub.add_pod(dialled("pod-c", &endpoint, None));
    let topic = "kv@pod-c@m";
    let seq = warm_up(&mut publisher, topic, &rec, "pod-c").await;
    let tokens: Vec<u32> = (0..BS as u32).map(|t| t + 900).collect();
    let keys = rec.kv.request_keys("m", &tokens, &RequestExtras::default());
    send_batch(&mut publisher, topic, seq, &stored(&keys, None, &tokens)).await;
    wait_until("indexed", || rec.kv.lookup(&keys, &["pod-c"]) == vec![1]).await;
    drop(publisher);
    // The new instance: same port, its sequence already past ours.
    let mut publisher = ZmqSocket::new(SocketType::PUB, &SocketOptions::default()).unwrap();
    // libzmq releases the old socket's port in its I/O thread, shortly after the close.
    let mut tries = 0;
    while publisher.bind(&endpoint).is_err() {
        tries += 1;
        assert!(tries < 200, "port never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut next = seq + 50;
    while !rec.batches_from("pod-c").contains(&(next - 1)) {
        send_batch(&mut publisher, topic, next, &empty()).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(next < seq + 50 + 500, "never reconnected");
    }
    assert_eq!(rec.kv.lookup(&keys, &["pod-c"]), vec![0]);
    assert!(
        rec.notices().iter().any(
            |n| matches!(n, Notice::Restart { pod, last, .. } if pod == "pod-c" && *last == seq)
        ),
        "{:?}",
        rec.notices()
    );
    sub.shutdown();
}

/// Finding 3 in bound mode: a pod's replay endpoint is asked as soon as the pod is followed
/// (before it publishes anything), and gaps are filled from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_mode_replays_at_once_and_fills_gaps() {
    let rec = Recorder::new(BS);
    let sub = Subscriber::new(rec.clone(), SubscriberConfig::default());
    let ep = sub.bind("tcp://127.0.0.1:0").await.unwrap();
    let topic = "kv@10.3.0.1@m";
    let tokens: Vec<u32> = (0..5 * BS as u32).map(|t| t * 3).collect();
    let keys = rec.kv.request_keys("m", &tokens, &RequestExtras::default());
    let buffer: Vec<(u64, Vec<Vec<u8>>)> = (0..5)
        .map(|b| {
            (
                b as u64,
                encode_message(topic, b as u64, &one_block(&keys, &tokens, b), Layout::Map)
                    .to_vec(),
            )
        })
        .collect();
    // The pod published batches 0 and 1 before anyone listened.
    let (router, replay) = bind_router();
    let served = std::sync::Arc::new(parking_lot::Mutex::new(buffer[..2].to_vec()));
    tokio::spawn(shared_replay_service(router, served.clone()));
    sub.add_pod(bound("10.3.0.1:8000", Some(replay)));
    wait_until("head replayed without any live batch", || {
        rec.kv.lookup(&keys, &["10.3.0.1:8000"]) == vec![2]
    })
    .await;
    // Batches 2 and 3 are lost on the wire; 4 arrives live.
    *served.lock() = buffer.clone();
    let mut p = connect_pub(&ep);
    let mut tries = 0;
    while rec.kv.lookup(&keys, &["10.3.0.1:8000"]) != vec![5] {
        p.send(&buffer[4].1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        tries += 1;
        assert!(tries < 500, "{:?}", rec.notices());
    }
    let notices = rec.notices();
    assert!(notices.contains(&Notice::Gap {
        pod: "10.3.0.1:8000".into(),
        expected: 2,
        got: 4
    }));
    assert!(notices.contains(&Notice::Replay {
        pod: "10.3.0.1:8000".into(),
        from: 2,
        to: 4,
        recovered: 2
    }));
    assert!(!notices.iter().any(|n| matches!(n, Notice::Restart { .. })));
    sub.shutdown();
}

/// Buffered batches: `(seq, [topic, seq, payload])`.
type Buffer = Vec<(u64, Vec<Vec<u8>>)>;

/// A replay service whose buffer the test can change.
async fn shared_replay_service(
    mut router: ZmqSocket,
    buffer: std::sync::Arc<parking_lot::Mutex<Buffer>>,
) {
    while let Ok(request) = router.recv().await {
        let frames = request.frames;
        if frames.len() != 3 {
            continue;
        }
        let id = frames[0].to_vec();
        let start = u64::from_be_bytes(<[u8; 8]>::try_from(frames[2].as_ref()).unwrap());
        let batches: Vec<_> = buffer.lock().clone();
        for (seq, f) in batches.iter().filter(|(s, _)| *s >= start) {
            let reply = vec![
                id.clone(),
                vec![],
                f[0].clone(),
                seq.to_be_bytes().to_vec(),
                f[2].clone(),
            ];
            router.send(&reply).await.unwrap();
        }
        router
            .send(&[id, vec![], vec![], vec![0xff; 8], vec![]])
            .await
            .unwrap();
    }
}
