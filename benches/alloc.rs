//! The arena against the system allocator, and what its placement costs in
//! reserved memory.
//!
//! - `alloc_free`: one allocation and its free, the block already cached in
//!   the arena; the system allocator gets the same size and the arena's
//!   512-byte alignment. glibc serves 64 MiB (above its 32 MiB mmap
//!   threshold ceiling) with a fresh mmap and munmap every time.
//! - `alloc_touch_free`: the same, writing one byte per 4 KiB page, as a
//!   kernel filling the block would: the price of fresh pages shows here.
//! - A fragmentation figure, printed first: a synthetic transformer training
//!   step replayed into an arena, peak reserved ÷ peak allocated, next to a
//!   naive allocator that gives every block its own 2 MiB-rounded segment.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use headroom::alloc::{fmt_bytes, Arena, ArenaConfig, Backing, Block, Tag, GRANULE, PAGE_SIZE};
use std::alloc::{alloc, dealloc, Layout};
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

enum Ev {
    Alloc { id: usize, bytes: usize, tag: Tag },
    Free { id: usize },
}

#[derive(Default)]
struct Trace {
    evs: Vec<Ev>,
    next: usize,
}

impl Trace {
    fn alloc(&mut self, bytes: usize, tag: Tag) -> usize {
        let id = self.next;
        self.next += 1;
        self.evs.push(Ev::Alloc { id, bytes, tag });
        id
    }
    fn free(&mut self, ids: &[usize]) {
        self.evs.extend(ids.iter().map(|&id| Ev::Free { id }));
    }
}

/// Allocations of `steps` training steps of a pre-norm transformer in f32:
/// parameters; per layer a forward that saves what backward needs and frees
/// its temporaries; a backward that frees each layer's saved tensors in
/// reverse while gradients and temporary input gradients come and go; AdamW
/// state on the first step; gradients freed by `zero_grad` after each step.
fn transformer_trace(layers: usize, d: usize, seq: usize, batch: usize, heads: usize, steps: usize) -> Trace {
    let mut t = Trace::default();
    let f = 4;
    let (bt, act) = (batch * seq, batch * seq * d * f);
    let (wide, qkv, scores, stats) = (4 * act, 3 * act, batch * heads * seq * seq * f, batch * seq * f);
    // Per layer: ln1 w, b; Wqkv, bqkv; Wo, bo; ln2 w, b; W1, b1; W2, b2.
    let shapes = [d, d, d * 3 * d, 3 * d, d * d, d, d, d, d * 4 * d, 4 * d, 4 * d * d, d];
    let sizes: Vec<usize> = (0..layers).flat_map(|_| shapes.iter().map(|&n| n * f)).collect();
    for &s in &sizes {
        t.alloc(s, Tag::Parameter);
    }
    for step in 0..steps {
        let tokens = t.alloc(bt * 4, Tag::Data);
        let mut x = t.alloc(act, Tag::Activation); // embedding output
        let mut saved = vec![];
        for _ in 0..layers {
            let a = Tag::Activation;
            let (m1, r1, h) = (t.alloc(stats, a), t.alloc(stats, a), t.alloc(act, a));
            let qkv_ = t.alloc(qkv, a);
            let (q, k, v) = (t.alloc(act, a), t.alloc(act, a), t.alloc(act, a)); // head layout
            let s = t.alloc(scores, Tag::Temporary);
            let p = t.alloc(scores, a);
            t.free(&[s]);
            let o = t.alloc(act, Tag::Temporary);
            let oc = t.alloc(act, a); // heads merged, input of Wo
            t.free(&[o]);
            let proj = t.alloc(act, Tag::Temporary);
            let xm = t.alloc(act, a);
            t.free(&[proj]);
            let (m2, r2, h2) = (t.alloc(stats, a), t.alloc(stats, a), t.alloc(act, a));
            let (u, gl) = (t.alloc(wide, a), t.alloc(wide, a));
            let y = t.alloc(act, Tag::Temporary);
            let xo = t.alloc(act, a);
            t.free(&[y]);
            saved.push([x, m1, r1, h, qkv_, q, k, v, p, oc, xm, m2, r2, h2, u, gl]);
            x = xo;
        }
        let mut dx = t.alloc(act, Tag::Temporary); // gradient of the last output
        t.free(&[x, tokens]);
        let mut grads = vec![];
        let mut grad = |t: &mut Trace, i: usize| grads.push(t.alloc(sizes[i], Tag::Gradient));
        for l in (0..layers).rev() {
            let [x_in, m1, r1, h, qkv_, q, k, v, p, oc, xm, m2, r2, h2, u, gl] = saved.pop().expect("one per layer");
            let w = l * shapes.len();
            let tmp = Tag::Temporary;
            grad(&mut t, w + 10);
            grad(&mut t, w + 11);
            let dgl = t.alloc(wide, tmp);
            t.free(&[gl]);
            let du = t.alloc(wide, tmp);
            t.free(&[dgl, u]);
            grad(&mut t, w + 8);
            grad(&mut t, w + 9);
            let dh2 = t.alloc(act, tmp);
            t.free(&[du, h2]);
            grad(&mut t, w + 6);
            grad(&mut t, w + 7);
            let dxm = t.alloc(act, tmp);
            t.free(&[dh2, m2, r2, dx, xm]); // residual: dxm += dx
            dx = dxm;
            grad(&mut t, w + 4);
            grad(&mut t, w + 5);
            let doc = t.alloc(act, tmp);
            t.free(&[oc]);
            let dout = t.alloc(act, tmp);
            t.free(&[doc]);
            let (dp, dv) = (t.alloc(scores, tmp), t.alloc(act, tmp));
            t.free(&[dout, v]);
            let ds = t.alloc(scores, tmp);
            t.free(&[dp, p]);
            let (dq, dk) = (t.alloc(act, tmp), t.alloc(act, tmp));
            t.free(&[ds, q, k]);
            let dqkv = t.alloc(qkv, tmp);
            t.free(&[dq, dk, dv, qkv_]);
            grad(&mut t, w + 2);
            grad(&mut t, w + 3);
            let dh = t.alloc(act, tmp);
            t.free(&[dqkv, h]);
            grad(&mut t, w);
            grad(&mut t, w + 1);
            let dxi = t.alloc(act, tmp);
            t.free(&[dh, m1, r1, dx, x_in]);
            dx = dxi;
        }
        t.free(&[dx]);
        if step == 0 {
            for &s in &sizes {
                t.alloc(s, Tag::OptimizerState); // exp_avg
                t.alloc(s, Tag::OptimizerState); // exp_avg_sq
            }
        }
        t.free(&grads);
    }
    t
}

/// Peak requested, allocated and reserved bytes of the trace in a headroom arena.
fn replay_arena(t: &Trace) -> (usize, usize, usize, u64) {
    // A meta arena runs the same placement and page rules with no memory.
    let arena = Arena::new(ArenaConfig { backing: Backing::Meta, ..Default::default() }).expect("meta arena");
    let mut live: Vec<Option<Block>> = (0..t.next).map(|_| None).collect();
    for ev in &t.evs {
        match *ev {
            Ev::Alloc { id, bytes, tag } => live[id] = Some(arena.alloc(bytes, tag, "replay").expect("unbounded")),
            Ev::Free { id } => live[id] = None,
        }
    }
    let s = arena.stats();
    (s.requested.peak, s.allocated.peak, s.reserved.peak, s.allocs)
}

/// Peak reserved bytes when every block gets its own segment rounded up to
/// 2 MiB and returned on free: no caching, no splitting.
fn replay_naive(t: &Trace) -> usize {
    let mut size = vec![0; t.next];
    let (mut cur, mut peak) = (0usize, 0usize);
    for ev in &t.evs {
        match *ev {
            Ev::Alloc { id, bytes, .. } => {
                size[id] = bytes.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE;
                cur += size[id];
                peak = peak.max(cur);
            }
            Ev::Free { id } => cur -= size[id],
        }
    }
    peak
}

fn fragmentation() {
    let (layers, d, seq, batch, heads, steps) = (12, 512, 256, 8, 8, 3);
    let t = transformer_trace(layers, d, seq, batch, heads, steps);
    let (requested, allocated, reserved, allocs) = replay_arena(&t);
    let naive = replay_naive(&t);
    let ratio = |r: usize| r as f64 / allocated as f64;
    println!(
        "fragmentation: {steps} training steps of a {layers}-layer transformer (d {d}, seq {seq}, batch {batch}, \
         {heads} heads, f32, AdamW), {allocs} allocations"
    );
    println!("  peak requested {}, peak allocated {} (512 B granules)", fmt_bytes(requested), fmt_bytes(allocated));
    println!(
        "  headroom arena:          peak reserved {:>11} = {:.3} x peak allocated",
        fmt_bytes(reserved),
        ratio(reserved)
    );
    println!(
        "  2 MiB segment per block: peak reserved {:>11} = {:.3} x peak allocated",
        fmt_bytes(naive),
        ratio(naive)
    );
}

fn report(_: &mut Criterion) {
    fragmentation();
}

criterion_group!(benches, report, alloc_free, alloc_touch_free);
criterion_main!(benches);
