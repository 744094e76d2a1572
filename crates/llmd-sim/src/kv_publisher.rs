//! Publishing KV events as vLLM's `ZmqEventPublisher` does: one PUB message
//! `[topic, seq (u64 BE), msgpack batch]` per engine step with events, `seq` from 0; the socket
//! binds when the endpoint contains `*` or `::` or is `ipc://`/`inproc://`, and connects
//! otherwise. An optional ROUTER replays the last `buffer_steps` batches: a request
//! `[id, "", start_seq]` gets `[id, "", topic, seq, payload]` for each buffered batch from
//! `start_seq`, then `[id, "", "", ff*8, ""]` (vLLM >= 0.27's format).
//!
//! Both sockets are libzmq sockets from `llmd_kv_index::transport`: a peer announcing a frame
//! above the maximum message size (64 KiB here: subscriptions and replay requests are a few
//! bytes) is disconnected before anything is allocated, and a connecting PUB retries every
//! 100 ms up to 1 s.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use llmd_kv_index::events::{EventBatch, KvEvent, Layout, encode_message};
use llmd_kv_index::transport::{SocketError, SocketOptions, SocketType, ZmqSocket};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::EventSink;

/// Publisher settings.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// PUB endpoint.
    pub endpoint: String,
    /// Topic frame.
    pub topic: String,
    /// Event layout.
    pub layout: Layout,
    /// Replay ROUTER endpoint.
    pub replay_endpoint: Option<String>,
    /// Batches kept for replay.
    pub buffer_steps: usize,
    /// The engine's data-parallel rank, carried in every batch as vLLM does.
    pub data_parallel_rank: u32,
}

/// Errors starting the publisher.
#[derive(Debug, thiserror::Error)]
#[error("KV events on {endpoint}: {source}")]
pub struct PublisherError {
    endpoint: String,
    #[source]
    source: SocketError,
}

/// What the publisher's sockets accept from peers: SUB subscriptions and replay requests are a
/// few bytes each.
pub const MAX_INBOUND_MESSAGE_BYTES: usize = 64 << 10;

fn socket_options() -> SocketOptions {
    SocketOptions {
        max_message_bytes: MAX_INBOUND_MESSAGE_BYTES,
        // Like vLLM's PUB (HWM 100000): a slow subscriber loses batches only after this many.
        high_water_mark: 100_000,
        ..Default::default()
    }
}

/// vLLM's rule: bind for wildcard or local-IPC endpoints, connect otherwise.
pub fn binds(endpoint: &str) -> bool {
    endpoint.contains('*')
        || endpoint.contains("::")
        || endpoint.starts_with("ipc://")
        || endpoint.starts_with("inproc://")
}

type Buffer = Arc<Mutex<VecDeque<(u64, Bytes)>>>;

/// Starts publishing; returns where the engine sends each step's events, and the bound
/// endpoints (PUB, replay) when they were bound.
pub async fn start(
    config: PublisherConfig,
    cancel: CancellationToken,
) -> Result<(EventSink, Option<String>, Option<String>), PublisherError> {
    let err = |endpoint: &str| {
        let endpoint = endpoint.to_owned();
        move |source| PublisherError { endpoint, source }
    };
    let mut socket =
        ZmqSocket::new(SocketType::PUB, &socket_options()).map_err(err(&config.endpoint))?;
    let bound = if binds(&config.endpoint) {
        Some(
            socket
                .bind(&config.endpoint)
                .map_err(err(&config.endpoint))?,
        )
    } else {
        // Connecting: libzmq connects in the background and keeps retrying (events published
        // before the subscriber is reached are dropped, as vLLM's are).
        socket
            .connect(&config.endpoint)
            .map_err(err(&config.endpoint))?;
        None
    };
    // Batches are kept only for a replay socket (a PUB-only publisher keeps nothing).
    let buffer: Option<Buffer> = config
        .replay_endpoint
        .as_ref()
        .map(|_| Arc::new(Mutex::new(VecDeque::new())));
    let replay = match (&config.replay_endpoint, &buffer) {
        (Some(ep), Some(buffer)) => {
            let mut router =
                ZmqSocket::new(SocketType::ROUTER, &socket_options()).map_err(err(ep))?;
            let bound = router.bind(ep).map_err(err(ep))?;
            tokio::spawn(serve_replay(
                router,
                config.topic.clone(),
                buffer.clone(),
                cancel.clone(),
            ));
            Some(bound)
        }
        _ => None,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(publish(socket, config, rx, buffer, cancel));
    Ok((tx, bound, replay))
}

async fn publish(
    mut socket: ZmqSocket,
    config: PublisherConfig,
    mut rx: mpsc::UnboundedReceiver<Vec<KvEvent>>,
    buffer: Option<Buffer>,
    cancel: CancellationToken,
) {
    let mut seq = 0u64;
    loop {
        let events = tokio::select! {
            _ = cancel.cancelled() => break,
            e = rx.recv() => match e { Some(e) => e, None => break },
        };
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let batch = EventBatch {
            ts,
            events,
            data_parallel_rank: Some(i64::from(config.data_parallel_rank)),
            ..Default::default()
        };
        let [topic, seq_frame, payload] = encode_message(&config.topic, seq, &batch, config.layout);
        let payload = Bytes::from(payload);
        if let Some(buffer) = &buffer {
            let mut b = buffer.lock();
            b.push_back((seq, payload.clone()));
            while b.len() > config.buffer_steps {
                b.pop_front();
            }
        }
        if let Err(error) = socket
            .send(&[&topic[..], &seq_frame[..], &payload[..]])
            .await
        {
            tracing::warn!(%error, seq, "KV event send failed");
        }
        seq += 1;
    }
}

async fn serve_replay(
    mut router: ZmqSocket,
    topic: String,
    buffer: Buffer,
    cancel: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            _ = cancel.cancelled() => break,
            r = router.recv() => match r {
                Ok(r) => r,
                Err(error) => {
                    tracing::warn!(%error, "KV-event replay receive failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let frames = request.frames;
        let [id, _, start] = frames.as_slice() else {
            continue;
        };
        let Ok(start) = <[u8; 8]>::try_from(start.as_ref()).map(u64::from_be_bytes) else {
            continue;
        };
        let batches: Vec<(u64, Bytes)> = buffer
            .lock()
            .iter()
            .filter(|(s, _)| *s >= start)
            .cloned()
            .collect();
        for (seq, payload) in batches {
            let seq = seq.to_be_bytes();
            let reply: [&[u8]; 5] = [id, &[], topic.as_bytes(), &seq, &payload];
            let _ = router.send(&reply).await;
        }
        let end: [&[u8]; 5] = [id, &[], &[], &[0xff; 8], &[]];
        let _ = router.send(&end).await;
    }
}
