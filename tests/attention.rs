//! Attention: gradient checks of the fused op across tile edges, masks and
//! cross-attention; agreement with the naive path; memory that grows
//! linearly with the length (the naive path's quadratically); the meta
//! device; thread counts; errors.

mod common;
use common::{gradcheck_all, input, quantize};
use headroom::alloc::{ArenaConfig, Backing};
use headroom::autograd::{backward, backward_with};
use headroom::cpu::attention::{tiles, Config};
use headroom::model::{Classifier, ClassifierConfig};
use headroom::nn::SelfAttention;
use headroom::ops::{attention, AttentionKind, AttentionOptions};
use headroom::rng::Rng;
use headroom::{Arena, DType, Tag, Tensor};

fn mask(arena: &Arena, shape: &[usize], v: &[u8]) -> Tensor {
    Tensor::from_slice(arena, shape, v, Tag::Data).unwrap()
}

/// `[B, Tk]` padding: in batch 0 the last `tail` keys; in batch 1 key 0 and
/// the keys `[tk/2, tk/2 + 2)`. With a causal mask, query 0 of batch 1 sees
/// no key at all.
fn pad_bits(b: usize, tk: usize, tail: usize) -> Vec<u8> {
    let mut v = vec![0u8; b * tk];
    v[tk.saturating_sub(tail)..tk].fill(1);
    if b > 1 {
        v[tk] = 1;
        for j in tk / 2..(tk / 2 + 2).min(tk) {
            v[tk + j] = 1;
        }
    }
    v
}

struct Case {
    b: usize,
    h: usize,
    tq: usize,
    tk: usize,
    d: usize,
    causal: bool,
    pad: bool,
    tiles: Option<(usize, usize)>,
}

impl Case {
    fn opts(&self, arena: &Arena, kind: AttentionKind) -> AttentionOptions {
        AttentionOptions {
            causal: self.causal,
            key_padding: self.pad.then(|| mask(arena, &[self.b, self.tk], &pad_bits(self.b, self.tk, 2))),
            scale: None,
            kind,
            tiles: self.tiles,
        }
    }
    fn gradcheck(&self, kind: AttentionKind) {
        let mut rng = Rng::new((self.tq * 31 + self.tk) as u64);
        let x = |t: usize, rng: &mut Rng| input(rng, &[self.b, self.h, t, self.d]);
        let (q, k, v) = (x(self.tq, &mut rng), x(self.tk, &mut rng), x(self.tk, &mut rng));
        gradcheck_all(
            |t| {
                let mut o = self.opts(t[0].arena(), kind);
                o.scale = Some(1.5); // peakier than 1/√D, so the softmax matters
                attention(&t[0], &t[1], &t[2], &o)
            },
            &[q, k, v],
            &[true, true, true],
        );
    }
}

fn small(tq: usize, tk: usize, causal: bool, pad: bool) -> Case {
    Case { b: 2, h: 2, tq, tk, d: 4, causal, pad, tiles: Some((4, 3)) }
}

#[test]
fn fused_gradcheck_across_tile_edges_with_and_without_masks() {
    // 10 rows over tiles of 4 queries and 3 keys: full and partial tiles.
    for causal in [false, true] {
        for pad in [false, true] {
            small(10, 10, causal, pad).gradcheck(AttentionKind::Fused);
        }
    }
}

#[test]
fn fused_gradcheck_cross_attention() {
    for (tq, tk) in [(5, 11), (11, 5), (1, 7), (7, 1)] {
        for causal in [false, true] {
            small(tq, tk, causal, true).gradcheck(AttentionKind::Fused);
            small(tq, tk, causal, false).gradcheck(AttentionKind::Fused);
        }
    }
}

#[test]
fn fused_gradcheck_with_the_default_tiles() {
    // 130 rows cross the default 128-row tile; 1 and 7 sit inside one.
    for (tq, tk, causal) in [(130, 130, true), (7, 130, false), (130, 1, true)] {
        Case { b: 1, h: 1, tq, tk, d: 4, causal, pad: false, tiles: None }.gradcheck(AttentionKind::Fused);
    }
    Case { b: 2, h: 1, tq: 7, tk: 7, d: 3, causal: false, pad: true, tiles: None }.gradcheck(AttentionKind::Fused);
}

#[test]
fn fused_gradcheck_at_exact_multiples_of_the_tile() {
    // Tiles of 4 queries and 3 keys: 8 = 2·4 and 12 = 3·4 queries, 6 = 2·3,
    // 9 = 3·3 and 12 = 4·3 keys, so every tile is full and the last one ends
    // exactly at the sequence end.
    for (tq, tk) in [(8, 9), (12, 12), (8, 6)] {
        for causal in [false, true] {
            for pad in [false, true] {
                small(tq, tk, causal, pad).gradcheck(AttentionKind::Fused);
            }
        }
    }
    // The default tiles (128 rows at this D): 256 = 2 full tiles.
    assert_eq!(tiles(2), (128, 128));
    for (causal, pad) in [(false, false), (true, true)] {
        Case { b: 2, h: 1, tq: 256, tk: 256, d: 2, causal, pad, tiles: None }.gradcheck(AttentionKind::Fused);
    }
}

#[test]
fn fused_gradcheck_when_only_some_inputs_need_gradients() {
    let c = small(9, 7, true, true);
    let mut rng = Rng::new(77);
    let x = |t: usize, rng: &mut Rng| input(rng, &[c.b, c.h, t, c.d]);
    let inputs = [x(c.tq, &mut rng), x(c.tk, &mut rng), x(c.tk, &mut rng)];
    for grad in [[true, false, false], [false, true, true], [false, false, true], [true, true, false]] {
        gradcheck_all(|t| attention(&t[0], &t[1], &t[2], &c.opts(t[0].arena(), AttentionKind::Fused)), &inputs, &grad);
    }
}

#[test]
fn naive_gradcheck_with_masks() {
    small(6, 5, true, true).gradcheck(AttentionKind::Naive);
    small(5, 6, false, true).gradcheck(AttentionKind::Naive);
}

/// Forward and the three gradients of `kind` stored in `dtype`, for inputs
/// and an output gradient drawn from `seed` and rounded to `round`.
fn run(c: &Case, kind: AttentionKind, dtype: DType, round: DType, seed: u64) -> [Vec<f32>; 4] {
    let a = Arena::host();
    let mut rng = Rng::new(seed);
    let mut x = |t: usize| {
        let v: Vec<f32> = (0..c.b * c.h * t * c.d).map(|_| rng.normal()).collect();
        Tensor::from_f32(&a, &[c.b, c.h, t, c.d], &quantize(&v, round), dtype, Tag::Data).unwrap().requires_grad()
    };
    let (q, k, v, g) = (x(c.tq), x(c.tk), x(c.tk), x(c.tq).detach());
    let out = attention(&q, &k, &v, &c.opts(&a, kind)).unwrap();
    let fwd = out.to_vec_f32().unwrap();
    backward_with(&out, g).unwrap();
    [
        fwd,
        q.grad().unwrap().to_vec_f32().unwrap(),
        k.grad().unwrap().to_vec_f32().unwrap(),
        v.grad().unwrap().to_vec_f32().unwrap(),
    ]
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite() && (g - w).abs() <= tol * scale, "{what}[{i}]: {g} vs {w} (scale {scale})");
    }
}

#[test]
fn fused_agrees_with_naive_forward_and_gradients() {
    let cases = [
        Case { b: 2, h: 3, tq: 300, tk: 300, d: 64, causal: false, pad: false, tiles: None },
        Case { b: 2, h: 3, tq: 300, tk: 300, d: 64, causal: true, pad: true, tiles: None },
        Case { b: 2, h: 2, tq: 200, tk: 333, d: 64, causal: true, pad: true, tiles: None },
        Case { b: 2, h: 2, tq: 333, tk: 200, d: 32, causal: true, pad: false, tiles: None },
        Case { b: 1, h: 2, tq: 1, tk: 257, d: 64, causal: false, pad: true, tiles: None },
        Case { b: 2, h: 2, tq: 100, tk: 90, d: 16, causal: false, pad: true, tiles: Some((32, 64)) },
    ];
    agree(&cases);
}

#[test]
fn fused_agrees_with_naive_at_exact_multiples_of_the_tile() {
    assert_eq!(tiles(64), (128, 128));
    let cases = [
        // 256 = 2 tiles and 384 = 3 tiles of the default 128 rows.
        Case { b: 2, h: 2, tq: 256, tk: 256, d: 64, causal: false, pad: false, tiles: None },
        Case { b: 2, h: 2, tq: 256, tk: 256, d: 64, causal: true, pad: true, tiles: None },
        Case { b: 2, h: 2, tq: 256, tk: 384, d: 64, causal: true, pad: false, tiles: None },
        Case { b: 2, h: 2, tq: 384, tk: 256, d: 64, causal: false, pad: true, tiles: None },
        // Set by the tile knob: 96 = 3·32 queries, 128 = 2·64 keys.
        Case { b: 2, h: 2, tq: 96, tk: 128, d: 16, causal: true, pad: true, tiles: Some((32, 64)) },
        Case { b: 2, h: 2, tq: 96, tk: 128, d: 16, causal: false, pad: false, tiles: Some((32, 64)) },
    ];
    agree(&cases);
}

/// Fused (f32, f16, bf16) against the naive path in f32 on the same rounded
/// values: the forward and all three gradients.
fn agree(cases: &[Case]) {
    let names = ["output", "dq", "dk", "dv"];
    for (n, c) in cases.iter().enumerate() {
        for (dtype, tol) in [(DType::F32, 2e-5), (DType::F16, 4e-3), (DType::BF16, 3e-2)] {
            let got = run(c, AttentionKind::Fused, dtype, dtype, n as u64);
            // Reference: the naive path in f32 on the same rounded values.
            let want = run(c, AttentionKind::Naive, DType::F32, dtype, n as u64);
            for i in 0..4 {
                let what =
                    format!("case {n} ({}×{} causal {} pad {}) {dtype} {}", c.tq, c.tk, c.causal, c.pad, names[i]);
                assert_close(&what, &got[i], &want[i], tol);
            }
        }
    }
}

#[test]
fn rows_that_see_no_key_are_zero_not_nan() {
    for kind in [AttentionKind::Fused, AttentionKind::Naive] {
        let a = Arena::host();
        let mut rng = Rng::new(5);
        let (b, h, t, d) = (2, 2, 9, 8);
        let x =
            |rng: &mut Rng| Tensor::randn(&a, &[b, h, t, d], 1.0, DType::F32, Tag::Data, rng).unwrap().requires_grad();
        let (q, k, v) = (x(&mut rng), x(&mut rng), x(&mut rng));
        // Batch 1 is all padding.
        let bits: Vec<u8> = (0..b * t).map(|i| (i >= t) as u8).collect();
        let o = AttentionOptions {
            key_padding: Some(mask(&a, &[b, t], &bits)),
            kind,
            tiles: Some((4, 4)),
            ..Default::default()
        };
        let out = attention(&q, &k, &v, &o).unwrap();
        backward(&out.sum_all().unwrap()).unwrap();
        let half = b * h * t * d / 2;
        let y = out.to_vec_f32().unwrap();
        assert!(y.iter().all(|x| x.is_finite()), "{kind}");
        assert!(y[half..].iter().all(|&x| x == 0.0), "{kind}: output of batch 1");
        assert!(y[..half].iter().any(|&x| x != 0.0));
        for (name, p) in [("q", &q), ("k", &k), ("v", &v)] {
            let g = p.grad().unwrap().to_vec_f32().unwrap();
            assert!(g.iter().all(|x| x.is_finite()), "{kind}: d{name} has NaN");
            assert!(g[half..].iter().all(|&x| x == 0.0), "{kind}: d{name} of batch 1");
        }
    }
}

/// Workspace + Activation peaks (bytes) over one forward and backward of
/// attention over op outputs q, k, v `[1, heads, n, 64]`, and the Temporary
/// peak.
fn peaks(arena: &Arena, kind: AttentionKind, heads: usize, n: usize) -> (usize, usize) {
    let shape = [1, heads, n, 64];
    let leaf = || Tensor::full(arena, &shape, 0.01, DType::F32, Tag::Parameter).unwrap().requires_grad();
    let (qp, kp, vp) = (leaf(), leaf(), leaf());
    let g = Tensor::full(arena, &shape, 1.0, DType::F32, Tag::Data).unwrap();
    arena.reset_peaks();
    // Op outputs, as a projection's would be: saved, so they count as activations.
    let (q, k, v) = (qp.mul_scalar(1.0).unwrap(), kp.mul_scalar(1.0).unwrap(), vp.mul_scalar(1.0).unwrap());
    let out = attention(&q, &k, &v, &AttentionOptions { causal: true, kind, ..Default::default() }).unwrap();
    drop((q, k, v));
    backward_with(&out, g).unwrap();
    let s = arena.stats();
    (s.tag(Tag::Workspace).allocated.peak + s.tag(Tag::Activation).allocated.peak, s.tag(Tag::Temporary).allocated.peak)
}

#[test]
fn fused_memory_grows_linearly_naive_quadratically() {
    let ns = [512, 1024, 2048, 4096];
    let fused: Vec<usize> = ns.iter().map(|&n| peaks(&Arena::host(), AttentionKind::Fused, 1, n).0).collect();
    let naive: Vec<usize> = ns.iter().map(|&n| peaks(&Arena::host(), AttentionKind::Naive, 1, n).0).collect();
    eprintln!("N {ns:?}\nfused workspace+activation {fused:?}\nnaive workspace+activation {naive:?}");
    let ratio = |v: &[usize]| v[3] as f64 / v[0] as f64;
    assert!(ratio(&fused) < 9.0, "fused grows {}× from 512 to 4096", ratio(&fused));
    assert!(ratio(&naive) > 40.0, "naive grows only {}×", ratio(&naive));
    // Linear: each doubling adds twice what the previous one added.
    for i in 1..3 {
        let (d0, d1) = ((fused[i] - fused[i - 1]) as f64, (fused[i + 1] - fused[i]) as f64);
        assert!((d1 / d0 - 2.0).abs() < 0.02, "fused increments {d0} then {d1}");
    }
    assert!(naive[3] > 10 * fused[3]);
}

#[test]
fn fused_saves_inputs_output_and_lse_only() {
    let a = Arena::host();
    let (b, h, tq, tk, d) = (2, 3, 200, 150, 32);
    let leaf = |t: usize| Tensor::full(&a, &[b, h, t, d], 0.1, DType::BF16, Tag::Parameter).unwrap().requires_grad();
    let (qp, kp, vp) = (leaf(tq), leaf(tk), leaf(tk));
    let (q, k, v) = (qp.mul_scalar(2.0).unwrap(), kp.mul_scalar(2.0).unwrap(), vp.mul_scalar(2.0).unwrap());
    let pad = mask(&a, &[b, tk], &pad_bits(b, tk, 7));
    let o = AttentionOptions { causal: true, key_padding: Some(pad), ..Default::default() };
    let out = attention(&q, &k, &v, &o).unwrap();
    drop((q, k, v));
    let act = a.stats().tag(Tag::Activation).requested.current;
    // q, out: B·H·Tq·D; k, v: B·H·Tk·D (bf16); lse: f32 per query row. The mask is Data.
    assert_eq!(act, 2 * (2 * b * h * tq * d + 2 * b * h * tk * d) + 4 * b * h * tq);
    assert_eq!(a.stats().tag(Tag::Workspace).allocated.current, 0);
    // The heads sit next to D underneath: back to [B, T, H·D] for free.
    assert!(out.permute(&[0, 2, 1, 3]).unwrap().is_contiguous());
    backward(&out.sum_all().unwrap()).unwrap();
    let s = a.stats();
    assert_eq!(s.tag(Tag::Activation).allocated.current, 0);
    assert_eq!(s.tag(Tag::Workspace).allocated.current, 0);
    assert!(s.tag(Tag::Workspace).allocated.peak > 0);
}

#[test]
fn meta_device_allocates_like_host() {
    let go = |backing: Backing, kind: AttentionKind, dtype: DType| {
        let a = Arena::new(ArenaConfig { backing, ..Default::default() }).unwrap();
        let (b, h, tq, tk, d) = (2, 3, 70, 45, 16);
        let leaf = |t: usize| Tensor::zeros(&a, &[b, h, t, d], dtype, Tag::Parameter).unwrap().requires_grad();
        let (q, k, v) = (leaf(tq), leaf(tk), leaf(tk));
        // A strided q (transposed twice over a [B, T, H, D] layout) and a strided mask.
        let q = q.mul_scalar(1.0).unwrap().transpose(1, 2).unwrap().contiguous().unwrap().transpose(1, 2).unwrap();
        let m = Tensor::zeros(&a, &[tk, b], DType::U8, Tag::Data).unwrap().transpose(0, 1).unwrap();
        let o =
            AttentionOptions { causal: true, key_padding: Some(m), kind, tiles: Some((16, 32)), ..Default::default() };
        let out = attention(&q, &k, &v, &o).unwrap();
        backward(&out.sum_all().unwrap()).unwrap();
        let s = a.stats();
        (
            s.allocs,
            s.frees,
            s.allocated.peak,
            [Tag::Activation, Tag::Workspace, Tag::Temporary, Tag::Gradient].map(|t| s.tag(t).allocated.peak),
        )
    };
    for kind in [AttentionKind::Fused, AttentionKind::Naive] {
        for dtype in [DType::F32, DType::F16] {
            assert_eq!(go(Backing::Host, kind, dtype), go(Backing::Meta, kind, dtype), "{kind} {dtype}");
        }
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    // B·H = 4: one worker runs the one-pass backward, three run two passes;
    // both must give the same bits.
    let plan = |threads| Config::new(2, 2, 300, 280, 64, tiles(64), 0.125, true).backward_plan(threads, true, true);
    assert!(plan(1).one_pass && !plan(3).one_pass);
    let c = Case { b: 2, h: 2, tq: 300, tk: 280, d: 64, causal: true, pad: true, tiles: None };
    for dtype in [DType::F32, DType::BF16] {
        let on = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
                .install(|| run(&c, AttentionKind::Fused, dtype, dtype, 9))
        };
        assert!(on(1) == on(3), "{dtype}: results differ between 1 and 3 threads");
    }
}

#[test]
fn self_attention_kinds_agree() {
    let a = Arena::host();
    let mut rng = Rng::new(21);
    let mut layer = SelfAttention::new(&a, 32, 4, &mut rng).unwrap();
    assert_eq!(layer.kind, AttentionKind::Fused);
    let x = Tensor::randn(&a, &[2, 50, 32], 1.0, DType::F32, Tag::Data, &mut rng).unwrap();
    let pad = mask(&a, &[2, 50], &pad_bits(2, 50, 11));
    let mut results = vec![];
    for kind in [AttentionKind::Naive, AttentionKind::Fused] {
        layer.kind = kind;
        let y = layer.forward(&x, Some(&pad)).unwrap();
        backward(&y.mul(&y).unwrap().sum_all().unwrap()).unwrap();
        let gw = layer.qkv.weight.grad().unwrap().to_vec_f32().unwrap();
        layer.qkv.weight.zero_grad();
        layer.qkv.bias.as_ref().unwrap().zero_grad();
        layer.out.weight.zero_grad();
        layer.out.bias.as_ref().unwrap().zero_grad();
        results.push((y.to_vec_f32().unwrap(), gw));
    }
    assert_close("output", &results[1].0, &results[0].0, 2e-5);
    assert_close("d qkv.weight", &results[1].1, &results[0].1, 2e-5);

    let config =
        ClassifierConfig { frames: 8, features: 4, classes: 3, dim: 16, layers: 2, heads: 2, hidden: 32, dropout: 0.0 };
    let mut model = Classifier::new(&a, config, &mut rng).unwrap();
    assert_eq!(model.attention(), AttentionKind::Fused);
    model.set_attention(AttentionKind::Naive);
    assert!(model.blocks.iter().all(|b| b.attn.kind == AttentionKind::Naive));
    assert_eq!(AttentionKind::parse("naive"), Some(AttentionKind::Naive));
    assert_eq!(AttentionKind::parse("fused"), Some(AttentionKind::Fused));
}

#[test]
fn bad_input_is_an_error_naming_op_and_shapes() {
    let a = Arena::host();
    let z = |shape: &[usize], dt: DType| Tensor::zeros(&a, shape, dt, Tag::Data).unwrap();
    let (q, k) = (z(&[2, 3, 5, 8], DType::F32), z(&[2, 3, 7, 8], DType::F32));
    let d = AttentionOptions::default();
    let err = |q: &Tensor, k: &Tensor, v: &Tensor, o: &AttentionOptions| attention(q, k, v, o).unwrap_err().to_string();

    let e = err(&z(&[2, 5, 8], DType::F32), &k, &k, &d);
    assert!(e.contains("attention") && e.contains("[2, 5, 8]") && e.contains("[B, H, Tq, D]"), "{e}");
    let e = err(&q, &k, &z(&[2, 3, 6, 8], DType::F32), &d);
    assert!(e.contains("attention") && e.contains("[2, 3, 7, 8]") && e.contains("[2, 3, 6, 8]"), "{e}");
    let e = err(&q, &z(&[2, 3, 7, 4], DType::F32), &z(&[2, 3, 7, 4], DType::F32), &d);
    assert!(e.contains("attention") && e.contains("[2, 3, 5, 8]") && e.contains("D"), "{e}");
    let e = err(&q, &z(&[2, 1, 7, 8], DType::F32), &z(&[2, 1, 7, 8], DType::F32), &d);
    assert!(e.contains("[2, 1, 7, 8]"), "{e}");
    let e = err(&q, &k, &z(&[2, 3, 7, 8], DType::F16), &d);
    assert!(e.contains("attention") && e.contains("f16") && e.contains("f32"), "{e}");
    let qi = z(&[2, 3, 5, 8], DType::I32);
    let e = err(&qi, &qi, &qi, &d);
    assert!(e.contains("attention") && e.contains("i32"), "{e}");

    let with = |m: Tensor| AttentionOptions { key_padding: Some(m), ..Default::default() };
    let e = err(&q, &k, &k, &with(z(&[2, 5], DType::U8)));
    assert!(e.contains("attention") && e.contains("key_padding [2, 5]") && e.contains("[2, 7]"), "{e}");
    let e = err(&q, &k, &k, &with(z(&[2, 7], DType::I32)));
    assert!(e.contains("attention") && e.contains("u8"), "{e}");
    let e = err(&q, &k, &k, &AttentionOptions { tiles: Some((0, 8)), ..Default::default() });
    assert!(e.contains("attention") && e.contains("tiles"), "{e}");
    let e = err(&q, &k, &k, &AttentionOptions { scale: Some(f32::NAN), ..Default::default() });
    assert!(e.contains("attention") && e.contains("scale"), "{e}");
    let other = Arena::host();
    let ko = Tensor::zeros(&other, &[2, 3, 7, 8], DType::F32, Tag::Data).unwrap();
    assert!(err(&q, &ko, &ko, &d).contains("arena"));
}
