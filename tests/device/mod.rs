//! The GPU the CUDA backend tests run on: the CPU emulator, or with
//! `cargo test --features cuda-device` the machine's device 0 through the
//! driver, so the same comparisons check real kernels, cuBLAS and device
//! segments.
#![allow(dead_code)]

use headroom::cuda::Gpu;
use std::sync::OnceLock;

pub fn gpu() -> Gpu {
    static G: OnceLock<Gpu> = OnceLock::new();
    G.get_or_init(open).clone()
}

#[cfg(not(feature = "cuda-device"))]
fn open() -> Gpu {
    Gpu::emulator().expect("the CPU harness builds (g++)")
}

#[cfg(feature = "cuda-device")]
fn open() -> Gpu {
    crate::cuda_common::ensure_wheels();
    Gpu::driver().expect("--features cuda-device needs an NVIDIA GPU and driver")
}
