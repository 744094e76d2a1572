//! `session-affinity-scorer` (llm-d's): keeps a session on the pod that served it, with either
//! of llm-d's two strategies.
//!
//! **`encoded_endpoint_header`** (the default) is stateless. The response names the pod that
//! served the request in
//! a header (`x-session-token` by default) as the base64 (standard alphabet, padded) of its
//! endpoint id; the client sends that header back with its next request, and the pod it names
//! scores 1, every other candidate 0. llm-d encodes the pod's `namespace/name`; here a pod is
//! its `address:port` (`Endpoint::id`, the destination value), and that is what is encoded.
//!
//! A token that is not base64 of UTF-8, or that names no endpoint of the pool (a pod that has
//! gone), is ignored: the request scores as one without a session (0 everywhere), the token is
//! counted in `llmd_epp_session_tokens_ignored_total{reason="invalid"|"unknown_endpoint"}` and
//! the first of each kind is logged. A token naming a pod of the pool that is not a candidate
//! now (filtered, unhealthy) scores 0 everywhere and is not counted.
//!
//! The header is written on every response the EPP routed (llm-d's `ResponseHeader` hook),
//! naming the primary (decode) pod, or with `profileName` the first pick of that profile (the
//! P/D guides pin the prefill pod with a second instance, `profileName: prefill`, writing
//! another header); when that profile did not run (a decode-only request) nothing is written.
//! It is a soft preference: its weight against the other scorers decides whether a session
//! stays on a busy pod.
//!
//! **`session_id`** keeps the binding here: the client sends an opaque session id (header
//! `x-session-id` by default) and nothing is written back. A session bound to a pod that is a
//! candidate scores it 1, the others 0; an unbound session, or one whose pod is not a
//! candidate, scores 0 everywhere and the other scorers place it. After the decision (llm-d's
//! `PreRequest`) an unbound session is bound to the pod it was routed to (the primary pod, or
//! `profileName`'s pick); a bound one is refreshed when it went to its pod, and moves to the
//! new pod only when its pod was not a candidate (not when the other scorers outweighed it).
//! Bindings unused for `evictionTtlSeconds` are dropped, swept at most every
//! `evictionSweepSeconds` as decisions are made (no background task). This is llm-d's
//! `SessionIDHeader`; its request-attribute sources (ids published by other plugins) are
//! refused, header sources only. At most [`MAX_BINDINGS`] sessions are bound (ours): past it a
//! new session is not bound (logged once). A session id over [`MAX_SESSION_ID_BYTES`] (ours)
//! is not bound either: it is scored as no session, counted with `reason="too_long"` and
//! logged once, so the bindings' memory stays bounded by both limits.
//!
//! Parameters (llm-d's):
//! - `strategy`: `encoded_endpoint_header` (default) or `session_id`.
//! - `encodedEndpointHeaderConfig: {header}`: the request and response header
//!   (`x-session-token`); llm-d's earlier `headerName` is read the same way.
//! - `sessionIdConfig`: `sources` (`[{header: x-session-id}]`; the first non-empty wins),
//!   `evictionTtlSeconds` (300), `evictionSweepSeconds` (10); 0 or unset is the default,
//!   negative is refused.
//! - `profileName`: the profile whose pick the header names or the session is bound to
//!   (default: the primary pod).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::endpoints::{Endpoint, Pool};
use crate::scheduling::{CycleState, Decision, Scorer};

/// The llm-d type name.
pub const TYPE: &str = "session-affinity-scorer";

/// llm-d's default session header.
pub const DEFAULT_HEADER: &str = "x-session-token";

/// llm-d's default session-id header (`session_id` strategy).
pub const DEFAULT_SESSION_ID_HEADER: &str = "x-session-id";

/// llm-d's default binding lifetime, seconds.
pub const DEFAULT_EVICTION_TTL_SECONDS: f64 = 300.0;

/// llm-d's default sweep period, seconds.
pub const DEFAULT_EVICTION_SWEEP_SECONDS: f64 = 10.0;

/// Most `session_id` bindings one scorer keeps (ours; llm-d has no bound): past it, new
/// sessions are placed by the other scorers and not bound, so clients inventing session ids
/// cannot grow the map without limit.
pub const MAX_BINDINGS: usize = 1 << 20;

/// Longest session id bound (bytes).
pub const MAX_SESSION_ID_BYTES: usize = 256;

/// How the session is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The pod, encoded in a header the client echoes.
    #[default]
    EncodedEndpointHeader,
    /// A server-side map from the client's session id to its pod.
    SessionId,
}

/// `encodedEndpointHeaderConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HeaderConfig {
    /// The header (default `x-session-token`).
    pub header: Option<String>,
}

/// One `sessionIdConfig.sources` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionIdSource {
    /// A request header.
    pub header: Option<String>,
    /// A request attribute (refused: no plugin here publishes one).
    pub attribute: Option<String>,
    /// The attribute's producer (refused with `attribute`).
    pub producer: Option<String>,
}

/// `sessionIdConfig`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SessionIdConfig {
    /// Where the session id is read from.
    pub sources: Vec<SessionIdSource>,
    /// How long a binding survives unused.
    pub eviction_ttl_seconds: Option<f64>,
    /// How often expired bindings are swept.
    pub eviction_sweep_seconds: Option<f64>,
}

/// Parameters.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Params {
    /// `encoded_endpoint_header` (default) or `session_id`.
    pub strategy: Strategy,
    /// The header of `encoded_endpoint_header`.
    pub encoded_endpoint_header_config: HeaderConfig,
    /// The configuration of `session_id`.
    pub session_id_config: SessionIdConfig,
    /// The profile whose pick the response names (default: the primary pod).
    pub profile_name: Option<String>,
    /// llm-d's earlier spelling of the header.
    pub header_name: Option<String>,
}

/// A header name from the configuration, lower-cased (request headers are); empty: `default`.
fn header_name(field: &str, value: &str, default: &str) -> Result<String, String> {
    let name = value.trim().to_ascii_lowercase();
    if name.is_empty() {
        return Ok(default.to_owned());
    }
    if name.starts_with(':') || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("{field}: {value:?} is not a header name"));
    }
    Ok(name)
}

/// A positive number of seconds; unset or 0 is `default`, as llm-d reads it.
fn seconds(field: &str, value: Option<f64>, default: f64) -> Result<Duration, String> {
    match value {
        None | Some(0.0) => Ok(Duration::from_secs_f64(default)),
        Some(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        Some(v) => Err(format!("sessionIdConfig.{field} must be > 0, got {v}")),
    }
}

impl Params {
    /// The session-id headers of the `session_id` strategy, in order; its binding lifetime and
    /// sweep period.
    pub fn session_id(&self) -> Result<(Vec<String>, Duration, Duration), String> {
        let c = &self.session_id_config;
        let mut headers = Vec::new();
        for (i, src) in c.sources.iter().enumerate() {
            let field = format!("sessionIdConfig.sources[{i}]");
            match (&src.header, &src.attribute, &src.producer) {
                (Some(h), None, None) => {
                    let name = header_name(&format!("{field}.header"), h, "")?;
                    if name.is_empty() {
                        return Err(format!("{field}.header: empty"));
                    }
                    headers.push(name);
                }
                (None, Some(_), _) | (None, None, Some(_)) => {
                    return Err(format!(
                        "{field}.attribute: request attributes published by other plugins are not supported here: use a header source"
                    ));
                }
                _ => return Err(format!("{field}: exactly one of header or attribute")),
            }
        }
        if headers.is_empty() {
            headers.push(DEFAULT_SESSION_ID_HEADER.to_owned());
        }
        let ttl = seconds(
            "evictionTtlSeconds",
            c.eviction_ttl_seconds,
            DEFAULT_EVICTION_TTL_SECONDS,
        )?;
        let sweep = seconds(
            "evictionSweepSeconds",
            c.eviction_sweep_seconds,
            DEFAULT_EVICTION_SWEEP_SECONDS,
        )?;
        Ok((headers, ttl, sweep))
    }

    /// The header of the `encoded_endpoint_header` strategy, lower-cased, checked to be a
    /// header name.
    pub fn header(&self) -> Result<String, String> {
        let (field, value) = match (
            &self.encoded_endpoint_header_config.header,
            &self.header_name,
        ) {
            (Some(_), Some(_)) => {
                return Err(
                    "encodedEndpointHeaderConfig.header and headerName both set: use one".into(),
                );
            }
            (Some(h), None) => ("encodedEndpointHeaderConfig.header", h.as_str()),
            (None, Some(h)) => ("headerName", h.as_str()),
            (None, None) => ("", DEFAULT_HEADER),
        };
        header_name(field, value, DEFAULT_HEADER)
    }
}

/// Session id → (pod, last used); and when it was last swept.
type BindingMap = (HashMap<String, (String, Instant)>, Instant);

/// The `session_id` strategy's bindings.
#[derive(Debug)]
struct Bindings {
    headers: Vec<String>,
    ttl: Duration,
    sweep: Duration,
    map: parking_lot::Mutex<BindingMap>,
    full_logged: AtomicBool,
    too_long_logged: AtomicBool,
}

impl Bindings {
    /// The request's session id: the first configured header with a non-empty value.
    fn session_id<'a>(&self, cs: &'a CycleState<'_>) -> Option<&'a str> {
        let id = self.headers.iter().find_map(|h| {
            cs.headers
                .iter()
                .find(|(k, _)| k == h)
                .map(|(_, v)| v.trim())
                .filter(|v| !v.is_empty())
        })?;
        if id.len() > MAX_SESSION_ID_BYTES {
            metrics::counter!(
                llmd_telemetry::names::epp::SESSION_TOKENS_IGNORED.name,
                llmd_telemetry::names::labels::REASON => "too_long"
            )
            .increment(1);
            if !self.too_long_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    bytes = id.len(),
                    max = MAX_SESSION_ID_BYTES,
                    "session id too long, scored as no session and not bound (logged once)"
                );
            }
            return None;
        }
        Some(id)
    }

    fn bound(&self, id: &str) -> Option<String> {
        self.map.lock().0.get(id).map(|(pod, _)| pod.clone())
    }

    /// After the decision: bind, refresh, or (the bound pod was not a candidate) move.
    fn commit(&self, id: &str, pod: &str, bound_was_candidate: Option<bool>) {
        let now = Instant::now();
        let mut guard = self.map.lock();
        let (map, last_sweep) = &mut *guard;
        if now.duration_since(*last_sweep) >= self.sweep {
            map.retain(|_, (_, seen)| now.duration_since(*seen) <= self.ttl);
            *last_sweep = now;
        }
        let full = map.len() >= MAX_BINDINGS;
        match map.get_mut(id) {
            None if full => {
                if !self.full_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        bindings = map.len(),
                        "session-affinity bindings full: new sessions are not bound until old ones expire (logged once)"
                    );
                }
            }
            None => {
                map.insert(id.to_owned(), (pod.to_owned(), now));
            }
            Some((bound, seen)) if bound == pod => *seen = now,
            // Moves only on this request's confirmed absence of its pod.
            Some((bound, seen)) if bound_was_candidate == Some(false) => {
                tracing::debug!(from = bound.as_str(), to = pod, "session moved pod");
                *bound = pod.to_owned();
                *seen = now;
            }
            Some(_) => {}
        }
    }
}

/// The strategy, built.
#[derive(Debug)]
enum Mode {
    /// `encoded_endpoint_header`: the header.
    Encoded(String),
    /// `session_id`.
    SessionId(Bindings),
}

/// Why a session token was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ignored {
    Invalid,
    UnknownEndpoint,
}

impl Ignored {
    fn reason(self) -> &'static str {
        match self {
            Ignored::Invalid => "invalid",
            Ignored::UnknownEndpoint => "unknown_endpoint",
        }
    }
}

/// `session-affinity-scorer`.
#[derive(Debug)]
pub struct SessionAffinityScorer {
    name: String,
    mode: Mode,
    profile: Option<String>,
    pool: Option<Arc<Pool>>,
    logged: [AtomicBool; 2],
}

impl SessionAffinityScorer {
    /// Instance `name` with checked parameters; `pool` tells a pod that has gone from one that
    /// is not a candidate now.
    pub fn new(name: &str, params: &Params, pool: Option<Arc<Pool>>) -> Result<Self, String> {
        let mode = match params.strategy {
            Strategy::EncodedEndpointHeader => Mode::Encoded(params.header()?),
            Strategy::SessionId => {
                let (headers, ttl, sweep) = params.session_id()?;
                Mode::SessionId(Bindings {
                    headers,
                    ttl,
                    sweep,
                    map: parking_lot::Mutex::new((HashMap::new(), Instant::now())),
                    full_logged: AtomicBool::new(false),
                    too_long_logged: AtomicBool::new(false),
                })
            }
        };
        Ok(Self {
            name: name.to_owned(),
            mode,
            profile: params.profile_name.clone().filter(|p| !p.is_empty()),
            pool,
            logged: [AtomicBool::new(false), AtomicBool::new(false)],
        })
    }

    /// The session token for endpoint `id`.
    pub fn token(id: &str) -> String {
        STANDARD.encode(id.as_bytes())
    }

    /// The pod this instance pins: the primary pod, or `profileName`'s pick.
    fn chosen<'d>(&self, cs: &'d CycleState<'_>, decision: &'d Decision) -> Option<&'d String> {
        match &self.profile {
            None => decision.endpoints.first(),
            Some(profile) => cs.picks.get(profile),
        }
    }

    fn ignore(&self, why: Ignored, token: &str) {
        metrics::counter!(
            llmd_telemetry::names::epp::SESSION_TOKENS_IGNORED.name,
            llmd_telemetry::names::labels::REASON => why.reason()
        )
        .increment(1);
        let slot = match why {
            Ignored::Invalid => 0,
            Ignored::UnknownEndpoint => 1,
        };
        if !self.logged[slot].swap(true, Ordering::Relaxed) {
            let shown: String = token.chars().take(64).collect();
            tracing::warn!(
                plugin = self.name.as_str(),
                reason = why.reason(),
                token = shown,
                "session token ignored, scored as no session (the first of this kind is logged)"
            );
        }
    }

    /// The endpoint id the request's token names, if it is usable.
    fn session_pod(
        &self,
        header: &str,
        cs: &CycleState<'_>,
        candidates: &[Endpoint],
    ) -> Option<String> {
        let token = cs
            .headers
            .iter()
            .find(|(k, _)| *k == header)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())?;
        let Some(id) = STANDARD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        else {
            self.ignore(Ignored::Invalid, token);
            return None;
        };
        if candidates.iter().any(|e| *e.id == *id) {
            return Some(id);
        }
        let in_pool = match &self.pool {
            Some(pool) => pool.snapshot().iter().any(|e| *e.id == *id),
            None => false,
        };
        if !in_pool {
            self.ignore(Ignored::UnknownEndpoint, token);
        }
        None
    }
}

impl Scorer for SessionAffinityScorer {
    fn score(&self, cs: &mut CycleState<'_>, candidates: &[Endpoint]) -> Vec<f64> {
        let pod = match &self.mode {
            Mode::Encoded(header) => self.session_pod(header, cs, candidates),
            Mode::SessionId(b) => b.session_id(cs).and_then(|id| b.bound(id)).and_then(|pod| {
                let present = candidates.iter().any(|e| *e.id == *pod);
                cs.session_bound_present.insert(self.name.clone(), present);
                present.then_some(pod)
            }),
        };
        candidates
            .iter()
            .map(|e| match &pod {
                Some(id) if *e.id == **id => 1.0,
                _ => 0.0,
            })
            .collect()
    }

    fn pre_request(&self, cs: &CycleState<'_>, decision: &Decision) {
        if let Mode::SessionId(b) = &self.mode
            && let Some(id) = b.session_id(cs)
            && let Some(pod) = self.chosen(cs, decision)
        {
            b.commit(id, pod, cs.session_bound_present.get(&self.name).copied());
        }
    }

    fn response_headers(&self, cs: &CycleState<'_>, decision: &Decision) -> Vec<(String, String)> {
        match &self.mode {
            Mode::Encoded(header) => self
                .chosen(cs, decision)
                .map(|id| vec![(header.clone(), Self::token(id))])
                .unwrap_or_default(),
            // The client owns its session id: nothing is written back.
            Mode::SessionId(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::test_endpoint;

    fn scorer(params: Params) -> SessionAffinityScorer {
        SessionAffinityScorer::new(TYPE, &params, None).unwrap()
    }

    #[test]
    fn the_named_pod_scores_one_and_bad_tokens_score_as_no_session() {
        let s = scorer(Params::default());
        let eps = [test_endpoint(8000), test_endpoint(8001)];
        let token = SessionAffinityScorer::token("10.0.0.1:8001");
        assert_eq!(token, "MTAuMC4wLjE6ODAwMQ==");
        for (value, want) in [
            (token.as_str(), [0.0, 1.0]),
            ("not base64!", [0.0, 0.0]),
            ("/w==", [0.0, 0.0]), // base64 of a byte that is not UTF-8
            ("MTAuMC4wLjk6MQ==", [0.0, 0.0]), // 10.0.0.9:1, not in the pool
            ("", [0.0, 0.0]),
        ] {
            let headers = vec![("x-session-token".to_owned(), value.to_owned())];
            let mut cs = CycleState::for_test();
            cs.headers = &headers;
            assert_eq!(s.score(&mut cs, &eps), want, "{value:?}");
        }
        let mut cs = CycleState::for_test();
        assert_eq!(s.score(&mut cs, &eps), [0.0, 0.0], "no header");
    }

    #[test]
    fn the_response_names_the_primary_pod_or_the_profile_pick() {
        let d = Decision {
            endpoints: vec!["10.0.0.1:8000".into(), "10.0.0.1:8001".into()],
            ..Default::default()
        };
        let mut cs = CycleState::for_test();
        let h = scorer(Params::default()).response_headers(&cs, &d);
        assert_eq!(
            h,
            [(
                "x-session-token".to_owned(),
                "MTAuMC4wLjE6ODAwMA==".to_owned()
            )]
        );
        let prefill = scorer(Params {
            profile_name: Some("prefill".into()),
            encoded_endpoint_header_config: HeaderConfig {
                header: Some("X-Session-Token-Prefill".into()),
            },
            ..Default::default()
        });
        assert!(
            prefill.response_headers(&cs, &d).is_empty(),
            "no prefill pick"
        );
        cs.picks.insert("prefill".into(), "10.0.0.2:9000".into());
        assert_eq!(
            prefill.response_headers(&cs, &d),
            [(
                "x-session-token-prefill".to_owned(),
                SessionAffinityScorer::token("10.0.0.2:9000")
            )]
        );
    }

    #[test]
    fn a_session_id_over_the_limit_is_not_bound() {
        let s = scorer(Params {
            strategy: Strategy::SessionId,
            ..Default::default()
        });
        let (a, b) = (test_endpoint(8000), test_endpoint(8001));
        let both = [a.clone(), b.clone()];
        for (len, bound) in [
            (MAX_SESSION_ID_BYTES, [0.0, 1.0]),
            (MAX_SESSION_ID_BYTES + 1, [0.0, 0.0]),
        ] {
            let headers = vec![("x-session-id".to_owned(), "x".repeat(len))];
            let mut cs = CycleState::for_test();
            cs.headers = &headers;
            s.score(&mut cs, &both);
            s.pre_request(
                &cs,
                &Decision {
                    endpoints: vec![b.id.to_string()],
                    ..Default::default()
                },
            );
            let mut cs = CycleState::for_test();
            cs.headers = &headers;
            assert_eq!(s.score(&mut cs, &both), bound, "{len} bytes");
        }
    }

    #[test]
    fn session_ids_bind_refresh_move_only_on_absence_and_expire() {
        let s = scorer(Params {
            strategy: Strategy::SessionId,
            session_id_config: SessionIdConfig {
                eviction_ttl_seconds: Some(0.001),
                eviction_sweep_seconds: Some(0.001),
                ..Default::default()
            },
            ..Default::default()
        });
        let (a, b) = (test_endpoint(8000), test_endpoint(8001));
        let headers = vec![("x-session-id".to_owned(), "conv-7".to_owned())];
        let decided = |pod: &Endpoint| Decision {
            endpoints: vec![pod.id.to_string()],
            ..Default::default()
        };
        let run = |candidates: &[Endpoint], routed: &Endpoint| {
            let mut cs = CycleState::for_test();
            cs.headers = &headers;
            let scores = s.score(&mut cs, candidates);
            let d = decided(routed);
            assert!(
                s.response_headers(&cs, &d).is_empty(),
                "nothing written back"
            );
            s.pre_request(&cs, &d);
            scores
        };
        let both = [a.clone(), b.clone()];
        assert_eq!(run(&both, &b), [0.0, 0.0], "unbound: no preference");
        assert_eq!(run(&both, &a), [0.0, 1.0], "bound to b");
        // Routed to a although b was a candidate (outweighed): the binding stays.
        assert_eq!(run(&both, &b), [0.0, 1.0]);
        // b is not a candidate: no preference, and the session moves to where it went.
        assert_eq!(run(std::slice::from_ref(&a), &a), [0.0]);
        assert_eq!(run(&both, &a), [1.0, 0.0], "moved to a");
        // Unused past its TTL, a binding is swept at the next decision.
        std::thread::sleep(Duration::from_millis(20));
        let other = vec![("x-session-id".to_owned(), "conv-8".to_owned())];
        let mut cs = CycleState::for_test();
        cs.headers = &other;
        s.pre_request(&cs, &decided(&b));
        assert_eq!(run(&both, &b), [0.0, 0.0], "conv-7 expired");
    }

    #[test]
    fn parameters_are_checked() {
        let p = |yaml: &str| serde_yaml_ng::from_str::<Params>(yaml);
        assert_eq!(
            p("{headerName: X-Sess}").unwrap().header().unwrap(),
            "x-sess"
        );
        let (h, ttl, sweep) = p("{strategy: session_id}").unwrap().session_id().unwrap();
        assert_eq!(
            (h, ttl.as_secs(), sweep.as_secs()),
            (vec!["x-session-id".to_owned()], 300, 10)
        );
        for (bad, field) in [
            (
                "{sessionIdConfig: {evictionTtlSeconds: -1}}",
                "evictionTtlSeconds",
            ),
            (
                "{sessionIdConfig: {sources: [{attribute: agent-identity}]}}",
                "sources[0].attribute",
            ),
            (
                "{sessionIdConfig: {sources: [{header: a, attribute: b}]}}",
                "sources[0]",
            ),
            (
                "{sessionIdConfig: {sources: [{header: 'x y'}]}}",
                "sources[0].header",
            ),
        ] {
            let e = p(bad).unwrap().session_id().unwrap_err();
            assert!(e.contains(field), "{bad}: {e}");
        }
        assert!(
            p("{encodedEndpointHeaderConfig: {header: 'bad header'}}")
                .unwrap()
                .header()
                .unwrap_err()
                .contains("encodedEndpointHeaderConfig.header")
        );
        for bad in [
            "{strategy: cookie}",
            "{encodedEndpointHeaderConfig: {hdr: x}}",
            "{sessionIdConfig: {evictionTTLSeconds: 3}}",
            "{profile: prefill}",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
