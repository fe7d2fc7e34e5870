//! Errors of the protocol layer. Every one of them means the stream (or the frame) is unusable;
//! none of them is a panic.

use crate::frame::FrameKind;

/// A frame or message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The header announced a payload above the protocol's limit.
    #[error("frame payload of {len} bytes exceeds the {max} byte limit", max = crate::MAX_PAYLOAD)]
    FrameTooLarge {
        /// Announced length.
        len: u64,
    },
    /// The header's kind byte names no known frame kind.
    #[error("unknown frame kind {kind}")]
    UnknownKind {
        /// The offending byte.
        kind: u8,
    },
    /// The header sets flag bits this version does not define.
    #[error("unknown frame flags {flags:#04x}")]
    UnknownFlags {
        /// The offending flags.
        flags: u8,
    },
    /// The header's reserved field is not zero.
    #[error("reserved header bits set ({value:#06x})")]
    ReservedBitsSet {
        /// The offending value.
        value: u16,
    },
    /// A typed message was read from a frame of another kind.
    #[error("expected a {expected:?} frame, got {got:?}")]
    UnexpectedKind {
        /// Kind the reader wanted.
        expected: FrameKind,
        /// Kind that arrived.
        got: FrameKind,
    },
    /// A control payload was not the JSON its kind requires.
    #[error("malformed {kind:?} payload")]
    Decode {
        /// Kind of the frame.
        kind: FrameKind,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A control message could not be serialised.
    #[error("cannot encode {kind:?} payload")]
    Encode {
        /// Kind of the frame.
        kind: FrameKind,
        /// Serialiser error.
        #[source]
        source: serde_json::Error,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: host speaks {host}, agent speaks {agent}")]
    VersionMismatch {
        /// Version of the host.
        host: u32,
        /// Version of the agent.
        agent: u32,
    },
    /// Reading or writing the underlying stream failed.
    #[error("protocol stream i/o failed")]
    Io(#[from] std::io::Error),
}
