//! The transport layer as one `tokio_util` codec: it delimits messages on a
//! connection in the listener's transport — framed, unframed, header, or
//! `auto` (decided once per connection from its first bytes) — and says
//! how each answer must be written back ([`ReplyFraming`]).
//!
//! Detection (`auto`), from the first bytes a client sends:
//!
//! | first bytes | transport |
//! |---|---|
//! | `80 01` (binary strict version) | unframed |
//! | `82`, then a version byte of 1 (compact) | unframed |
//! | 4-byte length, then `0F FF` | header |
//! | anything else | framed (a 4-byte length, then a message) |
//!
//! An unframed lax-binary client (no version word: the message starts with
//! the name's length) looks like a frame length: it needs a listener with
//! `transport = "unframed"`. This is Apache's own rule (`THeaderTransport`).

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::framed::{self, FrameDecoder, FrameError};
use super::header::{self, HeaderFrame, HeaderFrameError, HeaderReply};
use super::unframed::{SkipError, Skipper};
use super::{binary, compact};

/// How messages are delimited on a connection: one variant per transport
/// file of this module. [`Transport::ALL`] is the table every view (stats,
/// config, docs) iterates over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A 4-byte big-endian length, then the message (`TFramedTransport`).
    Framed,
    /// The message alone, delimited by parsing it (`TBufferedTransport`).
    Unframed,
    /// A frame with a header: protocol, transforms, info headers
    /// (`THeaderTransport`).
    Header,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Framed, Transport::Unframed, Transport::Header];

    pub fn label(self) -> &'static str {
        match self {
            Transport::Framed => "framed",
            Transport::Unframed => "unframed",
            Transport::Header => "header",
        }
    }

    /// Position in [`Transport::ALL`] (for per-transport counters).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How an answer is written: the inverse of how its call arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyFraming {
    Framed,
    Unframed,
    Header(HeaderReply),
}

impl ReplyFraming {
    /// The transport the call came in (and its answer goes back in).
    pub fn transport(&self) -> Transport {
        match self {
            ReplyFraming::Framed => Transport::Framed,
            ReplyFraming::Unframed => Transport::Unframed,
            ReplyFraming::Header(_) => Transport::Header,
        }
    }

    /// Appends `message` to `out` in this framing. `headers` (a worker
    /// protocol headers frame from the worker; empty: none) go with it on
    /// the header transport and nowhere else; a malformed frame is dropped.
    #[inline]
    pub fn encode(&self, message: &[u8], headers: Option<&Bytes>, out: &mut BytesMut) {
        match self {
            ReplyFraming::Framed => framed::encode(message, out),
            ReplyFraming::Unframed => out.extend_from_slice(message),
            ReplyFraming::Header(reply) => {
                let Some(headers) = headers else {
                    return header::encode(message, reply, &[], out);
                };
                let pairs = thriftworker_wire::decode_headers(headers).unwrap_or_default();
                let pairs: Vec<(&[u8], &[u8])> =
                    pairs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
                header::encode(message, reply, &pairs, out)
            }
        }
    }
}

/// One message read off a connection.
#[derive(Debug)]
pub struct Inbound {
    /// The Thrift message (protocol header and arguments).
    pub message: Bytes,
    /// Bytes it took on the wire (framing included).
    pub wire_len: usize,
    /// How its answer is written.
    pub framing: ReplyFraming,
    /// Info headers of a header-transport message (empty otherwise: no
    /// allocation on the other transports).
    pub headers: Vec<(Bytes, Bytes)>,
}

/// Why reading ended on a connection.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Unframed(SkipError),
    #[error(transparent)]
    Header(HeaderFrameError),
    /// A header frame the data plane understood well enough to answer: the
    /// connection writes a `TApplicationException` in `reply`, then closes.
    #[error("{error}")]
    Refused {
        error: HeaderFrameError,
        reply: HeaderReply,
    },
    #[error("connection closed in the middle of an unframed message ({0} bytes buffered)")]
    UnframedTruncated(usize),
    #[error("{got} message on a connection that uses the {expected} transport")]
    NotAllowed {
        got: &'static str,
        expected: &'static str,
    },
}

impl From<std::io::Error> for TransportError {
    fn from(e: std::io::Error) -> TransportError {
        TransportError::Frame(FrameError::Io(e))
    }
}

/// The smallest header frame: magic, flags, sequence number, header size.
const MIN_HEADER_FRAME: i64 = 10;

#[derive(Debug)]
enum Mode {
    /// `auto`, before the first message.
    Detect,
    Framed,
    Unframed(Skipper),
    Header,
}

/// Decodes messages of at most `max` bytes in a listener's transport.
#[derive(Debug)]
pub struct MessageDecoder {
    frames: FrameDecoder,
    max: usize,
    mode: Mode,
}

impl MessageDecoder {
    /// A decoder for `transport` (`None`: detect from the first bytes).
    pub fn new(transport: Option<Transport>, max: usize) -> MessageDecoder {
        let mode = match transport {
            None => Mode::Detect,
            Some(Transport::Framed) => Mode::Framed,
            Some(Transport::Unframed) => Mode::Unframed(Skipper::new()),
            Some(Transport::Header) => Mode::Header,
        };
        MessageDecoder {
            frames: FrameDecoder::new(max),
            max,
            mode,
        }
    }

    /// The connection's transport, once known.
    pub fn transport(&self) -> Option<Transport> {
        match self.mode {
            Mode::Detect => None,
            Mode::Framed => Some(Transport::Framed),
            Mode::Unframed(_) => Some(Transport::Unframed),
            Mode::Header => Some(Transport::Header),
        }
    }

    /// A placeholder to swap in while the connection borrows the decoder
    /// apart from its reader (allocates nothing).
    pub fn placeholder() -> MessageDecoder {
        MessageDecoder::new(Some(Transport::Framed), 0)
    }

    /// Decides the transport from the first bytes (`auto`).
    fn detect(src: &[u8], max: usize) -> Option<Transport> {
        let (&b0, &b1) = (src.first()?, src.get(1)?);
        if b0 == binary::STRICT_FIRST_BYTE && b1 == 0x01 {
            return Some(Transport::Unframed);
        }
        if b0 == compact::PROTOCOL_ID && b1 & 0x1f == 1 {
            return Some(Transport::Unframed);
        }
        let len = i32::from_be_bytes(src.get(..4)?.try_into().ok()?);
        // No header frame is this short, and no frame negative or this
        // long: the framed decoder refuses it at once (not after waiting
        // for bytes that may never come).
        if !(MIN_HEADER_FRAME..=max as i64).contains(&i64::from(len)) {
            return Some(Transport::Framed);
        }
        if src.len() < 6 {
            // A frame length: the two bytes after it tell framed from header.
            return None;
        }
        if src[4..6] == header::MAGIC {
            return Some(Transport::Header);
        }
        Some(Transport::Framed)
    }

    fn decode_framed(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, TransportError> {
        Ok(self.frames.decode(src)?.map(|message| Inbound {
            wire_len: message.len() + 4,
            message,
            framing: ReplyFraming::Framed,
            headers: Vec::new(),
        }))
    }

    fn decode_header(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, TransportError> {
        if src.len() >= 6 && src[4..6] != header::MAGIC {
            // Name what it looks like: an unframed message's first bytes are
            // its protocol's version, anything else reads as a frame length.
            let unframed = matches!(src[..2], [binary::STRICT_FIRST_BYTE, 0x01])
                || (src[0] == compact::PROTOCOL_ID && src[1] & 0x1f == 1);
            return Err(TransportError::NotAllowed {
                got: if unframed { "an unframed" } else { "a framed" },
                expected: "header",
            });
        }
        let Some(frame) = self.frames.decode(src)? else {
            return Ok(None);
        };
        let wire_len = frame.len() + 4;
        match header::decode(frame, self.max) {
            Ok(HeaderFrame {
                reply,
                headers,
                payload,
            }) => Ok(Some(Inbound {
                message: payload,
                wire_len,
                framing: ReplyFraming::Header(reply),
                headers,
            })),
            Err((error, Some(reply))) => Err(TransportError::Refused { error, reply }),
            Err((error, None)) => Err(TransportError::Header(error)),
        }
    }
}

impl Decoder for MessageDecoder {
    type Item = Inbound;
    type Error = TransportError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, TransportError> {
        if let Mode::Detect = self.mode {
            self.mode = match Self::detect(src, self.max) {
                None => return Ok(None),
                Some(Transport::Framed) => Mode::Framed,
                Some(Transport::Unframed) => Mode::Unframed(Skipper::new()),
                Some(Transport::Header) => Mode::Header,
            };
        }
        match &mut self.mode {
            Mode::Detect => Ok(None),
            Mode::Framed => self.decode_framed(src),
            Mode::Unframed(skipper) => match skipper.advance(src, self.max) {
                Ok(Some(len)) => {
                    let message = src.split_to(len).freeze();
                    Ok(Some(Inbound {
                        wire_len: len,
                        message,
                        framing: ReplyFraming::Unframed,
                        headers: Vec::new(),
                    }))
                }
                Ok(None) => {
                    // Bytes arrive without a declared size: let the buffer
                    // grow by what arrives (the reader's own reserve), up
                    // to max (checked by the skipper).
                    Ok(None)
                }
                Err(e) => Err(TransportError::Unframed(e)),
            },
            Mode::Header => self.decode_header(src),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, TransportError> {
        match self.decode(src)? {
            Some(m) => Ok(Some(m)),
            None if src.is_empty() => Ok(None),
            None => match self.mode {
                Mode::Unframed(_) => Err(TransportError::UnframedTruncated(src.len())),
                _ => Err(FrameError::Truncated(src.len()).into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thrift::{write_header, MessageType, Protocol};
    use bytes::BufMut;

    fn call(p: Protocol) -> Vec<u8> {
        let mut b = BytesMut::new();
        write_header(&mut b, p, b"echo", MessageType::Call, 5);
        b.put_u8(0); // empty args struct
        b.to_vec()
    }

    fn decode_all(d: &mut MessageDecoder, bytes: &[u8]) -> Vec<Inbound> {
        let mut src = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = d.decode(&mut src).unwrap() {
            out.push(m);
        }
        assert!(src.is_empty(), "{} bytes left", src.len());
        out
    }

    #[test]
    fn auto_detects_each_transport_and_keeps_it() {
        let strict = call(Protocol::BinaryStrict);
        let compact = call(Protocol::Compact);
        // Framed.
        let mut framed_bytes = BytesMut::new();
        framed::encode(&strict, &mut framed_bytes);
        framed::encode(&compact, &mut framed_bytes);
        let mut d = MessageDecoder::new(None, 1 << 20);
        let got = decode_all(&mut d, &framed_bytes);
        assert_eq!(d.transport(), Some(Transport::Framed));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].message, &strict[..]);
        assert_eq!(got[0].framing, ReplyFraming::Framed);
        assert_eq!(got[0].wire_len, strict.len() + 4);
        // Unframed binary and compact.
        for m in [&strict, &compact] {
            let mut d = MessageDecoder::new(None, 1 << 20);
            let got = decode_all(&mut d, &[m.as_slice(), m.as_slice()].concat());
            assert_eq!(d.transport(), Some(Transport::Unframed));
            assert_eq!(got.len(), 2);
            assert_eq!(got[1].message, &m[..]);
            assert_eq!(got[1].framing, ReplyFraming::Unframed);
        }
        // Header, with zlib and headers.
        let reply = HeaderReply {
            seq_id: 3,
            flags: 0,
            protocol: header::HeaderProtocol::Compact,
            zlib: true,
        };
        let mut hb = BytesMut::new();
        header::encode(&compact, &reply, &[(b"k", b"v")], &mut hb);
        let mut d = MessageDecoder::new(None, 1 << 20);
        let got = decode_all(&mut d, &hb);
        assert_eq!(d.transport(), Some(Transport::Header));
        assert_eq!(got[0].message, &compact[..]);
        assert_eq!(got[0].framing, ReplyFraming::Header(reply));
        assert_eq!(&got[0].headers[0].1[..], b"v");
    }

    #[test]
    fn detection_waits_for_enough_bytes() {
        let mut d = MessageDecoder::new(None, 1 << 20);
        let mut src = BytesMut::from(&[0u8, 0, 0][..]);
        assert!(d.decode(&mut src).unwrap().is_none());
        assert_eq!(d.transport(), None);
        src.extend_from_slice(&[12, 0x0f]);
        assert!(d.decode(&mut src).unwrap().is_none());
        assert_eq!(d.transport(), None);
        src.extend_from_slice(&[0xff]);
        assert!(d.decode(&mut src).unwrap().is_none());
        assert_eq!(d.transport(), Some(Transport::Header));
    }

    #[test]
    fn impossible_lengths_are_framed_errors_at_once() {
        for len in [0i32, -5, 1 << 20] {
            let mut d = MessageDecoder::new(None, 4096);
            let mut src = BytesMut::from(&len.to_be_bytes()[..]);
            assert!(
                matches!(d.decode(&mut src), Err(TransportError::Frame(_))),
                "{len}"
            );
        }
        // Too short for a header frame: framed, decided without more bytes.
        let mut d = MessageDecoder::new(None, 4096);
        let mut src = BytesMut::from(&9i32.to_be_bytes()[..]);
        assert!(d.decode(&mut src).unwrap().is_none());
        assert_eq!(d.transport(), Some(Transport::Framed));
    }

    #[test]
    fn a_fixed_header_listener_refuses_plain_frames() {
        let mut framed_bytes = BytesMut::new();
        framed::encode(&call(Protocol::BinaryStrict), &mut framed_bytes);
        let mut d = MessageDecoder::new(Some(Transport::Header), 1 << 20);
        assert!(matches!(
            d.decode(&mut framed_bytes),
            Err(TransportError::NotAllowed { .. })
        ));
    }

    #[test]
    fn a_fixed_header_listener_names_what_it_refused() {
        let mut unframed = BytesMut::from(&call(Protocol::Compact)[..]);
        let mut d = MessageDecoder::new(Some(Transport::Header), 1 << 20);
        let e = d.decode(&mut unframed).unwrap_err().to_string();
        assert!(e.contains("an unframed message"), "{e}");
    }

    #[test]
    fn a_fixed_unframed_listener_takes_lax_binary() {
        let lax = call(Protocol::BinaryLax);
        let mut d = MessageDecoder::new(Some(Transport::Unframed), 1 << 20);
        let got = decode_all(&mut d, &lax);
        assert_eq!(got[0].message, &lax[..]);
    }

    #[test]
    fn eof_inside_a_message_is_truncated() {
        let strict = call(Protocol::BinaryStrict);
        let mut d = MessageDecoder::new(None, 1 << 20);
        let mut src = BytesMut::from(&strict[..strict.len() - 1]);
        assert!(matches!(
            d.decode_eof(&mut src),
            Err(TransportError::UnframedTruncated(_))
        ));
    }
}
