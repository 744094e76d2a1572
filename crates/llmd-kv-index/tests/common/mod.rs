//! Shared helpers: a recording event handler around a real `KvIndex`, and waiting.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use llmd_kv_index::events::{DecodeError, EventBatch};
use llmd_kv_index::subscriber::{EventHandler, RejectReason};
use llmd_kv_index::transport::{SocketOptions, SocketType, ZmqSocket};
use llmd_kv_index::{KvIndex, KvIndexConfig};
use parking_lot::Mutex;

/// Something the subscriber reported.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Batch {
        pod: String,
        model: String,
        seq: u64,
        events: usize,
    },
    Gap {
        pod: String,
        expected: u64,
        got: u64,
    },
    Restart {
        pod: String,
        last: u64,
        got: u64,
    },
    DecodeError {
        pod: String,
        reason: &'static str,
    },
    Replay {
        pod: String,
        from: u64,
        to: u64,
        recovered: u64,
    },
    Rejected {
        topic: String,
        reason: RejectReason,
    },
}

/// Applies to a real index and records every notice.
pub struct Recorder {
    pub kv: KvIndex,
    pub notices: Mutex<Vec<Notice>>,
}

impl Recorder {
    pub fn new(block_size: usize) -> Arc<Self> {
        Arc::new(Self {
            kv: KvIndex::new(KvIndexConfig {
                block_size,
                hash_seed: Some("0".into()),
                ..Default::default()
            })
            .unwrap(),
            notices: Mutex::new(Vec::new()),
        })
    }

    pub fn notices(&self) -> Vec<Notice> {
        self.notices.lock().clone()
    }

    pub fn batches_from(&self, pod: &str) -> Vec<u64> {
        self.notices()
            .into_iter()
            .filter_map(|n| match n {
                Notice::Batch { pod: p, seq, .. } if p == pod => Some(seq),
                _ => None,
            })
            .collect()
    }
}

impl EventHandler for Recorder {
    fn on_batch(&self, pod: &str, model: &str, seq: u64, batch: &EventBatch) {
        self.kv.on_batch(pod, model, seq, batch);
        self.notices.lock().push(Notice::Batch {
            pod: pod.into(),
            model: model.into(),
            seq,
            events: batch.events.len(),
        });
    }
    fn on_gap(&self, pod: &str, expected: u64, got: u64) {
        self.notices.lock().push(Notice::Gap {
            pod: pod.into(),
            expected,
            got,
        });
    }
    fn on_restart(&self, pod: &str, last: u64, got: u64) {
        self.kv.on_restart(pod, last, got);
        self.notices.lock().push(Notice::Restart {
            pod: pod.into(),
            last,
            got,
        });
    }
    fn on_decode_error(&self, pod: &str, error: &DecodeError) {
        self.notices.lock().push(Notice::DecodeError {
            pod: pod.into(),
            reason: error.reason(),
        });
    }
    fn on_replay(&self, pod: &str, from: u64, to: u64, recovered: u64) {
        self.notices.lock().push(Notice::Replay {
            pod: pod.into(),
            from,
            to,
            recovered,
        });
    }
    fn on_rejected(&self, topic: &str, reason: RejectReason) {
        self.notices.lock().push(Notice::Rejected {
            topic: topic.into(),
            reason,
        });
    }
}

/// A PUB socket bound on an ephemeral loopback port, and its endpoint.
pub fn bind_pub() -> (ZmqSocket, String) {
    let mut socket = ZmqSocket::new(SocketType::PUB, &SocketOptions::default()).unwrap();
    let ep = socket.bind("tcp://127.0.0.1:0").unwrap();
    (socket, ep)
}

/// A PUB socket connected to `endpoint` (a bound subscriber).
pub fn connect_pub(endpoint: &str) -> ZmqSocket {
    let mut socket = ZmqSocket::new(SocketType::PUB, &SocketOptions::default()).unwrap();
    socket.connect(endpoint).unwrap();
    socket
}

/// Sends one multipart message.
pub async fn send(socket: &mut ZmqSocket, frames: Vec<Vec<u8>>) {
    socket.send(&frames).await.unwrap();
}

/// The fault campaign's 73-byte packet: a ZMTP 3.0 greeting (NULL mechanism) and a long data
/// frame header declaring 2^40 bytes. The `zeromq` crate reserved that much memory on reading
/// the header and aborted ("memory allocation of 1099511693385 bytes failed").
pub fn hostile_packet() -> Vec<u8> {
    let mut p = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0];
    p.extend_from_slice(b"NULL");
    p.resize(64, 0);
    p.push(0x02); // long frame, no MORE, not a command
    p.extend_from_slice(&(1u64 << 40).to_be_bytes());
    assert_eq!(p.len(), 73);
    p
}

/// Polls `cond` every 10 ms for up to 10 s.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
