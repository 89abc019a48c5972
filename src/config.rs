//! The plan: everything the supervisor needs, resolved from the command line and the machine
//! once (the pool size from the CPU budget, the program's path, the bound listeners), and its
//! `--dry-run` form: every setting in force (durations in ms, sizes in bytes, null for off), after
//! the checks the real run makes, binding aside.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use clap::ValueEnum;
use serde_json::json;

use crate::backoff;
use crate::budget;
use crate::cli::{Cli, HupAction, ReadyMode, RestartPolicy, Sig, WorkerSpec};
use crate::cpu::{self, CpuBudget};
use crate::listen::{self, Listeners};
use crate::spawn::{CannotRun, Program};

pub struct Config {
    pub workers: u32,
    pub program: Program,
    pub restart: RestartPolicy,
    pub stop_signal: Sig,
    pub stop_timeout: Duration,
    pub backoff: backoff::Policy,
    pub give_up_after: Option<Duration>,
    pub subreaper: bool,
    pub cpu: CpuBudget,
    /// What sized the pool, in one line for the start log.
    pub sizing: String,
    /// Per-worker CPU share variables (opt-in), set only where the environment lacks them.
    pub cpu_env: Vec<(&'static str, String)>,
    pub listeners: Listeners,
    pub ready: ReadyMode,
    pub ready_timeout: Duration,
    pub min_ready: u32,
    pub admin_listen: Option<String>,
    pub hup: HupAction,
    pub max_worker_memory: Option<u64>,
    pub memory_check_interval: Duration,
    pub watchdog: Option<Duration>,
    pub trace_command_args: bool,
    /// `--stall-timeout`; None when off (0).
    pub stall_timeout: Option<Duration>,
    /// How often a `max` pool reads its budget again; None: only at start.
    pub budget_interval: Option<Duration>,
    /// The budget's files, for those reads.
    pub watch: Option<budget::Watch>,
    pub worker_output: crate::cli::WorkerOutput,
}

/// Why the plan could not be made: a usage error (exit 2) or a command that cannot run.
pub enum PlanError {
    Usage(String),
    CannotRun(CannotRun),
}

impl Config {
    /// What the pool core needs of the plan.
    pub fn pool_settings(&self) -> crate::pool::Settings {
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
        crate::pool::Settings {
            workers: self.workers,
            restart: self.restart,
            stop_signal: self.stop_signal.0,
            stop_timeout: self.stop_timeout,
            backoff: self.backoff,
            give_up_after: self.give_up_after,
            ready: self.ready,
            ready_timeout: self.ready_timeout,
            min_ready: self.min_ready,
            watchdog: self.watchdog,
            memory_cap: self
                .max_worker_memory
                .map(|cap| (cap, self.memory_check_interval)),
            hup: self.hup,
            stall_timeout: self.stall_timeout,
            budget_interval: self.budget_interval,
            migrate: self.listeners.has_per_slot_sockets()
                && crate::listen::tcp_migrate_req() == Some(true),
            seed,
        }
    }

    /// Resolves the plan. With `bind` false (dry run) no socket is opened.
    pub fn from_cli(cli: &Cli, bind: bool) -> Result<(Config, serde_json::Value), PlanError> {
        let minus = match cli.workers {
            WorkerSpec::Max { minus } => minus,
            WorkerSpec::Count(_) => 0,
        };
        let rule = budget::Rule {
            rounding: cli.cpu_round,
            minus,
            worker_memory: cli.worker_memory,
            reserve: cli.memory_reserve,
        };
        let (watch, sized) =
            budget::Watch::start(Path::new("/"), rule, cli.cpus.or(cli.cpu_millis));
        for w in &sized.cpu.warnings {
            tracing::warn!("CPU budget: {w}");
        }
        let budget = sized.cpu.clone();
        let max = sized.cpu_max;
        let (workers, sizing) = match cli.workers {
            WorkerSpec::Count(n) => (
                n,
                format!(
                    "workers={n}: as requested (CPU budget {:.2})",
                    budget.budget
                ),
            ),
            WorkerSpec::Max { .. } => (
                sized.max,
                format!("workers={}: {}", sized.max, sized.explain(rule)),
            ),
        };
        // Only a `max` pool follows its budget; `--workers N` means N.
        let live = matches!(cli.workers, WorkerSpec::Max { .. }) && !cli.budget_interval.is_zero();
        // Reading cgroup files more often than this only costs.
        let budget_interval = live.then_some(cli.budget_interval.max(Duration::from_millis(100)));
        let program = Program::resolve(&cli.command, std::env::var_os("PATH").as_deref())
            .map_err(PlanError::CannotRun)?;
        if !bind {
            // The real run learns this from the failed exec (and says it the same way); a dry
            // run must refuse what the real run would. A name without a slash was already
            // found executable on PATH by `resolve`.
            let first = Path::new(&cli.command[0]);
            if first.as_os_str().as_bytes().contains(&b'/') {
                check_executable(first, &program.display).map_err(PlanError::CannotRun)?;
            }
        }

        let inherited = if cli.listen.is_empty() {
            Listeners::from_activation()
        } else {
            None
        };
        let listeners = match inherited {
            Some(l) => l,
            None => {
                let specs = if bind { &cli.listen[..] } else { &[] };
                Listeners::bind(specs, cli.balance, workers as usize, cli.backlog)
                    .map_err(PlanError::Usage)?
            }
        };
        let cpu_env = if cli.per_worker_cpu_env {
            cpu::per_worker_env(budget.budget, workers)
                .into_iter()
                .filter(|(k, _)| std::env::var_os(k).is_none())
                .collect()
        } else {
            Vec::new()
        };
        if cli.min_ready > workers {
            return Err(PlanError::Usage(format!(
                "invalid value '{}' for --min-ready: more than the {workers} workers",
                cli.min_ready
            )));
        }
        // The plan shows what is in force, after these adjustments.
        let backoff_max = cli.backoff_max.max(cli.backoff_initial);
        let memory_check_interval = cli.memory_check_interval.max(Duration::from_millis(100));
        let plan = json!({
            "workers": workers,
            "sizing": sizing,
            "workers_spec": cli.workers.to_string(),
            "command": program.argv_lossy(),
            "cpu": budget.to_json(cli.cpu_round, max),
            "memory": sized.memory_json(rule),
            "budget_interval_ms": budget_interval.map(|d| d.as_millis() as u64),
            "restart": cli.restart.as_str(),
            "stop_signal": cli.stop_signal.name(),
            "stop_timeout_ms": ms(cli.stop_timeout),
            "backoff": {
                "initial_ms": ms(cli.backoff_initial),
                "max_ms": ms(backoff_max),
                "reset_after_ms": ms(cli.backoff_reset),
            },
            "give_up_after_ms": (!cli.give_up_after.is_zero()).then(|| ms(cli.give_up_after)),
            "listen": cli.listen.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
            "balance": cli.balance.as_str(),
            "backlog": listen::effective_backlog(cli.backlog),
            "ready": cli.ready.to_string(),
            "min_ready": cli.min_ready,
            "ready_timeout_ms": ms(cli.ready_timeout),
            "admin_listen": cli.admin_listen.as_ref().map(|a| a.to_string()),
            "hup": match cli.hup { HupAction::Reload => "reload", HupAction::Forward => "forward" },
            "max_worker_memory_bytes": cli.max_worker_memory,
            "memory_check_interval_ms": ms(memory_check_interval),
            "watchdog_ms": cli.watchdog.filter(|d| !d.is_zero()).map(ms),
            "trace_command_args": cli.trace_command_args,
            "stall_timeout_ms": (!cli.stall_timeout.is_zero()).then(|| ms(cli.stall_timeout)),
            "budget_interval_ms": ms(cli.budget_interval),
            "worker_memory_bytes": cli.worker_memory,
            "memory_reserve_bytes": cli.memory_reserve,
            "worker_output": value_name(cli.worker_output),
            "no_subreaper": cli.no_subreaper,
            "log_format": value_name(cli.log_format),
            "log_level": value_name(cli.log_level),
            "per_worker_cpu_env": cpu_env.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        });
        let cfg = Config {
            workers,
            program,
            restart: cli.restart,
            stop_signal: cli.stop_signal,
            stop_timeout: cli.stop_timeout,
            backoff: backoff::Policy {
                initial: cli.backoff_initial,
                max: backoff_max,
                reset_after: cli.backoff_reset,
            },
            give_up_after: (!cli.give_up_after.is_zero()).then_some(cli.give_up_after),
            subreaper: !cli.no_subreaper,
            cpu: budget,
            sizing,
            cpu_env,
            listeners,
            ready: cli.ready,
            ready_timeout: cli.ready_timeout,
            min_ready: cli.min_ready,
            admin_listen: cli.admin_listen.as_ref().map(|a| a.to_string()),
            hup: cli.hup,
            max_worker_memory: cli.max_worker_memory,
            memory_check_interval,
            // 0 means off, as WatchdogSec=0 does in systemd.
            watchdog: cli.watchdog.filter(|d| !d.is_zero()),
            trace_command_args: cli.trace_command_args,
            stall_timeout: (!cli.stall_timeout.is_zero()).then_some(cli.stall_timeout),
            budget_interval,
            watch: budget_interval.map(|_| watch),
            worker_output: cli.worker_output,
        };
        Ok((cfg, plan))
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// How the option spells a value (`on-failure`, `json`), as `--help` lists it.
fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// What `execve` would say of `path`, without running it: 127 when it is missing, 126 when it is
/// not an executable file (a directory, no execute permission), with the line the real run writes.
fn check_executable(path: &Path, display: &str) -> Result<(), CannotRun> {
    let errno = match std::fs::metadata(path) {
        Err(e) => e.raw_os_error().unwrap_or(libc::ENOENT),
        Ok(meta) if !meta.is_file() => libc::EACCES,
        Ok(_) => match nix::unistd::access(path, nix::unistd::AccessFlags::X_OK) {
            Ok(()) => return Ok(()),
            Err(e) => e as i32,
        },
    };
    Err(CannotRun {
        code: if errno == libc::ENOENT { 127 } else { 126 },
        message: format!(
            "cannot run {display}: {}",
            nix::errno::Errno::from_raw(errno).desc()
        ),
    })
}
