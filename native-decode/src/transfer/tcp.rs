//! KV pull over TCP: a listener on the prefill engine and the matching [`KvPuller`].
//!
//! Two ways to move the blocks, chosen per pull by the holder:
//! * host-staged: the holder copies the blocks out (GPU → host if needed) and streams them as f32 frames;
//! * device-to-device: when both engines run on GPUs of the same host, the holder answers with a
//!   [`DeviceHeader`] naming its CUDA-IPC-shared pool and the block ids; the puller's GPU copies the blocks
//!   straight out of that pool (NVLink/PCIe peer reads) and then sends [`FrameKind::Release`]. The holder keeps
//!   the blocks reserved until then, or until the connection drops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::BufWriter;
use tokio::net::{TcpListener, TcpStream};

use super::frame::{
    bytes_to_f32s, f32s_to_bytes, read_frame, read_frame_limited, write_frame, FrameKind,
};
use super::{BoxFuture, KvPuller, RemoteKv};
use crate::engine::types::{DeviceKv, DevicePool, ImportDone, ImportedKv, KvPayload};
use crate::engine::EngineHandle;
use crate::error::{Error, Result};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REQUEST: u64 = 64 * 1024;

/// Longest a holder keeps checked-out blocks for a device copy (the puller normally releases within
/// milliseconds of admitting the request; this only bounds a stuck puller that keeps its connection open).
const DEVICE_HOLD: Duration = Duration::from_secs(600);

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    transfer_id: String,
    /// Set by a GPU puller: the host it runs on, so the holder can offer an in-place device copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_host_id: Option<String>,
}

/// Holder → puller for a device-to-device copy.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceHeader {
    pub block_size: usize,
    pub num_tokens: usize,
    pub block_ids: Vec<u32>,
    pub pool: DevicePool,
}

/// Describes the blocks that follow.
#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub block_size: usize,
    pub num_tokens: usize,
    pub num_blocks: usize,
    pub floats_per_block: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct ErrorMsg {
    message: String,
}

/// Serves pulls until the listener fails. Each connection asks for one transfer id; the blocks are freed on
/// this side as soon as they are handed out.
pub async fn serve(listener: TcpListener, engine: EngineHandle) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("kv listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(sock, &engine).await {
                tracing::warn!(%peer, "kv pull failed: {e}");
            }
        });
    }
}

async fn serve_one(sock: TcpStream, engine: &EngineHandle) -> Result<()> {
    let _ = sock.set_nodelay(true);
    let (mut rd, wr) = sock.into_split();
    let mut wr = BufWriter::new(wr);
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
    if let Some(pool) = engine
        .device_pool
        .as_ref()
        .filter(|p| req.device_host_id.as_deref() == Some(p.host_id.as_str()))
    {
        if let Some((kv, _release)) = engine.checkout_kv(&req.transfer_id).await {
            let h = DeviceHeader {
                block_size: kv.block_size,
                num_tokens: kv.num_tokens,
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
            message: format!("unknown or expired transfer id `{}`", req.transfer_id),
        })
        .unwrap_or_default();
        write_frame(&mut wr, FrameKind::Error, &msg).await?;
        return flush(&mut wr).await;
    };
    let header = Header {
        block_size: kv.block_size,
        num_tokens: kv.num_tokens,
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
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            device: None,
        }
    }

    async fn pull_inner(&self, remote: &RemoteKv) -> Result<ImportedKv> {
        let sock = TcpStream::connect((remote.host.as_str(), remote.port))
            .await
            .map_err(|e| {
                Error::Transfer(format!("connect {}:{}: {e}", remote.host, remote.port))
            })?;
        let _ = sock.set_nodelay(true);
        let (mut rd, mut wr) = sock.into_split();
        let device_host_id = self
            .device
            .as_ref()
            .filter(|d| !d.stats.kv_device_broken.load(Ordering::Relaxed) && !d.host_id.is_empty())
            .map(|d| d.host_id.clone());
        let req = serde_json::to_vec(&Request {
            transfer_id: remote.transfer_id.clone(),
            device_host_id,
        })
        .map_err(|e| Error::Transfer(e.to_string()))?;
        write_frame(&mut wr, FrameKind::Request, &req).await?;
        let (kind, payload) = read_frame(&mut rd).await?;
        let header: Header = match kind {
            FrameKind::Header => serde_json::from_slice(&payload)
                .map_err(|e| Error::Transfer(format!("header: {e}")))?,
            FrameKind::DeviceHeader => {
                let h: DeviceHeader = serde_json::from_slice(&payload)
                    .map_err(|e| Error::Transfer(format!("device header: {e}")))?;
                if h.block_size == 0 || h.block_ids.len() != h.num_tokens.div_ceil(h.block_size) {
                    return Err(Error::Transfer("inconsistent device header".into()));
                }
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
        if header.block_size == 0
            || header.num_blocks != header.num_tokens.div_ceil(header.block_size)
        {
            return Err(Error::Transfer("inconsistent header".into()));
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
            let (kind, payload) = read_frame(&mut rd).await?;
            if kind != FrameKind::Block {
                return Err(Error::Transfer(format!("expected a block, got {kind:?}")));
            }
            let b = bytes_to_f32s(&payload)?;
            if b.len() != header.floats_per_block {
                return Err(Error::Transfer("block has the wrong size".into()));
            }
            blocks.push(b);
        }
        let (kind, _) = read_frame(&mut rd).await?;
        if kind != FrameKind::End {
            return Err(Error::Transfer(format!("expected end, got {kind:?}")));
        }
        Ok(ImportedKv {
            block_size: header.block_size,
            num_tokens: header.num_tokens,
            payload: KvPayload::Host(blocks),
        })
    }
}

impl KvPuller for TcpPuller {
    fn pull<'a>(&'a self, remote: &'a RemoteKv) -> BoxFuture<'a, Result<ImportedKv>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.pull_inner(remote))
                .await
                .map_err(|_| Error::Transfer(format!("pull timed out after {:?}", self.timeout)))?
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::engine::EngineConfig;

    #[tokio::test]
    async fn bad_clients_get_errors_and_the_listener_keeps_serving() {
        let engine = EngineHandle::spawn(
            crate::engine::tests::tiny_model(),
            crate::tokenizer::tests::tiny(),
            EngineConfig::default(),
        )
        .unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(serve(l, engine));
        // Garbage, then an oversized request claim: both just close.
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"garbage").await.unwrap();
        drop(s);
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(&[1]).await.unwrap();
        s.write_all(&u64::MAX.to_le_bytes()).await.unwrap();
        drop(s);
        // An unknown transfer id is a clean error.
        let puller = TcpPuller::new(Duration::from_secs(5));
        let remote = RemoteKv {
            host: "127.0.0.1".into(),
            port,
            transfer_id: "nope".into(),
            block_ids: vec![1],
            num_tokens: Some(4),
            engine_id: None,
        };
        let err = puller.pull(&remote).await.unwrap_err();
        assert!(err.to_string().contains("unknown or expired"), "{err}");
        // Nothing listening: a clean error too.
        let closed = RemoteKv { port: 1, ..remote };
        assert!(puller.pull(&closed).await.is_err());
    }
}
