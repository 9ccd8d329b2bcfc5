//! The NVIDIA GPU backend (feature `cuda`): bf16 weights with f32 accumulation, a paged KV pool on the device
//! indexed by the same block ids as [`crate::kv::block_manager::BlockManager`], our own paged decode-attention
//! kernel, cuBLAS for the dense projections and prefill attention, and CUDA graphs for decode steps.
//!
//! Kernels are CUDA C (`native-decode/kernels/*.cu`, embedded with `include_str!`) compiled at start-up by NVRTC
//! for the detected GPU. Every CUDA library is loaded at run time, so this module builds on machines without CUDA;
//! [`GpuDevice::open`] checks each library before touching it and reports absence as
//! [`CudaError::LibraryMissing`], which lets `--device auto` fall back to the CPU.
//!
//! Entry point: [`CudaModel`] (`forward` mirrors [`crate::model::Model::forward`]).

// The one place in the crate (besides `cpu_ops.rs`) where `unsafe` is allowed: kernel launches, raw cuBLAS calls,
// raw device pointers captured in CUDA graphs and CUDA IPC handles have no safe wrappers.
// Each unsafe block states the invariant it relies on.
#![allow(unsafe_code)]

pub mod bench;
mod blas;
mod buffer;
mod device;
mod error;
mod ipc;
mod kernels;
mod kv;
mod model;
mod weights;

pub use device::{GpuDevice, LibraryReport};
pub use error::CudaError;
pub use kv::GpuKvPool;
pub use model::{CudaModel, CudaModelOptions, GreedyToken};
pub use weights::{hf_config, GpuWeights};

/// Result of this backend.
pub type CudaResult<T> = std::result::Result<T, CudaError>;
