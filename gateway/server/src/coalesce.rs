//! Gathering upstream chunks into fewer client writes.
//!
//! Forwarding each SSE chunk as it comes costs a `writev` (and the loopback
//! TCP work behind it) per token. The relay drives the engine connection in
//! its own poll, so one poll already takes every chunk the socket holds; an
//! engine's burst, though, often lands over a few socket writes. A
//! [`Coalescer`] holds what arrived and, when the upstream has nothing
//! ready, waits for the runtime to run its other ready tasks (tokio's
//! deferred wake-up, the one `yield_now` uses), and the batch leaves in one
//! write. Nothing waits for the engine: once the runtime went round without
//! a new chunk (or after a few rounds that all brought one), the batch goes
//! out.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;

/// Largest batch; a full one is written without waiting.
pub const MAX_BATCH_BYTES: usize = 64 << 10;

/// Runtime turns a batch may wait while each brings more chunks (an engine's
/// burst often arrives over a few socket reads); a turn that brings none
/// ends the wait at once.
const MAX_TURNS: u32 = 4;

#[derive(Default)]
pub struct Coalescer {
    first: Option<Bytes>,
    merged: Option<BytesMut>,
    nudge: Arc<Nudge>,
    /// Runtime turns the current batch has waited (0: not waiting).
    turns: u32,
    /// A chunk came during the current turn.
    grew: bool,
}

/// Set when the deferred wake-up fires; wakes the body's task.
#[derive(Default)]
struct Nudge {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Nudge {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Coalescer {
    pub fn len(&self) -> usize {
        match (&self.merged, &self.first) {
            (Some(m), _) => m.len(),
            (None, Some(f)) => f.len(),
            (None, None) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none() && self.merged.is_none()
    }

    pub fn is_full(&self) -> bool {
        self.len() >= MAX_BATCH_BYTES
    }

    pub fn push(&mut self, data: Bytes) {
        self.grew = true;
        if let Some(m) = &mut self.merged {
            m.extend_from_slice(&data);
        } else if let Some(first) = self.first.take() {
            let mut m = BytesMut::with_capacity((first.len() + data.len()).max(8 << 10));
            m.extend_from_slice(&first);
            m.extend_from_slice(&data);
            self.merged = Some(m);
        } else {
            // A lone chunk is passed on without a copy.
            self.first = Some(data);
        }
    }

    /// The gathered bytes, for one write.
    pub fn take(&mut self) -> Bytes {
        self.turns = 0;
        match self.merged.take() {
            Some(m) => m.freeze(),
            None => self.first.take().unwrap_or_default(),
        }
    }

    /// The upstream has nothing ready. `Some`: write the batch now. `None`:
    /// the batch waits for the runtime's other ready tasks first; the task
    /// behind `cx` is woken when they ran (or when a chunk comes).
    ///
    /// `patient: false` writes at once (the first token, say).
    pub fn when_idle(&mut self, cx: &mut Context<'_>, patient: bool) -> Option<Bytes> {
        if !patient {
            return Some(self.take());
        }
        self.nudge.task.register(cx.waker());
        // hyper polls a body again in the same turn when it could flush:
        // only the wake-up itself says the runtime went round.
        let waited = self.turns > 0 && self.nudge.fired.load(Ordering::Acquire);
        if self.turns == 0 || (waited && self.grew && self.turns < MAX_TURNS) {
            self.turns += 1;
            self.grew = false;
            self.nudge.fired.store(false, Ordering::Release);
            let waker = Waker::from(Arc::clone(&self.nudge));
            let deferred =
                std::pin::pin!(tokio::task::yield_now()).poll(&mut Context::from_waker(&waker));
            debug_assert!(deferred.is_pending());
            return None;
        }
        waited.then(|| self.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    #[test]
    fn merges_chunks_in_order_and_passes_a_lone_one_through() {
        let mut c = Coalescer::default();
        assert!(c.is_empty());
        let one = Bytes::from_static(b"data: a\n\n");
        c.push(one.clone());
        let out = c.take();
        assert_eq!(out, one);
        assert_eq!(out.as_ptr(), one.as_ptr(), "no copy for a lone chunk");
        c.push(Bytes::from_static(b"data: a\n\n"));
        c.push(Bytes::from_static(b"data: b\n\n"));
        c.push(Bytes::from_static(b"data: c\n\n"));
        assert_eq!(c.len(), 27);
        assert_eq!(&c.take()[..], b"data: a\n\ndata: b\n\ndata: c\n\n");
        assert!(c.is_empty());
    }

    #[tokio::test]
    async fn waits_for_one_runtime_turn_then_writes() {
        let mut c = Coalescer::default();
        c.push(Bytes::from_static(b"x"));
        let mut polls = 0;
        let bytes = std::future::poll_fn(|cx| {
            polls += 1;
            if let Some(b) = c.when_idle(cx, true) {
                return Poll::Ready(b);
            }
            // hyper's immediate re-poll in the same turn keeps waiting.
            assert!(c.when_idle(cx, true).is_none());
            Poll::Pending
        })
        .await;
        assert_eq!(&bytes[..], b"x");
        assert_eq!(polls, 2, "woken once, by the deferred wake-up");
        // Not patient: at once.
        c.push(Bytes::from_static(b"y"));
        let got = c.when_idle(&mut Context::from_waker(Waker::noop()), false);
        assert_eq!(got.as_deref(), Some(&b"y"[..]));
    }

    #[tokio::test]
    async fn keeps_waiting_while_turns_bring_chunks_but_not_forever() {
        let mut c = Coalescer::default();
        c.push(Bytes::from_static(b"a"));
        let mut polls = 0;
        let bytes = std::future::poll_fn(|cx| {
            polls += 1;
            if let Some(b) = c.when_idle(cx, true) {
                return Poll::Ready(b);
            }
            if polls == 1 {
                // More of the engine's burst arrives meanwhile.
                c.push(Bytes::from_static(b"b"));
            }
            Poll::Pending
        })
        .await;
        assert_eq!(&bytes[..], b"ab");
        assert_eq!(polls, 3, "one more turn, then a turn without a chunk");

        // An upstream that always has more is written after MAX_TURNS turns.
        c.push(Bytes::from_static(b"0"));
        let mut polls = 0;
        let bytes = std::future::poll_fn(|cx| {
            polls += 1;
            if let Some(b) = c.when_idle(cx, true) {
                return Poll::Ready(b);
            }
            c.push(Bytes::from_static(b"+"));
            Poll::Pending
        })
        .await;
        assert_eq!(polls, MAX_TURNS + 1);
        assert_eq!(bytes.len(), 1 + MAX_TURNS as usize);
    }
}
