//! The `baton-engine` command line: load a model, start the engine and its
//! HTTP server (also reachable as `baton engine` from the launcher).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_policies::step::{StepLimits, StepModel};
use baton_protocol::FleetKey;
use clap::Parser;

use crate::chat_template::{ChatTemplate, CHATML_FALLBACK};
use crate::engine::backend::Backend;
use crate::engine::{EngineConfig, EngineHandle};
use crate::loader::{load, LoadFormat};
use crate::model::ModelConfig;
use crate::server::{serve_until, Limits, Role, ServerState};
use crate::tokenizer::Tokenizer;
use crate::transfer::tcp::{DeviceImport, TcpPuller};
use crate::transfer::{tcp, KvEndpoint, PullFailurePolicy};

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Cpu,
    /// The GPU `--gpu` names; fails when no usable GPU is found (or the build lacks the `cuda` feature).
    Cuda,
    /// That GPU when one is usable, else the CPU.
    Auto,
}

#[derive(Debug, Parser)]
#[command(
    name = "baton-engine",
    about = "Inference engine (CPU, or an NVIDIA GPU when built with the cuda feature) with an OpenAI-compatible API",
    after_help = "Step-time profile of this engine (same flags, JSON out): baton-engine profile --help"
)]
pub struct Args {
    /// GGUF file, or HF folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    pub load_format: LoadFormat,
    /// Where the model runs. `auto` uses GPU 0 when the build has the `cuda` feature and a usable GPU is found,
    /// the CPU otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
    /// Ordinal of the GPU to run on. Prefer this over `CUDA_VISIBLE_DEVICES` for engines on one host: the
    /// device-to-device KV hand-off maps the other engine's pool, so its GPU must stay visible.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    #[arg(long, value_enum, default_value = "both")]
    pub role: Role,
    /// Name reported by /v1/models and required in `model` (default: the file name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Memory for the KV cache pool.
    #[arg(long, default_value_t = 512)]
    pub kv_memory_mb: usize,
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Token budget of one forward step (prefill chunks + decode tokens).
    #[arg(long, default_value_t = 512)]
    pub max_num_batched_tokens: usize,
    /// Run each prompt's prefill in one step instead of chunks.
    #[arg(long)]
    pub no_chunked_prefill: bool,
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Cap the context length below the model's.
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Host advertised in kv_transfer_params (default: --host, or 127.0.0.1 for a wildcard host).
    #[arg(long)]
    pub kv_host: Option<String>,
    /// Port of the KV pull listener (prefill role; 0 = any free port).
    #[arg(long, default_value_t = 0)]
    pub kv_port: u16,
    #[arg(long)]
    pub engine_id: Option<String>,
    /// Seconds prefill KV waits to be pulled before it is freed.
    #[arg(long, default_value_t = 30)]
    pub kv_lease_secs: u64,
    /// Seconds after which leased KV is reclaimed as soon as another request needs its blocks.
    #[arg(long, default_value_t = 3.0)]
    pub kv_lease_grace_secs: f64,
    /// Share of the KV pool (0-1) that unpulled leases may hold; past it a prefill gets no lease and its decode
    /// computes the prompt itself.
    #[arg(long, default_value_t = 0.5)]
    pub kv_lease_max_share: f64,
    /// Share of the KV pool (0-1) that one tenant's (`x-baton-tenant`) unpulled leases may hold.
    #[arg(long, default_value_t = 0.25)]
    pub kv_lease_tenant_share: f64,
    /// File holding the fleet key shared with the gateway and the other engines (>= 16 bytes; trailing whitespace
    /// is trimmed). The key itself may instead be given in the environment variable BATON_FLEET_KEY. Only calls
    /// authenticated with it may use `kv_transfer_params`, and it guards the KV pull listener; roles `prefill`
    /// and `decode` need one.
    #[arg(long)]
    pub fleet_key_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "recompute")]
    pub kv_pull_failure: PullFailurePolicy,
    #[arg(long, default_value_t = 30)]
    pub kv_pull_timeout_secs: u64,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Dequantize GGUF Q4_0/Q4_1/Q8_0 matrices to f32 at load. By default they stay in block form and are
    /// dequantized inside the dot products: the same weight values and f32 math (the reference test covers
    /// both), ~5× less memory traffic per token, ~3× faster decode on CPU.
    #[arg(long)]
    pub dequantize_at_load: bool,
    /// Accepted for compatibility: block-form weights are the default now.
    #[arg(long, hide = true)]
    pub keep_quantized: bool,
    /// Seed of `--load-format dummy` weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Largest request body in MiB (larger ones get 413).
    #[arg(long, default_value_t = 32)]
    pub max_body_mb: usize,
    /// Open HTTP connections at most; more wait in the listen backlog. Default: 1024, or fewer when the open-files
    /// limit (`ulimit -n`) is lower.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Seconds a new connection may take to send its first byte, and a request its headers (also the HTTP/1
    /// keep-alive idle limit).
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds without any traffic after which a connection is wound down (in-flight requests finish).
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// On SIGTERM or Ctrl-C: stop accepting, let requests in progress (streams included) finish for at most this
    /// many seconds, then exit. Keep it below the orchestrator's stop grace period (compose: `stop_grace_period`).
    #[arg(long, default_value_t = 25)]
    pub shutdown_grace_secs: u64,
    /// Schedule by the fleet's budgets (`x-baton-slo` on fleet-authenticated calls): earliest-deadline-first
    /// prefill, and prefill chunks sized so that decoding sequences keep their TPOT. `off`, or while no request has
    /// a budget: FIFO under the fixed --max-num-batched-tokens budget.
    #[arg(long, value_enum, default_value = "on")]
    pub slo_scheduling: OnOff,
    /// Fraction of the tightest TPOT budget one step may take (the step-time model's error margin).
    #[arg(long, default_value_t = StepLimits::default().tpot_headroom)]
    pub step_tpot_headroom: f64,
    /// A step that prefills a prompt takes at most this fraction of the prompt's TTFT budget (so a prompt arriving
    /// mid-step is not held up long).
    #[arg(long, default_value_t = StepLimits::default().ttft_share)]
    pub step_ttft_share: f64,
    /// Prefill tokens a step takes at least when a prompt waits, even if decoding alone fills the TPOT budget.
    #[arg(long, default_value_t = StepLimits::default().min_prefill_tokens)]
    pub step_min_prefill_tokens: u64,
    /// The step-time model to start from (JSON: a StepModel, or `baton-engine profile`'s output, whose "fit" is
    /// one); the engine refits it online from its own steps. Default: a conservative CPU-sized model.
    #[arg(long)]
    pub step_model: Option<PathBuf>,
}

/// A switch given as `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// Reads `--step-model`: a [`StepModel`] object, or an object whose `fit` is one (a step profile).
pub fn load_step_model(path: &std::path::Path) -> anyhow::Result<StepModel> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--step-model {}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("--step-model {}: not JSON: {e}", path.display()))?;
    let inner = v.get("fit").cloned().unwrap_or(v);
    let m: StepModel = serde_json::from_value(inner).map_err(|e| {
        anyhow::anyhow!(
            "--step-model {}: neither a step model nor a profile with a \"fit\" one: {e}",
            path.display()
        )
    })?;
    anyhow::ensure!(
        m.is_valid(),
        "--step-model {}: coefficients must be finite and non-negative: {m:?}",
        path.display()
    );
    Ok(m)
}

/// The SLO scheduling settings of `args`: whether it is on, the step limits and the fit's prior.
pub fn step_settings(args: &Args) -> anyhow::Result<(bool, StepLimits, StepModel)> {
    let positive = |v: f64, flag: &str| {
        anyhow::ensure!(
            v.is_finite() && v > 0.0 && v <= 1.0,
            "{flag} must be in (0, 1], got {v}"
        );
        Ok(())
    };
    positive(args.step_tpot_headroom, "--step-tpot-headroom")?;
    positive(args.step_ttft_share, "--step-ttft-share")?;
    let limits = StepLimits {
        max_tokens: args.max_num_batched_tokens.max(1) as u64,
        // At least one token, so a prompt always moves.
        min_prefill_tokens: args.step_min_prefill_tokens.max(1),
        tpot_headroom: args.step_tpot_headroom,
        ttft_share: args.step_ttft_share,
        ..StepLimits::default()
    };
    let prior = match &args.step_model {
        Some(p) => load_step_model(p)?,
        None => StepModel::default(),
    };
    Ok((args.slo_scheduling == OnOff::On, limits, prior))
}

/// The fleet key from `--fleet-key-file` or `BATON_FLEET_KEY`; an error when a disaggregated role has none.
pub fn fleet_key(args: &Args) -> anyhow::Result<Option<FleetKey>> {
    let key = FleetKey::load(
        args.fleet_key_file.as_deref(),
        std::env::var("BATON_FLEET_KEY").ok(),
    )?;
    if key.is_none() && matches!(args.role, Role::Prefill | Role::Decode) {
        anyhow::bail!(
            "--role {}: a fleet key is required to transfer KV between engines; pass --fleet-key-file PATH or set \
             BATON_FLEET_KEY (the same key as the gateway's)",
            if args.role == Role::Prefill {
                "prefill"
            } else {
                "decode"
            }
        );
    }
    Ok(key)
}

/// Runs the engine until the process is stopped.
pub fn run(args: Args) -> anyhow::Result<()> {
    // Logs (stdout) are coloured only on a terminal: a log file or `docker logs` gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stdout())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .try_init()
        .ok();
    // Before loading anything: a misconfigured role fails at once.
    let fleet_key = fleet_key(&args)?;
    if fleet_key.is_none() {
        tracing::info!(
            "no fleet key: kv_transfer_params are ignored and no KV pull listener is started"
        );
    }
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    let t0 = std::time::Instant::now();
    let (slo_scheduling, step_limits, step_prior) = step_settings(&args)?;
    let block_size = args.block_size.max(1);
    let mut cfg = EngineConfig {
        block_size,
        num_blocks: 1,
        max_num_seqs: args.max_num_seqs.max(1),
        max_batched_tokens: args.max_num_batched_tokens.max(1),
        chunked_prefill: !args.no_chunked_prefill,
        prefix_caching: !args.no_prefix_caching,
        kv_lease: Duration::from_secs(args.kv_lease_secs),
        kv_lease_grace: Duration::try_from_secs_f64(args.kv_lease_grace_secs)
            .map_err(|_| anyhow::anyhow!("--kv-lease-grace-secs must be a non-negative number"))?,
        kv_lease_max_share: args.kv_lease_max_share,
        kv_lease_tenant_share: args.kv_lease_tenant_share,
        slo_scheduling,
        step_limits,
        step_prior,
    };
    let (mcfg, device, make, tokenizer) = match open_gpu(args.device, args.gpu)? {
        #[cfg(feature = "cuda")]
        Some(dev) => load_cuda(&args, dev, &mut cfg)?,
        #[cfg(not(feature = "cuda"))]
        Some(never) => match never {},
        None => load_cpu(&args, &mut cfg)?,
    };
    tracing::info!(
        "loaded {} ({} layers, hidden {}, vocab {}, context {}) on {} in {:.1?}",
        args.model.display(),
        mcfg.n_layers,
        mcfg.hidden,
        mcfg.vocab,
        mcfg.context_length,
        device,
        t0.elapsed()
    );
    let name = args.served_model_name.clone().unwrap_or_else(|| {
        args.model
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
    });
    let template_src = tokenizer
        .chat_template
        .clone()
        .unwrap_or_else(|| CHATML_FALLBACK.to_string());
    let tok_text = |id: Option<u32>| {
        id.map(|i| tokenizer.decode(&[i], false))
            .unwrap_or_default()
    };
    let template = ChatTemplate::new(
        &template_src,
        &tok_text(tokenizer.bos_id),
        &tok_text(tokenizer.eos_id),
    )?;
    tracing::info!(
        "KV cache: {} blocks of {} tokens",
        cfg.num_blocks,
        cfg.block_size
    );
    let engine = EngineHandle::spawn_with(make, tokenizer, cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr: SocketAddr = format!("{}:{}", args.host, args.port).parse()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let kv_key = fleet_key
            .clone()
            .filter(|_| matches!(args.role, Role::Prefill | Role::Both));
        let kv_endpoint = if let Some(key) = kv_key {
            let kv_listener =
                tokio::net::TcpListener::bind((args.host.as_str(), args.kv_port)).await?;
            let port = kv_listener.local_addr()?.port();
            tokio::spawn(tcp::serve(kv_listener, engine.clone(), key));
            let host = args
                .kv_host
                .clone()
                .unwrap_or_else(|| match args.host.as_str() {
                    "0.0.0.0" | "::" => "127.0.0.1".into(),
                    h => h.into(),
                });
            tracing::info!("KV pull listener on {host}:{port}");
            Some(KvEndpoint {
                engine_id: args
                    .engine_id
                    .clone()
                    .unwrap_or_else(|| format!("baton-{:x}", std::process::id())),
                host,
                port,
                lease_secs: args.kv_lease_secs,
            })
        } else {
            None
        };
        let device = DeviceImport::for_engine(&engine);
        if let Some(d) = &device {
            tracing::info!(host_id = %d.host_id, "KV hand-off: device-to-device (CUDA IPC) with GPU engines on this host");
        }
        let state = Arc::new(ServerState {
            engine,
            model_name: name,
            template: Some(template),
            role: args.role,
            kv_endpoint,
            puller: Arc::new(TcpPuller {
                timeout: Duration::from_secs(args.kv_pull_timeout_secs),
                key: fleet_key.clone(),
                device,
            }),
            pull_failure: args.kv_pull_failure,
            limits: Limits {
                max_body: args.max_body_mb.saturating_mul(1024 * 1024).max(1),
                max_connections: args
                    .max_connections
                    .unwrap_or_else(crate::server::conn::default_max_connections)
                    .max(1),
                header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
                idle_timeout: Duration::from_secs(args.idle_timeout_secs.max(1)),
            },
            fleet_key,
        });
        tracing::info!("serving on http://{}", listener.local_addr()?);
        let grace = Duration::from_secs(args.shutdown_grace_secs);
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            shutdown_signal().await;
            tracing::info!(grace_secs = grace.as_secs(), "stopping: no new connections, finishing requests in progress");
            let _ = stopped_tx.send(());
        };
        let drained = serve_until(listener, state, stop);
        tokio::pin!(drained);
        tokio::select! {
            _ = &mut drained => return Ok(()),
            _ = stopped_rx => {}
        }
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!("shutdown grace over: exiting with requests still in progress");
        }
        Ok(())
    })
}

/// SIGTERM (what orchestrators send; as a container's PID 1 the engine must handle it, or it is ignored until the
/// SIGKILL) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// No GPU type in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
enum NoGpu {}

/// The CPU (this build has no GPU backend).
#[cfg(not(feature = "cuda"))]
fn open_gpu(device: Device, _gpu: usize) -> anyhow::Result<Option<NoGpu>> {
    match device {
        Device::Cpu => {
            tracing::info!("device: cpu");
            Ok(None)
        }
        Device::Auto => {
            tracing::info!("device: cpu (auto: this build has no `cuda` feature)");
            Ok(None)
        }
        Device::Cuda => anyhow::bail!(
            "--device cuda: this binary was built without the `cuda` feature (rebuild with `--features cuda`)"
        ),
    }
}

/// Opens GPU `gpu` for `cuda` and `auto`; `None` means the CPU (`auto` without a usable GPU).
#[cfg(feature = "cuda")]
fn open_gpu(device: Device, gpu: usize) -> anyhow::Result<Option<Arc<crate::cuda::GpuDevice>>> {
    use crate::cuda::{CudaError, GpuDevice};
    if device == Device::Cpu {
        tracing::info!("device: cpu");
        return Ok(None);
    }
    match GpuDevice::open(gpu) {
        Ok(dev) => {
            tracing::info!(
                "device: cuda:{gpu} {} (compute capability {}.{}, {} SMs, {:.1} GiB)",
                dev.name,
                dev.compute_capability.0,
                dev.compute_capability.1,
                dev.sm_count,
                dev.total_mem as f64 / (1u64 << 30) as f64
            );
            Ok(Some(dev))
        }
        Err(e @ (CudaError::LibraryMissing { .. } | CudaError::NoDevice(_)))
            if device == Device::Auto =>
        {
            tracing::info!("device: cpu (auto: no usable GPU: {e})");
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!(
            "--device {device:?}: cannot use GPU {gpu}: {e}"
        )),
    }
}

fn cap_context(cfg: &mut ModelConfig, args: &Args) {
    if let Some(n) = args.max_model_len {
        cfg.context_length = cfg.context_length.min(n.max(2));
    }
}

/// Builds the backend on the scheduler thread.
type MakeBackend = Box<dyn FnOnce(&mut EngineConfig) -> crate::Result<Backend> + Send>;

/// What loading gives: the model's config, the device's name, the backend's builder and the tokenizer.
type Loaded = (ModelConfig, &'static str, MakeBackend, Tokenizer);

fn load_cpu(args: &Args, cfg: &mut EngineConfig) -> anyhow::Result<Loaded> {
    let (mut model, tokenizer) = load(
        &args.model,
        args.load_format,
        !args.dequantize_at_load,
        args.seed,
    )?;
    cap_context(&mut model.cfg, args);
    cfg.num_blocks = EngineConfig::blocks_for_budget(&model, cfg.block_size, args.kv_memory_mb);
    let mcfg = model.cfg.clone();
    let make: MakeBackend =
        Box::new(move |c: &mut EngineConfig| Ok(Backend::cpu(model, c.block_size, c.num_blocks)));
    Ok((mcfg, "cpu", make, tokenizer))
}

#[cfg(feature = "cuda")]
fn load_cuda(
    args: &Args,
    dev: Arc<crate::cuda::GpuDevice>,
    cfg: &mut EngineConfig,
) -> anyhow::Result<Loaded> {
    use crate::cuda::{CudaModelOptions, GpuKvPool, GpuWeights};
    use crate::loader::load_config;
    let hf = match args.load_format {
        LoadFormat::Hf => true,
        LoadFormat::Gguf => false,
        LoadFormat::Auto | LoadFormat::Dummy => args.model.is_dir(),
    };
    let (mut mcfg, weights, tokenizer) = if args.load_format == LoadFormat::Dummy {
        let (mcfg, tokenizer) = load_config(&args.model, args.load_format)?;
        let w = GpuWeights::dummy(&dev, &mcfg, args.seed)?;
        (mcfg, w, tokenizer)
    } else if hf {
        let (mcfg, w) = GpuWeights::from_hf_dir(&dev, &args.model)?;
        let (_, tokenizer) = load_config(&args.model, LoadFormat::Hf)?;
        (mcfg, w, tokenizer)
    } else {
        // Block form keeps host memory low; the weights are dequantized to bf16 on upload.
        let (model, tokenizer) = load(&args.model, LoadFormat::Gguf, true, args.seed)?;
        let w = GpuWeights::from_weights(&dev, &model.cfg, &model.weights)?;
        (model.cfg.clone(), w, tokenizer)
    };
    cap_context(&mut mcfg, args);
    let per_block = GpuKvPool::bytes_per_block(&mcfg, cfg.block_size).max(1);
    cfg.num_blocks = (args.kv_memory_mb * 1024 * 1024 / per_block).max(1);
    // Without chunked prefill a whole prompt runs in one step, beyond the token budget.
    let max_tokens = if cfg.chunked_prefill {
        cfg.max_batched_tokens
    } else {
        cfg.max_batched_tokens.max(mcfg.context_length)
    };
    let opts = CudaModelOptions {
        block_size: cfg.block_size,
        num_blocks: cfg.num_blocks,
        max_tokens,
        max_batch: cfg.max_num_seqs,
        ..CudaModelOptions::default()
    };
    let info = mcfg.clone();
    let make: MakeBackend = Box::new(move |c: &mut EngineConfig| {
        let backend = Backend::cuda(dev, mcfg, weights, opts)?;
        // The model caps the batch at its largest CUDA-graph bucket.
        c.max_num_seqs = c.max_num_seqs.min(backend.max_batch());
        Ok(backend)
    });
    Ok((info, "cuda", make, tokenizer))
}

/// The backend `run` would serve with, for `baton-engine profile`: the engine config (KV pool size, token budget,
/// sequence cap; as `run` sets them from `args`), the model's config, the device kind and the backend's builder
/// (call it on the thread that will run the backend; it may lower `max_num_seqs` to what the backend supports).
pub(crate) fn load_backend(
    args: &Args,
) -> anyhow::Result<(EngineConfig, ModelConfig, &'static str, MakeBackend)> {
    let mut cfg = EngineConfig {
        block_size: args.block_size.max(1),
        num_blocks: 1,
        max_num_seqs: args.max_num_seqs.max(1),
        max_batched_tokens: args.max_num_batched_tokens.max(1),
        chunked_prefill: !args.no_chunked_prefill,
        prefix_caching: !args.no_prefix_caching,
        ..EngineConfig::default()
    };
    let (mcfg, device, make, _tokenizer) = match open_gpu(args.device, args.gpu)? {
        #[cfg(feature = "cuda")]
        Some(dev) => load_cuda(args, dev, &mut cfg)?,
        #[cfg(not(feature = "cuda"))]
        Some(never) => match never {},
        None => load_cpu(args, &mut cfg)?,
    };
    Ok((cfg, mcfg, device, make))
}

#[cfg(test)]
mod step_model_tests {
    use super::*;

    #[test]
    fn step_model_reads_a_model_or_a_profiles_fit_and_refuses_bad_ones() {
        // A profile as `baton-engine profile` writes it (the one measured on the 2-core CPU).
        let profile = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/bench/profiles/cpu-smollm2-2cores.json");
        let m = load_step_model(&profile).unwrap();
        assert!(m.is_valid() && m.fixed_ms > 1.0, "{m:?}");
        let dir = std::env::temp_dir().join(format!("baton-step-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let bare = write(
            "bare.json",
            r#"{"fixed_ms": 2, "per_seq_ms": 0.1, "per_prefill_token_ms": 0.01, "per_kctx_ms": 0.2}"#,
        );
        assert_eq!(
            load_step_model(&bare).unwrap(),
            StepModel {
                fixed_ms: 2.0,
                per_seq_ms: 0.1,
                per_prefill_token_ms: 0.01,
                per_kctx_ms: 0.2,
            }
        );
        let negative = write(
            "negative.json",
            r#"{"fit": {"fixed_ms": -2, "per_seq_ms": 0.1, "per_prefill_token_ms": 0.01, "per_kctx_ms": 0.2}}"#,
        );
        assert!(load_step_model(&negative).is_err());
        assert!(load_step_model(&write("other.json", r#"{"points": []}"#)).is_err());
        assert!(load_step_model(&dir.join("missing.json")).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn step_flags_default_to_the_policy_limits_and_reject_nonsense() {
        let args = |extra: &[&str]| {
            let mut v = vec!["baton-engine", "--model", "m.gguf"];
            v.extend_from_slice(extra);
            Args::try_parse_from(v).unwrap()
        };
        let (on, limits, prior) = step_settings(&args(&[])).unwrap();
        assert!(on);
        assert_eq!(
            limits,
            StepLimits {
                max_tokens: 512,
                ..StepLimits::default()
            }
        );
        assert_eq!(prior, StepModel::default());
        let (on, limits, _) = step_settings(&args(&[
            "--slo-scheduling",
            "off",
            "--step-min-prefill-tokens",
            "0",
        ]))
        .unwrap();
        assert!(!on);
        assert_eq!(limits.min_prefill_tokens, 1, "a prompt always moves");
        assert!(step_settings(&args(&["--step-ttft-share", "0"])).is_err());
        assert!(step_settings(&args(&["--step-tpot-headroom", "NaN"])).is_err());
    }
}
