//! `cella start`: boot a stopped sandbox and return once its guest is up.

use clap::Args;

use super::opts::runtime;

/// Arguments of `cella start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Name of the sandbox
    name: String,
}

/// Runs `cella start`.
pub fn main(args: StartArgs) -> u8 {
    let started = runtime().block_on(async {
        let bin = super::opts::sandbox_binary()?;
        let cella = cella::Cella::open().await?;
        cella.start(&args.name, &bin).await?.ready().await?;
        Ok::<_, anyhow::Error>(())
    });
    match started {
        Ok(()) => {
            println!("{}", args.name);
            0
        }
        Err(err) => crate::fail(&err),
    }
}
