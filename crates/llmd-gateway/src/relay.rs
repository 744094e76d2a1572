//! The response phase: the upstream's headers through the EPP, then its body relayed to the
//! client, through the EPP (`FULL_DUPLEX_STREAMED`: every chunk is sent to the EPP and what it
//! hands back goes to the client) or passed through.
//!
//! The relay of one response is one state machine ([`Relay`]) polled by the client's
//! connection: it reads the upstream, sends chunks to the EPP and reads the EPP's answers
//! concurrently, so neither side waits on the other's silence. Timing:
//! - a timer runs only while an answer of the EPP is outstanding: armed when a chunk is sent,
//!   stopped by the next answer (re-armed instead once the end of the body was sent and not
//!   yet answered). A silent upstream (a queued request, a long prefill) is never an EPP
//!   timeout. (Envoy runs no message timer at all in `FULL_DUPLEX_STREAMED` mode.)
//! - when the EPP fails or its timer fires, the rest of the response passes through untouched:
//!   the chunks it had not answered first, then the upstream's (`epp_response_phase`). An EPP
//!   that rewrote or regrouped chunks before failing may leave a gap or a repeat at that seam.
//!
//! A failure that the client must not take for a complete answer cuts the client's stream (the
//! body ends in an error, see [`crate::access`]): the upstream failing mid-body
//! (`upstream_cut`), or the EPP replacing a response it had already started (`epp_cut`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use llmd_wire::error_chain::chain;
use llmd_wire::ext_proc::{BodyAnswer, BodyAnswers, BodySender, Immediate, Stream};
use llmd_wire::headers::strip_hop_by_hop;
use tokio::time::Instant;

use crate::failure::{self, Reason};

/// The client's response for an upstream response; `stream` is the EPP's, when the response
/// goes through it.
pub(crate) async fn respond(
    upstream: http::Response<Incoming>,
    stream: Option<Box<Stream>>,
    request_id: &Arc<str>,
) -> Response {
    let (mut parts, body) = upstream.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let relay = Relay::new(body, request_id.clone());
    let Some(mut stream) = stream else {
        return Response::from_parts(parts, relay.into_body());
    };
    match stream
        .response_headers(parts.status, &mut parts.headers)
        .await
    {
        Ok(None) => {}
        Ok(Some(immediate)) => return immediate_response(immediate),
        Err(e) => {
            failure::record(request_id, Reason::EppResponsePhase, &chain(&e));
            return Response::from_parts(parts, relay.into_body());
        }
    }
    // The EPP may change the body's length.
    parts.headers.remove(header::CONTENT_LENGTH);
    let timeout = stream.timeout();
    let (sender, answers) = (*stream).into_body();
    Response::from_parts(parts, relay.through(sender, answers, timeout).into_body())
}

/// An `ImmediateResponse` as the client's answer.
pub(crate) fn immediate_response(i: Immediate) -> Response {
    let mut out = Response::new(Body::from(i.body));
    *out.status_mut() = i.status;
    *out.headers_mut() = i.headers;
    out
}

/// The relay of one response body.
struct Relay {
    upstream: Incoming,
    upstream_done: bool,
    mode: Mode,
    /// Chunks to send to the client before anything else (after a fall back to pass-through).
    backlog: VecDeque<Bytes>,
    request_id: Arc<str>,
}

enum Mode {
    Epp(Box<EppLeg>),
    PassThrough,
    Done,
}

/// The EPP's side of the relay.
struct EppLeg {
    sender: BodySender,
    answers: BodyAnswers,
    timeout: Duration,
    /// An upstream chunk read and not yet sent to the EPP (`true`: the end of the body).
    to_send: Option<(Bytes, bool)>,
    /// Chunks sent and not yet answered, oldest first.
    sent: VecDeque<(Bytes, bool)>,
    end_sent: bool,
    /// The EPP answered the end of the body.
    ended: bool,
    /// When the outstanding answer is overdue; `None`: nothing outstanding.
    deadline: Option<Instant>,
}

/// What one step of the EPP leg produced.
enum Step {
    Emit(Bytes),
    Continue,
    End,
    UpstreamCut(String),
    EppFailed(String),
    EppCut(String),
}

/// One thing that happened while the EPP leg waited.
enum Event {
    Answer(Result<Option<BodyAnswer>, llmd_wire::ext_proc::ExtProcError>),
    Sent,
    SendFailed(llmd_wire::ext_proc::ExtProcError),
    Upstream(Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>),
    Overdue,
}

impl Relay {
    fn new(upstream: Incoming, request_id: Arc<str>) -> Self {
        Self {
            upstream,
            upstream_done: false,
            mode: Mode::PassThrough,
            backlog: VecDeque::new(),
            request_id,
        }
    }

    fn through(mut self, sender: BodySender, answers: BodyAnswers, timeout: Duration) -> Self {
        self.mode = Mode::Epp(Box::new(EppLeg {
            sender,
            answers,
            timeout,
            to_send: None,
            sent: VecDeque::new(),
            end_sent: false,
            ended: false,
            deadline: None,
        }));
        self
    }

    fn into_body(self) -> Body {
        Body::from_stream(futures::stream::unfold(self, |mut relay| async move {
            relay.next().await.map(|item| (item, relay))
        }))
    }

    /// The next chunk for the client; `None` at the end, an error to cut the stream.
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if let Some(chunk) = self.backlog.pop_front() {
                return Some(Ok(chunk));
            }
            let step = match &mut self.mode {
                Mode::Done => return None,
                Mode::PassThrough => return self.pass_through().await,
                Mode::Epp(leg) => leg.step(&mut self.upstream, &mut self.upstream_done).await,
            };
            match step {
                Step::Emit(chunk) => return Some(Ok(chunk)),
                Step::Continue => {}
                Step::End => {
                    self.mode = Mode::Done;
                    return None;
                }
                Step::UpstreamCut(why) => return Some(Err(self.cut(Reason::UpstreamCut, &why))),
                Step::EppCut(why) => return Some(Err(self.cut(Reason::EppCut, &why))),
                Step::EppFailed(why) => {
                    failure::record(&self.request_id, Reason::EppResponsePhase, &why);
                    if let Mode::Epp(leg) = std::mem::replace(&mut self.mode, Mode::PassThrough) {
                        let EppLeg { sent, to_send, .. } = *leg;
                        self.backlog = sent
                            .into_iter()
                            .chain(to_send)
                            .filter(|(chunk, _)| !chunk.is_empty())
                            .map(|(chunk, _)| chunk)
                            .collect();
                    }
                }
            }
        }
    }

    async fn pass_through(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        while !self.upstream_done {
            match self.upstream.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        return Some(Ok(data));
                    }
                }
                Some(Err(e)) => return Some(Err(self.cut(Reason::UpstreamCut, &chain(&e)))),
                None => self.upstream_done = true,
            }
        }
        self.mode = Mode::Done;
        None
    }

    fn cut(&mut self, reason: Reason, why: &str) -> std::io::Error {
        failure::record(&self.request_id, reason, why);
        self.mode = Mode::Done;
        std::io::Error::other(format!("{}: {why}", reason.label()))
    }
}

impl EppLeg {
    async fn step(&mut self, upstream: &mut Incoming, upstream_done: &mut bool) -> Step {
        if self.ended {
            return Step::End;
        }
        let deadline = self.deadline;
        let event = tokio::select! {
            biased;
            answer = self.answers.next() => Event::Answer(answer),
            room = self.sender.reserve(), if self.to_send.is_some() => match room {
                Ok(permit) => {
                    if let Some((chunk, end)) = self.to_send.take() {
                        permit.send(&chunk, end);
                        self.sent.push_back((chunk, end));
                        self.end_sent |= end;
                        self.deadline = Some(Instant::now() + self.timeout);
                    }
                    Event::Sent
                }
                Err(e) => Event::SendFailed(e),
            },
            frame = upstream.frame(), if self.to_send.is_none() && !*upstream_done => {
                Event::Upstream(frame)
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                if deadline.is_some() => Event::Overdue,
        };
        match event {
            Event::Answer(answer) => self.on_answer(answer),
            Event::SendFailed(e) => Step::EppFailed(chain(&e)),
            Event::Sent => Step::Continue,
            Event::Upstream(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    self.to_send = Some((data, false));
                }
                Step::Continue
            }
            Event::Upstream(Some(Err(e))) => Step::UpstreamCut(chain(&e)),
            Event::Upstream(None) => {
                *upstream_done = true;
                self.to_send = Some((Bytes::new(), true));
                Step::Continue
            }
            Event::Overdue => Step::EppFailed(format!(
                "no answer to a response-body chunk within {:?}",
                self.timeout
            )),
        }
    }

    fn on_answer(
        &mut self,
        answer: Result<Option<BodyAnswer>, llmd_wire::ext_proc::ExtProcError>,
    ) -> Step {
        let answer = match answer {
            Err(e) => return Step::EppFailed(chain(&e)),
            Ok(None) => return Step::EppFailed("the EPP ended the stream mid-response".into()),
            Ok(Some(a)) => a,
        };
        let original = self.sent.pop_front();
        let answered_end = match &answer {
            BodyAnswer::Streamed { end_of_stream, .. } => *end_of_stream,
            BodyAnswer::Trailers => true,
            _ => original.as_ref().is_some_and(|(_, end)| *end),
        };
        self.ended = answered_end;
        // The EPP answered: its timer stops, unless the end of the body is still unanswered.
        self.deadline = (self.end_sent && !answered_end).then(|| Instant::now() + self.timeout);
        let chunk = match answer {
            BodyAnswer::Streamed { body, .. } | BodyAnswer::Replaced(body) => body,
            BodyAnswer::Unchanged => original.map(|(chunk, _)| chunk).unwrap_or_default(),
            BodyAnswer::Cleared | BodyAnswer::Trailers => Bytes::new(),
            BodyAnswer::Immediate(i) => {
                return Step::EppCut(format!(
                    "the EPP replaced a response already started ({} {})",
                    i.status, i.details
                ));
            }
        };
        if !chunk.is_empty() {
            Step::Emit(chunk)
        } else if answered_end {
            Step::End
        } else {
            Step::Continue
        }
    }
}
