//! A minimal reader for HF safetensors folders (`*.safetensors`: u64 header length, JSON header, raw data),
//! returning tensors as bf16 bit patterns.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{CudaError, CudaResult};

struct Entry {
    file: usize,
    dtype: String,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

pub(crate) struct SafeTensors {
    maps: Vec<Mmap>,
    entries: HashMap<String, Entry>,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> CudaError {
    CudaError::Weights(format!("{}: {msg}", path.display()))
}

impl SafeTensors {
    /// Indexes every `*.safetensors` file of `dir`.
    pub(crate) fn open_dir(dir: &Path) -> CudaResult<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| bad(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(bad(dir, "no *.safetensors file"));
        }
        let mut maps = Vec::new();
        let mut entries = HashMap::new();
        for path in files {
            let file = File::open(&path).map_err(|e| bad(&path, e))?;
            // SAFETY: the file is only read; a concurrent writer would be a misuse of the model folder.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| bad(&path, e))?;
            if map.len() < 8 {
                return Err(bad(&path, "truncated"));
            }
            let hlen = u64::from_le_bytes(map[..8].try_into().unwrap_or_default()) as usize;
            let header = map
                .get(8..8 + hlen)
                .ok_or_else(|| bad(&path, "header past end of file"))?;
            let json: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(header).map_err(|e| bad(&path, e))?;
            let base = 8 + hlen;
            for (name, v) in json {
                if name == "__metadata__" {
                    continue;
                }
                let dtype = v["dtype"].as_str().unwrap_or("").to_string();
                let shape = v["shape"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_u64().map(|x| x as usize))
                            .collect()
                    })
                    .unwrap_or_default();
                let off = v["data_offsets"].as_array().map(|a| {
                    (
                        a.first().and_then(|x| x.as_u64()).unwrap_or(0) as usize,
                        a.get(1).and_then(|x| x.as_u64()).unwrap_or(0) as usize,
                    )
                });
                let (s, e) = off.ok_or_else(|| bad(&path, format!("{name}: no data_offsets")))?;
                if base + e > map.len() || s > e {
                    return Err(bad(&path, format!("{name}: data past end of file")));
                }
                entries.insert(
                    name,
                    Entry {
                        file: maps.len(),
                        dtype,
                        shape,
                        start: base + s,
                        end: base + e,
                    },
                );
            }
            maps.push(map);
        }
        Ok(Self { maps, entries })
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Tensor `name` as bf16 bits, checking its shape (BF16, F16 and F32 accepted).
    pub(crate) fn bf16(&self, name: &str, shape: &[usize]) -> CudaResult<Vec<u16>> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| CudaError::Weights(format!("missing tensor `{name}`")))?;
        if e.shape != shape {
            return Err(CudaError::Weights(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                e.shape
            )));
        }
        let bytes = &self.maps[e.file][e.start..e.end];
        let n: usize = shape.iter().product();
        let width = match e.dtype.as_str() {
            "BF16" | "F16" => 2,
            "F32" => 4,
            other => {
                return Err(CudaError::Weights(format!(
                    "tensor `{name}` has dtype {other} (BF16, F16 or F32 expected)"
                )))
            }
        };
        if bytes.len() != n * width {
            return Err(CudaError::Weights(format!(
                "tensor `{name}` has a bad byte length"
            )));
        }
        Ok(match e.dtype.as_str() {
            "BF16" => bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
            "F16" => bytes
                .chunks_exact(2)
                .map(|c| {
                    let x = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
                    half::bf16::from_f32(x.to_f32()).to_bits()
                })
                .collect(),
            _ => bytes
                .chunks_exact(4)
                .map(|c| {
                    half::bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_bits()
                })
                .collect(),
        })
    }
}
