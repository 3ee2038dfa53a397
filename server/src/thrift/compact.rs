//! TCompactProtocol: the message header (protocol id, version and type in
//! two bytes, varint seqid, varint-length name) and the few struct bytes the
//! data plane reads or writes.

use bytes::{BufMut, BytesMut};

use super::{AppErrorKind, Header, HeaderError, MessageType, Protocol, MAX_NAME_LEN};

/// First byte of every compact message.
pub const PROTOCOL_ID: u8 = 0x82;
const VERSION: u8 = 1;

pub fn parse(message: &[u8]) -> Result<Header, HeaderError> {
    let (&id, &second) = match message {
        [id, second, ..] => (id, second),
        _ => return Err(HeaderError::Truncated),
    };
    if id != PROTOCOL_ID {
        return Err(HeaderError::BadVersion(u32::from(id)));
    }
    let version = second & 0x1f;
    if version != VERSION {
        return Err(HeaderError::BadCompactVersion(version));
    }
    let t = second >> 5;
    let message_type = MessageType::from_u8(t).ok_or(HeaderError::BadType(t))?;
    let (seqid, pos) = varint(message, 2)?;
    let (name_len, name_start) = varint(message, pos)?;
    let name_len = usize::try_from(name_len)
        .ok()
        .filter(|&l| l <= MAX_NAME_LEN)
        .ok_or(HeaderError::BadNameLength(i64::from(name_len)))?;
    let name_end = name_start + name_len;
    if name_end > message.len() {
        return Err(HeaderError::Truncated);
    }
    Ok(Header {
        protocol: Protocol::Compact,
        message_type,
        name_start,
        name_end,
        // The seqid is an i32 sent as its unsigned bits.
        seqid: i32::from_be_bytes(seqid.to_be_bytes()),
        len: name_end,
    })
}

/// Writes a header. Returns how many bytes follow the name (none).
pub fn write_header(
    buf: &mut BytesMut,
    name: &[u8],
    message_type: MessageType,
    seqid: i32,
) -> usize {
    buf.put_u8(PROTOCOL_ID);
    buf.put_u8(((message_type as u8) << 5) | VERSION);
    put_varint(buf, u32::from_be_bytes(seqid.to_be_bytes()));
    put_varint(buf, u32::try_from(name.len()).unwrap_or(u32::MAX));
    buf.put_slice(name);
    0
}

/// Writes a `TApplicationException {1: string message, 2: i32 type}`.
pub fn write_app_exception(buf: &mut BytesMut, kind: AppErrorKind, text: &str) {
    buf.put_u8(0x18); // field delta 1, compact type BINARY (8)
    put_varint(buf, u32::try_from(text.len()).unwrap_or(u32::MAX));
    buf.put_slice(text.as_bytes());
    buf.put_u8(0x15); // field delta 1, compact type I32 (5)
    put_varint(buf, (kind as u32) << 1); // zigzag of a small positive
    buf.put_u8(0); // STOP
}

/// The id of the first struct field at `at`: `Some(None)` for STOP,
/// `None` if unreadable. Readers take type 0 as STOP whatever the high
/// nibble says.
pub fn field_id(message: &[u8], at: usize) -> Option<Option<i16>> {
    let &first = message.get(at)?;
    if first & 0x0f == 0 {
        return Some(None);
    }
    match first >> 4 {
        // The long form: a zigzag varint i16 follows the type byte.
        0 => {
            let (z, _) = varint(message, at + 1).ok()?;
            // Zigzag; a field id is 16 bits on the wire (readers keep the
            // low 16 bits of a longer varint, and so do we).
            Some(Some(((z >> 1) as i16) ^ -((z & 1) as i16)))
        }
        // The first field: its id is the delta from 0.
        delta => Some(Some(i16::from(delta))),
    }
}

/// Reads an unsigned LEB128 varint of at most 32 bits.
pub(super) fn varint(b: &[u8], mut at: usize) -> Result<(u32, usize), HeaderError> {
    let mut value: u32 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *b.get(at).ok_or(HeaderError::Truncated)?;
        at += 1;
        if shift == 28 && byte > 0x0f {
            return Err(HeaderError::BadVarint);
        }
        value |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value, at));
        }
    }
    Err(HeaderError::BadVarint)
}

pub(super) fn put_varint(buf: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        buf.put_u8((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}
