//! The plan: everything the supervisor needs, resolved from the command line and the machine
//! once (the pool size from the CPU budget, the program's path), and its `--dry-run` form.

use std::time::Duration;

use serde_json::json;

use crate::backoff;
use crate::cli::{Cli, RestartPolicy, Sig, WorkerSpec};
use crate::spawn::{CannotRun, Program};

pub struct Config {
    pub workers: u32,
    pub worker_spec: WorkerSpec,
    pub program: Program,
    pub restart: RestartPolicy,
    pub stop_signal: Sig,
    pub stop_timeout: Duration,
    pub backoff: backoff::Policy,
    pub give_up_after: Option<Duration>,
    pub subreaper: bool,
    /// What sized the pool, in one line for the start log.
    pub sizing: String,
}

/// Why the plan could not be made: a usage error (exit 2) or a command that cannot run.
pub enum PlanError {
    Usage(String),
    CannotRun(CannotRun),
}

impl Config {
    pub fn from_cli(cli: &Cli) -> Result<(Config, serde_json::Value), PlanError> {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let (workers, sizing) = match cli.workers {
            WorkerSpec::Count(n) => (n, format!("workers={n}: as requested")),
            WorkerSpec::Max { minus } => {
                let n = cpus.saturating_sub(minus).max(1);
                (n, format!("workers={n}: {cpus} usable CPUs, minus {minus}"))
            }
        };
        let program = Program::resolve(&cli.command, std::env::var_os("PATH").as_deref())
            .map_err(PlanError::CannotRun)?;
        let cfg = Config {
            workers,
            worker_spec: cli.workers,
            restart: cli.restart,
            stop_signal: cli.stop_signal,
            stop_timeout: cli.stop_timeout,
            backoff: backoff::Policy {
                initial: cli.backoff_initial,
                max: cli.backoff_max.max(cli.backoff_initial),
                reset_after: cli.backoff_reset,
            },
            give_up_after: (!cli.give_up_after.is_zero()).then_some(cli.give_up_after),
            subreaper: !cli.no_subreaper,
            sizing,
            program,
        };
        let plan = json!({
            "workers": cfg.workers,
            "workers_spec": cfg.worker_spec.to_string(),
            "command": cfg.program.argv_lossy(),
            "restart": cfg.restart.as_str(),
            "stop_signal": cfg.stop_signal.name(),
            "stop_timeout_ms": cfg.stop_timeout.as_millis() as u64,
            "backoff": {
                "initial_ms": cfg.backoff.initial.as_millis() as u64,
                "max_ms": cfg.backoff.max.as_millis() as u64,
                "reset_after_ms": cfg.backoff.reset_after.as_millis() as u64,
            },
            "give_up_after_ms": cfg.give_up_after.map(|d| d.as_millis() as u64),
        });
        Ok((cfg, plan))
    }
}
