//! Functional tests of exec sessions: real processes on the test machine, driven through the
//! agent's real protocol server by a fake host over an in-memory stream.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cella_protocol::{
    Credit, ErrorCode, ExecStart, Exited, Frame, FrameKind, Heartbeat, Message, SignalRequest,
    SpawnFailure, StreamId, WindowSize, INITIAL_WINDOW,
};
use support::{alive, is_root, request, tty_request, write_file, Host, SessionLog};

#[tokio::test]
async fn stdout_and_stderr_stay_separate_and_exit_code_is_reported() {
    let mut host = Host::start().await;
    host.exec(1, &["sh", "-c", "echo out; echo err >&2; exit 3"]).await;
    let log = host.run_to_exit(1, true).await;

    assert!(log.started.is_some());
    assert_eq!(log.stdout, b"out\n");
    assert_eq!(log.stderr, b"err\n");
    assert_eq!(log.exited, Some(Exited::Code { code: 3 }));
    assert_eq!(log.kinds.first(), Some(&FrameKind::ExecStarted));
    assert_eq!(log.kinds.last(), Some(&FrameKind::Exited));
}

#[tokio::test]
async fn hello_announces_version_and_exec_capability() {
    let host = Host::start().await;
    assert_eq!(host.hello.protocol_version, cella_protocol::PROTOCOL_VERSION);
    assert!(host.hello.capabilities.contains(&"exec".to_string()));
    assert!(!host.hello.agent_version.is_empty());
}

#[tokio::test]
async fn binary_stdin_round_trips_through_cat_beyond_both_windows() {
    let mut host = Host::start().await;
    let data: Vec<u8> = (0..(3 * INITIAL_WINDOW as usize)).map(|i| (i * 7 % 256) as u8).collect();
    host.exec(1, &["cat"]).await;

    let mut log = SessionLog::default();
    host.write_stdin(1, &data, &mut log).await;
    host.send(Frame::new(FrameKind::StdinClose, 1, Bytes::new())).await;
    while log.exited.is_none() {
        let frame = host.next().await;
        if frame.kind != FrameKind::Credit {
            host.record(&mut log, &frame, true).await;
        }
    }

    assert_eq!(log.exited, Some(Exited::Code { code: 0 }));
    assert_eq!(log.stdout.len(), data.len());
    assert!(log.stdout == data, "stdout differs from stdin");
}

#[tokio::test]
async fn stdin_close_delivers_eof() {
    let mut host = Host::start().await;
    host.exec(1, &["sh", "-c", "wc -c"]).await;
    host.send(Frame::new(FrameKind::Stdin, 1, Bytes::from_static(b"12345"))).await;
    host.send(Frame::new(FrameKind::StdinClose, 1, Bytes::new())).await;
    let log = host.run_to_exit(1, true).await;
    assert_eq!(String::from_utf8_lossy(&log.stdout).trim(), "5");
    assert_eq!(log.exited, Some(Exited::Code { code: 0 }));
}

#[tokio::test]
async fn output_pauses_without_credit_and_resumes_with_it() {
    let mut host = Host::start().await;
    let total = 4 * INITIAL_WINDOW as usize;
    host.exec(1, &["head", "-c", &total.to_string(), "/dev/zero"]).await;

    // Without credit the agent sends exactly one window, then nothing.
    let mut log = SessionLog::default();
    while log.stdout.len() < INITIAL_WINDOW as usize {
        let frame = host.next().await;
        host.record(&mut log, &frame, false).await;
    }
    assert_eq!(log.stdout.len(), INITIAL_WINDOW as usize);
    assert!(host.next_within(Duration::from_millis(500)).await.is_none(), "sent past the credit");
    assert!(log.exited.is_none());

    // Granting the credit lets the rest through.
    let credit = Credit { stream: StreamId::Stdout, bytes: INITIAL_WINDOW };
    host.send_msg(1, &credit).await;
    while log.exited.is_none() {
        let frame = host.next().await;
        host.record(&mut log, &frame, true).await;
    }
    assert_eq!(log.stdout.len(), total);
    assert_eq!(log.exited, Some(Exited::Code { code: 0 }));
}

#[tokio::test]
async fn signal_reaches_the_process_group() {
    let mut host = Host::start().await;
    // The shell waits for a background child: both are in the session's group.
    host.exec(1, &["sh", "-c", "sleep 30 & wait"]).await;
    let started = host.next().await;
    assert_eq!(started.kind, FrameKind::ExecStarted);
    host.send_msg(1, &SignalRequest { signal: libc::SIGTERM }).await;
    let log = host.run_to_exit(1, true).await;
    assert_eq!(log.exited, Some(Exited::Signal { signal: libc::SIGTERM }));
}

#[tokio::test]
async fn background_grandchild_holding_the_pipe_does_not_hang_the_session() {
    let mut host = Host::start().await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("grandchild-finished");
    let script = format!("(sleep 30; touch {}) & echo done", marker.display());
    host.exec(1, &["sh", "-c", &script]).await;
    let log = host.run_to_exit(1, true).await;
    assert_eq!(log.stdout, b"done\n");
    assert_eq!(log.exited, Some(Exited::Code { code: 0 }));
    assert!(!marker.exists(), "the session waited for the grandchild that held its pipe");
}

#[tokio::test]
async fn chatty_background_grandchild_cannot_keep_the_session_open() {
    let mut host = Host::start().await;
    // The grandchild starts writing only once the command has exited, and never stops.
    let script =
        "echo before; (while kill -0 $$ 2>/dev/null; do sleep 0.01; done; exec yes) & exit 4";
    host.exec(1, &["sh", "-c", script]).await;
    let log = host.run_to_exit(1, true).await;
    assert_eq!(log.exited, Some(Exited::Code { code: 4 }));
    assert!(log.stdout.starts_with(b"before\ny\n"), "the grandchild's output never arrived");
    // What arrived after the exit is bounded by the post-exit cap, with slack for what the
    // grandchild wrote between the exit and the agent's noticing it.
    let cap = cella_agent::session::output::POST_EXIT_MAX_BYTES as usize;
    assert!(log.stdout.len() < 16 * cap, "{} bytes", log.stdout.len());
}

#[tokio::test]
async fn environment_starts_clean_with_home_from_passwd() {
    std::env::set_var("CELLA_TEST_LEAK", "leaked");
    let mut host = Host::start().await;
    let mut req = request(&["sh", "-c", "echo \"$FOO|$HOME|$CELLA_TEST_LEAK|$PATH\"; pwd"]);
    req.env = vec![("FOO".into(), "a".into()), ("FOO".into(), "b".into())];
    req.cwd = Some("/tmp".into());
    host.send_msg(1, &req).await;
    let log = host.run_to_exit(1, true).await;
    let out = String::from_utf8_lossy(&log.stdout);
    assert_eq!(out, format!("b|/fakeroot||{}\n/tmp\n", cella_agent::exec::DEFAULT_PATH));
}

#[tokio::test]
async fn path_lookup_uses_the_requests_path() {
    let mut host = Host::start().await;
    let bin = tempfile::tempdir().unwrap();
    write_file(bin.path(), "hello-cella", "#!/bin/sh\necho from-custom-path\n", 0o755);
    let mut req = request(&["hello-cella"]);
    req.env = vec![("PATH".into(), format!("{}:/usr/bin:/bin", bin.path().display()))];
    host.send_msg(1, &req).await;
    let log = host.run_to_exit(1, true).await;
    assert_eq!(log.stdout, b"from-custom-path\n");
}

#[tokio::test]
async fn spawn_failures_are_classified() {
    let mut host = Host::start().await;
    let dir = tempfile::tempdir().unwrap();
    let plain = write_file(dir.path(), "plain", "not a program\n", 0o644);
    let no_magic = write_file(dir.path(), "nomagic", "\x7fnot an elf", 0o755);
    let plain = plain.to_str().unwrap();
    let missing = dir.path().join("missing");

    let cases: Vec<(ExecStart, SpawnFailure)> = vec![
        (request(&["definitely-not-a-command-cella"]), SpawnFailure::NotFound),
        (request(&[missing.to_str().unwrap()]), SpawnFailure::NotFound),
        (request(&[plain]), SpawnFailure::NotExecutable),
        (request(&[no_magic.to_str().unwrap()]), SpawnFailure::NotExecutable),
        (
            ExecStart { cwd: Some("/nonexistent-cella-dir".into()), ..request(&["true"]) },
            SpawnFailure::Other,
        ),
        (
            ExecStart { user: Some("no-such-user".into()), ..request(&["true"]) },
            SpawnFailure::Other,
        ),
        (request(&[]), SpawnFailure::Other),
    ];
    for (i, (req, want)) in cases.into_iter().enumerate() {
        let stream = 10 + i as u64;
        host.send_msg(stream, &req).await;
        let log = host.run_to_exit(stream, true).await;
        match log.exited {
            Some(Exited::SpawnFailed { reason, ref message }) => {
                assert_eq!(reason, want, "{req:?}: {message}");
                assert!(!message.is_empty());
            }
            other => panic!("{req:?}: expected a spawn failure, got {other:?}"),
        }
        assert_eq!(log.kinds, vec![FrameKind::Exited], "no ExecStarted for a failed spawn");
    }
}

#[tokio::test]
async fn duplicate_stream_id_is_refused() {
    let mut host = Host::start().await;
    host.exec(1, &["sleep", "2"]).await;
    host.exec(1, &["true"]).await;
    let mut log = SessionLog::default();
    while log.errors.is_empty() {
        let frame = host.next().await;
        host.record(&mut log, &frame, true).await;
    }
    assert_eq!(log.errors[0].code, ErrorCode::SessionExists);
    let log = host.run_to_exit(1, true).await;
    assert_eq!(log.exited, Some(Exited::Code { code: 0 }));
}

#[tokio::test]
async fn tty_session_has_a_controlling_terminal_of_the_requested_size() {
    let mut host = Host::start().await;
    let req = tty_request(&["sh", "-c", "test -t 0 && test -t 1 && stty size && tty"], 33, 101);
    host.send_msg(1, &req).await;
    let log = host.run_to_exit(1, true).await;
    let out = String::from_utf8_lossy(&log.stdout);
    assert!(out.contains("33 101"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(log.stderr.is_empty(), "a tty session sends everything as stdout");
    assert_eq!(log.exited, Some(Exited::Code { code: 0 }));
}

#[tokio::test]
async fn tty_resize_and_ctrl_d_on_stdin_close() {
    let mut host = Host::start().await;
    // Reads one line, prints the size it sees afterwards, then cat ends on Ctrl-D.
    let script = "read line; stty size; cat; echo end";
    host.send_msg(1, &tty_request(&["sh", "-c", script], 10, 20)).await;
    assert_eq!(host.next().await.kind, FrameKind::ExecStarted);
    host.send_msg(1, &WindowSize { rows: 50, cols: 60 }).await;
    // Resizes and stdin travel through different queues; let the resize land first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    host.send(Frame::new(FrameKind::Stdin, 1, Bytes::from_static(b"go\n"))).await;
    host.send(Frame::new(FrameKind::StdinClose, 1, Bytes::new())).await;
    let mut log = SessionLog::default();
    while log.exited.is_none() {
        let frame = host.next().await;
        if frame.stream == 1 && frame.kind != FrameKind::Credit {
            host.record(&mut log, &frame, true).await;
        }
    }
    let out = String::from_utf8_lossy(&log.stdout);
    assert!(out.contains("50 60"), "{out:?}");
    assert!(out.contains("end"), "{out:?}");
    assert_eq!(log.exited, Some(Exited::Code { code: 0 }));
}

#[tokio::test]
async fn runs_as_the_requested_user() {
    if !is_root() {
        eprintln!("SKIPPED: switching users needs root");
        return;
    }
    let mut host = Host::start().await;
    let req = ExecStart {
        user: Some("alice".into()),
        ..request(&["sh", "-c", "id -u; id -g; id -G; echo $HOME"])
    };
    host.send_msg(1, &req).await;
    let log = host.run_to_exit(1, true).await;
    assert_eq!(String::from_utf8_lossy(&log.stdout), "4321\n4322\n4322 777\n/home/alice\n");

    let req = ExecStart { user: Some("5555".into()), ..request(&["sh", "-c", "id -u; id -g"]) };
    host.send_msg(2, &req).await;
    let log = host.run_to_exit(2, true).await;
    assert_eq!(String::from_utf8_lossy(&log.stdout), "5555\n5555\n");
}

#[tokio::test]
async fn many_concurrent_sessions_each_get_their_own_output() {
    let mut host = Host::start().await;
    for stream in 1..=8u64 {
        host.exec(stream, &["sh", "-c", &format!("echo session-{stream}; exit {stream}")]).await;
    }
    let mut logs: std::collections::HashMap<u64, SessionLog> = Default::default();
    while logs.values().filter(|l| l.exited.is_some()).count() < 8 {
        let frame = host.next().await;
        let stream = frame.stream;
        let mut log = logs.remove(&stream).unwrap_or_default();
        host.record(&mut log, &frame, true).await;
        logs.insert(stream, log);
    }
    for stream in 1..=8u64 {
        let log = &logs[&stream];
        assert_eq!(log.stdout, format!("session-{stream}\n").as_bytes());
        assert_eq!(log.exited, Some(Exited::Code { code: stream as i32 }));
    }
}

#[tokio::test]
async fn heartbeats_arrive_at_the_requested_interval() {
    let mut host = Host::start_with(100).await;
    let frame = host.next().await;
    assert_eq!(frame.kind, FrameKind::Heartbeat);
    let beat = Heartbeat::from_frame(&frame).unwrap();
    assert_eq!(beat.sessions, 0);
}

#[tokio::test]
async fn late_stdin_after_exit_is_dropped_silently() {
    let mut host = Host::start().await;
    host.exec(1, &["true"]).await;
    host.run_to_exit(1, true).await;
    host.send(Frame::new(FrameKind::Stdin, 1, Bytes::from_static(b"late"))).await;
    host.send(Frame::new(FrameKind::StdinClose, 1, Bytes::new())).await;
    assert!(host.next_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn shutdown_terminates_sessions_then_says_goodbye() {
    let mut host = Host::start().await;
    host.exec(1, &["sleep", "30"]).await;
    let started = host.next().await;
    assert_eq!(started.kind, FrameKind::ExecStarted);
    let pid = cella_protocol::ExecStarted::from_frame(&started).unwrap().pid;

    host.send_msg(0, &cella_protocol::Shutdown { grace_ms: 5000 }).await;
    let log = host.run_to_exit(1, true).await;
    assert_eq!(log.exited, Some(Exited::Signal { signal: libc::SIGTERM }));

    let goodbye = host.next().await;
    assert_eq!(goodbye.kind, FrameKind::Goodbye);
    let goodbye = cella_protocol::Goodbye::from_frame(&goodbye).unwrap();
    assert_eq!(goodbye.killed_sessions, 1);
    host.send(Frame::new(FrameKind::GoodbyeAck, 0, Bytes::new())).await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), host.server).await.unwrap();
    assert_eq!(outcome.unwrap().unwrap(), cella_agent::ServeOutcome::Shutdown);
    assert!(!alive(pid));
}

#[tokio::test]
async fn shutdown_escalates_to_sigkill_after_the_grace() {
    let mut host = Host::start().await;
    host.exec(1, &["sh", "-c", "trap '' TERM; echo ready; sleep 30"]).await;
    let mut log = SessionLog::default();
    while log.stdout.is_empty() {
        let frame = host.next().await;
        host.record(&mut log, &frame, true).await;
    }
    host.send_msg(0, &cella_protocol::Shutdown { grace_ms: 300 }).await;
    let log = host.run_to_exit(1, true).await;
    assert_eq!(log.exited, Some(Exited::Signal { signal: libc::SIGKILL }));
    assert_eq!(host.next().await.kind, FrameKind::Goodbye);
}

#[tokio::test]
async fn host_disconnect_kills_sessions_and_ends_serving() {
    let mut host = Host::start().await;
    host.exec(1, &["sleep", "30"]).await;
    let started = host.next().await;
    let pid = cella_protocol::ExecStarted::from_frame(&started).unwrap().pid;
    let server = host.server;
    drop(host.conn);
    let outcome = tokio::time::timeout(Duration::from_secs(10), server).await.unwrap();
    assert_eq!(outcome.unwrap().unwrap(), cella_agent::ServeOutcome::HostGone);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(pid), "session process survived the host");
}

#[tokio::test]
async fn exec_is_refused_while_shutting_down() {
    let mut host = Host::start().await;
    host.exec(1, &["sh", "-c", "trap '' TERM; sleep 3"]).await;
    assert_eq!(host.next().await.kind, FrameKind::ExecStarted);
    host.send_msg(0, &cella_protocol::Shutdown { grace_ms: 2000 }).await;
    host.exec(2, &["true"]).await;
    let mut log = SessionLog::default();
    while log.errors.is_empty() {
        let frame = host.next().await;
        if frame.stream == 2 {
            host.record(&mut log, &frame, true).await;
        }
    }
    assert_eq!(log.errors[0].code, ErrorCode::ShuttingDown);
}
