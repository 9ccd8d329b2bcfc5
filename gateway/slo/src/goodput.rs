//! Goodput: the one "good request" rule ([`Verdict`]), the goodput rows of
//! the one sliding window ([`GoodputWindow`]), bucketing, field names and
//! aggregation. Shared by the memory and Redis stores, by each gateway
//! replica's live accounting and by the load generator, so all count the
//! same way.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::window::{SlidingWindow, WindowCounts};
use crate::GoodputRow;

/// Latency budgets a request is held to, in milliseconds; `None` constrains
/// nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Targets {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
}

/// What a served request measured, in milliseconds. `tpot_ms` is `None` for
/// an answer of at most one token: it has no time per output token.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Measured {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
}

/// How one request ended against its targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    pub ttft_met: bool,
    pub tpot_met: bool,
    /// Rejected at admission (a miss).
    pub rejected: bool,
    /// Failed or aborted (a miss).
    pub failed: bool,
}

impl Verdict {
    /// A request that was served to the end (DistServe's rule): TTFT met
    /// when measured within its budget; TPOT met when within its budget or
    /// when there is none to measure (one token).
    pub fn served(targets: Targets, measured: Measured) -> Self {
        Self {
            ttft_met: within_budget(targets.ttft_ms, measured.ttft_ms),
            tpot_met: measured.tpot_ms.is_none()
                || within_budget(targets.tpot_ms, measured.tpot_ms),
            rejected: false,
            failed: false,
        }
    }

    /// A request that was not served: every target missed.
    pub fn unserved(rejected: bool, failed: bool) -> Self {
        Self {
            rejected,
            failed,
            ..Self::default()
        }
    }

    /// Good: served, and both targets met. The only place this is decided.
    pub fn is_good(&self) -> bool {
        self.ttft_met && self.tpot_met && !self.rejected && !self.failed
    }
}

/// A measurement within a budget: no budget is always met, a missing
/// measurement never meets one.
pub fn within_budget(budget_ms: Option<f64>, got_ms: Option<f64>) -> bool {
    match (budget_ms, got_ms) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(limit), Some(got)) => got <= limit,
    }
}

/// Goodput rows in time buckets, per (class, tenant): the window of the
/// embedded store and of each gateway replica's live accounting.
pub type GoodputWindow = SlidingWindow<GoodputRow>;

impl WindowCounts for GoodputRow {
    fn merge(&mut self, other: &Self) {
        for k in GoodputCounter::ALL {
            add(self, k, counter(other, k));
        }
    }
}

impl SlidingWindow<GoodputRow> {
    /// Counts one request that ended at `at_ms`.
    pub fn record(&mut self, at_ms: u64, class: &str, tenant: &str, v: &Verdict) {
        self.add(at_ms, class, tenant, |row| row.count(v));
    }

    /// Counters over `[now_ms - window, now_ms]`, one row per (class,
    /// tenant), sorted.
    pub fn rows(&self, window: Duration, now_ms: u64) -> Vec<GoodputRow> {
        self.sum(window, now_ms)
            .into_iter()
            .map(|((class, tenant), c)| GoodputRow { class, tenant, ..c })
            .collect()
    }
}

/// How outcomes are bucketed and how long they are kept.
#[derive(Clone, Debug, PartialEq)]
pub struct GoodputConfig {
    /// Bucket width (default 1 s). A window is rounded out to whole buckets.
    pub bucket: Duration,
    /// The longest window answered (default 1 h); older buckets are pruned
    /// (Redis: expire).
    pub retention: Duration,
    /// How long a finished request id is remembered so that a replayed
    /// outcome counts once (default 5 min).
    pub dedup_ttl: Duration,
}

impl Default for GoodputConfig {
    fn default() -> Self {
        Self {
            bucket: Duration::from_secs(1),
            retention: Duration::from_secs(3600),
            dedup_ttl: Duration::from_secs(300),
        }
    }
}

impl GoodputConfig {
    pub(crate) fn bucket_ms(&self) -> u64 {
        crate::error::ttl_ms(self.bucket)
    }

    /// The bucket an outcome finishing at `at_ms` lands in.
    pub(crate) fn bucket_of(&self, at_ms: u64) -> u64 {
        at_ms / self.bucket_ms()
    }

    /// Buckets covering `[now_ms - window, now_ms]`, the window clamped to
    /// the retention.
    pub(crate) fn bucket_range(&self, window: Duration, now_ms: u64) -> RangeInclusive<u64> {
        let window = window.min(self.retention);
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self.bucket_of(now_ms.saturating_sub(window_ms))..=self.bucket_of(now_ms)
    }

    /// Buckets older than this (relative to the newest bucket `newest`) can
    /// never be part of an answer.
    pub(crate) fn oldest_kept(&self, newest: u64) -> u64 {
        let span = crate::error::ttl_ms(self.retention) / self.bucket_ms() + 1;
        newest.saturating_sub(span)
    }
}

/// One counter of a goodput row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GoodputCounter {
    Requests,
    Good,
    TtftMet,
    TpotMet,
    Rejected,
    Failed,
}

impl GoodputCounter {
    pub const ALL: [GoodputCounter; 6] = [
        GoodputCounter::Requests,
        GoodputCounter::Good,
        GoodputCounter::TtftMet,
        GoodputCounter::TpotMet,
        GoodputCounter::Rejected,
        GoodputCounter::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GoodputCounter::Requests => "requests",
            GoodputCounter::Good => "good",
            GoodputCounter::TtftMet => "ttft_met",
            GoodputCounter::TpotMet => "tpot_met",
            GoodputCounter::Rejected => "rejected",
            GoodputCounter::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The counters one outcome increments (by one each).
    pub fn of(v: &Verdict) -> impl Iterator<Item = GoodputCounter> {
        [
            (GoodputCounter::Requests, true),
            (GoodputCounter::Good, v.is_good()),
            (GoodputCounter::TtftMet, v.ttft_met),
            (GoodputCounter::TpotMet, v.tpot_met),
            (GoodputCounter::Rejected, v.rejected),
            (GoodputCounter::Failed, v.failed),
        ]
        .into_iter()
        .filter_map(|(c, on)| on.then_some(c))
    }
}

impl GoodputRow {
    /// Counts one request that ended so.
    pub fn count(&mut self, v: &Verdict) {
        for c in GoodputCounter::of(v) {
            add(self, c, 1);
        }
    }
}

/// Adds `n` to one counter of a row.
pub(crate) fn add(row: &mut GoodputRow, c: GoodputCounter, n: u64) {
    let slot = slot(row, c);
    *slot = slot.saturating_add(n);
}

/// One counter of a row.
fn counter(row: &GoodputRow, c: GoodputCounter) -> u64 {
    match c {
        GoodputCounter::Requests => row.requests,
        GoodputCounter::Good => row.good,
        GoodputCounter::TtftMet => row.ttft_met,
        GoodputCounter::TpotMet => row.tpot_met,
        GoodputCounter::Rejected => row.rejected,
        GoodputCounter::Failed => row.failed,
    }
}

fn slot(row: &mut GoodputRow, c: GoodputCounter) -> &mut u64 {
    match c {
        GoodputCounter::Requests => &mut row.requests,
        GoodputCounter::Good => &mut row.good,
        GoodputCounter::TtftMet => &mut row.ttft_met,
        GoodputCounter::TpotMet => &mut row.tpot_met,
        GoodputCounter::Rejected => &mut row.rejected,
        GoodputCounter::Failed => &mut row.failed,
    }
}

/// Rows keyed by (class, tenant), sorted.
#[derive(Debug, Default)]
pub(crate) struct RowSet(BTreeMap<(String, String), GoodputRow>);

impl RowSet {
    pub(crate) fn row(&mut self, class: &str, tenant: &str) -> &mut GoodputRow {
        self.0
            .entry((class.to_owned(), tenant.to_owned()))
            .or_insert_with(|| GoodputRow {
                class: class.to_owned(),
                tenant: tenant.to_owned(),
                ..GoodputRow::default()
            })
    }

    pub(crate) fn into_rows(self) -> Vec<GoodputRow> {
        self.0.into_values().collect()
    }
}

/// The hash-field prefix `<class>|<tenant>|` (with `%` and `|` escaped).
pub(crate) fn field_prefix(class: &str, tenant: &str) -> String {
    format!("{}|{}|", escape(class), escape(tenant))
}

/// Splits a field `<class>|<tenant>|<counter>` back into its parts.
pub(crate) fn parse_field(field: &str) -> Option<(String, String, GoodputCounter)> {
    let mut parts = field.split('|');
    let class = unescape(parts.next()?)?;
    let tenant = unescape(parts.next()?)?;
    let counter = GoodputCounter::parse(parts.next()?)?;
    parts.next().is_none().then_some((class, tenant, counter))
}

fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('|', "%7C")
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "25" => '%',
            "7C" => '|',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_with_separators_in_names() {
        for (class, tenant) in [("chat", "acme"), ("a|b", "c%7Cd"), ("", "%"), ("|", "|")] {
            for c in GoodputCounter::ALL {
                let field = format!("{}{}", field_prefix(class, tenant), c.as_str());
                assert_eq!(
                    parse_field(&field),
                    Some((class.to_owned(), tenant.to_owned(), c))
                );
            }
        }
        assert_eq!(parse_field("a|b"), None);
        assert_eq!(parse_field("a|b|nope"), None);
        assert_eq!(parse_field("a|b|good|x"), None);
        assert_eq!(parse_field("a%zz|b|good"), None);
        assert_eq!(parse_field("a%2|b|good"), None);
    }

    #[test]
    fn window_is_rounded_out_to_buckets_and_clamped() {
        let cfg = GoodputConfig::default();
        assert_eq!(cfg.bucket_range(Duration::from_secs(10), 100_500), 90..=100);
        assert_eq!(cfg.bucket_range(Duration::from_secs(10), 5_000), 0..=5);
        assert_eq!(
            cfg.bucket_range(Duration::from_secs(86_400), 10_000_000),
            6_400..=10_000
        );
    }
}
