//! llmd-gateway and a real Envoy 1.40 (ext_proc filter + ORIGINAL_DST cluster, the config in
//! docs/envoy/envoy-ext-proc.yaml) held to the same behaviour in front of the same llmd-epp:
//! routing by the EPP, streaming through the response-body echo, ImmediateResponse errors,
//! P/D through the proxy, and the EPP being down.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;

use common::{MODEL, envoy, epp, gateway, pd_setup, recorded, sim};
use llmd_epp::config::ROUND_ROBIN_CONFIG;
use llmd_epp::endpoints::Role;
use llmd_testkit::peers::envoy_bin;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Front {
    Gateway,
    Envoy,
}

/// The fronts to test: the gateway always, Envoy when the test venv has it (always in CI).
fn fronts() -> Vec<Front> {
    let mut f = vec![Front::Gateway];
    if envoy_bin().is_some() {
        f.push(Front::Envoy);
    }
    f
}

/// A front over this EPP; the guard keeps Envoy alive.
async fn front(kind: Front, epp: SocketAddr) -> (SocketAddr, Option<common::Envoy>) {
    match kind {
        Front::Gateway => (
            gateway(&[
                "--epp",
                &format!("http://{epp}"),
                "--epp-timeout-ms",
                "2000",
            ])
            .await,
            None,
        ),
        Front::Envoy => {
            let e = envoy(&envoy_bin().unwrap(), epp).await;
            (e.addr, Some(e))
        }
    }
}

fn texts(sse: &str) -> Vec<String> {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_streaming_and_errors_match_envoy() {
    for kind in fronts() {
        let (a, b) = (sim(&[]).await, sim(&[]).await);
        let epp = epp(ROUND_ROBIN_CONFIG, &[(a, Role::Both), (b, Role::Both)]).await;
        let (url, _guard) = front(kind, epp).await;
        let http = reqwest::Client::new();
        let body = json!({"model": MODEL, "prompt": "which pod answers", "max_tokens": 4});
        let mut answers = Vec::new();
        for _ in 0..4 {
            let r = http
                .post(format!("http://{url}/v1/completions"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{kind:?}");
            let v: Value = r.json().await.unwrap();
            answers.push(v["choices"][0]["text"].clone());
        }
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{kind:?}: {answers:?}"
        );
        // Round robin over the two pods, the destination chosen by the EPP.
        assert_eq!(
            (recorded(a).await.len(), recorded(b).await.len()),
            (2, 2),
            "{kind:?}"
        );

        // Streaming, every event through the EPP's response-body echo.
        let sbody = json!({"model": MODEL, "prompt": "stream it", "max_tokens": 6, "stream": true});
        let direct = http
            .post(format!("http://{a}/v1/completions"))
            .json(&sbody)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let r = http
            .post(format!("http://{url}/v1/completions"))
            .json(&sbody)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{kind:?}");
        let via = r.text().await.unwrap();
        assert_eq!(texts(&via), texts(&direct), "{kind:?}");
        assert!(via.trim_end().ends_with("data: [DONE]"), "{kind:?}: {via}");

        // The EPP's ImmediateResponse: status, headers and body reach the client; no pod called.
        let before = recorded(a).await.len() + recorded(b).await.len();
        let r = http
            .post(format!("http://{url}/v1/completions"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{kind:?}");
        assert!(r.headers().contains_key("x-llm-d-error-reason"), "{kind:?}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("inference error"),
            "{kind:?}: {v}"
        );
        assert_eq!(
            recorded(a).await.len() + recorded(b).await.len(),
            before,
            "{kind:?}"
        );
        // Envoy's own view of the ext_proc exchanges: every request opened a stream, and the
        // EPP sent nothing Envoy found out of place or failed on.
        if let Some(envoy) = &_guard {
            let stats = envoy.ext_proc_stats().await;
            assert!(stats["streams_started"] >= 6, "{stats:?}");
            assert!(stats["stream_msgs_received"] > 0, "{stats:?}");
            assert_eq!(stats["immediate_responses_sent"], 1, "the 400: {stats:?}");
            for bad in [
                "spurious_msgs_received",
                "streams_failed",
                "message_timeouts",
                "rejected_header_mutations",
                "failure_mode_allowed",
            ] {
                assert_eq!(stats.get(bad), Some(&0), "{bad}: {stats:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefill_decode_through_either_front() {
    for kind in fronts() {
        let (prefill, decode, epp) = pd_setup().await;
        let (url, _guard) = front(kind, epp).await;
        let r = reqwest::Client::new()
            .post(format!("http://{url}/v1/completions"))
            .json(&json!({"model": MODEL, "prompt": "disaggregated behind a gateway", "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            let status = r.status();
            panic!("{kind:?}: {status} {}", r.text().await.unwrap_or_default());
        }
        let timing = r
            .headers()
            .get("server-timing")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(timing.contains("prefill;dur="), "{kind:?}: {timing}");
        let text = r.text().await.unwrap();
        assert!(text.contains("\"completion_tokens\":4"), "{kind:?}: {text}");
        let p = recorded(prefill).await;
        assert_eq!(p.len(), 1, "{kind:?}");
        assert_eq!(p[0]["body"]["max_tokens"], 1);
        let d = recorded(decode).await;
        assert!(
            d[0]["body"]["kv_transfer_params"]["remote_engine_id"].is_string(),
            "{kind:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_epp_is_a_server_error_on_either_front() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for kind in fronts() {
        let (url, _guard) = front(kind, dead).await;
        let r = reqwest::Client::new()
            .post(format!("http://{url}/v1/completions"))
            .json(&json!({"model": MODEL, "prompt": "x", "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        // Envoy with failure_mode_allow: false answers 500; the gateway says 503.
        let want = if kind == Front::Envoy { 500 } else { 503 };
        assert_eq!(r.status(), want, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_measures_through_either_front() {
    use clap::Parser;
    for kind in fronts() {
        let (a, b) = (sim(&[]).await, sim(&[]).await);
        let epp = epp(ROUND_ROBIN_CONFIG, &[(a, Role::Both), (b, Role::Both)]).await;
        let (url, _guard) = front(kind, epp).await;
        let endpoint = format!("http://{url}/v1");
        let llmd_loadgen::Command::Run(args) = llmd_loadgen::Args::parse_from([
            "l",
            "run",
            "--endpoint",
            &endpoint,
            "--model",
            MODEL,
            "--tokenizer",
            "bytes",
            "--quiet",
            "--load",
            "constant",
            "--rate",
            "100",
            "--requests",
            "40",
            "--stream",
            "--input-tokens",
            "64",
            "--output-tokens",
            "5",
        ])
        .command
        else {
            unreachable!()
        };
        let r = llmd_loadgen::run_load(&args, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
        let g = &r.overall;
        assert_eq!((g.requests, g.ok), (40, 40), "{kind:?}: {:?}", g.errors);
        assert_eq!(g.output_tokens, 40 * 5, "{kind:?}");
        assert_eq!(g.ttft_ms.count, 40, "{kind:?}");
        assert_eq!(
            (recorded(a).await.len(), recorded(b).await.len()),
            (20, 20),
            "{kind:?}"
        );
    }
}
