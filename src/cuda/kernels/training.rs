//! Launch builders for the training ops' kernels: layer norm
//! (kernels/norm.cu), cross-entropy (loss.cu), embedding (embedding.cu),
//! dropout (dropout.cu), fused AdamW and the global gradient norm
//! (optim.cu). Their launch assumptions are in [`super::LAUNCH`].
//!
//! Every workspace a backward or a reduction needs is declared by a
//! `*_workspace` function here, from the shapes alone, so the planner can
//! count the bytes before anything runs. Addresses are device pointers
//! (host addresses on the emulator); `None` or 0 marks an absent operand.

use super::{named, spec_of, KernelArg, Launch, LaunchSpec};
use crate::cpu::optim::AdamStep;
use crate::error::{Error, Result};
use crate::tensor::DType;

fn ptr(p: u64) -> KernelArg {
    KernelArg::Ptr(p)
}

fn opt(p: Option<u64>) -> KernelArg {
    KernelArg::Ptr(p.unwrap_or(0))
}

fn len(n: usize) -> KernelArg {
    KernelArg::I64(n as i64)
}

// ---- layer norm ------------------------------------------------------------------

/// Operands of a layer norm forward over rows of `cols`: `x` and `y` are
/// `[rows, cols]` dense in the storage type, `weight` and `bias` `[cols]`,
/// `mean` and `rstd` `[rows]` f32 (what the backward reads, as the CPU op
/// saves them).
#[derive(Clone, Copy, Debug)]
pub struct LayerNormIo {
    pub x: u64,
    pub weight: Option<u64>,
    pub bias: Option<u64>,
    pub y: u64,
    pub mean: u64,
    pub rstd: u64,
}

/// `y = (x − mean)·rstd·weight + bias` per row; one block per row, the row
/// kept in shared memory while `cols ≤ 8192`.
pub fn layer_norm(dtype: DType, rows: usize, cols: usize, eps: f32, io: &LayerNormIo) -> Result<Launch> {
    let s = named("layer_norm", dtype)?;
    if cols == 0 || eps.is_nan() || eps < 0.0 {
        return Err(Error::cuda(s.kernel, format!("[{rows}, {cols}] with eps {eps}: need cols > 0 and eps ≥ 0")));
    }
    let cache = s.smem.bytes(cols) > 0;
    let args = vec![
        ptr(io.x),
        opt(io.weight),
        opt(io.bias),
        ptr(io.y),
        ptr(io.mean),
        ptr(io.rstd),
        len(cols),
        KernelArg::F32(eps),
        KernelArg::I32(cache as i32),
    ];
    s.rows(rows, cols, args)
}

/// Rows per block and blocks of the layer norm backward for `rows` rows:
/// at most the table's `max_blocks` blocks of consecutive rows. From the
/// shape only, so dweight and dbias add their partials in one order.
pub fn layer_norm_backward_blocks(rows: usize) -> (usize, usize) {
    let max = match spec_of("layer_norm_backward_f32").map(|s| s.grid) {
        Ok(super::Grid::RowRuns { max_blocks }) => max_blocks as usize,
        _ => 1,
    };
    let per = rows.div_ceil(max).max(1);
    (per, rows.div_ceil(per))
}

/// Workspace bytes of a layer norm backward: `blocks × 2 × cols` f32
/// partial sums when dweight or dbias is wanted (`sums`), else none.
pub fn layer_norm_backward_workspace(rows: usize, cols: usize, sums: bool) -> usize {
    if sums {
        layer_norm_backward_blocks(rows).1 * 2 * cols * 4
    } else {
        0
    }
}

/// Operands of a layer norm backward: the forward's `x`, `weight`, `mean`,
/// `rstd`, the output gradient `dy`, and the gradients wanted (each may be
/// `None`). `workspace` has [`layer_norm_backward_workspace`] bytes.
#[derive(Clone, Copy, Debug)]
pub struct LayerNormBackward {
    pub x: u64,
    pub dy: u64,
    pub weight: Option<u64>,
    pub mean: u64,
    pub rstd: u64,
    pub dx: Option<u64>,
    pub dweight: Option<u64>,
    pub dbias: Option<u64>,
    pub workspace: u64,
}

/// dx, dweight and dbias: the row kernel (dx, and per-block partial sums in
/// the workspace), then, if dweight or dbias is wanted, the kernel that
/// adds the partials in block order. Run the launches in order.
pub fn layer_norm_backward(dtype: DType, rows: usize, cols: usize, io: &LayerNormBackward) -> Result<Vec<Launch>> {
    let s = named("layer_norm_backward", dtype)?;
    let sums = io.dweight.is_some() || io.dbias.is_some();
    if cols == 0 || (sums && io.workspace == 0) {
        return Err(Error::cuda(
            s.kernel,
            format!(
                "[{rows}, {cols}]: need cols > 0, and for dweight or dbias a workspace of \
                 layer_norm_backward_workspace(rows, cols, true) = {} bytes",
                layer_norm_backward_workspace(rows, cols, true)
            ),
        ));
    }
    let (per, blocks) = layer_norm_backward_blocks(rows);
    let part = if sums { io.workspace } else { 0 };
    let args = vec![
        ptr(io.x),
        ptr(io.dy),
        opt(io.weight),
        ptr(io.mean),
        ptr(io.rstd),
        opt(io.dx),
        ptr(part),
        len(rows),
        len(cols),
        len(per),
    ];
    let mut out = vec![s.blocks(blocks, args)?];
    if sums {
        let args = vec![ptr(part), opt(io.dweight), opt(io.dbias), len(blocks), len(cols)];
        out.push(named("layer_norm_backward_sums", dtype)?.elements(cols, args)?);
    }
    Ok(out)
}

// ---- cross-entropy ---------------------------------------------------------------

/// Operands of a cross-entropy forward: `logits` `[rows, cols]` (storage
/// type), `targets` `[rows]` i32; out: `lse` `[rows]` f32 (saved for the
/// backward), `loss` one value (storage type), `count` one i32 (rows not
/// ignored; read by the backward), `workspace` of
/// [`cross_entropy_workspace`] bytes, and optionally `bad`, one i32 that
/// the caller sets to `i32::MAX` and that then holds the first row whose
/// target is outside `[0, cols)` (and not ignored).
#[derive(Clone, Copy, Debug)]
pub struct CrossEntropyIo {
    pub logits: u64,
    pub targets: u64,
    pub lse: u64,
    pub loss: u64,
    pub count: u64,
    pub workspace: u64,
    pub bad: Option<u64>,
}

/// Workspace bytes of a cross-entropy forward: one f32 loss per row.
pub fn cross_entropy_workspace(rows: usize) -> usize {
    4 * rows
}

/// How targets are read: PyTorch's `ignore_index` and `label_smoothing`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Labels {
    pub ignore_index: Option<i32>,
    pub label_smoothing: f32,
}

impl Labels {
    fn args(&self) -> [KernelArg; 2] {
        [KernelArg::I32(self.ignore_index.unwrap_or(0)), KernelArg::I32(self.ignore_index.is_some() as i32)]
    }
    fn check(&self, kernel: &str, rows: usize, cols: usize) -> Result<()> {
        if cols == 0 || cols > i32::MAX as usize || !(0.0..=1.0).contains(&self.label_smoothing) {
            return Err(Error::cuda(
                kernel,
                format!(
                    "logits [{rows}, {cols}] with label_smoothing {}: need 0 < cols < 2^31 and smoothing in [0, 1]",
                    self.label_smoothing
                ),
            ));
        }
        Ok(())
    }
}

/// Mean cross-entropy: the per-row kernel (lse and row losses, one block per
/// row, the row in shared memory while `cols ≤ 8192`), then the mean (one
/// block, f64). Run the launches in order.
pub fn cross_entropy(
    dtype: DType,
    rows: usize,
    cols: usize,
    labels: Labels,
    io: &CrossEntropyIo,
) -> Result<Vec<Launch>> {
    let s = named("cross_entropy", dtype)?;
    labels.check(s.kernel, rows, cols)?;
    let [ignore, has_ignore] = labels.args();
    let cache = s.smem.bytes(cols) > 0;
    let args = vec![
        ptr(io.logits),
        ptr(io.targets),
        ptr(io.lse),
        ptr(io.workspace),
        opt(io.bad),
        len(cols),
        ignore,
        has_ignore,
        KernelArg::F32(labels.label_smoothing),
        KernelArg::I32(cache as i32),
    ];
    let rows_launch = s.rows(rows, cols, args)?;
    let args = vec![ptr(io.targets), ptr(io.workspace), ptr(io.loss), ptr(io.count), len(rows), ignore, has_ignore];
    Ok(vec![rows_launch, named("cross_entropy_mean", dtype)?.blocks(1, args)?])
}

/// Operands of a cross-entropy backward: the forward's `logits`, `targets`,
/// `lse` and `count`, the loss's gradient `dloss` (one value, storage
/// type, on the device) and the output `dx` `[rows, cols]`.
#[derive(Clone, Copy, Debug)]
pub struct CrossEntropyBackward {
    pub logits: u64,
    pub targets: u64,
    pub lse: u64,
    pub count: u64,
    pub dloss: u64,
    pub dx: u64,
}

/// `dx = dloss/count · (softmax(x) − q)`, 0 on ignored rows; one block per row.
pub fn cross_entropy_backward(
    dtype: DType,
    rows: usize,
    cols: usize,
    labels: Labels,
    io: &CrossEntropyBackward,
) -> Result<Launch> {
    let s = named("cross_entropy_backward", dtype)?;
    labels.check(s.kernel, rows, cols)?;
    let [ignore, has_ignore] = labels.args();
    let args = vec![
        ptr(io.logits),
        ptr(io.targets),
        ptr(io.lse),
        ptr(io.dloss),
        ptr(io.count),
        ptr(io.dx),
        len(cols),
        ignore,
        has_ignore,
        KernelArg::F32(labels.label_smoothing),
    ];
    s.rows(rows, cols, args)
}

// ---- embedding -------------------------------------------------------------------

/// `out[k, :] = weight[ids[k], :]` for `n` ids into a `[vocab, dim]` table;
/// one block per id. `bad` (optional, one i32 the caller sets to
/// `i32::MAX`) receives the first position whose id is outside the table;
/// that row of `out` is zeros.
#[allow(clippy::too_many_arguments)]
pub fn embedding(
    dtype: DType,
    weight: u64,
    ids: u64,
    out: u64,
    bad: Option<u64>,
    n: usize,
    vocab: usize,
    dim: usize,
) -> Result<Launch> {
    let s = named("embedding", dtype)?;
    if vocab > i32::MAX as usize {
        return Err(Error::cuda(s.kernel, format!("vocabulary {vocab}: i32 ids reach 2^31-1 rows at most")));
    }
    s.rows(n, dim, vec![ptr(weight), ptr(ids), ptr(out), opt(bad), len(vocab), len(dim)])
}

/// Workspace bytes of an embedding backward over `n` ids: two i32 arrays of
/// `n` positions (the merge sort's ping-pong buffers).
pub fn embedding_backward_workspace(n: usize) -> usize {
    2 * 4 * n
}

/// `dweight[j, :] = Σ dy[k, :]` over the positions `k` with `ids[k] == j`,
/// in increasing `k` (f32 accumulation): ⌈log2 n⌉ merge passes sort the
/// positions by (id, position) in the workspace, then one block per
/// vocabulary row adds its bucket. Every row of `dweight` is written (zeros
/// where no id points). Run the launches in order.
#[allow(clippy::too_many_arguments)]
pub fn embedding_backward(
    dtype: DType,
    dy: u64,
    ids: u64,
    dweight: u64,
    workspace: u64,
    n: usize,
    vocab: usize,
    dim: usize,
) -> Result<Vec<Launch>> {
    let s = named("embedding_backward", dtype)?;
    if n > i32::MAX as usize || vocab > i32::MAX as usize || (n > 0 && workspace == 0) {
        return Err(Error::cuda(
            s.kernel,
            format!(
                "{n} ids into [{vocab}, {dim}]: need n and vocab below 2^31 and a workspace of \
                 embedding_backward_workspace(n) = {} bytes",
                embedding_backward_workspace(n)
            ),
        ));
    }
    let pass = spec_of("embedding_sort_pass")?;
    let buf = [workspace, workspace + 4 * n as u64];
    let mut out = vec![];
    // Runs of 1, 2, 4, … until one run holds all n; at least one pass, which
    // writes the identity order when n is 1.
    let mut run = 1;
    while n > 0 && (run < n || out.is_empty()) {
        let input = if out.is_empty() { 0 } else { buf[(out.len() - 1) % 2] };
        let args = vec![ptr(ids), ptr(input), ptr(buf[out.len() % 2]), len(n), len(run)];
        out.push(pass.elements(n, args)?);
        run *= 2;
    }
    let order = if out.is_empty() { 0 } else { buf[(out.len() - 1) % 2] };
    out.push(s.rows(vocab, dim, vec![ptr(dy), ptr(ids), ptr(order), ptr(dweight), len(n), len(dim)])?);
    Ok(out)
}

// ---- dropout ---------------------------------------------------------------------

/// `y = x·1/(1 − p)` where the mask keeps an element, else 0, for `n`
/// dense elements: the CPU's mask bit for bit (`Rng::new(seed).fork(chunk)`
/// per [`crate::cpu::dropout::CHUNK`] elements). The backward is the same
/// launch on the gradient with the same seed.
pub fn dropout(dtype: DType, x: u64, y: u64, n: usize, seed: u64, p: f32) -> Result<Launch> {
    let s = named("dropout", dtype)?;
    if !(0.0..1.0).contains(&p) {
        return Err(Error::cuda(s.kernel, format!("p = {p} for {n} elements must be in [0, 1)")));
    }
    let chunk = crate::cpu::dropout::CHUNK;
    let args = vec![ptr(x), ptr(y), len(n), KernelArg::U64(seed), KernelArg::F32(p), len(chunk)];
    s.elements(n, args)
}

// ---- multi-tensor tables -----------------------------------------------------------

/// One parameter of a fused AdamW launch: a row of the device table the
/// kernel reads. Layout = `struct AdamTensor` in kernels/optim.cu (56
/// bytes, no padding; upload with `bytemuck::cast_slice`). `param`, `m`
/// and `v` are f32, `grad` is in the launch's gradient dtype; `step_size`
/// and `bias2_sqrt` are the parameter's own ([`AdamStep`]), as each
/// parameter counts its steps. `first_block` is set by [`adamw_table`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamTensor {
    pub param: u64,
    pub grad: u64,
    pub m: u64,
    pub v: u64,
    pub numel: i64,
    pub first_block: i64,
    pub step_size: f32,
    pub bias2_sqrt: f32,
}
const _: () = assert!(std::mem::size_of::<AdamTensor>() == 56);

impl AdamTensor {
    pub fn new(param: u64, grad: u64, m: u64, v: u64, numel: usize, step: &AdamStep) -> AdamTensor {
        AdamTensor {
            param,
            grad,
            m,
            v,
            numel: numel as i64,
            first_block: 0,
            step_size: step.step_size,
            bias2_sqrt: step.bias2_sqrt,
        }
    }
}

/// One tensor of a sum-of-squares launch. Layout = `struct NormTensor` in
/// kernels/optim.cu (24 bytes). `first_block` is set by [`sum_squares_table`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct NormTensor {
    pub data: u64,
    pub numel: i64,
    pub first_block: i64,
}
const _: () = assert!(std::mem::size_of::<NormTensor>() == 24);

/// Elements per block of a multi-tensor kernel.
fn chunk_of(s: &LaunchSpec) -> Result<usize> {
    match s.grid {
        super::Grid::Tensors { per_thread } => Ok(s.block as usize * per_thread as usize),
        _ => Err(Error::cuda(s.kernel, "not a multi-tensor kernel (Grid::Tensors)")),
    }
}

/// Each tensor's first block (the chunks of the tensors before it) and the
/// total, the launch's block count.
fn first_blocks(s: &LaunchSpec, numels: impl Iterator<Item = i64>) -> Result<(Vec<i64>, usize)> {
    let chunk = chunk_of(s)?;
    let mut next = 0usize;
    let mut firsts = vec![];
    for numel in numels {
        firsts.push(next as i64);
        next += (numel.max(0) as usize).div_ceil(chunk);
    }
    Ok((firsts, next))
}

/// Check a table's numbering (the kernel trusts it) and return its blocks.
fn check(s: &LaunchSpec, rows: impl Iterator<Item = (i64, i64)>) -> Result<usize> {
    let chunk = chunk_of(s)?;
    let mut next = 0usize;
    let mut count = 0;
    for (i, (numel, first)) in rows.enumerate() {
        if numel < 0 || first != next as i64 {
            return Err(Error::cuda(
                s.kernel,
                format!(
                    "table entry {i}: numel {numel}, first_block {first}, expected {next}; number the table with \
                     adamw_table / sum_squares_table (for this dtype) before uploading it"
                ),
            ));
        }
        next += (numel as usize).div_ceil(chunk);
        count += 1;
    }
    if count == 0 || count > i32::MAX as usize {
        return Err(Error::cuda(s.kernel, format!("a table of {count} tensors: need 1..2^31")));
    }
    Ok(next)
}

// ---- AdamW -----------------------------------------------------------------------

/// Set each entry's `first_block` for an AdamW launch with gradients of
/// `grad`; returns the blocks the launch will have.
pub fn adamw_table(grad: DType, table: &mut [AdamTensor]) -> Result<usize> {
    let (firsts, blocks) = first_blocks(named("adamw", grad)?, table.iter().map(|e| e.numel))?;
    table.iter_mut().zip(firsts).for_each(|(e, f)| e.first_block = f);
    Ok(blocks)
}

/// One AdamW step for every tensor of `table` (its numbered copy is on the
/// device at `table_dev`): the CPU's update operation by operation, so the
/// same bits. Betas, eps and decay come from `step`; step_size and
/// bias2_sqrt from each entry. Tensors with no elements are skipped.
pub fn adamw(grad: DType, table_dev: u64, table: &[AdamTensor], step: &AdamStep) -> Result<Launch> {
    let s = named("adamw", grad)?;
    let blocks = check(s, table.iter().map(|e| (e.numel, e.first_block)))?;
    let args = vec![
        ptr(table_dev),
        KernelArg::I32(table.len() as i32),
        len(chunk_of(s)?),
        KernelArg::F32(step.beta1),
        KernelArg::F32(step.one_minus_beta1),
        KernelArg::F32(step.beta2),
        KernelArg::F32(step.one_minus_beta2),
        KernelArg::F32(step.eps),
        KernelArg::F32(step.decay),
    ];
    // A table of only empty tensors has nothing to do: one idle block.
    s.blocks(blocks.max(1), args)
}

// ---- global gradient norm --------------------------------------------------------

/// Set each entry's `first_block` for a sum-of-squares launch over tensors
/// of `dtype`; returns the blocks (= f32 partials) the launch writes.
pub fn sum_squares_table(dtype: DType, table: &mut [NormTensor]) -> Result<usize> {
    let (firsts, blocks) = first_blocks(named("sum_squares", dtype)?, table.iter().map(|e| e.numel))?;
    table.iter_mut().zip(firsts).for_each(|(e, f)| e.first_block = f);
    Ok(blocks)
}

/// Workspace bytes of a global gradient norm over tensors of these
/// (dtype, numel): one f32 partial per chunk of each dtype's launch.
pub fn grad_norm_workspace(tensors: &[(DType, usize)]) -> Result<usize> {
    let mut bytes = 0;
    for &(dtype, numel) in tensors {
        bytes += 4 * numel.div_ceil(chunk_of(named("sum_squares", dtype)?)?);
    }
    Ok(bytes)
}

/// Pass 1 for one dtype: `partial[b] = Σ x²` over each chunk of the tables'
/// tensors. With several dtypes, give each launch its own range of the
/// workspace (after the blocks of the launches before it).
pub fn sum_squares(dtype: DType, table_dev: u64, table: &[NormTensor], partial: u64) -> Result<Launch> {
    let s = named("sum_squares", dtype)?;
    let blocks = check(s, table.iter().map(|e| (e.numel, e.first_block)))?;
    if blocks == 0 {
        return Err(Error::cuda(s.kernel, "every tensor of the table is empty: nothing to launch"));
    }
    s.blocks(blocks, vec![ptr(table_dev), KernelArg::I32(table.len() as i32), len(chunk_of(s)?), ptr(partial)])
}

/// Pass 2: `norm[0] = sqrt(Σ partial[..blocks])` as one f64, summed in f64
/// in a fixed order. What clip_grad_norm returns; its clip factor
/// `max_norm / (norm + 1e-6)` then goes to the `scale` kernel per gradient.
pub fn grad_norm(partial: u64, blocks: usize, norm: u64) -> Result<Launch> {
    spec_of("grad_norm")?.blocks(1, vec![ptr(partial), len(blocks), ptr(norm)])
}
