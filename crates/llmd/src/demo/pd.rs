//! Part 2: prefill/decode through the proxy, and the true-TTFT breakdown.

use std::net::SocketAddr;

use anyhow::bail;
use clap::Parser;
use llmd_epp::endpoints::Role;
use llmd_telemetry::{MetricsHandle, names};
use tokio_util::sync::CancellationToken;

use super::stack::{bind, delta, engine_metrics, epp, gateway, sim, snapshot, spec};
use super::{DemoArgs, ok_share};

pub(super) fn pd_config(threshold: u32) -> String {
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

/// Part 2's stack.
pub(super) struct PdStack {
    pub(super) gateway: SocketAddr,
    decode_rank: u32,
}

pub(super) async fn pd_stack(
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
pub(super) async fn pd_part(
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
pub(super) fn pd_background(gateway: SocketAddr) -> anyhow::Result<llmd_loadgen::RunArgs> {
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
