//! Results: distributions (mean, median, p90/p95/p99), per pattern and overall, throughput,
//! goodput against an SLO, achieved against target rate, send-time lag, errors by kind, and the
//! report JSON (`--output`) that `llmd-loadgen report` reads back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::Outcome;

/// A latency distribution, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Dist {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// The `p`-quantile (0..=1) of sorted samples, interpolated linearly as numpy does.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = p.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

impl Dist {
    /// Of these samples (non-finite ones dropped).
    pub fn of(samples: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = samples.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Dist::default();
        }
        v.sort_by(f64::total_cmp);
        Dist {
            count: v.len() as u64,
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v[0],
            p50: quantile(&v, 0.5),
            p90: quantile(&v, 0.9),
            p95: quantile(&v, 0.95),
            p99: quantile(&v, 0.99),
            max: v[v.len() - 1],
        }
    }
}

/// Service-level objectives, ms; a request meets them when it succeeded and every one set holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// Time to first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Time per output token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpot_ms: Option<f64>,
    /// End to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_ms: Option<f64>,
}

impl Slo {
    /// Parses `ttft=200,tpot=50,e2e=10000` (ms; `ms`/`s` suffixes accepted).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut slo = Slo::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .or_else(|| part.split_once(':'))
                .ok_or_else(|| format!("{part:?}: expected name=value"))?;
            let v = v.trim();
            let ms = if let Some(x) = v.strip_suffix("ms") {
                x.trim().parse::<f64>().ok()
            } else if let Some(x) = v.strip_suffix('s') {
                x.trim().parse::<f64>().ok().map(|x| x * 1e3)
            } else {
                v.parse::<f64>().ok()
            }
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| format!("{part:?}: not a positive duration"))?;
            match k.trim() {
                "ttft" => slo.ttft_ms = Some(ms),
                "tpot" => slo.tpot_ms = Some(ms),
                "e2e" | "e2el" => slo.e2e_ms = Some(ms),
                other => return Err(format!("unknown SLO {other:?} (ttft, tpot, e2e)")),
            }
        }
        Ok(slo)
    }

    /// True when no objective is set.
    pub fn is_empty(&self) -> bool {
        *self == Slo::default()
    }

    /// Whether `o` meets every objective.
    pub fn met(&self, o: &Outcome) -> bool {
        if !o.ok() {
            return false;
        }
        let within = |limit: Option<f64>, value: Option<f64>| match (limit, value) {
            (None, _) => true,
            (Some(l), Some(v)) => v <= l,
            (Some(_), None) => false,
        };
        within(self.ttft_ms, o.ttft_ms)
            && (self.tpot_ms.is_none()
                || o.tpot_ms()
                    .is_none_or(|t| t <= self.tpot_ms.unwrap_or(f64::MAX)))
            && within(self.e2e_ms, Some(o.e2e_ms))
    }
}

/// Results of one group of requests (a pattern, or all).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// Pattern name (`all` for the whole run).
    pub name: String,
    /// Requests counted.
    pub requests: u64,
    /// Succeeded.
    pub ok: u64,
    /// Failed.
    pub failed: u64,
    /// Failures by kind (`"503 Service Unavailable"`, `"timeout"`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Prompt tokens of successful requests.
    pub input_tokens: u64,
    /// Output tokens of successful requests.
    pub output_tokens: u64,
    /// Prompt tokens the server reported cached.
    pub cached_tokens: u64,
    /// Successful requests per second over the measured window.
    pub request_throughput: f64,
    /// Output tokens per second.
    pub output_throughput: f64,
    /// Requests per second that met the SLO (only with one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goodput: Option<f64>,
    /// Share of requests that met the SLO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_attainment: Option<f64>,
    /// Time to first token (streaming requests).
    pub ttft_ms: Dist,
    /// Time per output token after the first.
    pub tpot_ms: Dist,
    /// Inter-token latencies (every gap of every request).
    pub itl_ms: Dist,
    /// End to end.
    pub e2e_ms: Dist,
    /// The proxy's `server-timing` breakdown, when responses carried it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_timing: Option<Breakdown>,
}

/// True TTFT as the P/D proxy splits it (`server-timing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    /// Prefill leg.
    pub prefill_ms: Dist,
    /// The proxy's own time.
    pub coordinator_ms: Dist,
    /// Decode leg start to its first token.
    pub decode_ttft_ms: Dist,
    /// The proxy's true TTFT (request received to first token).
    #[serde(default)]
    pub true_ttft_ms: Dist,
}

impl Group {
    /// Of these outcomes over a window of `secs`.
    pub fn of<'a>(
        name: &str,
        outcomes: impl IntoIterator<Item = &'a Outcome> + Clone,
        secs: f64,
        slo: &Slo,
    ) -> Self {
        let mut g = Group {
            name: name.to_owned(),
            ..Default::default()
        };
        let mut met = 0u64;
        for o in outcomes.clone() {
            g.requests += 1;
            match &o.error {
                None => {
                    g.ok += 1;
                    g.input_tokens += u64::from(o.input_tokens);
                    g.output_tokens += u64::from(o.output_tokens);
                    g.cached_tokens += u64::from(o.cached_tokens.unwrap_or(0));
                }
                Some(kind) => {
                    g.failed += 1;
                    *g.errors.entry(kind.to_string()).or_default() += 1;
                }
            }
            if slo.met(o) {
                met += 1;
            }
        }
        let ok = || outcomes.clone().into_iter().filter(|o| o.ok());
        g.ttft_ms = Dist::of(ok().filter_map(|o| o.ttft_ms));
        g.tpot_ms = Dist::of(ok().filter_map(Outcome::tpot_ms));
        g.itl_ms = Dist::of(ok().flat_map(|o| o.itl_ms.iter().map(|x| f64::from(*x))));
        g.e2e_ms = Dist::of(ok().map(|o| o.e2e_ms));
        let timed: Vec<_> = ok().filter_map(|o| o.server_timing).collect();
        if !timed.is_empty() {
            g.server_timing = Some(Breakdown {
                prefill_ms: Dist::of(timed.iter().filter_map(|t| t.prefill_ms)),
                coordinator_ms: Dist::of(timed.iter().filter_map(|t| t.coordinator_ms)),
                decode_ttft_ms: Dist::of(timed.iter().filter_map(|t| t.decode_ttft_ms)),
                true_ttft_ms: Dist::of(timed.iter().filter_map(|t| t.true_ttft_ms)),
            });
        }
        let secs = secs.max(1e-9);
        g.request_throughput = g.ok as f64 / secs;
        g.output_throughput = g.output_tokens as f64 / secs;
        if !slo.is_empty() {
            g.goodput = Some(met as f64 / secs);
            g.slo_attainment = Some(if g.requests == 0 {
                0.0
            } else {
                met as f64 / g.requests as f64
            });
        }
        g
    }
}

/// Requests, errors and TTFT per second of the run (for the plots).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds from the start.
    pub t: u32,
    /// Requests sent in that second.
    pub sent: u64,
    /// Of which failed.
    pub errors: u64,
    /// Median TTFT of those, ms (0: none).
    pub ttft_p50_ms: f64,
    /// Median E2E of those, ms.
    pub e2e_p50_ms: f64,
}

/// Everything a run measured (`--output report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Format version.
    pub version: u32,
    /// The tool and its version.
    pub tool: String,
    /// When the run started (RFC 3339, UTC).
    pub started_at: String,
    /// The configuration (flags) of the run.
    pub config: Value,
    /// Target rate, requests/s (open loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_rate: Option<f64>,
    /// Achieved send rate after the warm-up, requests/s.
    pub achieved_rate: f64,
    /// Achieved / target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub achieved_ratio: Option<f64>,
    /// Send-time lag against the schedule, ms (open loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_lag_ms: Option<Dist>,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Requests sent during the warm-up (not counted).
    pub warmup_requests: u64,
    /// The SLO of goodput.
    pub slo: Slo,
    /// Every counted request.
    pub overall: Group,
    /// Per pattern or dataset group, by name.
    pub patterns: Vec<Group>,
    /// Per second of the run.
    pub timeline: Vec<Second>,
}

impl Report {
    /// Builds the report of a run.
    pub fn build(
        config: Value,
        outcomes: &[Outcome],
        duration_s: f64,
        send_window_s: f64,
        target_rate: Option<f64>,
        warmup_requests: u64,
        slo: Slo,
    ) -> Self {
        let overall = Group::of("all", outcomes, duration_s, &slo);
        let mut names: Vec<&str> = outcomes.iter().map(|o| o.pattern.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let patterns = if names.len() > 1 {
            names
                .iter()
                .map(|n| {
                    Group::of(
                        n,
                        outcomes.iter().filter(|o| o.pattern == *n),
                        duration_s,
                        &slo,
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let lags: Vec<f64> = outcomes.iter().filter_map(|o| o.lag_ms).collect();
        let achieved_rate = outcomes.len() as f64 / send_window_s.max(1e-9);
        let mut secs: BTreeMap<u32, Vec<&Outcome>> = BTreeMap::new();
        for o in outcomes {
            secs.entry((o.start_ms / 1e3) as u32).or_default().push(o);
        }
        let timeline = secs
            .into_iter()
            .map(|(t, os)| Second {
                t,
                sent: os.len() as u64,
                errors: os.iter().filter(|o| !o.ok()).count() as u64,
                ttft_p50_ms: Dist::of(os.iter().filter_map(|o| o.ttft_ms)).p50,
                e2e_p50_ms: Dist::of(os.iter().filter(|o| o.ok()).map(|o| o.e2e_ms)).p50,
            })
            .collect();
        Report {
            version: 1,
            tool: format!("llmd-loadgen {}", env!("CARGO_PKG_VERSION")),
            started_at: now_rfc3339(),
            config,
            target_rate,
            achieved_rate,
            achieved_ratio: target_rate.map(|t| achieved_rate / t),
            send_lag_ms: (!lags.is_empty()).then(|| Dist::of(lags)),
            duration_s,
            warmup_requests,
            slo,
            overall,
            patterns,
            timeline,
        }
    }
}

/// Now as RFC 3339 UTC, to the second.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        // numpy.percentile(range(1, 11), [50, 90, 99]) = 5.5, 9.1, 9.91
        assert!((quantile(&v, 0.5) - 5.5).abs() < 1e-9);
        assert!((quantile(&v, 0.9) - 9.1).abs() < 1e-9);
        assert!((quantile(&v, 0.99) - 9.91).abs() < 1e-9);
        let d = Dist::of([3.0, f64::NAN, 1.0, 2.0]);
        assert_eq!((d.count, d.min, d.p50, d.max), (3, 1.0, 2.0, 3.0));
    }

    #[test]
    fn slo_parses() {
        let s = Slo::parse("ttft=200, tpot=50ms,e2e=2s").unwrap_or_default();
        assert_eq!(
            (s.ttft_ms, s.tpot_ms, s.e2e_ms),
            (Some(200.0), Some(50.0), Some(2000.0))
        );
        for bad in ["ttft", "ttft=-1", "foo=1", "ttft=x"] {
            assert!(Slo::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_are_civil() {
        let d = now_rfc3339();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
