//! Apache Thrift's header transport (`THeaderTransport`; fbthrift's and
//! ByteDance's TTHeader share the layout): a framed message whose frame
//! starts with a header carrying the protocol, payload transforms and
//! key/value *info headers* (client timeout, trace context, caller).
//!
//! ```text
//! LENGTH u32 | MAGIC 0x0FFF u16 | FLAGS u16 | SEQUENCE NUMBER u32 |
//! HEADER SIZE u16 (in 4-byte words) | header: protocol id varint,
//! transform count varint, transform ids varint…, info headers…, padding |
//! payload (the Thrift message, transformed)
//! ```
//!
//! Info headers: a type varint, then for `KEY_VALUE` (1) and fbthrift's
//! persistent `P_KEY_VALUE` (2) a count varint and that many pairs of
//! varint-length strings. Type 0 is padding; an unknown type ends the
//! headers (as Apache's readers do).
//!
//! Supported: protocol ids 0 (binary) and 2 (compact); the zlib transform
//! (1). Anything else is *refused*: the connection answers it with a
//! `TApplicationException` (`INVALID_PROTOCOL` / `INVALID_TRANSFORM`) naming
//! it, then closes. Every length is checked against the bytes of the frame
//! (itself at most `max_frame_size`), and a zlib payload inflates to at most
//! `max_frame_size` bytes: nothing is allocated from an untrusted length.

use bytes::{BufMut, Bytes, BytesMut};

use super::compact::{put_varint, varint};
use super::Protocol;

/// The two bytes after the frame length that mark a header frame.
pub const MAGIC: [u8; 2] = [0x0f, 0xff];
/// Transform ids (Apache's `THeaderTransformID`, fbthrift's names).
pub const TRANSFORM_ZLIB: u32 = 1;
/// At most this many transforms in one frame (real clients send 0 or 1).
pub const MAX_TRANSFORMS: usize = 8;
/// Info header types.
const INFO_PADDING: u32 = 0;
const INFO_KEY_VALUE: u32 = 1;
const INFO_PERSISTENT_KEY_VALUE: u32 = 2;
/// The largest header area a frame can name: its size is a `u16` count of
/// 4-byte words.
pub const MAX_HEADER_LEN: usize = u16::MAX as usize * 4;
/// At most this many info headers per frame are kept (more are an error).
pub const MAX_HEADERS: usize = 128;

/// Why a header frame was not read. `Unsupported*` are answered to the
/// client before the connection closes; the rest only close it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderFrameError {
    #[error("THeader frame ends inside its header")]
    Truncated,
    #[error("THeader header size {0} bytes runs past the end of its frame")]
    BadHeaderSize(usize),
    #[error("THeader frame has a malformed varint or string")]
    Malformed,
    #[error("THeader frame has more than {MAX_TRANSFORMS} transforms")]
    TooManyTransforms,
    #[error("THeader frame has more than {MAX_HEADERS} info headers")]
    TooManyHeaders,
    #[error("THeader protocol id {0} is not supported: use 0 (binary) or 2 (compact)")]
    UnsupportedProtocol(u32),
    #[error("THeader transform {id} ({name}) is not supported: use zlib (1) or none")]
    UnsupportedTransform { id: u32, name: &'static str },
    #[error("THeader zlib payload is corrupt")]
    Inflate,
    #[error("THeader zlib payload inflates beyond max_frame_size {0}")]
    InflatesTooLarge(usize),
}

/// What a reply needs to be written as the answer to a header frame: the
/// frame's sequence number, flags, protocol and whether it was compressed.
/// Small and `Copy`: kept per pipelined call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderReply {
    pub seq_id: u32,
    pub flags: u16,
    pub protocol: HeaderProtocol,
    pub zlib: bool,
}

/// The protocol ids a header frame may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProtocol {
    Binary = 0,
    Compact = 2,
}

impl HeaderProtocol {
    /// The id for a message in `p` (lax binary is binary).
    pub fn of(p: Protocol) -> HeaderProtocol {
        match p {
            Protocol::Compact => HeaderProtocol::Compact,
            Protocol::BinaryStrict | Protocol::BinaryLax => HeaderProtocol::Binary,
        }
    }

    /// The protocol exceptions are written in for this id.
    pub fn protocol(self) -> Protocol {
        match self {
            HeaderProtocol::Binary => Protocol::BinaryStrict,
            HeaderProtocol::Compact => Protocol::Compact,
        }
    }
}

/// One decoded header frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderFrame {
    pub reply: HeaderReply,
    /// Info headers in the order sent; keys and values are slices of the
    /// frame (no copy).
    pub headers: Vec<(Bytes, Bytes)>,
    /// The Thrift message (inflated if it was compressed).
    pub payload: Bytes,
}

impl HeaderFrame {
    /// The value of the first info header named `key`.
    pub fn header(&self, key: &[u8]) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v)
    }
}

/// Decodes the frame `frame` (what follows the 4-byte length; starts with
/// the magic). `max` bounds the inflated payload. On an unsupported
/// protocol or transform, the `HeaderReply` read so far comes back with the
/// error, to answer the refusal in.
pub fn decode(
    frame: Bytes,
    max: usize,
) -> Result<HeaderFrame, (HeaderFrameError, Option<HeaderReply>)> {
    let fail = |e| (e, None);
    let fixed = frame.get(..10).ok_or(fail(HeaderFrameError::Truncated))?;
    if fixed[..2] != MAGIC {
        return Err(fail(HeaderFrameError::Malformed));
    }
    let flags = u16::from_be_bytes([fixed[2], fixed[3]]);
    let seq_id = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    let header_len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]])) * 4;
    let end = 10 + header_len;
    if end > frame.len() {
        return Err(fail(HeaderFrameError::BadHeaderSize(header_len)));
    }
    let mut r = Reader {
        buf: &frame[..end],
        at: 10,
    };
    let protocol_id = r.varint().ok_or(fail(HeaderFrameError::Malformed))?;
    let mut reply = HeaderReply {
        seq_id,
        flags,
        protocol: HeaderProtocol::Binary,
        zlib: false,
    };
    reply.protocol = match protocol_id {
        0 => HeaderProtocol::Binary,
        2 => HeaderProtocol::Compact,
        other => return Err((HeaderFrameError::UnsupportedProtocol(other), Some(reply))),
    };
    let transforms = r.varint().ok_or(fail(HeaderFrameError::Malformed))? as usize;
    if transforms > MAX_TRANSFORMS {
        return Err(fail(HeaderFrameError::TooManyTransforms));
    }
    let mut zlib_count = 0;
    for _ in 0..transforms {
        match r.varint().ok_or(fail(HeaderFrameError::Malformed))? {
            TRANSFORM_ZLIB => zlib_count += 1,
            id => {
                let name = match id {
                    2 => "hmac",
                    3 => "snappy",
                    4 => "qlz",
                    5 => "zstd",
                    _ => "unknown",
                };
                return Err((
                    HeaderFrameError::UnsupportedTransform { id, name },
                    Some(reply),
                ));
            }
        }
    }
    // Apache writes one zlib at most; twice would be inflated twice.
    if zlib_count > 1 {
        return Err((
            HeaderFrameError::UnsupportedTransform {
                id: TRANSFORM_ZLIB,
                name: "zlib applied twice",
            },
            Some(reply),
        ));
    }
    reply.zlib = zlib_count == 1;
    let mut headers = Vec::new();
    while r.at < end {
        match r.varint().ok_or(fail(HeaderFrameError::Malformed))? {
            INFO_PADDING => break,
            INFO_KEY_VALUE | INFO_PERSISTENT_KEY_VALUE => {
                let count = r.varint().ok_or(fail(HeaderFrameError::Malformed))?;
                for _ in 0..count {
                    if headers.len() == MAX_HEADERS {
                        return Err(fail(HeaderFrameError::TooManyHeaders));
                    }
                    let key = r.string().ok_or(fail(HeaderFrameError::Malformed))?;
                    let value = r.string().ok_or(fail(HeaderFrameError::Malformed))?;
                    headers.push((frame.slice(key), frame.slice(value)));
                }
            }
            _ => break,
        }
    }
    let payload = frame.slice(end..);
    let payload = if reply.zlib {
        inflate(&payload, max).map_err(fail)?
    } else {
        payload
    };
    Ok(HeaderFrame {
        reply,
        headers,
        payload,
    })
}

/// Appends `message` to `out` as a header frame answering `reply`:
/// same sequence number, flags and protocol, compressed if the call was,
/// with `headers` as key/value info headers. Headers that would not fit the
/// header area a frame can name ([`MAX_HEADER_LEN`]) are left out: the
/// answer itself always goes.
pub fn encode(message: &[u8], reply: &HeaderReply, headers: &[(&[u8], &[u8])], out: &mut BytesMut) {
    let compressed;
    let payload: &[u8] = if reply.zlib {
        compressed = deflate(message);
        &compressed
    } else {
        message
    };
    let start = out.len();
    out.reserve(4 + 10 + 8 + payload.len());
    out.put_u32(0); // LENGTH, written below
    out.put_slice(&MAGIC);
    out.put_u16(reply.flags);
    out.put_u32(reply.seq_id);
    out.put_u16(0); // HEADER SIZE, written below
    let header_start = out.len();
    put_varint(out, reply.protocol as u32);
    if reply.zlib {
        put_varint(out, 1);
        put_varint(out, TRANSFORM_ZLIB);
    } else {
        put_varint(out, 0);
    }
    let fixed_end = out.len();
    if !headers.is_empty() {
        put_varint(out, INFO_KEY_VALUE);
        put_varint(out, len32(headers.len()));
        for (k, v) in headers {
            put_varint(out, len32(k.len()));
            out.put_slice(k);
            put_varint(out, len32(v.len()));
            out.put_slice(v);
        }
        if out.len() - header_start > MAX_HEADER_LEN {
            out.truncate(fixed_end);
        }
    }
    let unpadded = out.len() - header_start;
    let header_len = unpadded.div_ceil(4) * 4;
    out.put_bytes(0, header_len - unpadded);
    out.put_slice(payload);
    let frame_len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&frame_len.to_be_bytes());
    // At most MAX_HEADER_LEN / 4 = u16::MAX words.
    let words = (header_len / 4) as u16;
    out[header_start - 2..header_start].copy_from_slice(&words.to_be_bytes());
}

/// A length as a varint's value (every length written here is far below
/// 4 GiB: replies are at most `max_frame_size`).
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Inflates a zlib stream into at most `max` bytes.
fn inflate(data: &[u8], max: usize) -> Result<Bytes, HeaderFrameError> {
    use flate2::{Decompress, FlushDecompress, Status};
    let mut d = Decompress::new(true);
    // One byte of room beyond `max` tells "exactly max" from "more".
    let limit = max.saturating_add(1);
    // Grows with what actually inflates, never from a declared size.
    let mut out: Vec<u8> = Vec::with_capacity(data.len().saturating_mul(2).max(64).min(limit));
    loop {
        if out.len() == out.capacity() {
            let grow = out.len().max(64).min(limit - out.len());
            out.reserve_exact(grow);
        }
        let (read, written) = (d.total_in(), d.total_out());
        let rest = data.get(read as usize..).unwrap_or_default();
        let status = d
            .decompress_vec(rest, &mut out, FlushDecompress::None)
            .map_err(|_| HeaderFrameError::Inflate)?;
        if out.len() > max {
            return Err(HeaderFrameError::InflatesTooLarge(max));
        }
        if status == Status::StreamEnd {
            return Ok(Bytes::from(out));
        }
        if d.total_in() == read && d.total_out() == written && out.len() < out.capacity() {
            // No progress with room to spare: the stream is cut short.
            return Err(HeaderFrameError::Inflate);
        }
    }
}

fn deflate(data: &[u8]) -> Vec<u8> {
    use flate2::{write::ZlibEncoder, Compression};
    use std::io::Write;
    let mut e = ZlibEncoder::new(Vec::with_capacity(data.len() / 2 + 64), Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    /// A varint of at most 32 bits (the compact protocol's).
    fn varint(&mut self) -> Option<u32> {
        let (v, next) = varint(self.buf, self.at).ok()?;
        self.at = next;
        Some(v)
    }

    /// A varint-length string, as its range in the frame.
    fn string(&mut self) -> Option<std::ops::Range<usize>> {
        let len = self.varint()? as usize;
        let start = self.at;
        let end = start.checked_add(len).filter(|&e| e <= self.buf.len())?;
        self.at = end;
        Some(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(out: &BytesMut) -> Bytes {
        let len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert_eq!(len, out.len() - 4);
        Bytes::copy_from_slice(&out[4..])
    }

    #[test]
    fn round_trips_with_headers_and_zlib() {
        for zlib in [false, true] {
            for protocol in [HeaderProtocol::Binary, HeaderProtocol::Compact] {
                let reply = HeaderReply {
                    seq_id: 0xdead_beef,
                    flags: 1,
                    protocol,
                    zlib,
                };
                let mut out = BytesMut::new();
                let msg = b"the thrift message".repeat(20);
                encode(
                    &msg,
                    &reply,
                    &[
                        (b"client_timeout", b"250"),
                        (b"traceparent", b"00-ab-cd-01"),
                    ],
                    &mut out,
                );
                let f = decode(frame_of(&out), 1 << 20).unwrap();
                assert_eq!(f.reply, reply);
                assert_eq!(&f.payload[..], &msg[..]);
                assert_eq!(f.header(b"client_timeout").unwrap(), &b"250"[..]);
                assert_eq!(f.header(b"traceparent").unwrap(), &b"00-ab-cd-01"[..]);
                assert_eq!(f.headers.len(), 2);
            }
        }
    }

    /// A frame as Apache's Python `THeaderTransport.flush` writes it.
    fn python_style(protocol: u8, transforms: &[u8], info: &[u8], payload: &[u8]) -> Bytes {
        let mut header = vec![protocol, transforms.len() as u8];
        header.extend_from_slice(transforms);
        header.extend_from_slice(info);
        while header.len() % 4 != 0 {
            header.push(0);
        }
        let mut f = Vec::new();
        f.extend_from_slice(&MAGIC);
        f.extend_from_slice(&0u16.to_be_bytes());
        f.extend_from_slice(&7u32.to_be_bytes());
        f.extend_from_slice(&((header.len() / 4) as u16).to_be_bytes());
        f.extend_from_slice(&header);
        f.extend_from_slice(payload);
        Bytes::from(f)
    }

    #[test]
    fn refusals_carry_what_is_needed_to_answer_them() {
        let (e, reply) = decode(python_style(1, &[], &[], b"x"), 100).unwrap_err();
        assert_eq!(e, HeaderFrameError::UnsupportedProtocol(1));
        assert_eq!(reply.unwrap().seq_id, 7);
        let (e, reply) = decode(python_style(2, &[3], &[], b"x"), 100).unwrap_err();
        assert_eq!(
            e,
            HeaderFrameError::UnsupportedTransform {
                id: 3,
                name: "snappy"
            }
        );
        assert_eq!(reply.unwrap().protocol, HeaderProtocol::Compact);
        assert!(e.to_string().contains("snappy"));
    }

    #[test]
    fn garbage_and_bombs_are_errors_without_allocating_from_lengths() {
        // Header size past the frame.
        let mut f = python_style(0, &[], &[], b"").to_vec();
        f[8] = 0xff;
        f[9] = 0xff;
        assert!(matches!(
            decode(Bytes::from(f), 100),
            Err((HeaderFrameError::BadHeaderSize(262_140), None))
        ));
        // A string longer than the header.
        let f = python_style(0, &[], &[1, 1, 0x7f], b"");
        assert_eq!(decode(f, 100).unwrap_err().0, HeaderFrameError::Malformed);
        // A count of 2^32-1 headers with nothing behind it.
        let f = python_style(0, &[], &[1, 0xff, 0xff, 0xff, 0xff, 0x0f], b"");
        assert_eq!(decode(f, 100).unwrap_err().0, HeaderFrameError::Malformed);
        // Too many transforms.
        let f = python_style(0, &[1; 9], &[], b"");
        assert_eq!(
            decode(f, 100).unwrap_err().0,
            HeaderFrameError::TooManyTransforms
        );
        // Truncated fixed part.
        assert_eq!(
            decode(Bytes::from_static(&[0x0f, 0xff, 0]), 100)
                .unwrap_err()
                .0,
            HeaderFrameError::Truncated
        );
        // A zlib bomb: 1 MiB of zeros compressed stops at max.
        let bomb = deflate(&vec![0u8; 1 << 20]);
        let f = python_style(0, &[1], &[], &bomb);
        assert_eq!(
            decode(f, 4096).unwrap_err().0,
            HeaderFrameError::InflatesTooLarge(4096)
        );
        // Corrupt and truncated zlib.
        let f = python_style(0, &[1], &[], b"not zlib at all");
        assert_eq!(decode(f, 4096).unwrap_err().0, HeaderFrameError::Inflate);
        let good = deflate(&[7u8; 1000]);
        let f = python_style(0, &[1], &[], &good[..good.len() / 2]);
        assert_eq!(decode(f, 4096).unwrap_err().0, HeaderFrameError::Inflate);
        // Exactly max inflates fine.
        let f = python_style(0, &[1], &[], &deflate(&[7u8; 4096]));
        assert_eq!(decode(f, 4096).unwrap().payload.len(), 4096);
    }

    #[test]
    fn reply_headers_beyond_the_header_area_are_left_out_not_corrupting_the_frame() {
        let value = vec![b'v'; 4096];
        let many: Vec<(&[u8], &[u8])> = (0..100).map(|_| (&b"k"[..], &value[..])).collect();
        for zlib in [false, true] {
            let reply = HeaderReply {
                seq_id: 9,
                flags: 0,
                protocol: HeaderProtocol::Binary,
                zlib,
            };
            let mut out = BytesMut::from(&b"earlier answer"[..]);
            encode(b"the answer", &reply, &many, &mut out);
            let f = decode(frame_of_at(&out, 14), 1 << 20).unwrap();
            assert_eq!(f.reply, reply);
            assert_eq!(&f.payload[..], b"the answer");
            assert!(f.headers.is_empty());
            // What fits still goes.
            let mut out = BytesMut::new();
            encode(b"x", &reply, &many[..10], &mut out);
            assert_eq!(decode(frame_of(&out), 1 << 20).unwrap().headers.len(), 10);
        }
    }

    /// The frame that starts at `at` in `out` (after earlier answers).
    fn frame_of_at(out: &BytesMut, at: usize) -> Bytes {
        frame_of(&BytesMut::from(&out[at..]))
    }

    #[test]
    fn unknown_info_types_end_the_headers() {
        let f = python_style(0, &[], &[1, 1, 1, b'k', 1, b'v', 9, 1, 1, b'x'], b"P");
        let d = decode(f, 100).unwrap();
        assert_eq!(d.headers.len(), 1);
        assert_eq!(&d.payload[..], b"P");
    }
}
