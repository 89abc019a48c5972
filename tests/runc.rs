//! The OCI runtime tier: the shipped binary (static musl release build) as the entrypoint of a
//! container run by runc, the runtime containerd drives for Kubernetes. Each bundle is laid out
//! like the `FROM scratch` image: a read-only root holding only `/cluster-init` and the static
//! fixture server `/citest`, run as uid 65532 with runc's default capabilities and mounts, in its
//! own PID, mount and network namespaces. The tests reach the container's servers from a thread
//! that joins its network namespace, and count its processes from the host's /proc.
//!
//! Runs on this host's cgroups (v1 here). Needs root, runc (Debian: runc), the musl target, gcc.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{children, wait_for, zombie_children};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(20);

fn runc_available() -> bool {
    Command::new("runc")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One container: its bundle and runc state under a temp dir, `runc run` in the foreground as
/// our child (its exit status is the container's). Killed and deleted when dropped.
struct Container {
    id: String,
    dir: tempfile::TempDir,
    run: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
}

/// How a test's container differs from the default bundle.
#[derive(Default)]
struct Options {
    /// linux.resources.cpu (quota, period).
    cpu: Option<(u64, u64)>,
    /// Share the host's network namespace (`hostNetwork: true`).
    host_network: bool,
    env: Vec<(&'static str, String)>,
}

impl Container {
    /// `runc run` of a bundle whose process is `/cluster-init ARGS`. None after a visible skip.
    fn start(args: &[&str], opts: Options) -> Option<Container> {
        if !common::require(common::is_root(), "root (runc)")
            || !common::require(runc_available(), "runc (Debian: runc)")
        {
            return None;
        }
        let bin = common::artifacts::musl_bin()?;
        let citest = common::artifacts::citest()?;
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "cluster-init-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("cluster-init-runc")
            .tempdir()
            .expect("tempdir");
        let rootfs = dir.path().join("bundle/rootfs");
        std::fs::create_dir_all(&rootfs).expect("rootfs");
        for (from, to) in [(&bin, "cluster-init"), (&citest, "citest")] {
            std::fs::copy(from, rootfs.join(to)).expect("copy into the rootfs");
        }
        let bundle = dir.path().join("bundle");
        let mut argv = vec!["/cluster-init".to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        let spec = common::oci::spec(&common::oci::Bundle {
            args: argv,
            env: opts
                .env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            cpu: opts.cpu,
            host_network: opts.host_network,
            ..Default::default()
        })
        .expect("the bundle's spec");
        let config = bundle.join("config.json");
        std::fs::write(&config, serde_json::to_vec_pretty(&spec).unwrap()).expect("config.json");

        let mut run = Command::new("runc")
            .arg("--root")
            .arg(dir.path().join("state"))
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn runc run");
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let readers = vec![
            drain(run.stdout.take().expect("stdout"), Arc::clone(&stdout)),
            drain(run.stderr.take().expect("stderr"), Arc::clone(&stderr)),
        ];
        let mut c = Container {
            id,
            dir,
            run,
            stdout,
            stderr,
            readers,
            started: Instant::now(),
        };
        // Running once runc reports the container's pid, or ended already (the tests say so).
        let end = Instant::now() + LONG;
        while Instant::now() < end
            && c.run.try_wait().ok().flatten().is_none()
            && c.init_pid().is_none()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(c)
    }

    fn runc(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("runc");
        cmd.arg("--root")
            .arg(self.dir.path().join("state"))
            .args(args);
        output_bounded(cmd, Duration::from_secs(20))
    }

    /// The host pid of the container's PID 1 (cluster-init), while it runs.
    fn init_pid(&self) -> Option<i32> {
        let out = self.runc(&["state", &self.id]);
        let state: Value = serde_json::from_slice(&out.stdout).ok()?;
        (state["status"] == "running")
            .then(|| state["pid"].as_i64())
            .flatten()
            .map(|p| p as i32)
            .filter(|&p| p > 0)
    }

    fn kill(&self, signal: &str) {
        let out = self.runc(&["kill", &self.id, signal]);
        assert!(
            out.status.success(),
            "runc kill {signal}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Workers: children of cluster-init that lead their own process group.
    fn workers(&self) -> Vec<i32> {
        let Some(pid) = self.init_pid() else {
            return Vec::new();
        };
        children(pid)
            .into_iter()
            .filter(|&p| common::stat_field(p, 5) == Some(p.to_string()))
            .collect()
    }

    /// Waits until exactly `n` workers run and stay so for 500 ms.
    fn wait_workers(&self, n: usize, limit: Duration) -> Vec<i32> {
        let mut since: Option<(Instant, Vec<i32>)> = None;
        let got = wait_for(limit, || {
            let w = self.workers();
            match &since {
                Some((t, prev)) if *prev == w && w.len() == n => {
                    return (t.elapsed() >= Duration::from_millis(500)).then(|| w.clone());
                }
                _ => since = (w.len() == n).then(|| (Instant::now(), w)),
            }
            None
        });
        got.unwrap_or_else(|| {
            panic!(
                "expected {n} workers, have {:?}\n{}",
                self.workers(),
                self.report()
            )
        })
    }

    /// Waits for `runc run` to end; the container's exit status (128+N for a signal).
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let status = wait_for(limit, || self.run.try_wait().ok().flatten())?;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Some(
            status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        )
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn report(&self) -> String {
        format!(
            "container {} after {:?}; its stderr:\n{}\nits stdout:\n{}",
            self.id,
            self.started.elapsed(),
            self.stderr(),
            self.stdout()
        )
    }

    /// cluster-init's JSON log lines.
    fn log_lines(&self) -> Vec<Value> {
        self.stderr()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until GET `path` of `addr` (inside the container, or on the host with
    /// `on_host`) answers 200; false at the bound or as soon as the container has ended.
    fn wait_200(&self, addr: &str, path: &str, on_host: bool) -> bool {
        wait_for(LONG, || {
            if self.init_pid().is_none() {
                return Some(false);
            }
            let answer = if on_host {
                common::http_get(addr, path, Duration::from_secs(5))
            } else {
                self.get(addr, path)
            };
            answer.ok().filter(|(s, _)| *s == 200).map(|_| true)
        })
        .unwrap_or(false)
    }

    /// One HTTP GET to `addr` inside the container's network namespace.
    fn get(&self, addr: &str, path: &str) -> Result<(u16, String), String> {
        let pid = self.init_pid().ok_or("the container is not running")?;
        let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| format!("open its network namespace: {e}"))?;
        let (addr, path) = (addr.to_string(), path.to_string());
        // setns(CLONE_NEWNET) moves only the calling thread: a thread of its own, then gone.
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: plain syscall on a descriptor we own.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            common::http_get(&addr, &path, Duration::from_secs(5))
        })
        .join()
        .map_err(|_| "the request thread panicked".to_string())?
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.run.try_wait().ok().flatten().is_none() {
            let _ = self.runc(&["kill", &self.id, "KILL"]);
        }
        let _ = wait_for(Duration::from_secs(10), || {
            self.run.try_wait().ok().flatten()
        });
        let _ = self.runc(&["delete", "--force", &self.id]);
        let _ = self.run.kill();
        let _ = self.run.wait();
    }
}

fn drain(
    mut pipe: impl Read + Send + 'static,
    sink: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

/// `cmd`'s output, killing it after `limit` (a hung runc must not hang the test).
fn output_bounded(mut cmd: Command, limit: Duration) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn runc");
    let (out, err) = (Arc::default(), Arc::default());
    let readers = [
        drain(child.stdout.take().expect("stdout"), Arc::clone(&out)),
        drain(child.stderr.take().expect("stderr"), Arc::clone(&err)),
    ];
    let status = match wait_for(limit, || child.try_wait().ok().flatten()) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            child.wait().expect("wait runc")
        }
    };
    for r in readers {
        let _ = r.join();
    }
    let take = |m: Arc<Mutex<String>>| std::mem::take(&mut *m.lock().unwrap()).into_bytes();
    std::process::Output {
        status,
        stdout: take(out),
        stderr: take(err),
    }
}

/// `--listen 127.0.0.1:8080 --log-format json EXTRA -- /citest serve`: the fixture server on
/// the container's own loopback (its network namespace is its own).
fn serve_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--listen", "127.0.0.1:8080", "--log-format", "json"];
    args.extend_from_slice(extra);
    args.extend(["--", "/citest", "serve"]);
    args
}

/// `worker=0 pid=7 count=1 rt=36:5,` as key -> value.
fn fields(body: &str) -> std::collections::BTreeMap<String, String> {
    body.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn affinity() -> usize {
    let set =
        nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("sched_getaffinity");
    (0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .count()
}

fn root_is_read_only(pid: i32) -> Option<bool> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(4) == Some(&"/")).then(|| f.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro")))
    })
}

#[test]
fn a_cpu_quota_of_1_5_cpus_in_the_spec_gives_one_worker_on_a_read_only_root() {
    if !common::require(
        affinity() >= 2,
        "at least 2 CPUs (else 1 worker proves nothing)",
    ) {
        return;
    }
    let Some(c) = Container::start(
        &serve_args(&[]),
        Options {
            cpu: Some((150_000, 100_000)),
            ..Options::default()
        },
    ) else {
        return;
    };
    let workers = c.wait_workers(1, LONG);
    let pid = c.init_pid().expect("running");
    eprintln!(
        "quota 1.5 CPUs on {} host CPUs: workers {workers:?}",
        affinity()
    );
    assert_eq!(
        root_is_read_only(pid),
        Some(true),
        "the root should be read-only\n{}",
        c.report()
    );
    let (code, body) = c
        .get("127.0.0.1:8080", "/")
        .unwrap_or_else(|e| panic!("GET /: {e}\n{}", c.report()));
    let f = fields(&body);
    eprintln!("answer: {body:?}");
    assert_eq!(code, 200);
    assert_eq!(f.get("worker").map(String::as_str), Some("0"), "{body}");
    assert_eq!(f.get("count").map(String::as_str), Some("1"), "{body}");
    let sizing = c.log_lines().into_iter().find(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("workers="))
    });
    eprintln!("sizing: {sizing:?}");
    assert!(
        sizing.is_some_and(|l| l["message"].as_str().unwrap_or("").contains("1.50 CPUs")),
        "the start log should name the 1.5-CPU quota\n{}",
        c.report()
    );
}

#[test]
fn runc_kill_term_gives_exit_0_within_the_stop_timeout() {
    let Some(mut c) = Container::start(
        &serve_args(&["--workers", "2", "--stop-timeout", "10s"]),
        Options::default(),
    ) else {
        return;
    };
    c.wait_workers(2, LONG);
    let t = Instant::now();
    c.kill("TERM");
    let code = c.wait(Duration::from_secs(15));
    let took = t.elapsed();
    eprintln!("runc kill TERM: exit {code:?} after {took:?}");
    assert_eq!(code, Some(0), "{}", c.report());
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}\n{}",
        c.report()
    );
    let last = c.log_lines().pop().unwrap_or_default();
    assert_eq!(last["message"], "cluster-init exiting", "{}", c.report());
    assert_eq!(last["process.exit.code"], 0, "last line: {last}");
}

#[test]
fn a_worker_sigkilled_from_outside_is_restarted() {
    let Some(c) = Container::start(
        &serve_args(&["--workers", "2", "--backoff-initial", "100ms"]),
        Options::default(),
    ) else {
        return;
    };
    let before = c.wait_workers(2, LONG);
    // SAFETY: plain syscall, from the host, as an OOM killer or an operator would.
    unsafe { libc::kill(before[0], libc::SIGKILL) };
    let after = wait_for(LONG, || {
        let w = c.workers();
        (w.len() == 2 && !w.contains(&before[0])).then_some(w)
    });
    eprintln!(
        "workers {before:?}, SIGKILL to {}, then {after:?}",
        before[0]
    );
    assert!(after.is_some(), "no replacement worker\n{}", c.report());
    let answered = c.wait_200("127.0.0.1:8080", "/", false);
    assert!(answered, "the pool stopped answering\n{}", c.report());
    let exit = c
        .log_lines()
        .into_iter()
        .find(|l| l["message"] == "worker exited");
    eprintln!("exit line: {exit:?}");
    let exit = exit.unwrap_or_else(|| panic!("no \"worker exited\" line\n{}", c.report()));
    assert_eq!(exit["cluster_init.exit.reason"], "signal", "{exit}");
    assert_eq!(exit["cluster_init.exit.signal"], "SIGKILL", "{exit}");
}

#[test]
fn ready_notify_works_on_a_read_only_root_without_a_writable_directory() {
    let Some(mut c) = Container::start(
        &serve_args(&["--ready", "notify", "--admin-listen", "127.0.0.1:9090"]),
        Options {
            env: vec![("NOTIFY", "1".into())],
            ..Options::default()
        },
    ) else {
        return;
    };
    let ready = c.wait_200("127.0.0.1:9090", "/readyz", false);
    let exited = c.run.try_wait().ok().flatten().map(|_| c.wait(LONG));
    eprintln!("/readyz 200: {ready}; container exited: {exited:?}");
    assert!(
        ready,
        "the pool never got ready with --ready notify (container exit: {exited:?})\n{}",
        c.report()
    );
}

#[test]
fn two_containers_sharing_the_host_network_both_get_ready_with_notify() {
    // hostNetwork pods share one network namespace, and with it the abstract socket namespace.
    let ports = [common::free_port(), common::free_port()];
    let containers: Vec<Container> = ports
        .iter()
        .filter_map(|port| {
            let admin = format!("127.0.0.1:{port}");
            let args = [
                "--ready",
                "notify",
                "--workers",
                "1",
                "--log-format",
                "json",
                "--admin-listen",
                &admin,
                "--",
                "/citest",
                "idle",
            ];
            Container::start(
                &args,
                Options {
                    host_network: true,
                    env: vec![("NOTIFY", "1".into())],
                    ..Options::default()
                },
            )
        })
        .collect();
    if containers.len() < 2 {
        return;
    }
    for (c, port) in containers.iter().zip(ports) {
        let ready = c.wait_200(&format!("127.0.0.1:{port}"), "/readyz", true);
        eprintln!("{}: /readyz 200: {ready}", c.id);
        assert!(ready, "{} never got ready\n{}", c.id, c.report());
    }
}

#[test]
fn a_thousand_orphans_leave_no_zombie() {
    let Some(c) = Container::start(
        &[
            "--workers",
            "1",
            "--log-format",
            "json",
            "--",
            "/citest",
            "orphans",
            "1000",
        ],
        Options::default(),
    ) else {
        return;
    };
    let released = wait_for(LONG, || {
        c.stdout().contains("orphans released").then_some(())
    });
    assert!(
        released.is_some(),
        "the orphans were not released\n{}",
        c.report()
    );
    assert!(
        c.stdout().contains("orphans made=1000"),
        "not all 1000 orphans were made\n{}",
        c.report()
    );
    let pid = c.init_pid().expect("running");
    let t = Instant::now();
    let clean = wait_for(LONG, || {
        (children(pid).len() == 1 && zombie_children(pid).is_empty()).then_some(())
    });
    eprintln!(
        "1000 orphans: {} children, {} zombies left after {:?}",
        children(pid).len(),
        zombie_children(pid).len(),
        t.elapsed()
    );
    assert!(clean.is_some(), "zombies left\n{}", c.report());
}

#[test]
fn realtime_signals_from_runc_kill_reach_the_worker_once_per_send() {
    let Some(c) = Container::start(&serve_args(&["--workers", "1"]), Options::default()) else {
        return;
    };
    c.wait_workers(1, LONG);
    for _ in 0..5 {
        c.kill("36");
    }
    c.kill("34");
    c.kill("64");
    let want = "34:1,36:5,64:1,";
    let got = wait_for(Duration::from_secs(5), || {
        let (_, body) = c.get("127.0.0.1:8080", "/").ok()?;
        let rt = fields(&body).get("rt").cloned().unwrap_or_default();
        (rt == want).then_some(rt)
    });
    let last = c.get("127.0.0.1:8080", "/").map(|(_, b)| b);
    eprintln!("after runc kill 36 x5, 34, 64: {last:?}");
    assert!(
        got.is_some(),
        "the worker counted {last:?}, expected rt={want}\n{}",
        c.report()
    );
}
