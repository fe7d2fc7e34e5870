//! `cella inspect`: one sandbox's configuration, status and run history.

use cella_db::RunRow;
use clap::Args;
use serde::Serialize;

use super::ls::LsEntry;
use super::opts::runtime;

/// Arguments of `cella inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Name of the sandbox
    name: String,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Inspected<'a> {
    #[serde(flatten)]
    summary: LsEntry,
    config: &'a serde_json::Value,
    runs: &'a [RunRow],
}

/// Runs `cella inspect`.
pub fn main(args: InspectArgs) -> u8 {
    let inspected =
        runtime().block_on(async { cella::Cella::open().await?.inspect(&args.name).await });
    let (summary, runs) = match inspected {
        Ok(found) => found,
        Err(err) => return crate::fail(&err.into()),
    };
    let doc = Inspected {
        summary: LsEntry::from_summary(&summary),
        config: &summary.sandbox.config,
        runs: &runs,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc).expect("inspect output serialises"));
        return 0;
    }
    let row = &summary.sandbox;
    println!("name:      {}", row.name);
    println!("status:    {}", row.status);
    println!("ephemeral: {}", row.ephemeral);
    println!("config:    {}", row.config);
    println!("runs:");
    for run in &runs {
        let exit = match (run.exit_code, run.exit_signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => "-".into(),
        };
        let reason = run.termination_reason.map(|r| r.to_string()).unwrap_or_else(|| "-".into());
        let detail = run.termination_detail.as_deref().unwrap_or("");
        println!("  #{} pid {} {} {} {} {}", run.id, run.pid, run.status, exit, reason, detail);
    }
    0
}
