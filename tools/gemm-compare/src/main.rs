//! matrixmultiply against gemm, single thread, on the shapes headroom runs.
//!
//! Each round times both libraries on the same inputs, alternating which
//! goes first; the figure per case is the median over rounds of the paired
//! ratio t(matrixmultiply) / t(gemm), so drift on a shared machine cancels.
//! matrixmultiply has no f16: its f16 time includes widening A and B to f32
//! and narrowing C back, as headroom does. Prints a markdown table.
//!
//! `cargo run --release --manifest-path tools/gemm-compare/Cargo.toml [-- ROUNDS]`
//! (add `--features x86-v4` for gemm's AVX-512 build).

use half::f16;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// C = A·B, both row-major.
    AB,
    /// C = Aᵀ·B: A stored [k, m].
    AtB,
    /// C = A·Bᵀ: B stored [n, k].
    ABt,
}

struct Case {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    layout: Layout,
    half: bool,
}

/// Row and column strides of A (m×k) and B (k×n) as stored.
fn strides(c: &Case) -> ((isize, isize), (isize, isize)) {
    let (m, k, n) = (c.m as isize, c.k as isize, c.n as isize);
    match c.layout {
        Layout::AB => ((k, 1), (n, 1)),
        Layout::AtB => ((1, m), (n, 1)),
        Layout::ABt => ((k, 1), (1, k)),
    }
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn mm_f32(c: &Case, a: &[f32], b: &[f32], out: &mut [f32]) {
    let ((rsa, csa), (rsb, csb)) = strides(c);
    unsafe {
        matrixmultiply::sgemm(
            c.m,
            c.k,
            c.n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            0.0,
            out.as_mut_ptr(),
            c.n as isize,
            1,
        )
    }
}

fn gemm_any<T: 'static + Copy>(c: &Case, a: &[T], b: &[T], out: &mut [T], zero: T, one: T) {
    let ((rsa, csa), (rsb, csb)) = strides(c);
    unsafe {
        gemm::gemm(
            c.m,
            c.n,
            c.k,
            out.as_mut_ptr(),
            1,
            c.n as isize,
            false,
            a.as_ptr(),
            csa,
            rsa,
            b.as_ptr(),
            csb,
            rsb,
            zero,
            one,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Inputs and outputs of one case, in both storage types.
struct Buffers {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    a16: Vec<f16>,
    b16: Vec<f16>,
    c16: Vec<f16>,
    c16_gemm: Vec<f16>,
    c_gemm: Vec<f32>,
}

fn run_mm(case: &Case, x: &mut Buffers) {
    if case.half {
        // Widen, multiply in f32, narrow: what headroom's f16 matmul does.
        for (w, h) in x.a.iter_mut().zip(&x.a16) {
            *w = h.to_f32();
        }
        for (w, h) in x.b.iter_mut().zip(&x.b16) {
            *w = h.to_f32();
        }
        mm_f32(case, &x.a, &x.b, &mut x.c);
        for (h, w) in x.c16.iter_mut().zip(&x.c) {
            *h = f16::from_f32(*w);
        }
    } else {
        mm_f32(case, &x.a, &x.b, &mut x.c);
    }
}

fn run_gemm(case: &Case, x: &mut Buffers) {
    if case.half {
        gemm_any(case, &x.a16, &x.b16, &mut x.c16_gemm, f16::ZERO, f16::ONE);
    } else {
        gemm_any(case, &x.a, &x.b, &mut x.c_gemm, 0.0, 1.0);
    }
}

/// Seconds per call, over `reps` calls.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']));
    model.unwrap_or("unknown CPU").to_string()
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(41);
    let cases = [
        Case { name: "f32 1024³", m: 1024, k: 1024, n: 1024, layout: Layout::AB, half: false },
        Case { name: "f32 4096×256×1024", m: 4096, k: 256, n: 1024, layout: Layout::AB, half: false },
        Case { name: "f32 4096×1024×256", m: 4096, k: 1024, n: 256, layout: Layout::AB, half: false },
        Case { name: "f32 2048×512×512 Aᵀ·B", m: 2048, k: 512, n: 512, layout: Layout::AtB, half: false },
        Case { name: "f32 2048×512×512 A·Bᵀ", m: 2048, k: 512, n: 512, layout: Layout::ABt, half: false },
        Case { name: "f16 1024³", m: 1024, k: 1024, n: 1024, layout: Layout::AB, half: true },
        Case { name: "f16 4096×256×1024", m: 4096, k: 256, n: 1024, layout: Layout::AB, half: true },
        Case { name: "f16 256×64×256", m: 256, k: 64, n: 256, layout: Layout::AB, half: true },
    ];
    let v4 = cfg!(feature = "x86-v4");
    println!(
        "{}; gemm 0.19 {} build; single thread; {rounds} rounds",
        cpu_model(),
        if v4 { "x86-v4" } else { "default" }
    );
    println!("(m×k×n; ratio = t(matrixmultiply) / t(gemm), median of paired rounds; > 1 means gemm is faster)\n");
    println!("| case | matrixmultiply GFLOP/s | gemm GFLOP/s | gemm speed ÷ matrixmultiply | max |Δ| / max |C| | repeatable |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for case in &cases {
        let (m, k, n) = (case.m, case.k, case.n);
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let a16: Vec<f16> = a.iter().map(|&v| f16::from_f32(v)).collect();
        let b16: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
        // Both libraries see the same (f16-rounded, for f16 cases) values.
        let (a, b) = if case.half {
            (a16.iter().map(|h| h.to_f32()).collect(), b16.iter().map(|h| h.to_f32()).collect())
        } else {
            (a, b)
        };
        let mut x = Buffers {
            a,
            b,
            c: vec![0.0; m * n],
            a16,
            b16,
            c16: vec![f16::ZERO; m * n],
            c16_gemm: vec![f16::ZERO; m * n],
            c_gemm: vec![0.0; m * n],
        };
        // Warm up both, then size each timing to about 20 ms.
        let one = time(1, || run_mm(case, &mut x)).max(time(1, || run_gemm(case, &mut x)));
        let reps = ((0.02 / one).ceil() as usize).max(1);
        let first = (x.c.clone(), x.c_gemm.clone(), x.c16.clone(), x.c16_gemm.clone());
        let (mut ratios, mut t_mm, mut t_gemm) = (vec![], vec![], vec![]);
        for r in 0..rounds {
            let (tm, tg) = if r % 2 == 0 {
                let tm = time(reps, || run_mm(case, &mut x));
                (tm, time(reps, || run_gemm(case, &mut x)))
            } else {
                let tg = time(reps, || run_gemm(case, &mut x));
                (time(reps, || run_mm(case, &mut x)), tg)
            };
            ratios.push(tm / tg);
            t_mm.push(tm);
            t_gemm.push(tg);
        }
        let repeatable = first == (x.c.clone(), x.c_gemm.clone(), x.c16.clone(), x.c16_gemm.clone());
        let (got, want): (Vec<f32>, Vec<f32>) = if case.half {
            (x.c16_gemm.iter().map(|h| h.to_f32()).collect(), x.c16.iter().map(|h| h.to_f32()).collect())
        } else {
            (x.c_gemm.clone(), x.c.clone())
        };
        let scale = want.iter().fold(0f32, |s, v| s.max(v.abs()));
        let diff = got.iter().zip(&want).fold(0f32, |s, (g, w)| s.max((g - w).abs()));
        let flops = 2.0 * (m * k * n) as f64;
        println!(
            "| {} | {:.1} | {:.1} | {:.2}× | {:.1e} | {} |",
            case.name,
            flops / median(t_mm) / 1e9,
            flops / median(t_gemm) / 1e9,
            median(ratios),
            diff / scale,
            if repeatable { "yes" } else { "NO" }
        );
    }
}
