//! A scripted engine for unit tests: answers each call per a script (head
//! status or error, body chunks, delays, a broken stream, a hang) and logs
//! what the gateway did (which calls, with what, and when each was answered,
//! read to its end or dropped). Runs on tokio's clock, so tests pause time.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body::{Body, Frame};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::{BodyError, CallIds, EngineClient};
use crate::error::{ErrorKind, GatewayError, Leg};

/// How a call's head is answered.
#[derive(Debug, Clone)]
enum Head {
    Status(u16),
    Connect,
    Transport,
    Hang,
}

/// One step of a reply's body.
#[derive(Debug, Clone)]
pub enum Step {
    Chunk(Bytes),
    Wait(Duration),
    /// The stream breaks (a transport error).
    Break,
    /// Nothing more, ever (the engine stalls).
    Hang,
}

/// The answer to one call.
#[derive(Debug, Clone)]
pub struct Reply {
    head_after: Duration,
    head: Head,
    headers: Vec<(&'static str, String)>,
    body: Vec<Step>,
}

impl Reply {
    /// A 200 with these body steps.
    pub fn ok(body: Vec<Step>) -> Self {
        Self::status(200, body)
    }

    pub fn status(status: u16, body: Vec<Step>) -> Self {
        Self {
            head_after: Duration::ZERO,
            head: Head::Status(status),
            headers: Vec::new(),
            body,
        }
    }

    /// The TCP connect fails.
    pub fn connect_error() -> Self {
        Self {
            head: Head::Connect,
            ..Self::ok(vec![])
        }
    }

    /// The connection breaks before the head.
    pub fn transport_error() -> Self {
        Self {
            head: Head::Transport,
            ..Self::ok(vec![])
        }
    }

    /// The head never comes.
    pub fn hang() -> Self {
        Self {
            head: Head::Hang,
            ..Self::ok(vec![])
        }
    }

    /// The head carries this header.
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    /// The head (or the error) comes after `d`.
    pub fn after(mut self, d: Duration) -> Self {
        self.head_after = d;
        self
    }
}

/// A chunk step from text.
pub fn chunk(s: &str) -> Step {
    Step::Chunk(Bytes::copy_from_slice(s.as_bytes()))
}

/// What happened to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Sent,
    Head,
    /// The body was read to its end.
    Ended,
    /// Dropped before its end (the gateway cancelled it).
    Dropped,
    /// The scripted stream broke (`Step::Break`).
    Broken,
}

/// One call the gateway made.
#[derive(Debug, Clone)]
pub struct Call {
    pub leg: Leg,
    pub url: String,
    pub path: String,
    /// `X-Request-Id` (the transfer id in PD mode).
    pub upstream_id: String,
    pub request_id: String,
    /// `x-baton-slo`, when the call carried one.
    pub slo: Option<String>,
    pub body: Bytes,
    /// What happened, when.
    pub events: Vec<(Event, Instant)>,
}

impl Call {
    pub fn at(&self, e: Event) -> Option<Instant> {
        self.events.iter().find(|(x, _)| *x == e).map(|(_, t)| *t)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("engine call body is JSON")
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Replies per leg, in call order; a leg with none left answers 500.
    scripts: HashMap<Leg, VecDeque<Reply>>,
    calls: Vec<Call>,
}

/// The scripted engine (cheap to clone: shares one script and log).
#[derive(Debug, Clone, Default)]
pub struct ScriptedEngine {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
}

impl ScriptedEngine {
    /// Calls of `leg` get these replies, in order.
    pub fn script(&self, leg: Leg, replies: impl IntoIterator<Item = Reply>) {
        self.lock().scripts.entry(leg).or_default().extend(replies);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls of one leg.
    pub fn calls_of(&self, leg: Leg) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.leg == leg).collect()
    }

    /// Waits until `f` holds for the calls (or panics after `limit` of
    /// tokio time: on a paused clock that means "never happened").
    pub async fn wait_until(&self, limit: Duration, what: &str, f: impl Fn(&[Call]) -> bool) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if f(&self.lock().calls) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            panic!("timed out waiting for: {what}; calls: {:#?}", self.calls());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, call: usize, e: Event) {
        self.lock().calls[call].events.push((e, Instant::now()));
        self.changed.notify_waiters();
    }
}

/// Records how far a call got; dropped before the end, it records `Dropped`.
#[derive(Debug)]
struct Track {
    engine: ScriptedEngine,
    call: usize,
    ended: bool,
}

impl Track {
    /// The call failed as scripted: nothing was cancelled.
    fn failed(mut self) {
        self.ended = true;
    }
}

impl Drop for Track {
    fn drop(&mut self) {
        if !self.ended {
            self.engine.record(self.call, Event::Dropped);
        }
    }
}

impl EngineClient for ScriptedEngine {
    type Body = ScriptedBody;

    fn post(
        &self,
        leg: Leg,
        base_url: &str,
        path: &str,
        ids: CallIds<'_>,
        _client_headers: &HeaderMap,
        body: Bytes,
    ) -> impl Future<Output = Result<Response<ScriptedBody>, GatewayError>> + Send {
        let (call, reply) = {
            let mut inner = self.lock();
            let reply = inner
                .scripts
                .get_mut(&leg)
                .and_then(VecDeque::pop_front)
                .unwrap_or_else(|| Reply::status(500, vec![chunk("unscripted call")]));
            inner.calls.push(Call {
                leg,
                url: base_url.to_owned(),
                path: path.to_owned(),
                upstream_id: ids.upstream.to_owned(),
                request_id: ids.request.to_owned(),
                slo: ids.slo.and_then(|v| v.to_str().ok()).map(str::to_owned),
                body,
                events: vec![(Event::Sent, Instant::now())],
            });
            (inner.calls.len() - 1, reply)
        };
        self.changed.notify_waiters();
        let track = Track {
            engine: self.clone(),
            call,
            ended: false,
        };
        async move {
            tokio::time::sleep(reply.head_after).await;
            let status = match reply.head {
                Head::Status(s) => s,
                Head::Connect => {
                    track.failed();
                    let e = ErrorKind::Connect("scripted: connection refused".into());
                    return Err(GatewayError::new(leg, e));
                }
                Head::Transport => {
                    track.failed();
                    let e = ErrorKind::Transport("scripted: connection reset".into());
                    return Err(GatewayError::new(leg, e));
                }
                Head::Hang => std::future::pending().await,
            };
            track.engine.record(call, Event::Head);
            let mut resp = Response::new(ScriptedBody {
                steps: reply.body.into(),
                sleep: None,
                track,
            });
            *resp.status_mut() = StatusCode::from_u16(status).expect("scripted status");
            for (name, value) in &reply.headers {
                let v = http::HeaderValue::from_str(value).expect("scripted header");
                resp.headers_mut().insert(*name, v);
            }
            Ok(resp)
        }
    }
}

/// A scripted reply's body.
#[derive(Debug)]
pub struct ScriptedBody {
    steps: VecDeque<Step>,
    sleep: Option<Pin<Box<Sleep>>>,
    track: Track,
}

impl Body for ScriptedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if let Some(sleep) = &mut this.sleep {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            match this.steps.pop_front() {
                Some(Step::Chunk(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                Some(Step::Wait(d)) => this.sleep = Some(Box::pin(tokio::time::sleep(d))),
                Some(Step::Break) => {
                    this.track.ended = true;
                    this.track.engine.record(this.track.call, Event::Broken);
                    let e = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "scripted");
                    return Poll::Ready(Some(Err(BodyError::Io(e))));
                }
                Some(Step::Hang) => {
                    this.steps.push_front(Step::Hang);
                    return Poll::Pending;
                }
                None => {
                    if !this.track.ended {
                        this.track.ended = true;
                        this.track.engine.record(this.track.call, Event::Ended);
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.track.ended
    }
}
