//! The supervisor's records: one `Worker` per live process it started, one `Slot` per place in
//! the pool. Plain data with small queries; the decisions about them live in `supervisor`.

use std::time::{Duration, Instant, SystemTime};

use crate::backoff::Backoff;

/// Where a worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Exec'd, not ready yet. `ready_at`: ready by time alone (`--ready DURATION`);
    /// `fail_at`: not ready by then is a failed start.
    Starting {
        ready_at: Option<Instant>,
        fail_at: Instant,
    },
    Ready,
    /// The stop signal went out; SIGKILL at `kill_at`.
    Stopping {
        kill_at: Instant,
    },
    /// SIGKILL went out.
    Killed,
}

/// Why we stopped a worker ourselves; decides how its exit is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The pool is stopping.
    Shutdown,
    /// Replaced by a newer worker (reload, memory cap) or removed by scale-down: not a failure.
    Retired,
    MemoryCap,
    /// A failed start or a missed watchdog: counts as a crash for backoff.
    ReadyTimeout,
    Watchdog,
}

impl StopReason {
    pub fn counts_as_crash(self) -> bool {
        matches!(self, StopReason::ReadyTimeout | StopReason::Watchdog)
    }
}

#[derive(Debug)]
pub struct Worker {
    pub pid: i32,
    pub slot: u32,
    pub generation: u64,
    pub started: Instant,
    pub started_wall: SystemTime,
    pub state: WorkerState,
    /// Set while this worker is a successor that has not taken over yet: the pid it replaces.
    pub replaces: Option<i32>,
    pub stop_reason: Option<StopReason>,
    /// Next `WATCHDOG=1` is due by then.
    pub watchdog_at: Option<Instant>,
    /// The last `STATUS=` it sent.
    pub status_text: Option<String>,
    pub life: crate::telemetry::WorkerLife,
}

impl Worker {
    pub fn is_ready(&self) -> bool {
        self.state == WorkerState::Ready
    }

    pub fn is_stopping(&self) -> bool {
        matches!(
            self.state,
            WorkerState::Stopping { .. } | WorkerState::Killed
        )
    }

    /// Serving, or about to: the slot's current worker (not a successor, not on its way out).
    pub fn is_current(&self) -> bool {
        !self.is_stopping() && self.replaces.is_none()
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            WorkerState::Starting { .. } => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Stopping { .. } | WorkerState::Killed => "stopping",
        }
    }

    pub fn lived(&self) -> Duration {
        self.started.elapsed()
    }

    /// A warning about this worker, logged inside its life's span so that it is also an event
    /// of the worker's trace.
    pub fn warn(&self, message: std::fmt::Arguments) {
        self.life.in_scope(|| {
            tracing::warn!(
                cluster_init.worker.slot = self.slot,
                process.pid = self.pid,
                "{message}"
            )
        });
    }

    /// The same at info level.
    pub fn info(&self, message: std::fmt::Arguments) {
        self.life.in_scope(|| {
            tracing::info!(
                cluster_init.worker.slot = self.slot,
                process.pid = self.pid,
                "{message}"
            )
        });
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// A worker runs (or starts) here.
    Active,
    /// Waiting to restart after a crash.
    BackingOff { until: Instant },
    /// Nothing runs here and nothing will (restart policy, or the pool is stopping).
    Ended,
}

#[derive(Debug)]
pub struct Slot {
    pub id: u32,
    pub state: SlotState,
    pub restarts: u64,
    pub backoff: Backoff,
    /// Start of the current run of short lives; None after a healthy one.
    pub failing_since: Option<Instant>,
    pub last_exit: Option<String>,
    /// Link to the last life of this slot, so the next one's trace follows from it.
    pub previous: Option<crate::telemetry::LifeLink>,
}
