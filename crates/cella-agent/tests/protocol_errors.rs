//! Hostile or broken host input: every well-framed mistake is answered and survived; a stream
//! that does not decode ends serving with an error (the caller powers off). Nothing panics.

mod support;

use std::time::Duration;

use bytes::Bytes;
use cella_agent::ServeError;
use cella_protocol::{
    ErrorCode, ErrorMessage, Exited, Frame, FrameKind, Message, SignalRequest, INITIAL_WINDOW,
};
use futures::SinkExt;
use support::{Host, SessionLog};
use tokio::io::AsyncWriteExt;

async fn expect_error(host: &mut Host, stream: u64) -> ErrorMessage {
    loop {
        let frame = host.next().await;
        if frame.stream == stream && frame.kind == FrameKind::Error {
            return ErrorMessage::from_frame(&frame).unwrap();
        }
    }
}

#[tokio::test]
async fn garbage_bytes_end_serving_with_a_desync_error() {
    let mut host = Host::start().await;
    let raw = host.conn.get_mut();
    raw.write_all(&[0xff; 64]).await.unwrap();
    raw.flush().await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), host.server).await.unwrap();
    assert!(matches!(result.unwrap(), Err(ServeError::Desync(_))));
}

#[tokio::test]
async fn frames_for_unknown_sessions_are_answered_with_unknown_session() {
    let mut host = Host::start().await;
    host.send_msg(42, &SignalRequest { signal: 15 }).await;
    assert_eq!(expect_error(&mut host, 42).await.code, ErrorCode::UnknownSession);
    host.send(Frame::new(FrameKind::Stdin, 43, Bytes::from_static(b"x"))).await;
    assert_eq!(expect_error(&mut host, 43).await.code, ErrorCode::UnknownSession);
}

#[tokio::test]
async fn malformed_requests_are_refused_and_the_connection_survives() {
    let mut host = Host::start().await;
    host.send(Frame::new(FrameKind::ExecStart, 1, Bytes::from_static(b"{not json"))).await;
    assert_eq!(expect_error(&mut host, 1).await.code, ErrorCode::BadRequest);
    host.send(Frame::new(
        FrameKind::ExecStart,
        2,
        Bytes::from_static(br#"{"argv":["true"],"bogus":1}"#),
    ))
    .await;
    assert_eq!(expect_error(&mut host, 2).await.code, ErrorCode::BadRequest);
    host.send(Frame::new(FrameKind::Stdout, 3, Bytes::from_static(b"host cannot send this"))).await;
    assert_eq!(expect_error(&mut host, 3).await.code, ErrorCode::BadRequest);
    host.send(Frame::new(FrameKind::Hello, 0, Bytes::from_static(b"{}"))).await;
    assert_eq!(expect_error(&mut host, 0).await.code, ErrorCode::BadRequest);

    host.exec(4, &["true"]).await;
    let log = host.run_to_exit(4, true).await;
    assert_eq!(log.exited, Some(Exited::Code { code: 0 }));
}

#[tokio::test]
async fn invalid_signal_numbers_are_refused() {
    let mut host = Host::start().await;
    host.exec(1, &["sleep", "1"]).await;
    for signal in [0, -9, 65, i32::MAX] {
        host.send_msg(1, &SignalRequest { signal }).await;
        let mut log = SessionLog::default();
        while log.errors.is_empty() {
            let frame = host.next().await;
            host.record(&mut log, &frame, true).await;
        }
        assert_eq!(log.errors[0].code, ErrorCode::BadRequest);
    }
    let log = host.run_to_exit(1, true).await;
    assert_eq!(log.exited, Some(Exited::Code { code: 0 }));
}

#[tokio::test]
async fn stdin_beyond_the_window_is_refused_not_buffered() {
    let mut host = Host::start().await;
    // A process that never reads its stdin.
    host.exec(1, &["sleep", "3"]).await;
    let big = Bytes::from(vec![b'x'; INITIAL_WINDOW as usize]);
    host.send(Frame::new(FrameKind::Stdin, 1, big)).await;
    host.send(Frame::new(FrameKind::Stdin, 1, Bytes::from_static(b"one too many"))).await;
    let error = expect_error(&mut host, 1).await;
    assert_eq!(error.code, ErrorCode::BadRequest);
    host.send_msg(1, &SignalRequest { signal: 9 }).await;
    let log = host.run_to_exit(1, true).await;
    assert_eq!(log.exited, Some(Exited::Signal { signal: 9 }));
}

#[tokio::test]
async fn frames_before_the_handshake_are_refused() {
    let (host_end, agent_end) = tokio::io::duplex(1 << 16);
    let reaper = cella_agent::Reaper::start(cella_agent::ReapScope::Registered).unwrap();
    let server = tokio::spawn(cella_agent::serve(agent_end, reaper, Default::default()));
    let mut conn = tokio_util::codec::Framed::new(host_end, cella_protocol::FrameCodec::new());
    assert_eq!(support::next(&mut conn).await.kind, FrameKind::Hello);
    conn.send(support::request(&["true"]).to_frame(5).unwrap()).await.unwrap();
    let reply = support::next(&mut conn).await;
    assert_eq!(reply.stream, 5);
    assert_eq!(ErrorMessage::from_frame(&reply).unwrap().code, ErrorCode::BadRequest);
    drop(conn);
    let outcome = tokio::time::timeout(Duration::from_secs(10), server).await.unwrap();
    assert_eq!(outcome.unwrap().unwrap(), cella_agent::ServeOutcome::HostGone);
}

#[tokio::test]
async fn protocol_version_mismatch_is_an_error() {
    let (host_end, agent_end) = tokio::io::duplex(1 << 16);
    let reaper = cella_agent::Reaper::start(cella_agent::ReapScope::Registered).unwrap();
    let server = tokio::spawn(cella_agent::serve(agent_end, reaper, Default::default()));
    let mut conn = tokio_util::codec::Framed::new(host_end, cella_protocol::FrameCodec::new());
    assert_eq!(support::next(&mut conn).await.kind, FrameKind::Hello);
    let ack = cella_protocol::HelloAck { protocol_version: 999, heartbeat_interval_ms: 0 };
    conn.send(ack.to_frame(0).unwrap()).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), server).await.unwrap();
    match outcome.unwrap() {
        Err(ServeError::VersionMismatch { host: 999, agent }) => {
            assert_eq!(agent, cella_protocol::PROTOCOL_VERSION)
        }
        other => panic!("expected a version mismatch, got {other:?}"),
    }
}
