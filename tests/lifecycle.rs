//! Readiness, rolling reload, runtime scaling, memory caps, the watchdog, and the admin
//! endpoint that shows them, against the built binary and real servers.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{free_port, http_get, wait_for, Init, Load, Mode, Pool};

const LONG: Duration = Duration::from_secs(20);

fn pool(opts: &[&str], env: &[(&str, &str)]) -> Pool {
    Pool::start(opts, env)
}

#[test]
fn ready_1_flips_readyz_from_503_to_200() {
    let p = pool(
        &["-w", "2", "--ready", "notify"],
        &[("NOTIFY", "1"), ("READY_DELAY", "1.5")],
    );
    assert_eq!(p.get("/readyz").0, 503, "ready before any READY=1");
    assert_eq!(p.get("/livez").0, 200);
    let s = p.status();
    assert!(
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["state"] == "starting"),
        "{s}"
    );
    wait_for(LONG, || (p.get("/readyz").0 == 200).then_some(())).expect("ready after READY=1");
    p.wait_status("both ready", |s| {
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["state"] == "ready")
    });
}

#[test]
fn a_worker_that_never_gets_ready_is_restarted_with_backoff() {
    let p = pool(
        &[
            "-w",
            "1",
            "--ready",
            "notify",
            "--ready-timeout",
            "400ms",
            "--backoff-initial",
            "200ms",
        ],
        &[],
    );
    let s = p.wait_status("restarted twice", |s| {
        s["workers"][0]["restarts"].as_u64() >= Some(2)
    });
    assert_eq!(p.get("/readyz").0, 503, "{s}");
    assert!(
        p.init.log().matches("not ready in time").count() >= 2,
        "log:\n{}",
        p.init.log()
    );
    let metrics = p.get("/metrics").1;
    assert!(
        metrics.contains("cluster_init_worker_exits_total{reason=\"ready_timeout\"}"),
        "{metrics}"
    );
}

#[test]
fn sighup_under_load_replaces_every_worker_without_a_failed_request() {
    let p = pool(
        &["-w", "2", "--ready", "notify", "--stop-timeout", "5s"],
        &[("NOTIFY", "1"), ("READY_DELAY", "0.3")],
    );
    p.wait_status("ready", |s| s["ready"] == true);
    let before: HashSet<i64> = p
        .workers_in("ready")
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    let load = Load::start(&p.addr, 8);
    std::thread::sleep(Duration::from_millis(500));
    p.init.signal(libc::SIGHUP);
    let s = p.wait_status("all replaced with generation 2", |s| {
        let ws = s["workers"].as_array().unwrap();
        ws.len() == 2
            && ws
                .iter()
                .all(|w| w["generation"] == 2 && w["state"] == "ready")
    });
    std::thread::sleep(Duration::from_millis(500));
    let (ok, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "{} of {} requests failed during the reload: {:?}",
        errors.len(),
        ok + errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(ok > 100, "only {ok} requests");
    let after: HashSet<i64> = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_i64().unwrap())
        .collect();
    assert!(
        before.is_disjoint(&after),
        "not every worker was replaced: {before:?} -> {after:?}"
    );
    let (_, body) = http_get(&p.addr, "/", Duration::from_secs(5)).unwrap();
    assert!(body.ends_with("gen 2\n"), "{body}");
    assert_eq!(s["generation"], 2);
}

#[test]
fn ttin_and_ttou_change_the_pool_by_one() {
    let mut p = pool(&["-w", "2"], &[]);
    p.wait_status("2 ready", |s| s["workers"].as_array().unwrap().len() == 2);
    p.init.signal(libc::SIGTTIN);
    let s = p.wait_status("3 ready", |s| {
        s["desired"] == 3
            && s["workers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["state"] == "ready")
                .count()
                == 3
    });
    assert!(
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["slot"] == 2),
        "{s}"
    );
    // The new slot serves on its own socket.
    wait_for(LONG, || {
        let (_, body) = http_get(&p.addr, "/", Duration::from_secs(5)).ok()?;
        body.starts_with("worker 2 ").then_some(())
    })
    .expect("slot 2 answers");
    for want in [2, 1, 1] {
        p.init.signal(libc::SIGTTOU);
        p.wait_status(&format!("{want} workers"), |s| {
            s["desired"] == want && s["workers"].as_array().unwrap().len() == want as usize
        });
    }
    assert_eq!(p.init.workers().len(), 1);
    p.init.signal(libc::SIGTERM);
    assert_eq!(p.init.wait(LONG), Some(0), "log:\n{}", p.init.log());
}

#[test]
fn a_worker_growing_past_the_memory_cap_is_replaced() {
    let p = pool(
        &[
            "-w",
            "1",
            "--max-worker-memory",
            "80M",
            "--memory-check-interval",
            "300ms",
        ],
        &[("GROW_MB", "25")],
    );
    let first =
        p.wait_status("started", |s| s["workers"][0]["pid"].is_i64())["workers"][0]["pid"].as_i64();
    let s = p.wait_status("replaced", |s| {
        let ws = s["workers"].as_array().unwrap();
        ws.iter()
            .any(|w| w["state"] == "ready" && w["pid"].as_i64() != first)
    });
    assert!(
        p.init.log().contains("over the 80 MiB cap"),
        "log:\n{}",
        p.init.log()
    );
    let metrics = p.get("/metrics").1;
    wait_for(LONG, || {
        p.get("/metrics")
            .1
            .contains("cluster_init_worker_exits_total{reason=\"memory_cap\"} 1")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no memory_cap exit counted: {metrics}\n{s}"));
}

#[test]
fn a_worker_that_stops_pinging_the_watchdog_is_aborted_and_restarted() {
    // WATCHDOG unset in the env: the server never pings.
    let p = pool(
        &[
            "-w",
            "1",
            "--watchdog",
            "500ms",
            "--stop-timeout",
            "1s",
            "--backoff-initial",
            "100ms",
        ],
        &[],
    );
    p.wait_status("restarted", |s| {
        s["workers"][0]["restarts"].as_u64() >= Some(1)
    });
    assert!(
        p.init.log().contains("watchdog expired"),
        "log:\n{}",
        p.init.log()
    );
    assert!(p
        .get("/metrics")
        .1
        .contains("cluster_init_worker_exits_total{reason=\"watchdog\"}"));
}

#[test]
fn a_worker_that_pings_the_watchdog_lives_on() {
    // Pings every 500 ms against a 1 s watchdog: a loaded machine can delay a ping, not double it.
    let p = pool(&["-w", "1", "--watchdog", "1s"], &[("WATCHDOG", "1")]);
    let pid =
        p.wait_status("started", |s| s["workers"][0]["pid"].is_i64())["workers"][0]["pid"].as_i64();
    std::thread::sleep(Duration::from_secs(3));
    let s = p.status();
    assert_eq!(
        s["workers"][0]["pid"].as_i64(),
        pid,
        "restarted although it pinged: {s}"
    );
    assert_eq!(s["workers"][0]["restarts"], 0);
}

#[test]
fn metrics_and_status_parse() {
    let p = pool(&["-w", "2"], &[]);
    p.wait_status("2 ready", |s| s["ready"] == true);
    let (code, text) = p.get("/metrics");
    assert_eq!(code, 200);
    let mut typed = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split_whitespace().next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        // name{labels} value
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            typed.contains(name),
            "{name} has no # TYPE before its samples"
        );
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{name}"
        );
    }
    for needed in [
        "cluster_init_workers{state=\"ready\"} 2",
        "cluster_init_restarts_total 0",
        "cluster_init_cpu_budget",
        "cluster_init_ready 1",
    ] {
        assert!(text.contains(needed), "{needed} missing in\n{text}");
    }
    let s = p.status();
    let w = &s["workers"][0];
    for field in [
        "slot",
        "pid",
        "state",
        "generation",
        "restarts",
        "started_at",
        "last_exit",
    ] {
        assert!(w.get(field).is_some(), "{field} missing in {s}");
    }
}

#[test]
fn readyz_turns_503_as_soon_as_the_pool_stops() {
    let mut p = pool(
        &["-w", "1", "--stop-timeout", "5s"],
        &[("STOP_DELAY", "1.5")],
    );
    // Serving, so its SIGTERM handler is in place.
    wait_for(LONG, || http_get(&p.addr, "/", Duration::from_secs(1)).ok()).expect("serving");
    p.init.signal(libc::SIGTERM);
    // While the worker drains, the pod must leave the Service (503) but stay alive (200).
    wait_for(Duration::from_secs(1), || {
        (p.get("/readyz").0 == 503).then_some(())
    })
    .expect("/readyz 503 while stopping");
    assert_eq!(p.get("/livez").0, 200, "liveness failed mid-drain");
    assert_eq!(p.status()["workers"][0]["state"], "stopping");
    assert_eq!(p.init.wait(LONG), Some(0), "log:\n{}", p.init.log());
}

#[test]
fn the_ready_pool_is_announced_upstream() {
    let dir = common::scratch();
    let path = dir.path().join("upstream.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let p = pool(&["-w", "1"], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 upstream");
    assert_eq!(&buf[..n], b"READY=1");
    // Our own NOTIFY_SOCKET is not the workers': theirs is cluster-init's.
    let (_, info) = http_get(&p.addr, "/info", Duration::from_secs(5)).unwrap();
    assert!(!info.contains(path.to_str().unwrap()), "{info}");
}

#[test]
fn after_a_failed_reload_the_old_workers_are_ordinary_workers_again() {
    // Generation 2 fails before READY=1: the reload is abandoned, generation 1 keeps serving,
    // and when one of those crashes later it is restarted like any worker.
    let p = pool(
        &["-w", "1", "--ready", "notify", "--backoff-initial", "100ms"],
        &[("NOTIFY", "1"), ("FAIL_GEN", "2")],
    );
    let old = p.wait_status("ready", |s| s["ready"] == true)["workers"][0]["pid"]
        .as_i64()
        .unwrap();
    p.init.signal(libc::SIGHUP);
    wait_for(LONG, || {
        p.init.log().contains("reload abandoned").then_some(())
    })
    .unwrap_or_else(|| panic!("log:\n{}", p.init.log()));
    // SAFETY: plain syscall on a worker of ours.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let s = p.wait_status("the crashed old worker restarted", |s| {
        let w = &s["workers"][0];
        w["restarts"] == 1 && w["pid"].as_i64() != Some(old) && w["pid"].is_i64()
    });
    // Its replacement is of the generation the failed reload announced, and fails the same way:
    // what matters is that the slot was not left empty.
    assert!(s["workers"].as_array().unwrap().len() == 1, "{s}");
}

#[test]
fn a_stopped_workers_stubborn_children_get_the_grace_time_then_sigkill() {
    let dir = common::scratch();
    let pids = dir.path().join("children");
    let p = pool(
        &["-w", "1", "--stop-timeout", "1s"],
        &[("STUBBORN_CHILD", pids.to_str().unwrap())],
    );
    let child: i32 =
        wait_for(LONG, || common::lines(&pids).first()?.parse().ok()).expect("child pid");
    wait_for(LONG, || http_get(&p.addr, "/", Duration::from_secs(1)).ok()).expect("serving");
    p.init.signal(libc::SIGHUP);
    // The old worker leaves at once; its child ignores SIGTERM and must be SIGKILLed at the
    // stop timeout, not left behind.
    let gone = wait_for(Duration::from_secs(5), || {
        (!common::alive(child)).then_some(())
    });
    assert!(
        gone.is_some(),
        "the old worker's child survived the reload; log:\n{}",
        p.init.log()
    );
    assert!(
        p.init.log().contains("SIGKILL to what remains"),
        "log:\n{}",
        p.init.log()
    );
}

#[test]
fn scaling_down_then_up_never_runs_two_workers_on_one_slot() {
    // Slot 1's first life never gets ready and drains slowly: it is still stopping (a failed
    // start) when SIGTTOU removes slot 1 and SIGTTIN brings it back with a healthy worker. Its
    // late exit must not count as a crash of the new slot 1 (which would start a second one).
    let dir = common::scratch();
    let once = dir.path().join("once");
    let p = pool(
        &[
            "-w",
            "2",
            "--ready",
            "notify",
            "--ready-timeout",
            "2s",
            "--stop-timeout",
            "6s",
            "--backoff-initial",
            "100ms",
        ],
        &[
            ("NOTIFY", "1"),
            ("STOP_DELAY", "3"),
            ("NO_READY_ONCE", once.to_str().unwrap()),
        ],
    );
    wait_for(LONG, || {
        p.init.log().contains("not ready in time").then_some(())
    })
    .expect("a failed start");
    p.init.signal(libc::SIGTTOU);
    std::thread::sleep(Duration::from_millis(200));
    p.init.signal(libc::SIGTTIN);
    let end = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < end {
        let s = p.status();
        let live = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["slot"] == 1 && w["state"] != "stopping" && w["pid"].is_i64())
            .count();
        assert!(live <= 1, "two live workers on slot 1: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_pool_that_recovered_does_not_give_up() {
    // One early crash, then a worker that runs: with --give-up-after shorter than the backoff
    // reset, the pool must not be declared crash-looping.
    let dir = common::scratch();
    let marker = dir.path().join("crashed");
    let script = format!(
        "[ -e {m} ] || {{ touch {m}; exit 1; }}; exec sleep 1000",
        m = marker.display()
    );
    let Some(mut init) = Init::start(
        Mode::Subreaper,
        &[
            "-w",
            "1",
            "--give-up-after",
            "2s",
            "--backoff-initial",
            "100ms",
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[],
    ) else {
        return;
    };
    assert_eq!(
        init.wait(Duration::from_secs(4)),
        None,
        "gave up on a recovered pool; log:\n{}",
        init.log()
    );
}

#[test]
fn an_exec_failure_is_reported_even_when_the_error_pipe_lands_among_the_listeners() {
    // Scaling 3 -> 1 frees descriptors inside 3..3+n; the exec-error pipe of the next spawn can
    // land there. Then the program disappears: the restart must report it, not look like a
    // worker that died of SIGPIPE.
    let dir = common::scratch();
    let server = dir.path().join("server");
    std::fs::write(&server, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(&server, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut args = vec!["-w", "3"];
    for _ in 0..3 {
        args.extend(["--listen", "127.0.0.1:0"]);
    }
    let admin = format!("127.0.0.1:{}", free_port());
    args.extend(["--admin-listen", &admin, "--", server.to_str().unwrap()]);
    let mut init = Init::start(Mode::Subreaper, &args, &[]).unwrap();
    init.wait_workers(3, LONG);
    for want in [2, 1] {
        init.signal(libc::SIGTTOU);
        wait_for(LONG, || (init.workers().len() == want).then_some(())).expect("scaled down");
    }
    std::fs::remove_file(&server).unwrap();
    let worker = init.workers()[0];
    // SAFETY: plain syscall on a worker of ours.
    unsafe { libc::kill(worker, libc::SIGKILL) };
    assert_eq!(init.wait(LONG), Some(127), "log:\n{}", init.log());
    assert!(init.log().contains("cannot run"), "log:\n{}", init.log());
}

#[test]
fn ready_1_from_a_workers_descendant_counts_for_that_worker() {
    // The worker is a shell; its child (like a gunicorn master's worker) sends READY=1.
    let admin = format!("127.0.0.1:{}", free_port());
    // NOTIFY_SOCKET is an abstract name (`@...`), as sd_notify(3) allows: no file anywhere.
    let notify = "import os, socket; a = os.environ['NOTIFY_SOCKET']; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'READY=1', chr(0) + a[1:] if a[0] == '@' else a)";
    let script = format!("python3 -c \"{notify}\"; exec sleep 1000");
    let mut init = Init::start(
        Mode::Subreaper,
        &[
            "-w",
            "1",
            "--ready",
            "notify",
            "--admin-listen",
            &admin,
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[],
    )
    .unwrap();
    let ready = wait_for(LONG, || {
        let (code, _) = http_get(&admin, "/readyz", Duration::from_secs(1)).ok()?;
        (code == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "READY=1 from the worker's child was not credited; log:\n{}",
        init.log()
    );
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0));
}
