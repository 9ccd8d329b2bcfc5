//! Streaming an engine's reply to the client, watched.
//!
//! [`RelayBody`] forwards upstream bytes untouched while it
//! - measures TTFT/TPOT from the SSE chunks it sees ([`Observer`]),
//! - enforces the idle-gap and total deadlines,
//! - ends the stream with an SSE error event when the upstream fails or the
//!   concurrently running other leg reports a failure (`abort`),
//! - and, on drop, records the outcome and releases worker load. A client
//!   disconnect drops it mid-stream, which drops the upstream body and with it
//!   the engine connection: that is the cancellation.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use baton_protocol::sse::{inspect, may_carry_metadata, SseDecoder};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::abort::AbortOnDrop;
use crate::coalesce::Coalescer;
use crate::error::{ErrorKind, GatewayError, Leg};
use crate::lifecycle::{EndReport, Ending, Lifecycle};
use crate::respond::openai_error;
use crate::slo::tracker::{DecodeTicket, PrefillTicket};
use crate::upstream::body::BodyError;
use crate::upstream::{error_chain, UpstreamBody};
use crate::worker::{LoadGuard, Worker};

/// Result of the other leg running beside the stream (SGLang prefill).
pub type LegResult = Result<(), GatewayError>;

/// Watches a reply on its way to the client: when the first output came,
/// how many tokens followed, and how the stream ended. On drop it hands
/// that to the request's [`Lifecycle`], which records it.
#[derive(Debug)]
pub struct Observer {
    life: Lifecycle,
    decoder: SseDecoder,
    first_output: Option<Instant>,
    output_chunks: u64,
    usage_tokens: Option<u64>,
    /// How the stream ended, once settled (the first settlement stands).
    ending: Option<Ending>,
    /// When the outcome was settled (the end for TPOT and e2e latency).
    ended: Option<Instant>,
    /// The answering worker is to blame for the ending.
    worker_at_fault: bool,
    /// The last bytes watched, to see the `[DONE]` that ends the stream.
    tail: Tail,
    _guards: Vec<LoadGuard>,
    _watcher: Option<AbortOnDrop>,
    prefill_ticket: Option<PrefillTicket>,
}

impl Observer {
    /// Watches the reply of `worker` (holding its decode-load `ticket`) for
    /// the request `life`.
    pub fn new(mut life: Lifecycle, worker: Arc<Worker>, ticket: DecodeTicket) -> Self {
        life.answered_by(worker, ticket);
        Self {
            life,
            decoder: SseDecoder::new(),
            first_output: None,
            output_chunks: 0,
            usage_tokens: None,
            ending: None,
            ended: None,
            worker_at_fault: false,
            tail: Tail::default(),
            _guards: Vec::new(),
            _watcher: None,
            prefill_ticket: None,
        }
    }

    pub fn with_guards(mut self, guards: Vec<LoadGuard>) -> Self {
        self._guards = guards;
        self
    }

    pub fn with_watcher(mut self, watcher: Option<AbortOnDrop>) -> Self {
        self._watcher = watcher;
        self
    }

    /// A prefill this stream's worker does itself; its first token ends it.
    pub fn with_prefill_ticket(mut self, t: Option<PrefillTicket>) -> Self {
        self.prefill_ticket = t;
        self
    }

    /// Whether the first output was seen: from then on, bytes need no
    /// time stamp and may be watched a batch at a time.
    pub fn seen_output(&self) -> bool {
        self.first_output.is_some()
    }

    /// Watches streamed bytes.
    pub fn observe(&mut self, bytes: &[u8]) {
        self.tail.push(bytes);
        if self.first_output.is_some() {
            self.observe_tokens(bytes);
            return;
        }
        let rest = self.observe_events(bytes);
        if self.first_output.is_some() {
            if let Some(t) = self.prefill_ticket.take() {
                t.finish();
            }
            // The rest of a burst that brought the first token.
            if !rest.is_empty() {
                self.observe_tokens(rest);
            }
        }
    }

    /// Before the first token: every event is parsed, up to the one with
    /// the first output; returns the bytes after that one.
    fn observe_events<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        let Self {
            decoder,
            output_chunks,
            first_output,
            usage_tokens,
            ..
        } = self;
        decoder.push_until(bytes, |data| {
            let info = inspect(data);
            if let Some(t) = info.completion_tokens {
                *usage_tokens = Some(t);
            }
            if info.has_output {
                *output_chunks += 1;
                *first_output = Some(Instant::now());
            }
            info.has_output
        })
    }

    /// After the first token: token chunks are only counted, found by one
    /// scan of the whole batch; what may carry usage or an error is parsed.
    fn observe_tokens(&mut self, bytes: &[u8]) {
        let Self {
            decoder,
            output_chunks,
            usage_tokens,
            ..
        } = self;
        let mut parsed_output = 0;
        let counted = decoder.push_counting(bytes, |data| {
            if !may_carry_metadata(data) {
                if data.trim_start().starts_with('{') {
                    parsed_output += 1;
                }
                return;
            }
            let info = inspect(data);
            if info.has_output {
                parsed_output += 1;
            }
            if let Some(t) = info.completion_tokens {
                *usage_tokens = Some(t);
            }
        });
        *output_chunks += counted + parsed_output;
    }

    /// A non-streaming reply: the first (and last) output is now.
    pub fn observe_complete(&mut self, completion_tokens: Option<u64>) {
        self.first_output = Some(Instant::now());
        self.usage_tokens = completion_tokens;
    }

    /// Whether the bytes watched so far end with the `[DONE]` event: the
    /// stream's last event (vLLM, SGLang and OpenAI end every stream so).
    pub fn saw_done(&self) -> bool {
        self.tail.ends_with_done()
    }

    /// Whether the outcome is settled (later events change nothing).
    pub fn settled(&self) -> bool {
        self.ending.is_some()
    }

    /// Settles the outcome; the first one stands.
    pub fn finish(&mut self, ending: Ending) {
        if self.ending.is_none() {
            self.ending = Some(ending);
            self.ended = Some(Instant::now());
        }
    }

    /// Settles the outcome on an error met while relaying.
    fn fail(&mut self, e: &GatewayError, answering_leg: Leg) {
        self.life.upstream_error(e);
        if !self.settled() {
            self.worker_at_fault = e.counts_against_worker() && e.leg == answering_leg;
        }
        self.finish(Ending::of(e));
    }

    /// What was measured, as the lifecycle records it.
    fn outcome(&self) -> EndReport {
        // Dropped without a verdict: the client went away.
        let ending = self.ending.unwrap_or(Ending::Cancelled);
        let start = self.life.start();
        let end = self.ended.unwrap_or_else(Instant::now);
        let tokens = self.usage_tokens.unwrap_or(self.output_chunks);
        let (ttft, tpot) = match self.first_output {
            Some(first) => (
                Some(first - start),
                (tokens > 1).then(|| {
                    Duration::from_secs_f64((end - first).as_secs_f64() / (tokens - 1) as f64)
                }),
            ),
            None => (None, None),
        };
        EndReport {
            ending,
            ttft,
            tpot,
            e2e: end - start,
            worker_at_fault: self.worker_at_fault,
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let outcome = self.outcome();
        self.life.end(outcome);
    }
}

/// The last bytes of a stream, kept in place (no allocation per chunk) so
/// a `[DONE]` split over two reads is still seen.
#[derive(Debug, Default)]
struct Tail {
    buf: [u8; Tail::LEN],
    len: usize,
}

impl Tail {
    /// Room for `data: [DONE]` and its line endings.
    const LEN: usize = 32;

    fn push(&mut self, bytes: &[u8]) {
        if bytes.len() >= Self::LEN {
            self.buf.copy_from_slice(&bytes[bytes.len() - Self::LEN..]);
            self.len = Self::LEN;
            return;
        }
        let keep = (Self::LEN - bytes.len()).min(self.len);
        self.buf.copy_within(self.len - keep..self.len, 0);
        self.buf[keep..keep + bytes.len()].copy_from_slice(bytes);
        self.len = keep + bytes.len();
    }

    /// A complete `data: [DONE]` event (its blank line included) at the end.
    fn ends_with_done(&self) -> bool {
        ends_with_done(&self.buf[..self.len])
    }
}

/// Whether `b` ends with a complete `[DONE]` event: a `data:` line whose
/// value is `[DONE]`, then the blank line that dispatches an event.
fn ends_with_done(b: &[u8]) -> bool {
    let Some(b) = [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"]
        .iter()
        .find_map(|sep| b.strip_suffix(*sep))
    else {
        return false;
    };
    let Some(b) = b.strip_suffix(b"[DONE]") else {
        return false;
    };
    let b = b.strip_suffix(b" ").unwrap_or(b);
    let Some(b) = b.strip_suffix(b"data:") else {
        return false;
    };
    b.is_empty() || b.ends_with(b"\n") || b.ends_with(b"\r")
}

/// Timeouts that bound a stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub idle: Duration,
    pub deadline: Instant,
}

/// The client-facing body of a streaming reply. `B` is the engine's body
/// (generic so the relay runs on [`UpstreamBody`] with static dispatch, and on
/// a scripted body in tests).
pub struct RelayBody<B = UpstreamBody> {
    upstream: Option<B>,
    leg: Leg,
    limits: StreamLimits,
    idle: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
    other_leg: Option<oneshot::Receiver<LegResult>>,
    trailer: Option<Bytes>,
    /// The first frame, read before the response head was sent.
    primed: Option<Frame<Bytes>>,
    /// An upstream result read ahead while coalescing, handled next poll.
    stashed: Option<Option<Result<Frame<Bytes>, BodyError>>>,
    /// Upstream bytes read but not yet handed to the client connection.
    batch: Coalescer,
    /// How many bytes at the end of `batch` the observer has not seen yet
    /// (after the first token they are watched when the batch leaves).
    unobserved: usize,
    /// Whether a batch may wait for more chunks (not while priming: the
    /// first token goes out at once).
    gather: bool,
    done: bool,
    observer: Observer,
}

impl<B> RelayBody<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    pub fn new(
        upstream: B,
        leg: Leg,
        limits: StreamLimits,
        other_leg: Option<oneshot::Receiver<LegResult>>,
        observer: Observer,
    ) -> Self {
        Self {
            upstream: Some(upstream),
            leg,
            limits,
            idle: Box::pin(tokio::time::sleep(limits.idle)),
            deadline: Box::pin(tokio::time::sleep_until(limits.deadline)),
            other_leg,
            trailer: None,
            primed: None,
            stashed: None,
            batch: Coalescer::default(),
            unobserved: 0,
            gather: true,
            done: false,
            observer,
        }
    }

    /// Waits for the first frame, so the response head and the first chunk
    /// leave in one write (the client's first token is not delayed: it
    /// could not arrive before this frame anyway).
    pub async fn prime(&mut self) {
        self.gather = false;
        let first = std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx)).await;
        self.gather = true;
        if let Some(Ok(frame)) = first {
            self.primed = Some(frame);
        }
    }

    /// Hands gathered bytes to the client connection.
    fn send(&mut self, bytes: Bytes) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.unobserved > 0 {
            self.observer
                .observe(&bytes[bytes.len() - self.unobserved..]);
            self.unobserved = 0;
        }
        let next = tokio::time::Instant::now() + self.limits.idle;
        self.idle.as_mut().reset(next);
        // While priming, the frame is held back: it counts once handed over.
        if self.gather {
            self.settle_if_done();
        }
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    /// The `[DONE]` event is in the client connection's hands: the request
    /// succeeded, whatever the client or the engine does next (a client
    /// closing at once must not turn a delivered stream into `cancelled`).
    fn settle_if_done(&mut self) {
        if !self.observer.settled() && self.observer.saw_done() {
            self.observer.finish(Ending::Success);
        }
    }

    /// The upstream ended cleanly: the stream ends after what was sent.
    fn succeed(&mut self) {
        self.observer.finish(Ending::Success);
        self.upstream = None;
        self.done = true;
    }

    /// Ends the stream with an error event; the upstream is dropped at once
    /// (which cancels it).
    fn fail(&mut self, e: GatewayError) {
        if self.observer.settled() {
            // After the `[DONE]` the client has its whole answer: an engine
            // that then breaks or stalls just ends the stream.
            tracing::debug!(error = %e, "stream ended after its [DONE]");
            self.upstream = None;
            self.other_leg = None;
            self.done = true;
            return;
        }
        tracing::warn!(error = %e, "stream failed");
        self.observer.fail(&e, self.leg);
        self.upstream = None;
        self.other_leg = None;
        self.trailer = Some(openai_error(&e).to_sse_event());
    }
}

impl<B> Body for RelayBody<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(f) = this.primed.take() {
            this.settle_if_done();
            return Poll::Ready(Some(Ok(f)));
        }
        if let Some(t) = this.trailer.take() {
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::data(t))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if let (Some(rx), true) = (&mut this.other_leg, this.batch.is_empty()) {
            match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(Err(e))) => {
                    this.fail(e);
                    return Pin::new(this).poll_frame(cx);
                }
                Poll::Ready(_) => this.other_leg = None,
                Poll::Pending => {}
            }
        }
        loop {
            let Some(upstream) = &mut this.upstream else {
                this.done = true;
                return Poll::Ready(None);
            };
            let polled = match this.stashed.take() {
                Some(r) => Poll::Ready(r),
                None => Pin::new(upstream).poll_frame(cx),
            };
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers from the engine are dropped; only data is relayed.
                    if let Ok(data) = frame.into_data() {
                        if this.observer.seen_output() {
                            this.unobserved += data.len();
                        } else {
                            // The first token is stamped as it arrives.
                            this.observer.observe(&data);
                        }
                        this.batch.push(data);
                        if this.batch.is_full() {
                            let bytes = this.batch.take();
                            return this.send(bytes);
                        }
                    }
                }
                Poll::Ready(end) if !this.batch.is_empty() => {
                    let bytes = this.batch.take();
                    let out = this.send(bytes);
                    match end {
                        // Ended cleanly: said at once (`is_end_stream`), so
                        // the last bytes and the end of the body leave in
                        // one write.
                        None => this.succeed(),
                        end => this.stashed = Some(end),
                    }
                    return out;
                }
                Poll::Ready(Some(Err(e))) => {
                    let leg = this.leg;
                    this.fail(GatewayError::new(
                        leg,
                        ErrorKind::Transport(format!("stream broke: {}", error_chain(&e))),
                    ));
                    return Pin::new(this).poll_frame(cx);
                }
                Poll::Ready(None) => {
                    this.succeed();
                    return Poll::Ready(None);
                }
                Poll::Pending if !this.batch.is_empty() => {
                    return match this.batch.when_idle(cx, this.gather) {
                        Some(bytes) => this.send(bytes),
                        None => Poll::Pending,
                    };
                }
                Poll::Pending => {
                    let leg = this.leg;
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        this.fail(GatewayError::new(leg, ErrorKind::Timeout("request")));
                        return Pin::new(this).poll_frame(cx);
                    }
                    if this.idle.as_mut().poll(cx).is_ready() {
                        this.fail(GatewayError::new(leg, ErrorKind::Timeout("idle")));
                        return Pin::new(this).poll_frame(cx);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // hyper sends no body at all for a body that is at its end before
        // the first poll, so a primed frame keeps it open.
        self.done && self.trailer.is_none() && self.primed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl<B> Drop for RelayBody<B> {
    fn drop(&mut self) {
        // A client gone mid-batch: the observer still sees what the engine sent.
        if self.unobserved > 0 {
            let bytes = self.batch.take();
            self.observer
                .observe(&bytes[bytes.len() - self.unobserved..]);
        }
    }
}

/// Reads a whole (non-streaming) reply under the same limits and the same
/// watch on the other leg.
pub async fn collect<B>(
    mut upstream: B,
    leg: Leg,
    limits: StreamLimits,
    mut other_leg: Option<oneshot::Receiver<LegResult>>,
    max_bytes: usize,
) -> Result<Bytes, GatewayError>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    use http_body_util::BodyExt;
    let mut buf = Vec::new();
    loop {
        let idle = tokio::time::sleep(limits.idle);
        tokio::select! {
            res = async {
                match other_leg.as_mut() {
                    Some(rx) => rx.await,
                    None => std::future::pending().await,
                }
            }, if other_leg.is_some() => {
                if let Ok(Err(e)) = res {
                    return Err(e);
                }
                other_leg = None;
            }
            frame = upstream.frame() => match frame {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        if buf.len() + d.len() > max_bytes {
                            return Err(GatewayError::new(leg, ErrorKind::BadReply(format!("reply larger than {max_bytes} bytes"))));
                        }
                        buf.extend_from_slice(&d);
                    }
                }
                Some(Err(e)) => return Err(GatewayError::new(leg, ErrorKind::Transport(error_chain(&e)))),
                None => return Ok(Bytes::from(buf)),
            },
            _ = idle => return Err(GatewayError::new(leg, ErrorKind::Timeout("idle"))),
            _ = tokio::time::sleep_until(limits.deadline) => {
                return Err(GatewayError::new(leg, ErrorKind::Timeout("request")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_is_seen_only_as_a_complete_event_even_when_split() {
        assert!(ends_with_done(b"data: [DONE]\n\n"));
        assert!(ends_with_done(b"data: {}\n\ndata:[DONE]\r\n\r\n"));
        assert!(!ends_with_done(b"data: [DONE]\n"), "not dispatched yet");
        assert!(!ends_with_done(b"data: {\"text\":\"[DONE]\n\n"));
        assert!(!ends_with_done(b"xdata: [DONE]\n\n"));
        let mut t = Tail::default();
        t.push(&[b'x'; 100]);
        t.push(b"data: {\"choices\":[]}\n\ndata: [DO");
        assert!(!t.ends_with_done());
        t.push(b"NE]\n");
        assert!(!t.ends_with_done());
        t.push(b"\n");
        assert!(t.ends_with_done());
    }
}
