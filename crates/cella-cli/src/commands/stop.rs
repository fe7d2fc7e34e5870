//! `cella stop`: shut a running sandbox down in order.
//!
//! Marks it Draining, asks the guest agent to end every process and power off, and escalates to
//! SIGTERM and then SIGKILL of the sandbox process when it does not stop within the timeout.

use std::time::Duration;

use clap::Args;

use super::opts::runtime;

/// Arguments of `cella stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Name of the sandbox
    name: String,
    /// Seconds to wait for an orderly shutdown before sending signals
    #[arg(long, short = 't', default_value_t = 10, value_name = "SECS")]
    timeout: u64,
    /// Kill the sandbox process at once instead of shutting the guest down
    #[arg(long, short = 'f')]
    force: bool,
}

/// Runs `cella stop`.
pub fn main(args: StopArgs) -> u8 {
    let stopped = runtime().block_on(async {
        let cella = cella::Cella::open().await?;
        cella.stop(&args.name, Duration::from_secs(args.timeout), args.force).await?;
        Ok::<_, anyhow::Error>(())
    });
    match stopped {
        Ok(()) => {
            println!("{}", args.name);
            0
        }
        Err(err) => crate::fail(&err),
    }
}
