//! `pd-concurrent WORKERS MINUTES`: the P/D demo's worker patterns ([`crate::scenario`])
//! against a target, printed per request and summarised in a report.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::Api;
use crate::stats::{Report, Slo};
use crate::{Error, PdArgs, config_err, scenario};

/// Runs `pd-concurrent`; prints a line per request (unless asked not to) and returns the report.
pub async fn run_pd(args: &PdArgs, stop: CancellationToken) -> Result<Report, Error> {
    if args.workers == 0 || !(args.minutes > 0.0 && args.minutes.is_finite()) {
        return Err(config_err("WORKERS and MINUTES must be > 0"));
    }
    let maker = args.target.maker()?;
    let mut extra = serde_json::Map::new();
    extra.insert("temperature".into(), json!(0.7));
    let client = args.target.client(Api::Chat, extra)?;
    args.target.preflight(&client).await?;
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    println!("=== llm-d P/D concurrent load ===");
    println!("Endpoint: {}", client.endpoint());
    println!("Model:    {}", args.target.model);
    println!("Workers:  {}", args.workers);
    println!("Duration: {} min", args.minutes);
    for w in 1..=args.workers {
        println!("  worker {w}: {}", scenario::PATTERNS[(w - 1) % 6]);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let started = std::time::Instant::now();
    let s = scenario::Scenario {
        workers: args.workers,
        duration,
        pace: args.pace,
        seed: args.target.seed,
    };
    let driver = tokio::spawn(scenario::run(client, maker, s, tx, stop));
    let mut outcomes = Vec::new();
    let mut last_progress = std::time::Instant::now();
    while let Some((worker, o)) = rx.recv().await {
        if !args.no_lines {
            println!("{}", scenario::line(worker, &o));
        }
        outcomes.push(o);
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = std::time::Instant::now();
            let ok = outcomes.iter().filter(|o| o.ok()).count();
            let secs = started.elapsed().as_secs_f64();
            println!(
                "Progress: {} total | {ok} success | {} failed | {:.1}% success | {:.2} req/s | Remaining: {:.0}s",
                outcomes.len(),
                outcomes.len() - ok,
                100.0 * ok as f64 / outcomes.len() as f64,
                outcomes.len() as f64 / secs.max(1e-9),
                (duration.as_secs_f64() - secs).max(0.0)
            );
        }
    }
    let _ = driver.await;
    let secs = started.elapsed().as_secs_f64();
    let config = json!({
        "command": "pd-concurrent", "workers": args.workers, "minutes": args.minutes,
        "endpoint": args.target.endpoint, "model": args.target.model, "pace": args.pace,
        "seed": args.target.seed,
    });
    let report = Report::build(config, &outcomes, secs, secs, None, 0, Slo::default());
    args.target.write(&report, &outcomes)?;
    Ok(report)
}
