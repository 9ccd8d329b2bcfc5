//! KV transfer wire format: length-prefixed, checksummed frames over a byte stream.
//!
//! Frame = `kind: u8` · `len: u64 LE` · `payload[len]` · `fnv1a64(kind ‖ payload): u64 LE`.
//!
//! Every read names its own limit ([`read_frame_limited`]): a peer's length claim is checked against what that
//! frame can legitimately hold before anything is allocated. The checksum catches corruption, not forgery; the
//! fleet key (see [`super::tcp`]) is what authenticates a puller.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Puller → holder: JSON `{"transfer_id": ..}`.
    Request = 1,
    /// Holder → puller: JSON [`super::tcp::Header`].
    Header = 2,
    /// Holder → puller: one block as little-endian f32.
    Block = 3,
    /// Holder → puller: JSON `{"message": ..}`.
    Error = 4,
    /// Holder → puller: all blocks sent.
    End = 5,
    /// Holder → puller: JSON [`super::tcp::DeviceHeader`]; the blocks stay in the holder's GPU pool.
    DeviceHeader = 6,
    /// Puller → holder: the device copy is done (or abandoned); the holder frees the blocks.
    Release = 7,
    /// Holder → puller, first on every connection: a random nonce the puller must MAC with the fleet key.
    Challenge = 8,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Request,
            2 => Self::Header,
            3 => Self::Block,
            4 => Self::Error,
            5 => Self::End,
            6 => Self::DeviceHeader,
            7 => Self::Release,
            8 => Self::Challenge,
            _ => return None,
        })
    }
}

pub fn checksum(kind: u8, payload: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&kind).chain(payload) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: FrameKind,
    payload: &[u8],
) -> Result<()> {
    let io = |e: std::io::Error| Error::Transfer(format!("write: {e}"));
    let k = kind as u8;
    w.write_u8(k).await.map_err(io)?;
    w.write_u64_le(payload.len() as u64).await.map_err(io)?;
    w.write_all(payload).await.map_err(io)?;
    w.write_u64_le(checksum(k, payload)).await.map_err(io)?;
    Ok(())
}

/// Reads a frame whose payload may be at most `max` bytes (checked before allocating).
pub async fn read_frame_limited<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u64,
) -> Result<(FrameKind, Vec<u8>)> {
    let io = |e: std::io::Error| Error::Transfer(format!("read: {e}"));
    let k = r.read_u8().await.map_err(io)?;
    let kind =
        FrameKind::from_u8(k).ok_or_else(|| Error::Transfer(format!("unknown frame kind {k}")))?;
    let len = r.read_u64_le().await.map_err(io)?;
    if len > max {
        return Err(Error::Transfer(format!(
            "frame of {len} bytes exceeds the limit"
        )));
    }
    // Grow with the bytes that actually arrive rather than trusting the claim: a peer that announces a large
    // frame and stalls costs nothing.
    let mut payload = Vec::with_capacity(len.min(64 * 1024) as usize);
    (&mut *r)
        .take(len)
        .read_to_end(&mut payload)
        .await
        .map_err(io)?;
    if payload.len() as u64 != len {
        return Err(Error::Transfer("connection closed mid-frame".into()));
    }
    let sum = r.read_u64_le().await.map_err(io)?;
    if sum != checksum(k, &payload) {
        return Err(Error::Transfer("frame checksum mismatch".into()));
    }
    Ok((kind, payload))
}

pub fn f32s_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn bytes_to_f32s(b: &[u8]) -> Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(Error::Transfer(
            "block payload is not a whole number of f32".into(),
        ));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_corruption_detected() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Block, &[1, 2, 3])
            .await
            .unwrap();
        let (k, p) = read_frame_limited(&mut buf.as_slice(), 3).await.unwrap();
        assert_eq!((k, p), (FrameKind::Block, vec![1, 2, 3]));
        // One byte over the reader's limit is refused before the payload is read.
        let err = read_frame_limited(&mut buf.as_slice(), 2)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
        let mut bad = buf.clone();
        bad[10] ^= 1;
        assert!(read_frame_limited(&mut bad.as_slice(), 3).await.is_err());
        assert!(read_frame_limited(&mut &buf[..5], 3).await.is_err());
        let mut huge = buf;
        huge[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read_frame_limited(&mut huge.as_slice(), u64::MAX)
            .await
            .is_err());
    }
}
