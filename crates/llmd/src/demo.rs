//! `llmd demo`: the stack on loopback ports in this one process, driven and summarised.
//!
//! - **Part 1, precise prefix-cache routing**: four decode simulators publishing KV events to
//!   `llmd-epp` (the precise prefix-cache scorer, fed over ZMQ), `llmd-gateway` in front, and a
//!   shared-prefix workload; then the same workload on four fresh simulators with random
//!   routing. Their KV caches are sized so that each pod holds a quarter of the prefixes: routing
//!   by prefix keeps every prefix cached somewhere, random routing makes each pod churn through
//!   all of them. The two runs' prefix-cache hit rates, matched blocks, requests per pod and TTFT
//!   are printed side by side. The prompts are tokenized with Llama-3.1's real tokenizer, fetched
//!   on first use ([`crate::fetch`]).
//! - **Part 2, prefill/decode**: two prefill simulators and one decode simulator (TP=2 in its
//!   model shape) with `llmd-pd-proxy` in front of it, `llmd-epp` with the P/D profile handler,
//!   the gateway, and the `pd-concurrent` load. It prints the true-TTFT breakdown the proxy
//!   measured against the TTFT the decode engine reports, the NIXL transfers, the EPP's P/D
//!   decisions and the success rate.
//!
//! Then one P/D request's trace as a waterfall (collected by an in-process OTLP receiver, and
//! also sent to `--otlp-endpoint` when given). Every component's `/metrics` URL is printed and
//! a Prometheus scrape configuration is written before the load starts. The demo exits
//! non-zero when its own sanity checks fail.
//!
//! One process has one metrics registry: the simulators keep their series apart with distinct
//! `engine` labels (`--data-parallel-rank`, as vLLM's data-parallel engines do), and each
//! simulator's own `/metrics` URL serves only its engine's `vllm:*` series, so that the EPP's
//! load scorers see each pod's own queue.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use llmd_epp::endpoints::{EndpointSpec, Role};
use llmd_telemetry::exposition::Exposition;
use llmd_telemetry::{MetricsHandle, names};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio_util::sync::CancellationToken;

/// Which part to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Part 1: precise prefix-cache routing versus random routing.
    Prefix,
    /// Part 2: prefill/decode disaggregation.
    Pd,
}

/// Flags of `llmd demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Logging and tracing (OTEL_EXPORTER_OTLP_ENDPOINT sends every span there instead of to
    /// the in-process receiver, and no waterfall is printed; see --otlp-endpoint).
    #[command(flatten)]
    pub telemetry: llmd_telemetry::TelemetryArgs,
    /// Seconds of load per run (part 1 has two runs, part 2 one).
    #[arg(long, default_value_t = 20.0)]
    pub duration_s: f64,
    /// Load workers: requests in flight in part 1, `pd-concurrent` workers in part 2.
    #[arg(long, default_value_t = 6)]
    pub workers: usize,
    /// Run only this part.
    #[arg(long, value_enum)]
    pub only: Option<Part>,
    /// Also export every span over OTLP/gRPC to this collector (e.g. http://127.0.0.1:4317);
    /// the waterfall is still printed.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// Where to write the Prometheus configuration that scrapes the demo
    /// [default: <temp dir>/llmd-demo/prometheus.yml].
    #[arg(long)]
    pub prometheus_config: Option<PathBuf>,
    /// Part 1's tokenizer directory [default: Llama-3.1-8B-Instruct's, from the Hugging Face
    /// cache, fetched into it on first use].
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Multiplies part 1's simulator timing (1 = an 8B model on one GPU, roughly): the prefill
    /// time is what a prefix-cache hit saves.
    #[arg(long, default_value_t = 1.0)]
    pub prefix_time_scale: f64,
    /// Multiplies part 2's simulator timing.
    #[arg(long, default_value_t = 0.2)]
    pub time_scale: f64,
    /// Multiplies the part 2 load patterns' pauses.
    #[arg(long, default_value_t = 0.2)]
    pub pace: f64,
    /// Prompts with at least this many uncached characters of user input (the unit of llm-d's
    /// `pd-profile-handler` `threshold`; about 4 per token) go prefill/decode.
    #[arg(long, default_value_t = 800)]
    pub pd_threshold: u32,
    /// Leave the stacks running after the summary, with a light load so that dashboards move
    /// (Ctrl-C stops it).
    #[arg(long)]
    pub keep_running: bool,
    /// Print a line per part 2 request.
    #[arg(long)]
    pub lines: bool,
}

impl DemoArgs {
    fn runs(&self, part: Part) -> bool {
        self.only.is_none_or(|p| p == part)
    }
}

/// Part 1's engines: KV blocks per simulator (a quarter of the prefixes plus what is in flight).
const PREFIX_GPU_BLOCKS: &str = "160";
/// Part 1's workload: groups of a shared prefix, and the prompt around it, in tokens.
const PREFIX_GROUPS: &str = "16";
const PREFIX_TOKENS: &str = "1024";
const SUFFIX_TOKENS: &str = "96";
/// The block-hash seed (`PYTHONHASHSEED`) of part 1's engines and EPP.
const HASH_SEED: &str = "42";

async fn bind() -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
}

async fn sim_on(
    flags: &[&str],
    listener: tokio::net::TcpListener,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let args = llmd_sim::EngineArgs::from_flags(flags.iter().copied())
        .map_err(|e| anyhow::anyhow!("simulator flags: {e}"))?;
    Ok(llmd_sim::start(args, listener, None, stop.clone())
        .await?
        .addr)
}

async fn sim(flags: &[&str], stop: &CancellationToken) -> anyhow::Result<SocketAddr> {
    sim_on(flags, bind().await?, stop).await
}

/// Serves, at `/metrics`, the `vllm:*` series of engine `rank` from the process registry: what
/// that simulator's `/metrics` would show if it ran in its own process.
async fn engine_metrics(
    metrics: &MetricsHandle,
    rank: u32,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = bind().await?;
    let addr = listener.local_addr()?;
    let handle = metrics.clone();
    let label = format!("engine=\"{rank}\"");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = handle.render();
            let label = label.clone();
            async move {
                let own: String = text
                    .lines()
                    .filter(|l| {
                        if let Some(meta) = l.strip_prefix("# ") {
                            meta.split_whitespace()
                                .nth(1)
                                .is_some_and(|n| n.starts_with("vllm:"))
                        } else {
                            l.starts_with("vllm:") && l.contains(&label)
                        }
                    })
                    .flat_map(|l| [l, "\n"])
                    .collect();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    own,
                )
            }
        }),
    );
    let stop = stop.clone();
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::warn!(%error, "engine metrics view stopped");
        }
    });
    Ok(addr)
}

fn spec(addr: SocketAddr, role: Role, metrics_port: Option<u16>) -> EndpointSpec {
    EndpointSpec {
        address: addr.ip().to_string(),
        port: addr.port(),
        role,
        model: Vec::new(),
        kv_events: None,
        kv_events_replay: None,
        metrics_port,
    }
}

/// Writes a Prometheus configuration scraping the demo's metrics endpoint.
fn write_prometheus_config(path: &Path, target: SocketAddr) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = format!(
        "# Written by `llmd demo`: scrapes every component of the demo. They share one process\n\
         # and so one registry, served whole at this target; the simulators' series are told\n\
         # apart by their `engine` label. Run: prometheus --config.file={}\n\
         global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\n\
         scrape_configs:\n  - job_name: llmd-demo\n    static_configs:\n      - targets: ['{target}']\n",
        path.display()
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A counter or histogram family's growth between two snapshots.
fn delta(before: &Exposition, after: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.sum(name, labels) - before.sum(name, labels)
}

fn snapshot(metrics: &MetricsHandle) -> anyhow::Result<Exposition> {
    llmd_telemetry::exposition::parse(&metrics.render()).context("reading the demo's own metrics")
}

fn prefix_config(random: bool, tokenizer: &Path) -> String {
    let tok = tokenizer.display();
    let picker = if random {
        "random-picker"
    } else {
        "max-score-picker"
    };
    // With random routing the prefix scorer still runs, so that the EPP records how many
    // blocks the randomly chosen pod held; the random picker ignores every score.
    format!(
        r#"
plugins:
  - type: precise-prefix-cache-scorer
    parameters: {{hashSeed: "{HASH_SEED}", tokenizer: "{tok}"}}
  - type: queue-scorer
  - type: {picker}
schedulingProfiles:
  - name: default
    plugins:
      - {{pluginRef: precise-prefix-cache-scorer, weight: 3}}
      - {{pluginRef: queue-scorer, weight: 1}}
      - {{pluginRef: {picker}}}
"#
    )
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

/// Starts an EPP on loopback ports.
async fn epp(
    config: &str,
    endpoints: Vec<EndpointSpec>,
    kv_events_bind: Option<String>,
    pool: &str,
    metrics: &MetricsHandle,
    stop: &CancellationToken,
) -> anyhow::Result<llmd_epp::Epp> {
    Ok(llmd_epp::start(
        llmd_epp::Options {
            config: llmd_epp::config::EndpointPickerConfig::parse(config)?,
            endpoints_file: None,
            endpoints: llmd_epp::endpoints::EndpointsFile { endpoints },
            kv_events_bind,
            scrape_interval: Duration::from_millis(500),
            max_body_bytes: 32 << 20,
            metric_names: Default::default(),
            metrics_staleness: None,
            objectives: Vec::new(),
            subset_filter: true,
            pool_name: pool.into(),
            kubernetes: None,
            limits: Default::default(),
            grace_period: std::time::Duration::from_secs(1),
            service_name: None,
        },
        llmd_epp::Listeners {
            grpc: bind().await?,
            health: None,
            metrics: bind().await?,
        },
        Some(metrics.clone()),
        stop.clone(),
    )
    .await?)
}

async fn gateway(epp: &llmd_epp::Epp, stop: &CancellationToken) -> anyhow::Result<SocketAddr> {
    let gw_args = <llmd_gateway::Args as Parser>::try_parse_from([
        "llmd-gateway",
        "--epp",
        &format!("http://{}", epp.grpc),
    ])?;
    Ok(llmd_gateway::start(gw_args, bind().await?, stop.clone()).await?)
}

/// Part 1's stack: four simulators publishing KV events to one EPP, and a gateway.
struct PrefixStack {
    gateway: SocketAddr,
    ranks: Vec<u32>,
    stop: CancellationToken,
}

async fn prefix_stack(
    random: bool,
    first_rank: u32,
    tokenizer: &Path,
    args: &DemoArgs,
    metrics: &MetricsHandle,
    stop: &CancellationToken,
) -> anyhow::Result<PrefixStack> {
    let stop = stop.child_token();
    let name = if random { "random" } else { "precise" };
    let mut listeners = Vec::new();
    let mut specs = Vec::new();
    let mut ranks = Vec::new();
    for i in 0..4 {
        let rank = first_rank + i;
        let listener = bind().await?;
        let view = engine_metrics(metrics, rank, &stop).await?;
        specs.push(spec(listener.local_addr()?, Role::Both, Some(view.port())));
        println!(
            "metrics: {name} routing, pod {} (engine {rank}) http://{view}/metrics",
            listener.local_addr()?
        );
        listeners.push(listener);
        ranks.push(rank);
    }
    let epp = epp(
        &prefix_config(random, tokenizer),
        specs,
        Some("tcp://127.0.0.1:0".into()),
        &format!("demo-{name}"),
        metrics,
        &stop,
    )
    .await?;
    let kv_events = epp
        .kv_events_bound
        .clone()
        .context("the EPP bound no KV-event socket")?;
    let tok = tokenizer.display().to_string();
    let scale = args.prefix_time_scale.to_string();
    for (listener, rank) in listeners.into_iter().zip(&ranks) {
        let rank = rank.to_string();
        let flags = [
            "--model",
            crate::fetch::MODEL,
            "--tokenizer",
            tok.as_str(),
            "--hash-seed",
            HASH_SEED,
            "--time-scale",
            scale.as_str(),
            "--max-model-len",
            "16384",
            "--num-gpu-blocks",
            PREFIX_GPU_BLOCKS,
            "--data-parallel-rank",
            rank.as_str(),
            "--kv-events-endpoint",
            kv_events.as_str(),
        ];
        sim_on(&flags, listener, &stop).await?;
    }
    let gateway = gateway(&epp, &stop).await?;
    println!(
        "metrics: {name} routing, EPP http://{}/metrics (KV events at {kv_events})",
        epp.metrics
    );
    Ok(PrefixStack {
        gateway,
        ranks,
        stop,
    })
}

/// The shared-prefix load of part 1 (`rate`: open loop at this rate instead of `workers` in
/// flight, for --keep-running).
fn prefix_load(
    gateway: SocketAddr,
    tokenizer: &Path,
    args: &DemoArgs,
    duration_s: f64,
    rate: Option<f64>,
) -> anyhow::Result<llmd_loadgen::RunArgs> {
    let endpoint = format!("http://{gateway}/v1");
    let tok = tokenizer.display().to_string();
    let duration = duration_s.to_string();
    // The first seconds load each EPP's tokenizer and fill the caches: not counted.
    let warmup = (duration_s / 5.0).min(2.0).to_string();
    let workers = args.workers.to_string();
    let rate = rate.map(|r| r.to_string());
    let mut flags = vec![
        "llmd-loadgen",
        "run",
        "--endpoint",
        endpoint.as_str(),
        "--model",
        crate::fetch::MODEL,
        "--tokenizer",
        tok.as_str(),
        "--dataset",
        "shared-prefix",
        "--prefix-groups",
        PREFIX_GROUPS,
        "--prefix-tokens",
        PREFIX_TOKENS,
        "--suffix-tokens",
        SUFFIX_TOKENS,
        "--prompts-per-group",
        "64",
        "--output-tokens",
        "16",
        "--stream",
        "--duration-s",
        duration.as_str(),
        "--warmup-s",
        warmup.as_str(),
        "--seed",
        "1",
        "--quiet",
    ];
    match &rate {
        Some(r) => flags.extend(["--load", "poisson", "--rate", r.as_str()]),
        None => flags.extend(["--load", "concurrency", "--concurrency", workers.as_str()]),
    }
    let llmd_loadgen::Command::Run(run) = llmd_loadgen::Args::try_parse_from(flags)?.command else {
        bail!("internal: not a run command");
    };
    Ok(*run)
}

/// What one part 1 run measured.
struct PrefixResult {
    report: llmd_loadgen::stats::Report,
    /// Prompt tokens the engines found cached / prompt tokens.
    engine_hit_rate: f64,
    /// Requests the EPP sent to a pod holding at least one of their blocks / scored requests.
    epp_hit_rate: f64,
    /// Shares of requests by matched blocks of the chosen pod: 0, 1-8, 9-16, 17+.
    matched: [f64; 4],
    per_pod: Vec<f64>,
}

async fn prefix_run(
    stack: &PrefixStack,
    tokenizer: &Path,
    args: &DemoArgs,
    metrics: &MetricsHandle,
    stop: &CancellationToken,
) -> anyhow::Result<PrefixResult> {
    let load = prefix_load(stack.gateway, tokenizer, args, args.duration_s, None)?;
    let before = snapshot(metrics)?;
    let report = llmd_loadgen::run_load(&load, stop.clone()).await?;
    let after = snapshot(metrics)?;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    let mut queries = 0.0;
    let mut hits = 0.0;
    let mut per_pod = Vec::new();
    for rank in &stack.ranks {
        let engine = rank.to_string();
        let l = [("engine", engine.as_str())];
        queries += d(names::vllm::PREFIX_CACHE_QUERIES.name, &l);
        hits += d(names::vllm::PREFIX_CACHE_HITS.name, &l);
        per_pod.push(d(names::vllm::REQUEST_SUCCESS.name, &l));
    }
    let blocks = names::epp::PREFIX_CACHE_MATCHED_BLOCKS.name;
    let bucket = |le: &str| d(&format!("{blocks}_bucket"), &[("le", le)]);
    let scored = d(&format!("{blocks}_count"), &[]);
    let share = |n: f64| ratio(n, scored);
    let (b0, b8, b16) = (bucket("0"), bucket("8"), bucket("16"));
    Ok(PrefixResult {
        report,
        engine_hit_rate: ratio(hits, queries),
        epp_hit_rate: share(d(names::epp::PREFIX_CACHE_HITS.name, &[])),
        matched: [
            share(b0),
            share(b8 - b0),
            share(b16 - b8),
            share(scored - b16),
        ],
        per_pod,
    })
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// `n / d`, or 0 when there is nothing to divide by.
fn ratio(n: f64, d: f64) -> f64 {
    if d > 0.0 { n / d } else { 0.0 }
}

/// Share of a group's requests that succeeded.
fn ok_share(g: &llmd_loadgen::stats::Group) -> f64 {
    ratio(g.ok as f64, g.requests as f64)
}

/// Part 1: precise prefix-cache routing, then random routing, side by side. Returns the stack
/// left running (the precise one) and its tokenizer, for --keep-running.
async fn prefix_part(
    args: &DemoArgs,
    metrics: &MetricsHandle,
    stop: &CancellationToken,
    failed: &mut Vec<String>,
) -> anyhow::Result<(PrefixStack, PathBuf)> {
    println!("\n== llmd demo, part 1: precise prefix-cache routing on loopback");
    let tokenizer = crate::fetch::tokenizer_dir(args.tokenizer.as_deref()).await?;
    println!(
        "workload        {PREFIX_GROUPS} shared prefixes of {PREFIX_TOKENS} tokens, {SUFFIX_TOKENS}-token \
         questions, 16 output tokens, {} in flight, {} s per run",
        args.workers, args.duration_s
    );
    println!(
        "pods            4 decode simulators per run, {PREFIX_GPU_BLOCKS} KV blocks of 64 tokens each \
         (about a quarter of the prefixes)"
    );
    let precise = prefix_stack(false, 0, &tokenizer, args, metrics, stop).await?;
    println!(
        "gateway         http://{}/v1 (precise prefix-cache routing)",
        precise.gateway
    );
    let a = prefix_run(&precise, &tokenizer, args, metrics, stop).await?;
    let random = prefix_stack(true, 4, &tokenizer, args, metrics, stop).await?;
    println!(
        "gateway         http://{}/v1 (random routing, fresh pods)",
        random.gateway
    );
    let b = prefix_run(&random, &tokenizer, args, metrics, stop).await?;
    random.stop.cancel();

    println!("\n== part 1 results{:>27}{:>16}", "precise", "random");
    let row = |label: &str, x: String, y: String| println!("  {label:<30}{x:>14}{y:>16}");
    let (ga, gb) = (&a.report.overall, &b.report.overall);
    row(
        "requests (ok)",
        format!("{} ({})", ga.requests, pct(ok_share(ga))),
        format!("{} ({})", gb.requests, pct(ok_share(gb))),
    );
    row(
        "throughput",
        format!("{:.1} req/s", ga.request_throughput),
        format!("{:.1} req/s", gb.request_throughput),
    );
    row(
        "engine prefix-cache hit rate",
        pct(a.engine_hit_rate),
        pct(b.engine_hit_rate),
    );
    let cached =
        |g: &llmd_loadgen::stats::Group| ratio(g.cached_tokens as f64, g.input_tokens as f64);
    row(
        "cached prompt tokens (usage)",
        pct(cached(ga)),
        pct(cached(gb)),
    );
    row(
        "EPP: sent to a pod with blocks",
        pct(a.epp_hit_rate),
        pct(b.epp_hit_rate),
    );
    for (i, label) in [
        "  matched blocks 0",
        "  matched blocks 1-8",
        "  matched blocks 9-16",
        "  matched blocks 17+",
    ]
    .iter()
    .enumerate()
    {
        row(label, pct(a.matched[i]), pct(b.matched[i]));
    }
    let spread = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join("/")
    };
    row("requests per pod", spread(&a.per_pod), spread(&b.per_pod));
    for (label, f) in [
        (
            "TTFT p50",
            (|g: &llmd_loadgen::stats::Group| g.ttft_ms.p50)
                as fn(&llmd_loadgen::stats::Group) -> f64,
        ),
        ("TTFT p90", |g| g.ttft_ms.p90),
        ("TTFT p99", |g| g.ttft_ms.p99),
        ("E2E p50", |g| g.e2e_ms.p50),
    ] {
        row(
            label,
            format!("{:.1} ms", f(ga)),
            format!("{:.1} ms", f(gb)),
        );
    }
    if ga.requests == 0 || ok_share(ga) < 0.95 || gb.requests == 0 || ok_share(gb) < 0.95 {
        failed.push(format!(
            "part 1 success rates {} and {} (want >= 95%)",
            pct(ok_share(ga)),
            pct(ok_share(gb))
        ));
    }
    if a.epp_hit_rate <= 0.0 {
        failed.push("part 1: no prefix-cache hits with precise routing".to_owned());
    }
    if a.engine_hit_rate <= b.engine_hit_rate {
        failed.push(format!(
            "part 1: precise routing's hit rate {} is not above random routing's {}",
            pct(a.engine_hit_rate),
            pct(b.engine_hit_rate)
        ));
    }
    Ok((precise, tokenizer))
}

/// Part 2's stack.
struct PdStack {
    gateway: SocketAddr,
    decode_rank: u32,
}

async fn pd_stack(
    args: &DemoArgs,
    metrics: &MetricsHandle,
    stop: &CancellationToken,
) -> anyhow::Result<PdStack> {
    let scale = args.time_scale.to_string();
    let common = [
        "--dummy-tokenizer",
        "--time-scale",
        scale.as_str(),
        "--max-model-len",
        "16384",
    ];
    // Engines 8.. (part 1 used 0-7).
    let mut prefills = Vec::new();
    for i in 0..2u32 {
        let id = format!("prefill-{i}");
        let rank = (8 + i).to_string();
        let flags = [
            &common[..],
            &[
                "--role",
                "prefill",
                "--engine-id",
                id.as_str(),
                "--data-parallel-rank",
                rank.as_str(),
            ],
        ]
        .concat();
        let view = engine_metrics(metrics, 8 + i, stop).await?;
        let addr = sim(&flags, stop).await?;
        println!("metrics: prefill pod {addr} (engine {rank}) http://{view}/metrics");
        prefills.push((addr, view));
    }
    let decode_rank = 10;
    let decode_flags = [
        &common[..],
        &[
            "--role",
            "decode",
            "--engine-id",
            "decode-0",
            "--tensor-parallel-size",
            "2",
            "--data-parallel-rank",
            "10",
        ],
    ]
    .concat();
    let decode = sim(&decode_flags, stop).await?;
    let decode_view = engine_metrics(metrics, decode_rank, stop).await?;
    println!("metrics: decode pod {decode} (engine {decode_rank}) http://{decode_view}/metrics");
    let proxy_args = <llmd_pd_proxy::Args as Parser>::try_parse_from([
        "llmd-pd-proxy",
        "--decoder",
        &format!("http://{decode}"),
        "--allow-prefill",
        "127.0.0.1",
        "--secure-proxy=false",
    ])?;
    let proxy_listener = bind().await?;
    let proxy_metrics = bind().await?;
    let proxy_metrics_addr = proxy_metrics.local_addr()?;
    let proxy = llmd_pd_proxy::start(
        proxy_args.config()?,
        proxy_listener,
        Some((metrics.clone(), proxy_metrics)),
        stop.clone(),
    )
    .await?
    .addr;
    println!("metrics: pd-proxy {proxy} http://{proxy_metrics_addr}/metrics");
    let mut endpoints = vec![spec(proxy, Role::Decode, Some(decode_view.port()))];
    endpoints.extend(
        prefills
            .iter()
            .map(|(p, view)| spec(*p, Role::Prefill, Some(view.port()))),
    );
    let epp = epp(
        &pd_config(args.pd_threshold),
        endpoints,
        None,
        "demo-pd",
        metrics,
        stop,
    )
    .await?;
    println!("metrics: P/D EPP http://{}/metrics", epp.metrics);
    let gateway = gateway(&epp, stop).await?;
    println!("prefill pods    {}, {}", prefills[0].0, prefills[1].0);
    println!("decode pod      {decode} (TP=2), behind llmd-pd-proxy at {proxy}");
    println!("gateway         http://{gateway}/v1");
    Ok(PdStack {
        gateway,
        decode_rank,
    })
}

/// Part 2: the `pd-concurrent` load through the P/D stack, and its breakdown.
async fn pd_part(
    args: &DemoArgs,
    metrics: &MetricsHandle,
    stop: &CancellationToken,
    failed: &mut Vec<String>,
) -> anyhow::Result<PdStack> {
    println!("\n== llmd demo, part 2: prefill/decode on loopback");
    let stack = pd_stack(args, metrics, stop).await?;
    println!(
        "load            pd-concurrent, {} workers for {} s",
        args.workers, args.duration_s
    );
    let endpoint = format!("http://{}/v1", stack.gateway);
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
    let before = snapshot(metrics)?;
    let report = llmd_loadgen::run_pd(&pd, stop.clone()).await?;
    let after = snapshot(metrics)?;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    let mean = |family: &str, labels: &[(&str, &str)]| {
        let count = d(&format!("{family}_count"), labels);
        (count > 0.0).then(|| d(&format!("{family}_sum"), labels) / count)
    };
    let g = &report.overall;
    let ok_pct = 100.0 * ok_share(g);
    let pd = d(
        names::epp::PD_DECISION_TOTAL.name,
        &[("decision_type", "prefill-decode")],
    );
    let decode_only = d(
        names::epp::PD_DECISION_TOTAL.name,
        &[("decision_type", "decode-only")],
    );
    println!();
    println!("== part 2 results");
    println!(
        "requests        {} sent, {} ok ({ok_pct:.1}%), {:.1} req/s",
        g.requests, g.ok, g.request_throughput
    );
    println!("EPP decisions   {pd:.0} prefill/decode, {decode_only:.0} decode-only");
    let ms = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} ms"));
    let true_ttft = mean(names::pd_proxy::TRUE_TTFT.name, &[]);
    let coordinator = mean(names::pd_proxy::COORDINATOR_OVERHEAD.name, &[]);
    let prefill = mean(names::pd_proxy::PREFILL_DURATION.name, &[]);
    let decode_rank = stack.decode_rank.to_string();
    let on_decode = [("engine", decode_rank.as_str())];
    let engine_ttft = mean(names::vllm::TIME_TO_FIRST_TOKEN.name, &on_decode).map(|s| s * 1e3);
    println!("P/D requests, means over the run (the proxy's and the decode engine's histograms):");
    println!("  prefill leg                     {}", ms(prefill));
    println!("  coordinator overhead            {}", ms(coordinator));
    println!("  true TTFT (client-side)         {}", ms(true_ttft));
    println!(
        "  TTFT the decode engine reports  {}  (every request it served, from its own arrival)",
        ms(engine_ttft)
    );
    if let Some(b) = &g.server_timing {
        println!(
            "  per request (server-timing p50): prefill {:.2} + coordinator {:.3} + decode TTFT {:.2} ms",
            b.prefill_ms.p50, b.coordinator_ms.p50, b.decode_ttft_ms.p50
        );
    }
    let xfer = mean(names::vllm::NIXL_XFER_TIME.name, &on_decode).map(|s| s * 1e3);
    let bytes = mean(names::vllm::NIXL_BYTES_TRANSFERRED.name, &on_decode);
    let transfers = d(
        &format!("{}_count", names::vllm::NIXL_XFER_TIME.name),
        &on_decode,
    );
    println!(
        "NIXL transfers  {transfers:.0} rank-transfers, {} and {} each",
        ms(xfer),
        bytes.map_or_else(|| "-".to_owned(), |b| format!("{:.2} MB", b / 1e6))
    );
    println!("per pattern:");
    for p in &report.patterns {
        println!(
            "  {:<20} {:>5} requests, {:>5.1}% ok, E2E p50 {:>8.1} ms",
            p.name,
            p.requests,
            100.0 * ok_share(p),
            p.e2e_ms.p50
        );
    }
    if g.requests == 0 || ok_pct < 95.0 {
        failed.push(format!("part 2 success rate {ok_pct:.1}% (want >= 95%)"));
    }
    if pd < 1.0 {
        failed.push("part 2: no prefill/decode decision".to_owned());
    }
    if true_ttft.is_none() {
        failed.push("part 2: the proxy measured no true TTFT".to_owned());
    }
    Ok(stack)
}

/// A light P/D load for --keep-running: long prompts (P/D) and short ones (decode-only).
fn pd_background(gateway: SocketAddr) -> anyhow::Result<llmd_loadgen::RunArgs> {
    let endpoint = format!("http://{gateway}/v1");
    let flags = [
        "llmd-loadgen",
        "run",
        "--endpoint",
        endpoint.as_str(),
        "--tokenizer",
        "bytes",
        "--input-tokens",
        "50-3000",
        "--output-tokens",
        "32",
        "--stream",
        "--load",
        "poisson",
        "--rate",
        "2",
        "--duration-s",
        "31536000",
        "--quiet",
    ];
    let llmd_loadgen::Command::Run(run) = llmd_loadgen::Args::try_parse_from(flags)?.command else {
        bail!("internal: not a run command");
    };
    Ok(*run)
}

/// Runs the demo; returns an error when a sanity check fails. With `spans` (an in-process OTLP
/// receiver and the telemetry guard to flush) it also prints one P/D request's trace.
pub async fn run(
    args: DemoArgs,
    stop: CancellationToken,
    spans: Option<(
        llmd_telemetry::testing::Spans,
        &llmd_telemetry::TelemetryGuard,
    )>,
) -> anyhow::Result<()> {
    let metrics = llmd_telemetry::install_prometheus(
        &[
            names::vllm::ALL,
            names::epp::ALL,
            names::kv_cache::ALL,
            names::pd_proxy::ALL,
        ],
        &[],
    )?;
    let listener = bind().await?;
    let all_metrics = listener.local_addr()?;
    let served = metrics.clone();
    let serving = stop.clone();
    tokio::spawn(async move {
        if let Err(error) = served.serve(listener, serving.cancelled_owned()).await {
            tracing::warn!(%error, "the demo's metrics endpoint stopped");
        }
    });
    let config_path = args.prometheus_config.clone().unwrap_or_else(|| {
        std::env::temp_dir()
            .join("llmd-demo")
            .join("prometheus.yml")
    });
    write_prometheus_config(&config_path, all_metrics)?;
    println!("== llmd demo: every component in this process, on loopback ports");
    println!("metrics: every component (one registry) http://{all_metrics}/metrics");
    println!(
        "prometheus config: {} (prometheus --config.file={} --web.listen-address=127.0.0.1:9090)",
        config_path.display(),
        config_path.display()
    );

    let mut failed = Vec::new();
    let mut background = Vec::new();
    if args.runs(Part::Prefix) {
        let (stack, tokenizer) = prefix_part(&args, &metrics, &stop, &mut failed).await?;
        background.push(prefix_load(
            stack.gateway,
            &tokenizer,
            &args,
            31_536_000.0,
            Some(2.0),
        )?);
    }
    if args.runs(Part::Pd) {
        let stack = pd_part(&args, &metrics, &stop, &mut failed).await?;
        background.push(pd_background(stack.gateway)?);
        if let Some((spans, guard)) = &spans {
            print_trace(spans, guard).await;
        }
    }
    if args.keep_running && !stop.is_cancelled() {
        for load in background {
            let stop = stop.clone();
            tokio::spawn(async move {
                if let Err(error) = llmd_loadgen::run_load(&load, stop).await {
                    tracing::warn!(%error, "background load stopped");
                }
            });
        }
        println!(
            "\nstack running, with a light load (2 req/s per part); Ctrl-C stops it. \
             Prometheus: prometheus --config.file={}",
            config_path.display()
        );
        stop.cancelled().await;
    }
    if !failed.is_empty() {
        bail!("demo sanity checks failed: {}", failed.join("; "));
    }
    println!("\ndemo OK");
    Ok(())
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
