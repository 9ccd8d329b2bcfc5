//! Mock LLM engines: builder-style hyper servers on `127.0.0.1:0` that speak the OpenAI API and
//! the vLLM / SGLang prefill-decode protocols, with deterministic output (token `i` is `"t{i} "`),
//! configurable latencies and deterministic fault injection.
//!
//! ```no_run
//! # async fn demo() {
//! use baton_e2e::mock::{Fault, Flavor, MockEngine, VllmPair};
//! // A vLLM prefill and decode mock sharing one KV registry; `VllmPair::plain()` without faults.
//! let pair = VllmPair::spawn(
//!     MockEngine::new(Flavor::VllmPrefill).fault(Fault::StatusAlways { status: 500 }),
//!     MockEngine::new(Flavor::VllmDecode),
//! )
//! .await;
//! # let _ = (pair.prefill.url(), pair.decode.url(), pair.kv.outstanding());
//! # }
//! ```

mod body;
mod faults;
pub(crate) mod openai;
mod rendezvous;
mod server;
mod sglang;
mod stats;
pub(crate) mod vllm;

pub(crate) use openai::{error_body, token_text};

#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use faults::Fault;
pub use rendezvous::{Rendezvous, RoomKey};
pub use stats::{MockStats, RecordedRequest};
pub use vllm::VllmKvRegistry;

use server::Shared;
use stats::{Recorder, StatsCell};

/// Which engine (and which PD role) a mock plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// A plain OpenAI-compatible engine (also a "unified" worker).
    OpenAi,
    /// vLLM with NixlConnector, prefill role: issues `kv_transfer_params`.
    VllmPrefill,
    /// vLLM with NixlConnector, decode role: pulls by `kv_transfer_params`.
    VllmDecode,
    /// SGLang `--disaggregation-mode prefill` with its bootstrap server on `bootstrap_port`.
    SglangPrefill { bootstrap_port: u16 },
    /// SGLang `--disaggregation-mode decode`.
    SglangDecode,
}

/// Behaviour of one mock (everything the builder sets).
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub flavor: Flavor,
    pub model: String,
    pub default_tokens: usize,
    pub token_delay: Duration,
    pub head_delay: Duration,
    pub body_delay: Duration,
    pub rendezvous_timeout: Duration,
    pub faults: Vec<Fault>,
    pub lenient: bool,
    pub no_rendezvous: bool,
    /// Keep every generation request for [`MockHandle::requests`].
    pub record: bool,
    /// Extra top-level fields of every whole (non-stream) answer.
    pub reply_fields: serde_json::Map<String, serde_json::Value>,
}

/// Builder of a mock engine; [`MockEngine::spawn`] starts it.
pub struct MockEngine {
    cfg: Config,
    registry: VllmKvRegistry,
    rendezvous: Rendezvous,
    bind: SocketAddr,
}

impl MockEngine {
    pub fn new(flavor: Flavor) -> Self {
        Self {
            cfg: Config {
                flavor,
                model: "mock-model".to_owned(),
                default_tokens: 16,
                token_delay: Duration::ZERO,
                head_delay: Duration::ZERO,
                body_delay: Duration::ZERO,
                rendezvous_timeout: Duration::from_secs(30),
                faults: Vec::new(),
                lenient: false,
                no_rendezvous: false,
                record: true,
                reply_fields: serde_json::Map::new(),
            },
            registry: VllmKvRegistry::default(),
            rendezvous: Rendezvous::default(),
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        }
    }

    /// The served model name (`GET /v1/models`; answers echo the request's `model` if given).
    /// Default `"mock-model"`.
    pub fn model(mut self, name: &str) -> Self {
        self.cfg.model = name.to_owned();
        self
    }

    /// Output length when the request sets no max tokens (finish reason `stop`). Default 16.
    pub fn default_tokens(mut self, n: usize) -> Self {
        self.cfg.default_tokens = n;
        self
    }

    /// Gap between streamed tokens (a non-stream answer waits tokens × this before its head).
    pub fn token_delay(mut self, d: Duration) -> Self {
        self.cfg.token_delay = d;
        self
    }

    /// Delay before the response head (queue + prefill time). On an SGLang prefill it is the
    /// prefill compute between "decode joined" and "KV transferred".
    pub fn head_delay(mut self, d: Duration) -> Self {
        self.cfg.head_delay = d;
        self
    }

    /// Delay between the response head and the first body byte (a slow prefill body).
    pub fn body_delay(mut self, d: Duration) -> Self {
        self.cfg.body_delay = d;
        self
    }

    /// The registry shared by a vLLM prefill/decode pair. Default: a fresh one per mock.
    pub fn kv_registry(mut self, r: VllmKvRegistry) -> Self {
        self.registry = r;
        self
    }

    /// The bootstrap rooms shared by SGLang prefill/decode mocks. Default: a fresh one per mock.
    pub fn rendezvous(mut self, r: Rendezvous) -> Self {
        self.rendezvous = r;
        self
    }

    /// How long an SGLang leg waits for its peer. Default 30 s (SGLang's real one is 300 s).
    pub fn rendezvous_timeout(mut self, d: Duration) -> Self {
        self.cfg.rendezvous_timeout = d;
        self
    }

    /// Adds a fault; the first added fault that matches a request wins.
    pub fn fault(mut self, f: Fault) -> Self {
        self.cfg.faults.push(f);
        self
    }

    /// For a vLLM pair in separate processes: the prefill records no registry entry and the
    /// decode accepts any well-formed params (`do_remote_prefill: true`, engine and request ids).
    pub fn lenient(mut self, lenient: bool) -> Self {
        self.cfg.lenient = lenient;
        self
    }

    /// For SGLang legs in separate processes: validate the bootstrap fields but don't wait for
    /// the peer.
    pub fn no_rendezvous(mut self, skip: bool) -> Self {
        self.cfg.no_rendezvous = skip;
        self
    }

    /// Keep every generation request for [`MockHandle::requests`]. Default on; a standalone
    /// process turns it off (nobody can read them, and under a benchmark they grow by
    /// gigabytes).
    pub fn record_requests(mut self, on: bool) -> Self {
        self.cfg.record = on;
        self
    }

    /// Adds a top-level field to every whole (non-stream) answer, as engines
    /// that leak internals do (e.g. `kv_transfer_params` naming their KV host).
    pub fn reply_field(mut self, name: &str, value: serde_json::Value) -> Self {
        self.cfg.reply_fields.insert(name.to_owned(), value);
        self
    }

    /// Listen address. Default `127.0.0.1:0` (an ephemeral port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Starts the mock on the current tokio runtime. Panics if it can't bind.
    pub async fn spawn(self) -> MockHandle {
        let bind = self.bind;
        match self.try_spawn().await {
            Ok(handle) => handle,
            Err(e) => panic!("mock engine failed to bind {bind}: {e}"),
        }
    }

    /// Starts the mock on the current tokio runtime.
    pub async fn try_spawn(self) -> std::io::Result<MockHandle> {
        let listener = TcpListener::bind(self.bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            cfg: self.cfg,
            registry: self.registry,
            rendezvous: self.rendezvous,
            engine_id: uuid_ish(),
            stats: Arc::new(StatsCell::new()),
            recorder: Recorder::default(),
            healthy: AtomicBool::new(true),
            index: AtomicUsize::new(0),
            next_block: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            listener: Mutex::new(Some(listener)),
            addr,
        });
        tokio::spawn(server::serve(shared.clone()));
        Ok(MockHandle { shared })
    }
}

fn uuid_ish() -> String {
    let x: u128 = rand::random();
    let h = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A vLLM prefill and decode mock sharing one KV registry: the decoder accepts exactly the
/// `kv_transfer_params` the prefiller issued.
pub struct VllmPair {
    pub prefill: MockHandle,
    pub decode: MockHandle,
    pub kv: VllmKvRegistry,
}

impl VllmPair {
    /// Starts `prefill` and `decode` (builders of the vLLM prefill and decode flavors, with any
    /// other settings) on one fresh registry.
    pub async fn spawn(prefill: MockEngine, decode: MockEngine) -> Self {
        let kv = VllmKvRegistry::default();
        Self {
            prefill: prefill.kv_registry(kv.clone()).spawn().await,
            decode: decode.kv_registry(kv.clone()).spawn().await,
            kv,
        }
    }

    /// A pair with default settings.
    pub async fn plain() -> Self {
        Self::spawn(
            MockEngine::new(Flavor::VllmPrefill),
            MockEngine::new(Flavor::VllmDecode),
        )
        .await
    }
}

/// A running mock. Clones refer to the same mock; it runs until [`MockHandle::shutdown`] or the
/// end of the runtime.
#[derive(Clone)]
pub struct MockHandle {
    shared: Arc<Shared>,
}

impl MockHandle {
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    pub fn flavor(&self) -> Flavor {
        self.shared.cfg.flavor
    }

    /// This mock's vLLM `remote_engine_id`.
    pub fn engine_id(&self) -> &str {
        &self.shared.engine_id
    }

    pub fn kv_registry(&self) -> VllmKvRegistry {
        self.shared.registry.clone()
    }

    pub fn rendezvous(&self) -> Rendezvous {
        self.shared.rendezvous.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MockStats {
        self.shared.stats.snapshot()
    }

    /// Waits (woken by every counter change, no polling) until `pred` holds. `Err` carries the
    /// last snapshot on timeout.
    pub async fn wait_until(
        &self,
        pred: impl Fn(&MockStats) -> bool,
        timeout: Duration,
    ) -> Result<MockStats, MockStats> {
        self.shared.stats.wait_until(pred, timeout).await
    }

    /// Every generation request received, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.recorder.all()
    }

    /// `GET /health` answers 200 when healthy (the default), 503 otherwise.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::SeqCst);
    }

    /// "The engine died": closes the listening socket at once (new connections are refused) and
    /// aborts every open connection, in-flight requests included (they count as cancelled).
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }
}
