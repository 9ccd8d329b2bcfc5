//! Moving prompt KV from a prefill engine to a decode engine (vLLM NixlConnector "pull" semantics).
//!
//! The prefill engine keeps a finished prompt's blocks under a lease and advertises them in
//! `kv_transfer_params`; the decode engine pulls them through a [`KvPuller`]. The TCP implementation lives in
//! [`tcp`]; a GPU (RDMA/NVLink) path would be another `KvPuller` plus its listener.

pub mod frame;
pub mod tcp;

use std::future::Future;
use std::pin::Pin;

use serde_json::{json, Value};

use crate::engine::types::{ImportedKv, KvLease};
use crate::error::{Error, Result};

/// Where to pull a prompt's KV from, parsed from a decode request's `kv_transfer_params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKv {
    pub host: String,
    pub port: u16,
    pub transfer_id: String,
    pub block_ids: Vec<u32>,
    pub num_tokens: Option<usize>,
    pub engine_id: Option<String>,
}

impl RemoteKv {
    /// `Ok(None)` unless `do_remote_prefill` is true; an error when it is but the params are unusable.
    pub fn from_params(p: &Value) -> Result<Option<Self>> {
        if p.get("do_remote_prefill").and_then(Value::as_bool) != Some(true) {
            return Ok(None);
        }
        let bad = |m: &str| Error::InvalidRequest(format!("kv_transfer_params: {m}"));
        let host = p
            .get("remote_host")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("remote_host missing"))?;
        let port = p
            .get("remote_port")
            .and_then(Value::as_u64)
            .and_then(|x| u16::try_from(x).ok())
            .ok_or_else(|| bad("remote_port missing or invalid"))?;
        let transfer_id = p
            .get("remote_request_id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("remote_request_id missing"))?;
        // vLLM sends `[[ids…]]` (one list per KV cache group) in recent versions and `[ids…]` in older ones.
        let ids = p.get("remote_block_ids").cloned().unwrap_or(Value::Null);
        let flat: Vec<&Value> = match &ids {
            Value::Array(a) if a.iter().all(Value::is_array) => a
                .iter()
                .flat_map(|g| g.as_array().into_iter().flatten())
                .collect(),
            Value::Array(a) => a.iter().collect(),
            _ => Vec::new(),
        };
        let block_ids = flat
            .into_iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| bad("remote_block_ids"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Self {
            host: host.to_string(),
            port,
            transfer_id: transfer_id.to_string(),
            block_ids,
            num_tokens: p
                .get("remote_num_tokens")
                .and_then(Value::as_u64)
                .map(|x| x as usize),
            engine_id: p
                .get("remote_engine_id")
                .and_then(Value::as_str)
                .map(str::to_string),
        }))
    }
}

/// How this prefill engine is reached for pulls.
#[derive(Debug, Clone)]
pub struct KvEndpoint {
    pub engine_id: String,
    pub host: String,
    pub port: u16,
    pub lease_secs: u64,
}

impl KvEndpoint {
    /// The `kv_transfer_params` a prefill response carries (copied verbatim into the decode call).
    pub fn params(&self, lease: &KvLease, cached_tokens: usize) -> Value {
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
            + self.lease_secs as f64;
        json!({
            "do_remote_prefill": true,
            "do_remote_decode": false,
            "remote_block_ids": [lease.block_ids],
            "remote_engine_id": self.engine_id,
            "remote_request_id": lease.transfer_id,
            "remote_host": self.host,
            "remote_port": self.port,
            "remote_num_tokens": lease.num_tokens,
            "tp_size": 1,
            "dcp_size": 1,
            "pp_size": 1,
            "remote_blocks_expiry_time": expiry,
            "transfer_mode": "pull",
            "remote_prefill_cached_tokens": cached_tokens,
        })
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the pulling engine knows independently of the holder, so that nothing the holder says can make it
/// allocate more than the request itself would: the prompt's length and this engine's KV geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullBounds {
    /// Tokens of the decode request's own prompt: the holder may cover at most these.
    pub prompt_tokens: usize,
    /// Blocks in this engine's pool, of `block_size` tokens.
    pub pool_blocks: usize,
    pub block_size: usize,
    /// Floats one token's KV takes over all layers (K and V): fixes each block frame's exact size.
    pub floats_per_token: usize,
}

/// SHA-256 of a prompt's token ids (domain-separated, little-endian u32s): what a holder's KV was computed
/// for. The decode side imports only when it matches its own prompt.
pub fn prompt_digest(tokens: &[u32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"baton-prompt-v1");
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize().into()
}

/// Largest holder block size accepted (vLLM and this engine use 16; a bigger claim only inflates frames).
pub const MAX_REMOTE_BLOCK_SIZE: usize = 1024;

impl PullBounds {
    /// Checks a holder's description of its blocks; returns the exact byte size of one block frame.
    pub fn check(&self, block_size: usize, num_tokens: usize, num_blocks: usize) -> Result<usize> {
        let bad = |m: String| Err(Error::Transfer(format!("holder header rejected: {m}")));
        if block_size == 0 || block_size > MAX_REMOTE_BLOCK_SIZE {
            return bad(format!("block size {block_size}"));
        }
        if num_tokens == 0 || num_tokens > self.prompt_tokens {
            return bad(format!(
                "{num_tokens} tokens for a prompt of {}",
                self.prompt_tokens
            ));
        }
        if num_tokens > self.pool_blocks.saturating_mul(self.block_size) {
            return bad(format!("{num_tokens} tokens exceed this engine's KV pool"));
        }
        let expected_blocks = num_tokens.div_ceil(block_size);
        if num_blocks != expected_blocks {
            return bad(format!(
                "{num_blocks} blocks for {num_tokens} tokens of {block_size}"
            ));
        }
        let block_bytes = self
            .floats_per_token
            .checked_mul(block_size)
            .and_then(|f| f.checked_mul(4))
            .filter(|&b| b > 0);
        let Some(block_bytes) = block_bytes else {
            return bad("block byte size overflows".into());
        };
        // The whole transfer may not exceed what the prompt itself needs, rounded up to the holder's blocks.
        let max_total = self
            .prompt_tokens
            .div_ceil(block_size)
            .checked_mul(block_bytes);
        if max_total.is_none_or(|m| num_blocks.saturating_mul(block_bytes) > m) {
            return bad("transfer larger than the prompt's KV".into());
        }
        Ok(block_bytes)
    }
}

/// Fetches prompt KV from a prefill engine. Called by a decode engine's request handler before the request is
/// queued; an error means the decoder must recompute the prompt (or fail the request, per configuration).
/// `bounds` limit everything the holder may claim; a holder outside them fails the pull.
pub trait KvPuller: Send + Sync {
    fn pull<'a>(
        &'a self,
        remote: &'a RemoteKv,
        bounds: PullBounds,
    ) -> BoxFuture<'a, Result<ImportedKv>>;
}

/// What a decode engine does when a pull fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullFailurePolicy {
    /// Prefill the prompt locally (counted in `baton:kv_pull_recomputes_total`).
    Recompute,
    /// Fail the request.
    Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_and_flat_block_ids() {
        let p = json!({"do_remote_prefill": true, "remote_host": "h", "remote_port": 5601,
                       "remote_request_id": "x", "remote_block_ids": [[1, 2]], "remote_num_tokens": 20});
        let r = RemoteKv::from_params(&p).unwrap().unwrap();
        assert_eq!(r.block_ids, vec![1, 2]);
        assert_eq!(r.num_tokens, Some(20));
        let mut flat = p.clone();
        flat["remote_block_ids"] = json!([3]);
        assert_eq!(
            RemoteKv::from_params(&flat).unwrap().unwrap().block_ids,
            vec![3]
        );
        assert!(RemoteKv::from_params(&json!({"do_remote_decode": true}))
            .unwrap()
            .is_none());
        assert!(RemoteKv::from_params(&json!({"do_remote_prefill": true})).is_err());
    }

    #[test]
    fn pull_bounds_follow_the_prompt_and_the_model() {
        let b = PullBounds {
            prompt_tokens: 19,
            pool_blocks: 8,
            block_size: 4,
            floats_per_token: 10,
        };
        assert_eq!(b.check(4, 19, 5).unwrap(), 4 * 10 * 4);
        assert_eq!(b.check(16, 19, 2).unwrap(), 16 * 10 * 4);
        for (bs, toks, blocks) in [
            (4, 19, 1usize << 57), // the count must match the tokens
            (4, 20, 5),            // more tokens than the prompt
            (0, 19, 5),
            (1 << 40, 19, 1), // a huge block inflates every frame
            (4, 0, 0),
        ] {
            assert!(b.check(bs, toks, blocks).is_err(), "{bs} {toks} {blocks}");
        }
        let small_pool = PullBounds {
            pool_blocks: 2,
            ..b
        };
        assert!(small_pool.check(4, 19, 5).is_err());
    }

    #[test]
    fn prefill_params_carry_vllm_keys() {
        let ep = KvEndpoint {
            engine_id: "e".into(),
            host: "127.0.0.1".into(),
            port: 7000,
            lease_secs: 30,
        };
        let lease = KvLease {
            transfer_id: "t".into(),
            block_ids: vec![4, 5],
            num_tokens: 20,
        };
        let v = ep.params(&lease, 0);
        let back = RemoteKv::from_params(&v).unwrap().unwrap();
        assert_eq!(back.block_ids, vec![4, 5]);
        assert_eq!(back.port, 7000);
        assert_eq!(v["do_remote_decode"], json!(false));
        assert_eq!(v["transfer_mode"], json!("pull"));
    }
}
