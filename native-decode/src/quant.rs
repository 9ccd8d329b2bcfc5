//! Tensor encodings and their dequantization to f32.
//!
//! Block formats hold 32 values each: Q8_0 = f16 scale + 32 × i8; Q4_0 = f16 scale + 16 bytes of nibbles
//! (value `(q − 8)·d`); Q4_1 = f16 scale + f16 min + 16 bytes (value `q·d + m`). In the 4-bit formats the low
//! nibbles are values 0–15 of the block and the high nibbles values 16–31.

use half::{bf16, f16};

use crate::error::{Error, Result};

const QK: usize = 32;

/// The tensor encodings this engine can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
}

impl TensorType {
    /// Maps a ggml type id; unknown or unsupported ids are an error naming the type.
    pub fn from_id(id: u32) -> Result<Self> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            other => {
                let name = match other {
                    6 => "Q5_0",
                    7 => "Q5_1",
                    9 => "Q8_1",
                    10 => "Q2_K",
                    11 => "Q3_K",
                    12 => "Q4_K",
                    13 => "Q5_K",
                    14 => "Q6_K",
                    15 => "Q8_K",
                    _ => "",
                };
                return Err(Error::UnsupportedTensorType(if name.is_empty() {
                    format!("id {other}")
                } else {
                    format!("{name} (id {other})")
                }));
            }
        })
    }

    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::BF16 => 30,
        }
    }

    /// (values per block, bytes per block)
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q8_0 => (QK, 34),
            Self::Q4_0 => (QK, 18),
            Self::Q4_1 => (QK, 20),
        }
    }

    /// Encoded size of `n` values; an error when `n` is not a whole number of blocks.
    pub fn row_bytes(self, n: usize) -> Result<usize> {
        let (per, bytes) = self.block();
        if !n.is_multiple_of(per) {
            return Err(Error::corrupt(format!(
                "{n} values is not a multiple of the {self:?} block size {per}"
            )));
        }
        (n / per)
            .checked_mul(bytes)
            .ok_or_else(|| Error::corrupt("tensor size overflows"))
    }
}

/// Dequantizes `data` (exactly `n` encoded values) into a new f32 vector.
pub fn dequantize(ty: TensorType, data: &[u8], n: usize) -> Result<Vec<f32>> {
    if data.len() != ty.row_bytes(n)? {
        return Err(Error::corrupt(format!(
            "{ty:?} data has {} bytes, expected {}",
            data.len(),
            ty.row_bytes(n)?
        )));
    }
    let mut out = Vec::with_capacity(n);
    let h = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match ty {
        TensorType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        TensorType::F16 => out.extend(data.chunks_exact(2).map(h)),
        TensorType::BF16 => out.extend(
            data.chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        TensorType::Q8_0 => {
            for blk in data.chunks_exact(34) {
                let d = h(&blk[..2]);
                out.extend(blk[2..].iter().map(|&q| d * f32::from(q as i8)));
            }
        }
        TensorType::Q4_0 => {
            for blk in data.chunks_exact(18) {
                let d = h(&blk[..2]);
                let qs = &blk[2..];
                out.extend(qs.iter().map(|&q| (f32::from(q & 0x0f) - 8.0) * d));
                out.extend(qs.iter().map(|&q| (f32::from(q >> 4) - 8.0) * d));
            }
        }
        TensorType::Q4_1 => {
            for blk in data.chunks_exact(20) {
                let d = h(&blk[..2]);
                let m = h(&blk[2..4]);
                let qs = &blk[4..];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0f) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
    }
    Ok(out)
}

/// Encodes f32 values (used to build test models and to check dequantization round trips).
pub fn quantize(ty: TensorType, values: &[f32]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(ty.row_bytes(values.len())?);
    let put_h = |out: &mut Vec<u8>, x: f32| out.extend_from_slice(&f16::from_f32(x).to_le_bytes());
    match ty {
        TensorType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        TensorType::F16 => values.iter().for_each(|&v| put_h(&mut out, v)),
        TensorType::BF16 => values
            .iter()
            .for_each(|&v| out.extend_from_slice(&bf16::from_f32(v).to_le_bytes())),
        TensorType::Q8_0 => {
            for blk in values.chunks_exact(QK) {
                let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                put_h(&mut out, d);
                out.extend(
                    blk.iter()
                        .map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8 as u8),
                );
            }
        }
        TensorType::Q4_0 => {
            for blk in values.chunks_exact(QK) {
                let max = blk
                    .iter()
                    .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -8.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_h(&mut out, d);
                let q = |v: f32| ((v * inv + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(blk[j]) | (q(blk[j + 16]) << 4)));
            }
        }
        TensorType::Q4_1 => {
            for blk in values.chunks_exact(QK) {
                let min = blk.iter().copied().fold(f32::INFINITY, f32::min);
                let max = blk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_h(&mut out, d);
                put_h(&mut out, min);
                let q = |v: f32| (((v - min) * inv + 0.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(blk[j]) | (q(blk[j + 16]) << 4)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect()
    }

    #[test]
    fn exact_formats_round_trip() {
        let v = ramp(64);
        for ty in [TensorType::F32, TensorType::F16, TensorType::BF16] {
            let back = dequantize(ty, &quantize(ty, &v).unwrap(), v.len()).unwrap();
            let tol = if ty == TensorType::F32 { 0.0 } else { 0.02 };
            for (a, b) in v.iter().zip(&back) {
                assert!((a - b).abs() <= tol, "{ty:?} {a} {b}");
            }
        }
    }

    #[test]
    fn block_formats_round_trip_within_step() {
        let v = ramp(96);
        for (ty, tol) in [
            (TensorType::Q8_0, 0.02),
            (TensorType::Q4_0, 0.3),
            (TensorType::Q4_1, 0.15),
        ] {
            let bytes = quantize(ty, &v).unwrap();
            assert_eq!(bytes.len(), ty.row_bytes(96).unwrap());
            let back = dequantize(ty, &bytes, v.len()).unwrap();
            for (a, b) in v.iter().zip(&back) {
                assert!((a - b).abs() <= tol, "{ty:?} {a} {b}");
            }
        }
    }

    #[test]
    fn q4_1_layout_is_low_then_high_nibbles() {
        // d = 1, m = 0.5; byte j = (j) | (15 - j) << 4
        let mut blk = Vec::new();
        blk.extend_from_slice(&f16::from_f32(1.0).to_le_bytes());
        blk.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        blk.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = dequantize(TensorType::Q4_1, &blk, 32).unwrap();
        assert_eq!(v[0], 0.5);
        assert_eq!(v[15], 15.5);
        assert_eq!(v[16], 15.5);
        assert_eq!(v[31], 0.5);
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(dequantize(TensorType::Q8_0, &[0; 33], 32).is_err());
        assert!(TensorType::Q4_0.row_bytes(31).is_err());
        assert!(
            matches!(TensorType::from_id(14), Err(Error::UnsupportedTensorType(s)) if s.contains("Q6_K"))
        );
    }
}
