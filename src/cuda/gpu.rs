//! A GPU to run on: the one handle a CUDA arena and every CUDA op holds.
//!
//! Two engines behind one interface (the backend seam):
//! - [`Engine::Driver`]: a real device through cudarc — kernels compiled by
//!   NVRTC and loaded once, launched with cuLaunchKernel on one stream;
//!   cuBLAS for matrix products; memory from expandable segments
//!   ([`super::segment::CudaSegment`]).
//! - [`Engine::Emulator`]: the CPU harness ([`super::emulator`]) runs the
//!   same kernel sources, "device memory" is host memory in host segments,
//!   and the matrix products follow cuBLAS's column-major contract
//!   ([`super::blas::reference`]). So every line of the CUDA backend above
//!   this file runs in the test suite on machines with no GPU.
//!
//! One stream, in order: a block freed on the host can be handed out again
//! at once, because any later kernel or copy that uses it is queued behind
//! the work that still reads it. Only giving memory back to the driver
//! (decommit) waits for the stream first.

use super::blas::{self, Gemm};
use super::emulator::Emulator;
use super::kernels::Launch;
use super::nvrtc::{Arch, SM75, SM80, SM90};
use crate::alloc::{HostSegment, Segment, SegmentError};
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

/// What `--device` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// The GPU when a driver and a device are there, else the CPU (with one line saying so).
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    pub fn parse(s: &str) -> std::result::Result<DeviceChoice, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            _ => Err(format!("device `{s}`: use auto, cpu or cuda")),
        }
    }
}

/// Resolve a choice: `Ok(None)` runs on the CPU. `Auto` without a usable GPU
/// says why on stderr once (`quiet` silences it) and falls back; `Cuda`
/// without one is an error.
pub fn select(choice: DeviceChoice, quiet: bool) -> Result<Option<Gpu>> {
    match choice {
        DeviceChoice::Cpu => Ok(None),
        DeviceChoice::Cuda => Gpu::driver().map(Some),
        DeviceChoice::Auto => {
            let why = match super::probe() {
                Err(e) => e.to_string(),
                Ok(_) => match Gpu::driver() {
                    Ok(g) => return Ok(Some(g)),
                    Err(e) => e.to_string(),
                },
            };
            if !quiet {
                eprintln!("no usable GPU, running on the CPU ({why})");
            }
            Ok(None)
        }
    }
}

/// A shared handle on one GPU (or its emulator).
#[derive(Clone)]
pub struct Gpu(Arc<GpuInner>);

struct GpuInner {
    name: String,
    arch: Arch,
    engine: Engine,
}

/// How kernels, copies and products actually run.
pub enum Engine {
    Driver(Mutex<Driver>),
    Emulator(Emulator),
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.0.name)
    }
}

impl Gpu {
    /// The real device 0, after probing that a driver is there (cudarc
    /// panics without one): kernels compiled (or read from the PTX cache) and
    /// loaded, a stream, a cuBLAS handle.
    pub fn driver() -> Result<Gpu> {
        let info = super::probe()?;
        let arch = match info.compute_capability {
            (9.., _) => SM90,
            (8, _) => SM80,
            (7, 5..) => SM75,
            (major, minor) => {
                return Err(Error::cuda(
                    "cuda",
                    format!("{} is sm_{major}{minor}; headroom's kernels need sm_75 or newer (T4, A100, H100); use --device cpu", info.name),
                ))
            }
        };
        let driver = Driver::open(&arch)?;
        let name = format!("{} (sm_{}{})", info.name, info.compute_capability.0, info.compute_capability.1);
        Ok(Gpu(Arc::new(GpuInner { name, arch, engine: Engine::Driver(Mutex::new(driver)) })))
    }

    /// The CPU harness standing in for a GPU (tests; needs g++).
    pub fn emulator() -> Result<Gpu> {
        let em = Emulator::new()?;
        Ok(Gpu(Arc::new(GpuInner {
            name: "CUDA emulator (CPU harness)".into(),
            arch: SM90,
            engine: Engine::Emulator(em),
        })))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }
    /// The architecture the kernels were compiled for.
    pub fn arch(&self) -> &Arch {
        &self.0.arch
    }
    pub fn is_emulator(&self) -> bool {
        matches!(self.0.engine, Engine::Emulator(_))
    }
    pub fn same(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// One expandable segment of device memory of `capacity` bytes of address space.
    pub fn segment(&self, capacity: usize) -> std::result::Result<Box<dyn Segment>, SegmentError> {
        match &self.0.engine {
            Engine::Driver(d) => {
                let d = d.lock().unwrap_or_else(|e| e.into_inner());
                Ok(Box::new(super::segment::CudaSegment::reserve(self.clone(), capacity, d.granularity)?))
            }
            Engine::Emulator(_) => Ok(Box::new(HostSegment::reserve(capacity)?)),
        }
    }

    /// Queue a kernel.
    pub fn launch(&self, l: &Launch) -> Result<()> {
        match &self.0.engine {
            Engine::Driver(d) => d.lock().unwrap_or_else(|e| e.into_inner()).launch(l),
            Engine::Emulator(em) => em.run(l),
        }
    }

    /// Queue several kernels, in order.
    pub fn launch_all(&self, ls: &[Launch]) -> Result<()> {
        ls.iter().try_for_each(|l| self.launch(l))
    }

    /// Queue a matrix product; `workspace` (bytes at a device address) is
    /// cuBLAS's scratch, from the arena.
    pub fn gemm(&self, g: &Gemm, workspace: (u64, usize)) -> Result<()> {
        match &self.0.engine {
            Engine::Driver(d) => d.lock().unwrap_or_else(|e| e.into_inner()).gemm(g, workspace),
            // SAFETY: the caller's operands are live arena blocks of this emulated device.
            Engine::Emulator(_) => unsafe { blas::reference(&blas::Cublas::new(g)?) },
        }
    }

    /// Copy host bytes to device memory.
    pub fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        match &self.0.engine {
            Engine::Driver(d) => d.lock().unwrap_or_else(|e| e.into_inner()).upload(dst, src),
            // SAFETY: `dst` is a live block of at least `src.len()` bytes in host memory.
            Engine::Emulator(_) => {
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
                Ok(())
            }
        }
    }

    /// Copy device memory to the host, waiting for the work queued before it.
    pub fn download(&self, dst: &mut [u8], src: u64) -> Result<()> {
        match &self.0.engine {
            Engine::Driver(d) => d.lock().unwrap_or_else(|e| e.into_inner()).download(dst, src),
            // SAFETY: as in `upload`.
            Engine::Emulator(_) => {
                unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
                Ok(())
            }
        }
    }

    /// Set `len` bytes at `dst` to zero.
    pub fn zero(&self, dst: u64, len: usize) -> Result<()> {
        match &self.0.engine {
            Engine::Driver(d) => d.lock().unwrap_or_else(|e| e.into_inner()).zero(dst, len),
            // SAFETY: as in `upload`.
            Engine::Emulator(_) => {
                unsafe { std::ptr::write_bytes(dst as *mut u8, 0, len) };
                Ok(())
            }
        }
    }

    /// Copy `len` bytes between device addresses.
    pub fn copy(&self, dst: u64, src: u64, len: usize) -> Result<()> {
        match &self.0.engine {
            Engine::Driver(d) => d.lock().unwrap_or_else(|e| e.into_inner()).copy(dst, src, len),
            // SAFETY: as in `upload`; `copy` allows overlap.
            Engine::Emulator(_) => {
                unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, len) };
                Ok(())
            }
        }
    }

    /// Wait for everything queued.
    pub fn sync(&self) -> Result<()> {
        match &self.0.engine {
            Engine::Driver(d) => d.lock().unwrap_or_else(|e| e.into_inner()).sync(),
            Engine::Emulator(_) => Ok(()),
        }
    }
}

// ---- the real device ----

use cudarc::cublas::{result as blas_result, sys as blas_sys};
use cudarc::driver::{result as cu, sys, CudaContext, CudaStream};
use std::collections::HashMap;
use std::ffi::CString;

/// cudarc's context and stream, the loaded kernels and the cuBLAS handle.
pub struct Driver {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, sys::CUfunction>,
    blas: blas_sys::cublasHandle_t,
    /// Physical allocation granularity of device 0 (bytes).
    pub granularity: usize,
}

// SAFETY: the raw handles are only used under the Gpu's Mutex, with the
// context bound to the calling thread first.
unsafe impl Send for Driver {}

fn driver_err(op: &str) -> impl Fn(cu::DriverError) -> Error + '_ {
    move |e| Error::cuda(op, format!("{e:?}"))
}

impl Driver {
    fn open(arch: &Arch) -> Result<Driver> {
        let ctx = CudaContext::new(0).map_err(driver_err("cuCtx (device 0)"))?;
        let stream = ctx.default_stream();
        ctx.bind_to_thread().map_err(driver_err("cuCtxSetCurrent"))?;
        let mut functions = HashMap::new();
        for ptx in super::nvrtc::compile_all(arch)? {
            let text = CString::new(ptx.text.clone()).map_err(|_| Error::cuda(&ptx.file, "PTX holds a NUL byte"))?;
            // SAFETY: a NUL-terminated PTX image, kept alive by the module.
            let module = unsafe { cu::module::load_data(text.as_ptr() as *const _) }.map_err(driver_err(&ptx.file))?;
            for spec in super::kernels::LAUNCH.iter().filter(|s| s.file == ptx.file) {
                let name = CString::new(spec.kernel).expect("kernel names have no NUL");
                // SAFETY: `module` was just loaded and is never unloaded.
                let f = unsafe { cu::module::get_function(module, name) }.map_err(driver_err(spec.kernel))?;
                functions.insert(spec.kernel, f);
            }
        }
        // SAFETY: cuBLAS is probed first: cudarc panics on a missing library.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(Error::cuda("cublas", "libcublas.so.12 not found; install the CUDA runtime libraries"));
        }
        let blas = blas_result::create_handle().map_err(|e| Error::cuda("cublasCreate", format!("{e:?}")))?;
        // SAFETY: a fresh handle and the context's live stream.
        unsafe { blas_result::set_stream(blas, stream.cu_stream() as _) }
            .map_err(|e| Error::cuda("cublasSetStream", format!("{e:?}")))?;
        let granularity = super::segment::granularity()?;
        Ok(Driver { ctx, stream, functions, blas, granularity })
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(driver_err("cuCtxSetCurrent"))
    }

    fn launch(&mut self, l: &Launch) -> Result<()> {
        self.bind()?;
        let f = *self.functions.get(l.kernel).ok_or_else(|| Error::cuda(l.kernel, "kernel not loaded"))?;
        let mut params: Vec<*mut std::ffi::c_void> = l.args.iter().map(|a| a.as_ptr()).collect();
        let (g, b) = (l.grid, l.block);
        // SAFETY: `params` matches the kernel's signature (the harness checks
        // the same argument lists against the real parameter lists), and
        // every pointer argument is a live arena block.
        unsafe {
            cu::launch_kernel(f, (g[0], g[1], g[2]), (b[0], b[1], b[2]), l.smem, self.stream.cu_stream(), &mut params)
        }
        .map_err(driver_err(l.kernel))
    }

    fn gemm(&mut self, g: &Gemm, workspace: (u64, usize)) -> Result<()> {
        self.bind()?;
        let c = blas::Cublas::new(g)?;
        let dt = blas::data_type(c.dtype)?;
        let (alpha, beta) = (1.0f32, c.beta);
        // SAFETY: operands are live arena blocks sized by the caller's shapes;
        // the workspace block outlives the queued product (one stream).
        unsafe {
            let st = blas_sys::cublasSetWorkspace_v2(self.blas, workspace.0 as *mut _, workspace.1);
            if st != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(Error::cuda("cublasSetWorkspace", format!("{st:?}")));
            }
            blas_result::gemm_strided_batched_ex(
                self.blas,
                c.transa.into(),
                c.transb.into(),
                c.m as i32,
                c.n as i32,
                c.k as i32,
                &alpha as *const f32 as *const _,
                c.a as *const _,
                dt,
                c.lda as i32,
                c.stride_a as i64,
                c.b as *const _,
                dt,
                c.ldb as i32,
                c.stride_b as i64,
                &beta as *const f32 as *const _,
                c.c as *mut _,
                dt,
                c.ldc as i32,
                c.stride_c as i64,
                c.batch as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| Error::cuda("cublasGemmStridedBatchedEx", format!("{e:?} for {g:?}")))
    }

    fn upload(&mut self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` is a live block of `src.len()` bytes; a pageable
        // source is staged before the call returns.
        unsafe { cu::memcpy_htod_async(dst, src, self.stream.cu_stream()) }.map_err(driver_err("cuMemcpyHtoD"))
    }

    fn download(&mut self, dst: &mut [u8], src: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: as above; a pageable destination is written before return,
        // and the sync makes that explicit.
        unsafe { cu::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }.map_err(driver_err("cuMemcpyDtoH"))?;
        self.sync()
    }

    fn zero(&mut self, dst: u64, len: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` is a live block of `len` bytes.
        unsafe { cu::memset_d8_async(dst, 0, len, self.stream.cu_stream()) }.map_err(driver_err("cuMemsetD8"))
    }

    fn copy(&mut self, dst: u64, src: u64, len: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both are live blocks of `len` bytes.
        unsafe { cu::memcpy_dtod_async(dst, src, len, self.stream.cu_stream()) }.map_err(driver_err("cuMemcpyDtoD"))
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_err("cuStreamSynchronize"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.sync();
        // SAFETY: the handle was created in `open` and is destroyed once.
        let _ = unsafe { blas_result::destroy_handle(self.blas) };
    }
}
