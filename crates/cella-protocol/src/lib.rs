//! The wire protocol between cella on the host and `cella-agent` in the guest, and between
//! clients and the sandbox process that relays them.
//!
//! One byte stream (a virtio-console port on the guest side, a Unix socket on the client side)
//! carries [`Frame`]s: a fixed header with length, kind, flags and a stream id, then a bounded
//! payload. Control frames carry JSON [`message`]s; data frames carry raw bytes. Stream 0 is the
//! connection's control stream; every exec session uses its own stream id, so many sessions share
//! one port.
//!
//! The invariants this crate guarantees to both sides:
//! - decoding arbitrary bytes never panics and never buffers more than one maximal frame
//!   ([`MAX_PAYLOAD`]); garbage is an error and the stream is then closed;
//! - unknown frame kinds, flags and JSON fields are errors, not silently skipped;
//! - data streams are flow-controlled by credits ([`INITIAL_WINDOW`]), so a producer that runs
//!   ahead of its consumer is paused rather than buffered without bound.

pub mod error;
pub mod frame;
pub mod message;

pub use error::ProtocolError;
pub use frame::{
    Frame, FrameCodec, FrameKind, CONTROL_STREAM, DATA_CHUNK, HEADER_LEN, MAX_PAYLOAD,
};
pub use message::*;

/// Version of this protocol. Both ends must speak the same one; the handshake fails with a
/// message naming both versions otherwise.
pub const PROTOCOL_VERSION: u32 = 1;

/// Bytes of credit every data stream starts with. 256 KiB keeps the virtio-console pipe full at
/// TCG speeds (about 80 MB/s) while bounding what either side holds per stream.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// Name of the virtio-console port the agent serves on. The agent finds it by this name, not
/// by number, because QEMU and libkrun number their ports differently.
pub const AGENT_PORT_NAME: &str = "cella.agent";

/// Checks the agent's protocol version against ours.
pub fn check_version(agent: &Hello) -> Result<(), ProtocolError> {
    if agent.protocol_version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::VersionMismatch {
            host: PROTOCOL_VERSION,
            agent: agent.protocol_version,
        })
    }
}
