//! LoRA adapters as vLLM serves them (`vllm/entrypoints/openai/serving_models.py`): adapters
//! from `--lora-modules` are registered at startup with ids 1, 2, ... in order; with
//! `VLLM_ALLOW_RUNTIME_LORA_UPDATING` more can be loaded and unloaded at runtime (ids keep
//! counting up). A request whose `model` is an adapter name is served by it: its blocks are
//! hashed with the adapter as an extra key (name and path, as vLLM >= 0.31 does), its KV events
//! carry `lora_id`/`lora_name`, and the engine runs at most `--max-loras` adapters per step.

use std::collections::HashMap;
use std::sync::Arc;

use llmd_kv_index::hashing::LoraKey;
use parking_lot::RwLock;

use crate::config::LoraArgs;

/// One adapter (vLLM's `LoRARequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adapter {
    /// `lora_name`.
    pub name: String,
    /// `lora_int_id`, from 1.
    pub id: u32,
    /// `lora_path`.
    pub path: String,
    /// The base model it is listed under in `/v1/models` (`parent`).
    pub base_model: String,
}

impl Adapter {
    /// The extra key vLLM hashes for this adapter.
    pub fn hash_key(&self) -> LoraKey {
        LoraKey {
            name: self.name.clone(),
            path: self.path.clone(),
        }
    }
}

/// Why a load or unload was refused (vLLM's messages and statuses).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoraError {
    /// LoRA is not enabled on this server.
    #[error("LoRA is not enabled. Use --enable-lora to enable LoRA.")]
    Disabled,
    /// Name or path missing.
    #[error("Both 'lora_name' and 'lora_path' must be provided.")]
    MissingFields,
    /// Neither name nor id given to unload.
    #[error("either 'lora_name' and 'lora_int_id' needs to be provided.")]
    MissingName,
    /// Already loaded.
    #[error("The lora adapter '{0}' has already been loaded.")]
    AlreadyLoaded(String),
    /// The name is a base model's.
    #[error("The lora adapter name '{0}' is a base model name.")]
    BaseModelName(String),
    /// Not loaded.
    #[error("The lora adapter '{0}' cannot be found.")]
    NotFound(String),
}

impl LoraError {
    /// vLLM's HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            LoraError::NotFound(_) => 404,
            _ => 400,
        }
    }

    /// vLLM's error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            LoraError::NotFound(_) => "NotFoundError",
            LoraError::Disabled => "BadRequestError",
            _ => "InvalidUserInput",
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Adapters in load order.
    adapters: Vec<Arc<Adapter>>,
    by_name: HashMap<String, Arc<Adapter>>,
    next_id: u32,
}

/// The adapters one simulator serves.
#[derive(Debug)]
pub struct Loras {
    enabled: bool,
    /// Most adapters per engine step.
    pub max_loras: usize,
    /// Whether the load/unload endpoints are served.
    pub runtime_updates: bool,
    base_model: String,
    inner: RwLock<Inner>,
}

impl Loras {
    /// The registry of `args` (already validated: `--lora-modules` needs `--enable-lora`),
    /// with the static modules loaded. `base_model` is the served model name.
    pub fn new(args: &LoraArgs, base_model: &str, is_base: impl Fn(&str) -> bool) -> Self {
        let loras = Self {
            enabled: args.enable_lora,
            max_loras: args.max_loras.max(1),
            runtime_updates: args.enable_lora && args.allow_runtime_lora_updating,
            base_model: base_model.to_owned(),
            inner: RwLock::new(Inner::default()),
        };
        for m in &args.lora_modules {
            let base = m
                .base_model_name
                .clone()
                .filter(|b| is_base(b))
                .unwrap_or_else(|| base_model.to_owned());
            // Validation already refused duplicates and base-model names.
            let _ = loras.insert(&m.name, &m.path, base, &is_base);
        }
        loras
    }

    /// True with `--enable-lora`.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The adapter called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Adapter>> {
        self.inner.read().by_name.get(name).cloned()
    }

    /// Every adapter, in load order.
    pub fn list(&self) -> Vec<Arc<Adapter>> {
        self.inner.read().adapters.clone()
    }

    fn insert(
        &self,
        name: &str,
        path: &str,
        base_model: String,
        is_base: &impl Fn(&str) -> bool,
    ) -> Result<Arc<Adapter>, LoraError> {
        if !self.enabled {
            return Err(LoraError::Disabled);
        }
        if name.is_empty() || path.is_empty() {
            return Err(LoraError::MissingFields);
        }
        if is_base(name) {
            return Err(LoraError::BaseModelName(name.to_owned()));
        }
        let mut inner = self.inner.write();
        if inner.by_name.contains_key(name) {
            return Err(LoraError::AlreadyLoaded(name.to_owned()));
        }
        inner.next_id += 1;
        let adapter = Arc::new(Adapter {
            name: name.to_owned(),
            id: inner.next_id,
            path: path.to_owned(),
            base_model,
        });
        inner.adapters.push(adapter.clone());
        inner.by_name.insert(name.to_owned(), adapter.clone());
        Ok(adapter)
    }

    /// `POST /v1/load_lora_adapter`.
    pub fn load(
        &self,
        name: &str,
        path: &str,
        is_base: impl Fn(&str) -> bool,
    ) -> Result<Arc<Adapter>, LoraError> {
        let adapter = self.insert(name, path, self.base_model.clone(), &is_base)?;
        tracing::info!(name, path, id = adapter.id, "Loaded new LoRA adapter");
        Ok(adapter)
    }

    /// `POST /v1/unload_lora_adapter`: requests already running keep their adapter.
    pub fn unload(&self, name: &str) -> Result<(), LoraError> {
        if !self.enabled {
            return Err(LoraError::Disabled);
        }
        if name.is_empty() {
            return Err(LoraError::MissingName);
        }
        let mut inner = self.inner.write();
        if inner.by_name.remove(name).is_none() {
            return Err(LoraError::NotFound(name.to_owned()));
        }
        inner.adapters.retain(|a| a.name != name);
        tracing::info!(name, "Removed LoRA adapter");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoraModule;

    fn args(modules: &[&str]) -> LoraArgs {
        LoraArgs {
            enable_lora: true,
            lora_modules: modules
                .iter()
                .map(|m| m.parse::<LoraModule>().unwrap())
                .collect(),
            max_loras: 2,
            allow_runtime_lora_updating: true,
        }
    }

    #[test]
    fn ids_count_up_across_static_and_runtime_loads() {
        let is_base = |n: &str| n == "base";
        let loras = Loras::new(&args(&["a=/p/a", "b=/p/b"]), "base", is_base);
        assert_eq!(loras.get("a").unwrap().id, 1);
        assert_eq!(loras.get("b").unwrap().id, 2);
        assert_eq!(loras.get("b").unwrap().base_model, "base");
        assert_eq!(
            loras.load("a", "/x", is_base).unwrap_err(),
            LoraError::AlreadyLoaded("a".into())
        );
        assert_eq!(loras.load("c", "/p/c", is_base).unwrap().id, 3);
        loras.unload("a").unwrap();
        assert_eq!(loras.unload("a").unwrap_err().status(), 404);
        assert_eq!(loras.load("a", "/p/a2", is_base).unwrap().id, 4);
        let names: Vec<String> = loras.list().iter().map(|a| a.name.clone()).collect();
        assert_eq!(names, ["b", "c", "a"]);
        assert_eq!(loras.load("base", "/x", is_base).unwrap_err().status(), 400);
        assert_eq!(
            loras.load("", "/x", is_base).unwrap_err(),
            LoraError::MissingFields
        );
    }

    #[test]
    fn disabled_refuses_everything() {
        let loras = Loras::new(&LoraArgs::default(), "base", |_| false);
        assert!(!loras.enabled());
        assert_eq!(
            loras.load("a", "/p", |_| false).unwrap_err(),
            LoraError::Disabled
        );
        assert!(loras.get("a").is_none());
    }
}
