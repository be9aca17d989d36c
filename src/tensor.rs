//! Tensors: a shape, strides and an offset over a shared storage whose bytes
//! come from an arena block with a tag.
//!
//! Views (reshape of contiguous data, transpose, permute, slice, expand)
//! share the storage and copy nothing; an op that needs dense input calls
//! [`Tensor::contiguous`], which copies only when the layout is not dense.

use crate::alloc::{Arena, Backing, Block, Tag};
use crate::error::{Error, Result};
use crate::rng::Rng;
use half::{bf16, f16};
use serde::Serialize;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    F32,
    F16,
    #[serde(rename = "bf16")]
    BF16,
    /// Indices and targets.
    I32,
    /// Masks (0 or 1).
    U8,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::U8 => "u8",
        }
    }
    pub fn parse(s: &str) -> Option<DType> {
        [DType::F32, DType::F16, DType::BF16, DType::I32, DType::U8].into_iter().find(|d| d.name() == s)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a tensor's bytes live and where its kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    Cpu,
    /// Shapes and bytes only: ops allocate exactly as on a real device and
    /// run no kernel. The planner runs models here.
    Meta,
    /// GPU memory; ops run the CUDA kernels (`cuda::ops`).
    Cuda,
}

/// Element types stored in tensors; all compute in f32 registers.
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    const DTYPE: DType;
}

/// Float element types: loaded to f32, computed, stored back.
pub trait Float: Element + Copy {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for f16 {
    const DTYPE: DType = DType::F16;
}
impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}
impl Element for u8 {
    const DTYPE: DType = DType::U8;
}
impl Float for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}
impl Float for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}
impl Float for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// Run `$body` with `$T` bound to the Rust type of a float dtype, or return
/// a dtype error naming `$op`.
#[macro_export]
macro_rules! with_float {
    ($op:expr, $dtype:expr, |$T:ident| $body:expr) => {
        match $dtype {
            $crate::tensor::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::tensor::DType::F16 => {
                type $T = half::f16;
                $body
            }
            $crate::tensor::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            d => {
                return Err($crate::error::Error::dtype(
                    $op,
                    format!("got {d}, expected a float dtype (f32, f16 or bf16); convert with .to_dtype()"),
                ))
            }
        }
    };
}

/// The bytes behind one or more tensors.
pub struct Storage {
    block: Block,
    dtype: DType,
    numel: usize,
    /// How many tape nodes hold this storage for backward.
    pub(crate) saves: AtomicU32,
}

impl Storage {
    pub fn block(&self) -> &Block {
        &self.block
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        self.numel
    }
    pub fn nbytes(&self) -> usize {
        self.numel * self.dtype.size()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Inner {
    id: u64,
    storage: Arc<Storage>,
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
    requires_grad: bool,
    is_leaf: bool,
    grad: Mutex<Option<Tensor>>,
}

/// A tensor handle; cloning shares the same tensor (and its `.grad`).
///
/// ```
/// use headroom::{alloc::{Arena, Tag}, tensor::{DType, Tensor}};
/// let arena = Arena::host();
/// let x = Tensor::from_f32(&arena, &[2, 3], &[1., 2., 3., 4., 5., 6.], DType::F32, Tag::Data).unwrap();
/// let t = x.transpose(0, 1).unwrap(); // a view: no copy
/// assert_eq!(t.shape(), &[3, 2]);
/// assert_eq!(t.to_vec_f32().unwrap(), vec![1., 4., 2., 5., 3., 6.]);
/// assert_eq!(arena.stats().tag(Tag::Data).requested.current, 24);
/// ```
#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

impl Tensor {
    // ---- creation ----

    /// A tensor whose contents are unspecified (the op that asks writes every element).
    /// A shape whose bytes do not fit in memory at all is an error naming `label`.
    pub fn empty(arena: &Arena, shape: &[usize], dtype: DType, tag: Tag, label: &'static str) -> Result<Tensor> {
        let (numel, bytes) = sized(label, shape, dtype)?;
        let block = arena.alloc(bytes, tag, label)?;
        let storage = Arc::new(Storage { block, dtype, numel, saves: AtomicU32::new(0) });
        Ok(Tensor::from_storage(storage, shape.to_vec(), contiguous_strides(shape), 0, false, true))
    }

    pub fn zeros(arena: &Arena, shape: &[usize], dtype: DType, tag: Tag) -> Result<Tensor> {
        let t = Tensor::empty(arena, shape, dtype, tag, "zeros")?;
        if let Some(g) = t.gpu() {
            g.zero(t.device_ptr(), t.nbytes())?;
        } else if let Some(bytes) = t.bytes_mut() {
            bytes.fill(0);
        }
        Ok(t)
    }

    pub fn full(arena: &Arena, shape: &[usize], value: f32, dtype: DType, tag: Tag) -> Result<Tensor> {
        let t = Tensor::empty(arena, shape, dtype, tag, "full")?;
        if t.is_cuda() {
            let host = Tensor::full(&Arena::host(), shape, value, dtype, tag)?;
            t.upload(host.raw_bytes()?)?;
        } else if !t.is_meta() {
            with_float!("full", dtype, |T| t.data_mut::<T>()?.fill(T::from_f32(value)));
        }
        Ok(t)
    }

    /// Copy f32 values into a new tensor of a float dtype.
    pub fn from_f32(arena: &Arena, shape: &[usize], values: &[f32], dtype: DType, tag: Tag) -> Result<Tensor> {
        check_len("from_f32", shape, values.len())?;
        let t = Tensor::empty(arena, shape, dtype, tag, "from_f32")?;
        if t.is_cuda() {
            let host = Tensor::from_f32(&Arena::host(), shape, values, dtype, tag)?;
            t.upload(host.raw_bytes()?)?;
        } else if !t.is_meta() {
            with_float!("from_f32", dtype, |T| {
                for (o, &v) in t.data_mut::<T>()?.iter_mut().zip(values) {
                    *o = T::from_f32(v);
                }
            });
        }
        Ok(t)
    }

    /// Copy elements of any stored type into a new tensor.
    pub fn from_slice<T: Element>(arena: &Arena, shape: &[usize], values: &[T], tag: Tag) -> Result<Tensor> {
        check_len("from_slice", shape, values.len())?;
        let t = Tensor::empty(arena, shape, T::DTYPE, tag, "from_slice")?;
        if t.is_cuda() {
            t.upload(bytemuck::cast_slice(values))?;
        } else if !t.is_meta() {
            t.data_mut::<T>()?.copy_from_slice(values);
        }
        Ok(t)
    }

    /// This tensor's values in a new dense tensor on `arena` (host ↔ GPU),
    /// tagged `tag`; no autograd.
    pub fn copy_to(&self, arena: &Arena, tag: Tag) -> Result<Tensor> {
        let src = self.contiguous_untracked("copy_to")?;
        let out = Tensor::empty(arena, self.shape(), self.dtype(), tag, "copy_to")?;
        match (src.is_cuda(), out.is_cuda(), src.is_meta() || out.is_meta()) {
            (_, _, true) => {}
            (false, false, _) => out.raw_bytes_mut()?.copy_from_slice(src.raw_bytes()?),
            (false, true, _) => out.upload(src.raw_bytes()?)?,
            (true, false, _) => src.download(out.raw_bytes_mut()?)?,
            (true, true, _) => {
                let bounce = src.copy_to(&Arena::host(), tag)?;
                out.upload(bounce.raw_bytes()?)?;
            }
        }
        Ok(out)
    }

    /// Normal samples with standard deviation `std`.
    pub fn randn(arena: &Arena, shape: &[usize], std: f32, dtype: DType, tag: Tag, rng: &mut Rng) -> Result<Tensor> {
        if arena.backing() == Backing::Meta {
            return Tensor::empty(arena, shape, dtype, tag, "from_f32"); // planning: bytes, not values
        }
        let (n, _) = sized("randn", shape, dtype)?;
        let v: Vec<f32> = (0..n).map(|_| rng.normal() * std).collect();
        Tensor::from_f32(arena, shape, &v, dtype, tag)
    }

    /// Uniform samples in `[-bound, bound)`.
    pub fn uniform(
        arena: &Arena,
        shape: &[usize],
        bound: f32,
        dtype: DType,
        tag: Tag,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        if arena.backing() == Backing::Meta {
            return Tensor::empty(arena, shape, dtype, tag, "from_f32");
        }
        let (n, _) = sized("uniform", shape, dtype)?;
        let v: Vec<f32> = (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) * bound).collect();
        Tensor::from_f32(arena, shape, &v, dtype, tag)
    }

    pub(crate) fn from_storage(
        storage: Arc<Storage>,
        shape: Vec<usize>,
        strides: Vec<usize>,
        offset: usize,
        requires_grad: bool,
        is_leaf: bool,
    ) -> Tensor {
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            storage,
            shape,
            strides,
            offset,
            requires_grad,
            is_leaf,
            grad: Mutex::new(None),
        }))
    }

    /// A new handle on the same bytes with another layout. Autograd-unaware:
    /// ops wrap it (see `ops::shape`).
    pub(crate) fn restride(&self, shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Tensor {
        Tensor::from_storage(self.0.storage.clone(), shape, strides, offset, false, true)
    }

    /// This tensor as an output of a recorded op: requires grad, not a leaf.
    pub(crate) fn as_op_output(&self) -> Tensor {
        Tensor::from_storage(
            self.0.storage.clone(),
            self.0.shape.clone(),
            self.0.strides.clone(),
            self.0.offset,
            true,
            false,
        )
    }

    /// A leaf that collects gradients in `.grad` (a parameter).
    pub fn requires_grad(&self) -> Tensor {
        Tensor::from_storage(
            self.0.storage.clone(),
            self.0.shape.clone(),
            self.0.strides.clone(),
            self.0.offset,
            true,
            true,
        )
    }

    /// The same bytes, cut from the tape.
    pub fn detach(&self) -> Tensor {
        self.restride(self.0.shape.clone(), self.0.strides.clone(), self.0.offset)
    }

    // ---- properties ----

    pub fn id(&self) -> u64 {
        self.0.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    pub fn strides(&self) -> &[usize] {
        &self.0.strides
    }
    pub fn offset(&self) -> usize {
        self.0.offset
    }
    pub fn rank(&self) -> usize {
        self.0.shape.len()
    }
    /// Size of dimension `d` (negative counts from the end), or an error
    /// when the tensor has no such dimension.
    ///
    /// ```
    /// use headroom::{Arena, DType, Tag, Tensor};
    /// let x = Tensor::zeros(&Arena::host(), &[2, 3], DType::F32, Tag::Data).unwrap();
    /// assert_eq!(x.size(-1).unwrap(), 3);
    /// assert!(x.size(2).unwrap_err().to_string().contains("[2, 3]"));
    /// ```
    pub fn size(&self, d: isize) -> Result<usize> {
        Ok(self.0.shape[self.check_axis("size", d)?])
    }
    /// Size of dimension `d` for ops that have already checked the rank
    /// (panics otherwise, so it is not public: users call [`Tensor::size`]).
    pub(crate) fn dim(&self, d: isize) -> usize {
        self.0.shape[self.axis(d)]
    }
    /// Resolve a possibly negative axis (panics on out of range: use `check_axis` for user input).
    pub(crate) fn axis(&self, d: isize) -> usize {
        if d < 0 {
            (self.rank() as isize + d) as usize
        } else {
            d as usize
        }
    }
    /// Resolve an axis given by a user, with an error naming `op`.
    pub fn check_axis(&self, op: &'static str, d: isize) -> Result<usize> {
        let r = self.rank() as isize;
        if d < -r || d >= r {
            return Err(Error::index(op, format!("axis {d} for a tensor of shape {:?}", self.shape())));
        }
        Ok(self.axis(d))
    }
    pub fn numel(&self) -> usize {
        self.0.shape.iter().product()
    }
    pub fn dtype(&self) -> DType {
        self.0.storage.dtype
    }
    pub fn storage(&self) -> &Arc<Storage> {
        &self.0.storage
    }
    pub fn arena(&self) -> &Arena {
        self.0.storage.block.arena()
    }
    pub fn device(&self) -> Device {
        match self.arena().backing() {
            Backing::Host => Device::Cpu,
            Backing::Meta => Device::Meta,
            Backing::Cuda => Device::Cuda,
        }
    }
    /// Whether the bytes are GPU memory (ops run CUDA kernels on it).
    pub fn is_cuda(&self) -> bool {
        self.device() == Device::Cuda
    }
    /// The GPU of a CUDA tensor.
    pub fn gpu(&self) -> Option<crate::cuda::Gpu> {
        self.arena().gpu()
    }
    /// Device address of this view's first element (offset included).
    pub fn device_ptr(&self) -> u64 {
        self.0.storage.block.as_ptr() as u64 + (self.0.offset * self.dtype().size()) as u64
    }
    pub fn is_meta(&self) -> bool {
        self.0.storage.block.as_ptr().is_null()
    }
    pub fn requires_grad_flag(&self) -> bool {
        self.0.requires_grad
    }
    pub fn is_leaf(&self) -> bool {
        self.0.is_leaf
    }
    /// Bytes of this view's elements (not of the whole storage).
    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype().size()
    }
    /// No other handle shares this tensor or its storage: safe to update in place.
    pub(crate) fn is_exclusive(&self) -> bool {
        Arc::strong_count(&self.0) == 1 && Arc::strong_count(&self.0.storage) == 1
    }
    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1;
        for (&n, &s) in self.0.shape.iter().zip(&self.0.strides).rev() {
            if n != 1 && s != expect {
                return false;
            }
            expect *= n;
        }
        true
    }

    // ---- gradient of a leaf ----

    // A panic elsewhere while the lock was held must not make `.grad` panic too.
    fn grad_slot(&self) -> std::sync::MutexGuard<'_, Option<Tensor>> {
        self.0.grad.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn grad(&self) -> Option<Tensor> {
        self.grad_slot().clone()
    }
    pub fn set_grad(&self, g: Option<Tensor>) {
        *self.grad_slot() = g;
    }
    /// Drop the gradient (its bytes go back to the arena).
    pub fn zero_grad(&self) {
        self.set_grad(None);
    }

    // ---- data access ----

    fn check_data<T: Element>(&self, op: &'static str) -> Result<()> {
        if T::DTYPE != self.dtype() {
            return Err(Error::dtype(op, format!("tensor is {}, asked for {}", self.dtype(), T::DTYPE)));
        }
        if self.is_meta() {
            return Err(Error::device(op, "a meta tensor has shapes and bytes but no values"));
        }
        if self.is_cuda() {
            return Err(Error::device(
                op,
                format!(
                    "{:?} {} is in GPU memory and this op has no CUDA kernel; copy it with .copy_to(&host_arena, ..) or read it with .to_vec_f32()",
                    self.shape(),
                    self.dtype()
                ),
            ));
        }
        Ok(())
    }

    /// The bytes of a dense host tensor.
    fn raw_bytes(&self) -> Result<&[u8]> {
        if !self.is_contiguous() || self.is_cuda() || self.is_meta() {
            return Err(Error::invalid("bytes", "needs a dense host tensor"));
        }
        let p = self.0.storage.block.as_ptr();
        let at = self.0.offset * self.dtype().size();
        Ok(unsafe { std::slice::from_raw_parts(p.add(at), self.nbytes()) })
    }

    #[allow(clippy::mut_from_ref)]
    fn raw_bytes_mut(&self) -> Result<&mut [u8]> {
        let b = self.raw_bytes()?;
        Ok(unsafe { std::slice::from_raw_parts_mut(b.as_ptr() as *mut u8, b.len()) })
    }

    /// Write a dense CUDA tensor's bytes from the host.
    fn upload(&self, bytes: &[u8]) -> Result<()> {
        let g = self.gpu().ok_or_else(|| Error::device("upload", "not a CUDA tensor"))?;
        if !self.is_contiguous() || bytes.len() != self.nbytes() {
            return Err(Error::invalid("upload", "needs a dense tensor of exactly these bytes"));
        }
        g.upload(self.device_ptr(), bytes)
    }

    /// Read a dense CUDA tensor's bytes to the host.
    fn download(&self, bytes: &mut [u8]) -> Result<()> {
        let g = self.gpu().ok_or_else(|| Error::device("download", "not a CUDA tensor"))?;
        if !self.is_contiguous() || bytes.len() != self.nbytes() {
            return Err(Error::invalid("download", "needs a dense tensor of exactly these bytes"));
        }
        g.download(bytes, self.device_ptr())
    }

    /// The whole storage as elements (views index it with strides and offset).
    pub fn storage_data<T: Element>(&self) -> Result<&[T]> {
        self.check_data::<T>("data")?;
        let s = &self.0.storage;
        Ok(unsafe { std::slice::from_raw_parts(s.block.as_ptr() as *const T, s.numel) })
    }

    /// The elements of a contiguous tensor.
    pub fn data<T: Element>(&self) -> Result<&[T]> {
        if !self.is_contiguous() {
            return Err(Error::invalid("data", "tensor is a strided view; call .contiguous() first"));
        }
        Ok(&self.storage_data::<T>()?[self.0.offset..self.0.offset + self.numel()])
    }

    /// Mutable elements of a contiguous tensor. Only for an op writing a
    /// tensor it has just created and not yet handed out, or for in-place
    /// updates of storage nobody else reads at the same time (optimizers).
    #[allow(clippy::mut_from_ref)]
    pub fn data_mut<T: Element>(&self) -> Result<&mut [T]> {
        self.check_data::<T>("data_mut")?;
        if !self.is_contiguous() {
            return Err(Error::invalid("data_mut", "tensor is a strided view"));
        }
        let p = self.0.storage.block.as_ptr() as *mut T;
        Ok(unsafe { std::slice::from_raw_parts_mut(p.add(self.0.offset), self.numel()) })
    }

    #[allow(clippy::mut_from_ref)]
    fn bytes_mut(&self) -> Option<&mut [u8]> {
        let p = self.0.storage.block.as_ptr();
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts_mut(p, self.0.storage.nbytes()) })
    }

    /// Values as f32, in logical (row-major) order (a GPU tensor is copied to the host).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        if self.is_cuda() {
            return self.copy_to(&Arena::host(), Tag::Temporary)?.to_vec_f32();
        }
        let t = self.contiguous_untracked("to_vec_f32")?;
        Ok(with_float!("to_vec_f32", t.dtype(), |T| t.data::<T>()?.iter().map(|v| v.to_f32()).collect()))
    }

    /// Values of any stored type, in logical order (a GPU tensor is copied to the host).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if self.is_cuda() {
            return self.copy_to(&Arena::host(), Tag::Temporary)?.to_vec::<T>();
        }
        let t = self.contiguous_untracked("to_vec")?;
        Ok(t.data::<T>()?.to_vec())
    }

    /// The value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("tensor of shape {:?} has {} elements, not 1", self.shape(), self.numel()),
            ));
        }
        Ok(self.to_vec_f32()?[0])
    }

    /// Dense copy of a strided view (no autograd), or the tensor itself.
    pub(crate) fn contiguous_untracked(&self, label: &'static str) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let out = Tensor::empty(self.arena(), self.shape(), self.dtype(), Tag::Temporary, label)?;
        if self.is_cuda() {
            crate::cuda::ops::copy_strided(self, &out)?;
        } else if !self.is_meta() {
            let strides = out.strides().to_vec();
            unsafe { crate::ops::copy_strided(self, out.storage().block().as_ptr(), &strides, 0) };
        }
        Ok(out)
    }
}

/// Elements and bytes of `shape` in `dtype`, or an error naming `op` when
/// either overflows `isize::MAX` (Rust's limit for one object, far past any
/// memory): a wrapped product would be a tiny block read as a huge tensor.
pub(crate) fn sized(op: &'static str, shape: &[usize], dtype: DType) -> Result<(usize, usize)> {
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    match numel.and_then(|n| Some((n, n.checked_mul(dtype.size())?))) {
        Some((n, bytes)) if bytes <= isize::MAX as usize => Ok((n, bytes)),
        _ => Err(Error::invalid(
            op,
            format!(
                "shape {shape:?} of {dtype} is more than {} bytes, larger than any memory; check the dimensions",
                isize::MAX
            ),
        )),
    }
}

fn check_len(op: &'static str, shape: &[usize], len: usize) -> Result<()> {
    let (n, _) = sized(op, shape, DType::U8)?;
    if n != len {
        return Err(Error::shape(op, format!("shape {shape:?} holds {n} elements but {len} values were given")));
    }
    Ok(())
}

/// Storage offsets of a strided layout, in row-major order of its indices.
/// `shape` and `strides` must have one length (ops build them from a tensor).
pub(crate) struct StridedIter {
    shape: Vec<usize>,
    strides: Vec<usize>,
    index: Vec<usize>,
    offset: usize,
    left: usize,
}

impl StridedIter {
    pub fn new(shape: &[usize], strides: &[usize], offset: usize) -> StridedIter {
        StridedIter {
            shape: shape.to_vec(),
            strides: strides.to_vec(),
            index: vec![0; shape.len()],
            offset,
            left: shape.iter().product(),
        }
    }
}

impl Iterator for StridedIter {
    type Item = usize;
    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let cur = self.offset;
        for d in (0..self.shape.len()).rev() {
            self.index[d] += 1;
            self.offset += self.strides[d];
            if self.index[d] < self.shape[d] {
                break;
            }
            self.offset -= self.strides[d] * self.shape[d];
            self.index[d] = 0;
        }
        Some(cur)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {}", self.shape(), self.dtype())?;
        if self.dtype().is_float() && !self.is_meta() && self.numel() <= 8 {
            if let Ok(v) = self.to_vec_f32() {
                write!(f, ", {v:?}")?;
            }
        }
        f.write_str(")")
    }
}
