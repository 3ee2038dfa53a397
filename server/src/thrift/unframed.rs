//! The unframed ("buffered") transport: messages follow each other on the
//! stream with nothing around them (`TBufferedTransport`, the default of
//! Apache's Python and Java clients). Where a message ends is known only by
//! parsing it, so this is a *skip parser*: it walks the message header and
//! the arguments struct without decoding a value, and says how long the
//! message is once all of it has arrived.
//!
//! It is resumable: bytes arrive in reads of any size, and each call to
//! [`Skipper::advance`] goes on from the last complete token instead of
//! starting over (a message of many small fields arriving in many reads
//! costs one pass, not one per read). A token — a field header, a scalar, a
//! string with its bytes, a container header — is taken whole or not at
//! all; the state between tokens is a stack of open structs and containers.
//!
//! Bounds: the message may not exceed `max` bytes (the listener's
//! `max_frame_size`; checked before waiting for more), containers and
//! structs nest at most [`MAX_DEPTH`] deep (Apache's own recursion limit),
//! a container's element count must fit in the bytes left under `max`
//! (every element takes at least one byte), and nothing is allocated from a
//! length read off the wire: the stack grows by one small entry per level
//! actually opened.

use super::{detect, parse, HeaderError, Protocol};

/// How deep structs, lists, sets and maps may nest (Apache Thrift's default
/// recursion limit in every language).
pub const MAX_DEPTH: usize = 64;

/// Why an unframed message was rejected. Each ends reading on the
/// connection: without the message's end the stream cannot be resynchronised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SkipError {
    #[error("unframed message is larger than max_frame_size {max}")]
    TooLarge { max: usize },
    #[error("unframed message nests structs and containers deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("unframed message has a field or element of unknown type {0}")]
    BadType(u8),
    #[error("unframed message has a negative length or size {0}")]
    Negative(i32),
    #[error("unframed message has a malformed varint")]
    BadVarint,
    #[error("unframed message: {0}")]
    Header(HeaderError),
}

/// What a value takes on the wire, once its type is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A fixed number of bytes.
    Fixed(u8),
    /// One varint (compact integers).
    Varint,
    /// A length, then that many bytes.
    Binary,
    Struct,
    /// List or set: element type and count.
    List,
    Map,
}

/// An open struct or container, innermost last.
#[derive(Debug, Clone, Copy)]
enum Open {
    /// Expecting a field header or STOP.
    Struct,
    /// Elements of this type left to skip.
    List { elem: Kind, left: u32 },
    /// Keys and values left to skip: `left` counts both, key first.
    Map { key: Kind, value: Kind, left: u64 },
}

/// Finds the end of one unframed message at a time; reset after each.
#[derive(Debug, Default)]
pub struct Skipper {
    /// Set once the message header has been read.
    protocol: Option<Protocol>,
    /// Bytes taken by complete tokens so far.
    pos: usize,
    stack: Vec<Open>,
    /// A value whose type is known and whose bytes come next.
    pending: Option<Kind>,
}

/// Not enough bytes yet for the next token.
struct NeedMore;

impl Skipper {
    pub fn new() -> Skipper {
        Skipper::default()
    }

    /// Goes on parsing the message at the start of `buf` (the same message,
    /// with more bytes, as on the previous call). `Ok(Some(len))` once the
    /// whole message is in `buf[..len]` (the skipper is then ready for the
    /// next message); `Ok(None)` if more bytes are needed.
    pub fn advance(&mut self, buf: &[u8], max: usize) -> Result<Option<usize>, SkipError> {
        let result = self.run(buf, max);
        match result {
            Ok(Some(_)) | Err(_) => self.reset(),
            Ok(None) if buf.len() >= max => {
                // Everything allowed is here and the message has not ended.
                self.reset();
                return Err(SkipError::TooLarge { max });
            }
            Ok(None) => {}
        }
        result
    }

    /// The protocol of the message being parsed, once its header was read.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    fn reset(&mut self) {
        self.protocol = None;
        self.pos = 0;
        self.stack.clear();
        self.pending = None;
    }

    fn run(&mut self, buf: &[u8], max: usize) -> Result<Option<usize>, SkipError> {
        let protocol = match self.protocol {
            Some(p) => p,
            None => match detect(buf).and_then(|p| parse(buf, p)) {
                Ok(header) => {
                    self.protocol = Some(header.protocol);
                    self.pos = header.len;
                    self.pending = Some(Kind::Struct);
                    header.protocol
                }
                Err(HeaderError::Truncated) => return Ok(None),
                Err(e) => return Err(SkipError::Header(e)),
            },
        };
        let compact = protocol == Protocol::Compact;
        loop {
            if self.pos > max {
                return Err(SkipError::TooLarge { max });
            }
            let step = if let Some(kind) = self.pending {
                self.value(buf, kind, compact, max)
            } else {
                match self.stack.last_mut() {
                    None => return Ok(Some(self.pos)),
                    Some(Open::Struct) => self.field_header(buf, compact),
                    Some(Open::List { elem, left }) => {
                        if *left == 0 {
                            self.stack.pop();
                        } else {
                            *left -= 1;
                            self.pending = Some(*elem);
                        }
                        Ok(Ok(()))
                    }
                    Some(Open::Map { key, value, left }) => {
                        if *left == 0 {
                            self.stack.pop();
                        } else {
                            // An even count left: a key is next.
                            let next = if *left % 2 == 0 { *key } else { *value };
                            *left -= 1;
                            self.pending = Some(next);
                        }
                        Ok(Ok(()))
                    }
                }
            };
            match step? {
                Ok(()) => {}
                Err(NeedMore) => return Ok(None),
            }
        }
    }

    /// Takes a field header or STOP of the innermost struct.
    fn field_header(
        &mut self,
        buf: &[u8],
        compact: bool,
    ) -> Result<Result<(), NeedMore>, SkipError> {
        let at = self.pos;
        let Some(&b) = buf.get(at) else {
            return Ok(Err(NeedMore));
        };
        if compact {
            let ty = b & 0x0f;
            if ty == 0 {
                self.stack.pop();
                self.pos = at + 1;
                return Ok(Ok(()));
            }
            let mut end = at + 1;
            if b >> 4 == 0 {
                // Long form: the field id follows as a zigzag varint.
                match varint(buf, end, 3)? {
                    Some((_, next)) => end = next,
                    None => return Ok(Err(NeedMore)),
                }
            }
            self.pos = end;
            // Booleans carry their value in the field type.
            if ty != 1 && ty != 2 {
                self.pending = Some(compact_kind(ty)?);
            }
        } else {
            if b == 0 {
                self.stack.pop();
                self.pos = at + 1;
                return Ok(Ok(()));
            }
            let kind = binary_kind(b)?;
            if buf.len() < at + 3 {
                return Ok(Err(NeedMore));
            }
            self.pos = at + 3;
            self.pending = Some(kind);
        }
        Ok(Ok(()))
    }

    /// Takes the bytes of the pending value (or opens its struct or container).
    fn value(
        &mut self,
        buf: &[u8],
        kind: Kind,
        compact: bool,
        max: usize,
    ) -> Result<Result<(), NeedMore>, SkipError> {
        let at = self.pos;
        let end = match kind {
            Kind::Fixed(n) => at + usize::from(n),
            Kind::Varint => match varint(buf, at, 10)? {
                Some((_, next)) => next,
                None => return Ok(Err(NeedMore)),
            },
            Kind::Binary => {
                let (len, start) = match length(buf, at, compact)? {
                    Some(v) => v,
                    None => return Ok(Err(NeedMore)),
                };
                if len > max.saturating_sub(start) {
                    return Err(SkipError::TooLarge { max });
                }
                start + len
            }
            Kind::Struct => {
                self.open(Open::Struct)?;
                self.pending = None;
                return Ok(Ok(()));
            }
            Kind::List => {
                let Some((elem, count, next)) = list_header(buf, at, compact)? else {
                    return Ok(Err(NeedMore));
                };
                fits(count as usize, next, max)?;
                self.pos = next;
                self.pending = None;
                if count > 0 {
                    self.open(Open::List { elem, left: count })?;
                }
                return Ok(Ok(()));
            }
            Kind::Map => {
                let Some((types, count, next)) = map_header(buf, at, compact)? else {
                    return Ok(Err(NeedMore));
                };
                fits(count as usize, next, max)?;
                self.pos = next;
                self.pending = None;
                if let Some((key, value)) = types {
                    self.open(Open::Map {
                        key,
                        value,
                        left: u64::from(count) * 2,
                    })?;
                }
                return Ok(Ok(()));
            }
        };
        if buf.len() < end {
            return Ok(Err(NeedMore));
        }
        self.pos = end;
        self.pending = None;
        Ok(Ok(()))
    }

    fn open(&mut self, open: Open) -> Result<(), SkipError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(SkipError::TooDeep);
        }
        self.stack.push(open);
        Ok(())
    }
}

/// Every element takes at least one byte: a count beyond the bytes left
/// under `max` cannot be honest.
fn fits(count: usize, at: usize, max: usize) -> Result<(), SkipError> {
    if count > max.saturating_sub(at) {
        return Err(SkipError::TooLarge { max });
    }
    Ok(())
}

/// A binary protocol type code as a wire shape.
fn binary_kind(ty: u8) -> Result<Kind, SkipError> {
    Ok(match ty {
        2 | 3 => Kind::Fixed(1),  // bool, byte
        4 | 10 => Kind::Fixed(8), // double, i64
        6 => Kind::Fixed(2),      // i16
        8 => Kind::Fixed(4),      // i32
        11 => Kind::Binary,
        12 => Kind::Struct,
        13 => Kind::Map,
        14 | 15 => Kind::List, // set, list
        16 => Kind::Fixed(16), // uuid
        other => return Err(SkipError::BadType(other)),
    })
}

/// A compact protocol type code as a wire shape. Booleans (1, 2) are one
/// byte inside containers; in a field header they carry their value and
/// take no bytes (handled by the caller).
fn compact_kind(ty: u8) -> Result<Kind, SkipError> {
    Ok(match ty {
        1..=3 => Kind::Fixed(1), // bool true/false (in containers), byte
        4..=6 => Kind::Varint,   // i16, i32, i64 (zigzag)
        7 => Kind::Fixed(8),     // double
        8 => Kind::Binary,
        9 | 10 => Kind::List, // list, set
        11 => Kind::Map,
        12 => Kind::Struct,
        13 => Kind::Fixed(16), // uuid
        other => return Err(SkipError::BadType(other)),
    })
}

/// A string's length and where its bytes start.
fn length(buf: &[u8], at: usize, compact: bool) -> Result<Option<(usize, usize)>, SkipError> {
    if compact {
        return Ok(varint(buf, at, 5)?.map(|(len, next)| (len as usize, next)));
    }
    Ok(i32_at(buf, at)?.map(|len| (len as usize, at + 4)))
}

/// A list or set header: element shape, count, where the elements start.
fn list_header(
    buf: &[u8],
    at: usize,
    compact: bool,
) -> Result<Option<(Kind, u32, usize)>, SkipError> {
    if compact {
        let Some(&b) = buf.get(at) else {
            return Ok(None);
        };
        let elem = compact_kind(b & 0x0f)?;
        if b >> 4 != 15 {
            return Ok(Some((elem, u32::from(b >> 4), at + 1)));
        }
        return Ok(varint(buf, at + 1, 5)?.map(|(count, next)| (elem, count as u32, next)));
    }
    let Some(&ty) = buf.get(at) else {
        return Ok(None);
    };
    let elem = binary_kind(ty)?;
    Ok(i32_at(buf, at + 1)?.map(|count| (elem, count, at + 5)))
}

/// A map header: key and value shapes (none for an empty compact map),
/// count, where the entries start.
#[allow(clippy::type_complexity)]
fn map_header(
    buf: &[u8],
    at: usize,
    compact: bool,
) -> Result<Option<(Option<(Kind, Kind)>, u32, usize)>, SkipError> {
    if compact {
        let Some((count, next)) = varint(buf, at, 5)? else {
            return Ok(None);
        };
        if count == 0 {
            return Ok(Some((None, 0, next)));
        }
        let Some(&types) = buf.get(next) else {
            return Ok(None);
        };
        let key = compact_kind(types >> 4)?;
        let value = compact_kind(types & 0x0f)?;
        return Ok(Some((Some((key, value)), count as u32, next + 1)));
    }
    let (Some(&k), Some(&v)) = (buf.get(at), buf.get(at + 1)) else {
        return Ok(None);
    };
    let Some(count) = i32_at(buf, at + 2)? else {
        return Ok(None);
    };
    let types = (count > 0)
        .then(|| Ok::<_, SkipError>((binary_kind(k)?, binary_kind(v)?)))
        .transpose()?;
    Ok(Some((types, count, at + 6)))
}

/// A big-endian i32 that must not be negative, as a u32.
fn i32_at(buf: &[u8], at: usize) -> Result<Option<u32>, SkipError> {
    let Some(b) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let v = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if v < 0 {
        return Err(SkipError::Negative(v));
    }
    Ok(Some(v as u32))
}

/// An unsigned LEB128 varint of at most `max_bytes` bytes (5 for 32 bits,
/// 10 for 64, 3 for a field id), as a u64.
fn varint(buf: &[u8], at: usize, max_bytes: usize) -> Result<Option<(u64, usize)>, SkipError> {
    let mut value: u64 = 0;
    for i in 0..max_bytes {
        let Some(&b) = buf.get(at + i) else {
            return Ok(None);
        };
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if max_bytes == 5 && value > u64::from(u32::MAX) {
                return Err(SkipError::BadVarint);
            }
            return Ok(Some((value, at + i + 1)));
        }
    }
    Err(SkipError::BadVarint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use thrift::protocol::{
        TBinaryOutputProtocol, TCompactOutputProtocol, TFieldIdentifier, TListIdentifier,
        TMapIdentifier, TMessageIdentifier, TMessageType, TOutputProtocol, TSetIdentifier,
        TStructIdentifier, TType,
    };

    /// A CALL with every type of value, written by the `thrift` crate.
    fn every_type(compact: bool) -> Vec<u8> {
        let mut buf: Vec<u8> = Vec::new();
        {
            let mut p: Box<dyn TOutputProtocol + '_> = if compact {
                Box::new(TCompactOutputProtocol::new(&mut buf))
            } else {
                Box::new(TBinaryOutputProtocol::new(&mut buf, true))
            };
            p.write_message_begin(&TMessageIdentifier::new("m", TMessageType::Call, 9))
                .unwrap();
            p.write_struct_begin(&TStructIdentifier::new("args"))
                .unwrap();
            let mut id = 0;
            let mut field = |p: &mut Box<dyn TOutputProtocol + '_>, t: TType| {
                id += 7; // long-form ids in compact too
                p.write_field_begin(&TFieldIdentifier::new("f", t, id))
                    .unwrap();
            };
            field(&mut p, TType::Bool);
            p.write_bool(true).unwrap();
            field(&mut p, TType::Bool);
            p.write_bool(false).unwrap();
            field(&mut p, TType::I08);
            p.write_i8(-3).unwrap();
            field(&mut p, TType::I16);
            p.write_i16(-300).unwrap();
            field(&mut p, TType::I32);
            p.write_i32(i32::MIN).unwrap();
            field(&mut p, TType::I64);
            p.write_i64(i64::MIN).unwrap();
            field(&mut p, TType::Double);
            p.write_double(1.5).unwrap();
            field(&mut p, TType::String);
            p.write_string("hello").unwrap();
            field(&mut p, TType::List);
            p.write_list_begin(&TListIdentifier::new(TType::Bool, 20))
                .unwrap();
            for i in 0..20 {
                p.write_bool(i % 3 == 0).unwrap();
            }
            p.write_list_end().unwrap();
            field(&mut p, TType::Set);
            p.write_set_begin(&TSetIdentifier::new(TType::Struct, 2))
                .unwrap();
            for _ in 0..2 {
                p.write_struct_begin(&TStructIdentifier::new("s")).unwrap();
                p.write_field_begin(&TFieldIdentifier::new("x", TType::I32, 1))
                    .unwrap();
                p.write_i32(5).unwrap();
                p.write_field_stop().unwrap();
                p.write_struct_end().unwrap();
            }
            field(&mut p, TType::Map);
            p.write_map_begin(&TMapIdentifier::new(TType::String, TType::List, 2))
                .unwrap();
            for k in ["a", "b"] {
                p.write_string(k).unwrap();
                p.write_list_begin(&TListIdentifier::new(TType::I64, 3))
                    .unwrap();
                for v in 0..3 {
                    p.write_i64(v << 40).unwrap();
                }
            }
            field(&mut p, TType::Map);
            p.write_map_begin(&TMapIdentifier::new(TType::I32, TType::I32, 0))
                .unwrap();
            field(&mut p, TType::List);
            p.write_list_begin(&TListIdentifier::new(TType::String, 0))
                .unwrap();
            p.write_field_stop().unwrap();
            p.write_struct_end().unwrap();
            p.write_message_end().unwrap();
            p.flush().unwrap();
        }
        buf
    }

    fn skip_all(bytes: &[u8], max: usize) -> Result<Option<usize>, SkipError> {
        Skipper::new().advance(bytes, max)
    }

    #[test]
    fn finds_the_end_of_every_type_in_both_protocols() {
        for compact in [false, true] {
            let m = every_type(compact);
            assert_eq!(
                skip_all(&m, 1 << 20),
                Ok(Some(m.len())),
                "compact {compact}"
            );
            // Followed by the next message: the end is still found.
            let mut two = m.clone();
            two.extend_from_slice(&m);
            assert_eq!(skip_all(&two, 1 << 20), Ok(Some(m.len())));
        }
    }

    #[test]
    fn resumes_byte_by_byte_and_from_any_split() {
        for compact in [false, true] {
            let m = every_type(compact);
            let mut s = Skipper::new();
            for n in 0..m.len() {
                assert_eq!(s.advance(&m[..n], 1 << 20), Ok(None), "at {n}");
            }
            assert_eq!(s.advance(&m, 1 << 20), Ok(Some(m.len())));
            for split in 0..m.len() {
                let mut s = Skipper::new();
                assert_eq!(s.advance(&m[..split], 1 << 20), Ok(None));
                assert_eq!(s.advance(&m, 1 << 20), Ok(Some(m.len())));
            }
        }
    }

    #[test]
    fn a_message_over_max_is_refused_before_it_ends() {
        let m = every_type(false);
        let max = m.len() - 1;
        assert_eq!(skip_all(&m[..max], max), Err(SkipError::TooLarge { max }));
        // A string announcing more than max is refused at once.
        let mut s = header(false);
        s.extend_from_slice(&[11, 0, 1, 0x10, 0, 0, 0]);
        assert_eq!(skip_all(&s, 1000), Err(SkipError::TooLarge { max: 1000 }));
    }

    fn header(compact: bool) -> Vec<u8> {
        let mut b = bytes::BytesMut::new();
        super::super::write_header(
            &mut b,
            if compact {
                Protocol::Compact
            } else {
                Protocol::BinaryStrict
            },
            b"m",
            super::super::MessageType::Call,
            1,
        );
        b.to_vec()
    }

    #[test]
    fn hostile_counts_depths_and_types_are_errors() {
        // A list of 2^31-1 i32s.
        let mut m = header(false);
        m.extend_from_slice(&[15, 0, 1, 8, 0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(
            skip_all(&m, 1 << 20),
            Err(SkipError::TooLarge { max: 1 << 20 })
        );
        // A negative list size.
        let mut m = header(false);
        m.extend_from_slice(&[15, 0, 1, 8, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(skip_all(&m, 1 << 20), Err(SkipError::Negative(-1)));
        // Structs nested 65 deep.
        let mut m = header(false);
        for _ in 0..=MAX_DEPTH {
            m.extend_from_slice(&[12, 0, 1]);
        }
        assert_eq!(skip_all(&m, 1 << 20), Err(SkipError::TooDeep));
        // Unknown field types.
        let mut m = header(false);
        m.extend_from_slice(&[99, 0, 1]);
        assert_eq!(skip_all(&m, 1 << 20), Err(SkipError::BadType(99)));
        let mut m = header(true);
        m.push(0x1e);
        assert_eq!(skip_all(&m, 1 << 20), Err(SkipError::BadType(14)));
        // An 11-byte varint.
        let mut m = header(true);
        m.push(0x16); // i64 field
        m.extend_from_slice(&[0xff; 11]);
        assert_eq!(skip_all(&m, 1 << 20), Err(SkipError::BadVarint));
        // Not a message at all.
        assert!(matches!(
            skip_all(b"GET / HTTP/1.1\r\n\r\n", 1 << 20),
            Err(SkipError::Header(_))
        ));
    }

    #[test]
    fn the_skipper_is_ready_for_the_next_message_after_an_end_or_error() {
        let m = every_type(true);
        let mut s = Skipper::new();
        assert_eq!(s.advance(&m, 1 << 20), Ok(Some(m.len())));
        assert_eq!(s.advance(&m, 1 << 20), Ok(Some(m.len())));
        assert!(s
            .advance(b"\x80\x01\x00\x01\xff\xff\xff\xff", 1 << 20)
            .is_err());
        assert_eq!(s.advance(&m, 1 << 20), Ok(Some(m.len())));
    }
}
