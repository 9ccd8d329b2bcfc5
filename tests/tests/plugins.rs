//! Routing pipelines from config, with runtime-loaded Rhai plugins.

mod common;

use baton_e2e::mock::{Flavor, MockEngine};
use baton_policies::pipeline::{AdmissionConfig, PipelineConfig, ScorerConfig};
use baton_policies::PolicyKind;
use common::*;
use http::StatusCode;

fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("baton-plugins-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn a_script_scorer_steers_traffic_without_a_rebuild() {
    let a = MockEngine::new(Flavor::OpenAi).spawn().await;
    let b = MockEngine::new(Flavor::OpenAi).spawn().await;
    let dir = tmpdir("steer");
    let port = b.addr().port();
    let path = script(
        &dir,
        "prefer_b.rhai",
        &format!("fn score(w, r) {{ if w.url.ends_with(\":{port}\") {{ 1 }} else {{ 0 }} }}"),
    );
    let mut cfg = aggregated(&[a.url(), b.url()]);
    cfg.policy = PolicyKind::Pipeline;
    cfg.policy_config.pipeline = PipelineConfig {
        scorers: vec![ScorerConfig::Script {
            path,
            weight: 1.0,
            budget: None,
        }],
        // The assertion is about the script's choice, not its speed: a loaded machine must not turn a decision
        // into the time-limit fallback.
        time_limit_ms: 60_000,
        ..PipelineConfig::default()
    };
    let gw = start(cfg).await;
    for _ in 0..5 {
        assert_eq!(
            post(&gw.url(), "/v1/completions", COMPLETION).await.status,
            StatusCode::OK
        );
    }
    assert_eq!((a.stats().requests, b.stats().requests), (0, 5));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_runaway_plugin_falls_back_to_the_default_policy() {
    let a = MockEngine::new(Flavor::OpenAi).spawn().await;
    let b = MockEngine::new(Flavor::OpenAi).spawn().await;
    let dir = tmpdir("runaway");
    let path = script(
        &dir,
        "spin.rhai",
        "fn score(w, r) { let x = 0; loop { x += 1; } }",
    );
    let mut cfg = aggregated(&[a.url(), b.url()]);
    cfg.policy = PolicyKind::Pipeline;
    cfg.policy_config.pipeline.scorers = vec![ScorerConfig::Script {
        path,
        weight: 1.0,
        budget: Some(500),
    }];
    let gw = start(cfg).await;
    for _ in 0..4 {
        assert_eq!(
            post(&gw.url(), "/v1/completions", COMPLETION).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(a.stats().completed + b.stats().completed, 4);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_script_admission_stage_sheds_with_retry_after() {
    let a = MockEngine::new(Flavor::OpenAi).spawn().await;
    let dir = tmpdir("admit");
    let path = script(
        &dir,
        "shed.rhai",
        "fn admit(ws, r) { if r.text_len > 50 { 1500 } else { true } }",
    );
    let mut cfg = aggregated(&[a.url()]);
    cfg.policy = PolicyKind::Pipeline;
    cfg.policy_config.pipeline.admission = vec![AdmissionConfig::Script { path, budget: None }];
    cfg.policy_config.pipeline.time_limit_ms = 60_000; // as above: the script's answer, whatever the load
    let gw = start(cfg).await;
    assert_eq!(
        post(&gw.url(), "/v1/completions", COMPLETION).await.status,
        StatusCode::OK
    );
    let long = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(100));
    let r = post(&gw.url(), "/v1/completions", &long).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["retry-after"], "2");
    assert_eq!(a.stats().requests, 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_shipped_example_plugins_load() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/examples/plugins/");
    let a = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = aggregated(&[a.url()]);
    cfg.policy = PolicyKind::Pipeline;
    cfg.policy_config.pipeline.scorers = vec![ScorerConfig::Script {
        path: format!("{root}prefer_idle_even.rhai"),
        weight: 1.0,
        budget: None,
    }];
    cfg.policy_config.pipeline.admission = vec![AdmissionConfig::Script {
        path: format!("{root}shed_long_prompts.rhai"),
        budget: None,
    }];
    let gw = start(cfg).await;
    assert_eq!(
        post(&gw.url(), "/v1/completions", COMPLETION).await.status,
        StatusCode::OK
    );
    gw.shutdown().await;
    // A broken plugin path is a clear start-up error, not a panic.
    let mut bad = aggregated(&[a.url()]);
    bad.policy = PolicyKind::Pipeline;
    bad.policy_config.pipeline.scorers = vec![ScorerConfig::Script {
        path: "/nonexistent.rhai".into(),
        weight: 1.0,
        budget: None,
    }];
    let err = baton_gateway::start(bad).await.unwrap_err().to_string();
    assert!(err.contains("/nonexistent.rhai"), "{err}");
}

/// A rewritten script takes over without a restart and without failing a request: traffic runs across the swap
/// (every request answered 200), the reload is awaited on the gateway's reload events, and a broken rewrite leaves
/// the running pipeline in place.
#[tokio::test]
async fn a_changed_script_is_reloaded_without_dropping_requests() {
    let a = MockEngine::new(Flavor::OpenAi).spawn().await;
    let b = MockEngine::new(Flavor::OpenAi).spawn().await;
    let dir = tmpdir("reload");
    let prefer = |port: u16| {
        format!("fn score(w, r) {{ if w.url.ends_with(\":{port}\") {{ 1 }} else {{ 0 }} }}")
    };
    let path = script(&dir, "prefer.rhai", &prefer(a.addr().port()));
    let mut cfg = aggregated(&[a.url(), b.url()]);
    cfg.policy = PolicyKind::Pipeline;
    cfg.policy_config.pipeline = PipelineConfig {
        scorers: vec![ScorerConfig::Script {
            path: path.clone(),
            weight: 1.0,
            budget: None,
        }],
        time_limit_ms: 60_000,
        reload_interval_ms: 20,
        ..PipelineConfig::default()
    };
    let gw = start(cfg).await;
    let mut events = gw.plugin_reloads.clone();
    for _ in 0..3 {
        assert_eq!(
            post(&gw.url(), "/v1/completions", COMPLETION).await.status,
            StatusCode::OK
        );
    }
    assert_eq!((a.stats().requests, b.stats().requests), (3, 0));
    // Traffic keeps flowing while the script is replaced.
    let url = gw.url();
    let traffic = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(post(&url, "/v1/completions", COMPLETION).await.status);
        }
        statuses
    });
    // A longer file than before (its length changes whatever the clock's resolution).
    let new = format!("// prefer b\n{}", prefer(b.addr().port()));
    std::fs::write(&path, new).unwrap();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        events.wait_for(|e| e.reloaded >= 1),
    )
    .await
    .expect("reloaded within 10 s")
    .unwrap();
    let statuses = traffic.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let before = b.stats().requests;
    for _ in 0..3 {
        assert_eq!(
            post(&gw.url(), "/v1/completions", COMPLETION).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(b.stats().requests, before + 3, "the new script routes");
    // A broken rewrite: reported, and the running pipeline keeps routing.
    std::fs::write(
        &path,
        "fn score(w, r) { // unfinished, longer than before ....................",
    )
    .unwrap();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        events.wait_for(|e| e.failed >= 1),
    )
    .await
    .expect("the failed reload is reported within 10 s")
    .unwrap();
    let (a_before, b_before) = (a.stats().requests, b.stats().requests);
    for _ in 0..3 {
        assert_eq!(
            post(&gw.url(), "/v1/completions", COMPLETION).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        (a.stats().requests, b.stats().requests),
        (a_before, b_before + 3)
    );
    assert_eq!(events.borrow().reloaded, 1);
    gw.shutdown().await;
}

/// docs/PLUGINS.md's worked example: its TOML, read from the guide and built as the gateway builds it, decides as
/// the guide says.
#[test]
fn the_plugins_guide_worked_example_decides_as_documented() {
    use baton_policies::pipeline::Admit;
    use baton_policies::{RequestFeatures, RoutingPolicy, WorkerView};
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let guide = std::fs::read_to_string(format!("{root}/docs/PLUGINS.md")).unwrap();
    let block = guide
        .split("<!-- worked-example:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- worked-example:end -->").next())
        .expect("the guide marks its worked example");
    let toml = block
        .trim()
        .trim_start_matches("```toml")
        .trim_end_matches("```")
        .replace(
            "\"policies/examples/",
            &format!("\"{root}/policies/examples/"),
        );
    let dir = tmpdir("guide");
    let file = dir.join("gateway.toml");
    std::fs::write(&file, toml).unwrap();
    let cfg = baton_gateway::config::GatewayConfig::from_toml_file(&file).unwrap();
    assert_eq!(cfg.policy, PolicyKind::Pipeline);
    let p = cfg.policy_config.pipeline.build().unwrap();
    let urls = ["http://w:8001", "http://w:8002", "http://w:8003"];
    let views = |load: [u64; 3]| -> Vec<WorkerView<'static>> {
        urls.iter()
            .zip(load)
            .map(|(url, in_flight)| WorkerView {
                url,
                available: true,
                in_flight,
            })
            .collect()
    };
    let short = RequestFeatures { text: Some("hi") };
    assert_eq!(p.pick(&views([1, 1, 5]), &short), Some(1), ":8002");
    assert_eq!(p.pick(&views([0, 3, 2]), &short), Some(0), ":8001");
    assert_eq!(p.pick(&views([4, 5, 4]), &short), None);
    let long_text = "x".repeat(30_000);
    let long = RequestFeatures {
        text: Some(&long_text),
    };
    assert_eq!(
        p.admit(&views([1, 1, 5]), &long),
        Admit::Reject {
            retry_after_ms: 2000
        }
    );
    assert_eq!(p.admit(&views([1, 1, 5]), &short), Admit::Yes);
    assert_eq!(p.admit(&views([0, 1, 5]), &long), Admit::Yes);
    assert_eq!(p.fallbacks(), 0, "no stage failed");
}
