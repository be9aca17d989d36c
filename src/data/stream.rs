//! Datasets that do not live in RAM: `.npy` files read through read-only
//! memory maps, one batch at a time.
//!
//! Only the current batch is resident. Its bytes are copied into arena
//! tensors tagged Data; then the mapped pages are handed back to the kernel
//! (`MADV_DONTNEED`, or unmapping a per-sample file), so the process RSS
//! does not grow with the dataset. Outside the arena a batch also uses one
//! sample's frames as f32 scratch on the heap.
//!
//! The files must not change while a dataset is open: a memory map shows
//! another writer's changes, and a file cut short under a map ends the
//! process with SIGBUS. That is the price of any memory-mapped reader.

pub mod resample;

use super::npy::{parse_header, read_header, NpyDtype, NpyError, NpyHeader};
use crate::alloc::{Arena, Backing, Tag};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{DType, Float, Tensor};
use crate::with_float;
use memmap2::{Mmap, MmapOptions};
use resample::{decimate, downsampled_len, input_range, lowpass_taps};
use std::fs;
use std::path::{Path, PathBuf};

/// Where samples come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// One `.npy` whose axis 0 is the sample; all samples have one length.
    File(PathBuf),
    /// A directory of `.npy` files, one sample each, taken in file-name
    /// order; lengths along the time axis may differ, all other axes must
    /// match. Entries that are not `*.npy` files are ignored.
    Dir(PathBuf),
}

/// How samples are cut into batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// Axis of a *sample* (after dropping the sample axis) that is time;
    /// variable lengths, crops and downsampling apply to it.
    pub time_axis: usize,
    /// Keep every k-th frame after a low-pass filter (see [`resample`]);
    /// `ceil(T / k)` frames remain. 1 = off.
    pub downsample: usize,
    /// Random crop of at most this many frames (after downsampling), drawn
    /// from the rng passed to [`NpyDataset::batch`]; without an rng the crop
    /// is centred. `None` = whole sample. Shorter samples are kept whole.
    pub crop: Option<usize>,
    /// Pad or truncate every batch to this many frames (after the crop);
    /// `None` pads to the longest sample in the batch.
    pub max_frames: Option<usize>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions { time_axis: 0, downsample: 1, crop: None, max_frames: None }
    }
}

/// A padded batch of sequences.
#[derive(Debug)]
pub struct SeqBatch {
    /// `[B, ...sample dims...]` with time padded with zeros, tagged Data.
    pub x: Tensor,
    /// Frames of each sample in `x` (after downsampling, crop and `max_frames`).
    pub lengths: Vec<usize>,
    /// u8 `[B, T]`, 1 = padded frame (the attention ops' `key_padding`), tagged Data.
    pub mask: Tensor,
}

/// A padded batch of integer targets.
#[derive(Debug)]
pub struct TargetBatch {
    /// i32 `[B, S]`, padded with the `pad` value given, tagged Data.
    pub y: Tensor,
    /// Labels of each sample.
    pub lengths: Vec<usize>,
}

enum Layout {
    /// Samples along axis 0 of one mapped file, `sample_bytes` each.
    File { path: PathBuf, header: NpyHeader, map: Mmap, sample_bytes: usize },
    /// One file per sample, mapped only while its sample is copied.
    Dir { files: Vec<(PathBuf, NpyHeader)> },
}

/// A dataset read through memory maps, batch by batch.
///
/// ```
/// use headroom::alloc::{Arena, Tag};
/// use headroom::data::npy::{write_npy, NpyDtype};
/// use headroom::data::stream::{NpyDataset, Source, StreamOptions};
/// use headroom::rng::Rng;
/// use headroom::tensor::DType;
///
/// // Two clips of 3 and 5 frames with 2 features each, one file per clip.
/// let dir = std::env::temp_dir().join(format!("headroom_doc_stream_{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// for (name, frames) in [("a.npy", 3usize), ("b.npy", 5)] {
///     let v: Vec<u8> = (0..frames * 2).flat_map(|i| (i as f32).to_le_bytes()).collect();
///     write_npy(&dir.join(name), NpyDtype::F32, &[frames, 2], &v).unwrap();
/// }
///
/// let data = NpyDataset::open(&Source::Dir(dir.clone()), StreamOptions::default()).unwrap();
/// assert_eq!((data.len(), data.sample_shape()), (2, &[5, 2][..]));
/// let arena = Arena::host();
/// let b = data.batch(&arena, &[0, 1], DType::F32, Some(&mut Rng::new(0))).unwrap();
/// assert_eq!(b.x.shape(), &[2, 5, 2]);
/// assert_eq!(b.lengths, vec![3, 5]);
/// assert_eq!(b.mask.to_vec::<u8>().unwrap(), vec![0, 0, 0, 1, 1, 0, 0, 0, 0, 0]);
/// assert_eq!(&b.x.to_vec_f32().unwrap()[..8], &[0., 1., 2., 3., 4., 5., 0., 0.]);
/// assert_eq!(arena.stats().tag(Tag::Data).requested.current, 2 * 5 * 2 * 4 + 2 * 5);
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub struct NpyDataset {
    layout: Layout,
    opts: StreamOptions,
    /// Per-sample dims, time at its longest after downsampling.
    sample_shape: Vec<usize>,
    taps: Vec<f32>,
}

const OPEN: &str = "NpyDataset::open";
const BATCH: &str = "NpyDataset::batch";
const TARGETS: &str = "NpyDataset::targets";

fn file_error(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::io(path.display(), msg)
}

fn npy_error(path: &Path, e: NpyError) -> Error {
    file_error(path, e.message())
}

impl NpyDataset {
    /// Opens a dataset, validating every file's header (headers only, no
    /// data is read). Errors name the file, what is wrong and the fix.
    pub fn open(source: &Source, opts: StreamOptions) -> Result<NpyDataset> {
        if opts.downsample == 0 {
            return Err(Error::invalid(OPEN, "downsample is 0; use 1 to keep every frame"));
        }
        if opts.crop == Some(0) || opts.max_frames == Some(0) {
            return Err(Error::invalid(OPEN, "crop and max_frames must be at least 1 frame, or None"));
        }
        let a = opts.time_axis;
        let layout = match source {
            Source::File(path) => {
                let header = read_header(path).map_err(|e| npy_error(path, e))?;
                if header.shape.len() < 2 {
                    return Err(file_error(
                        path,
                        format!(
                            "shape {:?} has no time axis: Source::File needs [samples, ...sample dims], \
                             e.g. [n, frames, features]; use Source::Dir for one sample per file",
                            header.shape
                        ),
                    ));
                }
                check_time_axis(path, &header.shape[1..], a)?;
                if header.shape[0] == 0 {
                    return Err(file_error(path, "holds no samples (axis 0 has length 0)"));
                }
                let file = fs::File::open(path).map_err(|e| file_error(path, e))?;
                // SAFETY: a read-only private map; the module doc states that
                // the file must not change while it is open.
                let map = unsafe { MmapOptions::new().map_copy_read_only(&file) }
                    .map_err(|e| file_error(path, format!("cannot memory-map: {e}")))?;
                if map.len() != header.data_offset + header.data_len() {
                    return Err(file_error(path, "file changed size while being opened; open it again"));
                }
                let sample_bytes = header.data_len() / header.shape[0];
                Layout::File { path: path.clone(), header, map, sample_bytes }
            }
            Source::Dir(dir) => Layout::Dir { files: open_dir(dir, a)? },
        };
        let taps = lowpass_taps(opts.downsample);
        let mut data = NpyDataset { layout, opts, sample_shape: Vec::new(), taps };
        let longest = (0..data.len()).map(|i| data.frames(i)).max().unwrap_or(0);
        data.sample_shape = data.dims(0).to_vec();
        data.sample_shape[a] = longest;
        Ok(data)
    }

    pub fn len(&self) -> usize {
        match &self.layout {
            Layout::File { header, .. } => header.shape[0],
            Layout::Dir { files } => files.len(),
        }
    }

    /// Always false: `open` refuses a dataset with no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per-sample shape, the time axis at its longest (after downsampling).
    pub fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }

    /// Frames of sample `i` along time after downsampling: `ceil(T / k)`.
    /// Panics if `i >= len()`, like slice indexing.
    pub fn frames(&self, i: usize) -> usize {
        downsampled_len(self.dims(i)[self.opts.time_axis], self.opts.downsample)
    }

    /// Stored dims of sample `i` (before downsampling).
    fn dims(&self, i: usize) -> &[usize] {
        match &self.layout {
            Layout::File { header, .. } => &header.shape[1..],
            Layout::Dir { files } => &files[i].1.shape,
        }
    }

    fn dtype(&self, i: usize) -> NpyDtype {
        match &self.layout {
            Layout::File { header, .. } => header.dtype,
            Layout::Dir { files } => files[i].1.dtype,
        }
    }

    fn check_indices(&self, op: &'static str, idx: &[usize]) -> Result<()> {
        if idx.is_empty() {
            return Err(Error::invalid(op, "no sample indices given; a batch needs at least one"));
        }
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.len()) {
            return Err(Error::index(op, format!("sample {bad} of a dataset of {} samples", self.len())));
        }
        Ok(())
    }

    /// Samples `idx` as one padded batch: `x` of float `dtype` `[B, ...sample
    /// dims...]` with time padded with zeros, the frames of each sample, and
    /// a u8 padding mask `[B, T]` (1 = padded), all tagged Data on `arena`.
    /// Crops are drawn from `rng` in the order of `idx`, one draw per sample
    /// longer than the crop. On a meta arena: the same allocations and rng
    /// draws, no reads.
    pub fn batch(&self, arena: &Arena, idx: &[usize], dtype: DType, rng: Option<&mut Rng>) -> Result<SeqBatch> {
        if !dtype.is_float() {
            return Err(Error::dtype(
                BATCH,
                format!("asked for {dtype}; inputs are f32, f16 or bf16 (use targets() for labels)"),
            ));
        }
        self.check_indices(BATCH, idx)?;
        let mut rng = rng;
        let windows: Vec<(usize, usize)> =
            idx.iter().map(|&i| self.window(self.frames(i), rng.as_deref_mut())).collect();
        let lengths: Vec<usize> = windows.iter().map(|w| w.1).collect();
        let t = self.opts.max_frames.unwrap_or_else(|| lengths.iter().copied().max().unwrap_or(0));

        let a = self.opts.time_axis;
        let mut shape = vec![idx.len()];
        shape.extend_from_slice(&self.sample_shape);
        shape[1 + a] = t;
        let x = Tensor::empty(arena, &shape, dtype, Tag::Data, "data.batch")?;
        let mask = Tensor::empty(arena, &[idx.len(), t], DType::U8, Tag::Data, "data.mask")?;
        if arena.backing() == Backing::Meta {
            return Ok(SeqBatch { x, lengths, mask });
        }

        for (row, &len) in mask.data_mut::<u8>()?.chunks_mut(t.max(1)).zip(&lengths) {
            for (f, m) in row.iter_mut().enumerate() {
                *m = (f >= len) as u8;
            }
        }
        with_float!(BATCH, dtype, |T| self.fill::<T>(x.data_mut::<T>()?, idx, &windows, t)?);
        Ok(SeqBatch { x, lengths, mask })
    }

    /// The crop window `(start, len)` in downsampled frames, cut to `max_frames`.
    fn window(&self, frames: usize, rng: Option<&mut Rng>) -> (usize, usize) {
        let (start, len) = match self.opts.crop {
            Some(c) if frames > c => match rng {
                Some(r) => (r.below(frames - c + 1), c),
                None => ((frames - c) / 2, c),
            },
            _ => (0, frames),
        };
        (start, len.min(self.opts.max_frames.unwrap_or(usize::MAX)))
    }

    /// Copies each sample's window into `out` (`[B, outer, t, inner]` in
    /// memory), converting, filtering and striding; padding becomes zero.
    fn fill<T: Float>(&self, out: &mut [T], idx: &[usize], windows: &[(usize, usize)], t: usize) -> Result<()> {
        out.fill(T::from_f32(0.0));
        let a = self.opts.time_axis;
        let k = self.opts.downsample;
        let dims = &self.sample_shape;
        let (outer, inner) = (dims[..a].iter().product::<usize>(), dims[a + 1..].iter().product::<usize>());
        let (mut stage, mut acc) = (Vec::new(), Vec::new());
        for (b, (&i, &(start, len))) in idx.iter().zip(windows).enumerate() {
            let frames = self.dims(i)[a];
            let (lo, hi) = input_range(frames, k, self.taps.len(), start, len);
            self.with_sample(BATCH, i, |bytes, dtype| {
                let es = dtype.size();
                for o in 0..outer {
                    let first = (o * frames + lo) * inner;
                    stage.resize((hi - lo) * inner, 0.0);
                    to_f32(dtype, &bytes[first * es..(first + stage.len()) * es], &mut stage);
                    acc.resize(len * inner, 0.0);
                    decimate(&stage, lo, frames, inner, k, &self.taps, start, &mut acc);
                    let dst = ((b * outer + o) * t) * inner;
                    for (d, &v) in out[dst..dst + acc.len()].iter_mut().zip(&acc) {
                        *d = T::from_f32(v);
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Integer targets (e.g. a transcript per sample for CTC or seq2seq) from
    /// a dataset of 1-d `u8`, `i32` or `i64` samples: i32 `[B, S]` padded with
    /// `pad`, and each sample's length. `S` is `max_frames` if set (a longer
    /// target is an error, never cut), else the longest target in the batch.
    pub fn targets(&self, arena: &Arena, idx: &[usize], pad: i32) -> Result<TargetBatch> {
        if self.sample_shape.len() != 1 {
            return Err(Error::shape(
                TARGETS,
                format!("samples of shape {:?}; targets are 1-d label sequences, one per sample", self.sample_shape),
            ));
        }
        if self.opts.downsample != 1 || self.opts.crop.is_some() {
            return Err(Error::invalid(
                TARGETS,
                "downsample and crop do not apply to labels; open the targets with downsample 1 and crop None",
            ));
        }
        self.check_indices(TARGETS, idx)?;
        if let Some(&i) = idx.iter().find(|&&i| !matches!(self.dtype(i), NpyDtype::U8 | NpyDtype::I32 | NpyDtype::I64))
        {
            return Err(Error::dtype(
                TARGETS,
                format!(
                    "{} holds '{}'; labels must be integers ('|u1', '<i4' or '<i8'): save them with x.astype('<i4')",
                    self.name(i),
                    self.dtype(i).descr()
                ),
            ));
        }
        let lengths: Vec<usize> = idx.iter().map(|&i| self.frames(i)).collect();
        let s = match self.opts.max_frames {
            Some(s) => {
                if let Some((&i, &n)) = idx.iter().zip(&lengths).find(|(_, &n)| n > s) {
                    return Err(Error::shape(
                        TARGETS,
                        format!("{} has {n} labels, more than max_frames {s}; raise max_frames", self.name(i)),
                    ));
                }
                s
            }
            None => lengths.iter().copied().max().unwrap_or(0),
        };
        let y = Tensor::empty(arena, &[idx.len(), s], DType::I32, Tag::Data, "data.targets")?;
        if arena.backing() == Backing::Meta {
            return Ok(TargetBatch { y, lengths });
        }
        let out = y.data_mut::<i32>()?;
        out.fill(pad);
        for (row, &i) in out.chunks_mut(s.max(1)).zip(idx) {
            self.with_sample(TARGETS, i, |bytes, dtype| {
                to_i32(dtype, bytes, row).map_err(|msg| Error::dtype(TARGETS, format!("{}: {msg}", self.name(i))))
            })?;
        }
        Ok(TargetBatch { y, lengths })
    }

    /// "file.npy" or "file.npy, sample 7", for messages.
    fn name(&self, i: usize) -> String {
        match &self.layout {
            Layout::File { path, .. } => format!("{}, sample {i}", path.display()),
            Layout::Dir { files } => files[i].0.display().to_string(),
        }
    }

    /// Runs `f` on sample `i`'s data bytes, then gives the pages back.
    fn with_sample<R>(&self, op: &'static str, i: usize, f: impl FnOnce(&[u8], NpyDtype) -> Result<R>) -> Result<R> {
        match &self.layout {
            Layout::File { header, map, sample_bytes, .. } => {
                let start = header.data_offset + i * sample_bytes;
                let r = f(&map[start..start + sample_bytes], header.dtype);
                release(map, start, *sample_bytes);
                r
            }
            Layout::Dir { files } => {
                let (path, header) = &files[i];
                let file = fs::File::open(path).map_err(|e| file_error(path, e))?;
                // SAFETY: as in `open`; unmapped when `map` drops below.
                let map = unsafe { MmapOptions::new().map_copy_read_only(&file) }
                    .map_err(|e| file_error(path, format!("cannot memory-map: {e}")))?;
                match parse_header(&map) {
                    Ok(h) if h == *header => f(&map[h.data_offset..], h.dtype),
                    Ok(_) => Err(file_error(
                        path,
                        format!("{op}: the file changed since the dataset was opened; open it again"),
                    )),
                    Err(e) => Err(npy_error(path, e)),
                }
            }
        }
    }
}

/// Reads a directory's `.npy` headers in file-name order and checks that
/// they agree on everything but the time axis.
fn open_dir(dir: &Path, a: usize) -> Result<Vec<(PathBuf, NpyHeader)>> {
    let entries =
        fs::read_dir(dir).map_err(|e| file_error(dir, format!("{e}; Source::Dir needs a directory of .npy files")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| file_error(dir, e))?.path();
        if path.extension().is_some_and(|x| x == "npy") && path.is_file() {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(file_error(
            dir,
            "holds no .npy files; save one sample per file with numpy.save(dir/f'{i:06}.npy', x)",
        ));
    }
    paths.sort_by(|p, q| p.file_name().cmp(&q.file_name()));

    let mut files: Vec<(PathBuf, NpyHeader)> = Vec::with_capacity(paths.len());
    for path in paths {
        let header = read_header(&path).map_err(|e| npy_error(&path, e))?;
        check_time_axis(&path, &header.shape, a)?;
        if let Some((first, h0)) = files.first() {
            let differs = |h: &NpyHeader| {
                h.shape.len() != h0.shape.len() || (0..h.shape.len()).any(|d| d != a && h.shape[d] != h0.shape[d])
            };
            if differs(&header) {
                return Err(file_error(
                    &path,
                    format!(
                        "shape {:?} does not match {:?} of {}: only the time axis ({a}) may differ between \
                         files; re-save the samples with the same other dims, or set time_axis",
                        header.shape,
                        h0.shape,
                        first.display()
                    ),
                ));
            }
        }
        files.push((path, header));
    }
    Ok(files)
}

fn check_time_axis(path: &Path, sample: &[usize], a: usize) -> Result<()> {
    if a >= sample.len() {
        return Err(file_error(
            path,
            format!(
                "time_axis {a} is out of range for samples of shape {sample:?}; set time_axis below {}",
                sample.len().max(1)
            ),
        ));
    }
    Ok(())
}

/// The kernel maps up to 64 KiB of already-cached neighbours around each
/// page fault (`fault_around_bytes`); release that window too, or pages of
/// samples not yet read would stay resident.
const FAULT_AROUND: usize = 64 << 10;

/// Tells the kernel the mapped bytes `[start, start + len)` are no longer
/// needed, widened to whole fault-around windows, so they leave the RSS.
fn release(map: &Mmap, start: usize, len: usize) {
    #[cfg(unix)]
    {
        let base = map.as_ptr() as usize;
        let lo = ((base + start) & !(FAULT_AROUND - 1)).max(base) - base;
        let hi = ((base + start + len).next_multiple_of(FAULT_AROUND) - base).min(map.len());
        // SAFETY: no borrow of these bytes outlives `with_sample`'s closure,
        // and the map is private and read-only with no written (copied)
        // pages, so DONTNEED drops clean page-cache pages that fault back in
        // from the file unchanged. A refusal is only a hint lost: ignore it.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo) };
    }
    #[cfg(not(unix))]
    let _ = (map, start, len); // no madvise: pages stay cached until the map drops
}

/// Little-endian elements of `dtype` as f32 (integers above 2^24 round).
fn to_f32(dtype: NpyDtype, bytes: &[u8], out: &mut [f32]) {
    fn conv<const N: usize>(bytes: &[u8], out: &mut [f32], f: impl Fn([u8; N]) -> f32) {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(N)) {
            *o = f(c.try_into().unwrap());
        }
    }
    match dtype {
        NpyDtype::U8 => conv(bytes, out, |b: [u8; 1]| b[0] as f32),
        NpyDtype::F16 => conv(bytes, out, |b| half::f16::from_le_bytes(b).to_f32()),
        NpyDtype::F32 => conv(bytes, out, f32::from_le_bytes),
        NpyDtype::F64 => conv(bytes, out, |b| f64::from_le_bytes(b) as f32),
        NpyDtype::I32 => conv(bytes, out, |b| i32::from_le_bytes(b) as f32),
        NpyDtype::I64 => conv(bytes, out, |b| i64::from_le_bytes(b) as f32),
    }
}

/// Little-endian integer labels as i32; `out` may be longer (padding).
fn to_i32(dtype: NpyDtype, bytes: &[u8], out: &mut [i32]) -> std::result::Result<(), String> {
    match dtype {
        NpyDtype::U8 => out.iter_mut().zip(bytes).for_each(|(o, &b)| *o = b as i32),
        NpyDtype::I32 => {
            out.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(o, c)| *o = i32::from_le_bytes(c.try_into().unwrap()))
        }
        NpyDtype::I64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                let v = i64::from_le_bytes(c.try_into().unwrap());
                *o = i32::try_from(v).map_err(|_| format!("label {v} does not fit in i32"))?;
            }
        }
        d => return Err(format!("labels are '{}', not integers", d.descr())), // targets() checked first
    }
    Ok(())
}
