//! `cella-agent` entry point.
//!
//! As PID 1 (the guest's `/init`): boot, find the port, serve the host, then power off. Every
//! exit path, including errors and panics, ends in [`shutdown::power_off`]: a PID 1 that exits
//! or unwinds panics the kernel.
//!
//! As an ordinary process, `cella-agent --stdio` serves the protocol on stdin/stdout without
//! booting anything, reaping only its own children and never signalling other processes. It is
//! a development aid for the host side (no VM needed); it runs commands as the calling user.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Duration;

use cella_agent::error::chain;
use cella_agent::{boot, port, serve, shutdown, AgentError, ReapScope, Reaper, ServeOptions};
use cella_agent::{log_error, log_info};

/// How long `--stdio` mode waits for its runtime's blocking threads at exit.
const STDIO_SHUTDOWN_WAIT: Duration = Duration::from_millis(100);

fn main() {
    if std::process::id() == 1 {
        run_as_init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args != ["--stdio"] {
        eprintln!(
            "cella-agent is the init process of a cella guest and must run as PID 1.\n\
             For development, `cella-agent --stdio` serves the protocol on stdin/stdout."
        );
        std::process::exit(2);
    }
    std::process::exit(match run_stdio() {
        Ok(outcome) => {
            log_info!("served: {outcome:?}");
            0
        }
        Err(e) => {
            log_error!("{}", chain(&e));
            1
        }
    });
}

fn run_as_init() -> ! {
    std::panic::set_hook(Box::new(|info| {
        log_error!("panic: {info}");
        shutdown::power_off();
    }));
    match std::panic::catch_unwind(AssertUnwindSafe(init)) {
        Ok(Ok(outcome)) => log_info!("agent done: {outcome:?}"),
        Ok(Err(e)) => log_error!("{}", chain(&e)),
        Err(_) => log_error!("agent panicked"),
    }
    shutdown::power_off()
}

fn init() -> Result<cella_agent::ServeOutcome, AgentError> {
    boot::boot()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    runtime.block_on(async {
        let reaper = Reaper::start(ReapScope::AllChildren).map_err(AgentError::Runtime)?;
        let path = port::wait_for_port(cella_protocol::AGENT_PORT_NAME, port::PORT_WAIT).await?;
        let port = port::open_port(&path)?;
        log_info!("serving on {}", path.display());
        let opts = ServeOptions { root: PathBuf::from("/"), kill_all: true, ..Default::default() };
        Ok(serve(port, reaper, opts).await?)
    })
}

fn run_stdio() -> Result<cella_agent::ServeOutcome, AgentError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    let result = runtime.block_on(async {
        let reaper = Reaper::start(ReapScope::Registered).map_err(AgentError::Runtime)?;
        let io = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
        Ok(serve(io, reaper, ServeOptions::default()).await?)
    });
    // tokio reads stdin on a blocking thread that may sit in read(2) forever; do not wait for it.
    runtime.shutdown_timeout(STDIO_SHUTDOWN_WAIT);
    result
}
