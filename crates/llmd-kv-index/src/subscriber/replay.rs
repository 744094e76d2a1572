//! vLLM's replay socket: a ROUTER that answers `[b"", start_seq (u64 BE)]` from a DEALER with
//! every buffered batch from `start_seq` on, then an end marker (`vllm/distributed/kv_events.py`,
//! `_service_replay`).
//!
//! | vLLM | one batch, as a DEALER sees it | end marker |
//! |---|---|---|
//! | >= 0.27 | `[b"", topic, seq, payload]` | `[b"", b"", ff*8, b""]` |
//! | 0.11 - 0.25 | `[b"", seq, payload]` | `[b"", ff*8, b""]` |

use std::time::Duration;

use bytes::Bytes;

use crate::transport::{SocketError, SocketOptions, SocketType, ZmqSocket};

/// The end marker's sequence (`-1` as a signed 64-bit big-endian value).
pub const REPLAY_END: u64 = u64::MAX;

/// One frame set of a replay answer, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayFrame {
    /// A buffered batch as `[topic, seq, payload]` (topic empty for vLLM < 0.27).
    Batch {
        /// Its sequence number.
        seq: u64,
        /// `[topic, seq, payload]`, ready for [`crate::events::decode_message`].
        frames: [Bytes; 3],
    },
    /// The end marker.
    End,
    /// Anything else (skipped).
    Malformed,
}

/// Parses one replay answer (with or without the DEALER's empty delimiter frame).
pub fn parse_replay_frame(frames: &[Bytes]) -> ReplayFrame {
    let frames = match frames.split_first() {
        Some((first, rest)) if first.is_empty() && (rest.len() == 2 || rest.len() == 3) => rest,
        _ => frames,
    };
    let (topic, seq_frame, payload) = match frames {
        [topic, seq, payload] => (topic.clone(), seq.clone(), payload.clone()),
        [seq, payload] => (Bytes::new(), seq.clone(), payload.clone()),
        _ => return ReplayFrame::Malformed,
    };
    let Ok(seq_bytes) = <[u8; 8]>::try_from(seq_frame.as_ref()) else {
        return ReplayFrame::Malformed;
    };
    match u64::from_be_bytes(seq_bytes) {
        REPLAY_END => ReplayFrame::End,
        seq => ReplayFrame::Batch {
            seq,
            frames: [topic, seq_frame, payload],
        },
    }
}

/// What a replay returned.
#[derive(Debug, Default)]
pub struct ReplayAnswer {
    /// `(seq, [topic, seq, payload])`, in the order served.
    pub batches: Vec<(u64, [Bytes; 3])>,
    /// Frame sets that were neither a batch nor the end marker.
    pub malformed: u64,
}

/// Errors of a replay request.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A socket call failed.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// No end marker in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Asks `endpoint` for every buffered batch from `from` on, within `timeout`.
pub async fn fetch_replay(
    endpoint: &str,
    from: u64,
    options: &SocketOptions,
    timeout: Duration,
) -> Result<ReplayAnswer, ReplayError> {
    let run = async {
        let mut socket = ZmqSocket::new(SocketType::DEALER, options)?;
        socket.connect(endpoint)?;
        socket.send(&[&[][..], &from.to_be_bytes()[..]]).await?;
        let mut answer = ReplayAnswer::default();
        loop {
            let received = socket.recv().await?;
            match parse_replay_frame(&received.frames) {
                ReplayFrame::Batch { seq, frames } => answer.batches.push((seq, frames)),
                ReplayFrame::End => return Ok(answer),
                ReplayFrame::Malformed => answer.malformed += 1,
            }
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| ReplayError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x: &[u8]) -> Bytes {
        Bytes::copy_from_slice(x)
    }

    #[test]
    fn both_reply_layouts_and_the_end_markers() {
        let seq = 7u64.to_be_bytes();
        let new = [b(b""), b(b"kv@p@m"), b(&seq), b(b"\x93")];
        assert_eq!(
            parse_replay_frame(&new),
            ReplayFrame::Batch {
                seq: 7,
                frames: [b(b"kv@p@m"), b(&seq), b(b"\x93")]
            }
        );
        let old = [b(b""), b(&seq), b(b"\x93")];
        assert_eq!(
            parse_replay_frame(&old),
            ReplayFrame::Batch {
                seq: 7,
                frames: [b(b""), b(&seq), b(b"\x93")]
            }
        );
        assert_eq!(
            parse_replay_frame(&[b(b""), b(b""), b(&[0xff; 8]), b(b"")]),
            ReplayFrame::End
        );
        assert_eq!(
            parse_replay_frame(&[b(b""), b(&[0xff; 8]), b(b"")]),
            ReplayFrame::End
        );
        assert_eq!(
            parse_replay_frame(&[b(b""), b(b"t"), b(&[1, 2]), b(b"")]),
            ReplayFrame::Malformed
        );
        assert_eq!(parse_replay_frame(&[]), ReplayFrame::Malformed);
        assert_eq!(parse_replay_frame(&[b(b"")]), ReplayFrame::Malformed);
    }
}
