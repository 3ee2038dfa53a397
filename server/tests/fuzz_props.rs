//! Property tests of the two parsers of the data plane that see untrusted
//! bytes: the frame decoder (`thrift/framed.rs`, fed by any TCP client) and the
//! message header code (`thrift/`, fed by clients and by workers).
//!
//! Apache Thrift's own Rust encoders and decoders (the `thrift` crate) are
//! the oracle for what a valid message is. Each property runs a small number
//! of cases by default, so `cargo test` stays fast;
//! `PROPTEST_CASES=100000 cargo test -p thriftworker --test fuzz_props` runs a
//! long one. The coverage-guided fuzzer for the same code is `fuzz/`
//! (`scripts/fuzz`).

use std::io::Cursor;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures::StreamExt;
use proptest::prelude::*;
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
    TFieldIdentifier, TInputProtocol, TMessageIdentifier, TMessageType, TOutputProtocol,
    TStructIdentifier, TType,
};
use thrift::{ApplicationError, ApplicationErrorKind};
use thriftworker::thrift::framed::{FrameDecoder, FrameError};
use thriftworker::thrift::{
    self as message, AppErrorKind, BadReply, Header, HeaderError, MessageType, Protocol, ReplyKind,
    MAX_NAME_LEN,
};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::{Decoder, FramedRead};

/// `cases` by default; `PROPTEST_CASES` from the environment wins.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ───────────────────────────── frames ─────────────────────────────

/// What the decoder must produce for a stream, computed the obvious way.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
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
fn model(input: &[u8], max: usize) -> Vec<Out> {
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

/// The announced length of the frame at the start of `buf`, if it is a
/// valid one (what the decoder may reserve for).
fn announced(buf: &[u8], max: usize) -> Option<usize> {
    let len = i32::from_be_bytes(buf.get(..4)?.try_into().ok()?);
    (len > 0 && len as usize <= max).then_some(len as usize)
}

/// The read buffer capacity the decoder can be made to reach: the frame it
/// waits for moves to a buffer of exactly `4 + len` bytes (`reserve` would
/// double, to up to 4 × (max + 4): see `read_buffer_stays_within_max_frame_size`
/// below, found by these properties), so no input makes it grow past
/// max + 4, beyond the initial read buffer and a little slack.
fn growth_bound(max: usize) -> usize {
    INITIAL_READ_CAPACITY.max(max + 4 + 64)
}

/// `FramedRead::with_capacity(.., 2048)` in `data/connection/mod.rs`.
const INITIAL_READ_CAPACITY: usize = 2048;

/// Feeds `input` to the decoder directly, `chunks` bytes at a time (cycled),
/// decoding everything possible after each chunk, as `FramedRead` does.
/// Checks that a call that returns no frame leaves room for the rest of
/// the announced frame, and that an error reserves nothing.
fn run_decoder(
    input: &[u8],
    max: usize,
    chunks: &[usize],
    initial_capacity: usize,
) -> Result<Vec<Out>, TestCaseError> {
    let mut d = FrameDecoder::new(max);
    let mut buf = BytesMut::with_capacity(initial_capacity);
    let mut out = Vec::new();
    let mut fed = 0;
    let mut chunk = chunks.iter().cycle();
    loop {
        loop {
            let before = buf.capacity();
            match d.decode(&mut buf) {
                Ok(Some(frame)) => out.push(Out::Frame(frame.to_vec())),
                Ok(None) => {
                    let after = buf.capacity();
                    if let Some(len) = announced(&buf, max) {
                        // The rest of the announced frame fits without
                        // another allocation...
                        prop_assert!(after >= len + 4, "capacity {after} < {len} + 4");
                    }
                    // (How far it may grow is checked through `FramedRead`
                    // below: here `extend_from_slice` grows it too.)
                    let _ = before;
                    break;
                }
                Err(e) => {
                    // An error for a bad length reserves nothing.
                    prop_assert!(buf.capacity() <= before);
                    out.push(Out::of_error(e));
                    return Ok(out);
                }
            }
        }
        if fed == input.len() {
            loop {
                match d.decode_eof(&mut buf) {
                    Ok(Some(frame)) => out.push(Out::Frame(frame.to_vec())),
                    Ok(None) => return Ok(out),
                    Err(e) => {
                        out.push(Out::of_error(e));
                        return Ok(out);
                    }
                }
            }
        }
        let n = (*chunk.next().unwrap()).clamp(1, input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
    }
}

/// An `AsyncRead` handing out a byte stream in chunks of the given sizes,
/// then end of stream: a client's TCP stream as the connection task sees it.
struct Chunked<'a> {
    input: &'a [u8],
    chunks: Vec<usize>,
    next: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let want = self.chunks[self.next % self.chunks.len()].max(1);
        self.next += 1;
        let n = want.min(buf.remaining()).min(self.input.len());
        buf.put_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(()))
    }
}

/// The decoder as the connection task runs it: `FramedRead` with a 2 KiB
/// initial buffer (`data/connection/mod.rs`), polled to the end of the stream, the
/// last `keep` frames held (calls in flight share the read buffer's
/// allocation). Returns the outputs and the largest read buffer capacity
/// seen.
fn run_framed(
    input: &[u8],
    max: usize,
    chunks: Vec<usize>,
    keep: usize,
) -> Result<(Vec<Out>, usize), TestCaseError> {
    let reader = Chunked {
        input,
        chunks,
        next: 0,
    };
    let mut frames =
        FramedRead::with_capacity(reader, FrameDecoder::new(max), INITIAL_READ_CAPACITY);
    let mut out = Vec::new();
    let mut peak = frames.read_buffer().capacity();
    let mut in_flight = std::collections::VecDeque::new();
    futures::executor::block_on(async {
        while let Some(item) = frames.next().await {
            peak = peak.max(frames.read_buffer().capacity());
            match item {
                Ok(frame) => {
                    out.push(Out::Frame(frame.to_vec()));
                    in_flight.push_back(frame);
                    if in_flight.len() > keep {
                        in_flight.pop_front();
                    }
                }
                Err(e) => {
                    out.push(Out::of_error(e));
                    break;
                }
            }
        }
    });
    Ok((out, peak))
}

/// A stream of frames as a client might send it: valid frames of random
/// payloads, with now and then a bad length or raw garbage.
#[derive(Debug, Clone)]
enum Segment {
    Frame(Vec<u8>),
    Length(i32),
    Raw(Vec<u8>),
}

fn segment(max: usize) -> impl Strategy<Value = Segment> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 1..=max.min(300)).prop_map(Segment::Frame),
        1 => prop_oneof![
            Just(0i32),
            any::<i32>(),
            Just(i32::MIN),
            Just(-1),
            Just(i32::MAX),
            Just(max as i32),
            Just(max as i32 + 1),
        ]
        .prop_map(Segment::Length),
        1 => proptest::collection::vec(any::<u8>(), 1..8).prop_map(Segment::Raw),
    ]
}

fn stream_bytes(segments: &[Segment]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segments {
        match s {
            Segment::Frame(p) => {
                out.extend_from_slice(&(p.len() as i32).to_be_bytes());
                out.extend_from_slice(p);
            }
            Segment::Length(n) => out.extend_from_slice(&n.to_be_bytes()),
            Segment::Raw(b) => out.extend_from_slice(b),
        }
    }
    out
}

/// max_frame_size: small ones, so that streams hit it, and the default.
fn max_frame_size() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..=64, 64usize..=4096, Just(16_384_000)]
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(prop_oneof![1usize..=8, 1usize..=64, 1usize..=5000], 1..12)
}

fn streams() -> impl Strategy<Value = (usize, Vec<u8>, Vec<usize>)> {
    max_frame_size().prop_flat_map(|max| {
        (
            Just(max),
            prop_oneof![
                // frames, bad lengths and garbage
                proptest::collection::vec(segment(max), 0..12).prop_map(|s| stream_bytes(&s)),
                // anything at all
                proptest::collection::vec(any::<u8>(), 0..256),
            ],
            chunks(),
        )
    })
}

proptest! {
    #![proptest_config(config(1_000))]

    /// Any byte stream, cut anywhere: the decoder yields exactly the
    /// reference framing (frames that concatenate back to the input prefix
    /// they came from, then the error for the first bad length, or
    /// `Truncated` for an unfinished frame at end of stream), without
    /// panicking and without growing its buffer past what the largest frame
    /// needs.
    #[test]
    fn frame_decoder_matches_the_reference(
        (max, input, chunks) in streams(),
        initial_capacity in prop_oneof![Just(0usize), Just(2048), 0usize..10_000],
    ) {
        let want = model(&input, max);
        let got = run_decoder(&input, max, &chunks, initial_capacity)?;
        prop_assert_eq!(&got, &want);
        // The frames, framed again, are the prefix of the input they came from.
        let mut again = Vec::new();
        for o in &got {
            if let Out::Frame(f) = o {
                again.extend_from_slice(&(f.len() as u32).to_be_bytes());
                again.extend_from_slice(f);
            }
        }
        prop_assert_eq!(&again[..], &input[..again.len()]);
    }

    /// The same through `FramedRead`, as `data/connection/mod.rs` drives it; its
    /// read buffer stays within the bound.
    #[test]
    fn framed_read_matches_the_reference((max, input, chunks) in streams(), keep in 0usize..4) {
        let want = model(&input, max);
        let (got, peak) = run_framed(&input, max, chunks, keep)?;
        prop_assert_eq!(got, want);
        prop_assert!(
            peak <= INITIAL_READ_CAPACITY.max(growth_bound(max)),
            "read buffer capacity {peak} for max_frame_size {max}"
        );
    }

    /// A valid framing of random payloads round-trips exactly, however the
    /// stream is cut.
    #[test]
    fn valid_framing_round_trips(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..600), 0..10),
        chunks in chunks(),
    ) {
        let max = 600;
        let input = stream_bytes(&payloads.iter().cloned().map(Segment::Frame).collect::<Vec<_>>());
        let got = run_decoder(&input, max, &chunks, 0)?;
        let want: Vec<Out> = payloads.into_iter().map(Out::Frame).collect();
        prop_assert_eq!(&got, &want);
        let (got, _) = run_framed(&input, max, chunks, 1)?;
        prop_assert_eq!(got, want);
    }

    /// A bad announced length is an error the moment its 4 bytes are
    /// there, whatever max_frame_size is, and reserves nothing.
    #[test]
    fn bad_lengths_are_errors(len in any::<i32>(), max in prop_oneof![1usize..=100_000, Just(16_384_000), Just(i32::MAX as usize)]) {
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        let cap = buf.capacity();
        let got = FrameDecoder::new(max).decode(&mut buf);
        match len {
            0 => prop_assert!(matches!(got, Err(FrameError::Empty))),
            n if n < 0 => prop_assert!(matches!(got, Err(FrameError::Negative(m)) if m == n)),
            n if n as usize > max => {
                let too_large = matches!(got, Err(FrameError::TooLarge { len, max: m }) if len == n as usize && m == max);
                prop_assert!(too_large);
                prop_assert_eq!(buf.capacity(), cap);
            }
            n => {
                prop_assert!(matches!(got, Ok(None)));
                prop_assert!(buf.capacity() >= n as usize + 4);
            }
        }
    }
}

/// A stream of complete frames with one unfinished frame at its end.
fn frames_then_partial(max: usize, lens: &[usize], last: (usize, usize)) -> Vec<u8> {
    let mut input = Vec::new();
    for &len in lens {
        assert!(len <= max);
        input.extend_from_slice(&(len as i32).to_be_bytes());
        input.extend(std::iter::repeat_n(0x5a, len));
    }
    input.extend_from_slice(&(last.0 as i32).to_be_bytes());
    input.extend(std::iter::repeat_n(0x5a, last.1));
    input
}

/// FINDING (not fixed here: `server/src` belongs to others). The property
/// the decoder is meant to have, "the read buffer never holds more than
/// max_frame_size + 4 bytes (plus a little) of capacity", does not hold:
/// `FrameDecoder::decode` calls `BytesMut::reserve(4 + len - buffered)`,
/// and `reserve` grows with amortized doubling (`max(2 × old allocation,
/// needed)`), so a client sending only valid frames of at most
/// max_frame_size bytes, read in ordinary TCP-sized chunks, grows the
/// connection's read buffer to
/// - 32,767,994 bytes (2.0 × (max + 4)) at the default max_frame_size of
///   16,384,000, with a full-size frame, a 10-byte frame and the start of
///   another full-size frame;
/// - 17,188 bytes (3.4 × (max + 4)) at max_frame_size 5000 with the frames
///   below (found by random search).
///
/// Only bytes actually received are written into the buffer, but a frame
/// split off it (the zero-copy path to the worker) keeps the whole
/// allocation alive. Fixed: the decoder moves the partial frame to a
/// buffer of exactly `4 + len` bytes.
#[test]
fn read_buffer_stays_within_max_frame_size() {
    let slack = 64;
    let max = 16_384_000;
    let input = frames_then_partial(max, &[max, 10], (max, 20));
    let (out, peak) = run_framed(&input, max, vec![64 * 1024], 0).unwrap();
    assert_eq!(out.len(), 3); // two frames, then Truncated at end of stream
    assert!(
        peak <= INITIAL_READ_CAPACITY.max(max + 4 + slack),
        "max_frame_size {max}: read buffer capacity reached {peak}"
    );
    let max = 5000;
    let input = frames_then_partial(max, &[3596, 4990, 4264, 4517, 4988], (4719, 2243));
    let (out, peak) = run_framed(&input, max, vec![9781], 0).unwrap();
    assert_eq!(out.len(), 6);
    assert!(
        peak <= INITIAL_READ_CAPACITY.max(max + 4 + slack),
        "max_frame_size {max}: read buffer capacity reached {peak}"
    );
}

/// The two reproducers above stay within the bound that does hold.
#[test]
fn read_buffer_growth_is_bounded() {
    let max = 16_384_000;
    let input = frames_then_partial(max, &[max, 10], (max, 20));
    let (_, peak) = run_framed(&input, max, vec![64 * 1024], 0).unwrap();
    assert!(peak <= growth_bound(max), "{peak}");
    let max = 5000;
    let input = frames_then_partial(max, &[3596, 4990, 4264, 4517, 4988], (4719, 2243));
    let (_, peak) = run_framed(&input, max, vec![9781], 0).unwrap();
    assert!(peak <= growth_bound(max), "{peak}");
}

// ──────────────────────────── messages ────────────────────────────

const PROTOCOLS: [Protocol; 3] = [
    Protocol::BinaryStrict,
    Protocol::BinaryLax,
    Protocol::Compact,
];

fn protocol() -> impl Strategy<Value = Protocol> {
    prop::sample::select(PROTOCOLS.to_vec())
}

fn message_type() -> impl Strategy<Value = MessageType> {
    prop::sample::select(vec![
        MessageType::Call,
        MessageType::Reply,
        MessageType::Exception,
        MessageType::Oneway,
    ])
}

fn thrift_type(t: MessageType) -> TMessageType {
    match t {
        MessageType::Call => TMessageType::Call,
        MessageType::Reply => TMessageType::Reply,
        MessageType::Exception => TMessageType::Exception,
        MessageType::Oneway => TMessageType::OneWay,
    }
}

fn from_thrift_type(t: TMessageType) -> MessageType {
    match t {
        TMessageType::Call => MessageType::Call,
        TMessageType::Reply => MessageType::Reply,
        TMessageType::Exception => MessageType::Exception,
        TMessageType::OneWay => MessageType::Oneway,
    }
}

/// Method names: IDL-like ones (multiplexed or not), any Unicode, and
/// lengths around the limit.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z_][A-Za-z0-9_]{0,24}(:[A-Za-z_][A-Za-z0-9_]{0,24})?",
        2 => any::<String>(),
        1 => Just(String::new()),
        1 => (MAX_NAME_LEN - 2..=MAX_NAME_LEN).prop_map(|n| "n".repeat(n)),
    ]
}

/// The longest prefix of `s` of at most `max` bytes.
fn utf8_prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Name bytes as `write_header` and `rename` take them (not always UTF-8).
fn name_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => name().prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

/// A Thrift value, for the fields of a message body.
#[derive(Debug, Clone)]
enum Value {
    Bool(bool),
    I32(i32),
    I64(i64),
    Double(f64),
    Str(String),
    List(Vec<i32>),
    Struct(Vec<(i16, Value)>),
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::I32),
        any::<i64>().prop_map(Value::I64),
        any::<f64>().prop_map(Value::Double),
        ".{0,20}".prop_map(Value::Str),
        proptest::collection::vec(any::<i32>(), 0..5).prop_map(Value::List),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(2, 12, 4, |inner| {
        proptest::collection::vec((field_id(), inner), 0..4).prop_map(Value::Struct)
    })
}

fn fields() -> impl Strategy<Value = Vec<(i16, Value)>> {
    proptest::collection::vec((field_id(), value()), 0..4)
}

/// Field ids, negative ones included, in a range where the `thrift` crate's
/// compact writer does not overflow an i16 computing the delta between two
/// of them (it panics in a debug build otherwise).
fn field_id() -> impl Strategy<Value = i16> {
    prop_oneof![0i16..=16, -8_000i16..=16_000]
}

fn ttype(v: &Value) -> TType {
    match v {
        Value::Bool(_) => TType::Bool,
        Value::I32(_) => TType::I32,
        Value::I64(_) => TType::I64,
        Value::Double(_) => TType::Double,
        Value::Str(_) => TType::String,
        Value::List(_) => TType::List,
        Value::Struct(_) => TType::Struct,
    }
}

fn write_value(o: &mut dyn TOutputProtocol, v: &Value) -> thrift::Result<()> {
    match v {
        Value::Bool(b) => o.write_bool(*b),
        Value::I32(n) => o.write_i32(*n),
        Value::I64(n) => o.write_i64(*n),
        Value::Double(d) => o.write_double(*d),
        Value::Str(s) => o.write_string(s),
        Value::List(l) => {
            o.write_list_begin(&thrift::protocol::TListIdentifier::new(
                TType::I32,
                l.len() as i32,
            ))?;
            for n in l {
                o.write_i32(*n)?;
            }
            o.write_list_end()
        }
        Value::Struct(f) => write_struct(o, f),
    }
}

fn write_struct(o: &mut dyn TOutputProtocol, fields: &[(i16, Value)]) -> thrift::Result<()> {
    o.write_struct_begin(&TStructIdentifier::new("s"))?;
    for (id, v) in fields {
        o.write_field_begin(&TFieldIdentifier::new("f", ttype(v), *id))?;
        write_value(o, v)?;
        o.write_field_end()?;
    }
    o.write_field_stop()?;
    o.write_struct_end()
}

fn output<'a>(p: Protocol, buf: &'a mut Vec<u8>) -> Box<dyn TOutputProtocol + 'a> {
    match p {
        Protocol::BinaryStrict => Box::new(TBinaryOutputProtocol::new(buf, true)),
        Protocol::BinaryLax => Box::new(TBinaryOutputProtocol::new(buf, false)),
        Protocol::Compact => Box::new(TCompactOutputProtocol::new(buf)),
    }
}

fn input<'a>(p: Protocol, cursor: &'a mut Cursor<&[u8]>) -> Box<dyn TInputProtocol + 'a> {
    match p {
        Protocol::BinaryStrict => Box::new(TBinaryInputProtocol::new(cursor, true)),
        Protocol::BinaryLax => Box::new(TBinaryInputProtocol::new(cursor, false)),
        Protocol::Compact => Box::new(TCompactInputProtocol::new(cursor)),
    }
}

/// A message as the `thrift` crate writes it: the header, then `body`
/// written by `body_fn` in the same protocol. Returns the bytes and the
/// header's length.
fn thrift_message(
    p: Protocol,
    name: &str,
    t: TMessageType,
    seqid: i32,
    body_fn: impl FnOnce(&mut dyn TOutputProtocol) -> thrift::Result<()>,
) -> (Vec<u8>, usize) {
    let mut buf = Vec::new();
    output(p, &mut buf)
        .write_message_begin(&TMessageIdentifier::new(name, t, seqid))
        .unwrap();
    let header_len = buf.len();
    {
        let mut o = output(p, &mut buf);
        body_fn(&mut *o).unwrap();
        o.write_message_end().unwrap();
        o.flush().unwrap();
    }
    (buf, header_len)
}

/// What the `thrift` crate reads as the header of `m`, if it reads one.
fn thrift_header(p: Protocol, m: &[u8]) -> Option<TMessageIdentifier> {
    let mut cursor = Cursor::new(m);
    let header = input(p, &mut cursor).read_message_begin().ok();
    header
}

/// Everything a parsed header promises about the message it came from.
fn check_header(m: &[u8], h: &Header, p: Protocol) -> Result<(), TestCaseError> {
    prop_assert_eq!(h.protocol, p);
    prop_assert!(h.name_start <= h.name_end, "{h:?}");
    prop_assert!(h.name_end <= h.len, "{h:?}");
    prop_assert!(h.len <= m.len(), "{h:?} for {} bytes", m.len());
    prop_assert!(h.name_end - h.name_start <= MAX_NAME_LEN);
    let _ = h.name(m);
    Ok(())
}

/// `rename` gives a message that parses to the new name with everything
/// else unchanged, and returns the new name's range in it.
fn check_rename(m: &[u8], h: &Header, new_name: &[u8]) -> Result<(), TestCaseError> {
    let (r, range) = message::rename(m, h, new_name);
    prop_assert_eq!(message::detect(&r), Ok(h.protocol));
    let h2 = message::parse(&r, h.protocol).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    prop_assert_eq!(h2.name(&r), new_name);
    prop_assert_eq!(range, h2.name_start..h2.name_end);
    prop_assert_eq!(h2.message_type, h.message_type);
    prop_assert_eq!(h2.seqid, h.seqid);
    prop_assert_eq!(&r[h2.len..], &m[h.len..]);
    prop_assert_eq!(r.len(), h2.len + (m.len() - h.len));
    Ok(())
}

/// Does a reply in `got` answer a call in `call`?
fn fits(call: Protocol, got: Protocol) -> bool {
    got == call || (call == Protocol::BinaryLax && got == Protocol::BinaryStrict)
}

/// A result struct as a generated processor writes it.
#[derive(Debug, Clone)]
enum ReplyBody {
    /// A void method: an empty struct.
    Void,
    /// Field 0: the return value.
    Success(Value),
    /// Field ≥ 1: an exception the IDL declares (a struct).
    Declared(i16, Vec<(i16, Value)>),
    /// An EXCEPTION message holding a TApplicationException.
    AppException(i32, String),
}

fn reply_body() -> impl Strategy<Value = ReplyBody> {
    prop_oneof![
        Just(ReplyBody::Void),
        value().prop_map(ReplyBody::Success),
        (prop_oneof![1i16..=16, 1i16..=i16::MAX], fields())
            .prop_map(|(id, f)| ReplyBody::Declared(id, f)),
        (0..=10i32, ".{0,40}").prop_map(|(k, m)| ReplyBody::AppException(k, m)),
    ]
}

/// A reply the `thrift` crate writes for a call `name`/`seqid` in `p`.
fn thrift_reply(
    p: Protocol,
    name: &str,
    seqid: i32,
    body: &ReplyBody,
) -> (Vec<u8>, usize, ReplyKind) {
    match body {
        ReplyBody::AppException(kind, text) => {
            let e = ApplicationError::new(
                ApplicationErrorKind::try_from(*kind).unwrap_or(ApplicationErrorKind::Unknown),
                text.clone(),
            );
            let (m, h) = thrift_message(p, name, TMessageType::Exception, seqid, |o| {
                thrift::Error::write_application_error_to_out_protocol(&e, o)
            });
            (m, h, ReplyKind::AppException)
        }
        ReplyBody::Void => {
            let (m, h) = thrift_message(p, name, TMessageType::Reply, seqid, |o| {
                write_struct(o, &[])
            });
            (m, h, ReplyKind::Success)
        }
        ReplyBody::Success(v) => {
            let f = [(0, v.clone())];
            let (m, h) =
                thrift_message(p, name, TMessageType::Reply, seqid, |o| write_struct(o, &f));
            (m, h, ReplyKind::Success)
        }
        ReplyBody::Declared(id, inner) => {
            let f = [(*id, Value::Struct(inner.clone()))];
            let (m, h) =
                thrift_message(p, name, TMessageType::Reply, seqid, |o| write_struct(o, &f));
            (m, h, ReplyKind::DeclaredException)
        }
    }
}

/// Bytes that reach the header parser: anything, plausible header
/// prefixes with anything after them, and thrift-encoded messages with
/// some bytes changed or cut.
fn untrusted_message() -> impl Strategy<Value = Vec<u8>> {
    let prefixed = (
        prop_oneof![
            (0u8..=6).prop_map(|t| vec![0x80, 0x01, 0x00, t]),
            (0u8..=6).prop_map(|t| vec![0x82, (t << 5) | 1]),
            any::<u8>().prop_map(|b| vec![0x82, b]),
            (0u8..=0x20).prop_map(|n| vec![0, 0, 0, n]),
            (0u8..=0x20).prop_map(|n| vec![0x80, 0x01, 0x00, 0x01, 0, 0, 0, n]),
            Just(vec![0x80, 0x01, 0x00, 0x01, 0x00, 0x00, 0x10, 0x00]),
            Just(vec![0x80, 0x01, 0x00, 0x01, 0x00, 0x00, 0x10, 0x01]),
        ],
        proptest::collection::vec(any::<u8>(), 0..48),
    )
        .prop_map(|(mut a, b)| {
            a.extend(b);
            a
        });
    let mutated = (
        protocol(),
        name(),
        message_type(),
        any::<i32>(),
        fields(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(p, name, t, seqid, f, edits, cut, do_cut)| {
            let (mut m, _) =
                thrift_message(p, &name, thrift_type(t), seqid, |o| write_struct(o, &f));
            for (at, b) in edits {
                let i = at.index(m.len());
                m[i] = b;
            }
            if do_cut {
                m.truncate(cut.index(m.len() + 1));
            }
            m
        });
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..64),
        3 => prefixed,
        3 => mutated,
    ]
}

fn app_error_kind() -> impl Strategy<Value = AppErrorKind> {
    prop::sample::select(vec![
        AppErrorKind::UnknownMethod,
        AppErrorKind::InvalidMessageType,
        AppErrorKind::InternalError,
        AppErrorKind::InvalidTransform,
        AppErrorKind::InvalidProtocol,
    ])
}

proptest! {
    #![proptest_config(config(1_000))]

    /// Arbitrary bytes: every function is an error or a consistent answer,
    /// never a panic. A parsed header's ranges lie in the message, the
    /// `thrift` crate reads the same header from it, and `rename` of it
    /// re-parses to the new name with the rest unchanged.
    #[test]
    fn untrusted_bytes_never_panic(
        m in untrusted_message(),
        new_name in name_bytes(),
        call in protocol(),
        call_name in name_bytes(),
        call_seqid in any::<i32>(),
        max in prop_oneof![0usize..100, Just(usize::MAX)],
    ) {
        let detected = message::detect(&m);
        match m.first() {
            None => prop_assert_eq!(detected, Err(HeaderError::Truncated)),
            Some(0x80) => prop_assert_eq!(detected, Ok(Protocol::BinaryStrict)),
            Some(0x82) => prop_assert_eq!(detected, Ok(Protocol::Compact)),
            Some(0) => prop_assert_eq!(detected, Ok(Protocol::BinaryLax)),
            Some(_) => prop_assert!(matches!(detected, Err(HeaderError::BadVersion(_)))),
        }
        for p in PROTOCOLS {
            let Ok(h) = message::parse(&m, p) else { continue };
            check_header(&m, &h, p)?;
            if new_name.len() <= MAX_NAME_LEN {
                check_rename(&m, &h, &new_name)?;
            }
            // Differential: the thrift crate reads the same header (it
            // insists on UTF-8 names; the data plane treats them as bytes).
            if let Ok(name) = std::str::from_utf8(h.name(&m)) {
                let t = thrift_header(p, &m);
                prop_assert!(t.is_some(), "thrift cannot read a header parse() accepted: {h:?}");
                let t = t.unwrap();
                prop_assert_eq!(&t.name, name);
                prop_assert_eq!(t.sequence_number, h.seqid);
                prop_assert_eq!(from_thrift_type(t.message_type), h.message_type);
            }
        }
        let kind = message::reply_kind(&m);
        match message::check_reply(&m, call, &call_name, call_seqid, max) {
            Ok(k) => {
                // Accepted: it really does answer that call.
                prop_assert_eq!(k, kind);
                prop_assert!(m.len() <= max);
                let got = message::detect(&m).unwrap();
                prop_assert!(fits(call, got));
                let h = message::parse(&m, got).unwrap();
                prop_assert_eq!(h.name(&m), &call_name[..]);
                prop_assert_eq!(h.seqid, call_seqid);
                prop_assert!(matches!(h.message_type, MessageType::Reply | MessageType::Exception));
            }
            Err(BadReply::TooLarge(n)) => prop_assert!(n == m.len() && n > max),
            Err(_) => {}
        }
    }

    /// Messages the `thrift` crate writes, in each protocol, with any name,
    /// seqid and type: `detect` and `parse` return exactly what was written,
    /// and the header ends where the thrift crate's header ends.
    #[test]
    fn parses_what_thrift_writes(
        p in protocol(),
        name in name(),
        t in message_type(),
        seqid in any::<i32>(),
        body in fields(),
    ) {
        let (m, header_len) = thrift_message(p, &name, thrift_type(t), seqid, |o| write_struct(o, &body));
        prop_assert_eq!(message::detect(&m), Ok(p));
        let parsed = message::parse(&m, p);
        if name.len() > MAX_NAME_LEN {
            prop_assert_eq!(parsed, Err(HeaderError::BadNameLength(name.len() as i64)));
            return Ok(());
        }
        let h = parsed.map_err(|e| TestCaseError::fail(format!("{e} for {p:?} {name:?}")))?;
        check_header(&m, &h, p)?;
        prop_assert_eq!(h.name(&m), name.as_bytes());
        prop_assert_eq!(h.seqid, seqid);
        prop_assert_eq!(h.message_type, t);
        prop_assert_eq!(h.len, header_len);
        // The same header written by write_header is byte for byte thrift's.
        let mut ours = BytesMut::new();
        message::write_header(&mut ours, p, name.as_bytes(), t, seqid);
        prop_assert_eq!(&ours[..], &m[..header_len]);
    }

    /// `write_header` with any name bytes: `parse` reads back exactly that.
    #[test]
    fn write_header_round_trips(
        p in protocol(),
        name in name_bytes(),
        t in message_type(),
        seqid in any::<i32>(),
        body in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut m = BytesMut::new();
        message::write_header(&mut m, p, &name, t, seqid);
        let header_len = m.len();
        m.extend_from_slice(&body);
        prop_assert_eq!(message::detect(&m), Ok(p));
        let h = message::parse(&m, p).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        check_header(&m, &h, p)?;
        prop_assert_eq!(h.name(&m), &name[..]);
        prop_assert_eq!(h.seqid, seqid);
        prop_assert_eq!(h.message_type, t);
        prop_assert_eq!(h.len, header_len);
    }

    /// `rename` of a thrift-written message: the result re-parses to the new
    /// name, and the thrift crate reads the whole renamed message, its
    /// arguments unchanged.
    #[test]
    fn rename_keeps_the_message(
        p in protocol(),
        service in "[A-Za-z][A-Za-z0-9_]{0,16}",
        method in name(),
        t in message_type(),
        seqid in any::<i32>(),
        body in fields(),
    ) {
        // Long names are cut so that the multiplexed one just fits.
        let method = utf8_prefix(&method, MAX_NAME_LEN - service.len() - 1).to_string();
        let full = format!("{service}:{method}");
        let (m, _) = thrift_message(p, &full, thrift_type(t), seqid, |o| write_struct(o, &body));
        let h = message::parse(&m, p).unwrap();
        check_rename(&m, &h, method.as_bytes())?;
        let (r, _) = message::rename(&m, &h, method.as_bytes());
        // What a processor for the plain service sees.
        let (want, _) = thrift_message(p, &method, thrift_type(t), seqid, |o| write_struct(o, &body));
        prop_assert_eq!(&r[..], &want[..]);
        let mut cursor = Cursor::new(&r[..]);
        let mut i = input(p, &mut cursor);
        let id = i.read_message_begin().unwrap();
        prop_assert_eq!(&id.name, &method);
        prop_assert_eq!(id.sequence_number, seqid);
        i.skip(TType::Struct).unwrap();
        i.read_message_end().unwrap();
        drop(i);
        prop_assert_eq!(cursor.position() as usize, r.len());
    }

    /// `application_exception` writes what the thrift crate decodes as a
    /// TApplicationException with that name, seqid, kind and text, and
    /// nothing after it; `check_reply` and `reply_kind` take it as one.
    #[test]
    fn application_exception_decodes(
        p in protocol(),
        name in name(),
        seqid in any::<i32>(),
        kind in app_error_kind(),
        text in prop_oneof![".{0,80}", any::<String>()],
    ) {
        let m = message::application_exception(p, name.as_bytes(), seqid, kind, &text);
        let mut cursor = Cursor::new(&m[..]);
        let mut i = input(p, &mut cursor);
        let id = i.read_message_begin().unwrap();
        prop_assert_eq!(&id.name, &name);
        prop_assert_eq!(id.sequence_number, seqid);
        prop_assert_eq!(id.message_type, TMessageType::Exception);
        let e = thrift::Error::read_application_error_from_in_protocol(&mut *i).unwrap();
        i.read_message_end().unwrap();
        drop(i);
        prop_assert_eq!(cursor.position() as usize, m.len());
        let want = match kind {
            AppErrorKind::UnknownMethod => ApplicationErrorKind::UnknownMethod,
            AppErrorKind::InvalidMessageType => ApplicationErrorKind::InvalidMessageType,
            AppErrorKind::InternalError => ApplicationErrorKind::InternalError,
            AppErrorKind::InvalidTransform => ApplicationErrorKind::InvalidTransform,
            AppErrorKind::InvalidProtocol => ApplicationErrorKind::InvalidProtocol,
        };
        prop_assert_eq!(e.kind, want);
        prop_assert_eq!(&e.message, &text);
        if name.len() <= MAX_NAME_LEN {
            prop_assert_eq!(message::reply_kind(&m), ReplyKind::AppException);
            prop_assert_eq!(
                message::check_reply(&m, p, name.as_bytes(), seqid, m.len()),
                Ok(ReplyKind::AppException)
            );
        }
    }

    /// `check_reply` accepts each reply the thrift crate writes for a call
    /// (same protocol family, name, seqid, within max_len), classifies it,
    /// and rejects it, with the right reason, once any of those is changed.
    #[test]
    fn check_reply_accepts_real_replies_and_rejects_mutants(
        call in protocol(),
        strict_for_lax in any::<bool>(),
        name in "[A-Za-z_][A-Za-z0-9_]{0,24}",
        other_name in "[A-Za-z_][A-Za-z0-9_]{0,24}",
        seqid in any::<i32>(),
        other_seqid in any::<i32>(),
        body in reply_body(),
        slack in 0usize..100,
        cut in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let reply_protocol = if call == Protocol::BinaryLax && strict_for_lax {
            Protocol::BinaryStrict
        } else {
            call
        };
        let (m, header_len, kind) = thrift_reply(reply_protocol, &name, seqid, &body);
        let n = name.as_bytes();
        prop_assert_eq!(message::reply_kind(&m), kind);
        prop_assert_eq!(message::check_reply(&m, call, n, seqid, m.len() + slack), Ok(kind));
        if !m.is_empty() {
            prop_assert_eq!(
                message::check_reply(&m, call, n, seqid, m.len() - 1 - slack.min(m.len() - 1)),
                Err(BadReply::TooLarge(m.len()))
            );
        }
        // Another seqid, another name.
        if other_seqid != seqid {
            let (m2, _, _) = thrift_reply(reply_protocol, &name, other_seqid, &body);
            prop_assert_eq!(
                message::check_reply(&m2, call, n, seqid, usize::MAX),
                Err(BadReply::Seqid { got: other_seqid, want: seqid })
            );
        }
        if other_name != name {
            let (m2, _, _) = thrift_reply(reply_protocol, &other_name, seqid, &body);
            prop_assert_eq!(message::check_reply(&m2, call, n, seqid, usize::MAX), Err(BadReply::Name));
        }
        // A request instead of a reply.
        for t in [TMessageType::Call, TMessageType::OneWay] {
            let (m2, _) = thrift_message(reply_protocol, &name, t, seqid, |o| write_struct(o, &[]));
            prop_assert_eq!(
                message::check_reply(&m2, call, n, seqid, usize::MAX),
                Err(BadReply::Type(from_thrift_type(t)))
            );
        }
        // Another protocol family.
        for other in PROTOCOLS {
            let (m2, _, _) = thrift_reply(other, &name, seqid, &body);
            let got = message::check_reply(&m2, call, n, seqid, usize::MAX);
            if fits(call, other) {
                prop_assert_eq!(got, Ok(kind));
            } else {
                prop_assert_eq!(
                    got,
                    Err(BadReply::Protocol { got: other.as_str(), want: call.as_str() })
                );
            }
        }
        // Cut before the result struct's first byte: nothing to classify.
        // (An EXCEPTION cut right after its header is accepted: see
        // `check_reply_rejects_an_exception_without_body`, a finding.)
        let short = &m[..cut.index(header_len + 1)];
        if short.len() < header_len || kind != ReplyKind::AppException {
            prop_assert!(message::check_reply(short, call, n, seqid, usize::MAX).is_err());
        }
        // Any bytes changed: an error, or still an answer to this call.
        let mut m2 = m.clone();
        for (at, b) in &edits {
            let i = at.index(m2.len());
            m2[i] = *b;
        }
        if let Ok(k) = message::check_reply(&m2, call, n, seqid, usize::MAX) {
            prop_assert_eq!(k, message::reply_kind(&m2));
            let got = message::detect(&m2).unwrap();
            prop_assert!(fits(call, got));
            let h = message::parse(&m2, got).unwrap();
            prop_assert_eq!(h.name(&m2), n);
            prop_assert_eq!(h.seqid, seqid);
        }
    }
}

/// FINDING (not fixed here: `server/src` belongs to others). `check_reply`
/// rejects a REPLY that ends right after its header (`BadReply::Body`), but
/// accepts an EXCEPTION that ends right after its header, with no
/// TApplicationException struct at all: `kind_of` returns `AppException`
/// from the message type alone. The client then gets a frame it cannot
/// decode. (By design neither check decodes values: a REPLY cut after its
/// first field header passes too.)
#[test]
fn check_reply_rejects_an_exception_without_body() {
    for p in PROTOCOLS {
        let mut m = BytesMut::new();
        message::write_header(&mut m, p, b"m", MessageType::Exception, 7);
        let got = message::check_reply(&m, p, b"m", 7, usize::MAX);
        assert!(got.is_err(), "{p:?}: {:02x?} accepted as {got:?}", &m[..]);
    }
}

/// FINDING (minor, not fixed here). In the compact protocol a field header
/// byte whose type nibble is 0 is STOP, whatever its high nibble: that is
/// how the `thrift` crate reads it. `reply_kind`/`check_reply` read such a
/// byte (e.g. 0x10) as field 1 and classify the REPLY as a declared
/// exception, while the client's thrift library reads an empty result (a
/// void success). Only the outcome counters are affected; Thrift's own
/// writers always write STOP as 0x00.
#[test]
fn reply_kind_reads_compact_stop_as_thrift_does() {
    let mut m = BytesMut::new();
    message::write_header(&mut m, Protocol::Compact, b"m", MessageType::Reply, 1);
    let header_len = m.len();
    m.extend_from_slice(&[0x10]);
    let mut cursor = Cursor::new(&m[header_len..]);
    let field = TCompactInputProtocol::new(&mut cursor)
        .read_field_begin()
        .unwrap();
    assert_eq!(field.field_type, TType::Stop);
    assert_eq!(
        message::reply_kind(&m),
        ReplyKind::Success,
        "{:02x?}",
        &m[..]
    );
}

// ──────────────────── the unframed skip parser and THeader ────────────────────

use thrift::protocol::{TListIdentifier, TMapIdentifier};
use thriftworker::thrift::header::{self, HeaderProtocol, HeaderReply};
use thriftworker::thrift::unframed::{SkipError, Skipper};

/// A Thrift value of any type, nested; lists and maps repeat one template
/// value so their elements share a type.
#[derive(Debug, Clone)]
enum AnyValue {
    Bool(bool),
    Byte(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    Double(f64),
    Str(Vec<u8>),
    Struct(Vec<(i16, AnyValue)>),
    List(Box<AnyValue>, usize),
    Map(Box<AnyValue>, Box<AnyValue>, usize),
}

impl AnyValue {
    fn ttype(&self) -> TType {
        match self {
            AnyValue::Bool(_) => TType::Bool,
            AnyValue::Byte(_) => TType::I08,
            AnyValue::I16(_) => TType::I16,
            AnyValue::I32(_) => TType::I32,
            AnyValue::I64(_) => TType::I64,
            AnyValue::Double(_) => TType::Double,
            AnyValue::Str(_) => TType::String,
            AnyValue::Struct(_) => TType::Struct,
            AnyValue::List(..) => TType::List,
            AnyValue::Map(..) => TType::Map,
        }
    }

    fn write(&self, p: &mut dyn TOutputProtocol) -> thrift::Result<()> {
        match self {
            AnyValue::Bool(v) => p.write_bool(*v),
            AnyValue::Byte(v) => p.write_i8(*v),
            AnyValue::I16(v) => p.write_i16(*v),
            AnyValue::I32(v) => p.write_i32(*v),
            AnyValue::I64(v) => p.write_i64(*v),
            AnyValue::Double(v) => p.write_double(*v),
            AnyValue::Str(v) => p.write_bytes(v),
            AnyValue::Struct(fields) => {
                p.write_struct_begin(&TStructIdentifier::new("s"))?;
                for (id, v) in fields {
                    p.write_field_begin(&TFieldIdentifier::new("f", v.ttype(), *id))?;
                    v.write(p)?;
                    p.write_field_end()?;
                }
                p.write_field_stop()?;
                p.write_struct_end()
            }
            AnyValue::List(elem, n) => {
                p.write_list_begin(&TListIdentifier::new(elem.ttype(), *n as i32))?;
                for _ in 0..*n {
                    elem.write(p)?;
                }
                p.write_list_end()
            }
            AnyValue::Map(k, v, n) => {
                p.write_map_begin(&TMapIdentifier::new(k.ttype(), v.ttype(), *n as i32))?;
                for _ in 0..*n {
                    k.write(p)?;
                    v.write(p)?;
                }
                p.write_map_end()
            }
        }
    }
}

fn any_value() -> impl Strategy<Value = AnyValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AnyValue::Bool),
        any::<i8>().prop_map(AnyValue::Byte),
        any::<i16>().prop_map(AnyValue::I16),
        any::<i32>().prop_map(AnyValue::I32),
        any::<i64>().prop_map(AnyValue::I64),
        any::<f64>().prop_map(AnyValue::Double),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(AnyValue::Str),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec((1i16..400, inner.clone()), 0..6).prop_map(AnyValue::Struct),
            (inner.clone(), 0usize..20).prop_map(|(v, n)| AnyValue::List(Box::new(v), n)),
            (inner.clone(), inner, 0usize..4).prop_map(|(k, v, n)| AnyValue::Map(
                Box::new(k),
                Box::new(v),
                n
            )),
        ]
    })
}

/// A CALL whose arguments struct holds `fields`, written by the `thrift` crate.
fn call_with(protocol: Protocol, fields: Vec<(i16, AnyValue)>) -> Vec<u8> {
    let mut buf: Vec<u8> = Vec::new();
    {
        let mut p: Box<dyn TOutputProtocol + '_> = match protocol {
            Protocol::BinaryStrict => Box::new(TBinaryOutputProtocol::new(&mut buf, true)),
            Protocol::BinaryLax => Box::new(TBinaryOutputProtocol::new(&mut buf, false)),
            Protocol::Compact => Box::new(TCompactOutputProtocol::new(&mut buf)),
        };
        p.write_message_begin(&TMessageIdentifier::new("method", TMessageType::Call, 3))
            .unwrap();
        AnyValue::Struct(fields).write(&mut *p).unwrap();
        p.write_message_end().unwrap();
        p.flush().unwrap();
    }
    buf
}

/// Feeds growing prefixes of `input` (cut at `chunks`) to one skipper, as
/// a connection does; the first result that is not "need more".
fn skip_chunked(input: &[u8], max: usize, chunks: &[usize]) -> Result<Option<usize>, SkipError> {
    let mut s = Skipper::new();
    let mut end = 0;
    for c in chunks.iter().cycle() {
        end = (end + c).min(input.len());
        match s.advance(&input[..end], max) {
            Ok(None) if end < input.len() => {}
            other => return other,
        }
    }
    unreachable!("chunks are never empty")
}

proptest! {
    #![proptest_config(config(256))]

    /// The skipper finds exactly the end of every message the `thrift`
    /// crate writes, in each protocol, however its bytes arrive, with the
    /// next message already behind it.
    #[test]
    fn skipper_finds_the_end_of_every_valid_message(
        p in protocol(),
        fields in proptest::collection::vec((1i16..400, any_value()), 0..6),
        chunks in chunks(),
    ) {
        let m = call_with(p, fields);
        let mut two = m.clone();
        two.extend_from_slice(&m);
        prop_assert_eq!(skip_chunked(&two, 1 << 24, &chunks), Ok(Some(m.len())));
        prop_assert_eq!(Skipper::new().advance(&m, 1 << 24), Ok(Some(m.len())));
        // One byte short of the whole: never an end.
        prop_assert_eq!(Skipper::new().advance(&m[..m.len() - 1], 1 << 24), Ok(None));
        // A max below the message's size: refused, never an end.
        prop_assert_eq!(
            Skipper::new().advance(&m, m.len() - 1),
            Err(SkipError::TooLarge { max: m.len() - 1 })
        );
    }

    /// Any bytes: no panic, an end never beyond the input or max, and the
    /// same answer however the bytes arrive (the kind of error may differ
    /// only when the size limit is involved).
    #[test]
    fn skipper_on_any_bytes(
        prefix in prop_oneof![Just(vec![]), Just(vec![0x80, 1, 0, 1, 0, 0, 0, 1, b'm', 0, 0, 0, 1]), Just(vec![0x82, 0x21, 1, 1, b'm'])],
        tail in proptest::collection::vec(any::<u8>(), 0..300),
        max in prop_oneof![1usize..400, Just(1 << 20)],
        chunks in chunks(),
    ) {
        let input = [prefix, tail].concat();
        let whole = Skipper::new().advance(&input, max);
        if let Ok(Some(n)) = whole {
            prop_assert!(n <= input.len() && n <= max);
        }
        let chunked = skip_chunked(&input, max, &chunks);
        match (&whole, &chunked) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => {
                // The same kind of error (a bad version word's value in
                // it may show fewer bytes when fewer had arrived).
                if *a != (SkipError::TooLarge { max }) && *b != (SkipError::TooLarge { max }) {
                    prop_assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b), "{:?} vs {:?}", a, b);
                }
            }
            _ => prop_assert!(false, "whole {:?} but chunked {:?}", whole, chunked),
        }
    }

    /// THeader frames round-trip with any headers, payload and zlib.
    #[test]
    fn theader_round_trips(
        seq_id in any::<u32>(),
        flags in any::<u16>(),
        compact in any::<bool>(),
        zlib in any::<bool>(),
        headers in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..20), proptest::collection::vec(any::<u8>(), 0..200)), 0..10),
        payload in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        let reply = HeaderReply {
            seq_id,
            flags,
            protocol: if compact { HeaderProtocol::Compact } else { HeaderProtocol::Binary },
            zlib,
        };
        let pairs: Vec<(&[u8], &[u8])> = headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let mut out = BytesMut::new();
        header::encode(&payload, &reply, &pairs, &mut out);
        let frame = out.split_off(4).freeze();
        prop_assert_eq!(u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize, frame.len());
        let f = header::decode(frame, 1 << 20).unwrap();
        prop_assert_eq!(f.reply, reply);
        prop_assert_eq!(&f.payload[..], &payload[..]);
        let got: Vec<(Vec<u8>, Vec<u8>)> = f.headers.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        prop_assert_eq!(got, headers);
    }

    /// Any bytes after the magic: an error or a frame, never a panic, and
    /// never a payload beyond max.
    #[test]
    fn theader_decode_on_any_bytes(
        tail in proptest::collection::vec(any::<u8>(), 0..400),
        zlib_payload in any::<bool>(),
        max in 1usize..5000,
    ) {
        let mut frame = vec![0x0f, 0xff];
        frame.extend_from_slice(&tail);
        if zlib_payload && frame.len() > 12 {
            // Steer toward the zlib path: protocol 0, one transform, zlib.
            frame[10] = 0;
            frame[11] = 1;
            frame[12] = 1;
        }
        if let Ok(f) = header::decode(bytes::Bytes::from(frame), max) {
            prop_assert!(f.payload.len() <= max || !f.reply.zlib);
        }
    }
}
