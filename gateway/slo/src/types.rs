//! The records the store keeps: plain data, serde only.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::goodput::Verdict;

/// Where a request is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Admitted, waiting for a prefill slot.
    Queued,
    /// Prefill running (the TTFT clock is still ticking).
    Prefill,
    /// Streaming tokens (the TPOT budget applies).
    Decode,
}

impl Phase {
    /// The wire name (also the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "queued" => Ok(Phase::Queued),
            "prefill" => Ok(Phase::Prefill),
            "decode" => Ok(Phase::Decode),
            other => Err(format!("unknown phase {other:?}")),
        }
    }
}

/// Written at admission: the request's deadline, budgets and placement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdmissionRecord {
    pub request_id: String,
    /// The gateway replica that admitted the request.
    pub replica_id: String,
    /// SLO class (e.g. `chatbot`, `code`).
    pub class: String,
    pub tenant: String,
    /// Wall-clock admission time (ms since the Unix epoch).
    pub admitted_at_ms: u64,
    /// Absolute first-token deadline (ms since the Unix epoch).
    pub ttft_deadline_ms: Option<u64>,
    /// Time-per-output-token budget.
    pub tpot_budget_ms: Option<f64>,
    pub phase: Phase,
    pub prefill_worker: Option<String>,
    pub decode_worker: Option<String>,
    pub prompt_tokens: u64,
    /// How long the record lives if no outcome deletes it (serialized as ms).
    #[serde(with = "duration_ms")]
    pub ttl: Duration,
}

/// Written at completion (or rejection, or failure).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub request_id: String,
    pub class: String,
    pub tenant: String,
    /// Wall-clock completion time (ms since the Unix epoch): selects the
    /// goodput bucket.
    pub finished_at_ms: u64,
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub ttft_met: bool,
    pub tpot_met: bool,
    /// Rejected at admission (counts as a miss).
    pub rejected: bool,
    /// Failed or aborted (counts as a miss).
    pub failed: bool,
}

impl OutcomeRecord {
    /// How the request ended against its targets.
    pub fn verdict(&self) -> Verdict {
        Verdict {
            ttft_met: self.ttft_met,
            tpot_met: self.tpot_met,
            rejected: self.rejected,
            failed: self.failed,
        }
    }

    /// Goodput: both SLOs met, and the request was served.
    pub fn is_good(&self) -> bool {
        self.verdict().is_good()
    }
}

/// One replica's view of worker load, published as a TTL lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaState {
    pub replica_id: String,
    /// Wall-clock time of this snapshot (ms since the Unix epoch).
    pub updated_ms: u64,
    pub workers: Vec<WorkerLoad>,
}

/// The load one replica has placed on (or observed at) one worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerLoad {
    pub url: String,
    pub queued_prefill_tokens: u64,
    pub active_prefills: u64,
    pub active_decodes: u64,
    pub pending_decodes: u64,
    pub prefill_tokens_per_s: Option<f64>,
    pub ttft_ms_ewma: Option<f64>,
    pub tpot_ms_ewma: Option<f64>,
    /// `tpot_ms ≈ a + b × batch` (intercept, slope).
    pub tpot_fit: Option<(f64, f64)>,
}

/// Goodput counters for one (class, tenant) over a window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoodputRow {
    pub class: String,
    pub tenant: String,
    pub requests: u64,
    pub good: u64,
    pub ttft_met: u64,
    pub tpot_met: u64,
    pub rejected: u64,
    pub failed: u64,
}

/// `Duration` as whole milliseconds.
pub(crate) mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_ttl_serializes_as_ms() {
        let rec = AdmissionRecord {
            request_id: "r".into(),
            replica_id: "a".into(),
            class: "chat".into(),
            tenant: "t".into(),
            admitted_at_ms: 1,
            ttft_deadline_ms: Some(2),
            tpot_budget_ms: Some(0.5),
            phase: Phase::Prefill,
            prefill_worker: None,
            decode_worker: Some("http://d".into()),
            prompt_tokens: 3,
            ttl: Duration::from_millis(1500),
        };
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(json["ttl"], 1500);
        assert_eq!(json["phase"], "prefill");
        let back: AdmissionRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn phase_round_trips_through_str() {
        for p in [Phase::Queued, Phase::Prefill, Phase::Decode] {
            assert_eq!(p.as_str().parse::<Phase>(), Ok(p));
        }
        assert!("nope".parse::<Phase>().is_err());
    }
}
