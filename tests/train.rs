//! The default model trains, and its memory is exactly accounted for.

use headroom::alloc::{Arena, Tag, TraceKind};
use headroom::autograd::{backward, saved_storages};
use headroom::data::spoken_digits;
use headroom::model::ModelConfig;
use headroom::model::{Classifier, ClassifierConfig};
use headroom::nn::Linear;
use headroom::optim::{AdamW, AdamWConfig, Optimizer};
use headroom::rng::Rng;
use headroom::train::{train, TrainConfig};
use headroom::{DType, Tensor};
use std::collections::{HashMap, HashSet};

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

/// The default model of `headroom train` (its settings from
/// `TrainConfig::default()`), built through the public model API.
fn default_model(arena: &Arena, rng: &mut Rng) -> (Classifier, TrainConfig, usize) {
    let d = TrainConfig::default();
    let ModelConfig::Digits(config) = d.model.clone() else { panic!("the default model is the digits classifier") };
    let layers = config.layers;
    (Classifier::new(arena, config, rng).unwrap(), d, layers)
}

#[test]
fn activation_bytes_equal_the_storages_the_tape_saves_at_its_fullest() {
    let arena = Arena::host();
    let mut rng = Rng::new(0);
    let (model, d, layers) = default_model(&arena, &mut rng);
    let params: Vec<Tensor> = model.params().into_iter().map(|(_, t)| t).collect();
    let mut opt = AdamW::new(params.clone(), AdamWConfig::default()).unwrap();
    let (set, _) = spoken_digits().unwrap();
    let (x, y) = set.batch(&arena, &(0..d.batch).collect::<Vec<_>>(), DType::F32).unwrap();
    arena.reset_peaks();
    let loss = model.forward(&x, Some(&mut rng), &[]).unwrap().cross_entropy(&y, None, 0.0).unwrap();

    // End of the forward: every node is recorded and none has run, so the
    // tape is at its fullest. Walk it: the storages it saves, each once,
    // minus those that are not op outputs (parameters and the batch, which
    // saving does not make activations).
    let not_outputs: HashSet<_> = params.iter().chain([&x, &y]).map(|t| t.storage().block().location()).collect();
    let saved: Vec<_> = saved_storages().into_iter().filter(|s| !not_outputs.contains(&s.location)).collect();
    let bytes: usize = saved.iter().map(|s| s.bytes).sum();
    let requested: usize = saved.iter().map(|s| s.requested).sum();
    assert!(saved.len() >= 10 * layers, "{} saved storages", saved.len());
    let s = arena.stats();
    assert_eq!(s.tag(Tag::Activation).allocated.current, bytes, "Activation bytes = the saved storages' blocks");
    assert_eq!(s.tag(Tag::Activation).requested.current, requested);
    // The arena's own list of Activation blocks is exactly those storages.
    let mut arena_side: Vec<_> =
        arena.live_blocks().into_iter().filter(|b| b.tag == Tag::Activation).map(|b| (b.pool, b.offset)).collect();
    let mut tape_side: Vec<_> = saved.iter().map(|s| s.location).collect();
    arena_side.sort();
    tape_side.sort();
    assert_eq!(arena_side, tape_side);

    backward(&loss).unwrap();
    opt.step().unwrap();
    opt.zero_grad();
    drop(loss);
    let s = arena.stats();
    assert_eq!(s.tag(Tag::Activation).allocated.current, 0, "backward freed every activation");
    assert_eq!(s.tag(Tag::Activation).allocated.peak, bytes, "the step's Activation peak is the tape at its fullest");
    assert_eq!(s.tag(Tag::Activation).requested.peak, requested);
    assert!(saved_storages().is_empty());
}

#[test]
fn backward_frees_saved_tensors_and_intermediate_gradients_as_it_goes() {
    let arena = Arena::host();
    let mut rng = Rng::new(5);
    // Six linear + gelu layers over a batch whose activations (512 × 64 per
    // tensor) dwarf the weights (64 × 64).
    let (layers, batch, width) = (6, 512, 64);
    let act = batch * width * 4; // bytes of one activation or its gradient (a multiple of 512)
    let net: Vec<Linear> = (0..layers).map(|_| Linear::new(&arena, width, width, true, &mut rng).unwrap()).collect();
    let x = Tensor::randn(&arena, &[batch, width], 1.0, DType::F32, Tag::Data, &mut rng).unwrap();
    let target = Tensor::zeros(&arena, &[batch, width], DType::F32, Tag::Data).unwrap();
    let mut h = x.clone();
    for layer in &net {
        h = layer.forward(&h).unwrap().gelu().unwrap();
    }
    let loss = h.mse_loss(&target).unwrap();
    drop(h);
    let start = arena.stats();
    let start_act = start.tag(Tag::Activation).allocated.current;
    // Each layer saves its pre-activation (for gelu) and its output (for the
    // next matmul, or the loss): 2 per layer.
    assert_eq!(start_act, 2 * layers * act);

    // Replay the backward's trace over the blocks live now: tag per block.
    let mut tags: HashMap<(&str, usize), (Tag, usize)> =
        arena.live_blocks().into_iter().map(|b| ((b.pool, b.offset), (b.tag, b.bytes))).collect();
    let sum = |tags: &HashMap<(&str, usize), (Tag, usize)>, tag: Tag| -> usize {
        tags.values().filter(|(t, _)| *t == tag).map(|(_, b)| b).sum()
    };
    assert_eq!(sum(&tags, Tag::Activation), start_act);
    arena.set_tracing(true);
    backward(&loss).unwrap();
    arena.set_tracing(false);
    let (mut prev, mut temp_peak) = (start_act, 0);
    let mut at_grads = Vec::new(); // Activation bytes as each parameter gradient arrives
    for e in arena.take_trace() {
        let key = (e.pool, e.offset);
        match e.kind {
            TraceKind::Alloc => {
                tags.insert(key, (e.tag.unwrap(), e.bytes));
                if e.tag == Some(Tag::Gradient) {
                    at_grads.push(sum(&tags, Tag::Activation)); // a `.grad` made by copying
                }
            }
            TraceKind::Free => {
                tags.remove(&key).expect("frees a live block");
            }
            TraceKind::Retag => {
                tags.get_mut(&key).expect("retags a live block").0 = e.tag.unwrap();
                if e.tag == Some(Tag::Gradient) {
                    at_grads.push(sum(&tags, Tag::Activation)); // an op's output kept as `.grad`
                }
            }
            _ => {}
        }
        let now = sum(&tags, Tag::Activation);
        assert!(now <= prev, "Activation bytes grew during backward: {prev} → {now} at {e:?}");
        prev = now;
        temp_peak = temp_peak.max(sum(&tags, Tag::Temporary));
    }
    assert_eq!(prev, 0, "every saved tensor was freed");
    // Bias then weight gradient per layer, top layer first. Each node's saved
    // tensors go as soon as it has run, so when layer l's weight gradient
    // arrives only what the nodes below still need is left: the
    // pre-activations of layers 0..l and the outputs of layers 0..l − 1
    // (2l − 1 tensors; none at layer 0, whose matmul saved the input batch).
    assert_eq!(at_grads.len(), 2 * layers);
    let at_weights: Vec<usize> = at_grads.iter().skip(1).step_by(2).copied().collect();
    let expect: Vec<usize> = (0..layers).rev().map(|l| (2 * l).saturating_sub(1) * act).collect();
    assert_eq!(at_weights, expect, "activation bytes at each weight gradient, top layer first");
    // Intermediate gradients go as soon as they are consumed: at most an
    // incoming gradient, the gradient going down and a weight gradient
    // being made are alive at once, whatever the depth (deferred frees would
    // keep 2 per layer).
    assert!(temp_peak <= 2 * act + width * width * 4 + 512, "Temporary peak {temp_peak} during backward");
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
    // Less than one 2 MiB page: not even the parameters fit, whatever the micro-batch.
    let cfg = TrainConfig { budget: Some(1 << 20), ..quick(0, 2) };
    let err = train(&cfg).unwrap_err();
    assert!(err.is_oom(), "{err}");
    assert!(err.to_string().contains("budget"), "{err}");
}
