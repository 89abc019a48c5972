//! `cluster-init ctl`: control a running pool from inside its container, with no `curl` or `kill`
//! in the image. This module owns both ends: the server the init runs next to the admin endpoint,
//! and the client the same binary becomes when its first argument is `ctl`.
//!
//! **Where.** The server listens on the abstract unix stream socket
//! `@cluster-init/<pid namespace inode>/<pid>/ctl`, named like the notify socket and for the same
//! reasons: nothing on disk (a read-only root is fine), and abstract names are scoped by network
//! namespace, which the containers of a pod share but not their PID namespaces: the inode keeps
//! the inits of two containers apart, the pid two inits of one PID namespace.
//!
//! **Who.** The kernel says who connected (`SO_PEERCRED`). A caller must run as our effective uid
//! or as root, and must be visible in our PID namespace (the kernel reports pid 0 for a process
//! it cannot name here, such as a sibling container of the pod that shares our network namespace
//! and guessed the name). Anyone else gets one error line and the connection is closed. The
//! client checks the other way too: whoever listens on the name must be the init it looked for,
//! since an abstract name belongs to whoever binds it first.
//!
//! **What.** One request line of JSON, one answer line of JSON, then the server closes:
//!
//! | request                      | answer                                             |
//! |------------------------------|----------------------------------------------------|
//! | `{"verb":"status"}`          | `{"ok":true,"status":{...}}` (the `/status` document) |
//! | `{"verb":"reload"}`          | `{"ok":true,"message":"reloading to generation 2"}` |
//! | `{"verb":"scale","n":3}`     | `{"ok":true,"message":"scaling 2 -> 3"}`           |
//! | `{"verb":"stop"}`            | `{"ok":true,"message":"stopping"}`                 |
//! | anything refused or invalid  | `{"ok":false,"error":"..."}`                       |
//!
//! Status is read from the snapshot the supervisor publishes; commands go to the loop as
//! [`Ask::Command`] and the answer is what the pool made of them.
//!
//! **Bounds.** The server runs on the event loop's thread, so nothing a client does may hold it: at
//! most [`MAX_CONNECTIONS`] connections; when full, a newcomer takes the place of the oldest one
//! that has not sent its request yet (a silent or flooding client cannot lock out a real one),
//! and only if every place is busy answering is the newcomer refused; a request is at most
//! [`MAX_REQUEST`] bytes and must arrive within [`REQUEST_TIMEOUT`]; the loop must answer within
//! [`ANSWER_TIMEOUT`] and the answer be taken within [`WRITE_TIMEOUT`]. When the pool is done,
//! [`Running::drain`] gives answers already decided (`ctl stop`'s own) a bounded moment to leave.
//!
//! **Which init** (client side, without configuration): the `--pid` given; else PID 1 if it is
//! cluster-init; else the single cluster-init in sight (not counting `ctl` clients, nor a child of
//! a cluster-init, which is one between fork and exec or a nested init); else exit 2, asking for
//! `--pid`. Exit codes: 0 done, 1 the pool refused or failed, 2 usage or no init found, 3 cannot
//! reach it.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{
    SocketAddr, UnixListener as StdUnixListener, UnixStream as StdUnixStream,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::MsgFlags;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::admin::{queues, render_status, Ask, PoolStatus};
use crate::pool::Command;

/// Connections served at once; a handful is plenty for people typing commands.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest request line, newline included.
pub const MAX_REQUEST: usize = 4096;
/// A connection that has not sent its whole request by then is closed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command may wait for the supervisor loop's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client may take to read its answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the client waits for connecting, sending and the whole answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest answer the client reads (a `/status` of 1024 workers is a few hundred KiB).
const MAX_ANSWER: usize = 16 << 20;
/// At exit, how long answers already decided (`ctl stop`'s own) may take to reach their callers.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(200);
/// After a failed `accept` (EMFILE, say) we pause rather than spin on the error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Exit codes of the client.
pub mod exit {
    pub const OK: i32 = 0;
    /// The pool refused the command, or answered with an error.
    pub const REFUSED: i32 = 1;
    /// A usage error, or no cluster-init to talk to.
    pub const USAGE: i32 = 2;
    /// The init was found but could not be reached (or did not answer).
    pub const UNREACHABLE: i32 = 3;
}

/// The abstract name (without the leading `@`) of the ctl socket of the init that is `pid` in
/// the PID namespace with inode `ns`.
pub fn socket_name(ns: &str, pid: u32) -> String {
    format!("cluster-init/{ns}/{pid}/ctl")
}

/// The inode of a PID namespace from its `/proc/PID/ns/pid` link (`pid:[4026531836]`).
fn ns_inode(link: &Path) -> io::Result<String> {
    let target = std::fs::read_link(link)?;
    let target = target.to_string_lossy();
    target
        .strip_prefix("pid:[")
        .and_then(|t| t.strip_suffix(']'))
        .map(str::to_string)
        .ok_or_else(|| io::Error::other(format!("unexpected link {target:?}")))
}

/// Our own PID namespace's inode; "0" without `/proc`, as the notify socket does (the client
/// falls back the same way).
fn own_ns_inode() -> String {
    ns_inode(Path::new("/proc/self/ns/pid")).unwrap_or_else(|_| "0".into())
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Status,
    Command(Command),
}

/// Parses one request line: `{"verb":"status"}`, `{"verb":"scale","n":3}`, ...
fn parse_request(line: &[u8]) -> Result<Request, String> {
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("the request is not JSON: {e}"))?;
    let verb = v
        .get("verb")
        .and_then(|v| v.as_str())
        .ok_or("the request names no \"verb\"")?;
    match verb {
        "status" => Ok(Request::Status),
        "reload" => Ok(Request::Command(Command::Reload)),
        "stop" => Ok(Request::Command(Command::Stop)),
        "scale" => {
            let n = v
                .get("n")
                .and_then(|n| n.as_u64())
                .and_then(|n| u32::try_from(n).ok())
                .ok_or("scale needs \"n\", a number of workers")?;
            Ok(Request::Command(Command::Scale(n)))
        }
        other => Err(format!(
            "unknown verb {other:?} (status, reload, scale, stop)"
        )),
    }
}

fn verb_name(r: Request) -> String {
    match r {
        Request::Status => "status".into(),
        Request::Command(Command::Reload) => "reload".into(),
        Request::Command(Command::Stop) => "stop".into(),
        Request::Command(Command::Scale(n)) => format!("scale {n}"),
    }
}

fn ok_message(message: &str) -> String {
    format!("{}\n", serde_json::json!({"ok": true, "message": message}))
}

fn error_line(error: &str) -> String {
    format!("{}\n", serde_json::json!({"ok": false, "error": error}))
}

/// A bound ctl socket, not yet serving.
pub struct Server {
    listener: StdUnixListener,
    name: String,
    shared: Arc<Shared>,
    limits: Limits,
}

/// What every connection reads: the snapshot and the way to the loop. No shared mutable state.
struct Shared {
    status: watch::Receiver<PoolStatus>,
    asks: mpsc::Sender<Ask>,
    /// Our effective uid: callers must have it, or be root.
    uid: u32,
}

/// Bounds on what clients may hold; a struct so tests can shrink them.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    request_timeout: Duration,
    answer_timeout: Duration,
    write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            request_timeout: REQUEST_TIMEOUT,
            answer_timeout: ANSWER_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

impl Server {
    /// Binds this init's own name (see [`socket_name`]). Needs no runtime: the socket is bound
    /// with std and handed to tokio in [`Server::spawn`].
    pub fn bind_for_pool(
        status: watch::Receiver<PoolStatus>,
        asks: mpsc::Sender<Ask>,
    ) -> Result<Server, String> {
        Server::bind(
            &socket_name(&own_ns_inode(), std::process::id()),
            status,
            asks,
        )
    }

    /// Binds the abstract `name` (given without the `@`).
    pub fn bind(
        name: &str,
        status: watch::Receiver<PoolStatus>,
        asks: mpsc::Sender<Ask>,
    ) -> Result<Server, String> {
        let what = |e: io::Error| format!("cannot bind @{name}: {e}");
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(what)?;
        // std opens it with SOCK_CLOEXEC: no worker we fork inherits it.
        let listener = StdUnixListener::bind_addr(&addr).map_err(what)?;
        listener.set_nonblocking(true).map_err(what)?;
        // SAFETY: geteuid cannot fail and has no preconditions.
        let uid = unsafe { libc::geteuid() };
        Ok(Server {
            listener,
            name: name.to_string(),
            shared: Arc::new(Shared { status, asks, uid }),
            limits: Limits::default(),
        })
    }

    /// `@` and the abstract name.
    pub fn name(&self) -> String {
        format!("@{}", self.name)
    }

    /// Starts serving with `tokio::spawn` on the current runtime; must be called inside it. The
    /// server runs until the returned handle is drained or dropped: keep it for the whole run.
    pub fn spawn(self) -> Running {
        let (stop_tx, stop_rx) = oneshot::channel();
        let (alive_tx, alive_rx) = mpsc::channel(1);
        match UnixListener::from_std(self.listener) {
            Ok(listener) => {
                tokio::spawn(accept_loop(
                    listener,
                    self.shared,
                    self.limits,
                    stop_rx,
                    alive_tx,
                ));
            }
            // Only fails without an IO driver: a programming error, not worth PID 1's life.
            Err(e) => warn!("ctl socket @{} cannot start: {e}", self.name),
        }
        Running {
            stop: stop_tx,
            alive: alive_rx,
        }
    }
}

/// A serving ctl socket.
pub struct Running {
    /// Dropped to stop accepting.
    stop: oneshot::Sender<()>,
    /// Every connection task holds a sender: `recv` ends when the last one is done.
    alive: mpsc::Receiver<()>,
}

impl Running {
    /// Stops accepting, drops connections that have not sent a request, and gives the answers
    /// already decided a short, bounded time to be written. Without this, `ctl stop` on a pool
    /// with nothing running would end the runtime before its "stopping" reached the caller.
    pub async fn drain(self) {
        let Running { stop, mut alive } = self;
        drop(stop);
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, alive.recv()).await;
    }
}

/// One connection as the accept loop tracks it.
struct Conn {
    task: JoinHandle<()>,
    /// Closed once the connection's request has been read (or the task ended).
    reading: oneshot::Sender<()>,
}

async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    limits: Limits,
    mut stop: oneshot::Receiver<()>,
    alive: mpsc::Sender<()>,
) {
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("ctl socket: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        // Judged before it costs a task or a place: a refused caller never delays anyone.
        let peer = match check_peer(&stream, shared.uid) {
            Ok(peer) => peer,
            Err(why) => {
                debug!("ctl socket: {why}");
                // One try, never a wait: the line fits an empty socket buffer.
                let _ = send_now(&stream, error_line(&why).as_bytes());
                continue;
            }
        };
        conns.retain(|c| !c.task.is_finished());
        if conns.len() >= limits.max_connections {
            // The oldest connection still waiting for its request makes way: a real client sends
            // its request with the connect, so what waits longest is the silent or slow one.
            match conns.iter().position(|c| !c.reading.is_closed()) {
                Some(i) => {
                    conns.remove(i).task.abort();
                    debug!("ctl socket: full; closed the oldest connection without a request");
                    // Lets the aborted task go (and close its socket) before the next accept.
                    tokio::task::yield_now().await;
                }
                None => {
                    debug!("ctl socket: every place is busy answering; refused a connection");
                    let _ = send_now(
                        &stream,
                        error_line("busy: too many ctl requests at once; try again").as_bytes(),
                    );
                    continue;
                }
            }
        }
        let (reading_tx, reading_rx) = oneshot::channel();
        let task = tokio::spawn(serve(
            stream,
            peer,
            Arc::clone(&shared),
            limits,
            reading_rx,
            alive.clone(),
        ));
        conns.push(Conn {
            task,
            reading: reading_tx,
        });
    }
    // Stopping: connections still waiting for a request will not get an answer now.
    for c in conns {
        if !c.reading.is_closed() {
            c.task.abort();
        }
    }
}

/// Who is calling, as the kernel told.
#[derive(Clone, Copy, Debug)]
struct Peer {
    pid: i32,
    uid: u32,
}

fn check_peer(stream: &UnixStream, our_uid: u32) -> Result<Peer, String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("refused: cannot tell who is calling: {e}"))?;
    let (uid, pid) = (cred.uid(), cred.pid().unwrap_or(0));
    if uid != our_uid && uid != 0 {
        return Err(format!(
            "permission denied: uid {uid} is neither cluster-init's uid ({our_uid}) nor root"
        ));
    }
    if pid <= 0 {
        return Err(
            "permission denied: the caller is outside cluster-init's PID namespace \
             (run ctl in its container: kubectl exec, or nsenter --target PID --pid --mount)"
                .into(),
        );
    }
    Ok(Peer { pid, uid })
}

/// Serves one connection: read the request, answer it, close.
async fn serve(
    stream: UnixStream,
    peer: Peer,
    shared: Arc<Shared>,
    limits: Limits,
    reading: oneshot::Receiver<()>,
    _alive: mpsc::Sender<()>,
) {
    let line = match tokio::time::timeout(limits.request_timeout, read_request(&stream)).await {
        Ok(Ok(line)) => line,
        Ok(Err(why)) => {
            drop(reading);
            let _ = tokio::time::timeout(
                limits.write_timeout,
                write_all(&stream, error_line(&why).as_bytes()),
            )
            .await;
            return;
        }
        Err(_) => {
            debug!(
                process.pid = peer.pid,
                "ctl socket: no request within {:?}", limits.request_timeout
            );
            return;
        }
    };
    // From here on this connection is answered, not evicted.
    drop(reading);
    let answer = match parse_request(&line) {
        Ok(request) => answer(request, peer, &shared, limits).await,
        Err(why) => error_line(&why),
    };
    if tokio::time::timeout(limits.write_timeout, write_all(&stream, answer.as_bytes()))
        .await
        .is_err()
    {
        debug!(
            process.pid = peer.pid,
            "ctl socket: the caller did not take its answer"
        );
    }
}

async fn answer(request: Request, peer: Peer, shared: &Shared, limits: Limits) -> String {
    match request {
        Request::Status => {
            let queues = queues(&shared.asks).await;
            // Rendered from the borrowed snapshot: the guard is never held across an await.
            let doc = render_status(&shared.status.borrow(), &queues);
            format!("{{\"ok\":true,\"status\":{doc}}}\n")
        }
        Request::Command(command) => {
            // Who changed the pool, for whoever reads the log later.
            info!(
                process.pid = peer.pid,
                user.id = peer.uid,
                "ctl {} from pid {} (uid {})",
                verb_name(request),
                peer.pid,
                peer.uid
            );
            let (tx, rx) = oneshot::channel();
            let round_trip = async {
                shared.asks.send(Ask::Command(command, tx)).await.ok()?;
                rx.await.ok()
            };
            match tokio::time::timeout(limits.answer_timeout, round_trip).await {
                Ok(Some(Ok(message))) => ok_message(&message),
                Ok(Some(Err(refused))) => error_line(&refused),
                Ok(None) => error_line("the supervisor loop is gone"),
                Err(_) => error_line(&format!(
                    "the supervisor loop did not answer within {:?}",
                    limits.answer_timeout
                )),
            }
        }
    }
}

/// Reads up to the first newline (or the end, for a client that shuts down its side instead).
async fn read_request(stream: &UnixStream) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    loop {
        stream
            .readable()
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        match stream.try_read(&mut buf[len..]) {
            Ok(0) if len == 0 => return Err("no request".into()),
            Ok(0) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Ok(n) => {
                if let Some(i) = buf[len..len + n].iter().position(|&b| b == b'\n') {
                    buf.truncate(len + i);
                    return Ok(buf);
                }
                len += n;
                if len == buf.len() {
                    return Err(format!("the request is longer than {MAX_REQUEST} bytes"));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("reading the request: {e}")),
        }
    }
}

/// One non-blocking send, without SIGPIPE; what did not fit is the caller's to retry.
fn send_now(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    nix::sys::socket::send(
        stream.as_raw_fd(),
        buf,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    )
    .map_err(io::Error::from)
}

/// Writes it all. Sends at once first: tokio only learns that a new socket is writable on its
/// next turn, and an answer usually fits the socket's buffer now.
async fn write_all(stream: &UnixStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let sent = match send_now(stream, buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stream.writable().await?;
                stream.try_io(Interest::WRITABLE, || send_now(stream, buf))
            }
            other => other,
        };
        match sent {
            Ok(n) => buf = &buf[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

const USAGE: &str = "\
Usage: cluster-init ctl [--pid PID] [--json] VERB

Controls the cluster-init running this container's pool.

Verbs:
  status     the pool and each worker: slot, pid, state, generation, restarts,
             uptime, last exit, STATUS= text
  reload     replace every worker, one slot at a time (as SIGHUP does)
  scale N    run N workers (absolute)
  stop       stop the pool gracefully; cluster-init then exits (as SIGTERM does)

Options:
  --pid PID  the cluster-init to control (default: PID 1 if it is cluster-init,
             else the only cluster-init running)
  --json     print the answer as JSON (for status: the /status document)
  -h, --help print this help

Exit status: 0 done; 1 the pool refused or failed; 2 usage error or no
cluster-init found; 3 cluster-init found but not reachable.";

/// What the command line asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    Status,
    Reload,
    Scale(u32),
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Invocation {
    pid: Option<i32>,
    json: bool,
    verb: Verb,
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Run(Invocation),
    Help,
    Usage(String),
}

/// A failure of the client: what to say and the exit code.
#[derive(Debug, PartialEq, Eq)]
struct Failure {
    code: i32,
    message: String,
}

fn failure(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// Runs the client when the first argument is exactly `ctl` (and returns its exit code), else
/// returns None and the init runs as usual. `cluster-init -- ctl` runs a program named ctl.
///
/// Call first in `main`, before the init takes the signals over: a client is an ordinary
/// short-lived program and keeps the signal state it was started with (Ctrl-C ends it, an
/// inherited SIG_IGN stays), except that the stop signals are unblocked.
pub fn dispatch(args: impl IntoIterator<Item = OsString>) -> Option<i32> {
    let args: Vec<OsString> = args.into_iter().collect();
    if args.get(1).map(OsString::as_os_str) != Some(OsStr::new("ctl")) {
        return None;
    }
    unblock_stop_signals();
    Some(client(&args[2..]))
}

/// Whoever started us may have left INT, TERM, HUP or QUIT blocked (as an init's own mask would
/// be): a client waiting for an answer must still end when told to.
fn unblock_stop_signals() {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
}

fn client(args: &[OsString]) -> i32 {
    let inv = match parse_args(args) {
        Parsed::Run(inv) => inv,
        Parsed::Help => {
            print_out(&format!("{USAGE}\n"));
            return exit::OK;
        }
        Parsed::Usage(message) => {
            print_err(&format!(
                "cluster-init ctl: {message}\nTry 'cluster-init ctl --help'."
            ));
            return exit::USAGE;
        }
    };
    let result = find_target(Path::new("/proc"), inv.pid)
        .and_then(|target| call(&target, &request_line(inv.verb)));
    let answer = match result {
        Ok(answer) => answer,
        Err(f) => {
            print_err(&format!("cluster-init ctl: {}", f.message));
            return f.code;
        }
    };
    show(&inv, &answer)
}

/// Writes to stdout, ignoring a closed pipe (`ctl status | head -1`) instead of panicking.
fn print_out(text: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn print_err(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

fn parse_args(args: &[OsString]) -> Parsed {
    let mut pid = None;
    let mut json = false;
    let mut words: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(arg) = arg.to_str() else {
            return Parsed::Usage(format!("invalid argument {arg:?}"));
        };
        let pid_value = match arg {
            "-h" | "--help" => return Parsed::Help,
            "--json" => {
                json = true;
                continue;
            }
            "--pid" => match it.next().and_then(|v| v.to_str()) {
                Some(v) => v,
                None => return Parsed::Usage("--pid needs a value".into()),
            },
            a if a.starts_with("--pid=") => &a["--pid=".len()..],
            a if a.starts_with('-') && a.len() > 1 && a.parse::<i64>().is_err() => {
                return Parsed::Usage(format!("unknown option '{a}'"));
            }
            word => {
                words.push(word);
                continue;
            }
        };
        match pid_value.parse::<i32>() {
            Ok(p) if p > 0 => pid = Some(p),
            _ => return Parsed::Usage(format!("invalid --pid '{pid_value}': expected a pid")),
        }
    }
    let verb = match words.as_slice() {
        [] => return Parsed::Usage("no verb given (status, reload, scale N, stop)".into()),
        ["status"] => Verb::Status,
        ["reload"] => Verb::Reload,
        ["stop"] => Verb::Stop,
        ["scale", n] => match n.parse::<u32>() {
            Ok(n) => Verb::Scale(n),
            Err(_) => {
                return Parsed::Usage(format!("invalid scale '{n}': expected a number of workers"))
            }
        },
        ["scale"] => return Parsed::Usage("scale needs a number of workers: scale N".into()),
        [verb @ ("status" | "reload" | "stop" | "scale"), extra, ..] => {
            return Parsed::Usage(format!("unexpected argument '{extra}' after {verb}"))
        }
        [other, ..] => {
            return Parsed::Usage(format!(
                "unknown verb '{other}' (status, reload, scale N, stop)"
            ))
        }
    };
    Parsed::Run(Invocation { pid, json, verb })
}

fn request_line(verb: Verb) -> String {
    let v = match verb {
        Verb::Status => serde_json::json!({"verb": "status"}),
        Verb::Reload => serde_json::json!({"verb": "reload"}),
        Verb::Stop => serde_json::json!({"verb": "stop"}),
        Verb::Scale(n) => serde_json::json!({"verb": "scale", "n": n}),
    };
    format!("{v}\n")
}

/// The init to talk to.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// As this process sees it (in `/proc`).
    pid: i32,
    /// Its socket's abstract name.
    name: String,
}

/// Who we are, to recognise other cluster-inits by.
struct Me {
    pid: i32,
    /// (device, inode) of our executable: the same file whatever path it was started by.
    exe: Option<(u64, u64)>,
    /// Names a cluster-init may go by: its own, and whatever our executable is called.
    names: Vec<OsString>,
}

impl Me {
    fn new(proc: &Path) -> Me {
        let exe_path = proc.join("self/exe");
        let exe = std::fs::metadata(&exe_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let mut names = vec![OsString::from("cluster-init")];
        if let Some(base) = std::fs::read_link(&exe_path)
            .ok()
            .and_then(|p| p.file_name().map(OsStr::to_os_string))
        {
            if !names.contains(&base) {
                names.push(base);
            }
        }
        Me {
            pid: std::process::id() as i32,
            exe,
            names,
        }
    }
}

fn find_target(proc: &Path, pid: Option<i32>) -> Result<Target, Failure> {
    let me = Me::new(proc);
    let pid = match pid {
        Some(pid) => {
            if !proc.join(pid.to_string()).exists() {
                return Err(failure(exit::USAGE, format!("no process {pid}")));
            }
            pid
        }
        None => discover(proc, &me)?,
    };
    let own_pid = own_pid_of(proc, pid);
    Ok(Target {
        pid,
        name: socket_name(&target_ns(proc, pid)?, own_pid),
    })
}

/// PID 1 when it is cluster-init; else the only cluster-init there is.
fn discover(proc: &Path, me: &Me) -> Result<i32, Failure> {
    if me.pid != 1 && is_init(proc, 1, me) {
        return Ok(1);
    }
    let found: Vec<i32> = std::fs::read_dir(proc)
        .map_err(|e| {
            failure(
                exit::USAGE,
                format!("cannot list {}: {e}; give --pid PID", proc.display()),
            )
        })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me.pid && is_init(proc, pid, me))
        .collect();
    // A cluster-init's child that is cluster-init too is a worker between fork and exec, or an
    // init nested in the pool: the outer one is meant (the other is a --pid away).
    let mut outer: Vec<i32> = found
        .iter()
        .copied()
        .filter(|&pid| parent_of(proc, pid).is_none_or(|p| !found.contains(&p)))
        .collect();
    outer.sort_unstable();
    match outer.as_slice() {
        [pid] => Ok(*pid),
        [] => Err(failure(
            exit::USAGE,
            "no cluster-init found in this PID namespace; give --pid PID",
        )),
        many => Err(failure(
            exit::USAGE,
            format!(
                "more than one cluster-init runs here (pids {}); choose one with --pid PID",
                many.iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Whether `pid` is a cluster-init running a pool (not a `ctl` client, not a zombie).
fn is_init(proc: &Path, pid: i32, me: &Me) -> bool {
    let dir = proc.join(pid.to_string());
    if !is_cluster_init(&dir, me) {
        return false;
    }
    let argv = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    let second = argv.split(|&b| b == 0).nth(1);
    if second == Some(b"ctl".as_slice()) {
        return false;
    }
    // A zombie has an empty cmdline; its state says so for sure.
    !matches!(stat_state(&dir), Some('Z') | Some('X'))
}

fn is_cluster_init(dir: &Path, me: &Me) -> bool {
    let exe = dir.join("exe");
    // Following the link needs the process's uid or root; when allowed it is the surest test.
    if let Ok(m) = std::fs::metadata(&exe) {
        if me.exe == Some((m.dev(), m.ino())) {
            return true;
        }
    }
    if let Ok(path) = std::fs::read_link(&exe) {
        let path = path.as_os_str().as_bytes();
        let path = path.strip_suffix(b" (deleted)").unwrap_or(path);
        return Path::new(OsStr::from_bytes(path))
            .file_name()
            .is_some_and(|base| me.names.iter().any(|n| n == base));
    }
    // The executable is hidden from us (another uid): the names it was started by. The kernel
    // keeps 15 bytes of the command name.
    let comm = std::fs::read(dir.join("comm")).unwrap_or_default();
    let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
    let argv = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    let argv0 = argv.split(|&b| b == 0).next().unwrap_or_default();
    let argv0 = Path::new(OsStr::from_bytes(argv0)).file_name();
    me.names.iter().any(|n| {
        let n = n.as_bytes();
        (!comm.is_empty() && comm == &n[..n.len().min(15)]) || argv0 == Some(OsStr::from_bytes(n))
    })
}

/// Field 3 of `/proc/PID/stat`; the command name before it may hold spaces and parentheses.
fn stat_state(dir: &Path) -> Option<char> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

fn parent_of(proc: &Path, pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `NSpid` of `/proc/PID/status`: the pid in each PID namespace from `/proc`'s own down to the
/// process's. World-readable, unlike `ns/pid`.
fn nspid(proc: &Path, pid: &str) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(proc.join(pid).join("status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|p| p.parse().ok()).collect()
}

/// The pid the target knows itself by (and names its socket with): the last of its `NSpid`.
fn own_pid_of(proc: &Path, pid: i32) -> u32 {
    nspid(proc, &pid.to_string())
        .and_then(|v| v.last().copied())
        .unwrap_or(pid as u32)
}

/// The inode of the target's PID namespace. In our own namespace (the same depth below `/proc`'s,
/// and visible in it) it is ours, which needs no permission; a namespace below ours is read from
/// `/proc/PID/ns/pid`, which needs the target's uid or root.
fn target_ns(proc: &Path, pid: i32) -> Result<String, Failure> {
    let depth = |p: &str| nspid(proc, p).map(|v| v.len());
    if depth("self").is_some() && depth("self") == depth(&pid.to_string()) {
        return Ok(ns_inode(&proc.join("self/ns/pid")).unwrap_or_else(|_| "0".into()));
    }
    let link = proc.join(pid.to_string()).join("ns/pid");
    ns_inode(&link).map_err(|e| {
        let why = if e.kind() == io::ErrorKind::PermissionDenied {
            "permission denied (ctl needs cluster-init's uid or root)".to_string()
        } else {
            e.to_string()
        };
        failure(
            exit::UNREACHABLE,
            format!("cannot read {}: {why}", link.display()),
        )
    })
}

/// Sends the request and reads the one answer line, all within [`CLIENT_TIMEOUT`].
fn call(target: &Target, request: &str) -> Result<serde_json::Value, Failure> {
    let who = format!("cluster-init (pid {}) at @{}", target.pid, target.name);
    let unreachable = |what: String| failure(exit::UNREACHABLE, format!("{who}: {what}"));
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let addr = SocketAddr::from_abstract_name(target.name.as_bytes())
        .map_err(|e| unreachable(e.to_string()))?;
    let mut stream = StdUnixStream::connect_addr(&addr).map_err(|e| {
        unreachable(match e.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => {
                "nothing listens there (is it a cluster-init with ctl, in this network namespace?)"
                    .to_string()
            }
            _ => format!("cannot connect: {e}"),
        })
    })?;
    // Abstract names are first come, first served: a process that bound this name before the
    // init could (a sibling container guessing it) would read our request and answer anything.
    // The kernel says who listens; it must be the init we meant.
    let holder = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.pid())
        .map_err(|e| unreachable(format!("cannot tell who listens: {e}")))?;
    if holder != target.pid {
        let holder = match holder {
            0 => "a process outside this PID namespace".to_string(),
            pid => format!("pid {pid}"),
        };
        return Err(unreachable(format!(
            "the socket is held by {holder}, not by the init; not talking to it"
        )));
    }
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    // A refused caller is answered and closed before its request is read: the write may fail,
    // and the answer waiting for us is still the thing to show.
    let _ = stream.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(unreachable(format!(
                "no answer within {}s",
                CLIENT_TIMEOUT.as_secs()
            )));
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.contains(&b'\n') {
                    break;
                }
                if answer.len() > MAX_ANSWER {
                    return Err(unreachable("the answer is too long".into()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(unreachable(format!(
                    "no answer within {}s",
                    CLIENT_TIMEOUT.as_secs()
                )))
            }
            // After the answer, a reset only says our request was not read: see above.
            Err(_) if answer.contains(&b'\n') => break,
            Err(e) => return Err(unreachable(format!("reading the answer: {e}"))),
        }
    }
    let line = answer.split(|&b| b == b'\n').next().unwrap_or_default();
    if line.is_empty() {
        return Err(unreachable(
            "closed the connection without an answer".into(),
        ));
    }
    serde_json::from_slice(line).map_err(|e| unreachable(format!("answered garbage: {e}")))
}

/// Prints the answer and returns the exit code.
fn show(inv: &Invocation, answer: &serde_json::Value) -> i32 {
    let ok = answer["ok"].as_bool() == Some(true);
    if !ok {
        let error = answer["error"]
            .as_str()
            .unwrap_or("the pool answered an error");
        if inv.json {
            print_out(&format!("{answer}\n"));
        }
        print_err(&format!("cluster-init ctl: {error}"));
        return exit::REFUSED;
    }
    match (inv.verb, inv.json) {
        (Verb::Status, true) => print_out(&format!("{}\n", answer["status"])),
        (Verb::Status, false) => print_out(&render_table(&answer["status"], unix_now())),
        (_, true) => print_out(&format!("{answer}\n")),
        (_, false) => print_out(&format!(
            "{}\n",
            sanitize(answer["message"].as_str().unwrap_or("done"))
        )),
    }
    exit::OK
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The status document as a table, one row per worker, under a line about the pool.
fn render_table(s: &serde_json::Value, now: f64) -> String {
    let workers = s["workers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let ready = workers.iter().filter(|w| w["state"] == "ready").count();
    let mut out = format!(
        "pool {}: {ready} of {} workers ready, generation {}\n",
        if s["ready"] == true {
            "ready"
        } else {
            "not ready"
        },
        s["desired"],
        s["generation"]
    );
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => sanitize(s),
        other => other.to_string(),
    };
    let mut rows = vec![[
        "SLOT",
        "PID",
        "STATE",
        "GEN",
        "RESTARTS",
        "UPTIME",
        "LAST EXIT",
        "STATUS",
    ]
    .map(String::from)];
    for w in workers {
        let uptime = w["started_at"]
            .as_f64()
            .map_or("-".to_string(), |t| human_duration(now - t));
        let last_exit = match (w["last_exit"].as_str(), w["last_exit_reason"].as_str()) {
            (Some(exit), Some(reason)) if exit != reason => format!("{exit} ({reason})"),
            (Some(exit), _) => exit.to_string(),
            (None, _) => "-".into(),
        };
        rows.push([
            text(&w["slot"]),
            text(&w["pid"]),
            text(&w["state"]),
            text(&w["generation"]),
            text(&w["restarts"]),
            uptime,
            sanitize(&last_exit),
            text(&w["status"]),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count() + 2;
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A worker's `STATUS=` text is the worker's to choose: control characters would reach the
/// terminal of whoever runs ctl, so they are shown escaped.
fn sanitize(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// `42s`, `3m12s`, `2h05m`, `3d04h`.
fn human_duration(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn dispatch_only_on_ctl_as_the_first_argument() {
        assert_eq!(dispatch(args(&["cluster-init", "--", "ctl"])), None);
        assert_eq!(
            dispatch(args(&["cluster-init", "-w", "2", "--", "ctl"])),
            None
        );
        assert_eq!(dispatch(args(&["cluster-init", "ctlx"])), None);
        assert_eq!(dispatch(args(&["cluster-init"])), None);
        assert_eq!(
            dispatch(args(&["cluster-init", "ctl", "--help"])),
            Some(exit::OK)
        );
        assert_eq!(
            dispatch(args(&["cluster-init", "ctl", "frobnicate"])),
            Some(exit::USAGE)
        );
    }

    #[test]
    fn command_line_forms() {
        let run = |a: &[&str]| match parse_args(&args(a)) {
            Parsed::Run(inv) => inv,
            other => panic!("{a:?}: {other:?}"),
        };
        assert_eq!(
            run(&["status"]),
            Invocation {
                pid: None,
                json: false,
                verb: Verb::Status
            }
        );
        assert_eq!(
            run(&["status", "--json"]),
            Invocation {
                pid: None,
                json: true,
                verb: Verb::Status
            }
        );
        assert_eq!(
            run(&["--pid", "42", "scale", "3"]),
            Invocation {
                pid: Some(42),
                json: false,
                verb: Verb::Scale(3)
            }
        );
        assert_eq!(run(&["--pid=7", "--json", "reload"]).pid, Some(7));
        assert_eq!(run(&["stop"]).verb, Verb::Stop);
        assert_eq!(parse_args(&args(&["-h"])), Parsed::Help);
        assert_eq!(parse_args(&args(&["scale", "2", "--help"])), Parsed::Help);
        for bad in [
            &[][..],
            &["scale"],
            &["scale", "-1"],
            &["scale", "many"],
            &["status", "now"],
            &["--pid"],
            &["--pid", "0", "status"],
            &["--pid", "x", "status"],
            &["--verbose", "status"],
            &["restart"],
        ] {
            match parse_args(&args(bad)) {
                Parsed::Usage(_) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn requests_round_trip_through_the_wire_form() {
        for (verb, want) in [
            (Verb::Status, Request::Status),
            (Verb::Reload, Request::Command(Command::Reload)),
            (Verb::Stop, Request::Command(Command::Stop)),
            (Verb::Scale(3), Request::Command(Command::Scale(3))),
        ] {
            let line = request_line(verb);
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            assert_eq!(parse_request(line.trim_end().as_bytes()), Ok(want));
        }
    }

    #[test]
    fn bad_requests_are_named() {
        for (line, want) in [
            (&b"not json"[..], "not JSON"),
            (b"{}", "no \"verb\""),
            (b"{\"verb\":\"dance\"}", "unknown verb"),
            (b"{\"verb\":\"scale\"}", "needs \"n\""),
            (b"{\"verb\":\"scale\",\"n\":-1}", "needs \"n\""),
            (b"{\"verb\":\"scale\",\"n\":4294967296}", "needs \"n\""),
        ] {
            let err = parse_request(line).expect_err("refused");
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn durations_read_like_uptimes() {
        assert_eq!(human_duration(0.4), "0s");
        assert_eq!(human_duration(-3.0), "0s");
        assert_eq!(human_duration(59.9), "59s");
        assert_eq!(human_duration(192.0), "3m12s");
        assert_eq!(human_duration(7500.0), "2h05m");
        assert_eq!(human_duration(3.0 * 86400.0 + 4.0 * 3600.0), "3d04h");
    }

    #[test]
    fn table_shows_every_worker_and_escapes_their_text() {
        let doc = serde_json::json!({
            "ready": true, "generation": 2, "desired": 2,
            "workers": [
                {"slot": 0, "pid": 42, "state": "ready", "generation": 2, "restarts": 1,
                 "started_at": 1000.0, "last_exit": "exit 1", "last_exit_reason": "exit_nonzero",
                 "status": "serving\u{1b}[2J"},
                {"slot": 1, "pid": null, "state": "backoff", "generation": 2, "restarts": 3,
                 "started_at": null, "last_exit": "oom", "last_exit_reason": "oom",
                 "status": null},
            ]
        });
        let table = render_table(&doc, 1192.0);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0], "pool ready: 1 of 2 workers ready, generation 2",
            "{table}"
        );
        assert!(lines[1].starts_with("SLOT  PID  STATE"), "{table}");
        assert!(
            lines[2].contains("42") && lines[2].contains("3m12s"),
            "{table}"
        );
        assert!(lines[2].contains("exit 1 (exit_nonzero)"), "{table}");
        assert!(lines[2].ends_with("serving\\u{1b}[2J"), "{table}");
        assert!(!table.contains('\u{1b}'), "{table}");
        assert!(
            lines[3].contains("backoff") && lines[3].contains(" oom "),
            "{table}"
        );
        // Columns line up: every row's STATE starts where the header's does.
        let col = lines[1].find("STATE").unwrap();
        assert_eq!(&lines[2][col..col + 5], "ready");
        assert_eq!(&lines[3][col..col + 7], "backoff");
    }

    #[test]
    fn proc_readers_understand_this_process() {
        let proc = Path::new("/proc");
        let me = Me::new(proc);
        let own = nspid(proc, "self").expect("NSpid");
        assert_eq!(*own.first().unwrap(), std::process::id());
        assert_eq!(own_pid_of(proc, me.pid), *own.last().unwrap());
        // The test binary is not cluster-init by name, but is by being our own executable.
        assert!(is_cluster_init(&proc.join(me.pid.to_string()), &me));
        assert_eq!(
            parent_of(proc, me.pid),
            Some(std::os::unix::process::parent_id() as i32)
        );
        assert!(matches!(stat_state(&proc.join("self")), Some('R' | 'S')));
        assert_eq!(
            target_ns(proc, me.pid),
            Ok(ns_inode(Path::new("/proc/self/ns/pid")).unwrap())
        );
    }

    // --- the server, with a fake supervisor loop -----------------------------------------

    struct Fixture {
        name: String,
        asks: mpsc::Receiver<Ask>,
        _status: watch::Sender<PoolStatus>,
        running: Running,
    }

    fn start(limits: Limits) -> Fixture {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "cluster-init-test/{}/{}/ctl",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (status_tx, status_rx) = watch::channel(PoolStatus::empty(2, 1.0));
        let (asks_tx, asks_rx) = mpsc::channel(16);
        let mut server = Server::bind(&name, status_rx, asks_tx).expect("bind");
        server.limits = limits;
        Fixture {
            name,
            asks: asks_rx,
            _status: status_tx,
            running: server.spawn(),
        }
    }

    /// Answers the way the supervisor loop does: scale and reload succeed, stop is refused.
    fn answer_asks(mut asks: mpsc::Receiver<Ask>) {
        tokio::spawn(async move {
            while let Some(ask) = asks.recv().await {
                match ask {
                    Ask::Pong(tx) => drop(tx.send(())),
                    Ask::Queues(tx) => drop(tx.send(Vec::new())),
                    Ask::Command(Command::Scale(n), tx) => {
                        drop(tx.send(Ok(format!("scaling 2 -> {n}"))))
                    }
                    Ask::Command(Command::Reload, tx) => drop(tx.send(Ok("reloading".into()))),
                    Ask::Command(Command::Stop, tx) => drop(tx.send(Err("not now".into()))),
                }
            }
        });
    }

    async fn connect(name: &str) -> UnixStream {
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let s = StdUnixStream::connect_addr(&addr).expect("connect");
        s.set_nonblocking(true).unwrap();
        UnixStream::from_std(s).unwrap()
    }

    /// Sends `request` (as is) and reads until the server closes, bounded.
    async fn exchange(name: &str, request: &[u8]) -> String {
        let s = connect(name).await;
        write_all(&s, request).await.expect("write");
        read_to_end(&s, Duration::from_secs(3)).await
    }

    async fn read_to_end(s: &UnixStream, limit: Duration) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(limit, async {
            loop {
                if s.readable().await.is_err() {
                    return;
                }
                match s.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // A reset after the answer: the server closed with our request unread.
                    Err(_) => return,
                }
            }
        })
        .await;
        String::from_utf8_lossy(&out).into_owned()
    }

    fn parse_answer(text: &str) -> serde_json::Value {
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text:?}"
        );
        serde_json::from_str(text).expect("JSON answer")
    }

    #[tokio::test]
    async fn answers_status_and_commands() {
        let fx = start(Limits::default());
        answer_asks(fx.asks);
        let a = parse_answer(&exchange(&fx.name, b"{\"verb\":\"status\"}\n").await);
        assert_eq!(a["ok"], true);
        assert_eq!(a["status"]["desired"], 2);
        assert!(a["status"]["workers"].is_array());
        let a = parse_answer(&exchange(&fx.name, b"{\"verb\":\"scale\",\"n\":3}\n").await);
        assert_eq!(
            a,
            serde_json::json!({"ok": true, "message": "scaling 2 -> 3"})
        );
        // A request ended by shutting down the write side instead of a newline.
        let s = connect(&fx.name).await;
        write_all(&s, b"{\"verb\":\"stop\"}").await.unwrap();
        nix::sys::socket::shutdown(s.as_raw_fd(), nix::sys::socket::Shutdown::Write).unwrap();
        let a = parse_answer(&read_to_end(&s, Duration::from_secs(3)).await);
        assert_eq!(a, serde_json::json!({"ok": false, "error": "not now"}));
        let a = parse_answer(&exchange(&fx.name, b"{\"verb\":\"dance\"}\n").await);
        assert_eq!(a["ok"], false);
        assert!(a["error"].as_str().unwrap().contains("unknown verb"));
    }

    #[tokio::test]
    async fn a_loop_that_does_not_answer_is_an_error_in_bounded_time() {
        let fx = start(Limits {
            answer_timeout: Duration::from_millis(200),
            ..Limits::default()
        });
        // Asks pile up unanswered, as with a stuck loop.
        let t = Instant::now();
        let a = parse_answer(&exchange(&fx.name, b"{\"verb\":\"reload\"}\n").await);
        assert_eq!(a["ok"], false);
        assert!(
            a["error"].as_str().unwrap().contains("did not answer"),
            "{a}"
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        drop(fx.asks);
    }

    #[tokio::test]
    async fn oversized_and_silent_requests_are_closed() {
        let fx = start(Limits {
            request_timeout: Duration::from_millis(200),
            ..Limits::default()
        });
        answer_asks(fx.asks);
        let a = parse_answer(&exchange(&fx.name, &[b'x'; MAX_REQUEST + 10]).await);
        assert!(
            a["error"].as_str().unwrap().contains("longer than 4096"),
            "{a}"
        );
        let silent = connect(&fx.name).await;
        let t = Instant::now();
        let got = read_to_end(&silent, Duration::from_secs(3)).await;
        assert_eq!(got, "", "closed without a word");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn a_full_server_makes_way_for_a_real_request() {
        let fx = start(Limits {
            max_connections: 2,
            ..Limits::default()
        });
        answer_asks(fx.asks);
        // Far more silent connections than places; each newcomer evicts the oldest.
        let mut silent = Vec::new();
        for _ in 0..20 {
            silent.push(connect(&fx.name).await);
        }
        let t = Instant::now();
        let a = parse_answer(&exchange(&fx.name, b"{\"verb\":\"status\"}\n").await);
        assert_eq!(a["ok"], true, "{a}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        // The oldest were closed by then (reading gives EOF at once).
        let got = read_to_end(&silent[0], Duration::from_millis(500)).await;
        assert_eq!(got, "");
    }

    #[tokio::test]
    async fn drain_lets_a_decided_answer_out_and_stops_accepting() {
        let fx = start(Limits::default());
        let mut asks = fx.asks;
        let s = connect(&fx.name).await;
        write_all(&s, b"{\"verb\":\"stop\"}\n").await.unwrap();
        // The loop answers, then at once drains (as the supervisor does when the pool is done).
        match tokio::time::timeout(Duration::from_secs(2), asks.recv()).await {
            Ok(Some(Ask::Command(Command::Stop, tx))) => drop(tx.send(Ok("stopping".into()))),
            other => panic!("{other:?}"),
        }
        let _silent = connect(&fx.name).await;
        let t = Instant::now();
        fx.running.drain().await;
        assert!(t.elapsed() < DRAIN_TIMEOUT + Duration::from_millis(100));
        let a = parse_answer(&read_to_end(&s, Duration::from_secs(1)).await);
        assert_eq!(a["message"], "stopping");
        // Nobody accepts any more: the listener went with the accept loop.
        let addr = SocketAddr::from_abstract_name(fx.name.as_bytes()).unwrap();
        let late = StdUnixStream::connect_addr(&addr);
        assert!(late.is_err(), "{late:?}");
    }
}
