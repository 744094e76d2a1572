//! `session-affinity-scorer` (llm-d's, strategy `encoded_endpoint_header`): keeps a session on
//! the pod that served it, statelessly. The response names the pod that served the request in
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
//! Parameters (llm-d's):
//! - `strategy`: `encoded_endpoint_header` (default). llm-d's `session_id` (a server-side map
//!   from a client's session id to its pod) is refused with that advice.
//! - `encodedEndpointHeaderConfig: {header}`: the request and response header
//!   (`x-session-token`); llm-d's earlier `headerName` is read the same way.
//! - `profileName`: the profile whose pick the header names (default: the primary pod).
//! - `sessionIdConfig` (`sources`, `evictionTtlSeconds`, `evictionSweepSeconds`): checked for
//!   spelling, used only by the `session_id` strategy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::endpoints::{Endpoint, Pool};
use crate::scheduling::{CycleState, Decision, Scorer};

/// The llm-d type name.
pub const TYPE: &str = "session-affinity-scorer";

/// llm-d's default session header.
pub const DEFAULT_HEADER: &str = "x-session-token";

/// How the session is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The pod, encoded in a header the client echoes.
    #[default]
    EncodedEndpointHeader,
    /// A server-side session map (refused here).
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
    /// A request attribute.
    pub attribute: Option<String>,
}

/// `sessionIdConfig` (read for spelling only).
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

impl Params {
    /// The header, lower-cased (request headers are), checked to be a header name.
    pub fn header(&self) -> Result<String, String> {
        if self.strategy == Strategy::SessionId {
            return Err(
                "strategy session_id (a server-side session map) is not supported: use encoded_endpoint_header, the default"
                    .into(),
            );
        }
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
        let name = value.trim().to_ascii_lowercase();
        if name.is_empty() {
            return Ok(DEFAULT_HEADER.to_owned());
        }
        if name.starts_with(':') || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("{field}: {value:?} is not a header name"));
        }
        Ok(name)
    }
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
    header: String,
    profile: Option<String>,
    pool: Option<Arc<Pool>>,
    logged: [AtomicBool; 2],
}

impl SessionAffinityScorer {
    /// Instance `name` with checked parameters; `pool` tells a pod that has gone from one that
    /// is not a candidate now.
    pub fn new(name: &str, params: &Params, pool: Option<Arc<Pool>>) -> Result<Self, String> {
        Ok(Self {
            name: name.to_owned(),
            header: params.header()?,
            profile: params.profile_name.clone().filter(|p| !p.is_empty()),
            pool,
            logged: [AtomicBool::new(false), AtomicBool::new(false)],
        })
    }

    /// The session token for endpoint `id`.
    pub fn token(id: &str) -> String {
        STANDARD.encode(id.as_bytes())
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
                header = self.header.as_str(),
                reason = why.reason(),
                token = shown,
                "session token ignored, scored as no session (the first of this kind is logged)"
            );
        }
    }

    /// The endpoint id the request's token names, if it is usable.
    fn session_pod(&self, cs: &CycleState<'_>, candidates: &[Endpoint]) -> Option<String> {
        let token = cs
            .headers
            .iter()
            .find(|(k, _)| *k == self.header)
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
        let pod = self.session_pod(cs, candidates);
        candidates
            .iter()
            .map(|e| match &pod {
                Some(id) if *e.id == **id => 1.0,
                _ => 0.0,
            })
            .collect()
    }

    fn response_headers(&self, cs: &CycleState<'_>, decision: &Decision) -> Vec<(String, String)> {
        let pod = match &self.profile {
            None => decision.endpoints.first(),
            Some(profile) => cs.picks.get(profile),
        };
        pod.map(|id| vec![(self.header.clone(), Self::token(id))])
            .unwrap_or_default()
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
    fn parameters_are_checked() {
        let p = |yaml: &str| serde_yaml_ng::from_str::<Params>(yaml);
        assert_eq!(
            p("{headerName: X-Sess}").unwrap().header().unwrap(),
            "x-sess"
        );
        assert!(p("{strategy: session_id}").unwrap().header().is_err());
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
