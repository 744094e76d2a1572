//! Following an `InferencePool` and its pods by watch.
//!
//! [`watch_pool`] returns a [`PoolWatch`] (the receiving side) and the future that does the
//! work; the caller spawns the future on its own task set. That one task runs two
//! [`kube::runtime::watcher`]s and nothing else:
//!
//! - the pool object, by name (`watch_object`: LIST + WATCH with `fieldSelector=metadata.name`);
//! - the pods its `spec.selector` matches (LIST + WATCH with `labelSelector`), started when the
//!   pool is first seen and restarted when its selector changes.
//!
//! Each watcher lists once, then follows the watch from the list's `resourceVersion`, asks for
//! bookmarks, resumes from the last version it saw when the connection ends, and lists again
//! when the API server answers 410 Gone (the version is no longer in its history); errors back
//! off as client-go's reflector does (0.8 s doubling to 30 s). Every `resync` period both
//! watchers are started afresh, i.e. listed again: a safety net against an event lost in a
//! way the watch cannot notice. A fresh list replaces the pod set at once when it completes
//! (`Init` … `InitDone`), never piecemeal.
//!
//! After every event that changes it, the task publishes a [`PoolView`] on a
//! [`tokio::sync::watch`] channel: readers see the latest value (intermediate ones may be
//! skipped) and never block the task. An API error or an unusable pool spec changes only
//! [`PoolView::error`]: the last good snapshot stays (each failure logged once, the recovery
//! once; every failure counted in `llmd_kubernetes_watch_errors_total` by resource and reason).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::pool::{PoolRef, PoolSpec};
use crate::snapshot::{PoolPod, PoolSnapshot};

/// What the watch knows now.
#[derive(Debug, Clone, Default)]
pub struct PoolView {
    /// The last complete picture of the pool; `None` until the pool (and, when it exists, its
    /// pods) have been listed once.
    pub snapshot: Option<Arc<PoolSnapshot>>,
    /// Why the snapshot may be out of date: the API's last answer was an error, or the pool's
    /// spec is unusable (the snapshot keeps the last usable one). Cleared at the next good
    /// event or listing.
    pub error: Option<String>,
}

/// The receiving side of [`watch_pool`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct PoolWatch {
    rx: watch::Receiver<PoolView>,
}

impl PoolWatch {
    /// The latest view.
    pub fn view(&self) -> PoolView {
        self.rx.borrow().clone()
    }

    /// The latest snapshot, if the pool has been listed.
    pub fn snapshot(&self) -> Option<Arc<PoolSnapshot>> {
        self.rx.borrow().snapshot.clone()
    }

    /// Waits for a view this handle has not seen and returns it; `None` once the watch task
    /// has stopped.
    pub async fn changed(&mut self) -> Option<PoolView> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }

    /// Waits until the first listing has completed or failed (whichever comes first) and
    /// returns the view; `None` if the task stopped before.
    pub async fn first_answer(&mut self) -> Option<PoolView> {
        self.rx
            .wait_for(|v| v.snapshot.is_some() || v.error.is_some())
            .await
            .ok()
            .map(|v| v.clone())
    }

    /// A receiver of its own (for `select!` loops).
    pub fn receiver(&self) -> watch::Receiver<PoolView> {
        self.rx.clone()
    }
}

/// Follows `pool` and its pods until `cancel` (or until every [`PoolWatch`] is dropped).
/// `resync`: how often both are listed again from scratch (zero: never). Spawn the returned
/// future; it never fails (errors are reported in [`PoolView::error`] and retried).
pub fn watch_pool(
    client: kube::Client,
    pool: PoolRef,
    resync: Duration,
    cancel: CancellationToken,
) -> (PoolWatch, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = watch::channel(PoolView::default());
    (PoolWatch { rx }, run(client, pool, resync, tx, cancel))
}

type PodEvents = BoxStream<'static, Result<Event<Pod>, watcher::Error>>;

/// The task's state between events.
#[derive(Debug, Default)]
struct State {
    /// The pool has been answered for (found, absent, or unusable) at least once.
    pool_seen: bool,
    /// The last usable spec (`None`: the pool does not exist).
    spec: Option<PoolSpec>,
    /// Pods by name, of the selector the pod watcher runs with.
    pods: HashMap<String, PoolPod>,
    /// A listing in progress (between `Init` and `InitDone`).
    listing: Option<HashMap<String, PoolPod>>,
    /// `pods` is complete for the current selector.
    pods_synced: bool,
    /// The selector the pod watcher runs with.
    selector: Option<String>,
    /// The pool's spec is unusable.
    invalid: Option<String>,
    /// The last error of the pool watcher, of the pod watcher.
    pool_error: Option<String>,
    pods_error: Option<String>,
}

impl State {
    fn snapshot(&self) -> Option<PoolSnapshot> {
        if !self.pool_seen || (self.spec.is_some() && !self.pods_synced) {
            return None;
        }
        let mut pods: Vec<PoolPod> = self.pods.values().cloned().collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        Some(PoolSnapshot {
            spec: self.spec.clone(),
            pods,
        })
    }

    fn error(&self) -> Option<String> {
        self.pool_error
            .clone()
            .or_else(|| self.pods_error.clone())
            .or_else(|| self.invalid.clone())
    }
}

fn pod_watcher(api: &Api<Pod>, selector: &str) -> PodEvents {
    watcher::watcher(api.clone(), watcher::Config::default().labels(selector))
        .default_backoff()
        .boxed()
}

/// The next item of an optional stream (pending forever without one).
async fn next_of(s: &mut Option<PodEvents>) -> Option<Result<Event<Pod>, watcher::Error>> {
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn run(
    client: kube::Client,
    pool: PoolRef,
    resync: Duration,
    tx: watch::Sender<PoolView>,
    cancel: CancellationToken,
) {
    let pools: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &pool.namespace, &pool.resource());
    let pods: Api<Pod> = Api::namespaced(client, &pool.namespace);
    let mut st = State::default();
    loop {
        // One round per resync period: fresh watchers, i.e. both listed again.
        let mut pool_events = watcher::watch_object(pools.clone(), &pool.name)
            .default_backoff()
            .boxed();
        let mut pod_events = st.selector.as_deref().map(|s| pod_watcher(&pods, s));
        let round = async {
            if resync.is_zero() {
                std::future::pending().await
            } else {
                tokio::time::sleep(resync).await
            }
        };
        tokio::pin!(round);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tx.closed() => return,
                _ = &mut round => break,
                item = pool_events.next() => match item {
                    Some(Ok(obj)) => {
                        clear(&mut st.pool_error, &pool, "inferencepools");
                        if on_pool(&mut st, &pool, obj.as_ref()) {
                            pod_events = st.selector.as_deref().map(|s| pod_watcher(&pods, s));
                        }
                    }
                    Some(Err(e)) => fail(&mut st.pool_error, &pool, "inferencepools", &e),
                    None => break,
                },
                item = next_of(&mut pod_events) => match item {
                    Some(Ok(event)) => {
                        clear(&mut st.pods_error, &pool, "pods");
                        on_pod(&mut st, event);
                    }
                    Some(Err(e)) => fail(&mut st.pods_error, &pool, "pods", &e),
                    None => pod_events = None,
                },
            }
            publish(&tx, &st, &pool);
        }
    }
}

/// Applies the pool object (or its absence); true when the pod watcher must be (re)started
/// or stopped (`st.selector` changed).
fn on_pool(st: &mut State, pool: &PoolRef, obj: Option<&DynamicObject>) -> bool {
    st.pool_seen = true;
    let Some(obj) = obj else {
        if st.spec.is_some() || st.invalid.is_some() || st.selector.is_some() {
            tracing::warn!(%pool, "InferencePool not found (deleted?): no endpoints");
        }
        st.spec = None;
        st.invalid = None;
        st.pods.clear();
        st.listing = None;
        st.pods_synced = false;
        return st.selector.take().is_some();
    };
    match PoolSpec::parse(&pool.name, &obj.data) {
        Ok(spec) => {
            if st.invalid.take().is_some() {
                tracing::info!(%pool, "InferencePool spec usable again");
            }
            let selector = spec.label_selector();
            st.spec = Some(spec);
            if st.selector.as_deref() == Some(selector.as_str()) {
                return false;
            }
            tracing::info!(%pool, selector, "watching the InferencePool's pods");
            st.selector = Some(selector);
            st.pods.clear();
            st.listing = None;
            st.pods_synced = false;
            true
        }
        Err(invalid) => {
            count("inferencepools", "invalid_spec");
            let why = invalid.to_string();
            if st.invalid.as_deref() != Some(why.as_str()) {
                tracing::warn!(%pool, error = why, "InferencePool spec unusable; keeping the last usable one");
                st.invalid = Some(why);
            }
            false
        }
    }
}

fn on_pod(st: &mut State, event: Event<Pod>) {
    match event {
        Event::Init => st.listing = Some(HashMap::new()),
        Event::InitApply(pod) => {
            let pod = PoolPod::from_pod(&pod);
            st.listing
                .get_or_insert_with(HashMap::new)
                .insert(pod.name.clone(), pod);
        }
        Event::InitDone => {
            st.pods = st.listing.take().unwrap_or_default();
            st.pods_synced = true;
        }
        Event::Apply(pod) => {
            let pod = PoolPod::from_pod(&pod);
            st.pods.insert(pod.name.clone(), pod);
        }
        Event::Delete(pod) => {
            st.pods
                .remove(pod.metadata.name.as_deref().unwrap_or_default());
        }
    }
}

/// Counts one failure in `llmd_kubernetes_watch_errors_total`.
fn count(resource: &'static str, reason: &'static str) {
    use llmd_telemetry::names::{kubernetes::WATCH_ERRORS, labels};
    metrics::counter!(WATCH_ERRORS.name, labels::RESOURCE => resource, labels::REASON => reason)
        .increment(1);
}

fn fail(slot: &mut Option<String>, pool: &PoolRef, resource: &'static str, e: &watcher::Error) {
    count(resource, "api");
    let first = slot.is_none();
    *slot = Some(format!("watching {resource}: {e}"));
    if first {
        tracing::warn!(%pool, resource, error = %e, "kubernetes watch failed; keeping the last pool state (retrying)");
    }
}

fn clear(slot: &mut Option<String>, pool: &PoolRef, resource: &str) {
    if slot.take().is_some() {
        tracing::info!(%pool, resource, "kubernetes watch recovered");
    }
}

fn publish(tx: &watch::Sender<PoolView>, st: &State, pool: &PoolRef) {
    let snapshot = st.snapshot();
    let error = st.error();
    tx.send_if_modified(|view| {
        let mut changed = false;
        if let Some(s) = snapshot
            && view.snapshot.as_deref() != Some(&s)
        {
            tracing::debug!(%pool, pods = s.pods.len(), "pool changed");
            view.snapshot = Some(Arc::new(s));
            changed = true;
        }
        if view.error != error {
            view.error = error;
            changed = true;
        }
        changed
    });
}
