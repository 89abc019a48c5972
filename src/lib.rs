//! cluster-init: PID 1 for containers that runs a supervised pool of the container's server.
//!
//! Data flows one way: the command line is parsed into a plan, the supervisor runs the plan, and
//! the other modules carry out what the supervisor decides.
//!
//! - `cli`: options, their `CLUSTER_INIT_*` env names, parsers of outside strings
//! - `config`: the plan resolved from the command line and the machine; its `--dry-run` form
//! - `cpu`: the CPU budget (affinity, cgroup v1/v2 quotas) that sizes `--workers max`
//! - `listen`: the listening sockets the init binds and hands to workers (LISTEN_FDS)
//! - `supervisor`: the pool's slots and workers, and the one event loop that owns them
//! - `worker`: the supervisor's records of workers and slots
//! - `notify`: the sd_notify server workers report readiness and watchdog pings to
//! - `admin`: the HTTP admin endpoint (/livez /readyz /metrics /status)
//! - `memory`: workers' memory (PSS of a process tree) and OOM-kill counts
//! - `spawn`: fork/exec of one worker (the async-signal-safe part)
//! - `signals`: which signal means what; the self-pipe the loop awaits
//! - `backoff`: restart delays
//! - `status`: exit statuses and what they make of ours
//! - `telemetry`: logs and OpenTelemetry traces of worker lives

pub mod admin;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod listen;
pub mod memory;
pub mod notify;
pub mod signals;
pub mod spawn;
pub mod status;
pub mod supervisor;
pub mod telemetry;
pub mod worker;
