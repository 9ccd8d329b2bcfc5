//! Requests counted apart from attainment, over the same sliding window:
//! those refused as invalid (client errors: the fleet was not asked to
//! serve them) and those whose client left before the end (cancelled: as
//! vLLM's benchmark, a request nobody waited for is no miss).

use baton_slo::WindowCounts;

use super::accounting::LiveWindow;

/// Why a request is left out of attainment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excluded {
    ClientError,
    Cancelled,
}

/// Counts of one (class, tenant).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExcludedCounts {
    pub client_errors: u64,
    pub cancelled: u64,
}

impl ExcludedCounts {
    pub fn count(&mut self, why: Excluded) {
        match why {
            Excluded::ClientError => self.client_errors += 1,
            Excluded::Cancelled => self.cancelled += 1,
        }
    }
}

impl WindowCounts for ExcludedCounts {
    fn merge(&mut self, other: &Self) {
        self.client_errors += other.client_errors;
        self.cancelled += other.cancelled;
    }
}

/// The counts over the SLO window (the one live window, as goodput's).
pub type ExcludedWindow = LiveWindow<ExcludedCounts>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn counts_slide_out_of_the_window() {
        let w = ExcludedWindow::new(Duration::from_secs(10));
        w.add("standard", "acme", |c| c.count(Excluded::ClientError));
        w.add("standard", "acme", |c| c.count(Excluded::Cancelled));
        w.add("standard", "acme", |c| c.count(Excluded::Cancelled));
        let key = ("standard".to_owned(), "acme".to_owned());
        assert_eq!(
            w.counts()[&key],
            ExcludedCounts {
                client_errors: 1,
                cancelled: 2
            }
        );
        tokio::time::advance(Duration::from_secs(12)).await;
        w.add("batch", "x", |c| c.count(Excluded::ClientError));
        let c = w.counts();
        assert!(!c.contains_key(&key));
        assert_eq!(c.len(), 1);
    }
}
