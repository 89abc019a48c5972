//! What the pool's facts look like to people: log lines (with the span attribute names as
//! fields, so `--log-format json` carries the facts, not just a sentence) and the spans and span
//! events of each worker's life.
//!
//! The pool ([`crate::pool`]) says *what* happened in a [`Report`]; this module alone chooses
//! the words and the level, and owns the telemetry handle of every live worker ([`WorkerLife`],
//! by pid) and of every slot's last life (so the next one links to it). Lines about one worker
//! are written inside its life's span, so they are also events of its trace.
//!
//! Lines that would repeat by the hundred (a thousand slots failing to spawn under a pids
//! limit) are written once per [`REPEAT_WINDOW`], then summed up with a count.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn, Level};

use crate::cli::{signal_name, RestartPolicy};
use crate::pool::{ExitReason, Replace, Report, ScaleWhy, StopCause, StopWhy, Then};
use crate::status::Exit;
use crate::telemetry::{LifeLink, Telemetry, WorkerLife};

/// Repeated identical failures are logged once per this long.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(5);

/// Logs at a level chosen at run time (tracing's macros want it fixed).
macro_rules! log_at {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            Level::ERROR => error!($($rest)+),
            Level::WARN => warn!($($rest)+),
            Level::INFO => info!($($rest)+),
            _ => debug!($($rest)+),
        }
    };
}

pub struct Reporter {
    telemetry: Telemetry,
    lives: HashMap<i32, WorkerLife>,
    links: HashMap<u32, LifeLink>,
    program: String,
    stop_timeout: Duration,
    /// `net.ipv4.tcp_migrate_req`, when slots have sockets of their own (None otherwise).
    migrate: Option<bool>,
    repeats: HashMap<&'static str, Repeat>,
}

struct Repeat {
    since: Instant,
    suppressed: u64,
}

impl Reporter {
    pub fn new(
        telemetry: Telemetry,
        program: String,
        stop_timeout: Duration,
        migrate: Option<bool>,
    ) -> Reporter {
        Reporter {
            telemetry,
            lives: HashMap::new(),
            links: HashMap::new(),
            program,
            stop_timeout,
            migrate,
            repeats: HashMap::new(),
        }
    }

    pub fn telemetry(&mut self) -> &mut Telemetry {
        &mut self.telemetry
    }

    /// Opens the life of the next worker of `slot`, linked to the slot's previous one. It opens
    /// before the fork so that `TRACEPARENT` can point at it.
    pub fn open_life(
        &mut self,
        slot: u32,
        generation: u64,
        exe: &str,
        args: &[String],
    ) -> WorkerLife {
        let previous = self.links.get(&slot);
        self.telemetry
            .worker_spawned(slot, generation, 0, exe, args, previous)
    }

    /// The fork succeeded: the life belongs to `pid` from now on.
    pub fn forked(&mut self, slot: u32, pid: i32, life: WorkerLife) {
        if let Some(link) = life.link() {
            self.links.insert(slot, link);
        }
        self.lives.insert(pid, life);
    }

    /// No process could be made: the life ends at once.
    pub fn fork_failed(&mut self, life: WorkerLife, errno: i32) {
        self.telemetry
            .worker_exec_failed(life, ExitReason::SpawnFailed, 0, &errno_text(errno));
    }

    /// Exec succeeded; `awaiting_ready`: `worker.spawn` lasts until the worker is ready.
    pub fn execed(&mut self, pid: i32, awaiting_ready: bool) {
        if let Some(life) = self.lives.get_mut(&pid) {
            self.telemetry.worker_exec_ok(life, pid, awaiting_ready);
        }
    }

    /// Exec failed in the child: its life ends with the reason.
    pub fn exec_failed(&mut self, pid: i32, errno: i32, reason: ExitReason) {
        if let Some(life) = self.lives.remove(&pid) {
            let code = if reason == ExitReason::ExecFailed {
                127
            } else {
                0
            };
            self.telemetry
                .worker_exec_failed(life, reason, code, &errno_text(errno));
        }
    }

    /// The lives of these pids, for spans that link to them.
    pub fn lives_of(&self, pids: &[i32]) -> Vec<&WorkerLife> {
        pids.iter().filter_map(|p| self.lives.get(p)).collect()
    }

    /// Runs `f` inside `pid`'s life, so that its log lines are events of that worker's span.
    fn in_life(&self, pid: i32, f: impl FnOnce()) {
        match self.lives.get(&pid) {
            Some(life) => life.in_scope(f),
            None => f(),
        }
    }

    /// Whether a line of kind `key` should be written now; within a window after the last one
    /// written, it is only counted.
    fn first_in_window(&mut self, key: &'static str, now: Instant) -> bool {
        match self.repeats.get_mut(key) {
            Some(r) if now.saturating_duration_since(r.since) < REPEAT_WINDOW => {
                r.suppressed += 1;
                false
            }
            _ => {
                self.flush_repeat(key);
                self.repeats.insert(
                    key,
                    Repeat {
                        since: now,
                        suppressed: 0,
                    },
                );
                true
            }
        }
    }

    fn flush_repeat(&mut self, key: &'static str) {
        if let Some(r) = self.repeats.remove(key).filter(|r| r.suppressed > 0) {
            warn!(
                cluster_init.repeated = r.suppressed,
                "{} more like the last \"{key}\" in {REPEAT_WINDOW:?}", r.suppressed
            );
        }
    }

    /// Writes the "and N more" lines of windows that have closed.
    pub fn flush_repeats(&mut self, now: Instant) {
        let closed: Vec<&'static str> = self
            .repeats
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.since) >= REPEAT_WINDOW)
            .map(|(k, _)| *k)
            .collect();
        for key in closed {
            self.flush_repeat(key);
        }
    }

    pub fn report(&mut self, r: Report, now: Instant) {
        match r {
            Report::Started {
                slot,
                pid,
                generation,
            } => debug!(
                cluster_init.worker.slot = slot,
                process.pid = pid,
                cluster_init.worker.generation = generation,
                "worker started"
            ),
            Report::Ready {
                slot,
                pid,
                generation,
                after,
            } => {
                if let Some(life) = self.lives.get_mut(&pid) {
                    self.telemetry.worker_ready(life);
                }
                self.in_life(pid, || {
                    info!(
                        cluster_init.worker.slot = slot,
                        process.pid = pid,
                        cluster_init.worker.generation = generation,
                        cluster_init.ready.after_ms = after.as_millis() as u64,
                        "worker ready"
                    )
                });
            }
            Report::Stopping {
                slot,
                pid,
                why,
                signal,
                timeout,
            } => {
                let name = signal_name(signal);
                if let Some(life) = self.lives.get_mut(&pid) {
                    self.telemetry.worker_stopping(life, &name, timeout);
                }
                let (level, message) = match why {
                    StopWhy::ReadyTimeout => (
                        Level::WARN,
                        format!("worker not ready in time: {name}, SIGKILL after {timeout:?}"),
                    ),
                    StopWhy::Watchdog => (
                        Level::WARN,
                        format!("watchdog expired: {name}, SIGKILL after {timeout:?}"),
                    ),
                    StopWhy::Stalled => (
                        Level::WARN,
                        format!("accept queue stalled: {name}, SIGKILL after {timeout:?}"),
                    ),
                    StopWhy::MemoryCap | StopWhy::Replaced => (
                        Level::INFO,
                        format!("old worker leaves: {name}, SIGKILL after {timeout:?}"),
                    ),
                    StopWhy::ScaledDown => (
                        Level::INFO,
                        format!("worker of a removed slot leaves: {name}"),
                    ),
                    StopWhy::Shutdown => (Level::DEBUG, format!("stopping worker: {name}")),
                };
                self.in_life(pid, || {
                    log_at!(
                        level,
                        cluster_init.worker.slot = slot,
                        process.pid = pid,
                        cluster_init.stop.reason = why.as_str(),
                        "{message}"
                    )
                });
            }
            Report::Killed { slot, pid, why } => {
                let timeout = self.stop_timeout;
                self.in_life(pid, || {
                    warn!(
                        cluster_init.worker.slot = slot,
                        process.pid = pid,
                        cluster_init.stop.reason = why.as_str(),
                        "SIGKILL to the worker's process group (stop timeout {timeout:?}, or stopping now)"
                    )
                });
            }
            Report::Exited {
                slot,
                pid,
                generation,
                exit,
                reason,
                lived,
                then,
                restarts,
            } => self.exited(slot, pid, generation, exit, reason, lived, then, restarts, now),
            Report::SpawnFailed { slot, errno, then } => {
                if self.first_in_window("cannot start a worker", now) {
                    let delay = restart_delay_ms(then);
                    warn!(
                        cluster_init.worker.slot = slot,
                        cluster_init.exit.reason = ExitReason::SpawnFailed.as_str(),
                        error.type = ExitReason::SpawnFailed.as_str(),
                        cluster_init.restart.delay_ms = delay,
                        "cannot start a worker: {}; a failed start, tried again later",
                        errno_text(errno)
                    );
                }
            }
            Report::CannotRun { errno, code } => error!(
                process.exit.code = code,
                error.type = ExitReason::ExecFailed.as_str(),
                "cannot run {}: {}",
                self.program,
                errno_text(errno)
            ),
            Report::OverMemory {
                slot,
                pid,
                used,
                cap,
            } => self.in_life(pid, || {
                warn!(
                    cluster_init.worker.slot = slot,
                    process.pid = pid,
                    cluster_init.memory.bytes = used,
                    "worker uses {} MiB (with its descendants), over the {} MiB cap: replacing it",
                    used >> 20,
                    cap >> 20
                )
            }),
            Report::ReloadBegun { generation } => info!(
                cluster_init.generation = generation,
                "rolling reload to generation {generation}"
            ),
            Report::Replacing { slot, pid, why } => {
                let why = match why {
                    Replace::Reload => "reload",
                    Replace::MemoryCap => "memory cap",
                };
                info!(
                    cluster_init.worker.slot = slot,
                    process.pid = pid,
                    "replacing the worker ({why}): its successor starts on the same socket"
                );
            }
            Report::ReloadAbandoned { slot, reason } => error!(
                cluster_init.worker.slot = slot,
                cluster_init.exit.reason = reason.as_str(),
                "reload abandoned: the new worker failed before it was ready ({}); the old workers keep serving",
                reason.as_str()
            ),
            Report::ReloadComplete { generation } => info!(
                cluster_init.generation = generation,
                "reload complete: every worker runs generation {generation}"
            ),
            Report::Scaled {
                from,
                to,
                why,
                lives,
                detail,
            } => {
                let reason = match why {
                    ScaleWhy::Budget => "budget",
                    _ => "manual",
                };
                match detail {
                    Some(detail) => info!(
                        cluster_init.pool.from = from,
                        cluster_init.pool.to = to,
                        cluster_init.scale.reason = reason,
                        "budget changed: {detail}: scaling {from} -> {to}"
                    ),
                    None => info!(
                        cluster_init.pool.from = from,
                        cluster_init.pool.to = to,
                        cluster_init.scale.reason = reason,
                        "{}: scaling {from} -> {to}",
                        scale_why(why)
                    ),
                }
                // What happens to connections queued on a removed slot matters only now.
                match (to < from, self.migrate) {
                    (true, Some(true)) => info!(
                        "connections still queued on a removed slot's socket when its worker exits move to the other slots (net.ipv4.tcp_migrate_req=1)"
                    ),
                    (true, Some(false)) => info!(
                        "connections still queued on a removed slot's socket when its worker exits are reset (net.ipv4.tcp_migrate_req=0; 1 would move them to the other slots)"
                    ),
                    _ => {}
                }
                let links: Vec<LifeLink> = lives
                    .iter()
                    .filter_map(|p| self.lives.get(p).and_then(WorkerLife::link))
                    .collect();
                self.telemetry.scale(from, to, reason, links);
            }
            Report::ScaleRefused { why, reason } => {
                warn!("{}: not scaling: {reason}", scale_why(why))
            }
            Report::PoolReady { ready, of } => info!(
                cluster_init.pool.ready = ready,
                cluster_init.pool.workers = of,
                "pool ready: {ready} of {of} workers"
            ),
            Report::PoolNotReady { ready, of } => warn!(
                cluster_init.pool.ready = ready,
                cluster_init.pool.workers = of,
                "pool not ready: {ready} of {of} workers"
            ),
            Report::StopBegun { cause } => {
                let why = stop_cause(cause);
                match cause {
                    StopCause::Signal(_) | StopCause::Command => {
                        info!("{why}: stopping gracefully (a second TERM or INT stops now)")
                    }
                    _ => info!("{why}: stopping"),
                }
                self.telemetry.shutdown_begin(&why);
            }
            Report::StoppingNow { signal } => {
                info!("{}: stopping now (SIGKILL)", signal_name(signal))
            }
            Report::StopTimeout { groups } => warn!(
                "stop timeout ({:?}) passed: SIGKILL to {groups} worker group(s)",
                self.stop_timeout
            ),
            Report::GroupDraining { slot, pgid } => debug!(
                cluster_init.worker.slot = slot,
                process.pid = pgid,
                "the worker's process group outlived it: the stop signal to what remains, SIGKILL after the stop timeout"
            ),
            Report::GroupKilled { slot, pgid } => warn!(
                cluster_init.worker.slot = slot,
                process.pid = pgid,
                "stop timeout passed: SIGKILL to what remains of the worker's process group"
            ),
            Report::Stalled {
                slot,
                pid,
                queued,
                after,
            } => self.in_life(pid, || {
                warn!(
                    cluster_init.worker.slot = slot,
                    process.pid = pid,
                    cluster_init.listen.queue = queued,
                    cluster_init.exit.reason = ExitReason::Stalled.as_str(),
                    "accept queue stalled: {queued} connection(s) waiting, none accepted for {:.1}s; replacing the worker",
                    after.as_secs_f64()
                )
            }),
            Report::Parked { slot, delay } => info!(
                cluster_init.worker.slot = slot,
                cluster_init.restart.delay_ms = delay.as_millis() as u64,
                "slot {slot} stays down for {}ms: its socket is closed so that the kernel moves its queued connections to the live slots (net.ipv4.tcp_migrate_req=1)",
                delay.as_millis()
            ),
            Report::GivingUp { after, code } => error!(
                process.exit.code = code,
                "every worker has been crash-looping for {after:?}: giving up (exit {code}) so the orchestrator's backoff takes over"
            ),
            Report::Forwarded { signal, pids } => {
                let name = signal_name(signal);
                for pid in pids {
                    if let Some(life) = self.lives.get(&pid) {
                        self.telemetry.worker_signal(life, &name);
                    }
                    debug!(process.pid = pid, "forwarding {name}");
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn exited(
        &mut self,
        slot: u32,
        pid: i32,
        generation: u64,
        exit: Exit,
        reason: ExitReason,
        lived: Duration,
        then: Then,
        restarts: u64,
        now: Instant,
    ) {
        let (code, signal) = match exit {
            Exit::Code(c) => (Some(c), None),
            Exit::Signal(n) => (None, Some(signal_name(n))),
        };
        let level = match (reason, then) {
            (ExitReason::Oom, _) => Level::WARN,
            (r, Then::End(RestartPolicy::Never)) if !exit.success() && r != ExitReason::Stopped => {
                Level::WARN
            }
            (r, Then::Restart { .. } | Then::Replaced | Then::Kept) if r.is_failure() => {
                Level::WARN
            }
            (_, Then::Gone) => Level::INFO,
            _ => Level::INFO,
        };
        let delay = restart_delay_ms(then);
        let next = match then {
            Then::Restart { delay } => format!("restart #{restarts} in {}ms", delay.as_millis()),
            Then::Replaced => "its successor holds the slot".to_string(),
            Then::Kept => "the worker it was to replace keeps the slot".to_string(),
            Then::End(policy) => format!("not restarted ({})", policy.as_str()),
            Then::Gone => "not restarted".to_string(),
        };
        let oom = reason == ExitReason::Oom;
        let summary = format!(
            "{exit} after {:.2}s{}; {next}",
            lived.as_secs_f64(),
            if oom {
                ", killed by the kernel's OOM killer"
            } else {
                ""
            }
        );
        self.in_life(pid, || {
            log_at!(
                level,
                cluster_init.worker.slot = slot,
                process.pid = pid,
                cluster_init.worker.generation = generation,
                cluster_init.exit.reason = reason.as_str(),
                process.exit.code = code,
                cluster_init.exit.signal = signal.as_deref(),
                error.type = reason.is_failure().then_some(reason.as_str()),
                cluster_init.worker.lived_ms = lived.as_millis() as u64,
                cluster_init.restart.delay_ms = delay,
                cluster_init.exit = summary.as_str(),
                "worker exited"
            )
        });
        if let Some(life) = self.lives.remove(&pid) {
            self.telemetry
                .worker_exited(life, code, signal.as_deref(), reason);
        }
        if let (Then::Restart { delay }, true) = (then, reason.is_failure()) {
            let link = self.links.get(&slot).cloned();
            self.telemetry.backoff(slot, link.as_ref(), delay);
        }
        let _ = now;
    }
}

fn restart_delay_ms(then: Then) -> Option<u64> {
    match then {
        Then::Restart { delay } => Some(delay.as_millis() as u64),
        _ => None,
    }
}

fn scale_why(why: ScaleWhy) -> String {
    match why {
        ScaleWhy::Signal(n) => signal_name(n),
        ScaleWhy::Command => "ctl scale".to_string(),
        ScaleWhy::Budget => "budget".to_string(),
    }
}

fn stop_cause(cause: StopCause) -> String {
    match cause {
        StopCause::Signal(n) => signal_name(n),
        StopCause::Command => "ctl stop".to_string(),
        StopCause::GiveUp => "crash loop".to_string(),
        StopCause::CannotRun => "exec failed".to_string(),
        StopCause::AllEnded => "every worker ended".to_string(),
    }
}

/// `No such file or directory`, from an errno.
pub fn errno_text(errno: i32) -> String {
    nix::errno::Errno::from_raw(errno).desc().to_string()
}
