//! `run --sweep`: stages of rising rate until the SLO fails, and the highest passing rate.

use tokio_util::sync::CancellationToken;

use crate::stats::Report;
use crate::{Error, LoadMode, RunArgs, config_err, output, run_load};

/// A sweep: every stage's report and the highest passing rate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sweep {
    /// The highest target rate whose stage met the SLO and kept its schedule.
    pub best_rate: Option<f64>,
    /// Required SLO attainment.
    pub slo_attainment: f64,
    /// Stages in the order they ran, with whether each passed.
    pub stages: Vec<(bool, Report)>,
}

/// Whether a sweep stage passed: enough requests met the SLO, and the load generator kept its
/// schedule (achieved >= 95% of target, send lag p99 within `output::LATE_MS` or a quarter of
/// the mean gap between sends, whichever is larger).
pub fn stage_passed(r: &Report, attainment: f64) -> bool {
    let late = r
        .target_rate
        .map_or(output::LATE_MS, |rate| output::LATE_MS.max(250.0 / rate));
    r.overall.slo_attainment.is_some_and(|a| a >= attainment)
        && r.achieved_ratio.is_some_and(|x| x >= 0.95)
        && r.send_lag_ms.is_none_or(|l| l.p99 <= late)
}

/// Runs `run --sweep`.
pub async fn run_sweep(args: &RunArgs, stop: CancellationToken) -> Result<Sweep, Error> {
    let spec = args.sweep.as_deref().unwrap_or("auto");
    if args.slo.is_none() {
        return Err(config_err("--sweep needs --slo"));
    }
    if !matches!(
        args.load,
        LoadMode::Constant | LoadMode::Poisson | LoadMode::Gamma
    ) {
        return Err(config_err(
            "--sweep needs --load constant, poisson or gamma",
        ));
    }
    let mut stage_args = args.clone();
    stage_args.sweep = None;
    stage_args.target.output = None;
    stage_args.target.output_requests = None;
    stage_args.target.html = None;
    let mut stages: Vec<(bool, Report)> = Vec::new();
    let run_at = |rate: f64| {
        let mut a = stage_args.clone();
        a.rate = Some(rate);
        let stop = stop.clone();
        async move {
            let r = run_load(&a, stop).await?;
            let ok = stage_passed(&r, args.slo_attainment);
            eprintln!(
                "sweep: {rate:.1} req/s -> achieved {:.1}, SLO met by {:.1}%: {}",
                r.achieved_rate,
                r.overall.slo_attainment.unwrap_or(0.0) * 100.0,
                if ok { "pass" } else { "fail" }
            );
            Ok::<_, Error>((ok, r))
        }
    };
    if spec == "auto" {
        let mut rate = args.rate.filter(|r| *r > 0.0).unwrap_or(1.0);
        let mut pass: Option<f64> = None;
        let mut fail: Option<f64> = None;
        for _ in 0..16 {
            let (ok, r) = run_at(rate).await?;
            stages.push((ok, r));
            if ok {
                pass = Some(rate);
                rate *= 2.0;
            } else {
                fail = Some(rate);
                break;
            }
        }
        if let (Some(mut lo), Some(mut hi)) = (pass, fail) {
            for _ in 0..4 {
                if stop.is_cancelled() {
                    break;
                }
                let mid = (lo + hi) / 2.0;
                let (ok, r) = run_at(mid).await?;
                stages.push((ok, r));
                if ok {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
        }
    } else {
        for part in spec.split(',') {
            let rate: f64 = part
                .trim()
                .parse()
                .ok()
                .filter(|r: &f64| *r > 0.0 && r.is_finite())
                .ok_or_else(|| config_err(format!("--sweep: {part:?} is not a rate")))?;
            let (ok, r) = run_at(rate).await?;
            stages.push((ok, r));
        }
    }
    let best_rate = stages
        .iter()
        .filter(|(ok, _)| *ok)
        .filter_map(|(_, r)| r.target_rate)
        .max_by(f64::total_cmp);
    let sweep = Sweep {
        best_rate,
        slo_attainment: args.slo_attainment,
        stages,
    };
    if let Some(path) = &args.target.output {
        let text = serde_json::to_vec_pretty(&sweep).map_err(|e| config_err(e.to_string()))?;
        std::fs::write(path, text).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(sweep)
}
