//! The benchmark harness of thriftworker (see `bench/README.md`).
//!
//! This library holds the little Thrift the bench binaries need, on borrowed
//! bytes and without allocating per call:
//!
//! - [`CallTemplate`]: a complete framed `Echo.echo(message)` call, built once
//!   per connection, whose seqid is patched in place for each call (`loadgen`);
//! - [`check_echo_reply`]: the check `loadgen` applies to every reply;
//! - [`parse_header`], [`echo_arg`], [`write_echo_reply`],
//!   [`write_app_exception`]: what the one-hop `echo-baseline` server needs.
//!
//! Protocols: binary strict and compact (both ways), binary lax (parsing and
//! answering only). Every length is checked against the bytes present.
#![forbid(unsafe_code)]

use std::fmt;

/// First seqid `loadgen` uses. Seqids stay in `[SEQID_BASE, SEQID_LIMIT)`,
/// where a compact varint always takes exactly 4 bytes, so the seqid of a
/// compact call can be patched in place like a binary one.
pub const SEQID_BASE: i32 = 1 << 21;
/// Seqids wrap back to [`SEQID_BASE`] before reaching this.
pub const SEQID_LIMIT: i32 = 1 << 28;

/// The seqid after `seqid`, wrapping within `[SEQID_BASE, SEQID_LIMIT)`.
pub fn next_seqid(seqid: i32) -> i32 {
    if seqid + 1 >= SEQID_LIMIT || seqid < SEQID_BASE {
        SEQID_BASE
    } else {
        seqid + 1
    }
}

/// Largest frame the bench binaries accept (Thrift's default, like the data plane).
pub const MAX_FRAME_SIZE: usize = 16_384_000;

/// Thrift message types.
pub const CALL: u8 = 1;
pub const REPLY: u8 = 2;
pub const EXCEPTION: u8 = 3;
pub const ONEWAY: u8 = 4;

/// `TApplicationException` type code for an unknown method.
pub const UNKNOWN_METHOD: i32 = 1;

/// A Thrift protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Binary with the version word (what clients send by default).
    Binary,
    /// Binary without the version word (parsed and answered only).
    BinaryLax,
    Compact,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Binary => "binary",
            Protocol::BinaryLax => "binary-lax",
            Protocol::Compact => "compact",
        }
    }
}

/// Why bytes are not the Thrift we expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    Truncated,
    BadVersion(u32),
    BadVarint,
    BadLength(i64),
    BadFieldType(u8),
    /// A nested field type (struct, container) where the bench expects none.
    Unsupported(u8),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => write!(f, "message ends early"),
            WireError::BadVersion(v) => write!(f, "bad protocol version 0x{v:08x}"),
            WireError::BadVarint => write!(f, "malformed varint"),
            WireError::BadLength(n) => write!(f, "bad length {n}"),
            WireError::BadFieldType(t) => write!(f, "bad field type {t}"),
            WireError::Unsupported(t) => write!(f, "unsupported nested field type {t}"),
        }
    }
}

impl std::error::Error for WireError {}

// -- framing --------------------------------------------------------------------

/// Why a frame cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadFrame(pub i32);

impl fmt::Display for BadFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad frame length {}", self.0)
    }
}

impl std::error::Error for BadFrame {}

/// The length of the first frame of `buf` (not counting its 4-byte length)
/// if the whole frame is present, `None` if more bytes are needed.
pub fn complete_frame(buf: &[u8], max: usize) -> Result<Option<usize>, BadFrame> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if len <= 0 || len as usize > max {
        return Err(BadFrame(len));
    }
    let len = len as usize;
    Ok((buf.len() - 4 >= len).then_some(len))
}

// -- reading --------------------------------------------------------------------

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], pos: usize) -> Self {
        Reader { b, pos }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.b.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, WireError> {
        let s = self.take(2)?;
        Ok(i16::from_be_bytes([s[0], s[1]]))
    }

    fn i32(&mut self) -> Result<i32, WireError> {
        let s = self.take(4)?;
        Ok(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// Unsigned LEB128 of at most 64 bits.
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let byte = self.u8()?;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::BadVarint)
    }

    fn varint32(&mut self) -> Result<u32, WireError> {
        u32::try_from(self.varint()?).map_err(|_| WireError::BadVarint)
    }

    /// A length-prefixed string: i32 (binary) or varint (compact).
    fn string(&mut self, protocol: Protocol) -> Result<&'a [u8], WireError> {
        let len = match protocol {
            Protocol::Compact => i64::from(self.varint32()?),
            _ => i64::from(self.i32()?),
        };
        if len < 0 || len as usize > self.b.len() - self.pos {
            return Err(WireError::BadLength(len));
        }
        self.take(len as usize)
    }
}

/// A message header. `body` is where the arguments/result struct starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub protocol: Protocol,
    pub message_type: u8,
    pub name: &'a [u8],
    pub seqid: i32,
    pub body: usize,
}

/// Parses the header of one message (a frame's contents).
pub fn parse_header(msg: &[u8]) -> Result<Header<'_>, WireError> {
    let mut r = Reader::new(msg, 0);
    match msg.first().copied() {
        Some(0x80) => {
            let version = r.i32()? as u32;
            if version & 0xffff_ff00 != 0x8001_0000 {
                return Err(WireError::BadVersion(version));
            }
            let name = r.string(Protocol::Binary)?;
            let seqid = r.i32()?;
            Ok(Header {
                protocol: Protocol::Binary,
                message_type: (version & 0xff) as u8,
                name,
                seqid,
                body: r.pos,
            })
        }
        Some(0x82) => {
            r.u8()?;
            let vt = r.u8()?;
            if vt & 0x1f != 1 {
                return Err(WireError::BadVersion(u32::from(vt)));
            }
            let seqid = r.varint32()? as i32;
            let name = r.string(Protocol::Compact)?;
            Ok(Header {
                protocol: Protocol::Compact,
                message_type: vt >> 5,
                name,
                seqid,
                body: r.pos,
            })
        }
        Some(0x00) => {
            let name = r.string(Protocol::BinaryLax)?;
            let message_type = r.u8()?;
            let seqid = r.i32()?;
            Ok(Header {
                protocol: Protocol::BinaryLax,
                message_type,
                name,
                seqid,
                body: r.pos,
            })
        }
        Some(b) => Err(WireError::BadVersion(u32::from(b))),
        None => Err(WireError::Truncated),
    }
}

/// Field types, protocol-independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldType {
    /// Compact encodes a bool field's value in its type.
    Bool(Option<bool>),
    Byte,
    I16,
    I32,
    I64,
    Double,
    String,
    Nested(u8),
}

/// Reads a field header: `None` at the struct's stop byte.
fn read_field(
    r: &mut Reader<'_>,
    protocol: Protocol,
    last_id: &mut i16,
) -> Result<Option<(FieldType, i16)>, WireError> {
    let b = r.u8()?;
    if b == 0 {
        return Ok(None);
    }
    match protocol {
        Protocol::Compact => {
            let t = match b & 0x0f {
                1 => FieldType::Bool(Some(true)),
                2 => FieldType::Bool(Some(false)),
                3 => FieldType::Byte,
                4 => FieldType::I16,
                5 => FieldType::I32,
                6 => FieldType::I64,
                7 => FieldType::Double,
                8 => FieldType::String,
                t @ 9..=12 => FieldType::Nested(t),
                t => return Err(WireError::BadFieldType(t)),
            };
            let delta = b >> 4;
            let id = if delta == 0 {
                let z = r.varint32()?;
                let v = ((z >> 1) as i32) ^ -((z & 1) as i32);
                i16::try_from(v).map_err(|_| WireError::BadVarint)?
            } else {
                last_id.wrapping_add(i16::from(delta))
            };
            *last_id = id;
            Ok(Some((t, id)))
        }
        _ => {
            let t = match b {
                2 => FieldType::Bool(None),
                3 => FieldType::Byte,
                4 => FieldType::Double,
                6 => FieldType::I16,
                8 => FieldType::I32,
                10 => FieldType::I64,
                11 => FieldType::String,
                t @ 12..=15 => FieldType::Nested(t),
                t => return Err(WireError::BadFieldType(t)),
            };
            Ok(Some((t, r.i16()?)))
        }
    }
}

/// Skips a scalar or string field's value.
fn skip_value(r: &mut Reader<'_>, protocol: Protocol, t: FieldType) -> Result<(), WireError> {
    let compact = protocol == Protocol::Compact;
    match t {
        FieldType::Bool(Some(_)) => {}
        FieldType::Bool(None) | FieldType::Byte => {
            r.take(1)?;
        }
        FieldType::I16 | FieldType::I32 | FieldType::I64 if compact => {
            r.varint()?;
        }
        FieldType::I16 => {
            r.take(2)?;
        }
        FieldType::I32 => {
            r.take(4)?;
        }
        FieldType::I64 | FieldType::Double => {
            r.take(8)?;
        }
        FieldType::String => {
            r.string(protocol)?;
        }
        FieldType::Nested(t) => return Err(WireError::Unsupported(t)),
    }
    Ok(())
}

/// The `message` argument (field 1, string) of an `Echo.echo` call whose
/// header is `header`. A missing field reads as the empty string; other
/// scalar and string fields are skipped; nested fields are an error (the
/// echo arguments have none).
pub fn echo_arg<'a>(msg: &'a [u8], header: &Header<'_>) -> Result<&'a [u8], WireError> {
    let mut r = Reader::new(msg, header.body);
    let mut last_id = 0;
    let mut found: &[u8] = &[];
    while let Some((t, id)) = read_field(&mut r, header.protocol, &mut last_id)? {
        if id == 1 && t == FieldType::String {
            found = r.string(header.protocol)?;
        } else {
            skip_value(&mut r, header.protocol, t)?;
        }
    }
    Ok(found)
}

// -- checking replies (loadgen) ---------------------------------------------------

/// Why a reply is not the expected answer of an `Echo.echo` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The header or the result struct cannot be parsed.
    Malformed(WireError),
    WrongProtocol(Protocol),
    /// A `TApplicationException` (its message, if readable).
    Exception(String),
    WrongType(u8),
    WrongName(String),
    WrongSeqid {
        expected: i32,
        got: i32,
    },
    /// The result struct does not hold the success field 0 as a string.
    NoSuccess,
    /// The result string differs from the payload (its length).
    WrongContent(usize),
    /// Bytes after the result struct.
    Trailing(usize),
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Malformed(e) => write!(f, "malformed reply: {e}"),
            Invalid::WrongProtocol(p) => write!(f, "reply in protocol {}", p.name()),
            Invalid::Exception(m) => write!(f, "TApplicationException: {m}"),
            Invalid::WrongType(t) => write!(f, "message type {t}, expected REPLY (2)"),
            Invalid::WrongName(n) => write!(f, "method name {n:?}"),
            Invalid::WrongSeqid { expected, got } => {
                write!(f, "seqid {got}, expected {expected}")
            }
            Invalid::NoSuccess => write!(f, "result struct without a string field 0"),
            Invalid::WrongContent(n) => {
                write!(f, "result string ({n} bytes) differs from the payload")
            }
            Invalid::Trailing(n) => write!(f, "{n} bytes after the result struct"),
        }
    }
}

impl std::error::Error for Invalid {}

impl From<WireError> for Invalid {
    fn from(e: WireError) -> Self {
        Invalid::Malformed(e)
    }
}

/// Checks that `msg` (a frame's contents) is exactly the REPLY to the call
/// `method(payload)` with `seqid`, in `protocol`: header, result struct with
/// field 0 equal to `payload` and nothing else, no trailing bytes.
pub fn check_echo_reply(
    msg: &[u8],
    protocol: Protocol,
    method: &[u8],
    seqid: i32,
    payload: &[u8],
) -> Result<(), Invalid> {
    let h = parse_header(msg)?;
    if h.protocol != protocol {
        return Err(Invalid::WrongProtocol(h.protocol));
    }
    if h.message_type == EXCEPTION {
        let text = app_exception_message(msg, &h).unwrap_or_else(|| "(unreadable)".into());
        return Err(Invalid::Exception(text));
    }
    if h.message_type != REPLY {
        return Err(Invalid::WrongType(h.message_type));
    }
    if h.name != method {
        return Err(Invalid::WrongName(
            String::from_utf8_lossy(h.name).into_owned(),
        ));
    }
    if h.seqid != seqid {
        return Err(Invalid::WrongSeqid {
            expected: seqid,
            got: h.seqid,
        });
    }
    let mut r = Reader::new(msg, h.body);
    let mut last_id = 0;
    match read_field(&mut r, protocol, &mut last_id)? {
        Some((FieldType::String, 0)) => {}
        _ => return Err(Invalid::NoSuccess),
    }
    let result = r.string(protocol)?;
    if result != payload {
        return Err(Invalid::WrongContent(result.len()));
    }
    if read_field(&mut r, protocol, &mut last_id)?.is_some() {
        return Err(Invalid::NoSuccess);
    }
    if r.pos != msg.len() {
        return Err(Invalid::Trailing(msg.len() - r.pos));
    }
    Ok(())
}

/// The message (field 1) of a `TApplicationException`, for diagnostics.
fn app_exception_message(msg: &[u8], h: &Header<'_>) -> Option<String> {
    let mut r = Reader::new(msg, h.body);
    let mut last_id = 0;
    let mut text = None;
    let mut kind = None;
    while let Some((t, id)) = read_field(&mut r, h.protocol, &mut last_id).ok()? {
        match (id, t) {
            (1, FieldType::String) => {
                text = Some(String::from_utf8_lossy(r.string(h.protocol).ok()?).into_owned())
            }
            (2, FieldType::I32) => {
                kind = Some(match h.protocol {
                    Protocol::Compact => {
                        let z = r.varint32().ok()?;
                        ((z >> 1) as i32) ^ -((z & 1) as i32)
                    }
                    _ => r.i32().ok()?,
                })
            }
            _ => skip_value(&mut r, h.protocol, t).ok()?,
        }
    }
    Some(format!(
        "{} (type {})",
        text.unwrap_or_default(),
        kind.map_or_else(|| "?".to_string(), |k| k.to_string())
    ))
}

// -- writing --------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_string(out: &mut Vec<u8>, protocol: Protocol, s: &[u8]) {
    match protocol {
        Protocol::Compact => put_varint(out, s.len() as u32),
        _ => out.extend_from_slice(&(s.len() as i32).to_be_bytes()),
    }
    out.extend_from_slice(s);
}

/// Appends a message header.
fn put_header(out: &mut Vec<u8>, protocol: Protocol, mtype: u8, name: &[u8], seqid: i32) {
    match protocol {
        Protocol::Binary => {
            out.extend_from_slice(&(0x8001_0000u32 | u32::from(mtype)).to_be_bytes());
            put_string(out, protocol, name);
            out.extend_from_slice(&seqid.to_be_bytes());
        }
        Protocol::BinaryLax => {
            put_string(out, protocol, name);
            out.push(mtype);
            out.extend_from_slice(&seqid.to_be_bytes());
        }
        Protocol::Compact => {
            out.push(0x82);
            out.push((mtype << 5) | 1);
            put_varint(out, seqid as u32);
            put_string(out, protocol, name);
        }
    }
}

/// Appends a string field header (`id` is the first field of its struct).
fn put_first_string_field(out: &mut Vec<u8>, protocol: Protocol, id: i16) {
    match protocol {
        Protocol::Compact if (1..=15).contains(&id) => out.push(((id as u8) << 4) | 8),
        Protocol::Compact => {
            out.push(8);
            put_varint(out, ((i32::from(id) << 1) ^ (i32::from(id) >> 31)) as u32);
        }
        _ => {
            out.push(11);
            out.extend_from_slice(&id.to_be_bytes());
        }
    }
}

/// Starts a frame; returns where its length goes.
fn begin_frame(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    at
}

fn end_frame(out: &mut [u8], at: usize) {
    let len = (out.len() - at - 4) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends the framed REPLY to `name` with `seqid`: a result struct whose
/// success field 0 is the string `result`.
pub fn write_echo_reply(
    out: &mut Vec<u8>,
    protocol: Protocol,
    name: &[u8],
    seqid: i32,
    result: &[u8],
) {
    let at = begin_frame(out);
    put_header(out, protocol, REPLY, name, seqid);
    put_first_string_field(out, protocol, 0);
    put_string(out, protocol, result);
    out.push(0);
    end_frame(out, at);
}

/// Appends a framed `TApplicationException` (message, type) answering `name`/`seqid`.
pub fn write_app_exception(
    out: &mut Vec<u8>,
    protocol: Protocol,
    name: &[u8],
    seqid: i32,
    kind: i32,
    message: &str,
) {
    let at = begin_frame(out);
    put_header(out, protocol, EXCEPTION, name, seqid);
    put_first_string_field(out, protocol, 1);
    put_string(out, protocol, message.as_bytes());
    match protocol {
        Protocol::Compact => {
            out.push((1 << 4) | 5); // field 2 = 1 + delta 1, i32
            put_varint(out, ((kind << 1) ^ (kind >> 31)) as u32);
        }
        _ => {
            out.push(8);
            out.extend_from_slice(&2i16.to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
        }
    }
    out.push(0);
    end_frame(out, at);
}

/// A complete framed `method(message)` call (field 1, string), built once;
/// [`CallTemplate::append`] writes it with a given seqid by patching the
/// seqid's bytes in place.
#[derive(Debug, Clone)]
pub struct CallTemplate {
    protocol: Protocol,
    bytes: Vec<u8>,
    seqid_at: usize,
}

impl CallTemplate {
    /// `protocol` is [`Protocol::Binary`] or [`Protocol::Compact`].
    pub fn new(protocol: Protocol, method: &[u8], message: &[u8]) -> CallTemplate {
        assert!(
            protocol != Protocol::BinaryLax,
            "calls are sent in binary strict or compact"
        );
        let mut bytes = Vec::with_capacity(message.len() + method.len() + 32);
        let at = begin_frame(&mut bytes);
        put_header(&mut bytes, protocol, CALL, method, SEQID_BASE);
        put_first_string_field(&mut bytes, protocol, 1);
        put_string(&mut bytes, protocol, message);
        bytes.push(0);
        end_frame(&mut bytes, at);
        let seqid_at = match protocol {
            Protocol::Compact => 4 + 2,
            _ => 4 + 4 + 4 + method.len(),
        };
        let mut t = CallTemplate {
            protocol,
            bytes,
            seqid_at,
        };
        t.set_seqid(SEQID_BASE);
        t
    }

    /// The framed call as it stands (length prefix included).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Sets the seqid; it must be in `[SEQID_BASE, SEQID_LIMIT)`.
    pub fn set_seqid(&mut self, seqid: i32) {
        assert!(
            (SEQID_BASE..SEQID_LIMIT).contains(&seqid),
            "seqid {seqid} out of the template's range"
        );
        let slot = &mut self.bytes[self.seqid_at..self.seqid_at + 4];
        match self.protocol {
            Protocol::Compact => {
                // Exactly four LEB128 bytes: the value has 22 to 28 bits.
                let v = seqid as u32;
                slot[0] = (v as u8 & 0x7f) | 0x80;
                slot[1] = ((v >> 7) as u8 & 0x7f) | 0x80;
                slot[2] = ((v >> 14) as u8 & 0x7f) | 0x80;
                slot[3] = (v >> 21) as u8;
            }
            _ => slot.copy_from_slice(&seqid.to_be_bytes()),
        }
    }

    /// Appends the call with `seqid` to `out` (no allocation once `out` has
    /// the capacity).
    pub fn append(&mut self, seqid: i32, out: &mut Vec<u8>) {
        self.set_seqid(seqid);
        out.extend_from_slice(&self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use thrift::protocol::{
        TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
        TInputProtocol, TOutputProtocol,
    };
    use thrift::server::TProcessor;
    use thriftworker_examples::gen::echo::EchoSyncProcessor;
    use thriftworker_examples::EchoHandler;

    const PROTOCOLS: [Protocol; 2] = [Protocol::Binary, Protocol::Compact];

    fn unframe(frame: &[u8]) -> &[u8] {
        let len = complete_frame(frame, MAX_FRAME_SIZE).unwrap().unwrap();
        assert_eq!(len + 4, frame.len());
        &frame[4..]
    }

    /// Runs the generated Echo processor (the real handler) on a call.
    fn process(protocol: Protocol, msg: &[u8]) -> Vec<u8> {
        let processor = EchoSyncProcessor::new(EchoHandler::default());
        let mut reply = Vec::new();
        {
            let (mut i, mut o): (Box<dyn TInputProtocol>, Box<dyn TOutputProtocol>) = match protocol
            {
                Protocol::Compact => (
                    Box::new(TCompactInputProtocol::new(Cursor::new(msg))),
                    Box::new(TCompactOutputProtocol::new(&mut reply)),
                ),
                _ => (
                    Box::new(TBinaryInputProtocol::new(Cursor::new(msg), true)),
                    Box::new(TBinaryOutputProtocol::new(&mut reply, true)),
                ),
            };
            processor.process(&mut *i, &mut *o).unwrap();
        }
        reply
    }

    #[test]
    fn seqids_wrap_within_the_range() {
        assert_eq!(next_seqid(SEQID_BASE), SEQID_BASE + 1);
        assert_eq!(next_seqid(SEQID_LIMIT - 1), SEQID_BASE);
        assert_eq!(next_seqid(0), SEQID_BASE);
    }

    #[test]
    fn framing() {
        assert_eq!(complete_frame(&[0, 0], 100), Ok(None));
        assert_eq!(complete_frame(&[0, 0, 0, 2, 1], 100), Ok(None));
        assert_eq!(complete_frame(&[0, 0, 0, 2, 1, 2, 3], 100), Ok(Some(2)));
        assert_eq!(complete_frame(&[0, 0, 0, 0], 100), Err(BadFrame(0)));
        assert_eq!(complete_frame(&[0xff; 4], 100), Err(BadFrame(-1)));
        assert_eq!(complete_frame(&[0, 0, 1, 0], 100), Err(BadFrame(256)));
    }

    #[test]
    fn template_calls_are_served_by_the_generated_processor() {
        for protocol in PROTOCOLS {
            let payload = b"hello template";
            let mut t = CallTemplate::new(protocol, b"echo", payload);
            for seqid in [SEQID_BASE, SEQID_BASE + 1, 12_345_678, SEQID_LIMIT - 1] {
                let mut out = Vec::new();
                t.append(seqid, &mut out);
                let msg = unframe(&out);
                let h = parse_header(msg).unwrap();
                assert_eq!(
                    (h.protocol, h.message_type, h.seqid),
                    (protocol, CALL, seqid)
                );
                assert_eq!(h.name, b"echo");
                assert_eq!(echo_arg(msg, &h).unwrap(), payload);
                let reply = process(protocol, msg);
                check_echo_reply(&reply, protocol, b"echo", seqid, payload).unwrap();
            }
        }
    }

    #[test]
    fn written_replies_are_what_the_generated_code_writes() {
        for protocol in PROTOCOLS {
            let mut t = CallTemplate::new(protocol, b"echo", b"same bytes");
            let mut call = Vec::new();
            t.append(SEQID_BASE + 7, &mut call);
            let expected = process(protocol, unframe(&call));
            let mut out = Vec::new();
            write_echo_reply(&mut out, protocol, b"echo", SEQID_BASE + 7, b"same bytes");
            assert_eq!(unframe(&out), &expected[..], "{protocol:?}");
        }
    }

    #[test]
    fn accepts_a_correct_reply() {
        for protocol in [Protocol::Binary, Protocol::Compact] {
            let mut out = Vec::new();
            write_echo_reply(&mut out, protocol, b"echo", 42, b"payload");
            assert_eq!(
                check_echo_reply(unframe(&out), protocol, b"echo", 42, b"payload"),
                Ok(())
            );
        }
    }

    #[test]
    fn rejects_wrong_seqid_name_content_type_protocol() {
        for protocol in PROTOCOLS {
            let reply = |name: &[u8], seqid, result: &[u8]| {
                let mut out = Vec::new();
                write_echo_reply(&mut out, protocol, name, seqid, result);
                out[4..].to_vec()
            };
            let check = |msg: &[u8]| check_echo_reply(msg, protocol, b"echo", 42, b"payload");
            assert_eq!(
                check(&reply(b"echo", 43, b"payload")),
                Err(Invalid::WrongSeqid {
                    expected: 42,
                    got: 43
                })
            );
            assert_eq!(
                check(&reply(b"echO", 42, b"payload")),
                Err(Invalid::WrongName("echO".into()))
            );
            assert_eq!(
                check(&reply(b"echo", 42, b"paYload")),
                Err(Invalid::WrongContent(7))
            );
            assert_eq!(
                check(&reply(b"echo", 42, b"pay")),
                Err(Invalid::WrongContent(3))
            );
            let mut trailing = reply(b"echo", 42, b"payload");
            trailing.push(0);
            assert_eq!(check(&trailing), Err(Invalid::Trailing(1)));
            let good = reply(b"echo", 42, b"payload");
            for cut in 0..good.len() {
                assert!(check(&good[..cut]).is_err(), "{protocol:?} cut at {cut}");
            }
            let mut exc = Vec::new();
            write_app_exception(&mut exc, protocol, b"echo", 42, 6, "worker died");
            assert_eq!(
                check(&exc[4..]),
                Err(Invalid::Exception("worker died (type 6)".into()))
            );
            let other = if protocol == Protocol::Binary {
                Protocol::Compact
            } else {
                Protocol::Binary
            };
            let mut o = Vec::new();
            write_echo_reply(&mut o, other, b"echo", 42, b"payload");
            assert_eq!(check(&o[4..]), Err(Invalid::WrongProtocol(other)));
        }
        // A CALL where a REPLY is due.
        let mut t = CallTemplate::new(Protocol::Binary, b"echo", b"payload");
        t.set_seqid(SEQID_BASE);
        assert_eq!(
            check_echo_reply(
                &t.bytes()[4..],
                Protocol::Binary,
                b"echo",
                SEQID_BASE,
                b"payload"
            ),
            Err(Invalid::WrongType(CALL))
        );
    }

    #[test]
    fn exceptions_parse_back() {
        for protocol in [Protocol::Binary, Protocol::BinaryLax, Protocol::Compact] {
            let mut out = Vec::new();
            write_app_exception(&mut out, protocol, b"nope", -5, UNKNOWN_METHOD, "unknown");
            let msg = unframe(&out);
            let h = parse_header(msg).unwrap();
            assert_eq!(
                (h.protocol, h.message_type, h.seqid),
                (protocol, EXCEPTION, -5)
            );
            assert_eq!(
                app_exception_message(msg, &h).as_deref(),
                Some("unknown (type 1)")
            );
        }
    }

    #[test]
    fn echo_arg_skips_other_fields_and_lax_binary_parses() {
        // Binary lax header, then i32 field 2, string field 1, stop.
        let mut msg = Vec::new();
        put_header(&mut msg, Protocol::BinaryLax, CALL, b"echo", 9);
        msg.extend_from_slice(&[8, 0, 2, 0, 0, 0, 7]);
        msg.extend_from_slice(&[11, 0, 1, 0, 0, 0, 2, b'h', b'i', 0]);
        let h = parse_header(&msg).unwrap();
        assert_eq!(
            (h.protocol, h.seqid, h.name),
            (Protocol::BinaryLax, 9, &b"echo"[..])
        );
        assert_eq!(echo_arg(&msg, &h).unwrap(), b"hi");
        // No field at all: the empty string.
        let mut empty = Vec::new();
        put_header(&mut empty, Protocol::Compact, CALL, b"echo", 1);
        empty.push(0);
        let h = parse_header(&empty).unwrap();
        assert_eq!(echo_arg(&empty, &h).unwrap(), b"");
        // A nested field is refused, a truncated one too.
        let mut nested = Vec::new();
        put_header(&mut nested, Protocol::Binary, CALL, b"echo", 1);
        nested.extend_from_slice(&[12, 0, 3, 0, 0]);
        let h = parse_header(&nested).unwrap();
        assert_eq!(echo_arg(&nested, &h), Err(WireError::Unsupported(12)));
        let mut cut = Vec::new();
        put_header(&mut cut, Protocol::Binary, CALL, b"echo", 1);
        cut.extend_from_slice(&[11, 0, 1, 0, 0, 0, 9, b'x']);
        let h = parse_header(&cut).unwrap();
        assert!(echo_arg(&cut, &h).is_err());
    }
}
