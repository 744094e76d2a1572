//! The ext_proc floor: a no-op Envoy `ext_proc` server over the same tonic / `llmd_wire::pb`
//! stack as the EPP, for `scripts/bench-epp-floor.sh`. It routes every request to one fixed
//! backend and does nothing else, so Envoy in front of it costs what any ext_proc router costs;
//! the EPP is measured against it.
//!
//! Every phase gets the smallest answer that routes: request headers and a buffered request
//! body each get a headers/body response that sets `x-gateway-destination-endpoint` to the
//! backend (and clears the route cache, as the EPP does); the response phases and trailers are
//! passed through with empty answers. There is no per-stream task: the inbound stream is mapped
//! to the outbound one.
//!
//!   cargo run --release -p llmd-epp --example noop_ext_proc -- --port 9002 --destination 127.0.0.1:8000

use std::pin::Pin;

use clap::Parser;
use futures::{Stream, StreamExt};
use llmd_epp::protocol::DESTINATION_HEADER;
use llmd_wire::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use llmd_wire::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ProcessingRequest,
    ProcessingResponse, TrailersResponse, processing_request, processing_response,
};
use tonic::{Request, Response, Status, Streaming};

/// A no-op ext_proc server: every request goes to `--destination`.
#[derive(Debug, Parser)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// ext_proc gRPC port.
    #[arg(long, default_value_t = 9002)]
    port: u16,
    /// The backend, `ip:port`, put in `x-gateway-destination-endpoint`.
    #[arg(long)]
    destination: String,
}

struct Noop {
    destination: String,
}

impl Noop {
    /// Route to the backend: a header mutation setting the destination.
    fn route(&self) -> CommonResponse {
        CommonResponse {
            header_mutation: Some(HeaderMutation {
                set_headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: DESTINATION_HEADER.to_owned(),
                        value: String::new(),
                        raw_value: self.destination.as_bytes().to_vec(),
                    }),
                    append_action: 2, // OVERWRITE_IF_EXISTS_OR_ADD
                    ..Default::default()
                }],
                remove_headers: Vec::new(),
            }),
            clear_route_cache: true,
            ..Default::default()
        }
    }

    fn answer(&self, msg: ProcessingRequest) -> Option<ProcessingResponse> {
        use processing_request::Request as In;
        use processing_response::Response as Out;
        let response = match msg.request? {
            In::RequestHeaders(_) => Out::RequestHeaders(HeadersResponse {
                response: Some(self.route()),
            }),
            In::RequestBody(_) => Out::RequestBody(BodyResponse {
                response: Some(self.route()),
            }),
            In::RequestTrailers(_) => Out::RequestTrailers(TrailersResponse::default()),
            In::ResponseHeaders(_) => Out::ResponseHeaders(HeadersResponse::default()),
            In::ResponseBody(_) => Out::ResponseBody(BodyResponse::default()),
            In::ResponseTrailers(_) => Out::ResponseTrailers(TrailersResponse::default()),
        };
        Some(ProcessingResponse {
            response: Some(response),
            ..Default::default()
        })
    }
}

type Out = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Noop {
    type ProcessStream = Out;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Out>, Status> {
        let me = Noop {
            destination: self.destination.clone(),
        };
        let out = request.into_inner().filter_map(move |msg| {
            let reply = match msg {
                Ok(m) => me.answer(m).map(Ok),
                Err(_) => None, // the data plane ended the stream
            };
            std::future::ready(reply)
        });
        Ok(Response::new(Box::pin(out)))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
    eprintln!("noop ext_proc on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(ExternalProcessorServer::new(Noop {
            destination: args.destination,
        }))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await?;
    Ok(())
}
