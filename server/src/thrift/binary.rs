//! TBinaryProtocol, strict (`0x8001` version word first) and lax (name
//! first, as very old clients write it): the message header and the few
//! struct bytes the data plane reads or writes.

use bytes::{BufMut, BytesMut};

use super::{u32_at, AppErrorKind, Header, HeaderError, MessageType, Protocol, MAX_NAME_LEN};

const VERSION_1: u32 = 0x8001_0000;
const VERSION_MASK: u32 = 0xffff_0000;
/// First byte of a strict message.
pub const STRICT_FIRST_BYTE: u8 = 0x80;

/// Parses a strict header (`version|type`, name, seqid).
pub fn parse_strict(message: &[u8]) -> Result<Header, HeaderError> {
    let v = u32_at(message, 0).ok_or(HeaderError::Truncated)?;
    if v & VERSION_MASK != VERSION_1 {
        return Err(HeaderError::BadVersion(v));
    }
    // The low byte of the version word (masked: no truncation).
    let t = (v & 0xff) as u8;
    let message_type = MessageType::from_u8(t).ok_or(HeaderError::BadType(t))?;
    let (name_start, name_end) = name(message, 4)?;
    let seqid = i32_at(message, name_end)?;
    Ok(Header {
        protocol: Protocol::BinaryStrict,
        message_type,
        name_start,
        name_end,
        seqid,
        len: name_end + 4,
    })
}

/// Parses a lax header (name, type byte, seqid).
pub fn parse_lax(message: &[u8]) -> Result<Header, HeaderError> {
    let (name_start, name_end) = name(message, 0)?;
    let t = *message.get(name_end).ok_or(HeaderError::Truncated)?;
    let message_type = MessageType::from_u8(t).ok_or(HeaderError::BadType(t))?;
    let seqid = i32_at(message, name_end + 1)?;
    Ok(Header {
        protocol: Protocol::BinaryLax,
        message_type,
        name_start,
        name_end,
        seqid,
        len: name_end + 5,
    })
}

/// Writes a strict or lax header. Returns how many bytes follow the name
/// (a seqid; in lax a type byte and a seqid).
pub fn write_header(
    buf: &mut BytesMut,
    strict: bool,
    name: &[u8],
    message_type: MessageType,
    seqid: i32,
) -> usize {
    // Names are checked against MAX_NAME_LEN (4 KiB) when read.
    let name_len = u32::try_from(name.len()).unwrap_or(u32::MAX);
    if strict {
        buf.put_u32(VERSION_1 | message_type as u32);
        buf.put_u32(name_len);
        buf.put_slice(name);
        buf.put_i32(seqid);
        4
    } else {
        buf.put_u32(name_len);
        buf.put_slice(name);
        buf.put_u8(message_type as u8);
        buf.put_i32(seqid);
        5
    }
}

/// Writes a `TApplicationException {1: string message, 2: i32 type}`.
pub fn write_app_exception(buf: &mut BytesMut, kind: AppErrorKind, text: &str) {
    buf.put_u8(11); // T_STRING
    buf.put_i16(1);
    buf.put_u32(u32::try_from(text.len()).unwrap_or(u32::MAX));
    buf.put_slice(text.as_bytes());
    buf.put_u8(8); // T_I32
    buf.put_i16(2);
    buf.put_i32(kind as i32);
    buf.put_u8(0); // T_STOP
}

/// The id of the struct field at `at`: `Some(None)` for STOP, `None` if
/// the bytes end first.
pub fn field_id(message: &[u8], at: usize) -> Option<Option<i16>> {
    let &ty = message.get(at)?;
    if ty == 0 {
        return Some(None);
    }
    let b = message.get(at + 1..at + 3)?;
    Some(Some(i16::from_be_bytes([b[0], b[1]])))
}

fn name(message: &[u8], at: usize) -> Result<(usize, usize), HeaderError> {
    let len = i32_at(message, at)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_NAME_LEN)
        .ok_or(HeaderError::BadNameLength(i64::from(len)))?;
    let start = at + 4;
    let end = start + len;
    if end > message.len() {
        return Err(HeaderError::Truncated);
    }
    Ok((start, end))
}

fn i32_at(b: &[u8], at: usize) -> Result<i32, HeaderError> {
    let v = u32_at(b, at).ok_or(HeaderError::Truncated)?;
    Ok(i32::from_be_bytes(v.to_be_bytes()))
}
