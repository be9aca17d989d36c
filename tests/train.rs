//! The default model trains, and its memory is exactly accounted for.

use headroom::alloc::{Arena, Tag};
use headroom::autograd::{backward, reset_saved_peak, saved_bytes};
use headroom::data::spoken_digits;
use headroom::model::ModelConfig;
use headroom::model::{Classifier, ClassifierConfig};
use headroom::optim::{AdamW, AdamWConfig, Optimizer};
use headroom::rng::Rng;
use headroom::train::{train, TrainConfig};
use headroom::DType;
use std::collections::HashSet;

fn small_model(arena: &Arena, rng: &mut Rng) -> Classifier {
    let (train_set, _) = spoken_digits().unwrap();
    let config = ClassifierConfig {
        frames: train_set.frames,
        features: train_set.features,
        classes: 10,
        dim: 32,
        layers: 2,
        heads: 4,
        hidden: 64,
        dropout: 0.1,
    };
    Classifier::new(arena, config, rng).unwrap()
}

#[test]
fn activation_peak_equals_what_the_tape_saved_at_its_fullest() {
    let arena = Arena::host();
    let mut rng = Rng::new(0);
    let model = small_model(&arena, &mut rng);
    let (set, _) = spoken_digits().unwrap();
    let (x, y) = set.batch(&arena, &(0..16).collect::<Vec<_>>(), DType::F32).unwrap();
    arena.reset_peaks();
    reset_saved_peak();
    let loss = model.forward(&x, Some(&mut rng), &[]).unwrap().cross_entropy(&y, None, 0.0).unwrap();
    let (held, _) = saved_bytes();
    assert!(held > 0);
    assert_eq!(arena.stats().tag(Tag::Activation).requested.current, held);
    backward(&loss).unwrap();
    let s = arena.stats();
    let (now, tape_peak) = saved_bytes();
    assert_eq!(now, 0);
    assert_eq!(s.tag(Tag::Activation).requested.current, 0, "backward freed every activation");
    assert_eq!(s.tag(Tag::Activation).requested.peak, tape_peak, "arena peak = tape peak, to the byte");
}

#[test]
fn every_tensor_byte_is_in_the_arena() {
    let arena = Arena::host();
    let mut rng = Rng::new(1);
    let model = small_model(&arena, &mut rng);
    let params: Vec<_> = model.params().into_iter().map(|(_, t)| t).collect();
    let mut opt = AdamW::new(params.clone(), AdamWConfig::default()).unwrap();
    let (set, _) = spoken_digits().unwrap();
    let (x, y) = set.batch(&arena, &(0..8).collect::<Vec<_>>(), DType::F32).unwrap();
    let loss = model.forward(&x, Some(&mut rng), &[]).unwrap().cross_entropy(&y, None, 0.0).unwrap();
    backward(&loss).unwrap();
    opt.step().unwrap();
    drop(loss);
    // Sum the blocks of every storage we can reach; shared storage counted once.
    let mut seen = HashSet::new();
    let mut held = 0;
    let grads: Vec<_> = params.iter().filter_map(|p| p.grad()).collect();
    let state: Vec<_> = opt.state_tensors().into_iter().map(|s| s.tensor).collect();
    for t in params.iter().chain(&grads).chain(&state).chain([&x, &y]) {
        if seen.insert(t.storage().block().location()) {
            held += t.storage().block().size();
        }
    }
    let s = arena.stats();
    assert_eq!(s.allocated.current, held, "arena holds exactly what the tensors hold");
    let p_bytes: usize = params.iter().map(|p| p.storage().block().size()).sum();
    assert_eq!(s.tag(Tag::Parameter).allocated.current, p_bytes);
    assert_eq!(s.tag(Tag::Gradient).allocated.current, p_bytes);
    assert_eq!(s.tag(Tag::OptimizerState).allocated.current, 2 * p_bytes);
}

fn quick(seed: u64, steps: usize) -> TrainConfig {
    TrainConfig {
        steps: Some(steps),
        seed,
        progress: false,
        model: ModelConfig::digits(32, 2, 64),
        ..TrainConfig::default()
    }
}

#[test]
fn the_default_model_learns_and_generalises_to_unseen_speakers() {
    let r = train(&quick(0, 250)).unwrap();
    assert!(r.loss_last < 0.6 * r.loss_first, "loss {} → {}", r.loss_first, r.loss_last);
    assert!(r.eval_metric > 0.4, "held-out accuracy {} (chance 0.1)", r.eval_metric);
    assert!(r.peak_allocated_bytes > 0 && r.peak_reserved_bytes >= r.peak_allocated_bytes);
    assert!(r.peak_by_tag["activation"] > 0 && r.peak_by_tag["optimizer_state"] > 0);
}

#[test]
fn results_are_identical_for_a_seed_whatever_the_thread_count() {
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| train(&quick(3, 6)).unwrap())
    };
    let (a, b, c) = (run(1), run(2), run(2));
    assert_eq!(a.loss_last.to_bits(), b.loss_last.to_bits());
    assert_eq!(b.loss_last.to_bits(), c.loss_last.to_bits());
    assert_eq!(a.eval_metric, b.eval_metric);
}

#[test]
fn a_budget_too_small_is_an_error_not_a_crash() {
    let cfg = TrainConfig { budget: Some(3 << 20), ..quick(0, 2) };
    let err = train(&cfg).unwrap_err();
    assert!(err.is_oom(), "{err}");
    assert!(err.to_string().contains("budget"), "{err}");
}
