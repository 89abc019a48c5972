//! Shared helpers for the integration tests: the binary under test, visible skips, bounded waits.
#![allow(dead_code)]

pub mod artifacts;
pub mod cgroup;
pub mod oci;
pub mod otlp;

use std::time::{Duration, Instant};

/// Path of the binary under test: `CLUSTER_INIT_TEST_BIN` (the musl release build, as
/// `tests/run` sets it for its second pass, or an older build to show a test fails there), else
/// the debug build cargo made for these tests.
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("CLUSTER_INIT_TEST_BIN")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_cluster-init").to_string())
    })
}

/// Whether skips must fail (set by `.ci/run`).
pub fn strict() -> bool {
    std::env::var("CLUSTER_INIT_STRICT_TESTS").is_ok_and(|v| v == "1")
}

/// Returns true when `ok`; otherwise prints a visible skip (or panics under strict mode) and returns false.
/// Use as `if !require(is_root(), "root") { return; }`.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if strict() {
        panic!("CLUSTER_INIT_STRICT_TESTS=1 but this test needs {what}");
    }
    eprintln!("SKIPPED: this test needs {what}");
    // libtest keeps a passing test's output to itself: say it on the terminal, when there is one
    // (tests/run lists the recorded skips at the end either way).
    if let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        use std::io::Write;
        let _ = writeln!(tty, "SKIPPED: a test needs {what}");
    }
    artifacts::record_skip(what);
    false
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Polls `f` every 20 ms until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How the binary runs in a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of a fresh PID namespace (`unshare --pid --fork --mount-proc`).
    Pid1,
    /// A plain child of the test: cluster-init registers as subreaper.
    Subreaper,
}

/// A running cluster-init, killed (with everything under it) when dropped.
pub struct Init {
    child: std::process::Child,
    mode: Mode,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Whether namespaced runs are possible here (root and unshare).
pub fn can_unshare() -> bool {
    is_root()
        && std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "true"])
            .status()
            .is_ok_and(|s| s.success())
}

impl Init {
    /// Starts `cluster-init ARGS` in `mode` with extra env vars. Returns None (after a visible
    /// skip) when the mode is not possible here.
    pub fn start(mode: Mode, args: &[&str], env: &[(&str, &str)]) -> Option<Init> {
        Init::start_with(mode, args, env, |_| {})
    }

    /// Like [`Init::start`], with `tweak` applied to the command last (a `pre_exec` that joins a
    /// cgroup or sets a limit, another stderr).
    pub fn start_with(
        mode: Mode,
        args: &[&str],
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> Option<Init> {
        use std::io::Read;
        let mut cmd = match mode {
            Mode::Pid1 => {
                if !require(
                    can_unshare(),
                    "root and unshare --pid (PID 1 in a namespace)",
                ) {
                    return None;
                }
                let mut c = std::process::Command::new("unshare");
                c.args(["--pid", "--fork", "--mount-proc", bin()]);
                c
            }
            Mode::Subreaper => std::process::Command::new(bin()),
        };
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("spawn cluster-init");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        let reader = child.stderr.take().map(|mut stderr| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        });
        let init = Init {
            child,
            mode,
            log,
            reader,
        };
        // In a namespace, the init is unshare's child; wait until it exists.
        if mode == Mode::Pid1 {
            let mut init = init;
            wait_for(Duration::from_secs(5), || {
                let exited = init.child.try_wait().ok().flatten().is_some();
                (exited || init.init_pid_opt().is_some()).then_some(())
            });
            return Some(init);
        }
        Some(init)
    }

    fn init_pid_opt(&self) -> Option<i32> {
        match self.mode {
            Mode::Subreaper => Some(self.child.id() as i32),
            Mode::Pid1 => children(self.child.id() as i32).first().copied(),
        }
    }

    /// The host pid of cluster-init.
    pub fn pid(&self) -> i32 {
        self.init_pid_opt().expect("cluster-init is not running")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits up to `limit` for cluster-init to exit and returns its exit code (128+N for a signal).
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let status = wait_for(limit, || self.child.try_wait().ok().flatten())?;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        Some(
            status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        )
    }

    /// cluster-init's stdout, when the command was given a pipe for it (`Stdio::piped()` in
    /// [`Init::start_with`]'s tweak).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// What cluster-init wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Worker pids: children of the init that lead their own process group.
    pub fn workers(&self) -> Vec<i32> {
        children(self.pid())
            .into_iter()
            .filter(|&p| stat_field(p, 5) == Some(p.to_string()))
            .collect()
    }

    /// Waits until `n` workers run, returns their pids.
    pub fn wait_workers(&self, n: usize, limit: Duration) -> Vec<i32> {
        wait_for(limit, || {
            let w = self.workers();
            (w.len() == n).then_some(w)
        })
        .unwrap_or_else(|| {
            panic!(
                "expected {n} workers, have {:?}; log:\n{}",
                self.workers(),
                self.log()
            )
        })
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        if let Some(pid) = self.init_pid_opt() {
            // As an orchestrator would: SIGTERM, a bounded wait, then SIGKILL (workers die with
            // the init through PDEATHSIG, or with the namespace in Pid1 mode).
            // SAFETY: plain syscalls.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if wait_for(Duration::from_secs(5), || {
                self.child.try_wait().ok().flatten()
            })
            .is_none()
            {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = wait_for(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Direct children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat.
pub fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: split after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace()
        .nth(n.checked_sub(3)?)
        .map(str::to_string)
}

/// CPU time (user + system) a process has used so far: fields 14 and 15 of /proc/PID/stat.
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let ticks = |n| stat_field(pid, n)?.parse::<u64>().ok();
    let total = ticks(14)? + ticks(15)?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    Some(Duration::from_millis(total * 1000 / hz.max(1)))
}

/// Children of `pid` that are zombies.
pub fn zombie_children(pid: i32) -> Vec<i32> {
    children(pid)
        .into_iter()
        .filter(|&c| stat_field(c, 3).as_deref() == Some("Z"))
        .collect()
}

/// A line of /proc/PID/status, e.g. `SigBlk`.
pub fn status_field(pid: i32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(&format!("{key}:"))
            .map(|v| v.trim().to_string())
    })
}

/// Whether a process exists (zombies count as gone).
pub fn alive(pid: i32) -> bool {
    stat_field(pid, 3).is_some_and(|s| s != "Z")
}

/// A scratch directory removed at drop; workers write their observations into it.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cluster-init-test")
        .tempdir()
        .expect("tempdir")
}

/// Lines of a file, empty when it does not exist (yet).
pub fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The test worker (tests/fixtures/server.py) as a command line for cluster-init.
pub fn py_server() -> Vec<String> {
    vec![
        "python3".into(),
        format!("{}/tests/fixtures/server.py", env!("CARGO_MANIFEST_DIR")),
    ]
}

/// One HTTP/1.0 GET over a new connection: (status, body). Bounded by `limit`.
pub fn http_get(addr: &str, path: &str, limit: Duration) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s =
        std::net::TcpStream::connect_timeout(&sock, limit).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).ok();
    s.set_write_timeout(Some(limit)).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Concurrent clients sending GET / in a loop until finished; every request on a new connection.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Load {
    pub fn start(addr: &str, clients: usize) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let (stop, addr) = (stop.clone(), addr.to_string());
                std::thread::spawn(move || {
                    let (mut ok, mut errors) = (0, Vec::new());
                    // Bounded even if nobody calls finish.
                    let end = Instant::now() + Duration::from_secs(120);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                        match http_get(&addr, "/", Duration::from_secs(10)) {
                            Ok((200, _)) => ok += 1,
                            Ok((code, body)) => errors.push(format!("{code}: {body}")),
                            Err(e) => errors.push(e),
                        }
                    }
                    (ok, errors)
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the clients; returns (succeeded, errors).
    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = (0, Vec::new());
        for t in self.threads {
            let (ok, errors) = t.join().expect("client thread");
            total.0 += ok;
            total.1.extend(errors);
        }
        total
    }
}

/// Runs `cmd` in its own process group; kills the whole group (pip's children too) after `limit`.
/// Returns None on timeout or when the program cannot be started.
pub fn run_bounded(
    mut cmd: std::process::Command,
    what: &str,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(std::process::Stdio::null()).process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("cannot start {what}: {e}");
            return None;
        }
    };
    let status = wait_for(limit, || child.try_wait().ok().flatten());
    if status.is_none() {
        eprintln!("{what} still running after {limit:?}: killing it");
        // SAFETY: plain syscall; the negative pid names the child's own process group.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
    }
    status
}

/// A virtualenv `target/NAME-venv` with `requirements` (pinned lines, as in a requirements.txt)
/// installed, made again only when they (or the Python) change. Returns its directory, or None
/// after a visible skip when python3 -m venv or pip cannot work here.
pub fn venv(name: &str, requirements: &[&str]) -> Option<std::path::PathBuf> {
    use std::process::{Command, Stdio};
    let has_venv = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !require(has_venv, "python3 with the venv and ensurepip modules") {
        return None;
    }
    // Next to target/tmp: the target dir may be elsewhere (CARGO_TARGET_DIR).
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .join(format!("{name}-venv"));
    let python = Command::new("python3")
        .arg("--version")
        .output()
        .expect("python3 --version");
    let stamp = format!(
        "{}{}",
        String::from_utf8_lossy(&python.stdout),
        requirements.join("\n")
    );
    let stamp_file = dir.join("cluster-init-requirements.stamp");
    let ready = || std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp);
    if ready() {
        return Some(dir);
    }
    // Tests running in parallel may want the same venv: the first builds it under a lock.
    let lock = std::fs::File::create(dir.with_extension("lock")).expect("lock file");
    // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if ready() {
        return Some(dir);
    }
    eprintln!("making {} with {requirements:?}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
    let mut venv = Command::new("python3");
    venv.args(["-m", "venv"]).arg(&dir);
    let made =
        run_bounded(venv, "python3 -m venv", Duration::from_secs(120)).is_some_and(|s| s.success());
    if !require(made, "python3 -m venv to work") {
        return None;
    }
    let mut pip = Command::new(dir.join("bin/python"));
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
    ])
    .args(requirements)
    .env("PIP_DEFAULT_TIMEOUT", "60");
    let installed =
        run_bounded(pip, "pip install", Duration::from_secs(300)).is_some_and(|s| s.success());
    if !require(
        installed,
        &format!("pip install {requirements:?} (PyPI reachable)"),
    ) {
        // Leave no half-made venv behind: the next run starts over.
        let _ = std::fs::remove_dir_all(&dir);
        return None;
    }
    // Written last: a venv without its stamp is never trusted.
    std::fs::write(&stamp_file, stamp).expect("write the venv stamp");
    Some(dir)
}

/// The requirement lines of a requirements.txt (comments and blank lines dropped).
pub fn requirements(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// A pool of the test server (tests/fixtures/server.py) on a free port, with the admin
/// endpoint on another, run as a subreaper.
pub struct Pool {
    pub init: Init,
    pub addr: String,
    pub admin: String,
}

impl Pool {
    /// `cluster-init --listen ADDR --admin-listen ADMIN OPTS -- python3 server.py`.
    pub fn start(opts: &[&str], env: &[(&str, &str)]) -> Pool {
        Pool::start_with(opts, env, |_| {})
    }

    /// The same, with `tweak` applied to the command (see [`Init::start_with`]).
    pub fn start_with(
        opts: &[&str],
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> Pool {
        let addr = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = vec![
            "--listen".into(),
            addr.clone(),
            "--admin-listen".into(),
            admin.clone(),
        ];
        args.extend(opts.iter().map(|s| s.to_string()));
        args.push("--".into());
        args.extend(py_server());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let init = Init::start_with(Mode::Subreaper, &args, env, tweak)
            .expect("subreaper mode needs nothing");
        Pool { init, addr, admin }
    }

    /// An admin path's answer, retried for up to 5 s while the endpoint comes up.
    pub fn get(&self, path: &str) -> (u16, String) {
        wait_for(Duration::from_secs(5), || {
            http_get(&self.admin, path, Duration::from_secs(2)).ok()
        })
        .unwrap_or_else(|| panic!("admin {path} unreachable; log:\n{}", self.init.log()))
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/status").1).expect("/status is JSON")
    }

    /// (pid, generation) of workers in a state.
    pub fn workers_in(&self, state: &str) -> Vec<(i64, i64)> {
        self.status()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == state)
            .map(|w| {
                (
                    w["pid"].as_i64().unwrap_or(0),
                    w["generation"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    /// Waits up to 20 s for `/status` to satisfy `ok`.
    pub fn wait_status(
        &self,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(Duration::from_secs(20), || {
            let s = self.status();
            ok(&s).then_some(s)
        })
        .unwrap_or_else(|| panic!("never {what}: {}; log:\n{}", self.status(), self.init.log()))
    }

    /// The value of the `/metrics` sample `name{labels}`, e.g. `cluster_init_restarts_total`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let body = self.get("/metrics").1;
        body.lines().find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}
