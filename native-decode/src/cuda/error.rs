//! The backend's error type.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;

/// What can go wrong on the GPU path. `LibraryMissing` and `NoDevice` mean "no usable GPU here" (fall back to the
/// CPU); the others are bugs or misuse.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA library `{lib}` not found (searched the dynamic loader path for {candidates})")]
    LibraryMissing {
        lib: &'static str,
        candidates: String,
    },
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    #[error("cuBLAS: {0:?}")]
    Blas(CublasError),
    #[error("NVRTC could not compile the kernels: {0}")]
    Compile(String),
    #[error("not supported by the CUDA backend: {0}")]
    Unsupported(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("CUDA IPC: {0}")]
    Ipc(String),
    #[error("invalid step: {0}")]
    InvalidStep(String),
    #[error(transparent)]
    Model(#[from] crate::Error),
}

impl From<CublasError> for CudaError {
    fn from(e: CublasError) -> Self {
        Self::Blas(e)
    }
}
