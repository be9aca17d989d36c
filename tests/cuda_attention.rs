//! The fused attention kernels (kernels/attention.cu) run on the CPU harness
//! and compared with the CPU fused op (`ops::attention` on a host arena):
//! the forward output and all three gradients (through autograd), plus the
//! log-sum-exp and the row sums D against f64 sums. Lengths that are and are
//! not multiples of the tiles, causal on and off, key padding (including
//! fully padded key tiles and rows that see no key), cross-attention
//! (Tq ≠ Tk), every head-dim bucket (D = 16, 20, 32, 64, 100, 128), strided
//! views of packed projections, f32, f16 and bf16, and both thread orders —
//! which must give bit-identical results (no races, a fixed summation order).
//!
//! Tolerances, |got − want| ≤ tol · max(max|want|, 1) over each tensor
//! (inputs and dO are standard normal, so the terms of every sum are O(1)
//! and rounding noise is absolute: with one key, say, dQ cancels to ~1e-7
//! on both sides, in different ways): both sides compute in f32 from the
//! same stored inputs, so they differ by summation order and exp (CUDA's
//! expf vs the CPU's Cephes polynomial), observed ≤ 7e-7 in f32; stored in
//! f16/bf16, also by one rounding step of an output where the two f32 values
//! straddle a rounding boundary (≤ 2^-10 resp. 2^-7 of the largest element),
//! and the backward then starts from outputs that can differ by that step.
//! f32 5e-6, f16 3e-3, bf16 2e-2; the observed maxima are printed (f16
//! ≤ 4.3e-4, bf16 ≤ 9.7e-4 when these tolerances were set).

mod harness;
use harness::{emulator, ptr, DTYPES};
use headroom::autograd::backward_with;
use headroom::cuda::emulator::{Emulator, Order};
use headroom::cuda::kernels::{self as k, Attention, AttentionGrads, Grid, Strided, LAUNCH};
use headroom::ops::{attention, AttentionOptions};
use headroom::rng::Rng;
use headroom::{Arena, DType, Tag, Tensor};
use std::time::Instant;

fn tol(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 5e-6,
        DType::F16 => 3e-3,
        _ => 2e-2,
    }
}

fn strided(t: &Tensor) -> Strided<'_> {
    Strided { ptr: ptr(t), strides: t.strides() }
}

/// Which keys are padded.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pad {
    No,
    /// Batch 0: the last `n` keys (with n ≥ a key tile, whole tiles are
    /// skipped); batch 1: key 0 and keys tk/2, tk/2 + 1 (under a causal mask
    /// its query 0 then sees no key).
    Tail(usize),
    /// Batch 1 entirely (every row of it sees no key); batch 0 none.
    Batch1,
}

/// How the operands are laid out.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// q, k, v, O and dO dense [B, H, T, D].
    Dense,
    /// As a projection leaves them: q a view of [B, Tq, H, D], k and v of one
    /// [B, Tk, 2, H, D]; O and dO views of [B, Tq, H, D] (as the CPU op's O).
    Packed,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    h: usize,
    tq: usize,
    tk: usize,
    d: usize,
    causal: bool,
    pad: Pad,
    layout: Layout,
    scale: Option<f32>,
}

fn case(b: usize, h: usize, tq: usize, tk: usize, d: usize, causal: bool, pad: Pad) -> Case {
    Case { b, h, tq, tk, d, causal, pad, layout: Layout::Dense, scale: None }
}

impl Case {
    fn pad_bits(&self) -> Option<Vec<u8>> {
        let (b, tk) = (self.b, self.tk);
        let mut v = vec![0u8; b * tk];
        match self.pad {
            Pad::No => return None,
            Pad::Tail(n) => {
                v[tk.saturating_sub(n)..tk].fill(1);
                if b > 1 && tk > 0 {
                    v[tk] = 1;
                    for j in tk / 2..(tk / 2 + 2).min(tk) {
                        v[tk + j] = 1;
                    }
                }
            }
            Pad::Batch1 => v[tk..2 * tk].fill(1),
        }
        Some(v)
    }
    fn scale(&self) -> f32 {
        self.scale.unwrap_or(1.0 / (self.d as f32).sqrt())
    }
}

/// q, k, v (leaves or views of leaves) and the leaves themselves.
struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    leaves: Vec<Tensor>,
}

fn normal(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

fn inputs(a: &Arena, c: &Case, dtype: DType, rng: &mut Rng) -> Inputs {
    let (b, h, d) = (c.b, c.h, c.d);
    let mut leaf = |shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_f32(a, shape, &normal(rng, n), dtype, Tag::Data).unwrap().requires_grad()
    };
    match c.layout {
        Layout::Dense => {
            let (q, k, v) = (leaf(&[b, h, c.tq, d]), leaf(&[b, h, c.tk, d]), leaf(&[b, h, c.tk, d]));
            Inputs { q: q.clone(), k: k.clone(), v: v.clone(), leaves: vec![q, k, v] }
        }
        Layout::Packed => {
            let (ql, kvl) = (leaf(&[b, c.tq, h, d]), leaf(&[b, c.tk, 2, h, d]));
            let (q, k, v) = packed_views(&ql, &kvl);
            Inputs { q, k, v, leaves: vec![ql, kvl] }
        }
    }
}

/// [B, H, T, D] views of a [B, Tq, H, D] and a [B, Tk, 2, H, D] tensor.
fn packed_views(q: &Tensor, kv: &Tensor) -> (Tensor, Tensor, Tensor) {
    let kv = kv.permute(&[2, 0, 3, 1, 4]).unwrap();
    (
        q.permute(&[0, 2, 1, 3]).unwrap(),
        kv.slice(0, 0, 1).unwrap().squeeze(0).unwrap(),
        kv.slice(0, 1, 2).unwrap().squeeze(0).unwrap(),
    )
}

impl Inputs {
    /// dQ, dK, dV of the CPU op, in [B, H, T, D] order.
    fn grads(&self, layout: Layout) -> [Vec<f32>; 3] {
        let g: Vec<Tensor> = self.leaves.iter().map(|l| l.grad().expect("a gradient")).collect();
        let (dq, dk, dv) = match layout {
            Layout::Dense => (g[0].clone(), g[1].clone(), g[2].clone()),
            Layout::Packed => packed_views(&g[0], &g[1]),
        };
        [dq, dk, dv].map(|t| t.to_vec_f32().unwrap())
    }
}

/// A [B, H, Tq, D] tensor of `dtype` laid out as `layout` says.
fn query_shaped(a: &Arena, c: &Case, dtype: DType, values: &[f32]) -> Tensor {
    let (b, h, tq, d) = (c.b, c.h, c.tq, c.d);
    match c.layout {
        Layout::Dense => Tensor::from_f32(a, &[b, h, tq, d], values, dtype, Tag::Data).unwrap(),
        Layout::Packed => {
            // `values` are in [B, H, Tq, D] order: store them as [B, Tq, H, D].
            let mut bthd = vec![0f32; values.len()];
            for (i, &x) in values.iter().enumerate() {
                let (bi, hi, ti, di) = (i / (h * tq * d), i / (tq * d) % h, i / d % tq, i % d);
                bthd[((bi * tq + ti) * h + hi) * d + di] = x;
            }
            let t = Tensor::from_f32(a, &[b, tq, h, d], &bthd, dtype, Tag::Data).unwrap();
            t.permute(&[0, 2, 1, 3]).unwrap()
        }
    }
}

/// What one run produces, in [B, H, T, D] / [B, H, Tq] order (NaN where
/// nothing was written), and each launch's time on the harness.
#[derive(Clone, Debug)]
struct Results {
    out: Vec<f32>,
    lse: Vec<f32>,
    dvec: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    times: Vec<(&'static str, [u32; 3], f64)>,
}

impl Results {
    fn bits(&self) -> Vec<u32> {
        [&self.out, &self.lse, &self.dvec, &self.dq, &self.dk, &self.dv]
            .iter()
            .flat_map(|v| v.iter().map(|x| x.to_bits()))
            .collect()
    }
}

/// The kernels on the harness: forward, then the backward's launches.
fn run_kernels(emu: &Emulator, c: &Case, dtype: DType, x: &Inputs, pad: Option<&Tensor>, g: &Tensor) -> Results {
    run_some(emu, c, dtype, x, pad, g, [true; 3])
}

/// As `run_kernels`, asking only for the gradients `want` (dQ, dK, dV) names.
fn run_some(
    emu: &Emulator,
    c: &Case,
    dtype: DType,
    x: &Inputs,
    pad: Option<&Tensor>,
    g: &Tensor,
    want: [bool; 3],
) -> Results {
    let a = Arena::host();
    let call = Attention {
        batch: c.b,
        heads: c.h,
        tq: c.tq,
        tk: c.tk,
        d: c.d,
        scale: c.scale(),
        causal: c.causal,
        q: strided(&x.q),
        k: strided(&x.k),
        v: strided(&x.v),
        key_padding: pad.map(ptr),
    };
    let (b, h, tq, tk, d) = (c.b, c.h, c.tq, c.tk, c.d);
    let mut times = vec![];
    let mut run = |l: &k::Launch| {
        let t = Instant::now();
        emu.run(l).unwrap();
        times.push((l.kernel, l.grid, t.elapsed().as_secs_f64()));
    };
    let out = query_shaped(&a, c, dtype, &vec![f32::NAN; b * h * tq * d]);
    let lse = Tensor::full(&a, &[b, h, tq], f32::NAN, DType::F32, Tag::Data).unwrap();
    run(&k::attention_forward(dtype, &call, strided(&out), ptr(&lse)).unwrap());
    assert_eq!(call.backward_workspace(), 4 * b * h * tq);
    let dvec = Tensor::full(&a, &[b, h, tq], f32::NAN, DType::F32, Tag::Workspace).unwrap();
    let grad = |t: usize| Tensor::full(&a, &[b, h, t, d], f32::NAN, dtype, Tag::Data).unwrap();
    let (dq, dk, dv) = (grad(tq), grad(tk), grad(tk));
    let [wq, wk, wv] = want;
    let grads = AttentionGrads { dq: wq.then(|| ptr(&dq)), dk: wk.then(|| ptr(&dk)), dv: wv.then(|| ptr(&dv)) };
    let launches =
        k::attention_backward(dtype, &call, strided(&out), strided(g), ptr(&lse), ptr(&dvec), grads).unwrap();
    assert_eq!(launches.len(), 1 + (wk || wv) as usize + wq as usize, "row dots, dK/dV if wanted, dQ if wanted");
    for l in &launches {
        run(l);
    }
    let v = |t: &Tensor| t.to_vec_f32().unwrap();
    Results { out: v(&out), lse: v(&lse), dvec: v(&dvec), dq: v(&dq), dk: v(&dk), dv: v(&dv), times }
}

/// Log-sum-exp of each query row's visible scores in f64 (+∞ when it sees
/// no key), from the stored inputs.
fn lse_f64(c: &Case, q: &[f32], k: &[f32], pad: Option<&[u8]>) -> Vec<f64> {
    let (tq, tk, d) = (c.tq, c.tk, c.d);
    let mut out = vec![];
    for bh in 0..c.b * c.h {
        let b = bh / c.h;
        for i in 0..tq {
            let qi = &q[(bh * tq + i) * d..][..d];
            let s: Vec<f64> = (0..tk)
                .filter(|&j| !(c.causal && j > i) && pad.is_none_or(|p| p[b * tk + j] == 0))
                .map(|j| {
                    let kj = &k[(bh * tk + j) * d..][..d];
                    c.scale() as f64 * qi.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>()
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            out.push(if s.is_empty() { f64::INFINITY } else { m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln() });
        }
    }
    out
}

/// Max |got − want| / max(max|want|, 1), asserting ≤ `tol`.
fn close(what: &str, got: &[f32], want: &[f32], tol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().filter(|w| w.is_finite()).fold(1f32, |m, w| m.max(w.abs()));
    let mut worst = 0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g == w {
            continue;
        }
        let e = (g - w).abs() / scale;
        assert!(g.is_finite() && e <= tol, "{what}[{i}]: got {g}, want {w} (error {e:.2e} of {scale})");
        worst = worst.max(e);
    }
    worst
}

/// Run `c` on the CPU op and on the kernels in both thread orders; compare.
/// Returns the worst relative errors of (output, dQ, dK, dV) and the kernels'
/// results.
fn check(c: &Case, dtype: DType) -> ([f32; 4], Results) {
    let a = Arena::host();
    let mut rng = Rng::new((c.tq * 1009 + c.tk * 31 + c.d) as u64);
    let x = inputs(&a, c, dtype, &mut rng);
    let pad_bits = c.pad_bits();
    let pad = pad_bits.as_ref().map(|p| Tensor::from_slice(&a, &[c.b, c.tk], p, Tag::Data).unwrap());
    let g = query_shaped(&a, c, dtype, &normal(&mut rng, c.b * c.h * c.tq * c.d));
    let opts = AttentionOptions { causal: c.causal, key_padding: pad.clone(), scale: c.scale, ..Default::default() };
    let want_out = attention(&x.q, &x.k, &x.v, &opts).unwrap();
    backward_with(&want_out, g.clone()).unwrap();
    let want_out = want_out.to_vec_f32().unwrap();
    let [want_dq, want_dk, want_dv] = x.grads(c.layout);

    let got = run_kernels(emulator(), c, dtype, &x, pad.as_ref(), &g);
    let rev = run_kernels(&emulator().with_order(Order::Reverse), c, dtype, &x, pad.as_ref(), &g);
    let what = format!("{c:?} {dtype}");
    assert!(got.bits() == rev.bits(), "{what}: forward and reverse thread orders differ");

    let t = tol(dtype);
    let errs = [
        close(&format!("{what} output"), &got.out, &want_out, t),
        close(&format!("{what} dQ"), &got.dq, &want_dq, t),
        close(&format!("{what} dK"), &got.dk, &want_dk, t),
        close(&format!("{what} dV"), &got.dv, &want_dv, t),
    ];
    // LSE and D against f64 sums over the same stored values.
    let (qv, kv) = (x.q.to_vec_f32().unwrap(), x.k.to_vec_f32().unwrap());
    let lse = lse_f64(c, &qv, &kv, pad_bits.as_deref());
    for (i, (&got, &want)) in got.lse.iter().zip(&lse).enumerate() {
        let ok = if want.is_infinite() {
            got == f32::INFINITY
        } else {
            (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs())
        };
        assert!(ok, "{what} lse[{i}]: got {got}, want {want}");
    }
    // D = rowsum(dO ∘ O) from the kernels' own O.
    let gv = g.to_vec_f32().unwrap();
    for (i, &got_d) in got.dvec.iter().enumerate() {
        let terms = got.out[i * c.d..][..c.d].iter().zip(&gv[i * c.d..][..c.d]).map(|(o, g)| *o as f64 * *g as f64);
        let (want, size) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
        assert!((got_d as f64 - want).abs() <= 1e-6 * (1.0 + size), "{what} D[{i}]: got {got_d}, want {want}");
    }
    (errs, got)
}

/// Check every case in every dtype; print the worst errors per dtype.
fn check_all(name: &str, cases: &[Case], dtypes: &[DType]) {
    emulator(); // built (once) before the clock starts
    let t = Instant::now();
    let mut line = String::new();
    for &dtype in dtypes {
        let mut worst = [0f32; 4];
        for c in cases {
            let (e, _) = check(c, dtype);
            for (w, e) in worst.iter_mut().zip(e) {
                *w = w.max(e);
            }
        }
        line += &format!(" {dtype} {:.1e}/{:.1e}/{:.1e}/{:.1e};", worst[0], worst[1], worst[2], worst[3]);
    }
    println!(
        "{name}: {} cases × {} dtypes × 2 orders in {:.1} s; worst error / max|want| (O/dQ/dK/dV):{line}",
        cases.len(),
        dtypes.len(),
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn self_attention_at_tile_multiples_and_edges() {
    check_all(
        "self-attention",
        &[
            // D ≤ 32: forward tiles 64 × 64, dK/dV 32 × 64, dQ 64 × 32; 64 rows fill them.
            case(1, 2, 64, 64, 32, false, Pad::No),
            case(1, 2, 64, 64, 32, true, Pad::No),
            // 70 = 64 + 6 rows; D = 16, under its bucket's 32.
            case(2, 1, 70, 70, 16, true, Pad::Tail(3)),
            case(2, 1, 70, 70, 16, false, Pad::Tail(3)),
            // D ≤ 64: forward tiles 64 × 32, backward 32 × 32.
            case(2, 1, 64, 64, 64, true, Pad::No),
            case(2, 1, 45, 45, 64, false, Pad::Tail(2)),
        ],
        &DTYPES,
    );
}

#[test]
fn cross_attention_with_tq_not_tk() {
    check_all(
        "cross-attention",
        &[
            // Batch 0 pads keys 60..100: the key tiles from 64 on are skipped whole.
            case(2, 1, 37, 100, 32, false, Pad::Tail(40)),
            // Causal with Tq > Tk: the queries from 37 on see every key.
            case(2, 1, 100, 37, 32, true, Pad::Tail(2)),
            // Causal with Tq < Tk: keys from 20 on are seen by no query (dK = dV = 0).
            case(1, 2, 20, 75, 64, true, Pad::No),
            case(2, 1, 1, 9, 16, false, Pad::Tail(2)),
            case(2, 1, 9, 1, 16, true, Pad::No),
        ],
        &DTYPES,
    );
}

#[test]
fn strided_views_of_packed_projections_and_a_custom_scale() {
    let packed = |c: Case, scale| Case { layout: Layout::Packed, scale, ..c };
    check_all(
        "packed views",
        &[
            packed(case(2, 2, 50, 50, 32, true, Pad::Tail(5)), Some(0.5)),
            packed(case(1, 2, 33, 70, 20, false, Pad::No), None),
        ],
        &DTYPES,
    );
}

#[test]
fn head_dims_up_to_128() {
    check_all(
        "D 100 and 128",
        &[case(1, 2, 40, 35, 128, true, Pad::Tail(3)), case(2, 1, 17, 33, 100, false, Pad::Tail(4))],
        &DTYPES,
    );
}

#[test]
fn rows_that_see_no_key_are_zero_not_nan() {
    // Batch 1 fully padded; and under a causal mask with batch 1's key 0
    // padded, its query 0 sees nothing.
    for c in [case(2, 1, 20, 20, 16, false, Pad::Batch1), case(2, 1, 20, 20, 16, true, Pad::Tail(2))] {
        for dtype in [DType::F32, DType::F16] {
            let (_, r) = check(&c, dtype);
            let rows: Vec<usize> = if c.pad == Pad::Batch1 { (c.tq..2 * c.tq).collect() } else { vec![c.tq] };
            for i in rows {
                let (o, dq) = (&r.out[i * c.d..][..c.d], &r.dq[i * c.d..][..c.d]);
                assert!(o.iter().chain(dq).all(|&x| x == 0.0), "{c:?} {dtype}: row {i} is not zero");
                assert_eq!(r.lse[i], f32::INFINITY, "{c:?} {dtype}: lse of row {i}");
            }
            if c.pad == Pad::Batch1 {
                assert!(
                    r.dk[c.tk * c.d..].iter().chain(&r.dv[c.tk * c.d..]).all(|&x| x == 0.0),
                    "{c:?} {dtype}: dK, dV"
                );
            }
        }
    }
}

#[test]
fn launch_table_rows_per_block_match_the_kernel_tiles() {
    let src = headroom::kernels::SOURCES.iter().find(|(n, _)| *n == "attention.cu").unwrap().1;
    for dm in [32, 64, 128] {
        let start = src.find(&format!("struct Tiles<{dm}> {{")).expect("a Tiles<DM> specialisation");
        let body = &src[start..start + src[start..].find('}').unwrap()];
        let get = |name: &str| -> u32 {
            let rest = body.split(&format!("{name} = ")).nth(1).unwrap_or_else(|| panic!("{name} in Tiles<{dm}>"));
            rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
        };
        for (kernel, tile) in
            [("attention_fwd", "FWD_Q"), ("attention_bwd_dkdv", "DKV_K"), ("attention_bwd_dq", "DQ_Q")]
        {
            for dt in ["f32", "f16", "bf16"] {
                let s = k::spec_of(&format!("{kernel}_d{dm}_{dt}")).unwrap();
                assert_eq!(s.grid, Grid::Tiles { rows_per_block: get(tile) }, "{} vs Tiles<{dm}>::{tile}", s.kernel);
                assert_eq!(s.block, 128, "{}: the kernels assume 16 × 8 threads", s.kernel);
            }
        }
    }
    let dots: Vec<_> = LAUNCH.iter().filter(|s| s.kernel.starts_with("attention_row_dots")).collect();
    assert_eq!(dots.len(), 3);
    for s in dots {
        // One thread per row.
        assert_eq!((s.block, s.grid), (128, Grid::Tiles { rows_per_block: 128 }), "{}", s.kernel);
    }
    // 70 query rows in tiles of 64, two (batch, head) pairs.
    let strides = [70 * 16, 70 * 16, 16, 1];
    let op = Strided { ptr: 0, strides: &strides };
    let call = Attention {
        batch: 2,
        heads: 1,
        tq: 70,
        tk: 70,
        d: 16,
        scale: 0.25,
        causal: false,
        q: op,
        k: op,
        v: op,
        key_padding: None,
    };
    let l = k::attention_forward(DType::F16, &call, op, 0).unwrap();
    assert_eq!((l.kernel, l.grid, l.block, l.smem), ("attention_fwd_d32_f16", [2, 2, 1], [128, 1, 1], 0));
}

#[test]
fn bad_calls_are_errors_naming_the_kernel_shapes_and_fix() {
    let dense = |t: usize, d: usize| [t * d, t * d, d, 1];
    let s64 = dense(10, 64);
    let op = Strided { ptr: 0, strides: &s64 };
    let call = Attention {
        batch: 1,
        heads: 1,
        tq: 10,
        tk: 10,
        d: 64,
        scale: 0.125,
        causal: true,
        q: op,
        k: op,
        v: op,
        key_padding: None,
    };
    let err = |r: headroom::Result<k::Launch>| r.unwrap_err().to_string();
    let s129 = dense(10, 129);
    let wide = Strided { ptr: 0, strides: &s129 };
    let e = err(k::attention_forward(DType::F16, &Attention { d: 129, q: wide, k: wide, v: wide, ..call }, wide, 0));
    assert!(e.contains("attention_fwd") && e.contains("head dimension 129") && e.contains("more heads"), "{e}");
    let cols = [640, 640, 1, 10]; // a transposed view: rows are not dense
    let t = Strided { ptr: 0, strides: &cols };
    let e = err(k::attention_forward(DType::F16, &Attention { k: t, ..call }, op, 0));
    assert!(e.contains("attention_fwd_d64_f16") && e.contains("k has strides") && e.contains("contiguous"), "{e}");
    assert!(e.contains("q [1, 1, 10, 64], k and v [1, 1, 10, 64]"), "{e}");
    let e = err(k::attention_backward_dq(DType::F32, &Attention { batch: 70_000, ..call }, op, 0, 0, 0));
    assert!(e.contains("attention_bwd_dq_d64_f32") && e.contains("65535"), "{e}");
    let e = err(k::attention_row_dots(DType::U8, &call, op, op, 0));
    assert!(e.contains("f32, f16 or bf16"), "{e}");
    let e = err(k::attention_backward_dkdv(DType::BF16, &Attention { scale: f32::NAN, ..call }, op, 0, 0, None, None));
    assert!(e.contains("attention_bwd_dkdv_d64_bf16") && e.contains("scale NaN"), "{e}");
}

#[test]
fn a_missing_barrier_makes_the_forward_wrong() {
    // Between the online softmax (which turns the score tile into P) and
    // P·V: without it, threads multiply scores that are not yet probabilities.
    const BARRIER: &str = "__syncthreads();  // P and α are ready";
    let sources: Vec<(&str, String)> = headroom::kernels::SOURCES
        .iter()
        .filter(|(n, _)| n.starts_with("harness/") || *n == "common.cuh" || *n == "attention.cu")
        .map(|&(n, t)| {
            if n == "attention.cu" {
                assert_eq!(t.matches(BARRIER).count(), 1);
                (n, t.replacen(BARRIER, "/* barrier removed */", 1))
            } else {
                (n, t.to_string())
            }
        })
        .collect();
    let borrowed: Vec<(&str, &str)> = sources.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let broken = Emulator::from_sources(&borrowed).unwrap();
    let c = case(1, 1, 20, 20, 16, false, Pad::No);
    let a = Arena::host();
    let mut rng = Rng::new(9);
    let x = inputs(&a, &c, DType::F32, &mut rng);
    let g = query_shaped(&a, &c, DType::F32, &normal(&mut rng, c.tq * c.d));
    let want = run_kernels(emulator(), &c, DType::F32, &x, None, &g).out;
    for order in [Order::Forward, Order::Reverse] {
        let got = run_kernels(&broken.with_order(order), &c, DType::F32, &x, None, &g).out;
        // NaN counts as wrong.
        let wrong = got.iter().zip(&want).filter(|(g, w)| (*g - *w).abs().is_nan() || (*g - *w).abs() > 1e-4).count();
        println!("without the barrier, {order:?}: {wrong} of {} outputs wrong", want.len());
        assert!(wrong > 0, "{order:?}: the harness did not catch the missing __syncthreads");
    }
}

#[test]
fn only_the_gradients_asked_for_are_written() {
    let c = case(2, 1, 30, 41, 32, true, Pad::Tail(3));
    let a = Arena::host();
    let mut rng = Rng::new(11);
    let x = inputs(&a, &c, DType::F16, &mut rng);
    let pad = Tensor::from_slice(&a, &[c.b, c.tk], &c.pad_bits().unwrap(), Tag::Data).unwrap();
    let g = query_shaped(&a, &c, DType::F16, &normal(&mut rng, c.b * c.h * c.tq * c.d));
    let all = run_kernels(emulator(), &c, DType::F16, &x, Some(&pad), &g);
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    let untouched = |a: &[f32]| a.iter().all(|x| x.is_nan());
    for want in [[false, false, true], [false, true, false], [true, false, false]] {
        let r = run_some(emulator(), &c, DType::F16, &x, Some(&pad), &g, want);
        for (w, (got, full), name) in
            [(want[0], (&r.dq, &all.dq), "dQ"), (want[1], (&r.dk, &all.dk), "dK"), (want[2], (&r.dv, &all.dv), "dV")]
        {
            assert!(if w { same(got, full) } else { untouched(got) }, "{want:?}: {name}");
        }
    }
}

#[test]
fn emulator_timings() {
    // Figures for the report: the harness's cost per launch (f16, D = 64).
    let c = case(1, 2, 128, 128, 64, true, Pad::No);
    let a = Arena::host();
    let mut rng = Rng::new(10);
    let x = inputs(&a, &c, DType::F16, &mut rng);
    let g = query_shaped(&a, &c, DType::F16, &normal(&mut rng, 2 * 128 * 64));
    let r = run_kernels(emulator(), &c, DType::F16, &x, None, &g);
    for (kernel, grid, s) in r.times {
        println!("emulator: {kernel} B·H = 2, T = 128, causal, grid {grid:?} × 128 threads: {:.0} ms", s * 1e3);
    }
}
