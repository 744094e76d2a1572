//! W3C trace-context (`traceparent`, `tracestate`) and baggage propagation.
//!
//! Two carriers: an `http::HeaderMap` (axum/hyper services) and a plain list of
//! `(name, value)` pairs (the EPP receives headers that way from Envoy's ext_proc). Header names
//! are matched case-insensitively in both.
//!
//! The propagator is fixed (TraceContext + Baggage) and needs no global state, so propagation
//! works the same whether or not [`crate::init`] ran and whether or not tracing is exporting.
//! Injection writes nothing when the context carries no valid span, so a proxy with tracing off
//! passes the client's own `traceparent` through untouched instead of dropping it.

use std::sync::LazyLock;

use http::HeaderMap;
pub use opentelemetry::Context;
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";
/// `tracestate` header name.
pub const TRACESTATE: &str = "tracestate";
/// `baggage` header name.
pub const BAGGAGE: &str = "baggage";

static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(new_propagator);

/// A new instance of the propagator this crate uses (W3C TraceContext + Baggage).
pub fn new_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// Reads the remote trace context and baggage from HTTP headers. Missing or malformed headers
/// give an empty context (a new trace starts), never an error.
pub fn extract_from_headers(headers: &HeaderMap) -> Context {
    PROPAGATOR.extract(&opentelemetry_http::HeaderExtractor(headers))
}

/// Writes `cx`'s trace context and baggage into HTTP headers, replacing earlier values.
pub fn inject_into_headers(cx: &Context, headers: &mut HeaderMap) {
    PROPAGATOR.inject_context(cx, &mut opentelemetry_http::HeaderInjector(headers));
}

/// Reads the remote trace context from `(name, value)` pairs, e.g. Envoy's ext_proc headers.
pub fn extract_from_pairs<'a, I>(pairs: I) -> Context
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let pairs: Vec<(&str, &str)> = pairs
        .into_iter()
        .filter(|(k, _)| is_propagation_header(k))
        .collect();
    PROPAGATOR.extract(&PairsExtractor(&pairs))
}

/// Writes `cx`'s trace context and baggage into `(name, value)` pairs, replacing any pair with
/// the same (case-insensitive) name.
pub fn inject_into_pairs(cx: &Context, pairs: &mut Vec<(String, String)>) {
    PROPAGATOR.inject_context(cx, &mut PairsInjector(pairs));
}

/// True for the header names this module reads and writes.
pub fn is_propagation_header(name: &str) -> bool {
    [TRACEPARENT, TRACESTATE, BAGGAGE]
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// Makes `cx` (typically from an `extract_*` call) the parent of a `tracing` span. A no-op when
/// tracing is off or `cx` has no valid span.
pub fn set_parent(span: &tracing::Span, cx: Context) {
    if cx.span().span_context().is_valid() {
        // Fails only if the span was already started with another parent; keep the first.
        let _ = span.set_parent(cx);
    }
}

/// True when `cx` carries a valid span (a remote parent to continue).
pub fn has_span(cx: &Context) -> bool {
    cx.span().span_context().is_valid()
}

/// The OpenTelemetry context of a `tracing` span (empty when tracing is off).
pub fn span_context(span: &tracing::Span) -> Context {
    span.context()
}

/// Injects the context of `span` into outgoing HTTP headers. With tracing off the span has no
/// context and the headers are left as they are.
pub fn inject_span_into_headers(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        inject_into_headers(&cx, headers);
    }
}

/// Injects the context of `span` into outgoing `(name, value)` pairs (see
/// [`inject_span_into_headers`]).
pub fn inject_span_into_pairs(span: &tracing::Span, pairs: &mut Vec<(String, String)>) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        inject_into_pairs(&cx, pairs);
    }
}

/// The W3C trace id of a context as 32 lowercase hex digits, if it has a valid span.
pub fn trace_id_hex(cx: &Context) -> Option<String> {
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

struct PairsExtractor<'a>(&'a [(&'a str, &'a str)]);

impl Extractor for PairsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

struct PairsInjector<'a>(&'a mut Vec<(String, String)>);

impl Injector for PairsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        self.0.push((key.to_owned(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn remote_cx() -> Context {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "v1")]).unwrap(),
        );
        Context::new().with_remote_span_context(sc)
    }

    #[test]
    fn headers_round_trip() {
        let mut headers = HeaderMap::new();
        inject_into_headers(&remote_cx(), &mut headers);
        assert_eq!(headers.get(TRACEPARENT).unwrap(), TP);
        assert_eq!(headers.get(TRACESTATE).unwrap(), "vendor=v1");
        let back = extract_from_headers(&headers);
        assert_eq!(
            trace_id_hex(&back).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(back.span().span_context().is_remote());
        assert!(back.span().span_context().is_sampled());
    }

    #[test]
    fn pairs_are_case_insensitive_and_replaced() {
        let pairs = [("Content-Type", "application/json"), ("TraceParent", TP)];
        let cx = extract_from_pairs(pairs.iter().map(|(k, v)| (*k, *v)));
        assert_eq!(
            trace_id_hex(&cx).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );

        let mut out = vec![
            ("TRACEPARENT".to_owned(), "00-stale".to_owned()),
            ("x-request-id".to_owned(), "abc".to_owned()),
        ];
        inject_into_pairs(&remote_cx(), &mut out);
        assert_eq!(
            out.iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(TRACEPARENT))
                .count(),
            1
        );
        assert!(out.contains(&(TRACEPARENT.to_owned(), TP.to_owned())));
        assert!(out.contains(&("x-request-id".to_owned(), "abc".to_owned())));
    }

    #[test]
    fn garbage_gives_an_empty_context() {
        for bad in [
            "",
            "00-xyz",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            let cx = extract_from_pairs([(TRACEPARENT, bad)]);
            assert_eq!(trace_id_hex(&cx), None, "{bad:?}");
        }
    }

    #[test]
    fn baggage_travels_too() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, TP.parse().unwrap());
        headers.insert(BAGGAGE, "tenant=acme".parse().unwrap());
        let cx = extract_from_headers(&headers);
        let mut out = Vec::new();
        inject_into_pairs(&cx, &mut out);
        assert!(
            out.contains(&(BAGGAGE.to_owned(), "tenant=acme".to_owned())),
            "{out:?}"
        );
    }

    #[test]
    fn a_span_without_tracing_injects_nothing() {
        let span = tracing::info_span!("no subscriber");
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, TP.parse().unwrap());
        inject_span_into_headers(&span, &mut headers);
        assert_eq!(
            headers.get(TRACEPARENT).unwrap(),
            TP,
            "client's traceparent kept"
        );
    }
}
