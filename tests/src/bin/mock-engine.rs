//! `baton-mock-engine`: one mock LLM engine as a standalone process, for benchmarks and manual
//! testing of the Baton gateway.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use baton_e2e::mock::{Flavor, MockEngine};
use clap::{Parser, ValueEnum};

/// Serve a mock LLM engine (OpenAI API + vLLM / SGLang prefill-decode protocols) with
/// deterministic output: token i is "t{i} ".
///
/// Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions,
/// POST /generate (SGLang native).
///
/// A prefill and a decode started as separate processes cannot share the in-process vLLM KV
/// registry or SGLang bootstrap rooms: give the vLLM pair --lenient (decode accepts any
/// well-formed kv_transfer_params) and the SGLang legs --no-rendezvous (bootstrap fields are
/// validated, but neither leg waits for the other).
#[derive(Parser, Debug)]
#[command(name = "baton-mock-engine", version, verbatim_doc_comment)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,

    /// Port to listen on (0 picks a free one; the chosen URL is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    port: u16,

    /// Which engine and PD role to play.
    #[arg(long, value_enum, default_value_t = FlavorArg::Openai)]
    flavor: FlavorArg,

    /// Bootstrap port of an sglang-prefill (the `bootstrap_port` requests must carry).
    #[arg(long, default_value_t = 8998)]
    bootstrap_port: u16,

    /// Output tokens when a request sets no max_tokens.
    #[arg(long, default_value_t = 16)]
    tokens: usize,

    /// Microseconds between streamed tokens (inter-token latency).
    #[arg(long, default_value_t = 0)]
    token_delay_us: u64,

    /// Microseconds before the response head (queue + prefill time; time to first token).
    #[arg(long, default_value_t = 0)]
    head_delay_us: u64,

    /// Microseconds between the response head and the body (slow prefill body).
    #[arg(long, default_value_t = 0)]
    body_delay_us: u64,

    /// Served model name.
    #[arg(long, default_value = "mock-model")]
    model: String,

    /// vLLM pair in separate processes: prefill keeps no registry, decode accepts any
    /// well-formed kv_transfer_params.
    #[arg(long)]
    lenient: bool,

    /// SGLang legs in separate processes: don't wait for the peer in the bootstrap room.
    #[arg(long)]
    no_rendezvous: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FlavorArg {
    /// Plain OpenAI-compatible engine.
    Openai,
    /// vLLM NixlConnector prefill (issues kv_transfer_params).
    VllmPrefill,
    /// vLLM NixlConnector decode (requires kv_transfer_params from the prefill).
    VllmDecode,
    /// SGLang prefill (--bootstrap-port).
    SglangPrefill,
    /// SGLang decode.
    SglangDecode,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let flavor = match args.flavor {
        FlavorArg::Openai => Flavor::OpenAi,
        FlavorArg::VllmPrefill => Flavor::VllmPrefill,
        FlavorArg::VllmDecode => Flavor::VllmDecode,
        FlavorArg::SglangPrefill => Flavor::SglangPrefill {
            bootstrap_port: args.bootstrap_port,
        },
        FlavorArg::SglangDecode => Flavor::SglangDecode,
    };
    let engine = MockEngine::new(flavor)
        .bind(SocketAddr::new(args.host, args.port))
        .model(&args.model)
        .default_tokens(args.tokens)
        .token_delay(Duration::from_micros(args.token_delay_us))
        .head_delay(Duration::from_micros(args.head_delay_us))
        .body_delay(Duration::from_micros(args.body_delay_us))
        .lenient(args.lenient)
        .no_rendezvous(args.no_rendezvous)
        .record_requests(false);
    let handle = match engine.try_spawn().await {
        Ok(h) => h,
        Err(e) => {
            eprintln!(
                "baton-mock-engine: cannot listen on {}:{}: {e}",
                args.host, args.port
            );
            std::process::exit(1);
        }
    };
    println!(
        "baton-mock-engine {:?} listening on {}",
        args.flavor,
        handle.url()
    );
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("baton-mock-engine: cannot wait for ctrl-c: {e}");
    }
    handle.shutdown();
}
