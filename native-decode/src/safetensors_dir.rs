//! The one reader of HF safetensors folders (every `*.safetensors` file of a directory), for both backends: the
//! CPU loader dequantizes tensors to f32, the CUDA backend converts them to bf16.
//!
//! Headers are parsed and validated by the `safetensors` crate (offsets contiguous, sizes matching shapes, the file
//! exactly as long as the header says); files are memory-mapped through [`crate::cpu_ops::map_file`], so this module
//! needs no `unsafe` of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::quant::TensorType;

struct File {
    map: Mmap,
    /// Where the data section starts (after the u64 header length and the JSON header).
    data_start: usize,
    meta: Metadata,
}

/// A read-only index over every tensor of a folder's safetensors files.
pub struct SafetensorsDir {
    files: Vec<File>,
    /// Tensor name -> index into `files`.
    owner: HashMap<String, usize>,
}

/// One tensor's encoding and raw little-endian bytes.
pub struct TensorBytes<'a> {
    pub ty: TensorType,
    pub bytes: &'a [u8],
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl SafetensorsDir {
    /// Maps and indexes every `*.safetensors` file of `dir` (sorted by name; a later file does not override an
    /// earlier one's tensor of the same name).
    pub fn open(dir: &Path) -> Result<Self> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(Error::UnsupportedModel(format!(
                "no *.safetensors in {}",
                dir.display()
            )));
        }
        let mut files = Vec::with_capacity(paths.len());
        let mut owner = HashMap::new();
        for path in paths {
            let file = std::fs::File::open(&path).map_err(io(&path))?;
            let map = crate::cpu_ops::map_file(&file).map_err(io(&path))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map)
                .map_err(|e| Error::corrupt(format!("safetensors {}: {e}", path.display())))?;
            for name in meta.tensors().into_keys() {
                owner.entry(name).or_insert(files.len());
            }
            files.push(File {
                map,
                data_start: 8 + header_len,
                meta,
            });
        }
        Ok(Self { files, owner })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.owner.contains_key(name)
    }

    /// Tensor `name`, which must have exactly `shape` and be F32, F16 or BF16.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<TensorBytes<'_>> {
        let missing = || Error::MissingTensor(name.to_string());
        let file = &self.files[*self.owner.get(name).ok_or_else(missing)?];
        let info = file.meta.info(name).ok_or_else(missing)?;
        if info.shape != shape {
            return Err(Error::BadShape {
                name: name.to_string(),
                got: info.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        let ty = match info.dtype {
            Dtype::F32 => TensorType::F32,
            Dtype::F16 => TensorType::F16,
            Dtype::BF16 => TensorType::BF16,
            other => {
                return Err(Error::UnsupportedTensorType(format!(
                    "safetensors {other:?} (tensor `{name}`)"
                )))
            }
        };
        // `read_metadata` checked that the offsets are contiguous, match the shape and end at the end of the file.
        let (start, end) = info.data_offsets;
        Ok(TensorBytes {
            ty,
            bytes: &file.map[file.data_start + start..file.data_start + end],
        })
    }

    /// Tensor `name` dequantized to f32.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensor(name, shape)?;
        crate::quant::dequantize(t.ty, t.bytes, shape.iter().product())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn folder(name: &str, file: &[u8]) -> PathBuf {
        let d = std::env::temp_dir().join(format!("baton-st-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("model.safetensors"), file).unwrap();
        d
    }

    fn one_tensor(dtype: Dtype, bytes: &[u8], shape: Vec<usize>) -> Vec<u8> {
        let v = TensorView::new(dtype, shape, bytes).unwrap();
        safetensors::serialize([("w", v)], None).unwrap()
    }

    #[test]
    fn reads_each_float_type_and_checks_name_shape_and_type() {
        let f32s: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let d = folder("f32", &one_tensor(Dtype::F32, &f32s, vec![2]));
        let st = SafetensorsDir::open(&d).unwrap();
        assert!(st.contains("w") && !st.contains("x"));
        assert_eq!(st.f32("w", &[2]).unwrap(), vec![1.5, -2.0]);
        assert!(matches!(st.f32("x", &[2]), Err(Error::MissingTensor(n)) if n == "x"));
        assert!(matches!(st.f32("w", &[1, 2]), Err(Error::BadShape { .. })));

        let bf: Vec<u8> = [half::bf16::from_f32(3.0).to_bits()]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let d = folder("bf16", &one_tensor(Dtype::BF16, &bf, vec![1]));
        let st = SafetensorsDir::open(&d).unwrap();
        let t = st.tensor("w", &[1]).unwrap();
        assert_eq!((t.ty, t.bytes), (TensorType::BF16, &bf[..]));
        assert_eq!(st.f32("w", &[1]).unwrap(), vec![3.0]);

        let d = folder("i32", &one_tensor(Dtype::I32, &[0; 4], vec![1]));
        let st = SafetensorsDir::open(&d).unwrap();
        assert!(matches!(
            st.f32("w", &[1]),
            Err(Error::UnsupportedTensorType(_))
        ));
    }

    #[test]
    fn a_truncated_or_empty_folder_is_an_error_not_a_panic() {
        let whole = one_tensor(Dtype::F32, &[0; 8], vec![2]);
        for cut in [0, 4, 8, whole.len() - 1] {
            let d = folder("cut", &whole[..cut]);
            assert!(
                matches!(SafetensorsDir::open(&d), Err(Error::Corrupt(_))),
                "cut at {cut}"
            );
        }
        let empty = std::env::temp_dir().join(format!("baton-st-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert!(matches!(
            SafetensorsDir::open(&empty),
            Err(Error::UnsupportedModel(_))
        ));
    }
}
