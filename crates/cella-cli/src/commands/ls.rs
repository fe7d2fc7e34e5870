//! `cella ls`: list sandboxes, reconciled with the liveness of their processes.
//!
//! `--json` prints a stable array documented in docs/cli.md; fields are only ever added.

use cella_db::{SandboxStatus, SandboxSummary};
use clap::Args;
use serde::Serialize;

use super::opts::runtime;

/// Arguments of `cella ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Also list sandboxes that are not running (created, stopped, crashed)
    #[arg(long, short = 'a')]
    all: bool,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

/// One sandbox as `ls --json` prints it.
#[derive(Debug, Serialize)]
pub struct LsEntry {
    name: String,
    status: SandboxStatus,
    ephemeral: bool,
    rootfs: Option<String>,
    cpus: Option<u64>,
    memory_mib: Option<u64>,
    created_at_ms: i64,
    updated_at_ms: i64,
    pid: Option<i32>,
    last_termination_reason: Option<String>,
    last_exit_code: Option<i32>,
}

impl LsEntry {
    /// Flattens a summary row.
    pub fn from_summary(summary: &SandboxSummary) -> Self {
        let row = &summary.sandbox;
        let run = summary.latest_run.as_ref();
        let running = row.status.is_active();
        Self {
            name: row.name.clone(),
            status: row.status,
            ephemeral: row.ephemeral,
            rootfs: row.config.get("rootfs").and_then(|v| v.as_str()).map(str::to_string),
            cpus: row.config.get("cpus").and_then(|v| v.as_u64()),
            memory_mib: row.config.get("memory_mib").and_then(|v| v.as_u64()),
            created_at_ms: row.created_at,
            updated_at_ms: row.updated_at,
            pid: run.filter(|_| running).map(|r| r.pid),
            last_termination_reason: run.and_then(|r| r.termination_reason).map(|r| r.to_string()),
            last_exit_code: run.and_then(|r| r.exit_code),
        }
    }
}

/// Runs `cella ls`.
pub fn main(args: LsArgs) -> u8 {
    let listed = runtime().block_on(async { cella::Cella::open().await?.list().await });
    let summaries = match listed {
        Ok(summaries) => summaries,
        Err(err) => return crate::fail(&err.into()),
    };
    let entries: Vec<LsEntry> = summaries
        .iter()
        .filter(|s| args.all || s.sandbox.status.is_active())
        .map(LsEntry::from_summary)
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries).expect("ls entries serialise"));
    } else {
        print_table(&entries);
    }
    0
}

fn print_table(entries: &[LsEntry]) {
    let now = cella_db::now_ms();
    let rows: Vec<[String; 7]> = entries
        .iter()
        .map(|e| {
            [
                e.name.clone(),
                e.status.to_string(),
                e.rootfs.clone().unwrap_or_default(),
                e.cpus.map(|c| c.to_string()).unwrap_or_default(),
                e.memory_mib.map(|m| format!("{m} MiB")).unwrap_or_default(),
                age(now - e.created_at_ms),
                e.last_termination_reason.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header =
        ["NAME", "STATUS", "ROOTFS", "CPUS", "MEMORY", "AGE", "LAST REASON"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

/// A short human age: `42s`, `5m`, `3h`, `2d`.
pub fn age(ms: i64) -> String {
    let secs = (ms / 1000).max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_are_short() {
        assert_eq!(age(4_000), "4s");
        assert_eq!(age(125_000), "2m");
        assert_eq!(age(7_200_000), "2h");
        assert_eq!(age(200_000_000), "2d");
        assert_eq!(age(-5), "0s");
    }
}
