//! The planner: a run's memory, known before it runs.
//!
//! `plan` builds the trainer's own `Run` on a meta arena — the same model
//! code, autograd, optimizer and allocator policy, over segments that hold no
//! memory, with no kernel work — takes two optimizer steps (the first
//! creates the optimizer state that the second holds at its peak) and runs
//! the final evaluation. Every
//! figure it reports is the allocator's own, so it equals what `train`
//! measures for the same configuration, to the byte.

use crate::alloc::{fmt_bytes, Recording, StaticFigures, Stats, Tag, TraceEvent, TraceKind};
use crate::error::{Error, Result};
use crate::ops::AttentionKind;
use crate::train::{resolve_recompute, simulate, Precision, Recompute, TrainConfig};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// A tensor live at the peak.
#[derive(Clone, Debug, Serialize)]
pub struct LiveTensor {
    pub op: &'static str,
    pub tag: Tag,
    pub bytes: usize,
}

/// What `headroom plan --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    pub predicted_peak_allocated_bytes: usize,
    pub predicted_peak_reserved_bytes: usize,
    /// Allocated bytes per tag at the moment of the peak.
    pub by_tag: BTreeMap<&'static str, usize>,
    /// Each tag's own peak over the planned steps.
    pub peak_by_tag: BTreeMap<&'static str, usize>,
    /// The op whose request set the peak.
    pub peak_op: &'static str,
    /// The largest tensors live at the peak.
    pub largest_live: Vec<LiveTensor>,
    pub parameters: usize,
    pub preset: String,
    /// Repeated blocks the model has (what recompute chooses from).
    pub blocks: usize,
    pub micro_batch: usize,
    pub accumulation: usize,
    pub precision: Precision,
    pub recomputed_blocks: usize,
    pub budget_bytes: Option<usize>,
    pub fits_budget: bool,
    pub planning_ms: f64,
    /// With `--static-plan`: the plan and reserved ÷ peak live with and without it.
    pub static_plan: Option<StaticFigures>,
    /// Every allocator event of the planned steps, for reports.
    #[serde(skip)]
    pub trace: Vec<TraceEvent>,
    /// Clock of the first event of the second (steady-state) step.
    #[serde(skip)]
    pub step_start_clock: u64,
    /// The second step's events and starting state, for the memory report.
    #[serde(skip)]
    pub step: Recording,
    #[serde(skip)]
    pub stats: Stats,
}

/// Plan `cfg` (with `Recompute::Auto` resolved against its budget).
pub fn plan(cfg: &TrainConfig) -> Result<PlanReport> {
    let t0 = Instant::now();
    let c = TrainConfig { progress: false, ..cfg.clone() };
    let (arena, run, step) = simulate(&c, resolve_recompute(&c)?, true)?;
    let stats = arena.stats();
    let trace = arena.take_trace();
    let mut largest_live = live_at(&trace, stats.allocated.peak_clock);
    largest_live.truncate(8);
    let reserved = stats.reserved.peak;
    Ok(PlanReport {
        predicted_peak_allocated_bytes: stats.allocated.peak,
        predicted_peak_reserved_bytes: reserved,
        by_tag: Tag::ALL.iter().enumerate().map(|(i, &t)| (t.name(), stats.by_tag_at_peak[i])).collect(),
        peak_by_tag: Tag::ALL.iter().map(|&t| (t.name(), stats.tag(t).allocated.peak)).collect(),
        peak_op: stats.allocated.peak_label,
        largest_live,
        parameters: run.model.parameter_count(),
        preset: c.preset.clone(),
        blocks: run.model.blocks(),
        micro_batch: run.micro,
        accumulation: run.accum,
        precision: c.precision,
        recomputed_blocks: run.recompute.iter().filter(|&&r| r).count(),
        budget_bytes: c.budget,
        fits_budget: c.budget.is_none_or(|b| reserved <= b),
        planning_ms: t0.elapsed().as_secs_f64() * 1e3,
        static_plan: StaticFigures::of(&stats),
        trace,
        step_start_clock: step.start_clock,
        step,
        stats,
    })
}

/// Blocks live just after event `clock`, largest first.
fn live_at(trace: &[TraceEvent], clock: u64) -> Vec<LiveTensor> {
    let mut live: HashMap<(&str, usize), LiveTensor> = HashMap::new();
    for e in trace.iter().take_while(|e| e.clock <= clock) {
        let key = (e.pool, e.offset);
        match e.kind {
            TraceKind::Alloc => {
                live.insert(key, LiveTensor { op: e.label, tag: e.tag.expect("alloc has a tag"), bytes: e.bytes });
            }
            TraceKind::Free => {
                live.remove(&key);
            }
            TraceKind::Retag => {
                if let Some(t) = live.get_mut(&key) {
                    t.tag = e.tag.expect("retag has a tag");
                }
            }
            _ => {}
        }
    }
    let mut v: Vec<LiveTensor> = live.into_values().collect();
    v.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.op.cmp(b.op)));
    v
}

impl PlanReport {
    /// The human-readable plan.
    pub fn text(&self) -> String {
        let mut out = format!(
            "predicted peak: {} allocated, {} reserved{} (planned in {:.0} ms, no memory touched)\n",
            fmt_bytes(self.predicted_peak_allocated_bytes),
            fmt_bytes(self.predicted_peak_reserved_bytes),
            match self.budget_bytes {
                Some(b) if self.fits_budget => format!(", fits the {} budget", fmt_bytes(b)),
                Some(b) => format!(", OVER the {} budget", fmt_bytes(b)),
                None => String::new(),
            },
            self.planning_ms
        );
        out += &format!(
            "config: `{}`, micro-batch {} × {} accumulation, {}, {} of {} blocks recomputed, {} parameters\n",
            self.preset,
            self.micro_batch,
            self.accumulation,
            self.precision.dtype(),
            self.recomputed_blocks,
            self.blocks,
            self.parameters
        );
        out += &format!("the peak is reached in `{}`; held at that moment:\n", self.peak_op);
        for t in Tag::ALL {
            let b = self.by_tag[t.name()];
            if b > 0 {
                out += &format!("  {:<16} {:>12}\n", t.name(), fmt_bytes(b));
            }
        }
        out += "largest tensors live at the peak:\n";
        for l in &self.largest_live {
            out += &format!("  {:>12}  {:<16} from `{}`\n", fmt_bytes(l.bytes), l.tag.name(), l.op);
        }
        if let Some(f) = &self.static_plan {
            out += &f.text();
        }
        out
    }
}

/// One configuration `fit` considered.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub micro_batch: usize,
    pub accumulation: usize,
    pub precision: Precision,
    pub recompute: String,
    pub attention: AttentionKind,
    pub predicted_peak_reserved_bytes: usize,
    pub predicted_peak_allocated_bytes: usize,
    /// Estimated step time relative to the plain f32 run at the full batch.
    pub relative_cost: f64,
    /// What it gives up to fit.
    pub trades: String,
    #[serde(skip)]
    pub config: TrainConfig,
}

// Cost model, relative to one plain f32 step at the full micro-batch. A step
// is ~3 forwards (forward + 2× backward); recompute adds one forward of the
// recomputed blocks. On this CPU f16/bf16 convert at every kernel boundary
// and widen for matmul: ~15 % slower, not faster. Smaller micro-batches
// leave kernels smaller and add per-op overhead: ~16 samples' worth per
// micro-batch. Naive attention measured ~2× slower than fused on this CPU
// (benches/attention.rs), but attention is a fraction of the step: 1.1.
fn relative_cost(
    micro: usize,
    effective: usize,
    recomputed: usize,
    layers: usize,
    precision: Precision,
    attention: AttentionKind,
) -> f64 {
    let recompute = 1.0 + recomputed as f64 / layers.max(1) as f64 / 3.0;
    let half = if precision == Precision::F32 { 1.0 } else { 1.15 };
    let overhead = (1.0 + 16.0 / micro as f64) / (1.0 + 16.0 / effective as f64);
    let attn = if attention == AttentionKind::Naive { 1.1 } else { 1.0 };
    recompute * half * overhead * attn
}

/// Every configuration of micro-batch (halving the effective batch),
/// precision and recompute that fits `budget`, cheapest first. Planned on
/// the meta device: nothing runs, so nothing crashes to find out.
pub fn fit(cfg: &TrainConfig, budget: usize) -> Result<Vec<Candidate>> {
    let effective = cfg.batch * cfg.accum;
    let mut micros = vec![];
    let mut m = effective;
    while m >= 1 {
        if effective.is_multiple_of(m) {
            micros.push(m);
        }
        if m == 1 {
            break;
        }
        m /= 2;
    }
    let blocks = crate::train::model_blocks(&cfg.model)?;
    let mut policies = vec![Recompute::None];
    if blocks > 2 {
        policies.push(Recompute::Every(2));
    }
    if blocks > 0 {
        policies.push(Recompute::All);
    }
    // The attention kernel is a choice only for models with dot-product attention.
    let kinds: &[AttentionKind] =
        if cfg.model.has_attention() { &[AttentionKind::Fused, AttentionKind::Naive] } else { &[AttentionKind::Fused] };
    let (mut fits, mut smallest): (Vec<Candidate>, Option<(usize, String)>) = (vec![], None);
    for &attention in kinds {
        for &precision in &[Precision::F32, Precision::Bf16, Precision::F16] {
            for policy in &policies {
                for &micro in &micros {
                    let c = TrainConfig {
                        batch: micro,
                        accum: effective / micro,
                        precision,
                        recompute: policy.clone(),
                        attention,
                        budget: None,
                        progress: false,
                        ..cfg.clone()
                    };
                    let p = plan(&c)?;
                    let name = match policy {
                        Recompute::None => "none".to_string(),
                        Recompute::All => "all".to_string(),
                        Recompute::Every(k) => format!("every:{k}"),
                        Recompute::Auto => "auto".to_string(),
                    };
                    let need = p.predicted_peak_reserved_bytes;
                    if smallest.as_ref().is_none_or(|(b, _)| need < *b) {
                        smallest =
                            Some((need, format!("micro-batch {micro}, {}, recompute {name}", precision.dtype())));
                    }
                    if need > budget {
                        continue;
                    }
                    let mut trades = vec![];
                    if micro < effective {
                        trades.push(format!("{}× accumulation", effective / micro));
                    }
                    if p.recomputed_blocks > 0 {
                        trades
                            .push(format!("recompute {} of {} blocks (+1 forward each)", p.recomputed_blocks, blocks));
                    }
                    if precision != Precision::F32 {
                        trades.push(format!("{} activations", precision.dtype()));
                    }
                    if attention == AttentionKind::Naive {
                        trades.push("naive attention (keeps B×H×T×T probabilities)".to_string());
                    }
                    fits.push(Candidate {
                        micro_batch: micro,
                        accumulation: effective / micro,
                        precision,
                        recompute: name,
                        attention,
                        predicted_peak_reserved_bytes: need,
                        predicted_peak_allocated_bytes: p.predicted_peak_allocated_bytes,
                        relative_cost: relative_cost(
                            micro,
                            effective,
                            p.recomputed_blocks,
                            blocks,
                            precision,
                            attention,
                        ),
                        trades: if trades.is_empty() { "nothing".to_string() } else { trades.join(", ") },
                        config: TrainConfig { budget: Some(budget), progress: cfg.progress, ..c },
                    });
                }
            }
        }
    }
    if fits.is_empty() {
        let (need, how) = smallest.expect("at least one candidate");
        let base = plan(&TrainConfig { batch: 1, accum: 1, progress: false, budget: None, ..cfg.clone() })?;
        let fixed = base.peak_by_tag["parameter"] + base.peak_by_tag["optimizer_state"] + base.peak_by_tag["gradient"];
        return Err(Error::invalid(
            "fit",
            format!(
                "no configuration fits {}: the smallest needs {} reserved ({how}); parameters, gradients and optimizer state alone take {}. Raise --budget to at least {}.",
                fmt_bytes(budget),
                fmt_bytes(need),
                fmt_bytes(fixed),
                fmt_bytes(need)
            ),
        ));
    }
    fits.sort_by(|a, b| {
        a.relative_cost
            .total_cmp(&b.relative_cost)
            .then(a.predicted_peak_reserved_bytes.cmp(&b.predicted_peak_reserved_bytes))
    });
    Ok(fits)
}

/// The README's preset table: every full preset planned at f32 at its
/// default batch and fitted under 2 GiB (or the smallest budget that works),
/// then every tiny preset planned and trained for real (two steps and the
/// final evaluation, exactly what the plan simulates), predicted beside measured.
pub fn preset_table() -> Result<String> {
    const BUDGET: usize = 2 << 30;
    let mut out = String::from(
        "| preset | parameters | batch | f32 peak reserved | f32, naive attention | best plan under 2 GiB | its peak reserved |\n|---|---:|---:|---:|---:|---|---:|\n",
    );
    let all = crate::preset::presets();
    for p in all.iter().filter(|p| !p.name.ends_with("-tiny")) {
        let cfg = TrainConfig::preset(p.name)?;
        let f32_plan = plan(&cfg)?;
        // Attention written with matmul + softmax, as plain framework code does.
        let naive = if cfg.model.has_attention() {
            let c = TrainConfig { attention: AttentionKind::Naive, ..cfg.clone() };
            fmt_bytes(plan(&c)?.predicted_peak_reserved_bytes)
        } else {
            "—".to_string()
        };
        let (best, peak) = match fit(&cfg, BUDGET) {
            Ok(c) => {
                let c = &c[0];
                (
                    format!(
                        "micro {} × {}, {}, recompute {}{}",
                        c.micro_batch,
                        c.accumulation,
                        c.precision.dtype(),
                        c.recompute,
                        if cfg.model.has_attention() { format!(", {} attention", c.attention) } else { String::new() }
                    ),
                    fmt_bytes(c.predicted_peak_reserved_bytes),
                )
            }
            Err(e) => (format!("none fits: {e}"), "—".to_string()),
        };
        out += &format!(
            "| `{}` | {} | {} | {} | {naive} | {best} | {peak} |\n",
            p.name,
            f32_plan.parameters,
            p.batch,
            fmt_bytes(f32_plan.predicted_peak_reserved_bytes)
        );
    }
    out += "\n| tiny preset | predicted peak allocated | measured | predicted peak reserved | measured |\n|---|---:|---:|---:|---:|\n";
    for p in all.iter().filter(|p| p.name.ends_with("-tiny")) {
        let cfg = TrainConfig { steps: Some(2), progress: false, ..TrainConfig::preset(p.name)? };
        let predicted = plan(&cfg)?;
        let measured = crate::train::train(&cfg)?;
        out += &format!(
            "| `{}` | {} B | {} B | {} B | {} B |\n",
            p.name,
            predicted.predicted_peak_allocated_bytes,
            measured.peak_allocated_bytes,
            predicted.predicted_peak_reserved_bytes,
            measured.peak_reserved_bytes
        );
    }
    Ok(out)
}
