//! The worker protocol spoken between the data plane (ZeroMQ ROUTER) and its
//! workers (ZeroMQ DEALER), version 1. `docs/worker-protocol.md` is the
//! normative description; this crate is its only implementation in Rust, used
//! by both sides so they cannot drift apart.
//!
//! Messages are lists of frames (`Bytes`), independent of any ZeroMQ crate:
//! the transport layer wraps them in its own message type. Encoding never
//! copies a Thrift payload; decoding only slices the frames it was given.
#![forbid(unsafe_code)]

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Protocol version carried in byte 0 of every header frame.
pub const VERSION: u8 = 1;

/// Largest credit a worker may announce.
pub const MAX_CREDIT: u32 = 65_536;

const CMD_READY: u8 = 0x01;
const CMD_REQUEST: u8 = 0x02;
const CMD_REPLY: u8 = 0x03;
const CMD_HEARTBEAT: u8 = 0x04;
const CMD_DISCONNECT: u8 = 0x05;

static HDR_READY: [u8; 2] = [VERSION, CMD_READY];
static HDR_REQUEST: [u8; 2] = [VERSION, CMD_REQUEST];
static HDR_REPLY: [u8; 2] = [VERSION, CMD_REPLY];
static HDR_HEARTBEAT: [u8; 2] = [VERSION, CMD_HEARTBEAT];
static HDR_DISCONNECT: [u8; 2] = [VERSION, CMD_DISCONNECT];

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
        credit: u32,
        token: Bytes,
        services: Vec<Bytes>,
    },
    Reply {
        id: u64,
        message: Bytes,
    },
    Heartbeat,
    Disconnect {
        reason: Bytes,
    },
}

/// Messages the data plane sends to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    ReadyAck {
        heartbeat_interval_ms: u32,
        worker_id: Bytes,
    },
    Request(Request),
    Heartbeat,
    Disconnect {
        reason: Bytes,
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
}

/// Why a list of frames is not a valid message. The text says which frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty message: expected a 2-byte header frame")]
    Empty,
    #[error("header frame is {0} bytes, expected 2 (version, command)")]
    BadHeader(usize),
    #[error("unsupported worker protocol version {0} (this side speaks version {VERSION})")]
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
    #[error("READY: credit {0} out of range 1..={MAX_CREDIT}")]
    Credit(u32),
    #[error("READY: no service named")]
    NoServices,
    #[error("REQUEST: unknown protocol code {0}")]
    Protocol(u8),
}

impl WorkerMsg {
    /// Encodes into frames (header first).
    pub fn encode(self) -> Vec<Bytes> {
        match self {
            WorkerMsg::Ready {
                credit,
                token,
                services,
            } => {
                let mut frames = Vec::with_capacity(3 + services.len());
                frames.push(Bytes::from_static(&HDR_READY));
                frames.push(Bytes::copy_from_slice(&credit.to_be_bytes()));
                frames.push(token);
                frames.extend(services);
                frames
            }
            WorkerMsg::Reply { id, message } => vec![
                Bytes::from_static(&HDR_REPLY),
                Bytes::copy_from_slice(&id.to_be_bytes()),
                message,
            ],
            WorkerMsg::Heartbeat => vec![Bytes::from_static(&HDR_HEARTBEAT)],
            WorkerMsg::Disconnect { reason } => disconnect_frames(reason),
        }
    }

    /// Decodes frames received from a worker. Extra trailing frames are ignored.
    pub fn decode(frames: impl IntoIterator<Item = Bytes>) -> Result<WorkerMsg, WireError> {
        let mut frames = frames.into_iter();
        match header(frames.next())? {
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
                Ok(WorkerMsg::Reply { id, message })
            }
            CMD_HEARTBEAT => Ok(WorkerMsg::Heartbeat),
            CMD_DISCONNECT => Ok(WorkerMsg::Disconnect {
                reason: frames.next().unwrap_or_default(),
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
                heartbeat_interval_ms,
                worker_id,
            } => vec![
                Bytes::from_static(&HDR_READY),
                Bytes::copy_from_slice(&heartbeat_interval_ms.to_be_bytes()),
                worker_id,
            ],
            ServerMsg::Request(r) => r.encode().to_vec(),
            ServerMsg::Heartbeat => vec![Bytes::from_static(&HDR_HEARTBEAT)],
            ServerMsg::Disconnect { reason } => disconnect_frames(reason),
        }
    }

    /// Decodes frames received from the data plane. Extra trailing frames are ignored.
    pub fn decode(frames: impl IntoIterator<Item = Bytes>) -> Result<ServerMsg, WireError> {
        let mut frames = frames.into_iter();
        match header(frames.next())? {
            CMD_READY => {
                let heartbeat_interval_ms =
                    u32_frame(frames.next(), "READY", "heartbeat_interval_ms")?;
                Ok(ServerMsg::ReadyAck {
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
                Ok(ServerMsg::Request(Request {
                    id,
                    timeout_ms,
                    protocol,
                    service,
                    message,
                }))
            }
            CMD_HEARTBEAT => Ok(ServerMsg::Heartbeat),
            CMD_DISCONNECT => Ok(ServerMsg::Disconnect {
                reason: frames.next().unwrap_or_default(),
            }),
            CMD_REPLY => Err(WireError::WrongDirection(CMD_REPLY)),
            other => Err(WireError::UnknownCommand(other)),
        }
    }
}

impl Request {
    /// Encodes a REQUEST as its four frames. The only allocation is the
    /// 13-byte meta frame; service and message are reference-counted.
    pub fn encode(self) -> [Bytes; 4] {
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

fn disconnect_frames(reason: Bytes) -> Vec<Bytes> {
    if reason.is_empty() {
        vec![Bytes::from_static(&HDR_DISCONNECT)]
    } else {
        vec![Bytes::from_static(&HDR_DISCONNECT), reason]
    }
}

fn header(frame: Option<Bytes>) -> Result<u8, WireError> {
    let frame = frame.ok_or(WireError::Empty)?;
    if frame.len() != 2 {
        return Err(WireError::BadHeader(frame.len()));
    }
    if frame[0] != VERSION {
        return Err(WireError::Version(frame[0]));
    }
    Ok(frame[1])
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
                credit: 8,
                token: b(b"secret"),
                services: vec![b(b"Echo"), b(b"Calc")],
            },
            WorkerMsg::Reply {
                id: u64::MAX - 3,
                message: b(b"\x80\x01\x00\x02"),
            },
            WorkerMsg::Reply {
                id: 1,
                message: Bytes::new(),
            },
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
                heartbeat_interval_ms: 1000,
                worker_id: b(b"w7"),
            },
            ServerMsg::Request(Request {
                id: 42,
                timeout_ms: 5000,
                protocol: Protocol::Compact,
                service: b(b"Echo"),
                message: b(b"\x82\x21\x01\x04echo"),
            }),
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
        let frames = Request {
            id: 0x0102030405060708,
            timeout_ms: 0x0a0b0c0d,
            protocol: Protocol::BinaryLax,
            service: b(b"S"),
            message: b(b"M"),
        }
        .encode();
        assert_eq!(&frames[0][..], &[1, 2]);
        assert_eq!(
            &frames[1][..],
            &[1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b, 0x0c, 0x0d, 1]
        );
        assert_eq!(&frames[2][..], b"S");
        assert_eq!(&frames[3][..], b"M");
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert_eq!(WorkerMsg::decode(vec![]), Err(WireError::Empty));
        assert_eq!(
            WorkerMsg::decode(vec![b(b"\x01")]),
            Err(WireError::BadHeader(1))
        );
        assert_eq!(
            WorkerMsg::decode(vec![b(b"\x02\x04")]),
            Err(WireError::Version(2))
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
        let mut bad_proto = Request {
            id: 1,
            timeout_ms: 1,
            protocol: Protocol::Compact,
            service: b(b"S"),
            message: b(b"M"),
        }
        .encode();
        let mut meta = bad_proto[1].to_vec();
        meta[12] = 9;
        bad_proto[1] = meta.into();
        assert_eq!(ServerMsg::decode(bad_proto), Err(WireError::Protocol(9)));
    }
}
