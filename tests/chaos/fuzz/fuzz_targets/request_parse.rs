//! `ClientRequest::parse`: whatever bytes a client sends, the gateway's edge
//! parser returns Ok or a ProtocolError — never panics — and what it accepts
//! survives the trip to the engines (re-serialized body parses again to the
//! same request).
#![no_main]

use baton_protocol::{ClientRequest, Endpoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let endpoint = match sel % 3 {
        0 => Endpoint::ChatCompletions,
        1 => Endpoint::Completions,
        _ => Endpoint::Generate,
    };
    let Ok(req) = ClientRequest::parse(endpoint, body) else {
        return;
    };
    // Everything the gateway derives from an accepted request.
    let _ = req.n();
    let _ = req.routing_text();
    let _ = req.original_bytes();
    let bytes = req.to_bytes();
    let again = ClientRequest::parse(endpoint, &bytes)
        .expect("a body the gateway accepted and re-serialized must parse again");
    assert_eq!(again.to_bytes(), bytes, "re-serialization is not stable");
    assert_eq!(again.n(), req.n());
    assert_eq!(again.routing_text(), req.routing_text());
});
