//! The subscriber against real ZMQ sockets on 127.0.0.1: a vLLM-style publisher (encoded with
//! vLLM's exact bytes) dialled by the subscriber, several publishers connecting to a bound
//! subscriber, gaps, publisher restarts, garbage, and replay over a ROUTER endpoint.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Notice, Recorder, wait_until};
use llmd_kv_index::events::{BlockStored, EventBatch, KvEvent, Layout, encode_message};
use llmd_kv_index::hashing::{BlockKey, RequestExtras};
use llmd_kv_index::subscriber::{PodEndpoint, Subscriber, SubscriberConfig};
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

const BS: usize = 16;

fn message(frames: Vec<Vec<u8>>) -> ZmqMessage {
    ZmqMessage::try_from(frames.into_iter().map(Bytes::from).collect::<Vec<_>>()).unwrap()
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

async fn bind_pub() -> (PubSocket, String) {
    let mut socket = PubSocket::new();
    let ep = socket.bind("tcp://127.0.0.1:0").await.unwrap();
    (socket, ep.to_string())
}

/// Publishes empty batches with increasing seq until the subscriber sees one (PUB drops
/// messages until the subscription reaches it); returns the next seq.
async fn warm_up(socket: &mut PubSocket, topic: &str, rec: &Recorder, pod: &str) -> u64 {
    let mut seq = 0;
    loop {
        socket
            .send(message(
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
    let (mut publisher, endpoint) = bind_pub().await;
    let sub = Subscriber::new(rec.clone(), SubscriberConfig::default());
    sub.add_pod(PodEndpoint {
        pod: "10.0.0.1:8000".into(),
        endpoint,
        replay_endpoint: None,
        model: "fallback".into(),
    });
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
            .send(message(encode_message(topic, seq, &batch, layout).to_vec()))
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
        .send(message(vec![b"kv@x@y".to_vec(), vec![0; 8]]))
        .await
        .unwrap();
    publisher
        .send(message(vec![
            topic.as_bytes().to_vec(),
            vec![1, 2],
            b"\x93".to_vec(),
        ]))
        .await
        .unwrap();
    publisher
        .send(message(vec![
            topic.as_bytes().to_vec(),
            seq.to_be_bytes().to_vec(),
            b"\xc1\xc1".to_vec(),
        ]))
        .await
        .unwrap();
    let after_garbage = seq;
    publisher
        .send(message(
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
        .send(message(
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
        .send(message(
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
    for (i, pod) in ["pod-a", "pod-b", "pod-c"].iter().enumerate() {
        let mut p = PubSocket::new();
        p.connect(&bound).await.unwrap();
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
                p.send(message(
                    encode_message(&topic, seq, &batch, Layout::Map).to_vec(),
                ))
                .await
                .unwrap();
                seq += 1;
            }
            p
        }));
    }
    let mut sockets: Vec<PubSocket> = futures_join(publishers).await;
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
        .send(message(
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
async fn replay_service(mut router: RouterSocket, buffer: Vec<(u64, Vec<Vec<u8>>)>) {
    while let Ok(request) = router.recv().await {
        let frames = request.into_vec();
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
            router.send(message(reply)).await.unwrap();
        }
        router
            .send(message(vec![
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
    let (mut publisher, endpoint) = bind_pub().await;
    let mut router = RouterSocket::new();
    let replay_endpoint = router.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let topic = "kv@pod-r@m";

    let sub = Subscriber::new(rec.clone(), SubscriberConfig::default());
    sub.add_pod(PodEndpoint {
        pod: "pod-r".into(),
        endpoint,
        replay_endpoint: Some(replay_endpoint),
        model: "m".into(),
    });
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
        publisher.send(message(frames.clone())).await.unwrap();
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
