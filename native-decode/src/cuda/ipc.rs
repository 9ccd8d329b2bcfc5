//! CUDA IPC: sharing this engine's KV pool with other processes on the host, and mapping theirs.
//!
//! A prefill engine exports one handle per pool allocation (K and V) once at start-up; a decode engine maps them
//! on first use (cached per handle) and copies blocks out with the `kv_import` kernel. Mapping a pool that lives
//! on another GPU enables peer access lazily (`CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS`); where the GPUs cannot reach
//! each other, opening fails and the caller falls back to the host-staged path.

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext};

use super::{CudaError, CudaResult};

pub(crate) const HANDLE_BYTES: usize = 64;

/// The IPC handle of the allocation that starts at `ptr` (plain `cuMemAlloc` memory only).
pub(crate) fn mem_handle(ctx: &Arc<CudaContext>, ptr: u64) -> CudaResult<[u8; HANDLE_BYTES]> {
    ctx.bind_to_thread()?;
    let mut h = sys::CUipcMemHandle {
        reserved: [0; HANDLE_BYTES],
    };
    // SAFETY: `h` is a valid out-parameter; `ptr` is the base of a live allocation of this context.
    unsafe { sys::cuIpcGetMemHandle(&mut h, ptr) }.result()?;
    Ok(h.reserved.map(|c| c as u8))
}

/// Lets `ctx` read memory of `peer`'s device directly (benchmarks of the same-process peer path).
pub(crate) fn enable_peer_access(
    ctx: &Arc<CudaContext>,
    peer: &Arc<CudaContext>,
) -> CudaResult<()> {
    ctx.bind_to_thread()?;
    // SAFETY: both contexts are alive; enabling twice reports PEER_ACCESS_ALREADY_ENABLED, which is fine.
    match unsafe { sys::cuCtxEnablePeerAccess(peer.cu_ctx(), 0) } {
        sys::CUresult::CUDA_SUCCESS | sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => {
            Ok(())
        }
        e => Err(CudaError::Ipc(format!("peer access: {e:?}"))),
    }
}

/// Another process's allocation mapped into ours; unmapped on drop.
pub(crate) struct Mapping {
    ctx: Arc<CudaContext>,
    pub(crate) ptr: u64,
}

impl Mapping {
    pub(crate) fn open(ctx: &Arc<CudaContext>, handle: &[u8; HANDLE_BYTES]) -> CudaResult<Self> {
        ctx.bind_to_thread()?;
        let h = sys::CUipcMemHandle {
            reserved: handle.map(|b| b as _),
        };
        let mut ptr = 0;
        let flags = sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32;
        // SAFETY: `ptr` is a valid out-parameter; the driver validates the handle and reports a bad one.
        unsafe { sys::cuIpcOpenMemHandle_v2(&mut ptr, h, flags) }
            .result()
            .map_err(|e| CudaError::Ipc(format!("cannot map the holder's KV pool: {e}")))?;
        Ok(Self {
            ctx: ctx.clone(),
            ptr,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from `cuIpcOpenMemHandle` and is closed once; copies that read it were
            // synchronized before the mapping could be dropped.
            let _ = unsafe { sys::cuIpcCloseMemHandle(self.ptr) }.result();
        }
    }
}

pub(crate) fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn from_hex(s: &str) -> CudaResult<[u8; HANDLE_BYTES]> {
    let bad = || CudaError::Ipc(format!("malformed IPC handle `{s}`"));
    if s.len() != 2 * HANDLE_BYTES || !s.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; HANDLE_BYTES];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_through_hex() {
        let h: [u8; HANDLE_BYTES] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(from_hex(&to_hex(&h)).unwrap(), h);
        assert!(from_hex("zz").is_err());
        assert!(from_hex(&"g".repeat(128)).is_err());
    }
}
