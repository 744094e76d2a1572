//! The fake's selectors and its WATCH streams.

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::{Change, Kind, OBJECTIVE_API, POOL_API, Shared, Store, set_rv, status, status_object};

/// One requirement of a label selector.
#[derive(Debug, Clone)]
enum Label {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
}

/// Which objects a LIST or WATCH sees.
#[derive(Debug, Clone)]
pub(super) struct Filter {
    kind: Kind,
    namespace: String,
    labels: Vec<Label>,
    /// (field, value, equal?)
    fields: Vec<(String, String, bool)>,
}

impl Filter {
    /// Parses the selectors as the API server does (equality-based ones only).
    pub(super) fn new(
        kind: Kind,
        namespace: &str,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Self, String> {
        let terms = |s: Option<&str>| -> Vec<String> {
            s.unwrap_or_default()
                .split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect()
        };
        let mut out = Self {
            kind,
            namespace: namespace.to_owned(),
            labels: Vec::new(),
            fields: Vec::new(),
        };
        for t in terms(labels) {
            let label = if let Some((k, v)) = t.split_once("!=") {
                Label::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Label::Eq(k.trim().into(), v.trim().into())
            } else if t.contains(['(', ' ']) {
                return Err(format!(
                    "set-based label selector {t:?} is not supported by the fake"
                ));
            } else if let Some(k) = t.strip_prefix('!') {
                Label::NotExists(k.trim().into())
            } else {
                Label::Exists(t)
            };
            out.labels.push(label);
        }
        for t in terms(fields) {
            let (k, v, eq) = if let Some((k, v)) = t.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                (k, v, true)
            } else {
                return Err(format!("invalid field selector {t:?}"));
            };
            if k != "metadata.name" && k != "metadata.namespace" {
                return Err(format!("field label not supported: {k}"));
            }
            out.fields.push((k.to_owned(), v.to_owned(), eq));
        }
        Ok(out)
    }

    /// The object is in the namespace and both selectors match it.
    pub(super) fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if meta["namespace"].as_str() != Some(self.namespace.as_str()) {
            return false;
        }
        let label = |k: &str| meta["labels"][k].as_str();
        let labels_ok = self.labels.iter().all(|l| match l {
            Label::Eq(k, v) => label(k) == Some(v),
            Label::NotEq(k, v) => label(k) != Some(v),
            Label::Exists(k) => label(k).is_some(),
            Label::NotExists(k) => label(k).is_none(),
        });
        let fields_ok = self.fields.iter().all(|(k, v, eq)| {
            let field = k.strip_prefix("metadata.").unwrap_or(k);
            (meta[field].as_str() == Some(v.as_str())) == *eq
        });
        labels_ok && fields_ok
    }
}

/// Where a new watch starts.
#[derive(Debug)]
pub(super) struct Start {
    filter: Filter,
    /// Lines to send first.
    initial: Vec<Bytes>,
    /// Only the initial lines (410 Gone), then the end.
    gone: bool,
    /// Changes after this version are sent.
    cursor: u64,
    /// The store's `cut` when the watch began.
    cut: u64,
    /// The store's `bookmarks` last answered, when bookmarks are allowed.
    bookmarks: Option<u64>,
}

fn line(v: &Value) -> Bytes {
    let mut b = v.to_string().into_bytes();
    b.push(b'\n');
    Bytes::from(b)
}

/// The watch's first state, read under the store's lock.
pub(super) fn start(s: &Store, filter: Filter, from: Option<u64>, bookmarks: bool) -> Start {
    let mut start = Start {
        initial: Vec::new(),
        gone: false,
        cursor: s.rv,
        cut: s.cut,
        bookmarks: bookmarks.then_some(s.bookmarks),
        filter,
    };
    match from {
        Some(rv) if rv < s.compacted => {
            start
                .initial
                .push(line(&json!({"type": "ERROR", "object": status_object(
                410, "Expired", &format!("too old resource version: {rv} ({})", s.compacted))})));
            start.gone = true;
        }
        Some(rv) => start.cursor = rv,
        None => {
            let current = match start.filter.kind {
                Kind::Pool => std::slice::from_ref(&s.objects.pool),
                Kind::Pod => s.objects.pods.as_slice(),
                Kind::Objective => s.objects.objectives.as_slice(),
            };
            for obj in current
                .iter()
                .filter(|o| !o.is_null() && start.filter.matches(o))
            {
                start
                    .initial
                    .push(line(&json!({"type": "ADDED", "object": obj})));
            }
        }
    }
    start
}

/// The event a watch with `filter` sees for a change, if any.
fn event(change: &Change, filter: &Filter) -> Option<Bytes> {
    if change.kind != filter.kind {
        return None;
    }
    let was = change.old.as_ref().is_some_and(|o| filter.matches(o));
    let is = change.new.as_ref().is_some_and(|n| filter.matches(n));
    let (kind, object) = match (was, is) {
        (false, true) => ("ADDED", change.new.clone()?),
        (true, true) => ("MODIFIED", change.new.clone()?),
        (true, false) => {
            // Deleted, or no longer selected: its last state at this version.
            let mut o = change.new.clone().or_else(|| change.old.clone())?;
            set_rv(&mut o, change.rv);
            ("DELETED", o)
        }
        (false, false) => return None,
    };
    Some(line(&json!({"type": kind, "object": object})))
}

fn bookmark(kind: Kind, rv: u64) -> Bytes {
    let (api_version, kind) = match kind {
        Kind::Pool => (format!("{}/{}", POOL_API.0, POOL_API.1), "InferencePool"),
        Kind::Pod => ("v1".to_owned(), "Pod"),
        Kind::Objective => (
            format!("{}/{}", OBJECTIVE_API.0, OBJECTIVE_API.1),
            "InferenceObjective",
        ),
    };
    line(
        &json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                 "metadata": {"resourceVersion": rv.to_string()}}}),
    )
}

/// The streaming answer: a task follows the store and writes JSON lines into the body.
pub(super) fn respond(sh: Shared, start: Start, timeout: Option<Duration>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    // Subscribed before the first scan of the log below: no change can fall in between.
    let mut tick = sh.tick.subscribe();
    tokio::spawn(async move {
        let Start {
            filter,
            initial,
            gone,
            mut cursor,
            cut,
            mut bookmarks,
        } = start;
        for l in initial {
            if tx.send(Ok(l)).await.is_err() {
                return;
            }
        }
        if gone {
            return;
        }
        let until = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            // Changes (and a bookmark) first, then the cut: what was written before a cut
            // reaches the client before the connection drops.
            let (lines, cut_now) = {
                let s = sh.store.lock();
                let cut_now = s.cut != cut;
                // A cut watch sees nothing after the cut.
                let upto = if cut_now { s.cut_at } else { s.rv };
                let mut lines: Vec<Bytes> = s
                    .log
                    .iter()
                    .filter(|c| c.rv > cursor && c.rv <= upto)
                    .filter_map(|c| event(c, &filter))
                    .collect();
                cursor = cursor.max(upto);
                if let Some(seen) = bookmarks
                    && seen != s.bookmarks
                {
                    lines.push(bookmark(filter.kind, upto));
                    bookmarks = Some(s.bookmarks);
                }
                (lines, cut_now)
            };
            for l in lines {
                if tx.send(Ok(l)).await.is_err() {
                    return;
                }
            }
            if cut_now {
                // End the body with an error: the connection drops mid-stream (the body
                // lets the server flush what preceded it first, see below).
                let _ = tx
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "watch cut by the test",
                    )))
                    .await;
                return;
            }
            let expired = async {
                match until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = tick.changed() => if changed.is_err() { return },
                _ = expired => return,
                _ = tx.closed() => return,
            }
        }
    });
    // A cut reaches the body as an error item. Before yielding it, the body stays pending for
    // a moment: the server flushes the lines it has taken when the body has nothing to give,
    // as a real connection delivers what preceded its loss.
    let body = axum::body::Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        if item.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some((item, rx))
    }));
    match Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
    {
        Ok(r) => r.into_response(),
        Err(e) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &e.to_string(),
        ),
    }
}
