//! cluster-init: PID 1 for containers that runs a supervised pool of the container's server.
//!
//! Data flows one way: the command line is parsed into a plan, the supervisor runs the plan by
//! feeding what happens to the pool and carrying out what the pool decides.
//!
//! - `cli`: options, their `CLUSTER_INIT_*` env names, parsers of outside strings
//! - `config`: the plan resolved from the command line and the machine; its `--dry-run` form
//! - `cpu`: the CPU budget (affinity, cgroup v1/v2 quotas) that sizes `--workers max`
//! - `budget`: what `max` means now: the CPU and memory budget, read at start and while it runs
//! - `listen`: the listening sockets the init binds and hands to workers (LISTEN_FDS)
//! - `machine`: what PID 1 of a whole machine (a VM, not a container) must do at the end
//! - `pool`: the pure core: every slot's state and the one transition function that changes it
//! - `supervisor`: the event loop: OS events into pool events, pool effects into syscalls
//! - `report`: log lines and spans of what the pool did
//! - `sink`: the bounded, non-blocking writer of our own lines
//! - `notify`: the sd_notify server workers report readiness and watchdog pings to
//! - `output`: workers' stdout and stderr relayed line by line (`--worker-output prefix|json`)
//! - `admin`: the HTTP admin endpoint (/livez /readyz /metrics /status)
//! - `ctl`: `cluster-init ctl`, the client and the init's unix socket it talks to
//! - `memory`: workers' memory (PSS of a process tree) and OOM-kill counts
//! - `spawn`: fork/exec of one worker (the async-signal-safe part)
//! - `signals`: which signal means what; the signalfd the loop awaits
//! - `steer`: the reuseport steering program that keeps new connections off down slots
//! - `backoff`: restart delays
//! - `status`: exit statuses and what they make of ours
//! - `suggest`: closest names for mistyped flags and unknown `CLUSTER_INIT_*` variables
//! - `telemetry`: logs and OpenTelemetry traces of worker lives

pub mod admin;
pub mod backoff;
pub mod budget;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod ctl;
pub mod listen;
pub mod machine;
pub mod memory;
pub mod notify;
pub mod output;
pub mod pool;
pub mod report;
pub mod signals;
pub mod sink;
pub mod spawn;
pub mod status;
pub mod steer;
pub mod suggest;
pub mod supervisor;
pub mod telemetry;
