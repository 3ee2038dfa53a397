//! Just enough Thrift to route a call: the message header.
//!
//! The data plane never decodes arguments. It reads the header of each framed
//! message (protocol, message type, name, seqid), rewrites the name when a
//! multiplexing prefix is stripped, and encodes the `TApplicationException`
//! replies it must produce itself. Everything here works on borrowed bytes,
//! checks every length against the bytes actually present (never allocates
//! from an untrusted length) and returns an error instead of panicking.

use bytes::{BufMut, Bytes, BytesMut};
pub use thriftworker_wire::Protocol;

/// Thrift message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Call = 1,
    Reply = 2,
    Exception = 3,
    Oneway = 4,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<MessageType> {
        match v {
            1 => Some(MessageType::Call),
            2 => Some(MessageType::Reply),
            3 => Some(MessageType::Exception),
            4 => Some(MessageType::Oneway),
            _ => None,
        }
    }
}

/// `TApplicationException` type codes (Apache Thrift, all languages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppErrorKind {
    UnknownMethod = 1,
    InvalidMessageType = 2,
    InternalError = 6,
}

/// A parsed message header. `name` is a range into the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub protocol: Protocol,
    pub message_type: MessageType,
    pub name_start: usize,
    pub name_end: usize,
    pub seqid: i32,
    /// Length of the header in bytes: the arguments struct starts here.
    pub len: usize,
}

impl Header {
    pub fn name<'a>(&self, message: &'a [u8]) -> &'a [u8] {
        &message[self.name_start..self.name_end]
    }
}

/// Why a message header could not be read. Each is a reason to close the
/// connection: without a seqid there is nothing to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("message ends inside its header")]
    Truncated,
    #[error("bad binary protocol version 0x{0:08x}")]
    BadVersion(u32),
    #[error("unknown message type {0}")]
    BadType(u8),
    #[error("negative or oversized method name length {0}")]
    BadNameLength(i64),
    #[error("bad compact protocol version {0}")]
    BadCompactVersion(u8),
    #[error("malformed varint")]
    BadVarint,
    #[error("message is in {got} but this connection uses {expected}")]
    ProtocolMismatch {
        got: &'static str,
        expected: &'static str,
    },
    #[error("protocol {0} is not accepted on this listener")]
    NotAllowed(&'static str),
}

const BINARY_VERSION_1: u32 = 0x8001_0000;
const BINARY_VERSION_MASK: u32 = 0xffff_0000;
const COMPACT_PROTOCOL_ID: u8 = 0x82;
const COMPACT_VERSION: u8 = 1;
/// Method names longer than this are rejected (a real one is a few dozen bytes).
pub const MAX_NAME_LEN: usize = 4096;

/// Detects the protocol from the first byte of a message.
pub fn detect(message: &[u8]) -> Result<Protocol, HeaderError> {
    match message.first() {
        None => Err(HeaderError::Truncated),
        Some(0x80) => Ok(Protocol::BinaryStrict),
        Some(&COMPACT_PROTOCOL_ID) => Ok(Protocol::Compact),
        // A lax binary message starts with the name length, a positive i32
        // far below 2^24: its first byte is 0.
        Some(0) => Ok(Protocol::BinaryLax),
        Some(_) => Err(HeaderError::BadVersion(u32_at(message, 0).unwrap_or(0))),
    }
}

/// Parses the header of `message`, encoded in `protocol`.
pub fn parse(message: &[u8], protocol: Protocol) -> Result<Header, HeaderError> {
    match protocol {
        Protocol::BinaryStrict => {
            let v = u32_at(message, 0).ok_or(HeaderError::Truncated)?;
            if v & BINARY_VERSION_MASK != BINARY_VERSION_1 {
                return Err(HeaderError::BadVersion(v));
            }
            let t = (v & 0xff) as u8;
            let message_type = MessageType::from_u8(t).ok_or(HeaderError::BadType(t))?;
            let (name_start, name_end) = binary_name(message, 4)?;
            let seqid = u32_at(message, name_end).ok_or(HeaderError::Truncated)? as i32;
            Ok(Header {
                protocol,
                message_type,
                name_start,
                name_end,
                seqid,
                len: name_end + 4,
            })
        }
        Protocol::BinaryLax => {
            let (name_start, name_end) = binary_name(message, 0)?;
            let t = *message.get(name_end).ok_or(HeaderError::Truncated)?;
            let message_type = MessageType::from_u8(t).ok_or(HeaderError::BadType(t))?;
            let seqid = u32_at(message, name_end + 1).ok_or(HeaderError::Truncated)? as i32;
            Ok(Header {
                protocol,
                message_type,
                name_start,
                name_end,
                seqid,
                len: name_end + 5,
            })
        }
        Protocol::Compact => {
            if message.len() < 2 {
                return Err(HeaderError::Truncated);
            }
            if message[0] != COMPACT_PROTOCOL_ID {
                return Err(HeaderError::BadVersion(message[0] as u32));
            }
            let version = message[1] & 0x1f;
            if version != COMPACT_VERSION {
                return Err(HeaderError::BadCompactVersion(version));
            }
            let t = message[1] >> 5;
            let message_type = MessageType::from_u8(t).ok_or(HeaderError::BadType(t))?;
            let (seqid, pos) = varint(message, 2)?;
            let (name_len, name_start) = varint(message, pos)?;
            let name_len = name_len as usize;
            if name_len > MAX_NAME_LEN {
                return Err(HeaderError::BadNameLength(name_len as i64));
            }
            let name_end = name_start + name_len;
            if name_end > message.len() {
                return Err(HeaderError::Truncated);
            }
            Ok(Header {
                protocol,
                message_type,
                name_start,
                name_end,
                seqid: seqid as i32,
                len: name_end,
            })
        }
    }
}

/// What a worker's reply says about the call, for the outcome counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// REPLY whose result struct holds field 0 (the return value) or nothing (void).
    Success,
    /// REPLY whose result struct holds a field ≥ 1: an exception the IDL declares.
    DeclaredException,
    /// EXCEPTION: a `TApplicationException` (unknown method, handler failure).
    AppException,
    /// Not a readable REPLY or EXCEPTION (it is still passed to the client).
    Unreadable,
}

/// Why a worker's reply cannot be passed to the client it answers. Workers
/// are separate programs, possibly buggy or hostile: a client must never get
/// bytes that do not answer its call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReply {
    #[error("reply of {0} bytes is over the listener's max_frame_size")]
    TooLarge(usize),
    #[error("unreadable reply header: {0}")]
    Header(HeaderError),
    #[error("reply in {got}, but the call was in {want}")]
    Protocol {
        got: &'static str,
        want: &'static str,
    },
    #[error("reply has message type {0:?}; expected REPLY or EXCEPTION")]
    Type(MessageType),
    #[error("reply names another method than the call")]
    Name,
    #[error("reply has seqid {got}; the call's is {want}")]
    Seqid { got: i32, want: i32 },
    #[error("reply has no readable result")]
    Body,
}

/// Checks that `message` answers a call made in `protocol` with method
/// `name` and `seqid` (as the worker saw it), is at most `max_len` bytes,
/// and classifies it. A lax binary call may be answered in strict binary
/// (every lax reader accepts it), not the other way round.
pub fn check_reply(
    message: &[u8],
    protocol: Protocol,
    name: &[u8],
    seqid: i32,
    max_len: usize,
) -> Result<ReplyKind, BadReply> {
    if message.len() > max_len {
        return Err(BadReply::TooLarge(message.len()));
    }
    let got = detect(message).map_err(BadReply::Header)?;
    let fits = match protocol {
        Protocol::BinaryLax => matches!(got, Protocol::BinaryLax | Protocol::BinaryStrict),
        p => got == p,
    };
    if !fits {
        return Err(BadReply::Protocol {
            got: got.as_str(),
            want: protocol.as_str(),
        });
    }
    let header = parse(message, got).map_err(BadReply::Header)?;
    if !matches!(
        header.message_type,
        MessageType::Reply | MessageType::Exception
    ) {
        return Err(BadReply::Type(header.message_type));
    }
    if header.name(message) != name {
        return Err(BadReply::Name);
    }
    if header.seqid != seqid {
        return Err(BadReply::Seqid {
            got: header.seqid,
            want: seqid,
        });
    }
    match kind_of(message, got, &header) {
        ReplyKind::Unreadable => Err(BadReply::Body),
        kind => Ok(kind),
    }
}

/// Classifies a reply from its header and the first field header of the
/// result struct: a few bytes, no decoding of the value itself.
pub fn reply_kind(message: &[u8]) -> ReplyKind {
    let Ok(protocol) = detect(message) else {
        return ReplyKind::Unreadable;
    };
    let Ok(header) = parse(message, protocol) else {
        return ReplyKind::Unreadable;
    };
    kind_of(message, protocol, &header)
}

fn kind_of(message: &[u8], protocol: Protocol, header: &Header) -> ReplyKind {
    match header.message_type {
        // A TApplicationException struct follows: at least its STOP byte.
        MessageType::Exception if message.len() > header.len => return ReplyKind::AppException,
        MessageType::Exception => return ReplyKind::Unreadable,
        MessageType::Reply => {}
        MessageType::Call | MessageType::Oneway => return ReplyKind::Unreadable,
    }
    let at = header.len;
    let Some(&first) = message.get(at) else {
        return ReplyKind::Unreadable;
    };
    // STOP: a void method's empty result. In compact the type is the low
    // nibble, and readers take type 0 as STOP whatever the high nibble says.
    let stop = match protocol {
        Protocol::Compact => first & 0x0f == 0,
        Protocol::BinaryStrict | Protocol::BinaryLax => first == 0,
    };
    if stop {
        return ReplyKind::Success;
    }
    let id = match protocol {
        Protocol::BinaryStrict | Protocol::BinaryLax => match message.get(at + 1..at + 3) {
            Some(b) => i16::from_be_bytes([b[0], b[1]]),
            None => return ReplyKind::Unreadable,
        },
        Protocol::Compact => match first >> 4 {
            0 => match varint(message, at + 1) {
                // zigzag-encoded i16
                Ok((z, _)) => ((z >> 1) as i16) ^ -((z & 1) as i16),
                Err(_) => return ReplyKind::Unreadable,
            },
            delta => delta as i16, // the first field: delta from id 0
        },
    };
    if id == 0 {
        ReplyKind::Success
    } else {
        ReplyKind::DeclaredException
    }
}

fn binary_name(message: &[u8], at: usize) -> Result<(usize, usize), HeaderError> {
    let len = u32_at(message, at).ok_or(HeaderError::Truncated)? as i32;
    if len < 0 || len as usize > MAX_NAME_LEN {
        return Err(HeaderError::BadNameLength(len as i64));
    }
    let start = at + 4;
    let end = start + len as usize;
    if end > message.len() {
        return Err(HeaderError::Truncated);
    }
    Ok((start, end))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Reads an unsigned LEB128 varint of at most 32 bits.
fn varint(b: &[u8], mut at: usize) -> Result<(u32, usize), HeaderError> {
    let mut value: u32 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *b.get(at).ok_or(HeaderError::Truncated)?;
        at += 1;
        if shift == 28 && byte > 0x0f {
            return Err(HeaderError::BadVarint);
        }
        value |= ((byte & 0x7f) as u32) << shift;
        if byte & 0x80 == 0 {
            return Ok((value, at));
        }
    }
    Err(HeaderError::BadVarint)
}

fn put_varint(buf: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Writes a message header (name, type, seqid) in `protocol`.
pub fn write_header(
    buf: &mut BytesMut,
    protocol: Protocol,
    name: &[u8],
    message_type: MessageType,
    seqid: i32,
) {
    match protocol {
        Protocol::BinaryStrict => {
            buf.put_u32(BINARY_VERSION_1 | message_type as u32);
            buf.put_u32(name.len() as u32);
            buf.put_slice(name);
            buf.put_i32(seqid);
        }
        Protocol::BinaryLax => {
            buf.put_u32(name.len() as u32);
            buf.put_slice(name);
            buf.put_u8(message_type as u8);
            buf.put_i32(seqid);
        }
        Protocol::Compact => {
            buf.put_u8(COMPACT_PROTOCOL_ID);
            buf.put_u8(((message_type as u8) << 5) | COMPACT_VERSION);
            put_varint(buf, seqid as u32);
            put_varint(buf, name.len() as u32);
            buf.put_slice(name);
        }
    }
}

/// Returns `message` with the name in its header replaced by `new_name`
/// (used to strip a `Service:` multiplexing prefix), and the new name's range
/// in it. The arguments are copied unchanged.
pub fn rename(message: &[u8], header: &Header, new_name: &[u8]) -> (Bytes, std::ops::Range<usize>) {
    let mut buf = BytesMut::with_capacity(message.len() + 8);
    write_header(
        &mut buf,
        header.protocol,
        new_name,
        header.message_type,
        header.seqid,
    );
    // What follows the name in each header: binary strict a seqid, lax a
    // type byte and a seqid, compact nothing.
    let trailer = match header.protocol {
        Protocol::BinaryStrict => 4,
        Protocol::BinaryLax => 5,
        Protocol::Compact => 0,
    };
    let name_end = buf.len() - trailer;
    let name = name_end - new_name.len()..name_end;
    buf.put_slice(&message[header.len..]);
    (buf.freeze(), name)
}

/// Encodes a complete EXCEPTION message holding a `TApplicationException`
/// `{1: string message, 2: i32 type}`, ready to be framed.
pub fn application_exception(
    protocol: Protocol,
    name: &[u8],
    seqid: i32,
    kind: AppErrorKind,
    text: &str,
) -> Bytes {
    let mut buf = BytesMut::with_capacity(32 + name.len() + text.len());
    write_header(&mut buf, protocol, name, MessageType::Exception, seqid);
    match protocol {
        Protocol::BinaryStrict | Protocol::BinaryLax => {
            buf.put_u8(11); // T_STRING
            buf.put_i16(1);
            buf.put_u32(text.len() as u32);
            buf.put_slice(text.as_bytes());
            buf.put_u8(8); // T_I32
            buf.put_i16(2);
            buf.put_i32(kind as i32);
            buf.put_u8(0); // T_STOP
        }
        Protocol::Compact => {
            buf.put_u8(0x18); // field delta 1, compact type BINARY (8)
            put_varint(&mut buf, text.len() as u32);
            buf.put_slice(text.as_bytes());
            buf.put_u8(0x15); // field delta 1, compact type I32 (5)
            put_varint(&mut buf, (kind as u32) << 1); // zigzag of a small positive
            buf.put_u8(0); // STOP
        }
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(protocol: Protocol, name: &[u8], t: MessageType, seqid: i32, body: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        write_header(&mut b, protocol, name, t, seqid);
        b.put_slice(body);
        b.to_vec()
    }

    /// A REPLY whose result struct starts with field `id` (None: void),
    /// written by the Apache `thrift` crate's own protocol encoders.
    fn reply_from_thrift(compact: bool, id: Option<i16>) -> Vec<u8> {
        use thrift::protocol::{
            TBinaryOutputProtocol, TCompactOutputProtocol, TFieldIdentifier, TMessageIdentifier,
            TMessageType, TOutputProtocol, TStructIdentifier, TType,
        };
        let mut buf: Vec<u8> = Vec::new();
        {
            let mut p: Box<dyn TOutputProtocol + '_> = if compact {
                Box::new(TCompactOutputProtocol::new(&mut buf))
            } else {
                Box::new(TBinaryOutputProtocol::new(&mut buf, true))
            };
            p.write_message_begin(&TMessageIdentifier::new("m", TMessageType::Reply, 7))
                .unwrap();
            p.write_struct_begin(&TStructIdentifier::new("r")).unwrap();
            if let Some(id) = id {
                p.write_field_begin(&TFieldIdentifier::new("f", TType::String, id))
                    .unwrap();
                p.write_string("x").unwrap();
                p.write_field_end().unwrap();
            }
            p.write_field_stop().unwrap();
            p.write_struct_end().unwrap();
            p.write_message_end().unwrap();
            p.flush().unwrap();
        }
        buf
    }

    #[test]
    fn reply_kind_reads_the_result_field() {
        for compact in [false, true] {
            assert_eq!(
                reply_kind(&reply_from_thrift(compact, Some(0))),
                ReplyKind::Success
            );
            assert_eq!(
                reply_kind(&reply_from_thrift(compact, None)),
                ReplyKind::Success
            );
            assert_eq!(
                reply_kind(&reply_from_thrift(compact, Some(1))),
                ReplyKind::DeclaredException
            );
            // Field ids beyond a compact delta (> 15) use the long form.
            assert_eq!(
                reply_kind(&reply_from_thrift(compact, Some(300))),
                ReplyKind::DeclaredException
            );
        }
        for p in [
            Protocol::BinaryStrict,
            Protocol::BinaryLax,
            Protocol::Compact,
        ] {
            let e = application_exception(p, b"m", 1, AppErrorKind::InternalError, "x");
            assert_eq!(reply_kind(&e), ReplyKind::AppException);
            let call = msg(p, b"m", MessageType::Call, 1, &[0]);
            assert_eq!(reply_kind(&call), ReplyKind::Unreadable);
            let truncated = msg(p, b"m", MessageType::Reply, 1, &[]);
            assert_eq!(reply_kind(&truncated), ReplyKind::Unreadable);
        }
        assert_eq!(reply_kind(b""), ReplyKind::Unreadable);
        assert_eq!(reply_kind(&[0x80, 1, 0, 2, 0, 0, 0]), ReplyKind::Unreadable);
    }

    #[test]
    fn round_trips_every_protocol() {
        for p in [
            Protocol::BinaryStrict,
            Protocol::BinaryLax,
            Protocol::Compact,
        ] {
            for seqid in [0, 1, 127, 128, 300_000, i32::MAX, -1, i32::MIN] {
                let m = msg(p, b"Echo:echo", MessageType::Call, seqid, b"\x0b\x00\x01");
                assert_eq!(detect(&m).unwrap(), p);
                let h = parse(&m, p).unwrap();
                assert_eq!(h.name(&m), b"Echo:echo");
                assert_eq!(h.seqid, seqid);
                assert_eq!(h.message_type, MessageType::Call);
                assert_eq!(&m[h.len..], b"\x0b\x00\x01");
            }
        }
    }

    #[test]
    fn rename_keeps_body_and_seqid() {
        for p in [
            Protocol::BinaryStrict,
            Protocol::BinaryLax,
            Protocol::Compact,
        ] {
            let m = msg(p, b"Echo:echo", MessageType::Oneway, 77, b"BODY");
            let h = parse(&m, p).unwrap();
            let (r, range) = rename(&m, &h, b"echo");
            let h2 = parse(&r, p).unwrap();
            assert_eq!(h2.name(&r), b"echo");
            assert_eq!(range, h2.name_start..h2.name_end);
            assert_eq!(h2.seqid, 77);
            assert_eq!(h2.message_type, MessageType::Oneway);
            assert_eq!(&r[h2.len..], b"BODY");
        }
    }

    #[test]
    fn exception_layout_binary_and_compact() {
        let e = application_exception(
            Protocol::BinaryStrict,
            b"m",
            5,
            AppErrorKind::InternalError,
            "x",
        );
        assert_eq!(
            &e[..],
            b"\x80\x01\x00\x03\x00\x00\x00\x01m\x00\x00\x00\x05\x0b\x00\x01\x00\x00\x00\x01x\x08\x00\x02\x00\x00\x00\x06\x00"
        );
        let e = application_exception(Protocol::Compact, b"m", 5, AppErrorKind::UnknownMethod, "x");
        assert_eq!(&e[..], b"\x82\x61\x05\x01m\x18\x01x\x15\x02\x00");
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x80",
            b"\x80\x01\x00\x01",
            b"\x80\x01\x00\x01\xff\xff\xff\xff",
            b"\x80\x01\x00\x01\x7f\xff\xff\xff",
            b"\x80\x02\x00\x01\x00\x00\x00\x00",
            b"\x80\x01\x00\x09\x00\x00\x00\x00\x00\x00\x00\x00",
            b"\x00\x00\x00\x05ab",
            b"\x00\x00\x00\x01a\x07\x00\x00\x00\x00",
            b"\x82",
            b"\x82\x22",
            b"\x82\x21\xff\xff\xff\xff\xff\xff",
            b"\x82\x21\x01\xff\xff\xff\xff\x0f",
            b"\x82\x21\x01\x05ab",
            b"GET / HTTP/1.1\r\n",
        ];
        for c in cases {
            let r = detect(c).and_then(|p| parse(c, p));
            assert!(r.is_err(), "{c:?} parsed as {r:?}");
        }
    }
}
