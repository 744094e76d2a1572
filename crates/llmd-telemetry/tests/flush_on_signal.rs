//! SIGTERM flushes finished spans at once (the batch processor would otherwise hold them for
//! its 5 s schedule) and cancels the shutdown token; a service that did not take the token is
//! exited with status 143, as the default SIGTERM action would.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use llmd_telemetry::{OtlpProtocol, TelemetryConfig, TracingConfig, names};

fn config(endpoint: String) -> TelemetryConfig {
    TelemetryConfig {
        tracing: TracingConfig::default().with_endpoint(endpoint, OtlpProtocol::Grpc),
        ..TelemetryConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_spans_and_cancels_the_token() {
    if std::env::var_os("LLMD_SIGNAL_CHILD").is_some() {
        return child().await;
    }
    let (endpoint, spans) = common::start_grpc_receiver().await;
    let guard = llmd_telemetry::init("llmd-test", &config(endpoint)).unwrap();
    let token = guard.shutdown_token();
    drop(tracing::info_span!(names::spans::PD_PROXY_PREFILL));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        spans.snapshot().is_empty(),
        "batch processor exported before the signal"
    );

    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(4), token.cancelled())
        .await
        .expect("token cancelled");
    assert!(
        spans.named(names::spans::PD_PROXY_PREFILL).is_some(),
        "span flushed before the token was cancelled"
    );
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "flushed by the signal, not the 5 s batch schedule"
    );
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    // Second half: a process that never took the token exits with 128 + 15 after flushing.
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "sigterm_flushes_spans_and_cancels_the_token",
            "--nocapture",
        ])
        .env("LLMD_SIGNAL_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The child prints "ready" once its handler is installed.
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.find(|l| {
        l.as_ref()
            .map(|l| l.contains("child-ready"))
            .unwrap_or(false)
    });
    assert!(ready.is_some(), "child never became ready");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "child did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(143));
}

async fn child() {
    let (endpoint, _spans) = common::start_grpc_receiver().await;
    let _guard = llmd_telemetry::init("llmd-test-child", &config(endpoint)).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("child-ready");
    tokio::time::sleep(Duration::from_secs(30)).await;
    panic!("child was not stopped by SIGTERM");
}
