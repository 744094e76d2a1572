//! Scheduling never occupies the ext_proc server's async workers: with the server on a runtime
//! with one worker thread and [`MAX_PARALLEL_PICKS`] + 1 picks stuck inside the picker, another
//! request's streamed response chunks are still answered, and only `MAX_PARALLEL_PICKS` picks
//! run at once (the rest wait without a thread). If picks ran on the runtime, the first stuck
//! pick would hold the only worker and nothing else would be answered.
//! (How much this keeps inter-token gaps under real tokenizing load: `benches/stream_gaps.rs`.)

#![allow(clippy::unwrap_used)] // test setup: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use llmd_epp::protocol::{ExtProcConfig, ExtProcService, MAX_PARALLEL_PICKS};
use llmd_epp::scheduling::{Decision, PickContext, PickError, Picker};
use llmd_wire::ext_proc::{BodyAnswer, Client, RequestDecision, RequestHead};
use llmd_wire::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;

/// Requests for the model `stuck` wait in the picker until the gate opens; others are routed
/// at once.
#[derive(Default)]
struct Gated {
    open: parking_lot::Mutex<bool>,
    opened: parking_lot::Condvar,
    inside: AtomicUsize,
    most_inside: AtomicUsize,
}

impl Gated {
    fn open(&self) {
        *self.open.lock() = true;
        self.opened.notify_all();
    }
}

impl Picker for Gated {
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Decision, PickError> {
        if ctx.request.is_some_and(|r| r.model == "stuck") {
            let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_inside.fetch_max(now, Ordering::SeqCst);
            let mut open = self.open.lock();
            while !*open {
                self.opened.wait(&mut open);
            }
            drop(open);
            self.inside.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(Decision {
            endpoints: vec!["10.0.0.1:8000".into()],
            ..Default::default()
        })
    }
}

/// Opens the gate when dropped, so a failing test does not leave the server's threads stuck.
struct OpenOnDrop(Arc<Gated>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

fn body(model: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"model":"{model}","prompt":"hello","max_tokens":8}}"#
    ))
}

/// A liveness bound (not a latency assertion): long enough for any machine.
const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn streamed_chunks_are_answered_while_picks_are_stuck() {
    let gated = Arc::new(Gated::default());
    // The EPP side: one async worker.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = ExtProcService::new(gated.clone(), ExtProcConfig::default());
    server_rt.spawn(
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(svc))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    // The data plane, on its own runtime.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Declared after the runtimes, so dropped before them (a stuck worker would hang their drop).
    let _open = OpenOnDrop(gated.clone());
    client_rt.block_on(async {
        let client = Client::connect_lazy(&format!("http://{addr}"), PATIENCE).unwrap();
        let headers = HeaderMap::new();
        let head = RequestHead {
            method: "POST",
            path: "/v1/completions",
            authority: b"gateway",
            scheme: "http",
            headers: &headers,
        };
        // A response in its streaming phase.
        let RequestDecision::Continue(c) = client.request(&head, &body("m")).await.unwrap() else {
            panic!("not routed")
        };
        let mut stream = c.stream;
        assert!(
            stream
                .response_headers(StatusCode::OK, &mut HeaderMap::new())
                .await
                .unwrap()
                .is_none()
        );
        let (sender, mut answers) = stream.into_body();

        // More picks stuck in the picker than may run at once.
        let stuck: Vec<_> = (0..=MAX_PARALLEL_PICKS)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let headers = HeaderMap::new();
                    let head = RequestHead {
                        method: "POST",
                        path: "/v1/completions",
                        authority: b"gateway",
                        scheme: "http",
                        headers: &headers,
                    };
                    client.request(&head, &body("stuck")).await
                })
            })
            .collect();
        let all_in = async {
            while gated.inside.load(Ordering::SeqCst) < MAX_PARALLEL_PICKS {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(PATIENCE, all_in)
            .await
            .expect("the picks never all entered the picker: they wait for the runtime's worker");

        // The streamed response goes on: each chunk answered, with its bytes.
        for n in 0..20 {
            let chunk = Bytes::from(format!("data: {{\"token\":{n}}}\n\n"));
            sender.reserve().await.unwrap().send(&chunk, false);
            let answer = tokio::time::timeout(PATIENCE, answers.next())
                .await
                .expect("a response chunk was not answered while picks were stuck")
                .unwrap();
            match answer {
                Some(BodyAnswer::Streamed {
                    body,
                    end_of_stream,
                }) => {
                    assert_eq!(body, chunk);
                    assert!(!end_of_stream);
                }
                other => panic!("unexpected answer {other:?}"),
            }
        }
        // Still only MAX_PARALLEL_PICKS in the picker: the last one waits for a permit.
        assert_eq!(gated.inside.load(Ordering::SeqCst), MAX_PARALLEL_PICKS);

        gated.open();
        for s in stuck {
            let decision = tokio::time::timeout(PATIENCE, s)
                .await
                .expect("a stuck pick was never answered")
                .unwrap()
                .unwrap();
            assert!(matches!(decision, RequestDecision::Continue(_)));
        }
        assert_eq!(gated.most_inside.load(Ordering::SeqCst), MAX_PARALLEL_PICKS);
    });
}
