//! The progress bar (indicatif on stderr), hidden when output is not a terminal or `--quiet`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

/// Counts finished requests of one run.
pub struct Progress {
    bar: ProgressBar,
    failed: AtomicU64,
}

impl Progress {
    /// `total`: the number of requests if known (else a spinner with a count).
    pub fn new(total: Option<u64>, quiet: bool, prefix: &str) -> Self {
        let visible = !quiet && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let bar = match (visible, total) {
            (false, _) => ProgressBar::hidden(),
            (true, Some(n)) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            (true, None) => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(
                    "{prefix} [{elapsed_precise}] {spinner} {pos} done {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_prefix(prefix.to_owned());
        if visible {
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
        }
        Self {
            bar,
            failed: AtomicU64::new(0),
        }
    }

    pub fn hidden() -> Self {
        Self::new(None, true, "")
    }

    /// One request finished.
    pub fn finished(&self, ok: bool) {
        if !ok {
            let n = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
            self.bar.set_message(format!("({n} failed)"));
        }
        self.bar.inc(1);
    }

    pub fn done(&self) {
        self.bar.finish_and_clear();
    }
}
