//! `llmd demo`: the stack on loopback ports in this one process, driven and summarised.
//!
//! This version runs the demo's part 2, prefill/decode: two prefill simulators and one decode
//! simulator (TP=2 in its model shape) with `llmd-pd-proxy` in front of it, `llmd-epp` with the
//! P/D profile handler, `llmd-gateway` in front, and the `pd-concurrent` load through the
//! gateway. It prints the true-TTFT breakdown the proxy measured against the TTFT the engines
//! report, the NIXL transfers, the EPP's P/D decisions and the success rate, and exits non-zero
//! when its own sanity checks fail, after printing one P/D request's trace as a waterfall
//! (collected by an in-process OTLP receiver unless `OTEL_EXPORTER_OTLP_ENDPOINT` sends spans
//! elsewhere). Part 1 (precise prefix-cache routing) is not built yet.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use llmd_telemetry::names;
use tokio_util::sync::CancellationToken;

/// Flags of `llmd demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Logging and tracing (OTEL_EXPORTER_OTLP_ENDPOINT exports every component's spans).
    #[command(flatten)]
    pub telemetry: llmd_telemetry::TelemetryArgs,
    /// Seconds of load.
    #[arg(long, default_value_t = 30.0)]
    pub duration_s: f64,
    /// Load workers (`pd-concurrent` patterns).
    #[arg(long, default_value_t = 6)]
    pub workers: usize,
    /// Multiplies the simulators' timing (1 = an 8B model on one GPU, roughly).
    #[arg(long, default_value_t = 0.2)]
    pub time_scale: f64,
    /// Multiplies the load patterns' pauses.
    #[arg(long, default_value_t = 0.2)]
    pub pace: f64,
    /// Prompts above this many uncached tokens (as the EPP estimates them) go prefill/decode.
    #[arg(long, default_value_t = 200)]
    pub pd_threshold: u32,
    /// Leave the stack running after the summary (Ctrl-C stops it).
    #[arg(long)]
    pub keep_running: bool,
    /// Print a line per request.
    #[arg(long)]
    pub lines: bool,
}

async fn bind() -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
}

async fn sim(flags: &[&str], stop: &CancellationToken) -> anyhow::Result<SocketAddr> {
    let args = llmd_sim::EngineArgs::from_flags(flags.iter().copied())
        .map_err(|e| anyhow::anyhow!("simulator flags: {e}"))?;
    Ok(llmd_sim::start(args, bind().await?, None, stop.clone())
        .await?
        .addr)
}

fn pd_config(threshold: u32) -> String {
    format!(
        r#"
plugins:
  - type: decode-filter
  - type: prefill-filter
  - type: queue-scorer
  - type: max-score-picker
  - type: pd-profile-handler
    parameters: {{threshold: {threshold}}}
schedulingProfiles:
  - name: decode
    plugins: [{{pluginRef: decode-filter}}, {{pluginRef: queue-scorer}}, {{pluginRef: max-score-picker}}]
  - name: prefill
    plugins: [{{pluginRef: prefill-filter}}, {{pluginRef: queue-scorer}}, {{pluginRef: max-score-picker}}]
"#
    )
}

/// One trace as a waterfall: each span indented under its parent, its start and duration, and
/// a bar on the trace's time line.
fn waterfall(spans: &[llmd_telemetry::testing::Received]) -> String {
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
async fn print_trace(
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

/// Runs the demo; returns an error when a sanity check fails. With `spans` (an in-process OTLP
/// receiver and the telemetry guard to flush) it also prints one request's trace.
pub async fn run(
    args: DemoArgs,
    stop: CancellationToken,
    spans: Option<(
        llmd_telemetry::testing::Spans,
        &llmd_telemetry::TelemetryGuard,
    )>,
) -> anyhow::Result<()> {
    let metrics = llmd_telemetry::install_prometheus(
        &[names::vllm::ALL, names::epp::ALL, names::pd_proxy::ALL],
        &[],
    )?;
    let scale = args.time_scale.to_string();
    let common = [
        "--dummy-tokenizer",
        "--time-scale",
        scale.as_str(),
        "--max-model-len",
        "16384",
    ];
    println!("== llmd demo, part 2: prefill/decode on loopback");
    let mut prefills = Vec::new();
    for i in 0..2 {
        let id = format!("prefill-{i}");
        let flags = [
            &common[..],
            &["--role", "prefill", "--engine-id", id.as_str()],
        ]
        .concat();
        prefills.push(sim(&flags, &stop).await?);
    }
    let decode_flags = [
        &common[..],
        &[
            "--role",
            "decode",
            "--engine-id",
            "decode-0",
            "--tensor-parallel-size",
            "2",
        ],
    ]
    .concat();
    let decode = sim(&decode_flags, &stop).await?;
    let proxy_args = <llmd_pd_proxy::Args as Parser>::try_parse_from([
        "llmd-pd-proxy",
        "--decoder",
        &format!("http://{decode}"),
        "--allow-prefill",
        "127.0.0.1",
    ])?;
    let proxy_listener = bind().await?;
    let proxy_metrics = bind().await?;
    let proxy = llmd_pd_proxy::start(
        proxy_args.config()?,
        proxy_listener,
        Some((metrics.clone(), proxy_metrics)),
        stop.clone(),
    )
    .await?;
    let spec = |addr: SocketAddr, role| llmd_epp::endpoints::EndpointSpec {
        address: addr.ip().to_string(),
        port: addr.port(),
        role,
        model: Vec::new(),
        kv_events: None,
        kv_events_replay: None,
        metrics_port: None,
    };
    let mut endpoints = vec![spec(proxy, llmd_epp::endpoints::Role::Decode)];
    endpoints.extend(
        prefills
            .iter()
            .map(|p| spec(*p, llmd_epp::endpoints::Role::Prefill)),
    );
    let epp = llmd_epp::start(
        llmd_epp::Options {
            config: llmd_epp::config::EndpointPickerConfig::parse(&pd_config(args.pd_threshold))?,
            endpoints_file: None,
            endpoints: llmd_epp::endpoints::EndpointsFile { endpoints },
            kv_events_bind: None,
            scrape_interval: Duration::from_secs(1),
            max_body_bytes: 32 << 20,
            pool_name: "demo".into(),
            kubernetes: None,
        },
        llmd_epp::Listeners {
            grpc: bind().await?,
            health: None,
            metrics: bind().await?,
        },
        Some(metrics.clone()),
        stop.clone(),
    )
    .await?;
    let gw_args = <llmd_gateway::Args as Parser>::try_parse_from([
        "llmd-gateway",
        "--epp",
        &format!("http://{}", epp.grpc),
    ])?;
    let gateway = llmd_gateway::start(gw_args, bind().await?, stop.clone()).await?;
    println!("prefill pods    {}, {}", prefills[0], prefills[1]);
    println!("decode pod      {decode} (TP=2), behind llmd-pd-proxy at {proxy}");
    println!(
        "EPP             ext_proc {}, metrics http://{}/metrics",
        epp.grpc, epp.metrics
    );
    println!("gateway         http://{gateway}/v1");
    println!(
        "load            pd-concurrent, {} workers for {} s",
        args.workers, args.duration_s
    );

    let endpoint = format!("http://{gateway}/v1");
    let minutes = (args.duration_s / 60.0).to_string();
    let workers = args.workers.to_string();
    let pace = args.pace.to_string();
    let mut load = vec![
        "llmd-loadgen",
        "pd-concurrent",
        workers.as_str(),
        minutes.as_str(),
        "--endpoint",
        endpoint.as_str(),
        "--tokenizer",
        "bytes",
        "--pace",
        pace.as_str(),
    ];
    if !args.lines {
        load.push("--no-lines");
    }
    let llmd_loadgen::Command::PdConcurrent(pd) = llmd_loadgen::Args::try_parse_from(load)?.command
    else {
        bail!("internal: not a pd-concurrent command");
    };
    let report = llmd_loadgen::run_pd(&pd, stop.clone()).await?;

    let text = metrics.render();
    let m = llmd_telemetry::exposition::parse(&text).context("reading the demo's own metrics")?;
    let mean = |family: &str, labels: &[(&str, &str)]| {
        let sum = m.sum(&format!("{family}_sum"), labels);
        let count = m.sum(&format!("{family}_count"), labels);
        (count > 0.0).then(|| sum / count)
    };
    let g = &report.overall;
    let ok_pct = if g.requests == 0 {
        0.0
    } else {
        100.0 * g.ok as f64 / g.requests as f64
    };
    let pd = m.sum(
        names::epp::PD_DECISION_TOTAL.name,
        &[("decision_type", "prefill-decode")],
    );
    let decode_only = m.sum(
        names::epp::PD_DECISION_TOTAL.name,
        &[("decision_type", "decode-only")],
    );
    println!();
    println!("== results");
    println!(
        "requests        {} sent, {} ok ({ok_pct:.1}%), {:.1} req/s",
        g.requests, g.ok, g.request_throughput
    );
    println!("EPP decisions   {pd:.0} prefill/decode, {decode_only:.0} decode-only");
    let ms = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} ms"));
    let true_ttft = mean(names::pd_proxy::TRUE_TTFT.name, &[]);
    let coordinator = mean(names::pd_proxy::COORDINATOR_OVERHEAD.name, &[]);
    let prefill = mean(names::pd_proxy::PREFILL_DURATION.name, &[]);
    println!("P/D requests, means over the run (the proxy's histograms):");
    println!("  prefill leg               {}", ms(prefill));
    println!("  coordinator overhead      {}", ms(coordinator));
    println!("  true TTFT (client-side)   {}", ms(true_ttft));
    if let Some(b) = &g.server_timing {
        println!(
            "  per request (server-timing p50): prefill {:.2} + coordinator {:.3} + decode TTFT {:.2} ms",
            b.prefill_ms.p50, b.coordinator_ms.p50, b.decode_ttft_ms.p50
        );
    }
    let xfer = mean(names::vllm::NIXL_XFER_TIME.name, &[]).map(|s| s * 1e3);
    let bytes = mean(names::vllm::NIXL_BYTES_TRANSFERRED.name, &[]);
    println!(
        "NIXL transfers  {} per rank-transfer, {} per rank-transfer",
        ms(xfer),
        bytes.map_or_else(|| "-".to_owned(), |b| format!("{:.2} MB", b / 1e6))
    );
    println!("per pattern:");
    for p in &report.patterns {
        println!(
            "  {:<20} {:>5} requests, {:>5.1}% ok, E2E p50 {:>8.1} ms",
            p.name,
            p.requests,
            if p.requests == 0 {
                0.0
            } else {
                100.0 * p.ok as f64 / p.requests as f64
            },
            p.e2e_ms.p50
        );
    }

    if let Some((spans, guard)) = &spans {
        print_trace(spans, guard).await;
    }

    let mut failed = Vec::new();
    if g.requests == 0 || ok_pct < 95.0 {
        failed.push(format!("success rate {ok_pct:.1}% (want >= 95%)"));
    }
    if pd < 1.0 {
        failed.push("no prefill/decode decision".to_owned());
    }
    if true_ttft.is_none() {
        failed.push("the proxy measured no true TTFT".to_owned());
    }
    if args.keep_running && !stop.is_cancelled() {
        println!("\nthe stack keeps running (Ctrl-C stops it); gateway http://{gateway}/v1");
        stop.cancelled().await;
    }
    if !failed.is_empty() {
        bail!("demo sanity checks failed: {}", failed.join("; "));
    }
    println!("\ndemo OK");
    Ok(())
}
