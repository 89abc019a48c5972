//! What an exit means: the reason it is counted under, and what follows for its slot (a
//! restart at once, a restart after backoff, or the end of the slot).
//!
//! | the worker | reason | then (`--restart always`) |
//! |---|---|---|
//! | was ready, exited 0 by itself | `recycled` | restarted at once (at most every 50 ms); backoff unchanged; never a crash |
//! | exited 0 before it was ready | `exit_zero` | a failed start: backoff, counts towards giving up |
//! | exited non-zero, died of a signal, OOM-killed | `exit_nonzero`, `signal`, `oom` | a crash: backoff, counts towards giving up |
//! | not ready within `--ready-timeout` | `ready_timeout` | a failed start |
//! | missed the watchdog, stalled accept queue | `watchdog`, `stalled` | a crash |
//! | could not be started (no pids, memory, descriptors) | `spawn_failed` | a failed start |
//! | stopped by the pool (reload, scale-down, shutdown) | `stopped`, `killed_after_timeout`, `memory_cap` | nothing: another worker holds the slot, or the pool stops |
//!
//! A life is healthy when the worker was *ready* for `--backoff-reset`: only then does its slot's
//! backoff start over. A worker that never became ready lived zero seconds as far as the backoff
//! is concerned, so a server that never gets ready is restarted ever more slowly.

use std::time::Duration;

use super::{Settings, Stop, StopStage, StopWhy, Worker};
use crate::cli::RestartPolicy;
use crate::status::Exit;

/// Why a worker ended, as logs, `/metrics`, `/status` and spans all name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitReason {
    ExitZero,
    Recycled,
    ExitNonzero,
    Signal,
    Stopped,
    KilledAfterTimeout,
    Oom,
    MemoryCap,
    Watchdog,
    ReadyTimeout,
    Stalled,
    ExecFailed,
    SpawnFailed,
}

impl ExitReason {
    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [ExitReason; 13] = [
        ExitReason::ExitZero,
        ExitReason::Recycled,
        ExitReason::ExitNonzero,
        ExitReason::Signal,
        ExitReason::Stopped,
        ExitReason::KilledAfterTimeout,
        ExitReason::Oom,
        ExitReason::MemoryCap,
        ExitReason::Watchdog,
        ExitReason::ReadyTimeout,
        ExitReason::Stalled,
        ExitReason::ExecFailed,
        ExitReason::SpawnFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::ExitZero => "exit_zero",
            ExitReason::Recycled => "recycled",
            ExitReason::ExitNonzero => "exit_nonzero",
            ExitReason::Signal => "signal",
            ExitReason::Stopped => "stopped",
            ExitReason::KilledAfterTimeout => "killed_after_timeout",
            ExitReason::Oom => "oom",
            ExitReason::MemoryCap => "memory_cap",
            ExitReason::Watchdog => "watchdog",
            ExitReason::ReadyTimeout => "ready_timeout",
            ExitReason::Stalled => "stalled",
            ExitReason::ExecFailed => "exec_failed",
            ExitReason::SpawnFailed => "spawn_failed",
        }
    }

    pub(super) fn index(self) -> usize {
        ExitReason::ALL
            .iter()
            .position(|&r| r == self)
            .unwrap_or_default()
    }

    /// Whether this end is a failure worth an error status on the worker's span and a warning.
    pub fn is_failure(self) -> bool {
        !matches!(
            self,
            ExitReason::Recycled | ExitReason::Stopped | ExitReason::MemoryCap
        )
    }
}

/// What follows an exit for the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The slot ends (`--restart never`, or `on-failure` after an exit 0).
    End,
    /// Replaced at once: not a failure.
    Recycle,
    /// A crash or a failed start; `code` is the status a give-up would report.
    Failure { code: i32 },
}

/// The reason a worker's exit is counted under.
pub(super) fn reason(
    s: &Settings,
    w: &Worker,
    stop: Option<&Stop>,
    exit: Exit,
    oom: bool,
) -> ExitReason {
    if oom {
        return ExitReason::Oom;
    }
    if let Some(stop) = stop {
        match stop.why {
            StopWhy::MemoryCap => return ExitReason::MemoryCap,
            StopWhy::Watchdog | StopWhy::ReadyTimeout | StopWhy::Stalled => {
                return reason_of_stop(stop.why)
            }
            StopWhy::Shutdown | StopWhy::Replaced | StopWhy::ScaledDown => {
                if stop.stage == StopStage::Killed {
                    return ExitReason::KilledAfterTimeout;
                }
                if exit.success() || exit == Exit::Signal(s.stop_signal) {
                    return ExitReason::Stopped;
                }
            }
        }
    }
    match exit {
        Exit::Code(0) if w.ready_since.is_some() && s.restart == RestartPolicy::Always => {
            ExitReason::Recycled
        }
        Exit::Code(0) => ExitReason::ExitZero,
        Exit::Code(_) => ExitReason::ExitNonzero,
        Exit::Signal(_) => ExitReason::Signal,
    }
}

/// The reason of a worker the pool stopped so that it would be restarted.
pub(super) fn reason_of_stop(why: StopWhy) -> ExitReason {
    match why {
        StopWhy::Watchdog => ExitReason::Watchdog,
        StopWhy::ReadyTimeout => ExitReason::ReadyTimeout,
        StopWhy::Stalled => ExitReason::Stalled,
        StopWhy::MemoryCap => ExitReason::MemoryCap,
        StopWhy::Shutdown | StopWhy::Replaced | StopWhy::ScaledDown => ExitReason::Stopped,
    }
}

/// What the restart policy makes of an exit of a slot's own worker.
pub(super) fn verdict(s: &Settings, reason: ExitReason, exit: Exit) -> Verdict {
    match (s.restart, reason) {
        (_, ExitReason::Recycled) => Verdict::Recycle,
        (RestartPolicy::Never, _) => Verdict::End,
        (RestartPolicy::OnFailure, ExitReason::ExitZero) => Verdict::End,
        (_, r) => Verdict::Failure {
            code: failure_code(r, exit),
        },
    }
}

/// The status a give-up reports for a failure: the worker's own, never the signal the pool sent
/// it (a ready timeout's SIGTERM is not the server's 143).
fn failure_code(reason: ExitReason, exit: Exit) -> i32 {
    match reason {
        ExitReason::ReadyTimeout | ExitReason::Watchdog | ExitReason::Stalled => 1,
        _ => exit.as_code().max(1),
    }
}

/// The status for an exec that failed because of the program itself (127 not found, 126 not
/// executable, as shells say); None when the machine is at fault and a later try may work.
pub(super) fn cannot_run_code(errno: i32) -> Option<i32> {
    match errno {
        libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG => Some(127),
        libc::EACCES
        | libc::EPERM
        | libc::ENOEXEC
        | libc::EISDIR
        | libc::ELIBBAD
        | libc::E2BIG
        | libc::EINVAL => Some(126),
        _ => None,
    }
}

/// A worker ready this long ends its slot's run of failures for `--give-up-after` (and never
/// more than half of it, so a slot that recovers in time is never given up on).
pub(super) fn healthy_for_give_up(s: &Settings) -> Duration {
    match s.give_up_after {
        Some(limit) => s.backoff.reset_after.min(limit / 2),
        None => s.backoff.reset_after,
    }
}
