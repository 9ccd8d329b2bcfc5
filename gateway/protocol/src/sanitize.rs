//! Fields that steer fleet internals: only the gateway sets them.
//!
//! Clients are untrusted. A client's `kv_transfer_params` would make an
//! engine pull KV from any host the client names (or import another
//! request's KV), SGLang's `bootstrap_*` fields name a KV rendezvous, and
//! `cache_salt` decides which prefix-cache entries a request may share. So
//! [`strip_client_fields`] removes them from every client body (every mode
//! goes through [`crate::ClientRequest::parse`]), the planners add the
//! gateway's own values, and [`strip_reply_internals`] keeps the engine's KV
//! endpoint (host, port, engine id) out of replies to clients.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::ClientRequest;

/// Body fields a client may never set.
pub const CLIENT_FORBIDDEN_FIELDS: &[&str] = &[
    "kv_transfer_params",
    "cache_salt",
    "bootstrap_host",
    "bootstrap_port",
    "bootstrap_room",
];

/// The body field carrying a request's prefix-cache salt (vLLM's name).
pub const CACHE_SALT_FIELD: &str = "cache_salt";

/// Reply fields that describe the fleet rather than the answer.
const REPLY_INTERNAL_FIELDS: &[&str] = &["kv_transfer_params"];

/// Removes [`CLIENT_FORBIDDEN_FIELDS`]; true when anything was removed (the
/// client's raw bytes can then no longer be forwarded as they are).
pub fn strip_client_fields(body: &mut Map<String, Value>) -> bool {
    let mut removed = false;
    for field in CLIENT_FORBIDDEN_FIELDS {
        removed |= body.remove(*field).is_some();
    }
    removed
}

/// The reply without fleet-internal top-level fields, or `None` when it has
/// none (the common case costs one substring scan, no parse).
pub fn strip_reply_internals(reply: &[u8]) -> Option<Bytes> {
    if !REPLY_INTERNAL_FIELDS
        .iter()
        .any(|f| memchr::memmem::find(reply, f.as_bytes()).is_some())
    {
        return None;
    }
    let mut value: Value = serde_json::from_slice(reply).ok()?;
    // SGLang batch answers are arrays of objects.
    let objects: Vec<&mut Map<String, Value>> = match &mut value {
        Value::Object(o) => vec![o],
        Value::Array(items) => items.iter_mut().filter_map(Value::as_object_mut).collect(),
        _ => Vec::new(),
    };
    // vLLM always sends `"kv_transfer_params": null`: that reveals nothing,
    // and leaving such replies byte-for-byte spares a re-serialization.
    let mut leaks = false;
    for obj in objects {
        for field in REPLY_INTERNAL_FIELDS {
            leaks |= obj.remove(*field).is_some_and(|v| !v.is_null());
        }
    }
    leaks.then(|| Bytes::from(serde_json::to_vec(&value).unwrap_or_default()))
}

impl ClientRequest {
    /// Sets the body's `cache_salt` (`Some`) or removes it (`None`). The
    /// client's raw bytes stay forwardable (aggregated mode) with the salt
    /// appended, so the body is not re-serialized on the hot path.
    pub fn set_cache_salt(&mut self, salt: Option<&str>) {
        let Some(salt) = salt else {
            if self.body.remove(CACHE_SALT_FIELD).is_some() {
                self.raw = None;
            }
            return;
        };
        let replaced = self
            .body
            .insert(CACHE_SALT_FIELD.into(), Value::String(salt.to_owned()))
            .is_some();
        let empty = self.body.len() == 1;
        self.raw = match (&self.raw, replaced) {
            (Some(raw), false) => append_string_member(raw, CACHE_SALT_FIELD, salt, empty),
            _ => None,
        };
    }
}

/// `raw` (a JSON object's bytes) with `"name":"value"` added as its last
/// member, without re-serializing the rest. `None` if `raw` does not end
/// like an object. `name` must not already be a member (the caller stripped it).
pub fn append_string_member(raw: &[u8], name: &str, value: &str, empty: bool) -> Option<Bytes> {
    let close = raw.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if raw[close] != b'}' {
        return None;
    }
    let name = serde_json::to_string(name).ok()?;
    let value = serde_json::to_string(value).ok()?;
    let mut out = Vec::with_capacity(raw.len() + name.len() + value.len() + 3);
    out.extend_from_slice(&raw[..close]);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    out.extend_from_slice(value.as_bytes());
    out.push(b'}');
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forbidden_fields_are_removed_and_reported() {
        let mut body = json!({
            "prompt": "hi",
            "kv_transfer_params": {"remote_host": "10.0.0.1", "remote_port": 1},
            "cache_salt": "mine",
            "bootstrap_host": "evil", "bootstrap_port": 1, "bootstrap_room": 7,
            "top_p": 0.5,
        })
        .as_object()
        .unwrap()
        .clone();
        assert!(strip_client_fields(&mut body));
        assert_eq!(body.keys().collect::<Vec<_>>(), ["prompt", "top_p"]);
        assert!(!strip_client_fields(&mut body));
    }

    #[test]
    fn reply_internals_are_removed_only_when_present() {
        let plain = br#"{"id":"x","choices":[{"text":"kv"}]}"#;
        assert_eq!(strip_reply_internals(plain), None);
        let leaky = br#"{"id":"x","kv_transfer_params":{"remote_host":"10.1.2.3","remote_port":5601,"remote_engine_id":"e"},"usage":{}}"#;
        let clean = strip_reply_internals(leaky).unwrap();
        let v: Value = serde_json::from_slice(&clean).unwrap();
        assert_eq!(v, json!({"id": "x", "usage": {}}));
        let batch = br#"[{"text":"a","kv_transfer_params":null},{"text":"b","kv_transfer_params":{"remote_port":1}}]"#;
        let v: Value = serde_json::from_slice(&strip_reply_internals(batch).unwrap()).unwrap();
        assert_eq!(v, json!([{"text": "a"}, {"text": "b"}]));
        // vLLM's usual `null` is left alone (nothing to hide).
        assert_eq!(
            strip_reply_internals(br#"{"id":"x","kv_transfer_params":null}"#),
            None
        );
        // The words inside an answer's text are not a field: nothing to strip.
        assert_eq!(
            strip_reply_internals(br#"{"text":"kv_transfer_params"}"#),
            None
        );
    }

    #[test]
    fn client_fields_are_stripped_at_parse_and_the_salt_is_the_gateways() {
        use crate::Endpoint;
        let sent = br#"{"prompt":"hi","cache_salt":"guess","kv_transfer_params":{"do_remote_prefill":true,"remote_host":"10.9.9.9","remote_port":9}}"#;
        let mut r = ClientRequest::parse(Endpoint::Completions, sent).unwrap();
        assert!(r.body.get("kv_transfer_params").is_none());
        assert!(r.body.get("cache_salt").is_none());
        // Stripped: the original bytes must not reach an engine.
        let forwarded: Value = serde_json::from_slice(&r.original_bytes()).unwrap();
        assert_eq!(forwarded, json!({"prompt": "hi"}));
        r.set_cache_salt(Some("00ff"));
        let forwarded: Value = serde_json::from_slice(&r.original_bytes()).unwrap();
        assert_eq!(forwarded, json!({"prompt": "hi", "cache_salt": "00ff"}));

        // A clean body keeps its bytes and gets the salt appended.
        let clean = br#"{"prompt": "hi",  "max_tokens": 3}"#;
        let mut r = ClientRequest::parse(Endpoint::Completions, clean).unwrap();
        r.set_cache_salt(Some("abcd"));
        let raw = r.raw.clone().expect("raw bytes kept");
        assert!(raw.starts_with(br#"{"prompt": "hi",  "max_tokens": 3"#));
        assert_eq!(
            serde_json::from_slice::<Value>(&raw).unwrap()["cache_salt"],
            "abcd"
        );
        assert_eq!(r.body["cache_salt"], "abcd");
        // Replacing or removing it falls back to the serialized body.
        r.set_cache_salt(Some("ef01"));
        assert_eq!(
            serde_json::from_slice::<Value>(&r.original_bytes()).unwrap()["cache_salt"],
            "ef01"
        );
        r.set_cache_salt(None);
        assert!(serde_json::from_slice::<Value>(&r.original_bytes())
            .unwrap()
            .get("cache_salt")
            .is_none());

        // Escaped key spellings are the same key once parsed.
        let sneaky = br#"{"prompt":"hi","kv\u005ftransfer_params":{"remote_port":1}}"#;
        let r = ClientRequest::parse(Endpoint::Completions, sneaky).unwrap();
        assert!(r.raw.is_none() && r.body.get("kv_transfer_params").is_none());
    }

    #[test]
    fn pd_planners_never_carry_client_transfer_fields() {
        use crate::{sglang, vllm, Endpoint};
        let sent = br#"{"prompt":"hi","kv_transfer_params":{"do_remote_prefill":true,"remote_host":"10.9.9.9"},"bootstrap_host":"10.9.9.9","bootstrap_room":5}"#;
        let r = ClientRequest::parse(Endpoint::Completions, sent).unwrap();
        let d: Value = serde_json::from_slice(&vllm::decode_body(&r, None)).unwrap();
        assert!(d.get("kv_transfer_params").is_none());
        let p: Value = serde_json::from_slice(&vllm::prefill_body(&r).unwrap()).unwrap();
        assert_eq!(p["kv_transfer_params"]["do_remote_decode"], true);
        assert!(p["kv_transfer_params"]["remote_host"].is_null());
        let b = sglang::Bootstrap {
            host: "127.0.0.1".into(),
            port: Some(8998),
        };
        let s: Value = serde_json::from_slice(&sglang::pd_body(&r, &b, &[42])).unwrap();
        assert_eq!(
            (s["bootstrap_host"].as_str(), s["bootstrap_room"].as_u64()),
            (Some("127.0.0.1"), Some(42))
        );
    }

    #[test]
    fn appended_member_keeps_the_rest_byte_for_byte() {
        let raw = b"{\"prompt\": \"a\\u00e9\" }\n";
        let out = append_string_member(raw, "cache_salt", "ab\"c", false).unwrap();
        assert_eq!(
            &out[..],
            &b"{\"prompt\": \"a\\u00e9\" ,\"cache_salt\":\"ab\\\"c\"}"[..]
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["cache_salt"], "ab\"c");
        let out = append_string_member(b"{}", "k", "v", true).unwrap();
        assert_eq!(&out[..], b"{\"k\":\"v\"}");
        assert_eq!(append_string_member(b"[1]", "k", "v", false), None);
    }
}
