//! A custom routing stage as Rust code: prefer workers in the gateway's own
//! zone, then the least loaded among them.
//!
//! A policy crate depends on `baton-policies`, implements [`Scorer`] (or
//! `Filter`, `Picker`, `Admission`), and composes it into a [`Pipeline`];
//! the gateway uses any `RoutingPolicy`. Run: `cargo run -p baton-policies --example zone_affinity`

use baton_policies::pipeline::{LeastLoadScorer, MaxScorePicker, Pipeline, PluginError, Scorer};
use baton_policies::{RequestFeatures, RoutingPolicy, WorkerView};

/// Scores 1 for workers whose host names the zone, 0 otherwise.
#[derive(Debug)]
struct ZoneAffinity {
    zone: String,
}

impl Scorer for ZoneAffinity {
    fn name(&self) -> &str {
        "zone_affinity"
    }

    fn score(
        &self,
        candidates: &[WorkerView<'_>],
        _request: &RequestFeatures<'_>,
    ) -> Result<Vec<f64>, PluginError> {
        Ok(candidates
            .iter()
            .map(|w| if w.url.contains(&self.zone) { 1.0 } else { 0.0 })
            .collect())
    }
}

fn main() {
    let policy = Pipeline::new(Box::new(MaxScorePicker::default()))
        .scorer(
            2.0,
            Box::new(ZoneAffinity {
                zone: "us-east-1a".into(),
            }),
        )
        .scorer(1.0, Box::new(LeastLoadScorer));
    let workers = [
        WorkerView {
            url: "http://decode-0.us-east-1b:8000",
            available: true,
            in_flight: 0,
        },
        WorkerView {
            url: "http://decode-1.us-east-1a:8000",
            available: true,
            in_flight: 7,
        },
        WorkerView {
            url: "http://decode-2.us-east-1a:8000",
            available: true,
            in_flight: 3,
        },
    ];
    let choice = policy.pick(&workers, &RequestFeatures::default());
    let url = choice.map(|i| workers[i].url).unwrap_or("none");
    println!("routed to {url}");
    assert_eq!(choice, Some(2), "same zone first, then least loaded");
}
