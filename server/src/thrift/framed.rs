//! The Thrift framed transport: a 4-byte big-endian length, then the message.
//!
//! The decoder checks the length before reserving anything: a zero, negative
//! or oversized length is an error (and the connection is closed) without a
//! single byte allocated for it. Decoded frames are `Bytes` split off the
//! read buffer, so the message travels to the worker without a copy.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// Why a frame was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("zero-length frame")]
    Empty,
    #[error("negative frame length {0}")]
    Negative(i32),
    #[error("frame of {len} bytes exceeds max_frame_size {max}")]
    TooLarge { len: usize, max: usize },
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Decodes Thrift frames of at most `max` bytes.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> FrameDecoder {
        FrameDecoder { max }
    }
}

impl Decoder for FrameDecoder {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len < 0 {
            return Err(FrameError::Negative(len));
        }
        let len = len as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if src.len() < 4 + len {
            // Room for the rest of this frame only: `len` is now known to be
            // within the configured maximum. Not `reserve`, which may double
            // the buffer (to ~2 × max_frame_size): a buffer of exactly the
            // frame's size keeps what one connection holds bounded.
            if src.capacity() < 4 + len {
                let mut exact = BytesMut::with_capacity(4 + len);
                exact.extend_from_slice(src);
                *src = exact;
            }
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(FrameError::Truncated(buf.len())),
        }
    }
}

/// Appends `message` to `out` as one frame. Every message written is at
/// most a listener's `max_frame_size` (256 MiB at most), so its length fits.
pub fn encode(message: &[u8], out: &mut BytesMut) {
    out.reserve(4 + message.len());
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(len: i32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn decodes_whole_and_split_frames() {
        let mut d = FrameDecoder::new(100);
        let mut b = framed(3, b"abc");
        b.extend_from_slice(&framed(2, b"de")[..5]);
        assert_eq!(&d.decode(&mut b).unwrap().unwrap()[..], b"abc");
        assert!(d.decode(&mut b).unwrap().is_none());
        b.extend_from_slice(b"e");
        assert_eq!(&d.decode(&mut b).unwrap().unwrap()[..], b"de");
        assert!(b.is_empty());
    }

    #[test]
    fn rejects_bad_lengths_without_allocating() {
        let mut d = FrameDecoder::new(100);
        assert!(matches!(
            d.decode(&mut framed(0, b"")),
            Err(FrameError::Empty)
        ));
        assert!(matches!(
            d.decode(&mut framed(-5, b"")),
            Err(FrameError::Negative(-5))
        ));
        let mut huge = framed(i32::MAX, b"x");
        let cap = huge.capacity();
        assert!(matches!(
            d.decode(&mut huge),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(huge.capacity(), cap);
        assert!(matches!(
            d.decode(&mut framed(101, b"")),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        ));
    }

    #[test]
    fn eof_inside_a_frame_is_truncated() {
        let mut d = FrameDecoder::new(100);
        let mut b = framed(10, b"abc");
        assert!(matches!(
            d.decode_eof(&mut b),
            Err(FrameError::Truncated(7))
        ));
        assert!(d.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }
}
