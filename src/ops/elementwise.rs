//! Elementwise ops: broadcast binary arithmetic, scalar arithmetic, unary
//! activations, dtype casts.

use super::{output, same_arena, same_dtype};
use crate::alloc::Tag;
use crate::autograd::record;
use crate::cpu::elementwise::{self as k, View};
use crate::error::Result;
use crate::tensor::{DType, Tensor};
use crate::with_float;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
}

impl Bin {
    fn name(self) -> &'static str {
        match self {
            Bin::Add => "add",
            Bin::Sub => "sub",
            Bin::Mul => "mul",
            Bin::Div => "div",
        }
    }
    fn cuda(self) -> crate::cuda::kernels::BinaryOp {
        use crate::cuda::kernels::BinaryOp as B;
        match self {
            Bin::Add => B::Add,
            Bin::Sub => B::Sub,
            Bin::Mul => B::Mul,
            Bin::Div => B::Div,
        }
    }
    fn f(self) -> fn(f32, f32) -> f32 {
        match self {
            Bin::Add => |x, y| x + y,
            Bin::Sub => |x, y| x - y,
            Bin::Mul => |x, y| x * y,
            Bin::Div => |x, y| x / y,
        }
    }
}

/// `a op b` with numpy broadcasting, no autograd.
fn binary_raw(op: Bin, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = op.name();
    same_arena(name, &[a, b])?;
    same_dtype(name, a, b)?;
    super::float_only(name, a)?;
    let shape = super::broadcast_shapes(name, a.shape(), b.shape())?;
    let out = output(name, a, &shape, a.dtype())?;
    if out.is_cuda() {
        let (sa, sb) = (a.broadcast_strides(&shape), b.broadcast_strides(&shape));
        crate::cuda::ops::binary(op.cuda(), a, &sa, b, &sb, &out)?;
    } else if !out.is_meta() {
        let (sa, sb) = (a.broadcast_strides(&shape), b.broadcast_strides(&shape));
        with_float!(name, a.dtype(), |T| {
            let va = View { data: a.storage_data::<T>()?, strides: &sa, offset: a.offset() };
            let vb = View { data: b.storage_data::<T>()?, strides: &sb, offset: b.offset() };
            k::binary::<T, T, T>(&shape, va, vb, out.data_mut::<T>()?, op.f());
        });
    }
    Ok(out)
}

fn binary(op: Bin, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = binary_raw(op, a, b)?;
    let (sa, sb) = (a.shape().to_vec(), b.shape().to_vec());
    let saved = match op {
        Bin::Add | Bin::Sub => vec![],
        Bin::Mul | Bin::Div => vec![a.clone(), b.clone()],
    };
    Ok(record(op.name(), &[a, b], out, saved, move |s, g| {
        let g = g[0].as_ref().expect("output gradient");
        let (ga, gb) = match op {
            Bin::Add => (g.clone(), g.clone()),
            Bin::Sub => (g.clone(), g.neg()?),
            Bin::Mul => (g.mul(&s[1])?, g.mul(&s[0])?),
            Bin::Div => {
                let ga = g.div(&s[1])?;
                (ga.clone(), ga.mul(&s[0])?.div(&s[1])?.neg()?)
            }
        };
        Ok(vec![Some(ga.sum_to(&sa)?), Some(gb.sum_to(&sb)?)])
    }))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Unary {
    Neg,
    Exp,
    Log,
    Sqrt,
    Relu,
    Gelu,
    Silu,
    Tanh,
    Sigmoid,
}

// GELU with the exact erf, as PyTorch's default; erf by Abramowitz & Stegun
// 7.1.26 (|error| < 1.5e-7, below f32 resolution of the result).
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_7) * t - 0.284_496_74) * t + 0.254_829_6)
            * t
            * (-x * x).exp();
    y.copysign(x)
}
const INV_SQRT2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Unary {
    fn cuda(self) -> crate::cuda::kernels::UnaryOp {
        use crate::cuda::kernels::UnaryOp as U;
        match self {
            Unary::Neg => U::Neg,
            Unary::Exp => U::Exp,
            Unary::Log => U::Log,
            Unary::Sqrt => U::Sqrt,
            Unary::Relu => U::Relu,
            Unary::Gelu => U::Gelu,
            Unary::Silu => U::Silu,
            Unary::Tanh => U::Tanh,
            Unary::Sigmoid => U::Sigmoid,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Unary::Neg => "neg",
            Unary::Exp => "exp",
            Unary::Log => "log",
            Unary::Sqrt => "sqrt",
            Unary::Relu => "relu",
            Unary::Gelu => "gelu",
            Unary::Silu => "silu",
            Unary::Tanh => "tanh",
            Unary::Sigmoid => "sigmoid",
        }
    }
    fn f(self) -> fn(f32) -> f32 {
        match self {
            Unary::Neg => |x| -x,
            Unary::Exp => f32::exp,
            Unary::Log => f32::ln,
            Unary::Sqrt => f32::sqrt,
            Unary::Relu => |x| x.max(0.0),
            Unary::Gelu => |x| 0.5 * x * (1.0 + erf(x * INV_SQRT2)),
            Unary::Silu => |x| x * sigmoid(x),
            Unary::Tanh => f32::tanh,
            Unary::Sigmoid => sigmoid,
        }
    }
    /// Derivative from the input `x` and the output `y`.
    fn df(self) -> fn(f32, f32) -> f32 {
        match self {
            Unary::Neg => |_, _| -1.0,
            Unary::Exp => |_, y| y,
            Unary::Log => |x, _| 1.0 / x,
            Unary::Sqrt => |_, y| 0.5 / y,
            Unary::Relu => |x, _| if x > 0.0 { 1.0 } else { 0.0 },
            Unary::Gelu => |x, _| 0.5 * (1.0 + erf(x * INV_SQRT2)) + x * INV_SQRT_2PI * (-0.5 * x * x).exp(),
            Unary::Silu => |x, _| {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            },
            Unary::Tanh => |_, y| 1.0 - y * y,
            Unary::Sigmoid => |_, y| y * (1.0 - y),
        }
    }
    /// What backward needs: the input, the output, or nothing.
    fn saves(self) -> (bool, bool) {
        match self {
            Unary::Neg => (false, false),
            Unary::Exp | Unary::Sqrt | Unary::Tanh | Unary::Sigmoid => (false, true),
            Unary::Log | Unary::Relu | Unary::Gelu | Unary::Silu => (true, false),
        }
    }
}

fn unary_raw(op: Unary, x: &Tensor, f: impl Fn(f32) -> f32 + Sync) -> Result<Tensor> {
    let name = op.name();
    super::float_only(name, x)?;
    let x = x.contiguous_untracked(name)?;
    let out = output(name, &x, x.shape(), x.dtype())?;
    if out.is_cuda() {
        crate::cuda::ops::unary(op.cuda(), &x, &out)?;
    } else if !out.is_meta() {
        with_float!(name, x.dtype(), |T| k::unary::<T, T>(x.data::<T>()?, out.data_mut::<T>()?, f));
    }
    Ok(out)
}

fn unary(op: Unary, x: &Tensor) -> Result<Tensor> {
    let out = unary_raw(op, x, op.f())?;
    let (save_x, save_y) = op.saves();
    let mut saved = vec![];
    if save_x {
        saved.push(x.clone());
    }
    if save_y {
        saved.push(out.clone());
    }
    Ok(record(op.name(), &[x], out, saved, move |s, g| {
        let g = g[0].as_ref().expect("output gradient");
        if op == Unary::Neg {
            return Ok(vec![Some(g.neg()?)]);
        }
        // Derivative at the saved input (or output), times the incoming gradient.
        let v = s[0].contiguous_untracked(op.name())?;
        let g = g.contiguous_untracked(op.name())?;
        let dx = output(op.name(), &v, v.shape(), v.dtype())?;
        if dx.is_cuda() {
            crate::cuda::ops::unary_grad(op.cuda(), &v, &g, &dx)?;
        } else if !dx.is_meta() {
            let df = op.df();
            let by_x = save_x;
            with_float!(op.name(), v.dtype(), |T| k::zip2::<T, T, T>(
                v.data::<T>()?,
                g.data::<T>()?,
                dx.data_mut::<T>()?,
                |v, g| if by_x { df(v, 0.0) * g } else { df(0.0, v) * g }
            ));
        }
        Ok(vec![Some(dx)])
    }))
}

fn scalar_op(name: &'static str, x: &Tensor, mul: f32, add: f32) -> Result<Tensor> {
    super::float_only(name, x)?;
    let x2 = x.contiguous_untracked(name)?;
    let out = output(name, &x2, x2.shape(), x2.dtype())?;
    if out.is_cuda() {
        crate::cuda::ops::affine(&x2, &out, mul, add)?;
    } else if !out.is_meta() {
        with_float!(name, x2.dtype(), |T| k::unary::<T, T>(x2.data::<T>()?, out.data_mut::<T>()?, |v| v * mul + add));
    }
    Ok(record(name, &[x], out, vec![], move |_, g| {
        let g = g[0].as_ref().expect("output gradient");
        Ok(vec![Some(if mul == 1.0 { g.clone() } else { g.mul_scalar(mul)? })])
    }))
}

impl Tensor {
    /// `self + other`, broadcasting.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        binary(Bin::Add, self, other)
    }
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        binary(Bin::Sub, self, other)
    }
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        binary(Bin::Mul, self, other)
    }
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        binary(Bin::Div, self, other)
    }
    pub fn mul_scalar(&self, s: f32) -> Result<Tensor> {
        scalar_op("mul_scalar", self, s, 0.0)
    }
    pub fn add_scalar(&self, s: f32) -> Result<Tensor> {
        scalar_op("add_scalar", self, 1.0, s)
    }
    pub fn neg(&self) -> Result<Tensor> {
        unary(Unary::Neg, self)
    }
    pub fn exp(&self) -> Result<Tensor> {
        unary(Unary::Exp, self)
    }
    pub fn log(&self) -> Result<Tensor> {
        unary(Unary::Log, self)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        unary(Unary::Sqrt, self)
    }
    pub fn relu(&self) -> Result<Tensor> {
        unary(Unary::Relu, self)
    }
    /// GELU with the exact erf (PyTorch's default).
    pub fn gelu(&self) -> Result<Tensor> {
        unary(Unary::Gelu, self)
    }
    pub fn silu(&self) -> Result<Tensor> {
        unary(Unary::Silu, self)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        unary(Unary::Tanh, self)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        unary(Unary::Sigmoid, self)
    }

    /// The same values stored as `dtype` (a compute copy for mixed precision).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        super::float_only("to_dtype", self)?;
        if !dtype.is_float() {
            return Err(crate::error::Error::dtype(
                "to_dtype",
                format!("cannot convert to {dtype}: only between f32, f16 and bf16"),
            ));
        }
        let x = self.contiguous_untracked("to_dtype")?;
        let out = output("to_dtype", &x, x.shape(), dtype)?;
        if out.is_cuda() {
            crate::cuda::ops::cast(&x, &out)?;
        } else if !out.is_meta() {
            with_float!("to_dtype", x.dtype(), |I| with_float!("to_dtype", dtype, |O| k::unary::<I, O>(
                x.data::<I>()?,
                out.data_mut::<O>()?,
                |v| v
            )));
        }
        let from = self.dtype();
        Ok(record("to_dtype", &[self], out, vec![], move |_, g| {
            Ok(vec![Some(g[0].as_ref().expect("gradient").to_dtype(from)?)])
        }))
    }
}

/// `acc += x` in place, no autograd (gradient accumulation). `acc` must be
/// dense and not shared.
pub(crate) fn add_into(acc: &Tensor, x: &Tensor) -> Result<()> {
    if acc.shape() != x.shape() {
        return Err(crate::error::Error::shape("add_into", format!("{:?} += {:?}", acc.shape(), x.shape())));
    }
    // Before the meta check: a strided x costs a dense copy on every device.
    let mut x = x.contiguous_untracked("add_into")?;
    // The GPU adds one dtype: cast first, on the meta device too.
    if acc.arena().target() == crate::alloc::Target::Cuda && x.dtype() != acc.dtype() {
        let c = output("add_into", &x, x.shape(), acc.dtype())?;
        if c.is_cuda() {
            crate::cuda::ops::cast(&x, &c)?;
        }
        x = c;
    }
    if acc.is_meta() {
        return Ok(());
    }
    if acc.is_cuda() {
        return crate::cuda::ops::add_into(acc, &x);
    }
    with_float!("add_into", acc.dtype(), |T| with_float!("add_into", x.dtype(), |X| k::add_assign::<T, X>(
        acc.data_mut::<T>()?,
        x.data::<X>()?
    )));
    Ok(())
}

/// A dense copy with its own storage under `tag`, no autograd.
pub(crate) fn copy(x: &Tensor, tag: Tag) -> Result<Tensor> {
    let out = Tensor::empty(x.arena(), x.shape(), x.dtype(), tag, "copy")?;
    if out.is_cuda() {
        crate::cuda::ops::copy_strided(x, &out)?;
    } else if !out.is_meta() {
        // Straight from a strided view: no intermediate dense copy (which the
        // meta device would not make).
        let strides = out.strides().to_vec();
        unsafe { super::copy_strided(x, out.storage().block().as_ptr(), &strides, 0) };
    }
    Ok(out)
}
