//! Part 2: prefill/decode through the proxy, and the true-TTFT breakdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Parser;
use llmd_epp::endpoints::Role;
use llmd_telemetry::{MetricsHandle, names};
use tokio_util::sync::CancellationToken;

use super::html::PdFigures;
use super::stack::{
    bind, bucket_delta, delta, engine_metrics, epp, gateway, sim, sim_on, snapshot, spec,
};
use super::{DemoArgs, HASH_SEED, ok_share};

/// The P/D EPP, as llm-d's current P/D guide configures it: the precise prefix-cache scorer in
/// both profiles (so `cache_hit_ratio` is the chosen decode pod's) and `disagg-profile-handler`
/// with `prefix-based-pd-decider`, which disaggregates when the chosen decode pod lacks at least
/// `threshold` tokens of the prompt. Without the real tokenizer (offline, nothing cached) the
/// prompt is estimated at 4 bytes a token.
pub(super) fn pd_config(threshold: u32, tokenizer: Option<&Path>) -> String {
    let (prefix_plugin, prefix_ref) = match tokenizer {
        Some(tok) => (
            format!(
                "  - type: precise-prefix-cache-scorer\n    parameters: {{hashSeed: \"{HASH_SEED}\", tokenizer: \"{}\"}}\n",
                tok.display()
            ),
            "{pluginRef: precise-prefix-cache-scorer, weight: 2}, ",
        ),
        None => (String::new(), ""),
    };
    format!(
        r#"
plugins:
{prefix_plugin}  - type: decode-filter
  - type: prefill-filter
  - type: queue-scorer
  - type: max-score-picker
  - name: pd-decider
    type: prefix-based-pd-decider
    parameters: {{nonCachedTokens: {threshold}}}
  - type: disagg-profile-handler
    parameters: {{deciders: {{prefill: pd-decider}}}}
schedulingProfiles:
  - name: decode
    plugins: [{{pluginRef: decode-filter}}, {prefix_ref}{{pluginRef: queue-scorer}}, {{pluginRef: max-score-picker}}]
  - name: prefill
    plugins: [{{pluginRef: prefill-filter}}, {prefix_ref}{{pluginRef: queue-scorer}}, {{pluginRef: max-score-picker}}]
"#
    )
}

/// Part 2's stack.
pub(super) struct PdStack {
    pub(super) gateway: SocketAddr,
    decode_rank: u32,
    /// The tokenizer the engines, the EPP and the load use (`None`: bytes).
    tokenizer: Option<PathBuf>,
}

pub(super) async fn pd_stack(
    args: &DemoArgs,
    metrics: &MetricsHandle,
    stop: &CancellationToken,
) -> anyhow::Result<PdStack> {
    // The real tokenizer when it is there (or can be fetched), as in part 1: prompts, prefill
    // times and KV bytes are then what Llama-3.1 would give.
    let tokenizer = match crate::fetch::tokenizer_dir(args.tokenizer.as_deref()).await {
        Ok(dir) => Some(dir),
        Err(error) => {
            println!(
                "tokenizer       unavailable ({error:#}); part 2 runs with a byte tokenizer and \
                 the EPP estimates prompts at 4 bytes a token"
            );
            None
        }
    };
    let tok = tokenizer.as_ref().map(|t| t.display().to_string());
    let scale = args.time_scale.to_string();
    let mut common = vec![
        "--model",
        crate::fetch::MODEL,
        "--hash-seed",
        HASH_SEED,
        "--time-scale",
        scale.as_str(),
        "--max-model-len",
        "16384",
    ];
    match &tok {
        Some(t) => common.extend(["--tokenizer", t.as_str()]),
        None => common.push("--dummy-tokenizer"),
    }
    // The EPP first: the engines publish their KV events to its bound socket. The decode pod
    // is known to the EPP by its proxy's address, so the proxy's listener is bound first and
    // the decode engine's topic names it.
    let proxy_listener = bind().await?;
    let proxy = proxy_listener.local_addr()?;
    let mut prefill_listeners = Vec::new();
    let mut endpoints = Vec::new();
    // Engines 8.. (part 1 used 0-7).
    let decode_rank = 10;
    let decode_view = engine_metrics(metrics, decode_rank, stop).await?;
    endpoints.push(spec(proxy, Role::Decode, Some(decode_view.port())));
    for i in 0..2u32 {
        let listener = bind().await?;
        let view = engine_metrics(metrics, 8 + i, stop).await?;
        endpoints.push(spec(
            listener.local_addr()?,
            Role::Prefill,
            Some(view.port()),
        ));
        prefill_listeners.push((listener, view));
    }
    let epp = epp(
        &pd_config(args.pd_threshold, tokenizer.as_deref()),
        endpoints,
        tokenizer.is_some().then(|| "tcp://127.0.0.1:0".to_owned()),
        "demo-pd",
        metrics,
        stop,
    )
    .await?;
    let kv_events = epp.kv_events_bound.clone();
    let mut prefills = Vec::new();
    for (i, (listener, view)) in prefill_listeners.into_iter().enumerate() {
        let id = format!("prefill-{i}");
        let rank = (8 + i).to_string();
        let addr = listener.local_addr()?;
        let mut flags = [
            &common[..],
            &[
                "--role",
                "prefill",
                "--engine-id",
                id.as_str(),
                "--data-parallel-rank",
                rank.as_str(),
                "--span-service-name",
                names::services::VLLM_PREFILL,
            ],
        ]
        .concat();
        if let Some(kv) = &kv_events {
            flags.extend(["--kv-events-endpoint", kv.as_str()]);
        }
        sim_on(&flags, listener, stop).await?;
        println!("metrics: prefill pod {addr} (engine {rank}) http://{view}/metrics");
        prefills.push(addr);
    }
    let topic = format!("kv@{proxy}@{}", crate::fetch::MODEL);
    let mut decode_flags = [
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
            "--span-service-name",
            names::services::VLLM_DECODE,
        ],
    ]
    .concat();
    if let Some(kv) = &kv_events {
        decode_flags.extend([
            "--kv-events-endpoint",
            kv.as_str(),
            "--kv-events-topic",
            topic.as_str(),
        ]);
    }
    let decode = sim(&decode_flags, stop).await?;
    println!("metrics: decode pod {decode} (engine {decode_rank}) http://{decode_view}/metrics");
    let proxy_args = <llmd_pd_proxy::Args as Parser>::try_parse_from([
        "llmd-pd-proxy",
        "--decoder",
        &format!("http://{decode}"),
        "--allow-prefill",
        "127.0.0.1",
        "--secure-proxy=false",
    ])?;
    let proxy_metrics = bind().await?;
    let proxy_metrics_addr = proxy_metrics.local_addr()?;
    let mut proxy_config = proxy_args.config()?;
    proxy_config.service_name = Some(names::services::PD_PROXY.to_owned());
    llmd_pd_proxy::start(
        proxy_config,
        proxy_listener,
        Some((metrics.clone(), proxy_metrics)),
        stop.clone(),
    )
    .await?;
    println!("metrics: pd-proxy {proxy} http://{proxy_metrics_addr}/metrics");
    println!(
        "metrics: P/D EPP http://{}/metrics{}",
        epp.metrics,
        kv_events
            .as_deref()
            .map(|k| format!(" (KV events at {k})"))
            .unwrap_or_default()
    );
    let gateway = gateway(&epp, stop).await?;
    println!("prefill pods    {}, {}", prefills[0], prefills[1]);
    println!("decode pod      {decode} (TP=2), behind llmd-pd-proxy at {proxy}");
    println!("gateway         http://{gateway}/v1");
    Ok(PdStack {
        gateway,
        decode_rank,
        tokenizer,
    })
}

/// Part 2: the `pd-concurrent` load through the P/D stack, and its breakdown; returns the stack
/// and what it measured for the page.
pub(super) async fn pd_part(
    args: &DemoArgs,
    metrics: &MetricsHandle,
    stop: &CancellationToken,
    failed: &mut Vec<String>,
) -> anyhow::Result<(PdStack, PdFigures)> {
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
    let tok = stack
        .tokenizer
        .as_ref()
        .map_or_else(|| "bytes".to_owned(), |t| t.display().to_string());
    let mut load = vec![
        "llmd-loadgen",
        "pd-concurrent",
        workers.as_str(),
        minutes.as_str(),
        "--endpoint",
        endpoint.as_str(),
        "--model",
        crate::fetch::MODEL,
        "--tokenizer",
        tok.as_str(),
        "--pace",
        pace.as_str(),
        "--span-service-name",
        names::services::LOADGEN,
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
    // pd-profile-handler and disagg-profile-handler count the same decisions under two names.
    let decisions = |kind: &str| {
        [
            names::epp::PD_DECISION_TOTAL.name,
            names::epp::DISAGG_DECISION_TOTAL.name,
        ]
        .iter()
        .map(|name| d(name, &[("decision_type", kind)]))
        .sum::<f64>()
    };
    let pd = decisions("prefill-decode");
    let decode_only = decisions("decode-only");
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
    println!("  true TTFT (the proxy's)         {}", ms(true_ttft));
    println!(
        "  TTFT the decode engine reports  {}  (every request it served, from its own arrival)",
        ms(engine_ttft)
    );
    if let Some(b) = &g.server_timing {
        println!(
            "  per request (server-timing p50): true TTFT {:.2} = prefill {:.2} + coordinator {:.3} + decode TTFT {:.2} ms",
            b.true_ttft_ms.p50, b.prefill_ms.p50, b.coordinator_ms.p50, b.decode_ttft_ms.p50
        );
    }
    if g.ttft_ms.p50 > 0.0 {
        println!(
            "  client-side TTFT p50 {:.2} ms (streamed requests): the proxy's true TTFT plus the gateway and the EPP's decision",
            g.ttft_ms.p50
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
    let figures = PdFigures {
        requests: g.requests,
        ok: g.ok,
        pd_decisions: pd,
        decode_only,
        threshold: args.pd_threshold,
        transfers,
        xfer_time: bucket_delta(
            &before,
            &after,
            names::vllm::NIXL_XFER_TIME.name,
            &on_decode,
        ),
        xfer_bytes: bucket_delta(
            &before,
            &after,
            names::vllm::NIXL_BYTES_TRANSFERRED.name,
            &on_decode,
        ),
        xfer_time_mean_ms: xfer,
        xfer_bytes_mean: bytes,
        started_at: report.started_at.clone(),
    };
    Ok((stack, figures))
}

/// A light P/D load for --keep-running: long prompts (P/D) and short ones (decode-only).
pub(super) fn pd_background(stack: &PdStack, rate: f64) -> anyhow::Result<llmd_loadgen::RunArgs> {
    let rate = rate.to_string();
    let endpoint = format!("http://{}/v1", stack.gateway);
    let tok = stack
        .tokenizer
        .as_ref()
        .map_or_else(|| "bytes".to_owned(), |t| t.display().to_string());
    let flags = [
        "llmd-loadgen",
        "run",
        "--endpoint",
        endpoint.as_str(),
        "--model",
        crate::fetch::MODEL,
        "--span-service-name",
        names::services::LOADGEN,
        "--tokenizer",
        tok.as_str(),
        "--input-tokens",
        "50-3000",
        "--output-tokens",
        "32",
        "--stream",
        "--load",
        "poisson",
        "--rate",
        rate.as_str(),
        "--duration-s",
        "31536000",
        "--quiet",
    ];
    let llmd_loadgen::Command::Run(run) = llmd_loadgen::Args::try_parse_from(flags)?.command else {
        bail!("internal: not a run command");
    };
    Ok(*run)
}

/// One short request through the P/D stack after part 2's measured load, so that the page's
/// trace explorer has a decode-only trace when the load's prompts were all long enough for P/D
/// (a short run). Not counted in part 2's results, which were read before it.
pub(super) async fn decode_only_probe(
    stack: &PdStack,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let endpoint = format!("http://{}/v1", stack.gateway);
    let tok = stack
        .tokenizer
        .as_ref()
        .map_or_else(|| "bytes".to_owned(), |t| t.display().to_string());
    let flags = [
        "llmd-loadgen",
        "run",
        "--endpoint",
        endpoint.as_str(),
        "--model",
        crate::fetch::MODEL,
        "--span-service-name",
        names::services::LOADGEN,
        "--tokenizer",
        tok.as_str(),
        // Far fewer tokens than --pd-threshold: the decode pod lacks too few for P/D.
        "--input-tokens",
        "10",
        "--output-tokens",
        "8",
        "--stream",
        "--load",
        "concurrency",
        "--concurrency",
        "1",
        "--requests",
        "1",
        "--no-preflight",
        "--quiet",
    ];
    let llmd_loadgen::Command::Run(run) = llmd_loadgen::Args::try_parse_from(flags)?.command else {
        bail!("internal: not a run command");
    };
    // A few tries: on a busy machine the only decode pod may be briefly unroutable (503, no
    // ready endpoint).
    for _ in 0..5 {
        let report = llmd_loadgen::run_load(&run, stop.clone()).await?;
        if report.overall.ok == 1 || stop.is_cancelled() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    bail!("the short request after part 2 failed five times (see the log)")
}
