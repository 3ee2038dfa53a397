//! The in-order pipeline of one connection.
//!
//! Up to `max_pipeline` two-way calls may be pending at once. Each takes a
//! *slot* number in arrival order; answers arrive from the dispatcher in any
//! order and leave strictly by slot, each written into the output buffer in
//! the transport its call came in (a header-transport answer echoes its
//! call's sequence number). Oneway calls take no slot: they are never
//! answered.
//!
//! Slot numbers wrap (u32): at most `max_pipeline` are pending, so the
//! distance from the oldest pending slot is unambiguous.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use crate::thrift::ReplyFraming;

/// Bytes of answers waiting to be written beyond which the connection stops
/// reading: a client that sends but does not read cannot make us buffer
/// without bound (its answers stay bounded by `max_pipeline` and this).
pub const WRITE_HIGH_WATER: usize = 256 * 1024;

/// One pending two-way call.
struct Slot {
    /// `Some` once the answer is here.
    answer: Option<Bytes>,
    /// Reply headers from the worker (header transport only).
    headers: Option<Box<Bytes>>,
    framing: ReplyFraming,
}

pub struct Pipeline {
    /// Pending slots from `base` on.
    pending: VecDeque<Slot>,
    base: u32,
    max: usize,
    /// Framed answers not yet written.
    out: BytesMut,
}

impl Pipeline {
    pub fn new(max_pipeline: usize) -> Pipeline {
        Pipeline {
            // Empty until used: most connections are idle most of the time.
            pending: VecDeque::new(),
            base: 0,
            max: max_pipeline,
            out: BytesMut::new(),
        }
    }

    /// The slot the next two-way call takes.
    pub fn next_slot(&self) -> u32 {
        // `pending` holds at most `max_pipeline` (<= 10,000) entries.
        self.base.wrapping_add(self.pending.len() as u32)
    }

    /// A two-way call took the next slot; `answer` if already answered.
    /// Its answer will be written in `framing`.
    pub fn push(&mut self, answer: Option<Bytes>, framing: ReplyFraming) {
        self.pending.push_back(Slot {
            answer,
            headers: None,
            framing,
        });
    }

    /// The answer for `slot` arrived, with the worker's reply headers.
    #[inline]
    pub fn complete(&mut self, slot: u32, message: Bytes, headers: Option<Box<Bytes>>) {
        let idx = slot.wrapping_sub(self.base) as usize;
        if let Some(entry) = self.pending.get_mut(idx) {
            entry.answer = Some(message);
            entry.headers = headers;
        }
    }

    /// Frames every answer that is next in order into the output buffer.
    /// Returns the bytes added (frame headers included).
    pub fn frame_ready(&mut self) -> usize {
        let before = self.out.len();
        while let Some(Slot {
            answer: Some(_), ..
        }) = self.pending.front()
        {
            if let Some(Slot {
                answer: Some(msg),
                headers,
                framing,
            }) = self.pending.pop_front()
            {
                self.base = self.base.wrapping_add(1);
                framing.encode(&msg, headers.as_deref(), &mut self.out);
            }
        }
        self.out.len() - before
    }

    /// Whether another call may be read: a free slot, and not too many
    /// bytes waiting for a client that may not read.
    pub fn has_room(&self) -> bool {
        self.pending.len() < self.max && self.out.len() < WRITE_HIGH_WATER
    }

    /// Nothing pending and nothing to write.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.out.is_empty()
    }

    /// Two-way calls read and not answered yet.
    pub fn unanswered(&self) -> usize {
        self.pending.iter().filter(|s| s.answer.is_none()).count()
    }

    /// The encoded bytes to write.
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// `n` bytes of the output were written.
    pub fn written(&mut self, n: usize) {
        self.out.advance(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(p: &mut Pipeline) -> Vec<Bytes> {
        let mut out = p.out().split().freeze();
        let mut v = Vec::new();
        while out.len() >= 4 {
            let n = out.get_u32() as usize;
            v.push(out.split_to(n));
        }
        v
    }

    #[test]
    fn answers_leave_in_slot_order_across_the_wrap() {
        let mut p = Pipeline::new(4);
        p.base = u32::MAX - 1;
        let (a, b, c) = (
            p.next_slot(),
            {
                p.push(None, ReplyFraming::Framed);
                p.next_slot()
            },
            {
                p.push(None, ReplyFraming::Framed);
                p.next_slot()
            },
        );
        p.push(None, ReplyFraming::Framed);
        assert_eq!((a, b, c), (u32::MAX - 1, u32::MAX, 0));
        p.complete(c, Bytes::from_static(b"c"), None);
        p.complete(b, Bytes::from_static(b"b"), None);
        assert_eq!(p.frame_ready(), 0, "a is not answered: nothing leaves");
        assert_eq!(p.unanswered(), 1);
        p.complete(a, Bytes::from_static(b"a"), None);
        assert_eq!(p.frame_ready(), 15);
        assert_eq!(frames(&mut p), ["a", "b", "c"]);
        assert!(p.is_idle());
    }

    #[test]
    fn room_is_bounded_by_slots_and_unwritten_bytes() {
        let mut p = Pipeline::new(2);
        p.push(None, ReplyFraming::Framed);
        assert!(p.has_room());
        p.push(None, ReplyFraming::Framed);
        assert!(!p.has_room());
        p.complete(0, Bytes::from(vec![0u8; WRITE_HIGH_WATER]), None);
        p.complete(1, Bytes::from_static(b"x"), None);
        p.frame_ready();
        assert!(!p.has_room(), "a full output buffer stops reading");
        let n = p.out().len();
        p.written(n);
        assert!(p.has_room() && p.is_idle());
    }
}
