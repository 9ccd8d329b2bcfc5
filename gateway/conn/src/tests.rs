//! The limits on tokio's paused clock, over in-memory connections: every close comes at an exact instant.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The gateway's kind: a first-request deadline, a stalled response keeps its connection.
const GATEWAY: Limits = Limits {
    first_byte: Duration::from_secs(10),
    first_request: Some(Duration::from_secs(30)),
    header_read: Duration::from_secs(3600),
    idle: Duration::from_secs(60),
    drop_unread: false,
};

/// The engine's kind: idle from the first byte, a peer that stops reading loses its connection.
const ENGINE: Limits = Limits {
    first_request: None,
    drop_unread: true,
    ..GATEWAY
};

/// `/slow` answers after 150 s; `/big` is 4 MiB in 64 KiB frames; anything else is "ok".
async fn app(req: Request<Incoming>) -> Result<Response<Frames>, Infallible> {
    let body = match req.uri().path() {
        "/slow" => {
            tokio::time::sleep(SECS(150)).await;
            Frames::new(b"ok", 1)
        }
        "/big" => Frames::new(&[b'x'; 64 << 10], 64),
        _ => Frames::new(b"ok", 1),
    };
    Ok(Response::new(body))
}

/// A body of `left` copies of one frame, of known length; hyper asks for each frame only once the socket
/// took the last, so an unread response stays in progress.
struct Frames {
    frame: Bytes,
    left: usize,
}

impl Frames {
    fn new(frame: &[u8], n: usize) -> Self {
        Self {
            frame: Bytes::copy_from_slice(frame),
            left: n,
        }
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.frame.clone()))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.frame.len() * self.left) as u64)
    }
}

/// Serves one in-memory connection (the client's end has a 64 KiB buffer); the task ends when the server
/// closes it. Dropping the sender stops nothing; sending shuts down gracefully.
fn start(limits: Limits) -> (DuplexStream, JoinHandle<()>, oneshot::Sender<()>) {
    let (client, server) = tokio::io::duplex(64 << 10);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stop = async move {
        if stop_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let task = tokio::spawn(serve(server, hyper::service::service_fn(app), limits, stop));
    (client, task, stop_tx)
}

/// When the server closed the connection, counted from `t`.
async fn closed_after(task: JoinHandle<()>, t: Instant) -> Duration {
    task.await.unwrap();
    t.elapsed()
}

/// Sends an HTTP/1.1 GET and reads its response; returns the body.
async fn get(c: &mut DuplexStream, path: &str) -> Vec<u8> {
    c.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if data.len() >= end + 4 + len {
                assert!(head.starts_with("http/1.1 200"), "{head}");
                return data[end + 4..end + 4 + len].to_vec();
            }
        }
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed mid-response");
        data.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_the_first_byte_deadline() {
    for limits in [GATEWAY, ENGINE] {
        let t = Instant::now();
        let (_client, task, _stop) = start(limits);
        assert_eq!(closed_after(task, t).await, SECS(10), "{limits:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_byte_and_no_request_is_closed_at_the_first_request_deadline_or_idle() {
    // "P" could begin the HTTP/2 preface: protocol detection waits for more.
    let t = Instant::now();
    let (mut client, task, _stop) = start(GATEWAY);
    client.write_all(b"P").await.unwrap();
    assert_eq!(closed_after(task, t).await, SECS(30));
    // Without a first-request deadline the idle limit runs from the first byte.
    let t = Instant::now();
    let (mut client, task, _stop) = start(ENGINE);
    tokio::time::sleep(SECS(5)).await;
    client.write_all(b"P").await.unwrap();
    assert_eq!(closed_after(task, t).await, SECS(5 + 60));
}

#[tokio::test(start_paused = true)]
async fn an_idle_http1_connection_is_closed_idle_after_its_last_response() {
    for limits in [GATEWAY, ENGINE] {
        let (mut client, task, _stop) = start(limits);
        tokio::time::sleep(SECS(3)).await;
        assert_eq!(get(&mut client, "/").await, b"ok");
        // A second request on the same connection restarts the idle clock.
        tokio::time::sleep(SECS(40)).await;
        assert_eq!(get(&mut client, "/").await, b"ok");
        let t = Instant::now();
        assert_eq!(closed_after(task, t).await, SECS(60), "{limits:?}");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_request_in_progress_keeps_its_connection() {
    for limits in [GATEWAY, ENGINE] {
        let t = Instant::now();
        let (mut client, task, _stop) = start(limits);
        // 150 s without a byte either way, more than twice the idle limit.
        assert_eq!(get(&mut client, "/slow").await, b"ok");
        assert_eq!(t.elapsed(), SECS(150));
        assert_eq!(closed_after(task, t).await, SECS(150 + 60), "{limits:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_reads_nothing_of_its_response_is_dropped_only_with_drop_unread() {
    let t = Instant::now();
    let (mut client, task, _stop) = start(ENGINE);
    client
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(closed_after(task, t).await, SECS(60));

    let t = Instant::now();
    let (mut client, mut task, _stop) = start(GATEWAY);
    client
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let waited = tokio::time::timeout(SECS(300), &mut task).await;
    assert!(waited.is_err(), "closed with its response unread");
    let mut rest = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while rest.len() < 4 << 20 {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0);
        rest.extend_from_slice(&buf[..n]);
    }
    assert_eq!(closed_after(task, t).await, SECS(300 + 60));
}

#[tokio::test(start_paused = true)]
async fn stop_shuts_a_connection_down_gracefully() {
    let (mut client, task, stop) = start(GATEWAY);
    assert_eq!(get(&mut client, "/").await, b"ok");
    tokio::time::sleep(SECS(5)).await;
    let t = Instant::now();
    stop.send(()).unwrap();
    // HTTP/1 between requests: closed at once.
    assert_eq!(closed_after(task, t).await, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn an_idle_http2_connection_gets_goaway_and_is_closed() {
    for limits in [GATEWAY, ENGINE] {
        let (client, task, _stop) = start(limits);
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                .await
                .unwrap();
        let client_conn = tokio::spawn(conn);
        let req = Request::get("http://x/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        let t = Instant::now();
        // `send` stays alive: the client would keep the connection.
        assert_eq!(closed_after(task, t).await, SECS(60), "{limits:?}");
        client_conn.await.unwrap().unwrap();
        drop(send);
    }
}

#[test]
fn a_wound_down_connection_still_silent_is_dropped() {
    let a = Activity::new();
    let t0 = a.base;
    a.heard.store(true, Ordering::Relaxed);
    a.requests.store(1, Ordering::Relaxed);
    let mut w = Watch::new(GATEWAY, t0);
    assert_eq!(w.step(&a, t0 + SECS(1)), Step::Wait(t0 + SECS(60)));
    assert_eq!(w.step(&a, t0 + SECS(60)), Step::WindDown(t0 + SECS(120)));
    assert_eq!(
        w.step(&a, t0 + SECS(120)),
        Step::Close("an idle connection that did not close")
    );
    // A request in progress is never idle without drop_unread, even with a write blocked.
    let mut w = Watch::new(GATEWAY, t0);
    a.in_progress.store(1, Ordering::Relaxed);
    a.write_blocked.store(true, Ordering::Relaxed);
    assert_eq!(w.step(&a, t0 + SECS(60)), Step::Wait(t0 + SECS(120)));
    assert_eq!(w.step(&a, t0 + SECS(120)), Step::Wait(t0 + SECS(180)));
    let mut w = Watch::new(ENGINE, t0);
    assert_eq!(
        w.step(&a, t0 + SECS(60)),
        Step::Close("a connection whose peer read nothing of our response")
    );
}

#[tokio::test]
async fn slots_refuse_past_the_limit_and_free_on_drop() {
    let slots = Slots::new(2);
    let a = slots.try_take().unwrap();
    let _b = slots.try_take().unwrap();
    assert!(slots.try_take().is_none());
    assert_eq!((slots.open(), slots.max()), (2, 2));
    let waiting = slots.take();
    drop(a);
    let _c = waiting.await;
    assert_eq!(slots.open(), 2);
    assert!(slots.try_take().is_none());
}

#[test]
fn the_open_file_limit_is_read_from_proc_limits() {
    let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                  Max open files            1024                 524288               files\n";
    assert_eq!(open_file_limit_in(limits), Some(1024));
    let unlimited = "Max open files            unlimited            unlimited            files\n";
    assert_eq!(open_file_limit_in(unlimited), Some(usize::MAX));
    assert_eq!(open_file_limit_in("nothing"), None);
    if cfg!(target_os = "linux") {
        assert!(open_file_limit().is_some());
    }
}
