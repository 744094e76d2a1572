//! Traces: the in-process OTLP receiver (teed to `--otlp-endpoint`) and one request's
//! waterfall.

use std::time::Duration;

use anyhow::Context;
use llmd_telemetry::names;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// One trace as a waterfall: each span indented under its parent, its start and duration, and
/// a bar on the trace's time line.
pub(super) fn waterfall(spans: &[llmd_telemetry::testing::Received]) -> String {
    use std::collections::HashMap;
    use std::fmt::Write as _;
    let hex = llmd_telemetry::testing::hex;
    let t0 = spans
        .iter()
        .map(|s| s.span.start_time_unix_nano)
        .min()
        .unwrap_or(0);
    let t1 = spans
        .iter()
        .map(|s| s.span.end_time_unix_nano)
        .max()
        .unwrap_or(t0);
    let total = (t1.saturating_sub(t0)).max(1) as f64;
    let ids: std::collections::HashSet<String> =
        spans.iter().map(|s| hex(&s.span.span_id)).collect();
    let mut children: HashMap<String, Vec<&llmd_telemetry::testing::Received>> = HashMap::new();
    let mut roots = Vec::new();
    for s in spans {
        let parent = hex(&s.span.parent_span_id);
        if ids.contains(&parent) {
            children.entry(parent).or_default().push(s);
        } else {
            roots.push(s);
        }
    }
    let mut out = String::new();
    let mut stack: Vec<(&llmd_telemetry::testing::Received, usize)> = Vec::new();
    roots.sort_by_key(|s| std::cmp::Reverse(s.span.start_time_unix_nano));
    stack.extend(roots.into_iter().map(|s| (s, 0)));
    const WIDTH: f64 = 40.0;
    while let Some((s, depth)) = stack.pop() {
        let start = s.span.start_time_unix_nano.saturating_sub(t0) as f64;
        let dur = s
            .span
            .end_time_unix_nano
            .saturating_sub(s.span.start_time_unix_nano) as f64;
        let a = (start / total * WIDTH).round() as usize;
        let b = (((start + dur) / total * WIDTH).round() as usize)
            .max(a + 1)
            .min(WIDTH as usize);
        let bar: String = (0..WIDTH as usize)
            .map(|i| if i >= a && i < b { '#' } else { '.' })
            .collect();
        let name = format!("{}{}", "  ".repeat(depth), s.span.name);
        let _ = writeln!(
            out,
            "  {name:<40} {:>9.2} ms {:>9.2} ms  {bar}",
            start / 1e6,
            dur / 1e6
        );
        let mut kids = children.remove(&hex(&s.span.span_id)).unwrap_or_default();
        kids.sort_by_key(|k| std::cmp::Reverse(k.span.start_time_unix_nano));
        stack.extend(kids.into_iter().map(|k| (k, depth + 1)));
    }
    out
}

/// Prints the trace of one P/D request from the in-process span receiver.
pub(super) async fn print_trace(
    spans: &llmd_telemetry::testing::Spans,
    guard: &llmd_telemetry::TelemetryGuard,
) {
    tokio::task::block_in_place(|| guard.flush());
    let all = spans.snapshot();
    let Some(trace) = all
        .iter()
        .rev()
        .find(|s| s.span.name == names::spans::PD_PROXY_REQUEST)
        .map(|s| s.trace_id_hex())
    else {
        println!(
            "
(no P/D request trace was recorded)"
        );
        return;
    };
    let one: Vec<_> = all
        .into_iter()
        .filter(|s| s.trace_id_hex() == trace)
        .collect();
    println!(
        "
== the trace of one P/D request ({trace}), collected in this process"
    );
    println!("  {:<40} {:>12} {:>12}", "span", "start", "duration");
    print!("{}", waterfall(&one));
}

/// The in-process span receiver, also forwarding every export to `--otlp-endpoint`.
#[derive(Clone)]
struct Tee {
    spans: llmd_telemetry::testing::Spans,
    forward: Option<TraceServiceClient<tonic::transport::Channel>>,
    warned: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[tonic::async_trait]
impl TraceService for Tee {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        if let Some(client) = &self.forward {
            let mut client = client.clone();
            let sent =
                tokio::time::timeout(Duration::from_secs(10), client.export(request.clone())).await;
            let error = match sent {
                Ok(Ok(_)) => None,
                Ok(Err(status)) => Some(status.to_string()),
                Err(_) => Some("no answer within 10 s".to_owned()),
            };
            if let Some(error) = error
                && !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(%error, "--otlp-endpoint refused spans (logged once)");
            }
        }
        self.spans.add(request);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves an OTLP/gRPC receiver on `listener` that keeps the spans (for the waterfall) and
/// forwards them to `forward` (an OTLP/gRPC collector URL), if given.
pub async fn span_receiver(
    listener: tokio::net::TcpListener,
    forward: Option<&str>,
) -> anyhow::Result<llmd_telemetry::testing::Spans> {
    let spans = llmd_telemetry::testing::Spans::default();
    let forward = match forward {
        Some(url) => Some(TraceServiceClient::new(
            tonic::transport::Endpoint::from_shared(url.to_owned())
                .with_context(|| format!("--otlp-endpoint {url}"))?
                .connect_timeout(Duration::from_secs(5))
                .connect_lazy(),
        )),
        None => None,
    };
    let tee = Tee {
        spans: spans.clone(),
        forward,
        warned: Default::default(),
    };
    tokio::spawn(async move {
        if let Err(error) = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(tee))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
        {
            tracing::warn!(%error, "in-process OTLP receiver stopped");
        }
    });
    Ok(spans)
}

/// Quantile of a sample (nearest rank).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// One complete P/D request's figures, from its `llm_d.pd_proxy.request` span (ms) and the
/// decode engine's `llm_request` span under its decode leg.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PdPoint {
    /// When the proxy received the request, ns since the epoch.
    pub start_unix_nano: u64,
    pub true_ttft: f64,
    pub prefill: f64,
    pub overhead: f64,
    pub decode_ttft: f64,
    /// The decode engine's own TTFT of the same request, ms.
    pub engine_ttft: Option<f64>,
}

/// Every complete P/D request in `spans` (outcome ok, the four timings present), in the order
/// received.
pub(super) fn pd_points(spans: &[llmd_telemetry::testing::Received]) -> Vec<PdPoint> {
    use llmd_telemetry::names::attrs as a;
    use std::collections::HashMap;
    // Children by (parent span id, name): one pass, so that a long --keep-running run's spans
    // cost no more than linear time.
    let mut children: HashMap<(&[u8], &str), &llmd_telemetry::testing::Received> = HashMap::new();
    for s in spans {
        children
            .entry((s.span.parent_span_id.as_slice(), s.span.name.as_str()))
            .or_insert(s);
    }
    let child = |parent: &[u8], name: &str| children.get(&(parent, name)).copied();
    let mut out = Vec::new();
    for r in spans
        .iter()
        .filter(|s| s.span.name == names::spans::PD_PROXY_REQUEST)
        .filter(|s| s.attr("outcome").as_deref() == Some("ok"))
    {
        let (Some(true_ttft), Some(prefill), Some(overhead), Some(decode_ttft)) = (
            r.number(a::PD_TRUE_TTFT_MS),
            r.number(a::PD_PREFILL_DURATION_MS),
            r.number(a::PD_COORDINATOR_TTFT_MS),
            r.number(a::PD_DECODE_TTFT_MS),
        ) else {
            continue;
        };
        let engine_ttft = child(&r.span.span_id, names::spans::PD_PROXY_DECODE)
            .and_then(|leg| child(&leg.span.span_id, names::spans::LLM_REQUEST))
            .and_then(|e| e.number(a::GEN_AI_LATENCY_TTFT))
            .map(|s| s * 1e3);
        out.push(PdPoint {
            start_unix_nano: r.span.start_time_unix_nano,
            true_ttft,
            prefill,
            overhead,
            decode_ttft,
            engine_ttft,
        });
    }
    out
}

/// Per-request figures of the P/D requests, from their traces.
#[derive(Debug, Default)]
pub(super) struct PdBreakdown {
    pub true_ttft: Vec<f64>,
    pub prefill: Vec<f64>,
    pub overhead: Vec<f64>,
    pub decode_ttft: Vec<f64>,
    /// true TTFT − (prefill + coordinator overhead + decode TTFT), ms.
    pub residual: Vec<f64>,
    /// The decode engine's own TTFT of the same request (its `llm_request` span), ms.
    pub engine_ttft: Vec<f64>,
    /// The proxy's decode TTFT − the engine's, per request, ms.
    pub hop: Vec<f64>,
}

/// The breakdown of every complete P/D request in `spans`.
pub(super) fn pd_breakdown(spans: &[llmd_telemetry::testing::Received]) -> PdBreakdown {
    let mut out = PdBreakdown::default();
    for p in pd_points(spans) {
        out.true_ttft.push(p.true_ttft);
        out.prefill.push(p.prefill);
        out.overhead.push(p.overhead);
        out.decode_ttft.push(p.decode_ttft);
        out.residual
            .push(p.true_ttft - (p.prefill + p.overhead + p.decode_ttft));
        if let Some(e) = p.engine_ttft {
            out.engine_ttft.push(e);
            out.hop.push(p.decode_ttft - e);
        }
    }
    out
}

/// Prints the llm-d demo's breakdown (true TTFT = prefill + overhead + decode TTFT) per request
/// from the traces, next to what the decode engine reports.
pub(super) fn print_breakdown(spans: &[llmd_telemetry::testing::Received]) {
    let mut b = pd_breakdown(spans);
    if b.true_ttft.is_empty() {
        println!("\n(no complete P/D request trace was recorded)");
        return;
    }
    let n = b.true_ttft.len();
    println!("\n== the true-TTFT breakdown of {n} P/D requests, from their traces (p50 / p99, ms)");
    let row = |label: &str, v: &mut Vec<f64>| {
        println!(
            "  {label:<44} {:>9.2} {:>9.2}",
            quantile(v, 0.5),
            quantile(v, 0.99)
        );
    };
    row("true TTFT (proxy receives → first token)", &mut b.true_ttft);
    row("  = prefill leg", &mut b.prefill);
    row("  + coordinator overhead until then", &mut b.overhead);
    row(
        "  + decode TTFT (decode leg → first token)",
        &mut b.decode_ttft,
    );
    let mut abs: Vec<f64> = b.residual.iter().map(|r| r.abs()).collect();
    println!(
        "  identity residual |true − sum|               {:>9.3} {:>9.3}",
        quantile(&mut abs, 0.5),
        quantile(&mut abs, 0.99)
    );
    if !b.engine_ttft.is_empty() {
        row(
            "TTFT the decode engine reports (same requests)",
            &mut b.engine_ttft,
        );
        row("decode TTFT − engine TTFT", &mut b.hop);
        println!(
            "  The engine counts from its own arrival to its first token; the proxy's decode TTFT\n  \
             adds the HTTP hop both ways and the event's framing. Neither sees the prefill leg or the\n  \
             coordinator: the engine's figure is what a dashboard of vLLM alone would show."
        );
    }
}
