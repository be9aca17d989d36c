//! Matrix products. One f32 GEMM entry point with arbitrary row and column
//! strides, so transposed operands are read in place, never materialised.

/// A strided matrix operand: element (i, j) is at `offset + i*rs + j*cs`.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

/// `C = A·B (+ C if accumulate)` for an m×k A and k×n B, all f32.
///
/// # Safety
/// Every element the layouts address must lie inside its slice.
pub fn gemm_f32(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    la: Layout,
    b: &[f32],
    lb: Layout,
    c: &mut [f32],
    lc: Layout,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |l: Layout, r: usize, cl: usize| l.offset + r.saturating_sub(1) * l.rs + cl.saturating_sub(1) * l.cs;
    assert!(k == 0 || (last(la, m, k) < a.len() && last(lb, k, n) < b.len()), "gemm operand out of range");
    assert!(last(lc, m, n) < c.len(), "gemm output out of range");
    let beta = if accumulate { 1.0 } else { 0.0 };
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr().add(la.offset),
            la.rs as isize,
            la.cs as isize,
            b.as_ptr().add(lb.offset),
            lb.rs as isize,
            lb.cs as isize,
            beta,
            c.as_mut_ptr().add(lc.offset),
            lc.rs as isize,
            lc.cs as isize,
        );
    }
}
