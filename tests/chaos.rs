//! Quick fault scenarios against the built binary: workers SIGKILLed under load, a storm of
//! signals, a thousand orphans dying at once, workers that close their stdio, a crash loop.
//! Each runs in a few seconds with bounded waits; what must hold is that the pool comes back,
//! nothing is left unreaped, and the init stays up, responsive and nearly idle throughout.

mod common;

use std::time::{Duration, Instant};

use common::{
    children, cpu_time, free_port, http_get, lines, py_server, scratch, wait_for, zombie_children,
    Init, Load, Mode,
};

const BOTH: [Mode; 2] = [Mode::Pid1, Mode::Subreaper];
const LONG: Duration = Duration::from_secs(10);

fn sh(script: &str) -> Vec<String> {
    vec!["--".into(), "sh".into(), "-c".into(), script.into()]
}

fn start(mode: Mode, opts: &[&str], command: &[String]) -> Option<Init> {
    let mut args: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
    args.extend_from_slice(command);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Init::start(mode, &args, &[])
}

/// A small xorshift generator: the kill schedule varies from run to run, and its seed is in
/// every failure message so a run can be repeated.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos());
        Dice(u64::from(nanos) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: plain syscall.
    unsafe { libc::kill(pid, sig) };
}

#[test]
fn sigkill_storm_under_load_loses_only_the_killed_workers_connections() {
    const WORKERS: usize = 4;
    const CLIENTS: usize = 8;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut command = vec!["--".to_string()];
    command.extend(py_server());
    let Some(mut init) = start(
        Mode::Subreaper,
        &[
            "-w",
            "4",
            "--listen",
            &addr,
            "--backoff-initial",
            "20ms",
            "--backoff-max",
            "100ms",
        ],
        &command,
    ) else {
        return;
    };
    init.wait_workers(WORKERS, LONG);
    wait_for(LONG, || http_get(&addr, "/", Duration::from_secs(2)).ok())
        .unwrap_or_else(|| panic!("the pool never served; log:\n{}", init.log()));

    let mut dice = Dice::new();
    let seed = dice.0;
    let load = Load::start(&addr, CLIENTS);
    let mut kills = 0;
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200 + dice.below(100)));
        let workers = init.workers();
        if let Some(&victim) = workers.get(dice.below(workers.len() as u64) as usize) {
            kill(victim, libc::SIGKILL);
            kills += 1;
        }
    }
    let (ok, errors) = load.finish();

    // Every slot is back, and every killed worker was reaped.
    init.wait_workers(WORKERS, LONG);
    let reaped = wait_for(Duration::from_secs(2), || {
        zombie_children(init.pid()).is_empty().then_some(())
    });
    assert!(
        reaped.is_some(),
        "zombies left: {:?}",
        zombie_children(init.pid())
    );

    let rate = errors.len() as f64 / (ok + errors.len()).max(1) as f64;
    let summary = format!(
        "seed {seed}: {kills} kills, {ok} ok, {} errors ({:.2}%), e.g. {:?}",
        errors.len(),
        rate * 100.0,
        &errors[..errors.len().min(5)]
    );
    assert!(kills >= 8, "the storm was too gentle: {summary}");
    // Each client has one connection open at a time, so a kill can break at most one per client:
    // the ones the killed worker had accepted. Connections queued on the socket wait for the
    // replacement (the init holds the socket), so none is refused.
    assert!(errors.len() <= kills * CLIENTS, "{summary}");
    let refused: Vec<_> = errors.iter().filter(|e| e.starts_with("connect")).collect();
    assert!(
        refused.is_empty(),
        "the listening socket refused connections: {refused:?}; {summary}"
    );
    assert!(
        ok >= 50 && ok >= 10 * errors.len(),
        "too few requests served: {summary}"
    );
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0), "log:\n{}", init.log());
}

#[test]
fn a_storm_of_forwarded_signals_leaves_the_init_up_responsive_and_idle() {
    for mode in BOTH {
        let dir = scratch();
        let out = dir.path().display();
        let rt = libc::SIGRTMIN() + 3;
        // The workers shrug off USR1 and the real-time signal (their `sleep` dies of it, the loop
        // starts another); USR2 proves afterwards that forwarding still works.
        let script = format!(
            "trap : USR1
             trap : {rt}
             trap 'echo usr2 >> {out}/usr2-$CLUSTER_WORKER_ID' USR2
             trap 'exit 0' TERM
             echo up >> {out}/up
             while :; do sleep 0.05; done"
        );
        let Some(mut init) = start(mode, &["-w", "2"], &sh(&script)) else {
            return;
        };
        let workers = init.wait_workers(2, LONG);
        wait_for(LONG, || {
            (lines(&dir.path().join("up")).len() == 2).then_some(())
        })
        .expect("workers up");

        let pid = init.pid();
        let cpu_before = cpu_time(pid).expect("init's cpu time");
        let t = Instant::now();
        for i in 0..5000 {
            kill(pid, libc::SIGUSR1);
            if i % 500 == 0 {
                kill(pid, rt);
            }
        }
        let storm = t.elapsed();
        // Let the init drain what is pending; a loop stuck on the storm would keep burning here.
        std::thread::sleep(Duration::from_secs(1));
        let cpu = cpu_time(pid).expect("init's cpu time") - cpu_before;
        let wall = t.elapsed();

        assert!(
            init.wait(Duration::ZERO).is_none(),
            "{mode:?}: the init died in the storm; log:\n{}",
            init.log()
        );
        let mut now = init.workers();
        now.sort();
        let mut before = workers.clone();
        before.sort();
        assert_eq!(
            now,
            before,
            "{mode:?}: workers were replaced; log:\n{}",
            init.log()
        );
        assert!(
            cpu < Duration::from_millis(200),
            "{mode:?}: 5000 signals in {storm:?} cost the init {cpu:?} of CPU in {wall:?}"
        );

        init.signal(libc::SIGUSR2);
        let heard = wait_for(LONG, || {
            let both = (0..2).all(|id| !lines(&dir.path().join(format!("usr2-{id}"))).is_empty());
            both.then_some(())
        });
        assert!(
            heard.is_some(),
            "{mode:?}: a signal after the storm was not forwarded; log:\n{}",
            init.log()
        );

        let t = Instant::now();
        init.signal(libc::SIGTERM);
        assert_eq!(init.wait(LONG), Some(0), "{mode:?}; log:\n{}", init.log());
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{mode:?}: stop took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn a_thousand_orphans_dying_at_once_are_all_reaped() {
    for mode in BOTH {
        // A helper starts a thousand `sleep`s and exits: a thousand orphans, adopted by the init
        // at once. They share the worker's process group, so one kill ends them all at once; the
        // worker itself traps the signal and lives on.
        let script = "trap : USR1
             python3 -c 'import os; [os.posix_spawnp(\"sleep\", [\"sleep\", \"1000\"], os.environ) for _ in range(1000)]'
             while :; do sleep 0.05; done";
        let Some(init) = start(mode, &["-w", "1"], &sh(script)) else {
            return;
        };
        let worker = init.wait_workers(1, LONG)[0];
        let adopted = wait_for(LONG, || {
            let n = children(init.pid()).len();
            (n > 1000).then_some(n)
        });
        assert!(
            adopted.is_some(),
            "{mode:?}: orphans were not re-parented to the init ({} children)",
            children(init.pid()).len()
        );
        let t = Instant::now();
        kill(-worker, libc::SIGUSR1);
        let reaped = wait_for(LONG, || {
            let kids = children(init.pid());
            (kids == [worker] && zombie_children(init.pid()).is_empty()).then_some(())
        });
        assert!(
            reaped.is_some(),
            "{mode:?}: {} children, {} zombies left after {:?}; log:\n{}",
            children(init.pid()).len(),
            zombie_children(init.pid()).len(),
            t.elapsed(),
            init.log()
        );
    }
}

#[test]
fn workers_that_close_or_redirect_their_stdio_leave_the_init_logging() {
    let dir = scratch();
    let out = dir.path().display();
    // Slot 0 closes stdout and stderr, slot 1 sends them to /dev/null; both then write to them.
    let script = format!(
        "if [ $CLUSTER_WORKER_ID = 0 ]; then exec >&- 2>&-; else exec >/dev/null 2>&1; fi
         echo into the void; echo nobody hears >&2
         echo $CLUSTER_WORKER_ID >> {out}/closed
         trap 'exit 0' TERM
         while :; do sleep 0.05; done"
    );
    let Some(mut init) = start(Mode::Pid1, &["-w", "2"], &sh(&script)) else {
        return;
    };
    let first = init.wait_workers(2, LONG);
    wait_for(LONG, || {
        (lines(&dir.path().join("closed")).len() == 2).then_some(())
    })
    .expect("workers closed their stdio");
    let logged = init.log().len();

    // A rolling reload makes the init log while the new workers close their stdio in turn.
    init.signal(libc::SIGHUP);
    let replaced = wait_for(LONG, || {
        let now = init.workers();
        let fresh = now.len() == 2 && now.iter().all(|w| !first.contains(w));
        (fresh && lines(&dir.path().join("closed")).len() == 4).then_some(())
    });
    assert!(
        replaced.is_some(),
        "the reload did not replace both workers; log:\n{}",
        init.log()
    );
    assert!(
        init.log()[logged..].contains("rolling reload"),
        "the init stopped logging after its workers closed their stdio; log:\n{}",
        init.log()
    );

    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0), "log:\n{}", init.log());
    assert!(
        init.log().contains("cluster-init exiting"),
        "no last word; log:\n{}",
        init.log()
    );
}

#[test]
fn a_crash_loop_gives_up_in_time_at_almost_no_cpu_cost() {
    for mode in BOTH {
        let Some(mut init) = start(
            mode,
            &[
                "-w",
                "2",
                "--give-up-after",
                "2s",
                "--backoff-initial",
                "50ms",
                "--backoff-max",
                "200ms",
            ],
            &sh("exit 3"),
        ) else {
            return;
        };
        let t = Instant::now();
        let pid = init.pid();
        let first = cpu_time(pid).unwrap_or_default();
        let mut last = first;
        // Sample until the init is gone: its last sample is its CPU time for the whole loop.
        let code = loop {
            if let Some(code) = init.wait(Duration::from_millis(50)) {
                break code;
            }
            if let Some(cpu) = cpu_time(pid) {
                last = cpu;
            }
            assert!(
                t.elapsed() < LONG,
                "{mode:?}: still running after {:?}; log:\n{}",
                t.elapsed(),
                init.log()
            );
        };
        let wall = t.elapsed();
        let cpu = last - first;
        assert_eq!(code, 3, "{mode:?}; log:\n{}", init.log());
        assert!(
            wall >= Duration::from_millis(1900) && wall < Duration::from_secs(6),
            "{mode:?}: gave up after {wall:?}"
        );
        let restarts = init.log().matches("restart #").count();
        assert!(
            restarts >= 10,
            "{mode:?}: only {restarts} restarts: not a crash loop; log:\n{}",
            init.log()
        );
        assert!(
            cpu.as_secs_f64() < 0.05 * wall.as_secs_f64(),
            "{mode:?}: the init used {cpu:?} of CPU in {wall:?} ({restarts} restarts)"
        );
    }
}
