//! Opening the GPU: library checks, context and stream, NVRTC compile of the kernels, cuBLAS handle.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};

use super::blas::Blas;
use super::kernels::Kernels;
use super::{CudaError, CudaResult};

/// The CUDA sources, concatenated into one NVRTC program (no `#include`, so no header path is needed).
const KERNEL_SOURCES: [&str; 3] = [
    include_str!("../../kernels/common.cu"),
    include_str!("../../kernels/layers.cu"),
    include_str!("../../kernels/attention.cu"),
];

/// One CUDA library: whether the dynamic loader finds it and which file got mapped.
#[derive(Debug, Clone)]
pub struct LibraryReport {
    pub name: &'static str,
    pub present: bool,
    pub required: bool,
    /// The mapped file (from `/proc/self/maps`), once the library is in use.
    pub path: Option<String>,
}

/// A GPU with our kernels loaded: one context, one non-default stream (CUDA graphs cannot capture the default
/// stream), one cuBLAS handle bound to that stream.
pub struct GpuDevice {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) k: Kernels,
    pub(crate) blas: Blas,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub sm_count: usize,
    pub total_mem: usize,
    pub libraries: Vec<LibraryReport>,
    pub compile_ms: f64,
}

impl std::fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDevice")
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("sm_count", &self.sm_count)
            .finish_non_exhaustive()
    }
}

/// (library stem for the loader, file-name fragment in /proc/self/maps, required)
const LIBRARIES: [(&str, &str, bool); 4] = [
    ("cuda", "libcuda.so", true),
    ("nvrtc", "libnvrtc.so", true),
    ("cublas", "libcublas.so", true),
    ("cublasLt", "libcublasLt.so", false),
];

fn present(stem: &str) -> bool {
    // SAFETY: `is_culib_present` only tries to dlopen the candidate names and drops the handle.
    unsafe {
        match stem {
            "cuda" => cudarc::driver::sys::is_culib_present(),
            "nvrtc" => cudarc::nvrtc::sys::is_culib_present(),
            "cublas" => cudarc::cublas::sys::is_culib_present(),
            _ => cudarc::cublaslt::sys::is_culib_present(),
        }
    }
}

fn mapped_path(fragment: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            p.rsplit('/')
                .next()
                .is_some_and(|f| f.starts_with(fragment))
        })
        .map(str::to_string)
}

impl GpuDevice {
    /// Checks every CUDA library this backend loads, without loading any (cudarc panics on a missing library
    /// the first time it is used, so this must come first). Errors on the first missing required one.
    pub fn check_libraries() -> CudaResult<Vec<LibraryReport>> {
        let mut out = Vec::new();
        for (stem, _, required) in LIBRARIES {
            let ok = present(stem);
            if !ok && required {
                return Err(CudaError::LibraryMissing {
                    lib: stem,
                    candidates: cudarc::get_lib_name_candidates(stem).join(", "),
                });
            }
            out.push(LibraryReport {
                name: stem,
                present: ok,
                required,
                path: None,
            });
        }
        Ok(out)
    }

    /// Opens GPU `ordinal`, compiles the kernels for its architecture and creates the cuBLAS handle.
    pub fn open(ordinal: usize) -> CudaResult<Arc<Self>> {
        let mut libraries = Self::check_libraries()?;
        let count = CudaContext::device_count().map_err(|e| CudaError::NoDevice(e.to_string()))?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice(format!(
                "device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal)?;
        // SAFETY: everything runs on one stream, so cudarc's cross-stream event tracking is not needed, and it
        // must be off for graph capture (events recorded outside a capture cannot be waited on inside it).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let name = ctx.name()?;
        let cc = ctx.compute_capability()?;
        let sm_count =
            ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as usize;
        let total_mem = ctx.total_mem()?;

        let t = Instant::now();
        let src = KERNEL_SOURCES.concat();
        let opts = CompileOptions {
            options: vec![format!("--gpu-architecture=sm_{}{}", cc.0, cc.1)],
            name: Some("baton_kernels.cu".into()),
            ..Default::default()
        };
        let ptx = compile_ptx_with_opts(src, opts).map_err(|e| match e {
            CompileError::CompileError { log, .. } => {
                CudaError::Compile(log.to_string_lossy().into_owned())
            }
            other => CudaError::Compile(format!("{other:?}")),
        })?;
        let module = ctx.load_module(ptx)?;
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        let k = Kernels::load(&module)?;
        let blas = Blas::new(&stream)?;

        for (lib, (_, fragment, _)) in libraries.iter_mut().zip(LIBRARIES) {
            lib.path = mapped_path(fragment);
            tracing::info!(library = lib.name, present = lib.present, path = ?lib.path, "CUDA library");
        }
        tracing::info!(%name, ?cc, sm_count, total_mem, compile_ms, "CUDA device ready");
        Ok(Arc::new(Self {
            ctx,
            stream,
            k,
            blas,
            name,
            compute_capability: cc,
            sm_count,
            total_mem,
            libraries,
            compile_ms,
        }))
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> CudaResult<(usize, usize)> {
        Ok(self.ctx.mem_get_info()?)
    }

    pub fn synchronize(&self) -> CudaResult<()> {
        self.stream.synchronize()?;
        Ok(())
    }
}
