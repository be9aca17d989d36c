//! Recording one step, and replaying later steps from its static plan.
//!
//! [`Arena::record`] captures the events of a window of allocator time
//! (one training step). [`Arena::set_static_plan`] gives the pools' cached
//! pages back, plans an offset for every step-local buffer of that step
//! ([`super::placement`]) — in the free bytes of the pool pages that
//! parameters and optimizer state keep committed, and above them in one
//! more segment, the *static region*, committed once to the size the plan
//! needs. From then on, inside a step ([`Arena::begin_step`]), the i-th
//! allocation whose rounded size equals the plan's i-th entry is served at
//! its planned offset: no search, no split, no fragmentation. Its stats, tags, trace and peaks are counted exactly as
//! for any block; only where its bytes live differs. The first mismatch
//! (another size, more allocations than planned, a planned range still held)
//! sends the rest of that step to the caching pools and is counted in
//! [`ReplayStats::misses`], so a plan that stopped fitting is visible.
//! Between steps (evaluation, checkpoints) the region is idle, so an
//! allocation there takes its lowest free range that fits, else the pools.

use super::placement::{Layout, PlacementSummary, StaticPlan};
use super::round_up;
use super::{
    fmt_bytes, Arena, Backing, HostSegment, Inner, LiveBlock, MetaSegment, OomReason, Segment, Stats, Tag, TraceEvent,
    TraceKind, GRANULE, PAGE_SIZE,
};
use crate::error::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// Pool index of the static region (after small and large).
pub(super) const STATIC_POOL: usize = 2;

/// The events of one window of allocator time and the state it began from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recording {
    pub events: Vec<TraceEvent>,
    /// Clock of the window's first event; its last is before `end_clock`.
    pub start_clock: u64,
    pub end_clock: u64,
    /// Allocated bytes per tag when the window began, indexed like [`Tag::ALL`].
    pub start_by_tag: [usize; 7],
    pub start_reserved: usize,
    /// The blocks in use when the window began (their tags, for retags).
    pub start_blocks: Vec<LiveBlock>,
}

/// What the static plan did (all zero while none is installed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplayStats {
    pub placement: PlacementSummary,
    /// Bytes of the static segment: the region rounded up to whole pages.
    pub committed: usize,
    /// Reserved peak before the plan was installed: the caching allocator's.
    pub reserved_peak_before: usize,
    /// Pool pages still committed after the installation, and the bytes in use
    /// in them (parameters, optimizer state: what outlives a step).
    pub pool_reserved: usize,
    pub pool_allocated: usize,
    /// Highest reserved from the installation on, inside replayed steps.
    pub reserved_peak: usize,
    /// Steps begun with the plan installed.
    pub steps: u64,
    /// Allocations served at their planned offset.
    pub hits: u64,
    /// Steps that left the plan at a mismatch and finished in the pools.
    pub misses: u64,
    /// Allocations between steps served from the idle region.
    pub between_steps: u64,
}

/// The static plan's figures next to the caching allocator's, as `train`
/// and `plan --static-plan` report them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct StaticFigures {
    pub replay: ReplayStats,
    /// Peak allocated (live) bytes of the run: the same with either allocator.
    pub peak_allocated: usize,
    /// Caching allocator's reserved peak ÷ peak allocated.
    pub caching_ratio: f64,
    /// Reserved peak while replaying ÷ peak allocated.
    pub static_ratio: f64,
}

impl StaticFigures {
    /// `None` when no plan was installed.
    pub fn of(s: &Stats) -> Option<StaticFigures> {
        if s.replay.steps == 0 && s.replay.committed == 0 && s.replay.placement.buffers == 0 {
            return None;
        }
        let live = s.allocated.peak.max(1) as f64;
        Some(StaticFigures {
            replay: s.replay,
            peak_allocated: s.allocated.peak,
            caching_ratio: s.replay.reserved_peak_before as f64 / live,
            static_ratio: s.replay.reserved_peak as f64 / live,
        })
    }

    pub fn text(&self) -> String {
        let r = &self.replay;
        let p = &r.placement;
        let over = |n: usize| 100.0 * (n as f64 / p.lower_bound.max(1) as f64 - 1.0);
        format!(
            "static plan of one steady-state step: {} step-local buffers ({} allocations left to the pools)\n\
             \x20 lower bound (peak of live step-local bytes)              {:>12}\n\
             \x20 one region, TFLite greedy (largest first, lowest offset) {:>12} (+{:.2} %)\n\
             \x20 one region, best strategy                               {:>12} (+{:.2} %)\n\
             \x20 chosen: {} buffers in {} of free bytes in pool pages, the rest in a region of {} ({}; {} committed in whole pages)\n\
             \x20 replayed {} steps: {} allocations at their planned offset, {} steps fell back to the pools, {} allocations between steps in the region\n\
             \x20 the pools keep {} reserved for {} that outlives a step (parameters, optimizer state)\n\
             reserved ÷ peak live ({}): caching allocator {:.3} ({}), static plan {:.3} ({})\n",
            p.buffers,
            p.pooled,
            fmt_bytes(p.lower_bound),
            fmt_bytes(p.greedy_region),
            over(p.greedy_region),
            fmt_bytes(p.one_region),
            over(p.one_region),
            p.in_pool_pages,
            fmt_bytes(p.pool_free),
            fmt_bytes(p.region),
            p.strategy,
            fmt_bytes(r.committed),
            r.steps,
            r.hits,
            r.misses,
            r.between_steps,
            fmt_bytes(r.pool_reserved),
            fmt_bytes(r.pool_allocated),
            fmt_bytes(self.peak_allocated),
            self.caching_ratio,
            fmt_bytes(r.reserved_peak_before),
            self.static_ratio,
            fmt_bytes(r.reserved_peak),
        )
    }
}

pub(super) struct Replay {
    seg: Box<dyn Segment>,
    plan: StaticPlan,
    /// Where the large pool and the region begin on the plan's address line.
    large_base: usize,
    base: usize,
    /// Index of the next planned allocation in this step.
    cursor: usize,
    in_step: bool,
    /// This step has left the plan.
    left: bool,
    /// Live static blocks: offset → bytes. Never overlapping.
    live: BTreeMap<usize, usize>,
}

impl Replay {
    fn is_free(&self, offset: usize, size: usize) -> bool {
        match self.live.range(..offset + size).next_back() {
            Some((&o, &s)) => o + s <= offset,
            None => true,
        }
    }

    /// Which pool (or the region) and where, for an offset on the plan's line.
    fn locate(&self, at: usize) -> (usize, usize) {
        if at >= self.base {
            (STATIC_POOL, at - self.base)
        } else if at >= self.large_base {
            (1, at - self.large_base)
        } else {
            (0, at)
        }
    }

    /// The lowest free range of `size` bytes in the region.
    fn first_fit(&self, size: usize, region: usize) -> Option<usize> {
        let mut at = 0;
        for (&o, &s) in &self.live {
            if o >= at + size {
                return Some(at);
            }
            at = at.max(o + s);
        }
        (region >= at + size).then_some(at)
    }
}

/// Marks a step; the step ends when this is dropped.
pub struct StepGuard {
    arena: Arena,
}

impl Drop for StepGuard {
    fn drop(&mut self) {
        if let Some(r) = self.arena.lock().replay.as_mut() {
            r.in_step = false;
        }
    }
}

impl Arena {
    /// Run `f` and return what it did to the arena: its events (recorded
    /// even when tracing is off; a running trace keeps them too) and the
    /// bytes per tag it started from.
    pub fn record<T>(&self, f: impl FnOnce() -> T) -> (T, Recording) {
        let start_blocks = self.live_blocks();
        let (was_tracing, first, mut rec) = {
            let mut g = self.lock();
            let was = g.tracing;
            g.tracing = true;
            let mut start_by_tag = [0; 7];
            for t in Tag::ALL {
                start_by_tag[t.index()] = g.stats.by_tag[t.index()].allocated.current;
            }
            let rec = Recording {
                events: Vec::new(),
                start_clock: g.stats.clock + 1,
                end_clock: 0,
                start_by_tag,
                start_reserved: g.stats.reserved.current,
                start_blocks,
            };
            (was, g.trace.len(), rec)
        };
        let out = f();
        let mut g = self.lock();
        let first = first.min(g.trace.len());
        rec.events = if was_tracing { g.trace[first..].to_vec() } else { g.trace.split_off(first) };
        g.tracing = was_tracing;
        rec.end_clock = g.stats.clock + 1;
        (out, rec)
    }

    /// Plan the step `step` recorded and install the plan: give the pools'
    /// cached pages back (the plan takes over the step's bytes), place every
    /// step-local buffer in the free bytes of the pool pages still committed
    /// or above them, and commit the static region once, counted in reserved
    /// and held to the budget. Replaces a previous plan whose blocks are all
    /// freed.
    pub fn set_static_plan(&self, step: &Recording) -> Result<()> {
        let mut g = self.lock();
        let inner = &mut *g;
        if let Some(old) = &inner.replay {
            if !old.live.is_empty() {
                return Err(Error::invalid(
                    "static plan",
                    format!(
                        "{} blocks of the installed plan are still live; install a new plan between steps, after they are freed",
                        old.live.len()
                    ),
                ));
            }
            let freed = inner.stats.replay.committed;
            inner.replay = None;
            if freed > 0 {
                inner.tick();
                inner.stats.segment_shrinks += 1;
                inner.stats.reserved.sub(freed);
                inner.event(TraceKind::Shrink, freed, 0, None, STATIC_POOL, 0, "static plan");
            }
        }
        let reserved_peak_before = inner.stats.reserved.peak;
        inner.release_cached();
        // The plan's address line: the small pool, the large pool, the region,
        // each pool to the end of its last page, a granule apart so no buffer
        // straddles two.
        let large_base = round_up(inner.pools[0].frontier(), PAGE_SIZE) + GRANULE;
        let base = large_base + round_up(inner.pools[1].frontier(), PAGE_SIZE) + GRANULE;
        let mut free = inner.pools[0].committed_free();
        free.extend(inner.pools[1].committed_free().into_iter().map(|(o, n)| (o + large_base, n)));
        let plan = StaticPlan::new(step, &Layout { free, base });
        let region = plan.summary.region;
        let committed = round_up(region, PAGE_SIZE);
        let oom =
            |inner: &Inner, reason| Error::from(inner.oom(region, committed, Tag::Temporary, "static plan", reason));
        if inner.budget.is_some_and(|b| inner.stats.reserved.current + committed > b) {
            return Err(oom(inner, OomReason::Budget));
        }
        let seg: Box<dyn Segment> = match (inner.backing, &inner.gpu) {
            (Backing::Meta, _) => Box::new(MetaSegment::new(committed)),
            (backing, gpu) => {
                let mut seg: Box<dyn Segment> = match (backing, gpu) {
                    (Backing::Cuda, Some(g)) => g.segment(committed).map_err(|e| oom(inner, OomReason::Os(e.0)))?,
                    _ => Box::new(HostSegment::reserve(committed).map_err(|e| oom(inner, OomReason::Os(e.0)))?),
                };
                if committed > 0 {
                    seg.commit(0, committed).map_err(|e| oom(inner, OomReason::Os(e.0)))?;
                }
                seg
            }
        };
        inner.tick();
        let clock = inner.stats.clock;
        if committed > 0 {
            inner.stats.segment_grows += 1;
            inner.stats.reserved.add(committed, clock, "static plan");
            inner.event(TraceKind::Grow, committed, 0, None, STATIC_POOL, 0, "static plan");
        }
        inner.stats.replay = ReplayStats {
            placement: plan.summary,
            committed,
            reserved_peak_before,
            pool_reserved: inner.stats.reserved.current - committed,
            pool_allocated: inner.stats.allocated.current,
            reserved_peak: inner.stats.reserved.current,
            ..ReplayStats::default()
        };
        inner.replay =
            Some(Replay { seg, plan, large_base, base, cursor: 0, in_step: false, left: false, live: BTreeMap::new() });
        Ok(())
    }

    /// Begin a step: with a plan installed, allocations follow it from its
    /// first entry until the returned guard is dropped.
    pub fn begin_step(&self) -> StepGuard {
        let mut g = self.lock();
        let inner = &mut *g;
        if let Some(r) = inner.replay.as_mut() {
            r.in_step = true;
            r.cursor = 0;
            r.left = false;
            inner.stats.replay.steps += 1;
            inner.note_replay_reserved();
        }
        StepGuard { arena: self.clone() }
    }

    /// The installed plan's summary, if any.
    pub fn static_plan(&self) -> Option<PlacementSummary> {
        let g = self.lock();
        g.replay.as_ref().map(|r| r.plan.summary)
    }
}

impl Inner {
    /// Where this allocation goes when a plan is installed, as (pool,
    /// offset), the pool being [`STATIC_POOL`] for the region; `None` sends
    /// it to the pools' own search.
    pub(super) fn static_take(&mut self, rounded: usize) -> Option<(usize, usize)> {
        let r = self.replay.as_mut()?;
        if !r.in_step {
            let off = r.first_fit(rounded, self.stats.replay.committed)?;
            r.live.insert(off, rounded);
            self.stats.replay.between_steps += 1;
            return Some((STATIC_POOL, off));
        }
        if r.left {
            return None;
        }
        let planned = r.plan.entries.get(r.cursor).copied();
        r.cursor += 1;
        let at = match planned {
            Some(e) if e.size == rounded => match e.offset {
                None => return None, // outlives the step: the plan leaves it to the pools
                Some(at) => r.locate(at),
            },
            _ => return self.leave_plan(),
        };
        // A block kept from an earlier step may still hold the range: never overlap it.
        let free = match at {
            (STATIC_POOL, off) if r.is_free(off, rounded) => {
                r.live.insert(off, rounded);
                true
            }
            (STATIC_POOL, _) => false,
            (pool, off) => self.pools[pool].claim(off, rounded),
        };
        if !free {
            return self.leave_plan();
        }
        self.stats.replay.hits += 1;
        Some(at)
    }

    fn leave_plan(&mut self) -> Option<(usize, usize)> {
        if let Some(r) = self.replay.as_mut() {
            r.left = true;
        }
        self.stats.replay.misses += 1;
        None
    }

    /// A static block is freed: its bytes stay committed for the next step.
    pub(super) fn static_release(&mut self, offset: usize) {
        if let Some(r) = self.replay.as_mut() {
            r.live.remove(&offset);
        }
    }

    pub(super) fn segment_base(&self, pool: usize) -> *mut u8 {
        match (pool, &self.replay) {
            (STATIC_POOL, Some(r)) => r.seg.base(),
            _ => self.pools[pool].seg.base(),
        }
    }

    /// Keep the steady-state reserved peak while a step replays.
    pub(super) fn note_replay_reserved(&mut self) {
        if self.replay.as_ref().is_some_and(|r| r.in_step) {
            let s = &mut self.stats;
            s.replay.reserved_peak = s.replay.reserved_peak.max(s.reserved.current);
        }
    }
}
