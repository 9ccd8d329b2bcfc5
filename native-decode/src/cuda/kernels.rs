//! Handles to the compiled kernels and their launch wrappers (argument order mirrors the `.cu` signatures).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaFunction, CudaModule, CudaStream};

use super::{CudaError, CudaResult};

/// A kernel argument: a device address or a scalar.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg {
    Ptr(u64),
    I32(i32),
    U64(u64),
    F32(f32),
}

/// Head dimensions and GQA group sizes the decode kernel is instantiated for (`attn_decode_<HD>_<G>`).
pub(crate) const DECODE_HEAD_DIMS: [usize; 2] = [64, 128];
pub(crate) const DECODE_MAX_GROUP: usize = 8;
pub(crate) const DECODE_THREADS: u32 = 128;
/// Dynamic shared memory of the decode kernel for `head_dim`: 3 pipeline stages of K and V tiles of
/// 4096 / head_dim tokens, rows padded by 8 elements (see `DecodeTile` in `attention.cu`).
pub(crate) fn decode_smem(head_dim: usize) -> u32 {
    (3 * (4096 / head_dim) * (head_dim + 8) * 2 * 2) as u32
}

pub(crate) struct Kernels {
    pub fill_random_bf16: CudaFunction,
    pub fill_const_bf16: CudaFunction,
    pub copy_u4: CudaFunction,
    pub embed: CudaFunction,
    pub rmsnorm: CudaFunction,
    pub rope_kv: CudaFunction,
    pub swiglu: CudaFunction,
    pub argmax_logprob: CudaFunction,
    pub sample_token: CudaFunction,
    pub attn_combine: CudaFunction,
    pub gather_kv: CudaFunction,
    pub causal_softmax: CudaFunction,
    pub kv_import: CudaFunction,
    /// `[head-dim index][group - 1]`
    attn_decode: Vec<Vec<CudaFunction>>,
}

impl Kernels {
    pub(crate) fn load(m: &Arc<CudaModule>) -> CudaResult<Self> {
        let f = |n: &str| m.load_function(n);
        let attn_decode = DECODE_HEAD_DIMS
            .iter()
            .map(|hd| {
                (1..=DECODE_MAX_GROUP)
                    .map(|g| f(&format!("attn_decode_{hd}_{g}")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The decode kernels use more than the default 48 KiB of dynamic shared memory.
        for (hd, fs) in DECODE_HEAD_DIMS.iter().zip(&attn_decode) {
            for f in fs {
                f.set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    decode_smem(*hd) as i32,
                )?;
            }
        }
        Ok(Self {
            fill_random_bf16: f("fill_random_bf16")?,
            fill_const_bf16: f("fill_const_bf16")?,
            copy_u4: f("copy_u4")?,
            embed: f("embed")?,
            rmsnorm: f("rmsnorm")?,
            rope_kv: f("rope_kv")?,
            swiglu: f("swiglu")?,
            argmax_logprob: f("argmax_logprob")?,
            sample_token: f("sample_token")?,
            attn_combine: f("attn_combine")?,
            gather_kv: f("gather_kv")?,
            causal_softmax: f("causal_softmax")?,
            kv_import: f("kv_import")?,
            attn_decode,
        })
    }

    /// The decode-attention kernel for this head dimension and group size.
    pub(crate) fn attn_decode(&self, head_dim: usize, group: usize) -> CudaResult<&CudaFunction> {
        let i = DECODE_HEAD_DIMS.iter().position(|&d| d == head_dim);
        match (i, group) {
            (Some(i), 1..=DECODE_MAX_GROUP) => Ok(&self.attn_decode[i][group - 1]),
            _ => Err(CudaError::Unsupported(format!(
                "decode attention for head_dim {head_dim} with {group} query heads per KV head \
                 (supported: head_dim {DECODE_HEAD_DIMS:?}, 1..={DECODE_MAX_GROUP} heads per KV head)"
            ))),
        }
    }
}

/// Launches `f` on `stream`.
pub(crate) fn launch(
    stream: &CudaStream,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: u32,
    args: &[Arg],
) -> CudaResult<()> {
    launch_smem(stream, f, grid, block, 0, args)
}

/// Launches `f` on `stream` with `smem` bytes of dynamic shared memory.
pub(crate) fn launch_smem(
    stream: &CudaStream,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    args: &[Arg],
) -> CudaResult<()> {
    // Every parameter is at most 8 bytes; a scalar sits in the low bytes of its slot (little-endian), which is
    // where the driver reads a parameter of its declared size.
    let mut slots: Vec<u64> = args
        .iter()
        .map(|a| match *a {
            Arg::Ptr(p) | Arg::U64(p) => p,
            Arg::I32(v) => v as u32 as u64,
            Arg::F32(v) => v.to_bits() as u64,
        })
        .collect();
    let mut params: Vec<*mut c_void> = slots
        .iter_mut()
        .map(|s| s as *mut u64 as *mut c_void)
        .collect();
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        return Ok(());
    }
    // SAFETY: `params` points at `slots`, alive until the call returns (the driver copies parameters at launch);
    // callers pass arguments matching the kernel's signature and addresses of live device buffers.
    unsafe {
        result::launch_kernel(
            f.cu_function(),
            grid,
            (block, 1, 1),
            smem,
            stream.cu_stream(),
            &mut params,
        )
    }?;
    Ok(())
}

/// A grid-stride launch of `n` items (256 threads a block, capped grid).
pub(crate) fn launch_1d(
    stream: &CudaStream,
    f: &CudaFunction,
    n: usize,
    args: &[Arg],
) -> CudaResult<()> {
    let blocks = n.div_ceil(256).clamp(1, 65_535 * 8) as u32;
    launch(stream, f, (blocks, 1, 1), 256, args)
}
