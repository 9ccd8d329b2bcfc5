//! Sliding-window goodput counters: bucketing, field names, aggregation.
//! Shared by the memory and Redis stores so both count the same way.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::{GoodputRow, OutcomeRecord};

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
    pub fn of(o: &OutcomeRecord) -> impl Iterator<Item = GoodputCounter> {
        [
            (GoodputCounter::Requests, true),
            (GoodputCounter::Good, o.is_good()),
            (GoodputCounter::TtftMet, o.ttft_met),
            (GoodputCounter::TpotMet, o.tpot_met),
            (GoodputCounter::Rejected, o.rejected),
            (GoodputCounter::Failed, o.failed),
        ]
        .into_iter()
        .filter_map(|(c, on)| on.then_some(c))
    }
}

/// Adds `n` to one counter of a row.
pub(crate) fn add(row: &mut GoodputRow, c: GoodputCounter, n: u64) {
    let slot = match c {
        GoodputCounter::Requests => &mut row.requests,
        GoodputCounter::Good => &mut row.good,
        GoodputCounter::TtftMet => &mut row.ttft_met,
        GoodputCounter::TpotMet => &mut row.tpot_met,
        GoodputCounter::Rejected => &mut row.rejected,
        GoodputCounter::Failed => &mut row.failed,
    };
    *slot = slot.saturating_add(n);
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
