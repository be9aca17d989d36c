//! The `headroom` command line.

use clap::{Parser, Subcommand};
use headroom::alloc::{fmt_bytes, parse_bytes, Arena, ArenaConfig, Tag};
use headroom::bench;
use headroom::cuda::DeviceChoice;
use headroom::model::ModelConfig;
use headroom::ops::AttentionKind;
use headroom::plan;
use headroom::preset;
use headroom::train::{train, Precision, Recompute, TrainConfig};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "headroom", version, about = "Train neural networks inside a memory budget you set.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a preset (default: a small transformer on the embedded
    /// spoken-digits data) and report loss, the held-out metric and memory.
    Train(TrainArgs),
    /// Predict a `train` configuration's peak memory, by tag and op, without
    /// running it (same flags as train).
    Plan(TrainArgs),
    /// List the configurations (micro-batch × accumulation, precision,
    /// recompute) that fit --budget, cheapest first (same flags as train).
    Fit(TrainArgs),
    /// List the presets with their parameter counts.
    Presets {
        /// One JSON array of objects (name, parameters, about, …).
        #[arg(long)]
        json: bool,
        /// Plan every full preset at f32 and fit it under 2 GiB, and train
        /// every tiny one for real: the README's table (takes a minute).
        #[arg(long)]
        table: bool,
    },
    /// Show the allocator at work on a recorded-shaped training step, then
    /// hit the budget on purpose.
    AllocDemo {
        /// Hard cap on reserved bytes, e.g. 256MiB.
        #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
        budget: usize,
    },
    /// Time kernels through the public tensor ops and compare each with this
    /// machine's peak (derived and printed).
    Bench {
        /// Kernels to run (default: all); `--list` names them.
        kernels: Vec<String>,
        /// List the kernels and their shapes, run nothing.
        #[arg(long)]
        list: bool,
        /// Seconds of timed calls per shape, after a warm-up.
        #[arg(long, default_value_t = 0.3)]
        min_time: f64,
        /// One JSON object per line: the machine, then one per result.
        #[arg(long)]
        json: bool,
        /// Threads to run on (default: one per online CPU).
        #[arg(long)]
        threads: Option<usize>,
        /// CPU clock for the compute peak, when /proc/cpuinfo has none or is wrong.
        #[arg(long)]
        clock_mhz: Option<f64>,
        /// cpu, or cuda to time the kernels on the GPU (an error without one).
        #[arg(long, default_value = "cpu", value_parser = DeviceChoice::parse)]
        device: DeviceChoice,
        /// Small shapes only: checks quickly that every kernel runs.
        #[arg(long)]
        smoke: bool,
    },
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`headroom fit | head`), as command-line tools do.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => run_train(args),
        Command::Plan(args) => run_plan(args),
        Command::Fit(args) => run_fit(args),
        Command::Presets { json, table } => presets(json, table),
        Command::AllocDemo { budget } => alloc_demo(budget),
        Command::Bench { kernels, list, min_time, json, threads, clock_mhz, device, smoke } => {
            if list {
                print!("{}", bench::list());
                Ok(())
            } else {
                let opts = bench::Options { kernels, min_time, json, threads, clock_mhz, device, smoke };
                bench::run(&opts, &mut std::io::stdout()).map_err(Into::into)
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::result_large_err)] // the demo handles the allocator's own OutOfMemory
fn alloc_demo(budget: usize) -> Result<(), Box<dyn std::error::Error>> {
    let arena = Arena::new(ArenaConfig { budget: Some(budget), trace: true, ..Default::default() })?;
    // A 4-layer MLP of width 1024 at batch 256, f32: parameters, a forward
    // that saves each layer's input, a backward that frees them in reverse.
    let (layers, width, batch) = (4usize, 1024usize, 256usize);
    let weight = width * width * 4;
    let act = batch * width * 4;
    let params: Vec<_> = (0..layers).map(|_| arena.alloc(weight, Tag::Parameter, "init")).collect::<Result<_, _>>()?;
    let mut saved = Vec::new();
    for _ in 0..layers {
        saved.push(arena.alloc(act, Tag::Activation, "linear"));
    }
    let grads: Vec<_> =
        (0..layers).map(|_| arena.alloc(weight, Tag::Gradient, "linear.backward")).collect::<Result<_, _>>()?;
    while let Some(a) = saved.pop() {
        let _tmp = arena.alloc(act, Tag::Temporary, "linear.backward")?;
        drop(a);
    }
    println!("one step of a {layers}×{width} MLP at batch {batch} under a {} budget:", fmt_bytes(budget));
    println!("{}\n", arena.stats().table());
    drop(grads);
    let freed = arena.empty_cache();
    println!("after freeing gradients, empty_cache() returned {} to the OS", fmt_bytes(freed));
    println!("\nasking for a 1 GiB activation on purpose:");
    match arena.alloc(1 << 30, Tag::Activation, "demo") {
        Ok(_) => println!("it fitted (the budget is larger than 1 GiB)"),
        Err(e) => println!("Err: {e}"),
    }
    let small = arena.alloc(1 << 20, Tag::Activation, "demo")?;
    println!("\nthe arena stays usable: a 1 MiB request then succeeded ({small:?})");
    drop(params);
    Ok(())
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Model and data (`headroom presets` lists them): `digits` is the
    /// embedded spoken-digits classifier; the others train on synthetic data.
    #[arg(long, default_value = "digits")]
    preset: String,
    /// Optimizer steps (default: --epochs full passes over the data).
    #[arg(long)]
    steps: Option<usize>,
    /// Full passes over the data (default: the preset's, 8 for digits, 1 otherwise).
    #[arg(long)]
    epochs: Option<usize>,
    /// Where to run: auto (the GPU when a CUDA driver and device are there,
    /// else the CPU, saying so), cpu or cuda (an error without a GPU).
    /// `plan` and `fit` predict for the GPU with cuda, on any machine.
    #[arg(long, default_value = "auto", value_parser = DeviceChoice::parse)]
    device: DeviceChoice,
    /// Read the preset's data from .npy files in DIR (x.npy or x/, y.npy or
    /// y/; see `data::files`), streamed batch by batch, instead of its
    /// synthetic task.
    #[arg(long, value_name = "DIR")]
    data: Option<std::path::PathBuf>,
    /// With --data: low-pass filter the inputs' time axis and keep every K-th frame.
    #[arg(long, default_value_t = 1, value_name = "K")]
    downsample: usize,
    /// Samples per micro-batch (default: the preset's).
    #[arg(long)]
    batch: Option<usize>,
    /// Micro-batches accumulated per optimizer step (effective batch = batch × accum).
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// Learning rate (default: the preset's).
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads for kernels (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Hard cap on reserved memory, e.g. 512MiB or 2GiB.
    #[arg(long, value_parser = parse_bytes)]
    budget: Option<usize>,
    /// Activations and compute copies: f32, f16 (with dynamic loss scaling) or bf16.
    #[arg(long, default_value = "f32", value_parser = Precision::parse)]
    precision: Precision,
    /// Blocks that recompute activations in backward: none, all, every:K or auto (fit --budget).
    #[arg(long, default_value = "none", value_parser = Recompute::parse)]
    recompute: Recompute,
    /// Attention kernel: fused (memory linear in sequence length) or naive.
    #[arg(long, default_value = "fused", value_parser = parse_attention)]
    attention: AttentionKind,
    /// digits only: transformer blocks (default 2).
    #[arg(long)]
    layers: Option<usize>,
    /// digits only: model width (default 64; the MLP is twice as wide).
    #[arg(long)]
    dim: Option<usize>,
    /// Evaluate on the held-out speakers every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Write crash-safe checkpoints here.
    #[arg(long)]
    checkpoint_dir: Option<std::path::PathBuf>,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Continue from the newest checkpoint in --checkpoint-dir.
    #[arg(long)]
    resume: bool,
    /// Print one JSON object with the figures on stdout.
    #[arg(long)]
    json: bool,
    /// train: use the cheapest configuration that `fit` finds for --budget.
    #[arg(long)]
    fit: bool,
    /// Record the second step, give each of its buffers a fixed offset, and
    /// replay every later step from that plan (plan: predict that run, with
    /// reserved ÷ peak live for the caching allocator and for the plan).
    #[arg(long)]
    static_plan: bool,
    /// Write the memory report (one self-contained HTML page) of one
    /// steady-state step: train records one of the run, plan the planned one.
    #[arg(long, value_name = "FILE.html")]
    report: Option<std::path::PathBuf>,
}

fn parse_attention(s: &str) -> Result<AttentionKind, String> {
    AttentionKind::parse(s).ok_or_else(|| format!("attention `{s}`: use fused or naive"))
}

fn set_threads(threads: Option<usize>) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(n) = threads {
        if n == 0 {
            return Err("--threads must be at least 1".into());
        }
        // matrixmultiply reads this once, on its first product.
        std::env::set_var("MATMUL_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    }
    Ok(())
}

impl TrainArgs {
    fn config(&self) -> Result<TrainConfig, Box<dyn std::error::Error>> {
        let base = TrainConfig::preset(&self.preset)?;
        let mut model = base.model.clone();
        if self.layers.is_some() || self.dim.is_some() {
            let ModelConfig::Digits(c) = &mut model else {
                return Err(format!("--layers and --dim size the digits classifier; preset `{}` has its own sizes (its -tiny variant is small)", self.preset).into());
            };
            c.layers = self.layers.unwrap_or(c.layers);
            c.dim = self.dim.unwrap_or(c.dim);
            // Far beyond any model this trains; keeps a typo from building for hours.
            if c.layers > 4096 || c.dim > 1 << 16 {
                return Err(format!("--layers {} --dim {}: at most 4096 blocks of width 65536", c.layers, c.dim).into());
            }
            c.hidden = 2 * c.dim;
        }
        Ok(TrainConfig {
            model,
            steps: self.steps,
            device: self.device,
            data_dir: self.data.clone(),
            downsample: self.downsample,
            epochs: self.epochs.unwrap_or(base.epochs),
            batch: self.batch.unwrap_or(base.batch),
            lr: self.lr.unwrap_or(base.lr),
            accum: self.accum,
            precision: self.precision,
            recompute: self.recompute.clone(),
            attention: self.attention,
            checkpoint_dir: self.checkpoint_dir.clone(),
            checkpoint_every: self.checkpoint_every,
            resume: self.resume,
            seed: self.seed,
            budget: self.budget,
            eval_every: self.eval_every,
            static_plan: self.static_plan,
            report: self.report.clone(),
            ..base
        })
    }
}

fn run_train(a: TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    set_threads(a.threads)?;
    let mut cfg = a.config()?;
    if a.fit {
        let budget = a.budget.ok_or("--fit needs --budget")?;
        let best = plan::fit(&cfg, budget)?.swap_remove(0);
        eprintln!(
            "fit: micro-batch {} × {} accumulation, {}, recompute {} (predicted peak {} reserved of {}; trades {})",
            best.micro_batch,
            best.accumulation,
            best.precision.dtype(),
            best.recompute,
            fmt_bytes(best.predicted_peak_reserved_bytes),
            fmt_bytes(budget),
            best.trades
        );
        cfg = TrainConfig {
            steps: cfg.steps,
            epochs: cfg.epochs,
            checkpoint_dir: cfg.checkpoint_dir.clone(),
            resume: cfg.resume,
            ..best.config
        };
    }
    let report = train(&cfg)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

fn run_plan(a: TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let p = plan::plan(&a.config()?)?;
    if let Some(path) = &a.report {
        std::fs::write(path, headroom::report::for_plan(&p, &p.step))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("memory report of the planned steady-state step: {}", path.display());
    }
    if a.json {
        println!("{}", serde_json::to_string(&p)?);
    } else {
        print!("{}", p.text());
    }
    Ok(())
}

fn run_fit(a: TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let budget = a.budget.ok_or("fit needs --budget, e.g. --budget 64MiB")?;
    let fits = plan::fit(&a.config()?, budget)?;
    if a.json {
        println!("{}", serde_json::to_string(&fits)?);
        return Ok(());
    }
    println!("{} configurations fit {} (cheapest first; cost is estimated step time relative to plain f32 at the full batch):", fits.len(), fmt_bytes(budget));
    println!(
        "{:>6} {:>6} {:>6} {:>9} {:>6} {:>12} {:>6}  trades",
        "micro", "accum", "dtype", "recompute", "attn", "reserved", "cost"
    );
    for c in &fits {
        println!(
            "{:>6} {:>6} {:>6} {:>9} {:>6} {:>12} {:>6.2}  {}",
            c.micro_batch,
            c.accumulation,
            c.precision.dtype().name(),
            c.recompute,
            c.attention.name(),
            fmt_bytes(c.predicted_peak_reserved_bytes),
            c.relative_cost,
            c.trades
        );
    }
    Ok(())
}

fn presets(json: bool, table: bool) -> Result<(), Box<dyn std::error::Error>> {
    if table {
        print!("{}", plan::preset_table()?);
        return Ok(());
    }
    let list = preset::presets();
    let mut rows = Vec::new();
    for p in &list {
        rows.push((p, preset::parameter_count(&p.model)?));
    }
    if json {
        let objs: Vec<serde_json::Value> = rows
            .iter()
            .map(|(p, n)| {
                serde_json::json!({
                    "name": p.name, "parameters": n, "about": p.about, "failure": p.failure,
                    "batch": p.batch, "model": p.model,
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&objs)?);
        return Ok(());
    }
    println!("{:<14} {:>12}  about", "preset", "parameters");
    for (p, n) in rows {
        println!("{:<14} {:>12}  {}", p.name, n, p.about);
        if !p.failure.is_empty() {
            println!("{:<14} {:>12}  failed elsewhere: {}", "", "", p.failure);
        }
    }
    Ok(())
}
