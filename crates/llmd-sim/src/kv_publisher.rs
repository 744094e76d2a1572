//! Publishing KV events as vLLM's `ZmqEventPublisher` does: one PUB message
//! `[topic, seq (u64 BE), msgpack batch]` per engine step with events, `seq` from 0; the socket
//! binds when the endpoint contains `*` or `::` or is `ipc://`/`inproc://`, and connects
//! otherwise. An optional ROUTER replays the last `buffer_steps` batches: a request
//! `[id, "", start_seq]` gets `[id, "", topic, seq, payload]` for each buffered batch from
//! `start_seq`, then `[id, "", "", ff*8, ""]` (vLLM >= 0.27's format).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use llmd_kv_index::events::{EventBatch, KvEvent, Layout, encode_message};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

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
}

/// Errors starting the publisher.
#[derive(Debug, thiserror::Error)]
#[error("KV events on {endpoint}: {source}")]
pub struct PublisherError {
    endpoint: String,
    #[source]
    source: zeromq::ZmqError,
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
    let mut socket = PubSocket::new();
    let bound = if binds(&config.endpoint) {
        let ep = config.endpoint.replace("tcp://*:", "tcp://0.0.0.0:");
        Some(
            socket
                .bind(&ep)
                .await
                .map_err(err(&config.endpoint))?
                .to_string(),
        )
    } else {
        // Connecting: don't block startup on the subscriber; zeromq keeps retrying.
        let endpoint = config.endpoint.clone();
        match tokio::time::timeout(std::time::Duration::from_secs(2), socket.connect(&endpoint))
            .await
        {
            Ok(r) => r.map_err(err(&endpoint))?,
            Err(_) => tracing::warn!(
                endpoint,
                "KV-event subscriber not reachable yet; events are dropped until it is"
            ),
        }
        None
    };
    // Batches are kept only for a replay socket (a PUB-only publisher keeps nothing).
    let buffer: Option<Buffer> = config
        .replay_endpoint
        .as_ref()
        .map(|_| Arc::new(Mutex::new(VecDeque::new())));
    let replay = match (&config.replay_endpoint, &buffer) {
        (Some(ep), Some(buffer)) => {
            let mut router = RouterSocket::new();
            let bound = router
                .bind(&ep.replace("tcp://*:", "tcp://0.0.0.0:"))
                .await
                .map_err(err(ep))?
                .to_string();
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
    mut socket: PubSocket,
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
            data_parallel_rank: Some(0),
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
        let frames = vec![Bytes::from(topic), Bytes::from(seq_frame), payload];
        if let Ok(msg) = ZmqMessage::try_from(frames)
            && let Err(error) = socket.send(msg).await
        {
            tracing::warn!(%error, seq, "KV event send failed");
        }
        seq += 1;
    }
    let _ = socket.close().await;
}

async fn serve_replay(
    mut router: RouterSocket,
    topic: String,
    buffer: Buffer,
    cancel: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            _ = cancel.cancelled() => break,
            r = router.recv() => match r { Ok(r) => r, Err(_) => continue },
        };
        let frames = request.into_vec();
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
            let reply = vec![
                id.clone(),
                Bytes::new(),
                Bytes::from(topic.clone()),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
                payload,
            ];
            if let Ok(msg) = ZmqMessage::try_from(reply) {
                let _ = router.send(msg).await;
            }
        }
        let end = vec![
            id.clone(),
            Bytes::new(),
            Bytes::new(),
            Bytes::from_static(&[0xff; 8]),
            Bytes::new(),
        ];
        if let Ok(msg) = ZmqMessage::try_from(end) {
            let _ = router.send(msg).await;
        }
    }
}
