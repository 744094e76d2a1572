//! The ext_proc exchange of the request phase: the EPP sees the request's headers and body and
//! decides (through [`llmd_wire::ext_proc::Client`]); when it cannot be asked, 503 or, with
//! `--fail-open`, the default endpoint.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use llmd_wire::error_chain::chain;
use llmd_wire::ext_proc::{Client, RequestDecision, RequestHead, Stream};
use llmd_wire::headers::DESTINATION_HEADER;

use crate::failure::{self, Reason};
use crate::relay::immediate_response;

/// What the request phase decided.
pub(crate) enum Decision {
    /// Answer the client with this.
    Respond(Response),
    /// Forward: the headers and body as the EPP left them, and its stream for the response
    /// phase (`None`: the response passes through).
    Forward {
        headers: HeaderMap,
        body: Bytes,
        stream: Option<Box<Stream>>,
    },
}

/// Asks the EPP about a request.
pub(crate) async fn ask(
    epp: &Client,
    head: &RequestHead<'_>,
    body: Bytes,
    fail_open_to: Option<&str>,
    response_processing: bool,
    request_id: &str,
) -> Decision {
    let error = match epp.request(head, &body).await {
        Ok(RequestDecision::Immediate(i)) => return Decision::Respond(immediate_response(i)),
        Ok(RequestDecision::Continue(c)) => {
            let c = *c;
            return Decision::Forward {
                headers: c.headers,
                body: c.body,
                stream: response_processing.then(|| Box::new(c.stream)),
            };
        }
        Err(e) => e,
    };
    let why = format!("the endpoint picker is unavailable: {}", chain(&error));
    match fail_open_to.and_then(|d| HeaderValue::from_str(d).ok()) {
        Some(destination) => {
            failure::record(request_id, Reason::EppUnavailable, &why);
            let mut headers = head.headers.clone();
            headers.insert(DESTINATION_HEADER, destination);
            Decision::Forward {
                headers,
                body,
                stream: None,
            }
        }
        None => Decision::Respond(failure::respond(request_id, Reason::EppUnavailable, &why)),
    }
}
