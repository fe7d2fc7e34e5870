//! `cella logs`: the sandbox's runtime log, kernel console and VMM log.

use clap::Args;

/// Arguments of `cella logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Name of the sandbox
    name: String,
    /// Show only the last N lines of each log
    #[arg(long, short = 'n', value_name = "N")]
    tail: Option<usize>,
}

/// Runs `cella logs`.
pub fn main(args: LogsArgs) -> u8 {
    if let Err(err) = cella_runtime::config::validate_name(&args.name) {
        return crate::fail(&err.into());
    }
    let home = match cella_runtime::home::Home::from_env() {
        Ok(home) => home,
        Err(err) => return crate::fail(&err.into()),
    };
    let dir = home.sandbox_dir(&args.name).join("logs");
    if !dir.is_dir() {
        let name = &args.name;
        let err = if home.sandbox_dir(name).is_dir() {
            anyhow::anyhow!(
                "no logs for sandbox {name} yet: it has never been started (`cella start {name}`)"
            )
        } else {
            anyhow::anyhow!("no logs for sandbox {name}: no such sandbox (ephemeral sandboxes are removed with their logs when they stop)")
        };
        return crate::fail(&err);
    }
    for file in ["runtime.log", "console.log", "vmm.log"] {
        let path = dir.join(file);
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        let start = args.tail.map(|n| lines.len().saturating_sub(n)).unwrap_or(0);
        println!("==> {} <==", path.display());
        for line in &lines[start..] {
            println!("{line}");
        }
    }
    0
}
