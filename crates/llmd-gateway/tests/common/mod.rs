//! Pods, an EPP and the two fronts (llmd-gateway, a real Envoy) for the gateway tests. The
//! Envoy and Python binaries come from `llmd_testkit::peers`, the pods from
//! `llmd_testkit::sim`.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use llmd_epp::config::EndpointPickerConfig;
use llmd_epp::endpoints::{EndpointSpec, EndpointsFile, Role};
use llmd_testkit::sim::SimBuilder;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// A simulator (echo mode, recording what it receives) with extra flags.
pub async fn sim(extra: &[&str]) -> SocketAddr {
    let base = [
        "--dummy-tokenizer",
        "--time-scale",
        "0",
        "--mode",
        "echo",
        "--record-requests",
        "64",
    ];
    let builder = SimBuilder::new().flags(base.iter().chain(extra).copied());
    llmd_testkit::sim::start(builder).await.detach()
}

/// An EPP over these pods (roles given) with this config.
pub async fn epp(config: &str, pods: &[(SocketAddr, Role)]) -> SocketAddr {
    epp_tls(config, pods, None).await
}

/// [`epp`] with TLS on its ext_proc port.
pub async fn epp_tls(
    config: &str,
    pods: &[(SocketAddr, Role)],
    tls: Option<llmd_epp::TlsOptions>,
) -> SocketAddr {
    let endpoints = pods
        .iter()
        .map(|(p, role)| EndpointSpec {
            address: p.ip().to_string(),
            port: p.port(),
            role: *role,
            model: Vec::new(),
            kv_events: None,
            kv_events_replay: None,
            metrics_port: None,
        })
        .collect();
    llmd_epp::start(
        llmd_epp::Options {
            config: EndpointPickerConfig::parse(config).unwrap(),
            endpoints_file: None,
            endpoints: EndpointsFile { endpoints },
            kv_events_bind: None,
            scrape_interval: Duration::from_secs(5),
            max_body_bytes: 1 << 20,
            metric_names: Default::default(),
            metrics_staleness: None,
            objectives: Vec::new(),
            subset_filter: true,
            pool_name: "test".into(),
            kubernetes: None,
            limits: Default::default(),
            grace_period: std::time::Duration::from_secs(1),
            service_name: None,
            tls,
        },
        llmd_epp::Listeners::loopback().await.unwrap(),
        None,
        CancellationToken::new(),
    )
    .await
    .unwrap()
    .grpc
}

/// llmd-gateway with these flags.
pub async fn gateway(flags: &[&str]) -> SocketAddr {
    let args = llmd_gateway::Args::parse_from(
        std::iter::once("llmd-gateway").chain(flags.iter().copied()),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    llmd_gateway::start(args, l, CancellationToken::new())
        .await
        .unwrap()
}

/// A P/D setup: prefill and decode sims, the proxy in front of decode, an EPP choosing P/D.
/// Returns (prefill sim, decode sim, EPP).
pub async fn pd_setup() -> (SocketAddr, SocketAddr, SocketAddr) {
    let (prefill, decode) = (
        sim(&["--role", "prefill"]).await,
        sim(&["--role", "decode"]).await,
    );
    let proxy_args = <llmd_pd_proxy::Args as Parser>::parse_from([
        "p",
        "--decoder",
        &format!("http://{decode}"),
        "--allow-prefill",
        "127.0.0.1",
        "--secure-proxy=false",
    ]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = llmd_pd_proxy::start(
        proxy_args.config().unwrap(),
        l,
        None,
        CancellationToken::new(),
    )
    .await
    .unwrap()
    .addr;
    let epp = epp(
        llmd_epp::testing::PD_CONFIG,
        &[(proxy, Role::Decode), (prefill, Role::Prefill)],
    )
    .await;
    (prefill, decode, epp)
}

/// What a sim recorded.
pub async fn recorded(sim: SocketAddr) -> Vec<Value> {
    let v: Value = reqwest::get(format!("http://{sim}/debug/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array().unwrap().clone()
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    pub addr: SocketAddr,
    admin: u16,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Envoy's counters and gauges (`/stats`) whose name contains `filter`, as Envoy prints them.
    pub async fn stats(&self, filter: &str) -> String {
        reqwest::get(format!(
            "http://127.0.0.1:{}/stats?filter={filter}",
            self.admin
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
    }

    /// Envoy's ext_proc filter counters (`/stats`), by name after `ext_proc.`.
    pub async fn ext_proc_stats(&self) -> std::collections::BTreeMap<String, u64> {
        self.stats("ext_proc")
            .await
            .lines()
            .filter_map(|l| {
                let (name, value) = l.split_once(": ")?;
                let short = name.rsplit_once("ext_proc.")?.1;
                Some((short.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Envoy with docs/envoy/envoy-ext-proc.yaml in front of this EPP (plaintext: the config's
/// `transport_socket` line deleted, as the file says for `--secure-serving=false`), ready. Its
/// tracer exports to a port where nothing listens (Envoy drops what it cannot send).
pub async fn envoy(bin: &std::path::Path, epp: SocketAddr) -> Envoy {
    envoy_with(bin, epp, free_port(), &[], false).await
}

/// [`envoy`] with the shipped config as it is: TLS to the EPP (an UpstreamTlsContext without
/// verification).
pub async fn envoy_tls_to_epp(bin: &std::path::Path, epp: SocketAddr) -> Envoy {
    envoy_with(bin, epp, free_port(), &[], true).await
}

/// Envoy as [`envoy`], its tracer exporting to the OTLP/gRPC receiver at `otlp_port` one span
/// at a time (runtime `tracing.opentelemetry.min_flush_spans: 1`; the default batches five),
/// so that a test sees each span as soon as Envoy finishes it. `tls_to_epp`: the shipped
/// config as it is; else its `transport_socket` line deleted.
pub async fn envoy_traced(
    bin: &std::path::Path,
    epp: SocketAddr,
    otlp_port: u16,
    tls_to_epp: bool,
) -> Envoy {
    let runtime = "{layered_runtime: {layers: [{name: test, static_layer: \
                   {tracing.opentelemetry.min_flush_spans: 1}}]}}";
    envoy_with(bin, epp, otlp_port, &["--config-yaml", runtime], tls_to_epp).await
}

async fn envoy_with(
    bin: &std::path::Path,
    epp: SocketAddr,
    otlp_port: u16,
    extra: &[&str],
    tls_to_epp: bool,
) -> Envoy {
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/envoy/envoy-ext-proc.yaml"),
    )
    .unwrap();
    let (listen, admin) = (free_port(), free_port());
    let config = template
        .replace("${LISTEN_PORT}", &listen.to_string())
        .replace("${ADMIN_PORT}", &admin.to_string())
        .replace("${EPP_PORT}", &epp.port().to_string())
        .replace("${OTLP_PORT}", &otlp_port.to_string());
    let tls_line = config
        .lines()
        .find(|l| l.trim_start().starts_with("transport_socket:"))
        .expect("the shipped config dials the EPP over TLS")
        .to_owned();
    let config = if tls_to_epp {
        config
    } else {
        config.replace(&format!("{tls_line}\n"), "")
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let child = tokio::process::Command::new(bin)
        .arg("-c")
        .arg(&path)
        .args([
            "--disable-hot-restart",
            "--log-level",
            "warn",
            "--concurrency",
            "1",
        ])
        .args(extra)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = format!("http://127.0.0.1:{admin}/ready");
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(&ready).await
            && r.status() == 200
        {
            return Envoy {
                addr: format!("127.0.0.1:{listen}").parse().unwrap(),
                admin,
                child,
                _dir: dir,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Envoy did not get ready");
}

/// One SSE event of a completions stream.
pub fn sse_event(text: &str) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"object": "text_completion", "model": MODEL, "choices": [{"index": 0, "text": text, "finish_reason": null}]})
    )
}

/// An upstream that streams one event, is silent for `pause`, then streams a second event and
/// `data: [DONE]` (a queued request or a long prefill looks like this to the gateway).
pub async fn silent_upstream(pause: Duration) -> SocketAddr {
    use axum::body::{Body, Bytes};
    let app = axum::Router::new().fallback(move || async move {
        let events = futures::stream::unfold(0u8, move |step| async move {
            let chunk = match step {
                0 => sse_event("before the pause"),
                1 => {
                    tokio::time::sleep(pause).await;
                    sse_event("after the pause")
                }
                2 => "data: [DONE]\n\n".to_owned(),
                _ => return None,
            };
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(chunk)),
                step + 1,
            ))
        });
        axum::http::Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(events))
            .unwrap()
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

/// An upstream that answers every request with a chunked SSE stream of `events` events and
/// then closes the connection without the terminating chunk: a pod dying mid-stream.
pub async fn cut_upstream(events: usize) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                // Read the whole request (headers, then Content-Length bytes of body).
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                for i in 0..events {
                    let e = sse_event(&format!("token {i} "));
                    out.extend_from_slice(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes());
                }
                let _ = s.write_all(&out).await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Dropped here: the connection closes with the body unfinished.
            });
        }
    });
    addr
}

/// The test process's Prometheus recorder (the gateway records into it).
pub fn metrics() -> &'static llmd_telemetry::MetricsHandle {
    static METRICS: std::sync::OnceLock<llmd_telemetry::MetricsHandle> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| {
        llmd_telemetry::install_prometheus(
            &[
                llmd_telemetry::names::gateway::ALL,
                llmd_telemetry::names::epp::ALL,
                llmd_telemetry::names::kv_cache::ALL,
                llmd_telemetry::names::vllm::ALL,
            ],
            &[],
        )
        .unwrap()
    })
}

/// The sum of a metric's series with these labels, now.
pub fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    llmd_telemetry::exposition::parse(&metrics().render())
        .unwrap()
        .sum(name, labels)
}
