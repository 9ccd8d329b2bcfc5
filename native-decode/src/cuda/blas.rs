//! cuBLAS calls: bf16 inputs, f32 compute (tensor cores), f32 or bf16 outputs.

use std::ffi::{c_int, c_void};
use std::sync::Arc;

use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cublasSetWorkspace_v2, cudaDataType,
};
use cudarc::cublas::{result as blas_result, CudaBlas};
use cudarc::driver::CudaStream;

use super::buffer::DevBuf;
use super::CudaResult;

/// Element type of a GEMM operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Bf16,
    F32,
}

impl Ty {
    fn cuda(self) -> cudaDataType {
        match self {
            Ty::Bf16 => cudaDataType::CUDA_R_16BF,
            Ty::F32 => cudaDataType::CUDA_R_32F,
        }
    }
}

/// One strided-batched GEMM in cuBLAS' column-major terms: `C = alpha * op(A) · op(B) + beta * C`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: u64,
    pub lda: usize,
    pub stride_a: usize,
    pub a_ty: Ty,
    pub b: u64,
    pub ldb: usize,
    pub stride_b: usize,
    pub b_ty: Ty,
    pub beta: f32,
    pub c: u64,
    pub ldc: usize,
    pub stride_c: usize,
    pub c_ty: Ty,
    pub batch: usize,
}

pub(crate) struct Blas {
    handle: CudaBlas,
    _workspace: DevBuf<u8>,
}

const WORKSPACE_BYTES: usize = 64 << 20;

fn op(t: bool) -> cublasOperation_t {
    if t {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

impl Blas {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> CudaResult<Self> {
        let handle = CudaBlas::new(stream.clone())?;
        let workspace = DevBuf::<u8>::zeros(stream, WORKSPACE_BYTES)?;
        // SAFETY: the workspace outlives the handle (both owned here; fields drop in declaration order, handle
        // first). A user workspace keeps cuBLAS from allocating during graph capture.
        unsafe {
            cublasSetWorkspace_v2(
                *handle.handle(),
                workspace.ptr() as *mut c_void,
                WORKSPACE_BYTES,
            )
            .result()?;
        }
        Ok(Self {
            handle,
            _workspace: workspace,
        })
    }

    /// Row-major `y[n, m] = x[n, k] · w[m, k]^T + beta · y` (x, w bf16; y f32 or bf16).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear(
        &self,
        x: u64,
        w: u64,
        y: u64,
        y_ty: Ty,
        n: usize,
        m: usize,
        k: usize,
        beta: f32,
    ) -> CudaResult<()> {
        self.gemm(&Gemm {
            trans_a: true,
            trans_b: false,
            m,
            n,
            k,
            alpha: 1.0,
            a: w,
            lda: k,
            stride_a: 0,
            a_ty: Ty::Bf16,
            b: x,
            ldb: k,
            stride_b: 0,
            b_ty: Ty::Bf16,
            beta,
            c: y,
            ldc: m,
            stride_c: 0,
            c_ty: y_ty,
            batch: 1,
        })
    }

    pub(crate) fn gemm(&self, g: &Gemm) -> CudaResult<()> {
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return Ok(());
        }
        let i = |v: usize| v as c_int;
        let (alpha, beta) = (g.alpha, g.beta);
        // SAFETY: callers pass addresses of live device buffers large enough for the described matrices; alpha
        // and beta are host scalars (the handle's default pointer mode) read during the call.
        unsafe {
            if g.batch == 1 {
                blas_result::gemm_ex(
                    *self.handle.handle(),
                    op(g.trans_a),
                    op(g.trans_b),
                    i(g.m),
                    i(g.n),
                    i(g.k),
                    &alpha as *const f32 as *const c_void,
                    g.a as *const c_void,
                    g.a_ty.cuda(),
                    i(g.lda),
                    g.b as *const c_void,
                    g.b_ty.cuda(),
                    i(g.ldb),
                    &beta as *const f32 as *const c_void,
                    g.c as *mut c_void,
                    g.c_ty.cuda(),
                    i(g.ldc),
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )?;
            } else {
                blas_result::gemm_strided_batched_ex(
                    *self.handle.handle(),
                    op(g.trans_a),
                    op(g.trans_b),
                    i(g.m),
                    i(g.n),
                    i(g.k),
                    &alpha as *const f32 as *const c_void,
                    g.a as *const c_void,
                    g.a_ty.cuda(),
                    i(g.lda),
                    g.stride_a as i64,
                    g.b as *const c_void,
                    g.b_ty.cuda(),
                    i(g.ldb),
                    g.stride_b as i64,
                    &beta as *const f32 as *const c_void,
                    g.c as *mut c_void,
                    g.c_ty.cuda(),
                    i(g.ldc),
                    g.stride_c as i64,
                    i(g.batch),
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )?;
            }
        }
        Ok(())
    }
}
