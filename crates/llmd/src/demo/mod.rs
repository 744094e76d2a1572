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
//! a Prometheus scrape configuration is written before the load starts. `--html FILE` draws
//! what was measured into one self-contained page ([`html`]), which `--keep-running` also
//! serves live. The demo exits non-zero when its own sanity checks fail.
//!
//! One process has one metrics registry: the simulators keep their series apart with distinct
//! `engine` labels (`--data-parallel-rank`, as vLLM's data-parallel engines do), and each
//! simulator's own `/metrics` URL serves only its engine's `vllm:*` series, so that the EPP's
//! load scorers see each pod's own queue.

mod html;
mod pd;
mod prefix;
mod stack;
mod trace;

pub use trace::span_receiver;

use std::path::PathBuf;

use anyhow::{Context, bail};
use llmd_telemetry::names;
use tokio_util::sync::CancellationToken;

use pd::{decode_only_probe, pd_background, pd_part};
use prefix::{prefix_load, prefix_part};
use stack::{bind, write_prometheus_config};
use trace::print_trace;

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
    /// Prompts of which the chosen decode pod lacks at least this many tokens go
    /// prefill/decode (`prefix-based-pd-decider`'s `nonCachedTokens`; 0 disables P/D, as in
    /// llm-d).
    #[arg(long, default_value_t = 200)]
    pub pd_threshold: u32,
    /// Leave the stacks running after the summary, with a light load so that dashboards move
    /// (Ctrl-C stops it).
    #[arg(long)]
    pub keep_running: bool,
    /// Requests per second of the light load per part with --keep-running (0: none, the
    /// stacks wait for your own load).
    #[arg(long, default_value_t = 2.0)]
    pub background_rate: f64,
    /// Print a line per part 2 request.
    #[arg(long)]
    pub lines: bool,
    /// Also draw what the demo measured into this HTML file: part 1's comparison, part 2's
    /// true-TTFT breakdown over time and NIXL transfers, and a trace explorer (one
    /// self-contained file, no network). With --keep-running the page is also served live.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
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

pub(super) fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// `n / d`, or 0 when there is nothing to divide by.
pub(super) fn ratio(n: f64, d: f64) -> f64 {
    if d > 0.0 { n / d } else { 0.0 }
}

/// Share of a group's requests that succeeded.
pub(super) fn ok_share(g: &llmd_loadgen::stats::Group) -> f64 {
    ratio(g.ok as f64, g.requests as f64)
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
            names::gateway::ALL,
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
    let mut figures = html::Figures::default();
    if args.runs(Part::Prefix) {
        let (stack, tokenizer, measured) = prefix_part(&args, &metrics, &stop, &mut failed).await?;
        figures.prefix = Some(measured);
        background.push(prefix_load(
            stack.gateway,
            &tokenizer,
            &args,
            31_536_000.0,
            Some(args.background_rate),
            None,
        )?);
    }
    if args.runs(Part::Pd) {
        let (stack, measured) = pd_part(&args, &metrics, &stop, &mut failed).await?;
        let measured_decode_only = measured.decode_only;
        figures.pd = Some(measured);
        background.push(pd_background(&stack, args.background_rate)?);
        if let Some((spans, guard)) = &spans {
            tokio::task::block_in_place(|| guard.flush());
            trace::print_breakdown(&spans.snapshot());
            print_trace(spans, guard).await;
        }
        if args.html.is_some() && spans.is_some() && measured_decode_only == 0.0 {
            println!(
                "\n(the load made no decode-only decision: one short request follows, for the \
                 page's trace explorer; it is not in the results above)"
            );
            if let Err(error) = decode_only_probe(&stack, &stop).await {
                failed.push(format!("part 2: {error:#}"));
            }
        }
    }
    let spans = spans.map(|(spans, guard)| {
        tokio::task::block_in_place(|| guard.flush());
        spans
    });
    if let Some(path) = &args.html {
        let all = spans.as_ref().map(|s| s.snapshot());
        std::fs::write(path, html::page(&figures, all.as_deref()))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\npage: {} (what the demo measured, drawn)", path.display());
    }
    if args.keep_running && !stop.is_cancelled() {
        figures.live = true;
        let url = serve_page(figures, spans, &stop).await?;
        println!("\npage: {url} (what the demo measured, drawn; live)");
        for load in background
            .into_iter()
            .filter(|_| args.background_rate > 0.0)
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                if let Err(error) = llmd_loadgen::run_load(&load, stop).await {
                    tracing::warn!(%error, "background load stopped");
                }
            });
        }
        println!(
            "\nstack running, with a light load ({} req/s per part); Ctrl-C stops it. \
             Prometheus: prometheus --config.file={}",
            args.background_rate,
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

/// Serves the page at `/` on a loopback port, drawn afresh for each request (the trace
/// explorer and the P/D breakdown then include the light load's requests); returns its URL.
async fn serve_page(
    figures: html::Figures,
    spans: Option<llmd_telemetry::testing::Spans>,
    stop: &CancellationToken,
) -> anyhow::Result<String> {
    let listener = bind().await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let figures = std::sync::Arc::new(figures);
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let (figures, spans) = (figures.clone(), spans.clone());
            async move {
                let body = tokio::task::spawn_blocking(move || {
                    let all = spans.as_ref().map(|s| s.snapshot());
                    html::page(&figures, all.as_deref())
                })
                .await
                .unwrap_or_else(|e| format!("<!doctype html><p>the page failed: {e}</p>"));
                axum::response::Html(body)
            }
        }),
    );
    let stop = stop.clone();
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::warn!(%error, "the demo's page server stopped");
        }
    });
    Ok(url)
}
