//! ZMQ subscription to the KV events of the pods of a pool.
//!
//! The subscriber follows a set of **known pods** ([`Subscriber::add_pod`]), each reached one of
//! two ways:
//!
//! - **Dialled** (`endpoint` set): one SUB socket per pod, connected to the pod's PUB endpoint
//!   (vLLM's default `tcp://*:5557` binds). libzmq reconnects by itself, from 100 ms up to a 1 s
//!   cap; a monitor on the socket reports each reconnection, after which the next batch is
//!   checked for a restart. The pod's identity is the name it was added under.
//! - **Bound** (`endpoint` unset, after [`Subscriber::bind`]): pods connect to one SUB socket
//!   (vLLM with `endpoint: tcp://<epp>:5557`) and are told apart by topic `kv@<pod>@<model>`.
//!   Only topics naming a known, non-dialled pod are applied: `<pod>` is its `ip:port`, or just
//!   its IP when exactly one known pod has that IP (llm-d's usual `kv@<ip>@<model>`). Anything
//!   else is counted (`llm_d_epp_kv_cache_events_rejected_messages_total{reason}`), warned about
//!   once per topic, and dropped. With [`SubscriberConfig::verify_peer_address`] the sender's IP
//!   must also be the pod's.
//!
//! Either way each pod's replay (ROUTER) endpoint, when it has one, is asked for everything it
//! holds as soon as the pod is followed, and again for gaps and restarts; `stream.rs` says how a
//! gap is told from a restart. Per-pod order is preserved: each pod has its own task; pods
//! are handled in parallel. Undecodable messages are counted and skipped. Every loop watches a
//! cancellation token and logs why it stopped.
//!
//! Every socket (SUB, the replay DEALER) enforces a maximum message size before allocating
//! ([`crate::transport`]).

mod pods;
mod replay;
mod stream;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use pods::{KnownPods, RejectReason, host_of};
pub use replay::{
    REPLAY_END, ReplayAnswer, ReplayError, ReplayFrame, fetch_replay, parse_replay_frame,
};

use crate::events::{DecodeError, EventBatch, parse_topic};
use crate::kv::KvIndex;
use crate::transport::{MonitorEvent, Received, SocketError, SocketOptions, SocketType, ZmqSocket};
use llmd_telemetry::names::kv_cache as names;
use stream::PodStream;

/// Receives what the subscriber decodes. [`KvIndex`] implements it; `llmd-kv listen` prints.
pub trait EventHandler: Send + Sync + 'static {
    /// A decoded batch from `pod`, in sequence order.
    fn on_batch(&self, pod: &str, model: &str, seq: u64, batch: &EventBatch);
    /// Batches `expected..got` of `pod` were lost (before any replay).
    fn on_gap(&self, _pod: &str, _expected: u64, _got: u64) {}
    /// `pod`'s publisher restarted (last batch `last` of the old instance, `got` the first seen
    /// of the new one): its entries must go.
    fn on_restart(&self, _pod: &str, _last: u64, _got: u64) {}
    /// A message from `pod` (or `"?"` when the topic is unreadable) could not be decoded.
    fn on_decode_error(&self, _pod: &str, _error: &DecodeError) {}
    /// A replay for `pod` covering `from..to` returned `recovered` batches.
    fn on_replay(&self, _pod: &str, _from: u64, _to: u64, _recovered: u64) {}
    /// A message on the bound socket was not applied.
    fn on_rejected(&self, _topic: &str, _reason: RejectReason) {}
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
    /// TCP connect timeout of one attempt.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay (1 s: a restarted pod is reconnected within about a second).
    pub backoff_max: Duration,
    /// Longest a replay may take.
    pub replay_timeout: Duration,
    /// Messages queued per bound-mode pod while its events are applied or replayed.
    pub queue_capacity: usize,
    /// Largest message frame accepted; larger ones drop the connection before allocation.
    pub max_message_bytes: usize,
    /// ZMTP heartbeat interval on dialled sockets (dead peers noticed after 3).
    pub heartbeat: Option<Duration>,
    /// Bound socket: also accept topics naming unknown pods (each becomes a pod). Off in the
    /// EPP; `llmd-kv listen --bind` turns it on.
    pub accept_unknown_topics: bool,
    /// Bound socket: the sender's IP address must be the pod's (needs pods known by IP and no
    /// source NAT between pods and the subscriber).
    pub verify_peer_address: bool,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        Self {
            topic_filter: "kv@".into(),
            connect_timeout: Duration::from_secs(2),
            backoff_min: crate::transport::DEFAULT_RECONNECT_INTERVAL,
            backoff_max: crate::transport::DEFAULT_RECONNECT_INTERVAL_MAX,
            replay_timeout: Duration::from_secs(2),
            queue_capacity: 4096,
            max_message_bytes: crate::transport::DEFAULT_MAX_MESSAGE_BYTES,
            heartbeat: Some(crate::transport::DEFAULT_HEARTBEAT),
            accept_unknown_topics: false,
            verify_peer_address: false,
        }
    }
}

impl SubscriberConfig {
    /// The options every socket of this subscriber gets.
    pub fn socket_options(&self) -> SocketOptions {
        SocketOptions {
            max_message_bytes: self.max_message_bytes,
            reconnect_interval: self.backoff_min,
            reconnect_interval_max: self.backoff_max,
            connect_timeout: self.connect_timeout,
            heartbeat: self.heartbeat,
            ..Default::default()
        }
    }
}

/// A pod to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEndpoint {
    /// The pod's identity in the index: `ip:port` of its serving port (IPv6 in brackets).
    pub pod: String,
    /// Its ZMQ PUB endpoint to dial, e.g. `tcp://10.0.0.7:5557`; `None` when the pod connects
    /// to the bound socket.
    pub endpoint: Option<String>,
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
        source: SocketError,
    },
    /// The socket could not be made or configured.
    #[error(transparent)]
    Socket(#[from] SocketError),
}

/// A followed pod.
struct PodEntry {
    token: CancellationToken,
    /// Bound mode: where the bound socket's reader sends this pod's messages.
    tx: Option<mpsc::Sender<Vec<Bytes>>>,
    /// Bound mode, before [`Subscriber::bind`]: the task's inputs, started on bind.
    pending: Option<(mpsc::Receiver<Vec<Bytes>>, PodStream)>,
}

struct Shared {
    handler: Arc<dyn EventHandler>,
    config: SubscriberConfig,
    cancel: CancellationToken,
    pods: RwLock<KnownPods<PodEntry>>,
    bound: Mutex<bool>,
}

/// Subscribes to pods and hands their events to an [`EventHandler`].
pub struct Subscriber {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("config", &self.shared.config)
            .field("pods", &self.shared.pods.read().len())
            .finish()
    }
}

impl Subscriber {
    /// A subscriber feeding `handler`. Nothing is followed until [`Self::add_pod`] or
    /// [`Self::bind`].
    pub fn new(handler: Arc<dyn EventHandler>, config: SubscriberConfig) -> Self {
        // Error series exist at zero from the start, so that dashboards and alerts read 0, not
        // "no data", on a healthy stream.
        for reason in DecodeError::REASONS
            .into_iter()
            .chain(["malformed_event", "replay_frame"])
        {
            metrics::counter!(names::EVENTS_DECODE_ERRORS.name, "reason" => reason).increment(0);
        }
        for reason in ["unknown_event", "unknown_field"] {
            metrics::counter!(names::EVENTS_SKIPPED.name, "reason" => reason).increment(0);
        }
        for operation in ["connect", "handshake", "recv", "replay"] {
            metrics::counter!(names::EVENTS_ZMQ_ERRORS.name, "operation" => operation).increment(0);
        }
        for reason in RejectReason::ALL {
            metrics::counter!(names::EVENTS_REJECTED.name, "reason" => reason.as_str())
                .increment(0);
        }
        Self {
            shared: Arc::new(Shared {
                handler,
                config,
                cancel: CancellationToken::new(),
                pods: RwLock::new(KnownPods::default()),
                bound: Mutex::new(false),
            }),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Follows `pod` (replacing an earlier one of the same name): dials it when it has an
    /// endpoint, else accepts its topic on the bound socket. Its replay endpoint is asked at
    /// once for what it holds. Must be called inside a tokio runtime.
    pub fn add_pod(&self, pod: PodEndpoint) {
        let shared = &self.shared;
        let token = shared.cancel.child_token();
        let stream = PodStream::new(
            pod.pod.clone(),
            pod.model.clone(),
            pod.replay_endpoint.clone(),
            shared.handler.clone(),
            shared.config.clone(),
        );
        let entry = match &pod.endpoint {
            Some(endpoint) => {
                tokio::spawn(run_dialled(
                    endpoint.clone(),
                    stream,
                    shared.config.clone(),
                    token.clone(),
                ));
                PodEntry {
                    token,
                    tx: None,
                    pending: None,
                }
            }
            None => {
                let (tx, rx) = mpsc::channel(shared.config.queue_capacity.max(1));
                let bound = *shared.bound.lock();
                let pending = if bound {
                    tokio::spawn(run_bound_pod(rx, stream, token.clone()));
                    None
                } else {
                    Some((rx, stream))
                };
                PodEntry {
                    token,
                    tx: Some(tx),
                    pending,
                }
            }
        };
        let dialled = pod.endpoint.is_some();
        if let Some(old) = shared.pods.write().insert(&pod.pod, dialled, entry) {
            old.token.cancel();
        }
    }

    /// Stops following `pod`. Its entries stay in the index until the caller removes the pod
    /// there ([`KvIndex::remove_pod`]).
    pub fn remove_pod(&self, pod: &str) -> bool {
        match self.shared.pods.write().remove(pod) {
            Some(entry) => {
                entry.token.cancel();
                true
            }
            None => false,
        }
    }

    /// Names of the followed pods.
    pub fn pods(&self) -> Vec<String> {
        self.shared.pods.read().ids().cloned().collect()
    }

    /// Names of the pods whose events are dialled.
    pub fn dialled_pods(&self) -> Vec<String> {
        let pods = self.shared.pods.read();
        pods.ids()
            .filter(|id| pods.get(id).is_some_and(|e| e.tx.is_none()))
            .cloned()
            .collect()
    }

    /// Binds a SUB socket that pods connect to; returns the bound endpoint (with the real port
    /// when `:0` was asked for). Bound-mode pods added before are followed from now on.
    pub async fn bind(&self, endpoint: &str) -> Result<String, SubscriberError> {
        let config = &self.shared.config;
        let mut socket = ZmqSocket::new(SocketType::SUB, &config.socket_options())?;
        socket.subscribe(config.topic_filter.as_bytes())?;
        let bound = socket
            .bind(endpoint)
            .map_err(|source| SubscriberError::Bind {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        let mut tasks = self.tasks.lock();
        {
            *self.shared.bound.lock() = true;
            let mut pods = self.shared.pods.write();
            let ids: Vec<String> = pods.ids().cloned().collect();
            for id in ids {
                if let Some(entry) = pods.get_mut(&id)
                    && let Some((rx, stream)) = entry.pending.take()
                {
                    tasks.push(tokio::spawn(run_bound_pod(rx, stream, entry.token.clone())));
                }
            }
        }
        tasks.push(tokio::spawn(run_bound(
            bound.clone(),
            socket,
            self.shared.clone(),
        )));
        Ok(bound)
    }

    /// Stops every subscription.
    pub fn shutdown(&self) {
        self.shared.cancel.cancel();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// Monitor events a dialled socket reports.
const MONITORED: u16 = MonitorEvent::CONNECTED
    | MonitorEvent::CONNECT_RETRIED
    | MonitorEvent::DISCONNECTED
    | MonitorEvent::HANDSHAKE_SUCCEEDED
    | MonitorEvent::HANDSHAKE_FAILED_NO_DETAIL
    | MonitorEvent::HANDSHAKE_FAILED_PROTOCOL;

async fn run_dialled(
    endpoint: String,
    mut stream: PodStream,
    config: SubscriberConfig,
    cancel: CancellationToken,
) {
    let pod = stream.pod.clone();
    let setup = || -> Result<(ZmqSocket, ZmqSocket), SocketError> {
        let mut socket = ZmqSocket::new(SocketType::SUB, &config.socket_options())?;
        socket.subscribe(config.topic_filter.as_bytes())?;
        let monitor = socket.monitor(MONITORED)?;
        socket.connect(&endpoint)?;
        Ok((socket, monitor))
    };
    let (mut socket, mut monitor) = match setup() {
        Ok(s) => s,
        Err(error) => {
            metrics::counter!(names::EVENTS_ZMQ_ERRORS.name, "operation" => "connect").increment(1);
            tracing::error!(pod, endpoint, %error, "cannot subscribe to KV events");
            return;
        }
    };
    metrics::gauge!(names::EVENTS_ACTIVE_SUBSCRIBERS.name).increment(1.0);
    // What the pod published before we followed it, from its replay socket (live messages
    // queue on the socket meanwhile).
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = stream.start() => {}
    }
    let mut handshakes = 0u64;
    let mut retries = 0u64;
    let mut monitor_alive = true;
    // libzmq reconnects after a lost connection, but gives a session up for good after a
    // protocol error (a peer that sent garbage, an oversized frame): when neither a retry nor a
    // new connection follows a failure, dial again ourselves.
    let mut watchdog: Option<tokio::time::Instant> = None;
    let patience = config.backoff_max + Duration::from_millis(500);
    let exit_reason = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break "cancelled".to_owned(),
            _ = sleep_until(watchdog), if watchdog.is_some() => {
                watchdog = None;
                tracing::info!(pod, endpoint, "KV-event connection given up after a protocol error; dialling again");
                let _ = socket.disconnect(&endpoint);
                if let Err(error) = socket.connect(&endpoint) {
                    break format!("cannot dial again: {error}");
                }
            }
            // Monitor first: a reconnection must be known before the batch that follows it.
            event = monitor.recv(), if monitor_alive => match event {
                Ok(m) => {
                    let Some(event) = MonitorEvent::parse(&m.frames) else { continue };
                    match event.event {
                        MonitorEvent::HANDSHAKE_SUCCEEDED => {
                            if handshakes == 0 {
                                tracing::info!(pod, endpoint, "subscribed to KV events");
                            } else {
                                metrics::counter!(names::EVENTS_SUBSCRIBER_RECONNECTIONS.name, "pod" => pod.clone(), "pod_identifier" => pod.clone()).increment(1);
                                tracing::info!(pod, endpoint, "KV-event socket reconnected; checking the next batch for a restart");
                                stream.reconnected = true;
                            }
                            handshakes += 1;
                            retries = 0;
                            watchdog = None;
                        }
                        MonitorEvent::CONNECTED => watchdog = None,
                        MonitorEvent::CONNECT_RETRIED => {
                            watchdog = None;
                            metrics::counter!(names::EVENTS_ZMQ_ERRORS.name, "operation" => "connect").increment(1);
                            if retries == 0 {
                                tracing::warn!(pod, endpoint, retry_ms = event.value, "cannot connect to KV-event publisher; retrying");
                            }
                            retries += 1;
                        }
                        MonitorEvent::DISCONNECTED => {
                            tracing::info!(pod, endpoint, "KV-event publisher disconnected; reconnecting");
                            watchdog = Some(tokio::time::Instant::now() + patience);
                        }
                        MonitorEvent::HANDSHAKE_FAILED_NO_DETAIL | MonitorEvent::HANDSHAKE_FAILED_PROTOCOL => {
                            watchdog = Some(tokio::time::Instant::now() + patience);
                            metrics::counter!(names::EVENTS_ZMQ_ERRORS.name, "operation" => "handshake").increment(1);
                            tracing::warn!(pod, endpoint, errno = event.value, "KV-event publisher failed the ZMTP handshake (bad greeting or oversized frame); reconnecting");
                        }
                        _ => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(pod, %error, "KV-event socket monitor failed; reconnections go unnoticed");
                    monitor_alive = false;
                }
            },
            received = socket.recv() => match received {
                Ok(m) => stream.on_message(m.frames).await,
                Err(error) => {
                    metrics::counter!(names::EVENTS_ZMQ_ERRORS.name, "operation" => "recv").increment(1);
                    break format!("receive failed: {error}");
                }
            },
        }
    };
    metrics::gauge!(names::EVENTS_ACTIVE_SUBSCRIBERS.name).decrement(1.0);
    tracing::debug!(pod, exit_reason, "KV-event subscription stopped");
}

/// Sleeps until `at` (forever when `None`; the branch is disabled then anyway).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn run_bound_pod(
    mut rx: mpsc::Receiver<Vec<Bytes>>,
    mut stream: PodStream,
    cancel: CancellationToken,
) {
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = stream.start() => {}
    }
    let exit_reason = loop {
        tokio::select! {
            _ = cancel.cancelled() => break "cancelled",
            frames = rx.recv() => match frames {
                Some(frames) => stream.on_message(frames).await,
                None => break "socket closed",
            },
        }
    };
    tracing::debug!(pod = stream.pod, exit_reason, "KV-event stream stopped");
}

/// Topics logged as rejected (each once); past this many, further ones are only counted.
const MAX_LOGGED_TOPICS: usize = 1024;
/// Pods created from topics in accept-any mode.
const MAX_DYNAMIC_PODS: usize = 1024;

async fn run_bound(endpoint: String, mut socket: ZmqSocket, shared: Arc<Shared>) {
    let cancel = shared.cancel.clone();
    let config = &shared.config;
    metrics::gauge!(names::EVENTS_ACTIVE_SUBSCRIBERS.name).increment(1.0);
    let mut logged: HashSet<String> = HashSet::new();
    let mut logged_topic_error = false;
    let mut dynamic: HashMap<String, mpsc::Sender<Vec<Bytes>>> = HashMap::new();
    let exit_reason = loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => break "cancelled".to_owned(),
            m = socket.recv() => m,
        };
        let Received {
            frames,
            peer_address,
            ..
        } = match received {
            Ok(m) => m,
            Err(error) => {
                metrics::counter!(names::EVENTS_ZMQ_ERRORS.name, "operation" => "recv")
                    .increment(1);
                tracing::warn!(endpoint, %error, "KV-event receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let topic = frames
            .first()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        let Some((segment, model)) = parse_topic(&topic) else {
            let error = DecodeError::Topic(topic.clone());
            metrics::counter!(names::EVENTS_DECODE_ERRORS.name, "reason" => error.reason())
                .increment(1);
            if !logged_topic_error {
                tracing::warn!(%error, "KV-event message without a pod in its topic (counted; further ones not logged)");
                logged_topic_error = true;
            }
            shared.handler.on_decode_error("?", &error);
            continue;
        };
        let routed = {
            let pods = shared.pods.read();
            pods.resolve(segment).and_then(|(id, entry)| {
                if config.verify_peer_address
                    && peer_address.as_deref().map(host_of).as_deref() != pods.host(id)
                {
                    return Err(RejectReason::PeerAddress);
                }
                entry.tx.clone().ok_or(RejectReason::DialledPod)
            })
        };
        let tx = match routed {
            Ok(tx) => tx,
            Err(RejectReason::UnknownPod) if config.accept_unknown_topics => {
                match dynamic.get(segment) {
                    Some(tx) => tx.clone(),
                    None if dynamic.len() < MAX_DYNAMIC_PODS => {
                        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
                        let stream = PodStream::new(
                            segment.to_owned(),
                            model.to_owned(),
                            None,
                            shared.handler.clone(),
                            config.clone(),
                        );
                        tokio::spawn(run_bound_pod(rx, stream, cancel.child_token()));
                        dynamic.insert(segment.to_owned(), tx.clone());
                        tx
                    }
                    None => {
                        reject(
                            &shared,
                            &mut logged,
                            &topic,
                            RejectReason::UnknownPod,
                            &peer_address,
                        );
                        continue;
                    }
                }
            }
            Err(reason) => {
                reject(&shared, &mut logged, &topic, reason, &peer_address);
                continue;
            }
        };
        // Back-pressure: a pod whose queue is full (its replay is running) holds the socket.
        let _ = tx.send(frames).await;
    };
    metrics::gauge!(names::EVENTS_ACTIVE_SUBSCRIBERS.name).decrement(1.0);
    tracing::debug!(endpoint, exit_reason, "bound KV-event socket stopped");
}

fn reject(
    shared: &Shared,
    logged: &mut HashSet<String>,
    topic: &str,
    reason: RejectReason,
    peer: &Option<String>,
) {
    metrics::counter!(names::EVENTS_REJECTED.name, "reason" => reason.as_str()).increment(1);
    if logged.len() < MAX_LOGGED_TOPICS && logged.insert(format!("{}\0{topic}", reason.as_str())) {
        tracing::warn!(
            topic,
            reason = reason.as_str(),
            peer = peer.as_deref().unwrap_or("?"),
            "KV events under a topic that names no pod this subscriber follows: not applied (counted; this topic is logged once)"
        );
    }
    shared.handler.on_rejected(topic, reason);
}
