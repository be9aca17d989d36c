//! The worked example of docs/MEMORY.md, checked: every figure the document
//! derives by hand from the accounting rules is asserted here.

use headroom::alloc::{Arena, Tag, TraceKind};
use headroom::autograd::backward;
use headroom::optim::{AdamW, AdamWConfig, Optimizer};
use headroom::{DType, Tensor};

const KIB: usize = 1024;

#[test]
fn the_worked_example_in_memory_md_holds() {
    let arena = Arena::host();
    arena.set_tracing(true);
    let p = |shape: &[usize]| Tensor::zeros(&arena, shape, DType::F32, Tag::Parameter).unwrap().requires_grad();
    let (w1, b1, w2, b2) = (p(&[128, 64]), p(&[128]), p(&[1, 128]), p(&[1]));
    let x = Tensor::zeros(&arena, &[8, 64], DType::F32, Tag::Data).unwrap();
    let y = Tensor::zeros(&arena, &[8, 1], DType::F32, Tag::Data).unwrap();
    let mut opt = AdamW::new(vec![w1.clone(), b1.clone(), w2.clone(), b2.clone()], AdamWConfig::default()).unwrap();

    // Step 1: parameters 32 KiB + 512 + 512 + 512 = 33.5 KiB; data 2 KiB + 512 B.
    let s = arena.stats();
    assert_eq!(s.tag(Tag::Parameter).allocated.current, 32 * KIB + 3 * 512);
    assert_eq!(s.tag(Tag::Parameter).requested.current, 32 * KIB + 512 + 512 + 4);
    assert_eq!(s.tag(Tag::Data).allocated.current, 2 * KIB + 512);

    let h = x.matmul(&w1.transpose(0, 1).unwrap()).unwrap().add(&b1).unwrap().relu().unwrap();
    let pred = h.matmul(&w2.transpose(0, 1).unwrap()).unwrap().add(&b2).unwrap();
    drop(h);
    let loss = pred.mse_loss(&y).unwrap();
    drop(pred);
    // Saved for backward: relu's input (4 KiB), relu's output (4 KiB, saved
    // by the second matmul), the prediction (32 B → 512 B, saved by mse).
    let s = arena.stats();
    assert_eq!(s.tag(Tag::Activation).allocated.current, 4 * KIB + 4 * KIB + 512);
    assert_eq!(s.tag(Tag::Activation).requested.current, 4 * KIB + 4 * KIB + 32);
    assert_eq!(s.tag(Tag::Temporary).allocated.current, 512); // the loss itself
    backward(&loss).unwrap();
    drop(loss);
    opt.step().unwrap();

    // After the step: gradients equal the parameters, Adam holds two moments each.
    let s = arena.stats();
    assert_eq!(s.tag(Tag::Gradient).allocated.current, 32 * KIB + 3 * 512);
    assert_eq!(s.tag(Tag::OptimizerState).allocated.current, 2 * (32 * KIB + 3 * 512));
    assert_eq!(s.tag(Tag::Activation).allocated.current, 0);
    assert_eq!(s.tag(Tag::Temporary).allocated.current, 0);
    // The peak: during the optimizer step, when the moments are allocated.
    assert_eq!(s.allocated.peak, 4 * (32 * KIB + 3 * 512) + 2 * KIB + 512);
    assert_eq!(s.allocated.peak_label, "adamw");
    // Reserved: the 32 KiB weight and its gradient and moments are ≤ 1 MiB,
    // so everything is in the small pool: one 2 MiB page.
    assert_eq!(s.reserved.peak, 2 << 20);
    let allocs = arena.take_trace().iter().filter(|e| e.kind == TraceKind::Alloc).count();
    assert_eq!(allocs as u64, s.allocs);
    opt.zero_grad();
    assert_eq!(arena.stats().tag(Tag::Gradient).allocated.current, 0);
}
