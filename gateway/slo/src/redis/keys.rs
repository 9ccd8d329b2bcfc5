//! Key layout. Every key starts with the prefix, which carries a hash tag
//! (default `baton:{slo}`) so that a Redis Cluster keeps them on one slot.
//!
//! Request ids are the client's (`x-request-id`): they never become key
//! names verbatim, only through [`key_id`], so a client cannot pick key
//! names (hash tags, glob characters, other replicas' keys) or their length.

use sha2::{Digest, Sha256};

/// The form a request id takes inside key names: lowercase hex of the first
/// 16 bytes of its SHA-256.
pub fn key_id(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Debug)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash `{rec, phase}` of one in-flight request.
    pub(super) fn request(&self, id: &str) -> String {
        format!("{}:req:{}", self.prefix, key_id(id))
    }

    /// Marker of a counted outcome (dedup).
    pub(super) fn done(&self, id: &str) -> String {
        format!("{}:done:{}", self.prefix, key_id(id))
    }

    /// The marker a Sentinel-following store writes before `WAIT`ing for
    /// its replicas (see `failover.rs`).
    pub(super) fn confirm(&self) -> String {
        format!("{}:confirm", self.prefix)
    }

    /// Goodput counters of one time bucket.
    pub(super) fn bucket(&self, bucket: u64) -> String {
        format!("{}:gp:{bucket}", self.prefix)
    }

    /// Prefix of the replica-state keys; the id follows.
    pub(super) fn replica_prefix(&self) -> String {
        format!("{}:replica:", self.prefix)
    }

    pub(super) fn replica(&self, id: &str) -> String {
        format!("{}{id}", self.replica_prefix())
    }

    /// Sorted set of replica ids scored by lease expiry (ms, server time).
    pub(super) fn replica_index(&self) -> String {
        format!("{}:replicas", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_become_fixed_length_hex() {
        let keys = Keys::new("baton:{slo}");
        for hostile in [
            "plain",
            "a}{b:replica:x",
            "*",
            "with space\r\nDEL x",
            &"x".repeat(100_000),
            "",
        ] {
            for key in [keys.request(hostile), keys.done(hostile)] {
                let tail = key.rsplit(':').next().unwrap();
                assert_eq!(tail.len(), 32, "{key}");
                assert!(tail.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
                assert!(key.starts_with("baton:{slo}:"));
                assert_eq!(key.matches('{').count(), 1, "one hash tag: {key}");
            }
        }
        assert_ne!(keys.request("a"), keys.request("b"));
        assert_eq!(keys.request("a"), keys.request("a"));
    }
}
