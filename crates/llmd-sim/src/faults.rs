//! Fault injection (all off by default), so the proxy, the EPP and the gateway can be tested
//! against failing engines: errors, extra latency, streams that stall, dropped KV transfers.
//! Decisions come from a seeded generator, so a run is reproducible.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Fault flags.
#[derive(Debug, Clone, clap::Args)]
pub struct FaultArgs {
    /// Fraction of requests (0..1) answered with an error instead of a completion.
    #[arg(long, default_value_t = 0.0)]
    pub fault_error_rate: f64,
    /// Status of injected errors (503: "The server is overloaded or not ready yet.", 429, 500).
    #[arg(long, default_value_t = 503)]
    pub fault_error_status: u16,
    /// Real-time delay added before every request is handled, ms (not scaled).
    #[arg(long, default_value_t = 0.0)]
    pub fault_extra_latency_ms: f64,
    /// Fraction of streamed responses that stall after their first token.
    #[arg(long, default_value_t = 0.0)]
    pub fault_stall_rate: f64,
    /// How long a stalled stream stalls, ms (real time).
    #[arg(long, default_value_t = 30_000.0)]
    pub fault_stall_ms: f64,
    /// Fraction of KV pulls (prefill side) that are dropped: the decode side's transfer fails.
    #[arg(long, default_value_t = 0.0)]
    pub fault_drop_kv_rate: f64,
    /// Seed of the fault decisions.
    #[arg(long, default_value_t = 0)]
    pub fault_seed: u64,
}

/// Seeded fault decisions.
#[derive(Debug)]
pub struct Faults {
    /// The flags.
    pub args: FaultArgs,
    state: AtomicU64,
}

impl Faults {
    /// From flags.
    pub fn new(args: FaultArgs) -> Self {
        let state = AtomicU64::new(args.fault_seed ^ 0x9e37_79b9_7f4a_7c15);
        Self { args, state }
    }

    /// True with probability `rate` (SplitMix64).
    pub fn roll(&self, rate: f64) -> bool {
        if rate <= 0.0 {
            return false;
        }
        if rate >= 1.0 {
            return true;
        }
        let mut z = self
            .state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - rate
    }

    /// The extra latency to add now, if any.
    pub fn extra_latency(&self) -> Option<Duration> {
        (self.args.fault_extra_latency_ms > 0.0)
            .then(|| Duration::from_secs_f64(self.args.fault_extra_latency_ms / 1e3))
    }

    /// How long this stream stalls after its first token, if it does.
    pub fn stall(&self) -> Option<Duration> {
        self.roll(self.args.fault_stall_rate)
            .then(|| Duration::from_secs_f64(self.args.fault_stall_ms.max(0.0) / 1e3))
    }

    /// The status of an injected error for this request, if any.
    pub fn error(&self) -> Option<u16> {
        self.roll(self.args.fault_error_rate)
            .then_some(self.args.fault_error_status)
    }

    /// Whether this KV pull is dropped.
    pub fn drop_kv(&self) -> bool {
        self.roll(self.args.fault_drop_kv_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        f: FaultArgs,
    }

    #[test]
    fn rates_are_respected_and_reproducible() {
        let args = Wrap::parse_from(["x", "--fault-error-rate", "0.25", "--fault-seed", "3"]).f;
        let a = Faults::new(args.clone());
        let hits = (0..10_000).filter(|_| a.error().is_some()).count();
        assert!((2300..2700).contains(&hits), "{hits}");
        let b = Faults::new(args);
        let c = Faults::new(
            Wrap::parse_from(["x", "--fault-error-rate", "0.25", "--fault-seed", "3"]).f,
        );
        let seq_b: Vec<bool> = (0..100).map(|_| b.error().is_some()).collect();
        let seq_c: Vec<bool> = (0..100).map(|_| c.error().is_some()).collect();
        assert_eq!(seq_b, seq_c);
        let off = Faults::new(Wrap::parse_from(["x"]).f);
        assert!(
            (0..1000).all(|_| off.error().is_none() && off.stall().is_none() && !off.drop_kv())
        );
    }
}
