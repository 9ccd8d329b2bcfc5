//! Prompt KV a prefill engine keeps for a decode engine to pull ("leases"), and the bounds on them.
//!
//! A lease pins blocks of the pool until it is pulled, so unpulled leases could starve everyone else. Three
//! bounds keep them harmless: leases may hold at most a share of the pool in total and a smaller share per tenant
//! (a request past either bound gets no lease: its prefill answer carries no `kv_transfer_params`, and the decode
//! side computes the prompt itself); after a short grace a lease's blocks are reclaimed as soon as another request
//! needs them; and every lease dies at its TTL. There is no renewal: a lease's TTL is fixed when it is made.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::kv::store::BlockId;

/// Prompt KV kept for a remote decoder.
#[derive(Debug)]
pub(super) struct Lease {
    pub(super) blocks: Vec<BlockId>,
    pub(super) num_tokens: usize,
    /// [`crate::transfer::prompt_digest`] of the tokens the blocks hold.
    pub(super) prompt_digest: [u8; 32],
    tenant: String,
    created: Instant,
    expires: Instant,
}

/// How long leases live and how much of the pool they may hold.
#[derive(Debug, Clone, Copy)]
pub(super) struct LeaseLimits {
    pub(super) ttl: Duration,
    pub(super) grace: Duration,
    pub(super) max_blocks: usize,
    pub(super) max_blocks_per_tenant: usize,
}

impl LeaseLimits {
    /// Limits for a pool of `num_blocks`, from the shares in the engine configuration.
    pub(super) fn new(
        ttl: Duration,
        grace: Duration,
        num_blocks: usize,
        total_share: f64,
        tenant_share: f64,
    ) -> Self {
        let share = |f: f64| (num_blocks as f64 * f.clamp(0.0, 1.0)).floor() as usize;
        let max_blocks = share(total_share);
        Self {
            ttl,
            grace,
            max_blocks,
            max_blocks_per_tenant: share(tenant_share).min(max_blocks),
        }
    }
}

/// The live leases, by transfer id.
#[derive(Debug)]
pub(super) struct Leases {
    limits: LeaseLimits,
    by_id: HashMap<String, Lease>,
    /// Ids in creation order (may name leases already gone; skipped lazily).
    order: VecDeque<String>,
    blocks_held: usize,
    per_tenant: HashMap<String, usize>,
}

/// A fresh transfer id: 128 bits from the OS-seeded CSPRNG, as 32 hex digits. Nothing about it can be guessed
/// from other ids or from the request.
pub(super) fn new_transfer_id() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

impl Leases {
    pub(super) fn new(limits: LeaseLimits) -> Self {
        Self {
            limits,
            by_id: HashMap::new(),
            order: VecDeque::new(),
            blocks_held: 0,
            per_tenant: HashMap::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Makes a lease of `blocks` for `tenant` if the bounds allow it; returns its transfer id, or gives the
    /// blocks back (`Err`) for the caller to free.
    pub(super) fn grant(
        &mut self,
        tenant: &str,
        blocks: Vec<BlockId>,
        num_tokens: usize,
        prompt_digest: [u8; 32],
        now: Instant,
    ) -> Result<String, Vec<BlockId>> {
        let n = blocks.len();
        let tenant_held = self.per_tenant.get(tenant).copied().unwrap_or(0);
        if self.blocks_held + n > self.limits.max_blocks
            || tenant_held + n > self.limits.max_blocks_per_tenant
        {
            return Err(blocks);
        }
        let id = new_transfer_id();
        self.blocks_held += n;
        *self.per_tenant.entry(tenant.to_string()).or_default() += n;
        self.order.push_back(id.clone());
        self.by_id.insert(
            id.clone(),
            Lease {
                blocks,
                num_tokens,
                prompt_digest,
                tenant: tenant.to_string(),
                created: now,
                expires: now + self.limits.ttl,
            },
        );
        Ok(id)
    }

    /// Removes and returns the lease `id` (a pull takes it).
    pub(super) fn take(&mut self, id: &str) -> Option<Lease> {
        let lease = self.by_id.remove(id)?;
        self.blocks_held -= lease.blocks.len();
        if let Some(t) = self.per_tenant.get_mut(&lease.tenant) {
            *t -= lease.blocks.len();
            if *t == 0 {
                self.per_tenant.remove(&lease.tenant);
            }
        }
        // Pulled ids linger in `order` until they reach its front; keep that list proportional to the live set.
        if self.order.len() > 2 * self.by_id.len() + 64 {
            self.order.retain(|id| self.by_id.contains_key(id));
        }
        Some(lease)
    }

    /// Removes and returns every lease past its TTL.
    pub(super) fn take_expired(&mut self, now: Instant) -> Vec<Lease> {
        let ids: Vec<String> = self
            .by_id
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let out = ids.iter().filter_map(|id| self.take(id)).collect();
        self.order.retain(|id| self.by_id.contains_key(id));
        out
    }

    /// Removes and returns the oldest lease past its grace, for its blocks to serve a request that needs them.
    pub(super) fn take_reclaimable(&mut self, now: Instant) -> Option<Lease> {
        while let Some(id) = self.order.front() {
            match self.by_id.get(id) {
                None => {
                    self.order.pop_front();
                }
                Some(l) if now.duration_since(l.created) >= self.limits.grace => {
                    let id = self.order.pop_front()?;
                    return self.take(&id);
                }
                Some(_) => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any prompt digest: the lease bookkeeping does not look at it.
    const D: [u8; 32] = [0; 32];

    fn limits(grace: Duration) -> LeaseLimits {
        LeaseLimits::new(Duration::from_secs(600), grace, 100, 0.5, 0.2)
    }

    #[test]
    fn shares_become_block_bounds() {
        let l = limits(Duration::ZERO);
        assert_eq!((l.max_blocks, l.max_blocks_per_tenant), (50, 20));
        let odd = LeaseLimits::new(Duration::ZERO, Duration::ZERO, 10, 2.0, f64::NAN);
        assert_eq!((odd.max_blocks, odd.max_blocks_per_tenant), (10, 0));
    }

    #[test]
    fn grants_stop_at_the_tenant_and_total_bounds() {
        let mut ls = Leases::new(limits(Duration::ZERO));
        let now = Instant::now();
        let a = ls.grant("a", (0..15).collect(), 60, D, now).unwrap();
        assert_eq!(
            ls.grant("a", (15..21).collect(), 24, D, now),
            Err((15..21).collect())
        );
        ls.grant("b", (21..41).collect(), 80, D, now).unwrap();
        // 35 held; tenant c may have 20 but the total allows 15 more.
        assert!(ls.grant("c", (41..57).collect(), 64, D, now).is_err());
        ls.grant("c", (41..56).collect(), 60, D, now).unwrap();
        // A pull gives the room back.
        assert_eq!(ls.take(&a).map(|l| l.blocks.len()), Some(15));
        assert!(ls.take(&a).is_none());
        ls.grant("a", (0..15).collect(), 60, D, now).unwrap();
    }

    #[test]
    fn reclaim_takes_the_oldest_past_grace_and_expiry_takes_all_due() {
        let mut ls = Leases::new(limits(Duration::from_secs(5)));
        let t0 = Instant::now();
        let first = ls.grant("a", vec![1], 4, D, t0).unwrap();
        ls.grant("b", vec![2], 4, D, t0 + Duration::from_secs(3))
            .unwrap();
        assert!(ls.take_reclaimable(t0 + Duration::from_secs(4)).is_none());
        let r = ls.take_reclaimable(t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(r.blocks, vec![1]);
        assert!(ls.take(&first).is_none());
        assert!(ls.take_reclaimable(t0 + Duration::from_secs(6)).is_none());
        assert_eq!(ls.take_expired(t0 + Duration::from_secs(700)).len(), 1);
        assert!(ls.is_empty());
    }

    #[test]
    fn transfer_ids_are_128_random_bits() {
        let (a, b) = (new_transfer_id(), new_transfer_id());
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
        }
    }
}
