//! `cella rm`: remove sandboxes, directory first, then their rows.

use clap::Args;

use super::opts::runtime;

/// Arguments of `cella rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Names of the sandboxes
    #[arg(required = true)]
    names: Vec<String>,
    /// Kill running sandboxes first instead of refusing to remove them
    #[arg(long, short = 'f')]
    force: bool,
}

/// Runs `cella rm`; every name is tried, and the status is 125 if any failed.
pub fn main(args: RmArgs) -> u8 {
    runtime().block_on(async {
        let cella = match cella::Cella::open().await {
            Ok(cella) => cella,
            Err(err) => return crate::fail(&err.into()),
        };
        let mut status = 0;
        for name in &args.names {
            match cella.remove(name, args.force).await {
                Ok(()) => println!("{name}"),
                Err(err) => status = crate::fail(&err.into()),
            }
        }
        status
    })
}
