//! Reader and writer for NumPy `.npy` files (format versions 1.0, 2.0, 3.0).
//!
//! Only what the engine needs: little-endian, C-order arrays of a few plain
//! dtypes. Anything else is rejected with an error that says how to re-save
//! the array from Python. Format spec:
//! <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>

use std::fmt;
use std::fs;
use std::io::{self, Seek};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
const SUPPORTED: &str = "'<f2', '<f4', '<f8', '|u1', '<i4', '<i8'";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    F16,
    F32,
    F64,
    U8,
    I32,
    I64,
}

impl NpyDtype {
    /// Bytes per element.
    pub fn size(&self) -> usize {
        match self {
            NpyDtype::U8 => 1,
            NpyDtype::F16 => 2,
            NpyDtype::F32 | NpyDtype::I32 => 4,
            NpyDtype::F64 | NpyDtype::I64 => 8,
        }
    }

    /// The `descr` string NumPy writes for this dtype.
    pub fn descr(&self) -> &'static str {
        match self {
            NpyDtype::F16 => "<f2",
            NpyDtype::F32 => "<f4",
            NpyDtype::F64 => "<f8",
            NpyDtype::U8 => "|u1",
            NpyDtype::I32 => "<i4",
            NpyDtype::I64 => "<i8",
        }
    }

    fn from_descr(descr: &str) -> Option<NpyDtype> {
        // Byte order only matters for multi-byte types; NumPy writes '|u1'
        // but '<u1' means the same thing.
        Some(match descr {
            "<f2" => NpyDtype::F16,
            "<f4" => NpyDtype::F32,
            "<f8" => NpyDtype::F64,
            "|u1" | "<u1" => NpyDtype::U8,
            "<i4" => NpyDtype::I32,
            "<i8" => NpyDtype::I64,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: NpyDtype,
    pub shape: Vec<usize>,
    /// Offset of the first data byte from the start of the file.
    pub data_offset: usize,
}

impl NpyHeader {
    /// Number of elements (1 for a 0-d array).
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of data bytes the header promises.
    pub fn data_len(&self) -> usize {
        self.num_elements() * self.dtype.size()
    }
}

/// Every variant carries `file`, filled in by `read_npy`/`write_npy` and left
/// `None` by `parse_header`, which only sees bytes.
#[derive(Debug)]
pub enum NpyError {
    Io {
        file: Option<PathBuf>,
        source: io::Error,
    },
    BadMagic {
        file: Option<PathBuf>,
        found: Vec<u8>,
    },
    UnsupportedVersion {
        file: Option<PathBuf>,
        major: u8,
        minor: u8,
    },
    /// `what` is the part that is cut short: "preamble", "header" or "data".
    Truncated {
        file: Option<PathBuf>,
        what: &'static str,
        expected: usize,
        found: usize,
    },
    TrailingBytes {
        file: Option<PathBuf>,
        expected: usize,
        found: usize,
    },
    MalformedHeader {
        file: Option<PathBuf>,
        reason: String,
        header: String,
    },
    UnsupportedDtype {
        file: Option<PathBuf>,
        descr: String,
    },
    FortranOrder {
        file: Option<PathBuf>,
    },
    MalformedShape {
        file: Option<PathBuf>,
        found: String,
    },
    /// `write_npy` was given a byte buffer that does not match shape x dtype.
    DataSizeMismatch {
        file: Option<PathBuf>,
        expected: usize,
        found: usize,
    },
}

impl NpyError {
    fn with_file(mut self, path: &Path) -> NpyError {
        let slot = match &mut self {
            NpyError::Io { file, .. }
            | NpyError::BadMagic { file, .. }
            | NpyError::UnsupportedVersion { file, .. }
            | NpyError::Truncated { file, .. }
            | NpyError::TrailingBytes { file, .. }
            | NpyError::MalformedHeader { file, .. }
            | NpyError::UnsupportedDtype { file, .. }
            | NpyError::FortranOrder { file }
            | NpyError::MalformedShape { file, .. }
            | NpyError::DataSizeMismatch { file, .. } => file,
        };
        *slot = Some(path.to_path_buf());
        self
    }

    fn file(&self) -> Option<&Path> {
        match self {
            NpyError::Io { file, .. }
            | NpyError::BadMagic { file, .. }
            | NpyError::UnsupportedVersion { file, .. }
            | NpyError::Truncated { file, .. }
            | NpyError::TrailingBytes { file, .. }
            | NpyError::MalformedHeader { file, .. }
            | NpyError::UnsupportedDtype { file, .. }
            | NpyError::FortranOrder { file }
            | NpyError::MalformedShape { file, .. }
            | NpyError::DataSizeMismatch { file, .. } => file.as_deref(),
        }
    }
}

impl fmt::Display for NpyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.file() {
            Some(p) => write!(f, "{}: ", p.display())?,
            None => write!(f, "npy data: ")?,
        }
        f.write_str(&self.message())
    }
}

impl NpyError {
    /// What is wrong and how to fix it, without the file name (for callers
    /// that put the file name in their own error).
    pub fn message(&self) -> String {
        match self {
            NpyError::Io { source, .. } => format!("I/O error: {source}"),
            NpyError::BadMagic { found, .. } => format!(
                "not a .npy file: expected the magic bytes \\x93NUMPY at the start, found {}; \
                 write the array with numpy.save(path, x) (not savez, pickle or x.tofile)",
                escape_bytes(found)
            ),
            NpyError::UnsupportedVersion { major, minor, .. } => format!(
                "npy format version {major}.{minor} is not supported, expected 1.0, 2.0 or 3.0; \
                 re-save the array with numpy.save"
            ),
            NpyError::Truncated { what, expected, found, .. } => format!(
                "file is truncated: the {what} needs {expected} bytes but only {found} are present; \
                 the file was probably cut short (interrupted write or copy), re-create it with numpy.save"
            ),
            NpyError::TrailingBytes { expected, found, .. } => format!(
                "found {found} data bytes after the header but shape x dtype size is {expected} bytes; \
                 the header does not describe the data, re-save the array with numpy.save"
            ),
            NpyError::MalformedHeader { reason, header, .. } => format!(
                "malformed header ({reason}): found {header:?}, expected a dict like \
                 {{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }}; \
                 re-save the array with numpy.save"
            ),
            NpyError::UnsupportedDtype { descr, .. } => format!(
                "dtype '{descr}' is not supported, expected one of {SUPPORTED}; \
                 convert it in Python first, e.g. np.save(path, x.astype('<f4'))"
            ),
            NpyError::FortranOrder { .. } => "array is stored in Fortran (column-major) order, expected C order; \
                 save it with np.save(path, numpy.ascontiguousarray(x))"
                .to_string(),
            NpyError::MalformedShape { found, .. } => format!(
                "shape {found} is not a tuple of non-negative integers whose byte size fits in memory, \
                 expected e.g. (2, 3) or (5,) or (); re-save the array with numpy.save"
            ),
            NpyError::DataSizeMismatch { expected, found, .. } => format!(
                "cannot write: shape x dtype size is {expected} bytes but {found} data bytes were given; \
                 pass exactly one element's bytes per entry of the shape"
            ),
        }
    }
}

impl std::error::Error for NpyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NpyError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn escape_bytes(bytes: &[u8]) -> String {
    bytes.iter().flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect()
}

/// Parses the header of a whole `.npy` file held in memory and checks that
/// the data that follows has exactly the size the header promises.
pub fn parse_header(bytes: &[u8]) -> Result<NpyHeader, NpyError> {
    parse_header_prefix(bytes, bytes.len())
}

/// Like [`parse_header`], from only the first bytes of a file of `file_len`
/// bytes: `bytes` must hold the whole header, or the whole file if it is
/// shorter. The data size is checked against `file_len`, so a large file's
/// header is validated without reading its data.
pub fn parse_header_prefix(bytes: &[u8], file_len: usize) -> Result<NpyHeader, NpyError> {
    let truncated = |what, expected, found| NpyError::Truncated { file: None, what, expected, found };

    // A short file that still matches the magic so far is truncated; anything
    // else that does not start with the magic is not a .npy file at all.
    let n = bytes.len().min(MAGIC.len());
    if bytes[..n] != MAGIC[..n] {
        return Err(NpyError::BadMagic { file: None, found: bytes[..n].to_vec() });
    }
    if bytes.len() < 8 {
        return Err(truncated("preamble", 8, bytes.len()));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    // Version 1.0 stores the header length in 2 bytes; 2.0 and 3.0 use 4.
    let (len_bytes, utf8) = match (major, minor) {
        (1, 0) => (2, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        _ => return Err(NpyError::UnsupportedVersion { file: None, major, minor }),
    };
    let header_start = 8 + len_bytes;
    if bytes.len() < header_start {
        return Err(truncated("preamble", header_start, bytes.len()));
    }
    let header_len = bytes[8..header_start].iter().rev().fold(0usize, |acc, &b| (acc << 8) | b as usize);
    let data_offset = header_start + header_len;
    if bytes.len() < data_offset {
        return Err(truncated("header", data_offset, bytes.len()));
    }

    // Versions 1.0/2.0 are latin-1, 3.0 is UTF-8. The only non-ASCII text a
    // valid header could hold is inside a dtype we reject anyway, so decoding
    // as UTF-8 is enough for both.
    let raw = &bytes[header_start..data_offset];
    let text = std::str::from_utf8(raw).map_err(|_| NpyError::MalformedHeader {
        file: None,
        reason: if utf8 { "not valid UTF-8" } else { "not ASCII" }.to_string(),
        header: String::from_utf8_lossy(raw).into_owned(),
    })?;

    let (descr, fortran_order, shape) = parse_dict(text)?;
    let dtype = NpyDtype::from_descr(&descr).ok_or(NpyError::UnsupportedDtype { file: None, descr })?;
    if fortran_order {
        return Err(NpyError::FortranOrder { file: None });
    }

    // checked_mul: a corrupt shape must not overflow into a small size.
    let data_len = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyError::MalformedShape { file: None, found: format_shape(&shape) })?;
    let found = file_len.saturating_sub(data_offset);
    if found < data_len {
        return Err(truncated("data", data_len, found));
    }
    if found > data_len {
        return Err(NpyError::TrailingBytes { file: None, expected: data_len, found });
    }
    Ok(NpyHeader { dtype, shape, data_offset })
}

/// Reads a whole `.npy` file; returns the header and the raw data bytes
/// (little-endian, C order).
pub fn read_npy(path: &Path) -> Result<(NpyHeader, Vec<u8>), NpyError> {
    let mut bytes = fs::read(path).map_err(|source| NpyError::Io { file: Some(path.to_path_buf()), source })?;
    let header = parse_header(&bytes).map_err(|e| e.with_file(path))?;
    // parse_header checked the data runs exactly to the end of the file.
    bytes.drain(..header.data_offset);
    Ok((header, bytes))
}

/// Validates a `.npy` file's header without reading its data: reads the
/// first few KiB (more only if the header says it is longer) and checks the
/// file's size against shape x dtype.
pub fn read_header(path: &Path) -> Result<NpyHeader, NpyError> {
    use std::io::Read;
    let io_err = |source| NpyError::Io { file: Some(path.to_path_buf()), source };
    let mut file = fs::File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len() as usize;
    // NumPy's headers are a few hundred bytes; 4 KiB is one read.
    let mut want = file_len.min(4096);
    loop {
        let mut prefix = vec![0u8; want];
        file.seek(io::SeekFrom::Start(0)).map_err(io_err)?;
        file.read_exact(&mut prefix).map_err(io_err)?;
        match parse_header_prefix(&prefix, file_len) {
            // The header is longer than what we read: read it all (or the
            // whole file, which then reports how much of the header is there).
            Err(NpyError::Truncated { what: "header", expected, .. }) if want < file_len => {
                want = expected.min(file_len)
            }
            r => return r.map_err(|e| e.with_file(path)),
        }
    }
}

/// Writes a version 1.0 `.npy` file. `data` holds the raw little-endian
/// elements in C order.
pub fn write_npy(path: &Path, dtype: NpyDtype, shape: &[usize], data: &[u8]) -> Result<(), NpyError> {
    let err_file = |e: NpyError| e.with_file(path);
    let expected = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| err_file(NpyError::MalformedShape { file: None, found: format_shape(shape) }))?;
    if data.len() != expected {
        return Err(err_file(NpyError::DataSizeMismatch { file: None, expected, found: data.len() }));
    }
    let mut out = encode_header(dtype, shape).map_err(err_file)?;
    out.extend_from_slice(data);
    fs::write(path, out).map_err(|source| NpyError::Io { file: Some(path.to_path_buf()), source })
}

/// The bytes `numpy.save` writes before the data (version 1.0): magic,
/// version, header length and the padded dict. Write this, then the data
/// in chunks, to make a file larger than memory.
pub fn encode_header(dtype: NpyDtype, shape: &[usize]) -> Result<Vec<u8>, NpyError> {
    let malformed = || NpyError::MalformedShape { file: None, found: format_shape(shape) };
    shape.iter().try_fold(dtype.size(), |acc, &d| acc.checked_mul(d)).ok_or_else(malformed)?;
    // Same dict layout as numpy.save, so the files are byte-identical.
    let mut header =
        format!("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", dtype.descr(), format_shape(shape));
    // Pad with spaces so magic + version + length + header + '\n' is a
    // multiple of 64; NumPy aligns the data this way.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let header_len = u16::try_from(header.len()).map_err(|_| malformed())?;

    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    Ok(out)
}

/// Python tuple syntax: `()`, `(5,)`, `(2, 3)`.
fn format_shape(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

// ---- Header dict parsing ---------------------------------------------------
//
// The header is a Python literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// padded with spaces and a final '\n'. We parse just the subset NumPy writes:
// strings, True/False, integers and tuples.

#[derive(Debug)]
enum Literal {
    Str(String),
    Bool(bool),
    Tuple(Vec<Literal>),
    List(Vec<Literal>),
    /// Any other bare token (numbers, names); its text.
    Token(String),
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn skip_ws(&mut self) {
        let rest = &self.text[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.text[self.pos..].chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{c}' at byte {}", self.pos))
        }
    }

    fn literal(&mut self) -> Result<Literal, String> {
        match self.peek() {
            Some(q @ ('\'' | '"')) => {
                self.pos += 1;
                let rest = &self.text[self.pos..];
                let end = rest.find(q).ok_or("unterminated string")?;
                self.pos += end + 1;
                Ok(Literal::Str(rest[..end].to_string()))
            }
            Some(open @ ('(' | '[')) => {
                self.pos += 1;
                let close = if open == '(' { ')' } else { ']' };
                let mut items = Vec::new();
                let mut trailing_comma = false;
                while !self.eat(close) {
                    items.push(self.literal()?);
                    trailing_comma = self.eat(',');
                    if !trailing_comma && self.peek() != Some(close) {
                        return Err(format!("expected ',' or '{close}' at byte {}", self.pos));
                    }
                }
                if open == '[' {
                    return Ok(Literal::List(items));
                }
                // Python: `(3,)` is a tuple but `(3)` is just 3.
                if items.len() == 1 && !trailing_comma {
                    let Some(item) = items.pop() else { unreachable!() };
                    return Ok(item);
                }
                Ok(Literal::Tuple(items))
            }
            Some(_) => {
                let rest = &self.text[self.pos..];
                let end = rest.find(|c: char| c.is_whitespace() || ",:(){}[]'\"".contains(c)).unwrap_or(rest.len());
                if end == 0 {
                    return Err(format!("unexpected '{}' at byte {}", &rest[..1], self.pos));
                }
                self.pos += end;
                Ok(match &rest[..end] {
                    "True" => Literal::Bool(true),
                    "False" => Literal::Bool(false),
                    tok => Literal::Token(tok.to_string()),
                })
            }
            None => Err("unexpected end of header".to_string()),
        }
    }
}

/// Returns (descr, fortran_order, shape).
fn parse_dict(text: &str) -> Result<(String, bool, Vec<usize>), NpyError> {
    let malformed =
        |reason: String| NpyError::MalformedHeader { file: None, reason, header: text.trim_end().to_string() };
    let mut p = Parser { text, pos: 0 };
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;

    p.expect('{').map_err(malformed)?;
    while !p.eat('}') {
        let key = match p.literal().map_err(malformed)? {
            Literal::Str(k) => k,
            other => return Err(malformed(format!("dict key {other:?} is not a string"))),
        };
        p.expect(':').map_err(malformed)?;
        let value = p.literal().map_err(malformed)?;
        let slot_taken = match key.as_str() {
            "descr" => descr.replace(value).is_some(),
            "fortran_order" => fortran.replace(value).is_some(),
            "shape" => shape.replace(value).is_some(),
            _ => return Err(malformed(format!("unexpected key '{key}'"))),
        };
        if slot_taken {
            return Err(malformed(format!("duplicate key '{key}'")));
        }
        if !p.eat(',') && p.peek() != Some('}') {
            return Err(malformed(format!("expected ',' or '}}' at byte {}", p.pos)));
        }
    }
    // Only padding may follow the dict.
    if p.peek().is_some() {
        return Err(malformed(format!("unexpected text after the dict at byte {}", p.pos)));
    }

    let descr = match descr {
        Some(Literal::Str(s)) => s,
        // Structured dtypes have a list here; we cannot read them anyway.
        Some(other) => return Err(NpyError::UnsupportedDtype { file: None, descr: literal_text(&other) }),
        None => return Err(malformed("missing key 'descr'".to_string())),
    };
    let fortran = match fortran {
        Some(Literal::Bool(b)) => b,
        Some(other) => return Err(malformed(format!("'fortran_order' is {other:?}, not True/False"))),
        None => return Err(malformed("missing key 'fortran_order'".to_string())),
    };
    let shape = match shape {
        Some(lit) => shape_from_literal(&lit)
            .ok_or_else(|| NpyError::MalformedShape { file: None, found: literal_text(&lit) })?,
        None => return Err(malformed("missing key 'shape'".to_string())),
    };
    Ok((descr, fortran, shape))
}

fn shape_from_literal(lit: &Literal) -> Option<Vec<usize>> {
    let Literal::Tuple(items) = lit else {
        return None;
    };
    items
        .iter()
        .map(|item| match item {
            // Python 2 NumPy wrote long ints with an 'L' suffix: (3L, 4L).
            Literal::Token(t) => {
                let digits = t.strip_suffix('L').unwrap_or(t);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                digits.parse::<usize>().ok()
            }
            _ => None,
        })
        .collect()
}

/// Python-ish rendering of a parsed literal, for error messages.
fn literal_text(lit: &Literal) -> String {
    match lit {
        Literal::Str(s) => format!("'{s}'"),
        Literal::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        Literal::Token(t) => t.clone(),
        Literal::Tuple(items) => {
            let parts: Vec<String> = items.iter().map(literal_text).collect();
            if parts.len() == 1 {
                format!("({},)", parts[0])
            } else {
                format!("({})", parts.join(", "))
            }
        }
        Literal::List(items) => {
            format!("[{}]", items.iter().map(literal_text).collect::<Vec<_>>().join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [NpyDtype; 6] =
        [NpyDtype::F16, NpyDtype::F32, NpyDtype::F64, NpyDtype::U8, NpyDtype::I32, NpyDtype::I64];

    /// A fresh path in the temp dir; tests run in parallel, so names must differ.
    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("headroom_npy_{}_{name}.npy", std::process::id()))
    }

    /// A file with the given version and header dict (padded like NumPy) and `data_len` zero bytes.
    fn make_file(major: u8, dict: &str, data_len: usize) -> Vec<u8> {
        let len_bytes = if major == 1 { 2 } else { 4 };
        let mut header = dict.to_string();
        let unpadded = 8 + len_bytes + header.len() + 1;
        header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[major, 0]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes()[..len_bytes]);
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(0u8, data_len));
        out
    }

    fn dict(descr: &str, fortran: &str, shape: &str) -> String {
        format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}")
    }

    #[test]
    fn round_trip_each_dtype() {
        for (i, dtype) in ALL.iter().enumerate() {
            for shape in [vec![2, 3], vec![5], vec![], vec![0, 4], vec![1, 2, 3, 2]] {
                let n: usize = shape.iter().product();
                let data: Vec<u8> = (0..n * dtype.size()).map(|b| (b * 7 + i) as u8).collect();
                let path = temp_path(&format!("rt_{i}_{}", shape.len()));
                write_npy(&path, *dtype, &shape, &data).unwrap();

                let raw = fs::read(&path).unwrap();
                let (header, back) = read_npy(&path).unwrap();
                fs::remove_file(&path).unwrap();
                assert_eq!(header.dtype, *dtype);
                assert_eq!(header.shape, shape);
                assert_eq!(back, data);
                // NumPy's layout: data 64-byte aligned, header ends in '\n'.
                assert_eq!(header.data_offset % 64, 0);
                assert_eq!(raw[header.data_offset - 1], b'\n');
                assert_eq!(&raw[6..8], &[1, 0]);
            }
        }
    }

    #[test]
    fn writer_matches_numpy_bytes() {
        // Same as np.save(f, np.arange(6, dtype='<f4').reshape(2, 3)).
        let data: Vec<u8> = (0..6).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let path = temp_path("matches_numpy");
        write_npy(&path, NpyDtype::F32, &[2, 3], &data).unwrap();
        let written = fs::read(&path).unwrap();
        fs::remove_file(&path).unwrap();
        assert_eq!(written, NUMPY_F4_2X3);
    }

    // Bytes produced by NumPy 2.4.6:
    //   np.save(f, np.arange(6, dtype='<f4').reshape(2, 3))
    const NUMPY_F4_2X3: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }                                                          \x0a\x00\x00\x00\x00\x00\x00\x80?\x00\x00\x00@\x00\x00@@\x00\x00\x80@\x00\x00\xa0@";
    //   np.lib.format.write_array(f, np.array([1, 2, 255], dtype=np.uint8), version=(2, 0))
    const NUMPY_U1_V2: &[u8] = b"\x93NUMPY\x02\x00t\x00\x00\x00{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }                                                          \x0a\x01\x02\xff";
    //   np.lib.format.write_array(f, np.array(3.5, dtype='<f8'), version=(3, 0))
    const NUMPY_F8_SCALAR_V3: &[u8] = b"\x93NUMPY\x03\x00t\x00\x00\x00{'descr': '<f8', 'fortran_order': False, 'shape': (), }                                                            \x0a\x00\x00\x00\x00\x00\x00\x0c@";
    //   np.save(f, np.array([1.0, -2.0], dtype='<f2'))
    const NUMPY_F2: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }                                                            \x0a\x00<\x00\xc0";
    //   np.save(f, np.zeros((0, 4), dtype='<i8'))
    const NUMPY_I8_EMPTY: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<i8', 'fortran_order': False, 'shape': (0, 4), }                                                          \x0a";

    #[test]
    fn reads_real_numpy_files() {
        let h = parse_header(NUMPY_F4_2X3).unwrap();
        assert_eq!(h, NpyHeader { dtype: NpyDtype::F32, shape: vec![2, 3], data_offset: 128 });
        let vals: Vec<f32> =
            NUMPY_F4_2X3[h.data_offset..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(vals, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);

        let h = parse_header(NUMPY_U1_V2).unwrap();
        assert_eq!(h, NpyHeader { dtype: NpyDtype::U8, shape: vec![3], data_offset: 128 });
        assert_eq!(&NUMPY_U1_V2[128..], &[1, 2, 255]);

        let h = parse_header(NUMPY_F8_SCALAR_V3).unwrap();
        assert_eq!(h, NpyHeader { dtype: NpyDtype::F64, shape: vec![], data_offset: 128 });
        assert_eq!(f64::from_le_bytes(NUMPY_F8_SCALAR_V3[128..].try_into().unwrap()), 3.5);

        let h = parse_header(NUMPY_F2).unwrap();
        assert_eq!((h.dtype, h.shape.as_slice()), (NpyDtype::F16, &[2][..]));
        // 1.0 and -2.0 as IEEE half floats.
        assert_eq!(&NUMPY_F2[h.data_offset..], &[0x00, 0x3c, 0x00, 0xc0]);

        let h = parse_header(NUMPY_I8_EMPTY).unwrap();
        assert_eq!((h.dtype, h.shape.as_slice(), h.data_len()), (NpyDtype::I64, &[0, 4][..], 0));
    }

    #[test]
    fn accepts_header_variants() {
        // Python 2 longs, double quotes, no trailing comma, other key order.
        let f = make_file(1, "{\"shape\": (3L, 2L), \"fortran_order\": False, \"descr\": \"<i4\"}", 24);
        let h = parse_header(&f).unwrap();
        assert_eq!((h.dtype, h.shape), (NpyDtype::I32, vec![3, 2]));
        // '<u1' is the same as '|u1'.
        assert_eq!(parse_header(&make_file(1, &dict("<u1", "False", "(4,)"), 4)).unwrap().dtype, NpyDtype::U8);
    }

    #[test]
    fn rejects_bad_magic() {
        let mut f = NUMPY_F4_2X3.to_vec();
        f[1] = b'X';
        assert!(matches!(parse_header(&f), Err(NpyError::BadMagic { .. })));
        assert!(matches!(parse_header(b"PK\x03\x04 a zip"), Err(NpyError::BadMagic { .. })));
        assert!(matches!(parse_header(b""), Err(NpyError::Truncated { what: "preamble", .. })));
    }

    #[test]
    fn rejects_unsupported_version() {
        let mut f = NUMPY_F4_2X3.to_vec();
        f[6] = 4;
        assert!(matches!(parse_header(&f), Err(NpyError::UnsupportedVersion { major: 4, minor: 0, .. })));
    }

    #[test]
    fn rejects_truncated() {
        let f = NUMPY_F4_2X3;
        // Cut inside the preamble, inside the header, and inside the data.
        assert!(matches!(parse_header(&f[..9]), Err(NpyError::Truncated { what: "preamble", .. })));
        assert!(matches!(parse_header(&f[..4]), Err(NpyError::Truncated { what: "preamble", .. })));
        assert!(matches!(
            parse_header(&f[..60]),
            Err(NpyError::Truncated { what: "header", expected: 128, found: 60, .. })
        ));
        assert!(matches!(
            parse_header(&f[..f.len() - 1]),
            Err(NpyError::Truncated { what: "data", expected: 24, found: 23, .. })
        ));
        assert!(matches!(parse_header(&NUMPY_U1_V2[..100]), Err(NpyError::Truncated { what: "header", .. })));
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut f = NUMPY_F4_2X3.to_vec();
        f.push(0);
        assert!(matches!(parse_header(&f), Err(NpyError::TrailingBytes { expected: 24, found: 25, .. })));
    }

    #[test]
    fn rejects_unsupported_dtypes() {
        for descr in [">f4", "<c8", "|O", "<U5", "|b1", "|f4", "=f4", ">i8"] {
            let f = make_file(1, &dict(descr, "False", "(2,)"), 16);
            match parse_header(&f) {
                Err(NpyError::UnsupportedDtype { descr: d, .. }) => assert_eq!(d, descr),
                other => panic!("{descr}: {other:?}"),
            }
        }
        // Structured dtype: descr is a list.
        let f = make_file(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 8);
        match parse_header(&f) {
            Err(NpyError::UnsupportedDtype { descr, .. }) => assert_eq!(descr, "[('a', '<f4')]"),
            other => panic!("structured: {other:?}"),
        }
    }

    #[test]
    fn rejects_fortran_order() {
        let f = make_file(1, &dict("<f4", "True", "(2, 3)"), 24);
        assert!(matches!(parse_header(&f), Err(NpyError::FortranOrder { .. })));
    }

    #[test]
    fn rejects_malformed_shapes() {
        for shape in [
            "(2, -3)",
            "(2, x)",
            "(2.5,)",
            "[2, 3]",
            "(3)",
            "3",
            "'3'",
            "((2,), 3)",
            "(99999999999999999999,)",
            "(4294967296, 4294967296)",
        ] {
            let f = make_file(1, &dict("<f4", "False", shape), 0);
            assert!(
                matches!(parse_header(&f), Err(NpyError::MalformedShape { .. })),
                "{shape}: {:?}",
                parse_header(&f)
            );
        }
    }

    #[test]
    fn rejects_malformed_headers() {
        for d in [
            "{'descr': '<f4', 'shape': (2,), }", // missing key
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1, }", // unknown key
            "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", // duplicate
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, }", // unclosed tuple
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", // not a bool
            "{'descr': '<f4' 'fortran_order': False, 'shape': (2,), }", // missing comma
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } junk", // trailing text
            "'descr': '<f4'",                    // not a dict
        ] {
            let f = make_file(1, d, 8);
            assert!(matches!(parse_header(&f), Err(NpyError::MalformedHeader { .. })), "{d}: {:?}", parse_header(&f));
        }
        // Non-UTF-8 bytes in the header.
        let mut f = make_file(1, &dict("<f4", "False", "(2,)"), 8);
        f[20] = 0xff;
        assert!(matches!(parse_header(&f), Err(NpyError::MalformedHeader { .. })));
    }

    #[test]
    fn errors_name_the_file_and_the_fix() {
        let path = temp_path("fortran");
        fs::write(&path, make_file(1, &dict("<f4", "True", "(2, 3)"), 24)).unwrap();
        let err = read_npy(&path).unwrap_err();
        fs::remove_file(&path).unwrap();
        let msg = err.to_string();
        assert!(matches!(err, NpyError::FortranOrder { file: Some(_) }));
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        assert!(msg.contains("ascontiguousarray"), "{msg}");

        let msg = parse_header(&make_file(1, &dict(">f4", "False", "(2,)"), 8)).unwrap_err().to_string();
        assert!(msg.contains("'>f4'") && msg.contains("'<f4'") && msg.contains("astype"), "{msg}");

        let missing = temp_path("does_not_exist");
        let err = read_npy(&missing).unwrap_err();
        assert!(matches!(err, NpyError::Io { .. }));
        assert!(std::error::Error::source(&err).is_some());
        assert!(err.to_string().contains("does_not_exist"));
    }

    #[test]
    fn read_header_reads_headers_only_and_checks_the_file_size() {
        assert_eq!(encode_header(NpyDtype::F32, &[2, 3]).unwrap(), &NUMPY_F4_2X3[..128]);
        let path = temp_path("read_header");
        fs::write(&path, NUMPY_F4_2X3).unwrap();
        assert_eq!(read_header(&path).unwrap(), parse_header(NUMPY_F4_2X3).unwrap());
        fs::write(&path, &NUMPY_F4_2X3[..NUMPY_F4_2X3.len() - 4]).unwrap();
        let err = read_header(&path).unwrap_err();
        assert!(matches!(err, NpyError::Truncated { what: "data", expected: 24, found: 20, file: Some(_) }));
        assert!(err.to_string().starts_with(&path.display().to_string()));
        assert!(!err.message().contains(&path.display().to_string()), "message() leaves the file out");

        // A version 2.0 header longer than the first read (4 KiB).
        let long = format!("{{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }}{}", " ".repeat(5000));
        let f = make_file(2, &long, 12);
        fs::write(&path, &f).unwrap();
        let h = read_header(&path).unwrap();
        assert_eq!((h.dtype, h.shape.as_slice(), h.data_offset), (NpyDtype::I32, &[3][..], f.len() - 12));
        fs::write(&path, &f[..4500]).unwrap();
        assert!(matches!(read_header(&path), Err(NpyError::Truncated { what: "header", found: 4500, .. })));
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn write_rejects_wrong_data_length() {
        let path = temp_path("wrong_len");
        let err = write_npy(&path, NpyDtype::F32, &[2, 3], &[0u8; 20]).unwrap_err();
        assert!(matches!(err, NpyError::DataSizeMismatch { expected: 24, found: 20, file: Some(_) }));
        assert!(!path.exists());
    }
}
