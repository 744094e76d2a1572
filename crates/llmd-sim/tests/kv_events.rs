//! KV events from the simulator, decoded by `llmd-kv-index`'s subscriber: the keys equal
//! hashing the prompt tokens independently, in both encodings; a repeated prompt hits the
//! prefix cache (cached tokens reported, smaller TTFT); evictions arrive as removals.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use llmd_kv_index::hashing::RequestExtras;
use llmd_kv_index::subscriber::{PodEndpoint, Subscriber, SubscriberConfig};
use llmd_kv_index::{KvIndex, KvIndexConfig};
use llmd_tokenizer::ModelTokenizer;
use serde_json::json;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends a streaming completion; returns (time to first chunk, final usage).
async fn complete(base: &str, prompt: &str, max_tokens: u32) -> (Duration, serde_json::Value) {
    let started = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": true, "stream_options": {"include_usage": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut first = None;
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        first.get_or_insert_with(|| started.elapsed());
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let usage = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .find(|v| v["usage"].is_object())
        .unwrap()["usage"]
        .clone();
    (first.unwrap(), usage)
}

async fn scenario(layout: &str) {
    let Some(tok) = common::llama_tokenizer() else {
        return;
    };
    let kv = Arc::new(
        KvIndex::new(KvIndexConfig {
            block_size: 16,
            hash_seed: Some("7".into()),
            ..Default::default()
        })
        .unwrap(),
    );
    let sub = Subscriber::new(kv.clone(), SubscriberConfig::default());
    let bound = sub.bind("tcp://127.0.0.1:0").await.unwrap();
    // A non-wildcard endpoint: the sim connects, as vLLM does.
    let (sim, shutdown) = common::start(&[
        "--model",
        MODEL,
        "--tokenizer",
        &tok,
        "--block-size",
        "16",
        "--hash-seed",
        "7",
        "--num-gpu-blocks",
        "400",
        "--time-scale",
        "1",
        "--kv-events-endpoint",
        &bound,
        "--kv-events-encoding",
        layout,
    ])
    .await;
    let base = format!("http://{}", sim.addr);
    let pod = format!("127.0.0.1:{}", sim.addr.port());
    // The bound socket applies known pods' topics only.
    sub.add_pod(PodEndpoint {
        pod: pod.clone(),
        endpoint: None,
        replay_endpoint: None,
        model: MODEL.into(),
    });
    let llama = ModelTokenizer::from_dir(MODEL, std::path::Path::new(&tok)).unwrap();

    // Warm up until the subscriber sees events (PUB drops before the subscription arrives).
    let mut n = 0;
    while kv.pods().get(&pod).is_none() {
        complete(&base, &format!("warm-up request number {n} with enough words to fill at least one block of sixteen tokens"), 1).await;
        n += 1;
        assert!(n < 100, "no events arrived");
    }

    // A ~2,000-token prompt: 100 ms of simulated prefill.
    let prompt = (0..400).map(|i| format!("item{i} ")).collect::<String>();
    let tokens = llama.encode_completion(&prompt).unwrap();
    let keys = kv.request_keys(MODEL, &tokens, &RequestExtras::default());
    let full_blocks = tokens.len() / 16;
    let (ttft_cold, usage_cold) = complete(&base, &prompt, 4).await;
    assert_eq!(usage_cold["prompt_tokens_details"]["cached_tokens"], 0);
    wait_until("the prompt's blocks indexed", || {
        kv.lookup(&keys, &[pod.as_str()]) == vec![full_blocks as u32]
    })
    .await;

    let (ttft_warm, usage_warm) = complete(&base, &prompt, 4).await;
    let cached = usage_warm["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap() as usize;
    // All full blocks but the one holding the last prompt token (vLLM recomputes it).
    assert_eq!(cached, (tokens.len() - 1) / 16 * 16);
    assert!(
        ttft_warm * 3 < ttft_cold,
        "cached prompt should prefill much faster: cold {ttft_cold:?}, warm {ttft_warm:?}"
    );

    // Enough other prompts to evict it (400 blocks): its keys leave the index.
    for i in 0..12 {
        let other = (0..400).map(|j| format!("x{i}y{j} ")).collect::<String>();
        complete(&base, &other, 1).await;
    }
    wait_until("the first prompt's blocks evicted", || {
        kv.lookup(&keys, &[pod.as_str()])[0] < full_blocks as u32
    })
    .await;
    assert!(kv.index().snapshot().removals > 0);
    shutdown.cancel();
    sub.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_encoded_events_match_independent_hashes() {
    scenario("map").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn array_encoded_events_match_independent_hashes() {
    scenario("array").await;
}

/// An EPP that subscribes late catches up from the simulator's replay endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscriber_catches_up_through_replay() {
    let (sim, shutdown) = common::start(&[
        "--dummy-tokenizer",
        "--block-size",
        "16",
        "--hash-seed",
        "7",
        "--time-scale",
        "0",
        "--kv-events-endpoint",
        "tcp://*:0",
        "--kv-events-replay-endpoint",
        "tcp://*:0",
    ])
    .await;
    let base = format!("http://{}", sim.addr);
    let port = |bound: &Option<String>| {
        bound
            .as_deref()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned()
    };
    let (pub_port, replay_port) = (port(&sim.kv_events_bound), port(&sim.kv_replay_bound));
    // Published before anyone subscribes: lost on the PUB socket, kept in the replay buffer.
    let early = "an early prompt that nobody was listening to, long enough for a few blocks";
    complete(&base, early, 1).await;
    let kv = Arc::new(
        KvIndex::new(KvIndexConfig {
            block_size: 16,
            hash_seed: Some("7".into()),
            ..Default::default()
        })
        .unwrap(),
    );
    let sub = Subscriber::new(kv.clone(), SubscriberConfig::default());
    let pod = format!("127.0.0.1:{}", sim.addr.port());
    sub.add_pod(PodEndpoint {
        pod: pod.clone(),
        endpoint: Some(format!("tcp://127.0.0.1:{pub_port}")),
        replay_endpoint: Some(format!("tcp://127.0.0.1:{replay_port}")),
        model: MODEL.into(),
    });
    let early_tokens: Vec<u32> = early.bytes().map(u32::from).collect();
    let early_keys = kv.request_keys(MODEL, &early_tokens, &RequestExtras::default());
    let mut n = 0;
    while kv.lookup(&early_keys, &[pod.as_str()])[0] < (early_tokens.len() / 16) as u32 {
        complete(
            &base,
            &format!("a later prompt number {n} that fills at least one block"),
            1,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        n += 1;
        assert!(n < 200, "early blocks never replayed");
    }
    shutdown.cancel();
    sub.shutdown();
}

/// Finding 1 against the simulator's own sockets: the 73-byte packet (a ZMTP greeting and a
/// frame header declaring 2^40 bytes) sent to its PUB and to its replay ROUTER. The `zeromq`
/// crate aborted the process on it; now the connection is dropped before allocation, and the
/// simulator still serves, publishes and replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_and_replay_sockets_survive_the_73_byte_packet() {
    use std::io::Write;
    let (sim, shutdown) = common::start(&[
        "--dummy-tokenizer",
        "--block-size",
        "16",
        "--hash-seed",
        "7",
        "--time-scale",
        "0",
        "--kv-events-endpoint",
        "tcp://*:0",
        "--kv-events-replay-endpoint",
        "tcp://*:0",
    ])
    .await;
    let base = format!("http://{}", sim.addr);
    let port = |bound: &Option<String>| {
        bound
            .as_deref()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned()
    };
    let addr = |bound: &Option<String>| format!("127.0.0.1:{}", port(bound));
    let mut packet = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0];
    packet.extend_from_slice(b"NULL");
    packet.resize(64, 0);
    packet.push(0x02);
    packet.extend_from_slice(&(1u64 << 40).to_be_bytes());
    assert_eq!(packet.len(), 73);
    let mut attackers = Vec::new();
    for target in [addr(&sim.kv_events_bound), addr(&sim.kv_replay_bound)] {
        let mut s = std::net::TcpStream::connect(&target).unwrap();
        s.write_all(&packet).unwrap();
        attackers.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Still serving.
    let early = "a prompt sent right after the attack, long enough for a few blocks of tokens";
    complete(&base, early, 1).await;
    // Still publishing and replaying: a subscriber catches up on `early` and sees new events.
    let kv = Arc::new(
        KvIndex::new(KvIndexConfig {
            block_size: 16,
            hash_seed: Some("7".into()),
            ..Default::default()
        })
        .unwrap(),
    );
    let sub = Subscriber::new(kv.clone(), SubscriberConfig::default());
    let pod = format!("127.0.0.1:{}", sim.addr.port());
    sub.add_pod(PodEndpoint {
        pod: pod.clone(),
        endpoint: Some(format!("tcp://{}", addr(&sim.kv_events_bound))),
        replay_endpoint: Some(format!("tcp://{}", addr(&sim.kv_replay_bound))),
        model: MODEL.into(),
    });
    let early_tokens: Vec<u32> = early.bytes().map(u32::from).collect();
    let early_keys = kv.request_keys(MODEL, &early_tokens, &RequestExtras::default());
    wait_until("early blocks replayed", || {
        kv.lookup(&early_keys, &[pod.as_str()])[0] == (early_tokens.len() / 16) as u32
    })
    .await;
    let later = "and a later prompt that must arrive live on the publisher socket, several blocks";
    let later_tokens: Vec<u32> = later.bytes().map(u32::from).collect();
    let later_keys = kv.request_keys(MODEL, &later_tokens, &RequestExtras::default());
    let mut n = 0;
    while kv.lookup(&later_keys, &[pod.as_str()])[0] < (later_tokens.len() / 16) as u32 {
        complete(&base, later, 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        n += 1;
        assert!(n < 200, "live events never arrived");
    }
    drop(attackers);
    shutdown.cancel();
    sub.shutdown();
}
