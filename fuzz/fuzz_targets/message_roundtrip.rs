//! Messages the Apache `thrift` crate writes, with any name, seqid, type
//! and body, in each protocol: `detect` and `parse` return exactly what was
//! written and `write_header` writes the same bytes; `rename` keeps the
//! message; `application_exception` is decoded by the thrift crate as the
//! TApplicationException it describes; `check_reply` accepts the replies
//! the thrift crate writes for the call and classifies them.
#![no_main]

use std::io::Cursor;

use bytes::BytesMut;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use thrift::protocol::{
    TFieldIdentifier, TMessageIdentifier, TMessageType, TOutputProtocol, TStructIdentifier, TType,
};
use thrift::ApplicationErrorKind;
use thriftworker_fuzz::message::{
    self, AppErrorKind, HeaderError, MessageType, Protocol, ReplyKind, MAX_NAME_LEN,
};
use thriftworker_fuzz::{check_header, check_rename, input, output, thrift_type, PROTOCOLS};

#[derive(Debug, Arbitrary)]
struct Input {
    protocol: u8,
    name: String,
    seqid: i32,
    message_type: u8,
    body: Vec<u8>,
    new_name: Vec<u8>,
    kind: u8,
    text: String,
    /// The result struct's field (id, written as a struct or a string), or void.
    reply: Option<(i16, bool)>,
    strict_for_lax: bool,
}

fn write_header_with_thrift(p: Protocol, name: &str, t: TMessageType, seqid: i32) -> Vec<u8> {
    let mut buf = Vec::new();
    output(p, &mut buf)
        .write_message_begin(&TMessageIdentifier::new(name, t, seqid))
        .unwrap();
    buf
}

fn write_result(o: &mut dyn TOutputProtocol, field: Option<(i16, bool)>) -> thrift::Result<()> {
    o.write_struct_begin(&TStructIdentifier::new("result"))?;
    if let Some((id, as_struct)) = field {
        if as_struct {
            o.write_field_begin(&TFieldIdentifier::new("e", TType::Struct, id))?;
            o.write_struct_begin(&TStructIdentifier::new("E"))?;
            o.write_field_begin(&TFieldIdentifier::new("code", TType::I32, 1))?;
            o.write_i32(42)?;
            o.write_field_end()?;
            o.write_field_stop()?;
            o.write_struct_end()?;
        } else {
            o.write_field_begin(&TFieldIdentifier::new("s", TType::String, id))?;
            o.write_string("x")?;
        }
        o.write_field_end()?;
    }
    o.write_field_stop()?;
    o.write_struct_end()?;
    o.write_message_end()?;
    o.flush()
}

fuzz_target!(|x: Input| {
    let p = PROTOCOLS[x.protocol as usize % 3];
    let t = [
        MessageType::Call,
        MessageType::Reply,
        MessageType::Exception,
        MessageType::Oneway,
    ][x.message_type as usize % 4];
    let fits_name = x.name.len() <= MAX_NAME_LEN;

    // parse what the thrift crate writes.
    let mut m = write_header_with_thrift(p, &x.name, thrift_type(t), x.seqid);
    let header_len = m.len();
    m.extend_from_slice(&x.body);
    assert_eq!(message::detect(&m), Ok(p));
    let parsed = message::parse(&m, p);
    if !fits_name {
        assert_eq!(parsed, Err(HeaderError::BadNameLength(x.name.len() as i64)));
    } else {
        let h = parsed.unwrap_or_else(|e| panic!("{e} for {p:?} {:?}", x.name));
        check_header(&m, &h, p);
        assert_eq!(h.name(&m), x.name.as_bytes());
        assert_eq!(h.seqid, x.seqid);
        assert_eq!(h.message_type, t);
        assert_eq!(h.len, header_len);
        let mut ours = BytesMut::new();
        message::write_header(&mut ours, p, x.name.as_bytes(), t, x.seqid);
        assert_eq!(&ours[..], &m[..header_len]);
        if x.new_name.len() <= MAX_NAME_LEN {
            check_rename(&m, &h, &x.new_name);
        }
    }

    // application_exception, read back by the thrift crate.
    let kind = [
        AppErrorKind::UnknownMethod,
        AppErrorKind::InvalidMessageType,
        AppErrorKind::InternalError,
        AppErrorKind::InvalidTransform,
        AppErrorKind::InvalidProtocol,
    ][x.kind as usize % 5];
    let e = message::application_exception(p, x.name.as_bytes(), x.seqid, kind, &x.text);
    {
        let mut cursor = Cursor::new(&e[..]);
        {
            let mut i = input(p, &mut cursor);
            let id = i.read_message_begin().unwrap();
            assert_eq!(id.name, x.name);
            assert_eq!(id.sequence_number, x.seqid);
            assert_eq!(id.message_type, TMessageType::Exception);
            let err = thrift::Error::read_application_error_from_in_protocol(&mut *i).unwrap();
            i.read_message_end().unwrap();
            let want = match kind {
                AppErrorKind::UnknownMethod => ApplicationErrorKind::UnknownMethod,
                AppErrorKind::InvalidMessageType => ApplicationErrorKind::InvalidMessageType,
                AppErrorKind::InternalError => ApplicationErrorKind::InternalError,
                AppErrorKind::InvalidTransform => ApplicationErrorKind::InvalidTransform,
                AppErrorKind::InvalidProtocol => ApplicationErrorKind::InvalidProtocol,
            };
            assert_eq!(err.kind, want);
            assert_eq!(err.message, x.text);
        }
        assert_eq!(cursor.position() as usize, e.len());
    }
    if fits_name {
        assert_eq!(
            message::check_reply(&e, p, x.name.as_bytes(), x.seqid, e.len()),
            Ok(ReplyKind::AppException)
        );
    }

    // check_reply accepts a reply the thrift crate writes for the call.
    if fits_name {
        let field = x
            .reply
            .map(|(id, s)| ((id.unsigned_abs() % 32_768) as i16, s));
        let reply_protocol = if p == Protocol::BinaryLax && x.strict_for_lax {
            Protocol::BinaryStrict
        } else {
            p
        };
        let mut r = write_header_with_thrift(reply_protocol, &x.name, TMessageType::Reply, x.seqid);
        write_result(&mut *output(reply_protocol, &mut r), field).unwrap();
        let want = match field {
            None | Some((0, _)) => ReplyKind::Success,
            Some(_) => ReplyKind::DeclaredException,
        };
        assert_eq!(message::reply_kind(&r), want);
        assert_eq!(
            message::check_reply(&r, p, x.name.as_bytes(), x.seqid, r.len()),
            Ok(want)
        );
        assert!(
            message::check_reply(&r, p, x.name.as_bytes(), x.seqid.wrapping_add(1), r.len())
                .is_err()
        );
    }
});
