//! The pool's decisions: its slots, the one state each slot is in, and the one transition
//! function, [`Pool::on`]`(event, now) -> effects`.
//!
//! Nothing here makes a syscall, reads a clock or writes a log line. The supervisor feeds in what
//! happened (a child was forked, exec'd, exited; a signal, a notify message, a timer) together
//! with the time, and carries out what comes back (spawn slot k, signal group g, report a fact).
//! Time is injected, so restarts, reloads, watchdogs, scaling, give-up and backoff are driven in
//! `tests.rs` through years of edge cases without sleeping.
//!
//! Who occupies a slot is its [`SlotState`], and nothing else: an exiting pid is judged by its
//! role (the slot's occupant, the one being replaced, its successor, or a worker that already
//! left its slot), never by flags left on it. Every change of a slot's state goes through
//! [`Pool::set_state`]; what follows from the new states as a whole (which slots serve, whether
//! the pool is ready) is worked out once per event in [`Pool::settle`].
//!
//! | state | who runs | becomes |
//! |---|---|---|
//! | `Waiting{until}` | nobody | `Launching` at `until` (a new slot: at once; after a crash: the backoff) |
//! | `Launching` | the fork is being carried out | `Starting`, or `Waiting` when the fork failed |
//! | `Starting(w)` | `w`, not ready yet | `Serving` when ready; `Stopping` at the ready timeout |
//! | `Serving(w)` | `w`, ready | `Replacing` (reload, memory cap); `Stopping` (watchdog, stall); `Waiting` when it exits |
//! | `Replacing{old,new}` | `old` serves, `new` starts | `Serving(new)` when `new` is ready (`old` leaves); `Serving(old)` when `new` fails |
//! | `Stopping(w, stop)` | `w`, told to stop so that it is restarted | `Waiting` when it exits |
//! | `Ended` | nobody, nobody will | (a pool stop, `--restart never`/`on-failure`) |
//!
//! Workers that no longer hold a slot but still run (replaced, removed by scale-down, all of them
//! during a pool stop) are *leaving*; process groups whose leader is gone while members remain are
//! *draining*: both get the stop signal and SIGKILL after the stop timeout, and neither holds up a
//! slot's restart.

mod policy;
mod rollout;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use crate::backoff::{self, Backoff};
use crate::cli::{HupAction, ReadyMode, RestartPolicy};
use crate::notify::Notice;
use crate::signals::{meaning, Meaning};
use crate::status::Exit;

pub use policy::ExitReason;

/// Whether an exec failure with `errno` is the program's fault (not found, not executable),
/// which no retry fixes.
pub fn cannot_run(errno: i32) -> bool {
    policy::cannot_run_code(errno).is_some()
}
use rollout::Rollout;

/// The most workers a pool may have: a socket per slot and per listener, and one steering
/// program entry per slot, stay well inside the kernel's limits.
pub const MAX_WORKERS: u32 = 1024;
/// Starts per turn of the loop: signals and exits are handled between batches, so a pool of a
/// thousand slots never keeps PID 1 from answering a SIGTERM.
pub const LAUNCH_BATCH: usize = 16;
/// The shortest time between two starts of one slot: a worker that exits 0 at once (`true`)
/// is recycled at most 20 times a second.
pub const MIN_START_GAP: Duration = Duration::from_millis(50);
/// With `tcp_migrate_req`, a slot that stays down at least this long closes its socket so that
/// its queued connections move to the live slots; a successor due sooner serves them itself.
pub const PARK_AFTER: Duration = Duration::from_millis(500);
/// After the final SIGKILL, how long the pool waits for the kernel before giving up on the rest
/// (a process stuck in uninterruptible sleep must not keep the container alive forever).
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often draining process groups are looked at when no SIGCHLD tells us anything (members
/// that are not our descendants die without one).
pub const DRAIN_POLL: Duration = Duration::from_millis(100);

/// What the pool is configured to do; resolved from the command line once.
#[derive(Clone, Debug)]
pub struct Settings {
    pub workers: u32,
    pub restart: RestartPolicy,
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    pub backoff: backoff::Policy,
    pub give_up_after: Option<Duration>,
    pub ready: ReadyMode,
    pub ready_timeout: Duration,
    pub min_ready: u32,
    pub watchdog: Option<Duration>,
    /// `--max-worker-memory` and how often it is measured.
    pub memory_cap: Option<(u64, Duration)>,
    pub hup: HupAction,
    /// `--stall-timeout`: a serving slot whose accept queue is non-empty and has not shrunk
    /// for this long has a hung worker.
    pub stall_timeout: Option<Duration>,
    /// How often a `max` pool reads its budget again (None: only at start, or a fixed size).
    pub budget_interval: Option<Duration>,
    /// `net.ipv4.tcp_migrate_req` is 1 and slots have sockets of their own: a slot that stays
    /// down closes its socket so the kernel moves its queued connections to live slots.
    pub migrate: bool,
    /// Seeds the backoff jitter of each slot.
    pub seed: u64,
}

/// One process the pool started, and what is known about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Worker {
    pub pid: i32,
    pub slot: u32,
    pub generation: u64,
    pub spawned: Instant,
    /// When exec succeeded; None while it is pending.
    pub exec: Option<Instant>,
    /// When it became ready; a healthy life is counted from here, not from the spawn.
    pub ready_since: Option<Instant>,
    /// The last `WATCHDOG=1` (armed at readiness).
    pub last_ping: Option<Instant>,
    /// The last `STATUS=` it sent.
    pub status_text: Option<String>,
}

/// Why the pool told a worker to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopWhy {
    /// The whole pool stops.
    Shutdown,
    /// Its successor is ready (reload).
    Replaced,
    /// Over `--max-worker-memory`; its successor is ready.
    MemoryCap,
    /// Its slot was removed.
    ScaledDown,
    /// Not ready within `--ready-timeout`: a failed start.
    ReadyTimeout,
    /// No `WATCHDOG=1` in time (or `WATCHDOG=trigger`).
    Watchdog,
    /// Its accept queue stopped moving.
    Stalled,
}

impl StopWhy {
    pub fn as_str(self) -> &'static str {
        match self {
            StopWhy::Shutdown => "shutdown",
            StopWhy::Replaced => "replaced",
            StopWhy::MemoryCap => "memory cap",
            StopWhy::ScaledDown => "scale-down",
            StopWhy::ReadyTimeout => "ready timeout",
            StopWhy::Watchdog => "watchdog",
            StopWhy::Stalled => "stalled",
        }
    }
}

/// Where a stop order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopStage {
    /// Out of steering, still serving what already reached it; the stop signal at `signal_at`
    /// (a removed slot's worker, so that connections queued on its socket are taken first).
    Draining { signal_at: Instant },
    /// The stop signal went out; SIGKILL at `kill_at`.
    Signalled { kill_at: Instant },
    /// SIGKILL went out.
    Killed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    pub why: StopWhy,
    pub stage: StopStage,
}

/// Why a slot's worker is being replaced by a successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    Reload,
    MemoryCap,
}

/// Who occupies a slot. See the table in the module doc.
#[derive(Clone, Debug, PartialEq)]
pub enum SlotState {
    Waiting {
        until: Instant,
    },
    Launching,
    Starting(Worker),
    Serving(Worker),
    Replacing {
        old: Worker,
        /// None while its fork is being carried out.
        new: Option<Worker>,
        why: Replace,
    },
    Stopping(Worker, Stop),
    Ended,
}

impl SlotState {
    /// The name `/status`, `/metrics` and `ctl` show.
    pub fn as_str(&self) -> &'static str {
        match self {
            SlotState::Waiting { .. } => "backoff",
            SlotState::Launching | SlotState::Starting(_) => "starting",
            SlotState::Serving(_) => "ready",
            SlotState::Replacing { .. } => "replacing",
            SlotState::Stopping(..) => "stopping",
            SlotState::Ended => "ended",
        }
    }

    /// The worker that serves (or will) in this slot, if any.
    pub fn occupant(&self) -> Option<&Worker> {
        match self {
            SlotState::Starting(w) | SlotState::Serving(w) | SlotState::Stopping(w, _) => Some(w),
            SlotState::Replacing { old, .. } => Some(old),
            _ => None,
        }
    }

    /// Accepts connections right now.
    fn serving(&self) -> bool {
        matches!(self, SlotState::Serving(_) | SlotState::Replacing { .. })
    }

    fn workers(&self) -> impl Iterator<Item = &Worker> {
        let (a, b) = match self {
            SlotState::Starting(w) | SlotState::Serving(w) | SlotState::Stopping(w, _) => {
                (Some(w), None)
            }
            SlotState::Replacing { old, new, .. } => (Some(old), new.as_ref()),
            _ => (None, None),
        };
        a.into_iter().chain(b)
    }

    fn workers_mut(&mut self) -> impl Iterator<Item = &mut Worker> {
        let (a, b) = match self {
            SlotState::Starting(w) | SlotState::Serving(w) | SlotState::Stopping(w, _) => {
                (Some(w), None)
            }
            SlotState::Replacing { old, new, .. } => (Some(old), new.as_mut()),
            _ => (None, None),
        };
        a.into_iter().chain(b)
    }
}

/// How a slot's last worker ended, for `/status` and `ctl status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastExit {
    pub reason: ExitReason,
    /// None when no process ever ran (a fork that failed).
    pub exit: Option<Exit>,
}

/// One place in the pool. Its id is `CLUSTER_WORKER_ID`, kept across restarts and replacements.
#[derive(Debug)]
pub struct Slot {
    pub id: u32,
    state: SlotState,
    backoff: Backoff,
    /// Start of the current run of failures; None after a healthy life.
    failing_since: Option<Instant>,
    last_start: Option<Instant>,
    pub restarts: u64,
    pub last_exit: Option<LastExit>,
    /// The accept queue last seen non-empty while `pid` served: its length, and since when it
    /// has not shrunk.
    stall: Option<Stall>,
}

impl Slot {
    pub fn state(&self) -> &SlotState {
        &self.state
    }
}

/// What stall detection remembers of a slot's accept queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stall {
    pid: i32,
    queued: u32,
    since: Instant,
}

/// A process group whose leader is gone while members still run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drain {
    pub pgid: i32,
    pub slot: u32,
    /// SIGKILL then; None once it went out.
    pub kill_at: Option<Instant>,
}

/// What the control command (or the admin endpoint) asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Reload,
    Scale(u32),
    Stop,
}

/// What happened, as the supervisor saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Timers may be due; also the start of a new turn of the loop (a new batch of starts).
    Tick,
    /// The fork for `slot` succeeded; exec is pending.
    Spawned {
        slot: u32,
        pid: i32,
    },
    /// No process could be started for `slot` (fork, a pipe or a socket failed): `errno`.
    SpawnFailed {
        slot: u32,
        errno: i32,
    },
    Execed {
        pid: i32,
    },
    /// exec failed in the child with `errno`; the child is gone (reaped as no worker of ours).
    ExecFailed {
        pid: i32,
        errno: i32,
    },
    /// A worker was reaped. `group_alive`: members of its process group still run.
    /// `oom_kills`: the cgroup's OOM-kill counter, read when it died of SIGKILL.
    Exited {
        pid: i32,
        exit: Exit,
        group_alive: bool,
        oom_kills: Option<u64>,
    },
    /// A draining group has no member left.
    GroupGone {
        pgid: i32,
    },
    /// A notify message from the worker `pid` (or one of its descendants).
    Notify {
        pid: i32,
        notices: Vec<Notice>,
    },
    Signal(i32),
    Command(Command),
    /// Memory used by workers (and their descendants), as asked by [`Effect::MeasureMemory`].
    Memory(Vec<(i32, u64)>),
    /// Connections waiting in each slot's accept queue(s), as asked by [`Effect::SampleQueues`].
    Queues(Vec<(u32, u32)>),
    /// What `max` means now, as asked by [`Effect::ReadBudget`]; `detail` says why, for the log.
    Budget {
        max: u32,
        detail: String,
    },
}

/// What the supervisor is asked to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Fork and exec a worker for `slot`; answer with `Spawned` or `SpawnFailed` at once.
    Spawn {
        slot: u32,
        generation: u64,
        workers: u32,
    },
    /// Send `signal` to the process group `pgid`.
    Signal { pgid: i32, signal: i32 },
    /// Measure these workers' memory; answer with `Memory`.
    MeasureMemory(Vec<i32>),
    /// The slot was removed: its sockets can be closed.
    CloseSlot(u32),
    /// The slots that serve changed: steer new connections to these.
    Serving(Vec<u32>),
    /// Read every slot's accept queue; answer with `Queues`.
    SampleQueues,
    /// Read the CPU and memory budget again; answer with `Budget` (or nothing, if unreadable).
    ReadBudget,
    /// The slot stays down a while: its own socket can be closed (queued connections then move
    /// to live slots, `tcp_migrate_req`); its next start binds a new one.
    Park(u32),
    /// The pool stops: the init's references to the listeners go, so a listener lives only as
    /// long as the workers' copies.
    CloseListeners,
    /// The pool became ready for the first time: tell our own supervisor (`READY=1`).
    NotifyReady,
    /// A fact worth a log line, a span or an event.
    Report(Report),
}

/// What the next worker of a slot will be, told with an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Started again after `delay`.
    Restart { delay: Duration },
    /// Another worker already holds the slot: this was the worker a successor replaced.
    Replaced,
    /// Not started again: this was a successor, and the worker it was to replace keeps the slot.
    Kept,
    /// Not restarted: the policy says so.
    End(RestartPolicy),
    /// Not restarted: the pool is stopping, or the worker had already left its slot.
    Gone,
}

/// Why the pool stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    Signal(i32),
    Command,
    GiveUp,
    CannotRun,
    /// Every slot ended by itself (`--restart never`/`on-failure`).
    AllEnded,
}

/// Why the pool changed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleWhy {
    Signal(i32),
    Command,
    /// The CPU or memory budget changed (an in-place resize).
    Budget,
}

/// Facts for logs, spans and events; the wording lives with the reporter, not here.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    Started {
        slot: u32,
        pid: i32,
        generation: u64,
    },
    Ready {
        slot: u32,
        pid: i32,
        generation: u64,
        after: Duration,
    },
    /// The stop signal (SIGABRT for the watchdog) went to the worker's group.
    Stopping {
        slot: u32,
        pid: i32,
        why: StopWhy,
        signal: i32,
        timeout: Duration,
    },
    /// SIGKILL went to the worker's group: its stop timeout passed (or a fast stop).
    Killed {
        slot: u32,
        pid: i32,
        why: StopWhy,
    },
    Exited {
        slot: u32,
        pid: i32,
        generation: u64,
        exit: Exit,
        reason: ExitReason,
        lived: Duration,
        then: Then,
        restarts: u64,
    },
    SpawnFailed {
        slot: u32,
        errno: i32,
        then: Then,
    },
    /// The program cannot run (not found, not executable): the pool stops with `code`.
    CannotRun {
        errno: i32,
        code: i32,
    },
    OverMemory {
        slot: u32,
        pid: i32,
        used: u64,
        cap: u64,
    },
    ReloadBegun {
        generation: u64,
    },
    Replacing {
        slot: u32,
        pid: i32,
        why: Replace,
    },
    /// The successor of `pid` could not take over; the old workers keep serving.
    ReloadAbandoned {
        slot: u32,
        reason: ExitReason,
    },
    ReloadComplete {
        generation: u64,
    },
    Scaled {
        from: u32,
        to: u32,
        why: ScaleWhy,
        lives: Vec<i32>,
        /// For a budget change: what the budget is now and why.
        detail: Option<String>,
    },
    ScaleRefused {
        why: ScaleWhy,
        reason: &'static str,
    },
    PoolReady {
        ready: u32,
        of: u32,
    },
    PoolNotReady {
        ready: u32,
        of: u32,
    },
    StopBegun {
        cause: StopCause,
    },
    /// A second TERM/INT, or QUIT: SIGKILL to everything now.
    StoppingNow {
        signal: i32,
    },
    StopTimeout {
        groups: usize,
    },
    /// A worker's group outlived it: the stop signal, then SIGKILL at the stop timeout.
    GroupDraining {
        slot: u32,
        pgid: i32,
    },
    GroupKilled {
        slot: u32,
        pgid: i32,
    },
    /// The slot's accept queue held `queued` connections and did not shrink for `after`.
    Stalled {
        slot: u32,
        pid: i32,
        queued: u32,
        after: Duration,
    },
    /// The slot is down for `delay`: its socket is closed so its queue moves (Effect::Park).
    Parked {
        slot: u32,
        delay: Duration,
    },
    GivingUp {
        after: Duration,
        code: i32,
    },
    Forwarded {
        signal: i32,
        pids: Vec<i32>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping {
        deadline: Instant,
        /// When the final SIGKILL went out; the pool ends `KILL_GRACE` later whatever remains.
        killed_at: Option<Instant>,
        /// A graceful-stop signal came during this stop: the next one means now. A stop the
        /// pool began itself (a command, give-up) takes the orchestrator's first TERM as the
        /// same request (a preStop `ctl stop`, then the kubelet's SIGTERM).
        signalled: bool,
    },
}

/// How the pool's own exit status is decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Outcome {
    /// A status decided by the pool itself (give-up, a program that cannot run): it wins.
    forced: Option<i32>,
    /// The first failure among the exits that decide the status (during a stop; under `never`).
    first_failure: Option<i32>,
    /// The latest failure of a restarted worker: the status a give-up reports.
    last_failure: Option<i32>,
}

/// The pool: every slot, every worker, every decision.
#[derive(Debug)]
pub struct Pool {
    s: Settings,
    slots: Vec<Slot>,
    leaving: Vec<(Worker, Stop)>,
    draining: Vec<Drain>,
    phase: Phase,
    generation: u64,
    rollout: Rollout,
    outcome: Outcome,
    ready: bool,
    announced: bool,
    serving: Vec<u32>,
    oom_kills: Option<u64>,
    next_memory_check: Option<Instant>,
    next_queue_sample: Option<Instant>,
    next_budget_read: Option<Instant>,
    /// The last `max` the budget gave, and a different one seen once (applied when seen twice).
    budget_max: u32,
    budget_seen: Option<u32>,
    launches_left: usize,
    restarts_total: u64,
    exits: [u64; ExitReason::ALL.len()],
    /// Bumped on every change anyone could see: the supervisor republishes `/status` only then.
    version: u64,
    out: Vec<Effect>,
}

impl Pool {
    /// A pool of `settings.workers` slots, each waiting to start now. `oom_kills` is the cgroup's
    /// OOM-kill counter at start, if it has one.
    pub fn new(settings: Settings, now: Instant, oom_kills: Option<u64>) -> Pool {
        let slots = (0..settings.workers.clamp(1, MAX_WORKERS))
            .map(|id| new_slot(&settings, id, now))
            .collect();
        Pool {
            next_memory_check: settings.memory_cap.map(|(_, every)| now + every),
            next_queue_sample: settings
                .stall_timeout
                .map(|d| now + queue_sample_interval(d)),
            next_budget_read: settings.budget_interval.map(|d| now + d),
            budget_max: settings.workers.clamp(1, MAX_WORKERS),
            budget_seen: None,
            s: settings,
            slots,
            leaving: Vec::new(),
            draining: Vec::new(),
            phase: Phase::Running,
            generation: 1,
            rollout: Rollout::default(),
            outcome: Outcome::default(),
            ready: false,
            announced: false,
            serving: Vec::new(),
            oom_kills,
            launches_left: LAUNCH_BATCH,
            restarts_total: 0,
            exits: [0; ExitReason::ALL.len()],
            version: 0,
            out: Vec::new(),
        }
    }

    /// The transition function: applies one event at `now` and returns what to do about it.
    pub fn on(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        match event {
            Event::Tick => self.tick(now),
            Event::Spawned { slot, pid } => self.spawned(slot, pid, now),
            Event::SpawnFailed { slot, errno } => self.spawn_failed(slot, errno, now),
            Event::Execed { pid } => self.execed(pid, now),
            Event::ExecFailed { pid, errno } => self.exec_failed(pid, errno, now),
            Event::Exited {
                pid,
                exit,
                group_alive,
                oom_kills,
            } => self.exited(pid, exit, group_alive, oom_kills, now),
            Event::GroupGone { pgid } => self.group_gone(pgid),
            Event::Notify { pid, notices } => self.notified(pid, notices, now),
            Event::Signal(sig) => self.signalled(sig, now),
            Event::Command(c) => self.command(c, now),
            Event::Memory(used) => self.memory_measured(&used, now),
            Event::Queues(queues) => self.queues_sampled(&queues, now),
            Event::Budget { max, detail } => self.budget_read(max, detail, now),
        }
        self.settle(now);
        std::mem::take(&mut self.out)
    }

    /// When the pool next needs a `Tick`; None when nothing is scheduled (an idle pool sleeps).
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Phase::Stopping {
            deadline,
            killed_at,
            ..
        } = self.phase
        {
            match killed_at {
                None => consider(deadline),
                Some(at) if now < at + KILL_GRACE => consider(at + KILL_GRACE),
                Some(_) => return None,
            }
        }
        for slot in &self.slots {
            match &slot.state {
                SlotState::Waiting { until } => consider(*until),
                SlotState::Stopping(_, stop) => kill_deadline(stop, &mut consider),
                state => {
                    for w in state.workers() {
                        self.worker_deadlines(w, &mut consider);
                    }
                }
            }
        }
        for (_, stop) in &self.leaving {
            kill_deadline(stop, &mut consider);
        }
        for d in &self.draining {
            if let Some(at) = d.kill_at {
                consider(at);
            }
        }
        if !self.draining.is_empty() {
            consider(now + DRAIN_POLL);
        }
        if self.phase == Phase::Running {
            if let Some(at) = self.next_memory_check {
                consider(at);
            }
            if let Some(at) = self.next_queue_sample.filter(|_| !self.serving.is_empty()) {
                consider(at);
            }
            if let Some(at) = self.next_budget_read {
                consider(at);
            }
            if let Some(at) = self.give_up_at() {
                consider(at);
            }
        }
        next
    }

    /// Our exit status, once nothing is left to supervise (or what is left will not die).
    pub fn finished(&self, now: Instant) -> Option<i32> {
        let all_ended = self.slots.iter().all(|s| s.state == SlotState::Ended);
        let nothing_runs = self.leaving.is_empty() && self.draining.is_empty();
        let past_grace = matches!(
            self.phase,
            Phase::Stopping { killed_at: Some(at), .. } if now >= at + KILL_GRACE
        );
        if !((all_ended && nothing_runs) || past_grace) {
            return None;
        }
        let o = self.outcome;
        Some(o.forced.or(o.first_failure).unwrap_or(0))
    }

    /// Processes still running when the pool finished anyway (they survived SIGKILL).
    pub fn abandoned(&self) -> usize {
        self.leaving.len() + self.draining.len()
    }

    /// Whether the pool's stop has begun.
    pub fn stopping(&self) -> bool {
        self.phase != Phase::Running
    }

    /// Whether `pid` is a worker of ours (the slot occupants, successors, leaving workers).
    pub fn is_worker(&self, pid: i32) -> bool {
        self.find(pid).is_some()
    }

    /// Process groups being drained: the supervisor reports when one is gone.
    pub fn draining(&self) -> impl Iterator<Item = &Drain> {
        self.draining.iter()
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Workers that left their slot and still run.
    pub fn leaving(&self) -> impl Iterator<Item = &(Worker, Stop)> {
        self.leaving.iter()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    /// The slots that serve now (steering sends new connections only to these).
    pub fn serving(&self) -> &[u32] {
        &self.serving
    }

    pub fn restarts_total(&self) -> u64 {
        self.restarts_total
    }

    /// Exits so far, by reason (every reason, zeros included).
    pub fn exits(&self) -> impl Iterator<Item = (ExitReason, u64)> + '_ {
        ExitReason::ALL
            .iter()
            .copied()
            .zip(self.exits.iter().copied())
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    // --- the one place a slot's state changes -------------------------------------------------

    fn set_state(&mut self, i: usize, state: SlotState) {
        self.slots[i].state = state;
        self.version += 1;
    }

    /// Takes a slot's state out to build the next one from it; always followed by `set_state`.
    fn take_state(&mut self, i: usize) -> SlotState {
        std::mem::replace(&mut self.slots[i].state, SlotState::Ended)
    }

    /// What follows from the slots' states as a whole, worked out once per event: due starts,
    /// the next step of a rollout, which slots serve, whether the pool is ready, and whether a
    /// pool whose every slot ended should stop.
    fn settle(&mut self, now: Instant) {
        if self.phase == Phase::Running {
            self.advance_rollout(now);
            self.launch_due(now);
        }
        let serving: Vec<u32> = self
            .slots
            .iter()
            .filter(|s| s.state.serving())
            .map(|s| s.id)
            .collect();
        if serving != self.serving {
            self.serving = serving.clone();
            self.version += 1;
            self.out.push(Effect::Serving(serving));
        }
        let of = self.slots.len() as u32;
        let ready_now = self.serving.len() as u32;
        let pool_ready =
            self.phase == Phase::Running && ready_now >= self.s.min_ready.min(of).max(1);
        if pool_ready != self.ready {
            self.ready = pool_ready;
            self.version += 1;
            if pool_ready {
                self.report(Report::PoolReady {
                    ready: ready_now,
                    of,
                });
                if !self.announced {
                    self.announced = true;
                    self.out.push(Effect::NotifyReady);
                }
            } else if self.phase == Phase::Running
                && self.slots.iter().any(|s| s.state != SlotState::Ended)
            {
                self.report(Report::PoolNotReady {
                    ready: ready_now,
                    of,
                });
            }
        }
        let all_ended = self.slots.iter().all(|s| s.state == SlotState::Ended);
        if self.phase == Phase::Running && all_ended {
            self.begin_stop(StopCause::AllEnded, now);
        }
    }

    fn report(&mut self, r: Report) {
        self.out.push(Effect::Report(r));
    }

    fn signal_group(&mut self, pgid: i32, signal: i32) {
        self.out.push(Effect::Signal { pgid, signal });
    }

    fn slot_index(&self, id: u32) -> Option<usize> {
        self.slots.iter().position(|s| s.id == id)
    }

    /// Where `pid` is: which slot (and as what), or in the leaving list.
    fn find(&self, pid: i32) -> Option<Place> {
        for (i, slot) in self.slots.iter().enumerate() {
            match &slot.state {
                SlotState::Starting(w) | SlotState::Serving(w) | SlotState::Stopping(w, _)
                    if w.pid == pid =>
                {
                    return Some(Place::Occupant(i))
                }
                SlotState::Replacing { old, .. } if old.pid == pid => {
                    return Some(Place::Old(i));
                }
                SlotState::Replacing { new: Some(n), .. } if n.pid == pid => {
                    return Some(Place::New(i));
                }
                _ => {}
            }
        }
        self.leaving
            .iter()
            .position(|(w, _)| w.pid == pid)
            .map(Place::Leaving)
    }

    fn worker_mut(&mut self, pid: i32) -> Option<&mut Worker> {
        for slot in &mut self.slots {
            if let Some(w) = slot.state.workers_mut().find(|w| w.pid == pid) {
                return Some(w);
            }
        }
        self.leaving
            .iter_mut()
            .map(|(w, _)| w)
            .find(|w| w.pid == pid)
    }

    fn worker_deadlines(&self, w: &Worker, consider: &mut impl FnMut(Instant)) {
        if w.ready_since.is_none() {
            if let Some(at) = self.ready_deadline(w) {
                consider(at);
            }
            if let (ReadyMode::After(d), Some(execed)) = (self.s.ready, w.exec) {
                consider(execed + d);
            }
        } else if let (Some(every), Some(ping)) = (self.s.watchdog, w.last_ping) {
            consider(ping + every);
        }
    }

    /// When a worker not ready yet counts as a failed start; None with `--ready-timeout 0`.
    fn ready_deadline(&self, w: &Worker) -> Option<Instant> {
        if self.s.ready_timeout.is_zero() {
            return None;
        }
        let timeout = match self.s.ready {
            ReadyMode::After(d) => self.s.ready_timeout.max(d),
            _ => self.s.ready_timeout,
        };
        Some(w.spawned + timeout)
    }

    // --- events ---------------------------------------------------------------------------------

    fn tick(&mut self, now: Instant) {
        self.launches_left = LAUNCH_BATCH;
        if let Phase::Stopping {
            deadline,
            killed_at: None,
            ..
        } = self.phase
        {
            if now >= deadline {
                let groups = self
                    .slots
                    .iter()
                    .filter(|s| s.state.occupant().is_some())
                    .count()
                    + self.leaving.len()
                    + self.draining.len();
                self.report(Report::StopTimeout { groups });
                self.kill_all(now);
            }
        }
        self.kill_overdue(now);
        for i in 0..self.slots.len() {
            self.worker_timers(i, now);
        }
        if self.phase == Phase::Running {
            if self.next_memory_check.is_some_and(|at| at <= now) {
                self.check_memory(now);
            }
            if let Some(every) = self.s.budget_interval {
                if self.next_budget_read.is_some_and(|at| at <= now) {
                    self.next_budget_read = Some(now + every);
                    self.out.push(Effect::ReadBudget);
                }
            }
            if let Some(d) = self.s.stall_timeout {
                if self.next_queue_sample.is_some_and(|at| at <= now) {
                    self.next_queue_sample = Some(now + queue_sample_interval(d));
                    if !self.serving.is_empty() {
                        self.out.push(Effect::SampleQueues);
                    }
                }
            }
            if self.give_up_at().is_some_and(|at| at <= now) {
                let code = self.outcome.last_failure.unwrap_or(1).max(1);
                let after = self.s.give_up_after.unwrap_or_default();
                self.report(Report::GivingUp { after, code });
                self.outcome.forced.get_or_insert(code);
                self.begin_stop(StopCause::GiveUp, now);
            }
        }
    }

    /// SIGKILL to every worker and group whose stop timeout has passed; the stop signal to
    /// draining workers whose time has come.
    fn kill_overdue(&mut self, now: Instant) {
        for j in 0..self.leaving.len() {
            if let StopStage::Draining { signal_at } = self.leaving[j].1.stage {
                if signal_at <= now {
                    let (w, why) = (self.leaving[j].0.clone(), self.leaving[j].1.why);
                    self.leaving[j].1 = self.signal_stop(&w, why, self.s.stop_signal, now);
                }
            }
        }
        let due =
            |stop: &Stop| matches!(stop.stage, StopStage::Signalled { kill_at } if kill_at <= now);
        for i in 0..self.slots.len() {
            if let SlotState::Stopping(w, stop) = &self.slots[i].state {
                if due(stop) {
                    let (pid, slot, why) = (w.pid, w.slot, stop.why);
                    if let SlotState::Stopping(_, stop) = &mut self.slots[i].state {
                        stop.stage = StopStage::Killed;
                    }
                    self.version += 1;
                    self.signal_group(pid, libc::SIGKILL);
                    self.report(Report::Killed { slot, pid, why });
                }
            }
        }
        for j in 0..self.leaving.len() {
            if due(&self.leaving[j].1) {
                self.leaving[j].1.stage = StopStage::Killed;
                let (pid, slot, why) = (
                    self.leaving[j].0.pid,
                    self.leaving[j].0.slot,
                    self.leaving[j].1.why,
                );
                self.version += 1;
                self.signal_group(pid, libc::SIGKILL);
                self.report(Report::Killed { slot, pid, why });
            }
        }
        for j in 0..self.draining.len() {
            let d = self.draining[j];
            if d.kill_at.is_some_and(|at| at <= now) {
                self.draining[j].kill_at = None;
                self.signal_group(d.pgid, libc::SIGKILL);
                self.report(Report::GroupKilled {
                    slot: d.slot,
                    pgid: d.pgid,
                });
                if self.stopping() {
                    self.outcome.first_failure.get_or_insert(137);
                }
            }
        }
    }

    /// Readiness by time, the ready timeout and the watchdog of slot `i`'s workers.
    fn worker_timers(&mut self, i: usize, now: Instant) {
        let pids: Vec<i32> = self.slots[i].state.workers().map(|w| w.pid).collect();
        for pid in pids {
            let Some(w) = self.slots[i]
                .state
                .workers()
                .find(|w| w.pid == pid)
                .cloned()
            else {
                continue;
            };
            if matches!(self.slots[i].state, SlotState::Stopping(..)) {
                continue;
            }
            if w.ready_since.is_none() {
                if let (ReadyMode::After(d), Some(execed)) = (self.s.ready, w.exec) {
                    if execed + d <= now {
                        self.became_ready(pid, now);
                        continue;
                    }
                }
                if self.ready_deadline(&w).is_some_and(|at| at <= now) {
                    self.stop_for_restart(pid, StopWhy::ReadyTimeout, now);
                }
            } else if let (Some(every), Some(ping)) = (self.s.watchdog, w.last_ping) {
                if ping + every <= now {
                    self.stop_for_restart(pid, StopWhy::Watchdog, now);
                }
            }
        }
    }

    fn spawned(&mut self, slot: u32, pid: i32, now: Instant) {
        // A pid is only handed out again once its old process group is empty.
        if self.draining.iter().any(|d| d.pgid == pid) {
            self.group_gone(pid);
        }
        let worker = Worker {
            pid,
            slot,
            generation: self.generation,
            spawned: now,
            exec: None,
            ready_since: None,
            last_ping: None,
            status_text: None,
        };
        let Some(i) = self.slot_index(slot) else {
            return self.stop_stray(worker, now);
        };
        match self.take_state(i) {
            SlotState::Launching => self.set_state(i, SlotState::Starting(worker)),
            SlotState::Replacing {
                old,
                new: None,
                why,
            } => self.set_state(
                i,
                SlotState::Replacing {
                    old,
                    new: Some(worker),
                    why,
                },
            ),
            other => {
                // Nothing asked for this worker (the slot changed while the fork ran): it leaves.
                self.set_state(i, other);
                self.stop_stray(worker, now);
            }
        }
    }

    fn stop_stray(&mut self, worker: Worker, now: Instant) {
        let why = if self.stopping() {
            StopWhy::Shutdown
        } else {
            StopWhy::ScaledDown
        };
        self.leave(worker, why, now);
    }

    fn spawn_failed(&mut self, slot: u32, errno: i32, now: Instant) {
        self.count_exit(ExitReason::SpawnFailed);
        let Some(i) = self.slot_index(slot) else {
            return;
        };
        if let Some(s) = self.slots.get_mut(i) {
            s.last_exit = Some(LastExit {
                reason: ExitReason::SpawnFailed,
                exit: None,
            });
        }
        match self.take_state(i) {
            SlotState::Replacing { old, new: None, .. } => {
                self.set_state(i, SlotState::Serving(old));
                self.abandon_rollout(slot, ExitReason::SpawnFailed);
                self.report(Report::SpawnFailed {
                    slot,
                    errno,
                    then: Then::Kept,
                });
            }
            SlotState::Launching => {
                self.set_state(i, SlotState::Ended);
                let then = self.restart_after_failure(i, Duration::ZERO, 1, now);
                self.report(Report::SpawnFailed { slot, errno, then });
            }
            other => self.set_state(i, other),
        }
    }

    fn execed(&mut self, pid: i32, now: Instant) {
        let Some(w) = self.worker_mut(pid) else {
            return;
        };
        if w.exec.is_some() {
            return;
        }
        w.exec = Some(now);
        let (slot, generation) = (w.slot, w.generation);
        self.version += 1;
        self.report(Report::Started {
            slot,
            pid,
            generation,
        });
        if self.s.ready == ReadyMode::Started {
            self.became_ready(pid, now);
        }
    }

    fn exec_failed(&mut self, pid: i32, errno: i32, now: Instant) {
        let Some(place) = self.find(pid) else {
            return;
        };
        let cannot_run = policy::cannot_run_code(errno);
        match place {
            Place::New(i) => {
                // The program changed under a running pool: keep the workers it has.
                let slot = self.slots[i].id;
                if let SlotState::Replacing { old, .. } = self.take_state(i) {
                    self.set_state(i, SlotState::Serving(old));
                }
                self.count_exit(ExitReason::ExecFailed);
                self.abandon_rollout(slot, ExitReason::ExecFailed);
            }
            Place::Occupant(i) => {
                let slot = self.slots[i].id;
                self.set_state(i, SlotState::Ended);
                match cannot_run {
                    Some(code) => {
                        self.count_exit(ExitReason::ExecFailed);
                        self.slots[i].last_exit = Some(LastExit {
                            reason: ExitReason::ExecFailed,
                            exit: Some(Exit::Code(code)),
                        });
                        self.report(Report::CannotRun { errno, code });
                        self.outcome.forced.get_or_insert(code);
                        self.begin_stop(StopCause::CannotRun, now);
                    }
                    None => {
                        // Out of pids, memory or descriptors: a failed start, tried again later.
                        self.count_exit(ExitReason::SpawnFailed);
                        self.slots[i].last_exit = Some(LastExit {
                            reason: ExitReason::SpawnFailed,
                            exit: None,
                        });
                        let then = self.restart_after_failure(i, Duration::ZERO, 1, now);
                        self.report(Report::SpawnFailed { slot, errno, then });
                    }
                }
            }
            Place::Leaving(j) => {
                // Gone before it ever ran: nothing more will be heard of it.
                let (w, _) = self.leaving.swap_remove(j);
                self.count_exit(ExitReason::ExecFailed);
                self.rollout.step_done(w.pid);
            }
            Place::Old(_) => {}
        }
    }

    fn exited(
        &mut self,
        pid: i32,
        exit: Exit,
        group_alive: bool,
        oom_kills: Option<u64>,
        now: Instant,
    ) {
        let Some(place) = self.find(pid) else {
            return; // an orphan: reaped, nothing to decide
        };
        let oom = exit == Exit::Signal(libc::SIGKILL) && self.oom_counted(oom_kills);
        let (worker, stop) = match place {
            Place::Occupant(i) => match self.take_state(i) {
                SlotState::Stopping(w, stop) => {
                    self.set_state(i, SlotState::Ended);
                    (w, Some(stop))
                }
                SlotState::Starting(w) | SlotState::Serving(w) => {
                    self.set_state(i, SlotState::Ended);
                    (w, None)
                }
                other => unreachable!("occupant of {other:?}"),
            },
            Place::Old(i) => match self.take_state(i) {
                SlotState::Replacing { old, new, .. } => {
                    // Its successor takes the slot as it is; the rollout moves on.
                    let next = match new {
                        Some(n) if n.ready_since.is_some() => SlotState::Serving(n),
                        Some(n) => SlotState::Starting(n),
                        None => SlotState::Launching,
                    };
                    self.set_state(i, next);
                    (old, None)
                }
                other => unreachable!("old of {other:?}"),
            },
            Place::New(i) => match self.take_state(i) {
                SlotState::Replacing {
                    old, new: Some(n), ..
                } => {
                    self.set_state(i, SlotState::Serving(old));
                    (n, None)
                }
                other => unreachable!("new of {other:?}"),
            },
            Place::Leaving(j) => {
                let (w, stop) = self.leaving.swap_remove(j);
                self.version += 1;
                (w, Some(stop))
            }
        };
        let reason = policy::reason(&self.s, &worker, stop.as_ref(), exit, oom);
        self.count_exit(reason);
        if group_alive {
            self.drain_group(&worker, stop.as_ref(), now);
        } else {
            self.rollout.step_done(worker.pid);
        }
        if self.stopping() {
            self.outcome_of_stop(exit, stop.as_ref());
        }
        let lived = now.saturating_duration_since(worker.spawned);
        let slot_id = worker.slot;
        let then = match place {
            Place::Occupant(i) => {
                self.slots[i].last_exit = Some(LastExit {
                    reason,
                    exit: Some(exit),
                });
                if self.stopping() {
                    Then::Gone
                } else {
                    self.after_exit(i, &worker, exit, reason, now)
                }
            }
            Place::New(i) => {
                self.slots[i].last_exit = Some(LastExit {
                    reason,
                    exit: Some(exit),
                });
                self.abandon_rollout(slot_id, reason);
                Then::Kept
            }
            Place::Old(i) => {
                self.served(i, &worker, now);
                self.slots[i].last_exit = Some(LastExit {
                    reason,
                    exit: Some(exit),
                });
                Then::Replaced
            }
            Place::Leaving(_) => Then::Gone,
        };
        let restarts = self
            .slot_index(slot_id)
            .map_or(0, |i| self.slots[i].restarts);
        self.report(Report::Exited {
            slot: slot_id,
            pid,
            generation: worker.generation,
            exit,
            reason,
            lived,
            then,
            restarts,
        });
    }

    /// Applies the restart policy to slot `i`, whose worker exited by itself (or after a stop
    /// meant to restart it). The slot is `Ended` on entry.
    fn after_exit(
        &mut self,
        i: usize,
        worker: &Worker,
        exit: Exit,
        reason: ExitReason,
        now: Instant,
    ) -> Then {
        self.served(i, worker, now);
        match policy::verdict(&self.s, reason, exit) {
            policy::Verdict::End => {
                if !exit.success() {
                    self.outcome.first_failure.get_or_insert(exit.as_code());
                }
                Then::End(self.s.restart)
            }
            policy::Verdict::Recycle => {
                let slot = &mut self.slots[i];
                // A worker that served and exited cleanly: whatever failed before is over.
                slot.failing_since = None;
                let at = slot
                    .last_start
                    .map_or(now, |t| (t + MIN_START_GAP).max(now));
                slot.restarts += 1;
                self.restarts_total += 1;
                self.set_state(i, SlotState::Waiting { until: at });
                Then::Restart { delay: at - now }
            }
            policy::Verdict::Failure { code } => {
                self.outcome.last_failure = Some(code);
                self.new_generation_failed(worker.generation, worker.slot, reason);
                let healthy = worker
                    .ready_since
                    .map_or(Duration::ZERO, |r| now.saturating_duration_since(r));
                self.restart_after_failure(i, healthy, code, now)
            }
        }
    }

    /// Slot `i`'s worker `w` is leaving it: if it served long enough to count as healthy, the
    /// slot's earlier failures no longer count towards giving up.
    fn served(&mut self, i: usize, w: &Worker, now: Instant) {
        let healthy = w.ready_since.is_some_and(|r| {
            now.saturating_duration_since(r) >= policy::healthy_for_give_up(&self.s)
        });
        if healthy {
            self.slots[i].failing_since = None;
        }
    }

    /// A failed start or a crash of slot `i` (now `Ended`) whose worker was ready for `healthy`:
    /// backoff, counted towards giving up.
    fn restart_after_failure(
        &mut self,
        i: usize,
        healthy: Duration,
        code: i32,
        now: Instant,
    ) -> Then {
        self.outcome.last_failure = Some(code);
        let give_up_healthy = policy::healthy_for_give_up(&self.s);
        let slot = &mut self.slots[i];
        if healthy >= give_up_healthy {
            slot.failing_since = None;
        }
        slot.failing_since.get_or_insert(now);
        // Never faster than MIN_START_GAP, even with `--backoff-initial 0`: PID 1 must not
        // spin forking a server that dies at once.
        let delay = slot.backoff.after_exit(healthy).max(MIN_START_GAP);
        slot.restarts += 1;
        slot.stall = None;
        let id = slot.id;
        self.restarts_total += 1;
        self.set_state(i, SlotState::Waiting { until: now + delay });
        if self.s.migrate && delay >= PARK_AFTER {
            self.out.push(Effect::Park(id));
            self.report(Report::Parked { slot: id, delay });
        }
        Then::Restart { delay }
    }

    fn oom_counted(&mut self, now: Option<u64>) -> bool {
        let Some(now) = now else {
            return false;
        };
        match self.oom_kills {
            // One kill per worker: two workers killed together are both named.
            Some(before) if now > before => {
                self.oom_kills = Some(before + 1);
                true
            }
            _ => {
                self.oom_kills = Some(now);
                false
            }
        }
    }

    /// The exit of a worker during a pool stop decides our status: a clean stop is exit 0 or
    /// death by the stop signal; a SIGKILL is 137; anything else is the worker's own status.
    fn outcome_of_stop(&mut self, exit: Exit, stop: Option<&Stop>) {
        let killed = stop.is_some_and(|s| s.stage == StopStage::Killed);
        let clean = exit.success() || exit == Exit::Signal(self.s.stop_signal);
        if killed {
            self.outcome.first_failure.get_or_insert(137);
        } else if !clean {
            self.outcome.first_failure.get_or_insert(exit.as_code());
        }
    }

    /// Members of an exited worker's group keep running: they get the stop signal (unless they
    /// already had it) and the rest of the worker's grace time, then SIGKILL.
    fn drain_group(&mut self, w: &Worker, stop: Option<&Stop>, now: Instant) {
        let kill_at = match stop.map(|s| s.stage) {
            Some(StopStage::Signalled { kill_at }) => Some(kill_at),
            Some(StopStage::Killed) => None,
            None | Some(StopStage::Draining { .. }) => {
                self.signal_group(w.pid, self.s.stop_signal);
                Some(now + self.s.stop_timeout)
            }
        };
        let kill_at = match (kill_at, self.phase) {
            (Some(at), Phase::Stopping { deadline, .. }) => Some(at.min(deadline)),
            (at, _) => at,
        };
        if kill_at.is_none() {
            // Already SIGKILLed with its leader; nothing to wait for but the kernel.
            self.signal_group(w.pid, libc::SIGKILL);
        }
        self.draining.push(Drain {
            pgid: w.pid,
            slot: w.slot,
            kill_at,
        });
        self.version += 1;
        self.report(Report::GroupDraining {
            slot: w.slot,
            pgid: w.pid,
        });
    }

    fn group_gone(&mut self, pgid: i32) {
        let before = self.draining.len();
        self.draining.retain(|d| d.pgid != pgid);
        if self.draining.len() != before {
            self.version += 1;
            self.rollout.step_done(pgid);
        }
    }

    fn notified(&mut self, pid: i32, notices: Vec<Notice>, now: Instant) {
        for n in notices {
            match n {
                Notice::Ready => self.became_ready(pid, now),
                Notice::Watchdog => {
                    if let Some(w) = self.worker_mut(pid) {
                        if w.ready_since.is_some() {
                            w.last_ping = Some(now);
                        }
                    }
                }
                Notice::WatchdogTrigger => self.stop_for_restart(pid, StopWhy::Watchdog, now),
                Notice::Status(text) => {
                    if let Some(w) = self.worker_mut(pid) {
                        if w.status_text.as_deref() != Some(text.as_str()) {
                            w.status_text = Some(text);
                            self.version += 1;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// `pid` is ready (READY=1, exec under `--ready started`, or its time alive). Only the first
    /// time counts: servers re-send READY=1 with every STATUS= update.
    fn became_ready(&mut self, pid: i32, now: Instant) {
        let Some(place) = self.find(pid) else {
            return;
        };
        let i = match place {
            Place::Occupant(i) | Place::New(i) => i,
            Place::Old(_) | Place::Leaving(_) => return,
        };
        if matches!(self.slots[i].state, SlotState::Stopping(..)) {
            return;
        }
        let Some(w) = self.worker_mut(pid) else {
            return;
        };
        if w.ready_since.is_some() {
            return;
        }
        w.ready_since = Some(now);
        w.last_ping = Some(now);
        let report = Report::Ready {
            slot: w.slot,
            pid,
            generation: w.generation,
            after: now.saturating_duration_since(w.spawned),
        };
        self.report(report);
        match self.take_state(i) {
            SlotState::Starting(w) => self.set_state(i, SlotState::Serving(w)),
            SlotState::Replacing {
                old,
                new: Some(n),
                why,
            } => {
                // The successor takes over; its predecessor leaves with the stop signal.
                self.served(i, &old, now);
                self.set_state(i, SlotState::Serving(n));
                let leave_why = match why {
                    Replace::Reload => StopWhy::Replaced,
                    Replace::MemoryCap => StopWhy::MemoryCap,
                };
                self.leave(old, leave_why, now);
            }
            other => self.set_state(i, other),
        }
    }

    /// Stops a worker that is to be restarted (ready timeout, watchdog, stall). The slot's
    /// occupant stays in its slot until it exits; an old worker being replaced leaves it to its
    /// successor; a successor that fails this way abandons the rollout.
    fn stop_for_restart(&mut self, pid: i32, why: StopWhy, now: Instant) {
        let Some(place) = self.find(pid) else {
            return;
        };
        let signal = if why == StopWhy::Watchdog {
            libc::SIGABRT
        } else {
            self.s.stop_signal
        };
        match place {
            Place::Occupant(i) => {
                let state = self.take_state(i);
                let w = match state {
                    SlotState::Starting(w) | SlotState::Serving(w) => w,
                    other => return self.set_state(i, other),
                };
                self.served(i, &w, now);
                let stop = self.signal_stop(&w, why, signal, now);
                self.set_state(i, SlotState::Stopping(w, stop));
            }
            Place::Old(i) => {
                if let SlotState::Replacing { old, new, .. } = self.take_state(i) {
                    let next = match new {
                        Some(n) => SlotState::Starting(n),
                        None => SlotState::Launching,
                    };
                    self.set_state(i, next);
                    self.served(i, &old, now);
                    let stop = self.signal_stop(&old, why, signal, now);
                    self.leaving.push((old, stop));
                }
            }
            Place::New(i) => {
                if let SlotState::Replacing {
                    old, new: Some(n), ..
                } = self.take_state(i)
                {
                    let slot = self.slots[i].id;
                    self.set_state(i, SlotState::Serving(old));
                    let stop = self.signal_stop(&n, why, signal, now);
                    self.leaving.push((n, stop));
                    self.abandon_rollout(slot, policy::reason_of_stop(why));
                }
            }
            Place::Leaving(_) => {}
        }
    }

    /// Sends a worker off: out of its slot, the stop signal, SIGKILL after the stop timeout.
    fn leave(&mut self, w: Worker, why: StopWhy, now: Instant) {
        let stop = self.signal_stop(&w, why, self.s.stop_signal, now);
        self.leaving.push((w, stop));
        self.version += 1;
    }

    fn signal_stop(&mut self, w: &Worker, why: StopWhy, signal: i32, now: Instant) -> Stop {
        let mut kill_at = now + self.s.stop_timeout;
        if let Phase::Stopping { deadline, .. } = self.phase {
            kill_at = kill_at.min(deadline);
        }
        self.signal_group(w.pid, signal);
        self.report(Report::Stopping {
            slot: w.slot,
            pid: w.pid,
            why,
            signal,
            timeout: self.s.stop_timeout,
        });
        Stop {
            why,
            stage: StopStage::Signalled { kill_at },
        }
    }

    fn signalled(&mut self, sig: i32, now: Instant) {
        match meaning(sig) {
            Meaning::Child => {}
            Meaning::GracefulStop => match &mut self.phase {
                Phase::Running => self.begin_stop(StopCause::Signal(sig), now),
                Phase::Stopping {
                    killed_at: None,
                    signalled: signalled @ false,
                    ..
                } => *signalled = true,
                Phase::Stopping {
                    killed_at: None, ..
                } => {
                    self.report(Report::StoppingNow { signal: sig });
                    self.kill_all(now);
                }
                Phase::Stopping { .. } => {}
            },
            Meaning::FastStop => {
                if matches!(
                    self.phase,
                    Phase::Stopping {
                        killed_at: Some(_),
                        ..
                    }
                ) {
                    return; // a second QUIT must not push the deadline back
                }
                self.begin_stop(StopCause::Signal(sig), now);
                self.report(Report::StoppingNow { signal: sig });
                self.kill_all(now);
            }
            Meaning::Reload if self.s.hup == HupAction::Forward => self.forward(sig),
            Meaning::Reload => self.reload(now),
            Meaning::ScaleUp => {
                let to = self.slots.len() as u32 + 1;
                self.scale_to(to, ScaleWhy::Signal(sig), now);
            }
            Meaning::ScaleDown => {
                let to = (self.slots.len() as u32).saturating_sub(1);
                self.scale_to(to, ScaleWhy::Signal(sig), now);
            }
            Meaning::Forward => self.forward(sig),
        }
    }

    fn command(&mut self, c: Command, now: Instant) {
        match c {
            Command::Reload => self.reload(now),
            Command::Scale(n) => self.scale_to(n, ScaleWhy::Command, now),
            Command::Stop => {
                if !self.stopping() {
                    self.begin_stop(StopCause::Command, now);
                }
            }
        }
    }

    /// Every worker's process group (and every draining group) gets `sig`.
    fn forward(&mut self, sig: i32) {
        let mut pids: Vec<i32> = self
            .slots
            .iter()
            .flat_map(|s| s.state.workers().map(|w| w.pid))
            .collect();
        pids.extend(self.leaving.iter().map(|(w, _)| w.pid));
        for &pid in &pids {
            self.signal_group(pid, sig);
        }
        let groups: Vec<i32> = self.draining.iter().map(|d| d.pgid).collect();
        for pgid in groups {
            self.signal_group(pgid, sig);
        }
        self.report(Report::Forwarded { signal: sig, pids });
    }

    /// The stop of the whole pool: every worker leaves its slot with the stop signal, and
    /// SIGKILL follows at the deadline.
    fn begin_stop(&mut self, cause: StopCause, now: Instant) {
        if self.stopping() {
            return;
        }
        let deadline = now + self.s.stop_timeout;
        self.phase = Phase::Stopping {
            deadline,
            killed_at: None,
            signalled: matches!(cause, StopCause::Signal(_)),
        };
        self.version += 1;
        self.rollout = Rollout::default();
        self.report(Report::StopBegun { cause });
        self.out.push(Effect::CloseListeners);
        for i in 0..self.slots.len() {
            let state = self.take_state(i);
            self.set_state(i, SlotState::Ended);
            match state {
                SlotState::Starting(w) | SlotState::Serving(w) => {
                    self.leave(w, StopWhy::Shutdown, now)
                }
                SlotState::Replacing { old, new, .. } => {
                    self.leave(old, StopWhy::Shutdown, now);
                    if let Some(n) = new {
                        self.leave(n, StopWhy::Shutdown, now);
                    }
                }
                SlotState::Stopping(w, stop) => self.leaving.push((w, stop)),
                SlotState::Waiting { .. } | SlotState::Launching | SlotState::Ended => {}
            }
        }
        // Whatever they were stopped for before, they now end with the pool.
        for j in 0..self.leaving.len() {
            match self.leaving[j].1.stage {
                StopStage::Signalled { kill_at } => {
                    self.leaving[j].1.stage = StopStage::Signalled {
                        kill_at: kill_at.min(deadline),
                    }
                }
                StopStage::Draining { .. } => {
                    let (w, why) = (self.leaving[j].0.clone(), self.leaving[j].1.why);
                    self.leaving[j].1 = self.signal_stop(&w, why, self.s.stop_signal, now);
                }
                StopStage::Killed => {}
            }
        }
        for d in &mut self.draining {
            d.kill_at = d.kill_at.map(|at| at.min(deadline));
        }
    }

    /// SIGKILL to every worker and group now; the pool ends `KILL_GRACE` later at the latest.
    fn kill_all(&mut self, now: Instant) {
        if let Phase::Stopping { killed_at, .. } = &mut self.phase {
            killed_at.get_or_insert(now);
        }
        for j in 0..self.leaving.len() {
            if self.leaving[j].1.stage != StopStage::Killed {
                self.leaving[j].1.stage = StopStage::Killed;
                let (pid, slot, why) = (
                    self.leaving[j].0.pid,
                    self.leaving[j].0.slot,
                    self.leaving[j].1.why,
                );
                self.signal_group(pid, libc::SIGKILL);
                self.report(Report::Killed { slot, pid, why });
            }
        }
        for j in 0..self.draining.len() {
            if self.draining[j].kill_at.take().is_some() {
                let pgid = self.draining[j].pgid;
                self.signal_group(pgid, libc::SIGKILL);
                self.outcome.first_failure.get_or_insert(137);
            }
        }
        self.version += 1;
    }

    /// Starts slots whose time has come, at most `LAUNCH_BATCH` per turn.
    fn launch_due(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            if self.launches_left == 0 {
                return;
            }
            if matches!(self.slots[i].state, SlotState::Waiting { until } if until <= now) {
                self.launches_left -= 1;
                self.set_state(i, SlotState::Launching);
                self.launch(i, now);
            }
        }
    }

    fn launch(&mut self, i: usize, now: Instant) {
        self.slots[i].last_start = Some(now);
        self.out.push(Effect::Spawn {
            slot: self.slots[i].id,
            generation: self.generation,
            workers: self.slots.len() as u32,
        });
    }

    /// When every slot has been failing for `--give-up-after`, the instant that happens. A slot
    /// whose worker serves is not crash-looping at the moment, whatever came before it.
    fn give_up_at(&self) -> Option<Instant> {
        let limit = self.s.give_up_after?;
        let mut latest: Option<Instant> = None;
        for slot in &self.slots {
            if slot.state == SlotState::Ended {
                continue;
            }
            if slot.state.serving() {
                return None;
            }
            let since = slot.failing_since?;
            latest = Some(latest.map_or(since, |l: Instant| l.max(since)));
        }
        latest.map(|since| since + limit)
    }

    /// A serving slot whose queue is non-empty and has not shrunk for `--stall-timeout` has a
    /// hung worker: out of steering at once, the worker leaves (stop signal, SIGKILL after the
    /// stop timeout), and a successor starts after the slot's backoff to serve the queue.
    fn queues_sampled(&mut self, queues: &[(u32, u32)], now: Instant) {
        let Some(limit) = self.s.stall_timeout else {
            return;
        };
        for &(id, queued) in queues {
            let Some(i) = self.slot_index(id) else {
                continue;
            };
            let slot = &mut self.slots[i];
            let (pid, ready) = match &slot.state {
                SlotState::Serving(w) if queued > 0 => (w.pid, w.ready_since.unwrap_or(now)),
                _ => {
                    slot.stall = None;
                    continue;
                }
            };
            // A new worker's clock starts when it is ready: what waited for its predecessor
            // does not count against it.
            let since = match slot.stall {
                Some(st) if st.pid == pid && queued >= st.queued => st.since,
                _ => now,
            }
            .max(ready);
            slot.stall = Some(Stall { pid, queued, since });
            if now.saturating_duration_since(since) < limit {
                continue;
            }
            let SlotState::Serving(w) = self.take_state(i) else {
                unreachable!("checked above");
            };
            self.set_state(i, SlotState::Ended);
            self.report(Report::Stalled {
                slot: id,
                pid: w.pid,
                queued,
                after: now.saturating_duration_since(since),
            });
            let healthy = w
                .ready_since
                .map_or(Duration::ZERO, |r| now.saturating_duration_since(r));
            let stop = self.signal_stop(&w, StopWhy::Stalled, self.s.stop_signal, now);
            self.leaving.push((w, stop));
            // Its exit is counted (as `stalled`) when it is reaped; the slot restarts now, if
            // the restart policy restarts a failed worker at all.
            match policy::verdict(&self.s, ExitReason::Stalled, Exit::Code(1)) {
                policy::Verdict::Failure { code } => {
                    self.restart_after_failure(i, healthy, code, now);
                }
                policy::Verdict::End | policy::Verdict::Recycle => {
                    self.outcome.first_failure.get_or_insert(1);
                }
            }
        }
    }

    fn count_exit(&mut self, reason: ExitReason) {
        self.exits[reason.index()] += 1;
        self.version += 1;
    }
}

/// Where a pid is in the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Occupant(usize),
    Old(usize),
    New(usize),
    Leaving(usize),
}

/// How often queues are read for `--stall-timeout`: often enough that a stall is seen within a
/// quarter of the timeout, never more than 10 times a second.
fn queue_sample_interval(stall: Duration) -> Duration {
    (stall / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

fn kill_deadline(stop: &Stop, consider: &mut impl FnMut(Instant)) {
    match stop.stage {
        StopStage::Signalled { kill_at } => consider(kill_at),
        StopStage::Draining { signal_at } => consider(signal_at),
        StopStage::Killed => {}
    }
}

fn new_slot(s: &Settings, id: u32, now: Instant) -> Slot {
    Slot {
        id,
        state: SlotState::Waiting { until: now },
        backoff: Backoff::new(
            s.backoff,
            s.seed.rotate_left(id.wrapping_mul(7)) ^ u64::from(id),
        ),
        failing_since: None,
        last_start: None,
        restarts: 0,
        last_exit: None,
        stall: None,
    }
}
