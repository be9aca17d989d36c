//! Static placement: an offset for every buffer of one recorded step, so
//! replaying the step needs no allocator search and leaves no holes.
//!
//! A step's *step-local* buffers are the blocks it allocates and frees
//! inside itself (activations, temporaries, gradients, data, workspace);
//! each has a size (rounded bytes) and a lifetime `[alloc clock, free
//! clock)`. Two buffers may share bytes only if their lifetimes do not
//! overlap. Blocks that outlive the step (optimizer state created by the
//! first step) stay in the caching pools.
//!
//! Finding the smallest region is NP-complete; the peak of live step-local
//! bytes is a lower bound no placement can beat. We run TFLite Micro's
//! greedy (largest first, each at the lowest offset that does not overlap a
//! placed buffer alive at the same time) and variants — other orders, a
//! best-fit choice of gap, and each on the time-reversed step (the problem
//! is symmetric in time, the heuristics are not) — and keep the smallest
//! region, as XLA's heap simulator picks the best of its heap algorithms.
//!
//! The offsets live on one address line ([`Layout`]): ranges that are free
//! for the whole step (the arena passes the free bytes of the pool pages
//! that parameters and optimizer state keep committed) and, above them,
//! the static region. Ranges in use are placed first as buffers alive all
//! the time, so the same greedy fills the free bytes before the region.

use super::Recording;
use super::TraceKind;
use serde::Serialize;
use std::collections::HashMap;

/// One step-local buffer: `size` bytes live over clocks `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub size: usize,
    pub start: u64,
    pub end: u64,
}

impl Buffer {
    fn overlaps(&self, o: &Buffer) -> bool {
        self.start < o.end && o.start < self.end
    }
}

/// The order buffers are placed in (each descending, ties to the earlier one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Largest first (TFLite Micro).
    #[default]
    Size,
    /// Longest-lived first.
    Lifetime,
    /// Largest size × lifetime first.
    Area,
    /// In allocation order (what a caching allocator sees).
    Alloc,
    /// Highest breadth first: the most live bytes at any moment of the
    /// buffer's lifetime (TFLite GPU's "greedy by breadth"), then the
    /// longest-lived. The buffers alive at the peak go first and stack
    /// without gaps, the longest-lived at the bottom.
    Breadth,
}

/// One way to place: an order, a gap choice, and the direction of time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Strategy {
    pub order: Order,
    pub fit: Fit,
    /// Run on the time-reversed step (frees become allocations).
    pub reversed: bool,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let order = match self.order {
            Order::Size => "size",
            Order::Lifetime => "lifetime",
            Order::Area => "size×lifetime",
            Order::Alloc => "allocation order",
            Order::Breadth => "breadth",
        };
        let fit = if self.fit == Fit::Lowest { "lowest offset" } else { "best fit" };
        write!(f, "{order}, {fit}{}", if self.reversed { ", time reversed" } else { "" })
    }
}

/// Which gap a buffer takes among those it fits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// The lowest offset (TFLite Micro).
    #[default]
    Lowest,
    /// The smallest gap between buffers alive at the same time; above them
    /// all only when no gap fits.
    Best,
}

/// Offsets for a list of buffers, and the end of the highest one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub offsets: Vec<usize>,
    pub end: usize,
    pub strategy: Strategy,
}

/// The peak of live bytes: no placement of `buffers` needs less.
pub fn lower_bound(buffers: &[Buffer]) -> usize {
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * buffers.len());
    for b in buffers {
        events.push((b.start, true, b.size));
        events.push((b.end, false, b.size));
    }
    // At one clock, frees (false) sort before allocs: [start, end) is half-open.
    events.sort_unstable();
    let (mut live, mut peak) = (0usize, 0usize);
    for (_, alloc, size) in events {
        if alloc {
            live += size;
            peak = peak.max(live);
        } else {
            live -= size;
        }
    }
    peak
}

/// Place `buffers` as `strategy` says, around the address ranges `fixed`
/// (offset, bytes), which are in use for the whole step.
pub fn place_with(buffers: &[Buffer], fixed: &[(usize, usize)], strategy: Strategy) -> Placement {
    if strategy.reversed {
        let last = buffers.iter().map(|b| b.end).max().unwrap_or(0);
        let rev: Vec<Buffer> =
            buffers.iter().map(|b| Buffer { size: b.size, start: last - b.end, end: last - b.start }).collect();
        let p = place_with(&rev, fixed, Strategy { reversed: false, ..strategy });
        return Placement { strategy, ..p };
    }
    let fit = strategy.fit;
    let breadth = if strategy.order == Order::Breadth { breadths(buffers) } else { vec![] };
    let key = |i: usize| -> (u128, u64) {
        let b = &buffers[i];
        let life = b.end - b.start;
        match strategy.order {
            Order::Size => (b.size as u128, 0),
            Order::Lifetime => (life as u128, 0),
            Order::Area => (b.size as u128 * life as u128, 0),
            Order::Alloc => (0, 0),
            Order::Breadth => (breadth[i] as u128, life),
        }
    };
    let mut idx: Vec<usize> = (0..buffers.len()).collect();
    idx.sort_by(|&i, &j| key(j).cmp(&key(i)).then(buffers[i].start.cmp(&buffers[j].start)));
    // (offset, buffer) by offset; a fixed range is a buffer alive all the time.
    let always = |(offset, size): (usize, usize)| (offset, Buffer { size, start: 0, end: u64::MAX });
    let mut placed: Vec<(usize, Buffer)> = fixed.iter().copied().map(always).collect();
    placed.sort_by_key(|p| p.0);
    let mut offsets = vec![0; buffers.len()];
    let mut end = 0;
    for &i in &idx {
        let b = buffers[i];
        // Walk the placed buffers alive at the same time, lowest offset first;
        // `top` is the end of the highest one seen so far.
        let mut top = 0usize;
        let mut chosen = None;
        let mut best: Option<(usize, usize)> = None; // (gap, offset)
        for (off, p) in &placed {
            if !b.overlaps(p) {
                continue;
            }
            if *off >= top + b.size {
                let gap = off - top;
                match fit {
                    Fit::Lowest => {
                        chosen = Some(top);
                        break;
                    }
                    Fit::Best if best.is_none_or(|(g, _)| gap < g) => best = Some((gap, top)),
                    Fit::Best => {}
                }
            }
            top = top.max(off + p.size);
        }
        let offset = chosen.or(best.map(|(_, o)| o)).unwrap_or(top);
        offsets[i] = offset;
        end = end.max(offset + b.size);
        let at = placed.partition_point(|&(o, _)| o <= offset);
        placed.insert(at, (offset, b));
    }
    Placement { offsets, end, strategy }
}

/// For each buffer, the most live bytes at any moment of its lifetime.
fn breadths(buffers: &[Buffer]) -> Vec<usize> {
    // Live bytes just after each allocation: the curve only rises there.
    let mut clocks: Vec<u64> = buffers.iter().map(|b| b.start).collect();
    clocks.sort_unstable();
    clocks.dedup();
    let mut delta = vec![0i64; clocks.len() + 1];
    for b in buffers {
        delta[clocks.partition_point(|&c| c < b.start)] += b.size as i64;
        delta[clocks.partition_point(|&c| c < b.end)] -= b.size as i64;
    }
    let mut live = Vec::with_capacity(clocks.len());
    let mut run = 0i64;
    for d in &delta[..clocks.len()] {
        run += d;
        live.push(run as usize);
    }
    buffers
        .iter()
        .map(|b| {
            let (lo, hi) = (clocks.partition_point(|&c| c < b.start), clocks.partition_point(|&c| c < b.end));
            live[lo..hi].iter().copied().max().unwrap_or(0)
        })
        .collect()
}

/// TFLite Micro's greedy planner: largest first, lowest offset, one region.
pub fn place_greedy(buffers: &[Buffer]) -> Placement {
    place_with(buffers, &[], Strategy::default())
}

/// The lowest end over every strategy, TFLite's first; stops early once
/// the end reaches `good_enough` (e.g. the lower bound).
pub fn place(buffers: &[Buffer], fixed: &[(usize, usize)], good_enough: usize) -> Placement {
    let mut best = place_with(buffers, fixed, Strategy::default());
    for reversed in [false, true] {
        for order in [Order::Size, Order::Breadth, Order::Alloc, Order::Lifetime, Order::Area] {
            for fit in [Fit::Lowest, Fit::Best] {
                if best.end <= good_enough {
                    return best;
                }
                let p = place_with(buffers, fixed, Strategy { order, fit, reversed });
                if p.end < best.end {
                    best = p;
                }
            }
        }
    }
    best
}

/// Check that no two buffers alive at the same time share a byte.
pub fn is_valid(buffers: &[Buffer], offsets: &[usize]) -> bool {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| offsets[i]);
    for (k, &i) in order.iter().enumerate() {
        let end = offsets[i] + buffers[i].size;
        for &j in &order[k + 1..] {
            if offsets[j] >= end {
                break;
            }
            if buffers[i].overlaps(&buffers[j]) {
                return false;
            }
        }
    }
    true
}

/// One allocation of the recorded step, in order: its rounded size and its
/// planned offset on the plan's address line (`None`: it outlives the step
/// and is served by the caching pools).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub size: usize,
    pub offset: Option<usize>,
}

/// The address line a plan places on: `free` ranges (offset, bytes) below
/// `base` that stay free for the whole step — the unused bytes of the pool
/// pages that parameters and optimizer state keep committed — then the
/// static region from `base` up. Everything else below `base` is in use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub free: Vec<(usize, usize)>,
    pub base: usize,
}

impl Layout {
    // The in-use ranges below `base`: the gaps between the free ones.
    fn used(&self) -> Vec<(usize, usize)> {
        let mut used = Vec::new();
        let mut at = 0;
        for &(o, n) in &self.free {
            if o > at {
                used.push((at, o - at));
            }
            at = o + n;
        }
        if self.base > at {
            used.push((at, self.base - at));
        }
        used
    }
}

/// How a plan was made, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PlacementSummary {
    /// Step-local buffers the plan places.
    pub buffers: usize,
    /// Allocations of the step that outlive it (left to the pools).
    pub pooled: usize,
    /// Peak of live step-local bytes: no single region can be smaller.
    pub lower_bound: usize,
    /// The best single region for every buffer (what the lower bound bounds).
    pub one_region: usize,
    /// The single region TFLite Micro's greedy (largest first, lowest offset) needs.
    pub greedy_region: usize,
    /// Free bytes of committed pool pages the plan could reuse, and the
    /// buffers it put there.
    pub pool_free: usize,
    pub in_pool_pages: usize,
    /// Bytes of the static region the chosen plan needs.
    pub region: usize,
    /// The strategy that won.
    pub strategy: Strategy,
}

/// A static plan for replaying a step: every allocation in order, with its offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPlan {
    pub entries: Vec<Entry>,
    pub summary: PlacementSummary,
}

/// The step-local buffers of a recording, with the index of each among the
/// step's allocations, and the step's allocation sizes in order.
pub fn step_buffers(rec: &Recording) -> (Vec<Buffer>, Vec<usize>, Vec<usize>) {
    let mut allocs: Vec<(usize, u64)> = Vec::new(); // (size, clock)
    let mut lives: Vec<Option<Buffer>> = Vec::new();
    let mut open: HashMap<(&str, usize), usize> = HashMap::new();
    for e in &rec.events {
        match e.kind {
            TraceKind::Alloc => {
                open.insert((e.pool, e.offset), allocs.len());
                allocs.push((e.bytes, e.clock));
                lives.push(None);
            }
            TraceKind::Free => {
                // Frees of blocks allocated before the step are not the step's.
                if let Some(i) = open.remove(&(e.pool, e.offset)) {
                    let (size, start) = allocs[i];
                    lives[i] = Some(Buffer { size, start, end: e.clock });
                }
            }
            _ => {}
        }
    }
    let local: Vec<usize> = (0..allocs.len()).filter(|&i| lives[i].is_some()).collect();
    let buffers = local.iter().map(|&i| lives[i].expect("step-local")).collect();
    (buffers, local, allocs.iter().map(|a| a.0).collect())
}

impl StaticPlan {
    /// Plan the step `rec` recorded (see [`super::Arena::record`]) into one region.
    pub fn from_recording(rec: &Recording) -> StaticPlan {
        StaticPlan::new(rec, &Layout::default())
    }

    /// Plan the step `rec` recorded on `layout`: the best single region, or
    /// the best placement that also fills the layout's free ranges, whichever
    /// leaves the smaller region.
    pub fn new(rec: &Recording, layout: &Layout) -> StaticPlan {
        let (buffers, local, sizes) = step_buffers(rec);
        let bound = lower_bound(&buffers);
        let one = place(&buffers, &[], bound);
        let mut chosen = Placement { offsets: one.offsets.iter().map(|o| o + layout.base).collect(), ..one.clone() };
        let mut region = one.end;
        if !layout.free.is_empty() {
            let around = place(&buffers, &layout.used(), layout.base);
            if around.end.saturating_sub(layout.base) < region {
                region = around.end.saturating_sub(layout.base);
                chosen = around;
            }
        }
        let mut entries: Vec<Entry> = sizes.iter().map(|&size| Entry { size, offset: None }).collect();
        for (k, &i) in local.iter().enumerate() {
            entries[i].offset = Some(chosen.offsets[k]);
        }
        let summary = PlacementSummary {
            buffers: buffers.len(),
            pooled: sizes.len() - buffers.len(),
            lower_bound: bound,
            one_region: one.end,
            greedy_region: place_greedy(&buffers).end,
            pool_free: layout.free.iter().map(|f| f.1).sum(),
            in_pool_pages: chosen.offsets.iter().filter(|&&o| o < layout.base).count(),
            region,
            strategy: chosen.strategy,
        };
        StaticPlan { entries, summary }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(size: usize, start: u64, end: u64) -> Buffer {
        Buffer { size, start, end }
    }

    #[test]
    fn disjoint_lifetimes_share_bytes_and_overlapping_ones_do_not() {
        let bufs = [b(1024, 0, 2), b(1024, 2, 4), b(512, 1, 3)];
        let p = place(&bufs, &[], 0);
        assert!(is_valid(&bufs, &p.offsets));
        assert_eq!(p.offsets[0], p.offsets[1]);
        assert_eq!(p.end, 1536);
        assert_eq!(lower_bound(&bufs), 1536);
    }

    #[test]
    fn greedy_places_largest_first_at_the_lowest_offset() {
        // Largest first, lowest offset: the 3 KiB buffer at 0, then 2 KiB
        // beside it (overlaps), 1 KiB reuses the space of the finished 2 KiB.
        let bufs = [b(2048, 0, 3), b(3072, 1, 5), b(1024, 4, 6)];
        let p = place_greedy(&bufs);
        assert_eq!(p.offsets, vec![3072, 0, 3072]);
        assert_eq!(p.end, 5120);
        assert!(is_valid(&bufs, &p.offsets));
    }

    #[test]
    fn best_of_strategies_is_never_worse_than_greedy_and_always_valid() {
        let mut s = 12345u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for _ in 0..50 {
            let bufs: Vec<Buffer> = (0..60)
                .map(|_| {
                    let start = next() % 100;
                    b(512 * (1 + next() as usize % 16), start, start + 1 + next() % 30)
                })
                .collect();
            let g = place_greedy(&bufs);
            let p = place(&bufs, &[], 0);
            assert!(is_valid(&bufs, &g.offsets) && is_valid(&bufs, &p.offsets));
            assert!(p.end <= g.end && p.end >= lower_bound(&bufs));
            assert!(p.offsets.iter().all(|o| o % 512 == 0));
        }
    }

    #[test]
    fn buffers_go_around_ranges_in_use_and_fill_the_free_ones() {
        // The line: [0, 1024) free, [1024, 2048) in use, the region from 2048.
        let layout = Layout { free: vec![(0, 1024)], base: 2048 };
        assert_eq!(layout.used(), vec![(1024, 1024)]);
        let bufs = [b(1024, 0, 2), b(512, 1, 3), b(1536, 2, 4)];
        let p = place(&bufs, &layout.used(), layout.base);
        let mut all = bufs.to_vec();
        all.push(b(1024, 0, u64::MAX));
        let mut offsets = p.offsets.clone();
        offsets.push(1024);
        assert!(is_valid(&all, &offsets), "{p:?}");
        // Best: the 512 B buffer in the free range, the other two (never
        // alive together) share the region from 2048.
        assert_eq!(p.offsets, vec![2048, 0, 2048]);
        assert_eq!(p.end, 3584);
    }

    #[test]
    fn an_overlap_is_detected() {
        assert!(!is_valid(&[b(1024, 0, 2), b(1024, 1, 3)], &[0, 512]));
        assert!(is_valid(&[b(1024, 0, 2), b(1024, 1, 3)], &[0, 1024]));
    }
}
