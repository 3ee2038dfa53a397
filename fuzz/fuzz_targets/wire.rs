//! The worker protocol codec (`wire/src/lib.rs`): `WorkerMsg::decode` and
//! `ServerMsg::decode` on any list of frames never panic, report header
//! errors as such, and whatever they decode encodes to frames that decode
//! to it again.
//!
//! Input: frames, each a length byte then up to that many bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use thriftworker_wire::{ServerMsg, WireError, WorkerMsg, VERSION};

fn check_header_errors(frames: &[Bytes], err: &WireError) {
    match frames.first() {
        None => assert_eq!(err, &WireError::Empty),
        Some(h) if h.len() != 2 => assert_eq!(err, &WireError::BadHeader(h.len())),
        Some(h) if h[0] != VERSION => assert_eq!(err, &WireError::Version(h[0])),
        Some(_) => assert!(
            !matches!(
                err,
                WireError::Empty | WireError::BadHeader(_) | WireError::Version(_)
            ),
            "{err:?} for a valid header frame"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut frames = Vec::new();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = (n as usize).min(tail.len());
        frames.push(Bytes::copy_from_slice(&tail[..n]));
        rest = &tail[n..];
    }
    match WorkerMsg::decode(frames.clone()) {
        Ok(m) => assert_eq!(WorkerMsg::decode(m.clone().encode()), Ok(m)),
        Err(e) => check_header_errors(&frames, &e),
    }
    match ServerMsg::decode(frames.clone()) {
        Ok(m) => assert_eq!(ServerMsg::decode(m.clone().encode()), Ok(m)),
        Err(e) => check_header_errors(&frames, &e),
    }
});
