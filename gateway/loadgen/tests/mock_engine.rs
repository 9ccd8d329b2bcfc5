//! Open-loop runs against the e2e harness's mock OpenAI engine (real sockets, real time).

use std::time::Duration;

use baton_e2e::mock::{Fault, Flavor, MockEngine};
use baton_loadgen::client::BenchClient;
use baton_loadgen::metrics::RunSummary;
use baton_loadgen::progress::Progress;
use baton_loadgen::record::Outcome;
use baton_loadgen::request::{Endpoint, RequestTemplate};
use baton_loadgen::runner::{run, RunConfig, Stop};
use baton_loadgen::slo::Slo;
use baton_loadgen::workload::Workload;

const TOKEN_DELAY: Duration = Duration::from_millis(20);
const HEAD_DELAY: Duration = Duration::from_millis(50);

fn template(endpoint: Endpoint) -> RequestTemplate {
    RequestTemplate {
        endpoint,
        model: "mock-model".into(),
        ignore_eos: true,
        min_tokens: false,
        temperature: 0.0,
        extra_body: Default::default(),
        headers: vec![("x-slo-class".into(), "interactive".into())],
    }
}

fn config(n: usize) -> RunConfig {
    RunConfig {
        rate: 40.0,
        burstiness: 1.0,
        seed: 3,
        stop: Stop::Requests(n),
        max_concurrency: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_run_measures_the_mock_delays() {
    let mock = MockEngine::new(Flavor::OpenAi)
        .token_delay(TOKEN_DELAY)
        .head_delay(HEAD_DELAY)
        .spawn()
        .await;
    let client = BenchClient::new(
        &mock.url(),
        template(Endpoint::Completions),
        Duration::from_secs(30),
    )
    .unwrap();
    let workload = Workload::parse("fixed:12:6").unwrap();
    let out = run(&client, workload, "fixed", &config(16), &Progress::hidden())
        .await
        .unwrap();
    assert_eq!(out.records.len(), 16);
    for r in &out.records {
        assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
        assert_eq!(r.output_tokens, Some(6));
        assert_eq!(r.prompt_tokens, Some(12)); // the mock counts words
        let ttft = r.ttft_s.unwrap();
        let tpot = r.tpot_s().unwrap();
        assert!(ttft >= HEAD_DELAY.as_secs_f64(), "ttft {ttft}");
        assert!(ttft < HEAD_DELAY.as_secs_f64() + 0.5, "ttft {ttft}");
        assert!(tpot >= TOKEN_DELAY.as_secs_f64() * 0.9, "tpot {tpot}");
        assert!(tpot < TOKEN_DELAY.as_secs_f64() + 0.1, "tpot {tpot}");
        // 5 paced token gaps, then the unpaced finish chunk.
        assert_eq!(r.itl_s.len(), 6);
        assert!(r.latency_s.unwrap() >= ttft + 5.0 * TOKEN_DELAY.as_secs_f64() * 0.9);
    }
    let seen = mock.requests();
    assert_eq!(seen.len(), 16);
    assert_eq!(seen[0].body["ignore_eos"], true);
    assert_eq!(seen[0].body["max_tokens"], 6);
    assert_eq!(seen[0].headers["x-slo-class"], "interactive");

    let tight = Slo::parse(&["ttft:10"]).unwrap();
    let loose = Slo::parse(&["ttft:5000", "tpot:1000"]).unwrap();
    let s = RunSummary::compute(&out.records, out.duration_s, &loose);
    assert_eq!((s.sent, s.completed, s.failed), (16, 16, 0));
    assert_eq!(s.attainment, Some(1.0));
    assert_eq!(s.total_output_tokens, 96);
    assert_eq!(RunSummary::compute(&out.records, 1.0, &tight).good, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_run_counts_rejections_and_aborts_as_misses() {
    let mock = MockEngine::new(Flavor::OpenAi)
        .token_delay(Duration::from_millis(5))
        .fault(Fault::StatusNth { n: 2, status: 429 })
        .fault(Fault::DropMidStreamNth {
            n: 3,
            after_tokens: 2,
        })
        .fault(Fault::StatusNth { n: 4, status: 500 })
        .spawn()
        .await;
    let client = BenchClient::new(
        &mock.url(),
        template(Endpoint::Chat),
        Duration::from_secs(30),
    )
    .unwrap();
    let workload = Workload::parse("fixed:5:4").unwrap();
    // One at a time, so the mock's request numbers follow ours.
    let cfg = RunConfig {
        max_concurrency: Some(1),
        ..config(6)
    };
    let out = run(&client, workload, "chat", &cfg, &Progress::hidden())
        .await
        .unwrap();
    let kinds: Vec<&Outcome> = out.records.iter().map(|r| &r.outcome).collect();
    assert_eq!(kinds[0], &Outcome::Ok);
    assert!(matches!(kinds[1], Outcome::Rejected { .. }), "{kinds:?}");
    assert!(matches!(kinds[2], Outcome::Aborted { .. }), "{kinds:?}");
    assert!(
        matches!(kinds[3], Outcome::HttpError { status: 500, .. }),
        "{kinds:?}"
    );
    assert_eq!(out.records[0].output_tokens, Some(4));
    // The role-only chunk is the first with choices: 4 tokens + finish after it.
    assert_eq!(out.records[0].itl_s.len(), 5);
    let slo = Slo::parse(&["ttft:5000"]).unwrap();
    let s = RunSummary::compute(&out.records, out.duration_s, &slo);
    assert_eq!((s.sent, s.completed, s.failed, s.rejected), (6, 3, 2, 1));
    assert_eq!(s.good, Some(3));
    assert!((s.attainment.unwrap() - 0.5).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_and_timeouts_are_failures() {
    let mock = MockEngine::new(Flavor::OpenAi)
        .fault(Fault::HangNth { n: 1 })
        .spawn()
        .await;
    let client = BenchClient::new(
        &mock.url(),
        template(Endpoint::Completions),
        Duration::from_millis(300),
    )
    .unwrap();
    let w = Workload::parse("fixed:3:2").unwrap();
    // One at a time, so the mock's request numbers follow ours.
    let one = RunConfig {
        max_concurrency: Some(1),
        ..config(2)
    };
    let out = run(&client, w.clone(), "w", &one, &Progress::hidden())
        .await
        .unwrap();
    assert_eq!(out.records[0].outcome, Outcome::Timeout);
    assert_eq!(out.records[1].outcome, Outcome::Ok);

    mock.shutdown();
    let out = run(&client, w, "w", &config(2), &Progress::hidden())
        .await
        .unwrap();
    assert!(
        out.records
            .iter()
            .all(|r| matches!(r.outcome, Outcome::Connect { .. })),
        "{:?}",
        out.records
    );
}
