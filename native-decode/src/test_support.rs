//! Helpers shared by the crate's unit tests.

use std::time::Duration;

/// Waits (up to 60 s) until `cond` holds: the engine thread and the servers work at their own pace, so tests wait
/// for what they do, not for a guessed time. The 5 ms poll only sets how soon a met condition is noticed.
pub(crate) async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
