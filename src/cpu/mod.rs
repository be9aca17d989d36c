//! The CPU backend's kernels, in one place: plain functions over slices and
//! strided views, parallel with rayon, computing in f32 whatever the stored
//! type. Each output element is produced by one worker in a fixed order, so
//! results do not depend on the thread count.

pub mod attention;
pub mod batch_norm;
pub mod conv;
pub mod ctc;
pub mod dropout;
pub mod elementwise;
pub mod index;
pub mod loss;
pub mod lstm;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod reduce;
pub mod vq;

/// Elements below which a kernel stays on the calling thread: splitting
/// costs more than it saves.
pub const PAR_MIN: usize = 1 << 15;

/// Storage offset of row `r` of a strided layout, where rows are the indices
/// of every dimension but the last.
#[inline]
pub fn row_offset(shape: &[usize], strides: &[usize], offset: usize, mut r: usize) -> usize {
    let mut off = offset;
    for d in (0..shape.len().saturating_sub(1)).rev() {
        off += (r % shape[d]) * strides[d];
        r /= shape[d];
    }
    off
}
