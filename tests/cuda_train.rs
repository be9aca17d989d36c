//! Training end to end on the emulated GPU: a tiny digits transformer
//! (embedding of frames, layer norm, fused attention, MLP, cross-entropy,
//! AdamW, clipping) learns one fixed batch, and the plan for CUDA
//! (`train::simulate`) gives the measured arena peak to the byte. The
//! emulator is slow (seconds a step), so: batch 4, 5 steps, no evaluation
//! pass on the GPU (its peak, without gradients, is below a step's).

mod cuda_common;
mod device;
use headroom::alloc::{Arena, ArenaConfig};
use headroom::cuda::DeviceChoice;
use headroom::model::ModelConfig;
use headroom::train::{simulate, Run, TrainConfig};
use std::time::Instant;

#[test]
fn a_tiny_transformer_trains_on_the_emulated_gpu_as_planned() {
    let start = Instant::now();
    let gpu = device::gpu();
    let cfg = TrainConfig {
        model: ModelConfig::digits(16, 1, 32),
        device: DeviceChoice::Cuda,
        batch: 4,
        lr: 1e-2,
        progress: false,
        ..Default::default()
    };
    let (planned, run, _) = simulate(&cfg, vec![false], false).unwrap();
    drop(run);
    let arena = Arena::cuda(&gpu, ArenaConfig::default()).unwrap();
    let mut run = Run::new(&cfg, arena.clone()).unwrap();
    // Every step sees the same 4 samples, so its loss must fall.
    run.order = (0..5).flat_map(|_| 0..4).collect();
    let losses: Vec<f32> = (0..5).map(|_| run.train_step().unwrap().loss).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[4] < 0.9 * losses[0], "the loss falls: {losses:?}");
    let (p, m) = (planned.stats(), arena.stats());
    assert_eq!(p.allocated.peak, m.allocated.peak, "planned vs measured allocated peak");
    assert_eq!(p.by_tag_at_peak, m.by_tag_at_peak);
    eprintln!("losses {losses:?}, peak {} bytes, {:.1} s", m.allocated.peak, start.elapsed().as_secs_f64());
}
