//! One request's routing in one call, for tests and tools: the request phase of
//! [`super::Client`] with the answer reduced to the headers the server set or its rejection.

use std::time::Duration;

use crate::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::transport::Channel;

use super::{ExtProcError, RequestDecision, RequestHead, request_phase};
use crate::headers::{DESTINATION_HEADER, PREFILLER_HEADER};

/// The ext_proc server's decision for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Route it: the headers the server set, in order.
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
    /// A header the server set (routing decisions only; the last one set wins).
    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            Answer::Route(h) => h
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            Answer::Reject { .. } => None,
        }
    }

    /// The ordered destination list (`ip:port`, best first).
    pub fn destinations(&self) -> Vec<&str> {
        self.header(DESTINATION_HEADER)
            .map(|d| d.split(',').map(str::trim).collect())
            .unwrap_or_default()
    }

    /// The prefill pod, when the server chose prefill/decode.
    pub fn prefiller(&self) -> Option<&str> {
        self.header(PREFILLER_HEADER)
    }
}

/// Asks the ext_proc server where a request goes, as the gateway does (body in 64 KiB chunks
/// and an empty end-of-stream chunk), then closes the stream. `headers` are the request's
/// headers; the pseudo-headers `:method`, `:path` (and optionally `:authority`, `:scheme`)
/// among them set the request line. An empty `body` is a bodyless request.
pub async fn decide(
    client: &mut ExternalProcessorClient<Channel>,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, ExtProcError> {
    let pseudo = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let mut map = HeaderMap::new();
    for (k, v) in headers.iter().filter(|(k, _)| !k.starts_with(':')) {
        let name = HeaderName::try_from(k.to_ascii_lowercase())
            .map_err(|e| ExtProcError::Protocol(format!("header name {k:?}: {e}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|e| ExtProcError::Protocol(format!("header {k:?}: {e}")))?;
        map.append(name, value);
    }
    let head = RequestHead {
        method: pseudo(":method").unwrap_or("POST"),
        path: pseudo(":path").unwrap_or("/"),
        authority: pseudo(":authority").unwrap_or("localhost").as_bytes(),
        scheme: pseudo(":scheme").unwrap_or("http"),
        headers: &map,
    };
    let body = Bytes::copy_from_slice(body);
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    Ok(
        match request_phase(client.clone(), timeout, &head, &body).await? {
            RequestDecision::Continue(c) => Answer::Route(
                c.set_headers
                    .into_iter()
                    .map(|(k, v)| (k, text(&v)))
                    .collect(),
            ),
            RequestDecision::Immediate(i) => Answer::Reject {
                status: i.status.as_u16(),
                headers: i
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), text(v.as_bytes())))
                    .collect(),
                body: i.body.to_vec(),
            },
        },
    )
}
