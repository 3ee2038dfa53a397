//! Checking and classifying a worker's reply: does it answer the call it
//! claims to, and what does it say (for the outcome counters)?

use super::{detect, field_id, parse, Header, HeaderError, MessageType, Protocol};

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
        MessageType::Exception if message.len() > header.len => ReplyKind::AppException,
        MessageType::Exception | MessageType::Call | MessageType::Oneway => ReplyKind::Unreadable,
        // The result struct: STOP (a void method), field 0 (the return
        // value) or a field >= 1 (an exception the IDL declares).
        MessageType::Reply => match field_id(message, protocol, header.len) {
            None => ReplyKind::Unreadable,
            Some(None | Some(0)) => ReplyKind::Success,
            Some(Some(_)) => ReplyKind::DeclaredException,
        },
    }
}
