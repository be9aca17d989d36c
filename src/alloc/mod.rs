//! The caching arena: every byte a tensor holds comes from here.
//!
//! Rules (docs/MEMORY.md states them for people who reproduce figures):
//! - A request of `n` bytes is rounded up to a multiple of [`GRANULE`]
//!   (512 B; a request of 0 takes one granule). That rounded size is what
//!   "allocated" counts; "requested" counts `n`.
//! - Rounded sizes up to [`SMALL_LIMIT`] (1 MiB) come from the small pool,
//!   larger ones from the large pool, so small short-lived blocks never
//!   split the address range that large tensors need.
//! - Each pool is one expandable segment; "reserved" is the bytes of
//!   committed 2 MiB pages over both pools. Freed blocks stay committed
//!   (cached) until [`Arena::empty_cache`] or a budget miss gives them back.
//! - With a budget, reserved never exceeds it: a request that would push it
//!   over first releases the cache and retries, then fails with
//!   [`OutOfMemory`].
//! - With a static plan installed ([`Arena::set_static_plan`]), the
//!   allocations of a step ([`Arena::begin_step`]) that follow the plan are
//!   served at planned offsets — in free bytes of committed pool pages or in
//!   a third, pre-committed segment (replay.rs); the rest use the pools as
//!   above.
//!
//! The arena is a cheap handle (`Arc<Mutex<..>>`). The lock is taken once per
//! allocation and once per free, never per element: kernels on rayon workers
//! write into blocks they already hold.

pub mod placement;
mod pool;
mod replay;
mod segment;

pub use placement::{Layout, StaticPlan};
pub use replay::{Recording, ReplayStats, StaticFigures, StepGuard};
pub use segment::{HostSegment, MetaSegment, Segment, SegmentError, PAGE_SIZE};

use pool::Pool;
use serde::Serialize;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// Allocation granule: sizes round up to a multiple of this, and every block
/// starts on such a boundary (enough for any SIMD load).
pub const GRANULE: usize = 512;
/// Largest rounded size served by the small pool.
pub const SMALL_LIMIT: usize = 1 << 20;

/// What a block of memory is for. Reports break every figure down by tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tag {
    /// Model weights.
    Parameter,
    /// Gradients accumulated into parameters (`.grad`).
    Gradient,
    /// Optimizer moments and master weights.
    OptimizerState,
    /// Op outputs kept alive because a backward needs them.
    Activation,
    /// Op outputs and intermediate gradients not (or no longer) saved.
    Temporary,
    /// Scratch space a kernel holds only while it runs.
    Workspace,
    /// Input batches and targets.
    Data,
}

impl Tag {
    pub const ALL: [Tag; 7] = [
        Tag::Parameter,
        Tag::Gradient,
        Tag::OptimizerState,
        Tag::Activation,
        Tag::Temporary,
        Tag::Workspace,
        Tag::Data,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Tag::Parameter => "parameter",
            Tag::Gradient => "gradient",
            Tag::OptimizerState => "optimizer_state",
            Tag::Activation => "activation",
            Tag::Temporary => "temporary",
            Tag::Workspace => "workspace",
            Tag::Data => "data",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A figure with its high-water mark and the moment it was reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub current: usize,
    pub peak: usize,
    /// Logical clock of the event that set the peak.
    pub peak_clock: u64,
    /// Label of the op whose request set the peak.
    pub peak_label: &'static str,
}

impl Counter {
    fn add(&mut self, n: usize, clock: u64, label: &'static str) {
        self.current += n;
        if self.current > self.peak {
            self.peak = self.current;
            self.peak_clock = clock;
            self.peak_label = label;
        }
    }
    fn sub(&mut self, n: usize) {
        self.current -= n;
    }
    fn reset_peak(&mut self, clock: u64) {
        self.peak = self.current;
        self.peak_clock = clock;
        self.peak_label = "";
    }
}

/// Figures for one tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TagStats {
    pub requested: Counter,
    pub allocated: Counter,
    pub allocs: u64,
    pub frees: u64,
}

/// A snapshot of the arena's accounting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub requested: Counter,
    pub allocated: Counter,
    /// Committed bytes over both pools. Pages are shared between blocks of
    /// different tags, so reserved has no per-tag split.
    pub reserved: Counter,
    /// Indexed like [`Tag::ALL`].
    pub by_tag: [TagStats; 7],
    /// Allocated bytes of each tag at the moment `allocated.peak` was set.
    pub by_tag_at_peak: [usize; 7],
    pub allocs: u64,
    pub frees: u64,
    pub segment_grows: u64,
    pub segment_shrinks: u64,
    pub cache_flushes: u64,
    /// Requests that fitted only after the cache was released.
    pub alloc_retries: u64,
    pub ooms: u64,
    /// Largest run of free committed bytes in either pool: the biggest
    /// request served without growing.
    pub largest_free: usize,
    pub clock: u64,
    /// The static plan's figures, when one is installed.
    pub replay: ReplayStats,
}

impl Stats {
    pub fn tag(&self, tag: Tag) -> &TagStats {
        &self.by_tag[tag.index()]
    }
    /// Reserved but not allocated: the cache plus the unused ends of pages.
    pub fn fragmentation(&self) -> usize {
        self.reserved.current - self.allocated.current
    }

    /// A table by tag: current and peak allocated bytes, then the totals.
    pub fn table(&self) -> String {
        let mut out = format!("{:<16} {:>12} {:>12} {:>12} {:>9}\n", "tag", "allocated", "peak", "at peak", "allocs");
        for t in Tag::ALL {
            let s = self.tag(t);
            out += &format!(
                "{:<16} {:>12} {:>12} {:>12} {:>9}\n",
                t.name(),
                fmt_bytes(s.allocated.current),
                fmt_bytes(s.allocated.peak),
                fmt_bytes(self.by_tag_at_peak[t.index()]),
                s.allocs
            );
        }
        out += &format!(
            "total allocated {} (peak {} in `{}`), reserved {} (peak {}), {} segment grows, {} shrinks",
            fmt_bytes(self.allocated.current),
            fmt_bytes(self.allocated.peak),
            self.allocated.peak_label,
            fmt_bytes(self.reserved.current),
            fmt_bytes(self.reserved.peak),
            self.segment_grows,
            self.segment_shrinks
        );
        out
    }
}

/// Where the arena's memory comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backing {
    /// Process memory (expandable host segments).
    Host,
    /// No memory: bookkeeping only, for planning.
    Meta,
    /// GPU memory (expandable device segments, or host memory standing in
    /// for it under the CUDA emulator); see [`Arena::cuda`].
    Cuda,
}

/// Whose kernels a tensor's ops run, and so whose workspace rules its
/// bytes follow: the CPU's or the GPU's. A meta arena plans for one of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    #[default]
    Cpu,
    Cuda,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OomReason {
    /// Reserved bytes would exceed the budget.
    Budget,
    /// The pool's reserved address range is full.
    AddressSpace,
    /// The operating system refused to provide pages.
    Os(String),
    /// Larger than the whole address range a pool reserves (`limit` bytes):
    /// it can never fit, whatever is freed.
    TooLarge { limit: usize },
}

/// A request the arena could not serve. Carries everything needed to
/// explain it and to plan around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfMemory {
    pub requested: usize,
    /// `requested` rounded to the granule (`usize::MAX` when that overflows).
    pub rounded: usize,
    pub tag: Tag,
    /// The op that asked.
    pub label: &'static str,
    pub budget: Option<usize>,
    pub allocated: usize,
    pub reserved: usize,
    pub largest_free: usize,
    /// Allocated bytes per tag when the request failed, indexed like [`Tag::ALL`].
    pub by_tag: [usize; 7],
    pub reason: OomReason,
}

impl fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.label.is_empty() { "headroom" } else { self.label };
        write!(f, "out of memory in `{op}`: tried to allocate {} for {}", fmt_bytes(self.requested), self.tag)?;
        match &self.reason {
            OomReason::Budget => {
                write!(f, " with a budget of {}", fmt_bytes(self.budget.unwrap_or(0)))?;
            }
            OomReason::AddressSpace => write!(f, "; the pool's address range is full")?,
            OomReason::TooLarge { limit } => write!(
                f,
                "; that is more than the {} of address space a pool of this arena reserves, so it can never fit \
                 (check the shape that asked for it)",
                fmt_bytes(*limit)
            )?,
            OomReason::Os(e) => write!(f, "; {e}")?,
        }
        write!(f, ". Held: {} allocated", fmt_bytes(self.allocated))?;
        let held: Vec<String> = Tag::ALL
            .iter()
            .filter(|t| self.by_tag[t.index()] > 0)
            .map(|t| format!("{t} {}", fmt_bytes(self.by_tag[t.index()])))
            .collect();
        if !held.is_empty() {
            write!(f, " ({})", held.join(", "))?;
        }
        write!(
            f,
            "; {} reserved, of which {} is free in partly used pages (largest free run {}). ",
            fmt_bytes(self.reserved),
            fmt_bytes(self.reserved - self.allocated.min(self.reserved)),
            fmt_bytes(self.largest_free)
        )?;
        f.write_str(
            "To fit: lower the micro-batch and raise accumulation, recompute activations, \
             train in f16/bf16, or raise the budget; `headroom fit` finds a configuration that fits.",
        )
    }
}

impl std::error::Error for OutOfMemory {}

/// One allocator event, for the memory report and the planner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    pub clock: u64,
    pub kind: TraceKind,
    /// Rounded bytes of the block, or committed bytes for grow/shrink.
    pub bytes: usize,
    pub requested: usize,
    pub tag: Option<Tag>,
    pub pool: &'static str,
    pub offset: usize,
    pub label: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    Alloc,
    Free,
    /// A block changed tag (e.g. an op output saved for backward).
    Retag,
    Grow,
    Shrink,
    Oom,
}

/// Arena settings.
#[derive(Clone, Copy, Debug)]
pub struct ArenaConfig {
    /// Hard cap on reserved bytes; `None` is unbounded.
    pub budget: Option<usize>,
    pub backing: Backing,
    /// Record every event (see [`Arena::trace_json`]).
    pub trace: bool,
    /// For a meta arena: the device whose allocations it predicts. Host
    /// arenas are always Cpu, CUDA arenas Cuda.
    pub plan_for: Target,
}

impl Default for ArenaConfig {
    fn default() -> Self {
        ArenaConfig { budget: None, backing: Backing::Host, trace: false, plan_for: Target::Cpu }
    }
}

const POOL_NAMES: [&str; 3] = ["small", "large", "static"];

/// Most address space one host pool reserves: 16 TiB, so both pools fit in
/// the 128 TiB of a 47-bit user address space whatever budget is asked for.
pub const MAX_HOST_RESERVE: usize = 1 << 44;
/// A meta pool's range without a budget (64 TiB), and its cap with one:
/// plans stay far from usize overflow.
const META_RESERVE: usize = 1 << 46;
const MAX_META_RESERVE: usize = 1 << 62;

struct Live {
    requested: usize,
    tag: Tag,
    label: &'static str,
}

/// A block in use, as [`Arena::live_blocks`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LiveBlock {
    pub pool: &'static str,
    pub offset: usize,
    /// Rounded bytes.
    pub bytes: usize,
    pub requested: usize,
    pub tag: Tag,
    /// The op that allocated it.
    pub label: &'static str,
}

struct Inner {
    budget: Option<usize>,
    backing: Backing,
    target: Target,
    /// The device of a CUDA arena: makes its segments, runs its kernels.
    gpu: Option<crate::cuda::Gpu>,
    pools: [Pool; 2],
    live: std::collections::HashMap<(u8, usize), Live>,
    stats: Stats,
    tracing: bool,
    trace: Vec<TraceEvent>,
    replay: Option<replay::Replay>,
}

/// The caching arena. Cloning gives another handle to the same arena.
///
/// ```
/// use headroom::alloc::{Arena, ArenaConfig, Tag};
/// let arena = Arena::new(ArenaConfig { budget: Some(64 << 20), ..Default::default() }).unwrap();
/// let block = arena.alloc(1000, Tag::Activation, "example").unwrap();
/// assert_eq!(block.size(), 1024); // rounded to 512-byte granules
/// assert_eq!(arena.stats().tag(Tag::Activation).allocated.current, 1024);
/// drop(block);
/// assert_eq!(arena.stats().allocated.current, 0);
/// assert!(arena.alloc(1 << 30, Tag::Activation, "too big").is_err());
/// ```
#[derive(Clone)]
pub struct Arena {
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.stats();
        write!(f, "Arena(allocated {}, reserved {})", fmt_bytes(s.allocated.current), fmt_bytes(s.reserved.current))
    }
}

impl Arena {
    pub fn new(config: ArenaConfig) -> Result<Arena, SegmentError> {
        if config.backing == Backing::Cuda {
            return Err(SegmentError("a CUDA arena needs its GPU: use Arena::cuda".into()));
        }
        Arena::build(config, None)
    }

    /// An arena of `gpu`'s memory (`config.backing` is ignored): the same
    /// pools, rounding, budget and stats as a host arena, over expandable
    /// device segments.
    pub fn cuda(gpu: &crate::cuda::Gpu, config: ArenaConfig) -> Result<Arena, SegmentError> {
        Arena::build(ArenaConfig { backing: Backing::Cuda, plan_for: Target::Cuda, ..config }, Some(gpu.clone()))
    }

    fn build(config: ArenaConfig, gpu: Option<crate::cuda::Gpu>) -> Result<Arena, SegmentError> {
        // Address space is free; reserve twice what can ever be committed so
        // fragmentation of the range can never be what fails a request. A
        // meta arena plans runs far larger than this machine: 64 TiB. Both
        // saturate, so a huge budget cannot overflow.
        let host_cap = config.budget.unwrap_or(0).max(physical_memory()).saturating_mul(2).min(MAX_HOST_RESERVE);
        let meta_cap = config.budget.map_or(META_RESERVE, |b| b.saturating_mul(2).min(MAX_META_RESERVE));
        let make = || -> Result<Box<dyn Segment>, SegmentError> {
            Ok(match (config.backing, &gpu) {
                (Backing::Meta, _) => Box::new(MetaSegment::new(meta_cap)),
                (Backing::Cuda, Some(g)) => g.segment(host_cap)?,
                _ => Box::new(HostSegment::reserve(host_cap)?),
            })
        };
        let pools = [Pool::new(make()?), Pool::new(make()?)];
        Ok(Arena {
            inner: Arc::new(Mutex::new(Inner {
                budget: config.budget,
                backing: config.backing,
                target: match config.backing {
                    Backing::Host => Target::Cpu,
                    Backing::Cuda => Target::Cuda,
                    Backing::Meta => config.plan_for,
                },
                gpu,
                pools,
                live: Default::default(),
                stats: Stats::default(),
                tracing: config.trace,
                trace: Vec::new(),
                replay: None,
            })),
        })
    }

    /// A host arena with no budget.
    pub fn host() -> Arena {
        Arena::new(ArenaConfig::default()).expect("reserving host address space")
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not turn every later free into a second panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn backing(&self) -> Backing {
        self.lock().backing
    }
    /// Whose kernels (and workspace rules) this arena's tensors use.
    pub fn target(&self) -> Target {
        self.lock().target
    }
    /// The GPU of a CUDA arena.
    pub fn gpu(&self) -> Option<crate::cuda::Gpu> {
        self.lock().gpu.clone()
    }
    pub fn budget(&self) -> Option<usize> {
        self.lock().budget
    }
    pub fn set_budget(&self, budget: Option<usize>) {
        self.lock().budget = budget;
    }
    pub fn same(&self, other: &Arena) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Allocate `n` bytes for `tag` on behalf of op `label`. A request larger
    /// than a pool's whole range (up to `usize::MAX`) is `OutOfMemory` with
    /// reason `TooLarge`, never a short block.
    // OutOfMemory is rare and carries its whole report; `Error` boxes it.
    #[allow(clippy::result_large_err)]
    pub fn alloc(&self, n: usize, tag: Tag, label: &'static str) -> Result<Block, OutOfMemory> {
        // Within a granule of usize::MAX the rounding overflows: saturate, and
        // `try_place` refuses it as larger than any pool.
        let rounded = n.max(1).checked_next_multiple_of(GRANULE).unwrap_or(usize::MAX);
        let mut pool = if rounded <= SMALL_LIMIT { 0 } else { 1 };
        let mut g = self.lock();
        let inner = &mut *g;
        let mut retried = false;
        let planned = inner.static_take(rounded);
        let (offset, grown) = loop {
            // A static plan's offset, in the region or a pool, already committed.
            if let Some((p, off)) = planned {
                pool = p;
                break (off, 0);
            }
            match inner.try_place(pool, rounded) {
                Ok(placed) => break placed,
                Err(reason) if !retried && inner.cached() > 0 && !matches!(reason, OomReason::TooLarge { .. }) => {
                    inner.release_cached();
                    retried = true;
                }
                Err(reason) => {
                    inner.stats.ooms += 1;
                    inner.tick();
                    let err = inner.oom(n, rounded, tag, label, reason);
                    inner.event(TraceKind::Oom, rounded, n, Some(tag), pool, 0, label);
                    return Err(err);
                }
            }
        };
        if retried {
            inner.stats.alloc_retries += 1;
        }
        inner.tick();
        let clock = inner.stats.clock;
        if grown > 0 {
            inner.stats.segment_grows += 1;
            inner.stats.reserved.add(grown, clock, label);
            inner.event(TraceKind::Grow, grown, 0, None, pool, offset, label);
            inner.note_replay_reserved();
        }
        let s = &mut inner.stats;
        s.allocs += 1;
        s.requested.add(n, clock, label);
        let before = s.allocated.peak;
        s.allocated.add(rounded, clock, label);
        let t = &mut s.by_tag[tag.index()];
        t.allocs += 1;
        t.requested.add(n, clock, label);
        t.allocated.add(rounded, clock, label);
        if s.allocated.peak > before {
            for tg in Tag::ALL {
                s.by_tag_at_peak[tg.index()] = s.by_tag[tg.index()].allocated.current;
            }
        }
        inner.live.insert((pool as u8, offset), Live { requested: n, tag, label });
        inner.event(TraceKind::Alloc, rounded, n, Some(tag), pool, offset, label);
        let base = inner.segment_base(pool);
        let ptr = if base.is_null() { base } else { unsafe { base.add(offset) } };
        Ok(Block { arena: self.clone(), pool: pool as u8, offset, size: rounded, requested: n, ptr })
    }

    fn free(&self, b: &Block, label: &'static str) {
        let mut g = self.lock();
        let inner = &mut *g;
        let live = inner.live.remove(&(b.pool, b.offset)).expect("freeing a block the arena does not hold");
        if b.pool as usize == replay::STATIC_POOL {
            inner.static_release(b.offset);
        } else {
            inner.pools[b.pool as usize].release(b.offset, true);
        }
        inner.tick();
        let s = &mut inner.stats;
        s.frees += 1;
        s.requested.sub(live.requested);
        s.allocated.sub(b.size);
        let t = &mut s.by_tag[live.tag.index()];
        t.frees += 1;
        t.requested.sub(live.requested);
        t.allocated.sub(b.size);
        inner.event(TraceKind::Free, b.size, live.requested, Some(live.tag), b.pool as usize, b.offset, label);
    }

    /// Move a live block's bytes from its tag to `tag` (on the block's own
    /// arena, whichever handle is asked).
    pub fn retag(&self, b: &Block, tag: Tag, label: &'static str) {
        if !self.same(&b.arena) {
            return b.arena.retag(b, tag, label);
        }
        let mut g = self.lock();
        let inner = &mut *g;
        let live = inner.live.get_mut(&(b.pool, b.offset)).expect("retagging a block the arena does not hold");
        let (old, req) = (live.tag, live.requested);
        if old == tag {
            return;
        }
        live.tag = tag;
        inner.tick();
        let clock = inner.stats.clock;
        let s = &mut inner.stats;
        s.by_tag[old.index()].requested.sub(req);
        s.by_tag[old.index()].allocated.sub(b.size);
        s.by_tag[tag.index()].requested.add(req, clock, label);
        s.by_tag[tag.index()].allocated.add(b.size, clock, label);
        inner.event(TraceKind::Retag, b.size, req, Some(tag), b.pool as usize, b.offset, label);
    }

    /// The tag a live block is counted under.
    pub fn tag_of(&self, b: &Block) -> Tag {
        // A live block is always in its own arena's map.
        b.arena.lock().live[&(b.pool, b.offset)].tag
    }

    /// Every block in use, largest first.
    pub fn live_blocks(&self) -> Vec<LiveBlock> {
        let g = self.lock();
        let mut out: Vec<LiveBlock> = g
            .live
            .iter()
            .map(|(&(pool, offset), l)| LiveBlock {
                pool: POOL_NAMES[pool as usize],
                offset,
                bytes: round_up(l.requested.max(1), GRANULE),
                requested: l.requested,
                tag: l.tag,
                label: l.label,
            })
            .collect();
        out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.offset.cmp(&b.offset)));
        out
    }

    /// Give every cached page back to the OS. Returns the bytes released.
    pub fn empty_cache(&self) -> usize {
        self.lock().release_cached()
    }

    pub fn stats(&self) -> Stats {
        let g = self.lock();
        let mut s = g.stats.clone();
        s.largest_free = g.pools.iter().map(|p| p.largest_free()).max().unwrap_or(0);
        s
    }

    /// Start a new measurement window: every peak restarts from the current value.
    pub fn reset_peaks(&self) {
        let mut g = self.lock();
        let clock = g.stats.clock;
        let s = &mut g.stats;
        s.requested.reset_peak(clock);
        s.allocated.reset_peak(clock);
        s.reserved.reset_peak(clock);
        for t in s.by_tag.iter_mut() {
            t.requested.reset_peak(clock);
            t.allocated.reset_peak(clock);
        }
        for tg in Tag::ALL {
            s.by_tag_at_peak[tg.index()] = s.by_tag[tg.index()].allocated.current;
        }
    }

    pub fn set_tracing(&self, on: bool) {
        self.lock().tracing = on;
    }
    /// Take the events recorded so far.
    pub fn take_trace(&self) -> Vec<TraceEvent> {
        std::mem::take(&mut self.lock().trace)
    }
    /// The recorded events as a JSON array.
    pub fn trace_json(&self) -> String {
        serde_json::to_string(&self.lock().trace).expect("trace serialises")
    }
}

impl Inner {
    fn tick(&mut self) {
        self.stats.clock += 1;
    }

    fn cached(&self) -> usize {
        self.stats.reserved.current - self.stats.allocated.current
    }

    // Place a block and commit its pages within the budget.
    fn try_place(&mut self, pool: usize, rounded: usize) -> Result<(usize, usize), OomReason> {
        let p = &mut self.pools[pool];
        if rounded > p.seg.capacity() {
            return Err(OomReason::TooLarge { limit: p.seg.capacity() });
        }
        let frontier = p.frontier();
        let offset = p.place(rounded).ok_or(OomReason::AddressSpace)?;
        let need = p.uncommitted_bytes(offset, rounded);
        if let Some(budget) = self.budget {
            if self.stats.reserved.current + need > budget {
                p.unplace(offset, frontier);
                return Err(OomReason::Budget);
            }
        }
        match p.commit_block(offset, rounded) {
            Ok(grown) => Ok((offset, grown)),
            Err(e) => {
                p.unplace(offset, frontier);
                Err(OomReason::Os(e.0))
            }
        }
    }

    fn release_cached(&mut self) -> usize {
        let mut total = 0;
        for i in 0..self.pools.len() {
            // A failed decommit leaves pages committed and counted: safe.
            let freed = self.pools[i].release_cached().unwrap_or(0);
            if freed > 0 {
                self.tick();
                self.stats.segment_shrinks += 1;
                self.stats.reserved.sub(freed);
                self.event(TraceKind::Shrink, freed, 0, None, i, 0, "empty_cache");
            }
            total += freed;
        }
        self.stats.cache_flushes += 1;
        total
    }

    fn oom(&self, n: usize, rounded: usize, tag: Tag, label: &'static str, reason: OomReason) -> OutOfMemory {
        let mut by_tag = [0; 7];
        for t in Tag::ALL {
            by_tag[t.index()] = self.stats.by_tag[t.index()].allocated.current;
        }
        OutOfMemory {
            requested: n,
            rounded,
            tag,
            label,
            budget: self.budget,
            allocated: self.stats.allocated.current,
            reserved: self.stats.reserved.current,
            largest_free: self.pools.iter().map(|p| p.largest_free()).max().unwrap_or(0),
            by_tag,
            reason,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        kind: TraceKind,
        bytes: usize,
        requested: usize,
        tag: Option<Tag>,
        pool: usize,
        offset: usize,
        label: &'static str,
    ) {
        if self.tracing {
            let clock = self.stats.clock;
            let pool = POOL_NAMES[pool];
            self.trace.push(TraceEvent { clock, kind, bytes, requested, tag, pool, offset, label });
        }
    }
}

/// A block of arena memory, returned to its arena on drop.
pub struct Block {
    arena: Arena,
    pool: u8,
    offset: usize,
    size: usize,
    requested: usize,
    ptr: *mut u8,
}

// A block owns its bytes exclusively; the arena handle is thread-safe.
unsafe impl Send for Block {}
unsafe impl Sync for Block {}

impl Block {
    /// Rounded size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
    /// Bytes asked for.
    pub fn requested(&self) -> usize {
        self.requested
    }
    /// Start of the block; null on a meta arena.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    pub fn arena(&self) -> &Arena {
        &self.arena
    }
    /// Which pool and where in it: unique among live blocks of one arena.
    pub fn location(&self) -> (&'static str, usize) {
        (POOL_NAMES[self.pool as usize], self.offset)
    }
    pub fn tag(&self) -> Tag {
        self.arena.tag_of(self)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let arena = self.arena.clone();
        arena.free(self, "");
    }
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Block({} @ {}+{})", fmt_bytes(self.size), POOL_NAMES[self.pool as usize], self.offset)
    }
}

/// Total physical memory, used to size address reservations.
pub fn physical_memory() -> usize {
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages > 0 && size > 0 {
        pages as usize * size as usize
    } else {
        64 << 30
    }
}

pub(crate) use segment::round_up;

/// `1536` → `"1.50 KiB"`.
pub fn fmt_bytes(n: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Parse `"512MiB"`, `"2GiB"`, `"1.5G"`, `"1000000"` into bytes.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("`{s}` is not a size: write e.g. 512MiB, 2GiB or 1000000"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "kb" => 1e3,
        "m" | "mib" => 1024.0 * 1024.0,
        "mb" => 1e6,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "gb" => 1e9,
        "t" | "tib" => 1024f64.powi(4),
        "tb" => 1e12,
        u => return Err(format!("`{s}`: unknown unit `{u}`; use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)")),
    };
    Ok((v * mult).round() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert_eq!(fmt_bytes(1536), "1.50 KiB");
        assert_eq!(fmt_bytes(100), "100 B");
    }
}
