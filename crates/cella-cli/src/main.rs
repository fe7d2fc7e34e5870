//! `cella`: run untrusted code in lightweight virtual machines.
//!
//! The binary is both the user's command line and, through the hidden `cella sandbox`
//! subcommand, the sandbox process that owns each running VM. Errors become one line on stderr
//! that says what failed and what to do, and exit status 125 (the container convention for "the
//! runtime itself failed"); a command that ran exits with its own status.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status when cella itself failed (bad flags, boot failure, missing kernel).
pub const EXIT_CELLA_FAILED: u8 = 125;

/// Run untrusted code in lightweight virtual machines.
#[derive(Debug, Parser)]
#[command(name = "cella", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a fresh VM, run one command in it, stream its output and exit with its status.
    Run(commands::run::RunArgs),
    /// The sandbox process that owns one VM (started by cella itself, not by hand).
    #[command(hide = true)]
    Sandbox(commands::sandbox::SandboxArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { EXIT_CELLA_FAILED } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    let status = match cli.command {
        Command::Run(args) => commands::run::main(args),
        Command::Sandbox(args) => commands::sandbox::main(args),
    };
    ExitCode::from(status)
}

/// Prints `err` (with its causes) as one line prefixed with `cella:` and returns 125.
pub fn fail(err: &anyhow::Error) -> u8 {
    eprintln!("cella: {}", one_line(err));
    EXIT_CELLA_FAILED
}

fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
