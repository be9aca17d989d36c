//! Test set-up for the CUDA tests: NVRTC and the CUDA headers from PyPI
//! wheels (no GPU needed), installed once into `target/cuda-wheels`
//! (`headroom::cuda::nvrtc::wheel_dir()`), where the library looks first.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const WHEELS: &[&str] = &["nvidia-cuda-nvrtc-cu12==12.9.86", "nvidia-cuda-runtime-cu12==12.9.79"];

fn ready(dir: &Path) -> bool {
    dir.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12").exists()
        && dir.join("nvidia/cuda_runtime/include/cuda_fp16.h").exists()
}

/// Install the wheels unless they are there (or HEADROOM_NVRTC and
/// HEADROOM_CUDA_INCLUDE point elsewhere). Safe to call from several test
/// binaries at once: an exclusive lock on `cuda-wheels.lock`, pip into a
/// private folder, then one rename.
pub fn ensure_wheels() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = headroom::cuda::nvrtc::wheel_dir();
        let env_given =
            std::env::var_os("HEADROOM_NVRTC").is_some() && std::env::var_os("HEADROOM_CUDA_INCLUDE").is_some();
        if env_given || ready(&dir) {
            return dir;
        }
        let parent = dir.parent().expect("wheel dir has a parent");
        std::fs::create_dir_all(parent).expect("create the wheel dir's parent");
        let lock = std::fs::File::create(dir.with_extension("lock")).expect("create the lock file");
        // SAFETY: flock on a file we hold open; released when it closes.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "lock {}", dir.display());
        if ready(&dir) {
            return dir; // another test binary installed them while we waited
        }
        println!(
            "cuda test set-up: pip install --target {} --no-deps {} (~230 MB, once)",
            dir.display(),
            WHEELS.join(" ")
        );
        let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let out = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--target"])
            .arg(&tmp)
            .args(WHEELS)
            .output()
            .expect("run python3 -m pip (the CUDA tests need Python's pip to fetch NVRTC)");
        assert!(out.status.success(), "pip install of {WHEELS:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::remove_dir_all(&dir); // a partial folder from an interrupted manual install
        std::fs::rename(&tmp, &dir).expect("move the wheels into place");
        assert!(ready(&dir), "the wheels did not provide libnvrtc.so.12 and cuda_fp16.h in {}", dir.display());
        dir
    })
    .clone()
}
