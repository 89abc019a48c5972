//! Probes always get through: whatever holds connections to the admin port (idle keep-alive
//! clients, a thousand idle sockets, slowloris clients) or floods the notify socket, `/livez`
//! is answered at once, so nothing that can reach the port can make the kubelet restart the pod.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{http_get, wait_for, Init, Mode, Pool};

/// `n` probes of `/livez`, one after another: (answered, median latency).
fn probe(admin: &str, n: usize) -> (usize, Duration, Vec<String>) {
    let mut times = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        match http_get(admin, "/livez", Duration::from_secs(2)) {
            Ok((200, _)) => times.push(t.elapsed()),
            other => errors.push(format!("{other:?}")),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or(Duration::MAX);
    (times.len(), median, errors)
}

fn assert_probes_pass(p: &Pool, what: &str) {
    let (ok, median, errors) = probe(&p.admin, 20);
    assert_eq!(
        ok,
        20,
        "{what}: {} of 20 probes failed: {errors:?}",
        20 - ok
    );
    assert!(
        median < Duration::from_millis(100),
        "{what}: median {median:?}"
    );
}

#[test]
fn idle_keep_alive_clients_do_not_take_livez_down() {
    let p = Pool::start(&["-w", "1"], &[]);
    p.get("/livez");
    let addr: SocketAddr = p.admin.parse().unwrap();
    // 64 clients that each made a keep-alive request and then sat on the connection.
    let _held: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("write");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    assert_probes_pass(&p, "64 idle keep-alive clients");
}

#[test]
fn a_thousand_idle_connections_do_not_take_livez_down() {
    let p = Pool::start(&["-w", "1"], &[]);
    p.get("/livez");
    let addr: SocketAddr = p.admin.parse().unwrap();
    let _held: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect();
    assert_probes_pass(&p, "1000 idle connections");
}

#[test]
fn slowloris_clients_do_not_take_livez_down() {
    let p = Pool::start(&["-w", "1"], &[]);
    p.get("/livez");
    let addr: SocketAddr = p.admin.parse().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 100 clients each sending one byte of a request head every 100 ms, forever.
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut socks: Vec<TcpStream> = (0..100)
                .filter_map(|_| TcpStream::connect(addr).ok())
                .collect();
            let head = b"GET /metrics HTTP/1.1\r\nHost: a-very-long-host-name-sent-slowly\r\nX: ";
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for s in &mut socks {
                    let _ = s.write_all(&[head[i % head.len()]]);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
                // Reconnect the ones the server dropped, as an attacker would.
                socks.retain(|s| s.peer_addr().is_ok());
                while socks.len() < 100 {
                    match TcpStream::connect(addr) {
                        Ok(s) => socks.push(s),
                        Err(_) => break,
                    }
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let result = probe(&p.admin, 20);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickle.join().unwrap();
    let (ok, median, errors) = result;
    assert_eq!(ok, 20, "{} of 20 probes failed: {errors:?}", 20 - ok);
    assert!(median < Duration::from_millis(100), "median {median:?}");
}

#[test]
fn a_worker_flooding_the_notify_socket_costs_the_init_little() {
    let admin = format!("127.0.0.1:{}", common::free_port());
    // Slot 0 floods; slot 1 gets ready through the same socket while it does.
    let code = "import os, socket, sys, time
a = os.environ['NOTIFY_SOCKET']; a = chr(0) + a[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
if os.environ['CLUSTER_WORKER_ID'] == '0':
    s.sendto(b'READY=1', a)
    end = time.time() + 1000
    while time.time() < end:
        try: s.sendto(b'STATUS=flooding the notify socket', a)
        except OSError: pass
time.sleep(1.5)
s.sendto(b'READY=1', a)
time.sleep(1000)";
    let Some(init) = Init::start(
        Mode::Subreaper,
        &[
            "-w",
            "2",
            "--ready",
            "notify",
            "--admin-listen",
            &admin,
            "--",
            "python3",
            "-c",
            code,
        ],
        &[],
    ) else {
        return;
    };
    let status = |path| http_get(&admin, path, Duration::from_secs(2));
    wait_for(Duration::from_secs(10), || status("/livez").ok()).expect("admin up");
    let cpu0 = common::cpu_time(init.pid()).unwrap();
    let t = Instant::now();
    // The flooded socket still carries slot 1's READY=1.
    let both = wait_for(Duration::from_secs(10), || {
        let (_, body) = status("/status").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let ready = v["workers"]
            .as_array()?
            .iter()
            .filter(|w| w["state"] == "ready")
            .count();
        (ready == 2).then_some(())
    });
    assert!(
        both.is_some(),
        "slot 1 never got ready; log:\n{}",
        init.log()
    );
    std::thread::sleep(Duration::from_secs(3).saturating_sub(t.elapsed()));
    let cpu = common::cpu_time(init.pid()).unwrap() - cpu0;
    let share = cpu.as_secs_f64() / t.elapsed().as_secs_f64();
    assert!(
        share < 0.25,
        "the init used {:.0}% of a core",
        share * 100.0
    );
    let t = Instant::now();
    assert_eq!(status("/livez").map(|r| r.0), Ok(200));
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
}
