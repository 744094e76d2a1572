//! In-flight accounting: the requests and prompt tokens this EPP routed to each endpoint and
//! has not yet seen finish (llm-d's `inflight-load-producer`).
//!
//! A decision registers one *leg* per pod it names: the decode (or only) pod, and the prefill
//! pod of a P/D decision. Each leg counts one request and the prompt tokens the pod has to
//! compute (the prompt minus what its prefix cache already holds, as llm-d discounts them).
//! The protocol layer releases them as the response goes by:
//!
//! | when | what is released |
//! |---|---|
//! | response headers | the prefill leg (the decode pod answers only once prefill is done) |
//! | first response body chunk of a streamed (SSE) response | the decode leg's tokens (prefill is done; llm-d's `StartOfStream`) |
//! | end of the response, or the ext_proc stream closing for any reason (client gone, error, data plane reset) | everything left |
//! | `requestTimeout` after the decision (llm-d's active-request scorer: 2 minutes) | everything left: a stream the data plane never closed is reaped |
//!
//! The counts are exact for this EPP's own decisions. With several EPP replicas each counts
//! only what it routed; the pods' scraped queues (every replica scrapes every pod) carry the
//! others' load, and [`crate::plugins::loads`] combines the two: the last scrape plus what
//! this replica routed and saw finish since then.
//!
//! One mutex guards the map; each operation is a few hash-map updates (well under a
//! microsecond), taken once per decision and a few times per response.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// llm-d's default `requestTimeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// One pod's in-flight load as this EPP counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodLoad {
    /// Requests routed and not finished.
    pub requests: u64,
    /// Prompt tokens routed and not yet computed (uncached part).
    pub tokens: u64,
}

/// One pod a decision names, and what it has to compute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    /// The endpoint id (`host:port`).
    pub endpoint: String,
    /// Uncached prompt tokens.
    pub tokens: u64,
    /// The prefill pod of a P/D decision (released when the response starts).
    pub prefill: bool,
}

/// What to release of a tracked request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The prefill leg (response headers arrived).
    Prefill,
    /// The prompt tokens of every leg (the first streamed chunk arrived).
    Tokens,
    /// Everything (the response ended or the stream closed).
    All,
}

/// The id of a tracked request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

#[derive(Debug)]
struct LegState {
    endpoint: Arc<str>,
    tokens: u64,
    prefill: bool,
    request_open: bool,
}

#[derive(Debug)]
struct Entry {
    started: Instant,
    legs: Vec<LegState>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    entries: HashMap<u64, Entry>,
    pods: HashMap<Arc<str>, PodLoad>,
    last_reap: Option<Instant>,
}

/// The tracker (one per EPP, owned by its [`crate::endpoints::Pool`]).
#[derive(Debug)]
pub struct InFlight {
    state: Mutex<State>,
    timeout: Mutex<Duration>,
    /// Woken whenever load is released (flow control dispatches on it).
    released: tokio::sync::Notify,
}

impl Default for InFlight {
    fn default() -> Self {
        Self::new(DEFAULT_REQUEST_TIMEOUT)
    }
}

impl InFlight {
    /// A tracker reaping requests older than `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            timeout: Mutex::new(timeout),
            released: tokio::sync::Notify::new(),
        }
    }

    /// Sets how long an unfinished request is counted (the configuration's `requestTimeout`).
    pub fn set_timeout(&self, timeout: Duration) {
        *self.timeout.lock() = timeout;
    }

    /// How long an unfinished request is counted.
    pub fn timeout(&self) -> Duration {
        *self.timeout.lock()
    }

    /// Counts a decision's legs; the ticket releases them.
    pub fn start(&self, legs: &[Leg]) -> Option<Ticket> {
        if legs.is_empty() {
            return None;
        }
        let now = Instant::now();
        let timeout = self.timeout();
        let mut s = self.state.lock();
        let s = &mut *s;
        let mut states = Vec::with_capacity(legs.len());
        for leg in legs {
            let key: Arc<str> = match s.pods.get_key_value(leg.endpoint.as_str()) {
                Some((k, _)) => k.clone(),
                None => leg.endpoint.as_str().into(),
            };
            let pod = s.pods.entry(key.clone()).or_default();
            pod.requests += 1;
            pod.tokens += leg.tokens;
            states.push(LegState {
                endpoint: key,
                tokens: leg.tokens,
                prefill: leg.prefill,
                request_open: true,
            });
        }
        s.next += 1;
        let id = s.next;
        s.entries.insert(
            id,
            Entry {
                started: now,
                legs: states,
            },
        );
        if reap(s, now, timeout) > 0 {
            self.released.notify_waiters();
        }
        Some(Ticket(id))
    }

    /// Releases part or all of a tracked request (idempotent: a part already released, or a
    /// request already reaped, is not released twice).
    pub fn release(&self, ticket: Ticket, what: Release) {
        if release_in(&mut self.state.lock(), ticket.0, what) {
            self.released.notify_waiters();
        }
    }

    /// One pod's load now.
    pub fn get(&self, endpoint: &str) -> PodLoad {
        self.state
            .lock()
            .pods
            .get(endpoint)
            .copied()
            .unwrap_or_default()
    }

    /// Each endpoint's load now, in one lock.
    pub fn fill<'a>(&self, endpoints: impl Iterator<Item = (&'a str, &'a mut PodLoad)>) {
        let s = self.state.lock();
        for (id, load) in endpoints {
            *load = s.pods.get(id).copied().unwrap_or_default();
        }
    }

    /// Requests tracked now (all pods).
    pub fn requests(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// Releases the requests older than the timeout now (also done on every `start`, at most
    /// once a second). Returns how many were reaped.
    pub fn reap_now(&self) -> usize {
        let timeout = self.timeout();
        let mut s = self.state.lock();
        s.last_reap = None;
        let n = reap(&mut s, Instant::now(), timeout);
        if n > 0 {
            self.released.notify_waiters();
        }
        n
    }

    /// Resolves when load is next released.
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }
}

/// Releases part or all of entry `id`; true when some load was released.
fn release_in(s: &mut State, id: u64, what: Release) -> bool {
    let Some(entry) = s.entries.get_mut(&id) else {
        return false;
    };
    let mut changed = false;
    for leg in &mut entry.legs {
        let (tokens, request) = match what {
            Release::All => (true, true),
            Release::Tokens => (true, false),
            Release::Prefill => (leg.prefill, leg.prefill),
        };
        if let Some(pod) = s.pods.get_mut(&leg.endpoint) {
            if tokens && leg.tokens > 0 {
                pod.tokens = pod.tokens.saturating_sub(leg.tokens);
                leg.tokens = 0;
                changed = true;
            }
            if request && leg.request_open {
                pod.requests = pod.requests.saturating_sub(1);
                leg.request_open = false;
                changed = true;
            }
        }
    }
    if what == Release::All {
        s.entries.remove(&id);
        s.pods.retain(|_, p| p.requests > 0 || p.tokens > 0);
    }
    changed
}

/// Releases entries older than `timeout` (at most once a second unless forced).
fn reap(s: &mut State, now: Instant, timeout: Duration) -> usize {
    if s.last_reap
        .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
    {
        return 0;
    }
    s.last_reap = Some(now);
    let stale: Vec<u64> = s
        .entries
        .iter()
        .filter(|(_, e)| now.duration_since(e.started) >= timeout)
        .map(|(id, _)| *id)
        .collect();
    for id in &stale {
        release_in(s, *id, Release::All);
    }
    if !stale.is_empty() {
        metrics::counter!(llmd_telemetry::names::epp::INFLIGHT_REAPED.name)
            .increment(stale.len() as u64);
        tracing::warn!(
            requests = stale.len(),
            timeout_s = timeout.as_secs_f64(),
            "in-flight requests never finished; no longer counted"
        );
    }
    stale.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(ep: &str, tokens: u64, prefill: bool) -> Leg {
        Leg {
            endpoint: ep.into(),
            tokens,
            prefill,
        }
    }

    #[test]
    fn counts_and_releases_by_phase() {
        let t = InFlight::default();
        let a = t
            .start(&[leg("d:1", 100, false), leg("p:1", 900, true)])
            .unwrap();
        let b = t.start(&[leg("d:1", 50, false)]).unwrap();
        assert_eq!(
            t.get("d:1"),
            PodLoad {
                requests: 2,
                tokens: 150
            }
        );
        assert_eq!(
            t.get("p:1"),
            PodLoad {
                requests: 1,
                tokens: 900
            }
        );
        t.release(a, Release::Prefill);
        assert_eq!(t.get("p:1"), PodLoad::default());
        assert_eq!(t.get("d:1").tokens, 150);
        t.release(a, Release::Tokens);
        assert_eq!(
            t.get("d:1"),
            PodLoad {
                requests: 2,
                tokens: 50
            }
        );
        t.release(a, Release::All);
        t.release(a, Release::All);
        assert_eq!(
            t.get("d:1"),
            PodLoad {
                requests: 1,
                tokens: 50
            }
        );
        t.release(b, Release::All);
        assert_eq!(t.get("d:1"), PodLoad::default());
        assert_eq!(t.requests(), 0);
    }

    #[test]
    fn lost_requests_are_reaped_after_the_timeout() {
        let t = InFlight::new(Duration::from_millis(20));
        let a = t.start(&[leg("d:1", 10, false)]).unwrap();
        assert_eq!(t.get("d:1").requests, 1);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(t.reap_now(), 1);
        assert_eq!(t.get("d:1"), PodLoad::default());
        // A late release of a reaped request changes nothing.
        let b = t.start(&[leg("d:1", 10, false)]).unwrap();
        t.release(a, Release::All);
        assert_eq!(t.get("d:1").requests, 1);
        t.release(b, Release::All);
        assert_eq!(t.get("d:1").requests, 0);
    }
}
