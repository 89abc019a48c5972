//! The pool driven through scenarios with injected time: no processes, no sleeping. Each test
//! plays what the supervisor would feed in (forks answered at once, exits, signals, timers) and
//! checks what the pool decides.

use std::time::{Duration, Instant};

use super::*;
use crate::status::Exit;

const TERM: i32 = libc::SIGTERM;
const KILL: i32 = libc::SIGKILL;

fn settings(workers: u32) -> Settings {
    Settings {
        workers,
        restart: RestartPolicy::Always,
        stop_signal: TERM,
        stop_timeout: Duration::from_secs(10),
        backoff: backoff::Policy {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(30),
        },
        give_up_after: Some(Duration::from_secs(60)),
        ready: ReadyMode::Started,
        ready_timeout: Duration::from_secs(60),
        min_ready: 1,
        watchdog: None,
        memory_cap: None,
        hup: HupAction::Reload,
        stall_timeout: None,
        budget_interval: None,
        migrate: false,
        seed: 7,
    }
}

/// A pool and the supervisor's side of the conversation, at a time we choose.
struct Sim {
    pool: Pool,
    now: Instant,
    next_pid: i32,
    /// Answer each Spawn with an immediate successful exec, as a fast server would.
    auto_exec: bool,
    /// Every effect so far, in order.
    log: Vec<Effect>,
}

impl Sim {
    fn new(s: Settings) -> Sim {
        let now = Instant::now();
        let mut sim = Sim {
            pool: Pool::new(s, now, Some(0)),
            now,
            next_pid: 100,
            auto_exec: true,
            log: Vec::new(),
        };
        sim.on(Event::Tick);
        sim
    }

    fn with(s: Settings, auto_exec: bool) -> Sim {
        let now = Instant::now();
        let mut sim = Sim {
            pool: Pool::new(s, now, Some(0)),
            now,
            next_pid: 100,
            auto_exec,
            log: Vec::new(),
        };
        sim.on(Event::Tick);
        sim
    }

    /// Feeds an event; answers forks like the supervisor. Returns this event's effects.
    fn on(&mut self, e: Event) -> Vec<Effect> {
        let mut all = Vec::new();
        let mut queue: std::collections::VecDeque<Effect> = self.pool.on(e, self.now).into();
        while let Some(effect) = queue.pop_front() {
            all.push(effect.clone());
            if let Effect::Spawn { slot, .. } = effect {
                let pid = self.next_pid;
                self.next_pid += 1;
                queue.extend(self.pool.on(Event::Spawned { slot, pid }, self.now));
                if self.auto_exec {
                    queue.extend(self.pool.on(Event::Execed { pid }, self.now));
                }
            }
        }
        self.log.extend(all.clone());
        all
    }

    /// Moves time on and lets timers fire (one turn of the loop, like the supervisor's).
    fn advance(&mut self, d: Duration) -> Vec<Effect> {
        self.now += d;
        self.on(Event::Tick)
    }

    /// Runs turns of the loop at each deadline up to `d` from now.
    fn run_for(&mut self, d: Duration) -> Vec<Effect> {
        let end = self.now + d;
        let mut all = Vec::new();
        loop {
            if self.pool.finished(self.now).is_some() {
                self.now = end;
                return all;
            }
            let next = self.pool.next_deadline(self.now).filter(|&t| t <= end);
            match next {
                Some(t) => {
                    self.now = t.max(self.now);
                    all.extend(self.on(Event::Tick));
                    if t <= self.now && self.pool.next_deadline(self.now) == Some(t) {
                        // A deadline that does not move would loop forever: step past it.
                        self.now += Duration::from_millis(1);
                    }
                }
                None => {
                    self.now = end;
                    all.extend(self.on(Event::Tick));
                    return all;
                }
            }
        }
    }

    fn exit(&mut self, pid: i32, exit: Exit) -> Vec<Effect> {
        self.exit_group(pid, exit, false)
    }

    fn exit_group(&mut self, pid: i32, exit: Exit, group_alive: bool) -> Vec<Effect> {
        self.on(Event::Exited {
            pid,
            exit,
            group_alive,
            oom_kills: Some(0),
        })
    }

    fn ready(&mut self, pid: i32) -> Vec<Effect> {
        self.on(Event::Notify {
            pid,
            notices: vec![Notice::Ready],
        })
    }

    fn state(&self, slot: u32) -> &SlotState {
        self.pool.slots()[slot as usize].state()
    }

    fn occupant(&self, slot: u32) -> i32 {
        self.state(slot).occupant().expect("an occupant").pid
    }

    /// Every pid that runs in `slot` as its occupant or successor.
    fn in_slot(&self, slot: u32) -> Vec<i32> {
        self.state(slot).workers().map(|w| w.pid).collect()
    }
}

fn spawns(effects: &[Effect]) -> Vec<u32> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Spawn { slot, .. } => Some(*slot),
            _ => None,
        })
        .collect()
}

fn signals(effects: &[Effect]) -> Vec<(i32, i32)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Signal { pgid, signal } => Some((*pgid, *signal)),
            _ => None,
        })
        .collect()
}

fn exits(effects: &[Effect]) -> Vec<(ExitReason, Then)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Report(Report::Exited { reason, then, .. }) => Some((*reason, *then)),
            _ => None,
        })
        .collect()
}

fn reports(effects: &[Effect]) -> Vec<&Report> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Report(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn gave_up(effects: &[Effect]) -> bool {
    reports(effects)
        .iter()
        .any(|r| matches!(r, Report::GivingUp { .. }))
}

fn restart_delay(effects: &[Effect]) -> Duration {
    match exits(effects).last() {
        Some((_, Then::Restart { delay })) => *delay,
        other => panic!("no restart in {other:?}"),
    }
}

const MS: fn(u64) -> Duration = Duration::from_millis;

// --- item 1: two workers on one slot ------------------------------------------------------------

#[test]
fn a_replaced_worker_whose_watchdog_expires_never_comes_back_beside_its_successor() {
    let mut s = settings(1);
    s.ready = ReadyMode::Notify;
    s.watchdog = Some(Duration::from_secs(2));
    let mut sim = Sim::new(s);
    let old = sim.occupant(0);
    sim.ready(old);
    // SIGHUP: a successor starts while the old one serves.
    let fx = sim.on(Event::Signal(libc::SIGHUP));
    assert_eq!(spawns(&fx), vec![0]);
    let new = sim.in_slot(0)[1];
    // The old worker stops pinging: its watchdog expires while it is being replaced.
    let fx = sim.advance(Duration::from_secs(2));
    assert_eq!(signals(&fx), vec![(old, libc::SIGABRT)]);
    assert_eq!(
        sim.in_slot(0),
        vec![new],
        "the successor holds the slot alone"
    );
    sim.ready(new);
    assert!(matches!(sim.state(0), SlotState::Serving(w) if w.pid == new));
    // The old worker exits late: nothing starts beside the successor.
    let fx = sim.exit(old, Exit::Signal(libc::SIGABRT));
    assert_eq!(exits(&fx), vec![(ExitReason::Watchdog, Then::Gone)]);
    assert!(spawns(&fx).is_empty());
    let fx = sim.run_for(Duration::from_secs(5));
    assert!(spawns(&fx).is_empty(), "{fx:?}");
    assert_eq!(sim.in_slot(0), vec![new]);
    // And it still pings: no watchdog for the new one while it does.
    assert!(sim.pool.is_worker(new) && !sim.pool.is_worker(old));
}

#[test]
fn a_slot_never_holds_more_than_its_occupant_and_one_successor() {
    // Every mix of reloads, exits and readiness keeps at most two pids per slot, and the
    // successor only while the old one serves.
    let mut s = settings(2);
    s.ready = ReadyMode::Notify;
    let mut sim = Sim::new(s);
    for round in 0..20u64 {
        for slot in 0..2 {
            let pids = sim.in_slot(slot);
            assert!(pids.len() <= 2, "round {round}: {pids:?}");
            for pid in pids {
                match round % 4 {
                    0 => drop(sim.ready(pid)),
                    1 => drop(sim.exit(pid, Exit::Code(1))),
                    _ => {}
                }
            }
        }
        if round % 3 == 0 {
            sim.on(Event::Signal(libc::SIGHUP));
        }
        sim.run_for(MS(700));
    }
}

// --- item 2: a crashed worker's group is drained ---------------------------------------------

#[test]
fn a_crashed_workers_group_is_drained_without_delaying_the_restart() {
    let mut sim = Sim::new(settings(1));
    let pid = sim.occupant(0);
    let fx = sim.exit_group(pid, Exit::Code(1), true);
    assert_eq!(
        signals(&fx),
        vec![(pid, TERM)],
        "the stop signal to what remains"
    );
    assert_eq!(sim.pool.draining().count(), 1);
    // The slot restarts after its backoff, while the group still drains.
    let fx = sim.run_for(MS(300));
    assert_eq!(spawns(&fx), vec![0]);
    assert_eq!(sim.pool.draining().count(), 1);
    // At the stop timeout, SIGKILL to the group; then it is gone.
    let fx = sim.run_for(Duration::from_secs(10));
    assert!(signals(&fx).contains(&(pid, KILL)), "{fx:?}");
    sim.on(Event::GroupGone { pgid: pid });
    assert_eq!(sim.pool.draining().count(), 0);
}

#[test]
fn a_group_left_by_an_ended_pool_is_killed_before_the_pool_finishes() {
    let mut s = settings(1);
    s.restart = RestartPolicy::Never;
    let mut sim = Sim::new(s);
    let pid = sim.occupant(0);
    sim.exit_group(pid, Exit::Code(0), true);
    assert_eq!(sim.pool.finished(sim.now), None, "the group still runs");
    let fx = sim.run_for(Duration::from_secs(11));
    assert!(signals(&fx).contains(&(pid, KILL)));
    sim.on(Event::GroupGone { pgid: pid });
    assert_eq!(sim.pool.finished(sim.now), Some(137));
}

// --- item 3: recycled workers are not crashes --------------------------------------------------

#[test]
fn a_ready_worker_that_exits_0_is_replaced_at_once_and_never_counts_as_a_crash() {
    let mut s = settings(1);
    s.give_up_after = Some(Duration::from_secs(5));
    let mut sim = Sim::new(s);
    for _ in 0..500 {
        sim.advance(MS(100));
        let pid = sim.occupant(0);
        let fx = sim.exit(pid, Exit::Code(0));
        assert_eq!(exits(&fx)[0].0, ExitReason::Recycled);
        assert_eq!(restart_delay(&fx), Duration::ZERO, "at once");
        assert_eq!(spawns(&fx), vec![0]);
    }
    assert_eq!(sim.pool.slots()[0].backoff.failures(), 0);
    assert_eq!(sim.pool.finished(sim.now), None, "never gave up");
    assert!(!sim.pool.stopping());
}

#[test]
fn a_worker_that_exits_0_at_once_restarts_at_most_20_times_a_second() {
    let mut sim = Sim::new(settings(1));
    let mut starts = 0;
    let fx = sim.run_for(Duration::ZERO);
    starts += spawns(&fx).len();
    let end = sim.now + Duration::from_secs(10);
    while sim.now < end {
        if let Some(w) = sim.state(0).occupant() {
            let pid = w.pid;
            starts += spawns(&sim.exit(pid, Exit::Code(0))).len();
        }
        let next = sim.pool.next_deadline(sim.now).expect("a restart is due");
        sim.now = next.max(sim.now);
        starts += spawns(&sim.on(Event::Tick)).len();
    }
    assert!((190..=202).contains(&starts), "{starts} starts in 10 s");
}

#[test]
fn exit_0_before_ready_is_a_failed_start_with_backoff() {
    let mut s = settings(1);
    s.ready = ReadyMode::Notify;
    let mut sim = Sim::new(s);
    let pid = sim.occupant(0);
    let fx = sim.exit(pid, Exit::Code(0));
    assert_eq!(exits(&fx)[0].0, ExitReason::ExitZero);
    assert!(restart_delay(&fx) >= MS(125));
    assert_eq!(sim.pool.slots()[0].backoff.failures(), 1);
}

// --- item 4: failed starts back off; the give-up status is the worker's ----------------------

#[test]
fn a_never_ready_server_is_restarted_ever_more_slowly_and_given_up_with_status_1() {
    let mut s = settings(1);
    s.ready = ReadyMode::Notify;
    s.ready_timeout = Duration::from_secs(1);
    s.give_up_after = Some(Duration::from_secs(20));
    let mut sim = Sim::new(s);
    let mut delays = Vec::new();
    for _ in 0..5 {
        let pid = sim.occupant(0);
        let fx = sim.run_for(Duration::from_secs(1));
        assert!(signals(&fx).contains(&(pid, TERM)), "ready timeout: {fx:?}");
        // It dies of our SIGTERM: that is no failure of its own to report.
        let fx = sim.exit(pid, Exit::Signal(TERM));
        assert_eq!(exits(&fx)[0].0, ExitReason::ReadyTimeout);
        delays.push(restart_delay(&fx));
        sim.run_for(*delays.last().unwrap());
    }
    for w in delays.windows(2) {
        assert!(w[1] > w[0], "backoff grows: {delays:?}");
    }
    sim.run_for(Duration::from_secs(30));
    assert!(sim.pool.stopping(), "gave up");
    for pid in sim.pool.leaving().map(|(w, _)| w.pid).collect::<Vec<_>>() {
        sim.exit(pid, Exit::Signal(TERM));
    }
    assert_eq!(sim.pool.finished(sim.now), Some(1), "not 143");
}

#[test]
fn a_healthy_life_is_counted_from_readiness_not_from_the_spawn() {
    let mut s = settings(1);
    s.ready = ReadyMode::Notify;
    s.ready_timeout = Duration::from_secs(120);
    s.give_up_after = None;
    let mut sim = Sim::new(s);
    for _ in 0..3 {
        let pid = sim.occupant(0);
        sim.exit(pid, Exit::Code(1));
        sim.run_for(Duration::from_secs(31));
    }
    // 40 s alive but only 10 s ready: not healthy, the backoff keeps growing.
    let pid = sim.occupant(0);
    sim.advance(Duration::from_secs(30));
    sim.ready(pid);
    sim.advance(Duration::from_secs(10));
    sim.exit(pid, Exit::Code(1));
    assert_eq!(sim.pool.slots()[0].backoff.failures(), 4);
    // Ready for 31 s: healthy, the backoff starts over.
    sim.run_for(Duration::from_secs(31));
    let pid = sim.occupant(0);
    sim.ready(pid);
    sim.advance(Duration::from_secs(31));
    sim.exit(pid, Exit::Code(1));
    assert_eq!(sim.pool.slots()[0].backoff.failures(), 1);
}

// --- item 6: repeated READY=1 -----------------------------------------------------------------

#[test]
fn repeated_ready_marks_a_worker_ready_once_and_keeps_its_status_text() {
    let mut s = settings(1);
    s.ready = ReadyMode::Notify;
    let mut sim = Sim::new(s);
    let pid = sim.occupant(0);
    let first = sim.ready(pid);
    let ready_reports = |fx: &[Effect]| {
        reports(fx)
            .iter()
            .filter(|r| matches!(r, Report::Ready { .. }))
            .count()
    };
    assert_eq!(ready_reports(&first), 1);
    for i in 0..5 {
        let fx = sim.on(Event::Notify {
            pid,
            notices: vec![Notice::Ready, Notice::Status(format!("{i} requests"))],
        });
        assert_eq!(ready_reports(&fx), 0);
    }
    let w = sim.state(0).occupant().unwrap();
    assert_eq!(w.status_text.as_deref(), Some("4 requests"));
}

// --- item 8: stops --------------------------------------------------------------------------

#[test]
fn repeated_quit_does_not_push_the_hard_deadline_back() {
    let mut sim = Sim::new(settings(2));
    sim.on(Event::Signal(libc::SIGQUIT));
    let first = sim.now;
    for _ in 0..10 {
        sim.advance(MS(400));
        let fx = sim.on(Event::Signal(libc::SIGQUIT));
        assert!(signals(&fx).is_empty(), "already killed");
    }
    // The workers never die (stuck in D state): the pool ends KILL_GRACE after the first QUIT.
    sim.now = first + KILL_GRACE;
    assert_eq!(sim.pool.finished(sim.now), Some(0));
}

#[test]
fn a_second_term_during_a_stop_kills_now() {
    let mut sim = Sim::new(settings(2));
    let (a, b) = (sim.occupant(0), sim.occupant(1));
    let fx = sim.on(Event::Signal(TERM));
    assert_eq!(signals(&fx), vec![(a, TERM), (b, TERM)]);
    sim.advance(Duration::from_secs(1));
    let fx = sim.on(Event::Signal(TERM));
    assert_eq!(signals(&fx), vec![(a, KILL), (b, KILL)]);
    sim.exit(a, Exit::Signal(KILL));
    sim.exit(b, Exit::Signal(KILL));
    assert_eq!(sim.pool.finished(sim.now), Some(137));
}

#[test]
fn the_stop_status_is_0_for_a_clean_stop_and_the_workers_own_otherwise() {
    for (exit, want) in [
        (Exit::Code(0), 0),
        (Exit::Signal(TERM), 0),
        (Exit::Code(3), 3),
        (Exit::Signal(libc::SIGSEGV), 139),
    ] {
        let mut sim = Sim::new(settings(1));
        let pid = sim.occupant(0);
        sim.on(Event::Signal(TERM));
        sim.exit(pid, exit);
        assert_eq!(sim.pool.finished(sim.now), Some(want), "{exit:?}");
    }
    // A stubborn one: SIGKILL at the stop timeout, 137.
    let mut sim = Sim::new(settings(1));
    let pid = sim.occupant(0);
    sim.on(Event::Signal(TERM));
    let fx = sim.run_for(Duration::from_secs(10));
    assert!(signals(&fx).contains(&(pid, KILL)));
    let fx = sim.exit(pid, Exit::Signal(KILL));
    assert_eq!(exits(&fx)[0].0, ExitReason::KilledAfterTimeout);
    assert_eq!(sim.pool.finished(sim.now), Some(137));
}

// --- item 10: running out of resources is not "not executable" --------------------------------

#[test]
fn a_spawn_without_resources_is_a_failed_start_retried_with_backoff() {
    let mut sim = Sim::with(settings(1), false);
    let pid = sim.in_slot(0)[0];
    let fx = sim.on(Event::ExecFailed {
        pid,
        errno: libc::EMFILE,
    });
    assert!(reports(&fx)
        .iter()
        .any(|r| matches!(r, Report::SpawnFailed { .. })));
    assert!(!sim.pool.stopping(), "never exits 126 for it");
    let last = sim.pool.slots()[0].last_exit.unwrap();
    assert_eq!(last.reason, ExitReason::SpawnFailed);
    // The fork itself failing (EAGAIN under pids.max) is the same.
    let fx = sim.run_for(Duration::from_secs(1));
    assert_eq!(spawns(&fx), vec![0]);
    let pid = sim.in_slot(0)[0];
    sim.on(Event::ExecFailed {
        pid,
        errno: libc::EAGAIN,
    });
    let counted = sim
        .pool
        .exits()
        .find(|(r, _)| *r == ExitReason::SpawnFailed)
        .unwrap()
        .1;
    assert_eq!(counted, 2);
    assert_eq!(sim.pool.slots()[0].backoff.failures(), 2);
}

#[test]
fn a_fork_that_fails_is_retried_and_the_pool_recovers() {
    let mut sim = Sim::new(settings(1));
    let pid = sim.occupant(0);
    sim.exit(pid, Exit::Code(1));
    // Feed the next spawn a failure by hand: take the slot back to Launching and fail it.
    let fx = sim.run_for(MS(300));
    assert_eq!(spawns(&fx), vec![0]);
    let pid = sim.occupant(0);
    sim.exit(pid, Exit::Code(1));
    let mut failing = Sim::with(settings(1), false);
    let failing_pid = failing.in_slot(0)[0];
    failing.on(Event::ExecFailed {
        pid: failing_pid,
        errno: libc::ENOMEM,
    });
    assert!(matches!(failing.state(0), SlotState::Waiting { .. }));
}

#[test]
fn a_program_that_cannot_run_stops_the_pool_with_127_or_126() {
    for (errno, code) in [(libc::ENOENT, 127), (libc::EACCES, 126)] {
        let mut sim = Sim::with(settings(2), false);
        let pid = sim.in_slot(0)[0];
        let other = sim.in_slot(1)[0];
        let fx = sim.on(Event::ExecFailed { pid, errno });
        assert!(reports(&fx)
            .iter()
            .any(|r| matches!(r, Report::CannotRun { code: c, .. } if *c == code)));
        assert!(sim.pool.stopping());
        sim.on(Event::ExecFailed { pid: other, errno });
        assert_eq!(sim.pool.finished(sim.now), Some(code));
    }
}

// --- item 11: a large pool never starves the loop ---------------------------------------------

#[test]
fn a_large_pool_starts_in_batches_and_a_stop_between_batches_ends_the_starts() {
    let mut sim = Sim::new(settings(1000));
    let first = sim
        .log
        .iter()
        .filter(|e| matches!(e, Effect::Spawn { .. }))
        .count();
    assert_eq!(first, LAUNCH_BATCH);
    // The next batch is due at once (the loop turns, and reads signals first).
    assert_eq!(sim.pool.next_deadline(sim.now), Some(sim.now));
    let fx = sim.on(Event::Tick);
    assert_eq!(spawns(&fx).len(), LAUNCH_BATCH);
    let fx = sim.on(Event::Signal(TERM));
    assert!(spawns(&fx).is_empty());
    let fx = sim.run_for(Duration::from_secs(1));
    assert!(spawns(&fx).is_empty(), "no start after the stop began");
}

// --- reload -----------------------------------------------------------------------------------

#[test]
fn a_reload_replaces_one_slot_at_a_time_waiting_for_each_old_group() {
    let mut s = settings(2);
    s.ready = ReadyMode::Notify;
    let mut sim = Sim::new(s);
    let (a, b) = (sim.occupant(0), sim.occupant(1));
    sim.ready(a);
    sim.ready(b);
    let fx = sim.on(Event::Signal(libc::SIGHUP));
    assert_eq!(spawns(&fx), vec![0], "one slot at a time");
    let a2 = sim.in_slot(0)[1];
    let fx = sim.ready(a2);
    assert_eq!(
        signals(&fx),
        vec![(a, TERM)],
        "the old one leaves once its successor is ready"
    );
    assert!(
        spawns(&fx).is_empty(),
        "the next slot waits for the old worker's group"
    );
    let fx = sim.exit_group(a, Exit::Signal(TERM), true);
    assert!(spawns(&fx).is_empty(), "its group is still draining");
    let fx = sim.on(Event::GroupGone { pgid: a });
    assert_eq!(spawns(&fx), vec![1]);
    let b2 = sim.in_slot(1)[1];
    sim.ready(b2);
    let fx = sim.exit(b, Exit::Code(0));
    assert_eq!(exits(&fx)[0].0, ExitReason::Stopped);
    assert!(reports(&sim.log)
        .iter()
        .any(|r| matches!(r, Report::ReloadComplete { generation: 2 })));
    assert_eq!(sim.pool.generation(), 2);
}

#[test]
fn a_successor_that_fails_abandons_the_reload_and_the_old_worker_serves_on() {
    let mut s = settings(2);
    s.ready = ReadyMode::Notify;
    let mut sim = Sim::new(s);
    let (a, b) = (sim.occupant(0), sim.occupant(1));
    sim.ready(a);
    sim.ready(b);
    sim.on(Event::Signal(libc::SIGHUP));
    let a2 = sim.in_slot(0)[1];
    let fx = sim.exit(a2, Exit::Code(1));
    assert_eq!(exits(&fx)[0].1, Then::Kept);
    assert!(matches!(sim.state(0), SlotState::Serving(w) if w.pid == a));
    let fx = sim.run_for(Duration::from_secs(5));
    assert!(spawns(&fx).is_empty(), "the reload was abandoned: {fx:?}");
    // The old workers are ordinary workers again: a crash restarts them.
    let fx = sim.exit(a, Exit::Code(1));
    assert!(matches!(exits(&fx)[0].1, Then::Restart { .. }));
}

#[test]
fn the_old_worker_exiting_during_its_replacement_leaves_the_slot_to_the_successor() {
    let mut s = settings(1);
    s.ready = ReadyMode::Notify;
    let mut sim = Sim::new(s);
    let a = sim.occupant(0);
    sim.ready(a);
    sim.on(Event::Signal(libc::SIGHUP));
    let a2 = sim.in_slot(0)[1];
    let fx = sim.exit(a, Exit::Code(1));
    assert_eq!(exits(&fx)[0].1, Then::Replaced);
    assert!(spawns(&fx).is_empty());
    assert_eq!(sim.in_slot(0), vec![a2]);
}

// --- scaling ----------------------------------------------------------------------------------

#[test]
fn scaling_down_then_up_never_runs_two_workers_on_one_slot() {
    let mut sim = Sim::new(settings(2));
    let b = sim.occupant(1);
    let fx = sim.on(Event::Signal(libc::SIGTTOU));
    assert!(fx.contains(&Effect::CloseSlot(1)));
    // Out of steering at once; the stop signal once what reached it had a moment to be taken.
    assert!(signals(&fx).is_empty());
    assert_eq!(sim.pool.serving(), [0]);
    let fx = sim.run_for(rollout::DRAIN_BEFORE_STOP);
    assert_eq!(signals(&fx), vec![(b, TERM)]);
    let fx = sim.on(Event::Signal(libc::SIGTTIN));
    assert_eq!(spawns(&fx), vec![1]);
    let b2 = sim.occupant(1);
    // The removed slot's worker exits after the new slot 1 started: slot 1 is untouched.
    let fx = sim.exit(b, Exit::Signal(TERM));
    assert_eq!(exits(&fx), vec![(ExitReason::Stopped, Then::Gone)]);
    assert!(spawns(&fx).is_empty());
    assert_eq!(sim.in_slot(1), vec![b2]);
}

#[test]
fn the_pool_keeps_at_least_one_worker_and_at_most_the_cap() {
    let mut sim = Sim::new(settings(1));
    let fx = sim.on(Event::Signal(libc::SIGTTOU));
    assert!(reports(&fx)
        .iter()
        .any(|r| matches!(r, Report::ScaleRefused { .. })));
    let fx = sim.on(Event::Command(Command::Scale(MAX_WORKERS + 1)));
    assert!(reports(&fx)
        .iter()
        .any(|r| matches!(r, Report::ScaleRefused { .. })));
    let fx = sim.on(Event::Command(Command::Scale(4)));
    assert_eq!(spawns(&fx), vec![1, 2, 3]);
    assert_eq!(sim.pool.slots().len(), 4);
}

// --- watchdog, readiness by time, memory --------------------------------------------------------

#[test]
fn a_worker_that_stops_pinging_gets_sigabrt_and_is_restarted_after_it_exits() {
    let mut s = settings(1);
    s.watchdog = Some(Duration::from_secs(2));
    let mut sim = Sim::new(s);
    let pid = sim.occupant(0);
    sim.advance(Duration::from_secs(1));
    sim.on(Event::Notify {
        pid,
        notices: vec![Notice::Watchdog],
    });
    let fx = sim.advance(MS(1500));
    assert!(signals(&fx).is_empty(), "it pinged");
    let fx = sim.advance(MS(600));
    assert_eq!(signals(&fx), vec![(pid, libc::SIGABRT)]);
    assert!(spawns(&fx).is_empty(), "the restart waits for the exit");
    let fx = sim.exit(pid, Exit::Signal(libc::SIGABRT));
    assert_eq!(exits(&fx)[0].0, ExitReason::Watchdog);
    let fx = sim.run_for(MS(300));
    assert_eq!(spawns(&fx), vec![0]);
}

#[test]
fn ready_after_a_duration_alive() {
    let mut s = settings(1);
    s.ready = ReadyMode::After(Duration::from_secs(2));
    let mut sim = Sim::new(s);
    assert!(!sim.pool.ready());
    sim.advance(MS(1900));
    assert!(!sim.pool.ready());
    let fx = sim.advance(MS(100));
    assert!(fx.contains(&Effect::NotifyReady));
    assert!(sim.pool.ready());
}

#[test]
fn a_worker_over_the_memory_cap_is_replaced_like_one_slot_of_a_reload() {
    let mut s = settings(2);
    s.memory_cap = Some((100 << 20, Duration::from_secs(5)));
    let mut sim = Sim::new(s);
    let (a, b) = (sim.occupant(0), sim.occupant(1));
    let fx = sim.advance(Duration::from_secs(5));
    assert!(fx.contains(&Effect::MeasureMemory(vec![a, b])));
    let fx = sim.on(Event::Memory(vec![(a, 10 << 20), (b, 200 << 20)]));
    assert_eq!(spawns(&fx), vec![1]);
    // ready=started: the successor is ready at once and the old one leaves.
    assert_eq!(signals(&fx), vec![(b, TERM)]);
    let fx = sim.exit(b, Exit::Signal(TERM));
    assert_eq!(exits(&fx)[0].0, ExitReason::MemoryCap);
    assert_eq!(sim.pool.generation(), 1, "not a reload");
}

// --- give-up, restart policies, OOM ------------------------------------------------------------

#[test]
fn a_pool_gives_up_only_when_every_slot_crash_loops() {
    let mut s = settings(2);
    s.give_up_after = Some(Duration::from_secs(10));
    let mut sim = Sim::new(s);
    let end = sim.now + Duration::from_secs(30);
    while sim.now < end {
        // Slot 0 crashes whenever it runs; slot 1 serves on.
        if let Some(pid) = sim.state(0).occupant().map(|w| w.pid) {
            sim.exit(pid, Exit::Code(1));
        }
        sim.run_for(MS(500));
    }
    assert!(!sim.pool.stopping());
    let b = sim.occupant(1);
    sim.exit(b, Exit::Code(2));
    let end = sim.now + Duration::from_secs(15);
    while sim.now < end && !sim.pool.stopping() {
        for slot in 0..2 {
            if let Some(pid) = sim.state(slot).occupant().map(|w| w.pid) {
                sim.exit(pid, Exit::Code(2));
            }
        }
        sim.run_for(MS(500));
    }
    assert!(sim.pool.stopping(), "gave up");
}

#[test]
fn restart_never_and_on_failure() {
    let mut s = settings(2);
    s.restart = RestartPolicy::Never;
    let mut sim = Sim::new(s);
    let (a, b) = (sim.occupant(0), sim.occupant(1));
    let fx = sim.exit(a, Exit::Code(4));
    assert_eq!(exits(&fx)[0].1, Then::End(RestartPolicy::Never));
    sim.exit(b, Exit::Code(0));
    assert_eq!(sim.pool.finished(sim.now), Some(4));

    let mut s = settings(2);
    s.restart = RestartPolicy::OnFailure;
    let mut sim = Sim::new(s);
    let (a, b) = (sim.occupant(0), sim.occupant(1));
    let fx = sim.exit(a, Exit::Code(0));
    assert_eq!(
        exits(&fx)[0],
        (ExitReason::ExitZero, Then::End(RestartPolicy::OnFailure))
    );
    let fx = sim.exit(b, Exit::Code(1));
    assert!(matches!(exits(&fx)[0].1, Then::Restart { .. }));
    sim.run_for(Duration::from_secs(1));
    let b2 = sim.occupant(1);
    sim.exit(b2, Exit::Code(0));
    assert_eq!(sim.pool.finished(sim.now), Some(0));
}

#[test]
fn an_oom_kill_is_named_by_the_cgroup_counter() {
    let mut sim = Sim::new(settings(2));
    let (a, b) = (sim.occupant(0), sim.occupant(1));
    let fx = sim.on(Event::Exited {
        pid: a,
        exit: Exit::Signal(KILL),
        group_alive: false,
        oom_kills: Some(1),
    });
    assert_eq!(exits(&fx)[0].0, ExitReason::Oom);
    // A SIGKILL from outside, the counter unchanged: a signal, not an OOM kill.
    let fx = sim.on(Event::Exited {
        pid: b,
        exit: Exit::Signal(KILL),
        group_alive: false,
        oom_kills: Some(1),
    });
    assert_eq!(exits(&fx)[0].0, ExitReason::Signal);
}

#[test]
fn forwarded_signals_reach_every_worker_and_draining_group() {
    let mut sim = Sim::new(settings(2));
    let (a, b) = (sim.occupant(0), sim.occupant(1));
    sim.exit_group(a, Exit::Code(1), true);
    let fx = sim.on(Event::Signal(libc::SIGUSR1));
    let got = signals(&fx);
    assert!(
        got.contains(&(b, libc::SIGUSR1)) && got.contains(&(a, libc::SIGUSR1)),
        "{got:?}"
    );
}

#[test]
fn an_idle_pool_sleeps() {
    let mut s = settings(2);
    s.give_up_after = None;
    let sim = Sim::new(s);
    assert_eq!(sim.pool.next_deadline(sim.now), None);
}

#[test]
fn the_serving_set_follows_every_transition() {
    let mut s = settings(2);
    s.ready = ReadyMode::Notify;
    let mut sim = Sim::new(s);
    let (a, b) = (sim.occupant(0), sim.occupant(1));
    let serving = |fx: &[Effect]| {
        fx.iter().rev().find_map(|e| match e {
            Effect::Serving(s) => Some(s.clone()),
            _ => None,
        })
    };
    assert_eq!(serving(&sim.ready(a)), Some(vec![0]));
    assert_eq!(serving(&sim.ready(b)), Some(vec![0, 1]));
    assert_eq!(serving(&sim.exit(a, Exit::Code(1))), Some(vec![1]));
    assert_eq!(serving(&sim.on(Event::Signal(TERM))), Some(vec![]));
}

// --- issue 12: stalls, parking, the final stop ------------------------------------------------

#[test]
fn a_serving_slot_whose_queue_does_not_shrink_is_taken_out_and_replaced() {
    let mut s = settings(2);
    s.stall_timeout = Some(Duration::from_secs(2));
    let mut sim = Sim::new(s);
    let b = sim.occupant(1);
    // Samples are asked for while slots serve.
    let fx = sim.advance(MS(500));
    assert!(fx.contains(&Effect::SampleQueues), "{fx:?}");
    // Slot 0 works through its queue; slot 1's only grows.
    let mut fx = Vec::new();
    for (t, q0, q1) in [
        (0, 5, 3),
        (500, 2, 4),
        (1000, 6, 4),
        (1500, 1, 9),
        (2000, 4, 9),
    ] {
        sim.now += MS(if t == 0 { 0 } else { 500 });
        fx = sim.on(Event::Queues(vec![(0, q0), (1, q1)]));
        if t < 2000 {
            assert!(signals(&fx).is_empty(), "at {t} ms: {fx:?}");
        }
    }
    assert_eq!(signals(&fx), vec![(b, TERM)]);
    assert!(reports(&fx).iter().any(|r| matches!(
        r,
        Report::Stalled {
            slot: 1,
            queued: 9,
            ..
        }
    )));
    // Out of steering at once, and a successor comes after the (reset) backoff.
    assert_eq!(sim.pool.serving(), [0]);
    let fx = sim.run_for(MS(300));
    assert_eq!(spawns(&fx), vec![1]);
    let fx = sim.exit(b, Exit::Signal(KILL));
    assert_eq!(exits(&fx)[0], (ExitReason::Stalled, Then::Gone));
}

#[test]
fn an_empty_or_moving_queue_is_never_a_stall() {
    let mut s = settings(1);
    s.stall_timeout = Some(Duration::from_secs(1));
    let mut sim = Sim::new(s);
    for i in 0..40u32 {
        sim.now += MS(250);
        // Busy but accepting: the length dips now and then.
        let fx = sim.on(Event::Queues(vec![(
            0,
            if i % 3 == 0 { 0 } else { 50 + i },
        )]));
        assert!(signals(&fx).is_empty(), "{fx:?}");
    }
}

#[test]
fn with_tcp_migrate_req_a_slot_down_for_long_closes_its_socket() {
    let mut s = settings(2);
    s.migrate = true;
    let mut sim = Sim::new(s);
    // Down for at most the first backoff (250ms): its successor serves the queue itself.
    let b = sim.occupant(1);
    let fx = sim.exit(b, Exit::Code(1));
    assert!(restart_delay(&fx) < PARK_AFTER);
    assert!(!fx.contains(&Effect::Park(1)));
    // Each failure doubles the delay: from PARK_AFTER on, the socket closes.
    for _ in 0..4 {
        sim.run_for(Duration::from_secs(5));
        let b = sim.occupant(1);
        let fx = sim.exit(b, Exit::Code(1));
        assert_eq!(
            fx.contains(&Effect::Park(1)),
            restart_delay(&fx) >= PARK_AFTER,
            "{fx:?}"
        );
    }
    // A first backoff that long parks at the first failure (a slot held down for seconds).
    let mut s = settings(2);
    s.migrate = true;
    s.backoff.initial = Duration::from_secs(4);
    s.backoff.max = Duration::from_secs(4);
    let mut sim = Sim::new(s);
    let b = sim.occupant(1);
    assert!(sim.exit(b, Exit::Code(1)).contains(&Effect::Park(1)));
}

#[test]
fn the_pool_stop_closes_the_listeners_but_a_reload_does_not() {
    let mut sim = Sim::new(settings(1));
    let fx = sim.on(Event::Signal(libc::SIGHUP));
    assert!(!fx.contains(&Effect::CloseListeners));
    let fx = sim.on(Event::Signal(TERM));
    assert!(fx.contains(&Effect::CloseListeners));
}

// --- issue 14: the budget while the pool runs ---------------------------------------------------

fn budget(sim: &mut Sim, max: u32) -> Vec<Effect> {
    sim.on(Event::Budget {
        max,
        detail: format!("{max} CPUs"),
    })
}

#[test]
fn a_new_budget_resizes_the_pool_once_two_reads_agree() {
    let mut s = settings(1);
    s.budget_interval = Some(Duration::from_secs(5));
    let mut sim = Sim::new(s);
    let fx = sim.advance(Duration::from_secs(5));
    assert!(fx.contains(&Effect::ReadBudget));
    assert!(
        spawns(&budget(&mut sim, 3)).is_empty(),
        "one read is not enough"
    );
    let fx = budget(&mut sim, 3);
    assert_eq!(spawns(&fx), vec![1, 2]);
    assert!(reports(&fx).iter().any(|r| matches!(
        r,
        Report::Scaled {
            from: 1,
            to: 3,
            why: ScaleWhy::Budget,
            detail: Some(_),
            ..
        }
    )));
    // Down to 2: the highest slot leaves gracefully.
    budget(&mut sim, 2);
    let fx = budget(&mut sim, 2);
    assert!(fx.contains(&Effect::CloseSlot(2)));
    assert_eq!(sim.pool.slots().len(), 2);
}

#[test]
fn a_budget_flapping_around_an_edge_never_churns_workers() {
    let mut s = settings(2);
    s.budget_interval = Some(Duration::from_secs(1));
    let mut sim = Sim::new(s);
    for i in 0..20 {
        let fx = budget(&mut sim, if i % 2 == 0 { 1 } else { 2 });
        assert!(spawns(&fx).is_empty() && !fx.iter().any(|e| matches!(e, Effect::CloseSlot(_))));
    }
    assert_eq!(sim.pool.slots().len(), 2);
}

#[test]
fn a_manual_scale_holds_until_the_budget_changes_again() {
    let mut s = settings(2);
    s.budget_interval = Some(Duration::from_secs(1));
    let mut sim = Sim::new(s);
    sim.on(Event::Signal(libc::SIGTTIN));
    assert_eq!(sim.pool.slots().len(), 3);
    // The budget still says 2: nothing changes, the manual size holds.
    for _ in 0..4 {
        budget(&mut sim, 2);
    }
    assert_eq!(sim.pool.slots().len(), 3);
    // A new budget wins.
    budget(&mut sim, 4);
    budget(&mut sim, 4);
    assert_eq!(sim.pool.slots().len(), 4);
}

#[test]
fn without_a_budget_interval_the_budget_is_never_read() {
    let mut s = settings(1);
    s.give_up_after = None;
    let sim = Sim::new(s);
    assert_eq!(sim.pool.next_deadline(sim.now), None);
}

#[test]
fn a_successors_stall_clock_starts_when_it_is_ready() {
    let mut s = settings(1);
    s.stall_timeout = Some(Duration::from_secs(2));
    s.ready = ReadyMode::Notify;
    let mut sim = Sim::new(s);
    let a = sim.occupant(0);
    sim.ready(a);
    for _ in 0..5 {
        sim.now += MS(500);
        sim.on(Event::Queues(vec![(0, 7)]));
    }
    assert!(!sim.pool.is_worker(a) || matches!(sim.state(0), SlotState::Waiting { .. }));
    sim.run_for(MS(300));
    let b = sim.occupant(0);
    // The successor boots for 3 s while the old queue waits: not its stall.
    sim.advance(Duration::from_secs(3));
    sim.ready(b);
    sim.now += MS(500);
    let fx = sim.on(Event::Queues(vec![(0, 7)]));
    assert!(signals(&fx).is_empty(), "{fx:?}");
    // Not accepting for 2 s after it was ready: that is its stall.
    sim.now += MS(2000);
    let fx = sim.on(Event::Queues(vec![(0, 7)]));
    assert_eq!(signals(&fx), vec![(b, TERM)]);
}

// A crash long ago must not count towards giving up once the slot has served since: a pool of
// one worker that crashed once, then served for hours, recycles or hangs, and keeps running.
#[test]
fn a_crash_long_ago_does_not_make_a_later_recycle_give_up() {
    let mut sim = Sim::with(settings(1), false);
    let a = sim.occupant(0);
    sim.on(Event::Execed { pid: a });
    sim.exit(a, Exit::Code(1));
    sim.advance(Duration::from_secs(1));
    let b = sim.occupant(0);
    sim.on(Event::Execed { pid: b });
    sim.advance(Duration::from_secs(7200));
    let fx = sim.exit(b, Exit::Code(0));
    assert_eq!(exits(&fx)[0].0, ExitReason::Recycled);
    // The successor's exec is not confirmed yet.
    let fx = sim.on(Event::Tick);
    assert!(!gave_up(&fx), "a healthy pool gave up: {:?}", reports(&fx));
}

#[test]
fn a_crash_long_ago_does_not_make_a_later_watchdog_stop_give_up() {
    let mut s = settings(1);
    s.watchdog = Some(Duration::from_secs(10));
    let mut sim = Sim::new(s);
    let a = sim.occupant(0);
    sim.exit(a, Exit::Code(1));
    sim.advance(Duration::from_secs(1));
    let b = sim.occupant(0);
    for _ in 0..720 {
        sim.advance(Duration::from_secs(5));
        sim.on(Event::Notify {
            pid: b,
            notices: vec![Notice::Watchdog],
        });
    }
    let fx = sim.advance(Duration::from_secs(11));
    assert!(signals(&fx).contains(&(b, libc::SIGABRT)));
    assert!(
        !gave_up(&fx),
        "gave up instead of restarting the hung worker: {:?}",
        reports(&fx)
    );
}

#[test]
fn a_reload_also_replaces_a_worker_that_was_starting_when_it_began() {
    let mut s = settings(2);
    s.ready = ReadyMode::Notify;
    let mut sim = Sim::new(s);
    let (a, b) = (sim.occupant(0), sim.occupant(1));
    sim.ready(a);
    assert!(matches!(sim.state(1), SlotState::Starting(w) if w.generation == 1));
    sim.on(Event::Signal(libc::SIGHUP));
    let a2 = sim.in_slot(0)[1];
    sim.ready(a2);
    sim.exit(a, Exit::Signal(TERM));
    // Slot 1's worker of generation 1 becomes ready only now.
    sim.ready(b);
    assert!(
        !reports(&sim.log)
            .iter()
            .any(|r| matches!(r, Report::ReloadComplete { .. })),
        "complete while slot 1 runs generation 1"
    );
    let b2 = sim.in_slot(1)[1];
    sim.ready(b2);
    sim.exit(b, Exit::Signal(TERM));
    sim.run_for(Duration::from_secs(5));
    assert!(reports(&sim.log)
        .iter()
        .any(|r| matches!(r, Report::ReloadComplete { generation: 2 })));
    assert_eq!(sim.state(1).occupant().map(|w| w.generation), Some(2));
}

// With `--ready started` a successor takes over at its exec: a new version that then dies on
// its config stops the rollout, so the other slots keep the old version serving.
#[test]
fn a_successor_that_crashes_right_after_taking_over_stops_the_rollout() {
    let mut sim = Sim::new(settings(3));
    let (a, b) = (sim.occupant(0), sim.occupant(1));
    sim.on(Event::Signal(libc::SIGHUP));
    let a2 = sim.occupant(0);
    assert_ne!(a2, a);
    let fx = sim.exit(a2, Exit::Code(1));
    assert!(matches!(exits(&fx)[0].1, Then::Restart { .. }));
    assert!(reports(&fx)
        .iter()
        .any(|r| matches!(r, Report::ReloadAbandoned { slot: 0, .. })));
    sim.exit(a, Exit::Signal(TERM));
    sim.run_for(Duration::from_secs(5));
    assert!(
        matches!(sim.state(1), SlotState::Serving(w) if w.pid == b),
        "slot 1's healthy worker was replaced: {:?}",
        sim.state(1)
    );
}

#[test]
fn a_zero_initial_backoff_still_bounds_the_restart_rate() {
    let mut s = settings(1);
    s.backoff.initial = Duration::ZERO;
    s.give_up_after = None;
    let mut sim = Sim::new(s);
    let a = sim.occupant(0);
    let mut forks = spawns(&sim.exit(a, Exit::Code(1))).len();
    forks += spawns(&sim.on(Event::Tick)).len();
    assert_eq!(forks, 0, "a crashing worker restarted in zero time");
    // Crashing at once, for a second: one start per MIN_START_GAP at most.
    for _ in 0..100 {
        forks += spawns(&sim.advance(MS(10))).len();
        if let Some(pid) = sim.state(0).occupant().map(|w| w.pid) {
            forks += spawns(&sim.exit(pid, Exit::Code(1))).len();
        }
    }
    assert!((10..=21).contains(&forks), "{forks} starts in a second");
}

// A preStop hook's `cluster-init ctl stop`, then the kubelet's SIGTERM: one graceful stop.
#[test]
fn the_first_term_after_a_stop_command_is_not_a_second_term() {
    let mut sim = Sim::new(settings(2));
    sim.on(Event::Command(Command::Stop));
    sim.advance(MS(10));
    let fx = sim.on(Event::Signal(TERM));
    assert!(
        signals(&fx).iter().all(|&(_, s)| s != KILL),
        "the graceful stop was cut short: {:?}",
        signals(&fx)
    );
    // A second TERM still means now.
    let fx = sim.on(Event::Signal(TERM));
    assert!(signals(&fx).iter().any(|&(_, s)| s == KILL), "{fx:?}");
}

// A stall restarts the slot only where the restart policy would restart a failed worker.
#[test]
fn a_stall_under_restart_never_ends_the_slot() {
    let mut s = settings(1);
    s.restart = RestartPolicy::Never;
    s.stall_timeout = Some(Duration::from_secs(2));
    let mut sim = Sim::new(s);
    let a = sim.occupant(0);
    sim.on(Event::Queues(vec![(0, 3)]));
    sim.now += MS(2500);
    let fx = sim.on(Event::Queues(vec![(0, 3)]));
    assert_eq!(signals(&fx), vec![(a, TERM)]);
    let fx = sim.exit(a, Exit::Signal(TERM));
    assert!(spawns(&fx).is_empty(), "restarted under --restart never");
    sim.run_for(Duration::from_secs(5));
    assert!(spawns(&sim.log).len() == 1, "{:?}", spawns(&sim.log));
}

#[test]
fn a_zero_ready_timeout_means_no_limit() {
    let mut s = settings(1);
    s.ready = ReadyMode::Notify;
    s.ready_timeout = Duration::ZERO;
    let mut sim = Sim::new(s);
    let a = sim.occupant(0);
    let fx = sim.run_for(Duration::from_secs(600));
    assert!(signals(&fx).is_empty(), "{fx:?}");
    assert!(matches!(sim.state(0), SlotState::Starting(w) if w.pid == a));
}

// Giving up, memory-cap entries and abandoned steps during reloads.

// A crash long ago, hours of service, then a reload during which the old worker recycles by
// itself while its successor still starts: the slot is Starting, its failing_since is the old
// crash, so the pool gives up.
#[test]
fn an_old_crash_does_not_give_up_when_the_replaced_worker_recycles_during_a_reload() {
    let mut s = settings(1);
    s.ready = ReadyMode::Notify;
    let mut sim = Sim::new(s);
    let a = sim.occupant(0);
    sim.exit(a, Exit::Code(1));
    sim.advance(Duration::from_secs(1));
    let b = sim.occupant(0);
    sim.ready(b);
    sim.advance(Duration::from_secs(7200));
    sim.on(Event::Signal(libc::SIGHUP));
    assert_eq!(sim.in_slot(0).len(), 2);
    // The old worker exits 0 by itself (max-requests recycle) while b2 starts.
    let fx = sim.exit(b, Exit::Code(0));
    assert_eq!(exits(&fx)[0].1, Then::Replaced);
    let fx = sim.on(Event::Tick);
    assert!(!gave_up(&fx), "gave up during a reload: {:?}", reports(&fx));
}

// Same, through the takeover: the new release's first crash gives the pool up at once
// instead of after --give-up-after.
#[test]
fn an_old_crash_does_not_make_the_first_crash_after_a_reload_give_up() {
    let mut sim = Sim::new(settings(1));
    let a = sim.occupant(0);
    sim.exit(a, Exit::Code(1));
    sim.advance(Duration::from_secs(1));
    let b = sim.occupant(0);
    sim.advance(Duration::from_secs(7200));
    sim.on(Event::Signal(libc::SIGHUP));
    let b2 = sim.occupant(0);
    assert_ne!(b2, b);
    sim.exit(b, Exit::Signal(TERM));
    sim.advance(MS(10));
    let fx = sim.exit(b2, Exit::Code(1));
    assert!(matches!(exits(&fx)[0].1, Then::Restart { .. }));
    let fx = sim.on(Event::Tick);
    assert!(!gave_up(&fx), "one crash gave up: {:?}", reports(&fx));
}

// A slot queued for the memory cap is not queued again by a reload; if its worker restarted
// (old generation, still starting) before its turn, the memory-cap entry is dropped and the
// reload completes with that slot on the old generation.
#[test]
fn a_reload_replaces_a_starting_slot_that_was_queued_for_the_memory_cap() {
    let mut s = settings(2);
    s.ready = ReadyMode::Notify;
    s.memory_cap = Some((1000, Duration::from_secs(3600)));
    let mut sim = Sim::new(s);
    let (a, b) = (sim.occupant(0), sim.occupant(1));
    sim.ready(a);
    sim.ready(b);
    sim.on(Event::Memory(vec![(a, 2000), (b, 2000)]));
    let a2 = sim.in_slot(0)[1];
    // Slot 1's worker crashes while it waits for its turn, and restarts (generation 1).
    sim.exit(b, Exit::Code(1));
    sim.advance(Duration::from_secs(1));
    let b1 = sim.occupant(1);
    assert!(matches!(sim.state(1), SlotState::Starting(w) if w.generation == 1));
    sim.on(Event::Signal(libc::SIGHUP));
    sim.ready(a2);
    sim.exit(a, Exit::Signal(TERM));
    let a3 = sim.in_slot(0)[1];
    sim.ready(a3);
    sim.exit(a2, Exit::Signal(TERM));
    sim.ready(b1);
    sim.run_for(Duration::from_secs(5));
    let complete = reports(&sim.log)
        .iter()
        .any(|r| matches!(r, Report::ReloadComplete { generation: 2 }));
    assert!(
        !complete || sim.state(1).occupant().map(|w| w.generation) == Some(2),
        "reload complete while slot 1 runs {:?}",
        sim.state(1)
    );
}

// After an abandoned rollout whose replaced worker is still leaving, the next reload starts
// its first step at once: two extra workers.
#[test]
fn a_reload_after_an_abandoned_one_waits_for_the_worker_still_leaving() {
    let mut sim = Sim::new(settings(2));
    let a = sim.occupant(0);
    sim.on(Event::Signal(libc::SIGHUP));
    let a2 = sim.occupant(0);
    assert_ne!(a2, a);
    // a got TERM and is still draining; a2 dies at once: the reload is abandoned.
    sim.exit(a2, Exit::Code(1));
    let fx = sim.on(Event::Signal(libc::SIGHUP));
    assert!(
        spawns(&fx).is_empty(),
        "a step began while {a} (the last step's old worker) still runs: {fx:?}"
    );
}
