//! headroom: a tensor engine that trains neural networks inside a memory
//! budget the user sets. Every byte goes through [`alloc::Arena`], so a run's
//! peak can be counted, capped, explained and predicted.
//!
//! Layers, bottom up: `alloc` (the arena) → `tensor` (views over arena
//! blocks) → `ops` (forward and backward side by side, calling `cpu`
//! kernels) with `autograd` (the tape) → `nn` (layers) → `model`, `optim`,
//! `data` → `train`.

pub mod alloc;
pub mod autograd;
pub mod bench;
pub mod checkpoint;
pub mod cpu;
pub mod cuda;
pub mod data;
pub mod error;
pub mod model;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod plan;
pub mod rng;
pub mod tensor;
pub mod train;

/// CUDA sources embedded by `build.rs` from `kernels/`.
pub mod kernels {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

pub use alloc::{Arena, ArenaConfig, Tag};
pub use error::{Error, Result};
pub use tensor::{DType, Device, Tensor};
