//! The frame: the unit of the byte stream between host and guest.
//!
//! Every frame is a fixed 16-byte little-endian header followed by `len` payload bytes:
//!
//! ```text
//!  0      4     5      6        8                16
//!  | len  | kind| flags| reserved|   stream id    | payload (len bytes) ...
//! ```
//!
//! The decoder validates the whole header before it reserves a single payload byte: a length
//! above [`MAX_PAYLOAD`], an unknown kind, unknown flags or non-zero reserved bits are errors, so
//! a hostile peer can make the decoder fail but never make it allocate more than one frame's
//! worth of memory or wait for more than [`MAX_PAYLOAD`] bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::ProtocolError;

/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 16;

/// Largest payload a frame may carry. Data frames are cut well below it ([`DATA_CHUNK`]); control
/// messages are small JSON documents. 1 MiB leaves room for large argv/env lists while keeping
/// the worst-case buffer per connection small.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Size at which producers cut stdout / stderr / stdin data into frames.
pub const DATA_CHUNK: usize = 32 * 1024;

/// Stream id of the connection-level control stream (handshake, heartbeat, shutdown).
pub const CONTROL_STREAM: u64 = 0;

/// What a frame carries. The numeric values are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Agent -> host, first frame on the stream: version and capabilities (JSON).
    Hello = 1,
    /// Host -> agent: handshake accepted (JSON).
    HelloAck = 2,
    /// Host -> agent: start a process in a new exec session (JSON).
    ExecStart = 3,
    /// Agent -> host: the session's process is running (JSON).
    ExecStarted = 4,
    /// Host -> agent: bytes for the process's stdin (raw).
    Stdin = 5,
    /// Host -> agent: the host's stdin reached its end (empty).
    StdinClose = 6,
    /// Agent -> host: bytes the process wrote to stdout (raw).
    Stdout = 7,
    /// Agent -> host: bytes the process wrote to stderr (raw).
    Stderr = 8,
    /// Host -> agent: deliver a signal to the session's process (JSON).
    Signal = 9,
    /// Host -> agent: terminal window size changed (JSON).
    Resize = 10,
    /// Agent -> host: the session ended; exactly one per session (JSON).
    Exited = 11,
    /// Either way: the receiver may send this many more bytes of a stream (JSON).
    Credit = 12,
    /// Host -> agent: stop every process and power off (JSON).
    Shutdown = 13,
    /// Agent -> host: the agent's final frame before poweroff (JSON).
    Goodbye = 14,
    /// Host -> agent: the final frame was received; the agent may power off (empty).
    GoodbyeAck = 15,
    /// Agent -> host: periodic liveness report (JSON).
    Heartbeat = 16,
    /// Either way: a request on this stream failed (JSON).
    Error = 17,
    /// Sandbox process -> client: the relay accepted the client (JSON).
    Welcome = 18,
}

impl FrameKind {
    /// Maps a wire byte to a kind; unknown values are rejected, never guessed.
    pub fn from_u8(value: u8) -> Option<Self> {
        use FrameKind::*;
        Some(match value {
            1 => Hello,
            2 => HelloAck,
            3 => ExecStart,
            4 => ExecStarted,
            5 => Stdin,
            6 => StdinClose,
            7 => Stdout,
            8 => Stderr,
            9 => Signal,
            10 => Resize,
            11 => Exited,
            12 => Credit,
            13 => Shutdown,
            14 => Goodbye,
            15 => GoodbyeAck,
            16 => Heartbeat,
            17 => Error,
            18 => Welcome,
            _ => return None,
        })
    }
}

/// Frame flag bits. None are defined yet; any set bit is rejected so that a future flag can never
/// be silently ignored by an old peer.
pub const KNOWN_FLAGS: u8 = 0;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload means.
    pub kind: FrameKind,
    /// Session (stream) the frame belongs to; [`CONTROL_STREAM`] for connection-level frames.
    pub stream: u64,
    /// The payload bytes, at most [`MAX_PAYLOAD`].
    pub payload: Bytes,
}

impl Frame {
    /// Builds a frame from its parts.
    pub fn new(kind: FrameKind, stream: u64, payload: impl Into<Bytes>) -> Self {
        Self { kind, stream, payload: payload.into() }
    }

    /// Serialises the frame (header + payload) into `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(ProtocolError::FrameTooLarge { len: self.payload.len() as u64 });
        }
        dst.reserve(HEADER_LEN + self.payload.len());
        dst.put_u32_le(self.payload.len() as u32);
        dst.put_u8(self.kind as u8);
        dst.put_u8(0);
        dst.put_u16_le(0);
        dst.put_u64_le(self.stream);
        dst.extend_from_slice(&self.payload);
        Ok(())
    }

    /// Serialises the frame into a fresh buffer.
    pub fn to_bytes(&self) -> Result<Bytes, ProtocolError> {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_into(&mut buf)?;
        Ok(buf.freeze())
    }
}

/// Parsed header, validated before any payload is buffered.
struct Header {
    len: usize,
    kind: FrameKind,
    stream: u64,
}

fn parse_header(mut raw: &[u8]) -> Result<Header, ProtocolError> {
    let len = raw.get_u32_le() as u64;
    let kind_byte = raw.get_u8();
    let flags = raw.get_u8();
    let reserved = raw.get_u16_le();
    let stream = raw.get_u64_le();

    if len > MAX_PAYLOAD as u64 {
        return Err(ProtocolError::FrameTooLarge { len });
    }
    let kind =
        FrameKind::from_u8(kind_byte).ok_or(ProtocolError::UnknownKind { kind: kind_byte })?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(ProtocolError::UnknownFlags { flags });
    }
    if reserved != 0 {
        return Err(ProtocolError::ReservedBitsSet { value: reserved });
    }
    Ok(Header { len: len as usize, kind, stream })
}

/// Incremental frame codec for tokio's `Framed` and for plain byte buffers.
///
/// After the codec returns an error the stream is out of sync and must be closed; the codec does
/// not try to resynchronise on hostile input.
#[derive(Debug, Default)]
pub struct FrameCodec {
    _private: (),
}

impl FrameCodec {
    /// A codec with the protocol's limits.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = parse_header(&src[..HEADER_LEN])?;
        let total = HEADER_LEN + header.len;
        if src.len() < total {
            // Bounded: header.len <= MAX_PAYLOAD was checked above.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(header.len).freeze();
        Ok(Some(Frame { kind: header.kind, stream: header.stream, payload }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        frame.encode_into(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, ProtocolError> {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut buf)? {
            out.push(frame);
        }
        Ok(out)
    }

    #[test]
    fn frame_round_trips_through_codec() {
        let frame = Frame::new(FrameKind::Stdout, 7, &b"hello\0world"[..]);
        let bytes = frame.to_bytes().unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + 11);
        assert_eq!(decode_all(&bytes).unwrap(), vec![frame]);
    }

    #[test]
    fn partial_frame_waits_for_more_bytes() {
        let bytes = Frame::new(FrameKind::Stdin, 1, vec![9u8; 100]).to_bytes().unwrap();
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&bytes[..50]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&bytes[50..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().payload.len(), 100);
    }

    #[test]
    fn oversized_length_is_rejected_before_buffering() {
        let mut raw = BytesMut::new();
        raw.put_u32_le(u32::MAX);
        raw.put_u8(FrameKind::Stdout as u8);
        raw.put_u8(0);
        raw.put_u16_le(0);
        raw.put_u64_le(1);
        let err = decode_all(&raw).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }));
    }

    #[test]
    fn unknown_kind_flags_and_reserved_bits_are_errors() {
        let mut base = Frame::new(FrameKind::Stdout, 1, &b"x"[..]).to_bytes().unwrap().to_vec();
        base[4] = 200;
        assert!(matches!(decode_all(&base), Err(ProtocolError::UnknownKind { kind: 200 })));
        base[4] = FrameKind::Stdout as u8;
        base[5] = 1;
        assert!(matches!(decode_all(&base), Err(ProtocolError::UnknownFlags { .. })));
        base[5] = 0;
        base[6] = 1;
        assert!(matches!(decode_all(&base), Err(ProtocolError::ReservedBitsSet { .. })));
    }

    #[test]
    fn encoding_an_oversized_payload_fails() {
        let frame = Frame::new(FrameKind::Stdout, 1, vec![0u8; MAX_PAYLOAD + 1]);
        assert!(frame.to_bytes().is_err());
    }
}
