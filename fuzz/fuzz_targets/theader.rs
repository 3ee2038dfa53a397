//! The THeader decoder (`server/src/thrift/header.rs`) on any frame: an
//! error or a frame, never a panic, and an inflated payload never beyond
//! max; a frame it decodes re-encodes (same sequence number, flags,
//! protocol, headers and payload) and decodes again to the same.
//!
//! Input: byte 0 picks max, then the frame after its 4-byte length (the
//! magic is prepended when byte 1 is even, to reach past the first check).
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use thriftworker_fuzz::message::header;

const MAXES: [usize; 4] = [1, 100, 4096, 1 << 20];

fuzz_target!(|data: &[u8]| {
    let [sel, rest @ ..] = data else {
        return;
    };
    let max = MAXES[(sel & 3) as usize];
    let mut frame = Vec::with_capacity(rest.len() + 2);
    if sel & 4 == 0 {
        frame.extend_from_slice(&header::MAGIC);
    }
    frame.extend_from_slice(rest);
    let Ok(f) = header::decode(Bytes::from(frame), max) else {
        return;
    };
    if f.reply.zlib {
        assert!(f.payload.len() <= max);
    }
    let pairs: Vec<(&[u8], &[u8])> = f.headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let mut out = BytesMut::new();
    header::encode(&f.payload, &f.reply, &pairs, &mut out);
    let again = header::decode(out.split_off(4).freeze(), usize::MAX).expect("re-encoded frame");
    assert_eq!(again.reply, f.reply);
    assert_eq!(again.payload, f.payload);
    assert_eq!(again.headers, f.headers);
});
