//! The scheduler: the pool's endpoints, narrowed to those serving the request's model and to
//! the data plane's subset hint, handed to the configured profile handler. It records the
//! decision metrics of `shared/design.md` §4.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use llmd_telemetry::names;

use crate::config::{ConfigError, EndpointPickerConfig, SaturationDetector};
use crate::endpoints::{Endpoint, Pool};
use crate::extproc::{Decision, PickContext, PickError, Picker};
use crate::plugins::precise_prefix_cache_scorer::PrefixEnv;
use crate::plugins::{self, CycleState, PluginEnv, ProfileHandler, Profiles};

/// One scoring entry of an explanation: (profile, plugin, endpoint, score in [0, 1]).
pub type ScoreEntry = (String, String, String, f64);

/// The scheduler behind the ext_proc server.
pub struct Scheduler {
    pool: Arc<Pool>,
    profiles: Profiles,
    handler: Arc<dyn ProfileHandler>,
    prefix: Option<Arc<PrefixEnv>>,
    saturation: Option<SaturationDetector>,
    bodyless: AtomicU64,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("profiles", &self.profiles)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Builds the plugins of `config` over `pool`.
    pub fn new(config: &EndpointPickerConfig, pool: Arc<Pool>) -> Result<Self, ConfigError> {
        let mut env = PluginEnv::default();
        let (profiles, handler) = plugins::build(config, &mut env)?;
        Ok(Self {
            pool,
            profiles,
            handler,
            prefix: env.prefix,
            saturation: config.saturation_detector.clone(),
            bodyless: AtomicU64::new(0),
        })
    }

    /// The prefix-cache state (index and tokenizers), when a precise prefix scorer is configured.
    pub fn prefix(&self) -> Option<&Arc<PrefixEnv>> {
        self.prefix.as_ref()
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
        Option<plugins::PrefixMatch>,
    ) {
        let mut eps: Vec<Endpoint> = self.pool.snapshot();
        if eps.is_empty() {
            return (
                Err(PickError::NoEndpoints(Some(
                    "the pool has no endpoints".into(),
                ))),
                None,
                None,
            );
        }
        if let Some(req) = ctx.request {
            eps.retain(|e| e.spec.serves(&req.model));
            if eps.is_empty() {
                return (Err(PickError::UnknownModel(req.model.clone())), None, None);
            }
        }
        if let Some(subset) = &ctx.subset {
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
                return (
                    Err(PickError::NoEndpoints(Some(
                        "the subset hint left no endpoint".into(),
                    ))),
                    None,
                    None,
                );
            }
        }
        let Some(_) = ctx.request else {
            // No body (GET /v1/models, ...): any endpoint, in turn.
            let i = self.bodyless.fetch_add(1, Ordering::Relaxed) as usize % eps.len();
            return (
                Ok(Decision {
                    endpoints: vec![eps[i].id.clone()],
                    ..Default::default()
                }),
                None,
                None,
            );
        };
        if let Some(sd) = &self.saturation
            && eps.iter().all(|e| saturated(sd, e))
        {
            return (Err(PickError::Saturated), None, None);
        }
        let mut cs = CycleState {
            request: ctx.request,
            headers: ctx.headers,
            prefix: None,
            explain: explain.then(Vec::new),
            keys: None,
        };
        let result = self.handler.handle(&self.profiles, &mut cs, eps);
        (result, cs.explain, cs.prefix)
    }
}

/// True when `e` cannot take more work (or nothing recent is known about it).
fn saturated(sd: &SaturationDetector, e: &Endpoint) -> bool {
    match e.fresh_load(sd.metrics_staleness_threshold) {
        None => true,
        Some(l) => {
            l.waiting >= sd.queue_depth_threshold || l.kv_usage >= sd.kv_cache_util_threshold
        }
    }
}

impl Picker for Scheduler {
    fn pick(&self, ctx: &PickContext<'_>) -> Result<Decision, PickError> {
        let started = Instant::now();
        let model = ctx.request.map(|r| r.model.clone()).unwrap_or_default();
        let (result, _, prefix) = self.decide(ctx, false);
        let elapsed = started.elapsed().as_secs_f64();
        metrics::histogram!(names::epp::ROUTING_DECISION_DURATION.name).record(elapsed);
        metrics::histogram!(names::epp::SCHEDULER_E2E_DURATION.name).record(elapsed);
        metrics::counter!(names::epp::REQUEST_TOTAL.name, "model_name" => model.clone(), "target_model_name" => model.clone()).increment(1);
        match &result {
            Ok(d) => {
                if let (Some(p), Some(chosen)) = (prefix, d.endpoints.first()) {
                    let matched = *p.matched.get(chosen).unwrap_or(&0);
                    metrics::histogram!(names::epp::PREFIX_CACHE_MATCHED_BLOCKS.name, "model_name" => model.clone()).record(f64::from(matched));
                    if matched > 0 {
                        metrics::counter!(names::epp::PREFIX_CACHE_HITS.name, "model_name" => model).increment(1);
                    }
                }
            }
            Err(e) => {
                metrics::counter!(names::epp::REQUEST_ERROR_TOTAL.name, "model_name" => model.clone(), "target_model_name" => model, "error_code" => e.status().to_string())
                    .increment(1);
            }
        }
        result
    }
}
