//! Scheduling: what a decision is, why one cannot be made, and the plugin contracts the
//! scheduler runs (`shared/design.md` §3). Nothing here knows the ext_proc protocol; the
//! protocol layer ([`crate::protocol`]) calls a [`Picker`] and turns its [`Decision`] or
//! [`PickError`] into Envoy's answer.
//!
//! | module | what it holds |
//! |---|---|
//! | `plugin` | the plugin traits (filter, scorer, picker, profile handler) and the per-request [`CycleState`] |
//! | `profile` | a scheduling profile (filters → weighted scorers → picker) and the profiles by name |
//! | `scheduler` | the [`scheduler::Scheduler`]: model and subset filtering, health, shedding, the handler, the decision metrics |
//! | `saturation` | GIE's utilization saturation detector: when the pool is saturated, sheddable requests are refused |

pub mod plugin;
pub mod profile;
pub mod saturation;
pub mod scheduler;

pub use plugin::{
    ApproxPrefix, CycleState, Decider, Filter, Pick, PrefixMatch, ProfileHandler, Scorer,
};
pub use profile::{Profile, Profiles};
pub use scheduler::Scheduler;

use crate::request::InferenceRequest;

/// What the scheduler decided for one request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// Endpoints in preference order (`host:port`; IPv6 hosts in brackets): the choice, then
    /// fallbacks. Not empty.
    pub endpoints: Vec<String>,
    /// Headers to add to the upstream request (e.g. `x-prefiller-host-port`).
    pub headers: Vec<(String, String)>,
    /// A rewritten body, when the scheduler changed it.
    pub body: Option<Vec<u8>>,
    /// The pods the decision loads and what each has to compute (in-flight accounting).
    pub legs: Vec<crate::inflight::Leg>,
    /// Set when the scheduler counted the decision in flight: the protocol layer releases it
    /// as the response goes by ([`Picker::release`]).
    pub ticket: Option<crate::inflight::Ticket>,
    /// Headers to set on the response to the client, in the response-headers phase (llm-d's
    /// `ResponseHeader` plugins: e.g. the session-affinity scorer's `x-session-token`).
    pub response_headers: Vec<(String, String)>,
}

/// Why no decision could be made; mapped to the client's status in one place
/// ([`PickError::status`], used by the protocol layer's `immediate` answer).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickError {
    /// The request is malformed (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The model is not served here (404).
    #[error("model {0:?} is not served by this pool")]
    UnknownModel(String),
    /// No candidate endpoint (503, `rejected-no-endpoints`).
    #[error("no ready endpoints{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    NoEndpoints(Option<String>),
    /// A sheddable request (priority < 0) while the pool is saturated (429, GIE's
    /// `ResourceExhausted`, `rejected-saturated`).
    #[error("system saturated, sheddable request dropped")]
    Saturated,
    /// Flow control: the request's band or the whole queue is full, or a higher-priority
    /// request displaced it (429, GIE's `ResourceExhausted`, `rejected-saturated`).
    #[error("request rejected by flow control: queue at capacity")]
    QueueFull,
    /// Flow control: the request waited past its TTL (503, GIE's `ServiceUnavailable`,
    /// `rejected-ttl-expired`, or `rejected-no-endpoints` when the pool had no endpoint).
    #[error("request timed out in queue{}", if *no_endpoints { " (no endpoints)" } else { "" })]
    QueueTimeout {
        /// It waited on a pool without endpoints (`noEndpointRequestTTL`).
        no_endpoints: bool,
    },
    /// Flow control: the client disconnected while queued (503, `rejected-context-cancelled`).
    /// GIE's vocabulary; the EPP itself never answers it, because a client that leaves drops
    /// its wait (counted `EvictedContextCancelled`) and there is no one to answer.
    #[error("client disconnected")]
    ClientGone,
    /// Flow control: the EPP is stopping (503, `rejected-shutting-down`).
    #[error("flow controller shutting down")]
    ShuttingDown,
    /// Body or prompt over the limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// Anything else (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl PickError {
    /// HTTP status for the client.
    pub fn status(&self) -> u16 {
        match self {
            PickError::BadRequest(_) => 400,
            PickError::UnknownModel(_) => 404,
            PickError::TooLarge(_) => 413,
            PickError::Saturated | PickError::QueueFull => 429,
            PickError::Internal(_) => 500,
            PickError::NoEndpoints(_)
            | PickError::QueueTimeout { .. }
            | PickError::ClientGone
            | PickError::ShuttingDown => 503,
        }
    }

    /// GIE's dropped-reason value, where one applies.
    pub fn dropped_reason(&self) -> Option<&'static str> {
        match self {
            PickError::NoEndpoints(_) | PickError::QueueTimeout { no_endpoints: true } => {
                Some("rejected-no-endpoints")
            }
            PickError::Saturated | PickError::QueueFull => Some("rejected-saturated"),
            PickError::QueueTimeout {
                no_endpoints: false,
            } => Some("rejected-ttl-expired"),
            PickError::ClientGone => Some("rejected-context-cancelled"),
            PickError::ShuttingDown => Some("rejected-shutting-down"),
            _ => None,
        }
    }

    /// GIE's error code (`inference error: <code> - <message>`, and the `error_code` label of
    /// the request-error counters): `BadRequest`, `NotFound`, `ResourceExhausted`,
    /// `ServiceUnavailable`, `Internal`. A body or prompt over the limit (413 here; GIE has no
    /// limit) is a `BadRequest`.
    pub fn gie_code(&self) -> &'static str {
        match self {
            PickError::BadRequest(_) | PickError::TooLarge(_) => "BadRequest",
            PickError::UnknownModel(_) => "NotFound",
            PickError::Saturated | PickError::QueueFull => "ResourceExhausted",
            PickError::NoEndpoints(_)
            | PickError::QueueTimeout { .. }
            | PickError::ClientGone
            | PickError::ShuttingDown => "ServiceUnavailable",
            PickError::Internal(_) => "Internal",
        }
    }

    /// The message as GIE words it: `inference error: <code> - <message>`.
    pub fn gie_message(&self) -> String {
        format!("inference error: {} - {self}", self.gie_code())
    }

    /// The OpenAI-style error body (`{"error": {"message", "type", "param", "code"}}`) the
    /// client receives; its message is GIE's text.
    pub fn openai_body(&self) -> Vec<u8> {
        let status = http::StatusCode::from_u16(self.status())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        llmd_wire::error_body::OpenAiError::for_status(status, self.gie_message()).to_vec()
    }

    /// A short machine-readable code (the ImmediateResponse `details`, a metric label).
    pub fn code(&self) -> &'static str {
        match self {
            PickError::BadRequest(_) => "bad_request",
            PickError::UnknownModel(_) => "unknown_model",
            PickError::TooLarge(_) => "too_large",
            PickError::Saturated => "saturated",
            PickError::QueueFull => "queue_full",
            PickError::QueueTimeout { .. } => "queue_timeout",
            PickError::ClientGone => "client_gone",
            PickError::ShuttingDown => "shutting_down",
            PickError::Internal(_) => "internal",
            PickError::NoEndpoints(_) => "no_endpoints",
        }
    }
}

/// Everything the picker sees about a request.
#[derive(Debug)]
pub struct PickContext<'a> {
    /// The parsed body (`None` for a request without body).
    pub request: Option<&'a InferenceRequest>,
    /// Request headers, names lower-cased.
    pub headers: &'a [(String, String)],
    /// The data plane's subset hint (`ip:port` list), when given.
    pub subset: Option<Vec<String>>,
    /// The span of this request's handling (parent for scheduler spans).
    pub span: &'a tracing::Span,
}

/// The scheduler behind the protocol.
pub trait Picker: Send + Sync + 'static {
    /// Chooses the endpoints for a request.
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Decision, PickError>;

    /// Whether the pick of `request` is cheap enough to run on the async worker that received
    /// it: the hop to a blocking thread then costs more than the pick. Default: never.
    fn picks_inline(&self, _request: Option<&crate::request::InferenceRequest>) -> bool {
        false
    }

    /// The data plane could not reach `endpoint`: leave it out of routing for `period`.
    fn report_unreachable(&self, _endpoint: &str, _period: std::time::Duration) {}

    /// Part or all of a counted decision is done ([`crate::inflight`]).
    fn release(&self, _ticket: crate::inflight::Ticket, _what: crate::inflight::Release) {}

    /// The request's priority and fairness id (for admission and metric labels).
    fn classify(
        &self,
        _headers: &[(String, String)],
        _model: Option<&str>,
    ) -> crate::objectives::RequestClass {
        crate::objectives::RequestClass::default()
    }

    /// The flow controller requests wait in before [`Picker::pick`] (the `flowControl`
    /// gate), if any.
    fn flow_control(&self) -> Option<&crate::flow_control::FlowControl> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_statuses() {
        assert_eq!(PickError::NoEndpoints(None).status(), 503);
        assert_eq!(
            PickError::NoEndpoints(None).dropped_reason(),
            Some("rejected-no-endpoints")
        );
        assert_eq!(PickError::Saturated.status(), 429);
        assert_eq!(
            PickError::Saturated.gie_message(),
            "inference error: ResourceExhausted - system saturated, sheddable request dropped"
        );
        assert_eq!(PickError::BadRequest("x".into()).status(), 400);
        assert_eq!(PickError::TooLarge("x".into()).status(), 413);
        // Flow control, as llm-d's admission translates its outcomes.
        assert_eq!(PickError::QueueFull.status(), 429);
        assert_eq!(
            PickError::QueueFull.dropped_reason(),
            Some("rejected-saturated")
        );
        let ttl = PickError::QueueTimeout {
            no_endpoints: false,
        };
        assert_eq!(
            (ttl.status(), ttl.dropped_reason(), ttl.gie_code()),
            (503, Some("rejected-ttl-expired"), "ServiceUnavailable")
        );
        assert_eq!(
            PickError::QueueTimeout { no_endpoints: true }.dropped_reason(),
            Some("rejected-no-endpoints")
        );
        assert_eq!(
            PickError::ClientGone.dropped_reason(),
            Some("rejected-context-cancelled")
        );
    }
}
