//! The pool: its slots, their states, the restart policy, and the one event loop that owns them.
//!
//! Everything that changes state happens here, one event at a time: a child exited, a signal
//! arrived, a timer fired. Other modules *do* (spawn a process, forward a signal); this module
//! *decides*. No locks, no shared mutable state: the loop runs on a current-thread runtime.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use tokio::time::sleep_until;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::cli::{signal_name, RestartPolicy};
use crate::config::Config;
use crate::signals::{meaning, Meaning, Signals};
use crate::spawn::{self, EnvBlock};
use crate::status::Exit;

/// During a stop, how often we look whether a worker's process group has emptied (its leader's
/// orphans are not our children when they die, so no SIGCHLD tells us).
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// After the final SIGKILL, how long we wait for the kernel before exiting regardless
/// (a process stuck in uninterruptible sleep must not keep the container alive forever).
const KILL_GRACE: Duration = Duration::from_secs(5);

/// One running worker process, leader of its own process group.
#[derive(Debug)]
struct Worker {
    pid: i32,
    started: Instant,
    /// We sent SIGKILL: its death is ours, reported as 137.
    killed: bool,
}

#[derive(Debug)]
enum SlotState {
    Up(Worker),
    /// Waiting to restart after a crash.
    BackingOff {
        until: Instant,
    },
    /// The leader was reaped during a stop, but others of its process group still run.
    Draining {
        pgid: i32,
    },
    /// Nothing runs here and nothing will (restart policy, or the pool is stopping).
    Ended,
}

#[derive(Debug)]
struct Slot {
    id: u32,
    generation: u64,
    restarts: u64,
    backoff: Backoff,
    /// Start of the current run of short lives; None after a healthy one.
    failing_since: Option<Instant>,
    state: SlotState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping {
        deadline: Instant,
        /// The SIGKILL has gone out (timeout, second TERM, or QUIT).
        killed: bool,
    },
}

pub struct Supervisor {
    cfg: Config,
    env: Vec<(OsString, OsString)>,
    slots: Vec<Slot>,
    phase: Phase,
    generation: u64,
    /// The first failure among exits that decide our status (during a stop, or under `never`).
    first_failure: Option<i32>,
    /// The most recent failure of a restarted worker: the status we give up with.
    last_failure: Option<i32>,
    /// A status decided by the init itself (give-up, command cannot run), which wins.
    forced: Option<i32>,
    hard_deadline: Option<Instant>,
}

/// Runs the pool to completion on a current-thread runtime and returns our exit status.
pub fn run(cfg: Config) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cluster-init: cannot start the event loop: {e}");
            return 1;
        }
    };
    rt.block_on(Supervisor::new(cfg).run())
}

impl Supervisor {
    pub fn new(cfg: Config) -> Supervisor {
        let seed = std::process::id() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
        let slots = (0..cfg.workers)
            .map(|id| Slot {
                id,
                generation: 1,
                restarts: 0,
                backoff: Backoff::new(cfg.backoff, seed.rotate_left(id * 7) ^ id as u64),
                failing_since: None,
                state: SlotState::Ended,
            })
            .collect();
        Supervisor {
            env: spawn::inherited_env(),
            cfg,
            slots,
            phase: Phase::Running,
            generation: 1,
            first_failure: None,
            last_failure: None,
            forced: None,
            hard_deadline: None,
        }
    }

    async fn run(mut self) -> i32 {
        // Handlers first, so no SIGCHLD and no early SIGTERM is missed.
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cluster-init: cannot install signal handlers: {e}");
                return 1;
            }
        };
        become_reaper(self.cfg.subreaper);
        info!(
            workers = self.cfg.workers,
            command = %self.cfg.program.display,
            restart = self.cfg.restart.as_str(),
            "{}",
            self.cfg.sizing
        );
        for i in 0..self.slots.len() {
            if self.phase != Phase::Running {
                break;
            }
            self.start(i);
        }
        loop {
            self.reap();
            if let Some(code) = self.finished() {
                info!(exit = code, "cluster-init exiting");
                return code;
            }
            let deadline = self.next_deadline();
            tokio::select! {
                batch = signals.next_batch() => match batch {
                    Ok(batch) => batch.into_iter().for_each(|sig| self.on_signal(sig)),
                    Err(e) => {
                        error!("signal delivery failed: {e}");
                        self.begin_stop(true);
                    }
                },
                _ = sleep_until_opt(deadline) => self.on_timer(Instant::now()),
            }
        }
    }

    fn start(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.generation = self.generation;
        let extra = vec![
            ("CLUSTER_WORKER_ID".to_string(), slot.id.to_string()),
            (
                "CLUSTER_WORKER_COUNT".to_string(),
                self.cfg.workers.to_string(),
            ),
            (
                "CLUSTER_GENERATION".to_string(),
                self.generation.to_string(),
            ),
        ];
        let env = EnvBlock::new(&self.env, &extra, false);
        match spawn::spawn(&self.cfg.program, env, &[]) {
            Ok(pid) => {
                debug!(
                    cluster_init.worker.slot = slot.id,
                    process.pid = pid,
                    cluster_init.worker.generation = slot.generation,
                    "worker started"
                );
                slot.state = SlotState::Up(Worker {
                    pid,
                    started: Instant::now(),
                    killed: false,
                });
            }
            Err(e) => {
                // A program that cannot run will not run on the next try either: report it once
                // and stop, instead of crash-looping an error the user must fix.
                eprintln!("cluster-init: {}", e.message);
                slot.state = SlotState::Ended;
                self.forced.get_or_insert(e.code);
                self.begin_stop(false);
            }
        }
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: plain syscall; `status` is a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return; // 0: children remain but none has exited; -1: ECHILD
            }
            self.on_exit(pid, Exit::from_wait_status(status));
        }
    }

    fn on_exit(&mut self, pid: i32, exit: Exit) {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| matches!(&s.state, SlotState::Up(w) if w.pid == pid))
        else {
            debug!(process.pid = pid, "reaped {exit} of an orphan");
            return;
        };
        let SlotState::Up(worker) = std::mem::replace(&mut self.slots[i].state, SlotState::Ended)
        else {
            unreachable!("matched Up above")
        };
        let lived = worker.started.elapsed();
        let slot_id = self.slots[i].id;
        match self.phase {
            Phase::Stopping { .. } => {
                let ok = exit.success() || exit == Exit::Signal(self.cfg.stop_signal.0);
                let code = if worker.killed { 137 } else { exit.as_code() };
                info!(
                    cluster_init.worker.slot = slot_id,
                    process.pid = pid,
                    "worker stopped: {exit}"
                );
                if !ok || worker.killed {
                    self.first_failure.get_or_insert(code);
                }
                if group_alive(pid) {
                    self.slots[i].state = SlotState::Draining { pgid: pid };
                }
            }
            Phase::Running => self.after_exit(i, pid, exit, lived),
        }
    }

    /// Applies the restart policy to a worker that exited while the pool runs.
    fn after_exit(&mut self, i: usize, pid: i32, exit: Exit, lived: Duration) {
        let restart = match self.cfg.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.success(),
            RestartPolicy::Never => false,
        };
        let slot = &mut self.slots[i];
        if !restart {
            info!(
                cluster_init.worker.slot = slot.id,
                process.pid = pid,
                "worker ended: {exit}; not restarted ({})",
                self.cfg.restart.as_str()
            );
            if !exit.success() {
                self.first_failure.get_or_insert(exit.as_code());
            }
            return;
        }
        if !exit.success() {
            self.last_failure = Some(exit.as_code());
        }
        let now = Instant::now();
        if lived >= self.cfg.backoff.reset_after {
            slot.failing_since = None;
        }
        slot.failing_since.get_or_insert(now);
        let delay = slot.backoff.after_exit(lived);
        slot.restarts += 1;
        slot.state = SlotState::BackingOff { until: now + delay };
        let message = format!(
            "worker exited: {exit} after {:.2}s; restart #{} in {}ms",
            lived.as_secs_f64(),
            slot.restarts,
            delay.as_millis()
        );
        if exit.success() {
            info!(
                cluster_init.worker.slot = slot.id,
                process.pid = pid,
                "{message}"
            );
        } else {
            warn!(
                cluster_init.worker.slot = slot.id,
                process.pid = pid,
                "{message}"
            );
        }
    }

    fn on_signal(&mut self, sig: i32) {
        match meaning(sig) {
            Meaning::Child => self.reap(),
            Meaning::GracefulStop => match self.phase {
                Phase::Running => {
                    info!(
                        "{}: stopping gracefully (a second one stops now)",
                        signal_name(sig)
                    );
                    self.begin_stop(false);
                }
                Phase::Stopping { killed: false, .. } => {
                    info!("{} again: stopping now", signal_name(sig));
                    self.kill_all();
                }
                Phase::Stopping { .. } => {}
            },
            Meaning::FastStop => {
                info!("{}: stopping now", signal_name(sig));
                self.begin_stop(true);
            }
            // Reload and scaling are not built yet: HUP keeps its usual meaning for servers.
            Meaning::Reload => self.forward(sig),
            Meaning::ScaleUp | Meaning::ScaleDown => {
                warn!(
                    "{} ignored: runtime scaling is not supported yet",
                    signal_name(sig)
                )
            }
            Meaning::Forward => self.forward(sig),
        }
    }

    fn forward(&self, sig: i32) {
        for slot in &self.slots {
            if let Some(pgid) = slot.pgid() {
                debug!(
                    cluster_init.worker.slot = slot.id,
                    "forwarding {}",
                    signal_name(sig)
                );
                signal_group(pgid, sig);
            }
        }
    }

    /// Starts the stop: the stop signal to every worker's process group now, SIGKILL at the
    /// deadline (or now, when `now` is set).
    fn begin_stop(&mut self, now: bool) {
        if self.phase == Phase::Running {
            let deadline = Instant::now() + self.cfg.stop_timeout;
            self.phase = Phase::Stopping {
                deadline,
                killed: false,
            };
            let sig = self.cfg.stop_signal.0;
            for slot in &mut self.slots {
                match slot.state {
                    SlotState::BackingOff { .. } => slot.state = SlotState::Ended,
                    SlotState::Up(ref w) if !now => signal_group(w.pid, sig),
                    _ => {}
                }
            }
        }
        if now {
            self.kill_all();
        }
    }

    fn kill_all(&mut self) {
        if let Phase::Stopping { ref mut killed, .. } = self.phase {
            *killed = true;
        }
        self.hard_deadline = Some(Instant::now() + KILL_GRACE);
        for slot in &mut self.slots {
            match slot.state {
                SlotState::Up(ref mut w) => {
                    w.killed = true;
                    signal_group(w.pid, libc::SIGKILL);
                }
                SlotState::Draining { pgid } => {
                    signal_group(pgid, libc::SIGKILL);
                    self.first_failure.get_or_insert(137);
                }
                _ => {}
            }
        }
    }

    fn on_timer(&mut self, now: Instant) {
        if let Phase::Stopping { deadline, killed } = self.phase {
            if !killed && now >= deadline {
                let left = self.slots.iter().filter(|s| s.pgid().is_some()).count();
                warn!(
                    "stop timeout ({:?}) passed: SIGKILL to {left} worker group(s)",
                    self.cfg.stop_timeout
                );
                self.kill_all();
            }
            for slot in &mut self.slots {
                if let SlotState::Draining { pgid } = slot.state {
                    if !group_alive(pgid) {
                        slot.state = SlotState::Ended;
                    }
                }
            }
            return;
        }
        for i in 0..self.slots.len() {
            if matches!(self.slots[i].state, SlotState::BackingOff { until } if until <= now) {
                self.start(i);
            }
        }
        if self.give_up_at().is_some_and(|at| at <= now) {
            let code = self.last_failure.unwrap_or(1).max(1);
            error!(
                "every worker has been crash-looping for {:?}: giving up (exit {code}) so the orchestrator's backoff takes over",
                self.cfg.give_up_after.unwrap_or_default()
            );
            self.forced.get_or_insert(code);
            self.begin_stop(false);
        }
    }

    /// When every slot has been failing for `give_up_after`, the instant that happens.
    fn give_up_at(&self) -> Option<Instant> {
        let limit = self.cfg.give_up_after?;
        let mut latest: Option<Instant> = None;
        for slot in &self.slots {
            let healthy_now = matches!(&slot.state, SlotState::Up(w) if w.started.elapsed() >= self.cfg.backoff.reset_after);
            match (&slot.state, slot.failing_since) {
                (SlotState::Ended, _) => continue,
                (_, Some(since)) if !healthy_now => {
                    latest = Some(latest.map_or(since, |l| l.max(since)));
                }
                _ => return None,
            }
        }
        latest.map(|since| since + limit)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = self.hard_deadline;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        match self.phase {
            Phase::Stopping { deadline, killed } => {
                if !killed {
                    consider(deadline);
                }
                if self
                    .slots
                    .iter()
                    .any(|s| matches!(s.state, SlotState::Draining { .. }))
                {
                    consider(Instant::now() + DRAIN_POLL);
                }
            }
            Phase::Running => {
                for slot in &self.slots {
                    if let SlotState::BackingOff { until } = slot.state {
                        consider(until);
                    }
                }
                if let Some(at) = self.give_up_at() {
                    consider(at);
                }
            }
        }
        next
    }

    /// Our exit status once nothing is left to supervise.
    fn finished(&self) -> Option<i32> {
        let past_hard = self.hard_deadline.is_some_and(|d| Instant::now() >= d);
        let all_ended = self
            .slots
            .iter()
            .all(|s| matches!(s.state, SlotState::Ended));
        if !(all_ended || past_hard) {
            return None;
        }
        if past_hard && !all_ended {
            warn!("some processes did not die after SIGKILL; exiting anyway");
        }
        Some(self.forced.or(self.first_failure).unwrap_or(0))
    }
}

impl Slot {
    /// The process group to signal, if anything of this slot runs.
    fn pgid(&self) -> Option<i32> {
        match self.state {
            SlotState::Up(ref w) => Some(w.pid),
            SlotState::Draining { pgid } => Some(pgid),
            _ => None,
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: plain syscall. ESRCH (the group is already gone) is expected and harmless.
    unsafe { libc::kill(-pgid, sig) };
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

/// As PID 1 we already adopt every orphan; elsewhere (docker run without --init, systemd, tests)
/// we ask the kernel for the same, so the pool's orphans are still ours to reap.
fn become_reaper(subreaper: bool) {
    let pid = std::process::id();
    if pid == 1 {
        return;
    }
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    let pid1 = pid1.trim();
    if !subreaper {
        info!("not PID 1 (pid {pid}; PID 1 is '{pid1}') and --no-subreaper: orphans go to PID 1");
        return;
    }
    // SAFETY: plain prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r == 0 {
        info!("not PID 1 (pid {pid}; PID 1 is '{pid1}'): registered as child subreaper");
    } else {
        warn!("not PID 1 and cannot become a child subreaper: orphans will not be reaped by us");
    }
}
