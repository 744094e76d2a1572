//! The subscriber's own parsing (replay answers, socket-monitor events, topic → known pod) on
//! arbitrary frames: never panics, and a resolved pod is always a registered, non-dialled one.
//! The same checks as the `kv_subscriber_frames` fuzz target, run in every test pass.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use bytes::Bytes;
use llmd_kv_index::events::parse_topic;
use llmd_kv_index::subscriber::{KnownPods, ReplayFrame, host_of, parse_replay_frame};
use llmd_kv_index::transport::MonitorEvent;
use proptest::prelude::*;

const PODS: [(&str, bool); 5] = [
    ("10.0.0.7:8000", false),
    ("10.0.0.8:8000", false),
    ("10.0.0.8:8001", false),
    ("[fd00::1]:8000", false),
    ("10.0.0.9:8000", true),
];

fn frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..24),
        Just(vec![0xff; 8]),
        Just(Vec::new()),
        "kv@(10\\.0\\.0\\.[0-9]|\\[?fd00::1\\]?|pod-[a-z])(:[0-9]{1,5})?@m"
            .prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]
    #[test]
    fn arbitrary_frames_never_panic(frames in proptest::collection::vec(frame(), 0..6)) {
        let frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
        if let ReplayFrame::Batch { seq, frames: f } = parse_replay_frame(&frames) {
            prop_assert_eq!(f[1].as_ref(), &seq.to_be_bytes());
        }
        let _ = MonitorEvent::parse(&frames);
        let mut pods = KnownPods::default();
        for (id, dialled) in PODS {
            pods.insert(id, dialled, id);
        }
        let topic = String::from_utf8_lossy(frames.first().map(|f| f.as_ref()).unwrap_or(b""));
        let _ = host_of(&topic);
        if let Some((segment, _)) = parse_topic(&topic)
            && let Ok((id, value)) = pods.resolve(segment)
        {
            prop_assert_eq!(id, *value);
            prop_assert!(PODS.iter().any(|(p, dialled)| *p == id && !dialled));
        }
    }
}
