//! The message header code (`server/src/thrift/`) on arbitrary bytes:
//! `detect`, `parse` (every protocol), `rename`, `reply_kind`,
//! `check_reply` and `application_exception` never panic; a parsed
//! header's ranges lie within the message; the `thrift` crate reads the
//! same header; a renamed message re-parses to the new name with the rest
//! unchanged; an accepted reply really answers the call.
//!
//! Input: 8 bytes of parameters (call protocol, flags, a seqid change,
//! max_len), then the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thriftworker_fuzz::message::{self, AppErrorKind, HeaderError, Protocol, MAX_NAME_LEN};
use thriftworker_fuzz::{
    check_against_thrift, check_header, check_rename, check_reply_consistent, PROTOCOLS,
};

fuzz_target!(|data: &[u8]| {
    let Some((params, m)) = data.split_first_chunk::<8>() else {
        return;
    };
    let call = PROTOCOLS[params[0] as usize % 3];
    let flags = params[1];
    let delta = i32::from_be_bytes([params[2], params[3], params[4], params[5]]);
    let max = match flags & 1 {
        0 => u16::from_be_bytes([params[6], params[7]]) as usize,
        _ => usize::MAX,
    };

    let detected = message::detect(m);
    match m.first() {
        None => assert_eq!(detected, Err(HeaderError::Truncated)),
        Some(0x80) => assert_eq!(detected, Ok(Protocol::BinaryStrict)),
        Some(0x82) => assert_eq!(detected, Ok(Protocol::Compact)),
        Some(0) => assert_eq!(detected, Ok(Protocol::BinaryLax)),
        Some(_) => assert!(matches!(detected, Err(HeaderError::BadVersion(_)))),
    }

    // A new name: some bytes of the message itself, of a length the flags say.
    let new_len = ((flags >> 4) as usize * 3).min(m.len());
    let new_name = &m[m.len() - new_len..];
    for p in PROTOCOLS {
        if let Ok(h) = message::parse(m, p) {
            check_header(m, &h, p);
            check_rename(m, &h, new_name);
            check_against_thrift(m, &h);
        }
    }

    // check_reply against the message's own name and seqid (or a changed
    // one), so that it gets past those checks.
    let (name, seqid) = match detected.and_then(|p| message::parse(m, p)) {
        Ok(h) if flags & 2 == 0 => (h.name(m).to_vec(), h.seqid),
        Ok(h) => (h.name(m).to_vec(), h.seqid.wrapping_add(delta)),
        Err(_) => (Vec::new(), delta),
    };
    check_reply_consistent(m, call, &name, seqid, max);

    // The exception the data plane would answer that call with.
    if name.len() <= MAX_NAME_LEN {
        let kind = [
            AppErrorKind::UnknownMethod,
            AppErrorKind::InvalidMessageType,
            AppErrorKind::InternalError,
        ][(flags as usize >> 2) % 3];
        let e = message::application_exception(call, &name, seqid, kind, "fuzz");
        assert_eq!(
            message::check_reply(&e, call, &name, seqid, e.len()),
            Ok(message::ReplyKind::AppException)
        );
    }
});
