//! The `baton-bench` binary end to end: a sweep against the mock engine writes JSON, CSV and
//! PNGs, and `plot` combines saved reports.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use baton_e2e::mock::{Flavor, MockEngine};
use baton_loadgen::report::Report;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("baton-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_baton-bench"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_writes_reports_and_plot_combines_them() {
    let mock = MockEngine::new(Flavor::OpenAi)
        .token_delay(Duration::from_millis(2))
        .head_delay(Duration::from_millis(20))
        .spawn()
        .await;
    let dir = scratch("sweep");
    let p = |f: &str| dir.join(f).display().to_string();
    let url = mock.url();
    let out = tokio::task::spawn_blocking({
        let (json, csv, plot) = (p("s.json"), p("s.csv"), p("s"));
        move || {
            bench(&[
                "sweep",
                "--url",
                &url,
                "--model",
                "m",
                "--workload",
                "uniform:4:8:2:4",
                "--num-requests",
                "12",
                "--rates",
                "20,40",
                "--cooldown",
                "0",
                "--goodput",
                "ttft:5000",
                "tpot:1000",
                "--out",
                &json,
                "--csv",
                &csv,
                "--plot",
                &plot,
                "--save-records",
                "--label",
                "mock",
                "--quiet",
            ])
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = Report::read_json(&dir.join("s.json")).unwrap();
    assert_eq!(report.runs.len(), 2);
    assert!(report.runs.iter().all(|r| r.summary.completed == 12));
    assert!(report.runs.iter().all(|r| r.records.len() == 12));
    let ds = report.distserve.unwrap();
    assert_eq!(ds.highest_passing_rate, Some(40.0));
    assert!(!ds.bounded);
    assert_eq!(report.slo_scale.len(), 6);
    let csv = std::fs::read_to_string(dir.join("s.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3);
    for png in ["s-attainment.png", "s-ttft-cdf.png", "s-tpot-cdf.png"] {
        let bytes = std::fs::read(dir.join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png}");
    }

    let (a, b, out_png, cdf) = (p("s.json"), p("s.json"), p("both.png"), p("both"));
    let out = bench(&["plot", &a, &b, "--out", &out_png, "--cdf", &cdf]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("both.png").exists() && dir.join("both-ttft-cdf.png").exists());

    let bad = bench(&["plot", &p("s.csv")]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a baton-bench report"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    for args in [
        &["run", "--model", "m", "--workload", "nope"][..],
        &["run", "--model", "m", "--goodput", "ttft:x"],
        &["run", "--model", "m", "--url", "https://x"],
        &["run", "--model", "m", "--request-rate", "0"],
        &["run", "--model", "m", "--duration", "1"],
        &["sweep", "--model", "m", "--rates", "1,2"],
        &[
            "sweep",
            "--model",
            "m",
            "--rates",
            "x",
            "--goodput",
            "ttft:1",
        ],
    ] {
        let out = bench(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
