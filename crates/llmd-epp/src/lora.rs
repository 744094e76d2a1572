//! What a pod's `/metrics` says about the models it serves, for the `lora-affinity-scorer`:
//! its base model (the `model_name` label of vLLM's queue gauges) and its LoRA adapters.
//!
//! vLLM (`--enable-lora`) writes `vllm:lora_requests_info` as one gauge series per state it has
//! been in: labels `running_lora_adapters` and `waiting_lora_adapters` (comma-separated adapter
//! names, empty when none), `max_lora` (`--max-loras`, the adapters one engine step can run),
//! and as value the time it last set that state (`set_to_current_time()`, every engine step).
//! Older states stay exposed with older times, so the pod's state is the sample with the
//! largest value, as GIE's `LoRASpec.getLatestMetric` reads it. A pod that has not stepped
//! since it started exposes no series: its adapters are unknown.
//!
//! A `max_lora` that is not a count is counted in `llmd_epp_lora_info_malformed_total` and
//! logged once; the adapters are still read, with no slot count.

use std::sync::atomic::{AtomicBool, Ordering};

use llmd_telemetry::exposition::Sample;

use crate::endpoints::MetricNames;

/// One pod's newest `vllm:lora_requests_info` sample.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoraState {
    /// `running_lora_adapters`: adapters of running requests.
    pub running: Vec<String>,
    /// `waiting_lora_adapters`: adapters of waiting requests.
    pub waiting: Vec<String>,
    /// `max_lora`: adapter slots (`--max-loras`); `None` when absent or malformed.
    pub max_lora: Option<u32>,
}

impl LoraState {
    /// Whether `adapter` is running on the pod.
    pub fn is_active(&self, adapter: &str) -> bool {
        self.running.iter().any(|a| a == adapter)
    }

    /// Whether a request for `adapter` waits on the pod.
    pub fn is_waiting(&self, adapter: &str) -> bool {
        self.waiting.iter().any(|a| a == adapter)
    }

    /// Whether the pod can take one more adapter: GIE counts running and waiting adapters
    /// against `max_lora` (`len(active) + len(waiting) < max`).
    pub fn has_free_slot(&self) -> bool {
        let used = self.running.len() + self.waiting.len();
        self.max_lora.is_some_and(|max| used < max as usize)
    }
}

/// The models a pod's last scrape showed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServedModels {
    /// Base models: the distinct `model_name` labels of the waiting and running gauges.
    pub base: Vec<String>,
    /// LoRA state, when the pod exposes it.
    pub lora: Option<LoraState>,
}

/// Logged once per process: a pod whose `max_lora` does not parse.
static MALFORMED_LOGGED: AtomicBool = AtomicBool::new(false);

/// The served models of a parsed scrape.
pub(crate) fn from_samples(samples: &[Sample], names: &MetricNames) -> ServedModels {
    let mut base: Vec<String> = Vec::new();
    for s in samples
        .iter()
        .filter(|s| names.waiting.matches(s) || names.running.matches(s))
    {
        if let Some(m) = s.label("model_name")
            && !m.is_empty()
            && !base.iter().any(|b| b == m)
        {
            base.push(m.to_owned());
        }
    }
    let newest = samples
        .iter()
        .filter(|s| names.lora_info.matches(s) && s.value.is_finite())
        .fold(None::<&Sample>, |best, s| match best {
            Some(b) if b.value >= s.value => Some(b),
            _ => Some(s),
        });
    ServedModels {
        base,
        lora: newest.map(lora_state),
    }
}

fn lora_state(s: &Sample) -> LoraState {
    let list = |label: &str| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for name in s.label(label).unwrap_or_default().split(',') {
            let name = name.trim();
            if !name.is_empty() && !out.iter().any(|n| n == name) {
                out.push(name.to_owned());
            }
        }
        out
    };
    let max_lora = match s.label("max_lora").map(str::trim) {
        None | Some("") => None,
        Some(v) => match v.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                metrics::counter!(llmd_telemetry::names::epp::LORA_INFO_MALFORMED.name)
                    .increment(1);
                if !MALFORMED_LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        metric = s.name.as_str(),
                        max_lora = v,
                        "LoRA info with a max_lora that is not a count: read without a slot count (logged once)"
                    );
                }
                None
            }
        },
    };
    LoraState {
        running: list("running_lora_adapters"),
        waiting: list("waiting_lora_adapters"),
        max_lora,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(text: &str) -> ServedModels {
        let m = llmd_telemetry::exposition::parse(text).unwrap();
        from_samples(&m.samples, &MetricNames::default())
    }

    #[test]
    fn the_newest_state_wins_and_lists_are_split() {
        // As vLLM exposes it: one series per state, the value the time it was last set.
        let s = served(concat!(
            "vllm:num_requests_running{engine=\"0\",model_name=\"base\"} 1\n",
            "vllm:num_requests_waiting{engine=\"0\",model_name=\"base\"} 0\n",
            "vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} 1.7000000005e+09\n",
            "vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"sql, chat\",waiting_lora_adapters=\"code\"} 1.7000000009e+09\n",
            "vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"sql\",waiting_lora_adapters=\"\"} 1.7000000007e+09\n",
        ));
        assert_eq!(s.base, ["base"]);
        let l = s.lora.unwrap();
        assert_eq!(l.running, ["sql", "chat"]);
        assert_eq!(l.waiting, ["code"]);
        assert_eq!(l.max_lora, Some(2));
        assert!(l.is_active("chat") && !l.is_active("code") && l.is_waiting("code"));
        assert!(!l.has_free_slot(), "2 running + 1 waiting of 2 slots");
    }

    #[test]
    fn no_series_is_no_state_and_a_bad_slot_count_is_counted_not_fatal() {
        let s = served("vllm:num_requests_running{model_name=\"m\"} 0\n");
        assert_eq!(s.lora, None);
        let s = served(
            "vllm:lora_requests_info{max_lora=\"many\",running_lora_adapters=\"a\",waiting_lora_adapters=\"\"} 5\n",
        );
        let l = s.lora.unwrap();
        assert_eq!(
            (l.running.as_slice(), l.max_lora),
            (&["a".to_owned()][..], None)
        );
        assert!(!l.has_free_slot());
        let l = served(
            "vllm:lora_requests_info{max_lora=\"1\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} 5\n",
        )
        .lora
        .unwrap();
        assert!(l.has_free_slot());
    }
}
