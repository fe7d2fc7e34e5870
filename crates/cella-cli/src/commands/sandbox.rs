//! `cella sandbox`: the hidden entry point of the sandbox process.
//!
//! Started by `cella run` / `cella start` / the SDK with the write end of a pipe as
//! `--ready-fd`; logs go to the sandbox's `logs/runtime.log`.

use std::fs::OpenOptions;

use cella_runtime::home::Home;
use cella_runtime::launch::ReadyReporter;
use clap::Args;

/// Arguments of the hidden `cella sandbox` subcommand.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Name of the sandbox to run (its config is read from the sandbox's directory).
    #[arg(long)]
    name: String,
    /// File descriptor on which to report readiness or a boot failure.
    #[arg(long)]
    ready_fd: Option<i32>,
}

/// Runs the sandbox process to completion.
pub fn main(args: SandboxArgs) -> u8 {
    let mut reporter = match args.ready_fd {
        // SAFETY: the launcher passed this fd to us for exactly this purpose and nothing else in
        // this process opens or owns it.
        Some(fd) => unsafe { ReadyReporter::from_fd(fd) },
        None => ReadyReporter::none(),
    };
    let home = match Home::from_env() {
        Ok(home) => home,
        Err(err) => {
            reporter.report(&cella_runtime::launch::ReadyReport::Failed { error: err.to_string() });
            return 1;
        }
    };
    init_logging(&home, &args.name);
    // Builds the async runtime and decides which thread it runs on (the krun VMM needs the
    // main thread): see cella_runtime::sandbox::process.
    cella_runtime::sandbox::process::main(home, &args.name, reporter) as u8
}

/// Sends tracing output to `sandboxes/<name>/logs/runtime.log` (level from `CELLA_LOG`,
/// default info). Logging is best effort: a sandbox whose log cannot be opened still runs.
fn init_logging(home: &Home, name: &str) {
    if cella_runtime::config::validate_name(name).is_err() {
        return;
    }
    // Only a sandbox that exists has a directory to log into (`create` made it).
    let sandbox_dir = home.sandbox_dir(name);
    if !sandbox_dir.is_dir() {
        return;
    }
    let dir = sandbox_dir.join("logs");
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let Ok(file) = OpenOptions::new().create(true).append(true).open(dir.join("runtime.log"))
    else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CELLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
}
