//! What a launch is, for the GPU and the CPU harness alike: the one table of
//! launch assumptions ([`LAUNCH`]: block size, grid rule, dynamic shared
//! memory per kernel), kernel arguments ([`KernelArg`], passed the way
//! cuLaunchKernel takes them), and the builders that turn an op's operands
//! into a [`Launch`]. The resource tests read the same table, so what ptxas
//! is checked against is what the launches do.

use crate::cpu::conv::Geom;
use crate::cpu::pool::PoolGeom;
use crate::error::{Error, Result};
use crate::tensor::DType;
use std::ffi::c_void;

/// Largest rank the strided kernels take (after merging dimensions).
pub const MAX_RANK: usize = 6;

/// Output shape and the two inputs' strides in elements (0 = broadcast), by
/// value. Layout = `struct Broadcast` in kernels/elementwise.cu (152 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Broadcast {
    pub shape: [i64; MAX_RANK],
    pub a: [i64; MAX_RANK],
    pub b: [i64; MAX_RANK],
    pub rank: i32,
    pub pad: i32,
}
const _: () = assert!(std::mem::size_of::<Broadcast>() == 152);

// SAFETY: plain integers, repr(C), the same layout as the CUDA struct.
unsafe impl cudarc::driver::DeviceRepr for Broadcast {}

/// A sliding window's 3-d geometry (pools and convolutions; 1-d and 2-d are
/// 3-d with size-1 dims), by value. Layout = `struct Window` in
/// kernels/window.cuh (80 bytes). Build it with [`Window::pool`] or
/// [`Window::conv`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Channels of big and small (convolutions; 0 for the pools).
    pub c: i32,
    pub o: i32,
    pub big: [i32; 3],
    pub small: [i32; 3],
    pub k: [i32; 3],
    pub stride: [i32; 3],
    pub pad: [i32; 3],
    pub dil: [i32; 3],
}
const _: () = assert!(std::mem::size_of::<Window>() == 80);

/// Output positions `p0 .. p0 + n` of one sample and the box of input
/// coordinates they reach (`lo .. lo + len` per dim), by value. Layout =
/// `struct ConvTile` in kernels/window.cuh (32 bytes). Build it with [`ConvTile::new`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTile {
    pub p0: i32,
    pub n: i32,
    pub lo: [i32; 3],
    pub len: [i32; 3],
}
const _: () = assert!(std::mem::size_of::<ConvTile>() == 32);

// SAFETY: plain integers, repr(C), the same layouts as the CUDA structs.
unsafe impl cudarc::driver::DeviceRepr for Window {}
unsafe impl cudarc::driver::DeviceRepr for ConvTile {}

/// Shapes, strides in elements (batch, head, row; the last stride is 1) and
/// settings of one fused attention call, by value. Layout = `struct
/// AttnDims` in kernels/attention.cu (152 bytes); `g` is the output gradient.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnDims {
    pub q: [i64; 3],
    pub k: [i64; 3],
    pub v: [i64; 3],
    pub o: [i64; 3],
    pub g: [i64; 3],
    pub batch: i32,
    pub heads: i32,
    pub tq: i32,
    pub tk: i32,
    pub d: i32,
    pub causal: i32,
    pub scale: f32,
    pub reserved: i32,
}
const _: () = assert!(std::mem::size_of::<AttnDims>() == 152);

// SAFETY: plain numbers, repr(C), the same layout as the CUDA struct.
unsafe impl cudarc::driver::DeviceRepr for AttnDims {}

/// One kernel argument. The payload is stored at its natural alignment, and
/// [`KernelArg::as_ptr`] points at it: `&[KernelArg]` → pointers is exactly
/// cuLaunchKernel's `void** kernelParams` (and the harness's `hr_launch`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelArg {
    /// A device address (on the harness: a host address).
    Ptr(u64),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
    Broadcast(Broadcast),
    Window(Window),
    ConvTile(ConvTile),
    AttnDims(AttnDims),
}

impl KernelArg {
    /// Address of the value, for the launch's argument array.
    pub fn as_ptr(&self) -> *mut c_void {
        match self {
            KernelArg::Ptr(v) | KernelArg::U64(v) => v as *const u64 as *mut c_void,
            KernelArg::I32(v) => v as *const i32 as *mut c_void,
            KernelArg::U32(v) => v as *const u32 as *mut c_void,
            KernelArg::I64(v) => v as *const i64 as *mut c_void,
            KernelArg::F32(v) => v as *const f32 as *mut c_void,
            KernelArg::F64(v) => v as *const f64 as *mut c_void,
            KernelArg::Broadcast(v) => v as *const Broadcast as *mut c_void,
            KernelArg::Window(v) => v as *const Window as *mut c_void,
            KernelArg::ConvTile(v) => v as *const ConvTile as *mut c_void,
            KernelArg::AttnDims(v) => v as *const AttnDims as *mut c_void,
        }
    }
    /// Bytes of the value: what the kernel's parameter must take.
    pub fn size(&self) -> usize {
        match self {
            KernelArg::I32(_) | KernelArg::U32(_) | KernelArg::F32(_) => 4,
            KernelArg::Ptr(_) | KernelArg::U64(_) | KernelArg::I64(_) | KernelArg::F64(_) => 8,
            KernelArg::Broadcast(_) => std::mem::size_of::<Broadcast>(),
            KernelArg::Window(_) => std::mem::size_of::<Window>(),
            KernelArg::ConvTile(_) => std::mem::size_of::<ConvTile>(),
            KernelArg::AttnDims(_) => std::mem::size_of::<AttnDims>(),
        }
    }
}

// The same list launches on a GPU: `builder.arg(&karg)` for each argument.
// SAFETY: every arm forwards to cudarc's own impl for a DeviceRepr value that
// lives as long as the borrowed KernelArg.
unsafe impl<'a, 'b: 'a> cudarc::driver::PushKernelArg<&'b KernelArg> for cudarc::driver::LaunchArgs<'a> {
    #[inline(always)]
    fn arg(&mut self, arg: &'b KernelArg) -> &mut Self {
        match arg {
            KernelArg::Ptr(v) | KernelArg::U64(v) => self.arg(v),
            KernelArg::I32(v) => self.arg(v),
            KernelArg::U32(v) => self.arg(v),
            KernelArg::I64(v) => self.arg(v),
            KernelArg::F32(v) => self.arg(v),
            KernelArg::F64(v) => self.arg(v),
            KernelArg::Broadcast(v) => self.arg(v),
            KernelArg::Window(v) => self.arg(v),
            KernelArg::ConvTile(v) => self.arg(v),
            KernelArg::AttnDims(v) => self.arg(v),
        }
    }
}

/// How a kernel's grid is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grid {
    /// A grid-stride loop over `n` elements, `per_thread` per iteration:
    /// `min(ceil(n / (block · per_thread)), MAX_BLOCKS)` blocks.
    Elements { per_thread: u32 },
    /// One block per row.
    Rows,
    /// One block.
    Single,
    /// Rows cut into at most `max_blocks` runs of consecutive rows, one
    /// block each (per-block partial sums that a second kernel adds).
    RowRuns { max_blocks: u32 },
    /// One block per `block · per_thread` elements of each tensor of a
    /// multi-tensor table (kernels/optim.cu).
    Tensors { per_thread: u32 },
    /// Tiles of rows of every (batch, head): `(ceil(rows / rows_per_block),
    /// B·H)` blocks; the kernel's tile must have `rows_per_block` rows.
    Tiles { rows_per_block: u32 },
}

/// The dynamic shared memory a kernel's launch gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Smem {
    None,
    /// The row as f32 (4 bytes per column) while `cols ≤ max_cols`; longer
    /// rows get none and the kernel streams from global memory.
    RowF32 {
        max_cols: u32,
    },
}

impl Smem {
    /// Bytes for a row of `cols` (0 when the kernel streams instead).
    pub fn bytes(self, cols: usize) -> u32 {
        match self {
            Smem::None => 0,
            Smem::RowF32 { max_cols } if cols <= max_cols as usize => 4 * cols as u32,
            Smem::RowF32 { .. } => 0,
        }
    }
    /// The most any launch asks for.
    pub fn max_bytes(self) -> u32 {
        match self {
            Smem::None => 0,
            Smem::RowF32 { max_cols } => 4 * max_cols,
        }
    }
}

/// Shared memory a block may have without opting in (cuFuncSetAttribute):
/// 48 KiB on every architecture.
pub const SMEM_DEFAULT_LIMIT: u32 = 48 * 1024;

/// Cap on grid-stride grids: a few waves on the largest GPUs (132 SMs × 8
/// blocks of 256), and few blocks for the CPU harness.
pub const MAX_BLOCKS: u32 = 4096;

/// A kernel's launch assumptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The `extern "C"` name.
    pub kernel: &'static str,
    /// Its file under kernels/.
    pub file: &'static str,
    /// Threads per block (1-d blocks; multiples of 32 for the reductions).
    pub block: u32,
    pub grid: Grid,
    pub smem: Smem,
    /// Static + dynamic shared memory must stay under this.
    pub smem_limit: u32,
}

const fn spec(kernel: &'static str, file: &'static str, block: u32, grid: Grid, smem: Smem) -> LaunchSpec {
    LaunchSpec { kernel, file, block, grid, smem, smem_limit: SMEM_DEFAULT_LIMIT }
}

const EW: &str = "elementwise.cu";
const RD: &str = "reduce.cu";
const LSTM: &str = "lstm.cu";
const CTC: &str = "ctc.cu";
const POOL: &str = "pool.cu";
const CONV: &str = "conv.cu";
const PAIRS: Grid = Grid::Elements { per_thread: 2 };
const ONE: Grid = Grid::Elements { per_thread: 1 };
// Rows up to 8192 columns stay in shared memory (32 KiB).
const ROW_CACHE: Smem = Smem::RowF32 { max_cols: 8192 };
const NORM: &str = "norm.cu";
const LOSS: &str = "loss.cu";
const EMB: &str = "embedding.cu";
const DROP: &str = "dropout.cu";
const OPT: &str = "optim.cu";
// Layer norm backward: up to 256 blocks of partial sums, about two per SM on
// a 132-SM H100; the workspace is 2·256·cols f32s at most.
const LN_RUNS: Grid = Grid::RowRuns { max_blocks: 256 };
// Multi-tensor chunks of 256 threads × 4 = 1024 elements.
const CHUNKS: Grid = Grid::Tensors { per_thread: 4 };
const AT: &str = "attention.cu";
const fn tiles(rows_per_block: u32) -> Grid {
    Grid::Tiles { rows_per_block }
}
// Attention: 128 threads, static shared memory only. The rows per block are
// the kernels' owned tiles (`Tiles<DM>` in kernels/attention.cu: FWD_Q,
// DKV_K, DQ_Q per head-dim bucket DM = 32, 64, 128); see [`attention_forward`].
const ATTN: u32 = 128;

/// Every kernel and how it is launched.
pub const LAUNCH: &[LaunchSpec] = &[
    spec("binary_f32", EW, 256, ONE, Smem::None),
    spec("binary_f16", EW, 256, ONE, Smem::None),
    spec("binary_bf16", EW, 256, ONE, Smem::None),
    spec("binary_dense_f32", EW, 256, PAIRS, Smem::None),
    spec("binary_dense_f16", EW, 256, PAIRS, Smem::None),
    spec("binary_dense_bf16", EW, 256, PAIRS, Smem::None),
    spec("unary_f32", EW, 256, PAIRS, Smem::None),
    spec("unary_f16", EW, 256, PAIRS, Smem::None),
    spec("unary_bf16", EW, 256, PAIRS, Smem::None),
    spec("unary_grad_f32", EW, 256, PAIRS, Smem::None),
    spec("unary_grad_f16", EW, 256, PAIRS, Smem::None),
    spec("unary_grad_bf16", EW, 256, PAIRS, Smem::None),
    spec("cast_f32_f16", EW, 256, PAIRS, Smem::None),
    spec("cast_f32_bf16", EW, 256, PAIRS, Smem::None),
    spec("cast_f16_f32", EW, 256, PAIRS, Smem::None),
    spec("cast_bf16_f32", EW, 256, PAIRS, Smem::None),
    spec("cast_f16_bf16", EW, 256, PAIRS, Smem::None),
    spec("cast_bf16_f16", EW, 256, PAIRS, Smem::None),
    spec("scale_f32", EW, 256, PAIRS, Smem::None),
    spec("scale_f16", EW, 256, PAIRS, Smem::None),
    spec("scale_bf16", EW, 256, PAIRS, Smem::None),
    spec("copy_strided_b1", EW, 256, ONE, Smem::None),
    spec("copy_strided_b2", EW, 256, ONE, Smem::None),
    spec("copy_strided_b4", EW, 256, ONE, Smem::None),
    spec("select_f32", EW, 256, ONE, Smem::None),
    spec("select_f16", EW, 256, ONE, Smem::None),
    spec("select_bf16", EW, 256, ONE, Smem::None),
    spec("affine_f32", EW, 256, PAIRS, Smem::None),
    spec("affine_f16", EW, 256, PAIRS, Smem::None),
    spec("affine_bf16", EW, 256, PAIRS, Smem::None),
    spec("sum_last_f32", RD, 256, Grid::Rows, Smem::None),
    spec("sum_last_f16", RD, 256, Grid::Rows, Smem::None),
    spec("sum_last_bf16", RD, 256, Grid::Rows, Smem::None),
    spec("softmax_f32", RD, 256, Grid::Rows, ROW_CACHE),
    spec("softmax_f16", RD, 256, Grid::Rows, ROW_CACHE),
    spec("softmax_bf16", RD, 256, Grid::Rows, ROW_CACHE),
    spec("log_softmax_f32", RD, 256, Grid::Rows, ROW_CACHE),
    spec("log_softmax_f16", RD, 256, Grid::Rows, ROW_CACHE),
    spec("log_softmax_bf16", RD, 256, Grid::Rows, ROW_CACHE),
    spec("softmax_grad_f32", RD, 256, Grid::Rows, Smem::None),
    spec("softmax_grad_f16", RD, 256, Grid::Rows, Smem::None),
    spec("softmax_grad_bf16", RD, 256, Grid::Rows, Smem::None),
    spec("log_softmax_grad_f32", RD, 256, Grid::Rows, Smem::None),
    spec("log_softmax_grad_f16", RD, 256, Grid::Rows, Smem::None),
    spec("log_softmax_grad_bf16", RD, 256, Grid::Rows, Smem::None),
    // Training ops (builders in src/cuda/kernels/training.rs).
    spec("layer_norm_f32", NORM, 256, Grid::Rows, ROW_CACHE),
    spec("layer_norm_f16", NORM, 256, Grid::Rows, ROW_CACHE),
    spec("layer_norm_bf16", NORM, 256, Grid::Rows, ROW_CACHE),
    spec("layer_norm_backward_f32", NORM, 256, LN_RUNS, Smem::None),
    spec("layer_norm_backward_f16", NORM, 256, LN_RUNS, Smem::None),
    spec("layer_norm_backward_bf16", NORM, 256, LN_RUNS, Smem::None),
    spec("layer_norm_backward_sums_f32", NORM, 256, ONE, Smem::None),
    spec("layer_norm_backward_sums_f16", NORM, 256, ONE, Smem::None),
    spec("layer_norm_backward_sums_bf16", NORM, 256, ONE, Smem::None),
    spec("cross_entropy_f32", LOSS, 256, Grid::Rows, ROW_CACHE),
    spec("cross_entropy_f16", LOSS, 256, Grid::Rows, ROW_CACHE),
    spec("cross_entropy_bf16", LOSS, 256, Grid::Rows, ROW_CACHE),
    spec("cross_entropy_mean_f32", LOSS, 256, Grid::Single, Smem::None),
    spec("cross_entropy_mean_f16", LOSS, 256, Grid::Single, Smem::None),
    spec("cross_entropy_mean_bf16", LOSS, 256, Grid::Single, Smem::None),
    spec("cross_entropy_backward_f32", LOSS, 256, Grid::Rows, Smem::None),
    spec("cross_entropy_backward_f16", LOSS, 256, Grid::Rows, Smem::None),
    spec("cross_entropy_backward_bf16", LOSS, 256, Grid::Rows, Smem::None),
    spec("embedding_f32", EMB, 128, Grid::Rows, Smem::None),
    spec("embedding_f16", EMB, 128, Grid::Rows, Smem::None),
    spec("embedding_bf16", EMB, 128, Grid::Rows, Smem::None),
    spec("embedding_sort_pass", EMB, 256, ONE, Smem::None),
    spec("embedding_backward_f32", EMB, 128, Grid::Rows, Smem::None),
    spec("embedding_backward_f16", EMB, 128, Grid::Rows, Smem::None),
    spec("embedding_backward_bf16", EMB, 128, Grid::Rows, Smem::None),
    spec("dropout_f32", DROP, 256, ONE, Smem::None),
    spec("dropout_f16", DROP, 256, ONE, Smem::None),
    spec("dropout_bf16", DROP, 256, ONE, Smem::None),
    spec("adamw_f32", OPT, 256, CHUNKS, Smem::None),
    spec("adamw_f16", OPT, 256, CHUNKS, Smem::None),
    spec("adamw_bf16", OPT, 256, CHUNKS, Smem::None),
    spec("sum_squares_f32", OPT, 256, CHUNKS, Smem::None),
    spec("sum_squares_f16", OPT, 256, CHUNKS, Smem::None),
    spec("sum_squares_bf16", OPT, 256, CHUNKS, Smem::None),
    spec("grad_norm", OPT, 1024, Grid::Single, Smem::None),
    // Sequence and vision ops: LSTM cell, CTC, pooling, convolution tiles.
    spec("lstm_cell_f32", LSTM, 256, ONE, Smem::None),
    spec("lstm_cell_f16", LSTM, 256, ONE, Smem::None),
    spec("lstm_cell_bf16", LSTM, 256, ONE, Smem::None),
    spec("lstm_cell_grad_f32", LSTM, 256, ONE, Smem::None),
    spec("lstm_cell_grad_f16", LSTM, 256, ONE, Smem::None),
    spec("lstm_cell_grad_bf16", LSTM, 256, ONE, Smem::None),
    // One block per sample, threads over the 2S+1 states (striding past 256).
    spec("ctc_forward_f32", CTC, 256, Grid::Rows, Smem::None),
    spec("ctc_forward_f16", CTC, 256, Grid::Rows, Smem::None),
    spec("ctc_forward_bf16", CTC, 256, Grid::Rows, Smem::None),
    spec("ctc_mean_f32", CTC, 256, Grid::Rows, Smem::None),
    spec("ctc_mean_f16", CTC, 256, Grid::Rows, Smem::None),
    spec("ctc_mean_bf16", CTC, 256, Grid::Rows, Smem::None),
    spec("ctc_backward_f32", CTC, 256, Grid::Rows, Smem::None),
    spec("ctc_backward_f16", CTC, 256, Grid::Rows, Smem::None),
    spec("ctc_backward_bf16", CTC, 256, Grid::Rows, Smem::None),
    spec("max_pool_f32", POOL, 256, ONE, Smem::None),
    spec("max_pool_f16", POOL, 256, ONE, Smem::None),
    spec("max_pool_bf16", POOL, 256, ONE, Smem::None),
    spec("max_pool_grad_f32", POOL, 256, ONE, Smem::None),
    spec("max_pool_grad_f16", POOL, 256, ONE, Smem::None),
    spec("max_pool_grad_bf16", POOL, 256, ONE, Smem::None),
    spec("avg_pool_f32", POOL, 256, ONE, Smem::None),
    spec("avg_pool_f16", POOL, 256, ONE, Smem::None),
    spec("avg_pool_bf16", POOL, 256, ONE, Smem::None),
    spec("avg_pool_grad_f32", POOL, 256, ONE, Smem::None),
    spec("avg_pool_grad_f16", POOL, 256, ONE, Smem::None),
    spec("avg_pool_grad_bf16", POOL, 256, ONE, Smem::None),
    spec("im2col_f32", CONV, 256, ONE, Smem::None),
    spec("im2col_f16", CONV, 256, ONE, Smem::None),
    spec("im2col_bf16", CONV, 256, ONE, Smem::None),
    spec("col2im_f32", CONV, 256, ONE, Smem::None),
    spec("conv_tile_in_f32", CONV, 256, ONE, Smem::None),
    spec("conv_tile_in_f16", CONV, 256, ONE, Smem::None),
    spec("conv_tile_in_bf16", CONV, 256, ONE, Smem::None),
    spec("conv_tile_out_f32", CONV, 256, ONE, Smem::None),
    spec("conv_tile_out_f16", CONV, 256, ONE, Smem::None),
    spec("conv_tile_out_bf16", CONV, 256, ONE, Smem::None),
    spec("conv_bias_grad_f32", CONV, 256, Grid::Rows, Smem::None),
    spec("conv_bias_grad_f16", CONV, 256, Grid::Rows, Smem::None),
    spec("conv_bias_grad_bf16", CONV, 256, Grid::Rows, Smem::None),
    spec("attention_fwd_d32_f32", AT, ATTN, tiles(64), Smem::None),
    spec("attention_fwd_d64_f32", AT, ATTN, tiles(64), Smem::None),
    spec("attention_fwd_d128_f32", AT, ATTN, tiles(32), Smem::None),
    spec("attention_fwd_d32_f16", AT, ATTN, tiles(64), Smem::None),
    spec("attention_fwd_d64_f16", AT, ATTN, tiles(64), Smem::None),
    spec("attention_fwd_d128_f16", AT, ATTN, tiles(32), Smem::None),
    spec("attention_fwd_d32_bf16", AT, ATTN, tiles(64), Smem::None),
    spec("attention_fwd_d64_bf16", AT, ATTN, tiles(64), Smem::None),
    spec("attention_fwd_d128_bf16", AT, ATTN, tiles(32), Smem::None),
    spec("attention_row_dots_f32", AT, ROW_DOTS_ROWS, tiles(ROW_DOTS_ROWS), Smem::None),
    spec("attention_row_dots_f16", AT, ROW_DOTS_ROWS, tiles(ROW_DOTS_ROWS), Smem::None),
    spec("attention_row_dots_bf16", AT, ROW_DOTS_ROWS, tiles(ROW_DOTS_ROWS), Smem::None),
    spec("attention_bwd_dkdv_d32_f32", AT, ATTN, tiles(64), Smem::None),
    spec("attention_bwd_dkdv_d64_f32", AT, ATTN, tiles(32), Smem::None),
    spec("attention_bwd_dkdv_d128_f32", AT, ATTN, tiles(16), Smem::None),
    spec("attention_bwd_dkdv_d32_f16", AT, ATTN, tiles(64), Smem::None),
    spec("attention_bwd_dkdv_d64_f16", AT, ATTN, tiles(32), Smem::None),
    spec("attention_bwd_dkdv_d128_f16", AT, ATTN, tiles(16), Smem::None),
    spec("attention_bwd_dkdv_d32_bf16", AT, ATTN, tiles(64), Smem::None),
    spec("attention_bwd_dkdv_d64_bf16", AT, ATTN, tiles(32), Smem::None),
    spec("attention_bwd_dkdv_d128_bf16", AT, ATTN, tiles(16), Smem::None),
    spec("attention_bwd_dq_d32_f32", AT, ATTN, tiles(64), Smem::None),
    spec("attention_bwd_dq_d64_f32", AT, ATTN, tiles(32), Smem::None),
    spec("attention_bwd_dq_d128_f32", AT, ATTN, tiles(16), Smem::None),
    spec("attention_bwd_dq_d32_f16", AT, ATTN, tiles(64), Smem::None),
    spec("attention_bwd_dq_d64_f16", AT, ATTN, tiles(32), Smem::None),
    spec("attention_bwd_dq_d128_f16", AT, ATTN, tiles(16), Smem::None),
    spec("attention_bwd_dq_d32_bf16", AT, ATTN, tiles(64), Smem::None),
    spec("attention_bwd_dq_d64_bf16", AT, ATTN, tiles(32), Smem::None),
    spec("attention_bwd_dq_d128_bf16", AT, ATTN, tiles(16), Smem::None),
];

/// The table entry for `kernel`.
pub fn spec_of(kernel: &str) -> Result<&'static LaunchSpec> {
    LAUNCH
        .iter()
        .find(|s| s.kernel == kernel)
        .ok_or_else(|| Error::cuda(kernel, "no such kernel in cuda::kernels::LAUNCH; add its launch assumptions there"))
}

/// A ready launch: kernel, shape and arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub kernel: &'static str,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
    pub args: Vec<KernelArg>,
}

impl LaunchSpec {
    /// A grid-stride launch over `n` elements.
    fn elements(&'static self, n: usize, args: Vec<KernelArg>) -> Result<Launch> {
        let Grid::Elements { per_thread } = self.grid else {
            return Err(Error::cuda(self.kernel, format!("launched over elements but its grid is {:?}", self.grid)));
        };
        let per_block = self.block as usize * per_thread as usize;
        let blocks = n.div_ceil(per_block).clamp(1, MAX_BLOCKS as usize) as u32;
        Ok(Launch { kernel: self.kernel, grid: [blocks, 1, 1], block: [self.block, 1, 1], smem: 0, args })
    }
    /// One block per row of `cols`.
    fn rows(&'static self, rows: usize, cols: usize, args: Vec<KernelArg>) -> Result<Launch> {
        if rows == 0 || rows > i32::MAX as usize {
            return Err(Error::cuda(self.kernel, format!("{rows} rows: one block per row needs 1..=2^31-1 rows")));
        }
        let smem = self.smem.bytes(cols);
        Ok(Launch { kernel: self.kernel, grid: [rows as u32, 1, 1], block: [self.block, 1, 1], smem, args })
    }
    /// `blocks` blocks, for the grid rules whose count the builder works out.
    #[allow(clippy::result_large_err)] // the crate's Error, as for its siblings
    fn blocks(&'static self, blocks: usize, args: Vec<KernelArg>) -> Result<Launch> {
        if blocks == 0 || blocks > i32::MAX as usize {
            return Err(Error::cuda(self.kernel, format!("{blocks} blocks: a launch needs 1..=2^31-1")));
        }
        Ok(Launch { kernel: self.kernel, grid: [blocks as u32, 1, 1], block: [self.block, 1, 1], smem: 0, args })
    }
    /// Tiles of `rows` rows for each of `bh` (batch, head) pairs: at least
    /// one block along x, so empty lengths still launch (and do nothing).
    fn tiles(&'static self, rows: usize, bh: usize, args: Vec<KernelArg>) -> Result<Launch> {
        let Grid::Tiles { rows_per_block } = self.grid else {
            return Err(Error::cuda(self.kernel, format!("launched over row tiles but its grid is {:?}", self.grid)));
        };
        let x = rows.div_ceil(rows_per_block as usize).max(1);
        if bh == 0 || bh > 65535 || x > i32::MAX as usize {
            return Err(Error::cuda(
                self.kernel,
                format!(
                    "{rows} rows × {bh} (batch, head) pairs: the grid is (row tiles, B·H) and CUDA allows \
                     1..=65535 along y; split the batch into several launches"
                ),
            ));
        }
        let grid = [x as u32, bh as u32, 1];
        Ok(Launch { kernel: self.kernel, grid, block: [self.block, 1, 1], smem: self.smem.bytes(0), args })
    }
}

/// Binary op codes: `enum BinaryOp` in kernels/elementwise.cu.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
}

/// Unary op codes: `enum UnaryOp` in kernels/elementwise.cu.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg = 0,
    Exp = 1,
    Log = 2,
    Sqrt = 3,
    Relu = 4,
    Gelu = 5,
    Silu = 6,
    Tanh = 7,
    Sigmoid = 8,
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 9] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::Silu,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
    ];
    /// Whether the gradient kernel takes the forward output (else the input),
    /// as src/ops/elementwise.rs saves it.
    pub fn grad_takes_output(self) -> bool {
        matches!(self, UnaryOp::Exp | UnaryOp::Sqrt | UnaryOp::Tanh | UnaryOp::Sigmoid)
    }
}

mod training;
pub use training::*;

/// "f32", "f16" or "bf16": the kernels' name suffix.
pub fn suffix(op: &str, dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        d => Err(Error::dtype(
            "cuda",
            format!("{op}: the CUDA kernels take f32, f16 or bf16, not {d}; convert with to_dtype first"),
        )),
    }
}

fn named(base: &str, dtype: DType) -> Result<&'static LaunchSpec> {
    spec_of(&format!("{base}_{}", suffix(base, dtype)?))
}

fn len_arg(n: usize) -> KernelArg {
    KernelArg::I64(n as i64)
}

/// One strided operand: the address of its first element and its strides in
/// elements, already broadcast to the output shape (0 where broadcast).
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a> {
    pub ptr: u64,
    pub strides: &'a [usize],
}

impl Broadcast {
    /// Drop size-1 dimensions and merge dimensions that are contiguous in
    /// both operands, so most views fit in `MAX_RANK`.
    pub fn new(op: &str, shape: &[usize], a: &[usize], b: &[usize]) -> Result<Broadcast> {
        let mut dims: Vec<(i64, i64, i64)> = vec![];
        for ((&n, &sa), &sb) in shape.iter().zip(a).zip(b) {
            if n == 1 {
                continue;
            }
            let (n, sa, sb) = (n as i64, sa as i64, sb as i64);
            match dims.last_mut() {
                // The outer dim steps exactly over the inner one in both.
                Some(last) if last.1 == sa * n && last.2 == sb * n => *last = (last.0 * n, sa, sb),
                _ => dims.push((n, sa, sb)),
            }
        }
        if dims.len() > MAX_RANK {
            return Err(Error::shape(
                "cuda",
                format!(
                    "{op}: shape {shape:?} with strides {a:?} and {b:?} has {} dimensions after merging; the kernel takes {MAX_RANK}; make an operand contiguous first",
                    dims.len()
                ),
            ));
        }
        let mut bc =
            Broadcast { shape: [1; MAX_RANK], a: [0; MAX_RANK], b: [0; MAX_RANK], rank: dims.len() as i32, pad: 0 };
        for (d, (n, sa, sb)) in dims.into_iter().enumerate() {
            (bc.shape[d], bc.a[d], bc.b[d]) = (n, sa, sb);
        }
        Ok(bc)
    }
}

fn dense(shape: &[usize], strides: &[usize]) -> bool {
    let mut want = 1;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n != 1 && s != want {
            return false;
        }
        want *= n;
    }
    true
}

/// `out = a op b` over `shape` (out dense): the dense kernel when both
/// inputs are dense in that shape, else the strided one.
pub fn binary(op: BinaryOp, dtype: DType, shape: &[usize], a: Strided, b: Strided, out: u64) -> Result<Launch> {
    let n: usize = shape.iter().product();
    let code = KernelArg::I32(op as i32);
    if dense(shape, a.strides) && dense(shape, b.strides) {
        let args = vec![KernelArg::Ptr(a.ptr), KernelArg::Ptr(b.ptr), KernelArg::Ptr(out), len_arg(n), code];
        return named("binary_dense", dtype)?.elements(n, args);
    }
    let bc = Broadcast::new("binary", shape, a.strides, b.strides)?;
    let args = vec![
        KernelArg::Ptr(a.ptr),
        KernelArg::Ptr(b.ptr),
        KernelArg::Ptr(out),
        KernelArg::Broadcast(bc),
        len_arg(n),
        code,
    ];
    named("binary", dtype)?.elements(n, args)
}

/// One side of a [`select`]: a strided tensor or a scalar.
#[derive(Clone, Copy, Debug)]
pub enum Side<'a> {
    Tensor(Strided<'a>),
    Scalar(f32),
}

/// `out = cond ? a : b` over `shape` (out dense), `cond` u8, each side a
/// broadcast tensor or a scalar (masked_fill, where_cond).
pub fn select(dtype: DType, shape: &[usize], cond: Strided, a: Side, b: Side, out: u64) -> Result<Launch> {
    let n: usize = shape.iter().product();
    let zeros = vec![0; shape.len()];
    let parts = |s: Side<'_>| match s {
        Side::Tensor(t) => (t.ptr, t.strides.to_vec(), 0.0),
        Side::Scalar(v) => (0, zeros.clone(), v),
    };
    let ((pa, sa, va), (pb, sb, vb)) = (parts(a), parts(b));
    let bc = Broadcast::new("select", shape, &sa, &sb)?;
    let bcc = Broadcast::new("select", shape, cond.strides, &zeros)?;
    let args = vec![
        KernelArg::Ptr(cond.ptr),
        KernelArg::Ptr(pa),
        KernelArg::Ptr(pb),
        KernelArg::Ptr(out),
        KernelArg::Broadcast(bc),
        KernelArg::Broadcast(bcc),
        len_arg(n),
        KernelArg::F32(va),
        KernelArg::F32(vb),
    ];
    named("select", dtype)?.elements(n, args)
}

/// `y = op(x)`, both dense with `n` elements.
pub fn unary(op: UnaryOp, dtype: DType, x: u64, y: u64, n: usize) -> Result<Launch> {
    let args = vec![KernelArg::Ptr(x), KernelArg::Ptr(y), len_arg(n), KernelArg::I32(op as i32)];
    named("unary", dtype)?.elements(n, args)
}

/// `dx = op'(v) · g`; `v` is the forward output when
/// `op.grad_takes_output()`, else the forward input.
pub fn unary_grad(op: UnaryOp, dtype: DType, v: u64, g: u64, dx: u64, n: usize) -> Result<Launch> {
    let args = vec![KernelArg::Ptr(v), KernelArg::Ptr(g), KernelArg::Ptr(dx), len_arg(n), KernelArg::I32(op as i32)];
    named("unary_grad", dtype)?.elements(n, args)
}

/// `y = x` converted from `from` to `to` (different float dtypes).
pub fn cast(from: DType, to: DType, x: u64, y: u64, n: usize) -> Result<Launch> {
    let name = format!("cast_{}_{}", suffix("cast", from)?, suffix("cast", to)?);
    spec_of(&name)?.elements(n, vec![KernelArg::Ptr(x), KernelArg::Ptr(y), len_arg(n)])
}

/// `x *= s` in place.
pub fn scale(dtype: DType, x: u64, n: usize, s: f32) -> Result<Launch> {
    named("scale", dtype)?.elements(n, vec![KernelArg::Ptr(x), len_arg(n), KernelArg::F32(s)])
}

/// `out = src` read through `strides` (in elements) over `shape`, out dense;
/// elements of `width` bytes (1, 2 or 4).
pub fn copy_strided(width: usize, shape: &[usize], strides: &[usize], src: u64, out: u64) -> Result<Launch> {
    copy_strided_to(width, shape, strides, src, &crate::tensor::contiguous_strides(shape), out)
}

/// `out` viewed through `out_strides` = `src` read through `strides`, over
/// `shape` (a copy into a strided view: a slice of a gradient, a part of a
/// concatenation). The destination view must not overlap itself.
pub fn copy_strided_to(
    width: usize,
    shape: &[usize],
    strides: &[usize],
    src: u64,
    out_strides: &[usize],
    out: u64,
) -> Result<Launch> {
    let n: usize = shape.iter().product();
    let kernel = match width {
        1 => "copy_strided_b1",
        2 => "copy_strided_b2",
        4 => "copy_strided_b4",
        w => return Err(Error::cuda("copy_strided", format!("elements of {w} bytes; the kernels copy 1, 2 or 4"))),
    };
    let bc = Broadcast::new("copy_strided", shape, strides, out_strides)?;
    let args = vec![KernelArg::Ptr(src), KernelArg::Ptr(out), KernelArg::Broadcast(bc), len_arg(n)];
    spec_of(kernel)?.elements(n, args)
}

/// `y = a·x + b`, both dense with `n` elements.
pub fn affine(dtype: DType, x: u64, y: u64, n: usize, a: f32, b: f32) -> Result<Launch> {
    let args = vec![KernelArg::Ptr(x), KernelArg::Ptr(y), len_arg(n), KernelArg::F32(a), KernelArg::F32(b)];
    named("affine", dtype)?.elements(n, args)
}

/// `out[r] = scale · Σ_c x[r, c]` for dense `[rows, cols]`.
pub fn sum_last(dtype: DType, x: u64, out: u64, rows: usize, cols: usize, scale: f32) -> Result<Launch> {
    let args = vec![KernelArg::Ptr(x), KernelArg::Ptr(out), len_arg(cols), KernelArg::F32(scale)];
    named("sum_last", dtype)?.rows(rows, cols, args)
}

/// Softmax (or log-softmax) of each row of dense `[rows, cols]`.
pub fn softmax(log: bool, dtype: DType, x: u64, y: u64, rows: usize, cols: usize) -> Result<Launch> {
    let s = named(if log { "log_softmax" } else { "softmax" }, dtype)?;
    let cache = s.smem.bytes(cols) > 0;
    let args = vec![KernelArg::Ptr(x), KernelArg::Ptr(y), len_arg(cols), KernelArg::I32(cache as i32)];
    s.rows(rows, cols, args)
}

/// Gradient of softmax (or log-softmax) rows from the forward output `y`.
pub fn softmax_grad(log: bool, dtype: DType, y: u64, dy: u64, dx: u64, rows: usize, cols: usize) -> Result<Launch> {
    let s = named(if log { "log_softmax_grad" } else { "softmax_grad" }, dtype)?;
    s.rows(rows, cols, vec![KernelArg::Ptr(y), KernelArg::Ptr(dy), KernelArg::Ptr(dx), len_arg(cols)])
}

fn opt_ptr(p: Option<u64>) -> KernelArg {
    KernelArg::Ptr(p.unwrap_or(0)) // the kernels read null as "absent"
}

/// Each `(name, value)` as an i32, or an error naming the kernel: the
/// kernels index within a plane, a row or a sample in 32 bits.
fn int32(kernel: &str, what: &str, values: &[(&str, usize)]) -> Result<Vec<i32>> {
    values
        .iter()
        .map(|&(name, v)| {
            i32::try_from(v).map_err(|_| {
                Error::cuda(
                    kernel,
                    format!("{what}: {name} = {v} exceeds 2^31 - 1, the kernel's 32-bit index; split the batch or the tensor"),
                )
            })
        })
        .collect()
}

// ---- LSTM cell ---------------------------------------------------------------------

/// Device buffers of one LSTM cell step ([`lstm_cell`]): dense, one dtype,
/// gates `[B, 4H]` (blocks i, f, g, o of H per row), states `[B, H]`.
#[derive(Clone, Copy, Debug)]
pub struct LstmCell {
    /// In: x·W_ihᵀ (from cuBLAS). Out: the activated gates, as the CPU saves them.
    pub gates: u64,
    /// h·W_hhᵀ; None when the GEMMs already accumulated it into `gates`.
    pub gh: Option<u64>,
    /// `[4H]` each.
    pub b_ih: Option<u64>,
    pub b_hh: Option<u64>,
    /// The previous cell state.
    pub c: u64,
    pub h_out: u64,
    pub c_out: u64,
}

/// Device buffers of one LSTM cell's backward ([`lstm_cell_grad`]).
#[derive(Clone, Copy, Debug)]
pub struct LstmCellGrad {
    /// The activated gates the forward wrote, `[B, 4H]`.
    pub gates: u64,
    /// The previous cell state `[B, H]`.
    pub c: u64,
    /// Gradients of h' and c' (None = 0).
    pub dh: Option<u64>,
    pub dc: Option<u64>,
    /// Out: pre-activation gradients `[B, 4H]`.
    pub dgates: u64,
    /// Out, when wanted: the gradient of c `[B, H]`.
    pub dc_prev: Option<u64>,
}

/// `hidden` as the kernels' i32, checked so that 4·hidden (a gate row) fits too.
fn lstm_hidden(kernel: &str, batch: usize, hidden: usize) -> Result<KernelArg> {
    int32(kernel, &format!("LSTM cell of batch {batch}, hidden {hidden}"), &[("4·hidden", 4 * hidden)])?;
    Ok(KernelArg::I32(hidden as i32))
}

/// The cell's pointwise forward (src/cpu/lstm.rs `forward`): biases,
/// nonlinearities, `c' = f·c + i·g`, `h' = o·tanh(c')`; one thread per
/// element of `[batch, hidden]`.
pub fn lstm_cell(dtype: DType, batch: usize, hidden: usize, b: &LstmCell) -> Result<Launch> {
    let s = named("lstm_cell", dtype)?;
    let h = lstm_hidden(s.kernel, batch, hidden)?;
    let args = vec![
        KernelArg::Ptr(b.gates),
        opt_ptr(b.gh),
        opt_ptr(b.b_ih),
        opt_ptr(b.b_hh),
        KernelArg::Ptr(b.c),
        KernelArg::Ptr(b.h_out),
        KernelArg::Ptr(b.c_out),
        len_arg(batch),
        h,
    ];
    s.elements(batch * hidden, args)
}

/// The cell's pointwise backward (src/cpu/lstm.rs `backward`): dgates and
/// dc_prev from the saved gates and c; the weight and input gradients are
/// cuBLAS GEMMs of dgates.
pub fn lstm_cell_grad(dtype: DType, batch: usize, hidden: usize, b: &LstmCellGrad) -> Result<Launch> {
    let s = named("lstm_cell_grad", dtype)?;
    let h = lstm_hidden(s.kernel, batch, hidden)?;
    let args = vec![
        KernelArg::Ptr(b.gates),
        KernelArg::Ptr(b.c),
        opt_ptr(b.dh),
        opt_ptr(b.dc),
        KernelArg::Ptr(b.dgates),
        opt_ptr(b.dc_prev),
        len_arg(batch),
        h,
    ];
    s.elements(batch * hidden, args)
}

// ---- CTC loss ----------------------------------------------------------------------

/// Sizes of one CTC loss: log_probs `[frames, batch, classes]`, padded
/// targets `[batch, s_max]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtcShape {
    pub frames: usize,
    pub batch: usize,
    pub classes: usize,
    pub s_max: usize,
    pub blank: usize,
}

/// Device buffers of one CTC loss, all dense: `log_probs` in the compute
/// dtype; `targets` `[B, S]`, `input_lengths` and `target_lengths` `[B]`
/// i32 (checked by the op: lengths within the shape, labels in `[0, C)` and
/// not blank); `nll` `[B]` f32, written by the forward, read by the rest.
#[derive(Clone, Copy, Debug)]
pub struct CtcBuffers {
    pub log_probs: u64,
    pub targets: u64,
    pub input_lengths: u64,
    pub target_lengths: u64,
    pub nll: u64,
}

/// CTC workspace in elements, exactly what the CPU op (src/ops/ctc.rs)
/// asks the arena for, with L = 2·s_max + 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtcWorkspace {
    /// Forward: two alpha rows per sample, `B·2·L` f32.
    pub forward_f32: usize,
    /// Backward: alpha and beta of every frame, `B·2·T·L` f32.
    pub backward_f32: usize,
    /// Backward: label chains, `B·2·max(S, 1)` i32.
    pub backward_i32: usize,
}

/// The workspace [`ctc_forward`] and [`ctc_backward`] take.
pub fn ctc_workspace(p: &CtcShape) -> CtcWorkspace {
    let ext = 2 * p.s_max + 1;
    CtcWorkspace {
        forward_f32: p.batch * 2 * ext,
        backward_f32: p.batch * 2 * p.frames * ext,
        backward_i32: p.batch * 2 * p.s_max.max(1),
    }
}

impl CtcShape {
    fn args(&self, kernel: &str) -> Result<[KernelArg; 5]> {
        let what = format!(
            "CTC over log_probs [{}, {}, {}] and targets [{}, {}]",
            self.frames, self.batch, self.classes, self.batch, self.s_max
        );
        if self.blank >= self.classes {
            return Err(Error::cuda(kernel, format!("{what}: blank {} is not a class", self.blank)));
        }
        let v = int32(
            kernel,
            &what,
            &[
                ("frames", self.frames),
                ("batch", self.batch),
                ("classes", self.classes),
                ("s_max", self.s_max),
                ("blank", self.blank),
                ("2·s_max + 1", 2 * self.s_max + 1),
            ],
        )?;
        Ok([v[0], v[1], v[2], v[3], v[4]].map(KernelArg::I32))
    }
}

/// Each sample's −log p into `nll` (0 for an impossible one when
/// `zero_infinity`, else +∞); `ws` holds `ctc_workspace(p).forward_f32`.
/// One block per sample. Follow with [`ctc_mean`].
pub fn ctc_forward(dtype: DType, p: &CtcShape, b: &CtcBuffers, zero_infinity: bool, ws: u64) -> Result<Launch> {
    let s = named("ctc_forward", dtype)?;
    let [_, batch, classes, s_max, blank] = p.args(s.kernel)?;
    let args = vec![
        KernelArg::Ptr(b.log_probs),
        KernelArg::Ptr(b.targets),
        KernelArg::Ptr(b.input_lengths),
        KernelArg::Ptr(b.target_lengths),
        batch,
        classes,
        s_max,
        blank,
        KernelArg::I32(zero_infinity as i32),
        KernelArg::Ptr(b.nll),
        KernelArg::Ptr(ws),
    ];
    s.rows(p.batch, 2 * p.s_max + 1, args)
}

/// The loss `[]` (dtype): `Σ_b nll[b] / max(S_b, 1) / B`, one block.
pub fn ctc_mean(dtype: DType, batch: usize, nll: u64, target_lengths: u64, loss: u64) -> Result<Launch> {
    let s = named("ctc_mean", dtype)?;
    let b = int32(s.kernel, "CTC mean", &[("batch", batch)])?[0];
    if b == 0 {
        return Err(Error::cuda(s.kernel, "a batch of 0 samples has no mean; skip the loss"));
    }
    let args = vec![KernelArg::Ptr(nll), KernelArg::Ptr(target_lengths), KernelArg::Ptr(loss), KernelArg::I32(b)];
    s.rows(1, batch, args)
}

/// `grad` (log_probs' shape and dtype) `= −γ·g/(B·max(S_b, 1))`, the true
/// derivative with respect to log_probs as src/ops/ctc.rs documents (not
/// PyTorch's `exp(lp) − γ`), 0 past each input length and for a sample
/// whose nll is not finite. `grad_loss` is the loss's incoming gradient (a
/// device scalar of the dtype); `ws` and `chain` hold
/// `ctc_workspace(p).backward_f32` f32 and `.backward_i32` i32.
pub fn ctc_backward(
    dtype: DType,
    p: &CtcShape,
    b: &CtcBuffers,
    grad_loss: u64,
    grad: u64,
    ws: u64,
    chain: u64,
) -> Result<Launch> {
    let s = named("ctc_backward", dtype)?;
    let [frames, batch, classes, s_max, blank] = p.args(s.kernel)?;
    let args = vec![
        KernelArg::Ptr(b.log_probs),
        KernelArg::Ptr(b.targets),
        KernelArg::Ptr(b.input_lengths),
        KernelArg::Ptr(b.target_lengths),
        frames,
        batch,
        classes,
        s_max,
        blank,
        KernelArg::Ptr(b.nll),
        KernelArg::Ptr(grad_loss),
        KernelArg::Ptr(grad),
        KernelArg::Ptr(ws),
        KernelArg::Ptr(chain),
    ];
    s.rows(p.batch, 2 * p.s_max + 1, args)
}

// ---- pooling -----------------------------------------------------------------------

impl Window {
    /// A pool's geometry (dilation 1, no channels: planes are counted apart).
    pub fn pool(kernel: &str, g: &PoolGeom) -> Result<Window> {
        let what = format!("pool of {:?} -> {:?}, kernel {:?}", g.big, g.small, g.k);
        int32(kernel, &what, &[("input plane", g.big_len()), ("output plane", g.small_len()), ("window", g.kvol())])?;
        let v = |a: [usize; 3]| a.map(|x| x as i32);
        Ok(Window {
            c: 0,
            o: 0,
            big: v(g.big),
            small: v(g.small),
            k: v(g.k),
            stride: v(g.stride),
            pad: v(g.pad),
            dil: [1; 3],
        })
    }
}

fn pool_launch(base: &str, dtype: DType, g: &PoolGeom, planes: usize, n: usize, ptrs: &[u64]) -> Result<Launch> {
    let s = named(base, dtype)?;
    let mut args: Vec<KernelArg> = ptrs.iter().map(|&p| KernelArg::Ptr(p)).collect();
    args.extend([len_arg(planes), KernelArg::Window(Window::pool(s.kernel, g)?)]);
    s.elements(n, args)
}

/// Max pool of `planes` dense planes (src/cpu/pool.rs `max_pool`): `out`
/// and the i32 `arg` (flat index within the input plane of the first
/// maximum) per output element.
pub fn max_pool(dtype: DType, g: &PoolGeom, planes: usize, x: u64, out: u64, arg: u64) -> Result<Launch> {
    pool_launch("max_pool", dtype, g, planes, planes * g.small_len(), &[x, out, arg])
}

/// `dx` from `dy` and the saved `arg`, gathered per input element.
pub fn max_pool_grad(dtype: DType, g: &PoolGeom, planes: usize, dy: u64, arg: u64, dx: u64) -> Result<Launch> {
    pool_launch("max_pool_grad", dtype, g, planes, planes * g.big_len(), &[dy, arg, dx])
}

/// Average pool (padding counted in the divisor).
pub fn avg_pool(dtype: DType, g: &PoolGeom, planes: usize, x: u64, out: u64) -> Result<Launch> {
    pool_launch("avg_pool", dtype, g, planes, planes * g.small_len(), &[x, out])
}

/// `dx` from `dy`, gathered per input element.
pub fn avg_pool_grad(dtype: DType, g: &PoolGeom, planes: usize, dy: u64, dx: u64) -> Result<Launch> {
    pool_launch("avg_pool_grad", dtype, g, planes, planes * g.big_len(), &[dy, dx])
}

// ---- convolution tiles -------------------------------------------------------------

impl Window {
    /// A convolution's geometry (src/cpu/conv.rs `Geom`).
    pub fn conv(kernel: &str, g: &Geom) -> Result<Window> {
        let what = format!("conv of [{}, {:?}] <-> [{}, {:?}], kernel {:?}", g.c, g.big, g.o, g.small, g.k);
        int32(
            kernel,
            &what,
            &[("input plane", g.big_len()), ("output positions", g.small_len()), ("K", g.kdim()), ("O", g.o)],
        )?;
        let v = |a: [usize; 3]| a.map(|x| x as i32);
        Ok(Window {
            c: g.c as i32,
            o: g.o as i32,
            big: v(g.big),
            small: v(g.small),
            k: v(g.k),
            stride: v(g.stride),
            pad: v(g.pad),
            dil: v(g.dil),
        })
    }
}

impl ConvTile {
    /// Output positions `p0 .. p0 + n` of `g` and the input box they reach:
    /// per dim, outer dims first, the output coordinates the tile spans
    /// (all of them once an outer dim changes within the tile), mapped
    /// through the window and clipped to the input.
    pub fn new(kernel: &str, g: &Geom, p0: usize, n: usize) -> Result<ConvTile> {
        let p = g.small_len();
        if n == 0 || p0 + n > p {
            return Err(Error::cuda(
                kernel,
                format!("tile of positions {p0}..{} outside the {p} output positions of {:?}", p0 + n, g.small),
            ));
        }
        let what = format!("tile {p0}..{} of {:?}", p0 + n, g.small);
        int32(kernel, &what, &[("p0 + n", p0 + n)])?;
        let decode = |q: usize| [q / (g.small[1] * g.small[2]), q / g.small[2] % g.small[1], q % g.small[2]];
        let (a, b) = (decode(p0), decode(p0 + n - 1));
        let mut t = ConvTile { p0: p0 as i32, n: n as i32, lo: [0; 3], len: [0; 3] };
        let mut whole = false;
        for d in 0..3 {
            let (o0, o1) = if whole { (0, g.small[d] - 1) } else { (a[d], b[d]) };
            whole |= a[d] != b[d];
            let first = (o0 * g.stride[d]) as i64 - g.pad[d] as i64;
            let last = (o1 * g.stride[d] + (g.k[d] - 1) * g.dil[d]) as i64 - g.pad[d] as i64;
            let (lo, hi) = (first.max(0), last.min(g.big[d] as i64 - 1));
            t.lo[d] = lo as i32;
            t.len[d] = (hi - lo + 1).max(0) as i32;
        }
        Ok(t)
    }

    /// Input elements of one channel in the box.
    pub fn box_len(&self) -> usize {
        self.len.iter().map(|&l| l as usize).product()
    }
}

/// `col` `[K, n]` f32 = the im2col of positions `p0 .. p0 + n` of one
/// sample `x` `[C, big]` (src/cpu/conv.rs `im2col`, value for value).
pub fn im2col(dtype: DType, g: &Geom, x: u64, p0: usize, n: usize, col: u64) -> Result<Launch> {
    let s = named("im2col", dtype)?;
    let (w, t) = (Window::conv(s.kernel, g)?, ConvTile::new(s.kernel, g, p0, n)?);
    let args = vec![KernelArg::Ptr(x), KernelArg::Ptr(col), KernelArg::Window(w), KernelArg::ConvTile(t)];
    s.elements(g.kdim() * n, args)
}

/// `acc` `[C, big]` f32 `+=` col2im of `col` `[K, n]` f32 for positions
/// `p0 .. p0 + n` (src/cpu/conv.rs `col2im`: the same sums, bit for bit).
/// One thread per input element of the tile's box; f32 for every storage
/// type, as on the CPU.
pub fn col2im(g: &Geom, col: u64, p0: usize, n: usize, acc: u64) -> Result<Launch> {
    let s = spec_of("col2im_f32")?;
    let (w, t) = (Window::conv(s.kernel, g)?, ConvTile::new(s.kernel, g, p0, n)?);
    let args = vec![KernelArg::Ptr(col), KernelArg::Ptr(acc), KernelArg::Window(w), KernelArg::ConvTile(t)];
    s.elements(g.c * t.box_len(), args)
}

/// A row-major matrix operand: address and row stride in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mat {
    pub ptr: u64,
    pub ld: usize,
}

/// `dst` f32 `[rows, n]` = `src` (dtype) widened: a tile of `small` as a
/// GEMM operand (the CPU's `small_tile`), or the weight.
pub fn conv_tile_in(dtype: DType, rows: usize, n: usize, src: Mat, dst: Mat) -> Result<Launch> {
    let args = vec![
        KernelArg::Ptr(src.ptr),
        len_arg(src.ld),
        KernelArg::Ptr(dst.ptr),
        len_arg(dst.ld),
        len_arg(rows),
        len_arg(n),
    ];
    named("conv_tile_in", dtype)?.elements(rows * n, args)
}

/// `dst` (dtype) `[rows, n]` = `src` f32 `+ bias[row]`, rounded: a GEMM's
/// f32 tile into the output (in place for f32 storage: `src` = `dst`).
pub fn conv_tile_out(dtype: DType, rows: usize, n: usize, src: Mat, dst: Mat, bias: Option<u64>) -> Result<Launch> {
    let args = vec![
        KernelArg::Ptr(src.ptr),
        len_arg(src.ld),
        KernelArg::Ptr(dst.ptr),
        len_arg(dst.ld),
        len_arg(rows),
        len_arg(n),
        opt_ptr(bias),
    ];
    named("conv_tile_out", dtype)?.elements(rows * n, args)
}

/// The bias gradient `out[c] = Σ_b Σ_s dy[b, c, s]` of dense `dy`
/// `[batch, channels, spatial]`: one block per channel, f32 tree sums.
pub fn conv_bias_grad(
    dtype: DType,
    dy: u64,
    out: u64,
    batch: usize,
    channels: usize,
    spatial: usize,
) -> Result<Launch> {
    let s = named("conv_bias_grad", dtype)?;
    let args = vec![KernelArg::Ptr(dy), KernelArg::Ptr(out), len_arg(batch), len_arg(channels), len_arg(spatial)];
    s.rows(channels, batch * spatial, args)
}

// ---- fused attention (kernels/attention.cu) ----

/// Query rows per block of the row-dots kernel: one thread per row.
const ROW_DOTS_ROWS: u32 = 128;

/// Largest head dimension the attention kernels take.
pub const ATTENTION_MAX_D: usize = 128;

/// One fused attention call on the device, as `ops::attention` takes it: q
/// `[B, H, Tq, D]`, k and v `[B, H, Tk, D]`, each a strided view (4 strides
/// in elements) whose rows are dense (last stride 1), of one float dtype;
/// `key_padding` a dense u8 `[B, Tk]` (1 = padded key). Semantics are the
/// CPU op's: causal aligned top left, a row that sees no key gets O = 0,
/// LSE = +∞ and zero gradients.
///
/// The launches, in order: [`attention_forward`] (O and the f32 log-sum-exp
/// `[B, H, Tq]`); for the backward [`attention_row_dots`] (D = rowsum(dO ∘ O)
/// into the workspace), [`attention_backward_dkdv`] (one block per key tile,
/// looping over query tiles) and [`attention_backward_dq`] (one block per
/// query tile, looping over key tiles) — or all three from
/// [`attention_backward`]. Each gradient row has one writer and a fixed
/// summation order: no atomics, results independent of scheduling.
///
/// Tiles (query rows × key rows) per head-dim bucket, 128 threads, every tile
/// an f32 copy with rows padded to DM + 1 floats (conflict-free column reads),
/// static shared memory in bytes:
///
/// | kernel        | D ≤ 32          | D ≤ 64          | D ≤ 128         |
/// |---------------|-----------------|-----------------|-----------------|
/// | forward       | 64 × 64, 43 008 | 64 × 32, 42 624 | 32 × 16, 35 648 |
/// | dK, dV        | 32 × 64, 42 240 | 32 × 32, 41 984 | 16 × 16, 35 328 |
/// | dQ            | 64 × 32, 34 432 | 32 × 32, 37 888 | 16 × 16, 34 304 |
///
/// Why: the largest tiles that keep each kernel under the 48 KiB a block gets
/// without opting in, with the block's own rows (queries in the forward and
/// dQ, keys in dK/dV) no fewer than the streamed ones, since the streamed
/// tile is reloaded once per owned tile; micro-tiles of (rows/16) × (cols/8)
/// scores and (rows/16) × (DM/8) accumulators per thread keep ptxas at
/// 48–114 registers with no spills.
#[derive(Clone, Copy, Debug)]
pub struct Attention<'a> {
    pub batch: usize,
    pub heads: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    /// Score scale (`ops::attention`'s default is 1/√D).
    pub scale: f32,
    /// Query i sees keys j ≤ i, aligned top left as PyTorch's `is_causal`.
    pub causal: bool,
    pub q: Strided<'a>,
    pub k: Strided<'a>,
    pub v: Strided<'a>,
    pub key_padding: Option<u64>,
}

/// Where the backward writes: dense `[B, H, T, D]` gradients in the inputs'
/// dtype, each absent when its input needs none.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionGrads {
    pub dq: Option<u64>,
    pub dk: Option<u64>,
    pub dv: Option<u64>,
}

impl Attention<'_> {
    /// Bytes of workspace the backward needs beyond its inputs and outputs:
    /// the row sums D, f32 `[B, H, Tq]` (allocate it with tag Workspace). The
    /// forward needs none (the LSE is an output it saves). So memory beyond
    /// inputs and outputs is O(B·H·Tq): nothing grows with Tq·Tk.
    pub fn backward_workspace(&self) -> usize {
        4 * self.batch * self.heads * self.tq
    }

    fn shapes(&self) -> String {
        let (b, h, tq, tk, d) = (self.batch, self.heads, self.tq, self.tk, self.d);
        format!("q [{b}, {h}, {tq}, {d}], k and v [{b}, {h}, {tk}, {d}]")
    }

    /// The kernel `{base}_d{bucket}_{dtype}` (no bucket for the row dots).
    fn spec(&self, base: &str, dtype: DType, bucket: bool) -> Result<&'static LaunchSpec> {
        let sfx = suffix(base, dtype)?;
        if !bucket {
            return spec_of(&format!("{base}_{sfx}"));
        }
        let dm = match self.d {
            1..=32 => 32,
            33..=64 => 64,
            65..=ATTENTION_MAX_D => 128,
            _ => {
                return Err(Error::cuda(
                    base,
                    format!(
                        "{}: head dimension {} is outside 1..={ATTENTION_MAX_D}, what the CUDA attention kernels \
                         take; use more heads (or the CPU op)",
                        self.shapes(),
                        self.d
                    ),
                ))
            }
        };
        spec_of(&format!("{base}_d{dm}_{sfx}"))
    }

    /// The kernels' by-value argument, after checking every operand.
    fn dims(&self, kernel: &str, o: Option<&Strided>, g: Option<&Strided>) -> Result<AttnDims> {
        let bad = |msg: String| Err(Error::cuda(kernel, format!("{}: {msg}", self.shapes())));
        let mut s = [[0i64; 3]; 5];
        let operands = [("q", Some(&self.q)), ("k", Some(&self.k)), ("v", Some(&self.v)), ("o", o), ("dO", g)];
        for (slot, (name, x)) in s.iter_mut().zip(operands) {
            let Some(x) = x else { continue };
            if x.strides.len() != 4 {
                return bad(format!("{name} has strides {:?}; a [B, H, T, D] view has 4", x.strides));
            }
            if x.strides[3] != 1 && self.d > 1 {
                return bad(format!(
                    "{name} has strides {:?}; the kernels read rows of D contiguous elements: make its rows \
                     dense (contiguous) first",
                    x.strides
                ));
            }
            *slot = [x.strides[0] as i64, x.strides[1] as i64, x.strides[2] as i64];
        }
        if self.tq > i32::MAX as usize || self.tk > i32::MAX as usize || self.batch * self.heads > i32::MAX as usize {
            return bad("lengths and B·H must fit in i32".into());
        }
        if !self.scale.is_finite() {
            return bad(format!("scale {} is not finite", self.scale));
        }
        Ok(AttnDims {
            q: s[0],
            k: s[1],
            v: s[2],
            o: s[3],
            g: s[4],
            batch: self.batch as i32,
            heads: self.heads as i32,
            tq: self.tq as i32,
            tk: self.tk as i32,
            d: self.d as i32,
            causal: self.causal as i32,
            scale: self.scale,
            reserved: 0,
        })
    }
}

fn ptr_or_null(p: Option<u64>) -> KernelArg {
    KernelArg::Ptr(p.unwrap_or(0))
}

/// Forward: `out` (`[B, H, Tq, D]` in the inputs' dtype, any strides with
/// dense rows) and `lse` (f32 `[B, H, Tq]`, dense). One block of 128 threads
/// per (query tile, b·h); query tiles of 64 rows for D ≤ 64, 32 for D ≤ 128.
pub fn attention_forward(dtype: DType, a: &Attention, out: Strided, lse: u64) -> Result<Launch> {
    let s = a.spec("attention_fwd", dtype, true)?;
    let dims = a.dims(s.kernel, Some(&out), None)?;
    let args = vec![
        KernelArg::Ptr(a.q.ptr),
        KernelArg::Ptr(a.k.ptr),
        KernelArg::Ptr(a.v.ptr),
        ptr_or_null(a.key_padding),
        KernelArg::Ptr(out.ptr),
        KernelArg::Ptr(lse),
        KernelArg::AttnDims(dims),
    ];
    s.tiles(a.tq, a.batch * a.heads, args)
}

/// Backward step 1: `dvec` (f32 `[B, H, Tq]`, the workspace of
/// [`Attention::backward_workspace`]) = rowsum(dO ∘ O), from the forward's
/// output `o` and the output gradient `go` (`[B, H, Tq, D]`, dense rows).
pub fn attention_row_dots(dtype: DType, a: &Attention, o: Strided, go: Strided, dvec: u64) -> Result<Launch> {
    let s = a.spec("attention_row_dots", dtype, false)?;
    let dims = a.dims(s.kernel, Some(&o), Some(&go))?;
    let args = vec![KernelArg::Ptr(o.ptr), KernelArg::Ptr(go.ptr), KernelArg::Ptr(dvec), KernelArg::AttnDims(dims)];
    s.tiles(a.tq, a.batch * a.heads, args)
}

/// Backward step 2: dK and dV (dense `[B, H, Tk, D]`; either may be absent)
/// from the forward's inputs, `go`, its `lse` and `dvec`. One block per
/// (key tile, b·h), looping over the query tiles: each row has one writer.
pub fn attention_backward_dkdv(
    dtype: DType,
    a: &Attention,
    go: Strided,
    lse: u64,
    dvec: u64,
    dk: Option<u64>,
    dv: Option<u64>,
) -> Result<Launch> {
    let s = a.spec("attention_bwd_dkdv", dtype, true)?;
    let dims = a.dims(s.kernel, None, Some(&go))?;
    let args = vec![
        KernelArg::Ptr(a.q.ptr),
        KernelArg::Ptr(a.k.ptr),
        KernelArg::Ptr(a.v.ptr),
        KernelArg::Ptr(go.ptr),
        ptr_or_null(a.key_padding),
        KernelArg::Ptr(lse),
        KernelArg::Ptr(dvec),
        ptr_or_null(dk),
        ptr_or_null(dv),
        KernelArg::AttnDims(dims),
    ];
    s.tiles(a.tk, a.batch * a.heads, args)
}

/// Backward step 3: dQ (dense `[B, H, Tq, D]`). One block per (query tile,
/// b·h), looping over the key tiles it can see.
pub fn attention_backward_dq(dtype: DType, a: &Attention, go: Strided, lse: u64, dvec: u64, dq: u64) -> Result<Launch> {
    let s = a.spec("attention_bwd_dq", dtype, true)?;
    let dims = a.dims(s.kernel, None, Some(&go))?;
    let args = vec![
        KernelArg::Ptr(a.q.ptr),
        KernelArg::Ptr(a.k.ptr),
        KernelArg::Ptr(a.v.ptr),
        KernelArg::Ptr(go.ptr),
        ptr_or_null(a.key_padding),
        KernelArg::Ptr(lse),
        KernelArg::Ptr(dvec),
        KernelArg::Ptr(dq),
        KernelArg::AttnDims(dims),
    ];
    s.tiles(a.tq, a.batch * a.heads, args)
}

/// The whole backward, in launch order: row dots into `dvec` (the
/// workspace), then dK/dV if either is wanted, then dQ if wanted.
pub fn attention_backward(
    dtype: DType,
    a: &Attention,
    o: Strided,
    go: Strided,
    lse: u64,
    dvec: u64,
    grads: AttentionGrads,
) -> Result<Vec<Launch>> {
    let mut launches = vec![attention_row_dots(dtype, a, o, go, dvec)?];
    if grads.dk.is_some() || grads.dv.is_some() {
        launches.push(attention_backward_dkdv(dtype, a, go, lse, dvec, grads.dk, grads.dv)?);
    }
    if let Some(dq) = grads.dq {
        launches.push(attention_backward_dq(dtype, a, go, lse, dvec, dq)?);
    }
    Ok(launches)
}
