//! `cella create`: record a persistent sandbox without starting it.

use clap::Args;

use super::opts::{runtime, SandboxOpts};

/// Arguments of `cella create`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  cella create web --memory 1024 && cella start web && cella exec web -- uname -a"
)]
pub struct CreateArgs {
    /// Name of the sandbox: 1 to 63 letters, digits, '-', '_' and '.', starting with a letter
    /// or digit, no '..'
    name: String,
    #[command(flatten)]
    opts: SandboxOpts,
}

/// Runs `cella create`.
pub fn main(args: CreateArgs) -> u8 {
    let created = runtime().block_on(async {
        args.opts.builder(&args.name)?.define().await.map_err(anyhow::Error::from)
    });
    match created {
        Ok(()) => {
            println!("{}", args.name);
            0
        }
        Err(err) => crate::fail(&err),
    }
}
