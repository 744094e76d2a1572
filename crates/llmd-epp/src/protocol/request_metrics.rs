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

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use llmd_telemetry::HotHistogram;
use llmd_telemetry::names::{MetricDef, epp};
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata};
use parking_lot::RwLock;

use super::Usage;
use crate::labels::{fairness_label, model_label};
use crate::objectives::RequestClass;
use crate::scheduling::PickError;

/// A request's label values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
}

/// The series one label set records into, registered once and reused by every request with
/// those labels: recording is then an atomic update on a handle, instead of a registry lookup
/// (hashing and comparing the key under a lock) for each of the ~20 series a request touches.
/// Handles are kept only once the process's recorder is installed
/// ([`llmd_telemetry::prometheus::installed`]); before that they are no-ops, taken per request.
#[derive(Debug)]
struct Series {
    request_total: Counter,
    model_request_total: Counter,
    llmd_request_total: Counter,
    request_sizes: Histogram,
    llmd_request_size: Histogram,
    running: Gauge,
    llmd_running: Gauge,
    duration: Histogram,
    llmd_duration: Histogram,
    model_duration: Histogram,
    response_sizes: Histogram,
    llmd_response_size: Histogram,
    /// TTFT, `streaming` false and true.
    ttft: [Histogram; 2],
    input_tokens: Histogram,
    llmd_input_tokens: Histogram,
    output_tokens: Histogram,
    llmd_output_tokens: Histogram,
    ntpot: Histogram,
    llmd_ntpot: Histogram,
    llmd_streaming_tpot: Histogram,
    llmd_itl: Histogram,
    cached: Histogram,
    llmd_cached: Histogram,
}

/// Label sets whose series are kept; past it series are registered per request (still right,
/// slower).
const MAX_CACHED_LABEL_SETS: usize = 4096;

static SERIES: LazyLock<RwLock<HashMap<Labels, Arc<Series>>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The EPP's own processing time, label-less.
static PROCESSING: HotHistogram = HotHistogram::new(&epp::LLMD_REQUEST_PROCESSING_DURATION);

impl Series {
    fn of(l: &Labels) -> Arc<Series> {
        if !llmd_telemetry::prometheus::installed() {
            return Arc::new(Series::new(l));
        }
        if let Some(k) = SERIES.read().get(l) {
            return k.clone();
        }
        let series = Arc::new(Series::new(l));
        let mut cache = SERIES.write();
        if cache.len() < MAX_CACHED_LABEL_SETS {
            cache.entry(l.clone()).or_insert_with(|| series.clone());
        }
        series
    }

    fn new(l: &Labels) -> Series {
        let gie = || -> Vec<Label> { l.gie().into_iter().map(|(k, v)| Label::new(k, v)).collect() };
        let llmd = || -> Vec<Label> {
            l.llmd()
                .into_iter()
                .map(|(k, v)| Label::new(k, v))
                .collect()
        };
        let key = |def: &MetricDef, labels: Vec<Label>| Key::from_parts(def.name, labels);
        let counter = |k: Key| metrics::with_recorder(|r| r.register_counter(&k, &METADATA));
        let gauge = |k: Key| metrics::with_recorder(|r| r.register_gauge(&k, &METADATA));
        let histogram = |k: Key| metrics::with_recorder(|r| r.register_histogram(&k, &METADATA));
        let mut total = gie();
        total.push(Label::new("priority", l.priority.clone()));
        let ttft = |streaming: bool| {
            let mut labels = llmd();
            labels.push(Label::new("streaming", streaming.to_string()));
            histogram(key(&epp::LLMD_TTFT, labels))
        };
        Series {
            request_total: counter(key(&epp::REQUEST_TOTAL, total)),
            model_request_total: counter(key(&epp::MODEL_REQUEST_TOTAL, gie())),
            llmd_request_total: counter(key(&epp::LLMD_REQUEST_TOTAL, llmd())),
            request_sizes: histogram(key(&epp::REQUEST_SIZES, gie())),
            llmd_request_size: histogram(key(&epp::LLMD_REQUEST_SIZE, llmd())),
            running: gauge(key(
                &epp::RUNNING_REQUESTS,
                vec![Label::new("model_name", l.model.clone())],
            )),
            llmd_running: gauge(key(&epp::LLMD_REQUEST_RUNNING, llmd())),
            duration: histogram(key(&epp::REQUEST_DURATION, gie())),
            llmd_duration: histogram(key(&epp::LLMD_REQUEST_DURATION, llmd())),
            model_duration: histogram(key(&epp::MODEL_REQUEST_DURATION, gie())),
            response_sizes: histogram(key(&epp::RESPONSE_SIZES, gie())),
            llmd_response_size: histogram(key(&epp::LLMD_RESPONSE_SIZE, llmd())),
            ttft: [ttft(false), ttft(true)],
            input_tokens: histogram(key(&epp::INPUT_TOKENS, gie())),
            llmd_input_tokens: histogram(key(&epp::LLMD_INPUT_TOKENS, llmd())),
            output_tokens: histogram(key(&epp::OUTPUT_TOKENS, gie())),
            llmd_output_tokens: histogram(key(&epp::LLMD_OUTPUT_TOKENS, llmd())),
            ntpot: histogram(key(&epp::NTPOT, gie())),
            llmd_ntpot: histogram(key(&epp::LLMD_NTPOT, llmd())),
            llmd_streaming_tpot: histogram(key(&epp::LLMD_STREAMING_TPOT, llmd())),
            llmd_itl: histogram(key(&epp::LLMD_STREAMING_ITL, llmd())),
            cached: histogram(key(&epp::PROMPT_CACHED_TOKENS, gie())),
            llmd_cached: histogram(key(&epp::LLMD_CACHED_TOKENS, llmd())),
        }
    }
}

/// The metrics state of one ext_proc stream.
#[derive(Debug)]
pub(super) struct RequestMetrics {
    received: Instant,
    labels: Option<Labels>,
    series: Option<Arc<Series>>,
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
            series: None,
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
        let k = Series::of(&l);
        k.request_total.increment(1);
        k.model_request_total.increment(1);
        k.llmd_request_total.increment(1);
        k.request_sizes.record(request_bytes as f64);
        k.llmd_request_size.record(request_bytes as f64);
        k.running.increment(1.0);
        k.llmd_running.increment(1.0);
        PROCESSING.record(self.received.elapsed().as_secs_f64());
        self.running = true;
        self.labels = Some(l);
        self.series = Some(k);
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
                && let (Some(prev), Some(k)) = (self.last_chunk, &self.series)
            {
                k.llmd_itl.record(now.duration_since(prev).as_secs_f64());
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
        let (Some(l), Some(k)) = (&self.labels, &self.series) else {
            return;
        };
        let e2e = self.received.elapsed().as_secs_f64();
        k.duration.record(e2e);
        k.llmd_duration.record(e2e);
        k.model_duration.record(e2e);
        k.response_sizes.record(self.response_bytes as f64);
        k.llmd_response_size.record(self.response_bytes as f64);
        let ttft = match (self.streaming, self.first_byte) {
            (true, Some(t)) => t.duration_since(self.received).as_secs_f64(),
            _ => e2e,
        };
        k.ttft[usize::from(self.streaming)].record(ttft);
        if let Some(u) = usage {
            if u.prompt > 0 {
                k.input_tokens.record(u.prompt as f64);
                k.llmd_input_tokens.record(u.prompt as f64);
            }
            if u.completion > 0 {
                k.output_tokens.record(u.completion as f64);
                k.llmd_output_tokens.record(u.completion as f64);
                let ntpot = e2e / u.completion as f64;
                k.ntpot.record(ntpot);
                k.llmd_ntpot.record(ntpot);
                if self.streaming && u.completion > 1 {
                    k.llmd_streaming_tpot
                        .record((e2e - ttft).max(0.0) / (u.completion - 1) as f64);
                }
            }
            if let Some(c) = u.cached {
                k.cached.record(c as f64);
                k.llmd_cached.record(c as f64);
            }
        }
        if let Some(status) = &self.server_error {
            error_counters(l, status);
        }
        self.lower_running();
    }

    fn lower_running(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        if let Some(k) = &self.series {
            k.running.decrement(1.0);
            k.llmd_running.decrement(1.0);
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
