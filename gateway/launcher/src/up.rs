//! `baton up`: a prefill and a decode engine as child processes, the gateway
//! in this process, until Ctrl-C.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use baton_gateway::config::{GatewayConfig, PdProtocol, PrefillWorker};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use tokio::process::{Child, Command};

/// Arguments of `baton up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// GGUF file or HF folder [default: SmolLM2-135M-Instruct, downloaded once].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Name clients use in `model`.
    #[arg(long, default_value = "smollm2")]
    pub served_model_name: String,
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Gateway port.
    #[arg(long, default_value_t = 30000)]
    pub port: u16,
    /// Prefill engine port.
    #[arg(long, default_value_t = 30001)]
    pub prefill_port: u16,
    /// Decode engine port.
    #[arg(long, default_value_t = 30002)]
    pub decode_port: u16,
    /// KV cache memory per engine.
    #[arg(long, default_value_t = 256)]
    pub kv_memory_mb: usize,
    /// Compute threads per engine [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Gateway TOML config to start from (pools are set by this command).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How long to wait for the engines to load.
    #[arg(long, default_value_t = 300)]
    pub ready_timeout_secs: u64,
}

/// Kills the child on drop (a panic or early return never leaks engines).
struct Engine {
    name: &'static str,
    child: Child,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Engine {
    fn spawn(
        name: &'static str,
        role: &str,
        port: u16,
        model: &std::path::Path,
        a: &UpArgs,
        fleet_key: &str,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the baton executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("engine")
            .arg("--model")
            .arg(model)
            .args(["--role", role, "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--served-model-name", &a.served_model_name])
            .args(["--kv-memory-mb", &a.kv_memory_mb.to_string()])
            // In the environment, not on the command line, where any local user could read it.
            .env("BATON_FLEET_KEY", fleet_key)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(t) = a.threads {
            cmd.args(["--threads", &t.to_string()]);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the {name} engine"))?;
        Ok(Self { name, child })
    }

    /// Asks the engine to stop (SIGTERM via kill(1) would need libc; the
    /// engines hold no state worth a graceful stop, so a kill is clean).
    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

async fn healthy(client: &Client<HttpConnector, Empty<Bytes>>, url: &str) -> bool {
    let Ok(uri) = format!("{url}/health").parse::<hyper::Uri>() else {
        return false;
    };
    match tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await {
        Ok(Ok(resp)) => {
            let ok = resp.status().is_success();
            let _ = resp.into_body().collect().await;
            ok
        }
        _ => false,
    }
}

pub async fn run(a: UpArgs) -> Result<()> {
    let model = match &a.model {
        Some(m) => m.clone(),
        None => tokio::task::spawn_blocking(crate::model::ensure_default_model).await??,
    };
    if !model.exists() {
        bail!("model {} does not exist", model.display());
    }
    // One fleet key per run, shared by the gateway and its two engines only: KV transfer between them is
    // authenticated with it, and nothing else can steer it.
    let fleet_key = baton_protocol::fleet::hex(&rand::rng().random::<[u8; 32]>());
    let mut prefill = Engine::spawn("prefill", "prefill", a.prefill_port, &model, &a, &fleet_key)?;
    let mut decode = Engine::spawn("decode", "decode", a.decode_port, &model, &a, &fleet_key)?;
    let prefill_url = format!("http://127.0.0.1:{}", a.prefill_port);
    let decode_url = format!("http://127.0.0.1:{}", a.decode_port);

    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message("loading the model in the prefill and decode engines");
    bar.enable_steady_tick(Duration::from_millis(120));
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.ready_timeout_secs);
    loop {
        for e in [&mut prefill, &mut decode] {
            if let Some(status) = e.child.try_wait()? {
                bar.finish_and_clear();
                bail!(
                    "the {} engine exited during start-up ({status}); see its log above",
                    e.name
                );
            }
        }
        if healthy(&client, &prefill_url).await && healthy(&client, &decode_url).await {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bar.finish_and_clear();
            bail!("engines not ready after {} s", a.ready_timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bar.finish_and_clear();

    let mut cfg = match &a.config {
        Some(p) => GatewayConfig::from_toml_file(p)?,
        None => GatewayConfig::default(),
    };
    cfg.host = a.host.clone();
    cfg.port = a.port;
    cfg.worker_urls.clear();
    cfg.prefill = vec![PrefillWorker {
        url: prefill_url.clone(),
        bootstrap_port: None,
    }];
    cfg.decode = vec![decode_url.clone()];
    cfg.pd_protocol = Some(PdProtocol::Vllm);
    cfg.fleet_key_file = None;
    cfg.fleet_key = Some(baton_gateway::auth::Secret::new(fleet_key));
    cfg.health.interval_secs = cfg.health.interval_secs.min(5.0);
    let gateway = baton_gateway::start(cfg).await?;
    let url = gateway.url();
    println!();
    println!("Baton is up: gateway {url} → prefill {prefill_url} → decode {decode_url}");
    println!("SLO store: embedded (in memory). Metrics: {url}/metrics  Goodput: {url}/v1/slo");
    println!();
    println!("Try:");
    println!(
        "  curl -N {url}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"What is the capital of France?\"}}],\"max_tokens\":48,\"temperature\":0,\"stream\":true}}'",
        a.served_model_name
    );
    println!();
    println!("Ctrl-C stops everything.");

    let outcome = tokio::select! {
        _ = crate::signal::wait() => Ok(()),
        s = prefill.child.wait() => Err(anyhow::anyhow!("the prefill engine exited ({})", s.map_or_else(|e| e.to_string(), |s| s.to_string()))),
        s = decode.child.wait() => Err(anyhow::anyhow!("the decode engine exited ({})", s.map_or_else(|e| e.to_string(), |s| s.to_string()))),
    };
    eprintln!("stopping...");
    gateway.shutdown().await;
    prefill.stop().await;
    decode.stop().await;
    outcome
}
