//! Finding 1 of the fault campaign: a 73-byte packet (a ZMTP greeting and a frame header
//! declaring 2^40 bytes) aborted any process with a ZMQ socket, because the `zeromq` crate
//! reserved the declared length before reading anything. Every socket of the subscriber now
//! enforces a maximum message size before allocating: the packet is sent to the bound SUB, by a
//! "pod" the subscriber dials, and by a "replay socket" it asks; afterwards the process still
//! serves and still indexes a real publisher's events.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Recorder, bind_pub, connect_pub, hostile_packet, wait_until};
use llmd_kv_index::events::{BlockStored, EventBatch, KvEvent, Layout, encode_message};
use llmd_kv_index::hashing::{BlockKey, RequestExtras};
use llmd_kv_index::subscriber::{PodEndpoint, Subscriber, SubscriberConfig};
use llmd_kv_index::transport::ZmqSocket;

const BS: usize = 16;

fn stored(keys: &[BlockKey], tokens: &[u32]) -> EventBatch {
    EventBatch {
        ts: 1.0,
        events: vec![KvEvent::BlockStored(BlockStored {
            block_hashes: keys.to_vec(),
            token_ids: tokens.to_vec(),
            block_size: BS as u32,
            ..Default::default()
        })],
        ..Default::default()
    }
}

/// A fake peer on loopback that writes the packet to everyone who connects; counts them.
fn hostile_listener() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            count.fetch_add(1, Ordering::Relaxed);
            let _ = stream.write_all(&hostile_packet());
            // Hold the connection open a little, as an attacker would, then let it go.
            std::thread::spawn(move || {
                let mut sink = [0u8; 256];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    (endpoint, accepted)
}

/// Publishes `batch` (after warm-up batches) until `pod` holds `keys`.
async fn publish_until_indexed(
    p: &mut ZmqSocket,
    topic: &str,
    rec: &Recorder,
    pod: &str,
    keys: &[BlockKey],
    tokens: &[u32],
) {
    for seq in 0..500u64 {
        p.send(&encode_message(
            topic,
            seq,
            &stored(keys, tokens),
            Layout::Map,
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        if rec.kv.lookup(keys, &[pod]) == vec![keys.len() as u32] {
            return;
        }
    }
    panic!("{pod} never indexed: {:?}", rec.notices());
}

fn keys_and_tokens(rec: &Recorder, salt: u32) -> (Vec<BlockKey>, Vec<u32>) {
    let tokens: Vec<u32> = (0..2 * BS as u32).map(|t| t * 11 + salt).collect();
    let keys = rec.kv.request_keys("m", &tokens, &RequestExtras::default());
    (keys, tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_sub_survives_the_packet() {
    let rec = Recorder::new(BS);
    let sub = Subscriber::new(rec.clone(), SubscriberConfig::default());
    let bound = sub.bind("tcp://127.0.0.1:0").await.unwrap();
    sub.add_pod(PodEndpoint {
        pod: "10.5.0.1:8000".into(),
        endpoint: None,
        replay_endpoint: None,
        model: "m".into(),
    });
    let addr = bound.trim_start_matches("tcp://").to_owned();
    let mut attackers = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&hostile_packet()).unwrap();
        attackers.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (keys, tokens) = keys_and_tokens(&rec, 1);
    let mut p = connect_pub(&bound);
    publish_until_indexed(
        &mut p,
        "kv@10.5.0.1:8000@m",
        &rec,
        "10.5.0.1:8000",
        &keys,
        &tokens,
    )
    .await;
    sub.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialled_sub_survives_a_pod_that_sends_the_packet() {
    let rec = Recorder::new(BS);
    let sub = Subscriber::new(rec.clone(), SubscriberConfig::default());
    let (hostile, accepted) = hostile_listener();
    sub.add_pod(PodEndpoint {
        pod: "10.5.0.2:8000".into(),
        endpoint: Some(hostile),
        replay_endpoint: None,
        model: "m".into(),
    });
    wait_until(
        "the hostile pod dialled twice (reconnecting after the bad frame)",
        || accepted.load(Ordering::Relaxed) >= 2,
    )
    .await;
    let (mut p, endpoint) = bind_pub();
    sub.add_pod(PodEndpoint {
        pod: "10.5.0.3:8000".into(),
        endpoint: Some(endpoint),
        replay_endpoint: None,
        model: "m".into(),
    });
    let (keys, tokens) = keys_and_tokens(&rec, 2);
    publish_until_indexed(
        &mut p,
        "kv@10.5.0.3:8000@m",
        &rec,
        "10.5.0.3:8000",
        &keys,
        &tokens,
    )
    .await;
    sub.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_request_survives_a_replay_socket_that_sends_the_packet() {
    let rec = Recorder::new(BS);
    let config = SubscriberConfig {
        replay_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let sub = Subscriber::new(rec.clone(), config);
    let (hostile, accepted) = hostile_listener();
    let (mut p, endpoint) = bind_pub();
    sub.add_pod(PodEndpoint {
        pod: "10.5.0.4:8000".into(),
        endpoint: Some(endpoint),
        replay_endpoint: Some(hostile),
        model: "m".into(),
    });
    wait_until("the replay socket asked", || {
        accepted.load(Ordering::Relaxed) >= 1
    })
    .await;
    let (keys, tokens) = keys_and_tokens(&rec, 3);
    publish_until_indexed(
        &mut p,
        "kv@10.5.0.4:8000@m",
        &rec,
        "10.5.0.4:8000",
        &keys,
        &tokens,
    )
    .await;
    sub.shutdown();
}
