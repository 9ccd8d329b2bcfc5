//! GGUF container parser: header, typed metadata, tensor infos and tensor data (memory-mapped).
//!
//! Every length and offset read from the file is checked against the file size, so a corrupt or truncated file
//! yields [`Error::Corrupt`] rather than a panic or a huge allocation.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::quant::TensorType;

pub mod writer;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: u32 = 8;

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
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is any non-negative integer type.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is any integer type that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, if it is a float or integer type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            // Integers as floats: metadata writers are not always careful about the type.
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where a tensor lives in the file and how it is encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions innermost-first, as stored (a PyTorch `[out, in]` weight is `[in, out]` here).
    pub dims: Vec<usize>,
    pub ty: TensorType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// Size of the encoded data in bytes.
    pub fn n_bytes(&self) -> Result<usize> {
        self.ty.row_bytes(self.n_elements())
    }
}

/// The parsed header: metadata, tensor table and the position of the data section.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An opened GGUF file: its header plus access to the raw bytes of each tensor.
pub struct GgufFile {
    pub header: GgufHeader,
    storage: Storage,
    index: BTreeMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.header.version)
            .field("tensors", &self.header.tensors.len())
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Memory-maps and parses a file.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let mmap = crate::cpu_ops::map_file(&file).map_err(io)?;
        Self::from_storage(Storage::Mapped(mmap))
    }

    /// Parses an in-memory file (tests, tiny generated models).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::from_storage(Storage::Owned(bytes))
    }

    fn from_storage(storage: Storage) -> Result<Self> {
        let header = parse_header(storage.bytes())?;
        let len = storage.bytes().len() as u64;
        let mut index = BTreeMap::new();
        for (i, t) in header.tensors.iter().enumerate() {
            let n = t.n_bytes()? as u64;
            let end = header
                .data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(n))
                .ok_or_else(|| Error::corrupt(format!("tensor `{}` offset overflows", t.name)))?;
            if end > len {
                return Err(Error::corrupt(format!(
                    "tensor `{}` data ends at {end}, past the end of the file ({len} bytes)",
                    t.name
                )));
            }
            if t.offset % header.alignment != 0 {
                return Err(Error::corrupt(format!(
                    "tensor `{}` is not aligned",
                    t.name
                )));
            }
            if index.insert(t.name.clone(), i).is_some() {
                return Err(Error::corrupt(format!("duplicate tensor `{}`", t.name)));
            }
        }
        Ok(Self {
            header,
            storage,
            index,
        })
    }

    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.header.metadata.get(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.header.tensors[i])
    }

    /// The raw encoded bytes of a tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        // Bounds were validated in `from_storage`.
        let start = (self.header.data_offset + info.offset) as usize;
        let end = start + info.n_bytes()?;
        Ok((info, &self.storage.bytes()[start..end]))
    }
}

/// A bounds-checked little-endian reader.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                Error::corrupt(format!("unexpected end of file at byte {}", self.pos))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// A count that must fit in the rest of the file, given each item takes at least `min_item` bytes.
    fn count(&mut self, min_item: usize, what: &str) -> Result<usize> {
        let n = self.u64()?;
        let n = usize::try_from(n)
            .map_err(|_| Error::corrupt(format!("{what} count {n} too large")))?;
        if n.saturating_mul(min_item) > self.remaining() {
            return Err(Error::corrupt(format!(
                "{what} count {n} does not fit in the remaining {} bytes",
                self.remaining()
            )));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.count(1, "string length")?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::corrupt("string is not valid UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => match self.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(Error::corrupt(format!("invalid bool byte {b}"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth > 4 {
                    return Err(Error::corrupt("arrays nested too deeply"));
                }
                let elem = self.u32()?;
                let n = self.count(1, "array")?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            t => return Err(Error::corrupt(format!("unknown metadata value type {t}"))),
        })
    }
}

/// Parses the header of a GGUF file held in `buf`.
pub fn parse_header(buf: &[u8]) -> Result<GgufHeader> {
    let mut r = Reader { buf, pos: 0 };
    let magic = r.array::<4>().map_err(|_| Error::BadMagic(*b"\0\0\0\0"))?;
    if &magic != MAGIC {
        return Err(Error::BadMagic(magic));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(Error::UnsupportedVersion(version));
    }
    // A tensor info takes at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset) bytes; a KV pair 8 + 4 + 1.
    let n_tensors = r.count(24, "tensor")?;
    let n_kv = r.count(13, "metadata")?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        let value = r.value(ty, 0)?;
        metadata.insert(key, value);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => return Err(Error::corrupt("general.alignment must be a power of two")),
        },
    };
    let mut tensors = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(Error::corrupt(format!(
                "tensor `{name}` has {n_dims} dimensions"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut total: usize = 1;
        for _ in 0..n_dims {
            let d = usize::try_from(r.u64()?)
                .map_err(|_| Error::corrupt(format!("tensor `{name}` dimension too large")))?;
            total = total
                .checked_mul(d)
                .ok_or_else(|| Error::corrupt(format!("tensor `{name}` is too large")))?;
            dims.push(d);
        }
        let ty = TensorType::from_id(r.u32()?)?;
        let offset = r.u64()?;
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
        });
    }
    let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::writer::{write, TensorData};
    use super::*;

    fn sample() -> Vec<u8> {
        let meta = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("x.count".to_string(), Value::U32(7)),
            (
                "x.list".to_string(),
                Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]),
            ),
        ];
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let tensors = vec![
            TensorData {
                name: "a".into(),
                dims: vec![3, 2],
                ty: TensorType::F32,
                data: data.clone(),
            },
            TensorData {
                name: "b".into(),
                dims: vec![6],
                ty: TensorType::F32,
                data,
            },
        ];
        write(&meta, &tensors)
    }

    #[test]
    fn round_trip() {
        let f = GgufFile::from_bytes(sample()).unwrap();
        assert_eq!(f.header.version, 3);
        assert_eq!(f.metadata("x.count").and_then(Value::as_u64), Some(7));
        assert_eq!(
            f.metadata("x.list")
                .and_then(Value::as_array)
                .map(|a| a.len()),
            Some(2)
        );
        let (info, bytes) = f.tensor_bytes("b").unwrap();
        assert_eq!(info.dims, vec![6]);
        assert_eq!(bytes.len(), 24);
        assert_eq!(f.tensor_info("a").unwrap().offset % 32, 0);
        assert_eq!(f.tensor_info("b").unwrap().offset, 32);
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        assert!(matches!(
            GgufFile::from_bytes(b"GGML0000".to_vec()),
            Err(Error::BadMagic(_))
        ));
        let mut b = sample();
        b[4] = 9;
        assert!(matches!(
            GgufFile::from_bytes(b),
            Err(Error::UnsupportedVersion(9))
        ));
        assert!(matches!(
            GgufFile::from_bytes(vec![]),
            Err(Error::BadMagic(_))
        ));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let b = sample();
        for n in 0..b.len() {
            assert!(
                GgufFile::from_bytes(b[..n].to_vec()).is_err(),
                "prefix {n} parsed"
            );
        }
    }

    #[test]
    fn absurd_counts_are_rejected() {
        let mut b = sample();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(GgufFile::from_bytes(b), Err(Error::Corrupt(_))));
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        let base = sample();
        // Deterministic byte flips across the header.
        for i in 0..base.len().min(400) {
            for x in [0xffu8, 0x80, 0x01] {
                let mut b = base.clone();
                b[i] ^= x;
                let _ = GgufFile::from_bytes(b);
            }
        }
    }
}
