//! The loop: turns what the OS says into [`Event`]s for the pool, and carries out the
//! [`Effect`]s it answers with (fork, signal, measure, report). Nothing here decides.
//!
//! One current-thread runtime, one event at a time: a batch of signals from the signalfd (SIGCHLD
//! means reap), an exec that succeeded or failed, a notify message, an admin request, measured
//! memory, a writable stderr, or the pool's next timer. `select!` is biased towards signals, so a
//! SIGTERM is handled before the next batch of starts. No locks, no shared mutable state: the
//! admin endpoint reads snapshots published here, through a `watch` channel, only when the pool
//! changed (its version moved), so a thousand orphans reaped cost no snapshot at all.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::admin::{Admin, Ask, PoolStatus, WorkerStatus};
use crate::cli::{ReadyMode, WorkerOutput};
use crate::config::Config;
use crate::ctl;
use crate::memory::{self, Meter};
use crate::notify::{self, Notice, NotifyServer};
use crate::output;
use crate::pool::{self, Effect, Event, ExitReason, Pool, SlotState};
use crate::report::Reporter;
use crate::signals::Signals;
use crate::sink;
use crate::spawn::{self, EnvBlock};
use crate::status::Exit;
use crate::telemetry::Telemetry;

/// At exit, how long queued log lines may take to reach a stalled stderr.
const FINAL_FLUSH: Duration = Duration::from_millis(200);
/// At exit, how long relays of workers' output may take to reach their pipes' ends.
const RELAY_DRAIN: Duration = Duration::from_millis(500);
/// The warning about dropped lines waits until stderr's queue is below this.
const DROPS_TOLD_BELOW: usize = 64 * 1024;

/// Runs the pool to completion on a current-thread runtime and returns our exit status.
pub fn run(cfg: Config, telemetry: Telemetry) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the event loop: {e}");
            return 1;
        }
    };
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&rt, async move {
        let signals = match Signals::open() {
            Ok(s) => s,
            Err(e) => {
                error!("cannot read signals (signalfd): {e}");
                return 1;
            }
        };
        let (status_tx, status_rx) = watch::channel(PoolStatus::empty(cfg.workers, cfg.cpu.budget));
        let (ping_tx, ping_rx) = mpsc::channel(16);
        // `cluster-init ctl`: always on, and never fatal (the pool runs without it).
        let ctl = match ctl::Server::bind_for_pool(status_rx.clone(), ping_tx.clone()) {
            Ok(server) => {
                debug!("ctl socket {}", server.name());
                Some(server.spawn())
            }
            Err(e) => {
                warn!("cluster-init ctl will not reach this init: {e}");
                None
            }
        };
        // Bound before anything starts, so that a taken port is a usage error (exit 2).
        if let Some(addr) = cfg.admin_listen.as_deref() {
            match Admin::bind(addr, status_rx, ping_tx) {
                Ok(admin) => {
                    info!("admin endpoint on http://{}", admin.local_addr());
                    admin.spawn();
                }
                Err(e) => {
                    error!("--admin-listen: {e}");
                    return 2;
                }
            }
        }
        let notify = if cfg.ready == ReadyMode::Notify || cfg.watchdog.is_some() {
            match NotifyServer::bind_for_pool() {
                Ok(n) => Some(n),
                Err(e) => {
                    error!("cannot create the notify socket: {e}");
                    return 1;
                }
            }
        } else {
            None
        };
        let mut sup = Supervisor::new(cfg, telemetry, status_tx, notify.as_ref());
        let code = sup.run(&signals, notify.as_ref(), ping_rx).await;
        if let Some(ctl) = ctl {
            ctl.drain().await;
        }
        drop(notify);
        code
    });
    final_flush();
    code
}

/// Gives queued lines a last, bounded chance to reach stdout and stderr.
fn final_flush() {
    let end = Instant::now() + FINAL_FLUSH;
    while !(sink::stderr().flush() & sink::stdout().flush()) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Supervisor {
    pool: Pool,
    cfg: Config,
    env: Vec<(OsString, OsString)>,
    notify_name: Option<String>,
    reporter: Reporter,
    /// Workers whose exec is not confirmed yet, and the exits of those reaped before it was.
    exec_pending: HashSet<i32>,
    early_exits: HashMap<i32, Exit>,
    exec_tx: mpsc::UnboundedSender<(i32, Result<(), i32>)>,
    exec_rx: mpsc::UnboundedReceiver<(i32, Result<(), i32>)>,
    meter: Option<Meter>,
    memory_rx: mpsc::UnboundedReceiver<Vec<(i32, u64)>>,
    memory_tx: mpsc::UnboundedSender<Vec<(i32, u64)>>,
    oom_file: Option<PathBuf>,
    status_tx: watch::Sender<PoolStatus>,
    published: Option<u64>,
    steering: Steering,
    /// The CPU budget last read (for `/metrics` and `/status`).
    cpu_budget: f64,
    /// The last failure to read the budget, warned about once.
    budget_warning: Option<String>,
    /// Lines dropped on stderr and stdout, not yet told in a warning.
    unreported_drops: [u64; 2],
    /// Tasks relaying workers' output (`--worker-output`), until each pipe's end.
    relays: Vec<tokio::task::JoinHandle<()>>,
    /// Steering programs attached so far (one per reuseport address per change of the serving
    /// slots), shown in `/status`.
    steering_updates: u64,
    start: Instant,
    start_wall: SystemTime,
}

impl Supervisor {
    fn new(
        cfg: Config,
        telemetry: Telemetry,
        status_tx: watch::Sender<PoolStatus>,
        notify: Option<&NotifyServer>,
    ) -> Supervisor {
        let now = Instant::now();
        let oom_file = memory::oom_counter_file(Path::new("/"));
        let oom_kills = oom_file.as_deref().and_then(memory::oom_kills);
        let pool = Pool::new(cfg.pool_settings(), now, oom_kills);
        let (exec_tx, exec_rx) = mpsc::unbounded_channel();
        let (memory_tx, memory_rx) = mpsc::unbounded_channel();
        let migrate = cfg
            .listeners
            .has_per_slot_sockets()
            .then(|| crate::listen::tcp_migrate_req() == Some(true));
        let reporter = Reporter::new(
            telemetry,
            cfg.program.display.clone(),
            cfg.stop_timeout,
            migrate,
        );
        Supervisor {
            pool,
            env: spawn::inherited_env(),
            notify_name: notify.map(|n| n.name().to_string()),
            reporter,
            exec_pending: HashSet::new(),
            early_exits: HashMap::new(),
            exec_tx,
            exec_rx,
            meter: None,
            memory_rx,
            memory_tx,
            oom_file,
            status_tx,
            published: None,
            steering: if cfg.listeners.has_per_slot_sockets() {
                Steering::On
            } else {
                Steering::Off("no socket per slot (shared or unix listeners, or none)")
            },
            steering_updates: 0,
            cpu_budget: cfg.cpu.budget,
            budget_warning: None,
            unreported_drops: [0, 0],
            relays: Vec::new(),
            start: now,
            start_wall: SystemTime::now(),
            cfg,
        }
    }

    async fn run(
        &mut self,
        signals: &Signals,
        notify: Option<&NotifyServer>,
        mut ping_rx: mpsc::Receiver<Ask>,
    ) -> i32 {
        self.log_start();
        become_reaper(self.cfg.subreaper);
        let workers = self.cfg.workers;
        let sizing = self.cfg.sizing.clone();
        self.reporter.telemetry().start(workers, &sizing);
        self.step(Event::Tick);
        let started = self.live_links();
        self.reporter.telemetry().started(started);
        loop {
            self.tend_draining();
            self.step(Event::Tick);
            self.publish();
            self.log_dropped_lines();
            let now = Instant::now();
            self.reporter.flush_repeats(now);
            if let Some(code) = self.pool.finished(now) {
                let left = self.pool.abandoned();
                if left > 0 {
                    warn!("{left} process group(s) did not die after SIGKILL; exiting anyway");
                }
                self.drain_relays().await;
                info!(process.exit.code = code, "cluster-init exiting");
                self.reporter.telemetry().shutdown();
                return code;
            }
            let deadline = self.pool.next_deadline(now);
            if deadline.is_some_and(|d| d <= Instant::now()) {
                // More is due at once (the next batch of starts): take what has arrived without
                // waiting, so that signals and exits are handled between batches, and let the
                // exec watchers and the admin endpoint run.
                self.sweep(signals, &mut ping_rx);
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                biased;
                batch = signals.next_batch() => match batch {
                    Ok(batch) => self.signalled(batch),
                    Err(e) => {
                        error!("reading signals failed: {e}; stopping");
                        self.step(Event::Command(pool::Command::Stop));
                    }
                },
                Some((pid, outcome)) = self.exec_rx.recv() => self.exec_resolved(pid, outcome),
                msg = recv_notify(notify) => match msg {
                    Ok((sender, notices)) => self.notified(sender, notices),
                    Err(e) => debug!("notify socket: {e}"),
                },
                Some(ask) = ping_rx.recv() => self.answer(ask),
                Some(used) = self.memory_rx.recv() => self.step(Event::Memory(used)),
                _ = flush_sinks() => {}
                _ = sleep_until_opt(deadline) => {}
            }
        }
    }

    /// Handles whatever signals, exec outcomes, pings and measurements are waiting, without
    /// waiting for any.
    fn sweep(&mut self, signals: &Signals, ping_rx: &mut mpsc::Receiver<Ask>) {
        match signals.pending() {
            Ok(batch) => self.signalled(batch),
            Err(e) => debug!("reading signals: {e}"),
        }
        while let Ok((pid, outcome)) = self.exec_rx.try_recv() {
            self.exec_resolved(pid, outcome);
        }
        while let Ok(ask) = ping_rx.try_recv() {
            self.answer(ask);
        }
        while let Ok(used) = self.memory_rx.try_recv() {
            self.step(Event::Memory(used));
        }
    }

    fn answer(&mut self, ask: Ask) {
        match ask {
            Ask::Pong(tx) => drop(tx.send(())),
            Ask::Queues(tx) => drop(tx.send(self.cfg.listeners.queues())),
            Ask::Command(command, tx) => {
                let answer = self.command(command);
                drop(tx.send(answer));
            }
        }
    }

    /// A control command: what the pool made of it, in a line for the caller.
    fn command(&mut self, command: pool::Command) -> Result<String, String> {
        let from = self.pool.slots().len();
        let stopping = self.pool.stopping();
        let effects = self.pool.on(Event::Command(command), Instant::now());
        let refused = effects.iter().find_map(|e| match e {
            Effect::Report(pool::Report::ScaleRefused { reason, .. }) => Some(*reason),
            _ => None,
        });
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            if let Some(next) = self.carry_out(effect) {
                queue.extend(self.pool.on(next, Instant::now()));
            }
        }
        match (command, refused) {
            (_, Some(reason)) => Err(reason.to_string()),
            (pool::Command::Stop, _) if stopping => Ok("already stopping".into()),
            (pool::Command::Stop, _) => Ok("stopping".into()),
            (pool::Command::Reload, _) if stopping => Err("the pool is stopping".into()),
            (pool::Command::Reload, _) => Ok(format!(
                "reloading to generation {}",
                self.pool.generation()
            )),
            (pool::Command::Scale(n), _) => Ok(format!("scaling {from} -> {n}")),
        }
    }

    fn signalled(&mut self, batch: Vec<i32>) {
        for sig in batch {
            if sig == libc::SIGCHLD {
                self.reap();
            } else {
                self.step(Event::Signal(sig));
            }
        }
    }

    /// Feeds one event to the pool and carries out what it answers, and what those answer.
    fn step(&mut self, event: Event) {
        let mut queue: VecDeque<Effect> = self.pool.on(event, Instant::now()).into();
        while let Some(effect) = queue.pop_front() {
            if let Some(next) = self.carry_out(effect) {
                queue.extend(self.pool.on(next, Instant::now()));
            }
        }
    }

    fn carry_out(&mut self, effect: Effect) -> Option<Event> {
        match effect {
            Effect::Spawn {
                slot,
                generation,
                workers,
            } => Some(self.spawn(slot, generation, workers)),
            Effect::Signal { pgid, signal } => {
                signal_group(pgid, signal);
                None
            }
            Effect::MeasureMemory(pids) => {
                self.measure(pids);
                None
            }
            Effect::CloseSlot(slot) | Effect::Park(slot) => {
                if self.cfg.listeners.close_slot(slot as usize, group_alive) {
                    self.steer_again();
                }
                None
            }
            Effect::Serving(slots) => {
                self.steer(&slots);
                None
            }
            Effect::SampleQueues => Some(Event::Queues(self.slot_queues())),
            Effect::ReadBudget => self.read_budget(),
            Effect::CloseListeners => {
                self.cfg.listeners.close_all();
                self.steering = Steering::Off("the pool is stopping");
                None
            }
            Effect::NotifyReady => {
                if let Err(e) = notify::notify_upstream("READY=1") {
                    warn!("cannot send READY=1 to our NOTIFY_SOCKET: {e}");
                }
                None
            }
            Effect::Report(r) => {
                self.reporter.report(r, Instant::now());
                None
            }
        }
    }

    /// What the workers wrote last still goes out: the relays read to their pipes' ends, which
    /// come when the workers are gone, within a bound.
    async fn drain_relays(&mut self) {
        let relays = std::mem::take(&mut self.relays);
        let all = async {
            for r in relays {
                let _ = r.await;
            }
        };
        tokio::pin!(all);
        // The relays wait for room in the streams out, which only flushing makes.
        let drained = async {
            loop {
                tokio::select! {
                    _ = &mut all => return,
                    _ = flush_sinks() => {}
                }
            }
        };
        let _ = tokio::time::timeout(RELAY_DRAIN, drained).await;
    }

    /// The kernel's order of a reuseport group changed (a socket's last copy closed): the
    /// program's indices must follow, for the same serving slots.
    fn steer_again(&mut self) {
        let serving = self.pool.serving().to_vec();
        self.steer(&serving);
    }

    /// Points the reuseport steering programs at the slots that serve now.
    fn steer(&mut self, serving: &[u32]) {
        if self.steering != Steering::On {
            return;
        }
        match self.cfg.listeners.steer(serving) {
            Ok(n) => {
                self.steering_updates += n as u64;
                debug!(cluster_init.serving = ?serving, "steering new connections to slots {serving:?}");
            }
            Err(e) => {
                warn!("{e}: new connections are spread over every slot, whether its worker serves or not");
                self.steering = Steering::Off("the kernel refused the program");
            }
        }
    }

    /// Reads the budget again: what `max` means now, for the pool to decide on. A file that
    /// cannot be read is one warning, and the pool keeps its size.
    fn read_budget(&mut self) -> Option<Event> {
        let watch = self.cfg.watch.as_ref()?;
        match watch.read() {
            Ok(sizing) => {
                self.budget_warning = None;
                if sizing.cpu.budget != self.cpu_budget {
                    self.cpu_budget = sizing.cpu.budget;
                    self.published = None;
                }
                let detail = sizing.explain(watch.rule());
                Some(Event::Budget {
                    max: sizing.max,
                    detail,
                })
            }
            Err(e) => {
                if self.budget_warning.as_deref() != Some(e.as_str()) {
                    warn!("cannot read the budget: {e}; the pool keeps its size");
                    self.budget_warning = Some(e);
                }
                None
            }
        }
    }

    /// Connections waiting in each slot's own sockets, summed over its listeners.
    fn slot_queues(&self) -> Vec<(u32, u32)> {
        let mut per_slot: std::collections::BTreeMap<u32, u32> = Default::default();
        for q in self.cfg.listeners.queues() {
            if let Some(slot) = q.slot {
                *per_slot.entry(slot).or_default() += q.queued;
            }
        }
        per_slot.into_iter().collect()
    }

    /// Forks a worker for `slot`; the answer is the event the pool waits for.
    fn spawn(&mut self, slot: u32, generation: u64, workers: u32) -> Event {
        // A slot added by scale-up gets its sockets here, on its first start; a parked or
        // re-added slot gets new ones.
        if let Err(e) = self.cfg.listeners.ensure_slot(slot as usize) {
            warn!(
                cluster_init.worker.slot = slot,
                "cannot add a socket for the slot: {e}"
            );
            return Event::SpawnFailed {
                slot,
                errno: libc::EMFILE,
            };
        }
        let mut extra = vec![
            ("CLUSTER_WORKER_ID".to_string(), slot.to_string()),
            ("CLUSTER_WORKER_COUNT".to_string(), workers.to_string()),
            ("CLUSTER_GENERATION".to_string(), generation.to_string()),
        ];
        let fds = self.cfg.listeners.fds_for_slot(slot as usize);
        if !fds.is_empty() {
            extra.push(("LISTEN_FDS".into(), fds.len().to_string()));
            extra.push(("LISTEN_FDNAMES".into(), self.cfg.listeners.fd_names()));
        }
        if let Some(name) = &self.notify_name {
            extra.push(("NOTIFY_SOCKET".into(), name.clone()));
        }
        if let Some(w) = self.cfg.watchdog {
            extra.push(("WATCHDOG_USEC".into(), w.as_micros().to_string()));
        }
        for (k, v) in &self.cfg.cpu_env {
            extra.push((k.to_string(), v.clone()));
        }
        let args = if self.cfg.trace_command_args {
            self.cfg.program.args()
        } else {
            Vec::new()
        };
        let exe = self.cfg.program.exe_name.clone();
        let life = self.reporter.open_life(slot, generation, &exe, &args);
        if let Some(tp) = Telemetry::traceparent(&life) {
            extra.push(("TRACEPARENT".into(), tp));
        }
        let env = EnvBlock::new(&self.env, &extra, !fds.is_empty());
        let pipes = match self.cfg.worker_output {
            WorkerOutput::Inherit => None,
            _ => match output::Pipes::new() {
                Ok(p) => Some(p),
                Err(errno) => {
                    self.reporter.fork_failed(life, errno);
                    return Event::SpawnFailed { slot, errno };
                }
            },
        };
        let stdio = pipes
            .as_ref()
            .map(|p| [p.child[0].as_raw_fd(), p.child[1].as_raw_fd()]);
        match spawn::spawn(&self.cfg.program, env, &fds, stdio) {
            Ok(forked) => {
                let pid = forked.pid;
                self.cfg.listeners.lend(slot as usize, pid, group_alive);
                if let Some(pipes) = pipes {
                    let origin = output::Origin {
                        slot,
                        pid,
                        generation,
                    };
                    self.relays.retain(|r| !r.is_finished());
                    self.relays
                        .extend(output::relay(self.cfg.worker_output, pipes, origin));
                }
                self.reporter.forked(slot, pid, life);
                self.exec_pending.insert(pid);
                watch_exec(pid, forked.exec_pipe, self.exec_tx.clone());
                Event::Spawned { slot, pid }
            }
            Err(errno) => {
                self.reporter.fork_failed(life, errno);
                Event::SpawnFailed { slot, errno }
            }
        }
    }

    /// The exec-error pipe of `pid` spoke: exec succeeded or failed.
    fn exec_resolved(&mut self, pid: i32, outcome: Result<(), i32>) {
        if !self.exec_pending.remove(&pid) {
            return;
        }
        match outcome {
            Ok(()) => {
                let awaiting_ready = self.cfg.ready != ReadyMode::Started;
                self.reporter.execed(pid, awaiting_ready);
                self.step(Event::Execed { pid });
                if let Some(exit) = self.early_exits.remove(&pid) {
                    self.exited(pid, exit);
                }
            }
            Err(errno) => {
                self.early_exits.remove(&pid);
                let reason = if pool::cannot_run(errno) {
                    ExitReason::ExecFailed
                } else {
                    ExitReason::SpawnFailed
                };
                self.reporter.exec_failed(pid, errno, reason);
                self.step(Event::ExecFailed { pid, errno });
            }
        }
    }

    /// Reaps every child that has exited, orphans included, until none is left.
    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: plain syscall; `status` is a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return; // 0: children remain but none has exited; -1: ECHILD
            }
            let exit = Exit::from_wait_status(status);
            if self.exec_pending.contains(&pid) {
                // Its exec pipe tells first whether it ever ran the program.
                self.early_exits.insert(pid, exit);
            } else if self.pool.is_worker(pid) {
                self.exited(pid, exit);
            }
        }
    }

    fn exited(&mut self, pid: i32, exit: Exit) {
        let oom_kills = if exit == Exit::Signal(libc::SIGKILL) {
            self.oom_file.as_deref().and_then(memory::oom_kills)
        } else {
            None
        };
        self.step(Event::Exited {
            pid,
            exit,
            group_alive: group_alive(pid),
            oom_kills,
        });
    }

    /// Tells the pool about draining process groups that have emptied, and closes the sockets
    /// only such groups still held.
    fn tend_draining(&mut self) {
        if self.cfg.listeners.tend(group_alive) {
            self.steer_again();
        }
        let gone: Vec<i32> = self
            .pool
            .draining()
            .map(|d| d.pgid)
            .filter(|&g| !group_alive(g))
            .collect();
        for pgid in gone {
            self.step(Event::GroupGone { pgid });
        }
    }

    fn notified(&mut self, sender: i32, notices: Vec<Notice>) {
        let pool = &self.pool;
        let Some(pid) = notify::owning_worker(Path::new("/proc"), sender, |p| pool.is_worker(p))
        else {
            debug!(
                process.pid = sender,
                "notify message from a process that is no worker of ours: dropped"
            );
            return;
        };
        for n in &notices {
            if let Notice::Status(text) = n {
                debug!(process.pid = pid, "status: {text}");
            }
        }
        self.step(Event::Notify { pid, notices });
    }

    fn measure(&mut self, pids: Vec<i32>) {
        if self.meter.is_none() {
            self.meter = Meter::start(self.memory_tx.clone());
            if self.meter.is_none() {
                warn!("cannot start the memory meter's thread; memory is measured later");
                return;
            }
        }
        if let Some(m) = &self.meter {
            m.request(pids);
        }
    }

    fn live_links(&self) -> Vec<crate::telemetry::LifeLink> {
        let pids: Vec<i32> = self
            .pool
            .slots()
            .iter()
            .filter_map(|s| s.state().occupant().map(|w| w.pid))
            .collect();
        self.reporter
            .lives_of(&pids)
            .into_iter()
            .filter_map(|l| l.link())
            .collect()
    }

    fn log_start(&self) {
        info!(
            command = %self.cfg.program.display,
            restart = self.cfg.restart.as_str(),
            "{}",
            self.cfg.sizing
        );
        for line in self.cfg.listeners.describe() {
            info!("listening on {line}");
        }
        if !self.cfg.listeners.is_empty()
            && self.cfg.listeners.balance() == crate::listen::Balance::ReusePort
        {
            match crate::listen::tcp_migrate_req() {
                Some(true) => debug!("net.ipv4.tcp_migrate_req=1: a removed slot's queued connections move to the others"),
                Some(false) => debug!("net.ipv4.tcp_migrate_req=0: removing a slot (scale-down) resets its queued connections"),
                None => {}
            }
        }
        if let Some(f) = memory::oom_group_enabled(Path::new("/")) {
            warn!(
                "{} is 1: one OOM kill stops the whole container, not just one worker (memory.oom.group)",
                f.display()
            );
        }
    }

    /// Counts lines the sinks dropped, and says so once stderr moves again: a warning into a
    /// full queue would only be dropped too.
    fn log_dropped_lines(&mut self) {
        let err = sink::stderr().take_dropped();
        let out = sink::stdout_if_open().map_or(0, |s| s.take_dropped());
        if err + out > 0 {
            self.pool_dropped_lines(err + out);
            self.unreported_drops[0] += err;
            self.unreported_drops[1] += out;
        }
        // Room again (not necessarily empty: a busy stream under steady load never is).
        if self.unreported_drops == [0, 0] || sink::stderr().queued() > DROPS_TOLD_BELOW {
            return;
        }
        for (n, stream) in self.unreported_drops.iter().zip(["stderr", "stdout"]) {
            if *n > 0 {
                warn!(
                    cluster_init.log.dropped = n,
                    "{n} log lines dropped: {stream} was not being read"
                );
            }
        }
        self.unreported_drops = [0, 0];
    }

    fn pool_dropped_lines(&mut self, dropped: u64) {
        self.status_tx
            .send_modify(|s| s.log_lines_dropped += dropped);
    }

    /// Publishes the snapshot the admin endpoint serves, when the pool changed.
    fn publish(&mut self) {
        let version = self.pool.version();
        if self.published == Some(version) || self.status_tx.receiver_count() == 0 {
            return;
        }
        self.published = Some(version);
        let wall = |t: Instant| self.start_wall + t.saturating_duration_since(self.start);
        let mut workers = Vec::new();
        let last = |s: &pool::Slot| {
            s.last_exit.map(|l| {
                (
                    l.exit
                        .map_or_else(|| l.reason.as_str().to_string(), |e| e.to_string()),
                    l.reason.as_str(),
                )
            })
        };
        let leaving_slots: HashSet<u32> = self.pool.leaving().map(|(w, _)| w.slot).collect();
        for slot in self.pool.slots() {
            // During a stop the slot has ended while its worker is still leaving: show the worker.
            if slot.state() == &SlotState::Ended && leaving_slots.contains(&slot.id) {
                continue;
            }
            let (last_exit, last_reason) = last(slot).unzip();
            let entry = |w: Option<&pool::Worker>, state: &'static str| WorkerStatus {
                slot: slot.id,
                pid: w.map(|w| w.pid),
                state,
                generation: w.map_or(self.pool.generation(), |w| w.generation),
                restarts: slot.restarts,
                started_at: w.map(|w| wall(w.spawned)),
                last_exit: last_exit.clone(),
                last_exit_reason: last_reason,
                status_text: w.and_then(|w| w.status_text.clone()),
            };
            match slot.state() {
                SlotState::Replacing { old, new, .. } => {
                    workers.push(entry(Some(old), "ready"));
                    if let Some(n) = new {
                        workers.push(entry(Some(n), "starting"));
                    }
                }
                state => workers.push(entry(state.occupant(), state.as_str())),
            }
        }
        for (w, _) in self.pool.leaving() {
            workers.push(WorkerStatus {
                slot: w.slot,
                pid: Some(w.pid),
                state: "stopping",
                generation: w.generation,
                restarts: 0,
                started_at: Some(wall(w.spawned)),
                last_exit: None,
                last_exit_reason: None,
                status_text: w.status_text.clone(),
            });
        }
        workers.sort_by_key(|w| (w.slot, w.started_at));
        let exits = self.pool.exits().map(|(r, n)| (r.as_str(), n)).collect();
        let pool = &self.pool;
        let budget = self.cpu_budget;
        let start_wall = self.start_wall;
        let steering = self.steering.describe();
        let steering_updates = self.steering_updates;
        self.status_tx.send_modify(|s| {
            s.ready = pool.ready();
            s.generation = pool.generation();
            s.desired = pool.slots().len() as u32;
            s.cpu_budget = budget;
            s.start_time = start_wall;
            s.restarts_total = pool.restarts_total();
            s.exits = exits;
            s.workers = workers;
            s.serving = pool.serving().to_vec();
            s.steering = steering;
            s.steering_updates = steering_updates;
        });
    }
}

/// Whether new connections are steered to serving slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Steering {
    On,
    Off(&'static str),
}

impl Steering {
    fn describe(self) -> String {
        match self {
            Steering::On => "on".to_string(),
            Steering::Off(why) => format!("off: {why}"),
        }
    }
}

/// Waits for the exec-error pipe of `pid` and reports what it says.
fn watch_exec(pid: i32, pipe: OwnedFd, tx: mpsc::UnboundedSender<(i32, Result<(), i32>)>) {
    tokio::task::spawn_local(async move {
        // SAFETY: the AsyncFd owns the pipe and keeps it open for as long as it is registered.
        let fd = match unsafe { AsyncFd::register_with_interest(pipe, Interest::READABLE) } {
            Ok(fd) => fd,
            Err(_) => {
                // Cannot happen with a pipe; if it does, the worker's own exit will tell.
                let _ = tx.send((pid, Ok(())));
                return;
            }
        };
        loop {
            let Ok(mut guard) = fd.readable().await else {
                let _ = tx.send((pid, Ok(())));
                return;
            };
            match spawn::exec_outcome(fd.get_ref()) {
                Some(outcome) => {
                    let _ = tx.send((pid, outcome));
                    return;
                }
                None => guard.clear_ready(),
            }
        }
    });
}

async fn recv_notify(n: Option<&NotifyServer>) -> std::io::Result<(i32, Vec<Notice>)> {
    match n {
        Some(n) => n.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Resolves when `fd` (stderr's private description, holding queued lines) can take more.
/// Waits until stderr or stdout (when relaying) can take some of what is queued for it, writes
/// it, and wakes the relays that wait for room.
async fn flush_sinks() {
    loop {
        let err = sink::stderr().pending_fd();
        let out = sink::stdout_if_open().and_then(|s| s.pending_fd());
        if err.is_none() && out.is_none() {
            // Relays queue lines while the loop waits here: they say so.
            output::lines_queued().await;
            continue;
        }
        tokio::select! {
            _ = writable(err) => break,
            _ = writable(out) => break,
            // A stream that had nothing queued when this wait began may have lines now.
            _ = output::lines_queued() => {}
        }
    }
    sink::stderr().flush();
    if let Some(out) = sink::stdout_if_open() {
        out.flush();
    }
    output::room_made();
}

async fn writable(fd: Option<std::os::fd::RawFd>) {
    let Some(fd) = fd else {
        return std::future::pending().await;
    };
    // SAFETY: the sink keeps this descriptor open while lines are queued, and the
    // registration ends when this future does, before the next turn of the loop.
    // A regular file cannot be polled (and never makes a writer wait): then nothing to wait for.
    if let Ok(afd) = unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE) } {
        let _ = afd.writable().await;
    }
}

fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: plain syscall. ESRCH (the group is already gone) is expected and harmless.
    unsafe { libc::kill(-pgid, sig) };
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(-pgid, 0) };
    // EPERM: a member changed its credentials (setuid), yet it lives.
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
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
