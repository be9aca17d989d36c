//! `headroom bench`: time the public tensor ops (what users get) on fixed
//! shapes and put each figure next to this machine's peak.
//!
//! Peaks are derived on the machine, never assumed:
//! - compute: cores × clock × f32 FLOP/cycle/core, with cores from the
//!   thread count (one per physical core at most), the clock from
//!   /proc/cpuinfo "cpu MHz" (or `--clock-mhz`) and FLOP/cycle from the SIMD
//!   features the CPU reports, assuming two FMA pipes. Every dtype computes
//!   in f32 on this backend, so one peak serves f32, f16 and bf16.
//! - memory: a STREAM triad `a = b + 3c` over three 128 MiB f32 arrays of
//!   arena memory (far beyond any L3), best of several runs.
//!
//! Rates count ideal work: 2·M·N·K FLOPs per product, and for memory-bound
//! kernels each input read once and the output written once (the STREAM
//! convention; write-allocate traffic is not counted, on either side).

use crate::alloc::{fmt_bytes, Arena, Tag};
use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{DType, Tensor};
use serde::Serialize;
use std::io::Write;
use std::time::Instant;

/// What limits a kernel, and so which peak its rate is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    Compute,
    Memory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Matmul {
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
    },
    /// `[rows, cols] + [cols]`: a bias row broadcast over the rows.
    Add {
        rows: usize,
        cols: usize,
    },
    Gelu {
        rows: usize,
        cols: usize,
    },
    /// Softmax of each row.
    Softmax {
        rows: usize,
        cols: usize,
    },
    Sum {
        rows: usize,
        cols: usize,
        axis: isize,
    },
    /// `contiguous()` of the transpose of a dense `[cols, rows]` tensor.
    Copy {
        rows: usize,
        cols: usize,
    },
    /// Over the last axis, with weight and bias `[cols]`.
    LayerNorm {
        rows: usize,
        cols: usize,
    },
    /// Logits `[rows, classes]` against i32 targets `[rows]`.
    CrossEntropy {
        rows: usize,
        classes: usize,
    },
    /// Fused attention forward, no mask: q, k, v `[batch, heads, n, d]`.
    Attention {
        batch: usize,
        heads: usize,
        n: usize,
        d: usize,
    },
    /// `[batch, cin, hw, hw]` with a `[cout, cin, k, k]` kernel, stride 1,
    /// padding k/2 (same-size output).
    Conv2d {
        batch: usize,
        cin: usize,
        hw: usize,
        cout: usize,
        k: usize,
    },
    /// `tokens` rows gathered from a `[vocab, dim]` table.
    Embedding {
        vocab: usize,
        dim: usize,
        tokens: usize,
    },
    /// One AdamW step over `n` f32 parameters (gradients in the spec's dtype).
    AdamW {
        n: usize,
    },
}

/// One benchmark: a kernel on one shape and dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    op: Op,
    pub dtype: DType,
}

/// Kernel names with what each runs, in `--list` order.
pub const KERNELS: [(&str, &str); 12] = [
    ("matmul", "Tensor::matmul: square, transformer-shaped (tokens x d) @ (d x 4d), batched attention-shaped"),
    ("add", "Tensor::add of a bias row broadcast over a matrix"),
    ("gelu", "Tensor::gelu (exact erf)"),
    ("softmax", "Tensor::softmax over the last axis (rows)"),
    ("sum", "Tensor::sum over rows (axis -1) and over columns (axis 0)"),
    ("copy", "Tensor::contiguous of a transposed view"),
    ("layer_norm", "Tensor::layer_norm over the last axis with weight and bias"),
    ("cross_entropy", "Tensor::cross_entropy of logits [N, C] against i32 targets (log-softmax fused in)"),
    ("attention", "ops::attention, fused forward without a mask, q k v [B, H, N, D]"),
    ("conv2d", "Tensor::conv2d, 3x3 kernel, stride 1, same padding"),
    ("embedding", "Tensor::embedding: rows of a [V, D] table gathered by i32 ids"),
    ("adamw", "AdamW::step over one flat f32 parameter with its gradient"),
];

/// Every benchmark, in `--list` order.
pub fn specs() -> Vec<Spec> {
    use DType::{BF16, F16, F32};
    use Op::*;
    let s = |op, dtype| Spec { op, dtype };
    let square = Matmul { batch: 1, m: 1024, k: 1024, n: 1024 };
    // 4096 tokens through a d=256 → 1024 projection; 32 heads' q·kᵀ-like products.
    let proj = Matmul { batch: 1, m: 4096, k: 256, n: 1024 };
    let heads = Matmul { batch: 32, m: 128, k: 64, n: 128 };
    let (mid, big) = ((4096, 1024), (4096, 4096));
    vec![
        s(square, F32),
        s(square, F16),
        s(square, BF16),
        s(proj, F32),
        s(proj, BF16),
        s(heads, F32),
        s(Add { rows: mid.0, cols: mid.1 }, F32),
        s(Add { rows: mid.0, cols: mid.1 }, BF16),
        s(Add { rows: big.0, cols: big.1 }, F32),
        s(Gelu { rows: mid.0, cols: mid.1 }, F32),
        s(Gelu { rows: mid.0, cols: mid.1 }, BF16),
        s(Gelu { rows: big.0, cols: big.1 }, F32),
        s(Softmax { rows: mid.0, cols: mid.1 }, F32),
        s(Softmax { rows: mid.0, cols: mid.1 }, BF16),
        // Attention probabilities: batch 8 × 8 heads × 256 queries, 256 keys.
        s(Softmax { rows: 16384, cols: 256 }, F32),
        s(Sum { rows: mid.0, cols: mid.1, axis: -1 }, F32),
        s(Sum { rows: mid.0, cols: mid.1, axis: 0 }, F32),
        s(Sum { rows: big.0, cols: big.1, axis: -1 }, F32),
        s(Copy { rows: mid.0, cols: mid.1 }, F32),
        s(Copy { rows: big.0, cols: big.1 }, F32),
        s(LayerNorm { rows: mid.0, cols: mid.1 }, F32),
        s(LayerNorm { rows: mid.0, cols: mid.1 }, BF16),
        s(CrossEntropy { rows: mid.0, classes: mid.1 }, F32),
        s(CrossEntropy { rows: mid.0, classes: mid.1 }, BF16),
        // 4 sequences of 512 frames, 8 heads of 64: one encoder layer's attention.
        s(Attention { batch: 4, heads: 8, n: 512, d: 64 }, F32),
        s(Attention { batch: 4, heads: 8, n: 512, d: 64 }, BF16),
        s(Conv2d { batch: 8, cin: 64, hw: 32, cout: 64, k: 3 }, F32),
        // 4096 tokens from a 32k vocabulary of width 512.
        s(Embedding { vocab: 32000, dim: 512, tokens: 4096 }, F32),
        s(AdamW { n: 1 << 24 }, F32),
        s(AdamW { n: 1 << 24 }, BF16),
    ]
}

/// `--smoke`: each benchmark on a small shape that is not a multiple of any
/// tile, to check quickly that every kernel runs on a device.
pub fn smoke(specs: &[Spec]) -> Vec<Spec> {
    use Op::*;
    let mut out: Vec<Spec> = vec![];
    for s in specs {
        let op = match s.op {
            Matmul { batch, .. } => Matmul { batch: batch.min(2), m: 37, k: 19, n: 23 },
            Add { .. } => Add { rows: 33, cols: 70 },
            Gelu { .. } => Gelu { rows: 33, cols: 70 },
            Softmax { .. } => Softmax { rows: 33, cols: 70 },
            Sum { axis, .. } => Sum { rows: 33, cols: 70, axis },
            Copy { .. } => Copy { rows: 33, cols: 70 },
            LayerNorm { .. } => LayerNorm { rows: 33, cols: 70 },
            CrossEntropy { .. } => CrossEntropy { rows: 33, classes: 70 },
            Attention { d, .. } => Attention { batch: 1, heads: 2, n: 70, d },
            Conv2d { k, .. } => Conv2d { batch: 1, cin: 3, hw: 9, cout: 4, k },
            Embedding { .. } => Embedding { vocab: 50, dim: 16, tokens: 33 },
            AdamW { .. } => AdamW { n: 1000 },
        };
        let small = Spec { op, dtype: s.dtype };
        if !out.contains(&small) {
            out.push(small);
        }
    }
    out
}

impl Spec {
    pub fn kernel(&self) -> &'static str {
        match self.op {
            Op::Matmul { .. } => "matmul",
            Op::Add { .. } => "add",
            Op::Gelu { .. } => "gelu",
            Op::Softmax { .. } => "softmax",
            Op::Sum { .. } => "sum",
            Op::Copy { .. } => "copy",
            Op::LayerNorm { .. } => "layer_norm",
            Op::CrossEntropy { .. } => "cross_entropy",
            Op::Attention { .. } => "attention",
            Op::Conv2d { .. } => "conv2d",
            Op::Embedding { .. } => "embedding",
            Op::AdamW { .. } => "adamw",
        }
    }

    pub fn shape(&self) -> String {
        match self.op {
            Op::Matmul { batch: 1, m, k, n } => format!("{m}x{k} @ {k}x{n}"),
            Op::Matmul { batch, m, k, n } => format!("{batch} x ({m}x{k} @ {k}x{n})"),
            Op::Add { rows, cols } => format!("{rows}x{cols} + {cols}"),
            Op::Gelu { rows, cols } | Op::Softmax { rows, cols } => format!("{rows}x{cols}"),
            Op::Sum { rows, cols, axis } => format!("{rows}x{cols} axis {axis}"),
            Op::Copy { rows, cols } => format!("({cols}x{rows}).T"),
            Op::LayerNorm { rows, cols } => format!("{rows}x{cols}"),
            Op::CrossEntropy { rows, classes } => format!("{rows}x{classes} logits"),
            Op::Attention { batch, heads, n, d } => format!("B{batch} H{heads} N{n} D{d}"),
            Op::Conv2d { batch, cin, hw, cout, k } => format!("{batch}x{cin}x{hw}x{hw} * {cout}x{cin}x{k}x{k}"),
            Op::Embedding { vocab, dim, tokens } => format!("{tokens} ids of {vocab}x{dim}"),
            Op::AdamW { n } => format!("{n} params"),
        }
    }

    pub fn bound(&self) -> Bound {
        match self.op {
            Op::Matmul { .. } | Op::Attention { .. } | Op::Conv2d { .. } => Bound::Compute,
            _ => Bound::Memory,
        }
    }

    /// Floating-point operations per call (multiply and add counted apart)
    /// of the products that bound a compute-bound kernel; 0 for the rest.
    pub fn flops(&self) -> f64 {
        match self.op {
            Op::Matmul { batch, m, k, n } => 2.0 * (batch * m * k * n) as f64,
            // Q·Kᵀ and P·V, 2·N·N·D each per (batch, head); the softmax's
            // exponentials are not counted.
            Op::Attention { batch, heads, n, d } => 4.0 * (batch * heads * n * n * d) as f64,
            // Same-size output: 2·C·k² per output element.
            Op::Conv2d { batch, cin, hw, cout, k } => 2.0 * (batch * cout * hw * hw * cin * k * k) as f64,
            _ => 0.0,
        }
    }

    /// Bytes a call must move at least: inputs read once, output written once.
    pub fn bytes(&self) -> f64 {
        let size = self.dtype.size();
        let elems = match self.op {
            Op::Matmul { batch, m, k, n } => batch * (m * k + k * n + m * n),
            Op::Add { rows, cols } => 2 * rows * cols + cols,
            Op::Gelu { rows, cols } | Op::Softmax { rows, cols } | Op::Copy { rows, cols } => 2 * rows * cols,
            Op::Sum { rows, cols, axis } => rows * cols + if axis == 0 { cols } else { rows },
            // x in, y out, weight and bias.
            Op::LayerNorm { rows, cols } => 2 * rows * cols + 2 * cols,
            // Logits in and the scalar loss out; i32 targets in and one f32
            // log-sum-exp per row out are added below.
            Op::CrossEntropy { rows, classes } => return ((rows * classes + 1) * size + 8 * rows) as f64,
            // q, k, v in, the output out; one f32 log-sum-exp per row out.
            Op::Attention { batch, heads, n, d } => return (batch * heads * n * (4 * d * size + 4)) as f64,
            Op::Conv2d { batch, cin, hw, cout, k } => batch * (cin + cout) * hw * hw + cout * cin * k * k,
            // The gathered rows in, the output out, i32 ids in.
            Op::Embedding { dim, tokens, .. } => return (2 * tokens * dim * size + 4 * tokens) as f64,
            // f32 weight, exp_avg, exp_avg_sq read and written; the gradient read.
            Op::AdamW { n } => return (n * (6 * 4 + size)) as f64,
        };
        (elems * size) as f64
    }

    /// Allocate the inputs on `arena` and return the call to time.
    pub fn build(&self, arena: &Arena) -> Result<Case> {
        let mut rng = Rng::new(17);
        let dt = self.dtype;
        let mut randn = |shape: &[usize], std: f32| Tensor::randn(arena, shape, std, dt, Tag::Data, &mut rng);
        let run: Box<dyn FnMut() -> Result<()>> = match self.op {
            Op::Matmul { batch, m, k, n } => {
                let (a, b) = if batch == 1 {
                    (randn(&[m, k], 1.0)?, randn(&[k, n], 0.1)?)
                } else {
                    (randn(&[batch, m, k], 1.0)?, randn(&[batch, k, n], 0.1)?)
                };
                Box::new(move || keep(a.matmul(&b)?))
            }
            Op::Add { rows, cols } => {
                let (a, b) = (randn(&[rows, cols], 1.0)?, randn(&[cols], 1.0)?);
                Box::new(move || keep(a.add(&b)?))
            }
            Op::Gelu { rows, cols } => {
                let x = randn(&[rows, cols], 1.0)?;
                Box::new(move || keep(x.gelu()?))
            }
            Op::Softmax { rows, cols } => {
                let x = randn(&[rows, cols], 1.0)?;
                Box::new(move || keep(x.softmax(-1)?))
            }
            Op::Sum { rows, cols, axis } => {
                let x = randn(&[rows, cols], 1.0)?;
                Box::new(move || keep(x.sum(&[axis], false)?))
            }
            Op::Copy { rows, cols } => {
                let t = randn(&[cols, rows], 1.0)?.transpose(0, 1)?;
                Box::new(move || keep(t.contiguous()?))
            }
            Op::LayerNorm { rows, cols } => {
                let (x, w, b) = (randn(&[rows, cols], 1.0)?, randn(&[cols], 1.0)?, randn(&[cols], 1.0)?);
                Box::new(move || keep(x.layer_norm(Some(&w), Some(&b), 1e-5)?))
            }
            Op::CrossEntropy { rows, classes } => {
                let x = randn(&[rows, classes], 1.0)?;
                let ids: Vec<i32> = (0..rows).map(|i| ((i * 7919) % classes) as i32).collect();
                let y = Tensor::from_slice(arena, &[rows], &ids, Tag::Data)?;
                Box::new(move || keep(x.cross_entropy(&y, None, 0.0)?))
            }
            Op::Attention { batch, heads, n, d } => {
                let shape = [batch, heads, n, d];
                let (q, k, v) = (randn(&shape, 1.0)?, randn(&shape, 1.0)?, randn(&shape, 1.0)?);
                let opts = crate::ops::AttentionOptions::default();
                Box::new(move || keep(crate::ops::attention(&q, &k, &v, &opts)?))
            }
            Op::Conv2d { batch, cin, hw, cout, k } => {
                let (x, w) = (randn(&[batch, cin, hw, hw], 1.0)?, randn(&[cout, cin, k, k], 0.1)?);
                let p = k / 2;
                Box::new(move || keep(x.conv2d(&w, None, [1, 1], [p, p], [1, 1])?))
            }
            Op::Embedding { vocab, dim, tokens } => {
                let table = randn(&[vocab, dim], 1.0)?;
                let ids: Vec<i32> = (0..tokens).map(|i| ((i * 7919) % vocab) as i32).collect();
                let ids = Tensor::from_slice(arena, &[tokens], &ids, Tag::Data)?;
                Box::new(move || keep(table.embedding(&ids)?))
            }
            Op::AdamW { n } => {
                use crate::optim::{AdamW, AdamWConfig, Optimizer};
                let w = Tensor::randn(arena, &[n], 1.0, DType::F32, Tag::Parameter, &mut rng)?.requires_grad();
                w.set_grad(Some(Tensor::randn(arena, &[n], 1e-3, dt, Tag::Gradient, &mut rng)?));
                let mut opt = AdamW::new(vec![w], AdamWConfig::default())?;
                Box::new(move || opt.step())
            }
        };
        Ok(Case { spec: *self, run })
    }
}

// The output must be produced, then goes back to the arena's cache.
fn keep(t: Tensor) -> Result<()> {
    std::hint::black_box(&t);
    Ok(())
}

/// A benchmark with its inputs allocated, ready to call.
pub struct Case {
    pub spec: Spec,
    run: Box<dyn FnMut() -> Result<()>>,
}

impl Case {
    /// One call of the op, recording nothing for autograd.
    pub fn run(&mut self) -> Result<()> {
        let _g = no_grad();
        (self.run)()
    }
}

/// Median and spread of timed calls.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Timing {
    pub iters: usize,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
}

/// Warm up (first calls commit arena pages and start thread pools), then
/// time single calls until `min_time` seconds have passed and at least 3
/// calls were made.
pub fn time(case: &mut Case, min_time: f64) -> Result<Timing> {
    let start = Instant::now();
    case.run()?;
    while start.elapsed().as_secs_f64() < min_time / 10.0 {
        case.run()?;
    }
    let mut times = vec![];
    let start = Instant::now();
    while times.len() < 3 || start.elapsed().as_secs_f64() < min_time {
        let t = Instant::now();
        case.run()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median_s = if n % 2 == 1 { times[n / 2] } else { 0.5 * (times[n / 2 - 1] + times[n / 2]) };
    Ok(Timing { iters: n, median_s, min_s: times[0], max_s: times[n - 1] })
}

/// Fields of /proc/cpuinfo the peak needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuInfo {
    pub vendor: String,
    pub model: String,
    pub family: Option<u32>,
    /// Highest "cpu MHz" over the listed CPUs (idle cores may report less).
    pub mhz: Option<f64>,
    /// Hardware threads per physical core ("siblings" / "cpu cores").
    pub smt: usize,
}

pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo { smt: 1, ..Default::default() };
    let (mut siblings, mut cores) = (None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "vendor_id" if info.vendor.is_empty() => info.vendor = value.to_string(),
            "model name" if info.model.is_empty() => info.model = value.to_string(),
            "cpu family" if info.family.is_none() => info.family = value.parse().ok(),
            "cpu MHz" => {
                if let Ok(v) = value.parse::<f64>() {
                    info.mhz = Some(info.mhz.map_or(v, |m: f64| m.max(v)));
                }
            }
            "siblings" if siblings.is_none() => siblings = value.parse::<usize>().ok(),
            "cpu cores" if cores.is_none() => cores = value.parse::<usize>().ok(),
            _ => {}
        }
    }
    if let (Some(s), Some(c)) = (siblings, cores) {
        if c > 0 && s >= c {
            info.smt = s / c;
        }
    }
    info
}

/// f32 FLOPs per cycle per core, the SIMD it assumes, and why.
pub fn flops_per_cycle(info: &CpuInfo) -> (f64, &'static str, String) {
    #[cfg(target_arch = "x86_64")]
    {
        let amd = info.vendor == "AuthenticAMD";
        let intel = info.vendor == "GenuineIntel";
        let family = info.family.unwrap_or(0);
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            let (f, why) = if amd && family == 0x19 {
                (32.0, "AMD family 25 (Zen 4) runs AVX-512 on 2 x 256-bit FMA pipes: 2 pipes x 8 f32 lanes x 2 (FMA)")
            } else if amd && family >= 0x1a {
                (64.0, "AMD family 26+ (Zen 5) has 2 x 512-bit FMA pipes: 2 pipes x 16 f32 lanes x 2 (FMA)")
            } else if intel {
                (64.0, "Intel AVX-512, assuming 2 x 512-bit FMA units (parts with one reach half): 2 x 16 x 2")
            } else {
                (32.0, "AVX-512 of unknown width, assuming 2 x 256-bit FMA pipes: 2 x 8 x 2")
            };
            return (f, "avx512f+fma", why.to_string());
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return (32.0, "avx2+fma", "2 x 256-bit FMA pipes assumed: 2 pipes x 8 f32 lanes x 2 (FMA)".into());
        }
        if is_x86_feature_detected!("avx") {
            return (16.0, "avx", "no FMA: 1 add + 1 multiply pipe x 8 f32 lanes".into());
        }
        (8.0, "sse2", "no AVX: 1 add + 1 multiply pipe x 4 f32 lanes".into())
    }
    #[cfg(target_arch = "aarch64")]
    {
        let _ = info;
        (16.0, "neon", "NEON, assuming 2 x 128-bit FMA pipes: 2 pipes x 4 f32 lanes x 2 (FMA)".into())
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = info;
        (2.0, "scalar", "unknown architecture: one scalar FMA per cycle".into())
    }
}

/// This machine as the benchmark sees it: every figure and how it was got.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub record: &'static str,
    pub vendor: String,
    pub model: String,
    pub cpu_family: Option<u32>,
    /// Rayon threads the ops run on.
    pub threads: usize,
    /// Physical cores those threads occupy (the peak counts these).
    pub cores: usize,
    /// Threads matrixmultiply's own pool uses for every product.
    pub matmul_threads: usize,
    pub clock_mhz: f64,
    pub clock_source: String,
    pub simd: &'static str,
    pub f32_flops_per_cycle: f64,
    pub peak_gflops: f64,
    pub peak_derivation: String,
    pub bandwidth_gbs: f64,
    pub bandwidth_derivation: String,
}

/// Derive the compute peak for `threads` threads. `clock_mhz` overrides
/// /proc/cpuinfo.
pub fn compute_peak(threads: usize, clock_mhz: Option<f64>) -> Result<Machine> {
    let info = parse_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
    let (mhz, clock_source) = match (clock_mhz, info.mhz) {
        (Some(v), _) => (v, "--clock-mhz".to_string()),
        (None, Some(v)) => {
            (v, "highest \"cpu MHz\" in /proc/cpuinfo (the reported clock, not the boost ceiling)".into())
        }
        (None, None) => {
            return Err(Error::invalid("bench", "/proc/cpuinfo gives no \"cpu MHz\"; pass the clock with --clock-mhz"))
        }
    };
    if !(mhz.is_finite() && mhz > 0.0) {
        return Err(Error::invalid("bench", format!("a clock of {mhz} MHz is not usable")));
    }
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = threads.min((online / info.smt.max(1)).max(1));
    let (fpc, simd, why) = flops_per_cycle(&info);
    let peak = cores as f64 * mhz * 1e6 * fpc / 1e9;
    let derivation = format!(
        "{cores} cores x {mhz:.0} MHz x {fpc} f32 FLOP/cycle = {peak:.1} GFLOP/s; cores: {threads} threads on {online} \
         online CPUs with {} thread(s) per core; clock: {clock_source}; FLOP/cycle: {why}",
        info.smt
    );
    let matmul_threads =
        std::env::var("MATMUL_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(threads).clamp(1, 4);
    Ok(Machine {
        record: "machine",
        vendor: info.vendor,
        model: info.model,
        cpu_family: info.family,
        threads,
        cores,
        matmul_threads,
        clock_mhz: mhz,
        clock_source,
        simd,
        f32_flops_per_cycle: fpc,
        peak_gflops: peak,
        peak_derivation: derivation,
        bandwidth_gbs: 0.0,
        bandwidth_derivation: String::new(),
    })
}

/// Best STREAM-triad rate in GB/s over `runs` runs, on three f32 arrays of
/// `bytes` each from `arena`, on the current rayon pool.
pub fn measure_bandwidth(arena: &Arena, bytes: usize, runs: usize) -> Result<f64> {
    let n = bytes / 4;
    let a = Tensor::empty(arena, &[n], DType::F32, Tag::Workspace, "bench.triad")?;
    let b = Tensor::full(arena, &[n], 1.0, DType::F32, Tag::Workspace)?;
    let c = Tensor::full(arena, &[n], 2.0, DType::F32, Tag::Workspace)?;
    let (out, x, y) = (a.data_mut::<f32>()?, b.data::<f32>()?, c.data::<f32>()?);
    let mut best = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        crate::cpu::elementwise::zip2::<f32, f32, f32>(x, y, out, |x, y| x + 3.0 * y);
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&out[n / 2]);
    Ok(3.0 * (n * 4) as f64 / best / 1e9)
}

/// One row of results.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub record: &'static str,
    pub kernel: &'static str,
    pub shape: String,
    /// `DType::name` (its serde form spells bf16 "b_f16").
    pub dtype: &'static str,
    pub bound: Bound,
    pub iters: usize,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub flops: f64,
    pub bytes: f64,
    /// At the median time.
    pub gflops: f64,
    pub gbs: f64,
    /// Of the compute peak (compute-bound) or the measured bandwidth (memory-bound).
    pub peak_share: f64,
}

/// `peak_gflops` and `bandwidth_gbs` are the device's: the share of
/// peak is taken against the one that bounds the kernel.
pub fn row(spec: &Spec, t: Timing, peak_gflops: f64, bandwidth_gbs: f64) -> Row {
    let (gflops, gbs) = (spec.flops() / t.median_s / 1e9, spec.bytes() / t.median_s / 1e9);
    let peak_share = match spec.bound() {
        Bound::Compute => gflops / peak_gflops,
        Bound::Memory => gbs / bandwidth_gbs,
    };
    Row {
        record: "result",
        kernel: spec.kernel(),
        shape: spec.shape(),
        dtype: spec.dtype.name(),
        bound: spec.bound(),
        iters: t.iters,
        median_s: t.median_s,
        min_s: t.min_s,
        max_s: t.max_s,
        flops: spec.flops(),
        bytes: spec.bytes(),
        gflops,
        gbs,
        peak_share,
    }
}

/// What `headroom bench` was asked.
#[derive(Clone, Debug)]
pub struct Options {
    /// Kernel names; empty runs every kernel.
    pub kernels: Vec<String>,
    pub min_time: f64,
    pub json: bool,
    /// Rayon threads; `None` uses one per online CPU.
    pub threads: Option<usize>,
    pub clock_mhz: Option<f64>,
    /// Where to time the kernels: the CPU, or the GPU (`--device cuda`).
    pub device: crate::cuda::DeviceChoice,
    /// Small shapes only (`smoke`).
    pub smoke: bool,
}

/// `--list`: every kernel and the shapes it runs.
pub fn list() -> String {
    let mut out = String::new();
    for (name, what) in KERNELS {
        out += &format!("{name:<13} {what}\n");
        for s in specs().iter().filter(|s| s.kernel() == name) {
            out += &format!("{:14}{:<30} {}\n", "", s.shape(), s.dtype);
        }
    }
    out
}

/// The specs `kernels` selects, or an error naming the unknown one.
pub fn select(kernels: &[String]) -> Result<Vec<Spec>> {
    for k in kernels {
        if !KERNELS.iter().any(|(n, _)| n == k) {
            let names: Vec<&str> = KERNELS.iter().map(|(n, _)| *n).collect();
            return Err(Error::invalid("bench", format!("unknown kernel `{k}`; choose from {}", names.join(", "))));
        }
    }
    Ok(specs().into_iter().filter(|s| kernels.is_empty() || kernels.iter().any(|k| k == s.kernel())).collect())
}

/// Run the benchmark and write the table (or JSON lines) to `out`.
pub fn run(opts: &Options, out: &mut (dyn Write + Send)) -> Result<()> {
    let specs = select(&opts.kernels)?;
    let specs = if opts.smoke { smoke(&specs) } else { specs };
    if !(opts.min_time.is_finite() && opts.min_time >= 0.0) {
        return Err(Error::invalid("bench", format!("--min-time {} is not a time in seconds", opts.min_time)));
    }
    if let Some(gpu) = crate::cuda::select(opts.device, false)? {
        return run_on_gpu(opts, &specs, &gpu, out);
    }
    let threads = opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        return Err(Error::invalid("bench", "--threads must be at least 1"));
    }
    // matrixmultiply runs products on its own pool, sized once from this
    // variable on first use; give it the same thread count unless the user chose.
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        std::env::set_var("MATMUL_NUM_THREADS", threads.to_string());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::invalid("bench", format!("could not start {threads} threads: {e}")))?;
    pool.install(|| run_in_pool(opts, &specs, threads, out))
}

const TRIAD_BYTES: usize = 128 << 20;
const TRIAD_RUNS: usize = 10;

fn run_in_pool(opts: &Options, specs: &[Spec], threads: usize, out: &mut dyn Write) -> Result<()> {
    let io = |e: std::io::Error| Error::io("stdout", e);
    let arena = Arena::host();
    let mut m = compute_peak(threads, opts.clock_mhz)?;
    m.bandwidth_gbs = measure_bandwidth(&arena, TRIAD_BYTES, TRIAD_RUNS)?;
    arena.empty_cache();
    m.bandwidth_derivation = format!(
        "STREAM triad a = b + 3c over 3 x {} f32 arrays of arena memory (3 x 4 bytes per element, write-allocate \
         not counted), {threads} threads, best of {TRIAD_RUNS}",
        fmt_bytes(TRIAD_BYTES)
    );
    if opts.json {
        writeln!(out, "{}", serde_json::to_string(&m).expect("machine serialises")).map_err(io)?;
    } else {
        writeln!(out, "{} ({}), {threads} threads", m.model, m.vendor).map_err(io)?;
        writeln!(out, "compute peak: {}", m.peak_derivation).map_err(io)?;
        writeln!(out, "measured peak bandwidth: {:.1} GB/s ({})", m.bandwidth_gbs, m.bandwidth_derivation)
            .map_err(io)?;
        writeln!(out, "matmul runs on matrixmultiply's own pool of {} threads\n", m.matmul_threads).map_err(io)?;
        writeln!(
            out,
            "{:<13} {:<30} {:<5} {:>10} {:>16} {:>7}",
            "kernel", "shape", "dtype", "median", "rate", "% peak"
        )
        .map_err(io)?;
    }
    for spec in specs {
        let mut case = spec.build(&arena)?;
        let r = row(spec, time(&mut case, opts.min_time)?, m.peak_gflops, m.bandwidth_gbs);
        drop(case);
        write_row(out, &r, opts.json)?;
        out.flush().map_err(io)?;
    }
    if !opts.json {
        writeln!(
            out,
            "\n% peak: of the compute peak for matmul, attention and conv2d, of the measured bandwidth for the rest"
        )
        .map_err(io)?;
    }
    Ok(())
}

/// A GPU as the benchmark sees it: peaks derived from its attributes, and
/// a measured copy bandwidth.
#[derive(Clone, Debug, Serialize)]
pub struct GpuMachine {
    pub record: &'static str,
    pub name: String,
    pub multiprocessors: i32,
    pub clock_mhz: f64,
    /// Dense f16 tensor-core peak (what cuBLAS reaches for f16 products).
    pub peak_tflops_f16: f64,
    /// Plain f32 FMA peak (what our own kernels' FMA loops can reach).
    pub peak_tflops_f32: f64,
    pub peak_derivation: String,
    pub bandwidth_gbs: f64,
    pub bandwidth_derivation: String,
}

/// Time every spec on `gpu`, inputs in its arena.
pub fn run_on_gpu(opts: &Options, specs: &[Spec], gpu: &crate::cuda::Gpu, out: &mut dyn Write) -> Result<()> {
    let io = |e: std::io::Error| Error::io("stdout", e);
    // FLOP per clock per SM from NVIDIA's architecture papers: dense f16
    // tensor cores 4096 (sm_90), 2048 (sm_80), 1024 (sm_75 and consumer
    // sm_8x, approximately); f32 FMA 2 × 64 lanes (sm_80) or 2 × 128.
    // The emulator has no peak: its shares print as NaN.
    let (sms, clock, tc, fma) = if gpu.is_emulator() {
        (0, f64::NAN, f64::NAN, f64::NAN)
    } else {
        let info = crate::cuda::probe()?;
        let tc = match info.compute_capability {
            (9, _) => 4096.0,
            (8, 0) => 2048.0,
            _ => 1024.0,
        };
        let fma = if info.compute_capability == (8, 0) { 128.0 } else { 256.0 };
        (info.multiprocessors, info.clock_khz as f64 / 1e3, tc, fma)
    };
    let per_sec = sms as f64 * clock * 1e6;
    let arena = Arena::cuda(gpu, crate::alloc::ArenaConfig::default()).map_err(|e| Error::cuda("bench", e.0))?;
    let n = if gpu.is_emulator() { 16usize << 20 } else { 256 << 20 };
    let (a, b) = (
        Tensor::zeros(&arena, &[n / 4], DType::F32, Tag::Workspace)?,
        Tensor::zeros(&arena, &[n / 4], DType::F32, Tag::Workspace)?,
    );
    let mut best = f64::INFINITY;
    for _ in 0..10 {
        gpu.sync()?;
        let t = Instant::now();
        gpu.copy(b.device_ptr(), a.device_ptr(), n)?;
        gpu.sync()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    drop((a, b));
    let m = GpuMachine {
        record: "gpu",
        name: gpu.name().to_string(),
        multiprocessors: sms,
        clock_mhz: clock,
        peak_tflops_f16: per_sec * tc / 1e12,
        peak_tflops_f32: per_sec * fma / 1e12,
        peak_derivation: format!(
            "{sms} SMs x {clock:.0} MHz (max clock attribute) x {tc} f16 tensor-core or {fma} f32 FMA FLOP/clock/SM"
        ),
        bandwidth_gbs: 2.0 * n as f64 / best / 1e9,
        bandwidth_derivation: format!("device-to-device copy of {}, read + write, best of 10", fmt_bytes(n)),
    };
    if opts.json {
        writeln!(out, "{}", serde_json::to_string(&m).expect("gpu serialises")).map_err(io)?;
    } else {
        writeln!(
            out,
            "{}: {:.0} TFLOP/s f16 tensor, {:.1} TFLOP/s f32 ({})",
            m.name, m.peak_tflops_f16, m.peak_tflops_f32, m.peak_derivation
        )
        .map_err(io)?;
        writeln!(out, "measured bandwidth: {:.0} GB/s ({})\n", m.bandwidth_gbs, m.bandwidth_derivation).map_err(io)?;
        writeln!(
            out,
            "{:<13} {:<30} {:<5} {:>10} {:>16} {:>7}",
            "kernel", "shape", "dtype", "median", "rate", "% peak"
        )
        .map_err(io)?;
    }
    for spec in specs {
        let mut case = spec.build(&arena)?;
        // Drain the queue after every call, so a timing covers the launch and the work.
        let (g, mut call) = (gpu.clone(), std::mem::replace(&mut case.run, Box::new(|| Ok(()))));
        case.run = Box::new(move || {
            call()?;
            g.sync()
        });
        let peak = if spec.dtype == DType::F32 { m.peak_tflops_f32 } else { m.peak_tflops_f16 };
        let r = row(spec, time(&mut case, opts.min_time)?, peak * 1e3, m.bandwidth_gbs);
        write_row(out, &r, opts.json)?;
    }
    Ok(())
}

/// One result: a JSON line, or a table row (TFLOP/s from 1000 GFLOP/s up).
fn write_row(out: &mut dyn Write, r: &Row, json: bool) -> Result<()> {
    let io = |e: std::io::Error| Error::io("stdout", e);
    if json {
        return writeln!(out, "{}", serde_json::to_string(r).expect("row serialises")).map_err(io);
    }
    let rate = match r.bound {
        Bound::Compute if r.gflops >= 1e3 => format!("{:.2} TFLOP/s", r.gflops / 1e3),
        Bound::Compute => format!("{:.1} GFLOP/s", r.gflops),
        Bound::Memory => format!("{:.1} GB/s", r.gbs),
    };
    let (kernel, shape, dtype, median) = (r.kernel, &r.shape, r.dtype, fmt_secs(r.median_s));
    let share = 100.0 * r.peak_share;
    writeln!(out, "{kernel:<13} {shape:<30} {dtype:<5} {median:>10} {rate:>16} {share:>6.1}%").map_err(io)
}

/// `0.0123` → `"12.30 ms"`.
pub fn fmt_secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_parses_vendor_family_clock_and_smt() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel name\t: AMD EPYC\n\
                    cpu MHz\t\t: 2596.138\nsiblings\t: 4\ncpu cores\t: 2\n\nprocessor\t: 1\ncpu MHz\t\t: 3100.5\n";
        let i = parse_cpuinfo(text);
        assert_eq!((i.vendor.as_str(), i.family, i.smt), ("AuthenticAMD", Some(25), 2));
        assert_eq!(i.mhz, Some(3100.5));
        assert_eq!(parse_cpuinfo("").mhz, None);
    }

    #[test]
    fn every_kernel_has_specs_and_unknown_names_are_errors() {
        for (k, _) in KERNELS {
            assert!(specs().iter().any(|s| s.kernel() == k), "{k}");
        }
        assert_eq!(select(&["matmul".into()]).unwrap().len(), 6);
        assert!(select(&["nope".into()]).unwrap_err().to_string().contains("matmul"));
        let sq = specs()[0];
        assert_eq!(sq.flops(), 2.0 * 1024f64.powi(3));
    }
}
