//! `baton-cuda-bench`: correctness and performance of the CUDA backend (run on the GPU machine by
//! `native-decode/gpu/run_checks.sh`).
//!
//! - `info`: device, libraries, kernel compile time.
//! - `check --model DIR --case CASE.json --out PREFIX`: runs a case written by `gpu/make_case.py` (chunked prefill,
//!   a prefix-cache hit in a mixed step, batched decode through CUDA graphs) and writes the logits it produced at
//!   each recorded position (`PREFIX.f32` + `PREFIX.json`) for `gpu/compare.py`.
//! - `perf --out FILE.json`: copy bandwidth and cuBLAS ceilings, decode attention alone, batch-1 and batch-64
//!   decode and prefill of a Llama-3-8B-shaped model with random weights, all in one process.
//! - `handoff --out FILE.json`: GPU 0 → GPU 1 KV hand-off of Llama-3-8B-shaped prompts (the `kv_import` kernel
//!   reading over the peer link) against the link's own `cuMemcpyPeer` bandwidth, in one process.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use baton_native::cuda::{
    bench, CudaError, CudaModel, CudaModelOptions, GpuDevice, GpuKvPool, GpuWeights,
};
use baton_native::kv::block_manager::BlockManager;
use baton_native::model::{ModelConfig, RopeStyle, SeqInput};

#[derive(Debug, Parser)]
#[command(
    name = "baton-cuda-bench",
    about = "Correctness and speed of the CUDA backend"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    Info,
    Check {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        case: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    Perf {
        #[arg(long)]
        out: PathBuf,
        /// Fewer and smaller measurements.
        #[arg(long)]
        quick: bool,
    },
    Handoff {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sampling on the GPU (`sample_token`) against the CPU sampler's exact distribution, and its speed.
    SampleCheck {
        #[arg(long)]
        out: PathBuf,
    },
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let r = match args.cmd {
        Cmd::Info => info(),
        Cmd::Check { model, case, out } => check(&model, &case, &out),
        Cmd::Perf { out, quick } => perf(&out, quick),
        Cmd::Handoff { out } => handoff(&out),
        Cmd::SampleCheck { out } => sample_check(&out),
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn open() -> Res<Arc<GpuDevice>> {
    open_gpu(0)
}

fn open_gpu(ordinal: usize) -> Res<Arc<GpuDevice>> {
    match GpuDevice::open(ordinal) {
        Ok(d) => Ok(d),
        Err(e @ (CudaError::LibraryMissing { .. } | CudaError::NoDevice(_))) => {
            Err(format!("no usable GPU ({e}); the CPU backend would be used").into())
        }
        Err(e) => Err(e.into()),
    }
}

fn device_json(dev: &GpuDevice) -> Value {
    json!({
        "name": dev.name,
        "compute_capability": format!("{}.{}", dev.compute_capability.0, dev.compute_capability.1),
        "sm_count": dev.sm_count,
        "total_mem_gib": dev.total_mem as f64 / (1u64 << 30) as f64,
        "nvrtc_compile_ms": dev.compile_ms,
        "libraries": dev.libraries.iter().map(|l| json!({
            "name": l.name, "present": l.present, "path": l.path,
        })).collect::<Vec<_>>(),
    })
}

fn info() -> Res<()> {
    let dev = open()?;
    println!("{}", serde_json::to_string_pretty(&device_json(&dev))?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------- check

fn check(model: &std::path::Path, case: &std::path::Path, out: &std::path::Path) -> Res<()> {
    let dev = open()?;
    let case: Value = serde_json::from_str(&std::fs::read_to_string(case)?)?;
    let seqs: Vec<Vec<u32>> = serde_json::from_value(case["seqs"].clone())?;
    let prefill: Vec<usize> = serde_json::from_value(case["prefill"].clone())?;
    let chunk = case["chunk"].as_u64().unwrap_or(512) as usize;
    let bs = case["block_size"].as_u64().unwrap_or(16) as usize;
    let prefix_reuse = case["prefix_reuse"].as_bool().unwrap_or(true);

    let t = Instant::now();
    let (cfg, weights) = GpuWeights::from_hf_dir(&dev, model)?;
    eprintln!("loaded {cfg:?} in {:.2}s", t.elapsed().as_secs_f64());
    let max_len = seqs.iter().map(Vec::len).max().unwrap_or(1);
    let blocks: usize =
        seqs.iter().map(|s| s.len().div_ceil(bs)).sum::<usize>() + max_len.div_ceil(bs) + 4;
    let opts = CudaModelOptions {
        block_size: bs,
        num_blocks: blocks,
        max_tokens: chunk.max(prefill[0]) + seqs.len() + 1,
        max_batch: seqs.len() + 1,
        max_context: max_len,
        attn_workspace_bytes: 64 << 20,
        cuda_graphs: true,
    };
    let mut m = CudaModel::new(dev.clone(), cfg.clone(), weights, opts)?;
    let mut bm = BlockManager::new(blocks, bs, false);
    let tables: Vec<Vec<u32>> = seqs
        .iter()
        .map(|s| bm.allocate(s.len().div_ceil(bs)).ok_or("pool too small"))
        .collect::<Result<_, _>>()?;

    let mut records: Vec<Value> = Vec::new();
    let mut data: Vec<f32> = Vec::new();
    let mut record = |seq: usize, pos: usize, kind: &str, logits: &[f32]| {
        records.push(json!({"seq": seq, "pos": pos, "kind": kind}));
        data.extend_from_slice(logits);
    };

    // Chunked prefill, one sequence at a time.
    for (s, toks) in seqs.iter().enumerate() {
        let mut c = 0;
        while c < prefill[s] {
            let e = (c + chunk).min(prefill[s]);
            let out = m.forward(&[SeqInput {
                tokens: &toks[c..e],
                start_pos: c,
                block_table: &tables[s],
                want_logits: true,
            }])?;
            record(s, e - 1, "prefill", &out[0]);
            c = e;
        }
    }
    // Batched teacher-forced decode; the first step also carries a prefix-cache hit of sequence 0 (mixed step).
    let shared = (prefill[0] / 2) / bs;
    let reuse_table: Vec<u32> = if prefix_reuse {
        let mut t = tables[0][..shared].to_vec();
        t.extend(
            bm.allocate(prefill[0].div_ceil(bs) - shared)
                .ok_or("pool too small")?,
        );
        t
    } else {
        Vec::new()
    };
    let steps = seqs
        .iter()
        .zip(&prefill)
        .map(|(s, p)| s.len() - p)
        .max()
        .unwrap_or(0);
    let t = Instant::now();
    for k in 0..steps {
        let mut inputs = Vec::new();
        let mut who = Vec::new();
        for (s, toks) in seqs.iter().enumerate() {
            let pos = prefill[s] + k;
            if pos < toks.len() {
                inputs.push(SeqInput {
                    tokens: &toks[pos..pos + 1],
                    start_pos: pos,
                    block_table: &tables[s],
                    want_logits: true,
                });
                who.push((s, pos, "decode"));
            }
        }
        if k == 0 && prefix_reuse {
            inputs.push(SeqInput {
                tokens: &seqs[0][shared * bs..prefill[0]],
                start_pos: shared * bs,
                block_table: &reuse_table,
                want_logits: true,
            });
            who.push((0, prefill[0] - 1, "prefix_hit"));
        }
        let out = m.forward(&inputs)?;
        for ((s, pos, kind), l) in who.into_iter().zip(&out) {
            record(s, pos, kind, l);
        }
    }
    let decode_s = t.elapsed().as_secs_f64();
    // On-GPU greedy + logprob against the host's view of the last decode logits of sequence 0.
    let last = seqs[0].len() - 1;
    let g = m.forward_greedy(&[SeqInput {
        tokens: &seqs[0][last..],
        start_pos: last,
        block_table: &tables[0],
        want_logits: true,
    }])?[0]
        .ok_or("no greedy output")?;

    let mut f = std::fs::File::create(out.with_extension("f32"))?;
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    f.write_all(&bytes)?;
    let meta = json!({
        "device": device_json(&dev),
        "vocab": cfg.vocab,
        "records": records,
        "decode_steps": steps,
        "decode_seconds": decode_s,
        "greedy_last": {"seq": 0, "pos": last, "token": g.token, "logprob": g.logprob},
        "kv_block_roundtrip": kv_roundtrip(&m, &tables[0])?,
    });
    std::fs::write(out.with_extension("json"), serde_json::to_string(&meta)?)?;
    eprintln!(
        "wrote {} records",
        meta["records"].as_array().map_or(0, Vec::len)
    );
    Ok(())
}

/// Exports a block in the CPU format, imports it into a spare block and compares the raw contents.
fn kv_roundtrip(m: &CudaModel, table: &[u32]) -> Res<bool> {
    let spare = (m.kv.num_blocks - 1) as u32;
    let a = m.kv.export_block(&m.dev, table[0])?;
    m.kv.import_block(&m.dev, spare, &a)?;
    Ok(m.kv.export_block_raw(&m.dev, table[0])? == m.kv.export_block_raw(&m.dev, spare)?)
}

// ---------------------------------------------------------------------------------------------------- perf

fn llama3_8b() -> ModelConfig {
    ModelConfig {
        n_layers: 32,
        hidden: 4096,
        ffn: 14336,
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 128,
        vocab: 128_256,
        rope_theta: 500_000.0,
        rms_eps: 1e-5,
        context_length: 8192 + 512,
        tied_embeddings: false,
        rope_style: RopeStyle::HalfSplit,
    }
}

fn matmul_params(c: &ModelConfig) -> usize {
    c.n_layers
        * (c.hidden * (c.q_dim() + 2 * c.kv_dim()) + c.q_dim() * c.hidden + 3 * c.ffn * c.hidden)
}

fn perf(out: &std::path::Path, quick: bool) -> Res<()> {
    let dev = open()?;
    let mut res = serde_json::Map::new();
    res.insert("device".into(), device_json(&dev));
    let emit = |res: &serde_json::Map<String, Value>| -> Res<()> {
        std::fs::write(out, serde_json::to_string_pretty(res)?)?;
        Ok(())
    };

    let copy_gbs = bench::copy_bandwidth(&dev, 1 << 30)?;
    eprintln!("copy bandwidth {copy_gbs:.0} GB/s");
    res.insert("copy_gbs".into(), json!(copy_gbs));
    let cfg = llama3_8b();
    let tflops = bench::gemm_tflops(&dev, 8192, cfg.ffn, cfg.hidden)?;
    eprintln!("cuBLAS bf16 GEMM 8192x14336x4096: {tflops:.0} TFLOP/s");
    res.insert("gemm_tflops_8192x14336x4096".into(), json!(tflops));
    emit(&res)?;

    // Decode attention alone, Llama-3-8B heads.
    let mut attn = Vec::new();
    let batches: &[usize] = if quick { &[1, 32] } else { &[1, 8, 32, 128] };
    let ctxs: &[usize] = if quick { &[4096] } else { &[512, 4096, 32768] };
    for &b in batches {
        for &c in ctxs {
            let t = bench::decode_attention(&dev, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, b, c)?;
            let gbs = t.kv_bytes as f64 / (t.ms * 1e-3) / 1e9;
            eprintln!(
                "attention b={b:4} ctx={c:6}: {:8.1} us, {gbs:6.0} GB/s ({:.0}% of copy), splits {}",
                t.ms * 1e3,
                100.0 * gbs / copy_gbs,
                t.splits
            );
            attn.push(
                json!({"batch": b, "ctx": c, "us": t.ms * 1e3, "kv_bytes": t.kv_bytes,
                "gbs": gbs, "pct_copy": 100.0 * gbs / copy_gbs, "splits": t.splits}),
            );
        }
    }
    res.insert("decode_attention".into(), Value::Array(attn));
    emit(&res)?;

    // The model, random weights generated on the GPU.
    let ctx0: usize = 1024;
    let b64 = if quick { 16 } else { 64 };
    let steps = if quick { 16 } else { 64 };
    let bs = 16;
    let per_seq = (ctx0 + steps + 16).div_ceil(bs);
    let prefill_len: usize = if quick { 2048 } else { 8192 };
    let blocks = b64 * per_seq + prefill_len.div_ceil(bs) + 8;
    let t = Instant::now();
    let weights = GpuWeights::dummy(&dev, &cfg, 1234)?;
    eprintln!(
        "dummy weights: {:.2} GB in {:.2}s; KV pool {:.2} GB",
        weights.bytes() as f64 / 1e9,
        t.elapsed().as_secs_f64(),
        (blocks * GpuKvPool::bytes_per_block(&cfg, bs)) as f64 / 1e9
    );
    let step_weight_bytes = weights.bytes_per_step();
    let mut m = CudaModel::new(
        dev.clone(),
        cfg.clone(),
        weights,
        CudaModelOptions {
            block_size: bs,
            num_blocks: blocks,
            max_tokens: prefill_len,
            max_batch: b64,
            max_context: cfg.context_length,
            attn_workspace_bytes: 1 << 30,
            cuda_graphs: true,
        },
    )?;
    m.kv.fill_random(&dev, 99)?;
    let tables: Vec<Vec<u32>> = (0..b64)
        .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
        .collect();
    let kv_per_token = 2 * cfg.n_layers * cfg.kv_dim() * 2;

    let mut decode = Vec::new();
    for (batch, graphs) in [(1, true), (1, false), (b64, true)] {
        m.opts.cuda_graphs = graphs;
        let tok: Vec<u32> = (0..batch as u32).map(|i| 1000 + i).collect();
        let run = |m: &mut CudaModel, k: usize| -> Res<()> {
            let inputs: Vec<SeqInput> = (0..batch)
                .map(|s| SeqInput {
                    tokens: &tok[s..s + 1],
                    start_pos: ctx0 + k,
                    block_table: &tables[s],
                    want_logits: true,
                })
                .collect();
            m.forward_greedy(&inputs)?;
            Ok(())
        };
        for k in 0..4 {
            run(&mut m, k)?;
        }
        let t = Instant::now();
        for k in 0..steps {
            run(&mut m, k)?;
        }
        let secs = t.elapsed().as_secs_f64();
        let step_ms = secs * 1e3 / steps as f64;
        let avg_ctx = ctx0 + steps / 2;
        let bytes = step_weight_bytes + batch * avg_ctx * kv_per_token;
        let bound_ms = bytes as f64 / (copy_gbs * 1e9) * 1e3;
        let tps = (batch * steps) as f64 / secs;
        eprintln!(
            "decode batch {batch:3} graphs={graphs}: {step_ms:.3} ms/step, {tps:.1} tok/s, bound {bound_ms:.3} ms \
             ({:.0}% of bound)",
            100.0 * bound_ms / step_ms
        );
        decode.push(json!({"batch": batch, "cuda_graphs": graphs, "ctx": avg_ctx, "step_ms": step_ms,
            "tok_s": tps, "bytes_per_step": bytes, "bound_ms": bound_ms,
            "bound_tok_s": batch as f64 * 1e3 / bound_ms, "pct_of_bound": 100.0 * bound_ms / step_ms}));
        emit(&{
            let mut r = res.clone();
            r.insert("decode".into(), Value::Array(decode.clone()));
            r
        })?;
    }
    res.insert("decode".into(), Value::Array(decode));
    m.opts.cuda_graphs = true;

    // Prefill of one long prompt in one step.
    let mut prefill = Vec::new();
    let lens: &[usize] = if quick { &[2048] } else { &[2048, 8192] };
    let ptable: Vec<u32> = ((b64 * per_seq) as u32..blocks as u32).collect();
    for &n in lens {
        let toks: Vec<u32> = (0..n as u32)
            .map(|i| (i * 7919) % cfg.vocab as u32)
            .collect();
        let mut times = Vec::new();
        for _ in 0..4 {
            let t = Instant::now();
            m.forward_greedy(&[SeqInput {
                tokens: &toks,
                start_pos: 0,
                block_table: &ptable,
                want_logits: true,
            }])?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.remove(0);
        times.sort_by(f64::total_cmp);
        let secs = times[times.len() / 2];
        let bound = 2.0 * n as f64 * matmul_params(&cfg) as f64 / (tflops * 1e12);
        eprintln!(
            "prefill {n}: {:.1} ms, {:.0} tok/s; GEMM-only bound {:.1} ms ({:.0}%)",
            secs * 1e3,
            n as f64 / secs,
            bound * 1e3,
            100.0 * bound / secs
        );
        prefill.push(
            json!({"tokens": n, "ms": secs * 1e3, "tok_s": n as f64 / secs,
            "gemm_bound_ms": bound * 1e3, "pct_of_gemm_bound": 100.0 * bound / secs}),
        );
    }
    res.insert("prefill".into(), Value::Array(prefill));
    m.synchronize()?;
    emit(&res)?;
    println!("{}", serde_json::to_string_pretty(&res)?);
    Ok(())
}

fn handoff(out: &std::path::Path) -> Res<()> {
    let src = open_gpu(0)?;
    let dst = open_gpu(1)?;
    let cfg = llama3_8b();
    let mut rows = Vec::new();
    for tokens in [512, 2048, 4096, 8192] {
        let (kernel, link, bytes) = bench::kv_handoff(&src, &dst, &cfg, tokens)?;
        eprintln!(
            "hand-off {tokens} tokens ({:.0} MiB): kernel {kernel:.1} GB/s, cuMemcpyPeer {link:.1} GB/s ({:.0}%)",
            bytes as f64 / (1u64 << 20) as f64,
            100.0 * kernel / link
        );
        rows.push(
            json!({"tokens": tokens, "bytes": bytes, "kernel_gbps": kernel, "link_gbps": link}),
        );
    }
    let res = json!({"src": device_json(&src), "dst": device_json(&dst), "model": "llama-3-8b shape, bf16 KV",
                     "handoff": rows});
    std::fs::write(out, serde_json::to_string_pretty(&res)?)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------- sampling

/// Draws many tokens on the GPU from fixed logits and compares them with the CPU sampler's kept distribution:
/// every token must be in the kept set, the empirical distribution within sampling noise of the exact one
/// (total-variation distance), the log-probabilities equal the host's log-softmax. Then the cost at a 128k
/// vocabulary and batch 64 against copying the logits out.
fn sample_check(out: &std::path::Path) -> Res<()> {
    use baton_native::sampling::{kept_distribution, rng::SplitMix64};
    let dev = open()?;
    let mut rng = SplitMix64::new(7);
    let normal = |rng: &mut SplitMix64| {
        let (a, b) = (rng.next_f64().max(1e-12), rng.next_f64());
        ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
    };
    let vocab = 2000;
    let logits: Vec<f32> = (0..vocab).map(|_| 2.5 * normal(&mut rng)).collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_z = logits
        .iter()
        .map(|&l| f64::from(l - max).exp())
        .sum::<f64>()
        .ln();
    let n = 32_768;
    let draws: Vec<f32> = (0..n).map(|_| rng.next_f32()).collect();
    let mut cases = Vec::new();
    let mut pass = true;
    for (t, k, p) in [
        (0.0, 0, 1.0),
        (0.7, 0, 0.9),
        (1.0, 50, 1.0),
        (1.3, 20, 0.8),
        (0.5, 0, 1.0),
    ] {
        let (tokens, lps, _) = bench::sample_draws(&dev, &logits, (t, k, p), &draws, 4096)?;
        let exact: Vec<(u32, f64)> = if t == 0.0 {
            let best = (0..vocab).max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)));
            vec![(best.unwrap_or(0) as u32, 1.0)]
        } else {
            kept_distribution(&logits, t, k, p)
        };
        let kept: std::collections::HashMap<u32, f64> = exact.iter().copied().collect();
        let mut counts: std::collections::HashMap<u32, usize> = Default::default();
        for &tok in &tokens {
            *counts.entry(tok).or_default() += 1;
        }
        let outside = counts.keys().filter(|t| !kept.contains_key(t)).count();
        let mut tv = 0.0;
        for (&tok, &pr) in &kept {
            tv += (counts.get(&tok).copied().unwrap_or(0) as f64 / n as f64 - pr).abs();
        }
        tv += counts
            .iter()
            .filter(|(t, _)| !kept.contains_key(t))
            .map(|(_, &c)| c as f64 / n as f64)
            .sum::<f64>();
        tv *= 0.5;
        let lp_err = tokens
            .iter()
            .zip(&lps)
            .map(|(&tok, &lp)| {
                (f64::from(lp) - (f64::from(logits[tok as usize] - max) - log_z)).abs()
            })
            .fold(0.0, f64::max);
        // Sampling noise of a TV estimate over K outcomes is about sqrt(K / n) / 2; allow 3x that.
        let bound = 3.0 * 0.5 * (kept.len() as f64 / n as f64).sqrt() + 1e-9;
        let ok = outside == 0 && tv <= bound.max(1e-6) && lp_err < 1e-3;
        pass &= ok;
        eprintln!(
            "T={t} top_k={k} top_p={p}: kept {} tokens, {outside} draws outside, TV {tv:.4} (bound {bound:.4}), \
             max |logprob err| {lp_err:.2e} -> {}",
            kept.len(),
            if ok { "ok" } else { "FAIL" }
        );
        cases.push(
            json!({"temperature": t, "top_k": k, "top_p": p, "kept": kept.len(), "draws": n,
            "outside": outside, "tv": tv, "tv_bound": bound, "max_logprob_err": lp_err, "ok": ok}),
        );
    }
    // Speed at the Llama-3 vocabulary, 64 rows: the kernel vs copying the logits to the host.
    let big: Vec<f32> = (0..128_256).map(|_| 2.5 * normal(&mut rng)).collect();
    let u64s: Vec<f32> = (0..64).map(|_| rng.next_f32()).collect();
    let (_, _, kernel_ms) = bench::sample_draws(&dev, &big, (0.7, 0, 0.9), &u64s, 64)?;
    let (_, _, greedy_ms) = bench::sample_draws(&dev, &big, (0.0, 0, 1.0), &u64s, 64)?;
    let t0 = Instant::now();
    let mut host = Vec::new();
    for _ in 0..64 {
        host.push(kept_distribution(&big, 0.7, 0, 0.9).len());
    }
    let host_ms = t0.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "128k vocabulary, 64 rows: GPU sampling {kernel_ms:.3} ms (greedy {greedy_ms:.3} ms); the host sampler alone \
         takes {host_ms:.1} ms for the same rows (before copying 32 MiB of logits out)"
    );
    let res = json!({"device": device_json(&dev), "cases": cases, "pass": pass,
        "vocab_128k_rows_64": {"gpu_sample_ms": kernel_ms, "gpu_greedy_ms": greedy_ms, "host_sampler_ms": host_ms,
            "kept_tokens": host.first()}});
    std::fs::write(out, serde_json::to_string_pretty(&res)?)?;
    if !pass {
        return Err("GPU sampling does not match the CPU sampler's distribution".into());
    }
    Ok(())
}
