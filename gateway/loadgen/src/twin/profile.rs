//! What an engine step costs: a step-time profile read from JSON.
//!
//! Accepted shapes (the first that parses wins):
//! - the twin's own file: `{"model": ..., "device": ..., "measured": false, "source": ..., "step": StepModel,
//!   "kv_capacity_tokens": N, "kv_bytes_per_token": N}` (e.g. `tests/bench/profiles/h200-llama8b-from-headline.json`);
//! - any object with a `StepModel` under `fit`, `model` or `step` (a measured profile whose points were fitted);
//! - a bare `StepModel` (`{"fixed_ms": .., "per_seq_ms": .., "per_prefill_token_ms": .., "per_kctx_ms": ..}`).
//!
//! The twin prices a step with the fitted [`StepModel`] (`StepModel::predict_ms`), the same function the engines'
//! SLO scheduler and the gateway predict with. Why the fit rather than interpolating measured points: the
//! simulated steps have shapes no profile grid covers (any number of sequences × any prefill chunk × any context),
//! and outside the grid a bilinear interpolation has no answer, while the linear model is what the engine itself
//! plans with — so a twin run shows what the engine's own plans do, and its error is the fit's error, which the
//! profile's residuals measure.

use std::path::Path;

use baton_policies::step::StepModel;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// KV bytes per token of Llama-3-8B (32 layers × 8 KV heads × 128 × 2 (K and V) × bf16).
pub const LLAMA8B_KV_BYTES_PER_TOKEN: u64 = 131_072;

/// A step-time profile: the step model and what else the twin needs of the engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Where it came from (file name or a description).
    #[serde(default)]
    pub name: String,
    /// True only for a profile measured on the engine (false: derived from other measurements).
    #[serde(default)]
    pub measured: bool,
    pub step: StepModel,
    /// KV cache capacity of one engine, in tokens (`None`: unbounded).
    #[serde(default)]
    pub kv_capacity_tokens: Option<u64>,
    /// KV bytes per token (hand-off size).
    #[serde(default)]
    pub kv_bytes_per_token: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

impl Profile {
    /// A profile from a step model alone.
    pub fn from_model(name: &str, step: StepModel) -> Self {
        Self {
            name: name.to_owned(),
            measured: false,
            step,
            kv_capacity_tokens: None,
            kv_bytes_per_token: None,
        }
    }

    pub fn read(path: &Path) -> Result<Self, ProfileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: name.clone(),
            source,
        })?;
        Self::parse(&text, &name)
    }

    pub fn parse(text: &str, name: &str) -> Result<Self, ProfileError> {
        let bad = |message: String| ProfileError::Parse {
            path: name.to_owned(),
            message,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let model_at = |v: &Value| serde_json::from_value::<StepModel>(v.clone()).ok();
        let step = ["step", "fit", "model"]
            .iter()
            .find_map(|k| v.get(k).and_then(model_at))
            .or_else(|| model_at(&v))
            .ok_or_else(|| {
                bad("no step model (expected fixed_ms, per_seq_ms, per_prefill_token_ms, per_kctx_ms at the top \
                     level or under step / fit / model)"
                    .to_owned())
            })?;
        if !step.is_valid() {
            return Err(bad(format!(
                "step model has a negative or non-finite coefficient: {step:?}"
            )));
        }
        let u = |k: &str| v.get(k).and_then(Value::as_u64);
        Ok(Self {
            name: name.to_owned(),
            measured: v.get("measured").and_then(Value::as_bool).unwrap_or(false),
            step,
            kv_capacity_tokens: u("kv_capacity_tokens"),
            kv_bytes_per_token: u("kv_bytes_per_token"),
        })
    }
}

/// KV hand-off cost: a fixed delay (the prefill leg's answer, the decode leg's request: HTTP on one host) plus the
/// import copy, which the decode engine's scheduler pays inside the step that admits the sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub fixed_ms: f64,
    /// (prompt tokens, bytes per second of the import kernel), ascending; interpolated linearly, clamped at the ends.
    pub bandwidth: Vec<(u64, f64)>,
    pub bytes_per_token: u64,
}

impl Handoff {
    /// Only the fixed delay (no copy cost).
    pub fn fixed(ms: f64) -> Self {
        Self {
            fixed_ms: ms,
            bandwidth: Vec::new(),
            bytes_per_token: 0,
        }
    }

    /// From `handoff.json` as `baton-cuda-bench handoff` writes it (`handoff: [{tokens, bytes, kernel_gbps}]`).
    pub fn from_bench_json(text: &str, fixed_ms: f64) -> Option<Self> {
        let v: Value = serde_json::from_str(text).ok()?;
        let rows = v.get("handoff")?.as_array()?;
        let mut bandwidth = Vec::new();
        let mut bytes_per_token = 0;
        for r in rows {
            let tokens = r.get("tokens")?.as_u64()?;
            let bytes = r.get("bytes")?.as_u64()?;
            let gbps = r.get("kernel_gbps")?.as_f64()?;
            if let Some(b) = bytes.checked_div(tokens) {
                bytes_per_token = b;
            }
            bandwidth.push((tokens, gbps * 1e9));
        }
        bandwidth.sort_by_key(|b| b.0);
        (!bandwidth.is_empty()).then_some(Self {
            fixed_ms,
            bandwidth,
            bytes_per_token,
        })
    }

    /// Milliseconds the import of `tokens` tokens of KV takes.
    pub fn import_ms(&self, tokens: u64) -> f64 {
        let Some(&(t0, b0)) = self.bandwidth.first() else {
            return 0.0;
        };
        let bw = if tokens <= t0 {
            b0
        } else {
            self.bandwidth
                .windows(2)
                .find(|w| tokens <= w[1].0)
                .map(|w| {
                    let f = (tokens - w[0].0) as f64 / (w[1].0 - w[0].0).max(1) as f64;
                    w[0].1 + f * (w[1].1 - w[0].1)
                })
                .unwrap_or_else(|| self.bandwidth.last().map_or(b0, |l| l.1))
        };
        if bw <= 0.0 {
            return 0.0;
        }
        (tokens * self.bytes_per_token) as f64 / bw * 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_shape() {
        let bare = r#"{"fixed_ms": 5, "per_seq_ms": 0.1, "per_prefill_token_ms": 0.03, "per_kctx_ms": 0.05}"#;
        let p = Profile::parse(bare, "x").unwrap();
        assert_eq!(p.step.fixed_ms, 5.0);
        assert_eq!(p.kv_capacity_tokens, None);
        let wrapped = format!(r#"{{"measured": true, "fit": {bare}, "kv_capacity_tokens": 1000}}"#);
        let p = Profile::parse(&wrapped, "y").unwrap();
        assert!(p.measured);
        assert_eq!(p.kv_capacity_tokens, Some(1000));
        assert!(Profile::parse("{}", "z").is_err());
        assert!(Profile::parse(
            r#"{"fixed_ms": -1, "per_seq_ms": 0, "per_prefill_token_ms": 0, "per_kctx_ms": 0}"#,
            "n"
        )
        .is_err());
    }

    #[test]
    fn handoff_interpolates_the_bench_rows() {
        let j = r#"{"handoff": [{"tokens": 512, "bytes": 67108864, "kernel_gbps": 300.0},
                               {"tokens": 2048, "bytes": 268435456, "kernel_gbps": 350.0}]}"#;
        let h = Handoff::from_bench_json(j, 1.0).unwrap();
        assert_eq!(h.bytes_per_token, 131_072);
        // 2048 tokens = 256 MiB at 350 GB/s.
        assert!((h.import_ms(2048) - 268435456.0 / 350e9 * 1000.0).abs() < 1e-9);
        // Beyond the last row: the last bandwidth.
        assert!((h.import_ms(4096) - 2.0 * h.import_ms(2048)).abs() < 1e-9);
        assert_eq!(Handoff::fixed(2.0).import_ms(4096), 0.0);
    }
}
