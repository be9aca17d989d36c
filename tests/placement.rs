//! Static placement: a plan from one recorded step, replayed in the arena
//! with the same figures, no overlap, and every departure counted.

use headroom::alloc::{Arena, ArenaConfig, Backing, Block, Recording, StaticPlan, Tag, PAGE_SIZE};
use std::collections::HashSet;

/// A training-shaped step: parameters live across it; a forward stacks
/// activations, a backward frees them in reverse with a temporary each.
fn step(arena: &Arena, acts: &[usize]) -> Vec<(&'static str, usize)> {
    let _step = arena.begin_step();
    step_body(arena, acts)
}

fn step_body(arena: &Arena, acts: &[usize]) -> Vec<(&'static str, usize)> {
    let mut where_ = Vec::new();
    let mut saved: Vec<Block> = Vec::new();
    for &n in acts {
        let b = arena.alloc(n, Tag::Activation, "forward").unwrap();
        where_.push(b.location());
        saved.push(b);
    }
    while let Some(a) = saved.pop() {
        let t = arena.alloc(a.size() / 2, Tag::Temporary, "backward").unwrap();
        where_.push(t.location());
        drop((a, t));
    }
    where_
}

const ACTS: [usize; 6] = [3 << 20, 1000, 5 << 20, 70_000, 3 << 20, 512];

fn arena(backing: Backing, budget: Option<usize>) -> Arena {
    Arena::new(ArenaConfig { backing, budget, ..Default::default() }).unwrap()
}

fn planned(arena: &Arena) -> Recording {
    step(arena, &ACTS);
    arena.record(|| step(arena, &ACTS)).1
}

#[test]
fn a_replayed_step_serves_every_allocation_from_the_plan_with_the_same_figures() {
    let a = arena(Backing::Host, None);
    // Exactly two pages: no free bytes in the pools for the plan to reuse.
    let _params = a.alloc(4 << 20, Tag::Parameter, "init").unwrap();
    let rec = planned(&a);
    let plan = StaticPlan::from_recording(&rec);
    assert_eq!(plan.summary.buffers, 12);
    assert_eq!(plan.summary.pooled, 0);
    assert_eq!(plan.summary.region, plan.summary.one_region);
    // The lower bound: every activation but the last (512 B), plus the
    // backward temporary of the 3 MiB one before it.
    let acts: usize = ACTS.iter().map(|n| n.div_ceil(512) * 512).sum();
    assert_eq!(plan.summary.lower_bound, acts - 512 + (3 << 19));
    assert!(plan.summary.region >= plan.summary.lower_bound);
    let before = a.stats();
    a.set_static_plan(&rec).unwrap();
    assert_eq!(a.static_plan().unwrap(), plan.summary);
    // Only the parameters' pages stay in the pools; the region is whole pages.
    let committed = plan.summary.region.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    assert_eq!(a.stats().reserved.current, 2 * PAGE_SIZE + committed);
    a.reset_peaks();
    let locations = step(&a, &ACTS);
    assert!(locations.iter().all(|&(pool, _)| pool == "static"), "{locations:?}");
    // One region from 0: the offsets are the plan's.
    let offsets: Vec<usize> = locations.iter().map(|l| l.1).collect();
    let base = plan.entries.iter().map(|e| e.offset.unwrap()).min().unwrap();
    let want: Vec<usize> = plan.entries.iter().map(|e| e.offset.unwrap() - base).collect();
    assert_eq!(offsets, want);
    let s = a.stats();
    assert_eq!(s.replay.hits, 12);
    assert_eq!(s.replay.misses, 0);
    assert_eq!(s.allocated.peak, before.allocated.peak);
    assert_eq!(s.tag(Tag::Activation).allocated.peak, before.tag(Tag::Activation).allocated.peak);
    assert_eq!(s.replay.reserved_peak, 2 * PAGE_SIZE + committed);
    assert!(s.replay.reserved_peak < before.reserved.peak, "{} vs {}", s.replay.reserved_peak, before.reserved.peak);
    assert_eq!(s.allocated.current, 4 << 20);
}

#[test]
fn static_blocks_hold_real_memory_that_never_overlaps() {
    let a = arena(Backing::Host, None);
    // A small parameter keeps one small-pool page committed, mostly free:
    // the plan puts small buffers there.
    let _p = a.alloc(100_000, Tag::Parameter, "init").unwrap();
    let rec = planned(&a);
    a.set_static_plan(&rec).unwrap();
    let summary = a.static_plan().unwrap();
    assert!(summary.in_pool_pages > 0 && summary.pool_free == PAGE_SIZE - 100_352, "{summary:?}");
    let _s = a.begin_step();
    let mut held = Vec::new();
    for (i, &n) in ACTS.iter().enumerate() {
        let b = a.alloc(n, Tag::Activation, "forward").unwrap();
        unsafe { std::ptr::write_bytes(b.as_ptr(), i as u8 + 1, b.size()) };
        held.push(b);
    }
    let pools: HashSet<&str> = held.iter().map(|b| b.location().0).collect();
    assert_eq!(pools, HashSet::from(["small", "static"]));
    assert_eq!(a.stats().replay.hits, 6);
    // Every block still holds its own bytes: no two share memory.
    for (i, b) in held.iter().enumerate() {
        let bytes = unsafe { std::slice::from_raw_parts(b.as_ptr(), b.size()) };
        assert!(bytes.iter().all(|&v| v == i as u8 + 1), "block {i} was overwritten");
    }
}

#[test]
fn a_mismatch_falls_back_to_the_pools_for_the_rest_of_the_step_and_is_counted() {
    let a = arena(Backing::Host, None);
    a.set_static_plan(&planned(&a)).unwrap();
    let mut other = ACTS;
    other[2] = 6 << 20; // another size at the third allocation
    let locations = step(&a, &other);
    assert_eq!(locations[..2].iter().filter(|l| l.0 == "static").count(), 2);
    assert!(locations[2..].iter().all(|l| l.0 != "static"), "{locations:?}");
    assert_eq!(a.stats().replay.misses, 1);
    // The next step matches again.
    let locations = step(&a, &ACTS);
    assert!(locations.iter().all(|l| l.0 == "static"));
    assert_eq!(a.stats().replay.misses, 1);
    // More allocations than planned: the extra one is a miss.
    {
        let _s = a.begin_step();
        assert!(step_body(&a, &ACTS).iter().all(|l| l.0 == "static"));
        let extra = a.alloc(512, Tag::Temporary, "extra").unwrap();
        assert_eq!(extra.location().0, "small");
    }
    assert_eq!(a.stats().replay.misses, 2);
    assert_eq!(a.stats().allocated.current, 0);
}

#[test]
fn a_block_held_across_steps_is_never_overlapped() {
    let a = arena(Backing::Host, None);
    a.set_static_plan(&planned(&a)).unwrap();
    // Keep the first activation of a replayed step past its end.
    let kept = {
        let _s = a.begin_step();
        a.alloc(ACTS[0], Tag::Activation, "forward").unwrap()
    };
    let locations = step(&a, &ACTS);
    assert_eq!(locations[0].0, "large", "the planned range is still held");
    assert_eq!(a.stats().replay.misses, 1);
    assert_eq!(kept.location().0, "static");
}

#[test]
fn the_region_counts_against_the_budget() {
    let a = arena(Backing::Host, Some(64 << 20));
    let rec = planned(&a);
    // The region needs more than one page: a one-page budget cannot hold it.
    a.set_budget(Some(PAGE_SIZE));
    let err = a.set_static_plan(&rec).unwrap_err();
    assert!(err.is_oom(), "{err}");
    assert!(err.to_string().contains("static plan"), "{err}");
    assert_eq!(a.stats().replay.committed, 0);
}

#[test]
fn the_meta_arena_replays_to_the_byte() {
    let run = |backing| {
        let a = arena(backing, None);
        let _p = a.alloc(123_456, Tag::Parameter, "init").unwrap();
        a.set_static_plan(&planned(&a)).unwrap();
        let loc = step(&a, &ACTS);
        let mut s = a.stats();
        s.largest_free = 0;
        (loc, s)
    };
    assert_eq!(run(Backing::Host), run(Backing::Meta));
}

#[test]
fn recording_keeps_a_running_trace_and_its_starting_state() {
    let a = Arena::new(ArenaConfig { trace: true, ..Default::default() }).unwrap();
    let _p = a.alloc(2048, Tag::Parameter, "init").unwrap();
    let (_, rec) = a.record(|| step(&a, &[1024]));
    assert_eq!(rec.start_by_tag[0], 2048);
    assert_eq!(rec.events.len(), 4); // alloc, alloc, free, free
    assert!(rec.events.iter().all(|e| e.clock >= rec.start_clock && e.clock < rec.end_clock));
    let trace = a.take_trace();
    assert_eq!(trace[trace.len() - 4..], rec.events[..], "the running trace keeps the recorded events");
}

// ---- the trainer hook -------------------------------------------------------

use headroom::model::ModelConfig;
use headroom::plan::plan;
use headroom::train::{train, TrainConfig};

fn small(steps: usize) -> TrainConfig {
    TrainConfig { steps: Some(steps), model: ModelConfig::digits(32, 2, 64), progress: false, ..Default::default() }
}

#[test]
fn a_static_plan_run_is_bit_identical_and_replays_every_later_step_without_a_miss() {
    let dir = std::env::temp_dir().join(format!("headroom-static-{}", std::process::id()));
    let run = |static_plan: bool| {
        let ck = dir.join(if static_plan { "static" } else { "caching" });
        let r = train(&TrainConfig { static_plan, checkpoint_dir: Some(ck.clone()), ..small(6) }).unwrap();
        let weights = std::fs::read(ck.join("step-00000006/model.safetensors")).unwrap();
        (r, weights)
    };
    let (plain, plain_weights) = run(false);
    let (replayed, replayed_weights) = run(true);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(plain_weights == replayed_weights, "parameters and moments differ");
    assert_eq!(plain.loss_last.to_bits(), replayed.loss_last.to_bits());
    assert_eq!(plain.eval_metric.to_bits(), replayed.eval_metric.to_bits());
    assert_eq!(plain.peak_allocated_bytes, replayed.peak_allocated_bytes);
    assert!(plain.static_plan.is_none());
    let f = replayed.static_plan.unwrap();
    // Steps 3..6 replay; every allocation of each is served by the plan.
    assert_eq!(f.replay.steps, 4);
    assert_eq!(f.replay.misses, 0);
    assert_eq!(f.replay.hits, 4 * f.replay.placement.buffers as u64);
    assert_eq!(f.replay.placement.pooled, 0);
}

#[test]
fn plan_predicts_a_static_plan_run_to_the_byte() {
    for c in [small(3), TrainConfig { batch: 16, accum: 2, model: ModelConfig::digits(32, 3, 64), ..small(3) }] {
        let c = TrainConfig { static_plan: true, ..c };
        let p = plan(&c).unwrap();
        let m = train(&c).unwrap();
        assert_eq!(p.predicted_peak_allocated_bytes, m.peak_allocated_bytes);
        assert_eq!(p.predicted_peak_reserved_bytes, m.peak_reserved_bytes);
        assert_eq!(p.static_plan, m.static_plan, "{c:?}");
        assert!(p.static_plan.unwrap().replay.reserved_peak > 0);
    }
}

#[test]
fn the_plan_is_within_2_percent_of_the_lower_bound_and_beats_the_caching_allocator() {
    let default = TrainConfig { static_plan: true, progress: false, ..Default::default() };
    let larger = TrainConfig { model: ModelConfig::digits(256, 6, 512), batch: 64, ..default.clone() };
    for c in [default, larger] {
        let f = plan(&c).unwrap().static_plan.unwrap();
        let p = f.replay.placement;
        println!("{}", f.text());
        assert!(p.one_region as f64 <= 1.02 * p.lower_bound as f64, "{p:?}");
        assert!(p.greedy_region >= p.one_region && p.one_region >= p.lower_bound);
        assert!(p.region <= p.one_region);
        assert!(f.static_ratio <= f.caching_ratio, "{f:?}");
        assert_eq!(f.replay.misses, 0);
    }
}
