//! The plugin registry: one row per llm-d plugin type (its kind and how to build it from its
//! parameters), and the assembly of a configuration's plugins into scheduling profiles.
//!
//! Parameters are read into each plugin's typed struct, which refuses unknown fields: a
//! misspelt `blockSize` is a startup error naming the plugin, its type and the field, never a
//! silent default.

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::{
    decode_filter, kv_cache_utilization_scorer, load_aware_scorer, max_score_picker,
    pd_profile_handler, precise_prefix_cache_scorer, prefill_filter, queue_scorer, random_picker,
    round_robin_picker, single_profile_handler,
};
use crate::config::{ConfigError, EndpointPickerConfig, PluginSpec};
use crate::kv::KvService;
use crate::scheduling::{Filter, Pick, Profile, ProfileHandler, Profiles, Scorer};

/// A built plugin.
#[derive(Clone)]
pub enum Plugin {
    /// Filter.
    Filter(Arc<dyn Filter>),
    /// Scorer.
    Scorer(Arc<dyn Scorer>),
    /// Picker.
    Picker(Arc<dyn Pick>),
    /// Profile handler.
    Handler(Arc<dyn ProfileHandler>),
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Plugin::Filter(_) => "Plugin::Filter",
            Plugin::Scorer(_) => "Plugin::Scorer",
            Plugin::Picker(_) => "Plugin::Picker",
            Plugin::Handler(_) => "Plugin::Handler",
        })
    }
}

/// What building a plugin may use beyond its parameters.
#[derive(Debug, Default, Clone)]
pub struct BuildEnv {
    /// The EPP's KV service (present when the configuration has a precise prefix scorer).
    pub kv: Option<Arc<KvService>>,
}

/// Builds one plugin from its spec.
type Build = fn(&PluginSpec, &BuildEnv) -> Result<Plugin, ConfigError>;

/// One plugin type.
#[derive(Debug)]
pub struct PluginType {
    /// llm-d's type name.
    pub name: &'static str,
    /// How to build it.
    pub build: Build,
}

/// Every plugin type this EPP knows.
pub const TYPES: &[PluginType] = &[
    PluginType {
        name: precise_prefix_cache_scorer::TYPE,
        build: |spec, env| {
            // The parameters configure the KV service (checked when it was built).
            params::<precise_prefix_cache_scorer::PrecisePrefixCacheParams>(spec)?;
            let kv = env.kv.clone().ok_or_else(|| {
                ConfigError::Invalid(format!("plugin {:?}: no KV service", spec.name()))
            })?;
            Ok(Plugin::Scorer(Arc::new(
                precise_prefix_cache_scorer::PrecisePrefixCacheScorer::new(kv),
            )))
        },
    },
    PluginType {
        name: queue_scorer::TYPE,
        build: |spec, _| {
            Ok(Plugin::Scorer(Arc::new(queue_scorer::QueueScorer::new(
                params(spec)?,
            ))))
        },
    },
    PluginType {
        name: kv_cache_utilization_scorer::TYPE,
        build: |spec, _| {
            Ok(Plugin::Scorer(Arc::new(
                kv_cache_utilization_scorer::KvCacheUtilizationScorer::new(params(spec)?),
            )))
        },
    },
    PluginType {
        name: load_aware_scorer::TYPE,
        build: |spec, _| {
            let s = load_aware_scorer::LoadAwareScorer::new(params(spec)?)
                .map_err(|e| invalid_params(spec, &e))?;
            Ok(Plugin::Scorer(Arc::new(s)))
        },
    },
    PluginType {
        name: decode_filter::TYPE,
        build: |spec, _| {
            no_params(spec)?;
            Ok(Plugin::Filter(Arc::new(decode_filter::DecodeFilter)))
        },
    },
    PluginType {
        name: prefill_filter::TYPE,
        build: |spec, _| {
            no_params(spec)?;
            Ok(Plugin::Filter(Arc::new(prefill_filter::PrefillFilter)))
        },
    },
    PluginType {
        name: max_score_picker::TYPE,
        build: |spec, _| {
            Ok(Plugin::Picker(Arc::new(
                max_score_picker::MaxScorePicker::new(params(spec)?),
            )))
        },
    },
    PluginType {
        name: random_picker::TYPE,
        build: |spec, _| {
            Ok(Plugin::Picker(Arc::new(random_picker::RandomPicker::new(
                params(spec)?,
            ))))
        },
    },
    PluginType {
        name: round_robin_picker::TYPE,
        build: |spec, _| {
            no_params(spec)?;
            Ok(Plugin::Picker(Arc::new(
                round_robin_picker::RoundRobinPicker::default(),
            )))
        },
    },
    PluginType {
        name: single_profile_handler::TYPE,
        build: |spec, _| {
            no_params(spec)?;
            Ok(Plugin::Handler(Arc::new(
                single_profile_handler::SingleProfileHandler,
            )))
        },
    },
    PluginType {
        name: pd_profile_handler::TYPE,
        build: |spec, _| {
            Ok(Plugin::Handler(Arc::new(
                pd_profile_handler::PdProfileHandler::new(params(spec)?),
            )))
        },
    },
];

fn invalid_params(spec: &PluginSpec, why: &str) -> ConfigError {
    ConfigError::Invalid(format!(
        "plugin {:?} (type {}): parameters: {why}",
        spec.name(),
        spec.kind
    ))
}

/// A plugin's parameters as its typed struct (absent: the defaults).
pub fn params<T: DeserializeOwned + Default>(spec: &PluginSpec) -> Result<T, ConfigError> {
    match &spec.parameters {
        None | Some(serde_json::Value::Null) => Ok(T::default()),
        Some(v) => {
            serde_json::from_value(v.clone()).map_err(|e| invalid_params(spec, &e.to_string()))
        }
    }
}

/// A plugin that takes no parameters refuses any.
fn no_params(spec: &PluginSpec) -> Result<(), ConfigError> {
    match &spec.parameters {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::Object(m)) if m.is_empty() => Ok(()),
        Some(_) => Err(invalid_params(spec, "this plugin takes no parameters")),
    }
}

/// Builds the profiles and handler of a configuration.
pub fn build(
    config: &EndpointPickerConfig,
    env: &BuildEnv,
) -> Result<(Profiles, Arc<dyn ProfileHandler>), ConfigError> {
    let invalid = |m: String| ConfigError::Invalid(m);
    let mut plugins: HashMap<String, Plugin> = HashMap::new();
    for spec in &config.plugins {
        let Some(t) = TYPES.iter().find(|t| t.name == spec.kind) else {
            let known: Vec<&str> = TYPES.iter().map(|t| t.name).collect();
            return Err(invalid(format!(
                "plugin {:?}: unknown type {:?} (known: {})",
                spec.name(),
                spec.kind,
                known.join(", ")
            )));
        };
        let plugin = (t.build)(spec, env)?;
        if plugins.insert(spec.name().to_owned(), plugin).is_some() {
            return Err(invalid(format!(
                "plugin name {:?} is used twice",
                spec.name()
            )));
        }
    }
    let mut profiles = Profiles::default();
    for p in &config.scheduling_profiles {
        let mut filters = Vec::new();
        let mut scorers = Vec::new();
        let mut picker = None;
        for r in &p.plugins {
            match plugins.get(&r.plugin_ref) {
                None => {
                    return Err(invalid(format!(
                        "profile {:?}: no plugin named {:?}",
                        p.name, r.plugin_ref
                    )));
                }
                Some(Plugin::Filter(f)) => filters.push(f.clone()),
                Some(Plugin::Scorer(s)) => {
                    let w = r.weight.unwrap_or(1.0);
                    if !w.is_finite() || w < 0.0 {
                        return Err(invalid(format!(
                            "profile {:?}: weight of {:?} must be >= 0",
                            p.name, r.plugin_ref
                        )));
                    }
                    scorers.push((r.plugin_ref.clone(), s.clone(), w));
                }
                Some(Plugin::Picker(pk)) => {
                    if picker.replace(pk.clone()).is_some() {
                        return Err(invalid(format!(
                            "profile {:?} has more than one picker",
                            p.name
                        )));
                    }
                }
                Some(Plugin::Handler(_)) => {
                    return Err(invalid(format!(
                        "profile {:?}: a profile handler cannot be in a profile",
                        p.name
                    )));
                }
            }
        }
        let picker =
            picker.ok_or_else(|| invalid(format!("profile {:?} has no picker", p.name)))?;
        let profile = Profile {
            name: p.name.clone(),
            filters,
            scorers,
            picker,
        };
        if profiles.by_name.insert(p.name.clone(), profile).is_some() {
            return Err(invalid(format!("profile {:?} is defined twice", p.name)));
        }
    }
    let handlers: Vec<Arc<dyn ProfileHandler>> = plugins
        .values()
        .filter_map(|p| match p {
            Plugin::Handler(h) => Some(h.clone()),
            _ => None,
        })
        .collect();
    let handler = match handlers.len() {
        0 if profiles.by_name.len() == 1 => {
            Arc::new(single_profile_handler::SingleProfileHandler) as Arc<dyn ProfileHandler>
        }
        0 => {
            return Err(invalid(
                "several profiles need a profile handler (e.g. pd-profile-handler)".into(),
            ));
        }
        1 => handlers[0].clone(),
        _ => return Err(invalid("more than one profile handler".into())),
    };
    handler.validate(&profiles)?;
    Ok((profiles, handler))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_parameter_is_an_error_naming_it() {
        let cfg = EndpointPickerConfig::parse(
            "plugins:\n  - type: precise-prefix-cache-scorer\n    parameters: {blockSze: 16}\n  - type: max-score-picker\nschedulingProfiles:\n  - name: d\n    plugins: [{pluginRef: precise-prefix-cache-scorer}, {pluginRef: max-score-picker}]\n",
        )
        .unwrap();
        let e = KvService::for_config(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("blockSze") && e.contains("precise-prefix-cache-scorer"),
            "{e}"
        );
        for bad in [
            "{type: queue-scorer, parameters: {staleAfterSecs: 1}}",
            "{type: max-score-picker, parameters: {maxNumOfEndpoint: 2}}",
            "{type: pd-profile-handler, parameters: {treshold: 2}}",
            "{type: decode-filter, parameters: {x: 1}}",
            "{type: load-aware-scorer, parameters: {threshold: 0}}",
        ] {
            let cfg = EndpointPickerConfig::parse(&format!(
                "plugins:\n  - {bad}\n  - type: random-picker\nschedulingProfiles:\n  - name: d\n    plugins: [{{pluginRef: random-picker}}]\n"
            ))
            .unwrap();
            let Err(e) = build(&cfg, &BuildEnv::default()) else {
                panic!("{bad} was accepted");
            };
            let e = e.to_string();
            assert!(e.contains("parameters"), "{bad}: {e}");
        }
    }
}
