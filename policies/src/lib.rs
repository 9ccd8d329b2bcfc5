//! Routing policies for Baton's worker pools.
//!
//! Policies are pure and synchronous: the gateway hands them a plain snapshot of
//! the pool ([`WorkerView`]) and the features of one request ([`RequestFeatures`])
//! and they answer with an index into that snapshot. They never do I/O, never
//! look at the clock, and never see gateway types, so they are unit-tested with
//! literal data and can be reused by other front ends.

mod cache_aware;
mod kind;
mod least_load;
pub mod pipeline;
mod power_of_two;
mod random;
mod round_robin;
pub mod slo;
pub mod step;
mod view;

pub use cache_aware::{CacheAware, CacheAwareConfig};
pub use kind::{build, PolicyConfig, PolicyKind, UnknownPolicy};
pub use least_load::LeastLoad;
pub use power_of_two::PowerOfTwo;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use view::{RequestFeatures, WorkerView};

/// Chooses one worker of a pool for one request.
///
/// `pick` is called once per routing attempt (a retry calls it again with the
/// failed worker marked unavailable in the snapshot). It must return the index
/// of an entry of `workers` whose `available` is true, or `None` if none is.
pub trait RoutingPolicy: Send + Sync + std::fmt::Debug {
    /// Stable, lowercase name (as used on the command line).
    fn name(&self) -> &'static str;

    /// Picks a worker for `request` among the available `workers`.
    fn pick(&self, workers: &[WorkerView<'_>], request: &RequestFeatures<'_>) -> Option<usize>;

    /// Called when a worker was removed from the pool, so stateful policies
    /// (the cache-aware prefix tree) can forget it.
    fn on_worker_removed(&self, _url: &str) {}

    /// Whether [`admit`](Self::admit) can ever shed: callers skip building
    /// a snapshot per request for policies that cannot.
    fn has_admission(&self) -> bool {
        false
    }

    /// `Some(limit)` when `pick`/`admit` may run long (runtime scripts): the
    /// caller should call them off its async workers and stop waiting after
    /// `limit`. Pure policies answer in microseconds and are called inline.
    fn time_limit(&self) -> Option<std::time::Duration> {
        None
    }

    /// Called once per request, before the first `pick`: may shed it.
    fn admit(
        &self,
        _workers: &[WorkerView<'_>],
        _request: &RequestFeatures<'_>,
    ) -> pipeline::Admit {
        pipeline::Admit::Yes
    }

    /// Reloads runtime plugin files that changed since the last call (a
    /// pipeline with scripts: [`pipeline::Reloading`]); may read files, so
    /// callers run it off their async workers. Others have nothing to reload.
    fn reload_if_changed(&self) -> pipeline::Reload {
        pipeline::Reload::Unchanged
    }
}
