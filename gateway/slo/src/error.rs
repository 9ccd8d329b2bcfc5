use std::time::Duration;

/// Why a store call failed. Callers on the request path never see these from
/// [`ResilientStore`](crate::ResilientStore), which falls back to local state.
#[derive(Debug, thiserror::Error)]
pub enum SloStoreError {
    /// The backend could not be reached (connection refused, dropped, ...).
    #[error("SLO store unavailable: {0}")]
    Unavailable(String),
    /// The call did not finish within its time bound.
    #[error("SLO store call timed out")]
    Timeout,
    /// Data in the backend could not be decoded.
    #[error("corrupt SLO store data: {0}")]
    Corrupt(String),
    /// The backend answered with an error (e.g. a script error).
    #[error("SLO store backend error: {0}")]
    Backend(String),
}

impl SloStoreError {
    /// Whether the same call may succeed later (the backend is unreachable or
    /// slow, as opposed to holding bad data).
    pub fn is_retryable(&self) -> bool {
        matches!(self, SloStoreError::Unavailable(_) | SloStoreError::Timeout)
    }

    pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> Self {
        SloStoreError::Corrupt(format!("{what}: {e}"))
    }
}

impl From<tokio::time::error::Elapsed> for SloStoreError {
    fn from(_: tokio::time::error::Elapsed) -> Self {
        SloStoreError::Timeout
    }
}

/// Milliseconds for a TTL argument: at least 1 (Redis rejects `PX 0`).
pub(crate) fn ttl_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
