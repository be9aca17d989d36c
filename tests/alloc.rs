//! The arena's contract: placement, accounting, budget and trace.

use headroom::alloc::{Arena, ArenaConfig, Backing, Block, OomReason, Tag, TraceKind, GRANULE, PAGE_SIZE, SMALL_LIMIT};
use headroom::rng::Rng;
use std::collections::BTreeSet;

const MIB: usize = 1 << 20;

fn arena(backing: Backing, budget: Option<usize>) -> Arena {
    Arena::new(ArenaConfig { budget, backing, ..Default::default() }).unwrap()
}

fn random_size(rng: &mut Rng, max: usize) -> usize {
    // Log-uniform from 1 byte to `max`: most requests small, some huge.
    let bits = (max as f64).log2();
    let s = 2f64.powf(rng.uniform() as f64 * bits) as usize;
    s.clamp(1, max)
}

struct Live {
    block: Block,
    tag: Tag,
    requested: usize,
}

/// The figures the arena must report, computed here from the live blocks
/// and the page rule alone (docs/MEMORY.md §1): a 2 MiB page is committed
/// once a block touches it and stays so until a cache flush (`empty_cache`
/// or a budget miss's retry) finds no live block on it.
#[derive(Default)]
struct Model {
    requested_peak: usize,
    allocated_peak: usize,
    tag_requested_peak: [usize; 7],
    tag_allocated_peak: [usize; 7],
    committed: [BTreeSet<usize>; 2], // page indices of the small and large pool
    reserved_peak: usize,
    flushes: u64,
}

fn pages(l: &Live) -> (usize, std::ops::Range<usize>) {
    let (pool, off) = l.block.location();
    let end = (off + l.block.size()).div_ceil(PAGE_SIZE);
    ((pool == "large") as usize, off / PAGE_SIZE..end)
}

impl Model {
    fn reserved(&self) -> usize {
        (self.committed[0].len() + self.committed[1].len()) * PAGE_SIZE
    }

    /// Bring the model up to date after an alloc, a free or `empty_cache`.
    fn sync(&mut self, arena: &Arena, live: &[Live]) {
        let flushes = arena.stats().cache_flushes;
        if flushes != self.flushes {
            // A flush ran (before any block this call added was placed):
            // only pages under live blocks stay committed.
            self.flushes = flushes;
            let mut keep: [BTreeSet<usize>; 2] = Default::default();
            for l in live {
                let (pool, range) = pages(l);
                keep[pool].extend(range);
            }
            for (committed, keep) in self.committed.iter_mut().zip(&keep) {
                committed.retain(|p| keep.contains(p));
            }
        }
        for l in live {
            let (pool, range) = pages(l);
            self.committed[pool].extend(range);
        }
        self.reserved_peak = self.reserved_peak.max(self.reserved());
        let (req, alloc) = live.iter().fold((0, 0), |(r, a), l| (r + l.requested, a + l.block.size()));
        self.requested_peak = self.requested_peak.max(req);
        self.allocated_peak = self.allocated_peak.max(alloc);
        for (i, tag) in Tag::ALL.into_iter().enumerate() {
            let mine = live.iter().filter(|l| l.tag == tag);
            let (req, alloc) = mine.fold((0, 0), |(r, a), l| (r + l.requested, a + l.block.size()));
            self.tag_requested_peak[i] = self.tag_requested_peak[i].max(req);
            self.tag_allocated_peak[i] = self.tag_allocated_peak[i].max(alloc);
        }
    }
}

/// Check every invariant between the arena's figures and the live blocks.
fn check(arena: &Arena, live: &[Live], model: &Model) {
    let s = arena.stats();
    let mut spans: Vec<(&str, usize, usize)> = live
        .iter()
        .map(|l| {
            let (pool, off) = l.block.location();
            (pool, off, l.block.size())
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        if w[0].0 == w[1].0 {
            assert!(w[0].1 + w[0].2 <= w[1].1, "blocks overlap: {:?} and {:?}", w[0], w[1]);
        }
    }
    for l in live {
        let (pool, off) = l.block.location();
        assert_eq!(off % GRANULE, 0);
        assert_eq!(l.block.as_ptr() as usize % GRANULE, 0);
        assert_eq!(pool == "small", l.block.size() <= SMALL_LIMIT);
        assert_eq!(l.block.size(), l.requested.max(1).div_ceil(GRANULE) * GRANULE);
    }
    for (i, tag) in Tag::ALL.into_iter().enumerate() {
        let mine = live.iter().filter(|l| l.tag == tag);
        let (req, alloc) = mine.fold((0, 0), |(r, a), l| (r + l.requested, a + l.block.size()));
        assert_eq!(s.tag(tag).requested.current, req, "{tag} requested");
        assert_eq!(s.tag(tag).allocated.current, alloc, "{tag} allocated");
        assert_eq!(s.tag(tag).requested.peak, model.tag_requested_peak[i], "{tag} requested peak");
        assert_eq!(s.tag(tag).allocated.peak, model.tag_allocated_peak[i], "{tag} allocated peak");
    }
    let total: usize = live.iter().map(|l| l.block.size()).sum();
    assert_eq!(s.allocated.current, total);
    assert_eq!(s.allocated.peak, model.allocated_peak, "peak is the true maximum");
    assert_eq!(s.requested.current, live.iter().map(|l| l.requested).sum::<usize>());
    assert_eq!(s.requested.peak, model.requested_peak, "requested peak");
    assert_eq!(s.reserved.current, model.reserved(), "reserved = committed pages under the page rule");
    assert_eq!(s.reserved.peak, model.reserved_peak, "reserved peak");
    assert!(s.reserved.current >= s.allocated.current);
    assert_eq!(s.reserved.current % PAGE_SIZE, 0);
    if let Some(b) = arena.budget() {
        assert!(s.reserved.current <= b);
        assert!(s.reserved.peak <= b);
    }
}

/// A long random sequence of allocations and frees with random tags.
/// Returns how many budget misses released the cache and retried.
fn random_run(arena: &Arena, seed: u64, steps: usize, max_size: usize, touch: bool) -> u64 {
    let mut rng = Rng::new(seed);
    let mut live: Vec<Live> = Vec::new();
    let mut model = Model::default();
    for step in 0..steps {
        if live.is_empty() || rng.uniform() < 0.55 {
            let n = random_size(&mut rng, max_size);
            let tag = Tag::ALL[rng.below(7)];
            match arena.alloc(n, tag, "random") {
                Ok(block) => {
                    if touch {
                        // Fill with a byte unique to this block; checked on free.
                        unsafe { std::ptr::write_bytes(block.as_ptr(), (step % 251) as u8, n) };
                    }
                    live.push(Live { block, tag, requested: n });
                }
                Err(e) => {
                    assert_eq!(e.reason, OomReason::Budget, "{e}");
                    // At most one page more than the block's own pages can be needed.
                    assert!(e.reserved + (e.rounded.div_ceil(PAGE_SIZE) + 1) * PAGE_SIZE > e.budget.unwrap());
                }
            }
        } else {
            let l = live.swap_remove(rng.below(live.len()));
            if touch {
                let bytes = unsafe { std::slice::from_raw_parts(l.block.as_ptr(), l.requested) };
                assert!(bytes.iter().all(|&b| b == bytes[0]), "block contents were overwritten");
            }
        }
        model.sync(arena, &live);
        if step % 97 == 0 || step + 1 == steps {
            check(arena, &live, &model);
        }
        if rng.uniform() < 0.01 {
            arena.empty_cache();
            model.sync(arena, &live);
        }
    }
    drop(live);
    let s = arena.stats();
    assert_eq!(s.allocated.current, 0);
    assert_eq!(s.requested.current, 0);
    arena.empty_cache();
    assert_eq!(arena.stats().reserved.current, 0, "everything returns after empty_cache");
    s.alloc_retries
}

#[test]
fn random_sequences_on_meta_keep_every_invariant() {
    for seed in 0..4 {
        random_run(&arena(Backing::Meta, None), seed, 3000, 400 * MIB, false);
    }
}

#[test]
fn random_sequences_under_a_budget_never_exceed_it() {
    for seed in 10..13 {
        let retries = random_run(&arena(Backing::Meta, Some(700 * MIB)), seed, 3000, 300 * MIB, false);
        assert!(retries > 0, "seed {seed}: the page model was never tested against a budget retry");
    }
}

#[test]
fn random_sequences_on_host_memory_do_not_overlap() {
    // Real memory: every block is filled and checked, so an overlap would
    // show as overwritten bytes even if the bookkeeping agreed with itself.
    random_run(&arena(Backing::Host, Some(1 << 30)), 7, 1500, 64 * MIB, true);
}

#[test]
fn host_and_meta_account_identically() {
    let run = |backing| {
        let a = arena(backing, Some(512 * MIB));
        let mut rng = Rng::new(99);
        let mut live = Vec::new();
        for _ in 0..800 {
            if live.is_empty() || rng.uniform() < 0.6 {
                if let Ok(b) = a.alloc(random_size(&mut rng, 48 * MIB), Tag::Activation, "x") {
                    live.push(b);
                }
            } else {
                live.swap_remove(rng.below(live.len()));
            }
        }
        let locations: Vec<_> = live.iter().map(|b| b.location()).collect();
        let mut s = a.stats();
        s.clock = 0;
        (s, locations)
    };
    assert_eq!(run(Backing::Host), run(Backing::Meta));
}

#[test]
fn freed_blocks_are_reused_without_growing() {
    let a = arena(Backing::Host, None);
    let b = a.alloc(3 * MIB, Tag::Activation, "x").unwrap();
    let grows = a.stats().segment_grows;
    let loc = b.location();
    drop(b);
    let b = a.alloc(3 * MIB - 100, Tag::Activation, "x").unwrap();
    assert_eq!(b.location(), loc);
    assert_eq!(a.stats().segment_grows, grows);
}

#[test]
fn best_fit_picks_the_smallest_hole() {
    let a = arena(Backing::Meta, None);
    let blocks: Vec<_> = [8, 1, 4, 1, 2, 1].iter().map(|m| a.alloc(m * MIB + 1, Tag::Data, "x").unwrap()).collect();
    let holes: Vec<_> = [0, 2, 4].iter().map(|&i| blocks[i].location()).collect();
    let keep: Vec<_> = blocks.into_iter().enumerate().filter(|(i, _)| i % 2 == 1).map(|(_, b)| b).collect();
    // Holes of 8, 4 and 2 MiB (plus a granule); a 3 MiB request takes the 4 MiB one.
    let b = a.alloc(3 * MIB, Tag::Data, "x").unwrap();
    assert_eq!(b.location(), holes[1]);
    drop(keep);
}

#[test]
fn free_neighbours_coalesce() {
    let a = arena(Backing::Meta, None);
    let x = a.alloc(2 * MIB, Tag::Data, "x").unwrap();
    let y = a.alloc(2 * MIB, Tag::Data, "x").unwrap();
    let z = a.alloc(2 * MIB, Tag::Data, "x").unwrap();
    let pin = a.alloc(2 * MIB, Tag::Data, "x").unwrap();
    let start = x.location();
    drop(x);
    drop(z);
    drop(y);
    assert_eq!(a.stats().largest_free, 6 * MIB);
    let big = a.alloc(6 * MIB, Tag::Data, "x").unwrap();
    assert_eq!(big.location(), start);
    drop(pin);
}

#[test]
fn small_and_large_requests_use_separate_pools() {
    let a = arena(Backing::Meta, None);
    let s = a.alloc(SMALL_LIMIT, Tag::Data, "x").unwrap();
    let l = a.alloc(SMALL_LIMIT + 1, Tag::Data, "x").unwrap();
    assert_eq!(s.location().0, "small");
    assert_eq!(l.location().0, "large");
    // One 2 MiB page each: small blocks never sit inside the large range.
    assert_eq!(a.stats().reserved.current, 2 * PAGE_SIZE);
}

#[test]
fn over_budget_request_is_an_error_with_every_field_right() {
    let a = arena(Backing::Host, Some(32 * MIB));
    // Large pool: t [0, 3) MiB, p [3, 13), g [13, 19); pages 0..10 committed.
    let t = a.alloc(3 * MIB, Tag::Temporary, "tmp").unwrap();
    let p = a.alloc(10 * MIB, Tag::Parameter, "init").unwrap();
    let g = a.alloc(6 * MIB - 100, Tag::Gradient, "backward").unwrap();
    drop(t);
    // 20 MiB more does not fit in 32 − 20: the retry releases page 0 (no
    // block on it), page 1 stays under p, so 1 MiB of [0, 3) stays free and
    // committed; 18 + 20 is still over the budget.
    let err = a.alloc(20 * MIB + 1, Tag::Activation, "matmul").unwrap_err();
    assert_eq!(err.requested, 20 * MIB + 1);
    assert_eq!(err.rounded, 20 * MIB + GRANULE);
    assert_eq!(err.tag, Tag::Activation);
    assert_eq!(err.label, "matmul");
    assert_eq!(err.budget, Some(32 * MIB));
    assert_eq!(err.allocated, 16 * MIB);
    assert_eq!(err.reserved, 18 * MIB);
    assert_eq!(err.largest_free, MIB);
    assert_eq!(err.by_tag, [10 * MIB, 6 * MIB, 0, 0, 0, 0, 0]);
    assert_eq!(err.reason, OomReason::Budget);
    let msg = err.to_string();
    for part in [
        "matmul",
        "20.00 MiB",
        "activation",
        "budget of 32.00 MiB",
        "parameter 10.00 MiB",
        "gradient 6.00 MiB",
        "18.00 MiB reserved, of which 2.00 MiB is free",
        "largest free run 1.00 MiB",
        "headroom fit",
    ] {
        assert!(msg.contains(part), "message lacks `{part}`: {msg}");
    }
    // Only the cache was given back; the arena still serves what fits.
    let s = a.stats();
    assert_eq!((s.allocated.current, s.reserved.current, s.ooms, s.cache_flushes), (16 * MIB, 18 * MIB, 1, 1));
    assert_eq!(s.largest_free, MIB);
    let ok = a.alloc(14 * MIB, Tag::Activation, "matmul").unwrap();
    assert_eq!(a.stats().reserved.current, 32 * MIB);
    drop((p, g, ok));
}

#[test]
fn impossible_sizes_are_out_of_memory_never_a_short_block() {
    for backing in [Backing::Host, Backing::Meta] {
        let a = arena(backing, None);
        for n in [usize::MAX, usize::MAX - GRANULE + 2, 1 << 62] {
            let err = a.alloc(n, Tag::Activation, "huge").unwrap_err();
            assert_eq!(err.requested, n);
            assert!(matches!(err.reason, OomReason::TooLarge { .. }), "{n}: {:?}", err.reason);
            assert!(err.to_string().contains("huge") && err.to_string().contains("can never fit"), "{err}");
        }
        assert_eq!(a.alloc(usize::MAX, Tag::Data, "x").unwrap_err().rounded, usize::MAX);
        let s = a.stats();
        assert_eq!((s.ooms, s.allocated.current, s.reserved.current), (4, 0, 0));
        assert_eq!(a.alloc(100, Tag::Data, "x").unwrap().size(), GRANULE, "the arena still works");
    }
}

#[test]
fn a_budget_near_usize_max_does_not_overflow() {
    for backing in [Backing::Host, Backing::Meta] {
        for budget in [usize::MAX, usize::MAX / 2 + 1] {
            let a = arena(backing, Some(budget));
            assert_eq!(a.budget(), Some(budget));
            let b = a.alloc(3 * MIB, Tag::Data, "x").unwrap();
            assert_eq!(a.stats().reserved.current, 4 * MIB);
            drop(b);
            let err = a.alloc(usize::MAX - 1, Tag::Data, "x").unwrap_err();
            assert!(matches!(err.reason, OomReason::TooLarge { .. }), "{:?}", err.reason);
        }
    }
}

#[test]
fn a_budget_miss_releases_the_cache_and_retries() {
    let a = arena(Backing::Host, Some(10 * MIB));
    let smalls: Vec<_> = (0..4).map(|_| a.alloc(MIB, Tag::Temporary, "x").unwrap()).collect();
    drop(smalls);
    assert_eq!(a.stats().reserved.current, 4 * MIB, "freed small blocks stay cached");
    let big = a.alloc(8 * MIB, Tag::Activation, "x").unwrap();
    let s = a.stats();
    assert_eq!(s.alloc_retries, 1);
    assert_eq!(s.reserved.current, 8 * MIB);
    assert_eq!(s.ooms, 0);
    drop(big);
}

#[test]
fn peaks_carry_the_moment_and_the_op() {
    let a = arena(Backing::Meta, None);
    let x = a.alloc(MIB, Tag::Parameter, "init").unwrap();
    let y = a.alloc(3 * MIB, Tag::Activation, "conv").unwrap();
    let at = a.stats().clock;
    drop(y);
    let _z = a.alloc(MIB, Tag::Activation, "relu").unwrap();
    let s = a.stats();
    assert_eq!(s.allocated.peak, 4 * MIB);
    assert_eq!(s.allocated.peak_label, "conv");
    assert_eq!(s.allocated.peak_clock, at);
    assert_eq!(s.by_tag_at_peak, [MIB, 0, 0, 3 * MIB, 0, 0, 0]);
    assert_eq!(s.tag(Tag::Activation).allocated.peak, 3 * MIB);
    a.reset_peaks();
    assert_eq!(a.stats().allocated.peak, 2 * MIB);
    drop(x);
}

#[test]
fn retag_moves_bytes_between_tags() {
    let a = arena(Backing::Meta, None);
    let b = a.alloc(1000, Tag::Temporary, "gelu").unwrap();
    a.retag(&b, Tag::Activation, "save");
    let s = a.stats();
    assert_eq!(s.tag(Tag::Temporary).allocated.current, 0);
    assert_eq!(s.tag(Tag::Activation).allocated.current, 1024);
    assert_eq!(s.tag(Tag::Activation).requested.current, 1000);
    assert_eq!(b.tag(), Tag::Activation);
    drop(b);
    assert_eq!(a.stats().tag(Tag::Activation).allocated.current, 0);
}

#[test]
fn trace_records_every_event_as_json() {
    let a = Arena::new(ArenaConfig { trace: true, ..Default::default() }).unwrap();
    let x = a.alloc(100, Tag::Data, "load").unwrap();
    let y = a.alloc(3 * MIB, Tag::Activation, "matmul").unwrap();
    drop(x);
    drop(y);
    a.empty_cache();
    let json: serde_json::Value = serde_json::from_str(&a.trace_json()).unwrap();
    let kinds: Vec<&str> = json.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["grow", "alloc", "grow", "alloc", "free", "free", "shrink", "shrink"]);
    let alloc = &json[3];
    assert_eq!(alloc["tag"], "activation");
    assert_eq!(alloc["label"], "matmul");
    assert_eq!(alloc["bytes"], 3 * MIB);
    assert_eq!(alloc["pool"], "large");
    let clocks: Vec<u64> = json.as_array().unwrap().iter().map(|e| e["clock"].as_u64().unwrap()).collect();
    assert!(clocks.windows(2).all(|w| w[0] <= w[1]));
    let events = a.take_trace();
    assert_eq!(events[1].kind, TraceKind::Alloc);
    assert!(a.take_trace().is_empty());
}

#[test]
fn concurrent_use_from_many_threads_stays_consistent() {
    use rayon::prelude::*;
    let a = arena(Backing::Host, None);
    (0..64u64).into_par_iter().for_each(|i| {
        let mut rng = Rng::new(i);
        let mut mine = Vec::new();
        for _ in 0..200 {
            if mine.is_empty() || rng.uniform() < 0.5 {
                let b = a.alloc(random_size(&mut rng, 4 * MIB), Tag::Workspace, "worker").unwrap();
                unsafe { std::ptr::write_bytes(b.as_ptr(), i as u8, b.requested()) };
                mine.push(b);
            } else {
                let b: Block = mine.swap_remove(rng.below(mine.len()));
                let bytes = unsafe { std::slice::from_raw_parts(b.as_ptr(), b.requested()) };
                assert!(bytes.iter().all(|&x| x == i as u8));
            }
        }
    });
    let s = a.stats();
    assert_eq!(s.allocated.current, 0);
    assert_eq!(s.allocs, s.frees);
}

#[test]
fn meta_arena_plans_huge_runs_with_no_memory() {
    let a = arena(Backing::Meta, None);
    let b = a.alloc(100 << 30, Tag::Activation, "huge").unwrap();
    assert!(b.as_ptr().is_null());
    assert_eq!(a.stats().reserved.current, 100 << 30);
}
