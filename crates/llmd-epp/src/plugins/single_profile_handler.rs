//! `single-profile-handler`: runs the only profile; its picks are the destination and the
//! fallbacks. Every request is decode-only: its pick span says so, with the chosen pod's cache
//! hit ratio. No parameters.

use llmd_telemetry::names;

use super::{cached_on, pick_span, record_hit_ratio};
use crate::config::ConfigError;
use crate::endpoints::Endpoint;
use crate::scheduling::{CycleState, Decision, PickError, ProfileHandler, Profiles};

/// The llm-d type name.
pub const TYPE: &str = "single-profile-handler";

/// `single-profile-handler`.
#[derive(Debug, Default)]
pub struct SingleProfileHandler;

impl ProfileHandler for SingleProfileHandler {
    fn handle(
        &self,
        profiles: &Profiles,
        cs: &mut CycleState<'_>,
        candidates: Vec<Endpoint>,
    ) -> Result<Decision, PickError> {
        let Some(name) = profiles.by_name.keys().next().cloned() else {
            return Err(PickError::Internal("no profile".into()));
        };
        let span = pick_span(cs, None);
        let _e = span.enter();
        let picked = profiles.run(&name, cs, candidates)?;
        let Some(best) = picked.first() else {
            return Err(PickError::NoEndpoints(Some(format!(
                "profile {name:?} filtered out every endpoint"
            ))));
        };
        span.record(names::attrs::EPP_DECODE_POD, &*best.id);
        let (prompt, cached) = cached_on(cs, &best.id);
        record_hit_ratio(&span, prompt, cached);
        span.record(names::attrs::EPP_DECISION, "decode-only");
        Ok(Decision {
            endpoints: picked.iter().map(|e| e.id.to_string()).collect(),
            ..Default::default()
        })
    }

    fn validate(&self, profiles: &Profiles) -> Result<(), ConfigError> {
        if profiles.by_name.len() == 1 {
            Ok(())
        } else {
            Err(ConfigError::Invalid(format!(
                "{TYPE} needs exactly one profile"
            )))
        }
    }
}
