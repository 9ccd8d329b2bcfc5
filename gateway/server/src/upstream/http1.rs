//! The HTTP/1.1 client side of engine calls, without I/O: writing a request,
//! parsing a response head and decoding its body.
//!
//! hyper's client decodes each chunk of a chunked body into a `Bytes` of its
//! own and passes it through a channel; a 64-token SSE stream is 64 of those
//! hand-offs. [`Decoder`] instead turns everything one socket read brought
//! into one contiguous `Bytes`: chunk data is moved over the framing in place
//! and split off the read buffer once.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};

/// A response head larger than this is refused (engines send a handful of
/// headers).
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// Headers a response head may carry.
const MAX_HEADERS: usize = 100;
/// Bytes of chunk extensions on one size line, and of trailers in all, that
/// are skipped before the body is refused: both are read and dropped, this
/// only stops an engine that never ends one.
const MAX_SKIPPED: usize = 16 << 10;

/// Something in the engine's response that is not HTTP/1.1 as it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedHttp1(pub String);

fn bad(msg: impl Into<String>) -> MalformedHttp1 {
    MalformedHttp1(msg.into())
}

/// Writes a request with a `Content-Length` body (none for an empty GET).
pub fn encode_request(
    method: &str,
    path: &str,
    headers: &[(&str, &HeaderValue)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if method != "GET" || !body.is_empty() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the engine closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Parses a response head from the start of `buf`: `Ok(None)` while it is
/// incomplete, else the head and its length in bytes. Interim (1xx)
/// responses are returned like any other; the caller skips them.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, MalformedHttp1> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(bad(format!(
                "response head larger than {MAX_HEAD_BYTES} bytes"
            )))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad(format!("bad response head: {e}"))),
    };
    let code = resp.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| bad(format!("bad response status {code}")))?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    let mut close = version == Version::HTTP_10;
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| bad(format!("bad response header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| bad(format!("bad value of response header {name}")))?;
        if name == http::header::CONTENT_LENGTH {
            let n = parse_length(h.value)?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting content-length headers"));
            }
            length = Some(n);
        } else if name == http::header::TRANSFER_ENCODING {
            coded = true;
            // Only the last coding says how the body ends.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name == http::header::CONNECTION {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                    close = false;
                }
            }
        }
        headers.append(name, value);
    }
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if coded {
        // RFC 9112 §6.3: transfer-encoding overrides content-length, and a
        // message with both must not leave the connection reusable.
        if length.is_some() {
            close = true;
        }
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let keep_alive = !close && framing != Framing::Close;
    Ok(Some((
        Head {
            status,
            version,
            headers,
            framing,
            keep_alive,
        },
        len,
    )))
}

fn parse_length(v: &[u8]) -> Result<u64, MalformedHttp1> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(bad("bad content-length"));
    }
    Ok(v.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Reading the hex size (`digits` so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size, before `;` or the line end.
    SizeSpace {
        size: u64,
    },
    /// Inside a chunk extension (`skipped` bytes of it so far).
    Ext {
        size: u64,
        skipped: usize,
    },
    /// The size line's CR was read; its LF comes next.
    SizeLf {
        size: u64,
    },
    /// `left` data bytes of the chunk to come.
    Data {
        left: u64,
    },
    /// After the data: CR, then LF.
    DataCr,
    DataLf,
    /// Trailer section after the last chunk: at a line start (`empty`
    /// until a byte of the line is seen), inside a line, or after its CR.
    Trailer {
        line_start: bool,
    },
    TrailerLf {
        empty: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

/// Decodes a response body from a read buffer, turning whatever the buffer
/// holds into one contiguous `Bytes` per call.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// Trailer bytes skipped so far.
    trailer_bytes: usize,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::Size { size: 0, digits: 0 }),
            Framing::Close => State::Close,
        };
        Self {
            state,
            trailer_bytes: 0,
        }
    }

    /// The whole body was read; bytes left in the buffer belong to what
    /// comes after it.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Body bytes still expected, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the body bytes at the front of `buf` (possibly none), consuming
    /// the framing around them. Stops at the end of the body.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Bytes, MalformedHttp1> {
        match &mut self.state {
            State::Done => Ok(Bytes::new()),
            State::Close => Ok(buf.split().freeze()),
            State::Length(left) => {
                let take = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                if *left == 0 {
                    self.state = State::Done;
                }
                Ok(buf.split_to(take).freeze())
            }
            State::Chunked(_) => self.decode_chunked(buf),
        }
    }

    /// The engine closed the connection: fine only for a body that ends so.
    pub fn eof(&mut self) -> Result<(), MalformedHttp1> {
        match self.state {
            State::Close | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            State::Length(n) => Err(bad(format!(
                "connection closed with {n} bytes of the body missing"
            ))),
            State::Chunked(_) => Err(bad("connection closed before the last chunk")),
        }
    }

    /// Data is moved left over the framing before it (`copy_within`), so
    /// the data of every chunk in `buf` ends up contiguous at its front.
    fn decode_chunked(&mut self, buf: &mut BytesMut) -> Result<Bytes, MalformedHttp1> {
        let State::Chunked(mut st) = self.state else {
            return Ok(Bytes::new());
        };
        let (mut read, mut written) = (0, 0);
        let end = buf.len();
        let mut done = false;
        while read < end && !done {
            if let Chunked::Data { left } = st {
                let take = (end - read).min(usize::try_from(left).unwrap_or(usize::MAX));
                if read != written {
                    buf.copy_within(read..read + take, written);
                }
                read += take;
                written += take;
                st = if left == take as u64 {
                    Chunked::DataCr
                } else {
                    Chunked::Data {
                        left: left - take as u64,
                    }
                };
                continue;
            }
            let b = buf[read];
            read += 1;
            st = match st {
                Chunked::Size { size, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits == 15 {
                            return Err(bad("chunk size too large"));
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        Chunked::Size {
                            size: size * 16 + u64::from(d),
                            digits: digits + 1,
                        }
                    }
                    _ if digits == 0 => return Err(bad("bad chunk size line")),
                    b' ' | b'\t' => Chunked::SizeSpace { size },
                    b';' => Chunked::Ext { size, skipped: 0 },
                    b'\r' => Chunked::SizeLf { size },
                    _ => return Err(bad("bad chunk size line")),
                },
                Chunked::SizeSpace { size } => match b {
                    b' ' | b'\t' => Chunked::SizeSpace { size },
                    b';' => Chunked::Ext { size, skipped: 0 },
                    b'\r' => Chunked::SizeLf { size },
                    _ => return Err(bad("bad chunk size line")),
                },
                Chunked::Ext { size, skipped } => match b {
                    b'\r' => Chunked::SizeLf { size },
                    b'\n' => return Err(bad("bare LF in chunk extension")),
                    _ if skipped >= MAX_SKIPPED => return Err(bad("chunk extension too long")),
                    _ => Chunked::Ext {
                        size,
                        skipped: skipped + 1,
                    },
                },
                Chunked::SizeLf { size } => match b {
                    b'\n' if size == 0 => Chunked::Trailer { line_start: true },
                    b'\n' => Chunked::Data { left: size },
                    _ => return Err(bad("bad chunk size line end")),
                },
                Chunked::DataCr => match b {
                    b'\r' => Chunked::DataLf,
                    _ => return Err(bad("chunk data longer than its size")),
                },
                Chunked::DataLf => match b {
                    b'\n' => Chunked::Size { size: 0, digits: 0 },
                    _ => return Err(bad("bad chunk data end")),
                },
                Chunked::Trailer { line_start } => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_SKIPPED {
                        return Err(bad("trailers too long"));
                    }
                    match b {
                        b'\r' => Chunked::TrailerLf { empty: line_start },
                        b'\n' => return Err(bad("bare LF in trailers")),
                        _ => Chunked::Trailer { line_start: false },
                    }
                }
                Chunked::TrailerLf { empty } => match b {
                    b'\n' if empty => {
                        done = true;
                        st
                    }
                    b'\n' => Chunked::Trailer { line_start: true },
                    _ => return Err(bad("bad trailer line end")),
                },
                Chunked::Data { .. } => st,
            };
        }
        self.state = if done {
            State::Done
        } else {
            State::Chunked(st)
        };
        let data = buf.split_to(written).freeze();
        buf.advance(read - written);
        Ok(data)
    }
}

/// Reserves room for the next socket read.
pub fn reserve_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4 << 10 {
        buf.reserve(16 << 10);
    }
    debug_assert!(buf.has_remaining_mut());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes()).unwrap().unwrap().0
    }

    /// Feeds `input` to a decoder in pieces of `step` bytes (the socket
    /// reads), returning the body.
    fn decode_in_steps(framing: Framing, input: &[u8], step: usize) -> Result<Vec<u8>, String> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            out.extend_from_slice(&d.decode(&mut buf).map_err(|e| e.0)?);
            if d.is_done() {
                break;
            }
        }
        if !d.is_done() {
            d.eof().map_err(|e| e.0)?;
        }
        Ok(out)
    }

    #[test]
    fn requests_carry_headers_and_a_length() {
        let v = HeaderValue::from_static("engine:8000");
        let req = encode_request("POST", "/v1/completions", &[("host", &v)], b"{}");
        assert_eq!(
            req,
            b"POST /v1/completions HTTP/1.1\r\nhost: engine:8000\r\ncontent-length: 2\r\n\r\n{}"
        );
        let req = encode_request("GET", "/health", &[("host", &v)], b"");
        assert_eq!(req, b"GET /health HTTP/1.1\r\nhost: engine:8000\r\n\r\n");
    }

    #[test]
    fn heads_give_framing_and_keep_alive() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.keep_alive);
        assert_eq!(h.headers["content-type"], "text/event-stream");

        let h = head("HTTP/1.1 503 Busy\r\nContent-Length: 12\r\nConnection: close\r\n\r\n");
        assert_eq!((h.status.as_u16(), h.framing), (503, Framing::Length(12)));
        assert!(!h.keep_alive);

        // No length: the body runs to the close.
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.keep_alive);

        // HTTP/1.0 closes unless it asks not to.
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, false));
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\n");
        assert!(h.keep_alive);

        // Transfer-encoding wins over content-length, and the connection is
        // not reused after such a message.
        let h = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        );
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);

        assert_eq!(
            head("HTTP/1.1 204 No Content\r\n\r\n").framing,
            Framing::Empty
        );
        assert_eq!(
            head("HTTP/1.1 100 Continue\r\n\r\n").framing,
            Framing::Empty
        );
    }

    #[test]
    fn partial_and_bad_heads() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
            .unwrap()
            .is_none());
        let (_, len) = parse_head(b"HTTP/1.1 200 OK\r\n\r\nbody").unwrap().unwrap();
        assert_eq!(len, 19);
        for bad in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            b"SMTP ready\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert!(parse_head(endless.as_bytes()).is_err());
    }

    const STREAM: &[u8] = b"9\r\ndata: a\n\n\r\n9;name=\"v\"\r\ndata: b\n\n\r\n10 \r\ndata: cccccccc\n\n\r\n0\r\n\r\n";

    #[test]
    fn chunked_bodies_decode_whatever_the_reads() {
        let want = b"data: a\n\ndata: b\n\ndata: cccccccc\n\n".to_vec();
        for step in 1..=STREAM.len() {
            assert_eq!(
                decode_in_steps(Framing::Chunked, STREAM, step),
                Ok(want.clone()),
                "step {step}"
            );
        }
    }

    #[test]
    fn one_read_gives_one_contiguous_frame_and_leaves_the_rest() {
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(STREAM);
        buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let data = d.decode(&mut buf).unwrap();
        assert_eq!(&data[..], b"data: a\n\ndata: b\n\ndata: cccccccc\n\n");
        assert!(d.is_done());
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
        assert!(d.decode(&mut buf).unwrap().is_empty());
    }

    #[test]
    fn trailers_and_upper_case_sizes() {
        let input = b"A\r\n0123456789\r\n0\r\nx-trailer: 1\r\nother: 2\r\n\r\n";
        for step in 1..=input.len() {
            assert_eq!(
                decode_in_steps(Framing::Chunked, input, step).as_deref(),
                Ok(&b"0123456789"[..])
            );
        }
    }

    #[test]
    fn bad_chunked_bodies_are_clean_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b";ext\r\n",
            b"1\nx\r\n0\r\n\r\n",
            b"-1\r\n",
            b"1\r\nxy\r\n0\r\n\r\n",
            b"1\r\nx\n0\r\n\r\n",
            b"1000000000000000\r\n",
            b"1 2\r\n",
            b"0\r\nx\n\r\n",
            b"0\r\n\n",
        ] {
            for step in 1..=bad.len() {
                let got = decode_in_steps(Framing::Chunked, bad, step);
                assert!(
                    got.is_err(),
                    "{:?} in steps of {step}: {got:?}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
        let long_ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_SKIPPED + 1));
        assert!(decode_in_steps(Framing::Chunked, long_ext.as_bytes(), 4096).is_err());
        let long_trailer = format!("0\r\nx: {}\r\n\r\n", "t".repeat(MAX_SKIPPED));
        assert!(decode_in_steps(Framing::Chunked, long_trailer.as_bytes(), 4096).is_err());
        // The largest size that fits is only a size, not an error.
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"fffffffffffffff\r\nabc"[..]);
        assert_eq!(&d.decode(&mut buf).unwrap()[..], b"abc");
    }

    #[test]
    fn early_close_is_an_error_except_for_close_delimited_bodies() {
        for cut in [0, 1, 3, 5, 12, 14, STREAM.len() - 1] {
            let got = decode_in_steps(Framing::Chunked, &STREAM[..cut], 3);
            assert!(got.is_err(), "cut at {cut}");
        }
        let got = decode_in_steps(Framing::Length(10), b"01234", 2);
        assert_eq!(
            got,
            Err("connection closed with 5 bytes of the body missing".into())
        );
        assert_eq!(
            decode_in_steps(Framing::Close, b"all of it", 2).as_deref(),
            Ok(&b"all of it"[..])
        );
        assert_eq!(
            decode_in_steps(Framing::Empty, b"", 1).as_deref(),
            Ok(&b""[..])
        );
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let mut d = Decoder::new(Framing::Length(5));
        let mut buf = BytesMut::from(&b"012"[..]);
        assert_eq!(&d.decode(&mut buf).unwrap()[..], b"012");
        assert_eq!(d.remaining(), Some(2));
        buf.extend_from_slice(b"34HTTP");
        assert_eq!(&d.decode(&mut buf).unwrap()[..], b"34");
        assert!(d.is_done());
        assert_eq!(&buf[..], b"HTTP");
    }
}
