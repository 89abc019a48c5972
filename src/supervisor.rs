//! The pool: its slots and workers, the restart policy, rolling replacement, scaling, and the
//! one event loop that owns them.
//!
//! Everything that changes state happens here, one event at a time: a child exited, a signal
//! arrived, a timer fired, a worker sent a notify message, the admin endpoint asked for a pong.
//! Other modules *do* (spawn a process, bind a socket, serve HTTP, export spans); this module
//! *decides*. No locks, no shared mutable state: the loop runs on a current-thread runtime, and
//! the admin endpoint reads snapshots the loop publishes.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::sleep_until;
use tracing::{debug, error, info, warn};

use crate::admin::{Admin, PoolStatus, WorkerStatus};
use crate::backoff::Backoff;
use crate::cli::{signal_name, HupAction, ReadyMode, RestartPolicy};
use crate::config::Config;
use crate::memory;
use crate::notify::{self, Notice, NotifyServer};
use crate::signals::{meaning, Meaning, Signals};
use crate::spawn::{self, EnvBlock};
use crate::status::Exit;
use crate::telemetry::{Telemetry, WorkerLife};
use crate::worker::{Slot, SlotState, StopReason, Worker, WorkerState};

/// During a stop, how often we look whether a worker's process group has emptied (its leader's
/// orphans are not our children when they die, so no SIGCHLD tells us).
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// After the final SIGKILL, how long we wait for the kernel before exiting regardless
/// (a process stuck in uninterruptible sleep must not keep the container alive forever).
const KILL_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping {
        deadline: Instant,
        /// The SIGKILL has gone out (timeout, second TERM, or QUIT).
        killed: bool,
    },
}

/// A replacement in progress: a successor starts on the slot's sockets, takes over when ready,
/// and the old worker is stopped; the next slot waits until the old one's group is gone.
#[derive(Debug, Default)]
struct Replacements {
    queue: VecDeque<(u32, StopReason)>,
    current: Option<Replacing>,
}

#[derive(Clone, Copy, Debug)]
struct Replacing {
    slot: u32,
    /// The worker being replaced. It is only marked (with `reason`) once its successor is
    /// ready: if the successor fails, the old worker is an ordinary worker again.
    old: i32,
    reason: StopReason,
}

/// A process group whose leader is gone while other members still run: it gets the rest of
/// the stop timeout, then SIGKILL.
#[derive(Clone, Copy, Debug)]
struct Draining {
    pgid: i32,
    kill_at: Instant,
    killed: bool,
}

pub struct Supervisor {
    cfg: Config,
    env: Vec<(OsString, OsString)>,
    slots: Vec<Slot>,
    workers: Vec<Worker>,
    /// Groups of workers we stopped whose leader was reaped while members still run.
    draining: Vec<Draining>,
    phase: Phase,
    generation: u64,
    replacements: Replacements,
    /// The first failure among exits that decide our status (during a stop, or under `never`).
    first_failure: Option<i32>,
    /// The most recent failure of a restarted worker: the status we give up with.
    last_failure: Option<i32>,
    /// A status decided by the init itself (give-up, command cannot run), which wins.
    forced: Option<i32>,
    hard_deadline: Option<Instant>,
    telemetry: Telemetry,
    notify_path: Option<PathBuf>,
    pool_ready: bool,
    status_tx: watch::Sender<PoolStatus>,
    next_memory_check: Option<Instant>,
    oom_file: Option<PathBuf>,
    oom_kills: Option<u64>,
    restarts_total: u64,
    exits: BTreeMap<&'static str, u64>,
    start_wall: SystemTime,
}

/// Runs the pool to completion on a current-thread runtime and returns our exit status.
pub fn run(cfg: Config, telemetry: Telemetry) -> i32 {
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
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let (status_tx, status_rx) = watch::channel(PoolStatus {
            ready: false,
            generation: 1,
            desired: cfg.workers,
            cpu_budget: cfg.cpu.budget,
            start_time: SystemTime::now(),
            restarts_total: 0,
            exits: BTreeMap::new(),
            workers: Vec::new(),
        });
        let (ping_tx, ping_rx) = mpsc::channel(16);
        // Bound before anything starts, so that a taken port is a usage error (exit 2).
        if let Some(addr) = cfg.admin_listen.as_deref() {
            match Admin::bind(addr, status_rx, ping_tx) {
                Ok(admin) => {
                    info!("admin endpoint on http://{}", admin.local_addr());
                    admin.spawn();
                }
                Err(e) => {
                    eprintln!("cluster-init: --admin-listen: {e}");
                    return 2;
                }
            }
        }
        let notify = if cfg.ready == ReadyMode::Notify || cfg.watchdog.is_some() {
            match notify_socket_path().and_then(|p| NotifyServer::bind(&p)) {
                Ok(n) => Some(n),
                Err(e) => {
                    eprintln!("cluster-init: cannot create the notify socket: {e}");
                    return 1;
                }
            }
        } else {
            None
        };
        let notify_path = notify.as_ref().map(|n| n.path().to_path_buf());
        let sup = Supervisor::new(cfg, telemetry, status_tx, notify_path.clone());
        let code = sup.run(notify, ping_rx).await;
        // The server (dropped by now) removed its socket; the directory is ours.
        if let Some(dir) = notify_path.as_deref().and_then(Path::parent) {
            let _ = std::fs::remove_dir(dir);
        }
        code
    })
}

/// A directory of this init's own for the notify socket (per pid: two inits on one host, or
/// nested ones, must not take each other's socket): /run when writable, the temp dir otherwise
/// (a read-only root filesystem in Kubernetes usually has an emptyDir on /tmp).
fn notify_socket_path() -> Result<PathBuf, String> {
    let name = format!("cluster-init-{}", std::process::id());
    let mut last = String::new();
    for base in [PathBuf::from("/run"), std::env::temp_dir()] {
        let dir = base.join(&name);
        match std::fs::create_dir_all(&dir) {
            Ok(()) => return Ok(dir.join("notify.sock")),
            Err(e) => last = format!("{}: {e}", dir.display()),
        }
    }
    Err(last)
}

impl Supervisor {
    fn new(
        cfg: Config,
        telemetry: Telemetry,
        status_tx: watch::Sender<PoolStatus>,
        notify_path: Option<PathBuf>,
    ) -> Supervisor {
        let seed = std::process::id() as u64
            ^ SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
        let slots = (0..cfg.workers)
            .map(|id| new_slot(&cfg, id, seed))
            .collect();
        let oom_file = memory::oom_counter_file(Path::new("/"));
        let oom_kills = oom_file.as_deref().and_then(memory::oom_kills);
        Supervisor {
            env: spawn::inherited_env(),
            next_memory_check: cfg
                .max_worker_memory
                .map(|_| Instant::now() + cfg.memory_check_interval),
            cfg,
            slots,
            workers: Vec::new(),
            draining: Vec::new(),
            phase: Phase::Running,
            generation: 1,
            replacements: Replacements::default(),
            first_failure: None,
            last_failure: None,
            forced: None,
            hard_deadline: None,
            telemetry,
            notify_path,
            pool_ready: false,
            status_tx,
            oom_file,
            oom_kills,
            restarts_total: 0,
            exits: BTreeMap::new(),
            start_wall: SystemTime::now(),
        }
    }

    async fn run(
        mut self,
        notify: Option<NotifyServer>,
        mut ping_rx: mpsc::Receiver<oneshot::Sender<()>>,
    ) -> i32 {
        // Handlers first, so no SIGCHLD and no early SIGTERM is missed.
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cluster-init: cannot install signal handlers: {e}");
                return 1;
            }
        };
        become_reaper(self.cfg.subreaper);
        self.log_start();
        self.telemetry.start(self.cfg.workers, &self.cfg.sizing);
        for i in 0..self.slots.len() {
            if self.phase != Phase::Running {
                break;
            }
            self.start(i as u32, None);
        }
        let lives: Vec<_> = self.workers.iter().map(|w| &w.life).collect();
        self.telemetry.started(&lives);
        loop {
            self.reap();
            self.advance_replacements();
            self.publish();
            if let Some(code) = self.finished() {
                info!(exit = code, "cluster-init exiting");
                self.telemetry.shutdown();
                return code;
            }
            let deadline = self.next_deadline();
            tokio::select! {
                batch = signals.next_batch() => match batch {
                    Ok(batch) => batch.into_iter().for_each(|sig| self.on_signal(sig)),
                    Err(e) => {
                        error!("signal delivery failed: {e}");
                        self.begin_stop(true, "signal delivery failed");
                    }
                },
                msg = recv_notify(notify.as_ref()) => match msg {
                    Ok((pid, notices)) => self.on_notify(pid, notices),
                    Err(e) => debug!("notify socket: {e}"),
                },
                Some(pong) = ping_rx.recv() => {
                    let _ = pong.send(());
                }
                _ = sleep_until_opt(deadline) => self.on_timer(Instant::now()),
            }
        }
    }

    fn log_start(&self) {
        info!(command = %self.cfg.program.display, restart = self.cfg.restart.as_str(), "{}", self.cfg.sizing);
        for line in self.cfg.listeners.describe() {
            info!("listening on {line}");
        }
        if !self.cfg.listeners.is_empty()
            && self.cfg.listeners.balance() == crate::listen::Balance::ReusePort
        {
            match crate::listen::tcp_migrate_req() {
                Some(true) => info!("net.ipv4.tcp_migrate_req=1: a removed slot's queued connections move to the others"),
                Some(false) => info!("net.ipv4.tcp_migrate_req=0: removing a slot (scale-down) resets its queued connections"),
                None => {}
            }
        }
        if let Some(f) = memory::oom_group_enabled(Path::new("/")) {
            warn!(
                "{} is 1: one OOM kill stops the whole container, not just one worker",
                f.display()
            );
        }
    }

    /// Starts a worker on slot `id`. With `replaces`, as a successor of that pid.
    fn start(&mut self, id: u32, replaces: Option<i32>) {
        let count = self.slots.len();
        let mut extra = vec![
            ("CLUSTER_WORKER_ID".to_string(), id.to_string()),
            ("CLUSTER_WORKER_COUNT".to_string(), count.to_string()),
            (
                "CLUSTER_GENERATION".to_string(),
                self.generation.to_string(),
            ),
        ];
        let fds = self.cfg.listeners.fds_for_slot(id as usize);
        if !fds.is_empty() {
            extra.push(("LISTEN_FDS".into(), fds.len().to_string()));
            extra.push(("LISTEN_FDNAMES".into(), self.cfg.listeners.fd_names()));
        }
        if let Some(p) = &self.notify_path {
            extra.push(("NOTIFY_SOCKET".into(), p.display().to_string()));
        }
        if let Some(w) = self.cfg.watchdog {
            extra.push(("WATCHDOG_USEC".into(), w.as_micros().to_string()));
        }
        for (k, v) in &self.cfg.cpu_env {
            extra.push((k.to_string(), v.clone()));
        }
        // The life's span is opened before the fork so that TRACEPARENT can point at it; the
        // pid is filled in once known.
        let slot = &self.slots[id as usize];
        let args = if self.cfg.trace_command_args {
            self.cfg.program.args()
        } else {
            Vec::new()
        };
        let mut life = self.telemetry.worker_spawned(
            id,
            self.generation,
            0,
            &self.cfg.program.exe_name,
            &args,
            slot.previous.as_ref(),
        );
        if let Some(tp) = Telemetry::traceparent(&life) {
            extra.push(("TRACEPARENT".into(), tp));
        }
        let env = EnvBlock::new(&self.env, &extra, !fds.is_empty());
        match spawn::spawn(&self.cfg.program, env, &fds) {
            Ok(pid) => {
                let now = Instant::now();
                let state = match self.cfg.ready {
                    ReadyMode::Started => WorkerState::Ready,
                    ReadyMode::After(d) => WorkerState::Starting {
                        ready_at: Some(now + d),
                        fail_at: now + self.cfg.ready_timeout.max(d),
                    },
                    ReadyMode::Notify => WorkerState::Starting {
                        ready_at: None,
                        fail_at: now + self.cfg.ready_timeout,
                    },
                };
                self.telemetry
                    .worker_exec_ok(&mut life, pid, state != WorkerState::Ready);
                debug!(
                    cluster_init.worker.slot = id,
                    process.pid = pid,
                    cluster_init.worker.generation = self.generation,
                    "worker started"
                );
                let slot = &mut self.slots[id as usize];
                slot.previous = life.link();
                if replaces.is_none() {
                    slot.state = SlotState::Active;
                }
                self.workers.push(Worker {
                    pid,
                    slot: id,
                    generation: self.generation,
                    started: now,
                    started_wall: SystemTime::now(),
                    state,
                    replaces,
                    stop_reason: None,
                    watchdog_at: self.cfg.watchdog.map(|w| now + w),
                    status_text: None,
                    life,
                });
                if state == WorkerState::Ready {
                    self.on_ready(pid);
                }
            }
            Err(e) => {
                self.telemetry.worker_exec_failed(life, e.code, &e.message);
                *self.exits.entry("exec_failed").or_default() += 1;
                if e.transient && replaces.is_none() {
                    // Out of pids, memory or descriptors: a failed start, tried again later.
                    warn!(
                        cluster_init.worker.slot = id,
                        "{}; a failed start", e.message
                    );
                    self.after_exit(id, 0, Exit::Code(e.code), Duration::ZERO);
                    return;
                }
                if replaces.is_some() {
                    // The program changed under a running pool: keep the workers we have.
                    error!(
                        cluster_init.worker.slot = id,
                        "reload abandoned: cannot run {}: {}", self.cfg.program.display, e.message
                    );
                    self.replacements = Replacements::default();
                    return;
                }
                // A program that cannot run will not run on the next try either: report it once
                // and stop, instead of crash-looping an error the user must fix.
                eprintln!("cluster-init: {}", e.message);
                self.slots[id as usize].state = SlotState::Ended;
                self.forced.get_or_insert(e.code);
                self.begin_stop(false, "the command cannot run");
            }
        }
    }

    fn worker_index(&self, pid: i32) -> Option<usize> {
        self.workers.iter().position(|w| w.pid == pid)
    }

    fn on_ready(&mut self, pid: i32) {
        let Some(i) = self.worker_index(pid) else {
            return;
        };
        let w = &mut self.workers[i];
        if matches!(w.state, WorkerState::Starting { .. }) {
            w.state = WorkerState::Ready;
        }
        if w.state != WorkerState::Ready {
            return;
        }
        self.telemetry.worker_ready(&mut self.workers[i].life);
        let w = &mut self.workers[i];
        info!(
            cluster_init.worker.slot = w.slot,
            process.pid = w.pid,
            cluster_init.worker.generation = w.generation,
            "worker ready"
        );
        // A successor that is ready takes over; its predecessor leaves.
        if let Some(old) = w.replaces.take() {
            let reason = self
                .replacements
                .current
                .filter(|r| r.old == old)
                .map_or(StopReason::Retired, |r| r.reason);
            if let Some(j) = self.worker_index(old) {
                self.stop_worker(j, reason);
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
        let Some(i) = self.worker_index(pid) else {
            debug!(process.pid = pid, "reaped {exit} of an orphan");
            return;
        };
        let w = self.workers.swap_remove(i);
        let killed = w.state == WorkerState::Killed;
        let oom = exit == Exit::Signal(libc::SIGKILL) && !killed && self.oom_killed();
        let reason = match (w.stop_reason, exit) {
            (_, _) if oom => "oom",
            (_, _) if killed => "killed_after_timeout",
            (Some(StopReason::MemoryCap), _) => "memory_cap",
            (Some(StopReason::Watchdog), _) => "watchdog",
            (Some(StopReason::ReadyTimeout), _) => "ready_timeout",
            (_, Exit::Code(0)) => "exit_zero",
            (_, Exit::Code(_)) => "exit_nonzero",
            (_, Exit::Signal(_)) => "signal",
        };
        *self.exits.entry(reason).or_default() += 1;
        let signal = match exit {
            Exit::Signal(n) => Some(signal_name(n)),
            Exit::Code(_) => None,
        };
        let code = match exit {
            Exit::Code(c) => Some(c),
            Exit::Signal(_) => None,
        };
        if oom {
            w.warn(format_args!("worker was killed by the kernel's OOM killer"));
        }
        self.telemetry
            .worker_exited(w.life, code, signal.as_deref(), killed);
        if let Some(slot) = self.slots.get_mut(w.slot as usize) {
            slot.last_exit = Some(exit.to_string());
        }
        let lived = w.started.elapsed();

        if let Phase::Stopping { .. } = self.phase {
            let ok = exit.success() || exit == Exit::Signal(self.cfg.stop_signal.0);
            info!(
                cluster_init.worker.slot = w.slot,
                process.pid = pid,
                "worker stopped: {exit}"
            );
            if !ok || killed {
                self.first_failure
                    .get_or_insert(if killed { 137 } else { exit.as_code() });
            }
            self.drain_if_alive(pid, w.state);
            return;
        }
        // Whatever we stopped keeps its group members for the rest of their grace time.
        if w.stop_reason.is_some() {
            self.drain_if_alive(pid, w.state);
        }
        // A successor that died before taking over: the reload of this slot failed, its
        // predecessor keeps serving.
        if w.replaces.is_some() {
            error!(cluster_init.worker.slot = w.slot, process.pid = pid, "replacement worker failed before it was ready ({exit}); keeping the old one, reload abandoned");
            self.replacements = Replacements::default();
            return;
        }
        if self.replacements.current.is_some_and(|r| r.old == pid)
            && !self.draining.iter().any(|d| d.pgid == pid)
        {
            self.replacements.current = None;
        }
        // Its successor (if a replacement was under way) takes over the slot now.
        if let Some(succ) = self.workers.iter_mut().find(|s| s.replaces == Some(pid)) {
            succ.replaces = None;
            warn!(
                cluster_init.worker.slot = w.slot,
                process.pid = pid,
                "worker exited during its replacement: {exit}"
            );
            return;
        }
        if let Some(reason) = w.stop_reason.filter(|r| !r.counts_as_crash()) {
            debug!(
                cluster_init.worker.slot = w.slot,
                process.pid = pid,
                "worker retired ({reason:?}): {exit}"
            );
            return;
        }
        if self.slots.get(w.slot as usize).is_none() {
            return; // its slot was removed by scale-down
        }
        self.after_exit(w.slot, pid, exit, lived);
    }

    fn oom_killed(&mut self) -> bool {
        let Some(now) = self.oom_file.as_deref().and_then(memory::oom_kills) else {
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

    /// Applies the restart policy to a worker that exited (or failed) while the pool runs.
    fn after_exit(&mut self, id: u32, pid: i32, exit: Exit, lived: Duration) {
        let restart = match self.cfg.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.success(),
            RestartPolicy::Never => false,
        };
        let slot = &mut self.slots[id as usize];
        if !restart {
            info!(
                cluster_init.worker.slot = id,
                process.pid = pid,
                "worker ended: {exit}; not restarted ({})",
                self.cfg.restart.as_str()
            );
            slot.state = SlotState::Ended;
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
        self.restarts_total += 1;
        slot.state = SlotState::BackingOff { until: now + delay };
        self.telemetry.backoff(id, slot.previous.as_ref(), delay);
        let message = format!(
            "worker exited: {exit} after {:.2}s; restart #{} in {}ms",
            lived.as_secs_f64(),
            slot.restarts,
            delay.as_millis()
        );
        if exit.success() {
            info!(
                cluster_init.worker.slot = id,
                process.pid = pid,
                "{message}"
            );
        } else {
            warn!(
                cluster_init.worker.slot = id,
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
                    self.begin_stop(false, &signal_name(sig));
                }
                Phase::Stopping { killed: false, .. } => {
                    info!("{} again: stopping now", signal_name(sig));
                    self.kill_all();
                }
                Phase::Stopping { .. } => {}
            },
            Meaning::FastStop => {
                info!("{}: stopping now", signal_name(sig));
                self.begin_stop(true, &signal_name(sig));
            }
            Meaning::Reload if self.cfg.hup == HupAction::Forward => self.forward(sig),
            Meaning::Reload => self.reload(),
            Meaning::ScaleUp => self.scale_up(),
            Meaning::ScaleDown => self.scale_down(),
            Meaning::Forward => self.forward(sig),
        }
    }

    fn forward(&mut self, sig: i32) {
        let name = signal_name(sig);
        for w in &self.workers {
            debug!(
                cluster_init.worker.slot = w.slot,
                process.pid = w.pid,
                "forwarding {name}"
            );
            self.telemetry.worker_signal(&w.life, &name);
            signal_group(w.pid, sig);
        }
        for d in &self.draining {
            signal_group(d.pgid, sig);
        }
    }

    /// SIGHUP: a new generation, every slot replaced in turn.
    fn reload(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        self.generation += 1;
        info!(
            cluster_init.generation = self.generation,
            "SIGHUP: rolling reload to generation {}", self.generation
        );
        let queue = &mut self.replacements.queue;
        for slot in &self.slots {
            if !queue.iter().any(|(s, _)| *s == slot.id) {
                queue.push_back((slot.id, StopReason::Retired));
            }
        }
    }

    /// Starts the next queued replacement once the previous one has finished.
    fn advance_replacements(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        while self.replacements.current.is_none() {
            let Some((id, reason)) = self.replacements.queue.pop_front() else {
                return;
            };
            let Some(old) = self.workers.iter().find(|w| w.slot == id && w.is_current()) else {
                // Backing off or ended: its next start gets the new generation anyway.
                continue;
            };
            let old_pid = old.pid;
            info!(
                cluster_init.worker.slot = id,
                process.pid = old_pid,
                "replacing worker ({reason:?})"
            );
            self.replacements.current = Some(Replacing {
                slot: id,
                old: old_pid,
                reason,
            });
            self.start(id, Some(old_pid));
        }
    }

    fn scale_up(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        let from = self.slots.len() as u32;
        if let Err(e) = self.cfg.listeners.add_slot() {
            warn!("SIGTTIN: cannot add a worker: {e}");
            return;
        }
        let seed = std::process::id() as u64 ^ from as u64;
        self.slots.push(new_slot(&self.cfg, from, seed));
        info!("SIGTTIN: scaling {from} -> {}", from + 1);
        self.start(from, None);
        let lives = lives_in(&self.workers, from);
        self.telemetry.scale(from, from + 1, &lives);
    }

    fn scale_down(&mut self) {
        if self.phase != Phase::Running || self.slots.len() <= 1 {
            warn!("SIGTTOU: the pool keeps at least 1 worker");
            return;
        }
        let from = self.slots.len() as u32;
        let id = from - 1;
        info!("SIGTTOU: scaling {from} -> {id}, stopping slot {id}");
        self.slots.pop();
        self.replacements.queue.retain(|(s, _)| *s != id);
        if self.replacements.current.is_some_and(|r| r.slot == id) {
            self.replacements.current = None;
        }
        for i in 0..self.workers.len() {
            let w = &mut self.workers[i];
            if w.slot == id {
                // Whatever it was stopping for (failed start, watchdog), it now just leaves: a
                // later SIGTTIN may reuse this slot id, and its exit must not count there.
                w.stop_reason = Some(StopReason::Retired);
                w.replaces = None;
                self.stop_worker(i, StopReason::Retired);
            }
        }
        self.cfg.listeners.remove_slot();
        let lives = lives_in(&self.workers, id);
        self.telemetry.scale(from, id, &lives);
    }

    fn on_notify(&mut self, sender: i32, notices: Vec<Notice>) {
        let Some(pid) = notify::owning_worker(Path::new("/proc"), sender, |p| {
            self.worker_index(p).is_some()
        }) else {
            debug!(
                process.pid = sender,
                "notify message from a process that is no worker of ours: dropped"
            );
            return;
        };
        for n in notices {
            match n {
                Notice::Ready => self.on_ready(pid),
                Notice::Watchdog => {
                    if let (Some(i), Some(w)) = (self.worker_index(pid), self.cfg.watchdog) {
                        self.workers[i].watchdog_at = Some(Instant::now() + w);
                    }
                }
                Notice::WatchdogTrigger => {
                    // A worker already on its way out keeps its SIGKILL deadline.
                    if let Some(i) = self
                        .worker_index(pid)
                        .filter(|&i| !self.workers[i].is_stopping())
                    {
                        self.watchdog_expired(i);
                    }
                }
                Notice::Status(text) => {
                    if let Some(i) = self.worker_index(pid) {
                        debug!(process.pid = pid, "status: {text}");
                        self.workers[i].status_text = Some(text);
                    }
                }
                other => debug!(process.pid = pid, "notify: {other:?}"),
            }
        }
    }

    fn watchdog_expired(&mut self, i: usize) {
        let w = &mut self.workers[i];
        w.warn(format_args!(
            "watchdog expired: SIGABRT, SIGKILL after {:?}",
            self.cfg.stop_timeout
        ));
        w.watchdog_at = None;
        w.stop_reason = Some(StopReason::Watchdog);
        w.state = WorkerState::Stopping {
            kill_at: Instant::now() + self.cfg.stop_timeout,
        };
        self.telemetry
            .worker_stopping(&mut w.life, "SIGABRT", self.cfg.stop_timeout);
        signal_group(w.pid, libc::SIGABRT);
    }

    /// Stops one worker gracefully: the stop signal now, SIGKILL at the stop timeout.
    fn stop_worker(&mut self, i: usize, reason: StopReason) {
        let w = &mut self.workers[i];
        if w.is_stopping() {
            return;
        }
        w.stop_reason.get_or_insert(reason);
        w.state = WorkerState::Stopping {
            kill_at: Instant::now() + self.cfg.stop_timeout,
        };
        self.telemetry.worker_stopping(
            &mut w.life,
            &self.cfg.stop_signal.name(),
            self.cfg.stop_timeout,
        );
        signal_group(w.pid, self.cfg.stop_signal.0);
    }

    /// Starts the stop of the whole pool: the stop signal to every worker's process group now,
    /// SIGKILL at the deadline (or now, when `now` is set).
    fn begin_stop(&mut self, now: bool, reason: &str) {
        if self.phase == Phase::Running {
            self.telemetry.shutdown_begin(reason);
            let deadline = Instant::now() + self.cfg.stop_timeout;
            self.phase = Phase::Stopping {
                deadline,
                killed: false,
            };
            self.replacements = Replacements::default();
            for slot in &mut self.slots {
                slot.state = SlotState::Ended;
            }
            for i in 0..self.workers.len() {
                if !now {
                    self.stop_worker(i, StopReason::Shutdown);
                }
                // Whatever it was stopped for before, it now ends with the pool.
                if let WorkerState::Stopping { ref mut kill_at } = self.workers[i].state {
                    *kill_at = (*kill_at).min(deadline);
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
        for i in 0..self.workers.len() {
            self.kill_worker(i);
        }
        for d in &mut self.draining {
            if !d.killed && group_alive(d.pgid) {
                d.killed = true;
                signal_group(d.pgid, libc::SIGKILL);
                self.first_failure.get_or_insert(137);
            }
        }
    }

    /// Keeps the process group of a reaped worker we stopped, while members remain, for the
    /// rest of the worker's grace time.
    fn drain_if_alive(&mut self, pgid: i32, state: WorkerState) {
        if !group_alive(pgid) {
            return;
        }
        let kill_at = match (self.phase, state) {
            (_, WorkerState::Stopping { kill_at }) => kill_at,
            (Phase::Stopping { deadline, .. }, _) => deadline,
            _ => Instant::now() + self.cfg.stop_timeout,
        };
        self.draining.push(Draining {
            pgid,
            kill_at,
            killed: state == WorkerState::Killed,
        });
    }

    /// Drops groups that have emptied, SIGKILLs those past their deadline.
    fn tend_draining(&mut self, now: Instant) {
        let stopping = matches!(self.phase, Phase::Stopping { .. });
        for d in &mut self.draining {
            if !d.killed && d.kill_at <= now && group_alive(d.pgid) {
                warn!(
                    process.pid = d.pgid,
                    "stop timeout passed: SIGKILL to what remains of the worker's process group"
                );
                d.killed = true;
                signal_group(d.pgid, libc::SIGKILL);
                if stopping {
                    self.first_failure.get_or_insert(137);
                }
            }
        }
        let before = self.draining.len();
        self.draining.retain(|d| group_alive(d.pgid));
        if self.draining.len() < before {
            // A replacement waits for its predecessor's whole group, one extra worker at a time.
            let gone = |old: i32| !self.draining.iter().any(|d| d.pgid == old);
            if self
                .replacements
                .current
                .is_some_and(|r| gone(r.old) && self.worker_index(r.old).is_none())
            {
                self.replacements.current = None;
            }
        }
    }

    fn kill_worker(&mut self, i: usize) {
        let w = &mut self.workers[i];
        if w.state != WorkerState::Killed {
            w.state = WorkerState::Killed;
            w.info(format_args!("SIGKILL to the worker's process group"));
            signal_group(w.pid, libc::SIGKILL);
        }
    }

    fn on_timer(&mut self, now: Instant) {
        if let Phase::Stopping { deadline, killed } = self.phase {
            if !killed && now >= deadline {
                let left = self.workers.len() + self.draining.len();
                warn!(
                    "stop timeout ({:?}) passed: SIGKILL to {left} worker group(s)",
                    self.cfg.stop_timeout
                );
                self.kill_all();
            }
            self.tend_draining(now);
            return;
        }
        self.tend_draining(now);
        for i in 0..self.workers.len() {
            match self.workers[i].state {
                WorkerState::Stopping { kill_at } if kill_at <= now => {
                    let w = &self.workers[i];
                    w.warn(format_args!("stop timeout passed"));
                    self.kill_worker(i);
                }
                WorkerState::Starting {
                    ready_at: Some(at), ..
                } if at <= now => {
                    let pid = self.workers[i].pid;
                    self.on_ready(pid);
                }
                WorkerState::Starting { fail_at, .. } if fail_at <= now => {
                    let w = &self.workers[i];
                    w.warn(format_args!(
                        "not ready after {:?}: a failed start",
                        self.cfg.ready_timeout
                    ));
                    if w.replaces.is_some() {
                        self.replacements = Replacements::default();
                    }
                    self.stop_worker(i, StopReason::ReadyTimeout);
                }
                _ => {}
            }
            if self.workers[i].watchdog_at.is_some_and(|at| at <= now)
                && !self.workers[i].is_stopping()
            {
                self.watchdog_expired(i);
            }
        }
        for i in 0..self.slots.len() {
            if matches!(self.slots[i].state, SlotState::BackingOff { until } if until <= now) {
                self.start(i as u32, None);
            }
        }
        if self.next_memory_check.is_some_and(|at| at <= now) {
            self.check_memory();
            self.next_memory_check = Some(now + self.cfg.memory_check_interval);
        }
        if self.give_up_at().is_some_and(|at| at <= now) {
            let code = self.last_failure.unwrap_or(1).max(1);
            error!(
                "every worker has been crash-looping for {:?}: giving up (exit {code}) so the orchestrator's backoff takes over",
                self.cfg.give_up_after.unwrap_or_default()
            );
            self.forced.get_or_insert(code);
            self.begin_stop(false, "crash loop: giving up");
        }
    }

    fn check_memory(&mut self) {
        let Some(cap) = self.cfg.max_worker_memory else {
            return;
        };
        let proc_root = Path::new("/proc");
        let tree = memory::process_tree(proc_root);
        for w in &self.workers {
            if !w.is_current()
                || self.replacements.queue.iter().any(|(s, _)| *s == w.slot)
                || self.replacements.current.is_some_and(|r| r.slot == w.slot)
            {
                continue;
            }
            let used = memory::tree_bytes(proc_root, &tree, w.pid);
            if used > cap {
                w.warn(format_args!(
                    "worker uses {} MiB (with its descendants), over the {} MiB cap: replacing it",
                    used >> 20,
                    cap >> 20
                ));
                self.replacements
                    .queue
                    .push_back((w.slot, StopReason::MemoryCap));
            }
        }
    }

    /// When every slot has been failing for `give_up_after`, the instant that happens.
    fn give_up_at(&self) -> Option<Instant> {
        let limit = self.cfg.give_up_after?;
        // A worker that has run half the give-up time is not crash-looping, even before it
        // counts as healthy for the backoff (which may take longer than giving up).
        let healthy = self.cfg.backoff.reset_after.min(limit / 2);
        let mut latest: Option<Instant> = None;
        for slot in &self.slots {
            let healthy_now = self
                .workers
                .iter()
                .any(|w| w.slot == slot.id && w.is_current() && w.lived() >= healthy);
            match (slot.state, slot.failing_since) {
                (SlotState::Ended, _) => continue,
                (_, Some(since)) if !healthy_now => {
                    latest = Some(latest.map_or(since, |l| l.max(since)))
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
                if !self.draining.is_empty() {
                    consider(Instant::now() + DRAIN_POLL);
                }
            }
            Phase::Running => {
                if !self.draining.is_empty() {
                    consider(Instant::now() + DRAIN_POLL);
                }
                for slot in &self.slots {
                    if let SlotState::BackingOff { until } = slot.state {
                        consider(until);
                    }
                }
                for w in &self.workers {
                    match w.state {
                        WorkerState::Stopping { kill_at } => consider(kill_at),
                        WorkerState::Starting { ready_at, fail_at } => {
                            consider(fail_at);
                            if let Some(at) = ready_at {
                                consider(at);
                            }
                        }
                        _ => {}
                    }
                    if let Some(at) = w.watchdog_at {
                        consider(at);
                    }
                }
                if let Some(at) = self.next_memory_check {
                    consider(at);
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
        let all_ended = self.slots.iter().all(|s| s.state == SlotState::Ended);
        let nothing_runs = self.workers.is_empty() && self.draining.is_empty();
        if !((all_ended && nothing_runs) || past_hard) {
            return None;
        }
        if !nothing_runs {
            warn!("some processes did not die after SIGKILL; exiting anyway");
        }
        Some(self.forced.or(self.first_failure).unwrap_or(0))
    }

    /// Publishes the snapshot the admin endpoint serves, and tells our own supervisor (if it
    /// gave us a NOTIFY_SOCKET) when the pool first becomes ready.
    fn publish(&mut self) {
        let ready = self
            .workers
            .iter()
            .filter(|w| w.is_ready() && w.replaces.is_none())
            .count() as u32;
        let needed = self.cfg.min_ready.min(self.slots.len() as u32);
        let pool_ready = self.phase == Phase::Running && ready >= needed;
        if pool_ready && !self.pool_ready {
            info!("pool ready: {ready} of {} workers", self.slots.len());
            if let Err(e) = notify::notify_upstream("READY=1") {
                warn!("cannot send READY=1 to our NOTIFY_SOCKET: {e}");
            }
        }
        self.pool_ready = pool_ready;
        if self.status_tx.receiver_count() == 0 {
            return;
        }
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|w| WorkerStatus {
                slot: w.slot,
                pid: Some(w.pid),
                state: w.state_name(),
                generation: w.generation,
                restarts: self.slots.get(w.slot as usize).map_or(0, |s| s.restarts),
                started_at: Some(w.started_wall),
                last_exit: self
                    .slots
                    .get(w.slot as usize)
                    .and_then(|s| s.last_exit.clone()),
            })
            .collect();
        for slot in &self.slots {
            if self.workers.iter().any(|w| w.slot == slot.id) {
                continue;
            }
            let state = match slot.state {
                SlotState::BackingOff { .. } => "backoff",
                SlotState::Ended => "ended",
                SlotState::Active => continue,
            };
            workers.push(WorkerStatus {
                slot: slot.id,
                pid: None,
                state,
                generation: self.generation,
                restarts: slot.restarts,
                started_at: None,
                last_exit: slot.last_exit.clone(),
            });
        }
        workers.sort_by_key(|w| (w.slot, w.started_at));
        let status = PoolStatus {
            ready: pool_ready,
            generation: self.generation,
            desired: self.slots.len() as u32,
            cpu_budget: self.cfg.cpu.budget,
            start_time: self.start_wall,
            restarts_total: self.restarts_total,
            exits: self.exits.clone(),
            workers,
        };
        self.status_tx.send_replace(status);
    }
}

/// The telemetry handles of the workers of one slot (for the spans that link to them).
fn lives_in(workers: &[Worker], slot: u32) -> Vec<&WorkerLife> {
    workers
        .iter()
        .filter(|w| w.slot == slot)
        .map(|w| &w.life)
        .collect()
}

fn new_slot(cfg: &Config, id: u32, seed: u64) -> Slot {
    Slot {
        id,
        state: SlotState::Ended,
        restarts: 0,
        backoff: Backoff::new(cfg.backoff, seed.rotate_left(id * 7) ^ id as u64),
        failing_since: None,
        last_exit: None,
        previous: None,
    }
}

async fn recv_notify(n: Option<&NotifyServer>) -> std::io::Result<(i32, Vec<Notice>)> {
    match n {
        Some(n) => n.recv().await,
        None => std::future::pending().await,
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
