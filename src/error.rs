//! One error type for the whole engine. Every message names the op, the
//! shapes involved and what to do; out of memory is an error like any other.

use crate::alloc::OutOfMemory;
use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// Shapes that do not fit together.
    Shape {
        op: &'static str,
        msg: String,
    },
    /// A dtype the op does not take.
    DType {
        op: &'static str,
        msg: String,
    },
    /// An index outside its range.
    Index {
        op: &'static str,
        msg: String,
    },
    /// Tensors on different arenas or devices, or data asked of a meta tensor.
    Device {
        op: &'static str,
        msg: String,
    },
    /// Anything else the caller got wrong (bad settings, misuse of autograd).
    Invalid {
        op: &'static str,
        msg: String,
    },
    /// Boxed: it carries every figure of the arena, and every `Result`
    /// in the engine is as large as its error.
    OutOfMemory(Box<OutOfMemory>),
    /// The CUDA backend or its tools (driver, NVRTC, the CPU harness): `op`
    /// names the kernel, file or step.
    Cuda {
        op: String,
        msg: String,
    },
    Io {
        path: String,
        msg: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Error {
        Error::Shape { op, msg: msg.into() }
    }
    pub fn dtype(op: &'static str, msg: impl Into<String>) -> Error {
        Error::DType { op, msg: msg.into() }
    }
    pub fn index(op: &'static str, msg: impl Into<String>) -> Error {
        Error::Index { op, msg: msg.into() }
    }
    pub fn device(op: &'static str, msg: impl Into<String>) -> Error {
        Error::Device { op, msg: msg.into() }
    }
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Error {
        Error::Invalid { op, msg: msg.into() }
    }
    pub fn cuda(op: impl Into<String>, msg: impl Into<String>) -> Error {
        Error::Cuda { op: op.into(), msg: msg.into() }
    }
    pub fn io(path: impl fmt::Display, err: impl fmt::Display) -> Error {
        Error::Io { path: path.to_string(), msg: err.to_string() }
    }
    pub fn is_oom(&self) -> bool {
        matches!(self, Error::OutOfMemory(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { op, msg } => write!(f, "{op}: shape mismatch: {msg}"),
            Error::DType { op, msg } => write!(f, "{op}: wrong dtype: {msg}"),
            Error::Index { op, msg } => write!(f, "{op}: index out of range: {msg}"),
            Error::Device { op, msg } => write!(f, "{op}: {msg}"),
            Error::Invalid { op, msg } => write!(f, "{op}: {msg}"),
            Error::OutOfMemory(e) => e.fmt(f),
            Error::Cuda { op, msg } => write!(f, "{op}: {msg}"),
            Error::Io { path, msg } => write!(f, "{path}: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<OutOfMemory> for Error {
    fn from(e: OutOfMemory) -> Error {
        Error::OutOfMemory(Box::new(e))
    }
}
