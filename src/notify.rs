//! The sd_notify server (`--ready notify`): the `NOTIFY_SOCKET` our workers report to.
//!
//! The protocol, as in `sd_notify(3)`: a worker sends datagrams to the `AF_UNIX` `SOCK_DGRAM`
//! socket named in `NOTIFY_SOCKET`; each datagram holds newline-separated `KEY=VALUE`
//! assignments. We understand:
//!
//! | assignment        | meaning                                                |
//! |-------------------|--------------------------------------------------------|
//! | `READY=1`         | the worker is ready to serve                           |
//! | `RELOADING=1`     | the worker is reloading; `READY=1` follows when done   |
//! | `STOPPING=1`      | the worker is shutting down                            |
//! | `STATUS=text`     | a human-readable status line                           |
//! | `WATCHDOG=1`      | watchdog keep-alive                                    |
//! | `WATCHDOG=trigger`| the worker asks to be treated as hung                  |
//! | `MAINPID=n`       | the worker's main process is `n`                       |
//! | `ERRNO=n`         | the worker failed with errno `n`                       |
//!
//! Anything else (`WATCHDOG_USEC=`, `FDSTORE=1`, ...) comes through as [`Notice::Other`].
//!
//! Who sent a datagram is told by the kernel, not by the sender: the socket has `SO_PASSCRED`,
//! so each datagram carries the sender's pid. A message from a worker's descendant (the
//! children of a pre-forking master) counts for that worker: [`owning_worker`] walks the
//! parent chain in `/proc` up to a known worker pid.
//!
//! Nothing a worker sends may cost PID 1 more than one bounded read: a datagram over
//! [`MAX_DATAGRAM`] bytes is dropped, and file descriptors passed along (`SCM_RIGHTS`, as for
//! `FDSTORE=1`, which we do not offer) are closed on arrival so they cannot pile up in PID 1.
//!
//! Where the socket lives: nowhere on disk. It is an abstract unix socket,
//! `@cluster-init/<pid namespace inode>/<our pid>/notify`, so `--ready notify` works on a read-only
//! root with no writable directory, and two inits sharing a network namespace (two containers of
//! one pod) never meet: each container has its own PID namespace, and inits in one namespace have
//! their own pids. Anyone in the network namespace can send to an abstract name, which is why the
//! sender is judged by its kernel-given pid alone: it must be one of our workers or their
//! descendants (a process of another PID namespace arrives as pid 0 and is dropped).

use std::ffi::OsStr;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::socket::{
    bind, recvmsg, sendto, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned,
    MsgFlags, SockFlag, SockType, UnixAddr,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{debug, warn};

/// Largest datagram we accept; systemd uses the same bound (`PIPE_BUF`). Longer ones are
/// truncated by the kernel and dropped by us.
pub const MAX_DATAGRAM: usize = 4096;
/// Bound on the `/proc` walk from a sender up to its worker.
pub const MAX_ANCESTRY: usize = 64;
/// After this many datagrams dropped in a row, `recv` yields to the rest of the loop, so that a
/// flood of junk cannot keep PID 1 in one call.
const DROPS_BEFORE_YIELD: u32 = 32;
/// `SCM_MAX_FD` in Linux: the most fds one datagram can carry.
const SCM_MAX_FD: usize = 253;

/// One assignment of an sd_notify datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Ready,
    Stopping,
    Reloading,
    Watchdog,
    /// `WATCHDOG=trigger`: the worker reports itself hung.
    WatchdogTrigger,
    Status(String),
    MainPid(i32),
    Errno(i32),
    /// Any other well-formed `KEY=VALUE` line, kept whole.
    Other(String),
}

/// Parses one datagram. Tolerant on purpose: lines that are not UTF-8 or not `KEY=VALUE`, and
/// known keys with values we cannot use (`MAINPID=abc`, `READY=0`), are skipped.
pub fn parse(datagram: &[u8]) -> Vec<Notice> {
    datagram
        .split(|&b| b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            match (key, value) {
                ("READY", "1") => Some(Notice::Ready),
                ("STOPPING", "1") => Some(Notice::Stopping),
                ("RELOADING", "1") => Some(Notice::Reloading),
                ("WATCHDOG", "1") => Some(Notice::Watchdog),
                ("WATCHDOG", "trigger") => Some(Notice::WatchdogTrigger),
                ("STATUS", text) => Some(Notice::Status(text.to_string())),
                ("MAINPID", n) => n.parse().ok().filter(|&p| p > 0).map(Notice::MainPid),
                ("ERRNO", n) => n.parse().ok().filter(|&e| e >= 0).map(Notice::Errno),
                ("READY" | "STOPPING" | "RELOADING" | "WATCHDOG", _) => None,
                ("", _) => None,
                _ => Some(Notice::Other(line.to_string())),
            }
        })
        .collect()
}

/// Datagrams taken per [`RATE_WINDOW`] at most: beyond, the socket is left alone until the
/// window ends (its queue fills and senders wait or fail), so a flooding sender costs PID 1 a
/// few percent of a core, never all of it. Real servers send a handful per second.
pub const RATE_LIMIT: u32 = 100;
pub const RATE_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);

/// The bound notify socket.
pub struct NotifyServer {
    fd: AsyncFd<OwnedFd>,
    /// `@name`, as workers get it in `NOTIFY_SOCKET`.
    name: String,
    /// The current rate window's start and the datagrams taken in it.
    window: std::cell::Cell<(tokio::time::Instant, u32)>,
}

impl NotifyServer {
    /// Binds this init's own abstract name. Must be called inside the runtime.
    pub fn bind_for_pool() -> Result<NotifyServer, String> {
        let ns = std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .and_then(|l| {
                let l = l.to_string_lossy().into_owned();
                l.strip_prefix("pid:[")?
                    .strip_suffix(']')
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "0".into());
        NotifyServer::bind(&format!("cluster-init/{ns}/{}/notify", std::process::id()))
    }

    /// Binds a datagram socket at the abstract `name` (given without the `@`). Must be called
    /// inside the runtime (the socket is registered with its reactor).
    pub fn bind(name: &str) -> Result<NotifyServer, String> {
        let what = |e: &dyn std::fmt::Display| format!("cannot bind notify socket @{name}: {e}");
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| what(&e))?;
        // Without SO_PASSCRED the kernel attaches no sender pid, and we could not tell workers apart.
        setsockopt(&fd, sockopt::PassCred, &true).map_err(|e| what(&e))?;
        let addr = UnixAddr::new_abstract(name.as_bytes()).map_err(|e| what(&e))?;
        bind(fd.as_raw_fd(), &addr).map_err(|e| what(&e))?;
        // SAFETY: the AsyncFd owns the socket and keeps it open for as long as it lives.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| what(&io::Error::from(e)))?;
        Ok(NotifyServer {
            fd,
            name: format!("@{name}"),
            window: std::cell::Cell::new((tokio::time::Instant::now(), 0)),
        })
    }

    /// What workers get as `NOTIFY_SOCKET`: `@` and the abstract name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next datagram worth handing on: its sender's pid and its notices. Datagrams that are
    /// oversized, carry no credentials, or hold no assignment are dropped here.
    ///
    /// Cancel-safe: a datagram is either returned or was never taken off the socket (the read
    /// itself never awaits), so this can sit in a `tokio::select!` arm.
    ///
    /// An error comes from the kernel (ENOMEM, say), not from a sender: log it and call again.
    pub async fn recv(&self) -> io::Result<(i32, Vec<Notice>)> {
        let mut dropped = 0u32;
        loop {
            let (start, taken) = self.window.get();
            if taken >= RATE_LIMIT {
                tokio::time::sleep_until(start + RATE_WINDOW).await;
            }
            let now = tokio::time::Instant::now();
            if now >= start + RATE_WINDOW {
                self.window.set((now, 0));
            }
            let mut guard = self.fd.readable().await?;
            let got = match guard.try_io(|fd| receive_one(fd.get_ref().as_raw_fd())) {
                Ok(Ok(got)) => {
                    let (start, taken) = self.window.get();
                    self.window.set((start, taken + 1));
                    got
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                // Spurious readiness: try_io cleared it; wait again.
                Err(_would_block) => continue,
            };
            if let Some(msg) = got {
                return Ok(msg);
            }
            dropped += 1;
            if dropped.is_multiple_of(DROPS_BEFORE_YIELD) {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Takes one datagram off the socket. `Ok(None)`: it was taken and dropped.
/// `Err(WouldBlock)` tells `try_io` the socket is drained.
fn receive_one(fd: RawFd) -> io::Result<Option<(i32, Vec<Notice>)>> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!(libc::ucred, [RawFd; SCM_MAX_FD]);
    // MSG_CMSG_CLOEXEC: any fd we are handed must not reach a worker we fork before closing it.
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let (bytes, flags) = (msg.bytes, msg.flags);

    // Credentials and fds are read before anything else is checked: whatever we then do with
    // the datagram, its fds must be closed.
    let mut sender = None;
    match msg.cmsgs() {
        Ok(cmsgs) => {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::ScmCredentials(cred) => sender = Some(cred.pid()),
                    ControlMessageOwned::ScmRights(fds) => close_passed_fds(&fds),
                    _ => {}
                }
            }
        }
        // Cannot happen with room for SCM_MAX_FD fds plus credentials; if it does, nix will
        // not let us see which fds arrived.
        Err(_) => warn!("notify socket: control data truncated; passed fds may leak"),
    }

    if flags.contains(MsgFlags::MSG_TRUNC) {
        debug!(pid = ?sender, "notify socket: datagram over {MAX_DATAGRAM} bytes dropped");
        return Ok(None);
    }
    let Some(pid) = sender.filter(|&p| p > 0) else {
        // pid 0: the sender is in a pid namespace we cannot see.
        debug!("notify socket: datagram without a usable sender pid dropped");
        return Ok(None);
    };
    let notices = parse(&buf[..bytes]);
    if notices.is_empty() {
        debug!(pid, "notify socket: datagram with no assignment dropped");
        return Ok(None);
    }
    Ok(Some((pid, notices)))
}

fn close_passed_fds(fds: &[RawFd]) {
    if !fds.is_empty() {
        debug!(count = fds.len(), "notify socket: closing fds passed to us");
    }
    for &fd in fds {
        // SAFETY: the kernel installed these fds in our table for this message alone; nothing
        // else knows them, so taking ownership (and closing on drop) cannot close a stranger's fd.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// Walks the parent chain from `pid` (at most [`MAX_ANCESTRY`] steps) until `is_worker` says yes,
/// and returns that worker's pid. `None` when the chain ends (pid 1, or a process already gone,
/// or an orphan re-parented away from its worker) without meeting a worker.
///
/// `proc_root` is `/proc` outside of tests.
pub fn owning_worker(proc_root: &Path, pid: i32, is_worker: impl Fn(i32) -> bool) -> Option<i32> {
    let mut pid = pid;
    for _ in 0..MAX_ANCESTRY {
        if pid <= 0 {
            return None;
        }
        if is_worker(pid) {
            return Some(pid);
        }
        let parent = match crate::memory::parent_pid(proc_root, pid) {
            Some(p) => p,
            None => {
                debug!(pid, "notify: sender is gone; its message is dropped");
                return None;
            }
        };
        // pid 1 (we, or the namespace's init) has no worker above it; a self-parent would loop.
        if parent <= 1 || parent == pid {
            return None;
        }
        pid = parent;
    }
    None
}

/// Sends `msg` (e.g. `READY=1`) to our own `NOTIFY_SOCKET`, for when cluster-init itself runs
/// under systemd or another supervisor. `Ok(false)` when `NOTIFY_SOCKET` is unset.
pub fn notify_upstream(msg: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(target) if !target.is_empty() => notify_socket(&target, msg).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends one sd_notify datagram to `target`: a path, or an abstract name written `@name`.
/// Never blocks: a full receive queue is an error (`WouldBlock`) for the caller to warn about.
pub fn notify_socket(target: &OsStr, msg: &str) -> io::Result<()> {
    let bytes = target.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => UnixAddr::new_abstract(&bytes[1..]),
        Some(b'/') => UnixAddr::new(Path::new(target)),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("NOTIFY_SOCKET={target:?}: only paths and @abstract names are supported"),
            ))
        }
    }
    .map_err(io::Error::from)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(io::Error::from)?;
    let sent = sendto(
        fd.as_raw_fd(),
        msg.as_bytes(),
        &addr,
        MsgFlags::MSG_NOSIGNAL,
    )
    .map_err(io::Error::from)?;
    if sent != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notify datagram sent short",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    const RECV_TIMEOUT: Duration = Duration::from_secs(10);

    #[test]
    fn parse_table() {
        use Notice::*;
        let cases: &[(&[u8], Vec<Notice>)] = &[
            (b"READY=1", vec![Ready]),
            (b"READY=1\n", vec![Ready]),
            (
                b"READY=1\nSTATUS=serving on :8080\nMAINPID=4242",
                vec![Ready, Status("serving on :8080".into()), MainPid(4242)],
            ),
            (b"STOPPING=1", vec![Stopping]),
            (b"RELOADING=1", vec![Reloading]),
            (b"WATCHDOG=1", vec![Watchdog]),
            (b"WATCHDOG=trigger", vec![WatchdogTrigger]),
            (b"ERRNO=2", vec![Errno(2)]),
            (b"STATUS=", vec![Status(String::new())]),
            (b"STATUS=a=b", vec![Status("a=b".into())]),
            (
                b"WATCHDOG_USEC=500000",
                vec![Other("WATCHDOG_USEC=500000".into())],
            ),
            (
                b"FDSTORE=1\nFDNAME=x",
                vec![Other("FDSTORE=1".into()), Other("FDNAME=x".into())],
            ),
            (b"READY=0", vec![]),
            (b"MAINPID=abc\nMAINPID=-3\nMAINPID=0", vec![]),
            (b"ERRNO=-1\nERRNO=x", vec![]),
            (b"no equals sign", vec![]),
            (b"=value", vec![]),
            (b"", vec![]),
            (b"\n\n", vec![]),
            (b"STATUS=\xff\xfe\nREADY=1", vec![Ready]),
        ];
        for (datagram, want) in cases {
            assert_eq!(
                &parse(datagram),
                want,
                "{:?}",
                String::from_utf8_lossy(datagram)
            );
        }
    }

    /// A server on an abstract name of this test alone.
    fn server() -> NotifyServer {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        NotifyServer::bind(&format!("cluster-init-test/{}/{n}", std::process::id())).expect("bind")
    }

    fn client_to(server: &NotifyServer) -> (UnixDatagram, std::os::unix::net::SocketAddr) {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&server.name()[1..])
            .expect("abstract address");
        (UnixDatagram::unbound().expect("socket"), addr)
    }

    /// Python: turn NOTIFY_SOCKET's `@name` (argv[1]) into the abstract address in `addr`.
    const ADDR: &str = "import sys\naddr = '\\0' + sys.argv[1][1:]\n";

    /// Runs `python3 -c code` with the socket's name as argv[1]; stdin is a pipe the child (and
    /// its children) may block on, so they stay alive until we drop it.
    fn python(code: &str, server: &NotifyServer) -> Child {
        Command::new("python3")
            .arg("-c")
            .arg(format!("{ADDR}{code}"))
            .arg(server.name())
            .stdin(Stdio::piped())
            .spawn()
            .expect("python3 runs")
    }

    fn finish(mut child: Child) {
        drop(child.stdin.take());
        let status = child.wait().expect("wait");
        assert!(status.success(), "helper failed: {status}");
    }

    async fn recv_in_time(server: &NotifyServer) -> (i32, Vec<Notice>) {
        tokio::time::timeout(RECV_TIMEOUT, server.recv())
            .await
            .expect("datagram in time")
            .expect("recv")
    }

    const SEND_AND_WAIT: &str = "
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b'READY=1\\nSTATUS=up', addr)
sys.stdin.read()
";

    #[tokio::test]
    async fn datagram_from_child_carries_its_pid() {
        let server = server();
        assert!(server.name().starts_with("@cluster-init-test/"));
        let child = python(SEND_AND_WAIT, &server);
        let (pid, notices) = recv_in_time(&server).await;
        assert_eq!(pid, child.id() as i32);
        assert_eq!(notices, vec![Notice::Ready, Notice::Status("up".into())]);
        assert_eq!(
            owning_worker(Path::new("/proc"), pid, |p| p == pid),
            Some(pid)
        );
        finish(child);
    }

    #[tokio::test]
    async fn grandchild_message_maps_to_the_child() {
        let server = server();
        // The child plays a pre-forking master; its own child sends and then waits on stdin.
        let master = "import subprocess, sys\nsubprocess.run([sys.executable, '-c', sys.argv[2], sys.argv[1]], check=True)\n".to_string();
        let child = Command::new("python3")
            .arg("-c")
            .arg(master)
            .arg(server.name())
            .arg(format!("{ADDR}{SEND_AND_WAIT}"))
            .stdin(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let worker = child.id() as i32;
        let (sender, notices) = recv_in_time(&server).await;
        assert_ne!(sender, worker, "the grandchild sent it");
        assert_eq!(notices[0], Notice::Ready);
        assert_eq!(
            owning_worker(Path::new("/proc"), sender, |p| p == worker),
            Some(worker)
        );
        // Not a descendant of any worker: no owner.
        assert_eq!(owning_worker(Path::new("/proc"), sender, |p| p == -5), None);
        finish(child);
        // The sender is gone now: the message cannot be attributed.
        assert_eq!(
            owning_worker(Path::new("/proc"), sender, |p| p == worker),
            None
        );
    }

    /// Every fd target of ours that names `needle`.
    fn open_fds_naming(needle: &str) -> Vec<std::path::PathBuf> {
        std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|target| target.to_string_lossy().contains(needle))
            .collect()
    }

    #[tokio::test]
    async fn passed_fds_are_closed_on_arrival() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = server();
        // A file only this test opens: finding it in /proc/self/fd is exact even while other
        // tests open and close fds in parallel (a bare count would race with them).
        let marker = dir.path().join("passed-fd-marker");
        std::fs::write(&marker, b"x").expect("marker");
        let code = "
import os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(addr)
fds = [os.open(sys.argv[2], os.O_RDONLY) for _ in range(3)]
socket.send_fds(s, [b'FDSTORE=1\\nREADY=1'], fds)
";
        let child = Command::new("python3")
            .arg("-c")
            .arg(format!("{ADDR}{code}"))
            .arg(server.name())
            .arg(&marker)
            .spawn()
            .expect("python3 runs");
        let (_, notices) = recv_in_time(&server).await;
        assert_eq!(
            notices,
            vec![Notice::Other("FDSTORE=1".into()), Notice::Ready]
        );
        assert_eq!(
            open_fds_naming("passed-fd-marker"),
            Vec::<std::path::PathBuf>::new()
        );
        finish(child);
    }

    #[tokio::test]
    async fn oversized_and_empty_datagrams_are_dropped() {
        let server = server();
        let (client, addr) = client_to(&server);
        let mut big = b"STATUS=".to_vec();
        big.resize(MAX_DATAGRAM + 100, b'x');
        client.send_to_addr(&big, &addr).expect("send big");
        client.send_to_addr(b"", &addr).expect("send empty");
        client
            .send_to_addr(b"garbage\n\xff", &addr)
            .expect("send junk");
        client.send_to_addr(b"STOPPING=1", &addr).expect("send");
        let (pid, notices) = recv_in_time(&server).await;
        assert_eq!(pid, std::process::id() as i32);
        assert_eq!(notices, vec![Notice::Stopping]);
    }

    #[tokio::test]
    async fn the_name_is_taken_once_and_needs_no_filesystem() {
        let first = server();
        let name = first.name()[1..].to_string();
        let name = name.as_str();
        let err = NotifyServer::bind(name).err().expect("second bind refused");
        assert!(err.contains("in use"), "{err}");
        drop(first);
        NotifyServer::bind(name).expect("free again once dropped");
        let ours = NotifyServer::bind_for_pool().expect("the pool's own name");
        assert!(
            ours.name()
                .ends_with(&format!("/{}/notify", std::process::id())),
            "{}",
            ours.name()
        );
    }

    #[tokio::test]
    async fn a_flood_is_taken_at_the_rate_limit() {
        let server = server();
        let (client, addr) = client_to(&server);
        // A blocking sender: the kernel keeps only a few datagrams queued (max_dgram_qlen).
        let flood = std::thread::spawn(move || {
            for _ in 0..(3 * RATE_LIMIT) {
                if client.send_to_addr(b"STATUS=flood", &addr).is_err() {
                    return;
                }
            }
        });
        let t = std::time::Instant::now();
        for _ in 0..(2 * RATE_LIMIT + 1) {
            recv_in_time(&server).await;
        }
        assert!(t.elapsed() >= 2 * RATE_WINDOW, "{:?}", t.elapsed());
        drop(server);
        let _ = flood.join();
    }

    #[tokio::test]
    async fn recv_is_cancel_safe() {
        let server = server();
        // A recv abandoned while waiting loses nothing sent afterwards.
        let abandoned = tokio::time::timeout(Duration::from_millis(20), server.recv()).await;
        assert!(abandoned.is_err());
        let (client, addr) = client_to(&server);
        client.send_to_addr(b"WATCHDOG=1", &addr).expect("send");
        assert_eq!(recv_in_time(&server).await.1, vec![Notice::Watchdog]);
    }

    #[test]
    fn owning_worker_walks_a_fake_proc() {
        let root = tempfile::tempdir().expect("tempdir");
        let stat = |pid: i32, comm: &str, ppid: i32| {
            let d = root.path().join(pid.to_string());
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(
                d.join("stat"),
                format!("{pid} ({comm}) S {ppid} {pid} {pid} 0 -1\n"),
            )
            .expect("stat");
        };
        stat(100, "gunicorn", 1);
        // A name with spaces and parentheses must not shift the fields.
        stat(200, "worker) S 7 (x", 100);
        stat(300, "thread", 200);
        stat(400, "orphan", 1);
        stat(500, "parent gone", 999);
        let worker = |p: i32| p == 100;
        assert_eq!(owning_worker(root.path(), 300, worker), Some(100));
        assert_eq!(owning_worker(root.path(), 100, worker), Some(100));
        assert_eq!(owning_worker(root.path(), 400, worker), None);
        assert_eq!(owning_worker(root.path(), 500, worker), None);
        assert_eq!(owning_worker(root.path(), 12345, worker), None);
        assert_eq!(owning_worker(root.path(), 0, worker), None);

        // A chain longer than the bound is given up on.
        for pid in 1000..1100 {
            stat(pid, "deep", pid + 1);
        }
        stat(1100, "top", 1);
        assert_eq!(owning_worker(root.path(), 1000, |p| p == 1100), None);
        assert_eq!(owning_worker(root.path(), 1050, |p| p == 1100), Some(1100));
    }

    #[test]
    fn notify_socket_reaches_a_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("upstream.sock");
        let upstream = UnixDatagram::bind(&path).expect("bind");
        notify_socket(path.as_os_str(), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = upstream.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn notify_socket_reaches_an_abstract_name() {
        let name = format!("cluster-init-test-{}", std::process::id());
        let upstream = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        let addr = UnixAddr::new_abstract(name.as_bytes()).expect("addr");
        bind(upstream.as_raw_fd(), &addr).expect("bind abstract");
        let upstream = UnixDatagram::from(upstream);
        upstream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        notify_socket(OsStr::new(&format!("@{name}")), "STOPPING=1").expect("send");
        let mut buf = [0u8; 64];
        let n = upstream.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn notify_socket_refuses_what_it_cannot_reach() {
        let err = notify_socket(OsStr::new("vsock:2:1234"), "READY=1").expect_err("unsupported");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nobody-listens");
        assert!(notify_socket(missing.as_os_str(), "READY=1").is_err());
    }
}
