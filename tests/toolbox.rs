//! The memory toolbox: recompute, accumulation, mixed precision, OOM
//! recovery, checkpoints — each proven equal to the plain run.

use headroom::alloc::{Arena, Tag};
use headroom::autograd::backward;
use headroom::data::spoken_digits;
use headroom::model::ModelConfig;
use headroom::model::{Classifier, ClassifierConfig};
use headroom::rng::Rng;
use headroom::train::{plan_step, resolve_recompute, train, LossScaler, Precision, Recompute, Run, TrainConfig};
use headroom::DType;

fn model(arena: &Arena, layers: usize, dropout: f32) -> Classifier {
    let (set, _) = spoken_digits().unwrap();
    let config = ClassifierConfig {
        frames: set.frames,
        features: set.features,
        classes: 10,
        dim: 32,
        layers,
        heads: 4,
        hidden: 64,
        dropout,
    };
    Classifier::new(arena, config, &mut Rng::new(7)).unwrap()
}

/// Gradients (f32 bits) of one step with activations in `dtype` and the
/// blocks of `mask` recomputed, and the arena's Activation peak during it.
fn step_grads(layers: usize, mask: &[bool], dtype: DType) -> (Vec<Vec<u32>>, usize) {
    let arena = Arena::host();
    let m = model(&arena, layers, 0.1);
    let (set, _) = spoken_digits().unwrap();
    let (x, y) = set.batch(&arena, &(0..16).collect::<Vec<_>>(), dtype).unwrap();
    arena.reset_peaks();
    let mut rng = Rng::new(42);
    let loss = m.forward(&x, Some(&mut rng), mask).unwrap().cross_entropy(&y, None, 0.0).unwrap();
    backward(&loss).unwrap();
    let grads = m
        .params()
        .iter()
        .map(|(_, p)| p.grad().unwrap().to_vec_f32().unwrap().iter().map(|v| v.to_bits()).collect())
        .collect();
    (grads, arena.stats().tag(Tag::Activation).allocated.peak)
}

#[test]
fn recompute_gives_bit_identical_gradients_with_dropout() {
    // Bit-identity is promised at a fixed thread count: pin rayon to 2
    // threads for every run (matmul's own pool never splits K, so its
    // results do not depend on threads).
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        assert_eq!(rayon::current_num_threads(), 2);
        for dtype in [DType::F32, DType::BF16] {
            let (plain, _) = step_grads(3, &Recompute::None.mask(3), dtype);
            assert!(plain.iter().flatten().any(|&b| b != 0), "{dtype}: the gradients are not all zero");
            for policy in [Recompute::All, Recompute::Every(2)] {
                let mask = policy.mask(3);
                let (recomputed, _) = step_grads(3, &mask, dtype);
                assert!(plain == recomputed, "{dtype}, recompute {mask:?}: gradients differ from the plain run");
            }
        }
    });
}

#[test]
fn recompute_cuts_a_12_block_activation_peak_by_well_over_half() {
    let (_, plain) = step_grads(12, &[false; 12], DType::F32);
    let (_, recomputed) = step_grads(12, &[true; 12], DType::F32);
    println!("12 blocks: activation peak {plain} B plain, {recomputed} B with recompute");
    assert!((recomputed as f64) < 0.35 * plain as f64, "{recomputed} vs {plain}");
}

#[test]
fn recompute_policies_pick_the_blocks() {
    assert_eq!(Recompute::parse("every:2").unwrap().mask(5), [true, false, true, false, true]);
    assert_eq!(Recompute::parse("all").unwrap().mask(2), [true, true]);
    assert_eq!(Recompute::parse("none").unwrap().mask(2), [false, false]);
    assert!(Recompute::parse("every:0").is_err());
    assert!(Recompute::parse("sometimes").is_err());
}

fn cfg(steps: usize) -> TrainConfig {
    TrainConfig { steps: Some(steps), progress: false, model: ModelConfig::digits(32, 4, 64), ..TrainConfig::default() }
}

#[test]
fn auto_recompute_takes_the_fewest_blocks_that_fit() {
    let base = cfg(2);
    let none = plan_step(&base).unwrap().reserved.peak;
    let all = plan_step(&TrainConfig { recompute: Recompute::All, ..base.clone() }).unwrap().reserved.peak;
    assert!(all < none);
    let budget = all + (none - all) / 2;
    let c = TrainConfig { recompute: Recompute::Auto, budget: Some(budget), ..base };
    let mask = resolve_recompute(&c).unwrap();
    let n = mask.iter().filter(|&&m| m).count();
    assert!(n > 0 && n < 4, "{mask:?}");
    let r = train(&c).unwrap();
    assert_eq!(r.recomputed_blocks, n);
    assert_eq!(r.oom_recoveries, 0);
    assert!(r.peak_reserved_bytes <= budget);
}

fn params_after_one_step(batch: usize, accum: usize) -> Vec<f32> {
    let c = TrainConfig {
        batch,
        accum,
        model: ModelConfig::Digits(ClassifierConfig { dropout: 0.0, ..ClassifierConfig::digits(32, 4, 64) }),
        ..cfg(1)
    };
    let mut run = Run::new(&c, Arena::host()).unwrap();
    run.train_step().unwrap();
    run.params.iter().flat_map(|(_, p)| p.to_vec_f32().unwrap()).collect()
}

#[test]
fn accumulation_4x2_equals_8x1() {
    // Same samples, same loss mean; only the order of float additions
    // differs (two partial means vs one), so gradients agree to ~1e-7
    // relative and AdamW's first step (≈ lr·sign(g)) to well under 1e-5.
    let (a, b) = (params_after_one_step(4, 2), params_after_one_step(8, 1));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "parameters differ by {worst}");
}

#[test]
fn half_precision_halves_activation_memory() {
    let act = |p| train(&TrainConfig { precision: p, ..cfg(2) }).unwrap().peak_by_tag["activation"];
    let (f32b, bf16b, f16b) = (act(Precision::F32), act(Precision::Bf16), act(Precision::F16));
    println!("activation peak: f32 {f32b} B, bf16 {bf16b} B, f16 {f16b} B");
    for half in [bf16b, f16b] {
        let r = half as f64 / f32b as f64;
        assert!((0.45..0.6).contains(&r), "half/f32 activation ratio {r}");
    }
}

#[test]
fn an_overflow_step_changes_no_weight_and_is_counted() {
    let c = TrainConfig { precision: Precision::F16, ..cfg(1) };
    let mut run = Run::new(&c, Arena::host()).unwrap();
    run.scaler.scale = 1e30; // every f16 gradient overflows
    let before: Vec<f32> = run.params.iter().flat_map(|(_, p)| p.to_vec_f32().unwrap()).collect();
    let out = run.train_step().unwrap();
    let after: Vec<f32> = run.params.iter().flat_map(|(_, p)| p.to_vec_f32().unwrap()).collect();
    assert!(!out.applied);
    assert_eq!(before, after);
    assert_eq!(run.skipped_steps, 1);
    assert_eq!(run.scaler.scale, 5e29);
    assert!(run.params.iter().all(|(_, p)| p.grad().is_none()));
}

#[test]
fn loss_scale_follows_gradscaler_rules() {
    let mut s = LossScaler::new(true);
    assert_eq!(s.scale, 65536.0);
    for _ in 0..1999 {
        s.update(false);
    }
    assert_eq!(s.scale, 65536.0);
    s.update(false);
    assert_eq!(s.scale, 131072.0);
    s.update(true);
    assert_eq!((s.scale, s.clean_steps), (65536.0, 0));
}

#[test]
fn a_budget_just_under_the_plan_recovers_and_keeps_every_step() {
    let base = TrainConfig { batch: 64, ..cfg(3) };
    let planned = plan_step(&base).unwrap().reserved.peak;
    let c = TrainConfig { budget: Some(planned - 1), ..base };
    let r = train(&c).unwrap();
    assert_eq!(r.steps, 3);
    assert!(r.oom_recoveries >= 1);
    assert_eq!(r.micro_batch * r.accumulation, 64);
    assert!(r.peak_reserved_bytes < planned);
}

#[test]
fn the_plan_predicts_the_measured_peak_to_the_byte() {
    for c in [cfg(2), TrainConfig { precision: Precision::Bf16, recompute: Recompute::Every(2), ..cfg(2) }] {
        let planned = plan_step(&c).unwrap();
        let measured = train(&c).unwrap();
        assert_eq!(planned.allocated.peak, measured.peak_allocated_bytes);
        assert_eq!(planned.reserved.peak, measured.peak_reserved_bytes);
    }
}
