//! The arena against the system allocator, and what its placement costs in
//! reserved memory.
//!
//! - `alloc_free`: one allocation and its free, the block already cached in
//!   the arena; the system allocator gets the same size and the arena's
//!   512-byte alignment. glibc serves 64 MiB (above its 32 MiB mmap
//!   threshold ceiling) with a fresh mmap and munmap every time.
//! - `alloc_touch_free`: the same, writing one byte per 4 KiB page, as a
//!   kernel filling the block would: the price of fresh pages shows here.
//! - A fragmentation figure, printed first: the allocator trace of real
//!   training steps (`train::simulate` of the default configuration and of a
//!   bigger one) replayed on a fresh host arena, peak reserved ÷ peak
//!   allocated, next to a naive allocator that gives every block its own
//!   2 MiB-rounded segment.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use headroom::alloc::{
    fmt_bytes, Arena, ArenaConfig, Backing, Block, Stats, Tag, TraceEvent, TraceKind, GRANULE, PAGE_SIZE,
};
use headroom::model::ModelConfig;
use headroom::train::{resolve_recompute, simulate, TrainConfig};
use std::alloc::{alloc, dealloc, Layout};
use std::collections::HashMap;
use std::time::Duration;

const SIZES: [(&str, usize); 4] = [("4KiB", 4 << 10), ("256KiB", 256 << 10), ("4MiB", 4 << 20), ("64MiB", 64 << 20)];

fn touch(p: *mut u8, size: usize) {
    for i in (0..size).step_by(4096) {
        unsafe { p.add(i).write_volatile(1) };
    }
}

fn pairs(c: &mut Criterion, group: &str, write: bool) {
    let arena = Arena::host();
    let mut g = c.benchmark_group(group);
    g.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    for (name, size) in SIZES {
        drop(arena.alloc(size, Tag::Temporary, "bench")); // now cached
        g.bench_function(format!("arena/{name}"), |b| {
            b.iter(|| {
                let block = arena.alloc(size, Tag::Temporary, "bench").expect("cached block");
                if write {
                    touch(block.as_ptr(), size);
                }
                black_box(block.as_ptr());
            })
        });
        let layout = Layout::from_size_align(size, GRANULE).expect("valid layout");
        g.bench_function(format!("system/{name}"), |b| {
            b.iter(|| unsafe {
                let p = alloc(layout);
                if p.is_null() {
                    std::alloc::handle_alloc_error(layout);
                }
                if write {
                    touch(p, size);
                }
                dealloc(black_box(p), layout);
            })
        });
    }
    g.finish();
}

fn alloc_free(c: &mut Criterion) {
    pairs(c, "alloc_free", false);
}

fn alloc_touch_free(c: &mut Criterion) {
    pairs(c, "alloc_touch_free", true);
}

/// A recorded allocator trace: `headroom::train::simulate` runs the
/// trainer's own step (two optimizer steps and the final evaluation) on a
/// meta arena with tracing on.
fn record(cfg: &TrainConfig) -> (Vec<TraceEvent>, Stats) {
    let mask = resolve_recompute(cfg).expect("a recompute policy");
    let (arena, _run, _) = simulate(cfg, mask, true).expect("the configuration plans");
    (arena.take_trace(), arena.stats())
}

/// Replay the trace's allocations and frees, in order, with their requested
/// sizes and tags, on a fresh host arena (real memory). Returns its stats.
fn replay_host(trace: &[TraceEvent]) -> Stats {
    let arena = Arena::new(ArenaConfig { backing: Backing::Host, ..Default::default() }).expect("host arena");
    let mut live: HashMap<(&str, usize), Block> = HashMap::new();
    for e in trace {
        let key = (e.pool, e.offset);
        match e.kind {
            TraceKind::Alloc => {
                let tag = e.tag.expect("an allocation has a tag");
                let block = arena.alloc(e.requested, tag, "replay").expect("no budget: the replay fits");
                live.insert(key, block);
            }
            TraceKind::Free => {
                live.remove(&key).expect("a free matches an earlier allocation");
            }
            _ => {} // retags, grows and shrinks follow from the allocations
        }
    }
    drop(live);
    arena.stats()
}

/// Peak reserved bytes when every block gets its own segment rounded up to
/// 2 MiB and returned on free: no caching, no splitting.
fn replay_naive(trace: &[TraceEvent]) -> usize {
    let mut size: HashMap<(&str, usize), usize> = HashMap::new();
    let (mut cur, mut peak) = (0usize, 0usize);
    for e in trace {
        match e.kind {
            TraceKind::Alloc => {
                let s = e.requested.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE;
                size.insert((e.pool, e.offset), s);
                cur += s;
                peak = peak.max(cur);
            }
            TraceKind::Free => cur -= size.remove(&(e.pool, e.offset)).expect("matched free"),
            _ => {}
        }
    }
    peak
}

fn fragmentation() {
    println!(
        "fragmentation: the allocator trace of real training steps (train::simulate: two AdamW steps and the \
         final evaluation, recorded on the meta arena), replayed on a fresh host arena"
    );
    let default = TrainConfig { progress: false, ..TrainConfig::default() };
    let bigger = TrainConfig { model: ModelConfig::digits(256, 6, 1024), batch: 64, ..default.clone() };
    for cfg in [default, bigger] {
        let (trace, planned) = record(&cfg);
        let s = replay_host(&trace);
        // Same policy on both backings: the replay reproduces the plan.
        assert_eq!((s.allocated.peak, s.reserved.peak), (planned.allocated.peak, planned.reserved.peak));
        let naive = replay_naive(&trace);
        let ratio = |r: usize| r as f64 / s.allocated.peak as f64;
        let ModelConfig::Digits(m) = &cfg.model else { unreachable!("digits configurations") };
        println!(
            "  {} layers, dim {}, hidden {}, heads {}, batch {}, {}: {} allocations",
            m.layers,
            m.dim,
            m.hidden,
            m.heads,
            cfg.batch,
            cfg.precision.dtype(),
            s.allocs
        );
        println!(
            "    peak requested {}, peak allocated {} (512 B granules)",
            fmt_bytes(s.requested.peak),
            fmt_bytes(s.allocated.peak)
        );
        println!(
            "    headroom arena:          peak reserved {:>11} = {:.3} x peak allocated",
            fmt_bytes(s.reserved.peak),
            ratio(s.reserved.peak)
        );
        println!(
            "    2 MiB segment per block: peak reserved {:>11} = {:.3} x peak allocated",
            fmt_bytes(naive),
            ratio(naive)
        );
    }
}

fn report(_: &mut Criterion) {
    fragmentation();
}

criterion_group!(benches, report, alloc_free, alloc_touch_free);
criterion_main!(benches);
