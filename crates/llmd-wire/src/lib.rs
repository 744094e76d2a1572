//! The wire pieces shared by llmd-rs's gateway, endpoint picker (EPP) and P/D proxy: what
//! crosses a process boundary on the request path, written down once.
//!
//! | module | what it holds |
//! |---|---|
//! | [`headers`] | header names (`x-gateway-destination-endpoint`, `x-prefiller-host-port`, `x-llm-d-*`, the timing and request-id headers) and the hop-by-hop list |
//! | [`error_body`] | the two JSON error bodies, vLLM's and OpenAI/GIE's, with who sends which |
//! | [`error_chain`] | walking an error's causes: one message for the whole chain, or the first cause of a type |
//! | [`ext_proc`] | the data-plane side of Envoy's ext_proc protocol: the one ext_proc client |
//! | [`pb`] | the ext_proc protocol's protobuf messages and tonic client and server, generated from `proto/` |
//! | [`tls`] | rustls (ring): certificate directories re-read on change, self-signed certificates, client configurations, a TLS listener for tonic |
//!
//! This crate sits at the bottom of the crate graph: it depends on no other llmd-rs crate.

pub mod error_body;
pub mod error_chain;
pub mod ext_proc;
pub mod headers;
pub mod pb;
pub mod tls;
