//! Checks shared by the fuzz targets in `fuzz_targets/`.
//!
//! Everything here treats its input as bytes from a hostile guest: any panic (including integer
//! overflow, which the fuzz profile checks) is a bug in `cella-protocol`.

use bytes::BytesMut;
use cella_protocol::{
    check_version, Credit, ErrorMessage, ExecStart, ExecStarted, Exited, Frame, FrameCodec,
    FrameKind, Goodbye, Heartbeat, Hello, HelloAck, Message, ProtocolError, Shutdown,
    SignalRequest, Welcome, WindowSize, HEADER_LEN, MAX_PAYLOAD,
};
use tokio_util::codec::Decoder;

/// Every frame kind, in wire order.
pub const ALL_KINDS: [FrameKind; 18] = [
    FrameKind::Hello,
    FrameKind::HelloAck,
    FrameKind::ExecStart,
    FrameKind::ExecStarted,
    FrameKind::Stdin,
    FrameKind::StdinClose,
    FrameKind::Stdout,
    FrameKind::Stderr,
    FrameKind::Signal,
    FrameKind::Resize,
    FrameKind::Exited,
    FrameKind::Credit,
    FrameKind::Shutdown,
    FrameKind::Goodbye,
    FrameKind::GoodbyeAck,
    FrameKind::Heartbeat,
    FrameKind::Error,
    FrameKind::Welcome,
];

/// Upper bound on the decode buffer's capacity after feeding `piece_len` bytes: one maximal frame
/// buffered, plus the worst-case `BytesMut` growth, plus the piece just fed.
pub fn capacity_bound(piece_len: usize) -> usize {
    2 * (HEADER_LEN + MAX_PAYLOAD) + piece_len
}

/// Result of draining a byte stream through a fresh [`FrameCodec`].
#[derive(Debug, PartialEq, Eq)]
pub struct Drained {
    /// Frames decoded before the stream ran dry or failed.
    pub frames: Vec<Frame>,
    /// Whether the decoder reported an error (the session would be closed).
    pub failed: bool,
    /// Bytes left in the buffer at the end (an incomplete frame), when it did not fail.
    pub leftover: Vec<u8>,
}

/// Feeds `wire` to a fresh codec in pieces whose sizes cycle through `chunks` (0 means "all the
/// rest"), decoding after every piece until `None` or an error, and checks the decoder's
/// invariants on the way: bounded buffer, exact consumption, no frame above [`MAX_PAYLOAD`].
pub fn drain(wire: &[u8], chunks: &[usize]) -> Drained {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = wire;
    let mut i = 0;
    while !rest.is_empty() {
        let want = chunks.get(i % chunks.len().max(1)).copied().unwrap_or(0);
        i += 1;
        let n = if want == 0 { rest.len() } else { want.min(rest.len()) };
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= MAX_PAYLOAD, "oversized frame decoded");
                    assert_eq!(
                        before - buf.len(),
                        HEADER_LEN + frame.payload.len(),
                        "decoder consumed a different number of bytes than the frame holds"
                    );
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "decoder consumed bytes without a frame");
                    break;
                }
                Err(err) => {
                    exercise_error(&err);
                    return Drained { frames, failed: true, leftover: Vec::new() };
                }
            }
        }
        assert!(
            buf.capacity() <= capacity_bound(piece.len()),
            "decode buffer grew to {} bytes",
            buf.capacity()
        );
    }
    Drained { frames, failed: false, leftover: buf.to_vec() }
}

/// Formats an error both ways, as the host does when it logs and reports it.
pub fn exercise_error(err: &ProtocolError) {
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = source {
        std::hint::black_box(e.to_string());
        source = e.source();
    }
    std::hint::black_box(format!("{err:?}"));
}

/// Parses `frame` as `M`, checks the kind contract and, on success, that the message survives a
/// round trip through its own encoding. Returns the message so callers can use it the way the
/// host does.
fn typed<M: Message + PartialEq + std::fmt::Debug>(frame: &Frame) -> Option<M> {
    match M::from_frame(frame) {
        Ok(msg) => {
            assert_eq!(frame.kind, M::KIND, "message parsed from a frame of another kind");
            let again = msg.to_frame(frame.stream).expect("a decoded message must re-encode");
            assert_eq!(again.kind, M::KIND);
            assert_eq!(again.stream, frame.stream);
            let back = M::from_frame(&again).expect("a re-encoded message must decode");
            assert_eq!(back, msg, "message changed in a round trip");
            Some(msg)
        }
        Err(err) => {
            if frame.kind != M::KIND {
                assert!(
                    matches!(err, ProtocolError::UnexpectedKind { .. }),
                    "wrong-kind frame gave {err:?}"
                );
            } else {
                assert!(matches!(err, ProtocolError::Decode { .. }), "bad payload gave {err:?}");
            }
            exercise_error(&err);
            None
        }
    }
}

/// Tries every typed message on `frame` (only the one matching its kind may succeed) and uses
/// the decoded values the way the host and the CLI do.
pub fn check_frame(frame: &Frame) {
    if let Some(hello) = typed::<Hello>(frame) {
        let _ = check_version(&hello).map_err(|e| exercise_error(&e));
    }
    typed::<HelloAck>(frame);
    typed::<ExecStart>(frame);
    typed::<ExecStarted>(frame);
    typed::<SignalRequest>(frame);
    typed::<WindowSize>(frame);
    if let Some(exited) = typed::<Exited>(frame) {
        // What `cella run` turns into its own exit status.
        std::hint::black_box(exited.exit_status().clamp(0, 255) as u8);
    }
    typed::<Credit>(frame);
    typed::<Shutdown>(frame);
    typed::<Goodbye>(frame);
    typed::<Heartbeat>(frame);
    typed::<ErrorMessage>(frame);
    if let Some(welcome) = typed::<Welcome>(frame) {
        let _ = check_version(&welcome.agent).map_err(|e| exercise_error(&e));
    }
    // The frame itself must re-encode to the bytes it was decoded from (header + payload).
    let bytes = frame.to_bytes().expect("a decoded frame must re-encode");
    assert_eq!(bytes.len(), HEADER_LEN + frame.payload.len());
}
