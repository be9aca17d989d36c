//! Static placement: an offset for every buffer of one recorded step, in one
//! region, so replaying the step needs no allocator search and leaves no
//! holes.
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
//! placed buffer alive at the same time) and a few variants — other orders,
//! and a best-fit choice of gap — and keep the smallest region.

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Largest first (TFLite Micro).
    Size,
    /// Longest-lived first.
    Lifetime,
    /// Largest size × lifetime first.
    Area,
    /// In allocation order (what a caching allocator sees).
    Alloc,
}

/// Which gap a buffer takes among those it fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// The lowest offset (TFLite Micro).
    Lowest,
    /// The smallest gap between buffers alive at the same time; above them
    /// all only when no gap fits.
    Best,
}

/// Offsets for a list of buffers, and the bytes they span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub offsets: Vec<usize>,
    pub region: usize,
    pub order: Order,
    pub fit: Fit,
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

/// Place `buffers` in `order`, each in the gap `fit` picks.
pub fn place_with(buffers: &[Buffer], order: Order, fit: Fit) -> Placement {
    let mut idx: Vec<usize> = (0..buffers.len()).collect();
    let key = |b: &Buffer| -> u128 {
        let life = (b.end - b.start) as u128;
        match order {
            Order::Size => b.size as u128,
            Order::Lifetime => life,
            Order::Area => b.size as u128 * life,
            Order::Alloc => 0,
        }
    };
    // Stable sort keeps allocation order among equal keys.
    idx.sort_by(|&i, &j| key(&buffers[j]).cmp(&key(&buffers[i])).then(buffers[i].start.cmp(&buffers[j].start)));
    let mut placed: Vec<(usize, usize)> = Vec::with_capacity(buffers.len()); // (offset, index), by offset
    let mut offsets = vec![0; buffers.len()];
    let mut region = 0;
    for &i in &idx {
        let b = buffers[i];
        // Walk the placed buffers alive at the same time, lowest offset first;
        // `top` is the end of the highest one seen so far.
        let mut top = 0usize;
        let mut chosen = None;
        let mut best: Option<(usize, usize)> = None; // (gap, offset)
        for &(off, j) in &placed {
            let p = &buffers[j];
            if !b.overlaps(p) {
                continue;
            }
            if off >= top + b.size {
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
        region = region.max(offset + b.size);
        let at = placed.partition_point(|&(o, _)| o <= offset);
        placed.insert(at, (offset, i));
    }
    Placement { offsets, region, order, fit }
}

/// TFLite Micro's greedy planner: largest first, lowest offset.
pub fn place_greedy(buffers: &[Buffer]) -> Placement {
    place_with(buffers, Order::Size, Fit::Lowest)
}

/// The smallest region over every order and fit (stops early at the lower bound).
pub fn place(buffers: &[Buffer]) -> Placement {
    let bound = lower_bound(buffers);
    let mut best = place_greedy(buffers);
    for order in [Order::Size, Order::Lifetime, Order::Area, Order::Alloc] {
        for fit in [Fit::Lowest, Fit::Best] {
            if best.region <= bound {
                return best;
            }
            let p = place_with(buffers, order, fit);
            if p.region < best.region {
                best = p;
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
/// planned offset in the static region (`None`: it outlives the step and is
/// served by the caching pools).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub size: usize,
    pub offset: Option<usize>,
}

/// How a plan was made, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PlacementSummary {
    /// Step-local buffers placed in the region.
    pub buffers: usize,
    /// Allocations of the step that outlive it (left to the pools).
    pub pooled: usize,
    /// Peak of live step-local bytes.
    pub lower_bound: usize,
    /// Bytes the chosen placement spans.
    pub region: usize,
    /// Bytes TFLite Micro's greedy (largest first, lowest offset) would span.
    pub greedy_region: usize,
    /// The order and fit that won, e.g. "size/lowest".
    pub strategy: &'static str,
}

/// A static plan for replaying a step: every allocation in order, with its offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPlan {
    pub entries: Vec<Entry>,
    pub summary: PlacementSummary,
}

impl StaticPlan {
    /// Plan the step `rec` recorded (see [`super::Arena::record`]).
    pub fn from_recording(rec: &Recording) -> StaticPlan {
        // Every allocation of the step in order; a lifetime once its free is seen.
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
        let buffers: Vec<Buffer> = local.iter().map(|&i| lives[i].expect("step-local")).collect();
        let chosen = place(&buffers);
        let mut entries: Vec<Entry> = allocs.iter().map(|&(size, _)| Entry { size, offset: None }).collect();
        for (k, &i) in local.iter().enumerate() {
            entries[i].offset = Some(chosen.offsets[k]);
        }
        let summary = PlacementSummary {
            buffers: buffers.len(),
            pooled: allocs.len() - buffers.len(),
            lower_bound: lower_bound(&buffers),
            region: chosen.region,
            greedy_region: place_greedy(&buffers).region,
            strategy: strategy_name(chosen.order, chosen.fit),
        };
        StaticPlan { entries, summary }
    }
}

fn strategy_name(order: Order, fit: Fit) -> &'static str {
    match (order, fit) {
        (Order::Size, Fit::Lowest) => "size/lowest",
        (Order::Size, Fit::Best) => "size/best",
        (Order::Lifetime, Fit::Lowest) => "lifetime/lowest",
        (Order::Lifetime, Fit::Best) => "lifetime/best",
        (Order::Area, Fit::Lowest) => "area/lowest",
        (Order::Area, Fit::Best) => "area/best",
        (Order::Alloc, Fit::Lowest) => "alloc/lowest",
        (Order::Alloc, Fit::Best) => "alloc/best",
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
        let p = place(&bufs);
        assert!(is_valid(&bufs, &p.offsets));
        assert_eq!(p.offsets[0], p.offsets[1]);
        assert_eq!(p.region, 1536);
        assert_eq!(lower_bound(&bufs), 1536);
    }

    #[test]
    fn greedy_places_largest_first_at_the_lowest_offset() {
        // Largest first, lowest offset: the 3 KiB buffer at 0, then 2 KiB
        // beside it (overlaps), 1 KiB reuses the space of the finished 2 KiB.
        let bufs = [b(2048, 0, 3), b(3072, 1, 5), b(1024, 4, 6)];
        let p = place_greedy(&bufs);
        assert_eq!(p.offsets, vec![3072, 0, 3072]);
        assert_eq!(p.region, 5120);
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
            let p = place(&bufs);
            assert!(is_valid(&bufs, &g.offsets) && is_valid(&bufs, &p.offsets));
            assert!(p.region <= g.region && p.region >= lower_bound(&bufs));
            assert!(p.offsets.iter().all(|o| o % 512 == 0));
        }
    }

    #[test]
    fn an_overlap_is_detected() {
        assert!(!is_valid(&[b(1024, 0, 2), b(1024, 1, 3)], &[0, 512]));
        assert!(is_valid(&[b(1024, 0, 2), b(1024, 1, 3)], &[0, 1024]));
    }
}
