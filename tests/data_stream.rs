//! `data::stream`: batches read through memory maps. Every error case goes
//! through `NpyDataset::open` / `batch`, the path a user takes.
//!
//! The RSS test measures the whole process; every other test here touches
//! only a few KiB so running them alongside does not move its figures.

use headroom::alloc::{Arena, ArenaConfig, Backing, Tag, GRANULE};
use headroom::data::npy::{encode_header, write_npy, NpyDtype};
use headroom::data::stream::{NpyDataset, Source, StreamOptions};
use headroom::rng::Rng;
use headroom::tensor::DType;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A fresh directory in the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("headroom_stream_{}_{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write_f32(path: &Path, shape: &[usize], v: &[f32]) {
    write_npy(path, NpyDtype::F32, shape, &f32_bytes(v)).unwrap();
}

fn opts() -> StreamOptions {
    StreamOptions::default()
}

fn round(n: usize) -> usize {
    n.max(1).div_ceil(GRANULE) * GRANULE
}

// ---- variable lengths, padding, masks -------------------------------------

/// Sample `s` of the Dir fixtures: frame `t`, feature `f` holds 100 s + 10 t + f.
fn frame_value(s: usize, t: usize, f: usize) -> f32 {
    (100 * s + 10 * t + f) as f32
}

fn write_dir_of_lengths(dir: &TempDir, lengths: &[usize], features: usize) {
    for (s, &n) in lengths.iter().enumerate() {
        let v: Vec<f32> = (0..n * features).map(|e| frame_value(s, e / features, e % features)).collect();
        write_f32(&dir.path(&format!("{s:03}.npy")), &[n, features], &v);
    }
}

#[test]
fn dir_of_different_lengths_pads_and_masks() {
    let dir = TempDir::new("varlen");
    write_dir_of_lengths(&dir, &[3, 7, 5], 2);
    std::fs::write(dir.path("README.txt"), "not a sample").unwrap(); // ignored
    let data = NpyDataset::open(&Source::Dir(dir.0.clone()), opts()).unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data.sample_shape(), &[7, 2]);
    assert_eq!((data.frames(0), data.frames(1), data.frames(2)), (3, 7, 5));

    let arena = Arena::host();
    let b = data.batch(&arena, &[2, 0], DType::F32, None).unwrap();
    assert_eq!(b.x.shape(), &[2, 5, 2]);
    assert_eq!(b.lengths, vec![5, 3]);
    assert_eq!(b.mask.shape(), &[2, 5]);
    assert_eq!(b.mask.dtype(), DType::U8);
    assert_eq!(b.mask.to_vec::<u8>().unwrap(), vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
    let x = b.x.to_vec_f32().unwrap();
    for t in 0..5 {
        for f in 0..2 {
            assert_eq!(x[t * 2 + f], frame_value(2, t, f));
            let want = if t < 3 { frame_value(0, t, f) } else { 0.0 };
            assert_eq!(x[10 + t * 2 + f], want, "sample 0 frame {t}");
        }
    }
    assert_eq!(arena.stats().tag(Tag::Data).requested.current, 2 * 5 * 2 * 4 + 2 * 5);
    assert_eq!(b.x.storage().block().tag(), Tag::Data);
    assert_eq!(b.mask.storage().block().tag(), Tag::Data);

    // max_frames pads a short batch and truncates a long sample.
    let data = NpyDataset::open(&Source::Dir(dir.0.clone()), StreamOptions { max_frames: Some(6), ..opts() }).unwrap();
    let b = data.batch(&arena, &[0, 1], DType::F32, None).unwrap();
    assert_eq!(b.x.shape(), &[2, 6, 2]);
    assert_eq!(b.lengths, vec![3, 6]);
    assert_eq!(b.mask.to_vec::<u8>().unwrap(), vec![0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]);
    let x = b.x.to_vec_f32().unwrap();
    assert_eq!(&x[6..12], &[0.0; 6]);
    assert_eq!(x[12 + 5 * 2 + 1], frame_value(1, 5, 1));
}

#[test]
fn time_axis_other_than_the_first() {
    // Samples [channels 2, time T]: time is axis 1.
    let dir = TempDir::new("time_axis");
    for (s, n) in [(0usize, 4usize), (1, 2)] {
        let v: Vec<f32> = (0..2 * n).map(|e| frame_value(s, e % n, e / n)).collect();
        write_f32(&dir.path(&format!("{s}.npy")), &[2, n], &v);
    }
    let data = NpyDataset::open(&Source::Dir(dir.0.clone()), StreamOptions { time_axis: 1, ..opts() }).unwrap();
    assert_eq!(data.sample_shape(), &[2, 4]);
    let b = data.batch(&Arena::host(), &[1, 0], DType::F32, None).unwrap();
    assert_eq!(b.x.shape(), &[2, 2, 4]);
    assert_eq!(b.lengths, vec![2, 4]);
    let x = b.x.to_vec_f32().unwrap();
    // Sample 1, channel 1: two frames then padding.
    assert_eq!(&x[4..8], &[frame_value(1, 0, 1), frame_value(1, 1, 1), 0.0, 0.0]);
    assert_eq!(&x[12..16], &[frame_value(0, 0, 1), frame_value(0, 1, 1), frame_value(0, 2, 1), frame_value(0, 3, 1)]);
}

// ---- dtypes ---------------------------------------------------------------

#[test]
fn every_source_dtype_converts_to_every_float_dtype() {
    let dir = TempDir::new("dtypes");
    let vals: [i64; 6] = [0, 1, 2, 3, 100, 255];
    let sources: [(NpyDtype, Vec<u8>); 6] = [
        (NpyDtype::F16, vals.iter().flat_map(|&v| half::f16::from_f32(v as f32).to_le_bytes()).collect()),
        (NpyDtype::F32, vals.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect()),
        (NpyDtype::F64, vals.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect()),
        (NpyDtype::U8, vals.iter().map(|&v| v as u8).collect()),
        (NpyDtype::I32, vals.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect()),
        (NpyDtype::I64, vals.iter().flat_map(|&v| v.to_le_bytes()).collect()),
    ];
    let arena = Arena::host();
    for (dtype, bytes) in &sources {
        let path = dir.path(&format!("{}.npy", dtype.descr().replace(['<', '|'], "")));
        write_npy(&path, *dtype, &[2, 3], bytes).unwrap(); // 2 samples of 3 frames
        let data = NpyDataset::open(&Source::File(path), opts()).unwrap();
        for out in [DType::F32, DType::F16, DType::BF16] {
            let b = data.batch(&arena, &[1, 0], out, None).unwrap();
            assert_eq!(b.x.dtype(), out);
            // All six values are exact in bf16 (at most 8 significant bits).
            assert_eq!(b.x.to_vec_f32().unwrap(), vec![3., 100., 255., 0., 1., 2.], "{dtype:?} -> {out}");
        }
        let err = data.batch(&arena, &[0], DType::I32, None).unwrap_err().to_string();
        assert!(err.contains("f32, f16 or bf16"), "{err}");
    }
}

// ---- downsampling ---------------------------------------------------------

/// Level of a tone relative to a unit-amplitude sine, in dB, over the middle
/// of `x` (the ends see edge effects).
fn level_db(x: &[f32]) -> f64 {
    let mid = &x[x.len() / 8..x.len() * 7 / 8];
    let rms = (mid.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / mid.len() as f64).sqrt();
    20.0 * (rms * 2f64.sqrt()).log10()
}

#[test]
fn downsampling_filters_before_the_stride() {
    const K: usize = 4;
    const T: usize = 4001;
    // In cycles per input frame; the new Nyquist is 0.5 / K = 0.125.
    let (low, high) = (0.03, 0.18);
    let dir = TempDir::new("downsample");
    let tone =
        |f: f64| -> Vec<f32> { (0..T).map(|t| (2.0 * std::f64::consts::PI * f * t as f64).sin() as f32).collect() };
    // One file of two samples [T, 1]: the low tone, the high tone.
    let path = dir.path("tones.npy");
    let mut both = tone(low);
    both.extend(tone(high));
    write_f32(&path, &[2, T, 1], &both);

    let data = NpyDataset::open(&Source::File(path), StreamOptions { downsample: K, ..opts() }).unwrap();
    assert_eq!(data.frames(0), T.div_ceil(K)); // ceil(4001 / 4) = 1001
    assert_eq!(data.sample_shape(), &[1001, 1]);
    let b = data.batch(&Arena::host(), &[0, 1], DType::F32, None).unwrap();
    assert_eq!(b.x.shape(), &[2, 1001, 1]);
    let x = b.x.to_vec_f32().unwrap();
    let (kept, cut) = (level_db(&x[..1001]), level_db(&x[1001..]));
    println!("downsample x{K}: tone at {low} passes at {kept:.3} dB, tone at {high} at {cut:.1} dB");
    assert!(kept.abs() < 1.0, "a tone at 0.24 of the new band passes within 1 dB: {kept:.2} dB");
    assert!(cut < -20.0, "a tone above the new Nyquist is attenuated by > 20 dB: {cut:.2} dB");

    // A bare stride keeps the high tone at full level (aliased to 0.28 of
    // the new rate): the attenuation above comes from the filter.
    let strided: Vec<f32> = tone(high).iter().step_by(K).copied().collect();
    assert_eq!(strided.len(), 1001);
    println!("bare stride: tone at {high} at {:.3} dB", level_db(&strided));
    assert!(level_db(&strided).abs() < 1.0, "bare stride: {:.2} dB", level_db(&strided));
    // And the filtered output is not the stride of the input.
    assert!(x[1001..].iter().zip(&strided).any(|(a, b)| (a - b).abs() > 0.5));
}

#[test]
fn downsampled_lengths_in_a_dir() {
    let dir = TempDir::new("ds_lengths");
    write_dir_of_lengths(&dir, &[10, 9, 1], 1);
    let data = NpyDataset::open(&Source::Dir(dir.0.clone()), StreamOptions { downsample: 3, ..opts() }).unwrap();
    assert_eq!((data.frames(0), data.frames(1), data.frames(2)), (4, 3, 1));
    let b = data.batch(&Arena::host(), &[0, 1, 2], DType::F32, None).unwrap();
    assert_eq!(b.lengths, vec![4, 3, 1]);
    assert_eq!(b.x.shape(), &[3, 4, 1]);
    // A one-frame sample is constant: the unit-gain filter keeps its value.
    assert!((b.x.to_vec_f32().unwrap()[8] - frame_value(2, 0, 0)).abs() < 1e-3);
}

// ---- crops ----------------------------------------------------------------

#[test]
fn crops_are_seeded_in_bounds_and_copy_the_right_frames() {
    let dir = TempDir::new("crops");
    write_dir_of_lengths(&dir, &[50, 40, 8], 3);
    let data = NpyDataset::open(&Source::Dir(dir.0.clone()), StreamOptions { crop: Some(10), ..opts() }).unwrap();
    let arena = Arena::host();
    let draw = |seed| data.batch(&arena, &[0, 1, 2], DType::F32, Some(&mut Rng::new(seed))).unwrap();

    let (a, b) = (draw(7), draw(7));
    assert_eq!(a.x.to_vec_f32().unwrap(), b.x.to_vec_f32().unwrap(), "same seed, same crops");
    assert_eq!(a.lengths, vec![10, 10, 8], "the 8-frame sample is shorter than the crop and kept whole");
    assert_eq!(a.x.shape(), &[3, 10, 3]);

    let mut starts = std::collections::BTreeSet::new();
    for seed in 0..40 {
        let b = draw(seed);
        let x = b.x.to_vec_f32().unwrap();
        for (s, frames) in [(0usize, 50usize), (1, 40)] {
            // Frame 0 of the crop tells where it starts; every frame follows.
            let start = ((x[s * 30] - 100.0 * s as f32) / 10.0) as usize;
            assert!(start + 10 <= frames, "crop {start}..{} of {frames}", start + 10);
            for t in 0..10 {
                for f in 0..3 {
                    assert_eq!(x[s * 30 + t * 3 + f], frame_value(s, start + t, f));
                }
            }
            starts.insert((s, start));
        }
        assert_eq!(&x[60..84], &(0..24).map(|e| frame_value(2, e / 3, e % 3)).collect::<Vec<_>>()[..]);
    }
    assert!(starts.len() > 20, "40 seeds gave only {} distinct crops", starts.len());

    // Without an rng the crop is centred.
    let c = data.batch(&arena, &[0], DType::F32, None).unwrap();
    assert_eq!(c.x.to_vec_f32().unwrap()[0], frame_value(0, 20, 0));
}

// ---- targets --------------------------------------------------------------

#[test]
fn integer_targets_pad_with_the_given_value() {
    let dir = TempDir::new("targets");
    let labels: [&[i64]; 3] = [&[5, 6, 7], &[1], &[9, 8, 7, 6]];
    let arena = Arena::host();
    for dtype in [NpyDtype::U8, NpyDtype::I32, NpyDtype::I64] {
        let sub = dir.path(dtype.descr().trim_start_matches(['<', '|']));
        std::fs::create_dir_all(&sub).unwrap();
        for (s, l) in labels.iter().enumerate() {
            let bytes: Vec<u8> = match dtype {
                NpyDtype::U8 => l.iter().map(|&v| v as u8).collect(),
                NpyDtype::I32 => l.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
                _ => l.iter().flat_map(|&v| v.to_le_bytes()).collect(),
            };
            write_npy(&sub.join(format!("{s}.npy")), dtype, &[l.len()], &bytes).unwrap();
        }
        let t = NpyDataset::open(&Source::Dir(sub.clone()), opts()).unwrap();
        let b = t.targets(&arena, &[2, 1, 0], -1).unwrap();
        assert_eq!(b.y.dtype(), DType::I32);
        assert_eq!(b.y.shape(), &[3, 4]);
        assert_eq!(b.lengths, vec![4, 1, 3]);
        assert_eq!(b.y.to_vec::<i32>().unwrap(), vec![9, 8, 7, 6, 1, -1, -1, -1, 5, 6, 7, -1], "{dtype:?}");
        assert_eq!(b.y.storage().block().tag(), Tag::Data);

        // A fixed S pads further; a target longer than S is an error, not a cut.
        let t = NpyDataset::open(&Source::Dir(sub.clone()), StreamOptions { max_frames: Some(5), ..opts() }).unwrap();
        assert_eq!(t.targets(&arena, &[1], 0).unwrap().y.to_vec::<i32>().unwrap(), vec![1, 0, 0, 0, 0]);
        let t = NpyDataset::open(&Source::Dir(sub), StreamOptions { max_frames: Some(3), ..opts() }).unwrap();
        let err = t.targets(&arena, &[2], 0).unwrap_err().to_string();
        assert!(err.contains("2.npy") && err.contains("4 labels") && err.contains("max_frames 3"), "{err}");
    }
}

#[test]
fn targets_reject_floats_and_labels_outside_i32() {
    let dir = TempDir::new("targets_bad");
    let arena = Arena::host();
    let floats = dir.path("floats.npy");
    write_f32(&floats, &[2, 3], &[0.0; 6]);
    let err =
        NpyDataset::open(&Source::File(floats), opts()).unwrap().targets(&arena, &[0], 0).unwrap_err().to_string();
    assert!(err.contains("floats.npy, sample 0") && err.contains("'<f4'") && err.contains("astype('<i4')"), "{err}");

    let big = dir.path("big.npy");
    let v: Vec<u8> = [1i64, 1 << 40].iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(&big, NpyDtype::I64, &[1, 2], &v).unwrap();
    let err = NpyDataset::open(&Source::File(big), opts()).unwrap().targets(&arena, &[0], 0).unwrap_err().to_string();
    assert!(err.contains("big.npy") && err.contains("1099511627776 does not fit in i32"), "{err}");
}

// ---- meta arena -----------------------------------------------------------

#[test]
fn meta_arena_allocates_the_same_and_reads_nothing() {
    let dir = TempDir::new("meta");
    write_dir_of_lengths(&dir, &[30, 12, 25], 4);
    let o = StreamOptions { crop: Some(20), downsample: 2, ..opts() };
    let data = NpyDataset::open(&Source::Dir(dir.0.clone()), o).unwrap();
    let host = Arena::host();
    let meta = Arena::new(ArenaConfig { backing: Backing::Meta, ..Default::default() }).unwrap();
    let (mut r1, mut r2) = (Rng::new(3), Rng::new(3));
    let hb = data.batch(&host, &[0, 1, 2], DType::F16, Some(&mut r1)).unwrap();
    // The files are gone: a meta batch still works because it reads nothing.
    std::fs::remove_dir_all(&dir.0).unwrap();
    let mb = data.batch(&meta, &[0, 1, 2], DType::F16, Some(&mut r2)).unwrap();
    assert_eq!(mb.x.shape(), hb.x.shape());
    assert_eq!(mb.lengths, hb.lengths);
    assert_eq!(r1, r2, "the same rng draws");
    assert!(mb.x.is_meta() && mb.mask.is_meta());
    let (m, h) = (meta.stats().tag(Tag::Data).allocated, host.stats().tag(Tag::Data).allocated);
    assert_eq!((m.current, m.peak), (h.current, h.peak));
    assert_eq!(meta.stats().tag(Tag::Data).allocs, 2);
    // The host arena needs the files.
    let err = data.batch(&host, &[0], DType::F16, None).unwrap_err().to_string();
    assert!(err.contains("000.npy"), "{err}");
}

// ---- malformed files, through open/batch ----------------------------------

/// A version 1.0 file with a NumPy-padded header dict and `data` after it.
fn raw_npy(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    header.push_str(&" ".repeat((64 - (10 + header.len() + 1) % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn dict(descr: &str, fortran: &str, shape: &str) -> String {
    format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}")
}

/// Opens `bytes` as a File source and returns the error message, which must name the file.
fn open_error(dir: &TempDir, name: &str, bytes: &[u8]) -> String {
    let path = dir.path(name);
    std::fs::write(&path, bytes).unwrap();
    let msg = match NpyDataset::open(&Source::File(path.clone()), opts()) {
        Ok(_) => panic!("{name} opened"),
        Err(e) => e.to_string(),
    };
    assert!(msg.starts_with(&path.display().to_string()), "names the file: {msg}");
    msg
}

fn valid_f32_file() -> Vec<u8> {
    let mut f = encode_header(NpyDtype::F32, &[2, 3]).unwrap();
    f.extend(f32_bytes(&[0., 1., 2., 3., 4., 5.]));
    f
}

#[test]
fn malformed_wrong_magic() {
    let dir = TempDir::new("bad_magic");
    let mut f = valid_f32_file();
    f[1] = b'X';
    let msg = open_error(&dir, "magic.npy", &f);
    assert!(msg.contains("not a .npy file") && msg.contains("numpy.save"), "{msg}");
    let msg = open_error(&dir, "zip.npy", b"PK\x03\x04 this is an npz");
    assert!(msg.contains("not a .npy file") && msg.contains("savez"), "{msg}");
}

#[test]
fn malformed_truncated_header() {
    let dir = TempDir::new("trunc_header");
    let f = valid_f32_file();
    let msg = open_error(&dir, "header.npy", &f[..60]);
    assert!(msg.contains("truncated") && msg.contains("header needs 128 bytes but only 60"), "{msg}");
    let msg = open_error(&dir, "preamble.npy", &f[..7]);
    assert!(msg.contains("truncated") && msg.contains("preamble"), "{msg}");
}

#[test]
fn malformed_truncated_data() {
    let dir = TempDir::new("trunc_data");
    let f = valid_f32_file();
    let msg = open_error(&dir, "data.npy", &f[..f.len() - 5]);
    assert!(msg.contains("truncated") && msg.contains("data needs 24 bytes but only 19"), "{msg}");
}

#[test]
fn malformed_unsupported_dtypes() {
    let dir = TempDir::new("dtype");
    for (name, descr) in [("complex.npy", "<c8"), ("bigendian.npy", ">f4"), ("object.npy", "|O")] {
        let msg = open_error(&dir, name, &raw_npy(&dict(descr, "False", "(2, 2)"), &[0; 32]));
        assert!(msg.contains(&format!("'{descr}' is not supported")) && msg.contains("astype('<f4')"), "{msg}");
    }
}

#[test]
fn malformed_fortran_order() {
    let dir = TempDir::new("fortran");
    let msg = open_error(&dir, "fortran.npy", &raw_npy(&dict("<f4", "True", "(2, 3)"), &[0; 24]));
    assert!(msg.contains("Fortran") && msg.contains("ascontiguousarray"), "{msg}");
}

#[test]
fn malformed_shape_size_mismatch() {
    let dir = TempDir::new("mismatch");
    // The header promises 2 x 3 f32 (24 bytes) but 40 follow.
    let msg = open_error(&dir, "extra.npy", &raw_npy(&dict("<f4", "False", "(2, 3)"), &[0; 40]));
    assert!(msg.contains("found 40 data bytes") && msg.contains("24 bytes"), "{msg}");
    let msg = open_error(&dir, "negative.npy", &raw_npy(&dict("<f4", "False", "(2, -3)"), &[]));
    assert!(msg.contains("shape (2, -3)"), "{msg}");
}

#[test]
fn malformed_file_without_a_time_axis_or_samples() {
    let dir = TempDir::new("no_time");
    let mut f = encode_header(NpyDtype::F32, &[3]).unwrap();
    f.extend([0u8; 12]);
    let msg = open_error(&dir, "flat.npy", &f);
    assert!(msg.contains("no time axis") && msg.contains("Source::Dir"), "{msg}");
    let msg = open_error(&dir, "empty.npy", &encode_header(NpyDtype::F32, &[0, 4]).unwrap());
    assert!(msg.contains("no samples"), "{msg}");
}

#[test]
fn malformed_file_inside_a_dir_is_named() {
    let dir = TempDir::new("dir_bad_file");
    write_dir_of_lengths(&dir, &[3, 4], 2);
    let bad = dir.path("002.npy");
    std::fs::write(&bad, raw_npy(&dict("<f4", "True", "(3, 2)"), &[0; 24])).unwrap();
    let msg = NpyDataset::open(&Source::Dir(dir.0.clone()), opts()).err().unwrap().to_string();
    assert!(msg.starts_with(&bad.display().to_string()) && msg.contains("Fortran"), "{msg}");
}

#[test]
fn malformed_dir_whose_files_disagree() {
    let dir = TempDir::new("disagree");
    write_f32(&dir.path("a.npy"), &[5, 80], &[0.0; 400]);
    write_f32(&dir.path("b.npy"), &[7, 80], &[0.0; 560]); // other length: fine
    write_f32(&dir.path("c.npy"), &[5, 64], &[0.0; 320]);
    let msg = NpyDataset::open(&Source::Dir(dir.0.clone()), opts()).err().unwrap().to_string();
    let c = dir.path("c.npy").display().to_string();
    assert!(msg.starts_with(&c) && msg.contains("[5, 64]") && msg.contains("[5, 80]"), "{msg}");
    assert!(msg.contains("a.npy") && msg.contains("only the time axis (0) may differ"), "{msg}");

    // Different ranks disagree too.
    std::fs::remove_file(dir.path("c.npy")).unwrap();
    write_f32(&dir.path("d.npy"), &[5, 80, 1], &[0.0; 400]);
    let msg = NpyDataset::open(&Source::Dir(dir.0.clone()), opts()).err().unwrap().to_string();
    assert!(msg.contains("d.npy") && msg.contains("[5, 80, 1]"), "{msg}");
}

#[test]
fn malformed_empty_dir() {
    let dir = TempDir::new("empty_dir");
    std::fs::write(dir.path("notes.txt"), "no arrays here").unwrap();
    let msg = NpyDataset::open(&Source::Dir(dir.0.clone()), opts()).err().unwrap().to_string();
    assert!(msg.starts_with(&dir.0.display().to_string()) && msg.contains("no .npy files"), "{msg}");
    let missing = dir.path("nope");
    let msg = NpyDataset::open(&Source::Dir(missing.clone()), opts()).err().unwrap().to_string();
    assert!(msg.starts_with(&missing.display().to_string()) && msg.contains("directory of .npy files"), "{msg}");
}

#[test]
fn file_changed_after_open_is_caught_by_batch() {
    let dir = TempDir::new("changed");
    write_dir_of_lengths(&dir, &[3, 4], 2);
    let data = NpyDataset::open(&Source::Dir(dir.0.clone()), opts()).unwrap();
    write_f32(&dir.path("001.npy"), &[9, 2], &[0.0; 18]);
    let msg = data.batch(&Arena::host(), &[1], DType::F32, None).unwrap_err().to_string();
    assert!(msg.contains("001.npy") && msg.contains("changed since"), "{msg}");
    std::fs::write(dir.path("000.npy"), b"garbage").unwrap();
    let msg = data.batch(&Arena::host(), &[0], DType::F32, None).unwrap_err().to_string();
    assert!(msg.contains("000.npy") && msg.contains("not a .npy file"), "{msg}");
}

#[test]
fn bad_options_and_indices() {
    let dir = TempDir::new("options");
    write_dir_of_lengths(&dir, &[3], 2);
    let src = Source::Dir(dir.0.clone());
    let e = |o: StreamOptions| NpyDataset::open(&src, o).err().unwrap().to_string();
    assert!(e(StreamOptions { downsample: 0, ..opts() }).contains("downsample is 0"));
    assert!(e(StreamOptions { crop: Some(0), ..opts() }).contains("at least 1 frame"));
    let msg = e(StreamOptions { time_axis: 2, ..opts() });
    assert!(msg.contains("000.npy") && msg.contains("time_axis 2 is out of range"), "{msg}");
    let data = NpyDataset::open(&src, opts()).unwrap();
    assert!(data
        .batch(&Arena::host(), &[1], DType::F32, None)
        .unwrap_err()
        .to_string()
        .contains("sample 1 of a dataset of 1"));
    assert!(data.batch(&Arena::host(), &[], DType::F32, None).is_err());
}

// ---- memory: only the current batch is resident ---------------------------

#[cfg(target_os = "linux")]
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

#[cfg(target_os = "linux")]
#[test]
fn streaming_a_256_mib_file_keeps_rss_flat() {
    const N: usize = 1024;
    const T: usize = 256;
    const F: usize = 256;
    const BATCH: usize = 16;
    let value = |s: usize, e: usize| ((s * 7 + e * 3) % 1000) as f32;
    let dir = TempDir::new("rss");
    let path = dir.path("big.npy");
    {
        // Written one sample at a time so the writer itself stays small.
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        w.write_all(&encode_header(NpyDtype::F32, &[N, T, F]).unwrap()).unwrap();
        for s in 0..N {
            w.write_all(&f32_bytes(&(0..T * F).map(|e| value(s, e)).collect::<Vec<_>>())).unwrap();
        }
    }
    let file_len = std::fs::metadata(&path).unwrap().len() as usize;
    assert_eq!(file_len, 128 + (256 << 20));

    let data = NpyDataset::open(&Source::File(path.clone()), opts()).unwrap();
    let arena = Arena::host();
    let mut order: Vec<usize> = (0..N).collect();
    Rng::new(1).shuffle(&mut order); // random order: neighbours are read late
    let before = rss_bytes();
    let mut peak_rss = before;
    for idx in order.chunks(BATCH) {
        let b = data.batch(&arena, idx, DType::F32, None).unwrap();
        let x = b.x.data::<f32>().unwrap();
        for (j, &s) in idx.iter().enumerate() {
            for e in [0, 1, T * F / 2, T * F - 1] {
                assert_eq!(x[j * T * F + e], value(s, e));
            }
        }
        peak_rss = peak_rss.max(rss_bytes());
    }
    let grew = peak_rss.saturating_sub(before);
    let one_batch = round(BATCH * T * F * 4) + round(BATCH * T);
    let data_peak = arena.stats().tag(Tag::Data).allocated.peak;
    println!(
        "streamed {} MiB in batches of {} MiB: RSS before {:.1} MiB, peak {:.1} MiB (+{:.1} MiB); Data peak {} B",
        file_len >> 20,
        one_batch >> 20,
        before as f64 / 1048576.0,
        peak_rss as f64 / 1048576.0,
        grew as f64 / 1048576.0,
        data_peak
    );
    assert_eq!(data_peak, one_batch, "the arena holds one batch of Data at a time");
    assert!(grew < 32 << 20, "RSS grew by {grew} bytes reading a {file_len}-byte file");

    // Control: touching the same file through a plain map does show in RSS,
    // so the figure above measures what it claims.
    let file = std::fs::File::open(&path).unwrap();
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let start = rss_bytes();
    let sum: usize = map.iter().step_by(4096).map(|&b| b as usize).sum();
    let touched = rss_bytes() - start;
    println!("control: a plain map touched page by page adds {:.1} MiB (checksum {sum})", touched as f64 / 1048576.0);
    assert!(touched > file_len * 9 / 10, "control map added only {touched} bytes");
    drop(map);
    drop(data);
    std::fs::remove_file(&path).unwrap();
}
