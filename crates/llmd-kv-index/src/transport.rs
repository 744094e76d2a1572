//! ZMQ sockets for the KV-event stream: libzmq (the `zmq` crate; `zmq-sys` builds libzmq 4.3
//! from source and links it statically) driven by tokio, with the limits every socket of this
//! project must have.
//!
//! Why libzmq and not the pure-Rust `zeromq` crate (0.7, the newest release): that codec reserves
//! a frame's declared length before reading it, so a 73-byte packet (a ZMTP greeting and a frame
//! header declaring 2^40 bytes) aborts the process; it has no maximum message size, no way to cap
//! its reconnect backoff (it grows to 30 s), no socket monitor and no peer address. libzmq, the
//! implementation vLLM's publisher itself runs (pyzmq), has all four: `ZMQ_MAXMSGSIZE` is checked
//! when a frame header is decoded, before anything is allocated, and the connection is dropped.
//!
//! Every socket made here gets [`SocketOptions`]: a maximum message size, linger 0, a reconnect
//! interval that starts at 100 ms and is capped at 1 s, a TCP connect timeout, heartbeats (ZMTP
//! PING/PONG, so a dead peer is noticed without waiting for TCP), and a high-water mark.
//!
//! Readiness: libzmq exposes one file descriptor per socket (`ZMQ_FD`) that signals, edge-style,
//! that the socket's state may have changed; the real state is in `ZMQ_EVENTS`. [`ZmqSocket`]
//! registers that descriptor with tokio and always tries the operation before waiting, and
//! clears tokio's readiness only with the guard taken before the attempt (so a signal that
//! arrives in between is never lost). All calls use `ZMQ_DONTWAIT`: nothing blocks the runtime.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

pub use zmq::SocketType;

/// Largest message (per frame) a socket accepts by default: 16 MiB. A vLLM batch is one engine
/// step's events; a step that stores a 128k-token prompt is about 0.6 MB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;
/// First reconnect delay.
pub const DEFAULT_RECONNECT_INTERVAL: Duration = Duration::from_millis(100);
/// Longest reconnect delay: a restarted pod is reconnected within about a second.
pub const DEFAULT_RECONNECT_INTERVAL_MAX: Duration = Duration::from_secs(1);
/// ZMTP heartbeat interval (a peer silent for 3 intervals is dropped and reconnected).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Frames kept of one message; further frames are read and dropped (a KV-event message has 3,
/// a replay reply 4 or 5).
pub const MAX_FRAMES: usize = 8;

/// Limits and timers applied to a socket before it binds or connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    /// Largest inbound message frame (`ZMQ_MAXMSGSIZE`); a peer that announces more is
    /// disconnected before anything is allocated.
    pub max_message_bytes: usize,
    /// First reconnect delay (`ZMQ_RECONNECT_IVL`).
    pub reconnect_interval: Duration,
    /// Longest reconnect delay (`ZMQ_RECONNECT_IVL_MAX`): the backoff doubles up to this.
    pub reconnect_interval_max: Duration,
    /// TCP connect timeout (`ZMQ_CONNECT_TIMEOUT`).
    pub connect_timeout: Duration,
    /// ZMTP heartbeat interval; the peer is dropped after 3 intervals without traffic.
    pub heartbeat: Option<Duration>,
    /// Messages queued per direction (`ZMQ_RCVHWM`, `ZMQ_SNDHWM`).
    pub high_water_mark: i32,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            reconnect_interval: DEFAULT_RECONNECT_INTERVAL,
            reconnect_interval_max: DEFAULT_RECONNECT_INTERVAL_MAX,
            connect_timeout: Duration::from_secs(2),
            heartbeat: Some(DEFAULT_HEARTBEAT),
            high_water_mark: 10_000,
        }
    }
}

/// A ZMQ call that failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// libzmq refused the operation.
    #[error("ZMQ {operation}: {source}")]
    Zmq {
        /// What was attempted.
        operation: &'static str,
        /// libzmq's error.
        #[source]
        source: zmq::Error,
    },
    /// Registering the socket's descriptor with the runtime failed.
    #[error("ZMQ socket readiness: {0}")]
    Io(#[from] std::io::Error),
}

fn zmq_err(operation: &'static str) -> impl FnOnce(zmq::Error) -> SocketError {
    move |source| SocketError::Zmq { operation, source }
}

/// The process's libzmq context (one I/O thread). Note libzmq's default of 1,023 sockets per
/// context: a dialled pod uses three (SUB, its monitor and the monitor's peer).
pub fn context() -> &'static zmq::Context {
    static CONTEXT: OnceLock<zmq::Context> = OnceLock::new();
    CONTEXT.get_or_init(zmq::Context::new)
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// `ZMQ_FD` of a socket, for tokio's reactor.
#[derive(Debug)]
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// One message as received: its frames and, on TCP, the peer's IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The frames (at most [`MAX_FRAMES`]).
    pub frames: Vec<Bytes>,
    /// Frames that were dropped beyond [`MAX_FRAMES`].
    pub dropped_frames: usize,
    /// libzmq's `Peer-Address` property (the sender's IP), when the transport has one.
    pub peer_address: Option<String>,
}

/// A libzmq socket with async `recv`/`send`. Must be created inside a tokio runtime.
pub struct ZmqSocket {
    // Declared first so it is dropped (deregistered) before the socket closes its descriptor.
    fd: AsyncFd<Fd>,
    socket: zmq::Socket,
}

impl std::fmt::Debug for ZmqSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqSocket")
            .field("type", &self.socket.get_socket_type().ok())
            .finish()
    }
}

impl ZmqSocket {
    /// A socket of `kind` with `options` applied.
    pub fn new(kind: SocketType, options: &SocketOptions) -> Result<Self, SocketError> {
        let socket = context().socket(kind).map_err(zmq_err("socket"))?;
        let max = i64::try_from(options.max_message_bytes).unwrap_or(i64::MAX);
        socket.set_maxmsgsize(max).map_err(zmq_err("maxmsgsize"))?;
        socket.set_linger(0).map_err(zmq_err("linger"))?;
        socket
            .set_reconnect_ivl(millis(options.reconnect_interval))
            .map_err(zmq_err("reconnect_ivl"))?;
        socket
            .set_reconnect_ivl_max(millis(options.reconnect_interval_max))
            .map_err(zmq_err("reconnect_ivl_max"))?;
        socket
            .set_connect_timeout(millis(options.connect_timeout))
            .map_err(zmq_err("connect_timeout"))?;
        socket
            .set_rcvhwm(options.high_water_mark)
            .map_err(zmq_err("rcvhwm"))?;
        socket
            .set_sndhwm(options.high_water_mark)
            .map_err(zmq_err("sndhwm"))?;
        if let Some(hb) = options.heartbeat {
            socket
                .set_heartbeat_ivl(millis(hb))
                .map_err(zmq_err("heartbeat_ivl"))?;
            socket
                .set_heartbeat_timeout(millis(hb * 3))
                .map_err(zmq_err("heartbeat_timeout"))?;
        }
        let fd = socket.get_fd().map_err(zmq_err("fd"))?;
        // SAFETY: `ZMQ_FD` is a valid descriptor owned by `socket` (libzmq's signaler), open
        // until the socket is closed. `Self` owns both and declares `fd` first, so the
        // registration is dropped before `socket` closes the descriptor; nothing else closes it.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register_with_interest(Fd(fd), Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Self { fd, socket })
    }

    /// Binds; returns the bound endpoint (with the real port when port 0 or `*` was asked).
    pub fn bind(&mut self, endpoint: &str) -> Result<String, SocketError> {
        self.socket.bind(endpoint).map_err(zmq_err("bind"))?;
        Ok(self
            .socket
            .get_last_endpoint()
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| endpoint.to_owned()))
    }

    /// Connects (libzmq connects in the background and reconnects by itself).
    pub fn connect(&mut self, endpoint: &str) -> Result<(), SocketError> {
        self.socket.connect(endpoint).map_err(zmq_err("connect"))
    }

    /// Drops the connection (and libzmq's reconnection) to `endpoint`.
    pub fn disconnect(&mut self, endpoint: &str) -> Result<(), SocketError> {
        self.socket
            .disconnect(endpoint)
            .map_err(zmq_err("disconnect"))
    }

    /// SUB: receive messages whose first frame starts with `prefix`.
    pub fn subscribe(&mut self, prefix: &[u8]) -> Result<(), SocketError> {
        self.socket
            .set_subscribe(prefix)
            .map_err(zmq_err("subscribe"))
    }

    /// Starts libzmq's monitor for `events` (a mask of `MonitorEvent::*`); returns the socket
    /// the events arrive on (parse them with [`MonitorEvent::parse`]). Call before connecting.
    pub fn monitor(&mut self, events: u16) -> Result<ZmqSocket, SocketError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let endpoint = format!(
            "inproc://llmd-monitor-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.socket
            .monitor(&endpoint, i32::from(events))
            .map_err(zmq_err("monitor"))?;
        let mut pair = ZmqSocket::new(SocketType::PAIR, &SocketOptions::default())?;
        pair.connect(&endpoint)?;
        Ok(pair)
    }

    /// The next message.
    pub async fn recv(&mut self) -> Result<Received, SocketError> {
        loop {
            if let Some(m) = try_recv(&self.socket)? {
                return Ok(m);
            }
            let mut guard = self.fd.readable().await?;
            if let Some(m) = try_recv(&self.socket)? {
                return Ok(m);
            }
            // A receive may leave libzmq's command mailbox unprocessed (it throttles command
            // processing), and then no new edge comes on `ZMQ_FD`. Reading `ZMQ_EVENTS`
            // processes every pending command: only when it then says "nothing to read" is it
            // safe to wait for the descriptor.
            if !self.readable_now()? {
                guard.clear_ready();
            }
        }
    }

    /// `ZMQ_EVENTS` has `POLLIN` (after processing libzmq's pending commands).
    fn readable_now(&self) -> Result<bool, SocketError> {
        Ok(self
            .socket
            .get_events()
            .map_err(zmq_err("events"))?
            .contains(zmq::POLLIN))
    }

    /// Sends one multipart message. PUB drops it at the high-water mark or without
    /// subscribers, ROUTER when the peer is gone (as libzmq does); DEALER waits for room.
    pub async fn send<B: AsRef<[u8]>>(&mut self, frames: &[B]) -> Result<(), SocketError> {
        let Some((last, init)) = frames.split_last() else {
            return Ok(());
        };
        let mut first = true;
        for (frame, more) in init
            .iter()
            .map(|f| (f, true))
            .chain(std::iter::once((last, false)))
        {
            let flags = zmq::DONTWAIT | if more { zmq::SNDMORE } else { 0 };
            loop {
                match self.socket.send(frame.as_ref(), flags) {
                    Ok(()) => break,
                    // Once the first frame is accepted, libzmq accepts the rest.
                    Err(zmq::Error::EAGAIN) if first => {
                        let mut guard = self.fd.readable().await?;
                        let writable = self
                            .socket
                            .get_events()
                            .map_err(zmq_err("events"))?
                            .contains(zmq::POLLOUT);
                        if !writable {
                            guard.clear_ready();
                        }
                    }
                    Err(source) => {
                        return Err(SocketError::Zmq {
                            operation: "send",
                            source,
                        });
                    }
                }
            }
            first = false;
        }
        Ok(())
    }
}

fn try_recv(socket: &zmq::Socket) -> Result<Option<Received>, SocketError> {
    let mut msg = zmq::Message::new();
    match socket.recv(&mut msg, zmq::DONTWAIT) {
        Ok(()) => {}
        Err(zmq::Error::EAGAIN) => return Ok(None),
        Err(source) => {
            return Err(SocketError::Zmq {
                operation: "recv",
                source,
            });
        }
    }
    let peer_address = msg.gets("Peer-Address").map(str::to_owned);
    let mut frames = vec![Bytes::copy_from_slice(&msg)];
    let mut dropped_frames = 0;
    let mut more = msg.get_more();
    // The parts of a multipart message arrive together: the rest are already here.
    while more {
        let mut part = zmq::Message::new();
        socket
            .recv(&mut part, zmq::DONTWAIT)
            .map_err(zmq_err("recv"))?;
        more = part.get_more();
        if frames.len() < MAX_FRAMES {
            frames.push(Bytes::copy_from_slice(&part));
        } else {
            dropped_frames += 1;
        }
    }
    Ok(Some(Received {
        frames,
        dropped_frames,
        peer_address,
    }))
}

/// One event from libzmq's socket monitor (`zmq_socket_monitor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorEvent {
    /// The event (one of the `MonitorEvent::*` bits).
    pub event: u16,
    /// Its value (an fd, an errno or a reconnect interval in ms, by event).
    pub value: u32,
    /// The endpoint it concerns.
    pub address: String,
}

impl MonitorEvent {
    /// TCP connection established (before the ZMTP handshake).
    pub const CONNECTED: u16 = 0x0001;
    /// A connect attempt failed; `value` is the next retry interval (ms).
    pub const CONNECT_RETRIED: u16 = 0x0004;
    /// A connection was accepted on a bound socket.
    pub const ACCEPTED: u16 = 0x0020;
    /// A session ended.
    pub const DISCONNECTED: u16 = 0x0200;
    /// The ZMTP handshake failed (bad greeting, oversized or unexpected frame, ...).
    pub const HANDSHAKE_FAILED_NO_DETAIL: u16 = 0x0800;
    /// The ZMTP handshake completed: messages can flow.
    pub const HANDSHAKE_SUCCEEDED: u16 = 0x1000;
    /// The handshake failed on a protocol error.
    pub const HANDSHAKE_FAILED_PROTOCOL: u16 = 0x2000;

    /// Parses libzmq 4.x's two-frame event: `[u16 LE event, u32 LE value]`, `[address]`.
    pub fn parse<B: AsRef<[u8]>>(frames: &[B]) -> Option<Self> {
        let head = frames.first()?.as_ref();
        let event = u16::from_le_bytes(head.get(0..2)?.try_into().ok()?);
        let value = u32::from_le_bytes(head.get(2..6)?.try_into().ok()?);
        let address = frames
            .get(1)
            .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
            .unwrap_or_default();
        Some(Self {
            event,
            value,
            address,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn monitor_events_parse_and_reject_short_input() {
        let head = [0x00u8, 0x10, 7, 0, 0, 0];
        assert_eq!(
            MonitorEvent::parse(&[&head[..], b"tcp://127.0.0.1:5557"]),
            Some(MonitorEvent {
                event: MonitorEvent::HANDSHAKE_SUCCEEDED,
                value: 7,
                address: "tcp://127.0.0.1:5557".into()
            })
        );
        assert_eq!(MonitorEvent::parse(&[&head[..5]]), None);
        assert_eq!(MonitorEvent::parse::<&[u8]>(&[]), None);
    }

    #[tokio::test]
    async fn messages_cross_a_pair_of_sockets_with_the_peer_address() {
        let options = SocketOptions::default();
        let mut sub = ZmqSocket::new(SocketType::SUB, &options).unwrap();
        sub.subscribe(b"").unwrap();
        let endpoint = sub.bind("tcp://127.0.0.1:0").unwrap();
        assert!(endpoint.starts_with("tcp://127.0.0.1:"), "{endpoint}");
        let mut publisher = ZmqSocket::new(SocketType::PUB, &options).unwrap();
        publisher.connect(&endpoint).unwrap();
        let got = loop {
            publisher.send(&[&b"kv@a@m"[..], b"x"]).await.unwrap();
            if let Ok(m) = tokio::time::timeout(Duration::from_millis(50), sub.recv()).await {
                break m.unwrap();
            }
        };
        assert_eq!(got.frames, vec![Bytes::from("kv@a@m"), Bytes::from("x")]);
        assert_eq!(got.peer_address.as_deref(), Some("127.0.0.1"));
    }
}
