//! The supervision core against the real binary: each scenario is a bug the old core had (two
//! workers on one slot, groups left running, recycles taken for crashes, ...) played with real
//! processes, as a subreaper and as PID 1 of a PID namespace. The same scenarios run without
//! processes, with injected time, in `src/pool/tests.rs`.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::cgroup::Cgroup;
use common::{alive, lines, scratch, status_field, wait_for, Init, Load, Mode, Pool};

const BOTH: [Mode; 2] = [Mode::Pid1, Mode::Subreaper];
const LONG: Duration = Duration::from_secs(20);

fn sh(opts: &[&str], script: &str) -> Vec<String> {
    let mut args: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
    args.extend(["--", "sh", "-c", script].map(String::from));
    args
}

fn start(mode: Mode, opts: &[&str], script: &str) -> Option<Init> {
    let args = sh(opts, script);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Init::start(mode, &args, &[])
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: plain syscall on a pid of this test's own processes.
    unsafe { libc::kill(pid, sig) };
}

/// Item 1: old worker O is being replaced, O's watchdog expires, the successor becomes ready,
/// O exits later: nothing may start beside the successor.
#[test]
fn a_replaced_worker_that_hangs_never_ends_up_beside_its_successor() {
    let p = Pool::start(
        &[
            "-w",
            "1",
            "--ready",
            "notify",
            "--watchdog",
            "2s",
            "--stop-timeout",
            "10s",
        ],
        &[
            ("NOTIFY", "1"),
            ("WATCHDOG", "1"),
            // Generation 1 never pings (it hangs); generation 2 does, and is slow to get ready.
            ("PING_GEN", "2"),
            ("READY_DELAY", "3"),
            ("READY_DELAY_GEN", "2"),
            // A hung server takes its time to die of SIGABRT.
            ("ABORT_DELAY", "3"),
        ],
    );
    p.wait_status("one ready worker", |s| s["workers"][0]["state"] == "ready");
    let old = p.init.workers();
    assert_eq!(old.len(), 1);
    p.init.signal(libc::SIGHUP);
    let end = Instant::now() + Duration::from_secs(10);
    let mut saw_old_gone = false;
    while Instant::now() < end {
        let s = p.status();
        let ready = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["slot"] == 0 && w["state"] == "ready")
            .count();
        assert!(
            ready <= 1,
            "two ready workers on slot 0: {s}\nlog:\n{}",
            p.init.log()
        );
        let running = p.init.workers();
        if !alive(old[0]) {
            saw_old_gone = true;
            assert_eq!(
                running.len(),
                1,
                "a worker started beside the successor: {running:?}; {s}\nlog:\n{}",
                p.init.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        saw_old_gone,
        "the old worker never exited; log:\n{}",
        p.init.log()
    );
    let s = p.status();
    assert_eq!(s["workers"][0]["state"], "ready", "{s}");
    assert_eq!(s["workers"][0]["generation"], 2, "{s}");
}

/// `sleep MARKER` processes (not the shells whose scripts name them), with their parent's pid.
fn marked(marker: &str) -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline == format!("sleep\0{marker}\0").as_bytes() && alive(pid) {
            if let Some(ppid) = common::stat_field(pid, 4).and_then(|p| p.parse().ok()) {
                out.push((pid, ppid));
            }
        }
    }
    out
}

/// Item 2: a worker that exits leaves its group behind; the group gets the stop signal at once
/// and SIGKILL after the stop timeout, and the restart does not wait for it.
#[test]
fn a_crashed_workers_process_group_is_drained_stop_signal_then_sigkill() {
    for mode in BOTH {
        let dir = scratch();
        // Unique sleep lengths mark this run's processes (sleep takes fractions).
        let plain = format!("1000.{}1", std::process::id());
        let stubborn = format!("1000.{}2", std::process::id());
        // Each life leaves a plain `sleep` and one that ignores SIGTERM, then crashes.
        let script = format!(
            "sleep {plain} &
             (trap '' TERM; exec sleep {stubborn}) &
             echo $$ >> {}/starts
             sleep 0.3; exit 1",
            dir.path().display()
        );
        let Some(mut init) = start(
            mode,
            &[
                "-w",
                "1",
                "--backoff-initial",
                "100ms",
                "--stop-timeout",
                "2s",
            ],
            &script,
        ) else {
            return;
        };
        let starts = dir.path().join("starts");
        wait_for(LONG, || (lines(&starts).len() >= 3).then_some(()))
            .unwrap_or_else(|| panic!("{mode:?}: no crash loop:\n{}", init.log()));
        // Watch the orphans (members whose leader is gone: re-parented to the init) for 4 s.
        let init_pid = init.pid();
        let mut first_seen: std::collections::HashMap<i32, Instant> = Default::default();
        let mut plain_seen: std::collections::HashMap<i32, Instant> = Default::default();
        let mut lived: Vec<Duration> = Vec::new();
        let orphans = |m: &str| -> Vec<i32> {
            marked(m)
                .into_iter()
                .filter(|(_, pp)| *pp == init_pid)
                .map(|(p, _)| p)
                .collect()
        };
        // Orphans from before we watched are already part way through their grace time.
        let before: Vec<i32> = orphans(&stubborn);
        let end = Instant::now() + Duration::from_secs(4);
        while Instant::now() < end {
            for p in orphans(&plain) {
                let since = *plain_seen.entry(p).or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < Duration::from_millis(500),
                    "{mode:?}: a crashed worker's child was never signalled\n{}",
                    init.log()
                );
            }
            let now: Vec<i32> = orphans(&stubborn);
            for &p in now.iter().filter(|p| !before.contains(p)) {
                first_seen.entry(p).or_insert_with(Instant::now);
            }
            first_seen.retain(|p, since| {
                let here = now.contains(p);
                if !here {
                    lived.push(since.elapsed());
                }
                here
            });
            assert!(
                first_seen
                    .values()
                    .all(|t| t.elapsed() < Duration::from_millis(3500)),
                "{mode:?}: a member that ignores SIGTERM outlived the stop timeout"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !lived.is_empty(),
            "{mode:?}: no stubborn orphan was ever killed"
        );
        // Seen as orphans up to a sampling round late on a loaded machine: well over 1 s of
        // the 2 s grace still shows it was not killed at once.
        assert!(
            lived.iter().all(|d| *d >= Duration::from_millis(1000)),
            "{mode:?}: SIGKILL came before the grace time: {lived:?}"
        );
        init.signal(libc::SIGTERM);
        init.wait(LONG).expect("the init exits");
        for marker in [&plain, &stubborn] {
            let left = wait_for(Duration::from_secs(3), || {
                let m = marked(marker);
                m.is_empty().then_some(())
            });
            if left.is_none() {
                for (p, _) in marked(marker) {
                    kill(p, libc::SIGKILL);
                }
                panic!("{mode:?}: group members outlived cluster-init");
            }
        }
    }
}

/// Item 3: workers that exit 0 after N requests (gunicorn's max_requests) are recycled at
/// once, not backed off, and no request is lost while they are.
#[test]
fn workers_recycled_after_100_requests_each_lose_no_request_and_never_back_off() {
    let p = Pool::start(
        &[
            "-w",
            "2",
            "--give-up-after",
            "10s",
            "--backoff-initial",
            "250ms",
        ],
        &[("EXIT_AFTER", "100")],
    );
    p.wait_status("two ready workers", |s| {
        s["workers"]
            .as_array()
            .is_some_and(|w| w.iter().filter(|w| w["state"] == "ready").count() == 2)
    });
    let load = Load::start(&p.addr, 8);
    wait_for(Duration::from_secs(90), || {
        (p.metric("cluster_init_worker_exits_total{reason=\"recycled\"}") >= Some(20.0))
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "fewer than 20 recycles; {}\nlog:\n{}",
            p.status(),
            p.init.log()
        )
    });
    let (ok, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "{} of {} requests failed: {:?}",
        errors.len(),
        ok + errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(ok >= 2000, "{ok} requests");
    // Replaced at once every time, whatever the machine's load: no backoff at all.
    let delays: Vec<u64> = p
        .init
        .log()
        .lines()
        .filter(|l| l.contains("cluster_init.exit.reason=\"recycled\""))
        .filter_map(|l| {
            let v = l.split("cluster_init.restart.delay_ms=").nth(1)?;
            v.split_whitespace().next()?.parse().ok()
        })
        .collect();
    assert!(delays.len() >= 20, "{delays:?}");
    assert!(delays.iter().all(|&d| d <= 50), "backed off: {delays:?} ms");
    for reason in ["exit_zero", "exit_nonzero", "signal"] {
        let n = p.metric(&format!(
            "cluster_init_worker_exits_total{{reason=\"{reason}\"}}"
        ));
        assert_eq!(n, Some(0.0), "{reason}");
    }
}

/// Item 3: a command that exits 0 at once is restarted about 20 times a second: not backed
/// off (it is no crash), and not spinning either.
#[test]
fn a_command_that_exits_0_at_once_restarts_twenty_times_a_second_at_low_cpu() {
    let admin = format!("127.0.0.1:{}", common::free_port());
    let Some(init) = Init::start(
        Mode::Subreaper,
        &["-w", "1", "--admin-listen", &admin, "--", "true"],
        &[],
    ) else {
        return;
    };
    let restarts = || -> Option<f64> {
        let (_, body) = common::http_get(&admin, "/metrics", Duration::from_secs(2)).ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix("cluster_init_restarts_total ")?.parse().ok())
    };
    let r0 = wait_for(Duration::from_secs(5), restarts).expect("metrics");
    let cpu0 = common::cpu_time(init.pid()).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let r1 = restarts().expect("metrics");
    let cpu = common::cpu_time(init.pid()).unwrap() - cpu0;
    let rate = (r1 - r0) / 3.0;
    assert!(
        (12.0..=22.0).contains(&rate),
        "{rate:.1} restarts/s; log:\n{}",
        init.log()
    );
    assert!(
        cpu < Duration::from_millis(600),
        "init used {cpu:?} of CPU in 3 s"
    );
}

/// Item 4: a worker killed at the ready timeout is a failed start: the backoff grows (a life
/// is counted from readiness), and giving up reports the worker's failure, not our SIGTERM.
#[test]
fn never_ready_workers_back_off_ever_longer_and_the_give_up_status_is_1() {
    let dir = scratch();
    let starts = dir.path().join("starts");
    let script = format!(
        "echo $(date +%s%N) >> {}; exec sleep 1000",
        starts.display()
    );
    let Some(mut init) = start(
        Mode::Subreaper,
        &[
            "-w",
            "1",
            "--ready",
            "notify",
            "--ready-timeout",
            "500ms",
            "--backoff-initial",
            "200ms",
            "--backoff-reset",
            "400ms",
            "--give-up-after",
            "5s",
        ],
        &script,
    ) else {
        return;
    };
    let code = init.wait(Duration::from_secs(30));
    let t: Vec<u64> = lines(&starts)
        .iter()
        .filter_map(|l| l.parse().ok())
        .collect();
    let gaps: Vec<u64> = t.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).collect();
    assert!(gaps.len() >= 4, "starts {gaps:?}; log:\n{}", init.log());
    // Each gap is the 500 ms ready timeout plus the delay: the fourth delay (800-1600 ms) is at
    // least 600 ms longer than the first (100-200 ms); a flat backoff differs by jitter only.
    assert!(
        gaps[3] >= gaps[0] + 400,
        "the backoff did not grow: gaps {gaps:?} ms; log:\n{}",
        init.log()
    );
    assert_eq!(code, Some(1), "give-up status; log:\n{}", init.log());
}

/// Item 5: with a stderr nobody reads (a stalled log collector), a SIGTERM still stops the
/// pool and reaches every worker.
#[test]
fn a_stalled_stderr_never_blocks_the_init() {
    for mode in BOTH {
        let dir = scratch();
        let got = dir.path().join("got");
        // Slot 0 crash-loops (a line per start and exit); slot 1 waits for the stop signal. Its
        // own stderr goes elsewhere: a worker blocked on the full pipe is not what is tested.
        let script = format!(
            "if [ \"$CLUSTER_WORKER_ID\" = 0 ]; then exit 1; fi
             exec 2>/dev/null
             trap 'echo TERM >> {}; exit 0' TERM
             while :; do sleep 0.05; done",
            got.display()
        );
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let args = sh(
            &[
                "-w",
                "2",
                "--log-level",
                "debug",
                "--backoff-initial",
                "10ms",
                "--backoff-max",
                "10ms",
                "--give-up-after",
                "0",
            ],
            &script,
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let Some(mut init) = Init::start_with(mode, &args, &[], |cmd| {
            cmd.stderr(std::process::Stdio::from(write));
        }) else {
            return;
        };
        // Wait until the pipe is full (nobody reads it): over 60 KB, and no longer growing
        // for a second while the init would have more to say.
        let queued = || {
            let mut queued: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int.
            unsafe { libc::ioctl(read.as_raw_fd(), libc::FIONREAD, &mut queued) };
            queued
        };
        let mut last = (0, Instant::now());
        let full = wait_for(Duration::from_secs(20), || {
            let q = queued();
            if q != last.0 {
                last = (q, Instant::now());
            }
            (q >= 60_000 && last.1.elapsed() >= Duration::from_secs(1)).then_some(())
        });
        assert!(full.is_some(), "{mode:?}: stderr never filled up");
        init.signal(libc::SIGTERM);
        let code = init.wait(Duration::from_secs(5));
        let state = match code {
            Some(_) => String::new(),
            None => {
                let pid = init.pid();
                let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan"));
                format!(
                    "state {:?}, waiting in {wchan:?}",
                    common::stat_field(pid, 3)
                )
            }
        };
        drop(read);
        assert!(
            code.is_some(),
            "{mode:?}: a SIGTERM did not stop an init whose stderr is full ({state})"
        );
        assert_eq!(
            lines(&got),
            ["TERM"],
            "{mode:?}: slot 1 never heard the stop"
        );
    }
}

/// Item 6: servers re-send READY=1 with every STATUS= update: the worker is ready once, and
/// its status text is shown.
#[test]
fn repeated_ready_counts_once_and_the_status_text_is_kept() {
    let admin = format!("127.0.0.1:{}", common::free_port());
    let code = "import os, socket, time
a = os.environ['NOTIFY_SOCKET']
a = chr(0) + a[1:] if a[0] == '@' else a
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for i in range(10):
    s.sendto(('READY=1\\nSTATUS=%d requests' % i).encode(), a)
    time.sleep(0.05)
time.sleep(1000)";
    let Some(init) = Init::start(
        Mode::Subreaper,
        &[
            "-w",
            "1",
            "--ready",
            "notify",
            "--admin-listen",
            &admin,
            "--log-format",
            "json",
            "--",
            "python3",
            "-c",
            code,
        ],
        &[],
    ) else {
        return;
    };
    let status = wait_for(LONG, || {
        let (_, body) = common::http_get(&admin, "/status", Duration::from_secs(2)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["workers"][0]["status"] == "9 requests").then_some(v)
    });
    assert!(
        status.is_some(),
        "STATUS= never shown; log:\n{}",
        init.log()
    );
    let ready_lines = init
        .log()
        .lines()
        .filter(|l| l.contains("\"message\":\"worker ready\""))
        .count();
    assert_eq!(ready_lines, 1, "log:\n{}", init.log());
}

/// Runs `cmd` to completion within `limit` (killed after it), with its stderr.
fn output_within(mut cmd: std::process::Command, limit: Duration) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = wait_for(limit, || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (
        status.and_then(|s| s.code()),
        reader.join().unwrap_or_default(),
    )
}

/// Item 7: what cannot be honoured is a usage error or a capped value, never an abort.
#[test]
fn absurd_sizes_are_refused_or_capped_not_allocated() {
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args(["--workers", "100000000", "--", "true"]);
    let (code, err) = output_within(cmd, Duration::from_secs(5));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--workers") && err.contains("1024"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for size in ["1000000000000", "1e12"] {
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args(["-w", "1", "--restart", "never", "--", "true"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
            .env("OTEL_BSP_MAX_QUEUE_SIZE", size);
        let (code, err) = output_within(cmd, Duration::from_secs(10));
        assert_eq!(code, Some(0), "{size}: {err}");
        assert!(
            err.contains("OTEL_BSP_MAX_QUEUE_SIZE"),
            "{size}: no warning: {err}"
        );
    }
}

/// Item 8: processes that survive SIGKILL (a zombie member nobody reaps keeps a group alive)
/// hold the stop for the grace time after the first SIGQUIT, however many follow.
#[test]
fn repeated_quit_never_pushes_the_end_of_a_stop_back() {
    // The worker's child leaves the worker's group, and its own child joins it and dies: a
    // zombie in the worker's group that its parent never reaps.
    let code = "import os, time
w = os.getpid()
if os.fork() == 0:
    os.setpgid(0, 0)
    if os.fork() == 0:
        os.setpgid(0, w)
        os._exit(0)
    time.sleep(1000)
time.sleep(1000)";
    let Some(mut init) = Init::start(Mode::Pid1, &["-w", "1", "--", "python3", "-c", code], &[])
    else {
        return;
    };
    init.wait_workers(1, LONG);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let mut exited = None;
    while t.elapsed() < Duration::from_secs(12) {
        init.signal(libc::SIGQUIT);
        if let Some(code) = init.wait(Duration::from_secs(1)) {
            exited = Some((code, t.elapsed()));
            break;
        }
    }
    let (code, after) = exited.unwrap_or_else(|| panic!("never exited; log:\n{}", init.log()));
    assert!(
        after < Duration::from_millis(7000),
        "exited {after:?} after the first QUIT; log:\n{}",
        init.log()
    );
    assert_eq!(code, 137);
}

/// Item 9: a parent that blocked and ignored SIGTERM before exec'ing us: we still stop on it,
/// and workers start with a clean signal state.
#[test]
fn an_inherited_blocked_and_ignored_sigterm_still_stops_the_pool() {
    for mode in BOTH {
        let Some(mut init) =
            Init::start_with(mode, &["-w", "1", "--", "sleep", "1000"], &[], |cmd| {
                // SAFETY: sigprocmask and signal are async-signal-safe.
                unsafe {
                    cmd.pre_exec(|| {
                        let mut set: libc::sigset_t = std::mem::zeroed();
                        libc::sigemptyset(&mut set);
                        libc::sigaddset(&mut set, libc::SIGTERM);
                        libc::sigaddset(&mut set, libc::SIGINT);
                        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                        libc::signal(libc::SIGTERM, libc::SIG_IGN);
                        Ok(())
                    });
                }
            })
        else {
            return;
        };
        let worker = init.wait_workers(1, LONG)[0];
        assert_eq!(
            status_field(worker, "SigBlk").as_deref(),
            Some("0000000000000000")
        );
        assert_eq!(
            status_field(worker, "SigIgn").as_deref(),
            Some("0000000000000000")
        );
        init.signal(libc::SIGTERM);
        assert_eq!(
            init.wait(Duration::from_secs(5)),
            Some(0),
            "{mode:?}: log:\n{}",
            init.log()
        );
    }
}

/// Item 9: SIGSEGV from outside is not swallowed by a stack-overflow handler: as a subreaper,
/// the default action, as the README says.
#[test]
fn an_outside_sigsegv_has_its_default_action() {
    let Some(mut init) = Init::start(Mode::Subreaper, &["-w", "1", "--", "sleep", "1000"], &[])
    else {
        return;
    };
    init.wait_workers(1, LONG);
    init.signal(libc::SIGSEGV);
    assert_eq!(init.wait(Duration::from_secs(5)), Some(128 + libc::SIGSEGV));
}

/// Item 10: out of descriptors is a failed start (`spawn_failed`), retried, never 126.
#[test]
fn out_of_descriptors_is_a_failed_start_not_exit_126() {
    let Some(mut init) = Init::start_with(
        Mode::Subreaper,
        &[
            "-w",
            "1",
            "--restart",
            "never",
            "--log-format",
            "json",
            "--",
            "/bin/true",
        ],
        &[],
        |cmd| {
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    let lim = libc::rlimit {
                        rlim_cur: 9,
                        rlim_max: 9,
                    };
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                    Ok(())
                });
            }
        },
    ) else {
        return;
    };
    let seen = wait_for(Duration::from_secs(5), || {
        init.log()
            .contains("\"cluster_init.exit.reason\":\"spawn_failed\"")
            .then_some(())
    });
    assert!(seen.is_some(), "log:\n{}", init.log());
    assert_eq!(
        init.wait(Duration::from_millis(1500)),
        None,
        "exited; log:\n{}",
        init.log()
    );
    init.signal(libc::SIGTERM);
    let code = init.wait(LONG);
    assert_ne!(code, Some(126));
    assert!(code.is_some());
}

/// Item 10: no pid for the trace exporter's thread (and none for a worker): tracing is off with
/// one warning, no panic, spawns fail as `spawn_failed`, and the pool recovers once the limit
/// is raised.
#[test]
fn no_thread_for_the_exporter_means_no_traces_no_panic_and_the_pool_recovers() {
    let Some(cg) = Cgroup::create("pids", "exporter") else {
        return;
    };
    cg.write("pids.max", "1");
    let Some(mut init) = Init::start_with(
        Mode::Subreaper,
        &[
            "-w",
            "1",
            "--restart",
            "never",
            "--backoff-initial",
            "100ms",
            "--backoff-max",
            "200ms",
            "--",
            "true",
        ],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")],
        |cmd| cg.join(cmd),
    ) else {
        return;
    };
    let failed = wait_for(LONG, || init.log().contains("spawn_failed").then_some(()));
    assert!(failed.is_some(), "log:\n{}", init.log());
    cg.write("pids.max", "10");
    let code = init.wait(LONG);
    let log = init.log();
    assert_eq!(code, Some(0), "log:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(log.matches("not exported").count(), 1, "{log}");
}

/// Item 11: a pool of a thousand slots under a pids limit of 200: a SIGTERM that arrives while
/// the slots start is handled at once (starts go in batches, signals in between), and the spawn
/// failures are logged once per interval, not once per slot.
#[test]
fn a_thousand_slots_under_a_pids_limit_stop_at_once_and_log_failures_once() {
    let Some(cg) = Cgroup::create("pids", "large") else {
        return;
    };
    cg.write("pids.max", "200");
    let start = || {
        Init::start_with(
            Mode::Subreaper,
            &[
                "-w",
                "1000",
                "--backoff-initial",
                "50ms",
                "--",
                "sleep",
                "1000",
            ],
            &[],
            |cmd| cg.join(cmd),
        )
    };
    let Some(mut init) = start() else {
        return;
    };
    // The burst of starts has begun.
    wait_for(LONG, || init.log().contains("worker ready").then_some(()))
        .unwrap_or_else(|| panic!("no worker started:\n{}", init.log()));
    let t = Instant::now();
    init.signal(libc::SIGTERM);
    let code = init.wait(Duration::from_secs(10));
    let took = t.elapsed();
    assert!(code.is_some(), "log:\n{}", init.log());
    assert!(
        took < Duration::from_secs(1),
        "SIGTERM handled after {took:?}"
    );

    let Some(mut init) = start() else {
        return;
    };
    std::thread::sleep(Duration::from_secs(2));
    init.signal(libc::SIGTERM);
    init.wait(LONG).expect("exits");
    // EAGAIN, however the line words it.
    let failures = init.log().matches("Try again").count();
    assert!(failures <= 5, "{failures} lines about failed starts");
}
