//! ZMQ subscription to the KV events of many pods.
//!
//! Two ways to reach the pods, usable together:
//!
//! - **Dialled** ([`Subscriber::add_pod`]): one SUB socket per pod, connected to the pod's PUB
//!   endpoint (vLLM's default `tcp://*:5557` binds). The pod's identity is the name it was added
//!   under; its model comes from the topic (`kv@<pod>@<model>`) or from [`PodEndpoint::model`].
//!   Connection failures are retried with exponential backoff; once connected, the socket
//!   reconnects by itself. A configured replay endpoint is used to fill sequence gaps.
//! - **Bound** ([`Subscriber::bind`]): one SUB socket that every pod connects to (vLLM with
//!   `endpoint: tcp://<epp>:5557`). The pod and model come from the topic.
//!
//! Per-pod order is preserved: a dialled pod's messages are handled by its own task, and a bound
//! socket routes each pod to one of a fixed set of workers by the hash of its name. Different
//! pods are handled in parallel.
//!
//! Sequence numbers are tracked per pod: a jump forward is a **gap** (counted, and filled from
//! the replay endpoint when there is one), a jump backward is a **publisher restart** (counted,
//! and the pod's entries are cleared: its engine's cache is gone). A first message with a
//! sequence above 0 means we joined late: with a replay endpoint, the earlier batches still in
//! the pod's buffer are replayed first (initial sync). Undecodable messages are
//! counted and skipped. Every loop watches a cancellation token and logs why it stopped.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use crate::events::{DecodeError, EventBatch, decode_message, parse_topic};
use crate::kv::KvIndex;
use llmd_telemetry::names::kv_cache as names;

/// Receives what the subscriber decodes. [`KvIndex`] implements it; `llmd-kv listen` prints.
pub trait EventHandler: Send + Sync + 'static {
    /// A decoded batch from `pod`, in sequence order.
    fn on_batch(&self, pod: &str, model: &str, seq: u64, batch: &EventBatch);
    /// Batches `expected..got` of `pod` were lost (before any replay).
    fn on_gap(&self, _pod: &str, _expected: u64, _got: u64) {}
    /// `pod`'s publisher restarted (its sequence went from `last` back to `got`).
    fn on_restart(&self, _pod: &str, _last: u64, _got: u64) {}
    /// A message from `pod` (or `"?"` when the topic is unreadable) could not be decoded.
    fn on_decode_error(&self, _pod: &str, _error: &DecodeError) {}
    /// A replay of `from..to` for `pod` returned `recovered` batches.
    fn on_replay(&self, _pod: &str, _from: u64, _to: u64, _recovered: u64) {}
}

impl EventHandler for KvIndex {
    fn on_batch(&self, pod: &str, model: &str, _seq: u64, batch: &EventBatch) {
        if let Err(error) = self.apply_batch(pod, model, batch) {
            tracing::warn!(pod, %error, "cannot apply KV events");
        }
    }

    fn on_restart(&self, pod: &str, _last: u64, _got: u64) {
        self.clear_pod(pod);
    }
}

/// Subscriber settings.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// SUB prefix filter (llm-d's `topicFilter`).
    pub topic_filter: String,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// First retry delay after a failed connection; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Longest a replay may take.
    pub replay_timeout: Duration,
    /// Workers applying a bound socket's events (pods are sharded over them).
    pub workers: usize,
    /// Messages queued per worker before the socket waits.
    pub queue_capacity: usize,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        Self {
            topic_filter: "kv@".into(),
            connect_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            replay_timeout: Duration::from_secs(2),
            workers: 2,
            queue_capacity: 1024,
        }
    }
}

/// A pod to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEndpoint {
    /// The pod's identity in the index (llm-d uses `ip:port` of its serving port).
    pub pod: String,
    /// Its ZMQ PUB endpoint, e.g. `tcp://10.0.0.7:5557`.
    pub endpoint: String,
    /// Its replay (ROUTER) endpoint, if any.
    pub replay_endpoint: Option<String>,
    /// Model name when the topic does not carry one.
    pub model: String,
}

/// Errors starting a subscription.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    /// The bound endpoint could not be bound.
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        /// Endpoint.
        endpoint: String,
        /// Cause.
        #[source]
        source: zeromq::ZmqError,
    },
    /// The subscription filter could not be set.
    #[error("cannot subscribe: {0}")]
    Subscribe(#[source] zeromq::ZmqError),
}

/// Subscribes to pods and hands their events to an [`EventHandler`].
pub struct Subscriber {
    handler: Arc<dyn EventHandler>,
    config: SubscriberConfig,
    cancel: CancellationToken,
    pods: Mutex<HashMap<String, (CancellationToken, JoinHandle<()>)>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("config", &self.config)
            .field("pods", &self.pods.lock().len())
            .finish()
    }
}

impl Subscriber {
    /// A subscriber feeding `handler`. Nothing is subscribed until [`Self::add_pod`] or
    /// [`Self::bind`].
    pub fn new(handler: Arc<dyn EventHandler>, config: SubscriberConfig) -> Self {
        // Error series exist at zero from the start, so that dashboards and alerts read 0, not
        // "no data", on a healthy stream.
        for reason in DecodeError::REASONS.into_iter().chain(["malformed_event"]) {
            metrics::counter!(names::EVENTS_DECODE_ERRORS.name, "reason" => reason).increment(0);
        }
        for reason in ["unknown_event", "unknown_field"] {
            metrics::counter!(names::EVENTS_SKIPPED.name, "reason" => reason).increment(0);
        }
        for operation in ["connect", "recv", "replay"] {
            metrics::counter!(names::EVENTS_ZMQ_ERRORS.name, "operation" => operation).increment(0);
        }
        Self {
            handler,
            config,
            cancel: CancellationToken::new(),
            pods: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Dials `pod` (replacing an earlier subscription under the same name).
    pub fn add_pod(&self, pod: PodEndpoint) {
        let token = self.cancel.child_token();
        let handle = tokio::spawn(run_dialled(
            pod.clone(),
            self.config.clone(),
            self.handler.clone(),
            token.clone(),
        ));
        if let Some((old, _)) = self.pods.lock().insert(pod.pod.clone(), (token, handle)) {
            old.cancel();
        }
    }

    /// Stops dialling `pod`. Its entries stay in the index until the caller removes the pod
    /// there ([`KvIndex::remove_pod`]).
    pub fn remove_pod(&self, pod: &str) -> bool {
        match self.pods.lock().remove(pod) {
            Some((token, _)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Names of the dialled pods.
    pub fn dialled_pods(&self) -> Vec<String> {
        self.pods.lock().keys().cloned().collect()
    }

    /// Binds a SUB socket that pods connect to; returns the bound endpoint (with the real port
    /// when `:0` was asked for).
    pub async fn bind(&self, endpoint: &str) -> Result<String, SubscriberError> {
        let mut socket = SubSocket::new();
        socket
            .subscribe(&self.config.topic_filter)
            .await
            .map_err(SubscriberError::Subscribe)?;
        let bound = socket
            .bind(endpoint)
            .await
            .map_err(|source| SubscriberError::Bind {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        let workers = self.config.workers.max(1);
        let mut senders = Vec::with_capacity(workers);
        let mut tasks = self.tasks.lock();
        for w in 0..workers {
            let (tx, rx) = mpsc::channel::<Vec<Bytes>>(self.config.queue_capacity.max(1));
            senders.push(tx);
            tasks.push(tokio::spawn(run_worker(
                w,
                rx,
                self.handler.clone(),
                self.cancel.clone(),
            )));
        }
        tasks.push(tokio::spawn(run_bound(
            bound.to_string(),
            socket,
            senders,
            self.cancel.clone(),
        )));
        Ok(bound.to_string())
    }

    /// Stops every subscription.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What a sequence number means, given the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqVerdict {
    First,
    Next,
    Gap { expected: u64 },
    Restart { last: u64 },
}

#[derive(Debug, Default)]
struct SeqState {
    last: Option<u64>,
}

impl SeqState {
    fn check(&mut self, seq: u64) -> SeqVerdict {
        let verdict = match self.last {
            None => SeqVerdict::First,
            Some(last) if seq == last.wrapping_add(1) => SeqVerdict::Next,
            Some(last) if seq > last => SeqVerdict::Gap { expected: last + 1 },
            Some(last) => SeqVerdict::Restart { last },
        };
        self.last = Some(seq);
        verdict
    }
}

/// Handles one message's frames for a pod: decode, sequence check, replay, deliver.
struct PodStream {
    pod: Option<String>,
    fallback_model: String,
    replay_endpoint: Option<String>,
    seq: SeqState,
    logged_decode_error: bool,
}

impl PodStream {
    async fn handle(
        &mut self,
        frames: Vec<Bytes>,
        handler: &Arc<dyn EventHandler>,
        config: &SubscriberConfig,
    ) {
        let msg = match decode_message(&frames) {
            Ok(m) => m,
            Err(error) => {
                let pod = self.pod.clone().unwrap_or_else(|| "?".into());
                metrics::counter!(names::EVENTS_DECODE_ERRORS.name, "reason" => error.reason())
                    .increment(1);
                if !self.logged_decode_error {
                    tracing::warn!(pod, %error, "undecodable KV-event message (counted; further ones not logged)");
                    self.logged_decode_error = true;
                }
                handler.on_decode_error(&pod, &error);
                return;
            }
        };
        let (pod, model) = match (&self.pod, parse_topic(&msg.topic)) {
            (Some(p), Some((_, m))) => (p.clone(), m.to_owned()),
            (Some(p), None) => (p.clone(), self.fallback_model.clone()),
            (None, Some((p, m))) => (p.to_owned(), m.to_owned()),
            (None, None) => {
                let error = DecodeError::Topic(msg.topic.clone());
                metrics::counter!(names::EVENTS_DECODE_ERRORS.name, "reason" => error.reason())
                    .increment(1);
                if !self.logged_decode_error {
                    tracing::warn!(%error, "KV-event message without a pod in its topic (counted; further ones not logged)");
                    self.logged_decode_error = true;
                }
                handler.on_decode_error("?", &error);
                return;
            }
        };
        metrics::counter!(names::EVENTS_MESSAGES_RECEIVED.name, "pod" => pod.clone(), "pod_identifier" => pod.clone()).increment(1);
        let skipped = msg.batch.skipped;
        if skipped.unknown_events > 0 {
            metrics::counter!(names::EVENTS_SKIPPED.name, "reason" => "unknown_event")
                .increment(u64::from(skipped.unknown_events));
        }
        if skipped.unknown_fields > 0 {
            metrics::counter!(names::EVENTS_SKIPPED.name, "reason" => "unknown_field")
                .increment(u64::from(skipped.unknown_fields));
        }
        if skipped.malformed_events > 0 {
            metrics::counter!(names::EVENTS_DECODE_ERRORS.name, "reason" => "malformed_event")
                .increment(u64::from(skipped.malformed_events));
        }
        match self.seq.check(msg.seq) {
            SeqVerdict::Next => {}
            // Joined late: what the pod published before we subscribed can be replayed.
            SeqVerdict::First => {
                // This pod's stream-health series, at zero until something happens.
                for def in [
                    &names::EVENTS_SEQUENCE_GAPS,
                    &names::EVENTS_PUBLISHER_RESTARTS,
                    &names::EVENTS_SUBSCRIBER_RECONNECTIONS,
                ] {
                    metrics::counter!(def.name, "pod" => pod.clone(), "pod_identifier" => pod.clone()).increment(0);
                }
                if msg.seq > 0
                    && let Some(endpoint) = &self.replay_endpoint
                {
                    self.replay(endpoint, &pod, &model, 0, msg.seq, handler, config)
                        .await;
                }
            }
            SeqVerdict::Gap { expected } => {
                metrics::counter!(names::EVENTS_SEQUENCE_GAPS.name, "pod" => pod.clone(), "pod_identifier" => pod.clone())
                    .increment(1);
                tracing::warn!(pod, expected, got = msg.seq, "gap in KV-event sequence");
                handler.on_gap(&pod, expected, msg.seq);
                if let Some(endpoint) = &self.replay_endpoint {
                    self.replay(endpoint, &pod, &model, expected, msg.seq, handler, config)
                        .await;
                }
            }
            SeqVerdict::Restart { last } => {
                metrics::counter!(names::EVENTS_PUBLISHER_RESTARTS.name, "pod" => pod.clone(), "pod_identifier" => pod.clone())
                    .increment(1);
                tracing::info!(
                    pod,
                    last,
                    got = msg.seq,
                    "KV-event publisher restarted; clearing its entries"
                );
                handler.on_restart(&pod, last, msg.seq);
            }
        }
        handler.on_batch(&pod, &model, msg.seq, &msg.batch);
    }

    #[allow(clippy::too_many_arguments)]
    async fn replay(
        &self,
        endpoint: &str,
        pod: &str,
        model: &str,
        from: u64,
        to: u64,
        handler: &Arc<dyn EventHandler>,
        config: &SubscriberConfig,
    ) {
        match tokio::time::timeout(
            config.replay_timeout,
            fetch_replay(endpoint, from, config.connect_timeout),
        )
        .await
        {
            Ok(Ok(batches)) => {
                let mut recovered = 0;
                for (seq, frames) in batches.into_iter().filter(|(s, _)| (from..to).contains(s)) {
                    match decode_message(&frames) {
                        Ok(msg) => {
                            handler.on_batch(pod, model, seq, &msg.batch);
                            recovered += 1;
                        }
                        Err(error) => {
                            metrics::counter!(names::EVENTS_DECODE_ERRORS.name, "reason" => error.reason()).increment(1);
                        }
                    }
                }
                tracing::info!(pod, from, to, recovered, "replayed KV events");
                handler.on_replay(pod, from, to, recovered);
            }
            Ok(Err(error)) => {
                metrics::counter!(names::EVENTS_ZMQ_ERRORS.name, "operation" => "replay")
                    .increment(1);
                tracing::warn!(pod, %error, "KV-event replay failed");
                handler.on_replay(pod, from, to, 0);
            }
            Err(_) => {
                metrics::counter!(names::EVENTS_ZMQ_ERRORS.name, "operation" => "replay")
                    .increment(1);
                tracing::warn!(pod, "KV-event replay timed out");
                handler.on_replay(pod, from, to, 0);
            }
        }
    }
}

/// The replay end marker's sequence (`-1` as a signed 64-bit big-endian value).
const REPLAY_END: u64 = u64::MAX;

/// Asks a vLLM replay (ROUTER) endpoint for every buffered batch from `from` on. Returns
/// `(seq, [topic, seq, payload])` per batch, in order.
async fn fetch_replay(
    endpoint: &str,
    from: u64,
    connect_timeout: Duration,
) -> Result<Vec<(u64, Vec<Bytes>)>, zeromq::ZmqError> {
    let mut options = SocketOptions::default();
    options.connect_timeout(connect_timeout);
    let mut socket = DealerSocket::with_options(options);
    socket.connect(endpoint).await?;
    let request = ZmqMessage::try_from(vec![
        Bytes::new(),
        Bytes::copy_from_slice(&from.to_be_bytes()),
    ])
    .map_err(|_| zeromq::ZmqError::NoMessage)?;
    socket.send(request).await?;
    let mut out = Vec::new();
    loop {
        let mut frames = socket.recv().await?.into_vec();
        // DEALER sees [b"", ...]: drop the delimiter.
        if frames.first().is_some_and(|f| f.is_empty()) {
            frames.remove(0);
        }
        // vLLM >= 0.27: [topic, seq, payload]; older: [seq, payload].
        let (topic, seq_frame, payload) = match frames.len() {
            3 => (frames[0].clone(), frames[1].clone(), frames[2].clone()),
            2 => (Bytes::new(), frames[0].clone(), frames[1].clone()),
            _ => continue,
        };
        let Ok(seq_bytes) = <[u8; 8]>::try_from(seq_frame.as_ref()) else {
            continue;
        };
        let seq = u64::from_be_bytes(seq_bytes);
        if seq == REPLAY_END {
            break;
        }
        out.push((seq, vec![topic, seq_frame, payload]));
    }
    let _ = socket.close().await;
    Ok(out)
}

async fn run_dialled(
    pod: PodEndpoint,
    config: SubscriberConfig,
    handler: Arc<dyn EventHandler>,
    cancel: CancellationToken,
) {
    let mut stream = PodStream {
        pod: Some(pod.pod.clone()),
        fallback_model: pod.model.clone(),
        replay_endpoint: pod.replay_endpoint.clone(),
        seq: SeqState::default(),
        logged_decode_error: false,
    };
    let mut backoff = config.backoff_min;
    let mut connections = 0u64;
    let mut failures = 0u64;
    let exit_reason = loop {
        let mut options = SocketOptions::default();
        options.connect_timeout(config.connect_timeout);
        let mut socket = SubSocket::with_options(options);
        if let Err(error) = socket.subscribe(&config.topic_filter).await {
            break format!("subscribe failed: {error}");
        }
        let connected = tokio::select! {
            _ = cancel.cancelled() => break "cancelled".to_owned(),
            r = socket.connect(&pod.endpoint) => r,
        };
        if let Err(error) = connected {
            metrics::counter!(names::EVENTS_ZMQ_ERRORS.name, "operation" => "connect").increment(1);
            if failures == 0 {
                tracing::warn!(pod = pod.pod, endpoint = pod.endpoint, %error, "cannot connect to KV-event publisher; retrying with backoff");
            }
            failures += 1;
            tokio::select! {
                _ = cancel.cancelled() => break "cancelled".to_owned(),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(config.backoff_max);
            continue;
        }
        if connections > 0 {
            metrics::counter!(names::EVENTS_SUBSCRIBER_RECONNECTIONS.name, "pod" => pod.pod.clone(), "pod_identifier" => pod.pod.clone()).increment(1);
        }
        connections += 1;
        failures = 0;
        backoff = config.backoff_min;
        tracing::info!(
            pod = pod.pod,
            endpoint = pod.endpoint,
            "subscribed to KV events"
        );
        metrics::gauge!(names::EVENTS_ACTIVE_SUBSCRIBERS.name).increment(1.0);
        let reason = loop {
            let received = tokio::select! {
                _ = cancel.cancelled() => break None,
                m = socket.recv() => m,
            };
            match received {
                Ok(message) => stream.handle(message.into_vec(), &handler, &config).await,
                Err(error) => {
                    metrics::counter!(names::EVENTS_ZMQ_ERRORS.name, "operation" => "recv")
                        .increment(1);
                    break Some(error.to_string());
                }
            }
        };
        metrics::gauge!(names::EVENTS_ACTIVE_SUBSCRIBERS.name).decrement(1.0);
        let _ = socket.close().await;
        match reason {
            None => break "cancelled".to_owned(),
            Some(error) => {
                tracing::warn!(pod = pod.pod, error, "KV-event socket failed; reconnecting")
            }
        }
    };
    tracing::debug!(pod = pod.pod, exit_reason, "KV-event subscription stopped");
}

async fn run_bound(
    endpoint: String,
    mut socket: SubSocket,
    workers: Vec<mpsc::Sender<Vec<Bytes>>>,
    cancel: CancellationToken,
) {
    let hasher = foldhash::fast::FixedState::with_seed(0x6b76);
    metrics::gauge!(names::EVENTS_ACTIVE_SUBSCRIBERS.name).increment(1.0);
    let exit_reason = loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => break "cancelled".to_owned(),
            m = socket.recv() => m,
        };
        let frames = match received {
            Ok(m) => m.into_vec(),
            Err(error) => {
                metrics::counter!(names::EVENTS_ZMQ_ERRORS.name, "operation" => "recv")
                    .increment(1);
                tracing::warn!(endpoint, %error, "KV-event receive failed");
                continue;
            }
        };
        // Route by pod so that one pod's messages stay in order on one worker.
        let pod = frames
            .first()
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(parse_topic)
            .map(|(p, _)| p);
        let w = (hasher.hash_one(pod.unwrap_or("")) % workers.len() as u64) as usize;
        if workers[w].send(frames).await.is_err() {
            break "worker stopped".to_owned();
        }
    };
    metrics::gauge!(names::EVENTS_ACTIVE_SUBSCRIBERS.name).decrement(1.0);
    let _ = socket.close().await;
    tracing::debug!(endpoint, exit_reason, "bound KV-event socket stopped");
}

async fn run_worker(
    worker: usize,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
    handler: Arc<dyn EventHandler>,
    cancel: CancellationToken,
) {
    let config = SubscriberConfig::default();
    let mut streams: HashMap<String, PodStream> = HashMap::new();
    let mut unknown = PodStream {
        pod: None,
        fallback_model: String::new(),
        replay_endpoint: None,
        seq: SeqState::default(),
        logged_decode_error: false,
    };
    let exit_reason = loop {
        let frames = tokio::select! {
            _ = cancel.cancelled() => break "cancelled",
            f = rx.recv() => match f { Some(f) => f, None => break "socket closed" },
        };
        let pod = frames
            .first()
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(parse_topic)
            .map(|(p, _)| p.to_owned());
        match pod {
            // The stream is keyed by pod but takes identity from the topic (pod: None), so it
            // also learns the model per message.
            Some(pod) => {
                let stream = streams.entry(pod).or_insert_with(|| PodStream {
                    pod: None,
                    fallback_model: String::new(),
                    replay_endpoint: None,
                    seq: SeqState::default(),
                    logged_decode_error: false,
                });
                stream.handle(frames, &handler, &config).await;
            }
            None => unknown.handle(frames, &handler, &config).await,
        }
    };
    tracing::debug!(worker, exit_reason, "KV-event worker stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_verdicts() {
        let mut s = SeqState::default();
        assert_eq!(s.check(5), SeqVerdict::First);
        assert_eq!(s.check(6), SeqVerdict::Next);
        assert_eq!(s.check(9), SeqVerdict::Gap { expected: 7 });
        assert_eq!(s.check(0), SeqVerdict::Restart { last: 9 });
        assert_eq!(s.check(1), SeqVerdict::Next);
        assert_eq!(s.check(1), SeqVerdict::Restart { last: 1 });
    }
}
