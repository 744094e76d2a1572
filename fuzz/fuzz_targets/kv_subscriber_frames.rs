//! What the subscriber parses besides event payloads, from any frames: replay answers,
//! socket-monitor events, and the topic → known-pod resolution of the bound socket. Never
//! panics; a resolved pod is always one that was registered. The input is split into up to 5
//! frames at the positions its first bytes name.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use llmd_kv_index::events::parse_topic;
use llmd_kv_index::subscriber::{KnownPods, ReplayFrame, host_of, parse_replay_frame};
use llmd_kv_index::transport::MonitorEvent;

const PODS: [(&str, bool); 5] = [
    ("10.0.0.7:8000", false),
    ("10.0.0.8:8000", false),
    ("10.0.0.8:8001", false),
    ("[fd00::1]:8000", false),
    ("10.0.0.9:8000", true),
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let n = usize::from(data[0] % 6);
    let mut cuts: Vec<usize> = data[1..4]
        .iter()
        .map(|b| usize::from(*b) % (data.len() - 3))
        .collect();
    cuts.sort_unstable();
    let body = &data[4..];
    let mut frames: Vec<Bytes> = Vec::new();
    let mut start = 0;
    for c in cuts.iter().map(|c| (*c).min(body.len())) {
        frames.push(Bytes::copy_from_slice(&body[start.min(c)..c]));
        start = c;
    }
    frames.push(Bytes::copy_from_slice(&body[start.min(body.len())..]));
    frames.truncate(n);

    if let ReplayFrame::Batch { seq, frames: f } = parse_replay_frame(&frames) {
        assert_eq!(f[1].as_ref(), &seq.to_be_bytes());
    }
    let _ = MonitorEvent::parse(&frames);

    let mut pods = KnownPods::default();
    for (id, dialled) in PODS {
        pods.insert(id, dialled, id);
    }
    let topic = String::from_utf8_lossy(frames.first().map(|f| f.as_ref()).unwrap_or(b""));
    let _ = host_of(&topic);
    if let Some((segment, _model)) = parse_topic(&topic)
        && let Ok((id, value)) = pods.resolve(segment)
    {
        assert_eq!(id, *value);
        assert!(PODS.iter().any(|(p, dialled)| *p == id && !dialled));
    }
});
