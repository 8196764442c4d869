//! GGUF, llama.cpp's model format: reading (header, typed metadata, tensor infos, block-quantized
//! data dequantized to f32), importing a GGUF model as a Hugging Face checkpoint
//! ([`import`]), and writing one ([`export`]).
//!
//! The layout follows the `gguf` Python package (its reference reader and writer): magic `GGUF`,
//! version (2 or 3), tensor count, metadata count, metadata key/values, tensor infos (name, dims
//! fastest-first, type, offset), padding to `general.alignment` (default 32), then the data.

pub mod export;
pub mod import;
pub mod quants;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use quants::GgmlType;

use crate::error::{ModelError, Result};

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;

/// A typed metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Elements of one type (GGUF arrays are homogeneous).
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The GGUF type id of this value.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The elements of an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions fastest-first (`[cols, rows]` for a matrix).
    pub dims: Vec<u64>,
    /// The storage type.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape in PyTorch order (slowest first).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    /// The format version (2 or 3).
    pub version: u32,
    /// Metadata by key, in key order.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> ModelError {
        ModelError::Gguf { path: self.path.to_path_buf(), reason: format!("truncated or malformed header at byte {}: {what}", self.pos) }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| self.err(what))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    /// A length that must fit in what is left of the file (at `min_size` bytes per item).
    fn len(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            return Err(self.err(&format!("{what}: length {n} runs past the end of the file")));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(1, what)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(&format!("{what}: not UTF-8")))
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.take(1, what)?[0]),
            1 => Value::I8(self.take(1, what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2"))),
            3 => Value::I16(i16::from_le_bytes(self.take(2, what)?.try_into().expect("2"))),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => match self.take(1, what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(&format!("{what}: bool byte {b}"))),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 0 {
                    return Err(self.err(&format!("{what}: nested arrays are not supported")));
                }
                let elem = self.u32(what)?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    _ => return Err(self.err(&format!("{what}: array of unknown type {elem}"))),
                };
                let n = self.len(min, what)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            t => return Err(self.err(&format!("{what}: unknown value type {t}"))),
        })
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file (the tensor data stays mapped, read on demand).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: read-only map; secateur never writes to a file it has mapped (outputs are
        // written to a temporary file and renamed).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let bad = |reason: String| ModelError::Gguf { path: path.to_path_buf(), reason };
        if map.len() < 4 || &map[..4] != MAGIC {
            return Err(bad("not a GGUF file (no `GGUF` magic)".into()));
        }
        let mut c = Cursor { bytes: &map, pos: 4, path };
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!("GGUF version {version} is not supported (2 and 3 are)")));
        }
        let n_tensors = c.len(24, "tensor count")?;
        let n_kv = c.len(12, "metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key {i}"))?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(bad(format!("metadata key `{key}` appears twice")));
            }
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor {i} name"))?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(bad(format!("tensor `{name}`: {n_dims} dimensions (1 to 4 are valid)")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let ty = c.u32(&name)?;
            let ggml_type = GgmlType::from_id(ty).ok_or_else(|| bad(format!("tensor `{name}`: unknown ggml type {ty}")))?;
            let offset = c.u64(&name)?;
            tensors.push(TensorInfo { name, dims, ggml_type, offset });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => return Err(bad(format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let this = Self { path: path.to_path_buf(), map, version, metadata, tensors, data_start };
        let mut names = std::collections::HashSet::new();
        for t in &this.tensors {
            if !names.insert(t.name.as_str()) {
                return Err(bad(format!("tensor `{}` appears twice", t.name)));
            }
            if t.offset % alignment as u64 != 0 {
                return Err(bad(format!("tensor `{}`: offset {} is not aligned to {alignment}", t.name, t.offset)));
            }
            this.bytes_of(t)?;
        }
        Ok(this)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The tensor info of `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The stored bytes of a tensor (checked to lie inside the file).
    pub fn bytes_of(&self, t: &TensorInfo) -> Result<&[u8]> {
        let bad = |reason: String| ModelError::Gguf { path: self.path.clone(), reason: format!("tensor `{}`: {reason}", t.name) };
        let row = t.dims[0];
        if !row.is_multiple_of(t.ggml_type.block_size() as u64) {
            return Err(bad(format!("rows of {row} are not a whole number of {:?} blocks of {}", t.ggml_type, t.ggml_type.block_size())));
        }
        let n = t
            .dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|e| (e / t.ggml_type.block_size() as u64).checked_mul(t.ggml_type.type_size() as u64))
            .ok_or_else(|| bad("size overflows".into()))?;
        let start = (self.data_start as u64).checked_add(t.offset).ok_or_else(|| bad("offset overflows".into()))?;
        let end = start.checked_add(n).filter(|&e| e <= self.map.len() as u64).ok_or_else(|| {
            bad(format!("data [{start}, {}) runs past the end of the file ({} bytes): truncated?", start.saturating_add(n), self.map.len()))
        })?;
        Ok(&self.map[start as usize..end as usize])
    }

    /// A tensor dequantized to f32, in storage order (row-major in PyTorch's shape).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t =
            self.tensor(name).ok_or_else(|| ModelError::Gguf { path: self.path.clone(), reason: format!("tensor `{name}` is missing") })?;
        let bytes = self.bytes_of(t)?;
        let values = quants::dequantize(t.ggml_type, bytes)
            .map_err(|reason| ModelError::Gguf { path: self.path.clone(), reason: format!("tensor `{name}`: {reason}") })?;
        if let Some(at) = values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite { path: self.path.clone(), name: name.to_string(), index: at, value: values[at] });
        }
        Ok(values)
    }

    /// A required metadata value, with an error naming the key when it is absent.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| ModelError::Gguf { path: self.path.clone(), reason: format!("metadata key `{key}` is missing") })
    }

    /// A required non-negative integer.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| ModelError::Gguf { path: self.path.clone(), reason: format!("`{key}` is {v:?}, not an integer") })
    }

    /// A required string.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| ModelError::Gguf { path: self.path.clone(), reason: format!("`{key}` is {v:?}, not a string") })
    }
}

/// Whether `path` names a GGUF file (by its magic, not its name).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file() && File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == MAGIC
}
