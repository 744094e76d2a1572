//! What a person reads: the live progress line (indicatif, on a terminal only), the final
//! summary table, and the side-by-side comparison of saved reports.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::Outcome;
use crate::runner::Observer;
use crate::stats::{Dist, Group, Report, quantile};

/// Live progress: rate, errors and the median TTFT of the last 1,000 requests.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    done: u64,
    errors: u64,
    recent_ttft: VecDeque<f64>,
    last_draw: Instant,
}

impl Progress {
    /// A spinner on stderr (hidden when stderr is not a terminal or `quiet`).
    pub fn new(quiet: bool) -> Self {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        };
        Self {
            bar,
            started: Instant::now(),
            done: 0,
            errors: 0,
            recent_ttft: VecDeque::with_capacity(1000),
            last_draw: Instant::now(),
        }
    }

    /// The bar (to clear it when the run ends).
    pub fn bar(&self) -> ProgressBar {
        self.bar.clone()
    }
}

impl Observer for Progress {
    fn outcome(&mut self, o: &Outcome, _counted: bool) {
        self.done += 1;
        if !o.ok() {
            self.errors += 1;
        }
        if let Some(t) = o.ttft_ms {
            if self.recent_ttft.len() == 1000 {
                self.recent_ttft.pop_front();
            }
            self.recent_ttft.push_back(t);
        }
        if self.last_draw.elapsed() >= Duration::from_millis(200) {
            self.last_draw = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            let mut v: Vec<f64> = self.recent_ttft.iter().copied().collect();
            v.sort_by(f64::total_cmp);
            let ttft = if v.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1} ms", quantile(&v, 0.5))
            };
            self.bar.set_message(format!(
                "{} done | {:.1} req/s | {} errors | TTFT p50 {ttft}",
                self.done,
                self.done as f64 / secs,
                self.errors
            ));
        }
    }
}

/// Send-time lag p99 above this means the load generator fell behind its schedule.
pub const LATE_MS: f64 = 5.0;

fn row(out: &mut String, name: &str, d: &Dist) {
    if d.count == 0 {
        return;
    }
    let _ = writeln!(
        out,
        "  {name:<12}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
        d.mean, d.p50, d.p90, d.p95, d.p99, d.max
    );
}

fn latency_table(out: &mut String, g: &Group) {
    let _ = writeln!(
        out,
        "  {:<12}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "(ms)", "mean", "p50", "p90", "p95", "p99", "max"
    );
    row(out, "TTFT", &g.ttft_ms);
    row(out, "TPOT", &g.tpot_ms);
    row(out, "ITL", &g.itl_ms);
    row(out, "E2E", &g.e2e_ms);
}

/// The summary a person reads at the end of a run.
pub fn summary(r: &Report) -> String {
    let mut out = String::new();
    let g = &r.overall;
    let _ = writeln!(out, "============ llmd-loadgen results ============");
    if let Some(t) = r.target_rate {
        let ratio = r.achieved_ratio.unwrap_or(0.0);
        // Late sends, not the randomness of Poisson or gamma arrivals, mean it fell behind.
        let late = r.send_lag_ms.is_some_and(|l| l.p99 > LATE_MS);
        let warn = if late {
            "   << sends ran late: the load generator could not keep up, results understate the load"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "Offered rate:      target {t:.1} req/s, achieved {:.1} req/s ({:.3}){warn}",
            r.achieved_rate, ratio
        );
    }
    if let Some(lag) = &r.send_lag_ms {
        let _ = writeln!(
            out,
            "Send-time lag:     p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            lag.p50, lag.p99, lag.max
        );
    }
    let _ = writeln!(
        out,
        "Duration:          {:.1} s measured ({} warm-up requests not counted)",
        r.duration_s, r.warmup_requests
    );
    let pct = if g.requests == 0 {
        0.0
    } else {
        100.0 * g.ok as f64 / g.requests as f64
    };
    let _ = writeln!(
        out,
        "Requests:          {} total, {} ok, {} failed ({pct:.1}% success)",
        g.requests, g.ok, g.failed
    );
    for (kind, n) in &g.errors {
        let _ = writeln!(out, "  error {kind}: {n}");
    }
    let _ = writeln!(
        out,
        "Tokens:            {} in ({} cached), {} out",
        g.input_tokens, g.cached_tokens, g.output_tokens
    );
    let _ = writeln!(
        out,
        "Throughput:        {:.2} req/s, {:.1} output tok/s",
        g.request_throughput, g.output_throughput
    );
    if let (Some(gp), Some(att)) = (g.goodput, g.slo_attainment) {
        let mut slo = Vec::new();
        if let Some(x) = r.slo.ttft_ms {
            slo.push(format!("TTFT <= {x} ms"));
        }
        if let Some(x) = r.slo.tpot_ms {
            slo.push(format!("TPOT <= {x} ms"));
        }
        if let Some(x) = r.slo.e2e_ms {
            slo.push(format!("E2E <= {x} ms"));
        }
        let _ = writeln!(
            out,
            "Goodput:           {gp:.2} req/s ({:.1}% of requests met {})",
            att * 100.0,
            slo.join(", ")
        );
    }
    latency_table(&mut out, g);
    if let Some(b) = &g.server_timing {
        let _ = writeln!(
            out,
            "True TTFT breakdown (proxy server-timing, p50): prefill {:.2} + coordinator {:.3} + decode TTFT {:.2} ms",
            b.prefill_ms.p50, b.coordinator_ms.p50, b.decode_ttft_ms.p50
        );
    }
    if !r.patterns.is_empty() {
        let _ = writeln!(out, "Per pattern:");
        let _ = writeln!(
            out,
            "  {:<20}{:>8}{:>8}{:>12}{:>12}{:>12}{:>12}{:>12}",
            "pattern", "reqs", "ok %", "TTFT p50", "TTFT p99", "E2E p50", "E2E p99", "out tok/s"
        );
        for p in &r.patterns {
            let ok = if p.requests == 0 {
                0.0
            } else {
                100.0 * p.ok as f64 / p.requests as f64
            };
            let ttft = |x: f64| {
                if p.ttft_ms.count == 0 {
                    "-".to_owned()
                } else {
                    format!("{x:.1}")
                }
            };
            let _ = writeln!(
                out,
                "  {:<20}{:>8}{:>8.1}{:>12}{:>12}{:>12.1}{:>12.1}{:>12.1}",
                p.name,
                p.requests,
                ok,
                ttft(p.ttft_ms.p50),
                ttft(p.ttft_ms.p99),
                p.e2e_ms.p50,
                p.e2e_ms.p99,
                p.output_throughput
            );
        }
    }
    out
}

/// Reports side by side (`llmd-loadgen report a.json b.json ...`), with the last column over
/// the first when there are two or more.
pub fn compare(names: &[String], reports: &[Report]) -> String {
    type Get = fn(&Report) -> Option<f64>;
    let rows: &[(&str, Get)] = &[
        ("target rate (req/s)", |r| r.target_rate),
        ("achieved rate (req/s)", |r| Some(r.achieved_rate)),
        ("send lag p99 (ms)", |r| r.send_lag_ms.map(|d| d.p99)),
        ("requests", |r| Some(r.overall.requests as f64)),
        ("success %", |r| {
            Some(if r.overall.requests == 0 {
                0.0
            } else {
                100.0 * r.overall.ok as f64 / r.overall.requests as f64
            })
        }),
        ("throughput (req/s)", |r| Some(r.overall.request_throughput)),
        ("output tok/s", |r| Some(r.overall.output_throughput)),
        ("goodput (req/s)", |r| r.overall.goodput),
        ("TTFT p50 (ms)", |r| {
            nonzero(r.overall.ttft_ms.count, r.overall.ttft_ms.p50)
        }),
        ("TTFT p99 (ms)", |r| {
            nonzero(r.overall.ttft_ms.count, r.overall.ttft_ms.p99)
        }),
        ("TPOT p50 (ms)", |r| {
            nonzero(r.overall.tpot_ms.count, r.overall.tpot_ms.p50)
        }),
        ("TPOT p99 (ms)", |r| {
            nonzero(r.overall.tpot_ms.count, r.overall.tpot_ms.p99)
        }),
        ("ITL p99 (ms)", |r| {
            nonzero(r.overall.itl_ms.count, r.overall.itl_ms.p99)
        }),
        ("E2E p50 (ms)", |r| {
            nonzero(r.overall.e2e_ms.count, r.overall.e2e_ms.p50)
        }),
        ("E2E p99 (ms)", |r| {
            nonzero(r.overall.e2e_ms.count, r.overall.e2e_ms.p99)
        }),
        ("coordinator p50 (ms)", |r| {
            r.overall.server_timing.map(|b| b.coordinator_ms.p50)
        }),
    ];
    let width = names
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(8)
        .clamp(12, 28)
        + 2;
    let mut out = String::new();
    let _ = write!(out, "{:<24}", "");
    for n in names {
        let _ = write!(out, "{n:>width$}");
    }
    let ratio = reports.len() >= 2;
    if ratio {
        let _ = write!(out, "{:>10}", "last/first");
    }
    let _ = writeln!(out);
    for (label, get) in rows {
        let vals: Vec<Option<f64>> = reports.iter().map(get).collect();
        if vals.iter().all(Option::is_none) {
            continue;
        }
        let _ = write!(out, "{label:<24}");
        for v in &vals {
            match v {
                Some(x) => {
                    let _ = write!(out, "{x:>width$.2}");
                }
                None => {
                    let _ = write!(out, "{:>width$}", "-");
                }
            }
        }
        if ratio {
            match (
                vals.first().copied().flatten(),
                vals.last().copied().flatten(),
            ) {
                (Some(a), Some(b)) if a != 0.0 => {
                    let _ = write!(out, "{:>10.2}", b / a);
                }
                _ => {
                    let _ = write!(out, "{:>10}", "-");
                }
            }
        }
        let _ = writeln!(out);
    }
    out
}

/// The stages of a sweep and its answer.
pub fn sweep_table(s: &crate::Sweep) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "============ llmd-loadgen sweep ============");
    let _ = writeln!(
        out,
        "  {:>10}{:>10}{:>12}{:>10}{:>12}{:>12}{:>8}",
        "target", "achieved", "goodput", "SLO met", "TTFT p99", "E2E p99", ""
    );
    for (ok, r) in &s.stages {
        let _ = writeln!(
            out,
            "  {:>10.1}{:>10.1}{:>12.1}{:>9.1}%{:>12.1}{:>12.1}{:>8}",
            r.target_rate.unwrap_or(0.0),
            r.achieved_rate,
            r.overall.goodput.unwrap_or(0.0),
            r.overall.slo_attainment.unwrap_or(0.0) * 100.0,
            r.overall.ttft_ms.p99,
            r.overall.e2e_ms.p99,
            if *ok { "pass" } else { "fail" }
        );
    }
    match s.best_rate {
        Some(b) => {
            let _ = writeln!(
                out,
                "Highest rate meeting the SLO ({:.0}% of requests): {b:.1} req/s",
                s.slo_attainment * 100.0
            );
        }
        None => {
            let _ = writeln!(out, "No stage met the SLO.");
        }
    }
    out
}

fn nonzero(count: u64, v: f64) -> Option<f64> {
    (count > 0).then_some(v)
}
