//! A seeded open-loop workload of classed requests, sent and measured by the load generator
//! (`baton_loadgen`): its client reads the stream with the protocol crate's SSE decoder and
//! measures what `vllm bench serve` measures: TTFT = first SSE chunk with non-empty `choices`,
//! TPOT = (latency − TTFT) / (output tokens − 1), latency at the last chunk with `choices`, the
//! token count from the usage chunk. A request is *good* when it streamed to the end (`[DONE]`,
//! all tokens) within both budgets of its class, by the gateway's own rule
//! ([`baton_slo::Verdict`]); rejected (429), failed and timed-out requests are misses.
//!
//! What is this module's own: the workload (classes, a plan of prompt/output lengths and
//! arrival times, the request bodies the sim counts exactly) and the per-class summary.

use std::time::Duration;

use baton_loadgen::client::post_stream;
pub use baton_loadgen::client::{http_client as client, HttpClient};
use baton_loadgen::record::{Outcome, RequestRecord};
use baton_loadgen::slo::Slo;
use baton_loadgen::workload::RequestSpec;
use baton_slo::{Measured, Targets, Verdict};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

/// A latency class: requests carry it in `x-slo-class`; budgets in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Class {
    pub name: String,
    /// Share of requests in this class (relative weight).
    pub weight: f64,
    pub ttft_ms: f64,
    pub tpot_ms: f64,
}

/// A seeded open-loop workload: Poisson arrivals at `rate`, prompt lengths drawn from a mixture
/// of uniform ranges, uniform output lengths.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    pub seed: u64,
    /// Requests per second (Poisson).
    pub rate: f64,
    pub requests: usize,
    /// `(weight, min, max)` prompt-token ranges.
    pub prompt_tokens: Vec<(f64, usize, usize)>,
    /// Inclusive output-token range (`max_tokens` with `ignore_eos`).
    pub output_tokens: (usize, usize),
    pub classes: Vec<Class>,
    /// Share of requests sent to `/v1/chat/completions` (the rest to `/v1/completions`).
    pub chat_fraction: f64,
}

/// One request of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// Send time from the start of the run.
    pub at: Duration,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    /// Index into [`Workload::classes`].
    pub class: usize,
    pub chat: bool,
}

fn weighted(rng: &mut StdRng, weights: impl Iterator<Item = f64> + Clone) -> usize {
    let total: f64 = weights.clone().sum();
    let mut x = rng.random::<f64>() * total;
    let mut last = 0;
    for (i, w) in weights.enumerate() {
        last = i;
        if x < w {
            return i;
        }
        x -= w;
    }
    last
}

impl Workload {
    /// The same plan for the same workload and seed.
    pub fn plan(&self) -> Vec<Planned> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut t = 0.0f64;
        (0..self.requests)
            .map(|_| {
                let u: f64 = rng.random();
                t += -(1.0 - u).ln() / self.rate.max(1e-9);
                let r = weighted(&mut rng, self.prompt_tokens.iter().map(|p| p.0));
                let (_, lo, hi) = self.prompt_tokens[r];
                let prompt_tokens = rng.random_range(lo..=hi.max(lo));
                let (olo, ohi) = self.output_tokens;
                let output_tokens = rng.random_range(olo..=ohi.max(olo)).max(1);
                let class = weighted(&mut rng, self.classes.iter().map(|c| c.weight));
                let chat = rng.random::<f64>() < self.chat_fraction;
                Planned {
                    at: Duration::from_secs_f64(t),
                    prompt_tokens,
                    output_tokens,
                    class,
                    chat,
                }
            })
            .collect()
    }

    /// Offered load span: requests / rate (seconds).
    pub fn span_secs(&self) -> f64 {
        self.requests as f64 / self.rate.max(1e-9)
    }
}

/// A prompt the gateway and the sim both count as `tokens` tokens (`chars / 4`).
pub fn prompt_text(tokens: usize) -> String {
    "abc ".repeat(tokens.max(1))
}

/// The request body of a planned request.
pub fn body(p: &Planned, model: &str) -> Value {
    let mut v = if p.chat {
        // "user:" + content + "\n" and 4 tokens per message: aim at the planned length.
        let content_tokens = p.prompt_tokens.saturating_sub(6).max(1);
        json!({"model": model, "messages": [{"role": "user", "content": prompt_text(content_tokens)}]})
    } else {
        json!({"model": model, "prompt": prompt_text(p.prompt_tokens)})
    };
    let extra = json!({
        "max_tokens": p.output_tokens,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        m.extend(e);
    }
    v
}

/// How one request went.
#[derive(Clone, Debug, Serialize)]
pub struct RequestResult {
    pub class: String,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    /// HTTP status (0: no response).
    pub status: u16,
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub latency_ms: f64,
    /// Output tokens per the usage chunk.
    pub tokens: u64,
    /// The stream reached `[DONE]` with every token.
    pub completed: bool,
    pub good: bool,
    pub error: Option<String>,
}

/// Client behaviour of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub model: String,
    /// A request still unfinished `TTFT budget + (tokens − 1) × TPOT budget + give_up_grace` after
    /// it was sent can no longer be good: the client hangs up (a miss). Bounds a run's length.
    pub give_up_grace: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            model: "sim-model".into(),
            give_up_grace: Duration::from_millis(500),
        }
    }
}

/// Sends `plan` open-loop to `base` (e.g. the gateway's URL): each request at its time,
/// regardless of the others. Returns one result per planned request, in plan order.
pub async fn run_open_loop(
    base: &str,
    workload: &Workload,
    plan: &[Planned],
    opts: &RunOptions,
) -> Vec<RequestResult> {
    let client = client();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(plan.len());
    for p in plan {
        tokio::time::sleep_until(start + p.at).await;
        let class = workload.classes[p.class].clone();
        let url = if p.chat {
            format!("{base}/v1/chat/completions")
        } else {
            format!("{base}/v1/completions")
        };
        let body = body(p, &opts.model).to_string();
        let give_up = Duration::from_secs_f64(
            (class.ttft_ms + class.tpot_ms * p.output_tokens.saturating_sub(1) as f64) / 1000.0,
        ) + opts.give_up_grace;
        let client = client.clone();
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            one(&client, &url, body, &class, &p, give_up).await
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

impl Class {
    /// The class's budgets as the load generator's SLO.
    fn slo(&self) -> Slo {
        Slo {
            ttft_ms: Some(self.ttft_ms),
            tpot_ms: Some(self.tpot_ms),
            e2el_ms: None,
        }
    }

    /// Which of the class's budgets a completed request met (the gateway's rule).
    fn verdict(&self, r: &RequestResult) -> Verdict {
        let targets = Targets {
            ttft_ms: Some(self.ttft_ms),
            tpot_ms: Some(self.tpot_ms),
        };
        Verdict::served(
            targets,
            Measured {
                ttft_ms: r.ttft_ms,
                tpot_ms: r.tpot_ms,
            },
        )
    }
}

async fn one(
    client: &HttpClient,
    url: &str,
    body: String,
    class: &Class,
    p: &Planned,
    give_up: Duration,
) -> RequestResult {
    let t0 = Instant::now();
    let req = Request::post(url)
        .header("content-type", "application/json")
        .header("x-slo-class", &class.name)
        .body(Full::new(Bytes::from(body)))
        .expect("a request built from valid parts");
    let sent = post_stream(client, req, t0 + give_up).await;
    let status = sent.status;
    let spec = RequestSpec {
        prompt: String::new(),
        prompt_len: u32::try_from(p.prompt_tokens).unwrap_or(u32::MAX),
        output_len: u32::try_from(p.output_tokens).unwrap_or(u32::MAX),
        label: class.name.clone(),
    };
    let record = RequestRecord::measured(0, &spec, 0.0, 0.0, sent);
    let tokens = record.output_tokens.unwrap_or(0);
    let completed = record.outcome.is_ok() && tokens == p.output_tokens as u64;
    let error = match &record.outcome {
        _ if completed => None,
        Outcome::Ok => Some("stream ended early".to_owned()),
        Outcome::Timeout => Some("gave up (could no longer meet the SLO)".to_owned()),
        Outcome::Rejected { .. } | Outcome::HttpError { .. } => Some(format!("HTTP {status}")),
        Outcome::Aborted { reason } => Some(reason.clone()),
        Outcome::Connect { message } => Some(message.clone()),
    };
    let secs_ms = |s: Option<f64>| s.map(|s| s * 1000.0);
    RequestResult {
        class: class.name.clone(),
        prompt_tokens: p.prompt_tokens,
        output_tokens: p.output_tokens,
        status,
        ttft_ms: secs_ms(record.ttft_s),
        tpot_ms: secs_ms(record.tpot_s()),
        latency_ms: secs_ms(record.latency_s).unwrap_or_else(|| ms(t0.elapsed())),
        tokens,
        completed,
        good: completed && class.slo().is_good(&record),
        error,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Per-run figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub requests: usize,
    pub good: usize,
    /// HTTP 429 (early rejections).
    pub rejected: usize,
    /// Other errors, broken streams and give-ups.
    pub failed: usize,
    /// Good / requests.
    pub attainment: f64,
    /// Offered rate × attainment (requests/s meeting both SLOs).
    pub goodput: f64,
    pub offered_rate: f64,
    /// Over requests that produced a first token.
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    /// Over completed requests.
    pub tpot_p50_ms: f64,
    pub tpot_p99_ms: f64,
    /// Requests that met their TTFT budget / TPOT budget (among completed ones).
    pub ttft_met: usize,
    pub tpot_met: usize,
    /// `(class, requests, good)`.
    pub per_class: Vec<(String, usize, usize)>,
    /// Why requests that were not completed ended: `(error, count)`, most frequent first.
    pub errors: Vec<(String, usize)>,
}

/// The `q`-quantile (`q` in 0..=1) of unsorted values, interpolated as the load generator
/// reports percentiles (numpy's linear rule); 0 when empty.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    baton_loadgen::metrics::percentile(&v, q * 100.0)
}

pub fn summarize(workload: &Workload, results: &[RequestResult]) -> Summary {
    let n = results.len();
    let good = results.iter().filter(|r| r.good).count();
    let ttfts: Vec<f64> = results.iter().filter_map(|r| r.ttft_ms).collect();
    let tpots: Vec<f64> = results
        .iter()
        .filter(|r| r.completed)
        .filter_map(|r| r.tpot_ms)
        .collect();
    let budget = |r: &RequestResult| workload.classes.iter().find(|c| c.name == r.class);
    let verdicts: Vec<Verdict> = results
        .iter()
        .filter(|r| r.completed)
        .filter_map(|r| budget(r).map(|c| c.verdict(r)))
        .collect();
    let ttft_met = verdicts.iter().filter(|v| v.ttft_met).count();
    let tpot_met = verdicts.iter().filter(|v| v.tpot_met).count();
    let attainment = if n == 0 { 0.0 } else { good as f64 / n as f64 };
    let mut errors: Vec<(String, usize)> = Vec::new();
    for e in results.iter().filter_map(|r| r.error.as_deref()) {
        match errors.iter_mut().find(|(k, _)| k == e) {
            Some((_, c)) => *c += 1,
            None => errors.push((e.to_owned(), 1)),
        }
    }
    errors.sort_by_key(|e| std::cmp::Reverse(e.1));
    Summary {
        requests: n,
        good,
        rejected: results.iter().filter(|r| r.status == 429).count(),
        failed: results
            .iter()
            .filter(|r| !r.completed && r.status != 429)
            .count(),
        attainment,
        goodput: workload.rate * attainment,
        offered_rate: workload.rate,
        ttft_p50_ms: percentile(&ttfts, 0.5),
        ttft_p99_ms: percentile(&ttfts, 0.99),
        tpot_p50_ms: percentile(&tpots, 0.5),
        tpot_p99_ms: percentile(&tpots, 0.99),
        ttft_met,
        tpot_met,
        per_class: workload
            .classes
            .iter()
            .map(|c| {
                let mine = results.iter().filter(|r| r.class == c.name);
                (
                    c.name.clone(),
                    mine.clone().count(),
                    mine.filter(|r| r.good).count(),
                )
            })
            .collect(),
        errors,
    }
}
