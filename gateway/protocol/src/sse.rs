//! Server-sent events: an incremental decoder and a chunk inspector.
//!
//! The gateway forwards upstream bytes untouched; it only *watches* them
//! through [`SseDecoder`] to measure TTFT/TPOT and to know whether a stream
//! ended properly.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// Bound on one buffered event: a larger one is an upstream bug, and holding
/// it would let an engine grow the gateway's memory without limit.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

/// One event's `data` field (multi-line data joined with `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub data: String,
}

/// One event with its `event:` field ([`SseDecoder::push_named`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedEvent {
    /// The `event:` field; `None` for the default type (`message`).
    pub event: Option<String>,
    pub data: String,
}

/// Splits a byte stream into events, across arbitrary chunk boundaries.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for an event end (keeps scanning
    /// linear when a big event arrives in many small chunks).
    scanned: usize,
    overflowed: bool,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        self.push_with(chunk, |data| {
            events.push(SseEvent {
                data: data.to_owned(),
            })
        });
        events
    }

    /// Feeds bytes, calling `on_data` with each completed event's data:
    /// complete events inside `chunk` are read in place, and only a trailing
    /// partial event is buffered.
    pub fn push_with(&mut self, chunk: &[u8], mut on_data: impl FnMut(&str)) {
        let rest = self.push_until(chunk, |d| {
            on_data(d);
            false
        });
        debug_assert!(rest.is_empty());
    }

    /// Feeds bytes like [`push_with`](Self::push_with), but stops after the
    /// first event for which `on_data` returns `true`, and returns the part
    /// of `chunk` after that event (not fed; empty if it never stopped).
    ///
    /// The relay watches events one by one only until the first token; an
    /// engine's whole stream often arrives in one read, and the rest of it
    /// goes to the cheaper [`push_counting`](Self::push_counting).
    pub fn push_until<'c>(
        &mut self,
        chunk: &'c [u8],
        mut on_data: impl FnMut(&str) -> bool,
    ) -> &'c [u8] {
        self.push_raw(chunk, |raw| {
            let mut stop = false;
            emit(raw, &mut |d: &str| stop = on_data(d));
            stop
        })
    }

    /// Feeds bytes; returns the events completed by them with their `event:`
    /// field, for readers that need it (a load generator told of an error by
    /// `event: error`). Unlike [`push`](Self::push), an event that has an
    /// `event:` line but no data is returned too, with empty data.
    pub fn push_named(&mut self, chunk: &[u8]) -> Vec<NamedEvent> {
        let mut events = Vec::new();
        let rest = self.push_raw(chunk, |raw| {
            events.extend(named(raw));
            false
        });
        debug_assert!(rest.is_empty());
        events
    }

    /// Splits `chunk` (after what is buffered) into raw events, handing
    /// each to `on_raw` until it returns `true`; returns the part of `chunk`
    /// after that event (empty if it never stopped).
    fn push_raw<'c>(&mut self, chunk: &'c [u8], mut on_raw: impl FnMut(&[u8]) -> bool) -> &'c [u8] {
        let mut stop = false;
        let mut rest = chunk;
        if !self.buf.is_empty() {
            let Some(r) = self.finish_buffered(rest, |raw| stop = on_raw(raw)) else {
                return &[];
            };
            rest = r;
            if stop {
                return rest;
            }
        }
        while let Some((end, sep)) = find_event_end(rest, 0) {
            stop = on_raw(&rest[..end]);
            rest = &rest[end + sep..];
            if stop {
                return rest;
            }
        }
        if !rest.is_empty() {
            self.buf.extend_from_slice(rest);
            self.scanned = self.buf.len();
            self.bound();
        }
        &[]
    }

    /// Feeds bytes once the first token was seen: only events that might
    /// carry metadata (a superset of those [`may_carry_metadata`] accepts)
    /// are handed to `on_data`; the others are counted, and the count of
    /// those whose data starts with `{` (token chunks) is returned.
    ///
    /// This is [`push_with`](Self::push_with) for a whole batch of token
    /// chunks: the metadata keys are searched once over the batch instead of
    /// once per event, and a plain token event is neither joined nor
    /// UTF-8-checked, only told apart by its first data byte.
    pub fn push_counting(&mut self, chunk: &[u8], mut on_data: impl FnMut(&str)) -> u64 {
        let mut count = 0;
        let mut rest = chunk;
        if !self.buf.is_empty() {
            // Finish the buffered event first, as `push_with` would.
            let Some(r) = self.finish_buffered(rest, |raw| {
                count += count_or_hand(raw, true, &mut on_data);
            }) else {
                return 0;
            };
            rest = r;
        }
        let mut hit = metadata_hit(rest, 0);
        let mut at = 0;
        while let Some((end, sep)) = find_event_end(rest, at) {
            if hit < end {
                count += count_or_hand(&rest[at..end], true, &mut on_data);
                hit = metadata_hit(rest, end + sep);
            } else {
                count += count_or_hand(&rest[at..end], false, &mut on_data);
            }
            at = end + sep;
        }
        if at < rest.len() {
            self.buf.extend_from_slice(&rest[at..]);
            self.scanned = self.buf.len();
            self.bound();
        }
        count
    }

    /// Completes the event buffered from earlier chunks with the start of
    /// `chunk` and hands its raw bytes to `f`; returns the rest of `chunk`,
    /// or `None` when `chunk` did not end the event (it is buffered too).
    fn finish_buffered<'c>(&mut self, chunk: &'c [u8], f: impl FnOnce(&[u8])) -> Option<&'c [u8]> {
        let before = self.buf.len();
        self.buf.extend_from_slice(chunk);
        let Some((end, sep)) = find_event_end(&self.buf, self.scanned.saturating_sub(3)) else {
            self.scanned = self.buf.len();
            self.bound();
            return None;
        };
        f(&self.buf[..end]);
        self.buf.clear();
        self.scanned = 0;
        // The old bytes held no event end, so this one ends in `chunk`.
        Some(&chunk[end + sep - before..])
    }

    fn bound(&mut self) {
        if self.buf.len() > MAX_EVENT_BYTES {
            self.buf.clear();
            self.scanned = 0;
            self.overflowed = true;
        }
    }

    /// True if an event larger than [`MAX_EVENT_BYTES`] was dropped.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

fn find_event_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let from = from.min(buf.len());
    // Only a line feed can end an event: jump between them (memchr)
    // instead of looking at every byte.
    for j in memchr::memchr_iter(b'\n', &buf[from..]).map(|j| j + from) {
        if j > from && buf[j - 1] == b'\r' && buf.get(j + 1..j + 3) == Some(b"\r\n") {
            return Some((j - 1, 4));
        }
        if buf.get(j + 1) == Some(&b'\n') {
            return Some((j, 2));
        }
    }
    None
}

/// Calls `f` with the event's data (lines joined), if it has any.
fn emit(raw: &[u8], f: &mut impl FnMut(&str)) {
    let mut data: Option<std::borrow::Cow<'_, str>> = None;
    let lines = memchr::memchr_iter(b'\n', raw)
        .chain([raw.len()])
        .scan(0, |start, end| {
            let line = &raw[*start..end];
            *start = end + 1;
            Some(line)
        });
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(rest) = line.strip_prefix(b"data:") else {
            continue;
        };
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        // Valid UTF-8 (the normal case) is borrowed, not copied.
        let text = match std::str::from_utf8(rest) {
            Ok(t) => std::borrow::Cow::Borrowed(t),
            Err(_) => std::borrow::Cow::Owned(String::from_utf8_lossy(rest).into_owned()),
        };
        data = Some(match data {
            None => text,
            Some(d) => std::borrow::Cow::Owned(format!("{d}\n{text}")),
        });
    }
    if let Some(d) = data {
        f(&d);
    }
}

/// One event with its type: the last `event:` line's value (`None` without
/// one) and the data as [`emit`] joins it; `None` for an event with neither.
fn named(raw: &[u8]) -> Option<NamedEvent> {
    let mut event = None;
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(v) = line.strip_prefix(b"event:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            event = Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    let mut data = None;
    emit(raw, &mut |d: &str| data = Some(d.to_owned()));
    if data.is_none() && event.is_none() {
        return None;
    }
    Some(NamedEvent {
        event,
        data: data.unwrap_or_default(),
    })
}

/// One event of [`SseDecoder::push_counting`]: handed over (`suspect`, or
/// when its first data character is not ASCII), else counted if it is a
/// token chunk. Returns the count (0 or 1).
fn count_or_hand(raw: &[u8], suspect: bool, on_data: &mut impl FnMut(&str)) -> u64 {
    if !suspect {
        match first_data_byte(raw) {
            Some(b) if b.is_ascii() => return u64::from(b == b'{'),
            Some(_) => {}
            None => return 0,
        }
    }
    emit(raw, on_data);
    0
}

/// The first byte of an event's data (its `data:` lines joined with `\n`)
/// that `str::trim_start` keeps; `None` if the data is empty or all
/// whitespace, or if there is no data line.
fn first_data_byte(raw: &[u8]) -> Option<u8> {
    // The ASCII characters `char::is_whitespace` accepts.
    let ws = |b: u8| matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
    let mut line = raw;
    loop {
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            // A line feed ends the line; the joined `\n` is whitespace too.
            match value.iter().position(|&b| b == b'\n' || !ws(b)) {
                Some(i) if value[i] != b'\n' => return Some(value[i]),
                Some(i) => {
                    line = &value[i + 1..];
                    continue;
                }
                None => return None,
            }
        }
        line = &line[memchr::memchr(b'\n', line)? + 1..];
    }
}

/// Where in `b`, from `from` on, the first metadata key starts that
/// [`may_carry_metadata`] might accept in the event holding it; `usize::MAX`
/// if none. Scans raw event bytes, so it only ever finds more: a `null`
/// value is believed only when key, colon and `null` share one line.
fn metadata_hit(b: &[u8], from: usize) -> usize {
    let from = from.min(b.len());
    let b = &b[from..];
    let first_non_null = |key: &Finder<'_>| {
        key.find_iter(b).find(|&at| {
            let skip = |s: &[u8]| {
                s.iter()
                    .take_while(|&&c| matches!(c, b' ' | b'\t' | 0x0c))
                    .count()
            };
            let rest = &b[at + key.needle().len()..];
            let rest = &rest[skip(rest)..];
            match rest.strip_prefix(b":") {
                Some(v) => !v[skip(v)..].starts_with(b"null"),
                None => true,
            }
        })
    };
    let hits = [first_non_null(&USAGE), META.find(b), first_non_null(&ERROR)];
    hits.into_iter()
        .flatten()
        .min()
        .map_or(usize::MAX, |at| at + from)
}

// Built once: building a searcher costs more than running it on a chunk.
static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static META: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"meta_info\""));
static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));

/// Might this event carry something beyond output text (usage, SGLang
/// meta_info, an error)? A byte scan, far cheaper than parsing. `"usage":
/// null`, which vLLM-style engines put on every chunk, carries nothing.
pub fn may_carry_metadata(data: &str) -> bool {
    let b = data.as_bytes();
    has_non_null(b, &USAGE) || META.find(b).is_some() || has_non_null(b, &ERROR)
}

/// The key occurs, other than as `key: null` (a string value that happens to
/// equal the key also counts: false positives only cost a parse).
fn has_non_null(b: &[u8], key: &Finder<'_>) -> bool {
    let trim = |s: &[u8]| -> usize { s.iter().take_while(|c| c.is_ascii_whitespace()).count() };
    key.find_iter(b).any(|at| {
        let rest = &b[at + key.needle().len()..];
        let rest = &rest[trim(rest)..];
        match rest.strip_prefix(b":") {
            Some(v) => !v[trim(v)..].starts_with(b"null"),
            None => true,
        }
    })
}

/// What one event means for latency accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkInfo {
    /// The `[DONE]` sentinel.
    pub done: bool,
    /// Carries generated output (non-empty `choices`, or SGLang `text`):
    /// the first such chunk is the client's first token.
    pub has_output: bool,
    /// `usage.completion_tokens` (or SGLang `meta_info.completion_tokens`).
    pub completion_tokens: Option<u64>,
    /// An error object inside the stream.
    pub is_error: bool,
}

/// Only the members the gateway looks at; everything else is skipped
/// without being materialized (this runs once per streamed token).
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    meta_info: Option<Usage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// Classifies one event's data.
pub fn inspect(data: &str) -> ChunkInfo {
    let data = data.trim();
    if data == "[DONE]" {
        return ChunkInfo {
            done: true,
            ..ChunkInfo::default()
        };
    }
    let Ok(p) = serde_json::from_str::<Probe>(data) else {
        return ChunkInfo::default();
    };
    let mut info = ChunkInfo {
        is_error: p.error.is_some(),
        has_output: p.choices.is_some_and(|c| !c.is_empty()),
        completion_tokens: p.usage.and_then(|u| u.completion_tokens),
        done: false,
    };
    if let Some(meta) = p.meta_info {
        info.has_output = true;
        info.completion_tokens = meta.completion_tokens;
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_across_any_split() {
        let stream = b"data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: [DONE]\n\n";
        for split in 0..stream.len() {
            let mut d = SseDecoder::new();
            let mut evs = d.push(&stream[..split]);
            evs.extend(d.push(&stream[split..]));
            assert_eq!(evs.len(), 2, "split at {split}");
            assert!(inspect(&evs[0].data).has_output);
            assert!(inspect(&evs[1].data).done);
        }
    }

    #[test]
    fn crlf_comments_and_multiline_data() {
        let mut d = SseDecoder::new();
        let evs = d.push(b": keepalive\r\n\r\ndata: a\r\ndata: b\r\n\r\n");
        assert_eq!(
            evs,
            vec![SseEvent {
                data: "a\nb".into()
            }]
        );
    }

    #[test]
    fn usage_and_role_chunks() {
        let role = r#"{"choices":[{"delta":{"role":"assistant"},"index":0}]}"#;
        assert!(inspect(role).has_output);
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":64}}"#;
        let u = inspect(usage);
        assert!(!u.has_output);
        assert_eq!(u.completion_tokens, Some(64));
        assert!(inspect(r#"{"error":{"message":"x"}}"#).is_error);
        let sg = inspect(r#"{"text":"hi","meta_info":{"completion_tokens":2}}"#);
        assert!(sg.has_output);
        assert_eq!(sg.completion_tokens, Some(2));
        assert_eq!(inspect("garbage"), ChunkInfo::default());
    }

    #[test]
    fn metadata_prefilter_never_hides_usage_or_errors() {
        assert!(may_carry_metadata(
            r#"{"choices":[],"usage":{"completion_tokens":3}}"#
        ));
        assert!(may_carry_metadata(r#"{"error":{"message":"x"}}"#));
        assert!(may_carry_metadata(r#"{"text":"a","meta_info":{}}"#));
        assert!(!may_carry_metadata(r#"{"choices":[{"text":"hello"}]}"#));
        // vLLM with include_usage: null on every token chunk, then the real one.
        assert!(!may_carry_metadata(
            r#"{"choices":[{"text":"hi"}],"usage":null}"#
        ));
        assert!(!may_carry_metadata(
            r#"{"choices":[{"text":"hi"}],"usage" : null, "error":null}"#
        ));
        assert!(may_carry_metadata(
            r#"{"choices":[],"usage":null,"x":{"usage":{"completion_tokens":2}}}"#
        ));
        // A string value equal to a key: a needless parse, never a miss.
        assert!(may_carry_metadata(r#"{"choices":[{"text":"usage"}]}"#));
    }

    #[test]
    fn event_end_agrees_with_a_byte_by_byte_scan() {
        fn naive(buf: &[u8], from: usize) -> Option<(usize, usize)> {
            let mut i = from;
            while i + 1 < buf.len() {
                if buf[i] == b'\n' && buf[i + 1] == b'\n' {
                    return Some((i, 2));
                }
                if buf[i] == b'\r' && buf[i + 1] == b'\n' && buf.get(i + 2..i + 4) == Some(b"\r\n")
                {
                    return Some((i, 4));
                }
                i += 1;
            }
            None
        }
        // Every string of up to 8 bytes over {\r, \n, a}, from every offset.
        for len in 0..=8u32 {
            for code in 0..3usize.pow(len) {
                let buf: Vec<u8> = (0..len)
                    .map(|k| b"\r\na"[code / 3usize.pow(k) % 3])
                    .collect();
                for from in 0..=buf.len() {
                    assert_eq!(
                        find_event_end(&buf, from),
                        naive(&buf, from),
                        "{buf:?} from {from}"
                    );
                }
            }
        }
    }

    /// What the relay does with each event once the first token was seen:
    /// a parse for what may carry metadata, a count for token chunks.
    fn watch(data: &str, count: &mut u64, parsed: &mut Vec<String>) {
        if may_carry_metadata(data) {
            parsed.push(data.to_owned());
        } else if data.trim_start().starts_with('{') {
            *count += 1;
        }
    }

    #[test]
    fn push_counting_agrees_with_push_with() {
        const PIECES: &[&[u8]] = &[
            b"data: ",
            b"data:",
            b"data: {\"choices\":[{\"text\":\"hi\"}]}\n\n",
            b"data: {\"choices\":[],\"usage\":null}\n\n",
            b"{",
            b"}",
            b"\"usage\"",
            b"\"error\"",
            b"\"meta_info\"",
            b":",
            b" ",
            b"\t",
            b"\x0b",
            b"\x0c",
            b"null",
            b"nul",
            b"\n",
            b"\r",
            b"\r\n",
            b"\n\n",
            b"\r\n\r\n",
            b": comment",
            b"event: x",
            b"\xc2\xa0",
            b"\xe2\x80\xa8",
            b"\xff",
            b"[DONE]",
            b"{\"text\":\"usage\"}",
            b"data: \"usage\"",
            b"\"usage\":null",
            b"\"error\" :\tnull",
            b"\n:null",
            b"\ndata: :null",
        ];
        // A fixed-seed generator: the same cases on every run.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for case in 0..20_000 {
            let stream: Vec<u8> = (0..next(40))
                .flat_map(|_| PIECES[next(PIECES.len())].iter().copied())
                .collect();
            let mut cuts: Vec<usize> = (0..next(5)).map(|_| next(stream.len() + 1)).collect();
            cuts.push(0);
            cuts.push(stream.len());
            cuts.sort_unstable();
            let (mut old, mut new) = (SseDecoder::new(), SseDecoder::new());
            let (mut old_count, mut old_parsed) = (0, Vec::new());
            let (mut new_count, mut new_parsed) = (0, Vec::new());
            for w in cuts.windows(2) {
                let chunk = &stream[w[0]..w[1]];
                old.push_with(chunk, |d| watch(d, &mut old_count, &mut old_parsed));
                new_count +=
                    new.push_counting(chunk, |d| watch(d, &mut new_count, &mut new_parsed));
            }
            let shown = String::from_utf8_lossy(&stream);
            assert_eq!(
                new_count, old_count,
                "case {case}: {shown:?} cut at {cuts:?}"
            );
            assert_eq!(
                new_parsed, old_parsed,
                "case {case}: {shown:?} cut at {cuts:?}"
            );
        }
    }

    #[test]
    fn push_until_stops_after_the_event_and_hands_back_the_rest() {
        let stream =
            b"data: {\"role\":1}\n\ndata: {\"tok\":1}\r\n\r\ndata: {\"tok\":2}\n\ndata: [DONE]\n\n";
        // Every split into two pushes, stopping at the first token.
        for cut in 0..=stream.len() {
            let mut d = SseDecoder::new();
            let mut seen = Vec::new();
            let mut stopped = false;
            let mut after = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                if stopped {
                    after.extend_from_slice(part);
                    continue;
                }
                let rest = d.push_until(part, |data| {
                    seen.push(data.to_owned());
                    data.contains("tok")
                });
                if seen.last().is_some_and(|s| s.contains("tok")) {
                    stopped = true;
                    after.extend_from_slice(rest);
                } else {
                    assert!(rest.is_empty());
                }
            }
            assert_eq!(seen, ["{\"role\":1}", "{\"tok\":1}"], "cut {cut}");
            assert_eq!(after, b"data: {\"tok\":2}\n\ndata: [DONE]\n\n", "cut {cut}");
        }
    }

    #[test]
    fn push_counting_hands_over_usage_and_counts_tokens() {
        let token = "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\n";
        let usage = "data: {\"choices\":[],\"usage\":{\"completion_tokens\":3}}\n\n";
        let batch = format!("{token}{token}{usage}data: [DONE]\n\n");
        let mut d = SseDecoder::new();
        let mut handed = Vec::new();
        let n = d.push_counting(batch.as_bytes(), |data| handed.push(data.to_owned()));
        assert_eq!(n, 2);
        assert_eq!(handed.len(), 1);
        assert_eq!(inspect(&handed[0]).completion_tokens, Some(3));
    }

    #[test]
    fn named_events_keep_their_type_across_any_split() {
        let stream = "data: {\"a\":1}\r\n\r\n: comment\n\nevent: error\ndata: x\ndata: y\n\n\
                      event: ping\n\ndata: é\n\ndata: [DONE]\n\n";
        let ev = |event: Option<&str>, data: &str| NamedEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        };
        let want = vec![
            ev(None, "{\"a\":1}"),
            ev(Some("error"), "x\ny"),
            ev(Some("ping"), ""),
            ev(None, "é"),
            ev(None, "[DONE]"),
        ];
        for split in 0..=stream.len() {
            let mut d = SseDecoder::new();
            let mut got = d.push_named(&stream.as_bytes()[..split]);
            got.extend(d.push_named(&stream.as_bytes()[split..]));
            assert_eq!(got, want, "split at {split}");
        }
        // Byte by byte, through the multi-byte character too.
        let mut d = SseDecoder::new();
        let got: Vec<_> = stream.bytes().flat_map(|b| d.push_named(&[b])).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let mut d = SseDecoder::new();
        let evs = d.push(b"data: \xff\xfeok\n\n");
        assert_eq!(evs.len(), 1);
        assert!(evs[0].data.ends_with("ok"));
    }

    #[test]
    fn oversized_event_is_dropped_not_buffered() {
        let mut d = SseDecoder::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert!(d.push(&big).is_empty());
        assert!(d.overflowed());
        assert_eq!(d.push(b"data: ok\n\n").len(), 1);
    }
}
