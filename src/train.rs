//! The trainer: the default model on the embedded spoken-digits set, with
//! live memory figures and a final report by tag.

use crate::alloc::{fmt_bytes, Arena, ArenaConfig, Tag};
use crate::autograd::{self, no_grad};
use crate::data::{spoken_digits, Sequences};
use crate::error::Result;
use crate::model::{Classifier, ClassifierConfig};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Optimizer};
use crate::rng::Rng;
use crate::tensor::DType;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub batch: usize,
    /// Optimizer steps; `None` runs `epochs` full passes.
    pub steps: Option<usize>,
    pub epochs: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub clip: f32,
    pub seed: u64,
    pub budget: Option<usize>,
    pub eval_every: usize,
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub hidden: usize,
    pub dropout: f32,
    /// Print progress to stderr.
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch: 32,
            steps: None,
            epochs: 8,
            lr: 2e-3,
            weight_decay: 0.01,
            clip: 1.0,
            seed: 0,
            budget: None,
            eval_every: 0,
            dim: 64,
            layers: 2,
            heads: 4,
            hidden: 128,
            dropout: 0.1,
            progress: true,
        }
    }
}

/// What a run did, as `headroom train --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub steps: usize,
    pub samples: usize,
    pub parameters: usize,
    pub loss_first: f32,
    pub loss_last: f32,
    /// Held-out accuracy (fraction correct on unseen speakers).
    pub eval_metric: f32,
    pub eval_metric_name: &'static str,
    pub peak_allocated_bytes: usize,
    pub peak_reserved_bytes: usize,
    /// Peak allocated bytes of each tag over the run.
    pub peak_by_tag: BTreeMap<&'static str, usize>,
    /// Allocated bytes of each tag at the moment of the overall peak.
    pub by_tag_at_peak: BTreeMap<&'static str, usize>,
    pub peak_op: &'static str,
    pub step_time_ms_median: f64,
    pub samples_per_second: f64,
    pub oom_recoveries: usize,
    pub skipped_steps: usize,
    pub budget_bytes: Option<usize>,
}

/// Train the default classifier on the embedded data set.
pub fn train(cfg: &TrainConfig) -> Result<TrainReport> {
    let arena = Arena::new(ArenaConfig { budget: cfg.budget, ..Default::default() })
        .map_err(|e| crate::Error::invalid("train", e.to_string()))?;
    let (train_set, test_set) = spoken_digits()?;
    let mut rng = Rng::new(cfg.seed);
    let model = Classifier::new(
        &arena,
        ClassifierConfig {
            frames: train_set.frames,
            features: train_set.features,
            classes: train_set.classes,
            dim: cfg.dim,
            layers: cfg.layers,
            heads: cfg.heads,
            hidden: cfg.hidden,
            dropout: cfg.dropout,
        },
        &mut rng,
    )?;
    let params: Vec<_> = model.params().into_iter().map(|(_, t)| t).collect();
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig { lr: cfg.lr as f64, weight_decay: cfg.weight_decay as f64, ..Default::default() },
    )?;
    let per_epoch = train_set.n / cfg.batch;
    let total = cfg.steps.unwrap_or(cfg.epochs * per_epoch);
    if cfg.progress {
        eprintln!(
            "training a {}-block transformer ({} parameters) on spoken digits: {} clips of {}×{} log-mel, batch {}, {} steps",
            cfg.layers,
            model.parameter_count(),
            train_set.n,
            train_set.frames,
            train_set.features,
            cfg.batch,
            total
        );
    }
    let mut order = train_set.order(&mut rng);
    let (mut pos, mut loss_first, mut loss_last) = (0, f32::NAN, f32::NAN);
    let mut times = Vec::with_capacity(total);
    let start = Instant::now();
    let mut smooth = f32::NAN;
    for step in 0..total {
        if pos + cfg.batch > order.len() {
            order = train_set.order(&mut rng);
            pos = 0;
        }
        let t0 = Instant::now();
        let (x, y) = train_set.batch(&arena, &order[pos..pos + cfg.batch], DType::F32)?;
        pos += cfg.batch;
        let logits = model.forward(&x, Some(&mut rng))?;
        let loss = logits.cross_entropy(&y, None, 0.0)?;
        drop((logits, x, y));
        let l = loss.item()?;
        autograd::backward(&loss)?;
        drop(loss);
        clip_grad_norm(&params, cfg.clip)?;
        opt.step()?;
        opt.zero_grad();
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        if step == 0 {
            loss_first = l;
        }
        loss_last = l;
        smooth = if smooth.is_nan() { l } else { 0.9 * smooth + 0.1 * l };
        if cfg.progress && (step % 10 == 0 || step + 1 == total) {
            let s = arena.stats();
            let rate = ((step + 1) * cfg.batch) as f64 / start.elapsed().as_secs_f64();
            let budget = cfg.budget.map_or(String::new(), |b| format!(" of {}", fmt_bytes(b)));
            eprint!(
                "\rstep {:>5}/{total}  loss {smooth:.4}  {rate:>6.0} samples/s  mem {} alloc, {} reserved, peak {}{budget}   ",
                step + 1,
                fmt_bytes(s.allocated.current),
                fmt_bytes(s.reserved.current),
                fmt_bytes(s.allocated.peak)
            );
            let _ = std::io::stderr().flush();
        }
        if cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0 && cfg.progress {
            let acc = evaluate(&arena, &model, &test_set, cfg.batch)?;
            eprintln!("\n  held-out accuracy after {} steps: {:.1}%", step + 1, 100.0 * acc);
        }
    }
    if cfg.progress {
        eprintln!();
    }
    let eval = evaluate(&arena, &model, &test_set, cfg.batch)?;
    let s = arena.stats();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let report = TrainReport {
        steps: total,
        samples: total * cfg.batch,
        parameters: model.parameter_count(),
        loss_first,
        loss_last,
        eval_metric: eval,
        eval_metric_name: "accuracy",
        peak_allocated_bytes: s.allocated.peak,
        peak_reserved_bytes: s.reserved.peak,
        peak_by_tag: Tag::ALL.iter().map(|&t| (t.name(), s.tag(t).allocated.peak)).collect(),
        by_tag_at_peak: Tag::ALL.iter().enumerate().map(|(i, &t)| (t.name(), s.by_tag_at_peak[i])).collect(),
        peak_op: s.allocated.peak_label,
        step_time_ms_median: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        samples_per_second: (total * cfg.batch) as f64 / start.elapsed().as_secs_f64(),
        oom_recoveries: 0,
        skipped_steps: 0,
        budget_bytes: cfg.budget,
    };
    if cfg.progress {
        eprintln!(
            "loss {:.4} → {:.4}; held-out accuracy {:.1}% (chance 10%); {:.1} ms/step median",
            report.loss_first,
            report.loss_last,
            100.0 * report.eval_metric,
            report.step_time_ms_median
        );
        eprintln!("memory by tag over the run:\n{}", s.table());
    }
    Ok(report)
}

/// Fraction of `set` classified correctly, with no activations kept.
pub fn evaluate(arena: &Arena, model: &Classifier, set: &Sequences, batch: usize) -> Result<f32> {
    let _g = no_grad();
    let mut correct = 0;
    for start in (0..set.n).step_by(batch) {
        let idx: Vec<usize> = (start..(start + batch).min(set.n)).collect();
        let (x, y) = set.batch(arena, &idx, DType::F32)?;
        let logits = model.forward(&x, None)?.to_vec_f32()?;
        let labels = y.to_vec::<i32>()?;
        let c = set.classes;
        for (i, &label) in labels.iter().enumerate() {
            let row = &logits[i * c..(i + 1) * c];
            let best = (0..c).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0);
            correct += (best as i32 == label) as usize;
        }
    }
    Ok(correct as f32 / set.n as f32)
}
