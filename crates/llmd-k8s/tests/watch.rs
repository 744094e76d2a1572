//! `watch_pool` through `kube::Client` against the fake API server: changes arrive by watch
//! (the resync period is an hour, and no second LIST happens), a cut watch resumes from its
//! last version, a 410 Gone is recovered with a fresh LIST, bookmarks move the resume point,
//! API errors keep the last snapshot, and the pool's own changes (selector, spec, deletion) are
//! followed.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use llmd_k8s::testing::{self as fake, FakeKube, Kind, named, pod, set_ready};
use llmd_k8s::{KvEventPorts, PoolRef, PoolView, PoolWatch, watch_pool};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const HOUR: Duration = Duration::from_secs(3600);

/// Waits (at most 10 s) for a view that satisfies `cond`.
async fn until(w: &PoolWatch, what: &str, cond: impl Fn(&PoolView) -> bool) -> PoolView {
    let mut rx = w.receiver();
    match tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| cond(v))).await {
        Ok(Ok(v)) => v.clone(),
        _ => panic!("timed out waiting for {what}; last view: {:?}", w.view()),
    }
}

/// Until the predicate holds on the fake (at most 10 s).
async fn until_fake(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The names of the routable pods.
fn routable(v: &PoolView) -> Vec<String> {
    v.snapshot
        .as_ref()
        .map(|s| {
            s.pods
                .iter()
                .filter(|p| p.routable())
                .map(|p| p.name.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn has(v: &PoolView, names: &[&str]) -> bool {
    routable(v) == names
}

async fn started(pods: Vec<Value>, resync: Duration) -> (FakeKube, PoolWatch, CancellationToken) {
    let api = FakeKube::start(fake::pool("vllm", 8000), pods)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let (w, task) = watch_pool(
        api.client().unwrap(),
        PoolRef::new(fake::NAMESPACE, fake::POOL),
        resync,
        cancel.clone(),
    );
    tokio::spawn(task);
    (api, w, cancel)
}

fn pod_watches(api: &FakeKube) -> Vec<llmd_k8s::testing::Request> {
    api.requests()
        .into_iter()
        .filter(|r| r.kind == Kind::Pod && r.watch)
        .collect()
}

#[tokio::test]
async fn changes_arrive_by_watch_not_by_listing() {
    let (api, w, cancel) = started(
        vec![
            pod("a", Some("10.0.0.1"), "decode", "vllm", true, false),
            pod("b", Some("10.0.0.2"), "decode", "vllm", false, false),
            pod("x", Some("10.0.0.9"), "decode", "other", true, false),
        ],
        HOUR,
    )
    .await;
    let first = until(&w, "the first listing", |v| v.snapshot.is_some()).await;
    assert_eq!(routable(&first), ["a"]);
    // Only the selected pods are held, ready or not.
    let names: Vec<_> = first
        .snapshot
        .as_ref()
        .unwrap()
        .pods
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(names, ["a", "b"]);

    // A pod turns ready, one is added, one turns unready, one goes.
    api.edit(|o| set_ready(named(&mut o.pods, "b"), true));
    until(&w, "b ready", |v| has(v, &["a", "b"])).await;
    api.edit(|o| {
        o.pods
            .push(pod("c", Some("10.0.0.3"), "prefill", "vllm", true, false))
    });
    until(&w, "c added", |v| has(v, &["a", "b", "c"])).await;
    api.edit(|o| set_ready(named(&mut o.pods, "a"), false));
    until(&w, "a unready", |v| has(v, &["b", "c"])).await;
    api.edit(|o| o.pods.retain(|p| p["metadata"]["name"] != "b"));
    until(&w, "b removed", |v| has(v, &["c"])).await;
    // A pod whose labels stop matching leaves the pool (DELETED on the selector's watch).
    api.edit(|o| named(&mut o.pods, "c")["metadata"]["labels"]["app"] = json!("other"));
    until(&w, "c relabelled away", |v| has(v, &[])).await;
    // The other app's pod joins by label (ADDED).
    api.edit(|o| named(&mut o.pods, "x")["metadata"]["labels"]["app"] = json!("vllm"));
    until(&w, "x relabelled in", |v| has(v, &["x"])).await;

    // All of it from one LIST per resource and the watches after it.
    assert_eq!(api.lists(Kind::Pod), 1, "{:?}", api.requests());
    assert_eq!(api.lists(Kind::Pool), 1, "{:?}", api.requests());
    assert!(api.selectors().iter().all(|s| s == "app=vllm"));
    assert!(w.view().error.is_none());
    cancel.cancel();
}

#[tokio::test]
async fn a_cut_watch_resumes_from_its_last_version() {
    let (api, w, cancel) = started(
        vec![pod("a", Some("10.0.0.1"), "decode", "vllm", true, false)],
        HOUR,
    )
    .await;
    until(&w, "a", |v| has(v, &["a"])).await;
    let watches = pod_watches(&api).len();
    api.drop_watches();
    api.edit(|o| {
        o.pods
            .push(pod("b", Some("10.0.0.2"), "decode", "vllm", true, false))
    });
    until(&w, "b, after the cut", |v| has(v, &["a", "b"])).await;
    // Resumed by a new WATCH from a version, without listing again.
    let resumed = &pod_watches(&api)[watches..];
    assert!(!resumed.is_empty());
    assert!(
        resumed
            .iter()
            .all(|r| r.resource_version.as_deref().is_some_and(|v| v != "0"))
    );
    assert_eq!(api.lists(Kind::Pod), 1);
    cancel.cancel();
}

#[tokio::test]
async fn a_410_gone_is_recovered_with_a_fresh_list() {
    let (api, w, cancel) = started(
        vec![
            pod("a", Some("10.0.0.1"), "decode", "vllm", true, false),
            pod("b", Some("10.0.0.2"), "decode", "vllm", true, false),
        ],
        HOUR,
    )
    .await;
    until(&w, "a, b", |v| has(v, &["a", "b"])).await;
    api.gone();
    // Changed while the history is gone: only a new LIST can tell.
    api.edit(|o| {
        o.pods.retain(|p| p["metadata"]["name"] != "a");
        o.pods
            .push(pod("c", Some("10.0.0.3"), "decode", "vllm", true, false));
    });
    until(&w, "b, c after the re-list", |v| has(v, &["b", "c"])).await;
    assert_eq!(api.lists(Kind::Pod), 2, "{:?}", api.requests());
    // The pool's watcher got the same 410 and lists again too (after its back-off).
    until_fake("the pool listed again", || api.lists(Kind::Pool) == 2).await;
    cancel.cancel();
}

#[tokio::test]
async fn a_bookmark_moves_the_resume_point() {
    let (api, w, cancel) = started(
        vec![pod("a", Some("10.0.0.1"), "decode", "vllm", true, false)],
        HOUR,
    )
    .await;
    until(&w, "a", |v| has(v, &["a"])).await;
    until_fake("the pod watch", || !pod_watches(&api).is_empty()).await;
    // The pool changes: the resource version moves on, the pod watch sees no event.
    api.edit(|o| o.pool["metadata"]["annotations"] = json!({"touched": "yes"}));
    let at = api.resource_version();
    api.bookmark();
    api.drop_watches();
    let before = pod_watches(&api).len();
    until_fake("the pod watch resumed", || pod_watches(&api).len() > before).await;
    let resumed = pod_watches(&api)[before].clone();
    assert_eq!(resumed.resource_version, Some(at.to_string()));
    assert_eq!(api.lists(Kind::Pod), 1);
    cancel.cancel();
}

#[tokio::test]
async fn api_errors_keep_the_last_snapshot() {
    let (api, w, cancel) = started(
        vec![pod("a", Some("10.0.0.1"), "decode", "vllm", true, false)],
        HOUR,
    )
    .await;
    until(&w, "a", |v| has(v, &["a"])).await;
    api.set_fail(true);
    let failing = until(&w, "the error reported", |v| v.error.is_some()).await;
    assert!(has(&failing, &["a"]), "{failing:?}");
    assert!(
        failing.error.as_deref().unwrap().contains("watching"),
        "{failing:?}"
    );
    api.set_fail(false);
    api.edit(|o| {
        o.pods
            .push(pod("b", Some("10.0.0.2"), "decode", "vllm", true, false))
    });
    until(&w, "recovered, with b", |v| {
        has(v, &["a", "b"]) && v.error.is_none()
    })
    .await;
    cancel.cancel();
}

#[tokio::test]
async fn the_first_answer_may_be_an_error() {
    let api = FakeKube::start(fake::pool("vllm", 8000), vec![])
        .await
        .unwrap();
    api.set_fail(true);
    let cancel = CancellationToken::new();
    let (mut w, task) = watch_pool(
        api.client().unwrap(),
        PoolRef::new(fake::NAMESPACE, fake::POOL),
        HOUR,
        cancel.clone(),
    );
    tokio::spawn(task);
    let first = w.first_answer().await.unwrap();
    assert!(
        first.snapshot.is_none() && first.error.is_some(),
        "{first:?}"
    );
    api.set_fail(false);
    until(&w, "listed", |v| v.snapshot.is_some()).await;
    cancel.cancel();
}

#[tokio::test]
async fn the_pool_itself_is_followed() {
    let (api, w, cancel) = started(
        vec![
            pod("a", Some("10.0.0.1"), "decode", "vllm", true, false),
            pod("x", Some("10.0.0.9"), "decode", "other", true, false),
        ],
        HOUR,
    )
    .await;
    until(&w, "a", |v| has(v, &["a"])).await;

    // An unusable spec is reported; the last usable one stays.
    api.edit(|o| o.pool["spec"]["selector"] = json!({"matchLabels": {}}));
    let v = until(&w, "the spec refused", |v| v.error.is_some()).await;
    assert!(v.error.as_deref().unwrap().contains("matchLabels"), "{v:?}");
    assert!(has(&v, &["a"]));

    // A new selector: the pods are watched again with it.
    api.edit(|o| o.pool["spec"]["selector"] = json!({"matchLabels": {"app": "other"}}));
    let v = until(&w, "the other app's pods", |v| has(v, &["x"])).await;
    assert!(v.error.is_none());
    assert!(api.selectors().contains(&"app=other".to_owned()));

    // New target ports: the same pods, an endpoint per port.
    api.edit(|o| o.pool["spec"]["targetPorts"] = json!([{"number": 8000}, {"number": 8001}]));
    let v = until(&w, "two ports", |v| {
        v.snapshot
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .is_some_and(|s| s.target_ports.len() == 2)
    })
    .await;
    let eps = v.snapshot.unwrap().endpoints(KvEventPorts::default());
    let got: Vec<_> = eps
        .iter()
        .map(|e| (e.address.as_str(), e.port, e.rank))
        .collect();
    assert_eq!(got, [("10.0.0.9", 8000, 0), ("10.0.0.9", 8001, 1)]);

    // The pool is deleted: nothing is routable; it comes back: followed again.
    api.edit(|o| o.pool = Value::Null);
    until(&w, "no pool", |v| {
        v.snapshot
            .as_ref()
            .is_some_and(|s| s.spec.is_none() && s.pods.is_empty())
    })
    .await;
    api.edit(|o| o.pool = fake::pool("vllm", 8000));
    until(&w, "the pool back", |v| has(v, &["a"])).await;
    cancel.cancel();
}

#[tokio::test]
async fn the_resync_period_lists_again() {
    let (api, w, cancel) = started(
        vec![pod("a", Some("10.0.0.1"), "decode", "vllm", true, false)],
        Duration::from_millis(100),
    )
    .await;
    until(&w, "a", |v| has(v, &["a"])).await;
    until_fake("three pod listings", || api.lists(Kind::Pod) >= 3).await;
    until_fake("three pool listings", || api.lists(Kind::Pool) >= 3).await;
    // Re-listing replaces the set at once: it never empties on the way.
    assert!(has(&w.view(), &["a"]));
    cancel.cancel();
}

#[tokio::test]
async fn an_absent_pool_is_an_empty_snapshot() {
    let api = FakeKube::start(
        Value::Null,
        vec![pod("a", Some("10.0.0.1"), "decode", "vllm", true, false)],
    )
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let (mut w, task) = watch_pool(
        api.client().unwrap(),
        PoolRef::new(fake::NAMESPACE, fake::POOL),
        HOUR,
        cancel.clone(),
    );
    tokio::spawn(task);
    let v = w.first_answer().await.unwrap();
    let s = v.snapshot.unwrap();
    assert!(s.spec.is_none() && s.pods.is_empty());
    // Created later: found by the watch.
    api.edit(|o| o.pool = fake::pool("vllm", 8000));
    until(&w, "the pool created", |v| has(v, &["a"])).await;
    cancel.cancel();
}
