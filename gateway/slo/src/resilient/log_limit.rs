use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// Lets one log line through per interval and counts the ones held back.
#[derive(Debug)]
pub(crate) struct LogLimit {
    base: Instant,
    interval_ms: u64,
    /// Time of the last line, in ms since `base`, plus one (0 = never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimit {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            base: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one)` if this line may be logged.
    pub(crate) fn permit(&self) -> Option<u64> {
        let now = u64::try_from(self.base.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.interval_ms;
        if due
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_interval() {
        let limit = LogLimit::new(Duration::from_secs(1));
        assert_eq!(limit.permit(), Some(0));
        assert_eq!(limit.permit(), None);
        assert_eq!(limit.permit(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(limit.permit(), Some(2));
    }
}
