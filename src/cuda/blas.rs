//! Matrix products on the GPU: one row-major description ([`Gemm`], what
//! the ops have), its translation to cuBLAS's column-major
//! `cublasGemmStridedBatchedEx` arguments ([`Cublas`]), and a reference
//! implementation of that cuBLAS contract ([`reference`]) that the emulator
//! runs — so the translation, the part that is easy to get wrong, is tested
//! on machines with no GPU.
//!
//! Row-major `C = A·B` is column-major `Cᵀ = Bᵀ·Aᵀ`: cuBLAS's first operand
//! is our B, its second our A, and a row-major matrix with dense rows is its
//! own transpose seen column-major, so transposed views cost nothing.

use crate::error::{Error, Result};
use crate::tensor::DType;
use half::{bf16, f16};

/// Bytes of cuBLAS scratch each product gets, from the arena (tag
/// Workspace) so plans count it: NVIDIA recommends 32 MiB on Hopper; 4 MiB
/// covers the split-K kernels of the shapes our models have.
pub const WORKSPACE: usize = 4 << 20;

/// One operand of a batched product: element (i, j) of matrix b is at
/// `ptr + (b·batch_stride + i·rs + j·cs)·size`; one of rs, cs must be 1
/// (or its dimension 1). `batch_stride` 0 broadcasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    pub ptr: u64,
    pub rs: usize,
    pub cs: usize,
    pub batch_stride: usize,
}

/// `C[b] = A[b]·B[b] (+ C[b])` for `batch` row-major products of m×k by k×n,
/// all of `dtype`, accumulated in f32. C's rows are dense (`c_rs` apart).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub dtype: DType,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub a: Operand,
    pub b: Operand,
    pub c: u64,
    pub c_rs: usize,
    pub c_batch_stride: usize,
    pub accumulate: bool,
}

/// cuBLAS's `cublasOperation_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    N,
    T,
}

/// The arguments of `cublasGemmStridedBatchedEx` (column-major).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cublas {
    pub transa: Op,
    pub transb: Op,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    pub stride_a: usize,
    pub b: u64,
    pub ldb: usize,
    pub stride_b: usize,
    pub c: u64,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
    pub beta: f32,
    pub dtype: DType,
}

/// How cuBLAS reads a row-major `rows × cols` operand as the transpose it
/// needs: `N` with ld = the row stride when rows are dense, else `T` with
/// ld = the column stride when columns are dense.
fn operand(what: &str, o: &Operand, rows: usize, cols: usize) -> Result<(Op, usize)> {
    let dense_rows = o.cs == 1 || cols <= 1;
    let dense_cols = o.rs == 1 || rows <= 1;
    if dense_rows && (o.rs >= cols.max(1) || rows <= 1) {
        return Ok((Op::N, if rows <= 1 { cols.max(1) } else { o.rs }));
    }
    if dense_cols && (o.cs >= rows.max(1) || cols <= 1) {
        return Ok((Op::T, if cols <= 1 { rows.max(1) } else { o.cs }));
    }
    Err(Error::cuda(
        "gemm",
        format!(
            "{what} [{rows}, {cols}] with strides ({}, {}): cuBLAS needs dense rows or dense columns; make it contiguous first",
            o.rs, o.cs
        ),
    ))
}

impl Cublas {
    pub fn new(g: &Gemm) -> Result<Cublas> {
        if g.m > i32::MAX as usize || g.n > i32::MAX as usize || g.k > i32::MAX as usize || g.batch > i32::MAX as usize
        {
            return Err(Error::cuda("gemm", format!("{g:?}: cuBLAS takes sizes below 2^31; split the product")));
        }
        let (transa, lda) = operand("B", &g.b, g.k, g.n)?;
        let (transb, ldb) = operand("A", &g.a, g.m, g.k)?;
        Ok(Cublas {
            transa,
            transb,
            m: g.n,
            n: g.m,
            k: g.k,
            a: g.b.ptr,
            lda,
            stride_a: g.b.batch_stride,
            b: g.a.ptr,
            ldb,
            stride_b: g.a.batch_stride,
            c: g.c,
            ldc: g.c_rs.max(g.n).max(1),
            stride_c: g.c_batch_stride,
            batch: g.batch,
            beta: if g.accumulate { 1.0 } else { 0.0 },
            dtype: g.dtype,
        })
    }
}

impl From<Op> for cudarc::cublas::sys::cublasOperation_t {
    fn from(o: Op) -> Self {
        match o {
            Op::N => cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
            Op::T => cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
        }
    }
}

/// cuBLAS's data type for a storage dtype.
pub fn data_type(d: DType) -> Result<cudarc::cublas::sys::cudaDataType> {
    use cudarc::cublas::sys::cudaDataType as T;
    match d {
        DType::F32 => Ok(T::CUDA_R_32F),
        DType::F16 => Ok(T::CUDA_R_16F),
        DType::BF16 => Ok(T::CUDA_R_16BF),
        d => Err(Error::dtype("gemm", format!("cuBLAS products take f32, f16 or bf16, not {d}"))),
    }
}

/// What `cublasGemmStridedBatchedEx` computes (alpha 1, f32 accumulation),
/// on memory the host can address: the emulator's engine.
///
/// # Safety
/// Every element the arguments address must be inside a live allocation.
pub unsafe fn reference(c: &Cublas) -> Result<()> {
    match c.dtype {
        DType::F32 => reference_t::<f32>(c, |v| v, |v| v),
        DType::F16 => reference_t::<f16>(c, f16::to_f32, f16::from_f32),
        DType::BF16 => reference_t::<bf16>(c, bf16::to_f32, bf16::from_f32),
        d => return Err(Error::dtype("gemm", format!("cuBLAS products take f32, f16 or bf16, not {d}"))),
    }
    Ok(())
}

unsafe fn reference_t<T: Copy>(c: &Cublas, load: fn(T) -> f32, store: fn(f32) -> T) {
    let (a, b, out) = (c.a as *const T, c.b as *const T, c.c as *mut T);
    // Column-major element (i, j) of op(X), X with leading dimension ld.
    let at = |x: *const T, op: Op, ld: usize, i: usize, j: usize| match op {
        Op::N => load(*x.add(i + j * ld)),
        Op::T => load(*x.add(j + i * ld)),
    };
    for bt in 0..c.batch {
        let (ab, bb, cb) = (a.add(bt * c.stride_a), b.add(bt * c.stride_b), out.add(bt * c.stride_c));
        for j in 0..c.n {
            for i in 0..c.m {
                let mut acc = 0.0f32;
                for p in 0..c.k {
                    acc += at(ab, c.transa, c.lda, i, p) * at(bb, c.transb, c.ldb, p, j);
                }
                let dst = cb.add(i + j * c.ldc);
                let prev = if c.beta != 0.0 { c.beta * load(*dst) } else { 0.0 };
                *dst = store(acc + prev);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row-major product by definition, for checking the translation.
    fn naive(
        a: &[f32],
        ars: usize,
        acs: usize,
        b: &[f32],
        brs: usize,
        bcs: usize,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * ars + p * acs] * b[p * brs + j * bcs]).sum();
            }
        }
        c
    }

    #[test]
    fn the_translation_computes_the_row_major_product_for_every_layout() {
        let (m, k, n) = (3, 4, 5);
        let a: Vec<f32> = (0..m * k).map(|v| v as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..k * n).map(|v| (v % 7) as f32 - 3.0).collect();
        // (rs, cs) of A as a dense [m, k] or a transposed view of a dense [k, m]; same for B.
        for (ars, acs) in [(k, 1), (1, m)] {
            for (brs, bcs) in [(n, 1), (1, k)] {
                // Lay the values out so element (i, p) is at i·ars + p·acs.
                let mut av = vec![0.0; m * k];
                for i in 0..m {
                    for p in 0..k {
                        av[i * ars + p * acs] = a[i * k + p];
                    }
                }
                let mut bv = vec![0.0; k * n];
                for p in 0..k {
                    for j in 0..n {
                        bv[p * brs + j * bcs] = b[p * n + j];
                    }
                }
                let mut c = vec![1.0f32; m * n];
                let g = Gemm {
                    dtype: DType::F32,
                    m,
                    n,
                    k,
                    batch: 1,
                    a: Operand { ptr: av.as_ptr() as u64, rs: ars, cs: acs, batch_stride: 0 },
                    b: Operand { ptr: bv.as_ptr() as u64, rs: brs, cs: bcs, batch_stride: 0 },
                    c: c.as_mut_ptr() as u64,
                    c_rs: n,
                    c_batch_stride: 0,
                    accumulate: true,
                };
                unsafe { reference(&Cublas::new(&g).unwrap()).unwrap() };
                let want: Vec<f32> = naive(&a, k, 1, &b, n, 1, m, k, n).iter().map(|v| v + 1.0).collect();
                assert_eq!(c, want, "A ({ars}, {acs}), B ({brs}, {bcs})");
            }
        }
    }

    #[test]
    fn operands_with_neither_dense_rows_nor_columns_are_refused() {
        let o = Operand { ptr: 0, rs: 8, cs: 2, batch_stride: 0 };
        let e = operand("A", &o, 3, 4).unwrap_err().to_string();
        assert!(e.contains("contiguous"), "{e}");
    }
}
