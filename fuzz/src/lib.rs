//! Shared code of the fuzz targets: the parsers under test and the checks
//! every target applies to them.
//!
//! The data plane's `thrift` module (layer 0: framing and protocols) is
//! compiled here from its own source files, unchanged, as `message` (and
//! its `framed` transport as `frame`): it depends only on `bytes`,
//! `thiserror`, `tokio-util` and `thriftworker-wire`, so the instrumented
//! build stays small. `server/tests/layering.rs` keeps it free of the rest
//! of the server crate.
//!
//! Every check panics on failure: libFuzzer records a panic as a crash.

use std::collections::VecDeque;
use std::io::Cursor;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
    TInputProtocol, TMessageIdentifier, TMessageType, TOutputProtocol,
};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::{Decoder, FramedRead};

#[path = "../../server/src/thrift/mod.rs"]
pub mod message;
pub use message::framed as frame;

use frame::{FrameDecoder, FrameError};
use message::{Header, MessageType, Protocol, MAX_NAME_LEN};

// ───────────────────────────── frames ─────────────────────────────

/// What the frame decoder produces for a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Frame(Vec<u8>),
    Empty,
    Negative(i32),
    TooLarge { len: usize, max: usize },
    Truncated(usize),
}

impl Out {
    fn of_error(e: FrameError) -> Out {
        match e {
            FrameError::Empty => Out::Empty,
            FrameError::Negative(n) => Out::Negative(n),
            FrameError::TooLarge { len, max } => Out::TooLarge { len, max },
            FrameError::Truncated(n) => Out::Truncated(n),
            FrameError::Io(e) => panic!("I/O error from a decoder: {e}"),
        }
    }
}

/// The reference framing of a whole stream, ending at end of stream.
pub fn frame_model(input: &[u8], max: usize) -> Vec<Out> {
    let mut out = Vec::new();
    let mut rest = input;
    loop {
        if rest.len() < 4 {
            if !rest.is_empty() {
                out.push(Out::Truncated(rest.len()));
            }
            return out;
        }
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let err = match len {
            0 => Some(Out::Empty),
            n if n < 0 => Some(Out::Negative(n)),
            n if n as usize > max => Some(Out::TooLarge {
                len: n as usize,
                max,
            }),
            n if rest.len() < 4 + n as usize => Some(Out::Truncated(rest.len())),
            _ => None,
        };
        if let Some(err) = err {
            out.push(err);
            return out;
        }
        let end = 4 + len as usize;
        out.push(Out::Frame(rest[4..end].to_vec()));
        rest = &rest[end..];
    }
}

/// `FramedRead::with_capacity(.., 2048)` in `server/src/data/connection/mod.rs`.
pub const INITIAL_READ_CAPACITY: usize = 2048;

/// The read buffer capacity a stream can make the decoder reach: the frame
/// it waits for moves to a buffer of exactly `4 + len` bytes (see
/// server/tests/fuzz_props.rs, `read_buffer_stays_within_max_frame_size`).
pub fn growth_bound(max: usize) -> usize {
    INITIAL_READ_CAPACITY.max(max + 4 + 64)
}

/// Feeds `input` to the decoder directly, `chunks` bytes at a time
/// (cycled), decoding everything possible after each chunk.
pub fn run_decoder(input: &[u8], max: usize, chunks: &[usize]) -> Vec<Out> {
    let mut d = FrameDecoder::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut chunk = chunks.iter().cycle();
    loop {
        loop {
            let before = buf.capacity();
            match d.decode(&mut buf) {
                Ok(Some(frame)) => out.push(Out::Frame(frame.to_vec())),
                Ok(None) => {
                    if buf.len() >= 4 {
                        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                        assert!(len > 0 && len as usize <= max, "Ok(None) for length {len}");
                        assert!(buf.capacity() >= len as usize + 4, "no room for the frame");
                    }
                    break;
                }
                Err(e) => {
                    assert!(buf.capacity() <= before, "an error reserved memory");
                    out.push(Out::of_error(e));
                    return out;
                }
            }
        }
        if fed == input.len() {
            loop {
                match d.decode_eof(&mut buf) {
                    Ok(Some(frame)) => out.push(Out::Frame(frame.to_vec())),
                    Ok(None) => return out,
                    Err(e) => {
                        out.push(Out::of_error(e));
                        return out;
                    }
                }
            }
        }
        let n = chunk
            .next()
            .copied()
            .unwrap_or(1)
            .clamp(1, input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
    }
}

/// An `AsyncRead` handing out a byte stream in chunks of the given sizes
/// (cycled), then end of stream.
struct Chunked<'a> {
    input: &'a [u8],
    chunks: &'a [usize],
    next: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let want = self
            .chunks
            .get(self.next % self.chunks.len().max(1))
            .copied()
            .unwrap_or(4096)
            .max(1);
        self.next += 1;
        let n = want.min(buf.remaining()).min(self.input.len());
        buf.put_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(()))
    }
}

/// The decoder as the connection task runs it: `FramedRead` with a 2 KiB
/// buffer, polled to the end of the stream, the last `keep` frames held.
/// Returns the outputs and the largest read buffer capacity seen.
pub fn run_framed(input: &[u8], max: usize, chunks: &[usize], keep: usize) -> (Vec<Out>, usize) {
    use futures_core::Stream;
    let reader = Chunked {
        input,
        chunks,
        next: 0,
    };
    let mut frames =
        FramedRead::with_capacity(reader, FrameDecoder::new(max), INITIAL_READ_CAPACITY);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut peak = frames.read_buffer().capacity();
    let mut in_flight = VecDeque::new();
    loop {
        // The reader is never pending, so neither is the stream.
        let Poll::Ready(item) = Pin::new(&mut frames).poll_next(&mut cx) else {
            panic!("FramedRead pending on a reader that never is");
        };
        peak = peak.max(frames.read_buffer().capacity());
        match item {
            None => break,
            Some(Ok(frame)) => {
                out.push(Out::Frame(frame.to_vec()));
                in_flight.push_back(frame);
                if in_flight.len() > keep {
                    in_flight.pop_front();
                }
            }
            Some(Err(e)) => {
                out.push(Out::of_error(e));
                break;
            }
        }
    }
    (out, peak)
}

// ──────────────────────────── messages ────────────────────────────

pub const PROTOCOLS: [Protocol; 3] = [
    Protocol::BinaryStrict,
    Protocol::BinaryLax,
    Protocol::Compact,
];

pub fn thrift_type(t: MessageType) -> TMessageType {
    match t {
        MessageType::Call => TMessageType::Call,
        MessageType::Reply => TMessageType::Reply,
        MessageType::Exception => TMessageType::Exception,
        MessageType::Oneway => TMessageType::OneWay,
    }
}

pub fn from_thrift_type(t: TMessageType) -> MessageType {
    match t {
        TMessageType::Call => MessageType::Call,
        TMessageType::Reply => MessageType::Reply,
        TMessageType::Exception => MessageType::Exception,
        TMessageType::OneWay => MessageType::Oneway,
    }
}

/// The `thrift` crate's writer for `p`.
pub fn output<'a>(p: Protocol, buf: &'a mut Vec<u8>) -> Box<dyn TOutputProtocol + 'a> {
    match p {
        Protocol::BinaryStrict => Box::new(TBinaryOutputProtocol::new(buf, true)),
        Protocol::BinaryLax => Box::new(TBinaryOutputProtocol::new(buf, false)),
        Protocol::Compact => Box::new(TCompactOutputProtocol::new(buf)),
    }
}

/// The `thrift` crate's reader for `p`.
pub fn input<'a>(p: Protocol, cursor: &'a mut Cursor<&[u8]>) -> Box<dyn TInputProtocol + 'a> {
    match p {
        Protocol::BinaryStrict => Box::new(TBinaryInputProtocol::new(cursor, true)),
        Protocol::BinaryLax => Box::new(TBinaryInputProtocol::new(cursor, false)),
        Protocol::Compact => Box::new(TCompactInputProtocol::new(cursor)),
    }
}

/// What the `thrift` crate reads as the header of `m`. Only call it on
/// bytes whose name length is known to be small (it allocates the length
/// it reads).
pub fn thrift_header(p: Protocol, m: &[u8]) -> Option<TMessageIdentifier> {
    let mut cursor = Cursor::new(m);
    let header = input(p, &mut cursor).read_message_begin().ok();
    header
}

/// Everything a parsed header promises about the message it came from.
pub fn check_header(m: &[u8], h: &Header, p: Protocol) {
    assert_eq!(h.protocol, p);
    assert!(h.name_start <= h.name_end, "{h:?}");
    assert!(h.name_end <= h.len, "{h:?}");
    assert!(h.len <= m.len(), "{h:?} for {} bytes", m.len());
    assert!(h.name_end - h.name_start <= MAX_NAME_LEN);
    let _ = h.name(m);
}

/// `rename` gives a message that parses to the new name, everything else
/// unchanged, and returns the new name's range in it.
pub fn check_rename(m: &[u8], h: &Header, new_name: &[u8]) {
    let (r, range) = message::rename(m, h, new_name);
    assert_eq!(message::detect(&r), Ok(h.protocol));
    let h2 = message::parse(&r, h.protocol).expect("renamed message does not parse");
    assert_eq!(h2.name(&r), new_name);
    assert_eq!(range, h2.name_start..h2.name_end);
    assert_eq!(h2.message_type, h.message_type);
    assert_eq!(h2.seqid, h.seqid);
    assert_eq!(&r[h2.len..], &m[h.len..]);
}

/// The `thrift` crate reads the same header as `parse` (when the name is
/// UTF-8: the thrift crate insists on it, the data plane does not).
pub fn check_against_thrift(m: &[u8], h: &Header) {
    if let Ok(name) = std::str::from_utf8(h.name(m)) {
        let t = thrift_header(h.protocol, m)
            .unwrap_or_else(|| panic!("thrift cannot read a header parse() accepted: {h:?}"));
        assert_eq!(t.name, name);
        assert_eq!(t.sequence_number, h.seqid);
        assert_eq!(from_thrift_type(t.message_type), h.message_type);
    }
}

/// Does a reply in `got` answer a call in `call`?
pub fn fits(call: Protocol, got: Protocol) -> bool {
    got == call || (call == Protocol::BinaryLax && got == Protocol::BinaryStrict)
}

/// An accepted reply really answers the call.
pub fn check_reply_consistent(m: &[u8], call: Protocol, name: &[u8], seqid: i32, max: usize) {
    let kind = message::reply_kind(m);
    match message::check_reply(m, call, name, seqid, max) {
        Ok(k) => {
            assert_eq!(k, kind);
            assert!(m.len() <= max);
            let got = message::detect(m).unwrap();
            assert!(fits(call, got));
            let h = message::parse(m, got).unwrap();
            assert_eq!(h.name(m), name);
            assert_eq!(h.seqid, seqid);
            assert!(matches!(
                h.message_type,
                MessageType::Reply | MessageType::Exception
            ));
        }
        Err(message::BadReply::TooLarge(n)) => assert!(n == m.len() && n > max),
        Err(_) => {}
    }
}
