//! One P/D request's context: its ids, its span, and the time points every figure the proxy
//! reports is computed from (`shared/design.md` §4):
//!
//! ```text
//! started ── prefill leg ──┐        decode_started ── first token ──── decode_ended ── finished
//!           (prefill)      └ proxy ┘               (decode TTFT)                     (proxy)
//! true TTFT        = first token − started        = prefill + overhead so far + decode TTFT
//! decode duration  = decode_ended − decode_started   (the decode engine's whole stream)
//! total            = finished − started               (the last byte handed to the client)
//! overhead         = total − prefill − decode duration (the proxy's own time)
//! ```
//!
//! The first token is the first event of the decode stream that carries generated output
//! (text, content, reasoning or tool-call deltas, or a finish reason), the way a streaming
//! client sees it, whether or not the client itself asked for a stream.

use std::time::{Duration, Instant};

use llmd_telemetry::names::{attrs, pd_proxy as m};

/// The per-request context.
#[derive(Debug)]
pub struct Exchange {
    /// KV connector label.
    pub connector: &'static str,
    /// `x-request-id` sent on both legs.
    pub request_id: String,
    /// When the proxy received the request.
    pub started: Instant,
    /// `llm_d.pd_proxy.request`; ends when this context is dropped (the response's end).
    pub span: tracing::Span,
    /// The whole prefill leg, retries and backoff included.
    pub prefill: Duration,
    /// When the decode request was sent.
    pub decode_started: Option<Instant>,
    /// When the decode stream's first token arrived.
    pub first_token: Option<Instant>,
    /// When the decode engine's answer ended.
    pub decode_ended: Option<Instant>,
    finished: bool,
}

/// Milliseconds, as the histograms and span attributes hold them.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Exchange {
    /// A context for a request received at `started`.
    pub fn new(
        connector: &'static str,
        request_id: String,
        started: Instant,
        span: tracing::Span,
    ) -> Self {
        Self {
            connector,
            request_id,
            started,
            span,
            prefill: Duration::ZERO,
            decode_started: None,
            first_token: None,
            decode_ended: None,
            finished: false,
        }
    }

    /// The decode stream's first token arrived at `at`: true TTFT is known.
    pub fn on_first_token(&mut self, at: Instant) {
        if self.first_token.is_some() {
            return;
        }
        self.first_token = Some(at);
        let ttft = ms(at - self.started);
        metrics::histogram!(m::TRUE_TTFT.name, "connector" => self.connector).record(ttft);
        self.span.record(attrs::PD_TRUE_TTFT_MS, ttft);
    }

    /// The decode engine's answer ended at `at`.
    pub fn on_decode_end(&mut self, at: Instant) {
        self.decode_ended.get_or_insert(at);
    }

    /// Time to the first token as the client sees it.
    pub fn true_ttft(&self) -> Option<Duration> {
        self.first_token.map(|f| f - self.started)
    }

    /// Decode leg start to its first token.
    pub fn decode_ttft(&self) -> Option<Duration> {
        Some(self.first_token? - self.decode_started?)
    }

    /// Between the end of the prefill leg and the first token, the proxy's own time so far.
    fn overhead_to_first_token(&self) -> Option<Duration> {
        Some(
            self.true_ttft()?
                .saturating_sub(self.prefill + self.decode_ttft()?),
        )
    }

    /// `server-timing` of what is known now: prefill, the proxy's time up to the first token,
    /// decode TTFT and true TTFT (the identity true_ttft = prefill + coordinator + decode_ttft
    /// holds exactly), and the decode leg when it has ended.
    pub fn server_timing(&self) -> String {
        let mut parts = vec![format!("prefill;dur={:.3}", ms(self.prefill))];
        if let (Some(c), Some(d), Some(t)) = (
            self.overhead_to_first_token(),
            self.decode_ttft(),
            self.true_ttft(),
        ) {
            parts.push(format!("coordinator;dur={:.3}", ms(c)));
            parts.push(format!("decode_ttft;dur={:.3}", ms(d)));
            parts.push(format!("true_ttft;dur={:.3}", ms(t)));
        }
        if let (Some(s), Some(e)) = (self.decode_started, self.decode_ended) {
            parts.push(format!("decode;dur={:.3}", ms(e - s)));
        }
        parts.join(", ")
    }

    /// The final figures at `now` (the end of the response): prefill, decode, total, overhead.
    fn totals(&self, now: Instant) -> (Duration, Duration, Duration) {
        let total = now - self.started;
        let decode = match self.decode_started {
            Some(s) => self
                .decode_ended
                .unwrap_or(now)
                .saturating_duration_since(s),
            None => Duration::ZERO,
        };
        let overhead = total.saturating_sub(self.prefill + decode);
        (decode, total, overhead)
    }

    /// The `server-timing` summary of a finished request (`: llmd-timing` SSE comment).
    pub fn summary(&self) -> String {
        let (decode, total, overhead) = self.totals(Instant::now());
        format!(
            "prefill;dur={:.3}, decode;dur={:.3}, true_ttft;dur={:.3}, decode_ttft;dur={:.3}, coordinator;dur={:.3}, total;dur={:.3}",
            ms(self.prefill),
            ms(decode),
            self.true_ttft().map_or(0.0, ms),
            self.decode_ttft().map_or(0.0, ms),
            ms(overhead),
            ms(total)
        )
    }

    /// Records the request's figures and outcome, once.
    pub fn finish(&mut self, outcome: &'static str) {
        if self.finished {
            return;
        }
        self.finished = true;
        let (decode, total, overhead) = self.totals(Instant::now());
        let c = self.connector;
        metrics::histogram!(m::PREFILL_DURATION.name, "connector" => c).record(ms(self.prefill));
        metrics::histogram!(m::DECODE_DURATION.name, "connector" => c).record(ms(decode));
        metrics::histogram!(m::TOTAL_DURATION.name, "connector" => c).record(ms(total));
        metrics::histogram!(m::COORDINATOR_OVERHEAD.name, "connector" => c).record(ms(overhead));
        metrics::counter!(m::REQUESTS_TOTAL.name, "connector" => c, "outcome" => outcome)
            .increment(1);
        let span = &self.span;
        span.record(attrs::PD_PREFILL_DURATION_MS, ms(self.prefill));
        span.record(attrs::PD_DECODE_DURATION_MS, ms(decode));
        span.record(attrs::PD_TOTAL_DURATION_MS, ms(total));
        span.record(attrs::PD_COORDINATOR_OVERHEAD_MS, ms(overhead));
        if let Some(d) = self.decode_ttft() {
            span.record(attrs::PD_DECODE_TTFT_MS, ms(d));
        }
        if let Some(c) = self.overhead_to_first_token() {
            span.record(attrs::PD_COORDINATOR_TTFT_MS, ms(c));
        }
        span.record("outcome", outcome);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // The client went away before the answer was complete.
        self.finish("cancelled");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breakdown_adds_up() {
        let t0 = Instant::now();
        let mut x = Exchange::new("nixlv2", "id".into(), t0, tracing::Span::none());
        x.prefill = Duration::from_millis(40);
        x.decode_started = Some(t0 + Duration::from_millis(41));
        x.on_first_token(t0 + Duration::from_millis(50));
        assert_eq!(x.true_ttft(), Some(Duration::from_millis(50)));
        assert_eq!(x.decode_ttft(), Some(Duration::from_millis(9)));
        assert_eq!(x.overhead_to_first_token(), Some(Duration::from_millis(1)));
        assert_eq!(
            x.server_timing(),
            "prefill;dur=40.000, coordinator;dur=1.000, decode_ttft;dur=9.000, true_ttft;dur=50.000"
        );
        x.on_decode_end(t0 + Duration::from_millis(90));
        let (decode, total, overhead) = x.totals(t0 + Duration::from_millis(92));
        assert_eq!(decode, Duration::from_millis(49));
        assert_eq!(total, Duration::from_millis(92));
        assert_eq!(overhead, Duration::from_millis(3));
        x.finish("ok");
    }
}
