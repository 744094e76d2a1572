//! Building the answers Envoy expects: header mutations, the destination in `envoy.lb`
//! dynamic metadata, streamed body chunks, and the `ImmediateResponse` of an error.

use std::collections::BTreeMap;

use llmd_wire::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use llmd_wire::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
    ProcessingResponse, StreamedBodyResponse, body_mutation, processing_response,
};
use llmd_wire::pb::envoy::r#type::v3::HttpStatus;
use llmd_wire::pb::google::protobuf::{Struct, Value, value::Kind};

use super::{
    BODY_CHUNK_LIMIT, DESTINATION_HEADER, DROPPED_REASON_HEADER, ENVOY_LB_NAMESPACE,
    ERROR_REASON_HEADER,
};
use crate::scheduling::PickError;

/// A processing response carrying `response`.
pub fn reply(response: processing_response::Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

/// A header to set, overwriting any value the client sent.
pub fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        append_action: 2, // OVERWRITE_IF_EXISTS_OR_ADD
        ..Default::default()
    }
}

/// The answer to the response headers: set `headers` (none: pass them through unchanged).
pub fn set_response_headers(headers: &[(String, String)]) -> HeadersResponse {
    if headers.is_empty() {
        return HeadersResponse::default();
    }
    HeadersResponse {
        response: Some(CommonResponse {
            header_mutation: Some(HeaderMutation {
                set_headers: headers.iter().map(|(k, v)| header(k, v)).collect(),
                remove_headers: Vec::new(),
            }),
            ..Default::default()
        }),
    }
}

/// `envoy.lb` dynamic metadata naming the destination.
pub fn lb_metadata(destination: &str) -> Struct {
    let inner = Struct {
        fields: BTreeMap::from([(
            DESTINATION_HEADER.to_owned(),
            Value {
                kind: Some(Kind::StringValue(destination.to_owned())),
            },
        )]),
    };
    Struct {
        fields: BTreeMap::from([(
            ENVOY_LB_NAMESPACE.to_owned(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]),
    }
}

/// The body in chunks of at most [`BODY_CHUNK_LIMIT`] bytes, `true` on the last; an empty
/// body is one empty chunk.
pub fn body_chunks(body: &[u8]) -> Vec<(&[u8], bool)> {
    if body.is_empty() {
        return vec![(body, true)];
    }
    let n = body.len().div_ceil(BODY_CHUNK_LIMIT);
    body.chunks(BODY_CHUNK_LIMIT)
        .enumerate()
        .map(|(i, c)| (c, i + 1 == n))
        .collect()
}

/// A request-body answer streaming one chunk of the (possibly rewritten) body.
pub fn streamed_request_body(chunk: &[u8], end_of_stream: bool) -> ProcessingResponse {
    reply(processing_response::Response::RequestBody(BodyResponse {
        response: Some(streamed(chunk.to_vec(), end_of_stream)),
    }))
}

/// A body mutation that streams `body`.
pub fn streamed(body: Vec<u8>, end_of_stream: bool) -> CommonResponse {
    CommonResponse {
        body_mutation: Some(BodyMutation {
            mutation: Some(body_mutation::Mutation::StreamedResponse(
                StreamedBodyResponse {
                    body,
                    end_of_stream,
                    ..Default::default()
                },
            )),
        }),
        ..Default::default()
    }
}

/// The `ImmediateResponse` of an error: its status, GIE's dropped-reason header where one
/// applies, the reason header, and the OpenAI error body.
pub fn immediate(error: &PickError) -> ProcessingResponse {
    let reason: String = format!("{}: {error}", error.code())
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(256)
        .collect();
    let mut set = vec![
        header("content-type", "application/json"),
        header(ERROR_REASON_HEADER, &reason),
    ];
    if let Some(reason) = error.dropped_reason() {
        set.push(header(DROPPED_REASON_HEADER, reason));
    }
    reply(processing_response::Response::ImmediateResponse(
        ImmediateResponse {
            status: Some(HttpStatus {
                code: i32::from(error.status()),
            }),
            headers: Some(HeaderMutation {
                set_headers: set,
                remove_headers: Vec::new(),
            }),
            body: error.openai_body(),
            grpc_status: None,
            details: error.code().to_owned(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking() {
        assert_eq!(body_chunks(b""), vec![(&b""[..], true)]);
        let big = vec![7u8; BODY_CHUNK_LIMIT * 2 + 5];
        let chunks = body_chunks(&big);
        assert_eq!(
            chunks
                .iter()
                .map(|(c, e)| (c.len(), *e))
                .collect::<Vec<_>>(),
            vec![(62_000, false), (62_000, false), (5, true)]
        );
    }
}
