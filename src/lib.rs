//! headroom: a tensor engine that trains neural networks inside a memory
//! budget the user sets. Every byte goes through [`alloc::Arena`], so a run's
//! peak can be counted, capped, explained and predicted.

pub mod alloc;
pub mod rng;

/// CUDA sources embedded by `build.rs` from `kernels/`.
pub mod kernels {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}
pub mod autograd;
pub mod bench;
pub mod cpu;
pub mod error;
pub mod ops;
pub mod optim;
pub mod tensor;

pub use alloc::{Arena, ArenaConfig, Tag};
pub use error::{Error, Result};
pub use tensor::{DType, Device, Tensor};
