//! Just enough Thrift to route a call, in two layers like every Thrift
//! stack: a *transport* delimits messages on the byte stream ([`framed`],
//! [`unframed`], [`header`]; [`codec`] picks one per connection and is what
//! the connection reads through), a *protocol* encodes each message
//! ([`binary`] strict and lax, [`compact`]; see [`Protocol`]).
//!
//! The data plane never decodes arguments. It reads the header of each
//! message (protocol, message type, name, seqid), rewrites the name when a
//! multiplexing prefix is stripped, checks workers' replies against their
//! call ([`reply`]), and encodes the `TApplicationException` replies it must
//! produce itself. Everything here works on borrowed bytes, checks every
//! length against the bytes actually present (never allocates from an
//! untrusted length) and returns an error instead of panicking.
//!
//! Adding a protocol: a file like `compact.rs` (parse and write a header,
//! write an application exception, read a field id), a variant of
//! `thriftworker_wire::Protocol`, and one arm in each `match` of this file —
//! the only place that matches on the protocol (the unframed skip parser
//! also needs its value layout). Adding a transport: a file like
//! `framed.rs`, a variant of [`Transport`] and its arms in [`codec`].
//!
//! This module depends on nothing else in the crate (the fuzz targets in
//! `fuzz/` compile it on its own).

use bytes::{BufMut, Bytes, BytesMut};
pub use thriftworker_wire::Protocol;

pub mod binary;
pub mod codec;
pub mod compact;
pub mod framed;
pub mod header;
pub mod reply;
pub mod unframed;

pub use codec::{Inbound, MessageDecoder, ReplyFraming, Transport, TransportError};
pub use reply::{check_reply, reply_kind, BadReply, ReplyKind};

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
    /// A THeader transform the data plane cannot undo.
    InvalidTransform = 8,
    /// A THeader protocol id the data plane does not speak.
    InvalidProtocol = 9,
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

/// Method names longer than this are rejected (a real one is a few dozen bytes).
pub const MAX_NAME_LEN: usize = 4096;

/// Detects the protocol from the first byte of a message.
pub fn detect(message: &[u8]) -> Result<Protocol, HeaderError> {
    match message.first() {
        None => Err(HeaderError::Truncated),
        Some(&binary::STRICT_FIRST_BYTE) => Ok(Protocol::BinaryStrict),
        Some(&compact::PROTOCOL_ID) => Ok(Protocol::Compact),
        // A lax binary message starts with the name length, a positive i32
        // far below 2^24: its first byte is 0.
        Some(0) => Ok(Protocol::BinaryLax),
        Some(_) => Err(HeaderError::BadVersion(u32_at(message, 0).unwrap_or(0))),
    }
}

/// Parses the header of `message`, encoded in `protocol`.
pub fn parse(message: &[u8], protocol: Protocol) -> Result<Header, HeaderError> {
    match protocol {
        Protocol::BinaryStrict => binary::parse_strict(message),
        Protocol::BinaryLax => binary::parse_lax(message),
        Protocol::Compact => compact::parse(message),
    }
}

/// Writes a message header (name, type, seqid) in `protocol`. Returns how
/// many bytes of it follow the name.
pub fn write_header(
    buf: &mut BytesMut,
    protocol: Protocol,
    name: &[u8],
    message_type: MessageType,
    seqid: i32,
) -> usize {
    match protocol {
        Protocol::BinaryStrict => binary::write_header(buf, true, name, message_type, seqid),
        Protocol::BinaryLax => binary::write_header(buf, false, name, message_type, seqid),
        Protocol::Compact => compact::write_header(buf, name, message_type, seqid),
    }
}

/// The id of the first field of the struct at `at`: `Some(None)` for an
/// empty struct (STOP), `None` if unreadable.
fn field_id(message: &[u8], protocol: Protocol, at: usize) -> Option<Option<i16>> {
    match protocol {
        Protocol::BinaryStrict | Protocol::BinaryLax => binary::field_id(message, at),
        Protocol::Compact => compact::field_id(message, at),
    }
}

/// Returns `message` with the name in its header replaced by `new_name`
/// (used to strip a `Service:` multiplexing prefix), and the new name's range
/// in it. The arguments are copied unchanged.
pub fn rename(message: &[u8], header: &Header, new_name: &[u8]) -> (Bytes, std::ops::Range<usize>) {
    let mut buf = BytesMut::with_capacity(message.len() + 8);
    let trailer = write_header(
        &mut buf,
        header.protocol,
        new_name,
        header.message_type,
        header.seqid,
    );
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
            binary::write_app_exception(&mut buf, kind, text)
        }
        Protocol::Compact => compact::write_app_exception(&mut buf, kind, text),
    }
    buf.freeze()
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
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
