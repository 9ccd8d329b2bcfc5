//! `baton-engine profile`: measures this engine's step time over a grid of step shapes — decoding sequences
//! (batch `B`, each with `C` tokens of KV) with or without one sequence prefilling a `P`-token chunk, and
//! prefill-only steps — and writes a JSON [`StepProfile`]: median and p90 per shape, and the
//! [`StepModel`] fitted to them (what `--step-model FILE`, the gateway and the twin read).
//!
//! The model is loaded exactly as `serve` loads it (same flags, [`crate::cli::load_backend`]), and every step
//! goes through [`Backend::forward_pick`], the call the scheduler makes for a mixed step, so CUDA graphs (decode-only
//! steps) and mixed batches behave as in serving. KV contents are whatever the pool holds: step time does not
//! depend on the values.

use std::path::PathBuf;
use std::time::Instant;

use baton_policies::step::{fit_points, fit_rel_errors, ProfilePoint, StepModel, StepProfile};
use clap::Parser;

use crate::cli::Args;
use crate::engine::backend::Backend;
use crate::kv::store::BlockId;
use crate::model::{ModelConfig, SeqInput};
use crate::sampling::Pick;

#[derive(Debug, Parser)]
#[command(
    name = "baton-engine profile",
    bin_name = "baton-engine profile",
    about = "Measure this engine's step time over (decode batch, context, prefill tokens) and write a JSON step \
             profile with a fitted step-time model",
    long_about = "Measure this engine's step time over (decode batch, context, prefill tokens) and write a JSON \
                  step profile with a fitted step-time model.\n\n\
                  The model is loaded as `baton-engine` (serve) loads it: the same flags (--model, --load-format, \
                  --device, --gpu, --kv-memory-mb, --max-num-seqs, --threads, ...); the server flags are accepted \
                  and ignored. For each decode batch B and context C, B sequences each decode one token after C \
                  tokens of KV; each prefill size P > 0 adds one sequence prefilling a P-token chunk to that step, \
                  and P-only steps (B = 0) run too. A shape is skipped when its KV does not fit the pool, it has more \
                  sequences than --max-num-seqs, or a position passes the model's context. The token budget \
                  (--max-num-batched-tokens) is raised to the grid's largest step. Every step goes through the \
                  backend call the scheduler uses (CUDA graphs for decode-only steps on a GPU). Progress goes to \
                  stderr, one line per shape.\n\n\
                  Example: baton-engine profile --model llama8b --load-format dummy --device cuda \
                  --kv-memory-mb 30000 --max-num-seqs 128 --out profile.json",
    after_help = "Output: {engine, device, model, created, command, measured, kv_capacity_tokens, \
                  kv_bytes_per_token, points: [{seqs, prefill_tokens, context_tokens, decode_seqs, ms_p50, ms_p90}], \
                  fit: {fixed_ms, per_seq_ms, per_prefill_token_ms, per_kctx_ms}, fit_median_rel_error, \
                  fit_max_rel_error}. `baton-engine --step-model FILE` and `baton-bench twin` read its fit."
)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub engine: Args,
    /// Decode batch sizes B (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2,4,8,16,32,64,128",
        help_heading = "Profile"
    )]
    pub batch: Vec<usize>,
    /// Context lengths C of each decoding sequence (KV tokens already in the cache).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "256,1024,4096",
        help_heading = "Profile"
    )]
    pub context: Vec<usize>,
    /// Prefill chunk sizes P (0: decode-only steps).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,128,512,1024,2048,4096,8192",
        help_heading = "Profile"
    )]
    pub prefill: Vec<usize>,
    /// Untimed steps per shape before measuring (the first of a shape may capture a CUDA graph).
    #[arg(long, default_value_t = 2, help_heading = "Profile")]
    pub warmup: usize,
    /// Timed steps per shape.
    #[arg(long, default_value_t = 10, help_heading = "Profile")]
    pub repeats: usize,
    /// Stop timing a shape after this many seconds once 3 steps are timed (0: always --repeats).
    #[arg(long, default_value_t = 10.0, help_heading = "Profile")]
    pub max_secs_per_shape: f64,
    /// Where to write the JSON profile (`-`: stdout).
    #[arg(long, help_heading = "Profile")]
    pub out: PathBuf,
}

/// The grid to measure and how often.
#[derive(Debug, Clone)]
pub struct Grid {
    pub batch: Vec<usize>,
    pub context: Vec<usize>,
    pub prefill: Vec<usize>,
    pub warmup: usize,
    pub repeats: usize,
    pub max_secs_per_shape: f64,
}

/// What bounds a step on this engine.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub block_size: usize,
    pub num_blocks: usize,
    pub max_seqs: usize,
    pub max_tokens: usize,
    pub context_length: usize,
}

/// One step shape: `decode` sequences at context `context`, plus one `prefill`-token chunk when `prefill > 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub decode: usize,
    pub context: usize,
    pub prefill: usize,
}

impl Shape {
    fn seqs(&self) -> usize {
        self.decode + usize::from(self.prefill > 0)
    }

    fn label(&self) -> String {
        if self.decode == 0 {
            format!("B=0 P={}", self.prefill)
        } else {
            format!("B={} C={} P={}", self.decode, self.context, self.prefill)
        }
    }

    /// Why this shape cannot run on `b`, if it cannot.
    fn unfit(&self, b: &Bounds) -> Option<String> {
        let bs = b.block_size.max(1);
        let blocks = self.decode * (self.context + 1).div_ceil(bs) + self.prefill.div_ceil(bs);
        if self.seqs() > b.max_seqs {
            Some(format!(
                "{} sequences > --max-num-seqs {}",
                self.seqs(),
                b.max_seqs
            ))
        } else if blocks > b.num_blocks {
            Some(format!("{blocks} KV blocks > the pool's {}", b.num_blocks))
        } else if self.decode > 0 && self.context + 1 > b.context_length
            || self.prefill > b.context_length
        {
            Some(format!("past the context length {}", b.context_length))
        } else if self.decode + self.prefill > b.max_tokens {
            Some(format!("> {} tokens per step", b.max_tokens))
        } else {
            None
        }
    }
}

impl Grid {
    /// Every shape of the grid, small to large: B = 0 (prefill only) once per P > 0, then each (B, C, P).
    pub fn shapes(&self) -> Vec<Shape> {
        let mut out = Vec::new();
        let mut prefill: Vec<usize> = self.prefill.clone();
        prefill.sort_unstable();
        prefill.dedup();
        for &p in prefill.iter().filter(|&&p| p > 0) {
            out.push(Shape {
                decode: 0,
                context: 0,
                prefill: p,
            });
        }
        let mut batch: Vec<usize> = self.batch.iter().copied().filter(|&b| b > 0).collect();
        batch.sort_unstable();
        batch.dedup();
        let mut context = self.context.clone();
        context.sort_unstable();
        context.dedup();
        for &b in &batch {
            for &c in &context {
                for &p in &prefill {
                    out.push(Shape {
                        decode: b,
                        context: c,
                        prefill: p,
                    });
                }
            }
        }
        out
    }

    /// The most tokens one step of the grid holds.
    pub fn max_tokens(&self) -> usize {
        self.batch.iter().max().copied().unwrap_or(0)
            + self.prefill.iter().max().copied().unwrap_or(0)
    }
}

/// Linear-interpolated quantile of sorted `v` (`q` in 0..=1).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let x = q * (v.len() - 1) as f64;
    let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
}

/// Times every shape of `grid` that fits `bounds` on `backend`; `log` gets one line per shape (measured or
/// skipped).
pub fn measure(
    backend: &mut Backend,
    bounds: &Bounds,
    grid: &Grid,
    log: &mut dyn FnMut(&str),
) -> crate::Result<Vec<ProfilePoint>> {
    let shapes = grid.shapes();
    let vocab = backend.cfg().vocab.max(2) as u32;
    let bs = bounds.block_size.max(1);
    let mut points = Vec::new();
    let n = shapes.len();
    let width = n.to_string().len();
    for (i, s) in shapes.iter().enumerate() {
        let head = format!("[{:>width$}/{n}] {}", i + 1, s.label());
        if let Some(why) = s.unfit(bounds) {
            log(&format!("{head}: skipped ({why})"));
            continue;
        }
        // Each sequence its own blocks, as in serving: decoding ones first (the scheduler's order), then the
        // prefill.
        let mut next: BlockId = 0;
        let mut take = |tokens: usize| -> Vec<BlockId> {
            let k = tokens.div_ceil(bs) as BlockId;
            let t = (next..next + k).collect();
            next += k;
            t
        };
        let tables: Vec<Vec<BlockId>> = (0..s.decode).map(|_| take(s.context + 1)).collect();
        let ptable = take(s.prefill);
        let dtok: Vec<u32> = (0..s.decode as u32).map(|j| 1 + j % (vocab - 1)).collect();
        let ptok: Vec<u32> = (0..s.prefill as u64)
            .map(|j| (1 + j.wrapping_mul(2654435761) % u64::from(vocab - 1)) as u32)
            .collect();
        let mut inputs: Vec<SeqInput<'_>> = tables
            .iter()
            .enumerate()
            .map(|(j, t)| SeqInput {
                tokens: &dtok[j..j + 1],
                start_pos: s.context,
                block_table: t,
                want_logits: true,
            })
            .collect();
        if s.prefill > 0 {
            inputs.push(SeqInput {
                tokens: &ptok,
                start_pos: 0,
                block_table: &ptable,
                want_logits: true,
            });
        }
        let picks = vec![Pick::GREEDY; inputs.len()];
        for _ in 0..grid.warmup {
            backend.forward_pick(&inputs, &picks)?;
        }
        let started = Instant::now();
        let mut ms = Vec::with_capacity(grid.repeats);
        for _ in 0..grid.repeats.max(1) {
            let t = Instant::now();
            backend.forward_pick(&inputs, &picks)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            if grid.max_secs_per_shape > 0.0
                && ms.len() >= 3
                && started.elapsed().as_secs_f64() > grid.max_secs_per_shape
            {
                break;
            }
        }
        ms.sort_by(f64::total_cmp);
        let p = ProfilePoint {
            seqs: s.seqs() as u64,
            prefill_tokens: s.prefill as u64,
            context_tokens: (s.decode * s.context) as u64,
            decode_seqs: s.decode as u64,
            ms_p50: quantile(&ms, 0.5),
            ms_p90: quantile(&ms, 0.9),
        };
        log(&format!(
            "{head}: p50 {:.2} ms, p90 {:.2} ms ({} steps)",
            p.ms_p50,
            p.ms_p90,
            ms.len()
        ));
        points.push(p);
    }
    Ok(points)
}

/// What a profile says of the engine besides its points.
#[derive(Debug, Clone, Default)]
pub struct About {
    /// The GPU's name, or `cpu (N threads)`.
    pub device: String,
    /// The model's name and shape.
    pub model: String,
    pub kv_capacity_tokens: Option<u64>,
    pub kv_bytes_per_token: Option<u64>,
}

/// The profile of `points`: their fit and its error, and where they come from.
pub fn profile(points: Vec<ProfilePoint>, about: About) -> StepProfile {
    let fit = fit_points(&points).unwrap_or(StepModel {
        fixed_ms: 0.0,
        per_seq_ms: 0.0,
        per_prefill_token_ms: 0.0,
        per_kctx_ms: 0.0,
    });
    let (med, max) = fit_rel_errors(&fit, &points);
    let command = std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    StepProfile {
        engine: format!("baton-native {}", env!("CARGO_PKG_VERSION")),
        device: about.device,
        model: about.model,
        created: utc_now(),
        command,
        measured: true,
        kv_capacity_tokens: about.kv_capacity_tokens,
        kv_bytes_per_token: about.kv_bytes_per_token,
        points,
        fit,
        fit_median_rel_error: med,
        fit_max_rel_error: max,
    }
}

/// Now as RFC 3339 UTC (seconds).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The model's name (its file or folder name) and shape.
fn model_label(args: &Args, cfg: &ModelConfig) -> String {
    let name = args.model.file_name().map_or_else(
        || args.model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let dummy = if args.load_format == crate::loader::LoadFormat::Dummy {
        ", dummy weights"
    } else {
        ""
    };
    format!(
        "{name} ({} layers, hidden {}, ffn {}, {} heads / {} KV heads of {}, vocab {}{dummy})",
        cfg.n_layers, cfg.hidden, cfg.ffn, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.vocab
    )
}

/// The device as the profile names it (the GPU's name, or `cpu (N threads)`), and KV bytes per token.
fn device_of(backend: &Backend) -> (String, u64) {
    match backend {
        Backend::Cpu { model, .. } => (
            format!("cpu ({} threads)", rayon::current_num_threads()),
            crate::kv::store::KvStore::bytes_per_token(&model.cfg) as u64,
        ),
        #[cfg(feature = "cuda")]
        Backend::Cuda(m) => (
            m.dev.name.clone(),
            crate::cuda::GpuKvPool::bytes_per_block(&m.cfg, 1) as u64,
        ),
    }
}

/// Runs `baton-engine profile`.
pub fn run(mut args: ProfileArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .try_init()
        .ok();
    if let Some(n) = args.engine.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    let grid = Grid {
        batch: args.batch.clone(),
        context: args.context.clone(),
        prefill: args.prefill.clone(),
        warmup: args.warmup,
        repeats: args.repeats.max(1),
        max_secs_per_shape: args.max_secs_per_shape,
    };
    // Every prefill size of the grid fits one step (on a GPU the step buffers are sized by this budget).
    let need = grid.max_tokens();
    if args.engine.max_num_batched_tokens < need {
        tracing::info!(
            "--max-num-batched-tokens raised from {} to {need}, the grid's largest step",
            args.engine.max_num_batched_tokens
        );
        args.engine.max_num_batched_tokens = need;
    }
    let t0 = Instant::now();
    let (mut cfg, mcfg, _, make) = crate::cli::load_backend(&args.engine)?;
    let mut backend = make(&mut cfg)?;
    let bounds = Bounds {
        block_size: cfg.block_size,
        num_blocks: cfg.num_blocks,
        max_seqs: cfg.max_num_seqs.min(backend.max_batch()),
        max_tokens: cfg.max_batched_tokens,
        context_length: mcfg.context_length,
    };
    let (device_name, kv_bytes) = device_of(&backend);
    let model = model_label(&args.engine, &mcfg);
    tracing::info!(
        "loaded {model} on {device_name} in {:.1?}; KV pool {} blocks of {} tokens; {} shapes, \
         warmup {}, repeats {}",
        t0.elapsed(),
        bounds.num_blocks,
        bounds.block_size,
        grid.shapes().len(),
        grid.warmup,
        grid.repeats
    );
    let t1 = Instant::now();
    let points = measure(&mut backend, &bounds, &grid, &mut |line| {
        eprintln!("{line}")
    })?;
    anyhow::ensure!(!points.is_empty(), "no shape of the grid fits this engine");
    let prof = profile(
        points,
        About {
            device: device_name,
            model,
            kv_capacity_tokens: Some((bounds.num_blocks * bounds.block_size) as u64),
            kv_bytes_per_token: Some(kv_bytes),
        },
    );
    let f = &prof.fit;
    eprintln!(
        "{} shapes in {:.1?}; fit: {:.3} ms + {:.4} ms/seq + {:.5} ms/prefill token + {:.4} ms/1k context tokens \
         (relative error: median {:.1}%, max {:.1}%)",
        prof.points.len(),
        t1.elapsed(),
        f.fixed_ms,
        f.per_seq_ms,
        f.per_prefill_token_ms,
        f.per_kctx_ms,
        prof.fit_median_rel_error * 100.0,
        prof.fit_max_rel_error * 100.0
    );
    let json = serde_json::to_string_pretty(&prof)? + "\n";
    if args.out.as_os_str() == "-" {
        print!("{json}");
    } else {
        std::fs::write(&args.out, json)
            .map_err(|e| anyhow::anyhow!("--out {}: {e}", args.out.display()))?;
        eprintln!("wrote {}", args.out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_of_the_tiny_model_has_positive_points_and_a_non_negative_fit() {
        let model = crate::engine::tests::tiny_model();
        let ctx = model.cfg.context_length;
        let mut backend = Backend::cpu(model, 16, 64);
        let bounds = Bounds {
            block_size: 16,
            num_blocks: 64,
            max_seqs: 8,
            max_tokens: 512,
            context_length: ctx,
        };
        let grid = Grid {
            batch: vec![1, 4, 8],
            context: vec![16, 128, 1000],
            prefill: vec![0, 8, 32],
            warmup: 1,
            repeats: 3,
            max_secs_per_shape: 0.0,
        };
        let mut lines = Vec::new();
        let points = measure(&mut backend, &bounds, &grid, &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap();
        // 2 prefill-only shapes + 3 × 3 × 3 combinations, one line each.
        assert_eq!(lines.len(), 2 + 27);
        // Measured: the prefill-only ones, B = 1 and 4 at C = 16 and 128 with every P, and B = 8 at C = 16 without
        // a prefill. B = 8 with a prefill has 9 sequences, B = 8 at C = 128 needs 72 blocks, C = 1000 is past the
        // context.
        assert_eq!(points.len(), 2 + 2 * 2 * 3 + 1, "{lines:#?}");
        for why in [
            "skipped (9 sequences > --max-num-seqs 8)",
            "skipped (72 KV blocks > the pool's 64)",
            "skipped (past the context length 256)",
        ] {
            assert!(lines.iter().any(|l| l.contains(why)), "{why}: {lines:#?}");
        }
        for p in &points {
            assert!(p.ms_p50 > 0.0 && p.ms_p90 >= p.ms_p50, "{p:?}");
            assert_eq!(p.seqs, p.decode_seqs + u64::from(p.prefill_tokens > 0));
        }
        assert!(points
            .iter()
            .any(|p| p.decode_seqs == 0 && p.prefill_tokens == 32));
        assert!(points
            .iter()
            .any(|p| p.decode_seqs == 4 && p.context_tokens == 512 && p.prefill_tokens == 8));

        let prof = profile(
            points,
            About {
                device: "cpu (1 threads)".into(),
                model: "tiny".into(),
                ..About::default()
            },
        );
        assert!(prof.fit.is_valid(), "{:?}", prof.fit);
        assert!(
            prof.fit_median_rel_error.is_finite()
                && prof.fit_max_rel_error >= prof.fit_median_rel_error
        );
        let v: serde_json::Value = serde_json::to_value(&prof).unwrap();
        for key in [
            "engine",
            "device",
            "model",
            "created",
            "command",
            "measured",
            "points",
            "fit",
            "fit_median_rel_error",
            "fit_max_rel_error",
        ] {
            assert!(v.get(key).is_some(), "{key} missing: {v}");
        }
        assert!(v["engine"].as_str().unwrap().starts_with("baton-native "));
        let created = v["created"].as_str().unwrap();
        assert!(
            created.len() == 20 && created.ends_with('Z') && created.starts_with("20"),
            "{created}"
        );
        for key in [
            "seqs",
            "prefill_tokens",
            "context_tokens",
            "decode_seqs",
            "ms_p50",
            "ms_p90",
        ] {
            assert!(v["points"][0].get(key).is_some(), "point {key} missing");
        }
        for key in [
            "fixed_ms",
            "per_seq_ms",
            "per_prefill_token_ms",
            "per_kctx_ms",
        ] {
            assert!(v["fit"][key].as_f64().unwrap() >= 0.0, "fit {key}");
        }
        // What the engine's --step-model and the twin read back.
        let back: StepProfile = serde_json::from_value(v).unwrap();
        assert_eq!(back.points.len(), prof.points.len());
    }

    #[test]
    fn grid_lists_prefill_only_steps_once_and_sizes_the_token_budget() {
        let g = Grid {
            batch: vec![2, 1, 2],
            context: vec![8],
            prefill: vec![0, 4],
            warmup: 0,
            repeats: 1,
            max_secs_per_shape: 0.0,
        };
        let s = g.shapes();
        assert_eq!(s.len(), 1 + 2 * 2);
        assert_eq!(
            s[0],
            Shape {
                decode: 0,
                context: 0,
                prefill: 4
            }
        );
        assert_eq!(g.max_tokens(), 6);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        assert!(
            (quantile(
                &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0],
                0.9
            ) - 10.0)
                .abs()
                < 1e-12
        );
    }
}
