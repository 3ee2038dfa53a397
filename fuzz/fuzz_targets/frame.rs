//! The frame decoder (`server/src/thrift/framed.rs`) on any byte stream, cut into
//! any chunks, directly and through `FramedRead` as `data/connection/mod.rs` runs
//! it: it yields exactly the reference framing (frames that concatenate
//! back to the input prefix they came from, then the error for the first
//! bad length, or `Truncated` at end of stream), never panics, and keeps
//! its read buffer within the bound.
//!
//! Input: byte 0 picks max_frame_size, byte 1 the number of chunk sizes
//! (low 2 bits) and of frames held in flight (bits 2-3), then 2 bytes per
//! chunk size, then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thriftworker_fuzz::{frame_model, growth_bound, run_decoder, run_framed, Out};

const MAXES: [usize; 8] = [1, 4, 7, 100, 600, 4096, 65_536, 16_384_000];

fuzz_target!(|data: &[u8]| {
    let [sel, counts, rest @ ..] = data else {
        return;
    };
    let max = match sel & 0x0f {
        i @ 0..=7 => MAXES[i as usize],
        i => 1 + ((*sel as usize) >> 4) * 50 + i as usize,
    };
    let nchunks = (counts & 3) as usize;
    let keep = ((counts >> 2) & 3) as usize;
    if rest.len() < 2 * nchunks {
        return;
    }
    let (sizes, input) = rest.split_at(2 * nchunks);
    let mut chunks: Vec<usize> = sizes
        .chunks(2)
        .map(|c| 1 + u16::from_be_bytes([c[0], c[1]]) as usize % 8192)
        .collect();
    if chunks.is_empty() {
        chunks.push(input.len().max(1));
    }

    let want = frame_model(input, max);
    let got = run_decoder(input, max, &chunks);
    assert_eq!(got, want, "direct decoding, max {max}, chunks {chunks:?}");
    let (got, peak) = run_framed(input, max, &chunks, keep);
    assert_eq!(got, want, "FramedRead, max {max}, chunks {chunks:?}");
    assert!(
        peak <= growth_bound(max),
        "read buffer capacity {peak} for max_frame_size {max}"
    );

    // The frames, framed again, are the prefix of the input they came from.
    let mut again = Vec::new();
    for o in &got {
        if let Out::Frame(f) = o {
            assert!(!f.is_empty() && f.len() <= max);
            again.extend_from_slice(&(f.len() as u32).to_be_bytes());
            again.extend_from_slice(f);
        }
    }
    assert_eq!(&again[..], &input[..again.len()]);
});
