//! Device buffers addressed by raw device pointers.
//!
//! Kernels and cuBLAS take raw `u64` device addresses: CUDA graphs capture addresses anyway, and offsets into
//! fused weights, KV layers and per-step regions are plain arithmetic. The owning [`CudaSlice`] lives in the
//! buffer, so an address is valid for as long as the [`DevBuf`] that produced it.

use std::mem::size_of;
use std::sync::Arc;

use cudarc::driver::{result, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits};

use super::{CudaError, CudaResult};

pub(crate) struct DevBuf<T> {
    _slice: CudaSlice<T>,
    ptr: u64,
    len: usize,
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
            _slice: slice,
            ptr,
            len,
        })
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
