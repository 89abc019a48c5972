//! cluster-init: PID 1 for containers that runs a supervised pool of the container's server.
//!
//! Data flows one way: the command line is parsed into a plan, the supervisor runs the plan, and
//! the other modules carry out what the supervisor decides.
//!
//! - `cli`: options, their `CLUSTER_INIT_*` env names, parsers of outside strings
//! - `config`: the plan resolved from the command line and the machine; its `--dry-run` form
//! - `supervisor`: the pool's slots and the one event loop that owns them
//! - `spawn`: fork/exec of one worker (the async-signal-safe part)
//! - `signals`: which signal means what; the self-pipe the loop awaits
//! - `backoff`: restart delays
//! - `status`: exit statuses and what they make of ours
//! - `telemetry`: logs

pub mod backoff;
pub mod cli;
pub mod config;
pub mod signals;
pub mod spawn;
pub mod status;
pub mod supervisor;
pub mod telemetry;
