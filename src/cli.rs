//! The command line: clap definitions, the `CLUSTER_INIT_*` env names, and the parsers that turn
//! outside strings into types (`WorkerSpec`, durations, signals, addresses) once, so nothing past
//! this module ever sees a raw string. Usage errors become one line and exit status 2, in the log
//! format asked for even when the parse failed (see [`log_format_hint`]).
//!
//! Every option that takes a value also takes one that starts with `-` (`--stop-timeout -1s`),
//! so that a negative value is refused by its own parser, naming the option, rather than taken
//! for an unknown flag. No parser accepts a value starting with `-`, so a flag given where a
//! value was due (`--stop-timeout --dry-run`) is refused the same way, never silently taken.

use std::ffi::OsString;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use std::ffi::OsStr;

use clap::builder::BoolishValueParser;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::pool::MAX_WORKERS;
use crate::signals::{SIGRTMAX, SIGRTMIN};

/// How many workers the pool runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerSpec {
    /// Exactly this many (>= 1).
    Count(u32),
    /// One per usable CPU, minus this many, never below 1.
    Max { minus: u32 },
}

impl FromStr for WorkerSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const EXPECTED: &str = "expected N (>= 1), max or max-K";
        let s = s.trim();
        if s == "max" {
            return Ok(WorkerSpec::Max { minus: 0 });
        }
        if let Some(k) = s.strip_prefix("max-") {
            return match k.parse::<u32>() {
                Ok(minus) if k.bytes().all(|b| b.is_ascii_digit()) => Ok(WorkerSpec::Max { minus }),
                _ => Err(EXPECTED.into()),
            };
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) || s.is_empty() {
            return Err(EXPECTED.into());
        }
        match s.parse::<u32>() {
            Ok(0) => Err("at least 1 worker is needed".into()),
            Ok(n) if n <= MAX_WORKERS => Ok(WorkerSpec::Count(n)),
            _ => Err(format!("at most {MAX_WORKERS} workers")),
        }
    }
}

impl fmt::Display for WorkerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerSpec::Count(n) => write!(f, "{n}"),
            WorkerSpec::Max { minus: 0 } => f.write_str("max"),
            WorkerSpec::Max { minus } => write!(f, "max-{minus}"),
        }
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h`, `1m30s`, `1.5s`, and a bare `0`. A bare non-zero number is
/// refused: `25` could mean seconds or milliseconds, and guessing wrong stops a pod too early.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit (ms, s, m, h), e.g. {s}s"))?;
        if num_len == 0 {
            return Err("expected a number followed by ms, s, m or h".into());
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| "malformed number".to_string())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("unknown unit '{other}' (use ms, s, m or h)")),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if !total.is_finite() || total > 1e9 {
        return Err("duration too large".into());
    }
    Ok(Duration::from_secs_f64(total))
}

/// A signal number, real-time signals included (nix's `Signal` cannot name those), by the
/// kernel's numbering: `SIGRTMIN+2` is 36 on every build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sig(pub i32);

impl Sig {
    pub const TERM: Sig = Sig(libc::SIGTERM);
    pub const KILL: Sig = Sig(libc::SIGKILL);

    pub fn name(self) -> String {
        signal_name(self.0)
    }
}

/// `SIGTERM` for standard signals, `SIGRTMIN+3` for real-time ones, the number otherwise.
pub fn signal_name(n: i32) -> String {
    if let Ok(s) = nix::sys::signal::Signal::try_from(n) {
        return s.as_str().to_string();
    }
    if (SIGRTMIN..=SIGRTMAX).contains(&n) {
        return format!("SIGRTMIN+{}", n - SIGRTMIN);
    }
    n.to_string()
}

impl FromStr for Sig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let upper = s.trim().to_ascii_uppercase();
        let (min, max) = (SIGRTMIN, SIGRTMAX);
        let n = if let Ok(n) = upper.parse::<i32>() {
            n
        } else {
            let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
            // Offsets are small and unsigned: a real-time name must name a real-time signal
            // (`RTMIN+-3` would otherwise silently be SIGSYS).
            if bare == "RTMIN" {
                min
            } else if bare == "RTMAX" {
                max
            } else if let Some(off) = bare.strip_prefix("RTMIN+") {
                let off = off.parse::<u8>().map_err(|_| "malformed RTMIN+N")?;
                Some(min + i32::from(off))
                    .filter(|&n| n <= max)
                    .ok_or("RTMIN+N is past RTMAX")?
            } else if let Some(off) = bare.strip_prefix("RTMAX-") {
                let off = off.parse::<u8>().map_err(|_| "malformed RTMAX-N")?;
                Some(max - i32::from(off))
                    .filter(|&n| n >= min)
                    .ok_or("RTMAX-N is below RTMIN")?
            } else {
                nix::sys::signal::Signal::from_str(&format!("SIG{bare}"))
                    .map_err(|_| "unknown signal (use a name like SIGTERM or a number)")?
                    as i32
            }
        };
        let valid = (1..32).contains(&n) || (min..=max).contains(&n);
        if !valid || n == libc::SIGSTOP {
            return Err("not a signal that can stop a worker".into());
        }
        Ok(Sig(n))
    }
}

/// When a new worker counts as ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyMode {
    /// As soon as exec succeeded.
    Started,
    /// When it (or a descendant) sends `READY=1` to `NOTIFY_SOCKET`.
    Notify,
    /// After being alive this long.
    After(Duration),
}

impl FromStr for ReadyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "started" => Ok(ReadyMode::Started),
            "notify" => Ok(ReadyMode::Notify),
            other => parse_duration(other)
                .map(ReadyMode::After)
                .map_err(|_| "expected started, notify or a duration like 2s".into()),
        }
    }
}

impl fmt::Display for ReadyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyMode::Started => f.write_str("started"),
            ReadyMode::Notify => f.write_str("notify"),
            ReadyMode::After(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

/// Parses a memory size: `512M`, `1G`, `1.5Gi`, `65536` (bytes). K, M, G are binary (as in
/// PM2's `max_memory_restart` and Kubernetes' Mi/Gi), so `512M` and `512Mi` agree.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let value: f64 = s[..digits]
        .parse()
        .map_err(|_| "expected a size like 512M or 1G".to_string())?;
    let scale = match s[digits..].trim() {
        "" | "B" => 1u64,
        "K" | "Ki" | "KB" | "k" => 1 << 10,
        "M" | "Mi" | "MB" => 1 << 20,
        "G" | "Gi" | "GB" => 1 << 30,
        "T" | "Ti" | "TB" => 1 << 40,
        other => return Err(format!("unknown unit '{other}' (use K, M, G)")),
    };
    let bytes = value * scale as f64;
    if !(1.0..1e18).contains(&bytes) {
        return Err("size out of range".into());
    }
    Ok(bytes as u64)
}

/// A size that may also be `0` (nothing reserved).
fn parse_size_or_zero(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_size(s)
}

/// A CPU budget given as a Kubernetes quantity (`2`, `1.5`, `1500m`).
fn parse_cpus(s: &str) -> Result<f64, String> {
    crate::cpu::parse_quantity(s)
}

/// `CLUSTER_INIT_CPU_MILLIS`: what the Downward API gives with `divisor: 1m` (millicores).
fn parse_millis(s: &str) -> Result<f64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) | Err(_) => Err("expected a positive whole number of millicores".into()),
        Ok(m) => Ok(m as f64 / 1000.0),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HupAction {
    /// Rolling reload: replace every worker, slot by slot.
    Reload,
    /// Forward SIGHUP to the workers (servers that reload their own config).
    Forward,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

/// Where workers' stdout and stderr go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkerOutput {
    /// The init's own stdout/stderr: the init stays off the data path.
    Inherit,
    /// Relayed line by line as `[slot] line`.
    Prefix,
    /// Relayed line by line as one JSON object (slot, pid, generation, stream, message).
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// What `--help` (and `-h`) adds after the options. Lines stay within 100 columns.
const AFTER_HELP: &str = "\
Examples:
  cluster-init -- node server.js                    one worker per usable CPU
  cluster-init -w max-1 --listen :8080 -- ./server  :8080 bound once, at fd 3 in every worker
  CLUSTER_INIT_WORKERS=max-1 cluster-init -- ./server
    In Kubernetes set options as `env` (CLUSTER_INIT_<NAME>): container `args` reach the server.

Signals:
  TERM, INT   graceful stop: the stop signal to every worker, SIGKILL after --stop-timeout
              (a second TERM or INT: SIGKILL now)
  QUIT        fast stop: SIGKILL to every worker now
  HUP         rolling reload, slot by slot (--hup forward: forwarded instead)
  TTIN, TTOU  add a worker slot, remove the highest one (never below 1)
  others      forwarded to every worker's process group

Exit status:
  0           a requested stop where every worker ended by itself (exit 0 or the stop signal)
  N, 128+N    a worker's exit code N, or its death by signal N (the first failure)
  137         a worker had to be SIGKILLed (stop timeout, second TERM, QUIT)
  127, 126    COMMAND not found, not executable
  2           a bad flag or variable, a port already taken
  1           cluster-init could not set itself up";

/// PID 1 for containers: runs COMMAND as a supervised pool of workers, one per usable CPU.
///
/// Every option can also be set with an environment variable CLUSTER_INIT_<NAME>
/// (in Kubernetes, container `args` reach the server, not cluster-init).
#[derive(Debug, Parser)]
#[command(
    name = "cluster-init",
    version,
    trailing_var_arg = true,
    max_term_width = 100,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Workers: N (>= 1), max (one per usable CPU), or max-K (never below 1)
    #[arg(short, long, env = "CLUSTER_INIT_WORKERS", default_value = "max", value_parser = WorkerSpec::from_str)]
    pub workers: WorkerSpec,

    /// Which exits are restarted: always, on-failure (exit 0 ends the slot), never (tini-like)
    #[arg(
        long,
        env = "CLUSTER_INIT_RESTART",
        value_enum,
        default_value = "always"
    )]
    pub restart: RestartPolicy,

    /// Signal sent to each worker's process group to stop it
    #[arg(long, env = "CLUSTER_INIT_STOP_SIGNAL", default_value = "SIGTERM", value_parser = Sig::from_str)]
    pub stop_signal: Sig,

    /// How long workers get to exit after the stop signal before SIGKILL
    #[arg(long, env = "CLUSTER_INIT_STOP_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub stop_timeout: Duration,

    /// First restart delay after a crash (doubles per consecutive crash, with jitter)
    #[arg(long, env = "CLUSTER_INIT_BACKOFF_INITIAL", default_value = "250ms", value_parser = parse_duration)]
    pub backoff_initial: Duration,

    /// Longest restart delay
    #[arg(long, env = "CLUSTER_INIT_BACKOFF_MAX", default_value = "30s", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// A worker alive this long is healthy: its slot's backoff starts over
    #[arg(long, env = "CLUSTER_INIT_BACKOFF_RESET", default_value = "30s", value_parser = parse_duration)]
    pub backoff_reset: Duration,

    /// Exit non-zero once every slot has been crash-looping this long (0 = never give up)
    #[arg(long, env = "CLUSTER_INIT_GIVE_UP_AFTER", default_value = "60s", value_parser = parse_duration)]
    pub give_up_after: Duration,

    /// Do not register as child subreaper when not PID 1
    #[arg(long, env = "CLUSTER_INIT_NO_SUBREAPER", value_parser = BoolishValueParser::new())]
    pub no_subreaper: bool,

    /// Log format of cluster-init's own lines (stderr)
    #[arg(
        long,
        env = "CLUSTER_INIT_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Log level of cluster-init's own lines
    #[arg(
        long,
        env = "CLUSTER_INIT_LOG_LEVEL",
        value_enum,
        default_value = "info"
    )]
    pub log_level: LogLevel,

    /// Print the plan as one JSON object and exit
    #[arg(long, env = "CLUSTER_INIT_DRY_RUN", value_parser = BoolishValueParser::new())]
    pub dry_run: bool,

    /// How a fractional CPU budget becomes `max`: floor or ceil (never below 1)
    #[arg(long, env = "CLUSTER_INIT_CPU_ROUND", default_value = "floor", value_parser = crate::cpu::Rounding::from_str)]
    pub cpu_round: crate::cpu::Rounding,

    /// CPU budget as a Kubernetes quantity (2, 1.5, 1500m); replaces detection
    #[arg(long, env = "CLUSTER_INIT_CPUS", value_parser = parse_cpus)]
    pub cpus: Option<f64>,

    /// CPU budget in millicores, as the Downward API gives it with divisor 1m
    #[arg(long, env = "CLUSTER_INIT_CPU_MILLIS", value_parser = parse_millis, conflicts_with = "cpus")]
    pub cpu_millis: Option<f64>,

    /// Give each worker its CPU share in GOMAXPROCS, DOTNET_PROCESSOR_COUNT, ... when unset
    #[arg(long, env = "CLUSTER_INIT_PER_WORKER_CPU_ENV", value_parser = BoolishValueParser::new())]
    pub per_worker_cpu_env: bool,

    /// Listen on [NAME=]ADDR (HOST:PORT, [::]:PORT, :PORT, unix:/path) and hand it to every worker at fd 3+; repeatable, comma-separated in the env var
    #[arg(long, env = "CLUSTER_INIT_LISTEN", value_delimiter = ',', value_parser = crate::listen::ListenSpec::from_str)]
    pub listen: Vec<crate::listen::ListenSpec>,

    /// reuseport: one socket per worker slot; shared: one socket for all
    #[arg(long, env = "CLUSTER_INIT_BALANCE", default_value = "reuseport", value_parser = crate::listen::Balance::from_str)]
    pub balance: crate::listen::Balance,

    /// Listen backlog (capped at net.core.somaxconn)
    #[arg(long, env = "CLUSTER_INIT_BACKLOG", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub backlog: u32,

    /// When a worker is ready: started (exec succeeded), notify (READY=1 on NOTIFY_SOCKET), or a duration alive
    #[arg(long, env = "CLUSTER_INIT_READY", default_value = "started", value_parser = ReadyMode::from_str)]
    pub ready: ReadyMode,

    /// A worker not ready this long after its start has failed to start (counts for backoff; 0 = no limit)
    #[arg(long, env = "CLUSTER_INIT_READY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// The pool is ready (/readyz, READY=1 upstream) when at least this many workers are
    #[arg(long, env = "CLUSTER_INIT_MIN_READY", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_ready: u32,

    /// Serve /livez /readyz /metrics /status over HTTP on HOST:PORT, [IPV6]:PORT or :PORT (dual-stack)
    #[arg(long, env = "CLUSTER_INIT_ADMIN_LISTEN", value_parser = crate::admin::parse_listen_addr)]
    pub admin_listen: Option<crate::admin::AdminAddr>,

    /// What SIGHUP does: reload (replace every worker, slot by slot) or forward
    #[arg(long, env = "CLUSTER_INIT_HUP", value_enum, default_value = "reload")]
    pub hup: HupAction,

    /// Replace a worker gracefully when it and its descendants use more memory (PSS) than this (512M, 1G)
    #[arg(long, env = "CLUSTER_INIT_MAX_WORKER_MEMORY", value_parser = parse_size)]
    pub max_worker_memory: Option<u64>,

    /// How often workers' memory is measured when --max-worker-memory is set
    #[arg(long, env = "CLUSTER_INIT_MEMORY_CHECK_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub memory_check_interval: Duration,

    /// Workers get WATCHDOG_USEC and must send WATCHDOG=1 this often, or get SIGABRT, then SIGKILL
    #[arg(long, env = "CLUSTER_INIT_WATCHDOG", value_parser = parse_duration)]
    pub watchdog: Option<Duration>,

    /// Add the command's arguments to exported spans (off: arguments may hold secrets)
    #[arg(long, env = "CLUSTER_INIT_TRACE_COMMAND_ARGS", value_parser = BoolishValueParser::new())]
    pub trace_command_args: bool,

    /// Replace a worker whose accept queue is non-empty and has not shrunk for this long (0 = off)
    #[arg(long, env = "CLUSTER_INIT_STALL_TIMEOUT", default_value = "0", value_parser = parse_duration)]
    pub stall_timeout: Duration,

    /// How often the CPU and memory budget is re-read to resize a `max` pool (0 = only at start; at least 100ms)
    #[arg(long, env = "CLUSTER_INIT_BUDGET_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub budget_interval: Duration,

    /// Memory one worker is expected to use (300M, 1G): `max` is also bounded by the memory limit
    #[arg(long, env = "CLUSTER_INIT_WORKER_MEMORY", value_parser = parse_size)]
    pub worker_memory: Option<u64>,

    /// Memory of the limit kept for everything but the workers when --worker-memory sizes the pool
    #[arg(long, env = "CLUSTER_INIT_MEMORY_RESERVE", default_value = "0", value_parser = parse_size_or_zero)]
    pub memory_reserve: u64,

    /// Workers' stdout/stderr: inherit (shared with the init), prefix (`[slot] line`), json
    #[arg(
        long,
        env = "CLUSTER_INIT_WORKER_OUTPUT",
        value_enum,
        default_value = "inherit"
    )]
    pub worker_output: WorkerOutput,

    /// The server to run, with its arguments (after `--`)
    #[arg(value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// What parsing produced: a command line to run, or an early exit.
pub enum Parsed {
    Run(Box<Cli>),
    /// `--help` or `--version`: this text on stdout, exit 0.
    Print(String),
    /// A usage error: exit 2 with this one line (without the program's name), written in
    /// `log_format`.
    Usage {
        message: String,
        log_format: LogFormat,
    },
}

/// The command `parse` runs: the derived [`Cli`], with hyphen values allowed for every option
/// that takes a value (see the module doc). Also what the tests render and walk, so they see
/// every option exactly as parsing does.
pub fn command() -> clap::Command {
    Cli::command().mut_args(|arg| {
        if arg.get_action().takes_values() && !arg.is_positional() {
            arg.allow_hyphen_values(true)
        } else {
            arg
        }
    })
}

/// Parses argv (and the environment, through clap's `env`). Never panics, never prints.
///
/// The single entry for argv: a `ctl` subcommand would be dispatched on the first argument
/// before this, or become a clap subcommand here.
pub fn parse<I, T>(args: I) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cmd = command();
    let log_format = log_format_hint(&cmd, &args, |var| std::env::var_os(var));
    let parsed = cmd
        .try_get_matches_from(&args)
        .and_then(|mut matches| Cli::from_arg_matches_mut(&mut matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => return clap_error(e, log_format),
    };
    if cli.command.is_empty() {
        return Parsed::Usage {
            message: "no command given: cluster-init [OPTIONS] -- COMMAND [ARGS...]".into(),
            log_format,
        };
    }
    Parsed::Run(Box::new(cli))
}

/// The log format the command line asks for, found without clap's full parse: a usage error
/// about any other option must already come out in it. `--log-format` in argv wins over its
/// variable, as in clap; a bad value (which is then the error) gives text. The scan stops where
/// clap starts the command: at `--` or the first positional argument, skipping the values of
/// options given as separate arguments (`-w 2`), as clap does.
pub fn log_format_hint(
    cmd: &clap::Command,
    args: &[OsString],
    env: impl Fn(&OsStr) -> Option<OsString>,
) -> LogFormat {
    let target = cmd
        .get_arguments()
        .find(|a| a.get_id() == "log_format")
        .expect("--log-format is an option");
    let takes_value = |a: &clap::Arg| a.get_action().takes_values();
    let long_takes_value = |long: &str| {
        cmd.get_arguments()
            .any(|a| a.get_long() == Some(long) && takes_value(a))
    };
    let short_takes_value = |c: char| {
        cmd.get_arguments()
            .any(|a| a.get_short() == Some(c) && takes_value(a))
    };
    let mut given: Option<Option<&OsStr>> = None;
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let Some(text) = arg.to_str() else { break };
        if text == "--" {
            break;
        }
        if let Some(long) = text.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (name, Some(OsStr::new(value))),
                None => (long, None),
            };
            if Some(name) == target.get_long() {
                given = Some(inline.or_else(|| rest.next().map(OsString::as_os_str)));
            } else if inline.is_none() && long_takes_value(name) {
                rest.next();
            }
        } else if let Some(shorts) = text.strip_prefix('-').filter(|s| !s.is_empty()) {
            // A cluster like `-w2` carries its value; a lone `-w` takes the next argument.
            let mut chars = shorts.chars();
            while let Some(c) = chars.next() {
                if short_takes_value(c) {
                    if chars.as_str().is_empty() {
                        rest.next();
                    }
                    break;
                }
            }
        } else {
            break;
        }
    }
    let value = match given {
        Some(value) => value.map(OsStr::to_os_string),
        None => target.get_env().and_then(env),
    };
    value
        .and_then(|v| <LogFormat as ValueEnum>::from_str(v.to_str()?, false).ok())
        .unwrap_or(LogFormat::Text)
}

/// Turns clap's multi-line error into the one line our contract promises, naming the option, its
/// environment variable when that is where the bad value came from, and the value.
fn clap_error(e: clap::Error, log_format: LogFormat) -> Parsed {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            return Parsed::Print(e.render().to_string().trim_end().to_string())
        }
        _ => {}
    }
    let ctx = |k| match e.get(k) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => Some(v.join(", ")),
        _ => None,
    };
    let arg = ctx(ContextKind::InvalidArg);
    let value = ctx(ContextKind::InvalidValue);
    let message = match (e.kind(), arg, value) {
        (ErrorKind::ValueValidation | ErrorKind::InvalidValue, Some(arg), Some(value)) => {
            let flag = arg.split_whitespace().next().unwrap_or(&arg).to_string();
            let from_env = env_name(&flag)
                .filter(|var| std::env::var_os(var).is_some_and(|v| v.to_string_lossy() == value));
            let named = match from_env {
                Some(var) => format!("{var} (for {flag})"),
                None => flag,
            };
            let why = match std::error::Error::source(&e) {
                Some(source) => source.to_string(),
                None => match ctx(ContextKind::ValidValue) {
                    Some(valid) => format!("expected one of: {valid}"),
                    None => "invalid value".into(),
                },
            };
            format!("invalid value '{value}' for {named}: {why}")
        }
        (kind, arg, _) => {
            // clap's first line is already specific ("unexpected argument '--foo' found").
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid usage");
            let first = first.trim_start_matches("error: ");
            // `--worker=2` is reported as `--worker`; the value is no part of the name.
            let near = arg
                .filter(|_| kind == ErrorKind::UnknownArgument)
                .and_then(|typed| {
                    let typed = typed.strip_prefix("--")?.split('=').next()?;
                    let cmd = command();
                    let longs = cmd.get_arguments().filter_map(|a| a.get_long());
                    let known = ["help", "version"].into_iter().chain(longs);
                    crate::suggest::closest(typed, known).map(str::to_string)
                });
            match near {
                Some(near) => format!("{first}; did you mean '--{near}'?"),
                None => first.to_string(),
            }
        }
    };
    Parsed::Usage {
        message,
        log_format,
    }
}

/// `--stop-timeout` → `CLUSTER_INIT_STOP_TIMEOUT`.
pub fn env_name(flag: &str) -> Option<String> {
    let long = flag.strip_prefix("--")?;
    Some(format!(
        "CLUSTER_INIT_{}",
        long.to_ascii_uppercase().replace('-', "_")
    ))
}

/// The environment variable of every option, from the clap definitions themselves, so that the
/// list of known names cannot drift from the options.
pub fn env_names() -> Vec<String> {
    command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_spec_grammar() {
        assert_eq!("7".parse(), Ok(WorkerSpec::Count(7)));
        assert_eq!("max".parse(), Ok(WorkerSpec::Max { minus: 0 }));
        assert_eq!("max-1".parse(), Ok(WorkerSpec::Max { minus: 1 }));
        assert_eq!("max-5".parse(), Ok(WorkerSpec::Max { minus: 5 }));
        for bad in [
            "0",
            "-1",
            "banana",
            "1.5",
            "",
            "max-",
            "max+1",
            "max--1",
            "+3",
            "99999999999",
        ] {
            assert!(bad.parse::<WorkerSpec>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("10s"), Ok(ms(10_000)));
        assert_eq!(parse_duration("2m"), Ok(ms(120_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration("0"), Ok(ms(0)));
        for bad in ["", "10", "s", "10x", "1..5s", "-1s", "ms10"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn signals() {
        assert_eq!("SIGTERM".parse(), Ok(Sig(libc::SIGTERM)));
        assert_eq!("term".parse(), Ok(Sig(libc::SIGTERM)));
        assert_eq!("9".parse(), Ok(Sig(libc::SIGKILL)));
        assert_eq!("SIGRTMIN+2".parse(), Ok(Sig(36)));
        assert_eq!("SIGRTMIN".parse(), Ok(Sig(34)));
        assert_eq!("RTMAX-0".parse(), Ok(Sig(64)));
        assert_eq!(Sig(36).name(), "SIGRTMIN+2");
        assert_eq!(Sig(34).name(), "SIGRTMIN+0");
        assert_eq!(Sig(libc::SIGQUIT).name(), "SIGQUIT");
        for bad in [
            "SIGFOO",
            "0",
            "99",
            "STOP",
            "",
            "SIGRTMIN+-3",
            "RTMAX-40",
            "SIGRTMIN+2147483647",
        ] {
            assert!(bad.parse::<Sig>().is_err(), "{bad:?} accepted");
        }
    }

    fn exit_of(args: &[&str]) -> (i32, String) {
        match parse(std::iter::once("cluster-init").chain(args.iter().copied())) {
            Parsed::Run(_) => (-1, String::new()),
            Parsed::Print(text) => (0, text),
            Parsed::Usage { message, .. } => (2, message),
        }
    }

    fn hint(args: &[&str], env: Option<&str>) -> LogFormat {
        let args: Vec<OsString> = std::iter::once("cluster-init")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        log_format_hint(&command(), &args, |var| {
            assert_eq!(var, "CLUSTER_INIT_LOG_FORMAT");
            env.map(OsString::from)
        })
    }

    #[test]
    fn log_format_is_found_before_the_parse() {
        use LogFormat::{Json, Text};
        assert_eq!(hint(&[], None), Text);
        assert_eq!(hint(&["--log-format", "json"], None), Json);
        assert_eq!(hint(&["--log-format=json", "--bogus"], None), Json);
        assert_eq!(
            hint(&["--workers", "x", "--log-format", "json"], None),
            Json
        );
        assert_eq!(hint(&["-w", "2", "--log-format", "json"], None), Json);
        assert_eq!(hint(&["-w2", "--log-format", "json"], None), Json);
        assert_eq!(hint(&["--dry-run", "--log-format", "json"], None), Json);
        assert_eq!(hint(&[], Some("json")), Json);
        assert_eq!(hint(&["--workers", "banana"], Some("json")), Json);
        // The command line wins over the variable, as in clap.
        assert_eq!(hint(&["--log-format", "text"], Some("json")), Text);
        assert_eq!(hint(&["--log-format", "json"], Some("text")), Json);
        // A bad log format is the error itself: said in plain text.
        assert_eq!(hint(&["--log-format", "xml"], None), Text);
        assert_eq!(hint(&["--log-format", "xml"], Some("json")), Text);
        assert_eq!(hint(&[], Some("JSON")), Text);
        assert_eq!(hint(&["--log-format"], Some("json")), Text);
        // The command's own arguments are not ours.
        assert_eq!(hint(&["--", "srv", "--log-format", "json"], None), Text);
        assert_eq!(hint(&["--", "--log-format", "json"], None), Text);
        assert_eq!(hint(&["srv", "--log-format", "json"], None), Text);
        assert_eq!(hint(&["-w", "2", "srv", "--log-format=json"], None), Text);
        // The value of another option is not a flag.
        assert_eq!(hint(&["--listen", "--log-format=json"], None), Text);
    }

    #[test]
    fn unknown_flags_suggest_the_closest() {
        let (code, msg) = exit_of(&["--worker", "2", "--", "true"]);
        assert_eq!(code, 2);
        assert!(msg.ends_with("did you mean '--workers'?"), "{msg}");
        let (_, msg) = exit_of(&["--stop-timout=5s", "--", "true"]);
        assert!(msg.ends_with("did you mean '--stop-timeout'?"), "{msg}");
        let (_, msg) = exit_of(&["--frobnicate", "--", "true"]);
        assert!(!msg.contains("did you mean"), "{msg}");
    }

    #[test]
    fn negative_values_reach_their_parser() {
        let (code, msg) = exit_of(&["--stop-timeout", "-1s", "--", "true"]);
        assert_eq!(code, 2);
        assert!(
            msg.starts_with("invalid value '-1s' for --stop-timeout: "),
            "{msg}"
        );
        let (code, msg) = exit_of(&["-w", "-1", "--", "true"]);
        assert_eq!(code, 2);
        assert!(
            msg.starts_with("invalid value '-1' for --workers: "),
            "{msg}"
        );
    }

    #[test]
    fn env_names_come_from_the_options() {
        let names = env_names();
        assert!(names.contains(&"CLUSTER_INIT_WORKERS".to_string()));
        assert!(names.contains(&"CLUSTER_INIT_WORKER_OUTPUT".to_string()));
        // Every option has one, and it is the one env_name derives from the flag.
        let cmd = command();
        for arg in cmd.get_arguments().filter(|a| !a.is_positional()) {
            let long = format!("--{}", arg.get_long().unwrap());
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(env, env_name(&long), "{long}");
        }
    }

    #[test]
    fn usage_errors_are_one_line_naming_the_option_and_value() {
        let (code, msg) = exit_of(&["--workers", "banana", "--", "true"]);
        assert_eq!(code, 2);
        assert!(msg.contains("--workers") && msg.contains("banana"), "{msg}");
        assert_eq!(msg.lines().count(), 1, "{msg}");

        let (code, msg) = exit_of(&["--restart", "sometimes", "--", "true"]);
        assert_eq!(code, 2);
        assert!(
            msg.contains("--restart") && msg.contains("sometimes"),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1, "{msg}");

        let (code, msg) = exit_of(&["--bogus", "--", "true"]);
        assert_eq!(code, 2);
        assert!(msg.contains("--bogus"), "{msg}");

        let (code, msg) = exit_of(&[]);
        assert_eq!(code, 2);
        assert!(msg.contains("no command"), "{msg}");
    }

    #[test]
    fn command_keeps_its_own_flags() {
        let Parsed::Run(cli) = parse([
            "cluster-init",
            "-w",
            "2",
            "--",
            "node",
            "--inspect",
            "app.js",
        ]) else {
            panic!("did not parse");
        };
        assert_eq!(cli.workers, WorkerSpec::Count(2));
        assert_eq!(cli.command, ["node", "--inspect", "app.js"]);
    }

    #[test]
    fn ready_modes_and_sizes() {
        assert_eq!("notify".parse(), Ok(ReadyMode::Notify));
        assert_eq!("2s".parse(), Ok(ReadyMode::After(Duration::from_secs(2))));
        assert!("soon".parse::<ReadyMode>().is_err());
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "M", "12Q", "-1G", "0"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_millis("1500"), Ok(1.5));
        assert!(parse_millis("0").is_err());
    }

    #[test]
    fn env_names_follow_the_flag() {
        assert_eq!(
            env_name("--stop-timeout").as_deref(),
            Some("CLUSTER_INIT_STOP_TIMEOUT")
        );
    }
}
