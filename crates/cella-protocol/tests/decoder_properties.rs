//! Property tests: the decoder treats arbitrary bytes as hostile input.

use bytes::BytesMut;
use cella_protocol::{Frame, FrameCodec, FrameKind, HEADER_LEN, MAX_PAYLOAD};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

/// Feeds `bytes` to a fresh decoder in `chunk`-sized pieces until it errors or runs dry.
fn drain(bytes: &[u8], chunk: usize) -> (usize, bool) {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    let mut frames = 0;
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= MAX_PAYLOAD);
                    frames += 1;
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        // Never buffer more than one maximal frame plus the piece just fed.
        assert!(buf.capacity() <= 2 * (HEADER_LEN + MAX_PAYLOAD) + piece.len());
    }
    (frames, false)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096),
                                   chunk in 1usize..64) {
        let _ = drain(&bytes, chunk);
    }

    #[test]
    fn valid_frames_survive_arbitrary_chunking(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8),
        stream in any::<u64>(),
        chunk in 1usize..100,
    ) {
        let mut wire = Vec::new();
        for p in &payloads {
            wire.extend_from_slice(&Frame::new(FrameKind::Stdout, stream, p.clone()).to_bytes().unwrap());
        }
        let (frames, failed) = drain(&wire, chunk);
        prop_assert!(!failed);
        prop_assert_eq!(frames, payloads.len());
    }

    #[test]
    fn corrupted_header_is_an_error_or_a_bounded_wait(
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        index in 0usize..HEADER_LEN,
        value in any::<u8>(),
    ) {
        let mut wire = Frame::new(FrameKind::Stderr, 3, payload).to_bytes().unwrap().to_vec();
        wire[index] = value;
        let _ = drain(&wire, 7);
    }
}
