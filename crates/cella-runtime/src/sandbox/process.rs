//! The sandbox process's threads: who owns the main thread.
//!
//! - qemu (and every sandbox that does not boot on krun): the tokio runtime runs on the main
//!   thread, as it always has. That matters: QEMU is started with `PR_SET_PDEATHSIG`, which
//!   fires when the *thread* that forked it ends, so it must be forked from a thread that lives
//!   as long as the sandbox process.
//! - krun: `msb_krun`'s `Vm::enter()` must run on a thread it may keep forever, and it ends the
//!   process itself. The main thread therefore serves the VMM ([`MainThread::serve`]) and the
//!   runtime moves to a second thread, `cella-runtime`, which asks the main thread for the VM
//!   through [`Host::InProcess`] when it boots.
//!
//! The choice is made once, before the boot, from the sandbox's config and the installed
//! assets: the same inputs `boot` uses to select the backend. Invariant for krun: the process
//! ends with the runtime's exit status whichever thread ends it. When the VM never started,
//! the main thread joins the runtime thread and returns its status; once the VM runs, the exit
//! observer (on the main thread) waits for that status on a channel and `_exit`s with it (see
//! [`crate::backend::krun::vmm`]).

use std::sync::mpsc;
use std::time::Duration;

use tokio::runtime::Runtime;

use super::{error_line, prepare, run_prepared, Prepared};
use crate::assets::BootAssets;
use crate::backend::krun::{self, MainThread, VmmThread};
use crate::backend::{self};
use crate::config::{BackendKind, SandboxConfig};
use crate::home::Home;
use crate::launch::{ReadyReport, ReadyReporter};

/// Worker threads of the sandbox process's runtime: relaying, timers and the database never
/// need more, and the host may run hundreds of sandbox processes.
const RUNTIME_WORKERS: usize = 2;

/// How long the runtime's leftover tasks get when the process is done.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(100);

/// Name of the runtime's thread in the krun model (visible in `/proc/PID/task/*/comm`).
const RUNTIME_THREAD: &str = "cella-runtime";

/// Where the VMM can run, as far as the boot is concerned.
pub enum Host {
    /// The runtime owns the main thread: only VMMs in their own process (qemu).
    Child,
    /// The main thread waits to run a VM in this process (krun).
    InProcess(VmmThread),
}

/// Runs the sandbox process for sandbox `name` and returns its exit status (0 after an orderly
/// run, 1 otherwise). Call it from the main thread.
pub fn main(home: Home, name: &str, mut reporter: ReadyReporter) -> i32 {
    // Before anything else: no privilege gain through exec, no core dumps (with krun the
    // guest's memory lives in this process).
    if let Err(err) = crate::backend::confine::no_privilege_gain_no_core_dumps() {
        reporter.report(&ReadyReport::Failed {
            error: format!("cannot restrict the sandbox process: {err}"),
        });
        return 1;
    }
    let runtime = match build_runtime() {
        Ok(runtime) => runtime,
        Err(err) => {
            reporter.report(&ReadyReport::Failed {
                error: format!("cannot start the async runtime: {err}"),
            });
            return 1;
        }
    };
    let prepared = match runtime.block_on(prepare(&home, name)) {
        Ok(prepared) => prepared,
        Err(err) => {
            reporter.report(&ReadyReport::Failed { error: error_line(&err) });
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            return 1;
        }
    };
    if boots_on_krun(&home, prepared.config()) {
        return run_krun(runtime, home, prepared, reporter);
    }
    let status = runtime.block_on(run_prepared(home, prepared, reporter, Host::Child));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    status
}

fn build_runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(RUNTIME_WORKERS).enable_all().build()
}

/// Whether this sandbox will boot on krun. Errors (missing assets, krun unavailable) answer
/// no: the boot then reports them through the usual path.
fn boots_on_krun(home: &Home, config: &SandboxConfig) -> bool {
    let Ok(assets) = BootAssets::load(&home.kernel_dir()) else {
        return false;
    };
    matches!(backend::select(config.backend, assets.krun_install()), Ok(BackendKind::Krun))
}

/// The krun model: runtime on a second thread, VMM on this one.
fn run_krun(runtime: Runtime, home: Home, prepared: Prepared, reporter: ReadyReporter) -> i32 {
    let (thread, main): (VmmThread, MainThread) = krun::vmm_thread();
    let closer = thread.clone();
    let (status_tx, status_rx) = mpsc::channel();
    let spawned = std::thread::Builder::new().name(RUNTIME_THREAD.into()).spawn(move || {
        let status =
            runtime.block_on(run_prepared(home, prepared, reporter, Host::InProcess(thread)));
        // The exit observer may be waiting for this to end the process.
        let _ = status_tx.send(status);
        // Normally the VM is gone by now; this ends one whose handle the runtime lost, and
        // (dropping the last VmmThread) lets the main thread return when none ran.
        closer.close();
        drop(closer);
        runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
        status
    });
    let worker = match spawned {
        Ok(worker) => worker,
        Err(err) => {
            // The reporter went down with the closure: the launcher points at runtime.log.
            tracing::error!(error = %err, "cannot start the runtime thread");
            return 1;
        }
    };
    main.serve(status_rx);
    worker.join().unwrap_or(1)
}
