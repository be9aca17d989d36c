//! Runs the CUDA kernels on the CPU: the very same `kernels/*.cu` sources,
//! compiled by g++ against the harness in `kernels/harness/` (fibers for the
//! threads of a block, `__syncthreads` as a barrier, warp primitives over 32
//! lanes; see cuda_harness.h). The library is built once per source hash
//! into the cache (`cache_root()/harness/`) and loaded with dlopen.
//!
//! Device pointers here are host addresses: a kernel argument
//! `KernelArg::Ptr(slice.as_ptr() as u64)` is read and written in place.

use super::kernels::{KernelArg, Launch};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

type LaunchFn =
    unsafe extern "C" fn(*const c_char, *mut u32, *mut u32, usize, *mut *mut c_void, *mut c_char, usize) -> c_int;
type SignatureFn = unsafe extern "C" fn(*const c_char, *mut usize, usize) -> c_int;
type ReverseFn = unsafe extern "C" fn(c_int);

/// Order in which each round's threads (and the blocks) run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Forward,
    Reverse,
}

/// A loaded harness library. Cheap to clone; never unloaded.
#[derive(Clone)]
pub struct Emulator {
    lib: Arc<Library>,
    order: Order,
}

struct Library {
    path: PathBuf,
    kernels: Vec<String>,
    launch: LaunchFn,
    signature: SignatureFn,
    reverse: ReverseFn,
}

/// g++ flags; part of the cache key.
const CXXFLAGS: &[&str] = &["-std=c++20", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-w"];

impl Emulator {
    /// The harness over the kernels embedded in this binary.
    pub fn new() -> Result<Emulator> {
        Emulator::from_sources(crate::kernels::SOURCES)
    }

    /// The harness over `sources` ((path under kernels/, text), as
    /// `kernels::SOURCES`): how a test builds a deliberately broken variant.
    pub fn from_sources(sources: &[(&str, &str)]) -> Result<Emulator> {
        static LOADED: OnceLock<Mutex<HashMap<u64, Arc<Library>>>> = OnceLock::new();
        let gxx = gxx_version()?;
        let mut parts: Vec<&[u8]> = vec![gxx.as_bytes()];
        parts.extend(CXXFLAGS.iter().map(|f| f.as_bytes()));
        for (n, t) in sources {
            parts.push(n.as_bytes());
            parts.push(t.as_bytes());
        }
        let key = super::fnv1a(&parts);
        let mut loaded = LOADED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lib) = loaded.get(&key) {
            return Ok(Emulator { lib: lib.clone(), order: Order::Forward });
        }
        let dir = super::cache_root().join("harness");
        let so = dir.join(format!("libhr_harness-{key:016x}.so"));
        if !so.exists() {
            build(sources, &dir, &so, key)?;
        }
        let lib = Arc::new(Library::open(&so)?);
        loaded.insert(key, lib.clone());
        Ok(Emulator { lib, order: Order::Forward })
    }

    /// The same library, running threads in `order`.
    pub fn with_order(&self, order: Order) -> Emulator {
        Emulator { lib: self.lib.clone(), order }
    }

    pub fn order(&self) -> Order {
        self.order
    }

    /// Where the library was loaded from.
    pub fn path(&self) -> &Path {
        &self.lib.path
    }

    /// Names of every kernel the harness registered.
    pub fn kernels(&self) -> &[String] {
        &self.lib.kernels
    }

    /// Run `launch` to completion.
    pub fn run(&self, launch: &Launch) -> Result<()> {
        self.launch(launch.kernel, launch.grid, launch.block, launch.smem as usize, &launch.args)
    }

    /// Run kernel `name` over `grid` × `block` with `smem` bytes of dynamic
    /// shared memory. The arguments must match the kernel's parameters in
    /// number and size (checked); a deadlock or a misused warp primitive is
    /// an error naming the kernel, the block and where each thread waits.
    pub fn launch(&self, name: &str, grid: [u32; 3], block: [u32; 3], smem: usize, args: &[KernelArg]) -> Result<()> {
        let cname = CString::new(name).map_err(|_| Error::cuda("emulator", "kernel name has a NUL byte"))?;
        let mut sizes = [0usize; 64];
        // SAFETY: the library writes at most `sizes.len()` entries.
        let count = unsafe { (self.lib.signature)(cname.as_ptr(), sizes.as_mut_ptr(), sizes.len()) };
        if count < 0 {
            return Err(Error::cuda(
                name,
                "no such kernel in the harness: is it `extern \"C\" __global__ void NAME(` in kernels/*.cu?",
            ));
        }
        let want = &sizes[..count as usize];
        let got: Vec<usize> = args.iter().map(|a| a.size()).collect();
        if want != got.as_slice() {
            return Err(Error::cuda(
                name,
                format!("takes {} arguments of {want:?} bytes, was given {} of {got:?} bytes", want.len(), got.len()),
            ));
        }
        let mut ptrs: Vec<*mut c_void> = args.iter().map(|a| a.as_ptr()).collect();
        let (mut g, mut b) = (grid, block);
        let mut err = vec![0 as c_char; 2048];
        // SAFETY: pointers into `args`, which outlive the call; the kernel
        // dereferences only the device pointers the caller passed, and the
        // order setting is per OS thread, like the launch.
        let rc = unsafe {
            (self.lib.reverse)((self.order == Order::Reverse) as c_int);
            (self.lib.launch)(
                cname.as_ptr(),
                g.as_mut_ptr(),
                b.as_mut_ptr(),
                smem,
                ptrs.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            // SAFETY: the library NUL-terminates within `err`.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
            return Err(Error::cuda(format!("emulator {name}"), msg));
        }
        Ok(())
    }
}

impl Library {
    fn open(path: &Path) -> Result<Library> {
        let what = || format!("emulator {}", path.display());
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::cuda(what(), "path has a NUL byte"))?;
        // SAFETY: our own library; RTLD_LOCAL keeps two harness builds (the
        // real one and a test's broken variant) apart.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            return Err(Error::cuda(what(), format!("dlopen failed: {}", dlerror())));
        }
        let sym = |name: &CStr| -> Result<*mut c_void> {
            // SAFETY: looking up a symbol in a handle we hold open forever.
            let p = unsafe { libc::dlsym(h, name.as_ptr()) };
            if p.is_null() {
                Err(Error::cuda(what(), format!("missing symbol {name:?}; delete the file to rebuild it")))
            } else {
                Ok(p)
            }
        };
        // SAFETY: the symbols are the extern "C" functions of launcher.cpp,
        // with these signatures.
        unsafe {
            let count: unsafe extern "C" fn() -> c_int = std::mem::transmute(sym(c"hr_kernel_count")?);
            let name_at: unsafe extern "C" fn(c_int) -> *const c_char = std::mem::transmute(sym(c"hr_kernel_name")?);
            let kernels = (0..count()).map(|i| CStr::from_ptr(name_at(i)).to_string_lossy().into_owned()).collect();
            Ok(Library {
                path: path.to_path_buf(),
                kernels,
                launch: std::mem::transmute::<*mut c_void, LaunchFn>(sym(c"hr_launch")?),
                signature: std::mem::transmute::<*mut c_void, SignatureFn>(sym(c"hr_signature")?),
                reverse: std::mem::transmute::<*mut c_void, ReverseFn>(sym(c"hr_set_reverse")?),
            })
        }
    }
}

fn dlerror() -> String {
    // SAFETY: dlerror returns a thread-local message or null.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

fn gxx_version() -> Result<String> {
    let out = Command::new("g++").arg("--version").output().map_err(|e| {
        Error::cuda(
            "emulator",
            format!("cannot run g++ ({e}); the CPU harness needs g++ 11 or newer (apt-get install g++)"),
        )
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string())
}

/// `extern "C" __global__ void NAME(` in the top-level `.cu` files, in order.
pub fn kernel_names(sources: &[(&str, &str)]) -> Vec<String> {
    const MARK: &str = "extern \"C\" __global__ void ";
    let mut names = vec![];
    for (_, text) in sources.iter().filter(|(f, _)| is_kernel_file(f)) {
        let mut rest = *text;
        while let Some(i) = rest.find(MARK) {
            rest = rest[i + MARK.len()..].trim_start();
            if let Some(r) = rest.strip_prefix("__launch_bounds__(") {
                rest = r.split_once(')').map(|(_, r)| r.trim_start()).unwrap_or("");
            }
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            if rest[end..].trim_start().starts_with('(') && end > 0 {
                names.push(rest[..end].to_string());
            }
        }
    }
    names
}

/// A kernel translation unit: `NAME.cu` at the top of kernels/.
pub fn is_kernel_file(path: &str) -> bool {
    path.ends_with(".cu") && !path.contains('/')
}

fn build(sources: &[(&str, &str)], dir: &Path, so: &Path, key: u64) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| Error::io(p.display(), e);
    let work = dir.join(format!("build-{key:016x}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    for (name, text) in sources {
        let p = work.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).map_err(|e| io(&p, e))?;
        std::fs::write(&p, text).map_err(|e| io(&p, e))?;
    }
    let includes: String =
        sources.iter().filter(|(n, _)| is_kernel_file(n)).map(|(n, _)| format!("#include \"{n}\"\n")).collect();
    let registry: String = kernel_names(sources).iter().map(|k| format!("HR_KERNEL({k})\n")).collect();
    for (name, text) in [("harness/kernels_all.inc", includes), ("harness/registry.inc", registry)] {
        let p = work.join(name);
        std::fs::write(&p, text).map_err(|e| io(&p, e))?;
    }
    let tmp = so.with_extension(format!("so.tmp-{}", std::process::id()));
    let out = Command::new("g++")
        .args(CXXFLAGS)
        .arg("-I")
        .arg(work.join("harness/include"))
        .arg("-I")
        .arg(&work)
        .arg("-o")
        .arg(&tmp)
        .arg(work.join("harness/launcher.cpp"))
        .output()
        .map_err(|e| {
            Error::cuda("emulator", format!("cannot run g++ ({e}); the CPU harness needs g++ (apt-get install g++)"))
        })?;
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stderr);
        let head: String = log.lines().take(40).collect::<Vec<_>>().join("\n");
        return Err(Error::cuda(
            "emulator",
            format!("g++ could not build the kernel harness (sources in {}):\n{head}", work.display()),
        ));
    }
    // Atomic: a concurrent build of the same key renames an identical file.
    std::fs::rename(&tmp, so).map_err(|e| io(so, e))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
