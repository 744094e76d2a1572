//! `llmd demo` as a user runs it: the binary, a short run, its summary and exit status.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[test]
fn the_pd_demo_runs_and_passes_its_own_checks() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args([
            "demo",
            "--duration-s",
            "4",
            "--time-scale",
            "0.02",
            "--pace",
            "0.05",
        ])
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
    assert!(stdout.contains("true TTFT (client-side)"), "{stdout}");
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
        .args([
            "demo",
            "--duration-s",
            "2",
            "--time-scale",
            "0.02",
            "--pace",
            "0.05",
            "--pd-threshold",
            "100000000",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no prefill/decode decision"), "{stderr}");
}
