//! The data-plane side of the ext_proc protocol: what Envoy (or `llmd-gateway`) sends to ask
//! the EPP where a request goes, and how its first answer reads.
//!
//! [`decide`] opens one `Process` stream, sends the request headers and the whole body with
//! `end_of_stream`, and decodes the first response: a routing decision (the headers the EPP
//! sets, among them `x-gateway-destination-endpoint`) or an `ImmediateResponse`.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, HttpBody, HttpHeaders, ProcessingRequest, processing_request,
    processing_response,
};

use crate::protocol::{DESTINATION_HEADER, PREFILLER_HEADER};

/// The EPP's first answer for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Route it: the headers the EPP set.
    Route(Vec<(String, String)>),
    /// Answer the client directly.
    Reject {
        /// HTTP status.
        status: u16,
        /// Headers to send.
        headers: Vec<(String, String)>,
        /// Body to send.
        body: Vec<u8>,
    },
}

impl Answer {
    /// A header the EPP set (routing decisions only).
    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            Answer::Route(h) => h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()),
            Answer::Reject { .. } => None,
        }
    }

    /// The ordered destination list (`ip:port`, best first).
    pub fn destinations(&self) -> Vec<&str> {
        self.header(DESTINATION_HEADER)
            .map(|d| d.split(',').map(str::trim).collect())
            .unwrap_or_default()
    }

    /// The prefill pod, when the EPP chose prefill/decode.
    pub fn prefiller(&self) -> Option<&str> {
        self.header(PREFILLER_HEADER)
    }
}

/// Errors of [`decide`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gRPC call failed.
    #[error("ext_proc call failed: {0}")]
    Grpc(#[from] tonic::Status),
    /// No answer in time.
    #[error("no ext_proc answer within {0:?}")]
    Timeout(Duration),
    /// The stream ended or answered out of protocol.
    #[error("ext_proc protocol: {0}")]
    Protocol(String),
}

fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_ascii_lowercase(),
                value: String::new(),
                raw_value: v.as_bytes().to_vec(),
            })
            .collect(),
    }
}

fn pairs(hm: Option<HeaderMap>) -> Vec<(String, String)> {
    hm.map(|m| m.headers)
        .unwrap_or_default()
        .into_iter()
        .map(|h| {
            let v = if h.raw_value.is_empty() {
                h.value
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            };
            (h.key, v)
        })
        .collect()
}

fn route(common: Option<CommonResponse>) -> Answer {
    Answer::Route(pairs(common.and_then(|c| c.header_mutation).map(|m| {
        HeaderMap {
            headers: m.set_headers.into_iter().filter_map(|o| o.header).collect(),
        }
    })))
}

/// Asks the EPP where a request goes. `headers` are the HTTP request headers including the
/// pseudo-headers `:method` and `:path`; an empty `body` is sent as a bodyless request.
pub async fn decide(
    client: &mut ExternalProcessorClient<tonic::transport::Channel>,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let mut msgs = vec![ProcessingRequest {
        request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
            headers: Some(header_map(headers)),
            end_of_stream: body.is_empty(),
            ..Default::default()
        })),
        ..Default::default()
    }];
    if !body.is_empty() {
        msgs.push(ProcessingRequest {
            request: Some(processing_request::Request::RequestBody(HttpBody {
                body: body.to_vec(),
                end_of_stream: true,
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    // The request side stays open (as Envoy keeps it for the response phase) until the
    // answer is in.
    let (tx, rx) = tokio::sync::mpsc::channel(msgs.len());
    for m in msgs {
        tx.send(m)
            .await
            .map_err(|_| ClientError::Protocol("request stream closed".into()))?;
    }
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let call = async {
        let mut responses = client.process(stream).await?.into_inner();
        responses
            .message()
            .await?
            .ok_or_else(|| ClientError::Protocol("stream ended without an answer".into()))
    };
    let first = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| ClientError::Timeout(timeout))??;
    drop(tx);
    match first.response {
        Some(processing_response::Response::ImmediateResponse(ir)) => Ok(Answer::Reject {
            status: ir
                .status
                .and_then(|s| u16::try_from(s.code).ok())
                .unwrap_or(500),
            headers: pairs(ir.headers.map(|m| HeaderMap {
                headers: m.set_headers.into_iter().filter_map(|o| o.header).collect(),
            })),
            body: ir.body,
        }),
        Some(processing_response::Response::RequestHeaders(h)) => Ok(route(h.response)),
        Some(processing_response::Response::RequestBody(b)) => Ok(route(b.response)),
        other => Err(ClientError::Protocol(format!(
            "unexpected first answer {other:?}"
        ))),
    }
}
