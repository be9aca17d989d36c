//! The trainer: the default model on the embedded spoken-digits set, with
//! the memory toolbox — gradient accumulation, activation recompute, mixed
//! precision with dynamic loss scaling, recovery from out-of-memory steps and
//! crash-safe checkpoints — and live memory figures.

use crate::alloc::{fmt_bytes, Arena, ArenaConfig, Backing, Recording, StaticFigures, Stats, Tag};
use crate::autograd::{self, no_grad};
use crate::checkpoint::{self, TrainerState, FORMAT};
use crate::data::{spoken_digits, Sequences};
use crate::error::{Error, Result};
use crate::model::{Classifier, ClassifierConfig};
use crate::ops::AttentionKind;
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Optimizer};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

/// The dtype activations and compute copies use; master weights stay f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
    pub fn parse(s: &str) -> std::result::Result<Precision, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("precision `{s}`: use f32, f16 or bf16")),
        }
    }
}

/// Which transformer blocks re-run their forward in backward instead of
/// keeping their activations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recompute {
    None,
    All,
    /// Blocks 0, K, 2K, …
    Every(usize),
    /// The fewest blocks whose recompute makes the planned step fit the budget.
    Auto,
}

impl Recompute {
    pub fn parse(s: &str) -> std::result::Result<Recompute, String> {
        match s {
            "none" => Ok(Recompute::None),
            "all" => Ok(Recompute::All),
            "auto" => Ok(Recompute::Auto),
            _ => match s.strip_prefix("every:").map(str::parse::<usize>) {
                Some(Ok(k)) if k > 0 => Ok(Recompute::Every(k)),
                _ => Err(format!("recompute `{s}`: use none, all, every:K (K ≥ 1) or auto")),
            },
        }
    }

    /// One flag per block (`Auto` is resolved by the trainer's plan first).
    pub fn mask(&self, blocks: usize) -> Vec<bool> {
        (0..blocks)
            .map(|i| match self {
                Recompute::None | Recompute::Auto => false,
                Recompute::All => true,
                Recompute::Every(k) => i % k == 0,
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Samples per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimizer step: the effective batch is batch × accum.
    pub accum: usize,
    /// Optimizer steps; `None` runs `epochs` full passes.
    pub steps: Option<usize>,
    pub epochs: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub clip: f32,
    pub seed: u64,
    pub budget: Option<usize>,
    pub precision: Precision,
    pub recompute: Recompute,
    /// Fused (memory linear in sequence length) or naive attention.
    pub attention: AttentionKind,
    pub eval_every: usize,
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub hidden: usize,
    pub dropout: f32,
    pub checkpoint_dir: Option<PathBuf>,
    /// Write a checkpoint every N steps (and at the end) when a directory is set.
    pub checkpoint_every: usize,
    pub resume: bool,
    /// Print progress to stderr.
    pub progress: bool,
    /// Record the second step, plan its buffers statically, replay every later step.
    pub static_plan: bool,
    /// Write the memory report of one recorded steady-state step here (HTML).
    pub report: Option<PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch: 32,
            accum: 1,
            steps: None,
            epochs: 8,
            lr: 2e-3,
            weight_decay: 0.01,
            clip: 1.0,
            seed: 0,
            budget: None,
            precision: Precision::F32,
            recompute: Recompute::None,
            attention: AttentionKind::Fused,
            eval_every: 0,
            dim: 64,
            layers: 2,
            heads: 4,
            hidden: 128,
            dropout: 0.1,
            checkpoint_dir: None,
            checkpoint_every: 50,
            resume: false,
            progress: true,
            static_plan: false,
            report: None,
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
    pub loss_scale: f32,
    pub micro_batch: usize,
    pub accumulation: usize,
    pub precision: Precision,
    /// Blocks that recompute their activations.
    pub recomputed_blocks: usize,
    pub budget_bytes: Option<usize>,
    /// The static plan's figures (`--static-plan`).
    pub static_plan: Option<StaticFigures>,
}

/// Dynamic loss scaling for f16 (GradScaler's rules): start at 2^16, double
/// after 2000 clean steps, halve and skip the step on inf/NaN gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    pub enabled: bool,
    pub scale: f32,
    pub clean_steps: u32,
}

impl LossScaler {
    pub const INITIAL: f32 = 65536.0;
    pub const GROWTH_INTERVAL: u32 = 2000;

    pub fn new(enabled: bool) -> LossScaler {
        LossScaler { enabled, scale: if enabled { Self::INITIAL } else { 1.0 }, clean_steps: 0 }
    }

    /// Record a step's outcome.
    pub fn update(&mut self, overflow: bool) {
        if !self.enabled {
            return;
        }
        if overflow {
            self.scale *= 0.5;
            self.clean_steps = 0;
        } else {
            self.clean_steps += 1;
            if self.clean_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
        }
    }
}

/// The state of a run: what a checkpoint saves and a resume restores.
///
/// ```
/// use headroom::train::{Run, TrainConfig};
/// use headroom::Arena;
/// let cfg = TrainConfig { dim: 16, layers: 1, hidden: 32, progress: false, ..Default::default() };
/// let mut run = Run::new(&cfg, Arena::host()).unwrap();
/// let out = run.train_step().unwrap();
/// assert!(out.applied && out.loss > 0.0 && run.step == 1);
/// ```
pub struct Run {
    pub arena: Arena,
    pub model: Classifier,
    pub opt: AdamW,
    pub params: Vec<(String, Tensor)>,
    pub rng: Rng,
    pub scaler: LossScaler,
    pub micro: usize,
    pub accum: usize,
    pub step: usize,
    pub order: Vec<usize>,
    pub position: usize,
    pub oom_recoveries: usize,
    pub skipped_steps: usize,
    pub loss_first: f32,
    pub recompute: Vec<bool>,
    pub data: Sequences,
    cfg: TrainConfig,
}

/// Outcome of one optimizer step.
pub struct StepOutcome {
    /// Mean loss over the step's samples (0 on a meta arena).
    pub loss: f32,
    /// False when an overflow skipped the update.
    pub applied: bool,
}

impl Run {
    /// Build the model, optimizer and data order on `arena` (host to train,
    /// meta to plan: the same code asks for the same bytes).
    pub fn new(cfg: &TrainConfig, arena: Arena) -> Result<Run> {
        if cfg.batch == 0 || cfg.accum == 0 {
            return Err(Error::invalid("train", "--batch and --accum must be at least 1"));
        }
        let (data, _) = spoken_digits()?;
        if cfg.batch * cfg.accum > data.n {
            return Err(Error::invalid(
                "train",
                format!("an effective batch of {} is larger than the {} training clips", cfg.batch * cfg.accum, data.n),
            ));
        }
        let mut rng = Rng::new(cfg.seed);
        let mut model = Classifier::new(&arena, model_config(cfg, &data), &mut rng)?;
        model.set_attention(cfg.attention);
        let params = model.params();
        let opt = AdamW::new(
            params.iter().map(|(_, t)| t.clone()).collect(),
            AdamWConfig { lr: cfg.lr as f64, weight_decay: cfg.weight_decay as f64, ..Default::default() },
        )?;
        let order = data.order(&mut rng);
        let recompute = cfg.recompute.mask(cfg.layers);
        Ok(Run {
            arena,
            model,
            opt,
            params,
            rng,
            scaler: LossScaler::new(cfg.precision == Precision::F16),
            micro: cfg.batch,
            accum: cfg.accum,
            step: 0,
            order,
            position: 0,
            oom_recoveries: 0,
            skipped_steps: 0,
            loss_first: f32::NAN,
            recompute,
            data,
            cfg: cfg.clone(),
        })
    }

    fn effective(&self) -> usize {
        self.cfg.batch * self.cfg.accum
    }

    // The next step's samples; a new shuffled epoch when this one runs out.
    fn next_samples(&mut self) -> Vec<usize> {
        let n = self.effective();
        if self.position + n > self.order.len() {
            self.order = self.data.order(&mut self.rng);
            self.position = 0;
        }
        let s = self.order[self.position..self.position + n].to_vec();
        self.position += n;
        s
    }

    /// One optimizer step over the next effective batch. When a micro-batch
    /// runs out of memory, everything the step holds is dropped, the
    /// micro-batch halves, accumulation doubles, and the same samples are
    /// replayed with the same RNG state: no step and no sample is lost.
    pub fn train_step(&mut self) -> Result<StepOutcome> {
        let _step = self.arena.begin_step(); // a static plan replays inside it
        let samples = self.next_samples();
        let rng = self.rng.clone();
        loop {
            match self.try_step(&samples) {
                Ok(out) => {
                    self.step += 1;
                    return Ok(out);
                }
                Err(e) if e.is_oom() && self.micro > 1 => {
                    autograd::clear_tape();
                    self.opt.zero_grad();
                    self.rng = rng.clone();
                    self.micro = self.micro.div_ceil(2);
                    self.accum = samples.len().div_ceil(self.micro);
                    self.oom_recoveries += 1;
                    if self.cfg.progress && self.oom_recoveries == 1 && !self.arena_is_meta() {
                        eprintln!(
                            "\nout of memory at step {}: retrying it with micro-batch {} × {} accumulation steps (effective batch {} unchanged)",
                            self.step + 1,
                            self.micro,
                            self.accum,
                            samples.len()
                        );
                    }
                }
                Err(e) => {
                    autograd::clear_tape();
                    self.opt.zero_grad();
                    return Err(e);
                }
            }
        }
    }

    fn arena_is_meta(&self) -> bool {
        self.arena.backing() == Backing::Meta
    }

    fn try_step(&mut self, samples: &[usize]) -> Result<StepOutcome> {
        let dtype = self.cfg.precision.dtype();
        let mut total = 0.0f64;
        for chunk in samples.chunks(self.micro) {
            let (x, y) = self.data.batch(&self.arena, chunk, dtype)?;
            let logits = self.model.forward(&x, Some(&mut self.rng), &self.recompute)?;
            let loss = logits.cross_entropy(&y, None, 0.0)?;
            drop((logits, x, y));
            // Each micro-batch's mean, weighted by its share of the step.
            let weight = chunk.len() as f32 / samples.len() as f32;
            if !self.arena_is_meta() {
                total += loss.item()? as f64 * weight as f64;
            }
            let scaled = loss.mul_scalar(weight * self.scaler.scale)?;
            drop(loss);
            autograd::backward(&scaled)?;
        }
        let params: Vec<Tensor> = self.params.iter().map(|(_, t)| t.clone()).collect();
        if self.scaler.enabled {
            // Scaled gradients: a non-finite norm means an f16 overflow.
            let norm = clip_grad_norm(&params, f32::MAX)?;
            if !norm.is_finite() {
                self.opt.zero_grad();
                self.scaler.update(true);
                self.skipped_steps += 1;
                return Ok(StepOutcome { loss: total as f32, applied: false });
            }
            unscale(&params, 1.0 / self.scaler.scale)?;
        }
        clip_grad_norm(&params, self.cfg.clip)?;
        self.opt.step()?;
        self.opt.zero_grad();
        self.scaler.update(false);
        Ok(StepOutcome { loss: total as f32, applied: true })
    }

    /// The trainer's state for a checkpoint.
    pub fn state(&self) -> TrainerState {
        TrainerState {
            format: FORMAT.to_string(),
            step: self.step,
            rng_state: self.rng.state,
            loss_scale: self.scaler.scale,
            clean_steps: self.scaler.clean_steps,
            order: self.order.clone(),
            position: self.position,
            micro_batch: self.micro,
            accumulation: self.accum,
            oom_recoveries: self.oom_recoveries,
            skipped_steps: self.skipped_steps,
            loss_first: self.loss_first,
            adam_steps: (0..self.params.len()).map(|i| self.opt.param_step(i)).collect(),
            model: model_fingerprint(&self.cfg),
        }
    }

    /// Parameters and optimizer moments, by name.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = self.params.clone();
        for s in self.opt.state_tensors() {
            out.push((format!("optim.{}.{}", self.params[s.param].0, s.name), s.tensor));
        }
        out
    }

    pub fn save(&self, dir: &std::path::Path) -> Result<PathBuf> {
        checkpoint::save(dir, &self.named_tensors(), &self.state())
    }

    /// Continue from the newest checkpoint in `dir`.
    pub fn resume(&mut self, dir: &std::path::Path) -> Result<()> {
        let mut ck = checkpoint::load_latest(dir)?;
        let st = ck.state.clone();
        if st.model != model_fingerprint(&self.cfg) {
            return Err(Error::invalid(
                "resume",
                format!(
                    "{} was written for another model ({}); this run is {}",
                    ck.path.display(),
                    st.model,
                    model_fingerprint(&self.cfg)
                ),
            ));
        }
        if st.adam_steps.len() != self.params.len() || st.order.len() != self.data.n || st.position > st.order.len() {
            return Err(Error::invalid("resume", format!("{} does not match this model and data", ck.path.display())));
        }
        for (name, p) in &self.params {
            let v = ck.take(name, p.shape())?;
            p.data_mut::<f32>()?.copy_from_slice(&v);
        }
        for (i, (name, p)) in self.params.iter().enumerate() {
            if st.adam_steps[i] > 0 {
                let m = ck.take(&format!("optim.{name}.exp_avg"), p.shape())?;
                let v = ck.take(&format!("optim.{name}.exp_avg_sq"), p.shape())?;
                self.opt.restore(i, &m, &v, st.adam_steps[i])?;
            }
        }
        self.opt.set_steps(st.step as u64);
        self.step = st.step;
        self.rng = Rng { state: st.rng_state };
        self.scaler.scale = st.loss_scale;
        self.scaler.clean_steps = st.clean_steps;
        self.order = st.order;
        self.position = st.position;
        self.micro = st.micro_batch;
        self.accum = st.accumulation;
        self.oom_recoveries = st.oom_recoveries;
        self.skipped_steps = st.skipped_steps;
        self.loss_first = st.loss_first;
        Ok(())
    }
}

fn model_config(cfg: &TrainConfig, data: &Sequences) -> ClassifierConfig {
    ClassifierConfig {
        frames: data.frames,
        features: data.features,
        classes: data.classes,
        dim: cfg.dim,
        layers: cfg.layers,
        heads: cfg.heads,
        hidden: cfg.hidden,
        dropout: cfg.dropout,
    }
}

fn model_fingerprint(cfg: &TrainConfig) -> String {
    format!(
        "classifier dim={} layers={} heads={} hidden={} batch={}x{} lr={} seed={}",
        cfg.dim, cfg.layers, cfg.heads, cfg.hidden, cfg.batch, cfg.accum, cfg.lr, cfg.seed
    )
}

/// Multiply every gradient by `factor` in place.
fn unscale(params: &[Tensor], factor: f32) -> Result<()> {
    for g in params.iter().filter_map(|p| p.grad()) {
        if !g.is_meta() {
            crate::with_float!("unscale", g.dtype(), |T| crate::cpu::optim::scale::<T>(g.data_mut::<T>()?, factor));
        }
    }
    Ok(())
}

/// A run of `cfg` on a meta arena, exactly as `train` would do it: two
/// optimizer steps (the first creates the optimizer state the second holds
/// at its peak) and the final evaluation, with no memory and no kernel work.
/// With `cfg.static_plan`, the second step's plan is installed and a third
/// step replays it. Returns the arena, the run and the second step's recording.
pub fn simulate(cfg: &TrainConfig, recompute: Vec<bool>, trace: bool) -> Result<(Arena, Run, Recording)> {
    let arena = Arena::new(ArenaConfig { budget: None, backing: Backing::Meta, trace })
        .map_err(|e| Error::invalid("plan", e.to_string()))?;
    let quiet = TrainConfig { progress: false, budget: None, ..cfg.clone() };
    let mut run = Run::new(&quiet, arena.clone())?;
    run.recompute = recompute;
    run.train_step()?;
    let (second, step) = arena.record(|| run.train_step());
    second?;
    if cfg.static_plan {
        arena.set_static_plan(&step)?;
        run.train_step()?;
    }
    let (_, test_set) = spoken_digits()?;
    evaluate(&arena, &run.model, &test_set, cfg.batch, cfg.precision.dtype())?;
    Ok((arena, run, step))
}

/// The allocator's figures for a run of `cfg`, planned (see [`simulate`]).
pub fn plan_step(cfg: &TrainConfig) -> Result<Stats> {
    Ok(simulate(cfg, resolve_recompute(cfg)?, false)?.0.stats())
}

/// Resolve `Recompute::Auto`: the fewest leading blocks to recompute so the
/// planned reserved peak fits the budget.
pub fn resolve_recompute(cfg: &TrainConfig) -> Result<Vec<bool>> {
    if cfg.recompute != Recompute::Auto {
        return Ok(cfg.recompute.mask(cfg.layers));
    }
    let Some(budget) = cfg.budget else { return Ok(vec![false; cfg.layers]) };
    let mut need = 0;
    for n in 0..=cfg.layers {
        let mask: Vec<bool> = (0..cfg.layers).map(|i| i < n).collect();
        need = simulate(cfg, mask.clone(), false)?.0.stats().reserved.peak;
        if need <= budget {
            return Ok(mask);
        }
    }
    Err(Error::invalid(
        "recompute",
        format!(
            "even recomputing all {} blocks the run needs {} reserved, over the budget of {}; lower --batch or raise --budget",
            cfg.layers,
            fmt_bytes(need),
            fmt_bytes(budget)
        ),
    ))
}

/// Train the default classifier on the embedded data set.
///
/// ```
/// use headroom::train::{train, TrainConfig};
/// let cfg = TrainConfig { steps: Some(2), dim: 16, layers: 1, hidden: 32, progress: false, ..Default::default() };
/// let report = train(&cfg).unwrap();
/// assert_eq!(report.steps, 2);
/// assert!(report.peak_by_tag["parameter"] > 0);
/// ```
pub fn train(cfg: &TrainConfig) -> Result<TrainReport> {
    let recompute = resolve_recompute(cfg)?;
    let arena = Arena::new(ArenaConfig { budget: cfg.budget, ..Default::default() })
        .map_err(|e| Error::invalid("train", e.to_string()))?;
    let mut run = Run::new(cfg, arena.clone())?;
    run.recompute = recompute;
    if cfg.resume {
        let dir =
            cfg.checkpoint_dir.as_ref().ok_or_else(|| Error::invalid("resume", "--resume needs --checkpoint-dir"))?;
        run.resume(dir)?;
        if cfg.progress {
            eprintln!("resumed from {} at step {}", dir.display(), run.step);
        }
    }
    let (_, test_set) = spoken_digits()?;
    let per_epoch = run.data.n / run.effective();
    let total = cfg.steps.unwrap_or(cfg.epochs * per_epoch);
    let tty = std::io::stderr().is_terminal();
    if cfg.progress {
        eprintln!(
            "training a {}-block transformer ({} parameters) on spoken digits: {} clips of {}×{} log-mel, batch {}×{}, {}, {} steps",
            cfg.layers,
            run.model.parameter_count(),
            run.data.n,
            run.data.frames,
            run.data.features,
            cfg.batch,
            cfg.accum,
            cfg.precision.dtype(),
            total
        );
    }
    let mut loss_last = f32::NAN;
    let mut times = Vec::with_capacity(total);
    let start = Instant::now();
    let mut smooth = f32::NAN;
    let first = run.step;
    // The second step is the steady state (the first creates the optimizer state).
    let record_at = first + usize::from(total > first + 1);
    let mut recorded = None;
    while run.step < total {
        let t0 = Instant::now();
        let out = if (cfg.static_plan || cfg.report.is_some()) && run.step == record_at {
            // Record this step: its plan replays in every later step, the report shows it.
            let (out, step) = arena.record(|| run.train_step());
            let out = out?;
            if cfg.static_plan {
                arena.set_static_plan(&step)?;
            }
            recorded = Some(step);
            out
        } else {
            run.train_step()?
        };
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        if run.loss_first.is_nan() {
            run.loss_first = out.loss;
        }
        loss_last = out.loss;
        smooth = if smooth.is_nan() { out.loss } else { 0.9 * smooth + 0.1 * out.loss };
        if cfg.progress
            && (run.step % 10 == 0 || run.step == total)
            && (tty || run.step % 100 == 0 || run.step == total)
        {
            let s = arena.stats();
            let rate = ((run.step - first) * run.effective()) as f64 / start.elapsed().as_secs_f64();
            let budget = cfg.budget.map_or(String::new(), |b| format!(" / budget {}", fmt_bytes(b)));
            let done = run.step * 20 / total.max(1);
            eprint!(
                "{}[{}{}] {:>5}/{total}  loss {smooth:.4}  {rate:>5.0} samples/s  mem {} alloc, {} reserved, peak {}{budget}   {}",
                if tty { "\r" } else { "" },
                "#".repeat(done),
                ".".repeat(20 - done),
                run.step,
                fmt_bytes(s.allocated.current),
                fmt_bytes(s.reserved.current),
                fmt_bytes(s.reserved.peak),
                if tty { "" } else { "\n" },
            );
            let _ = std::io::stderr().flush();
        }
        if let Some(dir) = &cfg.checkpoint_dir {
            if run.step % cfg.checkpoint_every.max(1) == 0 || run.step == total {
                run.save(dir)?;
            }
        }
        if cfg.eval_every > 0 && run.step % cfg.eval_every == 0 && cfg.progress {
            let acc = evaluate(&arena, &run.model, &test_set, cfg.batch, cfg.precision.dtype())?;
            eprintln!("\n  held-out accuracy after {} steps: {:.1}%", run.step, 100.0 * acc);
        }
    }
    if cfg.progress && tty {
        eprintln!();
    }
    let eval = evaluate(&arena, &run.model, &test_set, cfg.batch, cfg.precision.dtype())?;
    let s = arena.stats();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let steps_run = run.step - first;
    let report = TrainReport {
        steps: run.step,
        samples: run.step * run.effective(),
        parameters: run.model.parameter_count(),
        loss_first: run.loss_first,
        loss_last,
        eval_metric: eval,
        eval_metric_name: "accuracy",
        peak_allocated_bytes: s.allocated.peak,
        peak_reserved_bytes: s.reserved.peak,
        peak_by_tag: Tag::ALL.iter().map(|&t| (t.name(), s.tag(t).allocated.peak)).collect(),
        by_tag_at_peak: Tag::ALL.iter().enumerate().map(|(i, &t)| (t.name(), s.by_tag_at_peak[i])).collect(),
        peak_op: s.allocated.peak_label,
        step_time_ms_median: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        samples_per_second: (steps_run * run.effective()) as f64 / start.elapsed().as_secs_f64().max(1e-9),
        oom_recoveries: run.oom_recoveries,
        skipped_steps: run.skipped_steps,
        loss_scale: run.scaler.scale,
        micro_batch: run.micro,
        accumulation: run.accum,
        precision: cfg.precision,
        recomputed_blocks: run.recompute.iter().filter(|&&r| r).count(),
        budget_bytes: cfg.budget,
        static_plan: StaticFigures::of(&s),
    };
    if cfg.progress {
        eprintln!(
            "loss {:.4} → {:.4}; held-out accuracy {:.1}% (chance 10%); {:.1} ms/step median; {} OOM recoveries, {} skipped steps",
            report.loss_first,
            report.loss_last,
            100.0 * report.eval_metric,
            report.step_time_ms_median,
            report.oom_recoveries,
            report.skipped_steps
        );
        eprintln!("memory by tag over the run:\n{}", s.table());
        if let Some(f) = &report.static_plan {
            eprint!("{}", f.text());
        }
    }
    if let (Some(path), Some(step)) = (&cfg.report, &recorded) {
        std::fs::write(path, crate::report::for_train(&report, step)).map_err(|e| Error::io(path.display(), e))?;
        if cfg.progress {
            eprintln!("memory report of step {}: {}", record_at + 1, path.display());
        }
    }
    Ok(report)
}

/// Fraction of `set` classified correctly, with no activations kept.
pub fn evaluate(arena: &Arena, model: &Classifier, set: &Sequences, batch: usize, dtype: DType) -> Result<f32> {
    let _g = no_grad();
    let mut correct = 0;
    for start in (0..set.n).step_by(batch.max(1)) {
        let idx: Vec<usize> = (start..(start + batch).min(set.n)).collect();
        let (x, y) = set.batch(arena, &idx, dtype)?;
        let logits = model.forward(&x, None, &[])?;
        if arena.backing() == Backing::Meta {
            continue; // planning: the bytes were asked for, there are no values
        }
        let logits = logits.to_vec_f32()?;
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
