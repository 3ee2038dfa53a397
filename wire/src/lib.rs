//! The worker protocol spoken between the data plane (ZeroMQ ROUTER) and its
//! workers (ZeroMQ DEALER), versions 1 to 3 (2 adds call headers: a
//! trailing frame on REQUEST and REPLY; 3 adds CREDIT, so a worker attached
//! to several data planes can move its credit between them; both are
//! negotiated by READY). `docs/worker-protocol.md` is the
//! normative description; this crate is its only implementation in Rust, used
//! by both sides so they cannot drift apart.
//!
//! Messages are lists of frames (`Bytes`), independent of any ZeroMQ crate:
//! the transport layer wraps them in its own message type. Encoding never
//! copies a Thrift payload; decoding only slices the frames it was given.
#![forbid(unsafe_code)]

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The newest protocol version, carried in byte 0 of a header frame.
/// Version 2 is version 1 plus call headers: a worker that sends READY as
/// version 2 is acknowledged as version 2 by a data plane that speaks it,
/// and is then sent each call's headers (a trailing frame of REQUEST), and
/// may send reply headers (a trailing frame of REPLY). HEARTBEAT and
/// DISCONNECT are the same in both and go as version 1.
/// Version 3 is version 2 plus CREDIT: a worker changes its credit at a
/// data plane without registering again, and the data plane confirms.
pub const VERSION: u8 = 3;
/// The first version (no headers); every peer speaks it.
pub const VERSION_1: u8 = 1;
/// Call headers (trailing frames on REQUEST and REPLY).
pub const VERSION_2: u8 = 2;
/// CREDIT, both ways.
pub const VERSION_3: u8 = 3;

/// At most this many headers in a headers frame.
pub const MAX_HEADERS: usize = 128;

/// Largest credit a worker may announce.
pub const MAX_CREDIT: u32 = 65_536;

const CMD_READY: u8 = 0x01;
const CMD_REQUEST: u8 = 0x02;
const CMD_REPLY: u8 = 0x03;
const CMD_HEARTBEAT: u8 = 0x04;
const CMD_DISCONNECT: u8 = 0x05;
const CMD_CREDIT: u8 = 0x06;

static HDR_READY: [[u8; 2]; 3] = [[1, CMD_READY], [2, CMD_READY], [3, CMD_READY]];
static HDR_REQUEST: [u8; 2] = [VERSION_1, CMD_REQUEST];
static HDR_REQUEST_V2: [u8; 2] = [2, CMD_REQUEST];
static HDR_REPLY: [u8; 2] = [VERSION_1, CMD_REPLY];
static HDR_REPLY_V2: [u8; 2] = [2, CMD_REPLY];
static HDR_HEARTBEAT: [u8; 2] = [VERSION_1, CMD_HEARTBEAT];
static HDR_DISCONNECT: [u8; 2] = [VERSION_1, CMD_DISCONNECT];
static HDR_CREDIT: [u8; 2] = [VERSION_3, CMD_CREDIT];

/// The READY header of `version` (clamped to the versions this side speaks).
fn ready_header(version: u8) -> Bytes {
    let i = usize::from(version.clamp(VERSION_1, VERSION) - 1);
    Bytes::from_static(&HDR_READY[i])
}
/// How a Thrift message is encoded. The worker must answer in the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TBinaryProtocol with the strict version header (the default of most clients).
    BinaryStrict = 0,
    /// TBinaryProtocol without the version header ("lax", old clients).
    BinaryLax = 1,
    /// TCompactProtocol.
    Compact = 2,
}

impl Protocol {
    pub fn from_u8(v: u8) -> Option<Protocol> {
        match v {
            0 => Some(Protocol::BinaryStrict),
            1 => Some(Protocol::BinaryLax),
            2 => Some(Protocol::Compact),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::BinaryStrict => "binary",
            Protocol::BinaryLax => "binary-lax",
            Protocol::Compact => "compact",
        }
    }
}

/// Messages a worker sends to the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerMsg {
    Ready {
        /// The newest version the worker speaks (1 to 3).
        version: u8,
        credit: u32,
        token: Bytes,
        services: Vec<Bytes>,
    },
    Reply {
        id: u64,
        message: Bytes,
        /// Reply headers (a [`encode_headers`] frame; empty: none). Sent
        /// as a version-2 REPLY, so only to a data plane that acknowledged
        /// version 2.
        headers: Bytes,
    },
    Heartbeat,
    Disconnect {
        reason: Bytes,
    },
    /// Version 3: the worker's credit at this data plane is now `credit`
    /// (1..=[`MAX_CREDIT`]), in place of READY's.
    Credit {
        credit: u32,
    },
}

/// Messages the data plane sends to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    ReadyAck {
        /// The version both sides speak from now on (1 to 3).
        version: u8,
        heartbeat_interval_ms: u32,
        worker_id: Bytes,
    },
    Request(Request),
    Heartbeat,
    Disconnect {
        reason: Bytes,
    },
    /// Version 3: the answer to a worker's CREDIT, sent once it applies.
    /// Every REQUEST sent after it respects `credit`; every one sent before
    /// it reached the worker before it (one connection keeps order).
    CreditAck {
        credit: u32,
    },
}

/// One call handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    /// Milliseconds left before the data plane answers the call itself.
    pub timeout_ms: u32,
    pub protocol: Protocol,
    pub service: Bytes,
    pub message: Bytes,
    /// The call's headers (a [`encode_headers`] frame; empty: none). Sent
    /// as a version-2 REQUEST, so only to a worker registered as version 2.
    pub headers: Bytes,
}

/// Why a list of frames is not a valid message. The text says which frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty message: expected a 2-byte header frame")]
    Empty,
    #[error("header frame is {0} bytes, expected 2 (version, command)")]
    BadHeader(usize),
    #[error("unsupported worker protocol version {0} (this side speaks versions 1 to {VERSION})")]
    Version(u8),
    #[error("unknown command 0x{0:02x}")]
    UnknownCommand(u8),
    #[error("command 0x{0:02x} is not valid in this direction")]
    WrongDirection(u8),
    #[error("{command}: missing frame '{frame}'")]
    MissingFrame {
        command: &'static str,
        frame: &'static str,
    },
    #[error("{command}: frame '{frame}' is {got} bytes, expected {expected}")]
    FrameSize {
        command: &'static str,
        frame: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("credit {0} out of range 1..={MAX_CREDIT}")]
    Credit(u32),
    #[error("READY: no service named")]
    NoServices,
    #[error("REQUEST: unknown protocol code {0}")]
    Protocol(u8),
    #[error("headers frame is malformed or has more than {MAX_HEADERS} headers")]
    Headers,
}

impl WorkerMsg {
    /// Encodes into frames (header first).
    pub fn encode(self) -> Vec<Bytes> {
        match self {
            WorkerMsg::Ready {
                version,
                credit,
                token,
                services,
            } => {
                let mut frames = Vec::with_capacity(3 + services.len());
                frames.push(ready_header(version));
                frames.push(Bytes::copy_from_slice(&credit.to_be_bytes()));
                frames.push(token);
                frames.extend(services);
                frames
            }
            WorkerMsg::Reply {
                id,
                message,
                headers,
            } => {
                let id = Bytes::copy_from_slice(&id.to_be_bytes());
                if headers.is_empty() {
                    vec![Bytes::from_static(&HDR_REPLY), id, message]
                } else {
                    vec![Bytes::from_static(&HDR_REPLY_V2), id, message, headers]
                }
            }
            WorkerMsg::Heartbeat => vec![Bytes::from_static(&HDR_HEARTBEAT)],
            WorkerMsg::Disconnect { reason } => disconnect_frames(reason),
            WorkerMsg::Credit { credit } => credit_frames(credit),
        }
    }

    /// Decodes frames received from a worker. Extra trailing frames are ignored.
    pub fn decode(frames: impl IntoIterator<Item = Bytes>) -> Result<WorkerMsg, WireError> {
        let mut frames = frames.into_iter();
        let (version, command) = header(frames.next())?;
        match command {
            CMD_READY => {
                let credit = u32_frame(frames.next(), "READY", "credit")?;
                if credit == 0 || credit > MAX_CREDIT {
                    return Err(WireError::Credit(credit));
                }
                let token = frames.next().ok_or(WireError::MissingFrame {
                    command: "READY",
                    frame: "token",
                })?;
                let services: Vec<Bytes> = frames.collect();
                if services.is_empty() {
                    return Err(WireError::NoServices);
                }
                Ok(WorkerMsg::Ready {
                    version,
                    credit,
                    token,
                    services,
                })
            }
            CMD_REPLY => {
                let id = u64_frame(frames.next(), "REPLY", "request_id")?;
                let message = frames.next().ok_or(WireError::MissingFrame {
                    command: "REPLY",
                    frame: "message",
                })?;
                // Version 1 REPLYs have no headers (a trailing frame is ignored).
                let headers = match version {
                    VERSION_1 => Bytes::new(),
                    _ => frames.next().unwrap_or_default(),
                };
                Ok(WorkerMsg::Reply {
                    id,
                    message,
                    headers,
                })
            }
            CMD_HEARTBEAT => Ok(WorkerMsg::Heartbeat),
            CMD_DISCONNECT => Ok(WorkerMsg::Disconnect {
                reason: frames.next().unwrap_or_default(),
            }),
            CMD_CREDIT => Ok(WorkerMsg::Credit {
                credit: credit_frame(frames.next())?,
            }),
            CMD_REQUEST => Err(WireError::WrongDirection(CMD_REQUEST)),
            other => Err(WireError::UnknownCommand(other)),
        }
    }
}

impl ServerMsg {
    /// Encodes into frames (header first).
    pub fn encode(self) -> Vec<Bytes> {
        match self {
            ServerMsg::ReadyAck {
                version,
                heartbeat_interval_ms,
                worker_id,
            } => vec![
                ready_header(version),
                Bytes::copy_from_slice(&heartbeat_interval_ms.to_be_bytes()),
                worker_id,
            ],
            ServerMsg::Request(r) => r.encode().collect(),
            ServerMsg::Heartbeat => vec![Bytes::from_static(&HDR_HEARTBEAT)],
            ServerMsg::Disconnect { reason } => disconnect_frames(reason),
            ServerMsg::CreditAck { credit } => credit_frames(credit),
        }
    }

    /// Decodes frames received from the data plane. Extra trailing frames are ignored.
    pub fn decode(frames: impl IntoIterator<Item = Bytes>) -> Result<ServerMsg, WireError> {
        let mut frames = frames.into_iter();
        let (version, command) = header(frames.next())?;
        match command {
            CMD_READY => {
                let heartbeat_interval_ms =
                    u32_frame(frames.next(), "READY", "heartbeat_interval_ms")?;
                Ok(ServerMsg::ReadyAck {
                    version,
                    heartbeat_interval_ms,
                    worker_id: frames.next().unwrap_or_default(),
                })
            }
            CMD_REQUEST => {
                let meta = frames.next().ok_or(WireError::MissingFrame {
                    command: "REQUEST",
                    frame: "meta",
                })?;
                if meta.len() != 13 {
                    return Err(WireError::FrameSize {
                        command: "REQUEST",
                        frame: "meta",
                        got: meta.len(),
                        expected: 13,
                    });
                }
                let mut m = &meta[..];
                let id = m.get_u64();
                let timeout_ms = m.get_u32();
                let code = m.get_u8();
                let protocol = Protocol::from_u8(code).ok_or(WireError::Protocol(code))?;
                let service = frames.next().ok_or(WireError::MissingFrame {
                    command: "REQUEST",
                    frame: "service",
                })?;
                let message = frames.next().ok_or(WireError::MissingFrame {
                    command: "REQUEST",
                    frame: "message",
                })?;
                let headers = match version {
                    VERSION_1 => Bytes::new(),
                    _ => frames.next().unwrap_or_default(),
                };
                Ok(ServerMsg::Request(Request {
                    id,
                    timeout_ms,
                    protocol,
                    service,
                    message,
                    headers,
                }))
            }
            CMD_HEARTBEAT => Ok(ServerMsg::Heartbeat),
            CMD_DISCONNECT => Ok(ServerMsg::Disconnect {
                reason: frames.next().unwrap_or_default(),
            }),
            CMD_CREDIT => Ok(ServerMsg::CreditAck {
                credit: credit_frame(frames.next())?,
            }),
            CMD_REPLY => Err(WireError::WrongDirection(CMD_REPLY)),
            other => Err(WireError::UnknownCommand(other)),
        }
    }
}

impl Request {
    /// Encodes a REQUEST as its frames: four (version 1) or, with headers,
    /// five (version 2). The only allocation is the 13-byte meta frame;
    /// service, message and headers are reference-counted.
    pub fn encode(mut self) -> impl Iterator<Item = Bytes> {
        let headers = std::mem::take(&mut self.headers);
        let v2 = !headers.is_empty();
        let mut frames = self.encode_v1();
        if v2 {
            frames[0] = Bytes::from_static(&HDR_REQUEST_V2);
        }
        frames.into_iter().chain(v2.then_some(headers))
    }

    /// The four frames of a REQUEST without headers (version 1): what the
    /// data plane sends for almost every call. `headers` is ignored.
    pub fn encode_v1(self) -> [Bytes; 4] {
        let mut meta = BytesMut::with_capacity(13);
        meta.put_u64(self.id);
        meta.put_u32(self.timeout_ms);
        meta.put_u8(self.protocol as u8);
        [
            Bytes::from_static(&HDR_REQUEST),
            meta.freeze(),
            self.service,
            self.message,
        ]
    }
}

/// Encodes headers as one frame: for each, a big-endian `u16` key length,
/// the key, a big-endian `u32` value length, the value. Keys longer than
/// 65,535 bytes are cut there (no real header comes close).
pub fn encode_headers<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Bytes {
    let mut out = BytesMut::new();
    for (k, v) in pairs {
        let k = &k[..k.len().min(u16::MAX as usize)];
        out.put_u16(k.len() as u16);
        out.put_slice(k);
        out.put_u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        out.put_slice(&v[..v.len().min(u32::MAX as usize)]);
    }
    out.freeze()
}

/// Decodes a headers frame into (key, value) slices of it (no copy). At
/// most [`MAX_HEADERS`]; every length is checked against the frame.
pub fn decode_headers(frame: &Bytes) -> Result<Vec<(Bytes, Bytes)>, WireError> {
    let mut pairs = Vec::new();
    let mut at = 0;
    let take = |at: &mut usize, n: usize| -> Result<std::ops::Range<usize>, WireError> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= frame.len())
            .ok_or(WireError::Headers)?;
        let r = *at..end;
        *at = end;
        Ok(r)
    };
    while at < frame.len() {
        if pairs.len() == MAX_HEADERS {
            return Err(WireError::Headers);
        }
        let r = take(&mut at, 2)?;
        let klen = u16::from_be_bytes([frame[r.start], frame[r.start + 1]]) as usize;
        let key = take(&mut at, klen)?;
        let r = take(&mut at, 4)?;
        let vlen = u32::from_be_bytes([
            frame[r.start],
            frame[r.start + 1],
            frame[r.start + 2],
            frame[r.start + 3],
        ]) as usize;
        let value = take(&mut at, vlen)?;
        pairs.push((frame.slice(key), frame.slice(value)));
    }
    Ok(pairs)
}

fn disconnect_frames(reason: Bytes) -> Vec<Bytes> {
    if reason.is_empty() {
        vec![Bytes::from_static(&HDR_DISCONNECT)]
    } else {
        vec![Bytes::from_static(&HDR_DISCONNECT), reason]
    }
}

/// The version and command of a header frame.
fn credit_frames(credit: u32) -> Vec<Bytes> {
    vec![
        Bytes::from_static(&HDR_CREDIT),
        Bytes::copy_from_slice(&credit.to_be_bytes()),
    ]
}

/// A CREDIT's one frame, checked like READY's credit.
fn credit_frame(frame: Option<Bytes>) -> Result<u32, WireError> {
    let credit = u32_frame(frame, "CREDIT", "credit")?;
    if credit == 0 || credit > MAX_CREDIT {
        return Err(WireError::Credit(credit));
    }
    Ok(credit)
}

fn header(frame: Option<Bytes>) -> Result<(u8, u8), WireError> {
    let frame = frame.ok_or(WireError::Empty)?;
    if frame.len() != 2 {
        return Err(WireError::BadHeader(frame.len()));
    }
    if !(VERSION_1..=VERSION).contains(&frame[0]) {
        return Err(WireError::Version(frame[0]));
    }
    Ok((frame[0], frame[1]))
}

fn fixed<const N: usize>(
    frame: Option<Bytes>,
    command: &'static str,
    name: &'static str,
) -> Result<[u8; N], WireError> {
    let frame = frame.ok_or(WireError::MissingFrame {
        command,
        frame: name,
    })?;
    <[u8; N]>::try_from(&frame[..]).map_err(|_| WireError::FrameSize {
        command,
        frame: name,
        got: frame.len(),
        expected: N,
    })
}

fn u32_frame(
    frame: Option<Bytes>,
    command: &'static str,
    name: &'static str,
) -> Result<u32, WireError> {
    fixed::<4>(frame, command, name).map(u32::from_be_bytes)
}

fn u64_frame(
    frame: Option<Bytes>,
    command: &'static str,
    name: &'static str,
) -> Result<u64, WireError> {
    fixed::<8>(frame, command, name).map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    #[test]
    fn worker_messages_round_trip() {
        let msgs = [
            WorkerMsg::Ready {
                version: 1,
                credit: 8,
                token: b(b"secret"),
                services: vec![b(b"Echo"), b(b"Calc")],
            },
            WorkerMsg::Ready {
                version: 2,
                credit: 8,
                token: Bytes::new(),
                services: vec![b(b"Echo")],
            },
            WorkerMsg::Reply {
                id: u64::MAX - 3,
                message: b(b"\x80\x01\x00\x02"),
                headers: Bytes::new(),
            },
            WorkerMsg::Reply {
                id: 1,
                message: Bytes::new(),
                headers: Bytes::new(),
            },
            WorkerMsg::Reply {
                id: 2,
                message: b(b"m"),
                headers: encode_headers([(&b"k"[..], &b"v"[..])]),
            },
            WorkerMsg::Ready {
                version: 3,
                credit: 65_536,
                token: Bytes::new(),
                services: vec![b(b"Echo")],
            },
            WorkerMsg::Credit { credit: 1 },
            WorkerMsg::Credit { credit: 65_536 },
            WorkerMsg::Heartbeat,
            WorkerMsg::Disconnect { reason: b(b"bye") },
            WorkerMsg::Disconnect {
                reason: Bytes::new(),
            },
        ];
        for m in msgs {
            assert_eq!(WorkerMsg::decode(m.clone().encode()).unwrap(), m);
        }
    }

    #[test]
    fn server_messages_round_trip() {
        let msgs = [
            ServerMsg::ReadyAck {
                version: 1,
                heartbeat_interval_ms: 1000,
                worker_id: b(b"w7"),
            },
            ServerMsg::ReadyAck {
                version: 2,
                heartbeat_interval_ms: 1000,
                worker_id: b(b"w7"),
            },
            ServerMsg::Request(Request {
                id: 42,
                timeout_ms: 5000,
                protocol: Protocol::Compact,
                service: b(b"Echo"),
                message: b(b"\x82\x21\x01\x04echo"),
                headers: Bytes::new(),
            }),
            ServerMsg::Request(Request {
                id: 43,
                timeout_ms: 5000,
                protocol: Protocol::Compact,
                service: b(b"Echo"),
                message: b(b"\x82\x21\x01\x04echo"),
                headers: encode_headers([(&b"traceparent"[..], &b"00-1-2-01"[..])]),
            }),
            ServerMsg::ReadyAck {
                version: 3,
                heartbeat_interval_ms: 1000,
                worker_id: b(b"w7"),
            },
            ServerMsg::CreditAck { credit: 7 },
            ServerMsg::Heartbeat,
            ServerMsg::Disconnect {
                reason: b(b"evicted"),
            },
        ];
        for m in msgs {
            assert_eq!(ServerMsg::decode(m.clone().encode()).unwrap(), m);
        }
    }

    #[test]
    fn request_layout_matches_the_document() {
        let frames: Vec<Bytes> = Request {
            id: 0x0102030405060708,
            timeout_ms: 0x0a0b0c0d,
            protocol: Protocol::BinaryLax,
            service: b(b"S"),
            message: b(b"M"),
            headers: Bytes::new(),
        }
        .encode()
        .collect();
        assert_eq!(frames.len(), 4, "no headers: a version 1 REQUEST");
        assert_eq!(&frames[0][..], &[1, 2]);
        assert_eq!(
            &frames[1][..],
            &[1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b, 0x0c, 0x0d, 1]
        );
        assert_eq!(&frames[2][..], b"S");
        assert_eq!(&frames[3][..], b"M");
        let frames: Vec<Bytes> = Request {
            id: 1,
            timeout_ms: 1,
            protocol: Protocol::Compact,
            service: b(b"S"),
            message: b(b"M"),
            headers: encode_headers([(&b"k"[..], &b"vv"[..])]),
        }
        .encode()
        .collect();
        assert_eq!(&frames[0][..], &[2, 2], "with headers: version 2");
        assert_eq!(&frames[4][..], b"\x00\x01k\x00\x00\x00\x02vv");
    }

    #[test]
    fn headers_round_trip_and_bad_frames_are_errors() {
        let pairs: Vec<(&[u8], &[u8])> = vec![(b"a", b""), (b"", b"x"), (b"traceparent", b"00-ab")];
        let frame = encode_headers(pairs.iter().copied());
        let got = decode_headers(&frame).unwrap();
        let got: Vec<(&[u8], &[u8])> = got.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(got, pairs);
        assert_eq!(decode_headers(&Bytes::new()).unwrap(), vec![]);
        for bad in [
            &b"\x00"[..],
            b"\x00\x05ab",
            b"\x00\x01k\x00\x00",
            b"\x00\x00\xff\xff\xff\xff",
        ] {
            assert_eq!(
                decode_headers(&Bytes::copy_from_slice(bad)),
                Err(WireError::Headers)
            );
        }
        let many = encode_headers((0..=MAX_HEADERS).map(|_| (&b"k"[..], &b"v"[..])));
        assert_eq!(decode_headers(&many), Err(WireError::Headers));
    }

    #[test]
    fn version_1_ignores_trailing_frames_and_version_4_is_refused() {
        let v1 = vec![
            b(b"\x01\x03"),
            b(&[0, 0, 0, 0, 0, 0, 0, 9]),
            b(b"m"),
            b(b"junk"),
        ];
        assert_eq!(
            WorkerMsg::decode(v1),
            Ok(WorkerMsg::Reply {
                id: 9,
                message: b(b"m"),
                headers: Bytes::new()
            })
        );
        assert_eq!(
            WorkerMsg::decode(vec![b(b"\x04\x04")]),
            Err(WireError::Version(4))
        );
        assert_eq!(
            WorkerMsg::decode(vec![b(b"\x03\x04")]),
            Ok(WorkerMsg::Heartbeat)
        );
    }

    #[test]
    fn credit_is_checked_like_ready_credit() {
        for bad in [0u32, MAX_CREDIT + 1, u32::MAX] {
            let frames = vec![b(b"\x03\x06"), Bytes::copy_from_slice(&bad.to_be_bytes())];
            assert_eq!(
                WorkerMsg::decode(frames.clone()),
                Err(WireError::Credit(bad))
            );
            assert_eq!(ServerMsg::decode(frames), Err(WireError::Credit(bad)));
        }
        assert!(matches!(
            WorkerMsg::decode(vec![b(b"\x03\x06")]),
            Err(WireError::MissingFrame { .. })
        ));
        assert!(matches!(
            WorkerMsg::decode(vec![b(b"\x03\x06"), b(b"\x00\x01")]),
            Err(WireError::FrameSize { .. })
        ));
        assert_eq!(
            WorkerMsg::Credit { credit: 5 }.encode(),
            vec![b(b"\x03\x06"), b(b"\x00\x00\x00\x05")]
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert_eq!(WorkerMsg::decode(vec![]), Err(WireError::Empty));
        assert_eq!(
            WorkerMsg::decode(vec![b(b"\x01")]),
            Err(WireError::BadHeader(1))
        );
        assert_eq!(
            WorkerMsg::decode(vec![b(b"\x00\x04")]),
            Err(WireError::Version(0))
        );
        assert_eq!(
            WorkerMsg::decode(vec![b(b"\x01\x09")]),
            Err(WireError::UnknownCommand(9))
        );
        assert_eq!(
            WorkerMsg::decode(vec![b(b"\x01\x02")]),
            Err(WireError::WrongDirection(2))
        );
        assert!(matches!(
            WorkerMsg::decode(vec![b(b"\x01\x01"), b(b"\x00\x00\x00")]),
            Err(WireError::FrameSize { .. })
        ));
        assert_eq!(
            WorkerMsg::decode(vec![
                b(b"\x01\x01"),
                b(b"\x00\x00\x00\x00"),
                Bytes::new(),
                b(b"E")
            ]),
            Err(WireError::Credit(0))
        );
        assert_eq!(
            WorkerMsg::decode(vec![b(b"\x01\x01"), b(b"\x00\x00\x00\x01"), Bytes::new()]),
            Err(WireError::NoServices)
        );
        assert!(matches!(
            WorkerMsg::decode(vec![b(b"\x01\x03"), b(b"\x00")]),
            Err(WireError::FrameSize { .. })
        ));
        let mut bad_proto: Vec<Bytes> = Request {
            id: 1,
            timeout_ms: 1,
            protocol: Protocol::Compact,
            service: b(b"S"),
            message: b(b"M"),
            headers: Bytes::new(),
        }
        .encode()
        .collect();
        let mut meta = bad_proto[1].to_vec();
        meta[12] = 9;
        bad_proto[1] = meta.into();
        assert_eq!(ServerMsg::decode(bad_proto), Err(WireError::Protocol(9)));
    }
}
