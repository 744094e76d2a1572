//! The access log (log target `access`): one line per request, written when the response ends,
//! with the true outcome (`ok`, `cut`, `client_gone`), the status, the bytes the client was
//! sent and the request id.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{MODEL, cut_upstream, epp, gateway, silent_upstream};
use futures::StreamExt;
use llmd_epp::config::ROUND_ROBIN_CONFIG;
use llmd_epp::endpoints::Role;
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of the process so far (JSON, fields flattened).
fn logs() -> &'static Lines {
    static LOGS: OnceLock<Lines> = OnceLock::new();
    LOGS.get_or_init(|| {
        let lines = Lines::default();
        let writer = lines.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .init();
        lines
    })
}

/// The access lines of one request id, waiting up to 10 s for the first.
async fn access_lines(request_id: &str) -> Vec<Value> {
    for _ in 0..200 {
        let text = String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned();
        let found: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "access" && v["request_id"] == request_id)
            .collect();
        if !found.is_empty() {
            // Any duplicate would be written at the same moment; give it a beat.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let text = String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned();
            return text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["target"] == "access" && v["request_id"] == request_id)
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Vec::new()
}

async fn front(pod: SocketAddr) -> SocketAddr {
    let epp = epp(ROUND_ROBIN_CONFIG, &[(pod, Role::Both)]).await;
    gateway(&["--epp", &format!("http://{epp}")]).await
}

fn stream_body() -> Value {
    json!({"model": MODEL, "prompt": "log me", "max_tokens": 8, "stream": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_per_request_at_the_end_with_the_true_outcome() {
    logs();
    let http = reqwest::Client::new();

    // A complete stream: `ok`, and the bytes the client received.
    let gw = front(silent_upstream(Duration::from_millis(300)).await).await;
    let r = http
        .post(format!("http://{gw}/v1/completions"))
        .header("x-request-id", "access-ok")
        .json(&stream_body())
        .send()
        .await
        .unwrap();
    let received = r.bytes().await.unwrap().len();
    let ok = access_lines("access-ok").await;
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!(ok[0]["outcome"], "ok", "{ok:?}");
    assert_eq!(ok[0]["status"], 200);
    assert_eq!(ok[0]["bytes"], received as u64, "{ok:?}");
    assert!(
        ok[0]["ms"].as_f64().unwrap() >= 300.0,
        "logged at the end: {ok:?}"
    );

    // The upstream dies mid-stream: `cut`, though the status line said 200.
    let gw = front(cut_upstream(2).await).await;
    let r = http
        .post(format!("http://{gw}/v1/completions"))
        .header("x-request-id", "access-cut")
        .json(&stream_body())
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.is_err());
    let cut = access_lines("access-cut").await;
    assert_eq!(cut.len(), 1, "{cut:?}");
    assert_eq!(cut[0]["outcome"], "cut", "{cut:?}");
    assert_eq!(cut[0]["status"], 200);

    // The client goes away mid-stream: `client_gone`.
    let gw = front(silent_upstream(Duration::from_secs(3)).await).await;
    let r = http
        .post(format!("http://{gw}/v1/completions"))
        .header("x-request-id", "access-gone")
        .json(&stream_body())
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("before the pause"));
    drop(body);
    drop(http);
    let gone = access_lines("access-gone").await;
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0]["outcome"], "client_gone", "{gone:?}");
}
