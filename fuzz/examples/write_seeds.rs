//! Writes the checked-in seed corpora under `fuzz/seeds/` (valid frames and messages the fuzzer
//! mutates from). Deterministic; rerun after a protocol change:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --target-dir fuzz/target/seeds --example write_seeds
//! ```

use std::path::{Path, PathBuf};

use cella_protocol::{
    Credit, ErrorCode, ErrorMessage, ExecStart, ExecStarted, Exited, Frame, FrameKind, Goodbye,
    Heartbeat, Hello, HelloAck, Message, Shutdown, SignalRequest, SpawnFailure, StreamId, Welcome,
    WindowSize, PROTOCOL_VERSION,
};

fn hello() -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "0.1.0".into(),
        capabilities: vec!["exec".into(), "tty".into()],
        uptime_ms: 412,
    }
}

fn exec_start() -> ExecStart {
    ExecStart {
        argv: vec!["sh".into(), "-c".into(), "echo hi; exit 3".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into()), ("TERM".into(), "xterm".into())],
        cwd: Some("/tmp".into()),
        user: Some("1000".into()),
        tty: Some(WindowSize { rows: 24, cols: 80 }),
    }
}

fn exited() -> [Exited; 3] {
    [
        Exited::Code { code: 3 },
        Exited::Signal { signal: 9 },
        Exited::SpawnFailed { reason: SpawnFailure::NotFound, message: "sh: not found".into() },
    ]
}

/// One of each control message, as frames on a session stream (or stream 0 where it belongs).
fn control_frames() -> Vec<Frame> {
    let s = 5;
    let mut frames = vec![
        hello().to_frame(0).unwrap(),
        HelloAck { protocol_version: PROTOCOL_VERSION, heartbeat_interval_ms: 1000 }
            .to_frame(0)
            .unwrap(),
        exec_start().to_frame(s).unwrap(),
        ExecStarted { pid: 42 }.to_frame(s).unwrap(),
        SignalRequest { signal: 15 }.to_frame(s).unwrap(),
        WindowSize { rows: 50, cols: 132 }.to_frame(s).unwrap(),
        Credit { stream: StreamId::Stdout, bytes: 65536 }.to_frame(s).unwrap(),
        Shutdown { grace_ms: 3000 }.to_frame(0).unwrap(),
        Goodbye { killed_sessions: 1 }.to_frame(0).unwrap(),
        Heartbeat { uptime_ms: 5000, sessions: 2 }.to_frame(0).unwrap(),
        ErrorMessage { code: ErrorCode::UnknownSession, message: "no session 9".into() }
            .to_frame(9)
            .unwrap(),
        Welcome {
            protocol_version: PROTOCOL_VERSION,
            first_stream: 256,
            stream_count: 256,
            agent: hello(),
        }
        .to_frame(0)
        .unwrap(),
    ];
    frames.extend(exited().iter().map(|e| e.to_frame(s).unwrap()));
    frames
}

fn wire(frames: &[Frame]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.to_bytes().unwrap().to_vec()).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"));

    // decode_frames: [chunk a, chunk b, wire bytes...].
    let frames_dir = root.join("decode_frames");
    std::fs::create_dir_all(&frames_dir).unwrap();
    let with_chunks = |a: u8, b: u8, frames: &[Frame]| [vec![a, b], wire(frames)].concat();
    write(&frames_dir, "hello", &with_chunks(0, 0, &[hello().to_frame(0).unwrap()]));
    write(&frames_dir, "exec_start", &with_chunks(1, 0, &[exec_start().to_frame(5).unwrap()]));
    let out = [
        Frame::new(FrameKind::Stdout, 5, &b"hi\n"[..]),
        Frame::new(FrameKind::Stderr, 5, &b"warning: \xff\x00 bytes\n"[..]),
        Frame::new(FrameKind::Stdin, 5, &b"input"[..]),
        Frame::new(FrameKind::StdinClose, 5, &b""[..]),
    ];
    write(&frames_dir, "stdout_data", &with_chunks(7, 3, &out));
    for (i, e) in exited().iter().enumerate() {
        write(&frames_dir, &format!("exited_{i}"), &with_chunks(16, 1, &[e.to_frame(5).unwrap()]));
    }
    let mut session = control_frames();
    session.insert(4, out[0].clone());
    session.push(Frame::new(FrameKind::GoodbyeAck, 0, &b""[..]));
    write(&frames_dir, "session", &with_chunks(5, 0, &session));
    // A frame that announces more payload than it carries: the bounded-wait path.
    let mut partial = wire(&[Frame::new(FrameKind::Stdout, 1, vec![b'x'; 64])]);
    partial[..4].copy_from_slice(&(1u32 << 20).to_le_bytes());
    write(&frames_dir, "partial_max", &[vec![3, 0], partial].concat());

    // decode_messages: [kind index, stream, JSON payload...].
    let msgs_dir = root.join("decode_messages");
    std::fs::create_dir_all(&msgs_dir).unwrap();
    for (i, frame) in control_frames().iter().enumerate() {
        let seed =
            [vec![frame.kind as u8 - 1, frame.stream as u8], frame.payload.to_vec()].concat();
        write(&msgs_dir, &format!("{:02}_{:?}", i, frame.kind).to_lowercase(), &seed);
    }
    println!("seeds written to {}", root.display());
}
