//! One open-loop run: requests are sent at their arrival times whatever the server's state
//! (optionally capped by `--max-concurrency`, as `vllm bench serve` does), until a request count
//! or a duration is reached; every request is bounded by the client's timeout.

use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use crate::arrival::{ArrivalError, Arrivals};
use crate::client::BenchClient;
use crate::progress::Progress;
use crate::record::RequestRecord;
use crate::workload::{Sampler, Workload};

/// When a run stops sending.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// After this many requests.
    Requests(usize),
    /// After arrivals reach this offset, or `max_requests`, whichever first.
    Duration { secs: f64, max_requests: usize },
}

impl Stop {
    pub fn max_requests(self) -> usize {
        match self {
            Self::Requests(n) => n,
            Self::Duration { max_requests, .. } => max_requests,
        }
    }
}

/// Parameters of one run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Requests per second (`f64::INFINITY`: all at once).
    pub rate: f64,
    pub burstiness: f64,
    pub seed: u64,
    pub stop: Stop,
    pub max_concurrency: Option<usize>,
}

/// The records of a run (in send order) and its duration.
#[derive(Clone, Debug)]
pub struct RunOutput {
    pub records: Vec<RequestRecord>,
    pub duration_s: f64,
}

/// Runs to completion: stops sending at the configured limit, then waits for every request
/// (each bounded by the client's timeout).
pub async fn run(
    client: &BenchClient,
    workload: Workload,
    label: &str,
    cfg: &RunConfig,
    progress: &Progress,
) -> Result<RunOutput, ArrivalError> {
    let arrivals = Arrivals::new(cfg.rate, cfg.burstiness, cfg.seed)?;
    let sampler = Sampler::new(workload, label, cfg.seed);
    let limit = cfg
        .max_concurrency
        .map(|c| Arc::new(Semaphore::new(c.max(1))));
    let mut records = Vec::new();
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let max = cfg.stop.max_requests();
    for (index, (offset, spec)) in arrivals.zip(sampler).enumerate().take(max) {
        if let Stop::Duration { secs, .. } = cfg.stop {
            if offset.as_secs_f64() >= secs {
                break;
            }
        }
        sleep_until(start + offset).await;
        let client = client.clone();
        let limit = limit.clone();
        tasks.spawn(async move {
            let _permit = match &limit {
                Some(s) => s.clone().acquire_owned().await.ok(),
                None => None,
            };
            let sent_at = start.elapsed();
            let sent = client.send(&spec).await;
            RequestRecord::measured(
                index,
                &spec,
                offset.as_secs_f64(),
                sent_at.as_secs_f64(),
                sent,
            )
        });
        // Collect what finished meanwhile, so the bar moves during long runs.
        while let Some(done) = tasks.try_join_next() {
            if let Ok(r) = done {
                progress.finished(r.outcome.is_ok());
                records.push(r);
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(r) = done {
            progress.finished(r.outcome.is_ok());
            records.push(r);
        }
    }
    let duration_s = start.elapsed().as_secs_f64();
    records.sort_by_key(|r| r.index);
    Ok(RunOutput {
        records,
        duration_s,
    })
}
