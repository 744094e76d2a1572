//! Flow control (llm-d's `flowControl` feature gate): while the pool is saturated, requests
//! wait in the EPP instead of piling up in the model servers' queues, and leave it by priority,
//! fairly among tenants, as capacity frees.
//!
//! **Where requests wait.** A request with a body, once parsed and classified
//! ([`crate::objectives`]: its InferenceObjective's priority and its fairness id), is
//! *admitted* before the scheduler runs: it joins its priority's *band*, inside the band its
//! *flow* (one FIFO queue per fairness id), and its ext_proc stream's task awaits the outcome
//! (an async wait: no thread is held). Bands are strict: nothing leaves a band while a higher
//! one holds a request. Within a band the fairness policy picks the flow:
//! `round-robin-fairness-policy` (flows in turn) or `global-strict-fairness-policy` (the
//! band's oldest request; GIE's default). Within a flow, first come first served
//! (`fcfs-ordering-policy`).
//!
//! **What wakes them.** One dispatcher task per EPP runs a *dispatch cycle* whenever anything
//! that can free capacity happens: a request joins the queue, the in-flight accounting
//! releases load ([`crate::inflight::InFlight::released`]: a response's first token or its
//! end, a stream dropped), a scrape lands or the pod set changes
//! ([`crate::endpoints::Pool::changed`]), or a dispatched request's decision is counted in
//! flight. There is no poll. A cycle releases the next request while the pool is not
//! saturated: the configured saturation detector over the pool's endpoints (their scraped
//! load corrected by what this EPP routed since), plus the requests released but not yet
//! scheduled (each counted as one more waiting request spread over the pool), so a cycle
//! never releases more than the pool can take before the scheduler has placed any.
//!
//! **How they leave otherwise.** A band full (its `maxRequests` or `maxBytes`) refuses a new
//! request: 429 `rejected-saturated`. The whole queue full (the section's global limits)
//! first makes room by displacing the newest request of the lowest band below the newcomer's
//! priority (it gets the same 429); only when there is none is the newcomer refused. A
//! request still queued after its TTL (`defaultRequestTTL`, or `noEndpointRequestTTL` when it
//! arrived while the pool had no endpoint) gets 503 `rejected-ttl-expired` (or
//! `rejected-no-endpoints`). A client that disconnects (the data plane resets the ext_proc
//! stream) leaves the queue at once. Every outcome is counted by GIE's and llm-d's
//! `flow_control_*` metrics.
//!
//! Sheddable requests (priority < 0) queue like the others, in their own bands, as in llm-d:
//! with the gate on there is no immediate shedding on saturation. Without the gate nothing
//! here runs and legacy admission applies (the scheduler refuses sheddable requests with 429
//! while the pool is saturated).

pub mod settings;

pub use settings::{BandSettings, Fairness, Settings};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use llmd_telemetry::names::epp as names;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::endpoints::{Endpoint, Pool};
use crate::labels::{fairness_label, model_label};
use crate::objectives::RequestClass;
use crate::scheduling::PickError;
use crate::scheduling::saturation::UtilizationDetector;

/// How a queued request ended (GIE's `QueueOutcome` names, the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Released to the scheduler.
    Dispatched,
    /// Its band or the queue was full.
    RejectedCapacity,
    /// Pushed out of a full queue by a higher-priority request.
    EvictedDisplaced,
    /// Waited past its TTL.
    EvictedTtl,
    /// Waited past its TTL while the pool had no endpoint.
    EvictedNoEndpoints,
    /// The client went away.
    EvictedContextCancelled,
    /// The EPP is stopping.
    RejectedOther,
}

impl Outcome {
    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Dispatched => "Dispatched",
            Outcome::RejectedCapacity => "RejectedCapacity",
            Outcome::EvictedDisplaced => "EvictedDisplaced",
            Outcome::EvictedTtl => "EvictedTTL",
            Outcome::EvictedNoEndpoints => "EvictedNoEndpoints",
            Outcome::EvictedContextCancelled => "EvictedContextCancelled",
            Outcome::RejectedOther => "RejectedOther",
        }
    }
}

/// What a request brings to the queue.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Its priority and fairness id.
    pub class: &'a RequestClass,
    /// Its size (the body), for the byte capacities.
    pub bytes: u64,
    /// Its model (a metric label).
    pub model: &'a str,
}

/// A released request, held until its decision is counted in flight (drop it then): until
/// then it counts against the pool's capacity on its own.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut s = self.inner.state.lock();
            s.pending = s.pending.saturating_sub(1);
        }
        self.inner.changed.notify_one();
    }
}

/// The flow controller of one EPP.
#[derive(Debug)]
pub struct FlowControl {
    inner: Arc<Inner>,
    stop: CancellationToken,
    started: OnceLock<()>,
}

impl Drop for FlowControl {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    pool: Arc<Pool>,
    detector: UtilizationDetector,
    pool_name: OnceLock<String>,
    state: Mutex<State>,
    /// Serializes dispatch cycles (a cycle reads the saturation, then releases).
    cycle: Mutex<()>,
    /// Woken when a request joins the queue or a released one is counted in flight.
    changed: Notify,
}

/// Label values of a queued request.
#[derive(Debug)]
struct Labels {
    fairness: String,
    priority: String,
    model: String,
}

#[derive(Debug)]
struct Item {
    id: u64,
    bytes: u64,
    tx: oneshot::Sender<Released>,
    labels: Arc<Labels>,
}

/// What a waiting request receives.
#[derive(Debug)]
enum Released {
    Dispatched(Permit),
    Displaced,
}

#[derive(Debug)]
struct Band {
    settings: BandSettings,
    flows: HashMap<String, VecDeque<Item>>,
    /// Flows with requests, in round-robin order.
    ring: VecDeque<String>,
    requests: u64,
    bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    bands: BTreeMap<i32, Band>,
    requests: u64,
    bytes: u64,
    /// Released, not yet counted in flight.
    pending: u64,
    next_id: u64,
    /// When each priority last had a request (the usage-limit policy's active priorities).
    seen: BTreeMap<i32, Instant>,
}

impl FlowControl {
    /// A flow controller over `pool`, releasing while `detector` says the pool has room.
    pub fn new(settings: Settings, pool: Arc<Pool>, detector: UtilizationDetector) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                pool,
                detector,
                pool_name: OnceLock::new(),
                state: Mutex::new(State::default()),
                cycle: Mutex::new(()),
                changed: Notify::new(),
            }),
            stop: CancellationToken::new(),
            started: OnceLock::new(),
        }
    }

    /// The `inference_pool` label value (set once; empty until then).
    pub fn set_pool_name(&self, name: &str) {
        let _ = self.inner.pool_name.set(name.to_owned());
    }

    /// When `shutdown` is cancelled (the EPP stops), every queued request is answered 503
    /// `rejected-shutting-down` at once instead of waiting out its TTL past the drain.
    pub fn drain_on(&self, shutdown: CancellationToken) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            let items: Vec<Item> = {
                let mut s = inner.state.lock();
                let mut items = Vec::new();
                while let Some(item) = s.pop_next() {
                    items.push(item);
                }
                items
            };
            if !items.is_empty() {
                tracing::info!(
                    queued = items.len(),
                    "EPP stopping: queued requests refused"
                );
            }
            for item in items {
                inner.gauges(&item.labels, item.bytes, -1.0);
                // Dropping the sender answers the waiter `ShuttingDown`.
                drop(item.tx);
            }
        });
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Requests queued now.
    pub fn queued(&self) -> u64 {
        self.inner.state.lock().requests
    }

    /// Waits until the request may be scheduled (`Ok`, with the permit to drop once its
    /// decision is counted in flight), or until it is refused or expires. A client that leaves
    /// drops the future: cancel-safe, it takes the request out of the queue (counted
    /// `EvictedContextCancelled`).
    pub async fn admit(&self, req: Request<'_>) -> Result<Permit, PickError> {
        self.started.get_or_init(|| {
            tokio::spawn(run(self.inner.clone(), self.stop.clone()));
        });
        let inner = &self.inner;
        let enqueue_started = Instant::now();
        let labels = Arc::new(Labels {
            fairness: fairness_label(&req.class.fairness_id),
            priority: req.class.priority.to_string(),
            model: model_label(req.model),
        });
        let no_endpoints = inner.pool.snapshot().is_empty();
        let ttl = if no_endpoints {
            inner.settings.no_endpoint_ttl
        } else {
            inner.settings.request_ttl
        };
        let (tx, mut rx) = oneshot::channel();
        let entered = inner.enqueue(req, tx, &labels);
        let enqueue_outcome = if entered.is_some() {
            "Enqueued"
        } else {
            Outcome::RejectedCapacity.label()
        };
        for def in [
            &names::FLOW_CONTROL_ENQUEUE_DURATION,
            &names::LLMD_FLOW_CONTROL_ENQUEUE_DURATION,
        ] {
            metrics::histogram!(def.name, "fairness_id" => labels.fairness.clone(), "priority" => labels.priority.clone(), "outcome" => enqueue_outcome)
                .record(enqueue_started.elapsed().as_secs_f64());
        }
        let Some(id) = entered else {
            inner.finished(&labels, Outcome::RejectedCapacity, enqueue_started);
            return Err(PickError::QueueFull);
        };
        let mut waiting = Waiting {
            inner: inner.clone(),
            priority: req.class.priority,
            flow: req.class.fairness_id.clone(),
            id,
            labels,
            since: enqueue_started,
            done: false,
        };
        // Released at once when the pool has room.
        inner.dispatch_cycle();
        let expiry = async {
            match ttl {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            r = &mut rx => waiting.received(r),
            () = expiry => {
                if waiting.leave() {
                    let outcome = if no_endpoints { Outcome::EvictedNoEndpoints } else { Outcome::EvictedTtl };
                    waiting.finish(outcome);
                    Err(PickError::QueueTimeout { no_endpoints })
                } else {
                    // Released at the same moment: take it.
                    waiting.received(rx.await)
                }
            }
        }
    }
}

/// A request in the queue, taken out when dropped (its client's stream went away).
struct Waiting {
    inner: Arc<Inner>,
    priority: i32,
    flow: String,
    id: u64,
    labels: Arc<Labels>,
    since: Instant,
    done: bool,
}

impl Waiting {
    /// Takes the request out of the queue; false when it had already left it.
    fn leave(&self) -> bool {
        let removed = self
            .inner
            .state
            .lock()
            .remove(self.priority, &self.flow, self.id);
        match removed {
            Some(item) => {
                self.inner.gauges(&item.labels, item.bytes, -1.0);
                true
            }
            None => false,
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        self.inner.finished(&self.labels, outcome, self.since);
    }

    fn received(
        &mut self,
        r: Result<Released, oneshot::error::RecvError>,
    ) -> Result<Permit, PickError> {
        match r {
            Ok(Released::Dispatched(p)) => {
                self.finish(Outcome::Dispatched);
                Ok(p)
            }
            Ok(Released::Displaced) => {
                self.finish(Outcome::EvictedDisplaced);
                Err(PickError::QueueFull)
            }
            Err(_) => {
                self.finish(Outcome::RejectedOther);
                Err(PickError::ShuttingDown)
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.done {
            self.leave();
            self.finish(Outcome::EvictedContextCancelled);
        }
    }
}

impl Inner {
    fn pool_name(&self) -> String {
        self.pool_name.get().cloned().unwrap_or_default()
    }

    /// Counts a final outcome.
    fn finished(&self, labels: &Labels, outcome: Outcome, since: Instant) {
        let pool = self.pool_name();
        let waited = since.elapsed().as_secs_f64();
        for def in [
            &names::FLOW_CONTROL_QUEUE_DURATION,
            &names::LLMD_FLOW_CONTROL_QUEUE_DURATION,
        ] {
            metrics::histogram!(def.name,
                "fairness_id" => labels.fairness.clone(),
                "priority" => labels.priority.clone(),
                "outcome" => outcome.label(),
                "inference_pool" => pool.clone(),
                "model_name" => labels.model.clone(),
                "target_model_name" => labels.model.clone())
            .record(waited);
        }
        metrics::counter!(names::LLMD_FLOW_CONTROL_REQUESTS.name,
            "fairness_id" => labels.fairness.clone(),
            "priority" => labels.priority.clone(),
            "outcome" => outcome.label(),
            "inference_pool" => pool)
        .increment(1);
    }

    /// Moves the queue gauges of one request by `sign` (1 in, -1 out).
    fn gauges(&self, labels: &Labels, bytes: u64, sign: f64) {
        let pool = self.pool_name();
        let l = [
            ("fairness_id", labels.fairness.clone()),
            ("priority", labels.priority.clone()),
            ("inference_pool", pool),
            ("model_name", labels.model.clone()),
            ("target_model_name", labels.model.clone()),
        ];
        for def in [
            &names::FLOW_CONTROL_QUEUE_SIZE,
            &names::LLMD_FLOW_CONTROL_QUEUE_SIZE,
        ] {
            metrics::gauge!(def.name, &l).increment(sign);
        }
        for def in [
            &names::FLOW_CONTROL_QUEUE_BYTES,
            &names::LLMD_FLOW_CONTROL_QUEUE_BYTES,
        ] {
            metrics::gauge!(def.name, &l).increment(sign * bytes as f64);
        }
    }

    /// Puts a request in its band and flow (making room by displacement when the queue is
    /// full); `None` when it cannot enter.
    fn enqueue(
        &self,
        req: Request<'_>,
        tx: oneshot::Sender<Released>,
        labels: &Arc<Labels>,
    ) -> Option<u64> {
        let priority = req.class.priority;
        let settings = self.settings.band(priority).clone();
        let mut s = self.state.lock();
        {
            let band = s.bands.get(&priority);
            let (requests, bytes) = band.map_or((0, 0), |b| (b.requests, b.bytes));
            if settings.max_requests.is_some_and(|m| requests + 1 > m)
                || bytes + req.bytes > settings.max_bytes
            {
                return None;
            }
        }
        let full = |s: &State| {
            self.settings
                .max_requests
                .is_some_and(|m| s.requests + 1 > m)
                || self
                    .settings
                    .max_bytes
                    .is_some_and(|m| s.bytes + req.bytes > m)
        };
        while full(&s) {
            match s.displace_below(priority) {
                Some(item) => {
                    self.gauges(&item.labels, item.bytes, -1.0);
                    let _ = item.tx.send(Released::Displaced);
                }
                None => return None,
            }
        }
        s.next_id += 1;
        let id = s.next_id;
        s.seen.insert(priority, Instant::now());
        s.requests += 1;
        s.bytes += req.bytes;
        let band = s.bands.entry(priority).or_insert_with(|| Band {
            settings,
            flows: HashMap::new(),
            ring: VecDeque::new(),
            requests: 0,
            bytes: 0,
        });
        band.requests += 1;
        band.bytes += req.bytes;
        let flow = band.flows.entry(req.class.fairness_id.clone()).or_default();
        if flow.is_empty() {
            band.ring.push_back(req.class.fairness_id.clone());
        }
        flow.push_back(Item {
            id,
            bytes: req.bytes,
            tx,
            labels: labels.clone(),
        });
        drop(s);
        self.gauges(labels, req.bytes, 1.0);
        Some(id)
    }

    /// The pool's saturation, counting `pending` released requests as waiting ones.
    fn saturation(&self, pending: u64) -> f64 {
        let all = self.pool.snapshot();
        let mut eps: Vec<Endpoint> = all.iter().cloned().collect();
        self.pool.fill_inflight(&mut eps);
        let now = Instant::now();
        if eps.iter().any(|e| e.healthy(now)) {
            eps.retain(|e| e.healthy(now));
        }
        if eps.is_empty() {
            return 1.0;
        }
        let per_request = self.detector.per_request(eps.len());
        self.detector.saturation(&eps) + pending as f64 * per_request
    }

    /// Releases requests, highest band first, while the pool has room.
    fn dispatch_cycle(self: &Arc<Self>) {
        let _cycle = self.cycle.lock();
        let started = Instant::now();
        let mut seen = None;
        loop {
            let (head, pending, active) = {
                let mut s = self.state.lock();
                let head = s
                    .bands
                    .iter()
                    .rev()
                    .find(|(_, b)| b.requests > 0)
                    .map(|(p, _)| *p);
                let now = Instant::now();
                s.seen
                    .retain(|_, at| now.duration_since(*at) < settings::ACTIVE_PRIORITY_WINDOW);
                let active: Vec<i32> = s.seen.keys().rev().copied().collect();
                (head, s.pending, active)
            };
            let Some(head) = head else { break };
            let sat = self.saturation(pending);
            seen = Some(sat);
            // The band at the head dispatches under its ceiling (1.0 without a usage-limit
            // policy; lower for lower bands with priority holdback).
            if sat >= self.settings.usage_limit.ceiling(head, &active) {
                break;
            }
            let item = {
                let mut s = self.state.lock();
                let Some(item) = s.pop_next() else { break };
                s.pending += 1;
                item
            };
            self.gauges(&item.labels, item.bytes, -1.0);
            // A receiver gone (its client left at this moment) drops the permit: the
            // capacity is not taken.
            let _ = item.tx.send(Released::Dispatched(Permit {
                inner: self.clone(),
            }));
        }
        if let Some(sat) = seen {
            let pool = self.pool_name();
            for def in [
                &names::FLOW_CONTROL_POOL_SATURATION,
                &names::LLMD_FLOW_CONTROL_POOL_SATURATION,
            ] {
                metrics::gauge!(def.name, "inference_pool" => pool.clone()).set(sat);
            }
            let took = started.elapsed().as_secs_f64();
            for def in [
                &names::FLOW_CONTROL_DISPATCH_CYCLE_DURATION,
                &names::LLMD_FLOW_CONTROL_DISPATCH_CYCLE_DURATION,
            ] {
                metrics::histogram!(def.name).record(took);
            }
        }
    }
}

impl State {
    /// Takes the next request: the highest band with requests, its flow by the band's
    /// fairness policy, that flow's oldest request.
    fn pop_next(&mut self) -> Option<Item> {
        let (_, band) = self.bands.iter_mut().rev().find(|(_, b)| b.requests > 0)?;
        let flow = match band.settings.fairness {
            Fairness::RoundRobin => band.ring.front().cloned()?,
            Fairness::GlobalStrict => band
                .flows
                .iter()
                .filter_map(|(k, q)| q.front().map(|i| (i.id, k)))
                .min()
                .map(|(_, k)| k.clone())?,
        };
        let q = band.flows.get_mut(&flow)?;
        let item = q.pop_front()?;
        if q.is_empty() {
            band.flows.remove(&flow);
            band.ring.retain(|f| *f != flow);
        } else if band.settings.fairness == Fairness::RoundRobin
            && let Some(f) = band.ring.pop_front()
        {
            band.ring.push_back(f);
        }
        band.requests -= 1;
        band.bytes -= item.bytes;
        self.requests -= 1;
        self.bytes -= item.bytes;
        Some(item)
    }

    /// Takes one queued request out (TTL, client gone).
    fn remove(&mut self, priority: i32, flow: &str, id: u64) -> Option<Item> {
        let band = self.bands.get_mut(&priority)?;
        let q = band.flows.get_mut(flow)?;
        let at = q.iter().position(|i| i.id == id)?;
        let item = q.remove(at)?;
        if q.is_empty() {
            band.flows.remove(flow);
            band.ring.retain(|f| f != flow);
        }
        band.requests -= 1;
        band.bytes -= item.bytes;
        self.requests -= 1;
        self.bytes -= item.bytes;
        Some(item)
    }

    /// Takes out the newest request of the lowest band below `priority`, if any.
    fn displace_below(&mut self, priority: i32) -> Option<Item> {
        let (&p, band) = self.bands.range(..priority).find(|(_, b)| b.requests > 0)?;
        let (flow, id) = band
            .flows
            .iter()
            .filter_map(|(k, q)| q.back().map(|i| (i.id, k)))
            .max()
            .map(|(id, k)| (k.clone(), id))?;
        self.remove(p, &flow, id)
    }
}

/// The dispatcher: a cycle whenever capacity may have freed or a request joined.
async fn run(inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        let changed = inner.changed.notified();
        let released = inner.pool.inflight().released();
        let scraped = inner.pool.changed();
        tokio::pin!(changed, released, scraped);
        released.as_mut().enable();
        scraped.as_mut().enable();
        inner.dispatch_cycle();
        tokio::select! {
            () = stop.cancelled() => return,
            () = &mut changed => {}
            () = &mut released => {}
            () = &mut scraped => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u64, bytes: u64) -> (Item, oneshot::Receiver<Released>) {
        let (tx, rx) = oneshot::channel();
        (
            Item {
                id,
                bytes,
                tx,
                labels: Arc::new(Labels {
                    fairness: String::new(),
                    priority: String::new(),
                    model: String::new(),
                }),
            },
            rx,
        )
    }

    fn push(s: &mut State, priority: i32, flow: &str, fairness: Fairness, id: u64) {
        let band = s.bands.entry(priority).or_insert_with(|| Band {
            settings: BandSettings {
                fairness,
                ..Default::default()
            },
            flows: HashMap::new(),
            ring: VecDeque::new(),
            requests: 0,
            bytes: 0,
        });
        let q = band.flows.entry(flow.into()).or_default();
        if q.is_empty() {
            band.ring.push_back(flow.into());
        }
        q.push_back(item(id, 10).0);
        band.requests += 1;
        band.bytes += 10;
        s.requests += 1;
        s.bytes += 10;
    }

    fn order(s: &mut State) -> Vec<u64> {
        std::iter::from_fn(|| s.pop_next().map(|i| i.id)).collect()
    }

    #[test]
    fn bands_are_strict_and_round_robin_alternates_flows() {
        let mut s = State::default();
        for (id, flow) in [(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "b")] {
            push(&mut s, 0, flow, Fairness::RoundRobin, id);
        }
        push(&mut s, 5, "x", Fairness::RoundRobin, 6);
        push(&mut s, -1, "y", Fairness::RoundRobin, 7);
        assert_eq!(order(&mut s), vec![6, 1, 4, 2, 5, 3, 7]);
        assert_eq!((s.requests, s.bytes), (0, 0));
    }

    #[test]
    fn global_strict_serves_the_oldest_of_the_band() {
        let mut s = State::default();
        for (id, flow) in [(1, "a"), (2, "a"), (3, "b"), (4, "a")] {
            push(&mut s, 0, flow, Fairness::GlobalStrict, id);
        }
        assert_eq!(order(&mut s), vec![1, 2, 3, 4]);
    }

    #[test]
    fn removal_and_displacement_keep_the_counts() {
        let mut s = State::default();
        for (id, p) in [(1, -5), (2, -5), (3, -1), (4, 0)] {
            push(&mut s, p, "f", Fairness::RoundRobin, id);
        }
        assert_eq!(s.remove(0, "f", 4).map(|i| i.id), Some(4));
        assert!(s.remove(0, "f", 4).is_none());
        // The newest of the lowest band below the newcomer's priority.
        assert_eq!(s.displace_below(0).map(|i| i.id), Some(2));
        assert_eq!(s.displace_below(-5).map(|i| i.id), None);
        assert_eq!((s.requests, s.bytes), (2, 20));
        assert_eq!(order(&mut s), vec![3, 1]);
    }
}
