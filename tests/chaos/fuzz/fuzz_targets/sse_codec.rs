//! The SSE decoder the relay runs over every upstream byte: no panics on any
//! input, events independent of how the stream is split into chunks, and the
//! chunk inspector total on whatever an event carries.
#![no_main]

use baton_protocol::sse::{inspect, SseDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // First two bytes: a seed for the chunk boundaries.
    let (seed, stream) = (u16::from_le_bytes([data[0], data[1]]), &data[2..]);

    let mut whole = SseDecoder::new();
    let expected = whole.push(stream);

    let mut split = SseDecoder::new();
    let mut got = Vec::new();
    let mut rest = stream;
    let mut s = seed as usize | 1;
    while !rest.is_empty() {
        s = s.wrapping_mul(1103515245).wrapping_add(12345) & 0x7fff_ffff;
        let n = (s % 7).min(rest.len()); // 0-byte pushes included
        got.extend(split.push(&rest[..n]));
        rest = &rest[n..];
        if n == 0 {
            got.extend(split.push(&rest[..1]));
            rest = &rest[1..];
        }
    }
    assert!(!whole.overflowed() && !split.overflowed());
    assert_eq!(
        got, expected,
        "events depend on chunk boundaries (seed {seed})"
    );

    for ev in &expected {
        let info = inspect(&ev.data);
        if info.done {
            assert!(!info.has_output && !info.is_error);
        }
    }
    // The inspector on raw (possibly non-event) text too.
    if let Ok(text) = std::str::from_utf8(stream) {
        let _ = inspect(text);
    }
});
