//! Dispatch and relay, in-process: a scripted engine behind the
//! `EngineClient` seam, on tokio's paused clock (every time below is exact).

use std::sync::Arc;
use std::time::Duration;

use baton_protocol::{ClientRequest, Endpoint};
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::{dispatch_with, Ctx};
use crate::body::GatewayBody;
use crate::breaker::BreakerState;
use crate::config::{GatewayConfig, PdProtocol, PrefillWorker};
use crate::error::Leg;
use crate::lifecycle::Lifecycle;
use crate::state::AppState;
use crate::upstream::scripted::{chunk, Call, Event, Reply, ScriptedEngine, Step};
use crate::worker::Worker;

const TOKEN: &str = "data: {\"choices\":[{\"index\":0,\"text\":\"hi\"}]}\n\n";
const DONE: &str = "data: [DONE]\n\n";
const REQUEST_ID: &str = "client-id";
/// What a vLLM prefill hands to decode (copied verbatim).
const PARAMS: &str = r#"{"do_remote_prefill":true,"do_remote_decode":false,"remote_engine_id":"e1","remote_block_ids":[1,2,3],"remote_host":"10.0.0.1","remote_port":5600,"tp_size":1}"#;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[derive(Clone, Copy)]
enum Fleet {
    /// Three plain engines.
    Aggregated,
    /// Two prefill and two decode engines each.
    Vllm,
    Sglang,
}

struct Harness {
    state: Arc<AppState>,
    engine: ScriptedEngine,
}

/// Round-robin routing, no jitter (backoff 100 ms, ×2), breakers that open
/// on the first failure; timeouts: first byte 10 s, prefill 20 s, idle 5 s,
/// request 60 s.
fn harness(fleet: Fleet, tweak: impl FnOnce(&mut GatewayConfig)) -> Harness {
    let mut c = GatewayConfig {
        policy: baton_policies::PolicyKind::RoundRobin,
        ..GatewayConfig::default()
    };
    c.retry.initial_backoff_ms = 100;
    c.retry.backoff_multiplier = 2.0;
    c.retry.jitter_factor = 0.0;
    c.retry.max_retries = 3;
    c.breaker.failure_threshold = 1;
    c.timeouts.first_byte_secs = 10.0;
    c.timeouts.prefill_secs = 20.0;
    c.timeouts.idle_secs = 5.0;
    c.timeouts.request_secs = 60.0;
    let prefill = |port| {
        (0..2)
            .map(|i| PrefillWorker {
                url: format!("http://p{i}:1"),
                bootstrap_port: port,
            })
            .collect()
    };
    let decode = || (0..2).map(|i| format!("http://d{i}:1")).collect();
    match fleet {
        Fleet::Aggregated => c.worker_urls = (0..3).map(|i| format!("http://w{i}:1")).collect(),
        Fleet::Vllm => {
            c.prefill = prefill(None);
            c.decode = decode();
            c.pd_protocol = Some(PdProtocol::Vllm);
        }
        Fleet::Sglang => {
            c.prefill = prefill(Some(8998));
            c.decode = decode();
            c.pd_protocol = Some(PdProtocol::Sglang);
        }
    }
    tweak(&mut c);
    Harness {
        state: Arc::new(AppState::new(c).unwrap()),
        engine: ScriptedEngine::default(),
    }
}

impl Harness {
    /// Dispatches a `/v1/completions` request through the scripted engine.
    async fn send(&self, stream: bool) -> Response<GatewayBody> {
        let body = serde_json::json!({
            "model": "m",
            "prompt": "hello there",
            "max_tokens": 8,
            "stream": stream,
        });
        let req = ClientRequest::parse(Endpoint::Completions, body.to_string().as_bytes())
            .expect("valid request");
        let slo = crate::slo::classify::unclassified(&self.state.config.slo, None);
        let start = Instant::now();
        let life = Lifecycle::new(&self.state, "completions", REQUEST_ID, start, slo.clone());
        let ctx = Ctx {
            req,
            headers: HeaderMap::new(),
            request_id: REQUEST_ID.into(),
            start,
            deadline: start + self.state.request_timeout(),
            slo,
            prompt_tokens: 8,
        };
        dispatch_with(&self.state, &self.engine, ctx, life).await
    }

    fn worker(&self, url: &str) -> Arc<Worker> {
        self.state
            .pools
            .all()
            .iter()
            .flat_map(|p| p.workers.iter())
            .find(|w| w.url == url)
            .expect("known worker")
    }

    fn breaker(&self, url: &str) -> BreakerState {
        self.worker(url).breaker.state()
    }

    /// A metric's value (summed over the lines that match every filter).
    fn metric(&self, name: &str, filters: &[&str]) -> f64 {
        let text = self.state.metrics.render(&self.state.pools.all());
        text.lines()
            .filter(|l| {
                l.split([' ', '{']).next() == Some(name) && filters.iter().all(|f| l.contains(f))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn outcomes(&self, outcome: &str) -> f64 {
        let label = format!("outcome=\"{outcome}\"");
        self.metric("baton_requests_total", &[&label])
    }
}

/// The whole client body as text.
async fn text(resp: Response<GatewayBody>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn stream_ok() -> Reply {
    Reply::ok(vec![chunk(TOKEN), chunk(TOKEN), chunk(DONE)])
}

fn prefill_ok() -> Reply {
    let reply = format!(r#"{{"choices":[{{"text":"x"}}],"kv_transfer_params":{PARAMS}}}"#);
    Reply::ok(vec![Step::Chunk(Bytes::from(reply))])
}

fn urls(calls: &[Call]) -> Vec<&str> {
    calls.iter().map(|c| c.url.as_str()).collect()
}

fn distinct(calls: &[Call]) -> bool {
    let mut u = urls(calls);
    u.sort_unstable();
    u.dedup();
    u.len() == calls.len()
}

// ---- retries ------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_5xx_is_retried_on_a_fresh_worker_after_the_backoff() {
    let h = harness(Fleet::Aggregated, |_| {});
    h.engine.script(
        Leg::Worker,
        [Reply::status(500, vec![chunk("boom")]), stream_ok()],
    );
    let resp = h.send(true).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(text(resp).await.ends_with(DONE));
    let calls = h.engine.calls_of(Leg::Worker);
    assert_eq!(calls.len(), 2);
    assert!(distinct(&calls), "{:?}", urls(&calls));
    let gap = calls[1].at(Event::Sent).unwrap() - calls[0].at(Event::Sent).unwrap();
    assert_eq!(gap, ms(100), "one backoff, no jitter");
    assert_eq!(h.breaker(&calls[0].url), BreakerState::Open);
    assert_eq!(h.breaker(&calls[1].url), BreakerState::Closed);
    assert_eq!(h.metric("baton_retries_total", &[]), 1.0);
    assert_eq!(h.outcomes("success"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn connect_and_transport_failures_are_retried_and_charged() {
    let h = harness(Fleet::Aggregated, |_| {});
    h.engine.script(
        Leg::Worker,
        [
            Reply::connect_error(),
            Reply::transport_error(),
            stream_ok(),
        ],
    );
    let resp = h.send(true).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(text(resp).await.ends_with(DONE));
    let calls = h.engine.calls_of(Leg::Worker);
    assert_eq!(calls.len(), 3);
    assert!(distinct(&calls));
    assert_eq!(h.breaker(&calls[0].url), BreakerState::Open);
    assert_eq!(h.breaker(&calls[1].url), BreakerState::Open);
    assert_eq!(h.breaker(&calls[2].url), BreakerState::Closed);
    let backoffs = calls[2].at(Event::Sent).unwrap() - calls[0].at(Event::Sent).unwrap();
    assert_eq!(backoffs, ms(100 + 200));
}

#[tokio::test(start_paused = true)]
async fn overload_answers_are_retried_but_not_charged() {
    let h = harness(Fleet::Aggregated, |_| {});
    h.engine.script(
        Leg::Worker,
        [
            Reply::status(503, vec![]),
            Reply::status(429, vec![]),
            stream_ok(),
        ],
    );
    let resp = h.send(true).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let calls = h.engine.calls_of(Leg::Worker);
    assert_eq!(calls.len(), 3);
    for c in &calls {
        assert_eq!(h.breaker(&c.url), BreakerState::Closed, "{}", c.url);
    }
}

#[tokio::test(start_paused = true)]
async fn an_engine_4xx_is_not_retried_nor_charged() {
    let h = harness(Fleet::Aggregated, |_| {});
    let refusal = r#"{"error":{"message":"prompt too long","type":"invalid_request_error"}}"#;
    h.engine
        .script(Leg::Worker, [Reply::status(400, vec![chunk(refusal)])]);
    let resp = h.send(true).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(text(resp).await.contains("prompt too long"));
    let calls = h.engine.calls_of(Leg::Worker);
    assert_eq!(calls.len(), 1);
    assert_eq!(h.breaker(&calls[0].url), BreakerState::Closed);
    assert_eq!(h.metric("baton_retries_total", &[]), 0.0);
    assert_eq!(h.outcomes("client_error"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_where_the_next_backoff_would_pass_the_deadline() {
    // Backoffs of 300 and 600 ms fit in one second; the third (1.2 s) does not.
    let h = harness(Fleet::Aggregated, |c| {
        c.timeouts.request_secs = 1.0;
        c.retry.initial_backoff_ms = 300;
        c.retry.max_retries = 10;
        c.breaker.enabled = false;
    });
    h.engine
        .script(Leg::Worker, (0..10).map(|_| Reply::status(502, vec![])));
    let t0 = Instant::now();
    let resp = h.send(true).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(t0.elapsed(), ms(900));
    assert_eq!(h.engine.calls_of(Leg::Worker).len(), 3);
    assert_eq!(h.outcomes("upstream_error"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_silent_engine_is_cut_at_the_first_byte_timeout_and_retried() {
    let h = harness(Fleet::Aggregated, |_| {});
    h.engine.script(Leg::Worker, [Reply::hang(), stream_ok()]);
    let resp = h.send(true).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let calls = h.engine.calls_of(Leg::Worker);
    let t0 = calls[0].at(Event::Sent).unwrap();
    assert_eq!(calls[0].at(Event::Dropped), Some(t0 + secs(10)));
    assert_eq!(calls[1].at(Event::Sent), Some(t0 + secs(10) + ms(100)));
    // A timeout is not the worker's fault (health checks catch real hangs).
    assert_eq!(h.breaker(&calls[0].url), BreakerState::Closed);
    assert!(text(resp).await.ends_with(DONE));
}

#[tokio::test(start_paused = true)]
async fn the_request_deadline_ends_a_pending_attempt_without_a_retry() {
    let h = harness(Fleet::Aggregated, |c| c.timeouts.request_secs = 5.0);
    h.engine.script(Leg::Worker, [Reply::hang(), stream_ok()]);
    let t0 = Instant::now();
    let resp = h.send(true).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(t0.elapsed(), secs(5));
    let calls = h.engine.calls_of(Leg::Worker);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].at(Event::Dropped), Some(t0 + secs(5)));
    assert_eq!(h.outcomes("timeout"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_success_clears_the_failures_before_it() {
    // One worker, breaker at two failures, each request failing once then
    // succeeding on the retry (a pool of one retries its worker). Had the
    // first success not been recorded, the second failure would open the
    // breaker and the second retry would find no worker.
    let h = harness(Fleet::Aggregated, |c| {
        c.worker_urls.truncate(1);
        c.breaker.failure_threshold = 2;
    });
    for _ in 0..2 {
        h.engine
            .script(Leg::Worker, [Reply::status(500, vec![]), stream_ok()]);
        let resp = h.send(true).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(text(resp).await.ends_with(DONE));
        assert_eq!(h.breaker("http://w0:1"), BreakerState::Closed);
    }
    assert_eq!(h.engine.calls_of(Leg::Worker).len(), 4);
    assert_eq!(h.outcomes("success"), 2.0);
}

// ---- vLLM PD --------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn vllm_prefill_is_read_to_its_end_before_decode_starts() {
    let h = harness(Fleet::Vllm, |_| {});
    let reply = format!(r#"{{"choices":[{{"text":"x"}}],"kv_transfer_params":{PARAMS}}}"#);
    let (a, b) = reply.split_at(20);
    h.engine.script(
        Leg::Prefill,
        [Reply::ok(vec![chunk(a), Step::Wait(secs(1)), chunk(b)]).after(ms(500))],
    );
    h.engine.script(Leg::Decode, [stream_ok()]);
    let t0 = Instant::now();
    let resp = h.send(true).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(text(resp).await.ends_with(DONE));
    let (p, d) = (
        &h.engine.calls_of(Leg::Prefill)[0],
        &h.engine.calls_of(Leg::Decode)[0],
    );
    assert_eq!(p.at(Event::Ended), Some(t0 + ms(1500)));
    assert_eq!(
        d.at(Event::Sent),
        p.at(Event::Ended),
        "decode waits for the whole prefill"
    );
    // Prefill: one token, whole, asking for a remote decode.
    let pj = p.json();
    assert_eq!(pj["max_tokens"], 1);
    assert_eq!(pj["stream"], false);
    assert_eq!(pj["kv_transfer_params"]["do_remote_decode"], true);
    // Decode: the client's body plus the prefill's params, verbatim.
    let dj = d.json();
    let params: serde_json::Value = serde_json::from_str(PARAMS).unwrap();
    assert_eq!(dj["kv_transfer_params"], params);
    assert_eq!(dj["max_tokens"], 8);
    assert_eq!(dj["stream"], true);
    // One fresh transfer id on both legs; the client's id rides along.
    assert!(p.upstream_id.starts_with("baton-"), "{}", p.upstream_id);
    assert_eq!(p.upstream_id, d.upstream_id);
    assert_eq!((&*p.request_id, &*d.request_id), (REQUEST_ID, REQUEST_ID));
    assert_eq!(h.outcomes("success"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn vllm_decode_failure_retries_on_a_fresh_pair_with_a_fresh_transfer_id() {
    let h = harness(Fleet::Vllm, |_| {});
    h.engine.script(Leg::Prefill, [prefill_ok(), prefill_ok()]);
    h.engine
        .script(Leg::Decode, [Reply::status(500, vec![]), stream_ok()]);
    let resp = h.send(true).await;
    assert!(text(resp).await.ends_with(DONE));
    let (p, d) = (
        h.engine.calls_of(Leg::Prefill),
        h.engine.calls_of(Leg::Decode),
    );
    assert_eq!((p.len(), d.len()), (2, 2));
    assert!(distinct(&p) && distinct(&d));
    assert_eq!(p[0].upstream_id, d[0].upstream_id);
    assert_eq!(p[1].upstream_id, d[1].upstream_id);
    assert_ne!(p[0].upstream_id, p[1].upstream_id);
    assert_eq!(h.breaker(&d[0].url), BreakerState::Open);
    assert_eq!(
        h.breaker(&p[0].url),
        BreakerState::Closed,
        "prefill did its part"
    );
}

#[tokio::test(start_paused = true)]
async fn vllm_prefill_failure_is_charged_to_prefill_and_decode_never_starts() {
    let h = harness(Fleet::Vllm, |c| c.retry.max_retries = 0);
    h.engine
        .script(Leg::Prefill, [Reply::status(500, vec![chunk("oom")])]);
    let resp = h.send(true).await;
    // An engine's 5xx is the gateway's 502 (the engine is the bad gateway).
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let p = h.engine.calls_of(Leg::Prefill);
    assert_eq!(p.len(), 1);
    assert!(h.engine.calls_of(Leg::Decode).is_empty());
    assert_eq!(h.breaker(&p[0].url), BreakerState::Open);
    assert_eq!(h.outcomes("upstream_error"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn vllm_prefill_timeout_bounds_a_stalled_prefill_body() {
    let h = harness(Fleet::Vllm, |c| {
        c.retry.max_retries = 0;
        c.timeouts.prefill_secs = 3.0;
    });
    h.engine
        .script(Leg::Prefill, [Reply::ok(vec![chunk("{"), Step::Hang])]);
    let t0 = Instant::now();
    let resp = h.send(true).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(t0.elapsed(), secs(3));
    let p = h.engine.calls_of(Leg::Prefill);
    assert_eq!(p[0].at(Event::Dropped), Some(t0 + secs(3)));
    assert!(h.engine.calls_of(Leg::Decode).is_empty());
    assert_eq!(h.breaker(&p[0].url), BreakerState::Closed);
    assert_eq!(h.outcomes("timeout"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn vllm_dropping_the_request_before_its_head_cancels_the_prefill() {
    let h = harness(Fleet::Vllm, |_| {});
    h.engine.script(Leg::Prefill, [Reply::hang()]);
    assert!(tokio::time::timeout(secs(1), h.send(true)).await.is_err());
    let p = &h.engine.calls_of(Leg::Prefill)[0];
    assert!(p.at(Event::Dropped).is_some());
    assert_eq!(h.worker(&p.url).in_flight(), 0);
    assert_eq!(h.outcomes("cancelled"), 1.0);
}

// ---- SGLang PD ------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn sglang_legs_start_together_and_the_stream_starts_on_decodes_head() {
    let h = harness(Fleet::Sglang, |_| {});
    h.engine.script(
        Leg::Prefill,
        [Reply::ok(vec![Step::Wait(secs(2)), chunk("{}")]).after(secs(1))],
    );
    h.engine.script(
        Leg::Decode,
        [Reply::ok(vec![
            chunk(TOKEN),
            Step::Wait(secs(4)),
            chunk(TOKEN),
            chunk(DONE),
        ])
        .after(ms(100))],
    );
    let t0 = Instant::now();
    let resp = h.send(true).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        t0.elapsed(),
        ms(100),
        "the prefill's head is not waited for"
    );
    let (p, d) = (
        &h.engine.calls_of(Leg::Prefill)[0],
        &h.engine.calls_of(Leg::Decode)[0],
    );
    assert_eq!((p.at(Event::Sent), d.at(Event::Sent)), (Some(t0), Some(t0)));
    assert_eq!(p.at(Event::Head), None);
    // The same body to both legs: the prefill's bootstrap address, one room.
    let (pj, dj) = (p.json(), d.json());
    assert_eq!(pj, dj);
    assert_eq!(dj["bootstrap_host"], p.url[7..p.url.len() - 2]);
    assert_eq!(dj["bootstrap_port"], 8998);
    assert!(dj["bootstrap_room"].is_u64());
    assert_eq!(p.upstream_id, d.upstream_id);
    assert!(text(resp).await.ends_with(DONE));
    let p = &h.engine.calls_of(Leg::Prefill)[0];
    assert_eq!(p.at(Event::Ended), Some(t0 + secs(3)));
    assert_eq!(h.breaker(&p.url), BreakerState::Closed);
    assert_eq!(h.outcomes("success"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn sglang_prefill_failure_before_decodes_head_aborts_decode_and_retries() {
    let h = harness(Fleet::Sglang, |_| {});
    h.engine.script(
        Leg::Prefill,
        [
            Reply::status(500, vec![]).after(secs(1)),
            Reply::ok(vec![chunk("{}")]),
        ],
    );
    h.engine.script(Leg::Decode, [Reply::hang(), stream_ok()]);
    let t0 = Instant::now();
    let resp = h.send(true).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(text(resp).await.ends_with(DONE));
    let (p, d) = (
        h.engine.calls_of(Leg::Prefill),
        h.engine.calls_of(Leg::Decode),
    );
    assert_eq!(d[0].at(Event::Dropped), Some(t0 + secs(1)));
    assert_eq!(d[1].at(Event::Sent), Some(t0 + secs(1) + ms(100)));
    assert!(distinct(&p) && distinct(&d), "a fresh pair");
    assert_eq!(h.breaker(&p[0].url), BreakerState::Open);
    assert_eq!(h.breaker(&d[0].url), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn sglang_prefill_failure_mid_stream_ends_it_with_an_error_event() {
    let h = harness(Fleet::Sglang, |_| {});
    h.engine
        .script(Leg::Prefill, [Reply::status(500, vec![]).after(secs(2))]);
    h.engine.script(
        Leg::Decode,
        [Reply::ok(vec![
            chunk(TOKEN),
            Step::Wait(secs(10)),
            chunk(DONE),
        ])],
    );
    let t0 = Instant::now();
    let resp = h.send(true).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = text(resp).await;
    assert!(body.starts_with(TOKEN), "{body}");
    assert!(
        body.contains("\"error\"") && !body.contains("[DONE]"),
        "{body}"
    );
    let d = &h.engine.calls_of(Leg::Decode)[0];
    assert_eq!(d.at(Event::Dropped), Some(t0 + secs(2)));
    assert_eq!(h.outcomes("upstream_error"), 1.0);
    // The prefill's failure is its own; the answering decode is not blamed.
    assert_eq!(h.breaker(&d.url), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn sglang_dropping_the_client_body_cancels_decode_and_the_prefill_task() {
    let h = harness(Fleet::Sglang, |_| {});
    h.engine.script(Leg::Prefill, [Reply::ok(vec![Step::Hang])]);
    h.engine
        .script(Leg::Decode, [Reply::ok(vec![chunk(TOKEN), Step::Hang])]);
    let resp = h.send(true).await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], TOKEN.as_bytes());
    drop(body);
    h.engine
        .wait_until(secs(1), "both legs cancelled", |calls| {
            calls.iter().all(|c| c.at(Event::Dropped).is_some())
        })
        .await;
    for c in h.engine.calls() {
        assert_eq!(h.worker(&c.url).in_flight(), 0, "{}", c.url);
    }
    assert_eq!(h.outcomes("cancelled"), 1.0);
}

// ---- relay: timeouts and broken streams -----------------------------------

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_ends_with_an_error_event_at_the_idle_timeout() {
    let h = harness(Fleet::Aggregated, |_| {});
    h.engine
        .script(Leg::Worker, [Reply::ok(vec![chunk(TOKEN), Step::Hang])]);
    let t0 = Instant::now();
    let resp = h.send(true).await;
    let body = text(resp).await;
    assert!(
        body.starts_with(TOKEN) && body.contains("\"error\""),
        "{body}"
    );
    assert!(body.contains("idle"), "{body}");
    let c = &h.engine.calls_of(Leg::Worker)[0];
    assert_eq!(c.at(Event::Dropped), Some(t0 + secs(5)));
    assert_eq!(h.breaker(&c.url), BreakerState::Closed);
    assert_eq!(h.outcomes("timeout"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_broken_stream_ends_with_an_error_event_and_charges_the_worker() {
    let h = harness(Fleet::Aggregated, |_| {});
    h.engine
        .script(Leg::Worker, [Reply::ok(vec![chunk(TOKEN), Step::Break])]);
    let body = text(h.send(true).await).await;
    assert!(
        body.starts_with(TOKEN) && body.contains("\"error\""),
        "{body}"
    );
    let calls = h.engine.calls_of(Leg::Worker);
    assert_eq!(calls.len(), 1, "bytes reached the client: no retry");
    assert_eq!(h.breaker(&calls[0].url), BreakerState::Open);
    assert_eq!(h.outcomes("upstream_error"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn the_request_deadline_bounds_a_stream_that_never_idles() {
    let h = harness(Fleet::Aggregated, |c| c.timeouts.request_secs = 5.0);
    let mut steps = Vec::new();
    for _ in 0..5 {
        steps.extend([chunk(TOKEN), Step::Wait(secs(2))]);
    }
    steps.push(chunk(DONE));
    h.engine.script(Leg::Worker, [Reply::ok(steps)]);
    let t0 = Instant::now();
    let body = text(h.send(true).await).await;
    assert_eq!(body.matches(TOKEN).count(), 3, "{body}");
    assert!(
        body.contains("\"error\"") && !body.contains("[DONE]"),
        "{body}"
    );
    let c = &h.engine.calls_of(Leg::Worker)[0];
    assert_eq!(c.at(Event::Dropped), Some(t0 + secs(5)));
    assert_eq!(h.outcomes("timeout"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn an_engine_breaking_after_done_leaves_a_success() {
    let h = harness(Fleet::Aggregated, |_| {});
    h.engine.script(
        Leg::Worker,
        [Reply::ok(vec![chunk(TOKEN), chunk(DONE), Step::Break])],
    );
    let body = text(h.send(true).await).await;
    assert!(
        body.ends_with(DONE) && !body.contains("\"error\""),
        "{body}"
    );
    let c = &h.engine.calls_of(Leg::Worker)[0];
    assert_eq!(h.breaker(&c.url), BreakerState::Closed);
    assert_eq!(h.outcomes("success"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn ttft_and_e2e_are_measured_on_the_paused_clock() {
    let h = harness(Fleet::Aggregated, |_| {});
    h.engine.script(
        Leg::Worker,
        [Reply::ok(vec![
            Step::Wait(ms(50)),
            chunk(TOKEN),
            Step::Wait(secs(1)),
            chunk(TOKEN),
            chunk(DONE),
        ])
        .after(ms(100))],
    );
    assert!(text(h.send(true).await).await.ends_with(DONE));
    let ttft = h.metric("baton_time_to_first_token_seconds_sum", &[]);
    let e2e = h.metric("baton_e2e_request_latency_seconds_sum", &[]);
    assert!((ttft - 0.15).abs() < 1e-9, "{ttft}");
    assert!((e2e - 1.15).abs() < 1e-9, "{e2e}");
}

#[tokio::test(start_paused = true)]
async fn a_whole_reply_is_collected_under_the_idle_timeout() {
    let h = harness(Fleet::Aggregated, |c| c.retry.max_retries = 1);
    h.engine.script(
        Leg::Worker,
        [
            Reply::ok(vec![chunk("{\"choices\":"), Step::Hang]),
            Reply::ok(vec![chunk(
                r#"{"choices":[{"text":"hi"}],"usage":{"completion_tokens":1}}"#,
            )]),
        ],
    );
    let t0 = Instant::now();
    let resp = h.send(false).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let calls = h.engine.calls_of(Leg::Worker);
    // Nothing reached the client yet, so the stalled reply is retried.
    assert_eq!(calls[0].at(Event::Dropped), Some(t0 + secs(5)));
    assert_eq!(calls.len(), 2);
    let body: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
    assert_eq!(body["choices"][0]["text"], "hi");
    assert_eq!(h.outcomes("success"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn vllm_prefill_without_params_sends_decode_the_plain_body() {
    // Prefill stopped on its own (EOS on the first token): decode prefills.
    let h = harness(Fleet::Vllm, |_| {});
    h.engine.script(
        Leg::Prefill,
        [Reply::ok(vec![chunk(r#"{"choices":[{"text":"x"}]}"#)])],
    );
    h.engine.script(Leg::Decode, [stream_ok()]);
    assert!(text(h.send(true).await).await.ends_with(DONE));
    let d = &h.engine.calls_of(Leg::Decode)[0];
    assert!(d.json().get("kv_transfer_params").is_none(), "{}", d.json());
    assert_eq!(h.metric("baton_pd_local_prefills_total", &[]), 1.0);
}

#[tokio::test(start_paused = true)]
async fn sglang_decode_failure_cancels_the_prefill_task_and_retries() {
    let h = harness(Fleet::Sglang, |_| {});
    h.engine.script(
        Leg::Prefill,
        [Reply::ok(vec![Step::Hang]), Reply::ok(vec![chunk("{}")])],
    );
    h.engine.script(
        Leg::Decode,
        [
            Reply::status(500, vec![]).after(secs(1)),
            // Decode answers only once its prefill task has run.
            stream_ok().after(ms(10)),
        ],
    );
    let t0 = Instant::now();
    assert!(text(h.send(true).await).await.ends_with(DONE));
    let (p, d) = (
        h.engine.calls_of(Leg::Prefill),
        h.engine.calls_of(Leg::Decode),
    );
    // The failed attempt's prefill task dies with it.
    assert_eq!(p[0].at(Event::Dropped), Some(t0 + secs(1)));
    assert_eq!(h.worker(&p[0].url).in_flight(), 0);
    assert_eq!(h.breaker(&d[0].url), BreakerState::Open);
    assert_eq!(h.breaker(&p[0].url), BreakerState::Closed);
    assert_eq!((p.len(), d.len()), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn sglang_prefill_failure_fails_a_whole_reply_being_collected() {
    let h = harness(Fleet::Sglang, |c| c.retry.max_retries = 0);
    h.engine
        .script(Leg::Prefill, [Reply::status(500, vec![]).after(secs(2))]);
    h.engine.script(
        Leg::Decode,
        [Reply::ok(vec![
            chunk("{\"text\":"),
            Step::Wait(secs(4)),
            chunk("\"x\"}"),
        ])],
    );
    let t0 = Instant::now();
    let resp = h.send(false).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(t0.elapsed(), secs(2));
    let d = &h.engine.calls_of(Leg::Decode)[0];
    assert_eq!(d.at(Event::Dropped), Some(t0 + secs(2)));
    assert!(text(resp).await.contains("\"error\""));
    assert_eq!(h.outcomes("upstream_error"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_client_leaving_right_after_done_is_a_success() {
    // The engine keeps its connection open after [DONE]; the client closes
    // as soon as it has read it.
    let h = harness(Fleet::Aggregated, |_| {});
    h.engine.script(
        Leg::Worker,
        [Reply::ok(vec![chunk(TOKEN), chunk(DONE), Step::Hang])],
    );
    let mut body = h.send(true).await.into_body();
    let mut got = Vec::new();
    while !got.ends_with(DONE.as_bytes()) {
        let frame = body.frame().await.expect("more frames").unwrap();
        got.extend_from_slice(&frame.into_data().unwrap());
    }
    drop(body);
    let c = &h.engine.calls_of(Leg::Worker)[0];
    assert!(c.at(Event::Dropped).is_some());
    assert_eq!(h.outcomes("success"), 1.0);
    assert_eq!(h.outcomes("cancelled"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn the_idle_timeout_is_per_gap_not_per_stream() {
    let h = harness(Fleet::Aggregated, |_| {});
    let mut steps = Vec::new();
    for _ in 0..4 {
        steps.extend([Step::Wait(secs(4)), chunk(TOKEN)]);
    }
    steps.push(chunk(DONE));
    h.engine.script(Leg::Worker, [Reply::ok(steps)]);
    let t0 = Instant::now();
    let body = text(h.send(true).await).await;
    assert_eq!(body.matches(TOKEN).count(), 4, "{body}");
    assert!(body.ends_with(DONE), "{body}");
    assert_eq!(t0.elapsed(), secs(16));
    assert_eq!(h.outcomes("success"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_head_without_a_first_chunk_ends_in_an_error_event() {
    let h = harness(Fleet::Aggregated, |_| {});
    h.engine.script(Leg::Worker, [Reply::ok(vec![Step::Hang])]);
    let t0 = Instant::now();
    let resp = h.send(true).await;
    // The head waits for the first chunk (one write for both): here the
    // idle timeout, after which the stream is only an error event.
    assert_eq!(t0.elapsed(), secs(5));
    assert_eq!(resp.status(), StatusCode::OK);
    let body = text(resp).await;
    assert!(
        body.starts_with("data: ") && body.contains("idle"),
        "{body}"
    );
    assert_eq!(h.outcomes("timeout"), 1.0);
}

// ---- SLO: budgets to engines, engine reports, predictions --------------

#[tokio::test(start_paused = true)]
async fn slo_budgets_go_to_both_legs_reports_come_back_and_the_prediction_reaches_the_client() {
    let h = harness(Fleet::Vllm, |c| {
        c.slo.routing = true;
        c.slo.policy.conditional_disaggregation = false;
    });
    let report = r#"{"running":3,"waiting":0,"waiting_prefill_tokens":0,"context_tokens":900,"kv_usage":0.1,"tightest_tpot_ms":50.0,"step":null}"#;
    h.engine.script(
        Leg::Prefill,
        [prefill_ok().header(baton_protocol::engine_slo::LOAD_HEADER, report)],
    );
    h.engine.script(Leg::Decode, [stream_ok()]);
    let resp = h.send(true).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let predicted = resp.headers()[crate::slo::PREDICTED_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        predicted.starts_with("ttft=") && predicted.contains(";tpot="),
        "{predicted}"
    );
    assert!(text(resp).await.ends_with(DONE));
    // The default class (2 s / 100 ms) on both legs, with the absolute deadline.
    let calls = h.engine.calls();
    assert_eq!(calls.len(), 2);
    for c in &calls {
        let slo = baton_protocol::engine_slo::EngineSlo::parse(c.slo.as_deref().unwrap()).unwrap();
        assert_eq!((slo.ttft_ms, slo.tpot_ms), (Some(2000.0), Some(100.0)));
        let now = crate::slo::shared::now_ms();
        let due = slo.deadline_unix_ms.unwrap();
        assert!(due > now && due <= now + 2000, "{due} vs {now}");
    }
    // The prefill engine's report is kept (after its prompt left this replica's count).
    let prefill = &calls[0].url;
    let view = h.state.slo.tracker.view(prefill, Duration::from_secs(60));
    let r = view.report.expect("report kept");
    assert_eq!(
        (r.report.running, r.report.tightest_tpot_ms),
        (3, Some(50.0))
    );
    assert_eq!(r.counts.prefill_tokens, 0);
}

#[tokio::test(start_paused = true)]
async fn no_prediction_header_without_slo_routing() {
    let h = harness(Fleet::Aggregated, |_| {});
    h.engine.script(Leg::Worker, [stream_ok()]);
    let resp = h.send(true).await;
    assert!(resp.headers().get(crate::slo::PREDICTED_HEADER).is_none());
    // The budget still reaches the engine.
    assert!(h.engine.calls()[0].slo.is_some());
}
