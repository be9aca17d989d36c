//! The trainer as a library: plan a step's memory before running it, then
//! train with gradient accumulation, bf16 activations and recompute, step by
//! step, reading the arena's figures as it goes.
//!
//! cargo run --release --example trainer

use headroom::alloc::{fmt_bytes, Arena, ArenaConfig};
use headroom::train::{plan_step, Precision, Recompute, Run, TrainConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cfg = TrainConfig {
        batch: 16,
        accum: 2,
        precision: Precision::Bf16,
        recompute: Recompute::All,
        progress: false,
        ..TrainConfig::default()
    };
    // Planned on the meta device: no memory touched, no kernel run.
    let plan = plan_step(&cfg)?;
    println!("planned peak: {} allocated, {} reserved", fmt_bytes(plan.allocated.peak), fmt_bytes(plan.reserved.peak));

    let arena = Arena::new(ArenaConfig { budget: Some(plan.reserved.peak), ..Default::default() })?;
    let mut run = Run::new(&cfg, arena.clone())?;
    for _ in 0..60 {
        let out = run.train_step()?;
        if run.step % 20 == 0 {
            let s = arena.stats();
            println!(
                "step {:>3}  loss {:.4}  allocated {}  peak {}",
                run.step,
                out.loss,
                fmt_bytes(s.allocated.current),
                fmt_bytes(s.allocated.peak)
            );
        }
    }
    println!(
        "measured peak: {} allocated, {} reserved",
        fmt_bytes(arena.stats().allocated.peak),
        fmt_bytes(arena.stats().reserved.peak)
    );
    Ok(())
}
