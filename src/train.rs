//! The trainer: any preset's model on its data (the embedded spoken digits
//! by default, synthetic tasks for the other presets), with the memory toolbox — gradient accumulation, activation recompute, mixed
//! precision with dynamic loss scaling, recovery from out-of-memory steps and
//! crash-safe checkpoints — and live memory figures.

use crate::alloc::{fmt_bytes, Arena, ArenaConfig, Backing, Recording, StaticFigures, Stats, Tag, Target};
use crate::autograd::{self, no_grad};
use crate::checkpoint::{self, TrainerState, FORMAT};
use crate::cuda::DeviceChoice;
use crate::data::synthetic::Synthetic;
use crate::data::{spoken_digits, Dataset};
use crate::error::{Error, Result};
use crate::model::{Model, ModelConfig, Score};
use crate::ops::AttentionKind;
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Optimizer};
use crate::preset;
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
    /// The preset this configuration came from (for messages and checkpoints).
    pub preset: String,
    pub model: ModelConfig,
    /// Samples of a synthetic task's training and held-out splits.
    pub train_samples: usize,
    pub test_samples: usize,
    /// Where to train: the CPU, the GPU, or the GPU when there is one.
    pub device: DeviceChoice,
    /// Read the preset's data from `.npy` files here (see `data::files`)
    /// instead of its synthetic task.
    pub data_dir: Option<PathBuf>,
    /// Low-pass and keep every k-th input frame of `data_dir` (1 = off).
    pub downsample: usize,
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

impl TrainConfig {
    /// The settings a preset starts from.
    pub fn preset(name: &str) -> Result<TrainConfig> {
        let p = preset::get(name)?;
        Ok(TrainConfig {
            preset: p.name.to_string(),
            model: p.model,
            train_samples: p.train_samples,
            test_samples: p.test_samples,
            batch: p.batch,
            lr: p.lr,
            epochs: if p.name == "digits" { 8 } else { 1 },
            ..TrainConfig::default()
        })
    }
}

/// The `digits` preset: a 2-block transformer of width 64 on the embedded data.
impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            preset: "digits".to_string(),
            model: ModelConfig::digits(64, 2, 128),
            train_samples: 0,
            test_samples: 0,
            device: DeviceChoice::Cpu,
            data_dir: None,
            downsample: 1,
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
    pub preset: String,
    pub loss_first: f32,
    pub loss_last: f32,
    /// The held-out metric (`eval_metric_name`): accuracy on unseen
    /// speakers for digits; see `Model::metric` for the others.
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
/// use headroom::model::ModelConfig;
/// let cfg = TrainConfig { model: ModelConfig::digits(16, 1, 32), progress: false, ..Default::default() };
/// let mut run = Run::new(&cfg, Arena::host()).unwrap();
/// let out = run.train_step().unwrap();
/// assert!(out.applied && out.loss > 0.0 && run.step == 1);
/// ```
pub struct Run {
    pub arena: Arena,
    pub model: Model,
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
    pub data: Dataset,
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
        if cfg.batch.checked_mul(cfg.accum).is_none() {
            return Err(Error::invalid("train", format!("--batch {} × --accum {} overflows", cfg.batch, cfg.accum)));
        }
        let (data, _) = datasets(cfg)?;
        if cfg.batch * cfg.accum > data.len() {
            return Err(Error::invalid(
                "train",
                format!(
                    "an effective batch of {} is larger than the {} training samples",
                    cfg.batch * cfg.accum,
                    data.len()
                ),
            ));
        }
        let mut rng = Rng::new(cfg.seed);
        let mut model = Model::new(&arena, &cfg.model, &mut rng)?;
        model.set_attention(cfg.attention);
        let params = model.params();
        let opt = AdamW::new(
            params.iter().map(|(_, t)| t.clone()).collect(),
            AdamWConfig { lr: cfg.lr as f64, weight_decay: cfg.weight_decay as f64, ..Default::default() },
        )?;
        let order = data.order(&mut rng);
        let recompute = cfg.recompute.mask(model.blocks());
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
            let batch = self.data.batch(&self.arena, chunk, dtype)?;
            let loss = self.model.loss(&batch, Some(&mut self.rng), &self.recompute)?;
            drop(batch);
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
        if st.adam_steps.len() != self.params.len() || st.order.len() != self.data.len() || st.position > st.order.len()
        {
            return Err(Error::invalid("resume", format!("{} does not match this model and data", ck.path.display())));
        }
        // A hand-edited or foreign trainer.json must not reach the step loop.
        let mut seen = vec![false; st.order.len()];
        let permutation = st.order.iter().all(|&i| i < seen.len() && !std::mem::replace(&mut seen[i], true));
        let effective = self.effective();
        let micro_ok = st.micro_batch >= 1
            && st.accumulation >= 1
            && st.micro_batch.checked_mul(st.accumulation).is_some_and(|n| n >= effective);
        let scale_ok = st.loss_scale.is_finite() && st.loss_scale > 0.0;
        if !(permutation && micro_ok && scale_ok) {
            return Err(Error::invalid(
                "resume",
                format!(
                    "{}: trainer.json is inconsistent (the data order must be a permutation of the {} samples, micro-batch × accumulation must cover {effective}, the loss scale must be finite and positive)",
                    ck.path.display(),
                    seen.len()
                ),
            ));
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

/// The training and held-out sets of `cfg`: the embedded spoken digits for
/// the digits classifier, the preset's synthetic task otherwise.
pub fn datasets(cfg: &TrainConfig) -> Result<(Dataset, Dataset)> {
    match &cfg.model {
        ModelConfig::Digits(_) if cfg.data_dir.is_some() => Err(Error::invalid(
            "data",
            "the digits preset trains on its embedded data; --data is for the other presets",
        )),
        ModelConfig::Digits(c) => {
            let (train, test) = spoken_digits()?;
            if (train.frames, train.features, train.classes) != (c.frames, c.features, c.classes) {
                return Err(Error::invalid(
                    "train",
                    format!(
                        "the classifier expects {}×{} frames and {} classes; the embedded data has {}×{} and {}",
                        c.frames, c.features, c.classes, train.frames, train.features, train.classes
                    ),
                ));
            }
            Ok((Dataset::Digits(train), Dataset::Digits(test)))
        }
        m if cfg.data_dir.is_some() => {
            let (train, test) =
                crate::data::files::Files::open(cfg.data_dir.as_deref().unwrap_or(".".as_ref()), m, cfg.downsample)?;
            Ok((Dataset::Files(train), Dataset::Files(test)))
        }
        m => {
            let split = |n, offset| Dataset::Synthetic(Synthetic { model: m.clone(), n, offset, seed: 0 });
            Ok((split(cfg.train_samples, 0), split(cfg.test_samples, cfg.train_samples)))
        }
    }
}

/// What a checkpoint must have been written by: the model, the data, and
/// everything that changes the arithmetic of a step.
fn model_fingerprint(cfg: &TrainConfig) -> String {
    format!(
        "{} {:?} data={:?}/{} samples={}/{} batch={}x{} lr={} seed={} precision={} attention={}",
        cfg.preset,
        cfg.model,
        cfg.data_dir,
        cfg.downsample,
        cfg.train_samples,
        cfg.test_samples,
        cfg.batch,
        cfg.accum,
        cfg.lr,
        cfg.seed,
        cfg.precision.dtype(),
        cfg.attention
    )
}

/// Multiply every gradient by `factor` in place.
fn unscale(params: &[Tensor], factor: f32) -> Result<()> {
    for g in params.iter().filter_map(|p| p.grad()) {
        if g.is_cuda() {
            if g.numel() > 0 {
                crate::cuda::ops::scale(&g, factor)?;
            }
        } else if !g.is_meta() {
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
    let arena = Arena::new(ArenaConfig { budget: None, backing: Backing::Meta, trace, plan_for: target(cfg) })
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
    let (_, test_set) = datasets(cfg)?;
    evaluate(&arena, &run.model, &test_set, run.micro, cfg.precision.dtype())?;
    Ok((arena, run, step))
}

/// The allocator's figures for a run of `cfg`, planned (see [`simulate`]).
pub fn plan_step(cfg: &TrainConfig) -> Result<Stats> {
    Ok(simulate(cfg, resolve_recompute(cfg)?, false)?.0.stats())
}

/// Resolve `Recompute::Auto`: the fewest leading blocks to recompute so the
/// planned reserved peak fits the budget.
pub fn resolve_recompute(cfg: &TrainConfig) -> Result<Vec<bool>> {
    let blocks = model_blocks(&cfg.model)?;
    if cfg.recompute != Recompute::Auto {
        return Ok(cfg.recompute.mask(blocks));
    }
    let Some(budget) = cfg.budget else { return Ok(vec![false; blocks]) };
    let mut need = 0;
    for n in 0..=blocks {
        let mask: Vec<bool> = (0..blocks).map(|i| i < n).collect();
        need = simulate(cfg, mask.clone(), false)?.0.stats().reserved.peak;
        if need <= budget {
            return Ok(mask);
        }
    }
    Err(Error::invalid(
        "recompute",
        format!(
            "even recomputing all {} blocks the run needs {} reserved, over the budget of {}; lower --batch or raise --budget",
            blocks,
            fmt_bytes(need),
            fmt_bytes(budget)
        ),
    ))
}

/// The device a run of `cfg` allocates for: what `plan` predicts. `Auto`
/// plans for the GPU when a CUDA driver is present, as `train` would use it.
pub fn target(cfg: &TrainConfig) -> Target {
    match cfg.device {
        DeviceChoice::Cpu => Target::Cpu,
        DeviceChoice::Cuda => Target::Cuda,
        DeviceChoice::Auto if crate::cuda::driver_available() => Target::Cuda,
        DeviceChoice::Auto => Target::Cpu,
    }
}

/// Repeated blocks of a model that recompute policies choose from.
pub fn model_blocks(model: &ModelConfig) -> Result<usize> {
    let arena = Arena::new(ArenaConfig { backing: Backing::Meta, ..Default::default() })
        .map_err(|e| Error::invalid("plan", e.to_string()))?;
    Ok(Model::new(&arena, model, &mut Rng::new(0))?.blocks())
}

/// Train a configuration's model on its data.
///
/// ```
/// use headroom::{model::ModelConfig, train::{train, TrainConfig}};
/// let cfg = TrainConfig { steps: Some(2), model: ModelConfig::digits(16, 1, 32), progress: false, ..Default::default() };
/// let report = train(&cfg).unwrap();
/// assert_eq!(report.steps, 2);
/// assert!(report.peak_by_tag["parameter"] > 0);
/// ```
pub fn train(cfg: &TrainConfig) -> Result<TrainReport> {
    let recompute = resolve_recompute(cfg)?;
    let config = ArenaConfig { budget: cfg.budget, ..Default::default() };
    let arena = match crate::cuda::select(cfg.device, !cfg.progress)? {
        Some(gpu) => {
            if cfg.progress {
                eprintln!("training on {}", gpu.name());
            }
            Arena::cuda(&gpu, config)
        }
        None => Arena::new(config),
    }
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
    let (_, test_set) = datasets(cfg)?;
    let per_epoch = run.data.len() / run.effective();
    let total = cfg.steps.unwrap_or(cfg.epochs * per_epoch);
    let tty = std::io::stderr().is_terminal();
    if cfg.progress {
        let data = match &run.data {
            Dataset::Digits(d) => format!("spoken digits: {} clips of {}×{} log-mel", d.n, d.frames, d.features),
            Dataset::Files(f) => {
                format!("{}: {} samples (streamed)", cfg.data_dir.as_deref().unwrap_or("?".as_ref()).display(), f.n)
            }
            d => format!("its synthetic task: {} samples", d.len()),
        };
        eprintln!(
            "training `{}` ({} parameters) on {data}, batch {}×{}, {}, {} steps",
            cfg.preset,
            run.model.parameter_count(),
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
                "{}[{}{}] {:>5}/{total}  loss {smooth:.4}  {rate:>5.1} samples/s  mem {} alloc (peak {}), {} reserved (peak {}){budget}   {}",
                if tty { "\r" } else { "" },
                "#".repeat(done),
                ".".repeat(20 - done),
                run.step,
                fmt_bytes(s.allocated.current),
                fmt_bytes(s.allocated.peak),
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
            let m = evaluate(&arena, &run.model, &test_set, run.micro, cfg.precision.dtype())?;
            eprintln!("\n  held-out {} after {} steps: {m:.4}", run.model.metric().0, run.step);
        }
    }
    if cfg.progress && tty {
        eprintln!();
    }
    // The recovered micro-batch: one that OOMed in training would here too.
    let eval = evaluate(&arena, &run.model, &test_set, run.micro, cfg.precision.dtype())?;
    let s = arena.stats();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let steps_run = run.step - first;
    let report = TrainReport {
        steps: run.step,
        samples: run.step * run.effective(),
        parameters: run.model.parameter_count(),
        preset: cfg.preset.clone(),
        loss_first: run.loss_first,
        loss_last,
        eval_metric: eval,
        eval_metric_name: run.model.metric().0,
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
            "loss {:.4} → {:.4}; held-out {} {:.4}; {:.1} ms/step median; {} OOM recoveries, {} skipped steps",
            report.loss_first,
            report.loss_last,
            report.eval_metric_name,
            report.eval_metric,
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

/// The model's held-out metric over `set`, with no activations kept (0 on
/// the meta device, which asks for the same bytes and has no values).
pub fn evaluate(arena: &Arena, model: &Model, set: &Dataset, batch: usize, dtype: DType) -> Result<f32> {
    let _g = no_grad();
    let mut score = Score::default();
    for start in (0..set.len()).step_by(batch.max(1)) {
        let idx: Vec<usize> = (start..(start + batch).min(set.len())).collect();
        score.add(model.score(&set.batch(arena, &idx, dtype)?)?);
    }
    Ok(score.value())
}
