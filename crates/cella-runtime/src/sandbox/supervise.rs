//! Serving a booted sandbox until its run ends, and ending it in order.
//!
//! The supervisor is one loop over everything that can end a run: the VM exiting, the agent
//! saying goodbye or breaking the protocol, a host signal, a client's shutdown request, the idle
//! timeout, the maximum duration, a heartbeat that stopped, and (for `cella run`) the launching
//! client going away. The first of them decides the [`TerminationReason`]; the shutdown that
//! follows is the same for all: ask the agent, wait a bounded time, kill.
//!
//! Idle means no client connected and no session running; output alone is not activity.

use std::time::{Duration, Instant};

use cella_db::TerminationReason;
use tokio::net::UnixListener;

use super::{Signals, SHUTDOWN_GRACE, SHUTDOWN_TIMEOUT};
use crate::backend::{RunningVm, VmExit};
use crate::config::SandboxConfig;
use crate::relay::{Relay, RelayEvent, RelayWatch};

/// A `cella run` sandbox whose client never connects is stopped after this long.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

/// The agent counts as unresponsive after this long without a heartbeat. Generous because a
/// TCG guest under load can stall for seconds.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the timers are checked.
const TICK: Duration = Duration::from_millis(250);

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// Why.
    pub reason: TerminationReason,
    /// Whether the agent sent its final frame: Stopped when true, Crashed when false.
    pub clean: bool,
    /// Detail for the run record.
    pub detail: String,
    /// How the VMM exited.
    pub vm_exit: Option<VmExit>,
}

/// What ended the serving phase, before the shutdown.
enum Trigger {
    /// Stop the guest in order for this reason, giving its processes this grace between
    /// SIGTERM and SIGKILL (capped at [`SHUTDOWN_GRACE`]).
    Stop(TerminationReason, String, Duration),
    /// The agent already said goodbye; the VM is powering off.
    Goodbye,
    /// The agent is gone or broken: kill the VM.
    Kill(TerminationReason, String),
    /// The VM exited by itself.
    VmExited(std::io::Result<VmExit>),
}

impl Trigger {
    /// An orderly stop with the default grace.
    fn stop(reason: TerminationReason, detail: impl Into<String>) -> Self {
        Trigger::Stop(reason, detail.into(), SHUTDOWN_GRACE)
    }
}

/// Serves until the run ends, then shuts the VM down. Never fails: every ending is a
/// [`Termination`].
pub async fn supervise(
    config: &SandboxConfig,
    mut vm: Box<dyn RunningVm>,
    relay: Relay,
    mut watch: RelayWatch,
    listener: UnixListener,
    signals: &mut Signals,
) -> Termination {
    let trigger =
        wait_for_trigger(config, vm.as_mut(), &relay, &mut watch, &listener, signals).await;
    drop(listener);
    match trigger {
        // A guest that powers off right after its goodbye (krun does so within microseconds)
        // can be seen exiting before the goodbye event is read: the relay's flag decides.
        Trigger::VmExited(exit) if relay.goodbye_seen() => Termination {
            reason: TerminationReason::Completed,
            clean: true,
            detail: String::new(),
            vm_exit: exit.ok(),
        },
        Trigger::VmExited(exit) => {
            let exit = exit.ok();
            let detail = format!("VM exited on its own ({exit:?}) without the agent's goodbye");
            Termination { reason: TerminationReason::Failed, clean: false, detail, vm_exit: exit }
        }
        Trigger::Goodbye => finish(vm, TerminationReason::Completed, String::new(), true).await,
        Trigger::Kill(reason, detail) => {
            let _ = vm.kill();
            finish(vm, reason, detail, false).await
        }
        Trigger::Stop(reason, detail, grace) => {
            let grace = grace.min(SHUTDOWN_GRACE);
            relay.request_shutdown(grace).await;
            let clean = wait_goodbye(&mut watch, grace + SHUTDOWN_TIMEOUT).await;
            finish(vm, reason, detail, clean).await
        }
    }
}

async fn wait_for_trigger(
    config: &SandboxConfig,
    vm: &mut dyn RunningVm,
    relay: &Relay,
    watch: &mut RelayWatch,
    listener: &UnixListener,
    signals: &mut Signals,
) -> Trigger {
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            exit = vm.wait() => return Trigger::VmExited(exit),
            event = watch.events.recv() => match event {
                Some(RelayEvent::Goodbye(_)) => return Trigger::Goodbye,
                Some(RelayEvent::ShutdownRequested { grace }) => {
                    let detail = "shutdown requested by a client".into();
                    return Trigger::Stop(TerminationReason::ShutdownRequested, detail, grace);
                }
                Some(RelayEvent::AgentGone(err)) => {
                    // The guest's doing (its agent died, its kernel crashed, it broke the
                    // protocol): the run failed, cella did not.
                    let detail = err.map(|e| super::error_line(&e)).unwrap_or_else(|| "agent port closed".into());
                    return Trigger::Kill(TerminationReason::Failed, detail);
                }
                None => return Trigger::Kill(TerminationReason::InternalError, "relay stopped".into()),
            },
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let relay = relay.clone();
                    tokio::spawn(async move { relay.serve_client(stream).await });
                }
            }
            name = signals.recv() => return Trigger::stop(TerminationReason::Signal, name),
            _ = tick.tick() => {
                if let Some(trigger) = check_timers(config, started, watch) {
                    return trigger;
                }
            }
        }
    }
}

/// The timer-driven endings: max duration, idle, detached client, silent agent.
fn check_timers(config: &SandboxConfig, started: Instant, watch: &RelayWatch) -> Option<Trigger> {
    let now = Instant::now();
    if let Some(max) = config.max_duration() {
        if now.duration_since(started) >= max {
            return Some(Trigger::stop(
                TerminationReason::MaxDurationExceeded,
                format!("ran for {max:?}"),
            ));
        }
    }
    let activity = *watch.activity.borrow();
    let idle_since = activity.changed_at.unwrap_or(started);
    if activity.is_idle() {
        if config.stop_when_detached && activity.clients_total > 0 {
            return Some(Trigger::stop(TerminationReason::Completed, "client detached"));
        }
        if config.stop_when_detached && now.duration_since(started) >= ATTACH_TIMEOUT {
            return Some(Trigger::stop(
                TerminationReason::Failed,
                "launching client never attached",
            ));
        }
        if let Some(idle) = config.idle_timeout() {
            if now.duration_since(idle_since) >= idle {
                return Some(Trigger::stop(
                    TerminationReason::IdleTimeout,
                    format!("idle for {idle:?}"),
                ));
            }
        }
    }
    let last_heartbeat = *watch.heartbeat.borrow();
    if now.duration_since(last_heartbeat) >= HEARTBEAT_TIMEOUT {
        return Some(Trigger::Kill(
            TerminationReason::AgentUnresponsive,
            format!("no heartbeat for {HEARTBEAT_TIMEOUT:?}"),
        ));
    }
    None
}

/// Waits for the agent's goodbye; false if it does not come in time.
async fn wait_goodbye(watch: &mut RelayWatch, limit: Duration) -> bool {
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            event = watch.events.recv() => match event {
                Some(RelayEvent::Goodbye(_)) => return true,
                Some(RelayEvent::ShutdownRequested { .. }) => continue,
                Some(RelayEvent::AgentGone(_)) | None => return false,
            },
            _ = &mut deadline => return false,
        }
    }
}

/// Waits a bounded time for the VM to exit, kills it if it does not, and builds the result.
async fn finish(
    mut vm: Box<dyn RunningVm>,
    reason: TerminationReason,
    detail: String,
    clean: bool,
) -> Termination {
    let exit = match tokio::time::timeout(SHUTDOWN_TIMEOUT, vm.wait()).await {
        Ok(exit) => exit.ok(),
        Err(_) => {
            tracing::warn!("VM did not exit after shutdown; killing it");
            let _ = vm.kill();
            vm.wait().await.ok()
        }
    };
    Termination { reason, clean, detail, vm_exit: exit }
}

#[cfg(test)]
mod tests {
    //! The supervisor against a scripted agent and a fake VMM: how the run's outcome follows from
    //! the agent's final frame rather than from the VMM's exit status (msb_krun reports 0 for a
    //! guest kernel panic as for a clean poweroff).

    use std::future::Future;
    use std::pin::Pin;

    use cella_protocol::{
        FrameCodec, FrameKind, Goodbye, Hello, Message, Shutdown, CONTROL_STREAM, PROTOCOL_VERSION,
    };
    use futures::{SinkExt, StreamExt};
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
    use tokio::sync::oneshot;
    use tokio_util::codec::{FramedRead, FramedWrite};

    use super::*;
    use crate::config::BackendKind;

    /// A VMM that exits with status 0 once `exit` fires, or at once when there is none.
    struct FakeVm {
        exit: Option<oneshot::Receiver<()>>,
    }

    impl RunningVm for FakeVm {
        fn pid(&self) -> Option<u32> {
            None
        }

        fn wait(&mut self) -> Pin<Box<dyn Future<Output = std::io::Result<VmExit>> + Send + '_>> {
            Box::pin(async move {
                if let Some(exit) = self.exit.as_mut() {
                    let _ = exit.await;
                    self.exit = None;
                }
                Ok(VmExit::Exited(0))
            })
        }

        fn kill(&mut self) -> std::io::Result<()> {
            self.exit = None;
            Ok(())
        }
    }

    /// The guest end of the agent port.
    struct Guest {
        reader: FramedRead<ReadHalf<DuplexStream>, FrameCodec>,
        writer: FramedWrite<WriteHalf<DuplexStream>, FrameCodec>,
    }

    fn config() -> SandboxConfig {
        SandboxConfig {
            name: "fake".into(),
            rootfs: "/roots/fake".into(),
            cpus: 1,
            memory_mib: 256,
            env: Vec::new(),
            workdir: None,
            backend: BackendKind::Krun,
            ephemeral: false,
            stop_when_detached: false,
            idle_timeout_secs: None,
            max_duration_secs: None,
            boot_timeout_secs: None,
        }
    }

    /// Runs the supervisor over a relay whose agent is `guest`'s other end.
    async fn supervise_fake(vm: FakeVm, agent: impl FnOnce(Guest) -> Option<Guest>) -> Termination {
        supervise_fake_with_client(vm, agent, |_| {}).await
    }

    /// As [`supervise_fake`], and `client` gets the sandbox socket's path once it listens.
    async fn supervise_fake_with_client(
        vm: FakeVm,
        agent: impl FnOnce(Guest) -> Option<Guest>,
        client: impl FnOnce(std::path::PathBuf),
    ) -> Termination {
        let (host, guest) = tokio::io::duplex(1 << 16);
        let (host_read, host_write) = tokio::io::split(host);
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "fake".into(),
            capabilities: vec!["exec".into()],
            uptime_ms: 0,
        };
        let (relay, watch) = Relay::start(
            FramedRead::new(host_read, FrameCodec::new()),
            FramedWrite::new(host_write, FrameCodec::new()),
            hello,
        );
        let (guest_read, guest_write) = tokio::io::split(guest);
        let guest = Guest {
            reader: FramedRead::new(guest_read, FrameCodec::new()),
            writer: FramedWrite::new(guest_write, FrameCodec::new()),
        };
        let _keep_port_open = agent(guest);
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("sock")).unwrap();
        client(dir.path().join("sock"));
        let mut signals = Signals::install();
        supervise(&config(), Box::new(vm), relay, watch, listener, &mut signals).await
    }

    #[tokio::test]
    async fn vm_exit_status_zero_without_the_agents_goodbye_is_a_crash() {
        let termination = supervise_fake(FakeVm { exit: None }, Some).await;

        assert_eq!(termination.reason, TerminationReason::Failed);
        assert!(!termination.clean, "{termination:?}");
        assert_eq!(termination.vm_exit, Some(VmExit::Exited(0)));
        assert!(termination.detail.contains("without the agent's goodbye"), "{termination:?}");
    }

    #[tokio::test]
    async fn goodbye_acknowledged_then_poweroff_is_a_clean_stop() {
        let (power_off, exit) = oneshot::channel();
        let termination = supervise_fake(FakeVm { exit: Some(exit) }, move |mut guest| {
            tokio::spawn(async move {
                let goodbye = Goodbye { killed_sessions: 0 }.to_frame(CONTROL_STREAM).unwrap();
                guest.writer.send(goodbye).await.unwrap();
                while let Some(Ok(frame)) = guest.reader.next().await {
                    if frame.kind == FrameKind::GoodbyeAck {
                        let _ = power_off.send(());
                        break;
                    }
                }
                guest
            });
            None
        })
        .await;

        assert_eq!(termination.reason, TerminationReason::Completed);
        assert!(termination.clean, "{termination:?}");
        assert_eq!(termination.vm_exit, Some(VmExit::Exited(0)));
    }

    #[tokio::test]
    async fn agent_port_closing_kills_the_vm_and_records_a_crash() {
        let (_never, exit) = oneshot::channel::<()>();
        let termination = supervise_fake(FakeVm { exit: Some(exit) }, |guest| {
            drop(guest);
            None
        })
        .await;

        assert_eq!(termination.reason, TerminationReason::Failed);
        assert!(!termination.clean, "{termination:?}");
    }

    #[tokio::test]
    async fn a_clients_shutdown_grace_reaches_the_agent_capped_at_the_default() {
        for (asked, expected) in [(500u64, 500u64), (60_000, SHUTDOWN_GRACE.as_millis() as u64)] {
            let (power_off, exit) = oneshot::channel();
            let (seen_tx, seen_rx) = oneshot::channel();
            let agent = move |mut guest: Guest| {
                tokio::spawn(async move {
                    let mut seen_tx = Some(seen_tx);
                    while let Some(Ok(frame)) = guest.reader.next().await {
                        if frame.kind == FrameKind::Shutdown {
                            let grace = Shutdown::from_frame(&frame).unwrap().grace_ms;
                            if let Some(tx) = seen_tx.take() {
                                let _ = tx.send(grace);
                            }
                            let bye = Goodbye { killed_sessions: 0 }.to_frame(CONTROL_STREAM);
                            guest.writer.send(bye.unwrap()).await.unwrap();
                        } else if frame.kind == FrameKind::GoodbyeAck {
                            let _ = power_off.send(());
                            break;
                        }
                    }
                    guest
                });
                None
            };
            let client = move |socket: std::path::PathBuf| {
                tokio::spawn(async move {
                    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
                    let (read, write) = stream.into_split();
                    let mut reader = FramedRead::new(read, FrameCodec::new());
                    let mut writer = FramedWrite::new(write, FrameCodec::new());
                    let _welcome = reader.next().await;
                    let request = Shutdown { grace_ms: asked }.to_frame(CONTROL_STREAM).unwrap();
                    writer.send(request).await.unwrap();
                    let _ = reader.next().await; // Held open until the sandbox goes.
                });
            };
            let vm = FakeVm { exit: Some(exit) };
            let termination = supervise_fake_with_client(vm, agent, client).await;

            assert_eq!(termination.reason, TerminationReason::ShutdownRequested);
            assert!(termination.clean, "{termination:?}");
            assert_eq!(seen_rx.await.unwrap(), expected, "asked for {asked} ms");
        }
    }
}
