//! The Envoy `ext_proc` server (`envoy.service.ext_proc.v3.ExternalProcessor.Process`): one
//! bidirectional stream per HTTP request, answered the way Envoy and the GIE endpoint-picker
//! protocol expect (`reference/epp-and-kv-index.md` §1). This is the top of the EPP: it parses
//! the request, asks the [`Picker`] (the scheduler) for a decision off the async runtime (small
//! picks on the stream's task, [`Picker::picks_inline`]), and turns the decision or its error
//! into Envoy's answer.
//!
//! | module | what it does |
//! |---|---|
//! | `stream` | one stream's state machine: request headers, body, decision; response pass-through |
//! | `response` | the answers: header mutations, `envoy.lb` metadata, body chunks, `ImmediateResponse` |
//! | `usage` | the response's `usage`, for GIE's token histograms |
//!
//! **Full-duplex streamed bodies** (the GIE default; `protocol_config.request_body_mode =
//! FULL_DUPLEX_STREAMED`, or no `protocol_config`): request headers are stored and not answered;
//! body chunks are buffered until `end_of_stream` (Envoy 1.40 sends it as its own empty chunk);
//! then one headers response (`clear_route_cache`, the destination in
//! `x-gateway-destination-endpoint` and in `envoy.lb` dynamic metadata, `Content-Length`,
//! headers the scheduler adds such as `x-prefiller-host-port`) and the body in
//! `streamed_response` chunks of at most 62,000 bytes, `end_of_stream` on the last. Headers
//! the EPP owns are removed from the client's request unless the EPP sets them.
//!
//! **Buffered bodies** (`BUFFERED`): request headers are answered at once (Envoy waits for that
//! before sending the buffered body); the decision then goes in the body response's header
//! mutation.
//!
//! A request without a body (`end_of_stream` on its headers, e.g. GET) is routed from its
//! headers alone. The response path is passed through: headers answered, body chunks echoed
//! one by one as they arrive (full duplex), trailers answered. Errors become an
//! `ImmediateResponse` with the status from [`PickError::status`] and, where GIE defines one, an
//! `x-llm-d-request-dropped-reason` header, counted in `inference_objective_request_error_total`
//! (and llm-d's `llm_d_epp_request_error_total`) by GIE's code. Chunks arriving after the
//! request's end are ignored. The request metrics are in `request_metrics`.
//!
//! **Tracing.** The EPP's spans continue the data plane's trace: the parent is the
//! `traceparent` of the gRPC call (Envoy's ext_proc span) when there is one, else the request's
//! own. The EPP never writes its span into the request's `traceparent`: the upstream request
//! stays a child of the gateway's span.

mod request_metrics;
mod response;
mod stream;
mod usage;

pub use usage::{Usage, find_usage};

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use llmd_wire::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

use crate::inflight::{Release, Ticket};
use crate::request::InferenceRequest;
use crate::scheduling::{Decision, PickContext, PickError, Picker};

// The header names of the request path, declared once for the gateway, the EPP and the proxy.
pub use llmd_wire::headers::{
    DESTINATION_HEADER, DESTINATION_SERVED_HEADER, DROPPED_REASON_HEADER, ERROR_REASON_HEADER,
    PREFILLER_HEADER,
};
/// Request headers only the EPP may set: a client's value is removed unless the EPP sets its
/// own (a client must not choose its prefill pod).
pub const OWNED_REQUEST_HEADERS: &[&str] = &[PREFILLER_HEADER];
/// Dynamic-metadata namespace of the destination.
pub const ENVOY_LB_NAMESPACE: &str = "envoy.lb";
/// Metadata namespace of the subset hint.
pub const SUBSET_HINT_NAMESPACE: &str = "envoy.lb.subset_hint";
/// Key of the subset hint (a list of `ip:port`).
pub use llmd_wire::ext_proc::SUBSET_HINT_KEY;
/// Largest body chunk sent back to Envoy.
pub const BODY_CHUNK_LIMIT: usize = 62_000;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ExtProcConfig {
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// The EPP's `service.name` on its spans when it shares a process.
    pub service_name: Option<String>,
}

impl Default for ExtProcConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            service_name: None,
        }
    }
}

/// Scheduling cycles that run at once, each on a blocking thread.
pub const MAX_PARALLEL_PICKS: usize = 8;

/// The `ExternalProcessor` service.
pub struct ExtProcService {
    picker: Arc<dyn Picker>,
    config: Arc<ExtProcConfig>,
    parallel: Arc<Semaphore>,
    pick_inline: bool,
}

impl std::fmt::Debug for ExtProcService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtProcService")
            .field("config", &self.config)
            .finish()
    }
}

impl ExtProcService {
    /// A service deciding with `picker`.
    pub fn new<P: Picker>(picker: Arc<P>, config: ExtProcConfig) -> Self {
        Self {
            picker,
            config: Arc::new(config),
            parallel: Arc::new(Semaphore::new(MAX_PARALLEL_PICKS)),
            pick_inline: false,
        }
    }

    /// Benchmark only (`benches/stream_gaps.rs`): runs the picker inline on the stream's async
    /// task, as the EPP did before picks moved to the blocking pool, to measure what that cost
    /// streamed responses. Never use it to serve.
    #[doc(hidden)]
    #[must_use]
    pub fn pick_inline_for_bench(mut self) -> Self {
        self.pick_inline = true;
        self
    }
}

/// What a stream needs to decide.
pub(crate) struct Deps {
    pub picker: Arc<dyn Picker>,
    pub config: Arc<ExtProcConfig>,
    parallel: Arc<Semaphore>,
    /// See [`ExtProcService::pick_inline_for_bench`].
    pick_inline: bool,
}

/// A decision, and its in-flight count held until the response goes by: the guard releases
/// the count when dropped, so a stream dropped while its pick runs on a blocking thread loses
/// nothing.
pub(crate) struct Picked {
    pub result: Result<Decision, PickError>,
    pub inflight: Option<InFlightGuard>,
    pub request: Option<InferenceRequest>,
    pub headers: Vec<(String, String)>,
}

impl Deps {
    /// Runs the picker on a blocking thread (at most [`MAX_PARALLEL_PICKS`] at once; the rest
    /// wait without holding a thread), so tokenizing and scoring never stall the async workers
    /// that relay responses; picks the picker calls cheap ([`Picker::picks_inline`]: small
    /// prompts) run here, where the hop would cost more than the pick. The request and headers
    /// are moved in and handed back.
    pub async fn pick(
        &self,
        request: Option<InferenceRequest>,
        headers: Vec<(String, String)>,
        subset: Option<Vec<String>>,
        span: tracing::Span,
    ) -> Picked {
        if self.pick_inline || self.picker.picks_inline(request.as_ref()) {
            return pick_now(&self.picker, request, headers, subset, &span);
        }
        let Ok(permit) = self.parallel.clone().acquire_owned().await else {
            return Picked {
                result: Err(PickError::Internal("the EPP is shutting down".into())),
                inflight: None,
                request,
                headers,
            };
        };
        let picker = self.picker.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _entered = span.enter();
            pick_now(&picker, request, headers, subset, &span)
        })
        .await;
        joined.unwrap_or_else(|e| Picked {
            result: Err(PickError::Internal(format!("scheduling failed: {e}"))),
            inflight: None,
            request: None,
            headers: Vec::new(),
        })
    }
}

/// One pick, on this thread; a counted decision's release is armed before it is handed back.
fn pick_now(
    picker: &Arc<dyn Picker>,
    request: Option<InferenceRequest>,
    headers: Vec<(String, String)>,
    subset: Option<Vec<String>>,
    span: &tracing::Span,
) -> Picked {
    let ctx = PickContext {
        request: request.as_ref(),
        headers: &headers,
        subset,
        span,
    };
    let result = span.in_scope(|| picker.pick(&ctx));
    drop(ctx);
    let inflight = result
        .as_ref()
        .ok()
        .and_then(|d| d.ticket)
        .map(|ticket| InFlightGuard {
            picker: picker.clone(),
            ticket,
        });
    Picked {
        result,
        inflight,
        request,
        headers,
    }
}

/// Releases a counted decision when dropped ([`crate::inflight`]).
pub(crate) struct InFlightGuard {
    picker: Arc<dyn Picker>,
    ticket: Ticket,
}

impl InFlightGuard {
    pub(crate) fn release(&self, what: Release) {
        self.picker.release(self.ticket, what);
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.picker.release(self.ticket, Release::All);
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        // Envoy traces its ext_proc call: that span is the EPP spans' parent when present (read
        // only when this process exports spans).
        let grpc_trace = if !llmd_telemetry::tracing_enabled() {
            llmd_telemetry::propagation::Context::new()
        } else {
            llmd_telemetry::propagation::extract_from_pairs(request.metadata().iter().filter_map(
                |kv| match kv {
                    tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                        Some((k.as_str(), v.to_str().ok()?))
                    }
                    tonic::metadata::KeyAndValueRef::Binary(..) => None,
                },
            ))
        };
        let deps = Deps {
            picker: self.picker.clone(),
            config: self.config.clone(),
            parallel: self.parallel.clone(),
            pick_inline: self.pick_inline,
        };
        let pump = Pump {
            inbound: request.into_inner(),
            state: stream::StreamState::new(grpc_trace),
            deps,
            queued: Vec::new().into_iter(),
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            pump,
            Pump::next,
        ))))
    }
}

/// One stream's answers, produced as the data plane reads them: the inbound message is
/// handled inside the poll of the outbound stream, with no task or channel of its own (as
/// the no-op floor server does). When the data plane drops the stream (its client left), the
/// outbound stream is dropped with whatever it was awaiting: a flow-control wait leaves its
/// queue, a pick on the blocking pool finishes and its in-flight count is released.
struct Pump {
    inbound: Streaming<ProcessingRequest>,
    state: stream::StreamState,
    deps: Deps,
    /// Answers of the last message not yet handed out.
    queued: std::vec::IntoIter<ProcessingResponse>,
}

impl Pump {
    async fn next(mut self) -> Option<(Result<ProcessingResponse, Status>, Self)> {
        loop {
            if let Some(reply) = self.queued.next() {
                return Some((Ok(reply), self));
            }
            if self.state.closed() {
                return None;
            }
            let msg = match self.inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return None,
                Err(status) => {
                    tracing::debug!(%status, "ext_proc stream ended by the data plane");
                    return None;
                }
            };
            self.queued = self.state.handle(msg, &self.deps).await.into_iter();
        }
    }
}
