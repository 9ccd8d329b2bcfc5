//! Device buffers addressed by raw device pointers.
//!
//! Kernels and cuBLAS take raw `u64` device addresses: CUDA graphs capture addresses anyway, and offsets into
//! fused weights, KV layers and per-step regions are plain arithmetic. The owning [`CudaSlice`] lives in the
//! buffer, so an address is valid for as long as the [`DevBuf`] that produced it.

use std::marker::PhantomData;
use std::mem::size_of;
use std::sync::Arc;

use cudarc::driver::{
    result, CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits,
};

use super::{CudaError, CudaResult};

pub(crate) struct DevBuf<T> {
    owner: Owner<T>,
    ptr: u64,
    len: usize,
}

enum Owner<T> {
    /// cudarc's stream-ordered allocation (freed by the slice).
    Pool(#[allow(dead_code)] CudaSlice<T>),
    /// Plain `cuMemAlloc` memory: the only kind CUDA IPC can share with another process. Freed in `Drop`.
    Plain(Arc<CudaContext>, PhantomData<T>),
}

impl<T> Drop for DevBuf<T> {
    fn drop(&mut self) {
        if let Owner::Plain(ctx, _) = &self.owner {
            if ctx.bind_to_thread().is_ok() {
                // SAFETY: `ptr` came from `malloc_sync` in `zeros_shareable` and is freed exactly once, here;
                // every kernel that used it ran on a stream the owner synchronized before dropping the buffer.
                if let Err(e) = unsafe { result::free_sync(self.ptr) } {
                    tracing::warn!("freeing a shareable device buffer failed: {e}");
                }
            }
        }
    }
}

impl<T: DeviceRepr + ValidAsZeroBits> DevBuf<T> {
    /// A zeroed buffer of `len` elements (at least one is allocated so the address is never null).
    pub(crate) fn zeros(stream: &Arc<CudaStream>, len: usize) -> CudaResult<Self> {
        let slice = stream.alloc_zeros::<T>(len.max(1))?;
        let ptr = {
            let (ptr, _sync) = slice.device_ptr(stream);
            ptr
        };
        Ok(Self {
            owner: Owner::Pool(slice),
            ptr,
            len,
        })
    }

    /// A zeroed buffer in plain `cuMemAlloc` memory, which [`ipc_handle`](DevBuf::ipc_handle) can share.
    pub(crate) fn zeros_shareable(
        ctx: &Arc<CudaContext>,
        stream: &CudaStream,
        len: usize,
    ) -> CudaResult<Self> {
        ctx.bind_to_thread()?;
        let bytes = len.max(1) * size_of::<T>();
        // SAFETY: a fresh allocation of `bytes`; ownership passes to the returned buffer, which frees it.
        let ptr = unsafe { result::malloc_sync(bytes) }?;
        let b = Self {
            owner: Owner::Plain(ctx.clone(), PhantomData),
            ptr,
            len,
        };
        // SAFETY: the range is the allocation just made.
        unsafe { result::memset_d8_async(ptr, 0, bytes, stream.cu_stream()) }?;
        stream.synchronize()?;
        Ok(b)
    }

    /// A buffer holding a copy of `data`.
    pub(crate) fn from_host(stream: &Arc<CudaStream>, data: &[T]) -> CudaResult<Self> {
        let b = Self::zeros(stream, data.len())?;
        b.upload(stream, 0, data)?;
        Ok(b)
    }
}

impl<T> DevBuf<T> {
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The address of element `i`.
    pub(crate) fn at(&self, i: usize) -> u64 {
        self.ptr + (i * size_of::<T>()) as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn bytes(&self) -> usize {
        self.len * size_of::<T>()
    }

    fn check(&self, start: usize, n: usize) -> CudaResult<()> {
        if start + n > self.len {
            return Err(CudaError::InvalidStep(format!(
                "copy of {n} elements at {start} overflows a device buffer of {}",
                self.len
            )));
        }
        Ok(())
    }

    /// Copies `data` to elements `start..start + data.len()` (stream-ordered; `data` may be dropped on return,
    /// as pageable copies are staged before the call returns).
    pub(crate) fn upload(&self, stream: &CudaStream, start: usize, data: &[T]) -> CudaResult<()> {
        self.check(start, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: the destination range is inside this live allocation (checked above).
        unsafe { result::memcpy_htod_async(self.at(start), data, stream.cu_stream()) }?;
        Ok(())
    }

    /// Copies elements `start..start + out.len()` to the host and waits for the stream.
    pub(crate) fn download(
        &self,
        stream: &CudaStream,
        start: usize,
        out: &mut [T],
    ) -> CudaResult<()> {
        self.check(start, out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: the source range is inside this live allocation; we synchronize before `out` is read.
        unsafe { result::memcpy_dtoh_async(out, self.at(start), stream.cu_stream()) }?;
        stream.synchronize()?;
        Ok(())
    }
}
