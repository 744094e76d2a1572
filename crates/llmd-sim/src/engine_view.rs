//! One engine's metrics out of a registry shared by several simulators in one process.
//!
//! The Prometheus recorder is process-wide: simulators sharing a process (`llmd demo`, the
//! routing benchmarks) write into one registry, their `vllm:*` series kept apart by the
//! `engine` label (`--data-parallel-rank`). An EPP sums a pod's series over label sets (a pod's
//! data-parallel engines), so each simulator needs a `/metrics` of its own engine only: this
//! view serves the registry's `vllm:*` lines carrying `engine="<rank>"` (and their HELP/TYPE
//! lines), as a dedicated vLLM process would.
//!
//! The registry is rendered at most once per 100 ms and the text shared by every view: an EPP
//! scrapes all its pods at once, and rendering the whole registry (every component's series,
//! hundreds of kB) once per view made scrapes slow enough, in a debug build on a busy machine,
//! to miss the EPP's scrape timeout and leave pods unroutable.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llmd_telemetry::MetricsHandle;

/// The registry's exposition, rendered at most once per 100 ms (one cache per process: the
/// process has one recorder).
fn rendered(metrics: &MetricsHandle) -> Arc<String> {
    static LAST: Mutex<Option<(Instant, Arc<String>)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((at, text)) = last.as_ref()
        && at.elapsed() < Duration::from_millis(100)
    {
        return text.clone();
    }
    let text = Arc::new(metrics.render());
    *last = Some((Instant::now(), text.clone()));
    text
}

/// Engine `rank`'s `vllm:*` lines (and their HELP/TYPE lines) of `text`.
pub fn engine_lines(text: &str, rank: u32) -> String {
    let label = format!("engine=\"{rank}\"");
    text.lines()
        .filter(|l| {
            if let Some(meta) = l.strip_prefix("# ") {
                meta.split_whitespace()
                    .nth(1)
                    .is_some_and(|n| n.starts_with("vllm:"))
            } else {
                l.starts_with("vllm:") && l.contains(&label)
            }
        })
        .flat_map(|l| [l, "\n"])
        .collect()
}

/// A router serving engine `rank`'s view at `/metrics`.
pub fn router(metrics: MetricsHandle, rank: u32) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = rendered(&metrics);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    engine_lines(&text, rank),
                )
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_engines_vllm_lines() {
        let text = "# HELP vllm:num_requests_waiting W\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 1\nvllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} 5\n# TYPE other gauge\nother{engine=\"1\"} 2\n";
        let one = engine_lines(text, 1);
        assert_eq!(
            one,
            "# HELP vllm:num_requests_waiting W\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} 5\n"
        );
    }
}
