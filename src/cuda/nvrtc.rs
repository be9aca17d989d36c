//! NVRTC: compile the embedded kernels to PTX (cached on disk) and to cubin
//! with ptxas's resource report (registers, shared memory, spills per
//! kernel). Works on machines with no GPU: only libnvrtc and the CUDA
//! headers (cuda_fp16.h, cuda_bf16.h) are needed.
//!
//! Where they come from, first found wins:
//! - libnvrtc.so.12: `$HEADROOM_NVRTC` (the file), the pip wheel
//!   `nvidia-cuda-nvrtc-cu12` under `$HEADROOM_CUDA_WHEELS` or this
//!   checkout's `target/cuda-wheels` (what the tests install), the system.
//! - headers: `$HEADROOM_CUDA_INCLUDE`, the wheel `nvidia-cuda-runtime-cu12`
//!   in the same places, `/usr/local/cuda/include`.
//!
//! cudarc opens `libnvrtc.so.12` by name and panics if that fails, so we
//! dlopen the absolute path first (RTLD_GLOBAL: the by-name open then finds
//! it) and ask `is_culib_present` before any cudarc NVRTC call.

use super::emulator::is_kernel_file;
use crate::error::{Error, Result};
use cudarc::nvrtc::{result, sys};
use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A GPU architecture and the per-SM limits occupancy is computed from
/// (CUDA C Programming Guide, "Technical Specifications per Compute Capability").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch {
    /// ptxas's name, e.g. "sm_80".
    pub name: &'static str,
    pub regs_per_sm: u32,
    pub max_threads_per_sm: u32,
    pub max_blocks_per_sm: u32,
    pub smem_per_sm: u32,
    /// Most shared memory one block can have after opting in.
    pub smem_per_block_optin: u32,
    /// Shared memory the system reserves per resident block.
    pub smem_reserved_per_block: u32,
}

/// A100.
/// Turing (T4, RTX 20xx): the free notebooks' GPU.
pub const SM75: Arch = Arch {
    name: "sm_75",
    regs_per_sm: 65536,
    max_threads_per_sm: 1024,
    max_blocks_per_sm: 16,
    smem_per_sm: 64 * 1024,
    smem_per_block_optin: 64 * 1024,
    smem_reserved_per_block: 0,
};

pub const SM80: Arch = Arch {
    name: "sm_80",
    regs_per_sm: 65536,
    max_threads_per_sm: 2048,
    max_blocks_per_sm: 32,
    smem_per_sm: 164 * 1024,
    smem_per_block_optin: 163 * 1024,
    smem_reserved_per_block: 1024,
};
/// H100 / H200.
pub const SM90: Arch = Arch {
    name: "sm_90",
    regs_per_sm: 65536,
    max_threads_per_sm: 2048,
    max_blocks_per_sm: 32,
    smem_per_sm: 228 * 1024,
    smem_per_block_optin: 227 * 1024,
    smem_reserved_per_block: 1024,
};

impl Arch {
    /// "compute_80" for "sm_80": the virtual architecture PTX targets.
    pub fn compute(&self) -> String {
        self.name.replace("sm_", "compute_")
    }

    /// Resident blocks per SM for a kernel with `regs` registers per thread,
    /// `threads` per block and `smem` bytes of shared memory (static +
    /// dynamic), and which limit binds.
    pub fn blocks_per_sm(&self, regs: u32, threads: u32, smem: u32) -> (u32, &'static str) {
        let warps = threads.div_ceil(32);
        // Registers are allocated per warp in units of 256.
        let regs_per_warp = (regs.max(1) * 32).div_ceil(256) * 256;
        let by_regs = self.regs_per_sm / (regs_per_warp * warps);
        let by_smem = if smem == 0 {
            u32::MAX
        } else {
            self.smem_per_sm / (smem.div_ceil(128) * 128 + self.smem_reserved_per_block)
        };
        let limits = [
            (self.max_blocks_per_sm, "blocks"),
            (self.max_threads_per_sm / threads, "threads"),
            (by_regs, "registers"),
            (by_smem, "shared memory"),
        ];
        limits.into_iter().min_by_key(|l| l.0).unwrap()
    }
}

/// Where NVRTC and the headers were found.
#[derive(Clone, Debug)]
pub struct Nvrtc {
    pub library: Option<PathBuf>,
    pub include: PathBuf,
    pub version: (i32, i32),
    /// Hash of cuda_fp16.h and cuda_bf16.h: part of the PTX cache key, as
    /// the headers can change apart from the NVRTC version.
    pub headers_hash: u64,
}

/// The pip `--target` folder the tests install the wheels into.
pub fn wheel_dir() -> PathBuf {
    match std::env::var_os("HEADROOM_CUDA_WHEELS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("cuda-wheels"),
    }
}

fn find_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HEADROOM_NVRTC") {
        return Some(PathBuf::from(p));
    }
    let p = wheel_dir().join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12");
    p.exists().then_some(p)
}

fn find_include() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("HEADROOM_CUDA_INCLUDE").map(PathBuf::from),
        Some(wheel_dir().join("nvidia/cuda_runtime/include")),
        Some(PathBuf::from("/usr/local/cuda/include")),
    ];
    candidates.into_iter().flatten().find(|d| d.join("cuda_fp16.h").exists())
}

const HELP: &str = "install the wheels with `pip install --target target/cuda-wheels --no-deps \
    nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79` (or set HEADROOM_NVRTC to libnvrtc.so.12 \
    and HEADROOM_CUDA_INCLUDE to a folder with cuda_fp16.h)";

impl Nvrtc {
    /// Find and load NVRTC once per process.
    pub fn get() -> Result<&'static Nvrtc> {
        static NVRTC: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
        NVRTC.get_or_init(Nvrtc::load).as_ref().map_err(|m| Error::cuda("nvrtc", m.clone()))
    }

    fn load() -> std::result::Result<Nvrtc, String> {
        let library = find_library();
        if let Some(lib) = &library {
            let c = CString::new(lib.as_os_str().as_encoded_bytes()).map_err(|_| "library path has a NUL byte")?;
            // SAFETY: loading NVRTC, which has no initialisers with
            // preconditions; GLOBAL so cudarc's open by name finds it.
            let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if h.is_null() {
                // SAFETY: dlerror's message is valid until the next dl call.
                let e = unsafe { std::ffi::CStr::from_ptr(libc::dlerror()) }.to_string_lossy().into_owned();
                return Err(format!("cannot load {}: {e}; {HELP}", lib.display()));
            }
        }
        // SAFETY: only tries to open the library.
        if !unsafe { sys::is_culib_present() } {
            return Err(format!("no NVRTC library (libnvrtc.so.12) found; {HELP}"));
        }
        let include = find_include().ok_or_else(|| format!("no CUDA headers (cuda_fp16.h) found; {HELP}"))?;
        let (mut major, mut minor) = (0 as c_int, 0 as c_int);
        // SAFETY: the library is present; two out-parameters.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| format!("nvrtcVersion failed: {e:?}"))?;
        let read = |n: &str| std::fs::read(include.join(n)).unwrap_or_default();
        let headers_hash = super::fnv1a(&[&read("cuda_fp16.h"), &read("cuda_bf16.h")]);
        Ok(Nvrtc { library, include, version: (major, minor), headers_hash })
    }

    /// Compile kernel file `file` of `sources` (as `kernels::SOURCES`; the
    /// `*.cuh` there are its headers) with `options`; returns the log and,
    /// for `cubin`, the cubin else the PTX.
    fn build(
        &self,
        file: &str,
        sources: &[(&str, &str)],
        options: &[String],
        cubin: bool,
    ) -> Result<(String, Vec<u8>)> {
        let fail = |step: &str, e: result::NvrtcError| Error::cuda(format!("nvrtc {file}"), format!("{step}: {e:?}"));
        let src = sources
            .iter()
            .find(|(n, _)| *n == file)
            .ok_or_else(|| Error::cuda(format!("nvrtc {file}"), "no such kernel file among the sources"))?;
        let cstr = |s: &str| CString::new(s).map_err(|_| Error::cuda(format!("nvrtc {file}"), "source has a NUL byte"));
        let headers: Vec<(CString, CString)> = sources
            .iter()
            .filter(|(n, _)| n.ends_with(".cuh") && !n.contains('/'))
            .map(|(n, t)| Ok((cstr(t)?, cstr(n)?)))
            .collect::<Result<_>>()?;
        let texts: Vec<*const c_char> = headers.iter().map(|h| h.0.as_ptr()).collect();
        let names: Vec<*const c_char> = headers.iter().map(|h| h.1.as_ptr()).collect();
        let (text, name) = (cstr(src.1)?, cstr(file)?);
        let mut prog = std::mem::MaybeUninit::uninit();
        // SAFETY: valid C strings that outlive the program, which we destroy below.
        let prog = unsafe {
            sys::nvrtcCreateProgram(
                prog.as_mut_ptr(),
                text.as_ptr(),
                name.as_ptr(),
                texts.len() as c_int,
                texts.as_ptr(),
                names.as_ptr(),
            )
            .result()
            .map_err(|e| fail("nvrtcCreateProgram", e))?;
            prog.assume_init()
        };
        // SAFETY: `prog` is live until destroy_program, which runs on every path.
        let out = (|| unsafe {
            let compiled = result::compile_program(prog, options);
            let log = result::get_program_log(prog).map(|l| c_chars_to_string(&l)).unwrap_or_default();
            if let Err(e) = compiled {
                return Err(Error::cuda(
                    format!("nvrtc {file}"),
                    format!("compile failed ({e:?}) with {options:?}:\n{log}"),
                ));
            }
            if cubin {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size).result().map_err(|e| fail("nvrtcGetCUBINSize", e))?;
                let mut bin = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut c_char)
                    .result()
                    .map_err(|e| fail("nvrtcGetCUBIN", e))?;
                Ok((log, bin))
            } else {
                let ptx = result::get_ptx(prog).map_err(|e| fail("nvrtcGetPTX", e))?;
                Ok((log, c_chars_to_string(&ptx).into_bytes()))
            }
        })();
        // SAFETY: created above, destroyed once.
        let _ = unsafe { result::destroy_program(prog) };
        out
    }

    fn options(&self, gpu_arch: &str, extra: &[&str]) -> Vec<String> {
        let mut o = vec![
            format!("--gpu-architecture={gpu_arch}"),
            "--std=c++17".into(),
            format!("-I{}", self.include.display()),
        ];
        o.extend(extra.iter().map(|s| s.to_string()));
        o
    }
}

fn c_chars_to_string(v: &[c_char]) -> String {
    let bytes: Vec<u8> = v.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// PTX of one kernel file for one architecture.
#[derive(Clone, Debug)]
pub struct Ptx {
    pub file: String,
    pub arch: &'static str,
    pub text: String,
    /// Whether it came from the disk cache.
    pub cached: bool,
    pub path: PathBuf,
}

impl Ptx {
    /// For `CudaContext::load_module`.
    pub fn to_cudarc(&self) -> cudarc::nvrtc::Ptx {
        cudarc::nvrtc::Ptx::from_src(self.text.clone())
    }
}

/// Compile kernel file `file` of `sources` to PTX for `arch`, through the
/// disk cache (`cache_root()/ptx/`), keyed by all sources, the arch, the
/// options, the NVRTC version and the CUDA headers.
pub fn compile(arch: &Arch, file: &str, sources: &[(&str, &str)]) -> Result<Ptx> {
    let nv = Nvrtc::get()?;
    let options = nv.options(&arch.compute(), &[]);
    let version = format!("{:?} {:016x}", nv.version, nv.headers_hash);
    let mut parts: Vec<&[u8]> = vec![file.as_bytes(), arch.name.as_bytes(), version.as_bytes()];
    parts.extend(options.iter().filter(|o| !o.starts_with("-I")).map(|o| o.as_bytes()));
    for (n, t) in sources {
        parts.push(n.as_bytes());
        parts.push(t.as_bytes());
    }
    let key = super::fnv1a(&parts);
    let stem = file.trim_end_matches(".cu");
    let path = super::cache_root().join("ptx").join(format!("{stem}-{}-{key:016x}.ptx", arch.name));
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(Ptx { file: file.into(), arch: arch.name, text, cached: true, path });
    }
    let (_, bytes) = nv.build(file, sources, &options, false)?;
    super::write_atomic(&path, &bytes).map_err(|e| Error::io(path.display(), e))?;
    Ok(Ptx {
        file: file.into(),
        arch: arch.name,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        cached: false,
        path,
    })
}

/// PTX of every embedded kernel file for `arch`.
pub fn compile_all(arch: &Arch) -> Result<Vec<Ptx>> {
    let sources = crate::kernels::SOURCES;
    sources.iter().filter(|(n, _)| is_kernel_file(n)).map(|(n, _)| compile(arch, n, sources)).collect()
}

/// What ptxas reported for one function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    pub function: String,
    pub file: String,
    pub arch: String,
    /// A `__global__` entry (else a device function ptxas kept separate).
    pub entry: bool,
    pub registers: u32,
    /// Static shared memory.
    pub smem: u32,
    pub stack_frame: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

/// Compile every embedded kernel file to cubin for `arch` with
/// `--ptxas-options=-v` and parse the report.
pub fn resources(arch: &Arch) -> Result<Vec<KernelResources>> {
    let nv = Nvrtc::get()?;
    let sources = crate::kernels::SOURCES;
    let options = nv.options(arch.name, &["--ptxas-options=-v"]);
    let mut all = vec![];
    for (file, _) in sources.iter().filter(|(n, _)| is_kernel_file(n)) {
        let (log, _) = nv.build(file, sources, &options, true)?;
        let parsed = parse_ptxas_log(&log, file, arch.name);
        if parsed.is_empty() {
            return Err(Error::cuda(format!("nvrtc {file}"), format!("no ptxas report in the log:\n{log}")));
        }
        all.extend(parsed);
    }
    Ok(all)
}

/// The number before `unit` in `line` ("Used 18 registers" → 18 for "registers").
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let i = line.find(unit)?;
    line[..i].split_whitespace().last()?.parse().ok()
}

/// Parse ptxas `-v` output: "Compiling entry function 'NAME'", "Function
/// properties for NAME", "N bytes stack frame, N bytes spill stores, N bytes
/// spill loads", "Used N registers, ..., N bytes smem, ...".
pub fn parse_ptxas_log(log: &str, file: &str, arch: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = vec![];
    let mut entry: Option<usize> = None; // the entry being compiled
    let mut props: Option<usize> = None; // the function the next stack line is for
    let index = |out: &mut Vec<KernelResources>, name: &str| -> usize {
        if let Some(i) = out.iter().position(|r| r.function == name) {
            return i;
        }
        out.push(KernelResources { function: name.into(), file: file.into(), arch: arch.into(), ..Default::default() });
        out.len() - 1
    };
    for line in log.lines() {
        let quoted = line.split('\'').nth(1);
        if line.contains("Compiling entry function") {
            if let Some(name) = quoted {
                let i = index(&mut out, name);
                out[i].entry = true;
                entry = Some(i);
            }
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            props = Some(index(&mut out, rest.trim()));
        } else if line.contains("bytes stack frame") {
            if let Some(i) = props.or(entry) {
                let r = &mut out[i];
                r.stack_frame = number_before(line, "bytes stack frame").unwrap_or(0);
                r.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                r.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            }
        } else if line.contains("Used") && line.contains("registers") {
            if let Some(i) = entry {
                out[i].registers = number_before(line, "registers").unwrap_or(0);
                out[i].smem = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'k2' for 'sm_80'\n\
ptxas info    : Function properties for k2\n\
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 10 registers, used 1 barriers, 360 bytes cmem[0]\n\
ptxas info    : Function properties for _Z6helperf\n\
ptxas         .     16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
ptxas info    : Compiling entry function 'k' for 'sm_80'\n\
ptxas info    : Function properties for k\n\
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 12 registers, used 1 barriers, 1024 bytes smem, 372 bytes cmem[0]\n";
        let r = parse_ptxas_log(log, "t.cu", "sm_80");
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].function.as_str(), r[0].entry, r[0].registers, r[0].smem), ("k2", true, 10, 0));
        assert_eq!(
            (r[1].function.as_str(), r[1].entry, r[1].spill_stores, r[1].spill_loads),
            ("_Z6helperf", false, 8, 4)
        );
        assert_eq!((r[2].function.as_str(), r[2].registers, r[2].smem), ("k", 12, 1024));
    }

    #[test]
    fn occupancy_limits() {
        // 256 threads, 32 registers: 8 blocks by threads, 8 by registers.
        assert_eq!(SM80.blocks_per_sm(32, 256, 0), (8, "threads"));
        // 64 registers: 32·64 = 2048 per warp, 8 warps → 4 blocks.
        assert_eq!(SM90.blocks_per_sm(64, 256, 0).0, 4);
        // 40 KiB + 1 KiB reserved: 164 KiB / 41 KiB = 4 blocks on sm_80.
        assert_eq!(SM80.blocks_per_sm(16, 128, 40 * 1024), (4, "shared memory"));
    }
}
