//! headroom embedded in a program of your own: an arena with a budget, a
//! model from the library's layers, a hand-written training loop, the memory
//! figures by tag, and out-of-memory as an error you can handle.
//!
//! cargo run --release --example embedded

use headroom::alloc::{fmt_bytes, Arena, ArenaConfig, Tag};
use headroom::autograd::{backward, no_grad};
use headroom::nn::{Linear, Mlp};
use headroom::optim::{AdamW, AdamWConfig, Optimizer};
use headroom::rng::Rng;
use headroom::{DType, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Every byte below comes from this arena, and it will never hold more
    // than 16 MiB of committed memory.
    let arena = Arena::new(ArenaConfig { budget: Some(16 << 20), ..Default::default() })?;
    let mut rng = Rng::new(0);

    // Learn y = sin(x₀) + x₁² from 2 inputs with a small MLP.
    let inp = Linear::new(&arena, 2, 64, true, &mut rng)?;
    let mlp = Mlp::new(&arena, 64, 128, &mut rng)?;
    let out = Linear::new(&arena, 64, 1, true, &mut rng)?;
    let mut params = Vec::new();
    inp.params("in.", &mut params);
    mlp.params("mlp.", &mut params);
    out.params("out.", &mut params);
    let mut opt =
        AdamW::new(params.iter().map(|(_, t)| t.clone()).collect(), AdamWConfig { lr: 3e-3, ..Default::default() })?;
    let forward = |x: &Tensor| -> headroom::Result<Tensor> { out.forward(&mlp.forward(&inp.forward(x)?)?) };

    let batch = |rng: &mut Rng| -> headroom::Result<(Tensor, Tensor)> {
        let xs: Vec<f32> = (0..256 * 2).map(|_| rng.uniform() * 4.0 - 2.0).collect();
        let ys: Vec<f32> = xs.chunks(2).map(|p| p[0].sin() + p[1] * p[1]).collect();
        Ok((
            Tensor::from_f32(&arena, &[256, 2], &xs, DType::F32, Tag::Data)?,
            Tensor::from_f32(&arena, &[256, 1], &ys, DType::F32, Tag::Data)?,
        ))
    };
    for step in 0..300 {
        let (x, y) = batch(&mut rng)?;
        let loss = forward(&x)?.mse_loss(&y)?;
        if step % 50 == 0 {
            println!("step {step:>3}  mse {:.4}", loss.item()?);
        }
        backward(&loss)?;
        opt.step()?;
        opt.zero_grad();
    }
    let (x, y) = batch(&mut rng)?;
    let mse = {
        let _g = no_grad(); // evaluation keeps no activations
        forward(&x)?.mse_loss(&y)?.item()?
    };
    println!("held-out mse {mse:.4}\n");
    println!("{}\n", arena.stats().table());

    // Asking for more than the budget is an Err with the whole story, not a crash.
    match Tensor::zeros(&arena, &[64, 1024, 1024], DType::F32, Tag::Activation) {
        Ok(_) => println!("unexpectedly fitted"),
        Err(e) => println!("a 256 MiB request under a {} budget:\n  {e}", fmt_bytes(16 << 20)),
    }
    Ok(())
}
