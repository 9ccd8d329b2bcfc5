//! The tick of the gateway's background loops (health sweeps, discovery, plugin reloads, store sync): every
//! `period`, late ticks delayed rather than bunched, ending when the gateway stops.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub struct Periodic {
    tick: Interval,
    stop: CancellationToken,
}

impl Periodic {
    /// The first tick is immediate.
    pub fn new(period: Duration, stop: CancellationToken) -> Self {
        let mut tick = tokio::time::interval(period);
        // A slow pass (a hung engine, a slow resolver) must not be followed by a burst of catch-up passes.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { tick, stop }
    }

    /// Waits for the next tick; `false` once the gateway stops.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = self.tick.tick() => true,
        }
    }

    /// Runs `work` unless the gateway stops first (`None` then).
    pub async fn unless_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            _ = self.stop.cancelled() => None,
            v = work => Some(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_on_the_period_and_ends_with_the_gateway() {
        let stop = CancellationToken::new();
        let mut p = Periodic::new(Duration::from_secs(1), stop.clone());
        let t0 = tokio::time::Instant::now();
        assert!(p.next().await);
        assert!(p.next().await);
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
        assert_eq!(p.unless_stopped(async { 7 }).await, Some(7));
        stop.cancel();
        assert!(!p.next().await);
        assert_eq!(p.unless_stopped(std::future::pending::<()>()).await, None);
    }
}
