//! The scheduler: the pool's endpoints, narrowed to the healthy ones serving the request's
//! model and to the data plane's subset hint, handed to the configured profile handler. It
//! records the decision metrics of `shared/design.md` §4.
//!
//! Admission is GIE's legacy admission: a request whose InferenceObjective priority is below 0
//! (sheddable, [`crate::objectives`]) is refused with 429 while the pool is saturated (the
//! saturation detector's pool signal reaches 1.0 over the candidates); every other request is
//! scheduled whatever the load.
//!
//! Scheduling is CPU work (tokenizing, chat templates, hashing, index lookups): the protocol
//! layer runs it on tokio's blocking threads, a bounded number at a time, never on the async
//! workers that relay streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use llmd_telemetry::HotHistogram;
use llmd_telemetry::names;

use super::saturation::UtilizationDetector;
use super::{
    CycleState, Decision, PickContext, PickError, Picker, PrefixMatch, ProfileHandler, Profiles,
};
use crate::config::{ConfigError, EndpointPickerConfig};
use crate::endpoints::{Endpoint, Pool};
use crate::inflight::{Leg, Release, Ticket};
use crate::kv::KvService;
use crate::objectives::{Objectives, RequestClass};
use crate::plugins::registry::{self, BuildEnv};
use crate::request::{InferenceRequest, Prompt};

/// Largest completions prompt whose pick runs on the ext_proc stream's own task rather than
/// on a blocking thread. A pick at this size takes tens of µs (tokenizing ~500 tokens through
/// the prompt cache, a short index lookup); handing it to a blocking thread and back costs
/// about as much again in wake-ups and context switches (`scripts/bench-epp-floor.sh`).
/// Longer prompts stay off the runtime: `benches/stream_gaps.rs` shows what they cost streamed
/// responses inline.
pub const INLINE_PICK_MAX_PROMPT_BYTES: usize = 2048;

/// One scoring entry of an explanation: (profile, plugin, endpoint, score in [0, 1]).
pub type ScoreEntry = (String, String, String, f64);

/// Limits on what a request may ask the scheduler to do, and how much it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest prompt (user input), bytes: past it a request is refused (413) before it is
    /// tokenized.
    pub max_prompt_bytes: usize,
    /// Fallback endpoints after each profile's pick (0: only the picker's; a data plane that
    /// takes one address, such as Envoy's `ORIGINAL_DST` cluster, needs 0).
    pub fallbacks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_prompt_bytes: 4 << 20,
            fallbacks: 0,
        }
    }
}

/// The scheduler behind the ext_proc server.
pub struct Scheduler {
    pool: Arc<Pool>,
    profiles: Profiles,
    handler: Arc<dyn ProfileHandler>,
    kv: Option<Arc<KvService>>,
    detector: UtilizationDetector,
    objectives: Objectives,
    subset_filter: bool,
    limits: Limits,
    service_name: Option<String>,
    bodyless: AtomicU64,
    /// The flow controller (`flowControl` gate on); its queue replaces legacy shedding.
    flow: Option<crate::flow_control::FlowControl>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("profiles", &self.profiles)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Builds the plugins of `config` over `pool`, with the EPP's KV service (see
    /// [`KvService::for_config`]).
    pub fn new(
        config: &EndpointPickerConfig,
        pool: Arc<Pool>,
        kv: Option<Arc<KvService>>,
    ) -> Result<Self, ConfigError> {
        Self::with_env(
            config,
            BuildEnv {
                kv,
                scrape_interval: None,
                pool: Some(pool),
                stale_after: None,
            },
        )
    }

    /// [`Scheduler::new`] with the whole build environment (the scrape interval the
    /// saturation detector's staleness follows).
    pub fn with_env(config: &EndpointPickerConfig, env: BuildEnv) -> Result<Self, ConfigError> {
        let built = registry::build(config, &env)?;
        let pool = env.pool.clone().unwrap_or_default();
        let flow = crate::flow_control::Settings::from_config(config)?.map(|s| {
            crate::flow_control::FlowControl::new(s, pool.clone(), built.detector.clone())
        });
        Ok(Self {
            pool,
            profiles: built.profiles,
            handler: built.handler,
            kv: env.kv,
            detector: built.detector,
            objectives: Objectives::new(&config.inference_objectives)?,
            subset_filter: true,
            limits: Limits::default(),
            service_name: None,
            bodyless: AtomicU64::new(0),
            flow,
        })
    }

    /// [`Scheduler::new`] with the KV service the configuration needs (tests, benchmarks).
    pub fn from_config(
        config: &EndpointPickerConfig,
        pool: Arc<Pool>,
    ) -> Result<Self, ConfigError> {
        let kv = KvService::for_config(config)?;
        Self::new(config, pool, kv)
    }

    /// With these limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Honours the data plane's subset hint, or not (llm-d's `--disable-endpoint-subset-filter`).
    pub fn with_subset_filter(mut self, on: bool) -> Self {
        self.subset_filter = on;
        self
    }

    /// Adds InferenceObjectives (from `--inference-objectives-file`) to the config's.
    pub fn with_objectives(
        mut self,
        extra: &[crate::config::ObjectiveSpec],
    ) -> Result<Self, ConfigError> {
        let mut all = self.objectives.specs();
        all.extend_from_slice(extra);
        self.objectives = Objectives::new(&all)?;
        Ok(self)
    }

    /// The InferenceObjectives requests are classified by (the Kubernetes watch updates them).
    pub fn objectives(&self) -> &Objectives {
        &self.objectives
    }

    /// The saturation detector behind shedding.
    pub fn detector(&self) -> &UtilizationDetector {
        &self.detector
    }

    /// Names its spans with this `service.name` (when it shares a process).
    pub fn with_service_name(mut self, name: Option<String>) -> Self {
        self.service_name = name;
        self
    }

    /// The scheduler's own `service.name`, if it has one.
    pub fn service_name(&self) -> Option<&str> {
        self.service_name.as_deref()
    }

    /// The KV service, when a precise prefix scorer is configured.
    pub fn kv(&self) -> Option<&Arc<KvService>> {
        self.kv.as_ref()
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Decides, optionally collecting every plugin's score per endpoint.
    pub fn decide(
        &self,
        ctx: &PickContext<'_>,
        explain: bool,
    ) -> (
        Result<Decision, PickError>,
        Option<Vec<ScoreEntry>>,
        Option<PrefixMatch>,
    ) {
        match self.candidates(ctx) {
            Err(e) => (Err(e), None, None),
            Ok(Candidates::Bodyless(d)) => (Ok(d), None, None),
            Ok(Candidates::Scheduled(eps)) => {
                let mut cs = CycleState {
                    request: ctx.request,
                    headers: ctx.headers,
                    prefix: None,
                    approx_prefix: None,
                    approx_hashes: std::collections::HashMap::new(),
                    explain: explain.then(Vec::new),
                    keys: None,
                    service_name: self.service_name.as_deref(),
                    fallbacks: self.limits.fallbacks,
                    picks: std::collections::HashMap::new(),
                    session_bound_present: std::collections::HashMap::new(),
                };
                let mut result = self.handler.handle(&self.profiles, &mut cs, eps);
                if let Ok(d) = &mut result {
                    d.legs = legs(&cs, d);
                    d.response_headers = self.profiles.response_headers(&cs, d);
                    if !explain {
                        // llm-d's PreRequest: what was routed where (nothing is when explaining).
                        self.profiles.pre_request(&cs, d);
                    }
                }
                (result, cs.explain, cs.prefix.or(cs.approx_prefix))
            }
        }
    }

    /// The candidates of a request, or the decision when there is nothing to schedule.
    fn candidates(&self, ctx: &PickContext<'_>) -> Result<Candidates, PickError> {
        if let Some(req) = ctx.request
            && req.user_input_bytes > self.limits.max_prompt_bytes
        {
            return Err(PickError::TooLarge(format!(
                "the prompt is {} bytes, over the limit of {} bytes",
                req.user_input_bytes, self.limits.max_prompt_bytes
            )));
        }
        let all = self.pool.snapshot();
        if all.is_empty() {
            return Err(PickError::NoEndpoints(Some(
                "the pool has no endpoints".into(),
            )));
        }
        let mut eps: Vec<Endpoint> = match ctx.request {
            Some(req) => all
                .iter()
                .filter(|e| e.spec.serves(&req.model))
                .cloned()
                .collect(),
            None => all.iter().cloned().collect(),
        };
        self.pool.fill_inflight(&mut eps);
        if let Some(req) = ctx.request
            && eps.is_empty()
        {
            return Err(PickError::UnknownModel(req.model.clone()));
        }
        if let Some(subset) = ctx.subset.as_ref().filter(|_| self.subset_filter) {
            // GIE: keep endpoints whose IP is in the hint (port ignored).
            let ips: Vec<&str> = subset
                .iter()
                .map(|s| s.rsplit_once(':').map_or(s.as_str(), |(ip, _)| ip))
                .collect();
            eps.retain(|e| {
                ips.iter()
                    .any(|ip| ip.trim_matches(['[', ']']) == e.spec.address)
            });
            if eps.is_empty() {
                return Err(PickError::NoEndpoints(Some(
                    "the subset hint left no endpoint".into(),
                )));
            }
        }
        // Endpoints known to be failing are left out while any other remains.
        let now = Instant::now();
        if eps.iter().any(|e| e.healthy(now)) {
            eps.retain(|e| e.healthy(now));
        }
        if ctx.request.is_none() {
            // No body (GET /v1/models, ...): any endpoint, in turn.
            let i = self.bodyless.fetch_add(1, Ordering::Relaxed) as usize % eps.len();
            return Ok(Candidates::Bodyless(Decision {
                endpoints: vec![eps[i].id.to_string()],
                ..Default::default()
            }));
        }
        if let Some(req) = ctx.request
            && self
                .objectives
                .classify(ctx.headers, Some(&req.model))
                .sheddable()
            && self.flow.is_none()
            && self.detector.saturation(&eps) >= 1.0
        {
            return Err(PickError::Saturated);
        }
        Ok(Candidates::Scheduled(eps))
    }
}

/// The pods a decision loads: its first endpoint (decode, or the only pod) and the prefill pod
/// it names, each with the prompt tokens it has to compute (the prompt minus what the
/// prefix scorers found cached there; without a prefix scorer, 4 bytes a token).
fn legs(cs: &CycleState<'_>, d: &Decision) -> Vec<Leg> {
    let mut legs = Vec::with_capacity(2);
    let uncached = |ep: &str| {
        let (prompt, cached) = crate::plugins::cached_on(cs, ep);
        prompt.saturating_sub(cached)
    };
    if let Some(first) = d.endpoints.first() {
        legs.push(Leg {
            endpoint: first.clone(),
            tokens: uncached(first),
            prefill: false,
        });
    }
    if let Some((_, prefill)) = d
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(llmd_wire::headers::PREFILLER_HEADER))
    {
        legs.push(Leg {
            endpoint: prefill.clone(),
            tokens: uncached(prefill),
            prefill: true,
        });
    }
    legs
}

/// What there is to schedule.
enum Candidates {
    /// A bodyless request's decision.
    Bodyless(Decision),
    /// The candidates of a request with a body.
    Scheduled(Vec<Endpoint>),
}

impl Picker for Scheduler {
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Decision, PickError> {
        let started = Instant::now();
        let model = ctx.request.map(|r| r.model.clone()).unwrap_or_default();
        let (mut result, _, prefix) = self.decide(ctx, false);
        if let Ok(d) = &mut result {
            d.ticket = self.pool.inflight().start(&d.legs);
        }
        let elapsed = started.elapsed().as_secs_f64();
        static TIMERS: [HotHistogram; 3] = [
            HotHistogram::new(&names::epp::ROUTING_DECISION_DURATION),
            HotHistogram::new(&names::epp::SCHEDULER_E2E_DURATION),
            HotHistogram::new(&names::epp::LLMD_SCHEDULER_E2E_DURATION),
        ];
        for t in &TIMERS {
            t.record(elapsed);
        }
        if let (Ok(d), Some(p)) = (&result, prefix)
            && let Some(chosen) = d.endpoints.first()
        {
            let matched = *p.matched.get(chosen).unwrap_or(&0);
            metrics::histogram!(names::epp::PREFIX_CACHE_MATCHED_BLOCKS.name, "model_name" => model.clone()).record(f64::from(matched));
            if matched > 0 {
                metrics::counter!(names::epp::PREFIX_CACHE_HITS.name, "model_name" => model)
                    .increment(1);
            }
        }
        result
    }

    /// Inline: bodyless requests, and completions prompts of at most
    /// [`INLINE_PICK_MAX_PROMPT_BYTES`] whose tokenizer is loaded (no file I/O, no chat
    /// template). The rest go to the blocking pool.
    fn picks_inline(&self, request: Option<&InferenceRequest>) -> bool {
        let Some(req) = request else { return true };
        matches!(req.prompt, Prompt::Text(_) | Prompt::Tokens(_))
            && req.user_input_bytes <= INLINE_PICK_MAX_PROMPT_BYTES
            && self
                .kv
                .as_ref()
                .is_none_or(|kv| kv.tokenizer_loaded(&req.model))
    }

    fn report_unreachable(&self, endpoint: &str, period: std::time::Duration) {
        self.pool.mark_unhealthy(endpoint, period);
    }

    fn release(&self, ticket: Ticket, what: Release) {
        self.pool.inflight().release(ticket, what);
    }

    fn classify(&self, headers: &[(String, String)], model: Option<&str>) -> RequestClass {
        self.objectives.classify(headers, model)
    }

    fn flow_control(&self) -> Option<&crate::flow_control::FlowControl> {
        self.flow.as_ref()
    }
}
