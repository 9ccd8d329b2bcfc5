//! Key layout. Every key starts with the prefix, which carries a hash tag
//! (default `baton:{slo}`) so that a Redis Cluster keeps them on one slot.

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
        format!("{}:req:{id}", self.prefix)
    }

    /// Marker of a counted outcome (dedup).
    pub(super) fn done(&self, id: &str) -> String {
        format!("{}:done:{id}", self.prefix)
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
