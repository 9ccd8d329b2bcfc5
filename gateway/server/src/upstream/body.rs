//! An engine's response body, read from its connection by the caller's task.
//!
//! Polling [`UpstreamBody`] decodes what the connection's buffer holds and
//! reads the socket when it needs more; everything one read brought comes
//! out as one frame. At the end of a complete response the connection goes
//! back to the pool. Dropping the body before that closes the connection,
//! which is how the engine hears of a cancellation.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::http1::{Decoder, Head};
use super::pool::{Conn, ConnPool};

/// Why a body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the response body: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad response body: {0}")]
    Protocol(#[from] super::http1::MalformedHttp1),
}

pub struct UpstreamBody {
    decoder: Decoder,
    /// `None` once the response ended (the connection was handed back or
    /// closed).
    conn: Option<Conn>,
    keep_alive: bool,
    pool: Arc<ConnPool>,
}

impl UpstreamBody {
    pub(super) fn new(head: &Head, conn: Conn, pool: Arc<ConnPool>) -> Self {
        let mut body = Self {
            decoder: Decoder::new(head.framing),
            conn: Some(conn),
            keep_alive: head.keep_alive,
            pool,
        };
        if body.decoder.is_done() {
            body.finish();
        }
        body
    }

    /// The response was read to its end: a connection that may carry
    /// another request, with nothing unread, goes back to the pool.
    fn finish(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if self.keep_alive && conn.buf.is_empty() {
                conn.response_done();
                self.pool.checkin(conn);
            }
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
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = &mut this.conn else {
                return Poll::Ready(None);
            };
            if !conn.buf.is_empty() {
                let data = match this.decoder.decode(&mut conn.buf) {
                    Ok(data) => data,
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                };
                if this.decoder.is_done() {
                    this.finish();
                }
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if this.conn.is_none() {
                    return Poll::Ready(None);
                }
            }
            let Some(conn) = &mut this.conn else {
                return Poll::Ready(None);
            };
            match conn.poll_read(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    return match this.decoder.eof() {
                        Ok(()) => Poll::Ready(None),
                        Err(e) => Poll::Ready(Some(Err(e.into()))),
                    };
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
