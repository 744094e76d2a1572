//! Part 1: precise prefix-cache routing against random routing, side by side.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;
use llmd_epp::endpoints::Role;
use llmd_telemetry::{MetricsHandle, names};
use tokio_util::sync::CancellationToken;

use super::html::{PrefixFigures, RunFigures};
use super::stack::{
    bind, bucket_delta, delta, engine_metrics, epp, gateway, sim_on, snapshot, spec,
};
use super::{
    DemoArgs, HASH_SEED, PREFIX_GPU_BLOCKS, PREFIX_GROUPS, PREFIX_TOKENS, SUFFIX_TOKENS, ok_share,
    pct, ratio,
};

pub(super) fn prefix_config(random: bool, tokenizer: &Path) -> String {
    let tok = tokenizer.display();
    let picker = if random {
        "random-picker"
    } else {
        "max-score-picker"
    };
    // With random routing the prefix scorer still runs, so that the EPP records how many
    // blocks the randomly chosen pod held; the random picker ignores every score. Precise
    // routing also sees what it just routed: speculative prefix entries keep a group's
    // requests together before its first one's KV events arrive, and the in-flight count
    // spreads new groups over the pods.
    let speculative = !random;
    let active = if random {
        ""
    } else {
        "\n      - {pluginRef: active-request-scorer, weight: 1}"
    };
    format!(
        r#"
plugins:
  - type: precise-prefix-cache-scorer
    parameters: {{hashSeed: "{HASH_SEED}", tokenizer: "{tok}", speculativeIndexing: {speculative}}}
  - type: queue-scorer
  - type: active-request-scorer
  - type: {picker}
schedulingProfiles:
  - name: default
    plugins:
      - {{pluginRef: precise-prefix-cache-scorer, weight: 3}}
      - {{pluginRef: queue-scorer, weight: 1}}{active}
      - {{pluginRef: {picker}}}
"#
    )
}

/// Part 1's stack: four simulators publishing KV events to one EPP, and a gateway.
pub(super) struct PrefixStack {
    pub(super) gateway: SocketAddr,
    ranks: Vec<u32>,
    stop: CancellationToken,
}

pub(super) async fn prefix_stack(
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
            "--span-service-name",
            names::services::VLLM,
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
/// flight, for --keep-running; `requests`: where to write every request's measurements).
pub(super) fn prefix_load(
    gateway: SocketAddr,
    tokenizer: &Path,
    args: &DemoArgs,
    duration_s: f64,
    rate: Option<f64>,
    requests: Option<&Path>,
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
        "--span-service-name",
        names::services::LOADGEN,
    ];
    match &rate {
        Some(r) => flags.extend(["--load", "poisson", "--rate", r.as_str()]),
        None => flags.extend(["--load", "concurrency", "--concurrency", workers.as_str()]),
    }
    let requests = requests.map(|p| p.display().to_string());
    if let Some(path) = &requests {
        flags.extend(["--output-requests", path.as_str()]);
    }
    let llmd_loadgen::Command::Run(run) = llmd_loadgen::Args::try_parse_from(flags)?.command else {
        bail!("internal: not a run command");
    };
    Ok(*run)
}

/// What one part 1 run measured.
pub(super) struct PrefixResult {
    report: llmd_loadgen::stats::Report,
    /// Prompt tokens the engines found cached / prompt tokens.
    engine_hit_rate: f64,
    /// Requests the EPP sent to a pod holding at least one of their blocks / scored requests.
    epp_hit_rate: f64,
    /// Shares of requests by matched blocks of the chosen pod: 0, 1-8, 9-16, 17+.
    matched: [f64; 4],
    per_pod: Vec<f64>,
    /// The EPP's matched-blocks histogram: (upper bound, requests in the bucket).
    matched_buckets: Vec<(f64, f64)>,
    /// The client's TTFT of every successful request, ms.
    ttft_ms: Vec<f64>,
}

impl PrefixResult {
    fn figures(&self) -> RunFigures {
        let g = &self.report.overall;
        RunFigures {
            requests: g.requests,
            ok: g.ok,
            engine_hit_rate: self.engine_hit_rate,
            cached_share: ratio(g.cached_tokens as f64, g.input_tokens as f64),
            epp_hit_rate: self.epp_hit_rate,
            per_pod: self.per_pod.clone(),
            matched: self.matched_buckets.clone(),
            ttft_ms: self.ttft_ms.clone(),
            ttft_p: [g.ttft_ms.p50, g.ttft_ms.p90, g.ttft_ms.p99],
        }
    }
}

/// The client's TTFT of every successful request in a load generator's `--output-requests`
/// file (which is removed).
fn read_ttfts(path: &Path) -> anyhow::Result<Vec<f64>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let _ = std::fs::remove_file(path);
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let o: llmd_loadgen::client::Outcome =
            serde_json::from_str(line).with_context(|| format!("a line of {}", path.display()))?;
        if let (true, Some(t)) = (o.ok(), o.ttft_ms) {
            out.push(t);
        }
    }
    Ok(out)
}

pub(super) async fn prefix_run(
    stack: &PrefixStack,
    tokenizer: &Path,
    args: &DemoArgs,
    metrics: &MetricsHandle,
    stop: &CancellationToken,
) -> anyhow::Result<PrefixResult> {
    let dir = std::env::temp_dir().join(format!("llmd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let requests = dir.join(format!("part1-{}.jsonl", stack.ranks.first().unwrap_or(&0)));
    let load = prefix_load(
        stack.gateway,
        tokenizer,
        args,
        args.duration_s,
        None,
        Some(&requests),
    )?;
    let before = snapshot(metrics)?;
    let report = llmd_loadgen::run_load(&load, stop.clone()).await?;
    let after = snapshot(metrics)?;
    let ttft_ms = read_ttfts(&requests)?;
    let _ = std::fs::remove_dir(&dir);
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
        matched_buckets: bucket_delta(&before, &after, blocks, &[]),
        ttft_ms,
    })
}

/// Part 1: precise prefix-cache routing, then random routing, side by side. Returns the stack
/// left running (the precise one) and its tokenizer, for --keep-running, and what it measured
/// for the page.
pub(super) async fn prefix_part(
    args: &DemoArgs,
    metrics: &MetricsHandle,
    stop: &CancellationToken,
    failed: &mut Vec<String>,
) -> anyhow::Result<(PrefixStack, PathBuf, PrefixFigures)> {
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
    let figures = PrefixFigures {
        precise: a.figures(),
        random: b.figures(),
        started_at: a.report.started_at.clone(),
    };
    Ok((precise, tokenizer, figures))
}
