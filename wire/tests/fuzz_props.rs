//! Property tests of the worker protocol codec: the frames a peer sends on
//! the worker endpoint are untrusted (the endpoint is reachable before any
//! READY or token), so decoding arbitrary frame lists must never panic, and
//! every valid message must survive encode → decode unchanged.
//!
//! Each property runs a small number of cases by default, so `cargo test`
//! stays fast; `PROPTEST_CASES=100000 cargo test -p thriftworker-wire --test
//! fuzz_props` runs a long one. The coverage-guided fuzzer for the same code
//! is `fuzz/` (`scripts/fuzz`).

use bytes::Bytes;
use proptest::prelude::*;
use thriftworker_wire::{
    Protocol, Request, ServerMsg, WireError, WorkerMsg, MAX_CREDIT, VERSION, VERSION_1,
};

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

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// A frame as a hostile peer might send it: usually a plausible header, a
/// fixed-size field of about the right size, or anything at all.
fn frame() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        // header frames: right version, any command (known ones and a few others)
        (0u8..=7).prop_map(|cmd| Bytes::from(vec![VERSION, cmd])),
        any::<[u8; 2]>().prop_map(|h| Bytes::copy_from_slice(&h)),
        // fixed-size fields (credit/interval: 4, id: 8, meta: 13) and near misses
        prop::sample::select(vec![0usize, 1, 3, 4, 5, 7, 8, 9, 12, 13, 14])
            .prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n))
            .prop_map(Bytes::from),
        // a REQUEST meta frame with a protocol code that is often valid
        (any::<u64>(), any::<u32>(), 0u8..=4).prop_map(|(id, t, p)| {
            let mut m = id.to_be_bytes().to_vec();
            m.extend_from_slice(&t.to_be_bytes());
            m.push(p);
            Bytes::from(m)
        }),
        bytes(64),
    ]
}

fn frames() -> impl Strategy<Value = Vec<Bytes>> {
    proptest::collection::vec(frame(), 0..8)
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop::sample::select(vec![
        Protocol::BinaryStrict,
        Protocol::BinaryLax,
        Protocol::Compact,
    ])
}

/// A headers frame: none, or a few headers.
fn headers() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        proptest::collection::vec((bytes(20), bytes(60)), 1..5).prop_map(|pairs| {
            thriftworker_wire::encode_headers(pairs.iter().map(|(k, v)| (&k[..], &v[..])))
        }),
    ]
}

/// Every valid message a worker may send.
fn worker_msg() -> impl Strategy<Value = WorkerMsg> {
    prop_oneof![
        (
            1..=MAX_CREDIT,
            bytes(40),
            proptest::collection::vec(bytes(40), 1..6)
        )
            .prop_flat_map(|(credit, token, services)| {
                (1u8..=VERSION).prop_map(move |version| WorkerMsg::Ready {
                    version,
                    credit,
                    token: token.clone(),
                    services: services.clone(),
                })
            }),
        (any::<u64>(), bytes(300), headers()).prop_map(|(id, message, headers)| WorkerMsg::Reply {
            id,
            message,
            headers
        }),
        Just(WorkerMsg::Heartbeat),
        bytes(80).prop_map(|reason| WorkerMsg::Disconnect { reason }),
        (1..=MAX_CREDIT).prop_map(|credit| WorkerMsg::Credit { credit }),
    ]
}

/// Every valid message the data plane may send.
fn server_msg() -> impl Strategy<Value = ServerMsg> {
    prop_oneof![
        (1u8..=VERSION, any::<u32>(), bytes(40)).prop_map(
            |(version, heartbeat_interval_ms, worker_id)| ServerMsg::ReadyAck {
                version,
                heartbeat_interval_ms,
                worker_id,
            }
        ),
        (
            any::<u64>(),
            any::<u32>(),
            protocol(),
            bytes(40),
            bytes(300),
            headers(),
        )
            .prop_map(|(id, timeout_ms, protocol, service, message, headers)| {
                ServerMsg::Request(Request {
                    id,
                    timeout_ms,
                    protocol,
                    service,
                    message,
                    headers,
                })
            }),
        Just(ServerMsg::Heartbeat),
        bytes(80).prop_map(|reason| ServerMsg::Disconnect { reason }),
        (1..=MAX_CREDIT).prop_map(|credit| ServerMsg::CreditAck { credit }),
    ]
}

/// What decoding is allowed to conclude from a header frame alone.
fn check_header_errors(frames: &[Bytes], err: &WireError) {
    match frames.first() {
        None => assert_eq!(err, &WireError::Empty),
        Some(h) if h.len() != 2 => assert_eq!(err, &WireError::BadHeader(h.len())),
        Some(h) if !(VERSION_1..=VERSION).contains(&h[0]) => {
            assert_eq!(err, &WireError::Version(h[0]))
        }
        Some(_) => assert!(
            !matches!(
                err,
                WireError::Empty | WireError::BadHeader(_) | WireError::Version(_)
            ),
            "{err:?} for a valid header frame"
        ),
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    /// Arbitrary frame lists: an error or a message, never a panic; a
    /// message decoded from them encodes to frames that decode to it again.
    #[test]
    fn worker_decode_never_panics(frames in frames()) {
        match WorkerMsg::decode(frames.clone()) {
            Ok(m) => {
                let again = WorkerMsg::decode(m.clone().encode());
                prop_assert_eq!(again, Ok(m));
            }
            Err(e) => check_header_errors(&frames, &e),
        }
    }

    #[test]
    fn server_decode_never_panics(frames in frames()) {
        match ServerMsg::decode(frames.clone()) {
            Ok(m) => {
                let again = ServerMsg::decode(m.clone().encode());
                prop_assert_eq!(again, Ok(m));
            }
            Err(e) => check_header_errors(&frames, &e),
        }
    }

    /// encode → decode is the identity on valid messages, and frames beyond
    /// those a message uses are ignored (READY takes every remaining frame
    /// as a service name, so it is left out of that half).
    #[test]
    fn worker_round_trip(m in worker_msg(), extra in proptest::collection::vec(bytes(8), 0..3)) {
        let frames = m.clone().encode();
        prop_assert!((VERSION_1..=VERSION).contains(&frames[0][0]));
        prop_assert_eq!(WorkerMsg::decode(frames.clone()), Ok(m.clone()));
        let fixed_arity = match &m {
            WorkerMsg::Ready { .. } => false,
            // An empty reason is sent as no frame at all: an extra frame would be read as one.
            WorkerMsg::Disconnect { reason } => !reason.is_empty(),
            _ => true,
        };
        if fixed_arity {
            let mut longer = frames;
            longer.extend(extra);
            prop_assert_eq!(WorkerMsg::decode(longer), Ok(m));
        }
    }

    #[test]
    fn server_round_trip(m in server_msg(), extra in proptest::collection::vec(bytes(8), 0..3)) {
        let frames = m.clone().encode();
        prop_assert_eq!(ServerMsg::decode(frames.clone()), Ok(m.clone()));
        if let ServerMsg::Request(r) = &m {
            prop_assert_eq!(frames.len(), if r.headers.is_empty() { 4 } else { 5 });
            prop_assert_eq!(frames[1].len(), 13);
            prop_assert_eq!(&frames[2], &r.service);
            prop_assert_eq!(&frames[3], &r.message);
        }
        let fixed_arity = match &m {
            ServerMsg::Disconnect { reason } => !reason.is_empty(),
            _ => true,
        };
        if fixed_arity {
            let mut longer = frames;
            longer.extend(extra);
            prop_assert_eq!(ServerMsg::decode(longer), Ok(m));
        }
    }

    /// A READY whose credit is out of range, or that names no service, is
    /// refused with the reason, never accepted.
    #[test]
    fn ready_bounds(credit in any::<u32>(), token in bytes(8), services in proptest::collection::vec(bytes(8), 0..3)) {
        let mut frames = vec![
            Bytes::from_static(&[VERSION, 1]),
            Bytes::copy_from_slice(&credit.to_be_bytes()),
            token.clone(),
        ];
        frames.extend(services.iter().cloned());
        let got = WorkerMsg::decode(frames);
        if credit == 0 || credit > MAX_CREDIT {
            prop_assert_eq!(got, Err(WireError::Credit(credit)));
        } else if services.is_empty() {
            prop_assert_eq!(got, Err(WireError::NoServices));
        } else {
            prop_assert_eq!(got, Ok(WorkerMsg::Ready { version: VERSION, credit, token, services }));
        }
    }
}
