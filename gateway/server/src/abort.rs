//! Tying a background task's life to its owner's.

use tokio::task::JoinHandle;

/// Aborts a background task when dropped (the SGLang prefill watcher dies
/// with the client's stream; the store's resync task with its sync loop).
#[derive(Debug)]
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
