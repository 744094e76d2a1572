//! In-process OTLP receivers: a real OTLP/gRPC `TraceService` server (the `opentelemetry-proto`
//! tonic stubs) and an OTLP/HTTP protobuf endpoint, both on 127.0.0.1 ephemeral ports, that
//! keep every span they receive. The workspace's tests use them, and `llmd demo` uses
//! [`start_grpc_receiver_on`] to print a trace with no tracing backend. The `start_*_receiver`
//! helpers bind their own port and panic if they cannot (tests only); callers that must not
//! panic bind the listener themselves and pass it to [`start_grpc_receiver_on`].
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// A received span with its resource's `service.name`.
#[derive(Clone, Debug)]
pub struct Received {
    pub service_name: String,
    pub span: Span,
}

impl Received {
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| {
                kv.value
                    .as_ref()
                    .and_then(|v| v.value.as_ref())
                    .map(|v| match v {
                        Value::StringValue(s) => s.clone(),
                        Value::IntValue(i) => i.to_string(),
                        Value::DoubleValue(d) => d.to_string(),
                        Value::BoolValue(b) => b.to_string(),
                        other => format!("{other:?}"),
                    })
            })
    }

    /// The attribute's value as sent (to check its type).
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    /// An attribute sent as an integer.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.value(key) {
            Some(Value::IntValue(i)) => Some(*i),
            _ => None,
        }
    }

    /// An attribute sent as a number (double, or integer).
    pub fn number(&self, key: &str) -> Option<f64> {
        match self.value(key) {
            Some(Value::DoubleValue(d)) => Some(*d),
            Some(Value::IntValue(i)) => Some(*i as f64),
            _ => None,
        }
    }

    /// Start and end, nanoseconds since the epoch.
    pub fn window(&self) -> (u64, u64) {
        (self.span.start_time_unix_nano, self.span.end_time_unix_nano)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_id_hex(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.span.trace_id)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Default, Debug)]
pub struct Spans(Arc<Mutex<Vec<Received>>>);

/// Spans a receiver keeps: the newest, so that a long-running process (`llmd demo
/// --keep-running`) does not grow without bound.
const KEEP_SPANS: usize = 100_000;

impl Spans {
    /// Keeps the spans of an export request (the newest [`KEEP_SPANS`] are kept).
    pub fn add(&self, req: ExportTraceServiceRequest) {
        let mut all = self.0.lock().unwrap();
        if all.len() >= KEEP_SPANS {
            all.drain(..KEEP_SPANS / 2);
        }
        for rs in req.resource_spans {
            let service_name = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    all.push(Received {
                        service_name: service_name.clone(),
                        span,
                    });
                }
            }
        }
    }

    pub fn snapshot(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }

    pub fn named(&self, name: &str) -> Option<Received> {
        self.snapshot().into_iter().find(|r| r.span.name == name)
    }

    /// Waits up to `timeout` for a span called `name`.
    pub async fn wait_for(&self, name: &str, timeout: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self.named(name) {
                return Some(r);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tonic::async_trait]
impl TraceService for Spans {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts an OTLP/gRPC receiver; returns its `http://127.0.0.1:PORT` endpoint and the spans.
pub async fn start_grpc_receiver() -> (String, Spans) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (
        format!("http://{addr}"),
        start_grpc_receiver_on(listener).await,
    )
}

/// Serves an OTLP/gRPC receiver on `listener`; returns the spans it will keep.
pub async fn start_grpc_receiver_on(listener: tokio::net::TcpListener) -> Spans {
    let spans = Spans::default();
    let svc = TraceServiceServer::new(spans.clone());
    tokio::spawn(async move {
        if let Err(error) = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
        {
            tracing::warn!(%error, "in-process OTLP receiver stopped");
        }
    });
    spans
}

/// Starts an OTLP/HTTP (protobuf) receiver; returns its `/v1/traces` URL and the spans.
pub async fn start_http_receiver() -> (String, Spans) {
    let spans = Spans::default();
    let state = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(req) => {
                        state.add(req);
                        (
                            axum::http::StatusCode::OK,
                            ExportTraceServiceResponse {
                                partial_success: None,
                            }
                            .encode_to_vec(),
                        )
                    }
                    Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1/traces"), spans)
}
