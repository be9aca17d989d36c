//! headroom: a tensor engine that trains neural networks inside a memory
//! budget the user sets. Every byte goes through [`alloc::Arena`], so a run's
//! peak can be counted, capped, explained and predicted.
//!
//! Layers, bottom up: `alloc` (the arena) → `tensor` (views over arena
//! blocks) → `ops` (forward and backward side by side, calling `cpu`
//! kernels) with `autograd` (the tape) → `nn` (layers) → `model`, `optim`,
//! `data` → `train`.
//!
//! Training embedded in your own program, inside a budget, with every byte
//! accounted for by tag:
//!
//! ```
//! use headroom::autograd::backward;
//! use headroom::nn::{Linear, Mlp};
//! use headroom::optim::{AdamW, AdamWConfig, Optimizer};
//! use headroom::{rng::Rng, Arena, ArenaConfig, DType, Tag, Tensor};
//!
//! let arena = Arena::new(ArenaConfig { budget: Some(64 << 20), ..Default::default() }).unwrap();
//! let mut rng = Rng::new(0);
//! let (mlp, head) = (Mlp::new(&arena, 8, 32, &mut rng).unwrap(), Linear::new(&arena, 8, 1, true, &mut rng).unwrap());
//! let mut params = Vec::new();
//! mlp.params("mlp.", &mut params);
//! head.params("head.", &mut params);
//! let config = AdamWConfig { lr: 1e-2, ..Default::default() };
//! let mut opt = AdamW::new(params.iter().map(|(_, t)| t.clone()).collect(), config).unwrap();
//! // Learn y = sum of the inputs.
//! let x = Tensor::randn(&arena, &[64, 8], 1.0, DType::F32, Tag::Data, &mut rng).unwrap();
//! let y = x.sum(&[1], true).unwrap();
//! let mut losses = Vec::new();
//! for _ in 0..100 {
//!     let loss = head.forward(&mlp.forward(&x).unwrap()).unwrap().mse_loss(&y).unwrap();
//!     losses.push(loss.item().unwrap());
//!     backward(&loss).unwrap();
//!     opt.step().unwrap();
//!     opt.zero_grad();
//! }
//! assert!(losses[99] < 0.1 * losses[0], "{losses:?}");
//! let s = arena.stats();
//! assert_eq!(s.tag(Tag::Activation).allocated.current, 0); // backward freed them all
//! assert!(s.tag(Tag::OptimizerState).allocated.current > 0); // AdamW's moments
//! assert!(s.reserved.peak <= 64 << 20); // never over the budget
//! ```

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
pub mod preset;
pub mod report;
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
