//! The unframed transport's skip parser (`server/src/thrift/unframed.rs`) on
//! any bytes, cut into any chunks: it never panics, an end it finds lies
//! within the input and `max`, and it gives the same answer whether the
//! bytes arrive at once or in pieces (the kind of error may differ only when
//! the size limit is involved). Messages the `thrift` crate writes are
//! covered by the property test `skipper_finds_the_end_of_every_valid_message`
//! (server/tests/fuzz_props.rs).
//!
//! Input: byte 0 picks max, byte 1 a chunk size (1-256), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thriftworker_fuzz::message::unframed::{SkipError, Skipper};

const MAXES: [usize; 4] = [16, 300, 4096, 16_384_000];

fuzz_target!(|data: &[u8]| {
    let [sel, chunk, input @ ..] = data else {
        return;
    };
    let max = MAXES[(sel & 3) as usize];
    let chunk = 1 + *chunk as usize;
    let whole = Skipper::new().advance(input, max);
    if let Ok(Some(n)) = whole {
        assert!(
            n <= input.len() && n <= max,
            "end {n} of {} (max {max})",
            input.len()
        );
    }
    let mut s = Skipper::new();
    let mut end = 0;
    let chunked = loop {
        end = (end + chunk).min(input.len());
        match s.advance(&input[..end], max) {
            Ok(None) if end < input.len() => {}
            other => break other,
        }
    };
    let limit = SkipError::TooLarge { max };
    match (&whole, &chunked) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) if *a == limit || *b == limit => {}
        // The same kind of error (a bad version word's value in it may show
        // fewer bytes when fewer had arrived).
        (Err(a), Err(b)) => assert_eq!(
            std::mem::discriminant(a),
            std::mem::discriminant(b),
            "{a:?} vs {b:?}"
        ),
        _ => panic!("whole {whole:?} but chunked {chunked:?}"),
    }
});
