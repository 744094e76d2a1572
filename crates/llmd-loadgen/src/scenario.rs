//! The `pd-concurrent` scenario: the llm-d P/D demo's `generate-load-pd-concurrent.sh WORKERS
//! MINUTES`, with client-side TTFT and token counts the shell script never had. Worker `w`
//! (1-based) runs pattern `PATTERNS[(w - 1) % 6]`, starts are staggered by 0.2 s, and each
//! worker sleeps between requests as its pattern says (scaled by `pace`).
//!
//! | pattern | workers | prompts (tokens) | max_tokens | sleep |
//! |---|---|---|---|---|
//! | `long_isl_short_osl` | 1, 6 | every 3rd very long (3000-5000), else long (1000-2000) | 50 / 75 | 0.3 s |
//! | `long_isl_long_osl` | 2 | long | 150-249 | 0.5 s |
//! | `mixed_balanced` | 3 | cycle: medium, medium, long, short, very long | 50-99, 50-99, 100-199, 30, 50-149 | 0.4 s |
//! | `bursty_long` | 4 | long | 50-149 | 0.1 s, 3 s after every 4th |
//! | `streaming_focused` | 5 | medium (200-500), streamed | 100-199 | 0.5 s |
//!
//! The prompt lengths are the ones the script's comments promise (its strings are much
//! shorter); long prompts are what makes the EPP choose P/D.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use crate::client::{Client, Outcome, RequestSpec};
use crate::dataset::PromptMaker;

/// The five patterns, in worker order (the sixth worker repeats the first).
pub const PATTERNS: [&str; 6] = [
    "long_isl_short_osl",
    "long_isl_long_osl",
    "mixed_balanced",
    "bursty_long",
    "streaming_focused",
    "long_isl_short_osl",
];

#[derive(Clone, Copy)]
enum Size {
    Short,
    Medium,
    Long,
    VeryLong,
}

impl Size {
    fn tokens(self, rng: &mut SmallRng) -> u32 {
        match self {
            Size::Short => rng.random_range(10..=50),
            Size::Medium => rng.random_range(200..=500),
            Size::Long => rng.random_range(1000..=2000),
            Size::VeryLong => rng.random_range(3000..=5000),
        }
    }
}

/// The `n`-th request (0-based) of a pattern: prompt size, max_tokens, streaming, sleep after.
fn step(pattern: usize, n: u64, rng: &mut SmallRng) -> (Size, u32, bool, Duration) {
    let ms = Duration::from_millis;
    match PATTERNS[pattern % 6] {
        "long_isl_short_osl" => {
            if n % 3 == 2 {
                (Size::VeryLong, 50, false, ms(300))
            } else {
                (Size::Long, 75, false, ms(300))
            }
        }
        "long_isl_long_osl" => (Size::Long, rng.random_range(150..=249), false, ms(500)),
        "mixed_balanced" => {
            let (size, max) = match n % 5 {
                0 | 1 => (Size::Medium, rng.random_range(50..=99)),
                2 => (Size::Long, rng.random_range(100..=199)),
                3 => (Size::Short, 30),
                _ => (Size::VeryLong, rng.random_range(50..=149)),
            };
            (size, max, false, ms(400))
        }
        "bursty_long" => {
            let pause = if n % 4 == 3 { ms(3000) } else { ms(100) };
            (Size::Long, rng.random_range(50..=149), false, pause)
        }
        _ => (Size::Medium, rng.random_range(100..=199), true, ms(500)),
    }
}

/// How the scenario runs.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Workers.
    pub workers: usize,
    /// How long workers keep starting requests.
    pub duration: Duration,
    /// Multiplies every sleep (1 = the demo's pacing).
    pub pace: f64,
    /// Seed.
    pub seed: u64,
}

/// Runs the scenario; every outcome goes to `lines` as it completes (worker number attached).
pub async fn run(
    client: Client,
    maker: PromptMaker,
    s: Scenario,
    lines: mpsc::UnboundedSender<(usize, Outcome)>,
    stop: tokio_util::sync::CancellationToken,
) {
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(s.workers);
    for w in 1..=s.workers {
        let (client, maker, lines, stop) =
            (client.clone(), maker.clone(), lines.clone(), stop.clone());
        let pace = s.pace.max(0.0);
        let (duration, seed) = (s.duration, s.seed);
        tasks.push(tokio::spawn(async move {
            let pattern = (w - 1) % 6;
            let name: Arc<str> = Arc::from(PATTERNS[pattern]);
            let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(w as u64));
            let stagger = Duration::from_millis(200 * (w as u64 - 1)).mul_f64(pace);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(stagger) => {}
            }
            for n in 0u64.. {
                if stop.is_cancelled() || t0.elapsed() >= duration {
                    break;
                }
                let (size, max_tokens, stream, sleep) = step(pattern, n, &mut rng);
                let tokens = size.tokens(&mut rng);
                let (prompt, input_tokens) = maker.make(tokens, &mut rng);
                let clock = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() % 100_000_000)
                    .unwrap_or(0);
                let spec = RequestSpec {
                    id: format!("worker{w}-req{}-{clock:08}", n + 1),
                    pattern: name.clone(),
                    prompt,
                    input_tokens,
                    max_tokens,
                    stream,
                };
                let o = client.send(&spec, t0).await;
                if lines.send((w, o)).is_err() {
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(sleep.mul_f64(pace)) => {}
                }
            }
        }));
    }
    drop(lines);
    for t in tasks {
        let _ = t.await;
    }
}

/// The live line of one request, as the demo script prints it plus TTFT and tokens.
pub fn line(worker: usize, o: &Outcome) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    let n =
        o.id.split('-')
            .nth(1)
            .and_then(|r| r.strip_prefix("req"))
            .unwrap_or("?");
    let ttft = o
        .ttft_ms
        .map_or_else(|| "-".to_owned(), |t| format!("{t:.0}ms"));
    let status = match &o.error {
        None => "✓".to_owned(),
        Some(e) => format!("✗ {e}"),
    };
    format!(
        "[{:02}:{:02}:{:02}] W{worker}-{n} {:<18} | {:>3} | in {:>5} / out {:>4} tok | TTFT {:>6} | {:>7.0}ms | {status}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        o.pattern,
        o.status,
        o.input_tokens,
        o.output_tokens,
        ttft,
        o.e2e_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_the_demo_script() {
        let mut rng = SmallRng::seed_from_u64(1);
        // long_isl_short_osl: every 3rd request is very long with 50 tokens.
        let steps: Vec<_> = (0..6).map(|n| step(0, n, &mut rng)).collect();
        assert_eq!(
            steps.iter().map(|s| s.1).collect::<Vec<_>>(),
            [75, 75, 50, 75, 75, 50]
        );
        // bursty_long: a 3 s pause after every 4th request.
        let pauses: Vec<u64> = (0..8)
            .map(|n| step(3, n, &mut rng).3.as_millis() as u64)
            .collect();
        assert_eq!(pauses, [100, 100, 100, 3000, 100, 100, 100, 3000]);
        // streaming_focused streams; nothing else does.
        assert!(step(4, 0, &mut rng).2);
        assert!((0..4).all(|p| !step(p, 0, &mut rng).2));
        // mixed_balanced: short is 30 tokens out.
        assert_eq!(step(2, 3, &mut rng).1, 30);
    }
}
