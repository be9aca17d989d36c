//! The CUDA backend's foundation: a safe probe for the driver, NVRTC
//! compilation of `kernels/*.cu` (PTX cache, ptxas resource report), the
//! launch table every launch reads ([`kernels::LAUNCH`]), and a CPU
//! emulator that runs the same kernel sources compiled by g++.
//!
//! cudarc loads libcuda and libnvrtc at run time and *panics* when a library
//! is missing, so nothing here calls into cudarc before a probe has said the
//! library is present.

pub mod blas;
pub mod emulator;
mod gpu;
pub mod kernels;
pub mod nvrtc;
pub mod ops;
mod segment;

use std::fmt;
use std::path::PathBuf;

pub use gpu::{select, DeviceChoice, Driver, Engine, Gpu};
pub use kernels::{KernelArg, Launch, LaunchSpec, LAUNCH};
pub use segment::CudaSegment;

/// What `probe` found on device 0.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceInfo {
    pub name: String,
    /// (major, minor), e.g. (9, 0) for an H100.
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
    pub multiprocessors: i32,
    /// Peak SM clock (kHz).
    pub clock_khz: i32,
}

/// Why there is no CUDA device to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaUnavailable(pub String);

impl fmt::Display for CudaUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CudaUnavailable {}

impl From<CudaUnavailable> for crate::Error {
    fn from(e: CudaUnavailable) -> crate::Error {
        // What `--device cuda` reports; `auto` prints the reason alone.
        crate::Error::cuda("cuda", format!("{}; use --device cpu or auto", e.0))
    }
}

/// Whether the CUDA driver library (libcuda.so.1) can be loaded. Safe to call
/// anywhere: it only tries to dlopen the library by its usual names.
pub fn driver_available() -> bool {
    // SAFETY: opens and closes the library; calls no CUDA function.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Initialise the driver and describe device 0, or say why not.
pub fn probe() -> Result<DeviceInfo, CudaUnavailable> {
    if !driver_available() {
        return Err(CudaUnavailable("no CUDA driver (libcuda.so.1) on this machine".into()));
    }
    use cudarc::driver::{result, sys::CUdevice_attribute as A};
    let fail = |what: &str, e: result::DriverError| CudaUnavailable(format!("{what} failed: {e:?}"));
    result::init().map_err(|e| fail("cuInit", e))?;
    let count = result::device::get_count().map_err(|e| fail("cuDeviceGetCount", e))?;
    if count < 1 {
        return Err(CudaUnavailable("the CUDA driver sees no device".into()));
    }
    let dev = result::device::get(0).map_err(|e| fail("cuDeviceGet(0)", e))?;
    let name = result::device::get_name(dev).map_err(|e| fail("cuDeviceGetName", e))?;
    // SAFETY: `dev` came from cuDeviceGet.
    let attr = |a| unsafe { result::device::get_attribute(dev, a) }.map_err(|e| fail("cuDeviceGetAttribute", e));
    let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let multiprocessors = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    let clock_khz = attr(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)?;
    // SAFETY: as above.
    let total_memory = unsafe { result::device::total_mem(dev) }.map_err(|e| fail("cuDeviceTotalMem", e))?;
    Ok(DeviceInfo { name, compute_capability: (major, minor), total_memory, multiprocessors, clock_khz })
}

/// Root of headroom's on-disk caches (PTX, the harness library):
/// `$HEADROOM_CACHE`, else `~/.cache/headroom`, else the temp dir.
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("HEADROOM_CACHE") {
        return PathBuf::from(d);
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("headroom"),
        None => std::env::temp_dir().join("headroom-cache"),
    }
}

/// FNV-1a, 64 bits: a stable cache key (std's hasher may change between
/// Rust releases, which would only cost a rebuild, but this never does).
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        // Length first, so ("ab","c") and ("a","bc") differ.
        for b in (p.len() as u64).to_le_bytes().iter().chain(p.iter()) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Write `bytes` to `path` atomically: a unique temporary beside it, then a
/// rename, so a reader never sees half a file and two writers never mix.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
