//! No connection waits for a worker that is dead, hung or leaving: new connections are steered
//! to the slots that serve (a classic BPF program on the reuseport group), a hung worker is found
//! by its accept queue, queued connections move when the kernel allows, and the final stop
//! refuses what nobody will serve. Real sockets, the real test server, the real kernel.

mod common;

use std::collections::HashSet;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::{http_get, wait_for, Pool};

const LONG: Duration = Duration::from_secs(20);

/// The pid of slot `slot`'s worker that is in `state`, from `/status`.
fn pid_of(p: &Pool, slot: u64, state: &str) -> i32 {
    let s = p.wait_status(&format!("slot {slot} {state}"), |s| {
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["slot"] == slot && w["state"] == state && w["pid"].is_i64())
    });
    s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["slot"] == slot && w["state"] == state)
        .and_then(|w| w["pid"].as_i64())
        .unwrap() as i32
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: plain syscall on a worker of this test's pool.
    unsafe { libc::kill(pid, sig) };
}

fn all_ready(p: &Pool, n: usize) {
    p.wait_status(&format!("{n} ready workers"), |s| {
        s["workers"]
            .as_array()
            .is_some_and(|w| w.iter().filter(|w| w["state"] == "ready").count() == n)
    });
}

/// Worker ids that answered `n` requests, each on a new connection and within `limit`.
fn answers(addr: &str, n: usize, limit: Duration) -> Result<Vec<String>, String> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            let (code, body) =
                http_get(addr, "/", limit).map_err(|e| format!("request {i}: {e}"))?;
            if code != 200 {
                return Err(format!("request {i}: {code}"));
            }
            if t.elapsed() > limit {
                return Err(format!("request {i} took {:?}", t.elapsed()));
            }
            Ok(body
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string())
        })
        .collect()
}

#[test]
fn a_slot_in_backoff_gets_no_new_connection() {
    let p = Pool::start(
        &["-w", "2", "--backoff-initial", "4s", "--backoff-max", "4s"],
        &[],
    );
    all_ready(&p, 2);
    kill(pid_of(&p, 1, "ready"), libc::SIGKILL);
    p.wait_status("slot 1 backing off", |s| {
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["slot"] == 1 && w["state"] == "backoff")
    });
    let t = Instant::now();
    let got = answers(&p.addr, 60, Duration::from_millis(1000))
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", p.init.log()));
    assert!(got.iter().all(|w| w == "0"), "{got:?}");
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "60 requests took {:?}",
        t.elapsed()
    );
    assert_eq!(p.status()["serving"], serde_json::json!([0]));
}

#[test]
fn a_stopped_worker_is_found_by_its_stalled_queue_and_every_queued_connection_is_answered() {
    let p = Pool::start(
        &[
            "-w",
            "2",
            "--stall-timeout",
            "2s",
            "--stop-timeout",
            "2s",
            "--backoff-initial",
            "100ms",
        ],
        &[],
    );
    all_ready(&p, 2);
    let hung = pid_of(&p, 1, "ready");
    kill(hung, libc::SIGSTOP);
    let addr = p.addr.clone();
    let clients: Vec<_> = (0..40)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || http_get(&addr, "/", Duration::from_secs(20)))
        })
        .collect();
    let t = Instant::now();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r, Ok((200, _))))
        .collect();
    assert!(failed.is_empty(), "{failed:?}; log:\n{}", p.init.log());
    assert!(
        t.elapsed() < Duration::from_secs(12),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        p.init.log().contains("accept queue stalled"),
        "{}",
        p.init.log()
    );
    wait_for(LONG, || {
        (p.metric("cluster_init_worker_exits_total{reason=\"stalled\"}") == Some(1.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("the hung worker was never reaped; log:\n{}", p.init.log()));
    assert!(!common::alive(hung));
}

#[test]
fn the_final_stop_refuses_new_connections_at_once_when_the_servers_close_theirs() {
    let mut p = Pool::start(
        &["-w", "2", "--stop-timeout", "10s"],
        &[("CLOSE_ON_TERM", "1"), ("STOP_DELAY", "3")],
    );
    all_ready(&p, 2);
    answers(&p.addr, 4, Duration::from_secs(2)).expect("serving");
    p.init.signal(libc::SIGTERM);
    let t = Instant::now();
    let sock: std::net::SocketAddr = p.addr.parse().unwrap();
    // Connections made just as the sockets close may be reset: a fast failure is fine, waiting
    // for a worker that will never accept is not.
    let refused = wait_for(Duration::from_secs(2), || {
        use std::io::{ErrorKind, Read, Write};
        match TcpStream::connect_timeout(&sock, Duration::from_millis(300)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Some(t.elapsed()),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
            Err(e) => panic!("connect: {e}"),
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 64];
                match s.read(&mut buf) {
                    Ok(_) => None,
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
                    other => panic!(
                        "a connection made {:?} after the stop began was neither refused nor answered: {other:?}",
                        t.elapsed()
                    ),
                }
            }
        }
    });
    let refused = refused.unwrap_or_else(|| panic!("never refused; log:\n{}", p.init.log()));
    assert!(
        refused < Duration::from_millis(1000),
        "refused after {refused:?}"
    );
    assert_eq!(p.init.wait(LONG), Some(0), "log:\n{}", p.init.log());
}

#[test]
fn scaling_up_and_down_keeps_every_serving_slot_reachable() {
    let p = Pool::start(&["-w", "2"], &[]);
    all_ready(&p, 2);
    let ids = |n| -> HashSet<String> {
        answers(&p.addr, n, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}; {}\nlog:\n{}", p.status(), p.init.log()))
            .into_iter()
            .collect()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
    for _ in 0..2 {
        p.init.signal(libc::SIGTTIN);
        std::thread::sleep(Duration::from_millis(200));
    }
    all_ready(&p, 4);
    assert_eq!(ids(200), set(&["0", "1", "2", "3"]));
    p.init.signal(libc::SIGTTOU);
    p.wait_status("3 slots", |s| {
        s["desired"] == 3 && s["serving"] == serde_json::json!([0, 1, 2])
    });
    assert_eq!(ids(200), set(&["0", "1", "2"]));
    p.init.signal(libc::SIGTTIN);
    all_ready(&p, 4);
    assert_eq!(ids(200), set(&["0", "1", "2", "3"]));
}

#[test]
fn every_change_of_the_serving_slots_replaces_the_steering_program() {
    let p = Pool::start(&["-w", "2", "--backoff-initial", "1s"], &[]);
    all_ready(&p, 2);
    let s = p.wait_status("both serving", |s| {
        s["serving"] == serde_json::json!([0, 1])
    });
    assert_eq!(s["steering"], "on", "{s}");
    let before = s["steering_updates"].as_u64().unwrap();
    kill(pid_of(&p, 1, "ready"), libc::SIGKILL);
    let s = p.wait_status("slot 1 out", |s| s["serving"] == serde_json::json!([0]));
    let out = s["steering_updates"].as_u64().unwrap();
    assert_eq!(out, before + 1, "{s}");
    let s = p.wait_status("slot 1 back", |s| s["serving"] == serde_json::json!([0, 1]));
    assert_eq!(s["steering_updates"].as_u64().unwrap(), out + 1, "{s}");
}

#[test]
fn accept_queues_are_visible_in_metrics_and_status() {
    let p = Pool::start(&["-w", "2"], &[]);
    all_ready(&p, 2);
    let hung = pid_of(&p, 1, "ready");
    kill(hung, libc::SIGSTOP);
    let sock: std::net::SocketAddr = p.addr.parse().unwrap();
    // Slot 1 still counts as serving (no stall timeout): about half of these wait in its queue.
    let _held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect_timeout(&sock, Duration::from_secs(2)).expect("connect"))
        .collect();
    let queued = wait_for(Duration::from_secs(5), || {
        p.metric("cluster_init_listen_queue{listener=\"tcp\",slot=\"1\"}")
            .filter(|&q| q >= 1.0)
    });
    kill(hung, libc::SIGCONT);
    assert!(queued.is_some(), "{}", p.get("/metrics").1);
    assert_eq!(
        p.metric("cluster_init_listen_backlog{listener=\"tcp\",slot=\"0\"}"),
        Some(1024.0)
    );
    let s = p.status();
    assert!(
        s["listeners"].as_array().is_some_and(|l| l.len() == 2),
        "{s}"
    );
    assert!(s["workers"][0]["queued"].is_u64(), "{s}");
}

/// Runs `f` on a thread that joined the network namespace of process `pid`.
fn in_netns_of<T: Send + 'static>(pid: i32, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("netns");
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// Puts the init in a network namespace of its own, with lo up and net.ipv4.tcp_migrate_req=1
/// there only.
fn own_netns_with_migrate(cmd: &mut std::process::Command) {
    let sysctl = std::ffi::CString::new("/proc/sys/net/ipv4/tcp_migrate_req").unwrap();
    // SAFETY: unshare, socket, ioctl, open, write and close are async-signal-safe, and every
    // buffer was made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            let mut ifr: libc::ifreq = std::mem::zeroed();
            ifr.ifr_name[..3].copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char, 0]);
            ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK) as libc::c_short;
            if libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(s);
            let fd = libc::open(sysctl.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"1".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
}

fn migrate_tier_ready() -> bool {
    common::require(common::is_root(), "root (a network namespace of its own)")
        && common::require(
            std::path::Path::new("/proc/sys/net/ipv4/tcp_migrate_req").exists(),
            "net.ipv4.tcp_migrate_req (Linux 5.14+)",
        )
}

/// `/status` of an init in another network namespace, read from a thread inside it.
fn status_in(pid: i32, admin: &str) -> serde_json::Value {
    let admin = admin.to_string();
    in_netns_of(pid, move || {
        http_get(&admin, "/status", Duration::from_secs(2))
            .ok()
            .and_then(|r| serde_json::from_str(&r.1).ok())
            .unwrap_or(serde_json::Value::Null)
    })
}

fn ready_pid(s: &serde_json::Value, slot: u64) -> Option<i32> {
    s["workers"]
        .as_array()?
        .iter()
        .find_map(|w| (w["slot"] == slot && w["state"] == "ready").then(|| w["pid"].as_i64())?)
        .map(|p| p as i32)
}

fn socket_of(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|l| l.display().to_string())
        .unwrap_or_default()
}

/// A slot whose socket was closed while it backed off (parked) comes back on a socket of its
/// own: its next worker does not share a sibling's, and steering sends it its share again. Slot
/// 0, not the highest: a slot below others must get its socket back too.
#[test]
fn a_parked_slot_comes_back_on_a_socket_of_its_own() {
    if !migrate_tier_ready() {
        return;
    }
    let p = Pool::start_with(
        &[
            "-w",
            "2",
            "--backoff-initial",
            "1s",
            "--backoff-max",
            "1s",
            "--give-up-after",
            "0",
        ],
        &[],
        own_netns_with_migrate,
    );
    let pid = p.init.pid();
    let ready = |not: &[i32]| {
        wait_for(LONG, || {
            let s = status_in(pid, &p.admin);
            let (a, b) = (ready_pid(&s, 0)?, ready_pid(&s, 1)?);
            (!not.contains(&a)).then_some((a, b))
        })
        .unwrap_or_else(|| panic!("slots not ready; log:\n{}", p.init.log()))
    };
    let (first, one) = ready(&[]);
    // Down for half a second or more: parked meanwhile.
    kill(first, libc::SIGKILL);
    let (third, one_now) = ready(&[first]);
    assert_eq!(one_now, one);
    assert!(
        p.init.log().contains("slot 0 stays down"),
        "never parked; log:\n{}",
        p.init.log()
    );
    let (mine, sibling) = (socket_of(third, 3), socket_of(one, 3));
    assert!(mine.starts_with("socket:"), "{mine:?}");
    assert_ne!(mine, sibling, "slot 0's worker got slot 1's socket");
    let addr = p.addr.clone();
    let got = in_netns_of(pid, move || answers(&addr, 100, Duration::from_secs(5)));
    let got = got.unwrap_or_else(|e| panic!("{e}; log:\n{}", p.init.log()));
    let zeros = got.iter().filter(|w| *w == "0").count();
    assert!(
        zeros > 10 && zeros < 90,
        "slot 0 answered {zeros} of 100; log:\n{}",
        p.init.log()
    );
}

#[test]
fn with_tcp_migrate_req_a_crash_looping_slots_queue_moves_to_the_live_slot() {
    if !migrate_tier_ready() {
        return;
    }
    // Its own network namespace, with lo up and tcp_migrate_req=1 there only.
    let p = Pool::start_with(
        &[
            "-w",
            "2",
            "--backoff-initial",
            "300ms",
            "--backoff-max",
            "3s",
            "--give-up-after",
            "0",
        ],
        &[("FAIL_SLOT", "1")],
        own_netns_with_migrate,
    );
    let pid = p.init.pid();
    let (addr, admin) = (p.addr.clone(), p.admin.clone());
    // Clients inside the namespace, for as long as slot 1 crash-loops: each connection that
    // lands on slot 1's socket while its worker boots must still be answered, by slot 0.
    let (failures, served, status) = in_netns_of(pid, move || {
        let _ = wait_for(LONG, || {
            http_get(&admin, "/readyz", Duration::from_secs(1))
                .ok()
                .filter(|r| r.0 == 200)
        });
        let mut failures = Vec::new();
        let mut served = 0;
        let end = Instant::now() + Duration::from_secs(6);
        let mut pending: Vec<std::thread::JoinHandle<Result<(u16, String), String>>> = Vec::new();
        while Instant::now() < end {
            let a = addr.clone();
            pending.push(std::thread::spawn(move || {
                http_get(&a, "/", Duration::from_secs(5))
            }));
            std::thread::sleep(Duration::from_millis(20));
        }
        for c in pending {
            match c.join().unwrap() {
                Ok((200, _)) => served += 1,
                other => failures.push(format!("{other:?}")),
            }
        }
        let status = http_get(&admin, "/status", Duration::from_secs(2)).map(|r| r.1);
        (failures, served, status)
    });
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}\nstatus: {status:?}\nlog:\n{}",
        failures.len(),
        failures.len() + served,
        &failures[..failures.len().min(3)],
        p.init.log()
    );
    assert!(
        p.init.log().contains("tcp_migrate_req=1"),
        "{}",
        p.init.log()
    );
}

/// Connections already queued on a slot when its worker dies do not wait out a long backoff
/// where the kernel can move them: the slot closes its socket and the live slot answers them.
#[test]
fn with_tcp_migrate_req_a_dead_slots_queue_is_answered_by_the_live_slot_at_once() {
    if !migrate_tier_ready() {
        return;
    }
    let p = Pool::start_with(
        &["-w", "2", "--backoff-initial", "4s", "--backoff-max", "4s"],
        &[],
        own_netns_with_migrate,
    );
    let pid = p.init.pid();
    let s = wait_for(LONG, || {
        let s = status_in(pid, &p.admin);
        Some((ready_pid(&s, 0)?, ready_pid(&s, 1)?))
    });
    let (_, hung) = s.unwrap_or_else(|| panic!("not ready; log:\n{}", p.init.log()));
    // Slot 1's worker stops accepting: about half the clients below queue on its socket.
    kill(hung, libc::SIGSTOP);
    let addr = p.addr.clone();
    let clients = std::thread::spawn(move || {
        in_netns_of(pid, move || {
            let pending: Vec<_> = (0..20)
                .map(|_| {
                    let a = addr.clone();
                    std::thread::spawn(move || {
                        let t = Instant::now();
                        (http_get(&a, "/", Duration::from_secs(10)), t.elapsed())
                    })
                })
                .collect();
            pending
                .into_iter()
                .map(|c| c.join().unwrap())
                .collect::<Vec<_>>()
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    kill(hung, libc::SIGKILL);
    let t = Instant::now();
    let got = clients.join().unwrap();
    let slowest = got.iter().map(|(_, d)| *d).max().unwrap();
    let failed: Vec<_> = got
        .iter()
        .filter(|(r, _)| !matches!(r, Ok((200, _))))
        .collect();
    assert!(failed.is_empty(), "{failed:?}; log:\n{}", p.init.log());
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "the queued connections waited {:?} (slowest {slowest:?}) for the slot's successor; log:\n{}",
        t.elapsed(),
        p.init.log()
    );
}
