//! Options shared by the commands that define a sandbox (`run`, `create`).

use std::path::PathBuf;
use std::time::Duration;

use cella::SandboxBuilder;
use cella_runtime::config::{
    parse_env, validate_cpus, BackendKind, DEFAULT_CPUS, DEFAULT_MEMORY_MIB,
};
use clap::Args;

/// How the sandbox's VM looks.
#[derive(Debug, Args)]
pub struct SandboxOpts {
    /// Root filesystem directory, attached read-only [default: the busybox root built by setup]
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Number of virtual CPUs
    #[arg(long, default_value_t = DEFAULT_CPUS as u32, value_name = "N")]
    pub cpus: u32,
    /// Guest memory in MiB
    #[arg(long, default_value_t = DEFAULT_MEMORY_MIB, value_name = "MIB")]
    pub memory: u32,
    /// Set an environment variable for every command in the sandbox (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Default working directory of commands in the sandbox
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// VMM backend: auto (krun where hardware KVM works and its kernel is installed, else
    /// qemu), qemu or krun
    #[arg(long, env = "CELLA_BACKEND", default_value = "auto", value_name = "BACKEND")]
    pub backend: String,
    /// Stop the sandbox after this many seconds without a connected client or running command
    #[arg(long, value_name = "SECS", value_parser = seconds_up_to::<YEAR>)]
    pub idle_timeout: Option<u64>,
    /// Stop the sandbox after it has run this many seconds, whatever runs in it
    #[arg(long, value_name = "SECS", value_parser = seconds_up_to::<YEAR>)]
    pub max_duration: Option<u64>,
    /// Seconds the guest may take to boot before cella gives up [default: 90 under software
    /// emulation, 15 with KVM]
    #[arg(long, value_name = "SECS", value_parser = seconds_up_to::<HOUR>)]
    pub boot_timeout: Option<u64>,
}

const HOUR: u64 = 3600;
const YEAR: u64 = 365 * 24 * HOUR;

/// A timeout in whole seconds, from 1 to `MAX`: 0 would end a sandbox before it did anything.
fn seconds_up_to<const MAX: u64>(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(secs) if (1..=MAX).contains(&secs) => Ok(secs),
        _ => Err(format!("expected a whole number of seconds from 1 to {MAX}")),
    }
}

impl SandboxOpts {
    /// A builder for sandbox `name` with these options.
    pub fn builder(&self, name: &str) -> anyhow::Result<SandboxBuilder> {
        let backend: BackendKind = self.backend.parse()?;
        validate_cpus(self.cpus)?;
        let mut builder = cella::Sandbox::builder(name)
            .cella_bin(sandbox_binary()?)
            .cpus(self.cpus as u8)
            .memory_mib(self.memory)
            .backend(backend);
        if let Some(rootfs) = &self.rootfs {
            builder = builder.rootfs(rootfs);
        }
        for entry in &self.env {
            let (key, value) = parse_env(entry)?;
            builder = builder.env(key, value);
        }
        if let Some(dir) = &self.workdir {
            builder = builder.workdir(dir);
        }
        if let Some(secs) = self.idle_timeout {
            builder = builder.idle_timeout(Duration::from_secs(secs));
        }
        if let Some(secs) = self.max_duration {
            builder = builder.max_duration(Duration::from_secs(secs));
        }
        if let Some(secs) = self.boot_timeout {
            builder = builder.boot_timeout(Duration::from_secs(secs));
        }
        Ok(builder)
    }
}

/// The binary that runs sandbox processes: this very executable, so a sandbox is always run by
/// the same build of cella that launched it, whatever `cella` is on PATH.
pub fn sandbox_binary() -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    std::env::current_exe().context("cannot find the running cella executable")
}

/// A tokio runtime for short commands.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
