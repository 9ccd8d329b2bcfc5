//! An engine's response body that drives its own connection.
//!
//! Polling [`UpstreamBody`] runs the connection's I/O first and then takes
//! the chunk it decoded, all in the caller's task; at the end of a complete
//! response the connection goes back to the pool. Dropping the body before
//! that closes the connection, which is how the engine hears of a
//! cancellation.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::{Conn, ConnPool};

pub struct UpstreamBody {
    incoming: Incoming,
    /// `None` once the response ended (the connection was handed back or
    /// closed).
    conn: Option<Conn>,
    pool: Arc<ConnPool>,
    gate: Arc<Gate>,
    /// `gate` as a waker, for the connection.
    gated: Waker,
}

/// The connection's waker. Taking a chunk wakes the connection, and the
/// connection queuing one wakes the body: both happen inside `poll_frame`,
/// which drives the two in turn anyway, so waking the task for them would
/// only poll it again for nothing (and rouse an idle runtime thread). Wakes
/// while `poll_frame` runs are noted instead and answered by another round
/// before it returns `Pending`, so one from the socket is never lost.
#[derive(Default)]
struct Gate {
    task: AtomicWaker,
    polling: AtomicBool,
    missed: AtomicBool,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(SeqCst) {
            self.missed.store(true, SeqCst);
            // `poll_frame` may have finished meanwhile without seeing it.
            if self.polling.load(SeqCst) {
                return;
            }
        }
        self.task.wake();
    }
}

impl UpstreamBody {
    pub(super) fn new(incoming: Incoming, conn: Conn, pool: Arc<ConnPool>) -> Self {
        let gate = Arc::new(Gate::default());
        Self {
            incoming,
            conn: Some(conn),
            pool,
            gated: Waker::from(Arc::clone(&gate)),
            gate,
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(conn) = &mut this.conn else {
            return Pin::new(&mut this.incoming).poll_frame(cx);
        };
        let gate = &this.gate;
        gate.task.register(cx.waker());
        gate.polling.store(true, SeqCst);
        let mut gated = Context::from_waker(&this.gated);
        // Every change to `incoming` is made by driving the connection, just
        // above: it needs no waker of its own.
        let mut unwoken = Context::from_waker(Waker::noop());
        let polled = loop {
            let open = conn.drive(&mut gated);
            match Pin::new(&mut this.incoming).poll_frame(&mut unwoken) {
                Poll::Pending if open => {
                    gate.polling.store(false, SeqCst);
                    if !gate.missed.swap(false, SeqCst) {
                        break Poll::Pending;
                    }
                    gate.polling.store(true, SeqCst);
                }
                // Closed: the body has its verdict, or gets it at once.
                Poll::Pending => break Pin::new(&mut this.incoming).poll_frame(cx),
                ready => break ready,
            }
        };
        gate.polling.store(false, SeqCst);
        gate.missed.store(false, SeqCst);
        match polled {
            Poll::Ready(None) => {
                // Read to the end: the connection may serve another request.
                if let Some(conn) = this.conn.take() {
                    this.pool.checkin(conn, &mut gated);
                }
            }
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() && self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
