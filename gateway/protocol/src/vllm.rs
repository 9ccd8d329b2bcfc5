//! vLLM's disaggregated-serving protocol (NixlConnector, pull mode).
//!
//! Sequential: a prefill call that computes the KV cache and returns
//! `kv_transfer_params`, then a decode call carrying those params verbatim.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::request::encode;
use crate::{ClientRequest, ProtocolError};

/// Body of the prefill leg: the client's body asking for exactly one token,
/// non-streaming, with the "please keep the KV for a remote decoder" flag.
pub fn prefill_body(req: &ClientRequest) -> Result<Bytes, ProtocolError> {
    if req.n() != 1 {
        return Err(ProtocolError::Unsupported(
            "n > 1 is not supported in vLLM prefill/decode mode".into(),
        ));
    }
    let mut body = req.body.clone();
    body.insert(
        "kv_transfer_params".into(),
        json!({
            "do_remote_decode": true,
            "do_remote_prefill": false,
            "remote_engine_id": null,
            "remote_block_ids": null,
            "remote_host": null,
            "remote_port": null,
        }),
    );
    body.insert("stream".into(), Value::Bool(false));
    body.remove("stream_options");
    body.insert("max_tokens".into(), json!(1));
    if body.contains_key("max_completion_tokens") {
        body.insert("max_completion_tokens".into(), json!(1));
    }
    // Minimum lengths belong to the decode leg only; with them prefill could
    // not stop after one token.
    body.remove("min_tokens");
    body.remove("min_completion_tokens");
    Ok(encode(&body))
}

/// The `kv_transfer_params` object of a prefill reply, if any.
///
/// `None` means prefill finished on its own (EOS or a stop string on the one
/// token); the decoder must then prefill by itself.
pub fn kv_transfer_params(prefill_reply: &[u8]) -> Result<Option<Value>, ProtocolError> {
    let value: Value = serde_json::from_slice(prefill_reply)
        .map_err(|e| ProtocolError::UpstreamReply(format!("prefill reply is not JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(ProtocolError::UpstreamReply(
            "prefill reply is not a JSON object".into(),
        ));
    };
    match obj.remove("kv_transfer_params") {
        None | Some(Value::Null) => Ok(None),
        Some(p @ Value::Object(_)) => Ok(Some(p)),
        Some(_) => Err(ProtocolError::UpstreamReply(
            "kv_transfer_params in prefill reply is not an object".into(),
        )),
    }
}

/// Body of the decode leg: the client's original body plus the prefill's
/// params, copied verbatim (keys differ across vLLM versions and forks).
pub fn decode_body(req: &ClientRequest, params: Option<&Value>) -> Bytes {
    let mut body: Map<String, Value> = req.body.clone();
    match params {
        Some(p) => {
            body.insert("kv_transfer_params".into(), p.clone());
        }
        None => {
            body.remove("kv_transfer_params");
        }
    }
    encode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Endpoint;

    fn req(s: &str) -> ClientRequest {
        ClientRequest::parse(Endpoint::Completions, s.as_bytes()).unwrap()
    }

    #[test]
    fn prefill_asks_for_one_token_without_streaming() {
        let r = req(
            r#"{"prompt":"hi","stream":true,"stream_options":{"include_usage":true},
                        "max_tokens":50,"max_completion_tokens":50,"min_tokens":5,"top_p":0.5}"#,
        );
        let b: Value = serde_json::from_slice(&prefill_body(&r).unwrap()).unwrap();
        assert_eq!(b["stream"], false);
        assert_eq!(b["max_tokens"], 1);
        assert_eq!(b["max_completion_tokens"], 1);
        assert!(b.get("stream_options").is_none());
        assert!(b.get("min_tokens").is_none());
        assert_eq!(b["top_p"], 0.5);
        assert_eq!(b["kv_transfer_params"]["do_remote_decode"], true);
        assert_eq!(b["kv_transfer_params"]["do_remote_prefill"], false);
    }

    #[test]
    fn n_greater_than_one_is_refused() {
        assert!(matches!(
            prefill_body(&req(r#"{"prompt":"hi","n":2}"#)),
            Err(ProtocolError::Unsupported(_))
        ));
    }

    #[test]
    fn real_vllm_reply_params_are_copied_verbatim() {
        let reply = include_bytes!("../tests/fixtures/vllm_prefill_reply.json");
        let params = kv_transfer_params(reply).unwrap().unwrap();
        let r = req(r#"{"prompt":"hi","stream":true,"max_tokens":50,"min_tokens":5}"#);
        let d: Value = serde_json::from_slice(&decode_body(&r, Some(&params))).unwrap();
        assert_eq!(d["kv_transfer_params"], params);
        assert_eq!(d["kv_transfer_params"]["remote_prefill_cached_tokens"], 0);
        assert_eq!(d["stream"], true);
        assert_eq!(d["max_tokens"], 50);
        assert_eq!(d["min_tokens"], 5);
    }

    #[test]
    fn reply_without_params_means_local_prefill() {
        let reply = br#"{"id":"x","choices":[{"text":"","finish_reason":"stop"}]}"#;
        assert_eq!(kv_transfer_params(reply).unwrap(), None);
        assert!(kv_transfer_params(b"<html>").is_err());
        assert!(kv_transfer_params(br#"{"kv_transfer_params":3}"#).is_err());
    }
}
