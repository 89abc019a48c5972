//! PID 1 duties, run against the built binary as PID 1 of a fresh PID namespace and as a
//! subreaper: reaping, signal delivery to whole process groups, stop timeouts, exit statuses,
//! restarts with backoff, and commands that cannot run.

mod common;

use std::time::{Duration, Instant};

use common::{alive, lines, scratch, status_field, wait_for, zombie_children, Init, Mode};

const BOTH: [Mode; 2] = [Mode::Pid1, Mode::Subreaper];
const LONG: Duration = Duration::from_secs(10);

fn sh(script: &str) -> Vec<String> {
    vec!["--".into(), "sh".into(), "-c".into(), script.into()]
}

fn start(mode: Mode, opts: &[&str], script: &str) -> Option<Init> {
    let mut args: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
    args.extend(sh(script));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Init::start(mode, &args, &[])
}

#[test]
fn hundreds_of_orphans_are_reaped() {
    for mode in BOTH {
        // Each subshell leaves a `sleep` behind and exits: 300 orphans re-parented to the init,
        // all dying within the same few milliseconds.
        // 3 s lives: long enough that all are alive together even on a loaded machine.
        let script = "for i in $(seq 300); do (sleep 3 &); done; exec sleep 1000";
        let Some(init) = start(mode, &["-w", "1"], script) else {
            return;
        };
        let adopted = wait_for(LONG, || {
            let n = common::children(init.pid()).len();
            (n > 250).then_some(n)
        });
        assert!(
            adopted.is_some(),
            "{mode:?}: orphans were not re-parented to the init"
        );
        let reaped = wait_for(LONG, || {
            let kids = common::children(init.pid());
            (kids.len() == 1 && zombie_children(init.pid()).is_empty()).then_some(())
        });
        assert!(
            reaped.is_some(),
            "{mode:?}: {} zombies left; log:\n{}",
            zombie_children(init.pid()).len(),
            init.log()
        );
    }
}

#[test]
fn sigterm_reaches_every_worker_and_its_children() {
    for mode in BOTH {
        let dir = scratch();
        let out = dir.path().display();
        // The worker's own child traps TERM too: it only hears it if the whole group is signalled.
        let script = format!(
            "sh -c 'trap \"echo child-$CLUSTER_WORKER_ID >> {out}/got; exit 0\" TERM; echo up >> {out}/up; while :; do sleep 0.05; done' &
             trap 'echo worker-$CLUSTER_WORKER_ID >> {out}/got; wait; exit 0' TERM
             echo up >> {out}/up
             while :; do sleep 0.05; done"
        );
        let Some(mut init) = start(mode, &["-w", "2"], &script) else {
            return;
        };
        // Workers and their children all have their traps in place.
        wait_for(LONG, || {
            (lines(&dir.path().join("up")).len() == 4).then_some(())
        })
        .expect("workers up");
        init.signal(libc::SIGTERM);
        let code = init.wait(LONG).expect("init exits after SIGTERM");
        let mut got = lines(&dir.path().join("got"));
        got.sort();
        assert_eq!(
            got,
            ["child-0", "child-1", "worker-0", "worker-1"],
            "{mode:?}; log:\n{}",
            init.log()
        );
        assert_eq!(
            code,
            0,
            "{mode:?}: clean stop must exit 0; log:\n{}",
            init.log()
        );
    }
}

#[test]
fn death_by_the_stop_signal_is_a_clean_stop() {
    // No trap: sh dies of SIGTERM itself. That is what was asked for, so the status is 0, not 143.
    let Some(mut init) = start(Mode::Pid1, &["-w", "2"], "exec sleep 1000") else {
        return;
    };
    init.wait_workers(2, LONG);
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0), "log:\n{}", init.log());
}

#[test]
fn failing_stop_reports_the_workers_status() {
    let dir = scratch();
    let up = dir.path().join("up");
    let Some(mut init) = start(
        Mode::Pid1,
        &["-w", "1"],
        &format!(
            "trap 'exit 3' TERM; touch {}; while :; do sleep 0.05; done",
            up.display()
        ),
    ) else {
        return;
    };
    // The trap is in place only once the file is there.
    wait_for(LONG, || up.exists().then_some(())).expect("worker up");
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(3), "log:\n{}", init.log());
}

#[test]
fn stubborn_worker_is_killed_after_timeout() {
    for mode in BOTH {
        let Some(mut init) = start(
            mode,
            &["-w", "1", "--stop-timeout", "1s"],
            "trap '' TERM; while :; do sleep 0.05; done",
        ) else {
            return;
        };
        let worker = init.wait_workers(1, LONG)[0];
        let t = Instant::now();
        init.signal(libc::SIGTERM);
        let code = init.wait(LONG);
        let took = t.elapsed();
        assert_eq!(code, Some(137), "{mode:?}; log:\n{}", init.log());
        assert!(
            took >= Duration::from_millis(900),
            "{mode:?}: killed too early ({took:?})"
        );
        assert!(
            took < Duration::from_secs(4),
            "{mode:?}: stop took {took:?}"
        );
        assert!(!alive(worker), "{mode:?}: worker survived");
    }
}

#[test]
fn second_sigterm_or_sigquit_stops_now() {
    for sigs in [&[libc::SIGTERM, libc::SIGTERM][..], &[libc::SIGQUIT][..]] {
        let Some(mut init) = start(
            Mode::Pid1,
            &["-w", "2", "--stop-timeout", "20s"],
            "trap '' TERM; while :; do sleep 0.05; done",
        ) else {
            return;
        };
        init.wait_workers(2, LONG);
        let t = Instant::now();
        for &s in sigs {
            init.signal(s);
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(init.wait(LONG), Some(137), "{sigs:?}; log:\n{}", init.log());
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{sigs:?}: took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn other_signals_are_forwarded_to_every_group() {
    let dir = scratch();
    let out = dir.path().display();
    let rtmin3 = libc::SIGRTMIN() + 3;
    let script = format!(
        "trap 'echo usr1-$CLUSTER_WORKER_ID >> {out}/got' USR1
         trap 'echo rt-$CLUSTER_WORKER_ID >> {out}/got' {rtmin3}
         trap 'echo hup-$CLUSTER_WORKER_ID >> {out}/got' HUP
         echo up >> {out}/up
         while :; do sleep 0.05; done"
    );
    let Some(init) = start(Mode::Pid1, &["-w", "2", "--hup", "forward"], &script) else {
        return;
    };
    wait_for(LONG, || {
        (lines(&dir.path().join("up")).len() == 2).then_some(())
    })
    .expect("up");
    for sig in [libc::SIGUSR1, rtmin3, libc::SIGHUP] {
        init.signal(sig);
        std::thread::sleep(Duration::from_millis(150));
    }
    let got = wait_for(LONG, || {
        let mut got = lines(&dir.path().join("got"));
        got.sort();
        (got.len() == 6).then_some(got)
    });
    assert_eq!(
        got.as_deref(),
        Some(&["hup-0", "hup-1", "rt-0", "rt-1", "usr1-0", "usr1-1"].map(String::from)[..]),
        "log:\n{}",
        init.log()
    );
}

#[test]
fn workers_start_with_clean_signal_state_in_their_own_group() {
    let Some(init) = start(Mode::Subreaper, &["-w", "1"], "exec sleep 1000") else {
        return;
    };
    let w = init.wait_workers(1, LONG)[0];
    for key in ["SigBlk", "SigIgn"] {
        let v = status_field(w, key).expect(key);
        assert!(v.chars().all(|c| c == '0'), "{key} = {v}");
    }
    assert_eq!(
        common::stat_field(w, 5),
        Some(w.to_string()),
        "worker is not a group leader"
    );
}

#[test]
fn workers_die_with_a_killed_init() {
    let Some(mut init) = start(Mode::Subreaper, &["-w", "2"], "exec sleep 1000") else {
        return;
    };
    let workers = init.wait_workers(2, LONG);
    init.signal(libc::SIGKILL);
    init.wait(LONG);
    let gone = wait_for(LONG, || workers.iter().all(|&w| !alive(w)).then_some(()));
    assert!(
        gone.is_some(),
        "workers outlived a SIGKILLed init (no PDEATHSIG)"
    );
}

#[test]
fn worker_environment_names_the_slot_across_restarts() {
    let dir = scratch();
    let out = dir.path().display();
    let script =
        format!("echo $CLUSTER_WORKER_ID/$CLUSTER_WORKER_COUNT/$CLUSTER_GENERATION >> {out}/env; sleep 0.2; exit 1");
    let Some(_init) = start(
        Mode::Subreaper,
        &[
            "-w",
            "2",
            "--backoff-initial",
            "50ms",
            "--backoff-max",
            "100ms",
        ],
        &script,
    ) else {
        return;
    };
    let env = wait_for(LONG, || {
        let l = lines(&dir.path().join("env"));
        (l.len() >= 6).then_some(l)
    })
    .expect("restarts");
    assert!(env.iter().all(|l| l == "0/2/1" || l == "1/2/1"), "{env:?}");
    assert!(
        env.iter().filter(|l| *l == "0/2/1").count() >= 2,
        "slot 0 was not restarted: {env:?}"
    );
    assert!(
        env.iter().filter(|l| *l == "1/2/1").count() >= 2,
        "slot 1 was not restarted: {env:?}"
    );
}

#[test]
fn crash_loop_is_spaced_by_the_backoff_and_the_init_stays_up() {
    let dir = scratch();
    let out = dir.path().display();
    let script = format!("date +%s%N >> {out}/starts; exit 1");
    let Some(mut init) = start(
        Mode::Pid1,
        &[
            "-w",
            "1",
            "--backoff-initial",
            "100ms",
            "--backoff-max",
            "800ms",
            "--give-up-after",
            "0",
        ],
        &script,
    ) else {
        return;
    };
    let starts: Vec<u128> = wait_for(Duration::from_secs(15), || {
        let l = lines(&dir.path().join("starts"));
        (l.len() >= 6).then_some(l)
    })
    .expect("six starts")
    .iter()
    .map(|l| l.parse::<u128>().unwrap() / 1_000_000)
    .collect();
    // Gap k waits at least half (jitter) of min(100ms * 2^k, 800ms).
    for (k, pair) in starts.windows(2).enumerate().take(5) {
        let gap = pair[1] - pair[0];
        let nominal = (100u128 << k).min(800);
        assert!(
            gap >= nominal / 2,
            "gap {k} was {gap}ms, nominal {nominal}ms: {starts:?}"
        );
        assert!(
            gap <= nominal + 300,
            "gap {k} was {gap}ms, nominal {nominal}ms: {starts:?}"
        );
    }
    assert!(
        init.wait(Duration::from_millis(10)).is_none(),
        "the init gave up or died"
    );
    init.signal(libc::SIGTERM);
    assert!(init.wait(LONG).is_some());
}

#[test]
fn a_slot_crash_loop_does_not_delay_another() {
    let dir = scratch();
    let out = dir.path().display();
    // Slot 0 crashes at once, every time; slot 1 runs 300ms lives.
    let script = format!(
        "if [ $CLUSTER_WORKER_ID = 0 ]; then exit 1; fi; date +%s%N >> {out}/one; sleep 0.3; exit 1"
    );
    let Some(_init) = start(
        Mode::Subreaper,
        &[
            "-w",
            "2",
            "--backoff-initial",
            "1s",
            "--backoff-max",
            "2s",
            "--backoff-reset",
            "200ms",
        ],
        &script,
    ) else {
        return;
    };
    // With its own healthy lives (>= reset), slot 1 restarts after ~0.5-1s each time, whatever
    // slot 0's growing delay is.
    let one = wait_for(Duration::from_secs(8), || {
        let l = lines(&dir.path().join("one"));
        (l.len() >= 4).then_some(l)
    });
    assert!(one.is_some(), "slot 1 was held back by slot 0's backoff");
}

#[test]
fn give_up_after_a_crash_loop_exits_non_zero() {
    let Some(mut init) = start(
        Mode::Pid1,
        &[
            "-w",
            "2",
            "--backoff-initial",
            "50ms",
            "--backoff-max",
            "200ms",
            "--give-up-after",
            "1s",
        ],
        "exit 4",
    ) else {
        return;
    };
    let t = Instant::now();
    let code = init.wait(Duration::from_secs(8));
    assert_eq!(code, Some(4), "log:\n{}", init.log());
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "gave up after {:?}",
        t.elapsed()
    );
    assert!(init.log().contains("giving up"), "log:\n{}", init.log());
}

#[test]
fn restart_never_passes_exit_codes_and_signal_deaths_through() {
    for (script, want) in [
        ("exit 0", 0),
        ("exit 7", 7),
        ("kill -USR1 $$", 128 + libc::SIGUSR1),
        ("kill -KILL $$", 137),
    ] {
        for mode in BOTH {
            let Some(mut init) = start(mode, &["-w", "1", "--restart", "never"], script) else {
                return;
            };
            assert_eq!(
                init.wait(LONG),
                Some(want),
                "{script} in {mode:?}; log:\n{}",
                init.log()
            );
        }
    }
    // Several workers: the first non-zero status wins, once all have ended.
    let Some(mut init) = start(
        Mode::Pid1,
        &["-w", "2", "--restart", "never"],
        "if [ $CLUSTER_WORKER_ID = 0 ]; then exit 5; fi; sleep 0.5; exit 6",
    ) else {
        return;
    };
    assert_eq!(init.wait(LONG), Some(5), "log:\n{}", init.log());
}

#[test]
fn restart_on_failure_ends_slots_that_exit_zero() {
    let dir = scratch();
    let out = dir.path().display();
    // First life fails, the second succeeds: the init then exits 0.
    let script = format!(
        "if [ -e {out}/$CLUSTER_WORKER_ID ]; then exit 0; fi; touch {out}/$CLUSTER_WORKER_ID; exit 1"
    );
    let Some(mut init) = start(
        Mode::Subreaper,
        &[
            "-w",
            "2",
            "--restart",
            "on-failure",
            "--backoff-initial",
            "50ms",
        ],
        &script,
    ) else {
        return;
    };
    assert_eq!(init.wait(LONG), Some(0), "log:\n{}", init.log());
    assert_eq!(
        init.log().matches("restart #1").count(),
        2,
        "log:\n{}",
        init.log()
    );
}

#[test]
fn commands_that_cannot_run_are_reported_not_crash_looped() {
    let dir = scratch();
    let plain = dir.path().join("plain-file");
    std::fs::write(&plain, "not a program").unwrap();
    let plain = plain.to_str().unwrap();
    for (cmd, want, reason) in [
        ("./no-such-server", 127, "No such file or directory"),
        ("no-such-server-in-path", 127, "No such file or directory"),
        (plain, 126, "Permission denied"),
    ] {
        for mode in BOTH {
            let Some(mut init) = Init::start(mode, &["-w", "2", "--", cmd], &[]) else {
                return;
            };
            let code = init.wait(LONG);
            let log = init.log();
            assert_eq!(code, Some(want), "{cmd} in {mode:?}; log:\n{log}");
            let line = format!("cannot run {cmd}: {reason}");
            assert!(
                log.lines()
                    .any(|l| l.contains("ERROR") && l.contains(&line)),
                "{mode:?}: missing `{line}`; log:\n{log}"
            );
            assert_eq!(
                log.matches("cannot run").count(),
                1,
                "reported more than once:\n{log}"
            );
        }
    }
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    for (args, env, needle) in [
        (
            &["--workers", "banana", "--", "true"][..],
            None,
            "--workers",
        ),
        (&["--workers", "0", "--", "true"][..], None, "'0'"),
        (&["--workers", "-1", "--", "true"][..], None, "-1"),
        (&["--workers", "1.5", "--", "true"][..], None, "1.5"),
        (
            &["--stop-timeout", "soon", "--", "true"][..],
            None,
            "--stop-timeout",
        ),
        (
            &["--stop-signal", "SIGNOPE", "--", "true"][..],
            None,
            "SIGNOPE",
        ),
        (
            &["--restart", "sometimes", "--", "true"][..],
            None,
            "sometimes",
        ),
        (
            &["--no-such-flag", "--", "true"][..],
            None,
            "--no-such-flag",
        ),
        (&[][..], None, "no command"),
        (
            &["--", "true"][..],
            Some(("CLUSTER_INIT_WORKERS", "banana")),
            "CLUSTER_INIT_WORKERS",
        ),
        (
            &["--", "true"][..],
            Some(("CLUSTER_INIT_STOP_TIMEOUT", "10")),
            "CLUSTER_INIT_STOP_TIMEOUT",
        ),
    ] {
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args(args);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line:\n{err}");
        assert!(err.contains(needle), "{args:?}: `{needle}` not in: {err}");
    }
}

#[test]
fn dry_run_prints_the_plan() {
    // A dry run refuses a command the real run could not run: this one exists.
    let dir = scratch();
    let server = dir.path().join("server");
    std::fs::write(&server, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&server, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(common::bin())
        .current_dir(dir.path())
        .args(["--dry-run", "-w", "3", "--", "./server", "--port", "80"])
        .env("CLUSTER_INIT_RESTART", "never")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(plan["workers"], 3);
    assert_eq!(
        plan["command"],
        serde_json::json!(["./server", "--port", "80"])
    );
    assert_eq!(plan["restart"], "never");
}

#[test]
fn idle_init_sleeps() {
    let Some(init) = start(Mode::Subreaper, &["-w", "2"], "exec sleep 1000") else {
        return;
    };
    init.wait_workers(2, LONG);
    // Let the start settle (exec confirmations, the ready lines) before counting.
    std::thread::sleep(Duration::from_millis(500));
    let switches = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", init.pid())).unwrap();
        s.lines()
            .filter(|l| l.contains("voluntary_ctxt_switches"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    };
    let before = switches();
    std::thread::sleep(Duration::from_secs(2));
    let woke = switches() - before;
    assert!(woke <= 2, "an idle init woke {woke} times in 2 s");
}

#[test]
fn per_worker_cpu_env_gives_each_worker_its_share_unless_set() {
    let dir = scratch();
    let out = dir.path().display();
    let script =
        format!("echo \"$GOMAXPROCS $DOTNET_PROCESSOR_COUNT\" >> {out}/env; exec sleep 1000");
    let mut args: Vec<String> = ["-w", "2", "--cpus", "4", "--per-worker-cpu-env"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(sh(&script));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // DOTNET_PROCESSOR_COUNT is set by the user: it stays as it is.
    let Some(_init) = Init::start(Mode::Subreaper, &args, &[("DOTNET_PROCESSOR_COUNT", "7")])
    else {
        return;
    };
    let env = wait_for(LONG, || {
        let l = lines(&dir.path().join("env"));
        (l.len() == 2).then_some(l)
    })
    .expect("two workers");
    assert_eq!(env, ["2 7", "2 7"], "4 CPUs over 2 workers is 2 each");
}
