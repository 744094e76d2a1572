//! One request's metrics, as GIE and llm-d record them, under their names: GIE's
//! `inference_objective_*` (labels `model_name`, `target_model_name`; `priority` on the request
//! counter), GIE's older `inference_model_request_{total,error_total,duration_seconds}` (llm-d's
//! alerting rules query them), and llm-d's `llm_d_epp_request_*` (adding `fairness_id` and
//! `priority`).
//!
//! - routed: the request counters, the request size, the running gauges, the EPP's own
//!   processing time;
//! - refused by the EPP: the error counters, with GIE's code (`ResourceExhausted`, ...);
//! - answered by the model server with a status other than 200: the error counters with that
//!   status, as GIE does;
//! - response chunks: TTFT (first body byte; the whole duration for a non-streamed answer, as
//!   llm-d defines it) and, streamed, the gap between chunks (ITL);
//! - the response's end: duration, sizes, token counts from `usage`, NTPOT and streamed TPOT;
//!   the running gauges go down (also when the stream is dropped).

use std::time::Instant;

use llmd_telemetry::names::{MetricDef, epp};

use super::Usage;
use crate::labels::{fairness_label, model_label};
use crate::objectives::RequestClass;
use crate::scheduling::PickError;

/// A request's label values.
#[derive(Debug, Clone)]
struct Labels {
    model: String,
    fairness: String,
    priority: String,
}

impl Labels {
    fn new(model: &str, class: &RequestClass) -> Self {
        Self {
            model: model_label(model),
            fairness: fairness_label(&class.fairness_id),
            priority: class.priority.to_string(),
        }
    }

    /// GIE's labels.
    fn gie(&self) -> [(&'static str, String); 2] {
        [
            ("model_name", self.model.clone()),
            ("target_model_name", self.model.clone()),
        ]
    }

    /// llm-d's labels.
    fn llmd(&self) -> [(&'static str, String); 4] {
        [
            ("model_name", self.model.clone()),
            ("target_model_name", self.model.clone()),
            ("fairness_id", self.fairness.clone()),
            ("priority", self.priority.clone()),
        ]
    }

    fn histograms(&self, gie: Option<&MetricDef>, llmd: &MetricDef, value: f64) {
        if let Some(g) = gie {
            metrics::histogram!(g.name, &self.gie()).record(value);
        }
        metrics::histogram!(llmd.name, &self.llmd()).record(value);
    }
}

/// The metrics state of one ext_proc stream.
#[derive(Debug)]
pub(super) struct RequestMetrics {
    received: Instant,
    labels: Option<Labels>,
    /// The running gauges were raised (lowered once, at the end or on drop).
    running: bool,
    /// Response phase.
    streaming: bool,
    first_byte: Option<Instant>,
    last_chunk: Option<Instant>,
    response_bytes: usize,
    /// The model server answered with this non-200 status.
    server_error: Option<String>,
    finished: bool,
}

impl RequestMetrics {
    pub(super) fn new() -> Self {
        Self {
            received: Instant::now(),
            labels: None,
            running: false,
            streaming: false,
            first_byte: None,
            last_chunk: None,
            response_bytes: 0,
            server_error: None,
            finished: false,
        }
    }

    /// The request was routed.
    pub(super) fn routed(&mut self, model: &str, class: &RequestClass, request_bytes: usize) {
        let l = Labels::new(model, class);
        metrics::counter!(epp::REQUEST_TOTAL.name, "model_name" => l.model.clone(), "target_model_name" => l.model.clone(), "priority" => l.priority.clone()).increment(1);
        metrics::counter!(epp::MODEL_REQUEST_TOTAL.name, &l.gie()).increment(1);
        metrics::counter!(epp::LLMD_REQUEST_TOTAL.name, &l.llmd()).increment(1);
        l.histograms(
            Some(&epp::REQUEST_SIZES),
            &epp::LLMD_REQUEST_SIZE,
            request_bytes as f64,
        );
        metrics::gauge!(epp::RUNNING_REQUESTS.name, "model_name" => l.model.clone()).increment(1.0);
        metrics::gauge!(epp::LLMD_REQUEST_RUNNING.name, &l.llmd()).increment(1.0);
        metrics::histogram!(epp::LLMD_REQUEST_PROCESSING_DURATION.name)
            .record(self.received.elapsed().as_secs_f64());
        self.running = true;
        self.labels = Some(l);
    }

    /// The EPP refused the request.
    pub(super) fn refused(&mut self, model: &str, class: &RequestClass, error: &PickError) {
        error_counters(&Labels::new(model, class), error.gie_code());
        self.finished = true;
    }

    /// The response's headers: its status and whether it streams.
    pub(super) fn response_headers(&mut self, status: Option<&str>, content_type: Option<&str>) {
        self.streaming = content_type.is_some_and(|c| c.contains("text/event-stream"));
        if let Some(s) = status
            && s != "200"
        {
            self.server_error = Some(s.to_owned());
        }
    }

    /// A response body chunk.
    pub(super) fn chunk(&mut self, len: usize) {
        let now = Instant::now();
        if len > 0 {
            if self.first_byte.is_none() {
                self.first_byte = Some(now);
            }
            if self.streaming
                && let (Some(prev), Some(l)) = (self.last_chunk, &self.labels)
            {
                metrics::histogram!(epp::LLMD_STREAMING_ITL.name, &l.llmd())
                    .record(now.duration_since(prev).as_secs_f64());
            }
            self.last_chunk = Some(now);
        }
        self.response_bytes += len;
    }

    /// The response ended; `usage` is what its body reported.
    pub(super) fn finished(&mut self, usage: Option<Usage>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let Some(l) = self.labels.clone() else {
            return;
        };
        let e2e = self.received.elapsed().as_secs_f64();
        l.histograms(
            Some(&epp::REQUEST_DURATION),
            &epp::LLMD_REQUEST_DURATION,
            e2e,
        );
        metrics::histogram!(epp::MODEL_REQUEST_DURATION.name, &l.gie()).record(e2e);
        l.histograms(
            Some(&epp::RESPONSE_SIZES),
            &epp::LLMD_RESPONSE_SIZE,
            self.response_bytes as f64,
        );
        let ttft = match (self.streaming, self.first_byte) {
            (true, Some(t)) => t.duration_since(self.received).as_secs_f64(),
            _ => e2e,
        };
        let mut ttft_labels = l.llmd().to_vec();
        ttft_labels.push(("streaming", self.streaming.to_string()));
        metrics::histogram!(epp::LLMD_TTFT.name, ttft_labels.as_slice()).record(ttft);
        if let Some(u) = usage {
            if u.prompt > 0 {
                l.histograms(
                    Some(&epp::INPUT_TOKENS),
                    &epp::LLMD_INPUT_TOKENS,
                    u.prompt as f64,
                );
            }
            if u.completion > 0 {
                l.histograms(
                    Some(&epp::OUTPUT_TOKENS),
                    &epp::LLMD_OUTPUT_TOKENS,
                    u.completion as f64,
                );
                l.histograms(
                    Some(&epp::NTPOT),
                    &epp::LLMD_NTPOT,
                    e2e / u.completion as f64,
                );
                if self.streaming && u.completion > 1 {
                    metrics::histogram!(epp::LLMD_STREAMING_TPOT.name, &l.llmd())
                        .record((e2e - ttft).max(0.0) / (u.completion - 1) as f64);
                }
            }
            if let Some(c) = u.cached {
                l.histograms(
                    Some(&epp::PROMPT_CACHED_TOKENS),
                    &epp::LLMD_CACHED_TOKENS,
                    c as f64,
                );
            }
        }
        if let Some(status) = self.server_error.take() {
            error_counters(&l, &status);
        }
        self.lower_running();
    }

    fn lower_running(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        if let Some(l) = &self.labels {
            metrics::gauge!(epp::RUNNING_REQUESTS.name, "model_name" => l.model.clone())
                .decrement(1.0);
            metrics::gauge!(epp::LLMD_REQUEST_RUNNING.name, &l.llmd()).decrement(1.0);
        }
    }
}

impl Drop for RequestMetrics {
    fn drop(&mut self) {
        self.lower_running();
    }
}

fn error_counters(l: &Labels, code: &str) {
    metrics::counter!(
        epp::REQUEST_ERROR_TOTAL.name,
        "model_name" => l.model.clone(),
        "target_model_name" => l.model.clone(),
        "error_code" => code.to_owned()
    )
    .increment(1);
    metrics::counter!(
        epp::MODEL_REQUEST_ERROR_TOTAL.name,
        "model_name" => l.model.clone(),
        "target_model_name" => l.model.clone(),
        "error_code" => code.to_owned()
    )
    .increment(1);
    let mut labels = l.llmd().to_vec();
    labels.push(("error_code", code.to_owned()));
    metrics::counter!(epp::LLMD_REQUEST_ERROR_TOTAL.name, labels.as_slice()).increment(1);
}
