//! The load loop. Open loop (constant, Poisson, gamma, trace replay): a dedicated thread keeps
//! the schedule and spawns each request at its time without waiting for replies, so a slow
//! server never slows the offered load, and every request records how late it left (send-time
//! lag: an overloaded load generator is visible, not silent). Closed loop (fixed concurrency):
//! N workers each send the next request when the last one finished. Runs are bounded by a
//! duration, a request count, or both; requests scheduled in the warm-up are sent but not
//! counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Exp, Gamma};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::client::{Client, Outcome, RequestSpec};
use crate::dataset::Dataset;

/// How requests are offered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Load {
    /// Evenly spaced, `rate` per second.
    Constant {
        /// Requests/s.
        rate: f64,
    },
    /// Exponential gaps (Poisson arrivals), `rate` per second on average.
    Poisson {
        /// Requests/s.
        rate: f64,
    },
    /// Gamma gaps with shape `burstiness` (1 = Poisson; below 1 burstier, above 1 more even),
    /// `rate` per second on average (as `vllm bench serve --burstiness`).
    Gamma {
        /// Requests/s.
        rate: f64,
        /// Gamma shape.
        burstiness: f64,
    },
    /// N requests in flight at all times (closed loop).
    Concurrency {
        /// Workers.
        n: usize,
    },
    /// At the dataset's own timestamps (trace replay).
    Trace,
}

impl Load {
    /// The target rate, when there is one.
    pub fn target_rate(&self) -> Option<f64> {
        match *self {
            Load::Constant { rate } | Load::Poisson { rate } | Load::Gamma { rate, .. } => {
                Some(rate)
            }
            Load::Concurrency { .. } | Load::Trace => None,
        }
    }

    fn validate(&self) -> Result<(), String> {
        let ok = match *self {
            Load::Constant { rate } | Load::Poisson { rate } => rate > 0.0 && rate.is_finite(),
            Load::Gamma { rate, burstiness } => {
                rate > 0.0 && rate.is_finite() && burstiness > 0.0 && burstiness.is_finite()
            }
            Load::Concurrency { n } => n > 0,
            Load::Trace => true,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "invalid load {self:?}: rates, burstiness and concurrency must be > 0"
            ))
        }
    }
}

/// Gaps between sends for the open-loop modes.
struct Arrivals {
    load: Load,
    rng: SmallRng,
    exp: Option<Exp<f64>>,
    gamma: Option<Gamma<f64>>,
}

impl Arrivals {
    fn new(load: Load, seed: u64) -> Self {
        let exp = match load {
            Load::Poisson { rate } => Exp::new(rate).ok(),
            _ => None,
        };
        let gamma = match load {
            Load::Gamma { rate, burstiness } => {
                Gamma::new(burstiness, 1.0 / (rate * burstiness)).ok()
            }
            _ => None,
        };
        Self {
            load,
            rng: SmallRng::seed_from_u64(seed ^ 0x5eed),
            exp,
            gamma,
        }
    }

    /// Seconds to the next send.
    fn gap(&mut self) -> f64 {
        match self.load {
            Load::Constant { rate } => 1.0 / rate,
            Load::Poisson { rate } => self
                .exp
                .map(|d| d.sample(&mut self.rng))
                .unwrap_or(1.0 / rate),
            Load::Gamma { rate, .. } => self
                .gamma
                .map(|d| d.sample(&mut self.rng))
                .unwrap_or(1.0 / rate),
            Load::Concurrency { .. } | Load::Trace => 0.0,
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Offered load.
    pub load: Load,
    /// Stop sending after this long (the warm-up included).
    pub duration: Option<Duration>,
    /// Stop after this many requests (the warm-up included).
    pub max_requests: Option<u64>,
    /// Requests scheduled before this are sent but not counted.
    pub warmup: Duration,
    /// Streaming requests.
    pub stream: bool,
    /// Seed of every random choice.
    pub seed: u64,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Counted outcomes (the warm-up excluded), in completion order.
    pub outcomes: Vec<Outcome>,
    /// Requests sent in the warm-up.
    pub warmup_requests: u64,
    /// The measured window: from the end of the warm-up to the last completion, seconds.
    pub duration_s: f64,
    /// The send window after the warm-up, seconds (achieved rate = counted / this).
    pub send_window_s: f64,
}

/// Live view of a run (progress bars, the pd-concurrent line printer).
pub trait Observer: Send + 'static {
    /// One outcome, as it completes (warm-up included, `counted` false there).
    fn outcome(&mut self, outcome: &Outcome, counted: bool);
}

/// An observer that does nothing.
#[derive(Debug)]
pub struct Quiet;

impl Observer for Quiet {
    fn outcome(&mut self, _: &Outcome, _: bool) {}
}

/// Runs `plan` against `client` with prompts from `dataset`.
pub async fn run(
    client: Client,
    dataset: Dataset,
    plan: Plan,
    mut observer: impl Observer,
    stop: tokio_util::sync::CancellationToken,
) -> Result<RunOutput, String> {
    plan.load.validate()?;
    if plan.duration.is_none() && plan.max_requests.is_none() && dataset.len().is_none() {
        return Err("an unbounded run: give a duration or a request count".into());
    }
    if dataset.is_empty() {
        return Err("the dataset has no prompts".into());
    }
    let max_requests = match (plan.max_requests, plan.load, dataset.len()) {
        (Some(m), _, _) => Some(m),
        // A trace is replayed once.
        (None, Load::Trace, Some(n)) => Some(n as u64),
        (None, _, _) => None,
    };
    let t0 = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<(Outcome, bool)>();
    let sent_warmup = Arc::new(AtomicU64::new(0));
    let last_send = Arc::new(parking_lot_free::LastSend::default());

    // The collector below ends when every sender is gone: the workers or the scheduler thread
    // and every request it spawned. Nothing else needs joining.
    match plan.load {
        Load::Concurrency { n } => {
            let next = Arc::new(AtomicU64::new(0));
            for w in 0..n {
                let (client, dataset, tx, next, stop) = (
                    client.clone(),
                    dataset.clone(),
                    tx.clone(),
                    next.clone(),
                    stop.clone(),
                );
                let (sent_warmup, last_send) = (sent_warmup.clone(), last_send.clone());
                let plan = plan.clone();
                tokio::spawn(async move {
                    let mut rng = SmallRng::seed_from_u64(plan.seed.wrapping_add(w as u64));
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let elapsed = t0.elapsed();
                        if stop.is_cancelled()
                            || max_requests.is_some_and(|m| i >= m)
                            || plan.duration.is_some_and(|d| elapsed >= d)
                        {
                            break;
                        }
                        let counted = elapsed >= plan.warmup;
                        if !counted {
                            sent_warmup.fetch_add(1, Ordering::Relaxed);
                        }
                        last_send.record(elapsed);
                        let spec = spec_for(&dataset, i, plan.stream, &mut rng);
                        let o = client.send(&spec, t0).await;
                        if tx.send((o, counted)).is_err() {
                            break;
                        }
                    }
                });
            }
        }
        _ => {
            let handle = tokio::runtime::Handle::current();
            let (client, dataset, tx, stop) =
                (client.clone(), dataset.clone(), tx.clone(), stop.clone());
            let (sent_warmup, last_send) = (sent_warmup.clone(), last_send.clone());
            let plan = plan.clone();
            std::thread::Builder::new()
                .name("loadgen-schedule".into())
                .spawn(move || {
                    let mut arrivals = Arrivals::new(plan.load, plan.seed);
                    let mut rng = SmallRng::seed_from_u64(plan.seed);
                    let mut offset = 0.0f64; // seconds from t0
                    for i in 0u64.. {
                        if stop.is_cancelled() || max_requests.is_some_and(|m| i >= m) {
                            break;
                        }
                        let item = dataset.item(i, &mut rng);
                        if let (Load::Trace, Some(at)) = (plan.load, item.at_ms) {
                            offset = at / 1e3;
                        }
                        let at = Duration::from_secs_f64(offset);
                        if plan.duration.is_some_and(|d| at >= d) {
                            break;
                        }
                        let due = t0 + at;
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let counted = at >= plan.warmup;
                        if !counted {
                            sent_warmup.fetch_add(1, Ordering::Relaxed);
                        }
                        last_send.record(t0.elapsed());
                        let spec = RequestSpec {
                            id: request_id(),
                            pattern: item.group,
                            prompt: item.prompt,
                            input_tokens: item.input_tokens,
                            max_tokens: item.output_tokens,
                            stream: plan.stream,
                        };
                        let (client, tx) = (client.clone(), tx.clone());
                        handle.spawn(async move {
                            let lag = Instant::now().saturating_duration_since(due);
                            let mut o = client.send(&spec, t0).await;
                            o.lag_ms = Some(lag.as_secs_f64() * 1e3);
                            let _ = tx.send((o, counted));
                        });
                        offset += arrivals.gap();
                    }
                })
                .map_err(|e| format!("cannot start the scheduler thread: {e}"))?;
        }
    }
    drop(tx);

    let mut outcomes = Vec::new();
    while let Some((o, counted)) = rx.recv().await {
        observer.outcome(&o, counted);
        if counted {
            outcomes.push(o);
        }
    }
    let end = t0.elapsed();
    let warm = plan.warmup.as_secs_f64();
    let window = (last_send.get().as_secs_f64() - warm).max(0.0);
    // The send window of n evenly spread sends spans n-1 gaps; add one mean gap so the
    // achieved rate of a constant schedule is exact.
    let send_window_s = match plan.load.target_rate() {
        Some(rate) if !outcomes.is_empty() => window + 1.0 / rate,
        _ => window.max(end.as_secs_f64() - warm),
    };
    Ok(RunOutput {
        warmup_requests: sent_warmup.load(Ordering::Relaxed),
        duration_s: (end.as_secs_f64() - warm).max(1e-9),
        send_window_s: send_window_s.max(1e-9),
        outcomes,
    })
}

fn spec_for(dataset: &Dataset, i: u64, stream: bool, rng: &mut SmallRng) -> RequestSpec {
    let item = dataset.item(i, rng);
    RequestSpec {
        id: request_id(),
        pattern: item.group,
        prompt: item.prompt,
        input_tokens: item.input_tokens,
        max_tokens: item.output_tokens,
        stream,
    }
}

/// A random UUID (v4 layout) from the thread's generator: Envoy's tracing drops requests whose
/// `x-request-id` is not a UUID, and uuid's own v4 makes a system call per id.
pub fn request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random::<[u8; 16]>())
        .into_uuid()
        .to_string()
}

/// The latest send offset, shared between the scheduler and the collector without a lock.
mod parking_lot_free {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[derive(Debug, Default)]
    pub struct LastSend(AtomicU64);

    impl LastSend {
        pub fn record(&self, at: Duration) {
            self.0.fetch_max(
                u64::try_from(at.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }

        pub fn get(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::Relaxed))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_gaps_have_the_target_mean() {
        for load in [
            Load::Constant { rate: 200.0 },
            Load::Poisson { rate: 200.0 },
            Load::Gamma {
                rate: 200.0,
                burstiness: 0.5,
            },
            Load::Gamma {
                rate: 200.0,
                burstiness: 4.0,
            },
        ] {
            let mut a = Arrivals::new(load, 1);
            let n = 50_000;
            let gaps: Vec<f64> = (0..n).map(|_| a.gap()).collect();
            let mean = gaps.iter().sum::<f64>() / n as f64;
            assert!(
                (mean * 200.0 - 1.0).abs() < 0.02,
                "{load:?}: mean gap {mean}"
            );
            let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n as f64;
            let cv2 = var / (mean * mean);
            // Squared coefficient of variation: 0 constant, 1 Poisson, 1/shape for gamma.
            let want = match load {
                Load::Constant { .. } => 0.0,
                Load::Gamma { burstiness, .. } => 1.0 / burstiness,
                _ => 1.0,
            };
            assert!(
                (cv2 - want).abs() < 0.1 * want.max(0.1),
                "{load:?}: cv² {cv2}"
            );
        }
    }
}
