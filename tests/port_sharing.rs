//! The init binds the port and hands it to every worker (the LISTEN_FDS contract): what each
//! worker sees, how requests spread, and that workers coming and going lose no request.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{free_port, http_get, py_server, wait_for, Init, Load, Mode};

const LONG: Duration = Duration::from_secs(15);

fn start_py(opts: &[&str], env: &[(&str, &str)]) -> Init {
    let mut args: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
    args.push("--".into());
    args.extend(py_server());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Init::start(Mode::Subreaper, &args, env).expect("subreaper mode needs nothing")
}

/// GETs `path` until `n` distinct workers (by pid) have answered; returns their bodies.
fn from_workers(addr: &str, path: &str, n: usize) -> HashMap<i64, String> {
    let mut seen = HashMap::new();
    wait_for(LONG, || {
        if let Ok((200, body)) = http_get(addr, path, Duration::from_secs(5)) {
            let pid = if path == "/info" {
                serde_json::from_str::<serde_json::Value>(&body).ok()?["pid"].as_i64()?
            } else {
                body.split_whitespace().nth(3)?.parse().ok()?
            };
            seen.insert(pid, body);
        }
        (seen.len() >= n).then_some(())
    })
    .unwrap_or_else(|| panic!("only {} of {n} workers answered", seen.len()));
    seen
}

#[test]
fn each_worker_sees_the_socket_contract_and_nothing_else() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let init = start_py(&["-w", "2", "--listen", &format!("web={addr}")], &[]);
    let infos = from_workers(&addr, "/info", 2);
    let mut slots = HashSet::new();
    for (pid, body) in infos {
        let info: serde_json::Value = serde_json::from_str(&body).unwrap();
        let env = &info["env"];
        assert_eq!(env["LISTEN_FDS"], "1", "{info}");
        assert_eq!(
            env["LISTEN_PID"],
            pid.to_string(),
            "LISTEN_PID is not the worker's own pid: {info}"
        );
        assert_eq!(env["LISTEN_FDNAMES"], "web", "{info}");
        assert_eq!(
            info["fd3_listening"], true,
            "fd 3 is not a listening socket: {info}"
        );
        slots.insert(env["CLUSTER_WORKER_ID"].as_str().unwrap().to_string());
        // Nothing of ours leaks: stdio and fd 3, and nothing else (the directory handle that
        // listed /proc/self/fd is the worker's own).
        let fds = info["fds"].as_object().unwrap();
        let extra: Vec<_> = fds
            .iter()
            .filter(|(fd, target)| {
                !["0", "1", "2", "3"].contains(&fd.as_str())
                    && !target.as_str().unwrap_or("").starts_with("/proc/")
            })
            .collect();
        assert!(
            extra.is_empty(),
            "worker {pid} inherited extra descriptors: {extra:?}"
        );
        assert!(fds["3"].as_str().unwrap().starts_with("socket:"), "{fds:?}");
    }
    assert_eq!(slots, HashSet::from(["0".to_string(), "1".to_string()]));
    drop(init);
}

#[test]
fn reuseport_spreads_requests_over_every_worker() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _init = start_py(&["-w", "4", "--listen", &addr], &[]);
    from_workers(&addr, "/", 4);
    let mut per_pid: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let (code, body) = http_get(&addr, "/", Duration::from_secs(5)).expect("request");
        assert_eq!(code, 200);
        *per_pid
            .entry(body.split_whitespace().nth(3).unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(per_pid.len(), 4, "{per_pid:?}");
    // The kernel hashes connections over the four sockets: each gets about a quarter.
    assert!(
        per_pid.values().all(|&n| n >= 50),
        "uneven spread: {per_pid:?}"
    );
}

#[test]
fn workers_that_exit_every_few_requests_lose_nothing_under_load() {
    for balance in ["reuseport", "shared"] {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut init = start_py(
            &[
                "-w",
                "2",
                "--listen",
                &addr,
                "--balance",
                balance,
                "--backoff-initial",
                "20ms",
                "--backoff-max",
                "100ms",
            ],
            &[("EXIT_AFTER", "25")],
        );
        from_workers(&addr, "/", 2);
        let load = Load::start(&addr, 8);
        std::thread::sleep(Duration::from_secs(3));
        let (ok, errors) = load.finish();
        let restarts = init.log().matches("restart #").count();
        assert!(
            errors.is_empty(),
            "{balance}: {} of {} requests failed: {:?}",
            errors.len(),
            ok + errors.len(),
            &errors[..errors.len().min(5)]
        );
        assert!(ok >= 150, "{balance}: only {ok} requests served");
        assert!(
            restarts >= 4,
            "{balance}: workers did not come and go ({restarts} restarts)"
        );
        init.signal(libc::SIGTERM);
        assert_eq!(init.wait(LONG), Some(0), "{balance}: log:\n{}", init.log());
    }
}

#[test]
fn shared_mode_hands_one_socket_to_every_worker() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _init = start_py(&["-w", "2", "--listen", &addr, "--balance", "shared"], &[]);
    let infos = from_workers(&addr, "/info", 2);
    for body in infos.values() {
        let info: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(info["env"]["LISTEN_FDS"], "1");
    }
    // The same socket: both workers' fd 3 name one inode.
    let inodes: HashSet<String> = infos
        .values()
        .map(|b| {
            serde_json::from_str::<serde_json::Value>(b).unwrap()["fds"]["3"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(inodes.len(), 1, "{inodes:?}");
}

#[test]
fn node_serves_through_the_passed_socket() {
    if !common::require(
        std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok(),
        "node",
    ) {
        return;
    }
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = format!("{}/examples/node/server.js", env!("CARGO_MANIFEST_DIR"));
    let _init = Init::start(
        Mode::Subreaper,
        &["-w", "2", "--listen", &addr, "--", "node", &server],
        &[],
    )
    .unwrap();
    let bodies = from_workers(&addr, "/", 2);
    assert!(bodies.values().all(|b| b.contains("worker")), "{bodies:?}");
}

#[test]
fn gunicorn_serves_through_the_passed_socket() {
    // The example's own pin, so this test proves what examples/gunicorn tells users.
    let pin = std::fs::read_to_string(format!(
        "{}/examples/gunicorn/requirements.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let Some(venv) = common::venv("gunicorn", &common::requirements(&pin)) else {
        return;
    };
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let app_dir = format!("{}/examples/gunicorn", env!("CARGO_MANIFEST_DIR"));
    let gunicorn = venv.join("bin/gunicorn");
    let _init = Init::start(
        Mode::Subreaper,
        &[
            "-w",
            "2",
            "--listen",
            &addr,
            "--",
            gunicorn.to_str().unwrap(),
            "--chdir",
            &app_dir,
            "-w",
            "1",
            "--no-control-socket",
            "app:app",
        ],
        &[],
    )
    .unwrap();
    // gunicorn's master forks its own worker: each of our slots runs one master + one worker.
    let bodies = from_workers(&addr, "/", 2);
    assert!(bodies.values().all(|b| b.contains("worker")), "{bodies:?}");
}

#[test]
fn a_taken_port_exits_2_before_any_worker_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(common::bin())
        .args(["--listen", &addr, "--", "sh", "-c", "echo started"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("cannot bind {addr}: address in use")),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("started"),
        "a worker ran"
    );
}

#[test]
fn unix_socket_has_its_mode_and_is_removed_at_exit() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = common::scratch();
    let path = dir.path().join("app.sock");
    let spec = format!("unix:{}", path.display());
    let mut init = Init::start(
        Mode::Subreaper,
        &["-w", "1", "--listen", &spec, "--", "sleep", "1000"],
        &[],
    )
    .unwrap();
    init.wait_workers(1, LONG);
    let meta = std::fs::metadata(&path).expect("socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0));
    assert!(!path.exists(), "socket file left behind");
}

#[test]
fn a_socket_activated_init_serves_the_inherited_socket() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // A stand-in for systemd: bind, put the socket at fd 3, set LISTEN_PID to the pid that
    // exec's cluster-init, exec.
    let server = py_server();
    let activator = format!(
        "import os, socket, sys\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen(64)\n\
         os.dup2(s.fileno(), 3); os.set_inheritable(3, True)\n\
         os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES='http')\n\
         os.execv(sys.argv[1], sys.argv[1:])\n"
    );
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            &activator,
            common::bin(),
            "-w",
            "2",
            "--",
            &server[0],
            &server[1],
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let bodies = from_workers(&addr, "/info", 2);
    for body in bodies.values() {
        let info: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(info["env"]["LISTEN_FDNAMES"], "http", "{info}");
    }
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_for(LONG, || child.try_wait().ok().flatten()).expect("activated init exits");
    assert_eq!(status.code(), Some(0));
}
