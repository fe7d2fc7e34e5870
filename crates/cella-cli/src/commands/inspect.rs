//! `cella inspect`: one sandbox's configuration, status and run history.

use cella_db::RunRow;
use clap::Args;
use serde::Serialize;

use super::ls::{age, LsEntry};
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
    print_text(&summary.sandbox, &runs);
    0
}

fn print_text(row: &cella_db::SandboxRow, runs: &[RunRow]) {
    let now = cella_db::now_ms();
    println!("name:      {}", row.name);
    println!("status:    {}", row.status);
    println!("ephemeral: {}", row.ephemeral);
    println!("created:   {} ({} ago)", timestamp(row.created_at), age(now - row.created_at));
    println!("config:");
    let config = serde_json::to_string_pretty(&row.config).expect("stored config serialises");
    for line in config.lines() {
        println!("  {line}");
    }
    println!("runs:      {} (oldest first)", runs.len());
    for run in runs {
        let exit = match (run.exit_code, run.exit_signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            (None, None) => "-".into(),
        };
        let reason = run.termination_reason.map(|r| r.to_string()).unwrap_or_else(|| "-".into());
        println!("  #{} pid {} {} {} {}", run.id, run.pid, run.status, exit, reason);
        let span = match run.terminated_at {
            Some(end) => format!("ended {} (ran {})", timestamp(end), age(end - run.started_at)),
            None => format!("running for {}", age(now - run.started_at)),
        };
        println!("      started {}, {span}", timestamp(run.started_at));
        if let Some(detail) = run.termination_detail.as_deref().filter(|d| !d.is_empty()) {
            println!("      {detail}");
        }
    }
}

/// Unix milliseconds as an RFC 3339 UTC time, to the second.
fn timestamp(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}
