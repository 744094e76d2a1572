//! One pod's event stream: decode, tell next / duplicate / gap / restart apart, replay, deliver.
//!
//! What the stream allows us to know, in the order it is used:
//!
//! 1. **Sequence going back** (or repeating with other bytes): the publisher restarted.
//! 2. **Timestamps going back** while the sequence goes forward: another instance (each batch
//!    carries the engine's wall-clock `ts`, which one instance only moves forward).
//! 3. **Sequence jumping forward, or any batch after the socket reconnected**: either batches
//!    were lost (a gap) or the pod restarted and its new instance has already passed our last
//!    sequence number. The replay socket tells which: it is asked from our last sequence number;
//!    when it still holds that batch with the bytes we applied, it is the same instance (the
//!    gap is filled from the same answer); when the batch differs or is gone, it is a new
//!    instance: the pod's entries are cleared and the new instance's head is replayed from 0.
//!    Without a replay socket: a jump after a reconnection is taken as a restart (stale entries
//!    are worse than missing ones), a jump without one as a gap.
//!
//! Batches delivered through replay are remembered by sequence number and payload hash, so the
//! live copies of the same batches (queued on the SUB socket while the replay ran) are skipped
//! as duplicates rather than mistaken for a restart.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::replay::{ReplayAnswer, fetch_replay};
use super::{EventHandler, SubscriberConfig};
use crate::events::{DecodeError, KvMessage, decode_message, parse_topic};
use llmd_telemetry::names::kv_cache as names;

/// Recent batches remembered for duplicate detection in steady state.
const RECENT: usize = 1024;

/// Why a replay was asked (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplayReason {
    /// The subscriber started following the pod.
    Start,
    /// A gap in the sequence numbers.
    Gap,
    /// The first batch after the socket reconnected.
    Reconnect,
    /// A restart was recognised: the new instance's head.
    Restart,
}

impl ReplayReason {
    pub(crate) const ALL: [ReplayReason; 4] = [
        ReplayReason::Start,
        ReplayReason::Gap,
        ReplayReason::Reconnect,
        ReplayReason::Restart,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ReplayReason::Start => "start",
            ReplayReason::Gap => "gap",
            ReplayReason::Reconnect => "reconnect",
            ReplayReason::Restart => "restart",
        }
    }
}

/// The last batch applied.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Last {
    seq: u64,
    ts: f64,
    hash: u64,
}

/// What a batch's sequence number (with its timestamp and bytes) means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    /// Nothing seen yet.
    First,
    /// `last + 1`, time forward, no reconnection since.
    Next,
    /// Already applied (through replay).
    Duplicate,
    /// A new instance, for certain.
    Restart { last: u64, why: &'static str },
    /// A jump forward, or the first batch after a reconnection: a gap or a restart.
    Suspect { last: u64 },
}

/// Sequence bookkeeping of one pod.
#[derive(Debug, Default)]
pub(crate) struct SeqState {
    last: Option<Last>,
    recent: VecDeque<(u64, u64)>,
}

impl SeqState {
    pub(crate) fn classify(&self, seq: u64, ts: f64, hash: u64, reconnected: bool) -> Verdict {
        let Some(last) = self.last else {
            return Verdict::First;
        };
        if seq <= last.seq {
            return if self.recent.iter().any(|&(s, h)| s == seq && h == hash) {
                Verdict::Duplicate
            } else {
                Verdict::Restart {
                    last: last.seq,
                    why: "sequence went back",
                }
            };
        }
        if ts < last.ts {
            return Verdict::Restart {
                last: last.seq,
                why: "timestamps went back",
            };
        }
        if seq == last.seq + 1 && !reconnected {
            Verdict::Next
        } else {
            Verdict::Suspect { last: last.seq }
        }
    }

    fn record(&mut self, seq: u64, ts: f64, hash: u64, trim: bool) {
        self.last = Some(Last { seq, ts, hash });
        self.recent.push_back((seq, hash));
        if trim {
            while self.recent.len() > RECENT {
                self.recent.pop_front();
            }
        }
    }

    fn reset(&mut self) {
        self.last = None;
        self.recent.clear();
    }

    fn hash_of(&self, seq: u64) -> Option<u64> {
        self.recent
            .iter()
            .rev()
            .find(|(s, _)| *s == seq)
            .map(|(_, h)| *h)
    }
}

/// The payload hash that identifies a batch's bytes.
fn payload_hash(frames: &[Bytes]) -> u64 {
    frames
        .get(2)
        .map(|p| xxhash_rust::xxh3::xxh3_64(p))
        .unwrap_or(0)
}

/// One pod's stream.
pub(crate) struct PodStream {
    /// The pod's identity.
    pub(crate) pod: String,
    pub(crate) fallback_model: String,
    pub(crate) replay_endpoint: Option<String>,
    pub(crate) handler: Arc<dyn EventHandler>,
    pub(crate) config: SubscriberConfig,
    /// Set when the socket reconnected; the next batch is checked.
    pub(crate) reconnected: bool,
    seq: SeqState,
    logged_decode_error: bool,
}

impl PodStream {
    pub(crate) fn new(
        pod: String,
        fallback_model: String,
        replay_endpoint: Option<String>,
        handler: Arc<dyn EventHandler>,
        config: SubscriberConfig,
    ) -> Self {
        // This pod's stream-health series, at zero until something happens.
        for def in [
            &names::EVENTS_SEQUENCE_GAPS,
            &names::EVENTS_PUBLISHER_RESTARTS,
            &names::EVENTS_SUBSCRIBER_RECONNECTIONS,
            &names::EVENTS_REPLAYED_BATCHES,
        ] {
            metrics::counter!(def.name, "pod" => pod.clone(), "pod_identifier" => pod.clone())
                .increment(0);
        }
        if replay_endpoint.is_some() {
            for reason in ReplayReason::ALL {
                metrics::counter!(names::EVENTS_REPLAY_REQUESTS.name, "pod" => pod.clone(), "pod_identifier" => pod.clone(), "reason" => reason.as_str()).increment(0);
            }
        }
        Self {
            pod,
            fallback_model,
            replay_endpoint,
            handler,
            config,
            reconnected: false,
            seq: SeqState::default(),
            logged_decode_error: false,
        }
    }

    /// At the start of following the pod: everything its replay socket still holds.
    pub(crate) async fn start(&mut self) {
        if self.replay_endpoint.is_none() {
            return;
        }
        if let Some(answer) = self.replay(0, ReplayReason::Start).await {
            let first = answer.batches.first().map(|(s, _)| *s);
            if let Some(first) = first.filter(|&s| s > 0) {
                // The buffer no longer reaches back to 0: those batches are lost for good.
                self.gap(0, first);
            }
            self.deliver_replayed(answer, 0, u64::MAX, 0);
        }
    }

    fn decode_error(&mut self, error: &DecodeError) {
        metrics::counter!(names::EVENTS_DECODE_ERRORS.name, "reason" => error.reason())
            .increment(1);
        if !self.logged_decode_error {
            tracing::warn!(pod = self.pod, %error, "undecodable KV-event message (counted; further ones not logged)");
            self.logged_decode_error = true;
        }
        self.handler.on_decode_error(&self.pod, error);
    }

    fn model_of(&self, msg: &KvMessage) -> String {
        parse_topic(&msg.topic)
            .map(|(_, m)| m.to_owned())
            .unwrap_or_else(|| self.fallback_model.clone())
    }

    /// A live message.
    pub(crate) async fn on_message(&mut self, frames: Vec<Bytes>) {
        let msg = match decode_message(&frames) {
            Ok(m) => m,
            Err(error) => {
                self.decode_error(&error);
                return;
            }
        };
        let model = self.model_of(&msg);
        metrics::counter!(names::EVENTS_MESSAGES_RECEIVED.name, "pod" => self.pod.clone(), "pod_identifier" => self.pod.clone())
            .increment(1);
        count_skipped(&msg);
        let hash = payload_hash(&frames);
        let reconnected = std::mem::take(&mut self.reconnected);
        match self.seq.classify(msg.seq, msg.batch.ts, hash, reconnected) {
            Verdict::Next => {}
            Verdict::Duplicate => return,
            Verdict::First => {
                // Joined after the pod's first batches (or the start replay failed).
                if msg.seq > 0
                    && let Some(answer) = self.replay(0, ReplayReason::Start).await
                {
                    self.deliver_replayed(answer, 0, msg.seq, 0);
                }
            }
            Verdict::Restart { last, why } => self.restart(last, msg.seq, why).await,
            Verdict::Suspect { last } => {
                let reason = if reconnected {
                    ReplayReason::Reconnect
                } else {
                    ReplayReason::Gap
                };
                self.suspect(last, msg.seq, reconnected, reason).await;
            }
        }
        self.handler
            .on_batch(&self.pod, &model, msg.seq, &msg.batch);
        self.seq.record(msg.seq, msg.batch.ts, hash, true);
    }

    /// A jump forward or a batch after a reconnection: gap or restart?
    async fn suspect(&mut self, last: u64, got: u64, reconnected: bool, reason: ReplayReason) {
        let answer = match &self.replay_endpoint {
            Some(_) => self.replay(last, reason).await,
            None => None,
        };
        let Some(answer) = answer else {
            // No replay socket, or it did not answer.
            if got > last + 1 {
                if reconnected {
                    self.restart(last, got, "gap after a reconnection").await;
                } else {
                    self.gap(last + 1, got);
                }
            }
            return;
        };
        let same_instance = match (answer.batches.first(), self.seq.hash_of(last)) {
            (Some((seq, frames)), Some(hash)) => *seq == last && payload_hash(frames) == hash,
            _ => false,
        };
        if same_instance {
            if got > last + 1 {
                self.gap(last + 1, got);
            }
            self.deliver_replayed(answer, last + 1, got, last + 1);
        } else {
            let why = if answer.batches.is_empty() {
                "the replay socket holds nothing"
            } else {
                "the replay socket no longer holds our last batch"
            };
            self.restart(last, got, why).await;
        }
    }

    fn gap(&self, expected: u64, got: u64) {
        metrics::counter!(names::EVENTS_SEQUENCE_GAPS.name, "pod" => self.pod.clone(), "pod_identifier" => self.pod.clone()).increment(1);
        tracing::warn!(pod = self.pod, expected, got, "gap in KV-event sequence");
        self.handler.on_gap(&self.pod, expected, got);
    }

    /// A new instance: clear the pod, then replay the new instance's head (`0..got`).
    async fn restart(&mut self, last: u64, got: u64, why: &'static str) {
        metrics::counter!(names::EVENTS_PUBLISHER_RESTARTS.name, "pod" => self.pod.clone(), "pod_identifier" => self.pod.clone())
            .increment(1);
        tracing::info!(
            pod = self.pod,
            last,
            got,
            why,
            "KV-event publisher restarted; clearing its entries"
        );
        self.handler.on_restart(&self.pod, last, got);
        self.seq.reset();
        if got > 0
            && self.replay_endpoint.is_some()
            && let Some(answer) = self.replay(0, ReplayReason::Restart).await
        {
            self.deliver_replayed(answer, 0, got, 0);
        }
    }

    /// Applies the replayed batches with `from <= seq < to`, in order; reports `expected..to`.
    fn deliver_replayed(&mut self, answer: ReplayAnswer, from: u64, to: u64, expected: u64) {
        let mut recovered = 0u64;
        let mut last_seq = None;
        for (seq, frames) in answer.batches {
            if seq < from || seq >= to || last_seq.is_some_and(|l| seq <= l) {
                continue;
            }
            match decode_message(&frames) {
                Ok(msg) => {
                    let model = if msg.topic.is_empty() {
                        self.fallback_model.clone()
                    } else {
                        self.model_of(&msg)
                    };
                    count_skipped(&msg);
                    self.handler.on_batch(&self.pod, &model, seq, &msg.batch);
                    self.seq
                        .record(seq, msg.batch.ts, payload_hash(&frames), false);
                    recovered += 1;
                    last_seq = Some(seq);
                }
                Err(error) => self.decode_error(&error),
            }
        }
        metrics::counter!(names::EVENTS_REPLAYED_BATCHES.name, "pod" => self.pod.clone(), "pod_identifier" => self.pod.clone())
            .increment(recovered);
        let to = if to == u64::MAX {
            last_seq.map_or(expected, |s| s + 1)
        } else {
            to
        };
        tracing::info!(
            pod = self.pod,
            from = expected,
            to,
            recovered,
            "replayed KV events"
        );
        self.handler.on_replay(&self.pod, expected, to, recovered);
    }

    /// Asks the replay socket for everything from `from`; `None` when it fails.
    async fn replay(&self, from: u64, reason: ReplayReason) -> Option<ReplayAnswer> {
        let endpoint = self.replay_endpoint.as_deref()?;
        metrics::counter!(names::EVENTS_REPLAY_REQUESTS.name, "pod" => self.pod.clone(), "pod_identifier" => self.pod.clone(), "reason" => reason.as_str()).increment(1);
        let started = Instant::now();
        let result = fetch_replay(
            endpoint,
            from,
            &self.config.socket_options(),
            self.config.replay_timeout,
        )
        .await;
        metrics::histogram!(names::EVENTS_REPLAY_DURATION.name)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(answer) => {
                if answer.malformed > 0 {
                    metrics::counter!(names::EVENTS_DECODE_ERRORS.name, "reason" => "replay_frame")
                        .increment(answer.malformed);
                }
                Some(answer)
            }
            Err(error) => {
                metrics::counter!(names::EVENTS_ZMQ_ERRORS.name, "operation" => "replay")
                    .increment(1);
                tracing::warn!(pod = self.pod, endpoint, reason = reason.as_str(), %error, "KV-event replay failed");
                None
            }
        }
    }
}

fn count_skipped(msg: &KvMessage) {
    let skipped = msg.batch.skipped;
    if skipped.unknown_events > 0 {
        metrics::counter!(names::EVENTS_SKIPPED.name, "reason" => "unknown_event")
            .increment(u64::from(skipped.unknown_events));
    }
    if skipped.unknown_fields > 0 {
        metrics::counter!(names::EVENTS_SKIPPED.name, "reason" => "unknown_field")
            .increment(u64::from(skipped.unknown_fields));
    }
    if skipped.malformed_events > 0 {
        metrics::counter!(names::EVENTS_DECODE_ERRORS.name, "reason" => "malformed_event")
            .increment(u64::from(skipped.malformed_events));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_from_sequence_time_and_bytes() {
        let mut s = SeqState::default();
        assert_eq!(s.classify(5, 1.0, 50, false), Verdict::First);
        s.record(5, 1.0, 50, true);
        assert_eq!(s.classify(6, 1.0, 60, false), Verdict::Next);
        assert_eq!(s.classify(6, 1.0, 60, true), Verdict::Suspect { last: 5 });
        assert_eq!(s.classify(9, 2.0, 90, false), Verdict::Suspect { last: 5 });
        // Same batch again (e.g. live copy of a replayed one): a duplicate.
        assert_eq!(s.classify(5, 1.0, 50, false), Verdict::Duplicate);
        // Same number, other bytes, or a lower number: a restart.
        assert!(matches!(
            s.classify(5, 1.0, 51, false),
            Verdict::Restart { last: 5, .. }
        ));
        assert!(matches!(
            s.classify(0, 9.0, 1, false),
            Verdict::Restart { last: 5, .. }
        ));
        // Forward in sequence, back in time: another instance.
        assert!(matches!(
            s.classify(6, 0.5, 60, false),
            Verdict::Restart {
                why: "timestamps went back",
                ..
            }
        ));
        assert_eq!(s.hash_of(5), Some(50));
        s.reset();
        assert_eq!(s.classify(1, 0.0, 0, false), Verdict::First);
    }
}
