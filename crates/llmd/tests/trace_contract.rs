//! The trace contract (`shared/design.md` §4), checked on every request of a demo run: one
//! trace per request, shaped as the llm-d P/D demo shows it, every child inside its parent's
//! window, numbers exported as numbers, each component under its own `service.name`, and the
//! true-TTFT identity (true TTFT = prefill + coordinator overhead + decode TTFT) per P/D request.
//!
//! The demo runs both stacks in one process (a decode-only pool with the precise prefix scorer,
//! and the P/D pool behind the proxy) and exports every span to a receiver in this test.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;

use llmd_telemetry::names::{attrs, services, spans};
use llmd_telemetry::testing::Received;
use llmd_testkit::peers::tokenizer_hub as hub;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// The services a span may be exported under, by its name (engines: by the leg above them; a
/// decode-only request is served by a pool's engine, `vllm`, or by a P/D pool's decode engine).
fn expected_service(span: &Received, parent: Option<&Received>) -> &'static [&'static str] {
    match span.span.name.as_str() {
        spans::LOADGEN_REQUEST => &[services::LOADGEN],
        spans::GATEWAY_REQUEST => &[services::GATEWAY],
        n if n.starts_with("llm_d.epp.") => &[services::SCHEDULER],
        n if n.starts_with("llm_d.pd_proxy.") => &[services::PD_PROXY],
        spans::LLM_REQUEST => match parent.map(|p| p.span.name.as_str()) {
            Some(spans::PD_PROXY_PREFILL) => &[services::VLLM_PREFILL],
            Some(spans::PD_PROXY_DECODE) => &[services::VLLM_DECODE],
            _ => &[services::VLLM, services::VLLM_DECODE],
        },
        _ => &["?"],
    }
}

/// Attributes that must be integers, and those that must be numbers (int or double).
const INTS: &[&str] = &[
    attrs::GEN_AI_USAGE_PROMPT_TOKENS,
    attrs::GEN_AI_USAGE_COMPLETION_TOKENS,
    attrs::GEN_AI_REQUEST_MAX_TOKENS,
    attrs::EPP_PD_THRESHOLD,
    attrs::EPP_USER_INPUT_BYTES,
    attrs::EPP_PREFIX_TOTAL_BLOCKS,
    "http.response.status_code",
    "llm_d.pd_proxy.cached_tokens",
];
const NUMBERS: &[&str] = &[
    attrs::EPP_CACHE_HIT_RATIO,
    attrs::PD_TRUE_TTFT_MS,
    attrs::PD_PREFILL_DURATION_MS,
    attrs::PD_COORDINATOR_OVERHEAD_MS,
    attrs::PD_DECODE_DURATION_MS,
    attrs::PD_DECODE_TTFT_MS,
    attrs::PD_TOTAL_DURATION_MS,
    attrs::GEN_AI_LATENCY_TTFT,
    attrs::GEN_AI_LATENCY_E2E,
    attrs::GEN_AI_LATENCY_TIME_IN_QUEUE,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_a_demo_run_has_a_trace_that_holds_together() {
    if !hub()
        .join("models--meta-llama--Llama-3.1-8B-Instruct")
        .exists()
    {
        let peers = "Llama-3.1's tokenizer in .cache/hf";
        return llmd_testkit::peers::missing(peers, llmd_testkit::peers::FETCH_TOKENIZERS);
    }
    let (endpoint, received) = llmd_telemetry::testing::start_grpc_receiver().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_llmd"))
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("HF_HUB_CACHE", hub())
        .args([
            "demo",
            "--duration-s",
            "4",
            "--workers",
            "3",
            "--time-scale",
            "0.05",
            "--prefix-time-scale",
            "0.05",
            "--pace",
            "0.05",
            "--otlp-endpoint",
            &endpoint,
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = received.snapshot();
    let mut traces: HashMap<String, Vec<Received>> = HashMap::new();
    for s in all {
        traces.entry(s.trace_id_hex()).or_default().push(s);
    }
    let (mut pd, mut decode_only, mut problems) = (0, 0, Vec::new());
    let mut residuals = Vec::new();
    for (trace, spans_of) in &traces {
        let by_id: HashMap<String, &Received> =
            spans_of.iter().map(|s| (s.span_id_hex(), s)).collect();
        let parent_of = |s: &Received| by_id.get(&s.parent_id_hex()).copied();
        let Some(root) = spans_of
            .iter()
            .find(|s| s.span.name == spans::LOADGEN_REQUEST)
        else {
            continue; // spans of a request still in flight when the run ended
        };
        let mut fail = |why: String| problems.push(format!("trace {trace}: {why}"));
        // One tree under the client's span, nothing dangling.
        for s in spans_of {
            if std::ptr::eq(s, root) {
                if !root.span.parent_span_id.is_empty() {
                    fail("the client span has a parent".into());
                }
                continue;
            }
            let Some(p) = parent_of(s) else {
                fail(format!("{} has no parent in the trace", s.span.name));
                continue;
            };
            // Windows nest.
            let ((s0, s1), (p0, p1)) = (s.window(), p.window());
            if s0 < p0 || s1 > p1 {
                fail(format!(
                    "{} [{s0}, {s1}] lies outside its parent {} [{p0}, {p1}] by {} µs",
                    s.span.name,
                    p.span.name,
                    (p0.saturating_sub(s0)).max(s1.saturating_sub(p1)) / 1000
                ));
            }
            // The service that recorded it.
            let want = expected_service(s, Some(p));
            if !want.contains(&s.service_name.as_str()) {
                fail(format!(
                    "{} exported as service {:?}, want {want:?}",
                    s.span.name, s.service_name
                ));
            }
        }
        if root.service_name != services::LOADGEN {
            fail(format!("client span under service {:?}", root.service_name));
        }
        // Numbers are numbers.
        for s in spans_of {
            for kv in &s.span.attributes {
                let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
                let numeric = matches!(v, Some(Value::IntValue(_)) | Some(Value::DoubleValue(_)));
                if INTS.contains(&kv.key.as_str()) && !matches!(v, Some(Value::IntValue(_))) {
                    fail(format!(
                        "{}.{} is {v:?}, not an integer",
                        s.span.name, kv.key
                    ));
                } else if NUMBERS.contains(&kv.key.as_str()) && !numeric {
                    fail(format!("{}.{} is {v:?}, not a number", s.span.name, kv.key));
                } else if let Some(Value::StringValue(text)) = v
                    && text.parse::<f64>().is_ok()
                {
                    fail(format!("{}.{} is the string {text:?}", s.span.name, kv.key));
                }
            }
        }
        // The shape.
        let child = |p: &Received, name: &str| -> Vec<&Received> {
            spans_of
                .iter()
                .filter(|s| s.parent_id_hex() == p.span_id_hex() && s.span.name == name)
                .collect()
        };
        let gw = child(root, spans::GATEWAY_REQUEST);
        let [gw] = gw.as_slice() else {
            fail(format!(
                "{} gateway.request spans under the client",
                gw.len()
            ));
            continue;
        };
        let epp = child(gw, spans::EPP_REQUEST);
        let Some(pick) = epp
            .first()
            .and_then(|e| child(e, spans::EPP_PROFILE_HANDLER_PICK).first().copied())
        else {
            fail("no EPP request span with a pick span under gateway.request".into());
            continue;
        };
        let decision = pick.attr(attrs::EPP_DECISION).unwrap_or_default();
        if pick.value(attrs::EPP_USER_INPUT_BYTES).is_none() {
            fail("the pick span has no user_input_bytes".into());
        }
        let proxy = child(gw, spans::PD_PROXY_REQUEST);
        match decision.as_str() {
            "prefill-decode" => {
                pd += 1;
                for k in [attrs::EPP_CACHE_HIT_RATIO, attrs::EPP_PD_THRESHOLD] {
                    if pick.value(k).is_none() {
                        fail(format!("the P/D pick span has no {k}"));
                    }
                }
                let [p] = proxy.as_slice() else {
                    fail(format!(
                        "{} pd_proxy.request spans under gateway.request",
                        proxy.len()
                    ));
                    continue;
                };
                for leg in [spans::PD_PROXY_PREFILL, spans::PD_PROXY_DECODE] {
                    let legs = child(p, leg);
                    let engines = legs.first().map(|l| child(l, spans::LLM_REQUEST));
                    if legs.len() != 1 || engines.is_none_or(|e| e.len() != 1) {
                        fail(format!("{leg}: want one leg with one llm_request under it"));
                    }
                }
                if p.attr("outcome").as_deref() == Some("ok") {
                    let n = |k| p.number(k).unwrap_or(f64::NAN);
                    let (t, pre, c, d) = (
                        n(attrs::PD_TRUE_TTFT_MS),
                        n(attrs::PD_PREFILL_DURATION_MS),
                        n(attrs::PD_COORDINATOR_TTFT_MS),
                        n(attrs::PD_DECODE_TTFT_MS),
                    );
                    let residual = t - (pre + c + d);
                    residuals.push(residual.abs());
                    if residual.is_nan() || residual.abs() > (0.02 * t).max(1.0) {
                        fail(format!(
                            "true TTFT {t:.3} ≠ prefill {pre:.3} + overhead to the first token {c:.3} + decode TTFT {d:.3} ms"
                        ));
                    }
                }
            }
            "decode-only" => {
                decode_only += 1;
                if !proxy.is_empty() {
                    // P/D pools pass decode-only requests through the proxy: no P/D span.
                    fail("a decode-only request has a pd_proxy.request span".into());
                }
                if child(gw, spans::LLM_REQUEST).len() != 1 {
                    fail("a decode-only request's engine span is not under gateway.request".into());
                }
            }
            other => fail(format!("pick decision {other:?}")),
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems in {} traces:\n{}",
        problems.len(),
        traces.len(),
        problems[..problems.len().min(40)].join("\n")
    );
    assert!(
        pd > 0 && decode_only > 0,
        "P/D {pd}, decode-only {decode_only}"
    );
    residuals.sort_by(f64::total_cmp);
    eprintln!(
        "{} traces: {pd} P/D, {decode_only} decode-only; identity residual p50 {:.3} ms, max {:.3} ms",
        traces.len(),
        residuals[residuals.len() / 2],
        residuals[residuals.len() - 1]
    );
}
