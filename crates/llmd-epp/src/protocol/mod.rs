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
use tokio::sync::{Semaphore, mpsc};
use tonic::{Request, Response, Status, Streaming};

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
#[derive(Clone)]
pub(crate) struct Deps {
    pub picker: Arc<dyn Picker>,
    pub config: Arc<ExtProcConfig>,
    parallel: Arc<Semaphore>,
    /// See [`ExtProcService::pick_inline_for_bench`].
    pick_inline: bool,
    /// The stream's answers: closed when the data plane drops the stream (its client left),
    /// which ends a flow-control wait.
    answers: Option<mpsc::Sender<Result<ProcessingResponse, Status>>>,
}

impl Deps {
    /// Resolves when the data plane has dropped this stream (never without one).
    pub async fn client_gone(&self) {
        match &self.answers {
            Some(tx) => tx.closed().await,
            None => std::future::pending().await,
        }
    }
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
    ) -> (
        Result<Decision, PickError>,
        Option<InferenceRequest>,
        Vec<(String, String)>,
    ) {
        if self.pick_inline || self.picker.picks_inline(request.as_ref()) {
            let ctx = PickContext {
                request: request.as_ref(),
                headers: &headers,
                subset,
                span: &span,
            };
            let result = span.in_scope(|| self.picker.pick(&ctx));
            drop(ctx);
            return (result, request, headers);
        }
        let Ok(permit) = self.parallel.clone().acquire_owned().await else {
            return (
                Err(PickError::Internal("the EPP is shutting down".into())),
                request,
                headers,
            );
        };
        let picker = self.picker.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _entered = span.enter();
            let ctx = PickContext {
                request: request.as_ref(),
                headers: &headers,
                subset,
                span: &span,
            };
            let result = picker.pick(&ctx);
            drop(ctx);
            (result, request, headers)
        })
        .await;
        match joined {
            Ok(r) => r,
            Err(e) => (
                Err(PickError::Internal(format!("scheduling failed: {e}"))),
                None,
                Vec::new(),
            ),
        }
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
        // Envoy traces its ext_proc call: that span is the EPP spans' parent when present.
        let grpc_trace = llmd_telemetry::propagation::extract_from_pairs(
            request.metadata().iter().filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.as_str(), v.to_str().ok()?))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            }),
        );
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<ProcessingResponse, Status>>(16);
        let deps = Deps {
            picker: self.picker.clone(),
            config: self.config.clone(),
            parallel: self.parallel.clone(),
            pick_inline: self.pick_inline,
            answers: Some(tx.clone()),
        };
        tokio::spawn(async move {
            let mut state = stream::StreamState::new(grpc_trace);
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "ext_proc stream ended by the data plane");
                        break;
                    }
                };
                let replies = state.handle(msg, &deps).await;
                for reply in replies {
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
                if state.closed() {
                    break;
                }
            }
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        Ok(Response::new(Box::pin(stream)))
    }
}
