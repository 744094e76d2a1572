//! `docs/metrics.md` lists every metric and span of the catalog, as rendered here. When the
//! catalog changes, regenerate it with
//! `LLMD_BLESS=1 cargo test -p llmd-telemetry --test docs_in_sync`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fmt::Write;
use std::path::PathBuf;

use llmd_telemetry::names::{self, MetricDef, MetricKind};

fn table(out: &mut String, title: &str, about: &str, defs: &[&MetricDef]) {
    writeln!(out, "## {title}\n\n{about}\n").unwrap();
    writeln!(out, "| name | type | labels | buckets | help |").unwrap();
    writeln!(out, "|---|---|---|---|---|").unwrap();
    for d in defs {
        let kind = match d.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        let buckets = d
            .buckets
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            out,
            "| `{}` | {kind} | {} | {buckets} | {} |",
            d.name,
            d.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", "),
            d.help.replace('|', "\\|")
        )
        .unwrap();
    }
    out.push('\n');
}

fn render() -> String {
    let mut out = String::from(
        "# Telemetry contract: metric and span names\n\n\
         Generated from `crates/llmd-telemetry/src/names.rs` by `tests/docs_in_sync.rs`; do not \
         edit by hand. These names are wire-visible (dashboards, alerts and other llm-d \
         components use them): this page is the contract.\n\n",
    );
    table(
        &mut out,
        "EPP",
        "Exposed by `llmd-epp` on :9090.",
        names::epp::ALL,
    );
    table(
        &mut out,
        "KV-cache index and events",
        "Exposed by `llmd-epp` (from `llmd-kv-index`).",
        names::kv_cache::ALL,
    );
    table(
        &mut out,
        "P/D proxy",
        "Exposed by `llmd-pd-proxy` on :9090. Durations in milliseconds.",
        names::pd_proxy::ALL,
    );
    table(
        &mut out,
        "Gateway",
        "Exposed by `llmd-gateway` on `--metrics-port` (llmd-rs's own names).",
        names::gateway::ALL,
    );
    table(
        &mut out,
        "Simulator (vLLM names)",
        "Exposed by `llmd-sim` on its API port, as vLLM does.",
        names::vllm::ALL,
    );
    out.push_str("## Spans\n\n| constant | span name |\n|---|---|\n");
    for (c, n) in [
        ("LOADGEN_REQUEST", names::spans::LOADGEN_REQUEST),
        ("GATEWAY_REQUEST", names::spans::GATEWAY_REQUEST),
        (
            "EPP_SCORER_PREFIX_CACHE",
            names::spans::EPP_SCORER_PREFIX_CACHE,
        ),
        (
            "EPP_PROFILE_HANDLER_PICK",
            names::spans::EPP_PROFILE_HANDLER_PICK,
        ),
        ("PD_PROXY_REQUEST", names::spans::PD_PROXY_REQUEST),
        ("PD_PROXY_PREFILL", names::spans::PD_PROXY_PREFILL),
        ("PD_PROXY_DECODE", names::spans::PD_PROXY_DECODE),
        ("LLM_REQUEST", names::spans::LLM_REQUEST),
    ] {
        writeln!(out, "| `spans::{c}` | `{n}` |").unwrap();
    }
    out
}

#[test]
fn docs_metrics_md_matches_the_catalog() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md");
    let want = render();
    if std::env::var_os("LLMD_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/metrics.md is out of date: run LLMD_BLESS=1 cargo test -p llmd-telemetry --test docs_in_sync"
    );
}
