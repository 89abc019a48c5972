//! `cluster-init ctl`, run against the built binary: from inside the init's PID namespace (where
//! it finds PID 1 by itself) and next to it with `--pid`; two inits sharing a network namespace;
//! callers that are refused; no init at all; clients that flood or say nothing; and `-- ctl`,
//! which is still a program to run.

mod common;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, free_port, http_get, py_server, wait_for, Init, Mode};

const LONG: Duration = Duration::from_secs(20);

/// What a finished command said.
#[derive(Debug)]
struct Out {
    /// The exit code, or 128 + the signal that ended it.
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to its end, killed after 15 s (ctl bounds itself to 5 s).
fn run(mut cmd: Command) -> Out {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || tx.send(child.wait_with_output()));
    let output = match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(output) => output.expect("wait"),
        Err(_) => {
            // SAFETY: plain syscall on the child we started (not yet reaped: its waiter waits).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = waiter.join();
            panic!("{cmd:?} still running after 15 s");
        }
    };
    let _ = waiter.join();
    Out {
        code: output
            .status
            .code()
            .unwrap_or_else(|| 128 + output.status.signal().unwrap_or(0)),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// How the client reaches its init.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// From inside the init's PID namespace (nsenter to the host pid), finding it by itself.
    Inside(i32),
    /// From the test's own namespace, naming it: other tests' inits run next to it.
    Pid(i32),
}

impl Via {
    fn of(init: &Init, mode: Mode) -> Via {
        match mode {
            Mode::Pid1 => Via::Inside(init.pid()),
            Mode::Subreaper => Via::Pid(init.pid()),
        }
    }
}

/// `cluster-init ctl ARGS` reaching its init as `via` says, run by `user` (`setpriv` args).
fn ctl_as(via: Via, user: &[&str], args: &[&str]) -> Out {
    let mut cmd = match via {
        Via::Inside(host_pid) => {
            let mut c = Command::new("nsenter");
            c.args(["--target", &host_pid.to_string(), "--pid", "--mount", "--"]);
            c
        }
        Via::Pid(_) => Command::new("env"),
    };
    if !user.is_empty() {
        cmd.arg("setpriv").args(user);
    }
    cmd.arg(bin()).arg("ctl");
    if let Via::Pid(pid) = via {
        cmd.args(["--pid", &pid.to_string()]);
    }
    cmd.args(args);
    run(cmd)
}

fn ctl(via: Via, args: &[&str]) -> Out {
    ctl_as(via, &[], args)
}

const NOBODY: [&str; 6] = [
    "--reuid",
    "65534",
    "--regid",
    "65534",
    "--clear-groups",
    "--",
];

/// A pool of the test server that reports `STATUS=serving`, with an admin endpoint to check
/// ctl's answers against.
fn start(mode: Mode, workers: &str) -> Option<(Init, String)> {
    let admin = format!("127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<String> = [
        "--listen",
        &listen,
        "--admin-listen",
        &admin,
        "--ready",
        "notify",
        "-w",
        workers,
        "--",
    ]
    .map(String::from)
    .to_vec();
    args.extend(py_server());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let init = Init::start(mode, &args, &[("NOTIFY", "1")])?;
    Some((init, admin))
}

fn status(admin: &str) -> serde_json::Value {
    let (code, body) = wait_for(Duration::from_secs(5), || {
        http_get(admin, "/status", Duration::from_secs(2)).ok()
    })
    .expect("/status answers");
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("/status is JSON")
}

/// Waits until every worker of `/status` is ready, `n` of them, in `generation`.
fn wait_ready(init: &Init, admin: &str, n: usize, generation: u64) -> serde_json::Value {
    wait_for(LONG, || {
        let s = status(admin);
        let w = s["workers"].as_array()?;
        (w.len() == n
            && w.iter()
                .all(|w| w["state"] == "ready" && w["generation"] == generation))
        .then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "never {n} ready workers of generation {generation}: {}; log:\n{}",
            status(admin),
            init.log()
        )
    })
}

fn pids(s: &serde_json::Value) -> Vec<i64> {
    let mut p: Vec<i64> = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_i64().unwrap())
        .collect();
    p.sort_unstable();
    p
}

#[test]
fn ctl_shows_scales_reloads_and_stops_the_pool() {
    for mode in [Mode::Pid1, Mode::Subreaper] {
        let Some((mut init, admin)) = start(mode, "2") else {
            return;
        };
        let via = Via::of(&init, mode);
        let before = wait_ready(&init, &admin, 2, 1);

        // status: a line about the pool, then one row per slot, pids as the init sees them.
        let out = ctl(via, &["status"]);
        assert_eq!(out.code, 0, "{mode:?}: {out:?}; log:\n{}", init.log());
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            lines[0], "pool ready: 2 of 2 workers ready, generation 1",
            "{mode:?}: {}",
            out.stdout
        );
        assert!(lines[1].starts_with("SLOT"), "{}", out.stdout);
        assert_eq!(lines.len(), 4, "{}", out.stdout);
        for (row, w) in lines[2..].iter().zip(before["workers"].as_array().unwrap()) {
            let cells: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(cells[0], w["slot"].to_string(), "{row}");
            assert_eq!(cells[1], w["pid"].to_string(), "{row}");
            assert_eq!(cells[2], "ready", "{row}");
            assert_eq!(cells[3], "1", "{row}");
            assert!(row.ends_with("serving"), "{row}");
        }

        // status --json is the /status document.
        let same = wait_for(Duration::from_secs(5), || {
            let out = ctl(via, &["status", "--json"]);
            assert_eq!(out.code, 0, "{out:?}");
            let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
            (doc == status(&admin)).then_some(())
        });
        assert!(
            same.is_some(),
            "{mode:?}: ctl status --json differs from /status"
        );

        // scale is absolute.
        let out = ctl(via, &["scale", "3"]);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, "scaling 2 -> 3\n"),
            "{out:?}"
        );
        init.wait_workers(3, LONG);
        let scaled = wait_ready(&init, &admin, 3, 1);

        // reload: a new generation replaces every worker.
        let out = ctl(via, &["reload"]);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, "reloading to generation 2\n"),
            "{out:?}"
        );
        let reloaded = wait_ready(&init, &admin, 3, 2);
        let old = pids(&scaled);
        assert!(
            pids(&reloaded).iter().all(|p| !old.contains(p)),
            "{mode:?}: {old:?} -> {:?}",
            pids(&reloaded)
        );

        // A refusal of the pool's own is exit 1 with its reason.
        let out = ctl(via, &["scale", "0"]);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains("at least 1 worker"), "{out:?}");

        // stop: the init stops its pool and exits 0.
        let out = ctl(via, &["stop"]);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, "stopping\n"),
            "{out:?}"
        );
        assert_eq!(init.wait(LONG), Some(0), "{mode:?}: log:\n{}", init.log());
    }
}

#[test]
fn two_inits_sharing_a_network_namespace_never_meet() {
    // Two PID namespaces, each with its cluster-init as PID 1, in the test's network namespace:
    // both bind their ctl socket under pid 1, told apart by the namespace inode alone.
    let start = |n: &str| Init::start(Mode::Pid1, &["-w", n, "--", "sleep", "1000"], &[]);
    let Some(a) = start("2") else {
        return;
    };
    let Some(b) = start("2") else {
        return;
    };
    a.wait_workers(2, LONG);
    b.wait_workers(2, LONG);

    let out = ctl(Via::Inside(a.pid()), &["scale", "3"]);
    assert_eq!(out.code, 0, "{out:?}");
    a.wait_workers(3, LONG);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.workers().len(), 2, "b was scaled by a's ctl");

    let out = ctl(Via::Inside(b.pid()), &["scale", "1"]);
    assert_eq!(out.code, 0, "{out:?}");
    b.wait_workers(1, LONG);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.workers().len(), 3, "a was scaled by b's ctl");
}

#[test]
fn another_uid_is_refused_and_the_pool_unchanged() {
    for mode in [Mode::Pid1, Mode::Subreaper] {
        let Some(init) = Init::start(mode, &["-w", "2", "--", "sleep", "1000"], &[]) else {
            return;
        };
        let before = init.wait_workers(2, LONG);
        let via = Via::of(&init, mode);
        // Inside the namespace the client finds PID 1 by name: as nobody, it cannot follow
        // /proc/1/exe. The init itself refuses the connection.
        for verb in [&["scale", "3"][..], &["stop"], &["status"]] {
            let out = ctl_as(via, &NOBODY, verb);
            assert_eq!(out.code, 1, "{mode:?} {verb:?}: {out:?}");
            assert!(
                out.stderr.contains(
                    "permission denied: uid 65534 is neither cluster-init's uid (0) nor root"
                ),
                "{mode:?}: {out:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut after = init.workers();
        after.sort_unstable();
        let mut before = before;
        before.sort_unstable();
        assert_eq!(after, before, "{mode:?}: the pool changed");
        // The same client as root is served.
        assert_eq!(ctl(via, &["status"]).code, 0);
    }
}

#[test]
fn a_caller_outside_the_pid_namespace_is_refused() {
    // From the parent namespace the init's socket can be named (a sibling container sharing
    // the network namespace could guess it), but the caller is invisible to the init.
    let Some(init) = Init::start(Mode::Pid1, &["-w", "1", "--", "sleep", "1000"], &[]) else {
        return;
    };
    init.wait_workers(1, LONG);
    let out = ctl(Via::Pid(init.pid()), &["scale", "2"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("outside cluster-init's PID namespace"),
        "{out:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(init.workers().len(), 1);
}

/// A process run in a fresh PID namespace of its own, killed (and the namespace with it) at drop.
struct Namespace {
    unshare: std::process::Child,
}

impl Namespace {
    fn start(program: &[&str], env: &[(&str, &str)]) -> Option<Namespace> {
        if !common::require(common::can_unshare(), "root and unshare --pid") {
            return None;
        }
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .args(program)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            // unshare complains when its child dies of the SIGKILL that ends the namespace.
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare");
        let ns = Namespace { unshare };
        wait_for(Duration::from_secs(5), || ns.pid1()).expect("the namespace's PID 1 runs");
        Some(ns)
    }

    /// The host pid of the namespace's PID 1.
    fn pid1(&self) -> Option<i32> {
        common::children(self.unshare.id() as i32).first().copied()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Some(pid) = self.pid1() {
            // SAFETY: plain syscall; PID 1 of the namespace takes everything in it along.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = wait_for(Duration::from_secs(5), || {
            self.unshare.try_wait().ok().flatten()
        });
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

#[test]
fn no_init_in_sight_asks_for_pid() {
    let Some(ns) = Namespace::start(&["sleep", "60"], &[]) else {
        return;
    };
    let host_pid = ns.pid1().unwrap();
    let out = ctl(Via::Inside(host_pid), &["status"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("no cluster-init found") && out.stderr.contains("--pid"),
        "{out:?}"
    );
    // Named, a process that is no cluster-init cannot be reached (3), and no process at all is
    // a usage error (2).
    let out = run({
        let mut c = Command::new("nsenter");
        c.args(["--target", &host_pid.to_string(), "--pid", "--mount", "--"])
            .arg(bin())
            .args(["ctl", "--pid", "1", "status"]);
        c
    });
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("nothing listens"), "{out:?}");
    let out = ctl(Via::Pid(4_000_000), &["status"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("no process 4000000"), "{out:?}");
}

/// The ctl socket's address for an init in the test's own PID namespace.
fn ctl_addr(pid: i32) -> SocketAddr {
    let link = std::fs::read_link("/proc/self/ns/pid").expect("ns link");
    let link = link.to_string_lossy();
    let ns = &link["pid:[".len()..link.len() - 1];
    SocketAddr::from_abstract_name(format!("cluster-init/{ns}/{pid}/ctl")).expect("name")
}

#[test]
fn silent_and_flooding_clients_delay_neither_ctl_nor_the_pool() {
    let pool = common::Pool::start(&["-w", "1"], &[]);
    pool.wait_status("ready", |s| s["ready"] == true);
    let pid = pool.init.pid();
    let addr = ctl_addr(pid);
    // One that connects and says nothing, then a hundred at once, all held open.
    let silent = UnixStream::connect_addr(&addr).expect("connect");
    let flood: Vec<UnixStream> = (0..100)
        .filter_map(|_| UnixStream::connect_addr(&addr).ok())
        .collect();
    assert!(flood.len() > 50, "only {} connected", flood.len());

    let t = Instant::now();
    let out = ctl(Via::Pid(pid), &["status"]);
    let took = t.elapsed();
    assert_eq!(out.code, 0, "{out:?}; log:\n{}", pool.init.log());
    assert!(out.stdout.contains("ready"), "{out:?}");
    assert!(took < Duration::from_secs(1), "ctl status took {took:?}");

    let t = Instant::now();
    let (code, _) = http_get(&pool.admin, "/livez", Duration::from_secs(2)).expect("/livez");
    assert_eq!(code, 200);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "/livez took {:?}",
        t.elapsed()
    );
    let (code, _) = http_get(&pool.addr, "/", Duration::from_secs(2)).expect("the pool serves");
    assert_eq!(code, 200);
    drop((silent, flood));
}

#[test]
fn ctl_stop_is_answered_when_nothing_runs() {
    // Every worker is waiting out its backoff: the pool is done the moment it is told to stop,
    // and the answer must still reach the caller before the init exits.
    let admin = format!("127.0.0.1:{}", free_port());
    let Some(mut init) = Init::start(
        Mode::Subreaper,
        &[
            "--admin-listen",
            &admin,
            "--backoff-initial",
            "10s",
            "-w",
            "2",
            "--",
            "sh",
            "-c",
            "exit 1",
        ],
        &[],
    ) else {
        return;
    };
    wait_for(LONG, || {
        let s = status(&admin);
        let w = s["workers"].as_array()?.clone();
        (w.len() == 2 && w.iter().all(|w| w["state"] == "backoff")).then_some(())
    })
    .unwrap_or_else(|| panic!("never all in backoff: {}", status(&admin)));
    let out = ctl(Via::Pid(init.pid()), &["stop"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "stopping\n"),
        "{out:?}; log:\n{}",
        init.log()
    );
    assert!(init.wait(LONG).is_some(), "the init did not exit");
}

/// A fake init: binds the ctl name of its own pid (or of $AS_PID), accepts, and never answers.
const SILENT_INIT: &str = r#"
import os, socket
ns = os.readlink("/proc/self/ns/pid")[len("pid:["):-1]
pid = int(os.environ.get("AS_PID", os.getpid()))
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\0cluster-init/%s/%d/ctl" % (ns, pid))
s.listen(8)
print("listening", flush=True)
held = []
while True:
    held.append(s.accept()[0])
"#;

#[test]
fn the_single_init_in_sight_is_found_and_other_ctl_clients_are_not_it() {
    // PID 1 is a shell; under it a cluster-init (a subreaper here), and a ctl client of the same
    // binary left waiting on a silent fake init. `ctl status` must pick the init, alone.
    let script = r#"
"$BIN" -w 1 -- sleep 1000 &
python3 -c "$SILENT_INIT" > /dev/null &
fake=$!
for i in $(seq 200); do
    grep -q "@cluster-init/.*/$fake/ctl" /proc/net/unix && break
    sleep 0.05
done
"$BIN" ctl --pid $fake status > /dev/null 2>&1 &
wait
"#;
    let env = [("BIN", bin()), ("SILENT_INIT", SILENT_INIT)];
    let Some(ns) = Namespace::start(&["sh", "-c", script], &env) else {
        return;
    };
    let host_pid = ns.pid1().unwrap();
    let waiting_client = wait_for(LONG, || {
        common::children(host_pid).into_iter().find(|&p| {
            let argv = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            argv.split(|&b| b == 0).nth(1) == Some(b"ctl".as_slice())
        })
    });
    assert!(waiting_client.is_some(), "the waiting ctl client never ran");
    let init = wait_for(LONG, || {
        common::children(host_pid)
            .into_iter()
            .find(|&p| common::children(p).len() == 1)
    });
    assert!(init.is_some(), "the init never started its worker");
    let out = ctl(Via::Inside(host_pid), &["status"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with("pool ready: 1 of 1 workers ready, generation 1\n"),
        "{out:?}"
    );
}

#[test]
fn the_client_waits_bounded_and_dies_on_sigterm() {
    let mut fake = Command::new("python3")
        .args(["-c", SILENT_INIT])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(fake.stdout.take().unwrap()),
        &mut line,
    )
    .expect("fake init says it listens");
    let pid = fake.id() as i32;

    // Bounded: no answer is exit 3 after the client's 5 s.
    let t = Instant::now();
    let out = ctl(Via::Pid(pid), &["status"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("no answer within 5s"), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());

    // Started with TERM blocked (as an init's own mask would be), it still ends on SIGTERM.
    let mut cmd = Command::new(bin());
    cmd.args(["ctl", "--pid", &pid.to_string(), "status"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only sigprocmask between fork and exec, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut client = cmd.spawn().expect("ctl");
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(client.id() as i32, libc::SIGTERM) };
    let status = wait_for(Duration::from_secs(2), || client.try_wait().ok().flatten());
    let _ = client.kill();
    let _ = client.wait();
    let _ = fake.kill();
    let _ = fake.wait();
    let status = status.expect("the client ignored SIGTERM");
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
}

#[test]
fn dash_dash_ctl_runs_a_program_named_ctl() {
    let dir = common::scratch();
    let ran = dir.path().join("ran");
    let script = dir.path().join("ctl");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$CLUSTER_WORKER_ID\" >> {}\nexec sleep 1000\n",
            ran.display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The first argument is `--` either way; the size comes from the environment or -w.
    for (args, n) in [(&["--", "ctl"][..], 1), (&["-w", "2", "--", "ctl"], 2)] {
        let _ = std::fs::remove_file(&ran);
        let env = [("PATH", path.as_str()), ("CLUSTER_INIT_WORKERS", "1")];
        let init = Init::start(Mode::Subreaper, args, &env).unwrap();
        init.wait_workers(n, LONG);
        let started = wait_for(LONG, || {
            let l = common::lines(&ran);
            (l.len() == n).then_some(l)
        });
        assert!(
            started.is_some(),
            "{args:?}: the ctl program did not run; log:\n{}",
            init.log()
        );
    }
}

#[test]
fn usage_and_help() {
    let out = run({
        let mut c = Command::new(bin());
        c.args(["ctl", "--help"]);
        c
    });
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("Usage: cluster-init ctl"), "{out:?}");
    for bad in [&[][..], &["scale"], &["scale", "x"], &["dance"], &["--pid"]] {
        let out = run({
            let mut c = Command::new(bin());
            c.arg("ctl").args(bad);
            c
        });
        assert_eq!(out.code, 2, "{bad:?}: {out:?}");
        assert!(out.stderr.starts_with("cluster-init ctl: "), "{out:?}");
    }
}

#[test]
fn a_socket_squatted_by_another_process_is_not_trusted() {
    // Another process bound the name the init would have: the client sees who listens.
    let mut target = Command::new("sleep").arg("60").spawn().expect("sleep");
    let mut squatter = Command::new("python3")
        .args(["-c", SILENT_INIT])
        .env("AS_PID", target.id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    let listening = std::io::BufRead::read_line(
        &mut std::io::BufReader::new(squatter.stdout.take().unwrap()),
        &mut line,
    );
    let out = ctl(Via::Pid(target.id() as i32), &["stop"]);
    for child in [&mut target, &mut squatter] {
        let _ = child.kill();
        let _ = child.wait();
    }
    listening.expect("the squatter listens");
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("held by pid {}, not by the init", squatter.id())),
        "{out:?}"
    );
}
