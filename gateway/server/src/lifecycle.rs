//! One client request's bookkeeping, recorded exactly once however it ends.
//!
//! A [`Lifecycle`] is made when a generation request arrives and lives as
//! long as the request: through the edge checks, the dispatcher's attempts
//! and, once an engine answers, inside the response body. It is the one
//! place that counts `baton_requests_total`, the latency histograms, the SLO
//! outcome and the answering worker's breaker result. Whoever sees the end
//! calls [`Lifecycle::end`]; a guard dropped without an end is a client that
//! left (`cancelled`).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{ErrorKind, GatewayError, Leg};
use crate::metrics::{Metrics, ModeLabels, RequestLabels};
use crate::slo::classify::SloTarget;
use crate::slo::tracker::DecodeTicket;
use crate::slo::{SloEnd, SloEngine};
use crate::worker::Worker;

/// How a request ended: the `outcome` label of `baton_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Success,
    ClientError,
    UpstreamError,
    Timeout,
    Cancelled,
    NoWorker,
    Rejected,
}

/// What an ending means for accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Served to the end (its latencies decide whether it was good).
    Success,
    /// Refused as invalid (at the edge or by an engine): counted apart.
    ClientError,
    /// Refused by admission (429): a miss.
    Refused,
    /// The fleet or the gateway failed it: a miss.
    Failed,
    /// The client left first: excluded from attainment.
    Cancelled,
}

impl Ending {
    pub fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::ClientError => "client_error",
            Self::UpstreamError => "upstream_error",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::NoWorker => "no_worker",
            Self::Rejected => "rejected",
        }
    }

    /// The ending an error makes: the client's own mistakes (and an engine's
    /// 4xx other than 408/429) are client errors.
    pub fn of(e: &GatewayError) -> Self {
        match (&e.kind, e.leg) {
            (_, Leg::Client) => Self::ClientError,
            (ErrorKind::Status { status, .. }, _)
                if (400..500).contains(status) && *status != 408 && *status != 429 =>
            {
                Self::ClientError
            }
            (ErrorKind::Rejected { .. }, _) => Self::Rejected,
            (ErrorKind::Timeout(_), _) => Self::Timeout,
            (ErrorKind::NoWorker, _) => Self::NoWorker,
            _ => Self::UpstreamError,
        }
    }

    pub fn class(self) -> Class {
        match self {
            Self::Success => Class::Success,
            Self::ClientError => Class::ClientError,
            Self::Rejected => Class::Refused,
            Self::Cancelled => Class::Cancelled,
            Self::UpstreamError | Self::Timeout | Self::NoWorker => Class::Failed,
        }
    }
}

/// How a request ended, with what was measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndReport {
    pub ending: Ending,
    /// Time to the first output, if any output came.
    pub ttft: Option<Duration>,
    /// Mean time per output token after the first (two tokens or more).
    pub tpot: Option<Duration>,
    /// From arrival to the end.
    pub e2e: Duration,
    /// The answering worker is to blame (its breaker hears a failure).
    pub worker_at_fault: bool,
}

impl EndReport {
    /// An ending with nothing measured (refusals, errors, cancellations).
    pub fn unserved(ending: Ending, start: Instant) -> Self {
        Self {
            ending,
            ttft: None,
            tpot: None,
            e2e: start.elapsed(),
            worker_at_fault: false,
        }
    }
}

/// The engine worker that answers the client, once one does.
#[derive(Debug)]
struct Answerer {
    worker: Arc<Worker>,
    /// Its decode-load ticket, fed the measured latencies on success.
    ticket: DecodeTicket,
}

/// The guard of one client request (see the module docs).
#[derive(Debug)]
pub struct Lifecycle {
    metrics: Arc<Metrics>,
    slo: Arc<SloEngine>,
    endpoint: &'static str,
    mode: &'static str,
    start: Instant,
    request_id: String,
    target: SloTarget,
    answerer: Option<Answerer>,
    ended: bool,
    /// Counted in `baton_requests_total` only: not an SLO outcome, no latency histograms (pass-through endpoints
    /// such as `/tokenize`, which generate nothing).
    outside_attainment: bool,
}

impl Lifecycle {
    /// A request that arrived at `start`; until it is classified it is held
    /// to `target` (the caller's class, see `slo::classify::unclassified`).
    pub fn new(
        state: &crate::state::AppState,
        endpoint: &'static str,
        request_id: &str,
        start: Instant,
        target: SloTarget,
    ) -> Self {
        Self {
            metrics: Arc::clone(&state.metrics),
            slo: Arc::clone(&state.slo),
            endpoint,
            mode: state.mode.label(),
            start,
            request_id: request_id.to_owned(),
            target,
            answerer: None,
            ended: false,
            outside_attainment: false,
        }
    }

    /// A request that generates nothing (`/tokenize`): its end is counted in `baton_requests_total` alone.
    pub fn outside_attainment(mut self) -> Self {
        self.outside_attainment = true;
        self
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// The SLO the request is held to, once classified.
    pub fn hold_to(&mut self, target: SloTarget) {
        self.target = target;
    }

    /// The worker whose reply reaches the client.
    pub fn answered_by(&mut self, worker: Arc<Worker>, ticket: DecodeTicket) {
        self.answerer = Some(Answerer { worker, ticket });
    }

    /// Counts an error met on the way (whether or not it ends the request).
    pub fn upstream_error(&self, e: &GatewayError) {
        self.metrics
            .upstream_errors
            .get_or_create(&crate::metrics::ErrorLabels {
                leg: e.leg.label(),
                kind: e.kind_label(),
            })
            .inc();
    }

    /// Records the request's end; later calls (and the drop) record nothing.
    pub fn end(&mut self, outcome: EndReport) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let ending = outcome.ending;
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: self.endpoint,
                mode: self.mode,
                outcome: ending.label(),
            })
            .inc();
        if self.outside_attainment {
            return;
        }
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        let slo_end = match ending.class() {
            Class::Success => SloEnd::Served {
                ttft_ms: ms(outcome.ttft),
                tpot_ms: ms(outcome.tpot),
            },
            Class::ClientError => SloEnd::ClientError,
            Class::Refused => SloEnd::Rejected,
            Class::Failed => SloEnd::Failed,
            Class::Cancelled => SloEnd::Cancelled,
        };
        self.slo.record(&self.request_id, &self.target, slo_end);
        if let Some(a) = &mut self.answerer {
            if ending == Ending::Success {
                a.worker.breaker.record_success();
                a.ticket.observe(ms(outcome.ttft), ms(outcome.tpot));
            } else if outcome.worker_at_fault {
                a.worker.breaker.record_failure();
            }
        }
        if ending != Ending::Success {
            return;
        }
        let mode = ModeLabels { mode: self.mode };
        self.metrics
            .e2e
            .get_or_create(&mode)
            .observe(outcome.e2e.as_secs_f64());
        if let Some(t) = outcome.ttft {
            self.metrics
                .ttft
                .get_or_create(&mode)
                .observe(t.as_secs_f64());
        }
        if let Some(t) = outcome.tpot {
            self.metrics
                .tpot
                .get_or_create(&mode)
                .observe(t.as_secs_f64());
        }
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        // Dropped without an end: the client went away (its connection
        // closed, which dropped the request's future or response body).
        self.end(EndReport::unserved(Ending::Cancelled, self.start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayConfig;

    fn state() -> crate::state::AppState {
        let c = GatewayConfig {
            worker_urls: vec!["http://127.0.0.1:1".into()],
            ..GatewayConfig::default()
        };
        crate::state::AppState::new(c).unwrap()
    }

    fn life(state: &crate::state::AppState) -> Lifecycle {
        let target = crate::slo::classify::unclassified(&state.config.slo, None);
        Lifecycle::new(state, "chat", "r1", Instant::now(), target)
    }

    fn counted(state: &crate::state::AppState, outcome: &str) -> String {
        let text = state.metrics.render(&state.pools.all());
        let label = format!("outcome=\"{outcome}\"");
        text.lines()
            .filter(|l| l.starts_with("baton_requests_total") && l.contains(&label))
            .collect()
    }

    #[tokio::test]
    async fn ends_once_and_a_dropped_guard_is_a_cancellation() {
        let state = state();
        let mut l = life(&state);
        l.end(EndReport::unserved(Ending::ClientError, l.start()));
        l.end(EndReport::unserved(Ending::UpstreamError, l.start()));
        drop(l);
        drop(life(&state));
        assert!(counted(&state, "client_error").ends_with(" 1"));
        assert!(counted(&state, "upstream_error").is_empty());
        assert!(counted(&state, "cancelled").ends_with(" 1"));
        // Neither is an SLO miss: both are counted apart.
        let key = (
            "standard".to_owned(),
            crate::slo::classify::ANONYMOUS.to_owned(),
        );
        let ex = state.slo.excluded.counts()[&key];
        assert_eq!((ex.client_errors, ex.cancelled), (1, 1));
        assert!(state.slo.accounting.window_counts().is_empty());
    }

    #[test]
    fn errors_map_to_endings_and_classes() {
        let engine_400 = GatewayError::new(
            Leg::Decode,
            ErrorKind::Status {
                status: 400,
                body: bytes::Bytes::new(),
            },
        );
        assert_eq!(Ending::of(&engine_400).class(), Class::ClientError);
        let busy = GatewayError::new(
            Leg::Decode,
            ErrorKind::Status {
                status: 429,
                body: bytes::Bytes::new(),
            },
        );
        assert_eq!(Ending::of(&busy).class(), Class::Failed);
        let shed = GatewayError::new(
            Leg::Gateway,
            ErrorKind::Rejected {
                retry_after: Duration::from_secs(1),
            },
        );
        assert_eq!(Ending::of(&shed).class(), Class::Refused);
        let slow_body = GatewayError::new(Leg::Client, ErrorKind::Timeout("body_read"));
        assert_eq!(Ending::of(&slow_body), Ending::ClientError);
    }
}
