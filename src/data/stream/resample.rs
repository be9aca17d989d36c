//! Temporal downsampling: a low-pass FIR, then keep every k-th frame.
//!
//! A bare stride folds every frequency above the new Nyquist (0.5/k cycles
//! per frame) back into the band that is kept; the filter removes them
//! first. Output frame `j` is the filtered signal at input frame `j * k`,
//! so a signal of `T` frames gives `ceil(T / k)` frames. Frames beyond the
//! ends are taken as the edge frame (a constant signal stays constant).

/// Half-width of the filter in taps per unit of `k`: `20k + 1` taps in all.
pub const TAPS_PER_K: usize = 20;

/// Frames after downsampling `frames` by `k`: `ceil(frames / k)`.
pub fn downsampled_len(frames: usize, k: usize) -> usize {
    frames.div_ceil(k)
}

/// Low-pass taps for keeping every `k`-th frame: a Hamming-windowed sinc
/// with cutoff 0.5/k cycles per frame and `20k + 1` taps, the FIR design of
/// `scipy.signal.decimate`. Gains sum to 1. `k = 1` gives the single tap 1.
pub fn lowpass_taps(k: usize) -> Vec<f32> {
    assert!(k >= 1, "downsampling factor must be at least 1");
    if k == 1 {
        return vec![1.0];
    }
    let half = (TAPS_PER_K / 2 * k) as isize;
    let fc = 0.5 / k as f64;
    let pi = std::f64::consts::PI;
    let raw: Vec<f64> = (-half..=half)
        .map(|n| {
            let x = 2.0 * fc * n as f64;
            let sinc = if n == 0 { 1.0 } else { (pi * x).sin() / (pi * x) };
            let hamming = 0.54 + 0.46 * (pi * n as f64 / half as f64).cos();
            2.0 * fc * sinc * hamming
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|h| (h / sum) as f32).collect()
}

/// Input frames `[lo, hi)` that output frames `[start, start + len)` of a
/// `frames`-long signal read, for a filter of `taps` taps.
pub fn input_range(frames: usize, k: usize, taps: usize, start: usize, len: usize) -> (usize, usize) {
    if len == 0 || frames == 0 {
        return (0, 0);
    }
    let half = taps / 2;
    let lo = (start * k).saturating_sub(half);
    let hi = ((start + len - 1) * k + half + 1).min(frames);
    (lo, hi)
}

/// Filter and stride along time. `rows` holds input frames `[lo, ..)` of a
/// `frames`-long signal as `[frames_read, inner]` rows (from
/// [`input_range`]); `out` receives output frames `[start, start + out.len()
/// / inner)` as `[len, inner]` rows.
#[allow(clippy::too_many_arguments)]
pub fn decimate(
    rows: &[f32],
    lo: usize,
    frames: usize,
    inner: usize,
    k: usize,
    taps: &[f32],
    start: usize,
    out: &mut [f32],
) {
    let half = (taps.len() / 2) as isize;
    let last = frames as isize - 1;
    for (j, acc) in out.chunks_exact_mut(inner.max(1)).enumerate() {
        acc.fill(0.0);
        let centre = ((start + j) * k) as isize;
        for (m, &h) in taps.iter().enumerate() {
            let t = (centre + m as isize - half).clamp(0, last) as usize;
            let row = &rows[(t - lo) * inner..(t - lo + 1) * inner];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += h * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_are_symmetric_unit_gain_and_sized_as_stated() {
        for k in [2, 3, 4] {
            let h = lowpass_taps(k);
            assert_eq!(h.len(), TAPS_PER_K * k + 1);
            assert!((h.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            for i in 0..h.len() {
                assert_eq!(h[i], h[h.len() - 1 - i]);
            }
        }
        assert_eq!(lowpass_taps(1), vec![1.0]);
    }

    #[test]
    fn lengths_round_up() {
        assert_eq!(downsampled_len(10, 3), 4); // frames 0, 3, 6, 9
        assert_eq!(downsampled_len(9, 3), 3);
        assert_eq!(downsampled_len(0, 3), 0);
        assert_eq!(downsampled_len(7, 1), 7);
    }

    #[test]
    fn constant_stays_constant_and_k1_copies() {
        let x = [2.5f32; 50];
        let taps = lowpass_taps(3);
        let (lo, hi) = input_range(50, 3, taps.len(), 0, 17);
        let mut out = vec![0.0; 17];
        decimate(&x[lo..hi], lo, 50, 1, 3, &taps, 0, &mut out);
        assert!(out.iter().all(|v| (v - 2.5).abs() < 1e-5), "{out:?}");

        let x: Vec<f32> = (0..12).map(|v| v as f32).collect(); // 6 frames x 2 channels
        let mut out = vec![0.0; 6];
        let (lo, hi) = input_range(6, 1, 1, 2, 3);
        assert_eq!((lo, hi), (2, 5));
        decimate(&x[lo * 2..hi * 2], lo, 6, 2, 1, &[1.0], 2, &mut out);
        assert_eq!(out, [4., 5., 6., 7., 8., 9.]);
    }
}
