//! vLLM NixlConnector "pull" mode (docs/PROTOCOLS.md §1): the prefill issues `kv_transfer_params`,
//! the decode must present them verbatim to pull the KV blocks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use super::server::{Call, Reply};
use super::stats::lock;

/// Transfer parameters issued by vLLM prefill mocks and not yet pulled by a decode mock.
/// Share one (clone it) between the prefill and decode mocks of a pair.
#[derive(Clone, Default)]
pub struct VllmKvRegistry {
    inner: Arc<Mutex<RegistryState>>,
}

#[derive(Default)]
struct RegistryState {
    /// (remote_engine_id, remote_request_id) → the full params as issued.
    entries: HashMap<(String, String), Value>,
    issued: u64,
    pulled: u64,
}

impl VllmKvRegistry {
    /// Params issued but never pulled (stranded prefill KV).
    pub fn outstanding(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// Params issued so far.
    pub fn issued(&self) -> u64 {
        lock(&self.inner).issued
    }

    /// Params pulled (matched by a decode) so far.
    pub fn pulled(&self) -> u64 {
        lock(&self.inner).pulled
    }

    fn insert(&self, params: Value) {
        let mut st = lock(&self.inner);
        st.issued += 1;
        st.entries
            .insert(key_of(&params).unwrap_or_default(), params);
    }

    /// Removes and returns true if `params` equals (all keys) an issued entry.
    fn pull(&self, params: &Value) -> bool {
        let Some(key) = key_of(params) else {
            return false;
        };
        let mut st = lock(&self.inner);
        if st.entries.get(&key) != Some(params) {
            return false;
        }
        st.entries.remove(&key);
        st.pulled += 1;
        true
    }
}

fn key_of(params: &Value) -> Option<(String, String)> {
    let engine = params.get("remote_engine_id")?.as_str()?;
    let request = params.get("remote_request_id")?.as_str()?;
    Some((engine.to_owned(), request.to_owned()))
}

/// The request's `kv_transfer_params`, if present and not null.
fn request_params<'a>(call: &'a Call<'_>) -> Option<&'a Value> {
    call.body.get("kv_transfer_params").filter(|v| !v.is_null())
}

/// A vLLM prefill: issues params only for `do_remote_decode: true`, `max_tokens == 1`,
/// `stream: false` and a first token that is not EOS; otherwise behaves like a plain engine.
pub(crate) async fn prefill(call: &Call<'_>) -> Reply {
    let remote_decode = request_params(call)
        .and_then(|p| p.get("do_remote_decode"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut completion = call.completion();
    if remote_decode {
        if call.req.stream {
            return Reply::error(400, "do_remote_decode requires stream=false");
        }
        if call.req.choices() != 1 {
            return Reply::error(400, "do_remote_decode requires n=1 and a single prompt");
        }
        // Params only when prefill stopped at the length cap (not on an EOS first token).
        if call.req.max_tokens == Some(1) && completion.finish_reason == "length" {
            // Issue only once the answer is ready, so a prefill cancelled before that strands
            // nothing in the registry.
            call.compute(&completion, true).await;
            completion.extra = issue(call);
            return call.answer(&completion);
        }
    }
    call.generate(completion, true).await
}

fn issue(call: &Call<'_>) -> Map<String, Value> {
    let shared = call.shared;
    let base = call
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map_or_else(
            || format!("cmpl-{:016x}", rand::random::<u64>()),
            str::to_owned,
        );
    let blocks = call.req.total_prompt_tokens().div_ceil(16).max(1) as u64;
    let first = shared
        .next_block
        .fetch_add(blocks, std::sync::atomic::Ordering::Relaxed);
    let mut params = prefill_kv_params(&shared.engine_id, shared.addr.port(), &base, first, blocks);
    params["x_mock_nonce"] = json!(format!("{:016x}", rand::random::<u64>()));
    if !call.cfg().lenient {
        shared.registry.insert(params.clone());
    }
    let mut extra = Map::new();
    extra.insert("kv_transfer_params".into(), params);
    extra
}

/// A vLLM decode: pulls the KV named by the request's params (which must match an issued entry
/// exactly), or prefills locally when there are none.
pub(crate) async fn decode(call: &Call<'_>) -> Reply {
    match request_params(call) {
        Some(params) => {
            let ok = if call.cfg().lenient {
                well_formed(params)
            } else {
                call.shared.registry.pull(params)
            };
            if !ok {
                call.shared.stats.update(|s| s.rejected_params += 1);
                return Reply::error(400, "invalid kv_transfer_params");
            }
        }
        None => call.shared.stats.update(|s| s.local_prefills += 1),
    }
    let completion = call.completion();
    call.generate(completion, true).await
}

/// What a decode-side params object must look like (used when no registry is shared).
fn well_formed(params: &Value) -> bool {
    params.get("do_remote_prefill") == Some(&Value::Bool(true))
        && params.get("do_remote_decode") != Some(&Value::Bool(true))
        && key_of(params).is_some()
}

/// The `kv_transfer_params` a vLLM (NixlConnector) prefill engine returns: `blocks` block ids from `first`,
/// a fresh transfer id derived from `request_id`, and a KV endpoint derived from the HTTP port. Shared with the
/// simulated engines (`crate::sim`).
pub(crate) fn prefill_kv_params(
    engine_id: &str,
    http_port: u16,
    request_id: &str,
    first: u64,
    blocks: u64,
) -> Value {
    json!({
        "do_remote_prefill": true,
        "do_remote_decode": false,
        "remote_block_ids": [(first..first + blocks).collect::<Vec<_>>()],
        "remote_engine_id": engine_id,
        "remote_request_id": format!("{request_id}-{:08x}", rand::random::<u32>()),
        "remote_host": "127.0.0.1",
        "remote_port": 5600 + http_port % 1000,
        "tp_size": 1,
    })
}
