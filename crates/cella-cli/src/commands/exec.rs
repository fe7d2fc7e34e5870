//! `cella exec`: run a command in a running sandbox, attached to this terminal's stdio.

use clap::Args;

use super::attach::{attach, exit_status, ForwardedSignals};
use super::opts::runtime;

/// Arguments of `cella exec`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: the command's own status; 128+N when it was killed by signal \
    N; 126 / 127 when it is not executable / not found; 125 when cella itself failed."
)]
pub struct ExecArgs {
    /// Name of the running sandbox
    name: String,
    /// Set an environment variable for this command (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory of the command
    #[arg(long, short = 'w', value_name = "DIR")]
    workdir: Option<String>,
    /// Command and arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Runs `cella exec`.
pub fn main(args: ExecArgs) -> u8 {
    let runtime = runtime();
    let status = runtime.block_on(async {
        if let Some(dir) = &args.workdir {
            cella_runtime::config::validate_workdir(dir)?;
        }
        let mut signals = ForwardedSignals::install()?;
        let sandbox = cella::Cella::open().await?.sandbox(&args.name).await?;
        let mut request = sandbox.exec_request(args.command.clone());
        for entry in &args.env {
            request.env.push(cella_runtime::config::parse_env(entry)?);
        }
        if let Some(dir) = &args.workdir {
            request.cwd = Some(dir.clone());
        }
        let exited = attach(&sandbox, request, &mut signals).await?;
        Ok::<_, anyhow::Error>(exit_status(&exited))
    });
    runtime.shutdown_background();
    match status {
        Ok(status) => status,
        Err(err) => crate::fail(&err),
    }
}
