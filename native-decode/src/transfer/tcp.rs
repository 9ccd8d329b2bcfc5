//! KV pull over TCP: a listener on the prefill engine and the matching [`KvPuller`].
//!
//! Every connection starts with a challenge: the holder sends a random 32-byte nonce and the puller answers with
//! its request carrying `HMAC(fleet key, "baton-kv-pull-v1", nonce, transfer id, device host id)`. A wrong answer
//! closes the connection without a word (not even whether the id exists), so only fleet members can pull, and a
//! sniffed answer is useless on another connection.
//!
//! Two ways to move the blocks, chosen per pull by the holder:
//! * host-staged: the holder copies the blocks out (GPU → host if needed) and streams them as f32 frames;
//! * device-to-device: when both engines run on GPUs of the same host, the holder answers with a
//!   [`DeviceHeader`] naming its CUDA-IPC-shared pool and the block ids; the puller's GPU copies the blocks
//!   straight out of that pool (NVLink/PCIe peer reads) and then sends [`FrameKind::Release`]. The holder keeps
//!   the blocks reserved until then, or until the connection drops. Offered only after the challenge passed.
//!
//! The puller trusts nothing the holder says beyond [`PullBounds`]: block counts, frame sizes and the total are
//! checked against its own request and model before anything is allocated.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use baton_protocol::fleet::{hex, FleetKey};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::BufWriter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::frame::{bytes_to_f32s, f32s_to_bytes, read_frame_limited, write_frame, FrameKind};
use super::{BoxFuture, KvPuller, PullBounds, RemoteKv};
use crate::engine::types::{DeviceKv, DevicePool, ImportDone, ImportedKv, KvPayload};
use crate::engine::EngineHandle;
use crate::error::{Error, Result};

/// How long a connection may take to answer the challenge (a puller answers at once): bounds how long a silent
/// connection holds one of the [`MAX_CONNECTIONS`] slots.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: u64 = 64 * 1024;
/// Domain of the challenge-response MAC (see [`FleetKey::mac`]).
pub const PULL_DOMAIN: &str = "baton-kv-pull-v1";
const NONCE_LEN: usize = 32;
/// Connections served at once; more wait in the listen backlog (each holds a task and, at most, one lease).
const MAX_CONNECTIONS: usize = 256;

/// Longest a holder keeps checked-out blocks for a device copy (the puller normally releases within
/// milliseconds of admitting the request; this only bounds a stuck puller that keeps its connection open).
const DEVICE_HOLD: Duration = Duration::from_secs(600);

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    transfer_id: String,
    /// Set by a GPU puller: the host it runs on, so the holder can offer an in-place device copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_host_id: Option<String>,
    /// Hex of the fleet key's MAC over [`challenge_parts`].
    auth: String,
}

/// What the challenge MAC covers: this connection's nonce and everything the request asks for, so that a
/// puller's answer cannot be replayed on another connection, for another transfer or for another offer.
fn challenge_parts<'a>(
    nonce: &'a [u8],
    transfer_id: &'a str,
    device: Option<&'a str>,
) -> [&'a [u8]; 3] {
    [
        nonce,
        transfer_id.as_bytes(),
        device.unwrap_or_default().as_bytes(),
    ]
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A holder's `prompt_sha256`, which must be 32 bytes of hex.
fn digest(hex_text: &str) -> Result<[u8; 32]> {
    unhex(hex_text)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| Error::Transfer("holder header rejected: bad prompt digest".into()))
}

/// Holder → puller for a device-to-device copy.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceHeader {
    pub block_size: usize,
    pub num_tokens: usize,
    /// Hex of the [`super::prompt_digest`] of the tokens the blocks hold.
    pub prompt_sha256: String,
    pub block_ids: Vec<u32>,
    pub pool: DevicePool,
}

/// Describes the blocks that follow.
#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub block_size: usize,
    pub num_tokens: usize,
    /// Hex of the [`super::prompt_digest`] of the tokens the blocks hold.
    pub prompt_sha256: String,
    pub num_blocks: usize,
    pub floats_per_block: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct ErrorMsg {
    message: String,
}

/// Serves pulls until the listener fails. Each connection must answer the challenge with `key`, then asks for
/// one transfer id; the blocks are freed on this side as soon as they are handed out.
pub async fn serve(listener: TcpListener, engine: EngineHandle, key: FleetKey) {
    let key = Arc::new(key);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("kv listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let engine = engine.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_one(sock, &engine, &key).await {
                tracing::warn!(%peer, "kv pull failed: {e}");
            }
        });
    }
}

async fn serve_one(sock: TcpStream, engine: &EngineHandle, key: &FleetKey) -> Result<()> {
    let _ = sock.set_nodelay(true);
    let (mut rd, wr) = sock.into_split();
    let mut wr = BufWriter::new(wr);
    let nonce: [u8; NONCE_LEN] = rand::rng().random();
    write_frame(&mut wr, FrameKind::Challenge, &nonce).await?;
    flush(&mut wr).await?;
    // A puller sends one small request right away; don't let idle or oversized ones hold the task.
    let (kind, payload) =
        tokio::time::timeout(REQUEST_TIMEOUT, read_frame_limited(&mut rd, MAX_REQUEST))
            .await
            .map_err(|_| Error::Transfer("no request within the timeout".into()))??;
    if kind != FrameKind::Request {
        return Err(Error::Transfer(format!(
            "expected a request frame, got {kind:?}"
        )));
    }
    let req: Request = serde_json::from_slice(&payload)
        .map_err(|e| Error::Transfer(format!("bad request: {e}")))?;
    let parts = challenge_parts(&nonce, &req.transfer_id, req.device_host_id.as_deref());
    let authentic = unhex(&req.auth).is_some_and(|tag| key.verify_mac(PULL_DOMAIN, &parts, &tag));
    if !authentic {
        // Close without an answer: an outsider learns nothing, not even whether the id exists.
        return Err(Error::Transfer(
            "puller failed the fleet-key challenge".into(),
        ));
    }
    if let Some(pool) = engine
        .device_pool
        .as_ref()
        .filter(|p| req.device_host_id.as_deref() == Some(p.host_id.as_str()))
    {
        if let Some((kv, _release)) = engine.checkout_kv(&req.transfer_id).await {
            let h = DeviceHeader {
                block_size: kv.block_size,
                num_tokens: kv.num_tokens,
                prompt_sha256: hex(&kv.prompt_digest),
                block_ids: kv.block_ids,
                pool: (**pool).clone(),
            };
            let h = serde_json::to_vec(&h).map_err(|e| Error::Transfer(e.to_string()))?;
            write_frame(&mut wr, FrameKind::DeviceHeader, &h).await?;
            flush(&mut wr).await?;
            // Hold the blocks until the puller's copy is done; any frame, EOF or error ends the hold, and
            // `_release` frees the blocks on every path out of here.
            let _ =
                tokio::time::timeout(DEVICE_HOLD, read_frame_limited(&mut rd, MAX_REQUEST)).await;
            return Ok(());
        }
    }
    let Some(kv) = engine.export_kv(&req.transfer_id).await else {
        let msg = serde_json::to_vec(&ErrorMsg {
            message: "unknown or expired transfer id".into(),
        })
        .unwrap_or_default();
        write_frame(&mut wr, FrameKind::Error, &msg).await?;
        return flush(&mut wr).await;
    };
    let header = Header {
        block_size: kv.block_size,
        num_tokens: kv.num_tokens,
        prompt_sha256: hex(&kv.prompt_digest),
        num_blocks: kv.blocks.len(),
        floats_per_block: kv.blocks.first().map_or(0, Vec::len),
    };
    let h = serde_json::to_vec(&header).map_err(|e| Error::Transfer(e.to_string()))?;
    write_frame(&mut wr, FrameKind::Header, &h).await?;
    for b in &kv.blocks {
        write_frame(&mut wr, FrameKind::Block, &f32s_to_bytes(b)).await?;
    }
    write_frame(&mut wr, FrameKind::End, &[]).await?;
    flush(&mut wr).await
}

async fn flush<W: tokio::io::AsyncWrite + Unpin>(w: &mut W) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    w.flush()
        .await
        .map_err(|e| Error::Transfer(format!("flush: {e}")))
}

/// Pulls over TCP with a deadline for the whole transfer.
#[derive(Debug, Clone)]
pub struct TcpPuller {
    pub timeout: Duration,
    /// Answers holders' challenges; without it every pull fails (an engine without a fleet key never pulls).
    pub key: Option<FleetKey>,
    /// Set when this engine runs on a GPU that can map other engines' pools: offers in-place device copies.
    pub device: Option<DeviceImport>,
}

/// What a GPU puller tells holders, and the flag its scheduler raises when a device copy failed.
#[derive(Debug, Clone)]
pub struct DeviceImport {
    pub host_id: String,
    /// The engine's stats: `kv_device_broken` turns device copies off after a failure.
    pub stats: Arc<crate::metrics::Stats>,
}

impl DeviceImport {
    /// For an engine whose backend shares a GPU pool; `None` for CPU engines.
    pub fn for_engine(engine: &EngineHandle) -> Option<Self> {
        let pool = engine.device_pool.as_ref()?;
        Some(Self {
            host_id: pool.host_id.clone(),
            stats: engine.stats.clone(),
        })
    }
}

/// This host's boot id (the same inside containers on this host), or an empty string when unknown.
pub fn host_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl TcpPuller {
    pub fn new(timeout: Duration, key: Option<FleetKey>) -> Self {
        Self {
            timeout,
            key,
            device: None,
        }
    }

    async fn pull_inner(&self, remote: &RemoteKv, bounds: PullBounds) -> Result<ImportedKv> {
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| Error::Transfer("this engine has no fleet key".into()))?;
        let sock = TcpStream::connect((remote.host.as_str(), remote.port))
            .await
            .map_err(|e| {
                Error::Transfer(format!("connect {}:{}: {e}", remote.host, remote.port))
            })?;
        let _ = sock.set_nodelay(true);
        let (mut rd, mut wr) = sock.into_split();
        let (kind, nonce) = read_frame_limited(&mut rd, NONCE_LEN as u64).await?;
        if kind != FrameKind::Challenge || nonce.len() != NONCE_LEN {
            return Err(Error::Transfer("holder sent no challenge".into()));
        }
        let device_host_id = self
            .device
            .as_ref()
            .filter(|d| !d.stats.kv_device_broken.load(Ordering::Relaxed) && !d.host_id.is_empty())
            .map(|d| d.host_id.clone());
        let parts = challenge_parts(&nonce, &remote.transfer_id, device_host_id.as_deref());
        let auth = key.mac(PULL_DOMAIN, &parts);
        let req = serde_json::to_vec(&Request {
            transfer_id: remote.transfer_id.clone(),
            device_host_id,
            auth: hex(&auth),
        })
        .map_err(|e| Error::Transfer(e.to_string()))?;
        write_frame(&mut wr, FrameKind::Request, &req).await?;
        // Room for the JSON of a header listing every block the prompt can have, and nothing more.
        let max_blocks = bounds.prompt_tokens.div_ceil(bounds.block_size.max(1));
        let header_limit = 4096 + 16 * max_blocks as u64;
        let (kind, payload) = read_frame_limited(&mut rd, header_limit).await?;
        let header: Header = match kind {
            FrameKind::Header => serde_json::from_slice(&payload)
                .map_err(|e| Error::Transfer(format!("header: {e}")))?,
            FrameKind::DeviceHeader => {
                let h: DeviceHeader = serde_json::from_slice(&payload)
                    .map_err(|e| Error::Transfer(format!("device header: {e}")))?;
                bounds.check(h.block_size, h.num_tokens, h.block_ids.len())?;
                let prompt_digest = digest(&h.prompt_sha256)?;
                let (done, copied) = ImportDone::new();
                // Keep the connection (and so the holder's reservation) until our scheduler has copied the
                // blocks or dropped the request; then tell the holder to free them.
                tokio::spawn(async move {
                    let _ = copied.await;
                    let _ = write_frame(&mut wr, FrameKind::Release, &[]).await;
                    drop(rd);
                });
                return Ok(ImportedKv {
                    block_size: h.block_size,
                    num_tokens: h.num_tokens,
                    prompt_digest,
                    payload: KvPayload::Device(DeviceKv {
                        pool: h.pool,
                        src_blocks: h.block_ids,
                        done,
                    }),
                });
            }
            FrameKind::Error => {
                let m: ErrorMsg =
                    serde_json::from_slice(&payload).map_err(|e| Error::Transfer(e.to_string()))?;
                return Err(Error::Transfer(m.message));
            }
            other => return Err(Error::Transfer(format!("unexpected {other:?} frame"))),
        };
        let block_bytes = bounds.check(header.block_size, header.num_tokens, header.num_blocks)?;
        let prompt_digest = digest(&header.prompt_sha256)?;
        if header.floats_per_block.checked_mul(4) != Some(block_bytes) {
            return Err(Error::Transfer(format!(
                "holder blocks of {} floats; this model's are {}",
                header.floats_per_block,
                block_bytes / 4
            )));
        }
        if !remote.block_ids.is_empty() && remote.block_ids.len() != header.num_blocks {
            return Err(Error::Transfer(format!(
                "expected {} blocks, the holder has {}",
                remote.block_ids.len(),
                header.num_blocks
            )));
        }
        let mut blocks = Vec::with_capacity(header.num_blocks);
        for _ in 0..header.num_blocks {
            let (kind, payload) = read_frame_limited(&mut rd, block_bytes as u64).await?;
            if kind != FrameKind::Block || payload.len() != block_bytes {
                return Err(Error::Transfer(format!(
                    "expected a block of {block_bytes} bytes, got {kind:?} of {}",
                    payload.len()
                )));
            }
            blocks.push(bytes_to_f32s(&payload)?);
        }
        // Anything but an empty end frame (more blocks, say) ends the pull here.
        let (kind, _) = read_frame_limited(&mut rd, 0).await?;
        if kind != FrameKind::End {
            return Err(Error::Transfer(format!("expected end, got {kind:?}")));
        }
        Ok(ImportedKv {
            block_size: header.block_size,
            num_tokens: header.num_tokens,
            prompt_digest,
            payload: KvPayload::Host(blocks),
        })
    }
}

impl KvPuller for TcpPuller {
    fn pull<'a>(
        &'a self,
        remote: &'a RemoteKv,
        bounds: PullBounds,
    ) -> BoxFuture<'a, Result<ImportedKv>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.pull_inner(remote, bounds))
                .await
                .map_err(|_| Error::Transfer(format!("pull timed out after {:?}", self.timeout)))?
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::engine::types::{Event, GenParams, GenerateRequest};
    use crate::engine::EngineConfig;
    use crate::sampling::SamplingParams;

    fn key() -> FleetKey {
        FleetKey::from_bytes(b"test-fleet-key-0123456789").unwrap()
    }

    fn tiny_engine() -> EngineHandle {
        EngineHandle::spawn(
            crate::engine::tests::tiny_model(),
            crate::tokenizer::tests::tiny(),
            EngineConfig {
                block_size: 4,
                prefix_caching: false,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn bounds(e: &EngineHandle, prompt_tokens: usize) -> PullBounds {
        PullBounds {
            prompt_tokens,
            pool_blocks: e.num_blocks,
            block_size: e.block_size,
            floats_per_token: e.kv_floats_per_token,
        }
    }

    fn remote(port: u16, transfer_id: &str) -> RemoteKv {
        RemoteKv {
            host: "127.0.0.1".into(),
            port,
            transfer_id: transfer_id.into(),
            block_ids: Vec::new(),
            num_tokens: None,
            engine_id: None,
        }
    }

    /// Runs a prefill that keeps its KV; returns the transfer id.
    async fn lease(e: &EngineHandle, prompt: Vec<u32>) -> String {
        let (_g, mut rx) = e
            .submit(GenerateRequest {
                request_id: "r".into(),
                prompt,
                params: GenParams {
                    sampling: SamplingParams {
                        temperature: 0.0,
                        ..Default::default()
                    },
                    max_tokens: 1,
                    ignore_eos: true,
                    ..Default::default()
                },
                remote_decode: true,
                imported: None,
                cache_salt: None,
                tenant: None,
            })
            .unwrap();
        while let Some(ev) = rx.recv().await {
            if let Event::Done(f) = ev {
                return f.kv_lease.expect("lease").transfer_id;
            }
        }
        panic!("no Done event");
    }

    async fn holder(engine: &EngineHandle) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(serve(l, engine.clone(), key()));
        port
    }

    #[tokio::test]
    async fn bad_clients_get_errors_and_the_listener_keeps_serving() {
        let engine = tiny_engine();
        let port = holder(&engine).await;
        // Garbage, then an oversized request claim: both just close.
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"garbage").await.unwrap();
        drop(s);
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(&[1]).await.unwrap();
        s.write_all(&u64::MAX.to_le_bytes()).await.unwrap();
        drop(s);
        // An authenticated puller asking for an unknown transfer id gets a clean error.
        let puller = TcpPuller::new(Duration::from_secs(5), Some(key()));
        let err = puller
            .pull(&remote(port, "nope"), bounds(&engine, 8))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unknown or expired"), "{err}");
        // Nothing listening: a clean error too.
        assert!(puller
            .pull(&remote(1, "nope"), bounds(&engine, 8))
            .await
            .is_err());
        // Without a fleet key an engine never pulls.
        let keyless = TcpPuller::new(Duration::from_secs(5), None);
        let err = keyless
            .pull(&remote(port, "nope"), bounds(&engine, 8))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no fleet key"), "{err}");
    }

    /// Reads everything the holder sends until it closes (bounded by the test's own deadline).
    async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .expect("the holder closes the connection")
            .ok();
        out
    }

    #[tokio::test]
    async fn an_unauthenticated_client_cannot_pull_and_the_lease_stays_for_the_fleet() {
        let engine = tiny_engine();
        let port = holder(&engine).await;
        let prompt: Vec<u32> = (0..19).map(|i| 3 + i * 7 % 250).collect();
        let id = lease(&engine, prompt.clone()).await;
        let outsider = FleetKey::from_bytes(b"not-the-fleet-key-at-all").unwrap();
        for (auth_key, device) in [(Some(&outsider), None), (None, Some(host_id()))] {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let (kind, nonce) = read_frame_limited(&mut s, 64).await.unwrap();
            assert_eq!((kind, nonce.len()), (FrameKind::Challenge, NONCE_LEN));
            let auth = match auth_key {
                Some(k) => hex(&k.mac(
                    PULL_DOMAIN,
                    &challenge_parts(&nonce, &id, device.as_deref()),
                )),
                None => "00".repeat(32),
            };
            let req = serde_json::to_vec(&Request {
                transfer_id: id.clone(),
                device_host_id: device,
                auth,
            })
            .unwrap();
            write_frame(&mut s, FrameKind::Request, &req).await.unwrap();
            // Disconnected without a byte: no header, no error message, nothing about the id.
            assert!(read_to_close(&mut s).await.is_empty());
        }
        // A right answer for a *previous* connection's nonce fails too (replay).
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = read_frame_limited(&mut s, 64).await.unwrap();
        let stale = hex(&key().mac(PULL_DOMAIN, &challenge_parts(&[0; 32], &id, None)));
        let req = serde_json::to_vec(&Request {
            transfer_id: id.clone(),
            device_host_id: None,
            auth: stale,
        })
        .unwrap();
        write_frame(&mut s, FrameKind::Request, &req).await.unwrap();
        assert!(read_to_close(&mut s).await.is_empty());
        // The lease is intact for the real puller.
        let puller = TcpPuller::new(Duration::from_secs(5), Some(key()));
        let kv = puller
            .pull(&remote(port, &id), bounds(&engine, prompt.len()))
            .await
            .unwrap();
        assert_eq!(kv.num_tokens, prompt.len());
        let KvPayload::Host(blocks) = kv.payload else {
            panic!("host-staged pull expected");
        };
        assert_eq!(blocks.len(), 5);
    }

    #[tokio::test]
    async fn the_device_offer_goes_only_to_authenticated_pullers() {
        // A holder whose pool is shared through CUDA IPC on "host-a" (what is under test is who gets the offer).
        let mut engine = tiny_engine();
        engine.device_pool = Some(Arc::new(DevicePool {
            host_id: "host-a".into(),
            k_handle: "00".repeat(64),
            v_handle: "11".repeat(64),
            n_layers: 2,
            n_kv_heads: 2,
            head_dim: 8,
            block_size: 4,
            num_blocks: engine.num_blocks,
        }));
        let port = holder(&engine).await;
        let prompt: Vec<u32> = (0..19).map(|i| 3 + i * 5 % 250).collect();
        let id = lease(&engine, prompt.clone()).await;
        // Knowing the host id (the world-readable boot id) is not enough.
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (_, nonce) = read_frame_limited(&mut s, 64).await.unwrap();
        let outsider = FleetKey::from_bytes(b"not-the-fleet-key-at-all").unwrap();
        let parts = challenge_parts(&nonce, &id, Some("host-a"));
        let req = serde_json::to_vec(&Request {
            transfer_id: id.clone(),
            device_host_id: Some("host-a".into()),
            auth: hex(&outsider.mac(PULL_DOMAIN, &parts)),
        })
        .unwrap();
        write_frame(&mut s, FrameKind::Request, &req).await.unwrap();
        assert!(read_to_close(&mut s).await.is_empty(), "no IPC handles");
        // The fleet's puller on that host gets the offer for the intact lease.
        let mut puller = TcpPuller::new(Duration::from_secs(5), Some(key()));
        puller.device = Some(DeviceImport {
            host_id: "host-a".into(),
            stats: engine.stats.clone(),
        });
        let kv = puller
            .pull(&remote(port, &id), bounds(&engine, prompt.len()))
            .await
            .unwrap();
        assert!(matches!(kv.payload, KvPayload::Device(_)));
        assert_eq!(kv.prompt_digest, crate::transfer::prompt_digest(&prompt));
    }

    /// A hostile holder: sends a challenge, reads the request, then runs `script` on the socket.
    async fn fake_holder<F, Fut>(script: F) -> u16
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            write_frame(&mut s, FrameKind::Challenge, &[1; NONCE_LEN])
                .await
                .unwrap();
            let _ = read_frame_limited(&mut s, MAX_REQUEST).await.unwrap();
            script(s).await;
        });
        port
    }

    fn header(block_size: usize, num_tokens: usize, num_blocks: usize, floats: usize) -> Vec<u8> {
        serde_json::to_vec(&Header {
            block_size,
            num_tokens,
            prompt_sha256: "00".repeat(32),
            num_blocks,
            floats_per_block: floats,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_holder_claiming_2_pow_57_blocks_fails_the_pull_without_allocating() {
        let engine = tiny_engine();
        let puller = TcpPuller::new(Duration::from_secs(10), Some(key()));
        let fpb = engine.kv_floats_per_token * 4;
        // Consistent with its own token count, and inconsistent: both far past the request's prompt.
        for (tokens, blocks) in [(4usize << 57, 1usize << 57), (19, 1 << 57)] {
            let port = fake_holder(move |mut s| async move {
                let h = header(4, tokens, blocks, fpb);
                write_frame(&mut s, FrameKind::Header, &h).await.unwrap();
                let _ = s.flush().await;
                let _ = read_to_close(&mut s).await;
            })
            .await;
            let err = puller
                .pull(&remote(port, "t"), bounds(&engine, 19))
                .await
                .unwrap_err();
            assert!(err.to_string().contains("holder header rejected"), "{err}");
        }
        // The same for a device offer.
        let port = fake_holder(move |mut s| async move {
            let h = serde_json::json!({"block_size": 4, "num_tokens": 4usize << 57, "prompt_sha256": "00",
                "block_ids": [0, 1], "pool": {"host_id": "h", "k_handle": "", "v_handle": "",
                "n_layers": 2, "n_kv_heads": 2, "head_dim": 8, "block_size": 4, "num_blocks": 9}});
            let h = serde_json::to_vec(&h).unwrap();
            write_frame(&mut s, FrameKind::DeviceHeader, &h)
                .await
                .unwrap();
            let _ = read_to_close(&mut s).await;
        })
        .await;
        let err = puller
            .pull(&remote(port, "t"), bounds(&engine, 19))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("holder header rejected"), "{err}");
    }

    #[tokio::test]
    async fn a_holder_sending_past_the_expected_size_fails_the_pull() {
        let engine = tiny_engine();
        let puller = TcpPuller::new(Duration::from_secs(10), Some(key()));
        let fpb = engine.kv_floats_per_token * 4;
        let block = vec![0u8; fpb * 4];
        // 1. Right header, then blocks without end: the pull stops at the first block past the fifth.
        let b = block.clone();
        let port = fake_holder(move |mut s| async move {
            write_frame(&mut s, FrameKind::Header, &header(4, 19, 5, fpb))
                .await
                .unwrap();
            // Up to 64 MiB of valid frames; the puller hangs up long before.
            for _ in 0..64 * 1024 * 1024 / b.len() {
                if write_frame(&mut s, FrameKind::Block, &b).await.is_err() {
                    return;
                }
            }
        })
        .await;
        let err = puller
            .pull(&remote(port, "t"), bounds(&engine, 19))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
        // 2. A block frame claiming 2 GiB is refused on its length, before any of it is read.
        let port = fake_holder(move |mut s| async move {
            write_frame(&mut s, FrameKind::Header, &header(4, 19, 5, fpb))
                .await
                .unwrap();
            let _ = s.write_u8(FrameKind::Block as u8).await;
            let _ = s.write_u64_le(2 << 30).await;
            let _ = s.write_all(&[0; 4096]).await;
            let _ = read_to_close(&mut s).await;
        })
        .await;
        let err = puller
            .pull(&remote(port, "t"), bounds(&engine, 19))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
        // 3. Blocks of another model's size (bigger floats per block) are refused at the header.
        let port = fake_holder(move |mut s| async move {
            write_frame(&mut s, FrameKind::Header, &header(4, 19, 5, fpb * 1000))
                .await
                .unwrap();
            let _ = read_to_close(&mut s).await;
        })
        .await;
        let err = puller
            .pull(&remote(port, "t"), bounds(&engine, 19))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("floats"), "{err}");
    }
}
