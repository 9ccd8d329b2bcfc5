//! SGLang's disaggregated-serving protocol.
//!
//! Concurrent: the same body goes to the prefill and the decode server, with
//! `bootstrap_host` / `bootstrap_port` / `bootstrap_room` naming the KV
//! rendezvous. Batches carry one room per item.

use bytes::Bytes;
use rand::Rng;
use serde_json::{json, Value};

use crate::request::encode;
use crate::ClientRequest;

/// Largest room id SGLang accepts (rooms are non-negative i64).
pub const MAX_ROOM: u64 = (1 << 63) - 1;

/// Where the decode server finds the prefill server's KV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub host: String,
    /// `None` sends `null`, which SGLang replaces with the *decode* server's
    /// default port; only for users who asked for it with `none`.
    pub port: Option<u16>,
}

/// One fresh room id per generation of the request.
pub fn fresh_rooms(rng: &mut impl Rng, count: usize) -> Vec<u64> {
    (0..count).map(|_| rng.random_range(0..=MAX_ROOM)).collect()
}

/// The body both legs receive.
pub fn pd_body(req: &ClientRequest, bootstrap: &Bootstrap, rooms: &[u64]) -> Bytes {
    let mut body = req.body.clone();
    let port = bootstrap.port.map_or(Value::Null, |p| json!(p));
    if req.is_batch {
        let n = rooms.len();
        body.insert(
            "bootstrap_host".into(),
            json!(vec![bootstrap.host.as_str(); n]),
        );
        body.insert("bootstrap_port".into(), Value::Array(vec![port; n]));
        body.insert("bootstrap_room".into(), json!(rooms));
    } else {
        body.insert("bootstrap_host".into(), json!(bootstrap.host));
        body.insert("bootstrap_port".into(), port);
        body.insert(
            "bootstrap_room".into(),
            json!(rooms.first().copied().unwrap_or(0)),
        );
    }
    encode(&body)
}

/// The host part of a worker URL (`http://h:1/x` → `h`; IPv6 brackets kept off).
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6).to_owned();
    }
    authority.split(':').next().unwrap_or(authority).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Endpoint;
    use rand::SeedableRng;

    #[test]
    fn single_request_gets_scalars() {
        let r = ClientRequest::parse(Endpoint::Completions, br#"{"prompt":"hi"}"#).unwrap();
        let b = Bootstrap {
            host: "10.0.0.7".into(),
            port: Some(8998),
        };
        let v: Value = serde_json::from_slice(&pd_body(&r, &b, &[42])).unwrap();
        assert_eq!(v["bootstrap_host"], "10.0.0.7");
        assert_eq!(v["bootstrap_port"], 8998);
        assert_eq!(v["bootstrap_room"], 42);
        assert_eq!(v["prompt"], "hi");
    }

    #[test]
    fn batch_gets_arrays_of_equal_length() {
        let r = ClientRequest::parse(Endpoint::Completions, br#"{"prompt":["a","b"]}"#).unwrap();
        let b = Bootstrap {
            host: "h".into(),
            port: None,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let rooms = fresh_rooms(&mut rng, r.batch);
        let v: Value = serde_json::from_slice(&pd_body(&r, &b, &rooms)).unwrap();
        assert_eq!(v["bootstrap_host"], json!(["h", "h"]));
        assert_eq!(v["bootstrap_port"], json!([null, null]));
        assert_eq!(v["bootstrap_room"].as_array().unwrap().len(), 2);
        assert_ne!(rooms[0], rooms[1]);
        assert!(rooms.iter().all(|r| *r <= MAX_ROOM));
    }

    #[test]
    fn hosts_from_urls() {
        assert_eq!(host_of("http://127.0.0.1:30000"), "127.0.0.1");
        assert_eq!(host_of("http://prefill-0.svc:8000/v1"), "prefill-0.svc");
        assert_eq!(host_of("https://[::1]:8000"), "::1");
        assert_eq!(host_of("worker"), "worker");
    }
}
