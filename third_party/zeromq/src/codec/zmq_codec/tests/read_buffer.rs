use super::*;

const MAX_READ_CHUNK_SIZE: usize = 64 * 1024;

#[test]
fn read_buffer_recovery_keeps_a_full_chunk_after_splitting_a_large_frame() {
    for frame_len in [2 * MAX_READ_CHUNK_SIZE + 1, 338_729] {
        let mut codec = ZmqCodec::new();
        codec.state = DecoderState::FrameHeader;
        codec.waiting_for = 1;
        let mut input = BytesMut::from(&[2][..]);
        input.extend_from_slice(&(frame_len as u64).to_be_bytes());
        assert!(codec.decode(&mut input).unwrap().is_none());
        // Fork: the decoder reserves in proportion to the bytes that arrived,
        // so feed the body in read-sized steps, as ZmqFramedRead does.
        while input.len() + MAX_READ_CHUNK_SIZE < frame_len {
            input.resize(input.len() + MAX_READ_CHUNK_SIZE, 7);
            assert!(codec.decode(&mut input).unwrap().is_none());
        }
        input.resize(frame_len, 7);
        let retained = codec.decode(&mut input).unwrap().unwrap();
        assert!(input.capacity() >= MAX_READ_CHUNK_SIZE);
        let ptr = input.as_ptr();
        input.resize(MAX_READ_CHUNK_SIZE, 0);
        assert_eq!(input.as_ptr(), ptr);
        drop(retained);
    }
}

#[test]
fn read_buffer_recovery_does_not_reserve_headroom_at_the_threshold() {
    let mut codec = ZmqCodec::new();
    codec.state = DecoderState::FrameHeader;
    codec.waiting_for = 1;
    let mut input = BytesMut::from(&[2][..]);
    input.extend_from_slice(&((2 * MAX_READ_CHUNK_SIZE) as u64).to_be_bytes());
    assert!(codec.decode(&mut input).unwrap().is_none());
    assert_eq!(input.capacity(), 2 * MAX_READ_CHUNK_SIZE);
}

#[test]
fn read_buffer_recovery_rejects_lengths_exceeding_configured_capacity() {
    for max_size in [3000, MAX_READ_CHUNK_SIZE] {
        for frame_len in [u64::MAX, isize::MAX as u64 - max_size as u64 + 1] {
            let mut options = SocketOptions::default();
            options.read_buffer(128, max_size, 2);
            let mut codec = ZmqCodec::with_options(&options);
            codec.state = DecoderState::FrameHeader;
            codec.waiting_for = 1;
            let mut input = BytesMut::from(&[2][..]);
            input.extend_from_slice(&frame_len.to_be_bytes());
            assert!(matches!(
                codec.decode(&mut input),
                Err(CodecError::Decode(
                    "Frame length exceeds read buffer capacity"
                ))
            ));
        }
    }
}

#[test]
fn read_buffer_recovery_does_not_share_chunk_sized_frame_storage_with_the_next_read() {
    for frame_len in [
        MAX_READ_CHUNK_SIZE,
        MAX_READ_CHUNK_SIZE + 1,
        2 * MAX_READ_CHUNK_SIZE,
    ] {
        let mut codec = ZmqCodec::new();
        codec.state = DecoderState::FrameHeader;
        codec.waiting_for = 1;
        let mut input = BytesMut::with_capacity(frame_len + 9);
        input.extend_from_slice(&[2]);
        input.extend_from_slice(&(frame_len as u64).to_be_bytes());
        assert!(codec.decode(&mut input).unwrap().is_none());
        input.resize(frame_len, 7);
        let Message::Message(retained) = codec.decode(&mut input).unwrap().unwrap() else {
            panic!("expected message");
        };
        // Sharing an entire spare chunk makes the following nearly complete
        // frame copy its body when reserve detaches from this retained frame.
        input.resize(MAX_READ_CHUNK_SIZE, 0);
        assert!(retained.get(0).unwrap().is_unique());
    }
}

#[test]
fn read_buffer_headroom_tracks_the_configured_maximum() {
    let mut options = SocketOptions::default();
    options.read_buffer(300, 3000, 3);
    for frame_len in [6000, 6001] {
        let mut codec = ZmqCodec::with_options(&options);
        codec.state = DecoderState::FrameHeader;
        codec.waiting_for = 1;
        let mut input = BytesMut::from(&[2][..]);
        input.extend_from_slice(&(frame_len as u64).to_be_bytes());
        assert!(codec.decode(&mut input).unwrap().is_none());
        if frame_len == 6000 {
            assert_eq!(input.capacity(), frame_len);
        } else {
            // Fork: feed the body in read-sized steps (see above).
            while input.len() + 3000 < frame_len {
                input.resize(input.len() + 3000, 7);
                assert!(codec.decode(&mut input).unwrap().is_none());
            }
            input.resize(frame_len, 7);
            let retained = codec.decode(&mut input).unwrap().unwrap();
            assert!(input.capacity() >= 3000);
            drop(retained);
        }
    }
}

// Fork: announced lengths are peer-controlled (see PATCHES.md, patch A).
#[test]
fn announced_frame_length_does_not_reserve_memory_up_front() {
    for frame_len in [1u64 << 40, 1u64 << 62] {
        let mut codec = ZmqCodec::new();
        codec.state = DecoderState::FrameHeader;
        codec.waiting_for = 1;
        let mut input = BytesMut::from(&[2][..]);
        input.extend_from_slice(&frame_len.to_be_bytes());
        assert!(codec.decode(&mut input).unwrap().is_none());
        assert!(input.capacity() <= 4 * MAX_READ_CHUNK_SIZE);
        // Growth follows the bytes that actually arrive.
        input.resize(MAX_READ_CHUNK_SIZE, 7);
        assert!(codec.decode(&mut input).unwrap().is_none());
        assert!(input.capacity() <= 8 * MAX_READ_CHUNK_SIZE);
    }
}

#[test]
fn max_message_size_rejects_a_frame_from_its_header() {
    let mut options = SocketOptions::default();
    options.max_message_size(1000);
    for frame_len in [1001u64, 1 << 40, 1 << 62] {
        let mut codec = ZmqCodec::with_options(&options);
        codec.state = DecoderState::FrameHeader;
        codec.waiting_for = 1;
        let mut input = BytesMut::from(&[2][..]);
        input.extend_from_slice(&frame_len.to_be_bytes());
        let capacity = input.capacity();
        assert!(matches!(
            codec.decode(&mut input),
            Err(CodecError::Decode("Message exceeds maximum message size"))
        ));
        assert!(input.capacity() <= capacity, "nothing reserved");
    }
    // A message of exactly the limit is accepted.
    let mut codec = ZmqCodec::with_options(&options);
    codec.state = DecoderState::FrameHeader;
    codec.waiting_for = 1;
    let mut input = BytesMut::from(&[2][..]);
    input.extend_from_slice(&1000u64.to_be_bytes());
    input.resize(input.len() + 1000, 7);
    assert!(matches!(
        codec.decode(&mut input),
        Ok(Some(Message::Message(message))) if message.get(0).unwrap().len() == 1000
    ));
}

#[test]
fn max_message_size_counts_all_frames_of_a_multipart_message() {
    let mut options = SocketOptions::default();
    options.max_message_size(1000);
    let mut codec = ZmqCodec::with_options(&options);
    codec.state = DecoderState::FrameHeader;
    codec.waiting_for = 1;
    // Two complete messages of 4 x 202 bytes are fine (each frame buffered
    // before the last also counts FRAME_MEMORY_COST: 4 x 202 + 3 x 64 = 1000)...
    let mut input = BytesMut::new();
    for _ in 0..2 {
        for part in 0..4 {
            input.extend_from_slice(&[if part < 3 { 1 } else { 0 }, 202]);
            input.extend_from_slice(&[7; 202]);
        }
    }
    for _ in 0..2 {
        let Some(Message::Message(message)) = codec.decode(&mut input).unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(message.len(), 4);
    }
    // ...but a fifth part of the same message exceeds the limit.
    for _ in 0..4 {
        input.extend_from_slice(&[1, 202]);
        input.extend_from_slice(&[7; 202]);
    }
    input.extend_from_slice(&[0, 1, 7]);
    assert!(matches!(
        codec.decode(&mut input),
        Err(CodecError::Decode("Message exceeds maximum message size"))
    ));
}

#[test]
fn command_frames_are_capped() {
    let mut codec = ZmqCodec::new();
    codec.state = DecoderState::FrameHeader;
    codec.waiting_for = 1;
    let mut input = BytesMut::from(&[0x06][..]);
    input.extend_from_slice(&((MAX_COMMAND_SIZE + 1) as u64).to_be_bytes());
    assert!(matches!(
        codec.decode(&mut input),
        Err(CodecError::Decode("Command exceeds maximum command size"))
    ));
}
