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
    /// Record a persistent sandbox without starting it.
    Create(commands::create::CreateArgs),
    /// Boot a stopped sandbox.
    Start(commands::start::StartArgs),
    /// Run a command in a running sandbox.
    Exec(commands::exec::ExecArgs),
    /// Shut a running sandbox down.
    Stop(commands::stop::StopArgs),
    /// Remove sandboxes and their files.
    Rm(commands::rm::RmArgs),
    /// List sandboxes.
    Ls(commands::ls::LsArgs),
    /// Show a sandbox's configuration and run history.
    Inspect(commands::inspect::InspectArgs),
    /// Show a sandbox's runtime log, kernel console and VMM log.
    Logs(commands::logs::LogsArgs),
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
        Command::Create(args) => commands::create::main(args),
        Command::Start(args) => commands::start::main(args),
        Command::Exec(args) => commands::exec::main(args),
        Command::Stop(args) => commands::stop::main(args),
        Command::Rm(args) => commands::rm::main(args),
        Command::Ls(args) => commands::ls::main(args),
        Command::Inspect(args) => commands::inspect::main(args),
        Command::Logs(args) => commands::logs::main(args),
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
