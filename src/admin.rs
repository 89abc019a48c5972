//! The read-only HTTP admin endpoint (`--admin-listen`): `/livez`, `/readyz`, `/metrics`, `/status`.
//!
//! The supervisor owns the state; this module only shows it. The supervisor publishes a
//! [`PoolStatus`] snapshot through a `watch` channel whenever something changes, and answers
//! liveness pings sent over an `mpsc` channel. Handlers never touch supervisor state directly.
//!
//! | path       | 200 when                                   | otherwise | content type |
//! |------------|--------------------------------------------|-----------|--------------|
//! | `/livez`   | the supervisor loop answers a ping in 1 s  | 503       | `text/plain` |
//! | `/readyz`  | the pool is ready                          | 503       | `text/plain` |
//! | `/metrics` | always (Prometheus text format 0.0.4)      |           | `text/plain; version=0.0.4` |
//! | `/status`  | always (JSON)                              |           | `application/json` |
//!
//! Any other path is 404; a method other than GET or HEAD on a known path is 405.
//!
//! What the supervisor does for us: `watch::Sender::send_replace` a fresh [`PoolStatus`] after
//! each event that changed something, and in its loop an arm like
//! `Some(pong) = pings.recv() => { let _ = pong.send(()); }`. Pings arrive only while someone
//! asks for `/livez`, so an idle init keeps sleeping.
//!
//! The server runs on the supervisor's current-thread runtime, so every resource a client can
//! hold is bounded, and a probe always gets through: each connection carries one request and is
//! closed after its answer (no idle keep-alive); at most [`MAX_CONNECTIONS`] are open, and a new
//! one beyond closes the oldest (an idle or trickling client, since a probe is answered at
//! once); a request head must arrive within [`HEADER_READ_TIMEOUT`] and may not exceed
//! [`MAX_BUF_SIZE`]; no connection lives longer than [`MAX_CONNECTION_LIFE`].

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use crate::listen::{self, Address, Host, Queue};

/// Open connections at most; a new one beyond closes the oldest.
pub const MAX_CONNECTIONS: usize = 128;
/// A request head (and the next one on a keep-alive connection) must arrive within this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer per connection: our requests are a line and a few headers; hyper's minimum.
pub const MAX_BUF_SIZE: usize = 8192;
/// A backstop for clients that keep a connection busy forever (e.g. a body trickled byte by byte).
pub const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(60);
/// How long `/livez` waits for the supervisor to answer.
pub const PONG_TIMEOUT: Duration = Duration::from_secs(1);
/// Probes and scrapes are few; a queue of this many rides out a burst of them.
const BACKLOG: u32 = 128;
/// After a failed `accept` (EMFILE, say) we pause rather than spin on the error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// After `MAX_CONNECTION_LIFE`, how long an in-flight response may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Worker states as the pool names them (`SlotState::as_str`); each is always present in
/// `/metrics`.
pub const WORKER_STATES: [&str; 5] = ["starting", "ready", "stopping", "backoff", "ended"];

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";

/// One slot of the pool (or one worker that left its slot), as the supervisor last published it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerStatus {
    pub slot: u32,
    /// None while no process runs in the slot (backoff, ended).
    pub pid: Option<i32>,
    /// One of [`WORKER_STATES`].
    pub state: &'static str,
    pub generation: u64,
    pub restarts: u64,
    pub started_at: Option<SystemTime>,
    /// How the previous process of this slot ended, e.g. "exit 1" or "signal SIGKILL".
    pub last_exit: Option<String>,
    /// Its reason, as `/metrics` counts it (`exit_nonzero`, `oom`, ...).
    pub last_exit_reason: Option<&'static str>,
    /// The last `STATUS=` the worker sent.
    pub status_text: Option<String>,
}

/// The snapshot of the pool that the supervisor publishes on every change.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolStatus {
    pub ready: bool,
    pub generation: u64,
    pub desired: u32,
    /// CPUs the pool may use, possibly fractional (a cgroup quota of 1.5 CPUs).
    pub cpu_budget: f64,
    /// When cluster-init started.
    pub start_time: SystemTime,
    pub restarts_total: u64,
    /// Worker exits by reason (every reason the pool knows, zeros included).
    pub exits: BTreeMap<&'static str, u64>,
    pub workers: Vec<WorkerStatus>,
    /// Our own log lines dropped because stderr was not read.
    pub log_lines_dropped: u64,
    /// The slots new connections are steered to.
    pub serving: Vec<u32>,
    /// `on`, or `off: why`.
    pub steering: String,
    /// Steering programs attached so far.
    pub steering_updates: u64,
}

impl PoolStatus {
    /// Before the first publish: nothing runs yet.
    pub fn empty(desired: u32, cpu_budget: f64) -> PoolStatus {
        PoolStatus {
            ready: false,
            generation: 1,
            desired,
            cpu_budget,
            start_time: SystemTime::now(),
            restarts_total: 0,
            exits: BTreeMap::new(),
            workers: Vec::new(),
            log_lines_dropped: 0,
            serving: Vec::new(),
            steering: String::new(),
            steering_updates: 0,
        }
    }
}

/// A bound admin listener, not yet serving.
pub struct Admin {
    listener: StdTcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    limits: Limits,
}

/// What every request handler reads.
struct Shared {
    status: watch::Receiver<PoolStatus>,
    ping: mpsc::Sender<Ask>,
}

/// What a handler asks the supervisor loop, which answers when its loop turns.
#[derive(Debug)]
pub enum Ask {
    /// `/livez`: answered by the loop itself, so a stuck loop fails the probe.
    Pong(oneshot::Sender<()>),
    /// The accept queues of the listeners, read when scraped.
    Queues(oneshot::Sender<Vec<Queue>>),
    /// A control command (`cluster-init ctl`): the answer is what the pool made of it.
    Command(
        crate::pool::Command,
        oneshot::Sender<Result<String, String>>,
    ),
}

/// Bounds on what clients may hold; a struct so tests can shrink them.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    header_read_timeout: Duration,
    max_connection_life: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connection_life: MAX_CONNECTION_LIFE,
        }
    }
}

/// Where `--admin-listen` serves: the TCP forms of the `--listen` grammar (`HOST:PORT`,
/// `[IPV6]:PORT`, `:PORT` or a bare `PORT`), with the same meanings: `:PORT` is dual-stack, a
/// host name is resolved when binding (to its first IPv4 address, else its first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminAddr {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = Address::Tcp {
            host: self.host.clone(),
            port: self.port,
        };
        write!(f, "{addr}")
    }
}

/// Parses an `--admin-listen` value. Pure: a host name is only checked for its form here (clap
/// runs this at parse time, so a bad value exits 2 naming the option or its variable).
pub fn parse_listen_addr(s: &str) -> Result<AdminAddr, String> {
    // The `--listen` rule for a name: a prefix before `=` without `:` or `/`.
    if s.split_once('=')
        .is_some_and(|(name, _)| !name.contains([':', '/']))
    {
        return Err("a NAME= prefix names a --listen socket; the admin address has none".into());
    }
    const EXPECTED: &str = "HOST:PORT, [IPV6]:PORT or :PORT";
    match listen::parse_addr(s) {
        Ok(Address::Tcp { host, port }) => Ok(AdminAddr { host, port }),
        Ok(Address::Unix(_)) => Err(format!("the admin endpoint is TCP only ({EXPECTED})")),
        Err(_) if s.starts_with('/') => Err(format!("the admin endpoint is TCP only ({EXPECTED})")),
        // The `--listen` wording would offer NAME= and unix: forms refused here.
        Err(why) if why.starts_with("expected") => Err(format!("expected {EXPECTED}")),
        Err(why) => Err(format!("{why} (expected {EXPECTED})")),
    }
}

/// Binds the admin socket: `:PORT` on `[::]` with IPV6_V6ONLY off (IPv4 and IPv6 clients, like
/// `--listen`, so kubelet probes work on IPv6-only and dual-stack pods), or `0.0.0.0` when the
/// kernel has no IPv6.
fn bind_admin(addr: &AdminAddr) -> Result<StdTcpListener, String> {
    let (_, fd) = listen::bind_first(&addr.host, addr.port, false, BACKLOG)?;
    Ok(StdTcpListener::from(fd))
}

impl Admin {
    /// Binds `addr` ([`parse_listen_addr`]'s grammar; a host name is resolved here, once) now,
    /// so that a taken port is reported at start ("cannot bind 127.0.0.1:9090: address in use",
    /// which the caller turns into exit 2). Serving starts with [`Admin::spawn`].
    ///
    /// Needs no runtime: the socket is bound blocking-free with plain syscalls and handed to
    /// tokio in `spawn`.
    pub fn bind(
        addr: &str,
        status: watch::Receiver<PoolStatus>,
        ping: mpsc::Sender<Ask>,
    ) -> Result<Admin, String> {
        let parsed =
            parse_listen_addr(addr).map_err(|why| format!("invalid address '{addr}': {why}"))?;
        let listener = bind_admin(&parsed)?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot bind {addr}: {}", io_reason(&e)))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| format!("cannot bind {addr}: {}", io_reason(&e)))?;
        Ok(Admin {
            listener,
            local_addr,
            shared: Arc::new(Shared { status, ping }),
            limits: Limits::default(),
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts serving with `tokio::spawn` on the current runtime (no `LocalSet` needed: every
    /// task here is `Send`). Must be called from inside the runtime. The server runs until the
    /// runtime shuts down.
    pub fn spawn(self) {
        let listener = match TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                // Only fails if the runtime has no IO driver: a programming error, but not
                // one worth taking PID 1 down for.
                warn!(addr = %self.local_addr, "admin endpoint cannot start: {e}");
                return;
            }
        };
        tokio::spawn(accept_loop(listener, self.shared, self.limits));
    }
}

/// Short, human reasons for the bind errors people actually meet.
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => "address in use".to_string(),
        io::ErrorKind::AddrNotAvailable => "address not available".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, limits: Limits) {
    // Open connections, oldest first. When they reach the limit, the oldest gives way: every
    // request is answered in one round trip and its connection closed, so what holds a place
    // for long is an idle or trickling client, never a probe, which always gets in.
    let mut open: VecDeque<AbortHandle> = VecDeque::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                warn!("admin endpoint: accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        open.retain(|h| !h.is_finished());
        if open.len() >= limits.max_connections {
            if let Some(oldest) = open.pop_front() {
                debug!(%peer, "admin endpoint: connection limit reached, closing the oldest");
                oldest.abort();
            }
        }
        let task = tokio::spawn(serve_connection(stream, Arc::clone(&shared), limits));
        open.push_back(task.abort_handle());
    }
}

/// Serves one request on one connection, then closes it.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, limits: Limits) {
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(respond(&req, &shared).await) }
    });
    let conn = http1::Builder::new()
        // The timer is what makes header_read_timeout work; without one hyper ignores it.
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF_SIZE)
        // Answer and close: an idle keep-alive client holds nothing of ours.
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                // Garbage, timeouts and resets are the client's problem, not an event.
                debug!("admin endpoint: connection ended: {e}");
            }
        }
        _ = tokio::time::sleep(limits.max_connection_life) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

async fn respond(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/livez" | "/readyz" | "/metrics" | "/status") {
        return reply(StatusCode::NOT_FOUND, TEXT, "not found\n".into());
    }
    // HEAD is answered like GET; hyper leaves the body out.
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed\n".into(),
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/livez" => {
            if supervisor_answers(&shared.ping).await {
                reply(StatusCode::OK, TEXT, "ok\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "supervisor not answering\n".into(),
                )
            }
        }
        "/readyz" => {
            if shared.status.borrow().ready {
                reply(StatusCode::OK, TEXT, "ready\n".into())
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".into())
            }
        }
        // Rendered straight from the borrowed snapshot: the guard is never held across an await.
        "/metrics" => {
            let queues = queues(&shared.ping).await;
            let body = render_metrics(&shared.status.borrow(), &queues);
            reply(StatusCode::OK, PROMETHEUS_TEXT, body)
        }
        _ => {
            let queues = queues(&shared.ping).await;
            let body = render_status(&shared.status.borrow(), &queues);
            reply(StatusCode::OK, JSON, body)
        }
    }
}

/// Asks the supervisor loop for a pong. It answers only when its loop turns, which is the point:
/// a loop stuck in a blocking call makes /livez fail. No timer runs while nobody asks.
async fn supervisor_answers(ping: &mpsc::Sender<Ask>) -> bool {
    let (tx, rx) = oneshot::channel();
    let round_trip = async {
        ping.send(Ask::Pong(tx)).await.ok()?;
        rx.await.ok()
    };
    matches!(
        tokio::time::timeout(PONG_TIMEOUT, round_trip).await,
        Ok(Some(()))
    )
}

/// The listeners' accept queues, read by the loop now; empty when it does not answer in time
/// (the rest of the page is still worth serving). `ctl status` asks the same way.
pub async fn queues(ping: &mpsc::Sender<Ask>) -> Vec<Queue> {
    let (tx, rx) = oneshot::channel();
    let round_trip = async {
        ping.send(Ask::Queues(tx)).await.ok()?;
        rx.await.ok()
    };
    tokio::time::timeout(PONG_TIMEOUT, round_trip)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Renders the snapshot in the Prometheus text exposition format 0.0.4.
pub fn render_metrics(s: &PoolStatus, queues: &[Queue]) -> String {
    let mut out = String::with_capacity(2048);

    let mut by_state: BTreeMap<&str, u64> = WORKER_STATES.iter().map(|&k| (k, 0)).collect();
    for w in &s.workers {
        *by_state.entry(w.state).or_insert(0) += 1;
    }
    family(
        &mut out,
        "cluster_init_workers",
        "gauge",
        "Workers by state.",
    );
    // In WORKER_STATES order first (lifecycle order reads better than alphabetical), then any
    // state the supervisor names that we do not know of.
    for state in WORKER_STATES {
        sample_labeled(
            &mut out,
            "cluster_init_workers",
            "state",
            state,
            by_state[state],
        );
    }
    for (state, n) in by_state.iter().filter(|(k, _)| !WORKER_STATES.contains(k)) {
        sample_labeled(&mut out, "cluster_init_workers", "state", state, *n);
    }

    family(
        &mut out,
        "cluster_init_workers_desired",
        "gauge",
        "Workers the pool aims to run.",
    );
    sample(&mut out, "cluster_init_workers_desired", s.desired);

    family(
        &mut out,
        "cluster_init_restarts_total",
        "counter",
        "Workers restarted since cluster-init started.",
    );
    sample(&mut out, "cluster_init_restarts_total", s.restarts_total);

    let mut exits: BTreeMap<&str, u64> = crate::pool::ExitReason::ALL
        .iter()
        .map(|r| (r.as_str(), 0))
        .collect();
    for (reason, n) in &s.exits {
        exits.insert(reason, *n);
    }
    family(
        &mut out,
        "cluster_init_worker_exits_total",
        "counter",
        "Worker exits by reason.",
    );
    for (reason, n) in exits {
        sample_labeled(
            &mut out,
            "cluster_init_worker_exits_total",
            "reason",
            reason,
            n,
        );
    }

    family(
        &mut out,
        "cluster_init_cpu_budget",
        "gauge",
        "CPUs the pool may use (fractional under a cgroup quota).",
    );
    sample(&mut out, "cluster_init_cpu_budget", PromFloat(s.cpu_budget));

    family(
        &mut out,
        "cluster_init_generation",
        "gauge",
        "Current generation of the pool.",
    );
    sample(&mut out, "cluster_init_generation", s.generation);

    family(
        &mut out,
        "cluster_init_ready",
        "gauge",
        "1 when the pool is ready, else 0.",
    );
    sample(&mut out, "cluster_init_ready", u8::from(s.ready));

    // Name, help, and the value of one socket.
    type PerSocket = (&'static str, &'static str, fn(&Queue) -> u32);
    let per_socket: [PerSocket; 2] = [
        (
            "cluster_init_listen_queue",
            "Connections waiting in a listening socket's accept queue (slot \"shared\": every slot's).",
            |q| q.queued,
        ),
        (
            "cluster_init_listen_backlog",
            "The accept queue's capacity (the listen backlog).",
            |q| q.backlog,
        ),
    ];
    for (name, help, value) in per_socket {
        family(&mut out, name, "gauge", help);
        for q in queues {
            let _ = writeln!(
                out,
                "{name}{{listener=\"{}\",slot=\"{}\"}} {}",
                escape_label(&q.listener),
                slot_label(q.slot),
                value(q)
            );
        }
    }

    family(
        &mut out,
        "cluster_init_log_lines_dropped_total",
        "counter",
        "Log lines of cluster-init dropped because stderr was not being read.",
    );
    sample(
        &mut out,
        "cluster_init_log_lines_dropped_total",
        s.log_lines_dropped,
    );

    family(
        &mut out,
        "cluster_init_start_time_seconds",
        "gauge",
        "Start time of cluster-init since the Unix epoch, in seconds.",
    );
    sample(
        &mut out,
        "cluster_init_start_time_seconds",
        PromFloat(unix_seconds(s.start_time)),
    );
    out
}

fn slot_label(slot: Option<u32>) -> String {
    slot.map_or_else(|| "shared".to_string(), |s| s.to_string())
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{name} {value}");
}

fn sample_labeled(
    out: &mut String,
    name: &str,
    label: &str,
    value: &str,
    n: impl std::fmt::Display,
) {
    let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", escape_label(value));
}

/// Label values escape backslash, double quote and newline (format 0.0.4).
fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// A float as Prometheus spells it: `+Inf`, `-Inf`, `NaN`, otherwise Rust's shortest form.
struct PromFloat(f64);

impl std::fmt::Display for PromFloat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

/// Seconds since the epoch; a clock set before 1970 reads as negative rather than failing.
fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Renders the snapshot as the `/status` JSON document.
pub fn render_status(s: &PoolStatus, queues: &[Queue]) -> String {
    let queued = |slot: u32| {
        let mine: Vec<u32> = queues
            .iter()
            .filter(|q| q.slot == Some(slot))
            .map(|q| q.queued)
            .collect();
        (!mine.is_empty()).then(|| mine.iter().sum::<u32>())
    };
    let workers: Vec<serde_json::Value> = s
        .workers
        .iter()
        .map(|w| {
            serde_json::json!({
                "queued": queued(w.slot),
                "slot": w.slot,
                "pid": w.pid,
                "state": w.state,
                "generation": w.generation,
                "restarts": w.restarts,
                "started_at": w.started_at.map(unix_seconds),
                "last_exit": w.last_exit,
                "last_exit_reason": w.last_exit_reason,
                "status": w.status_text,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "ready": s.ready,
        "generation": s.generation,
        "desired": s.desired,
        // serde_json writes a non-finite float as null, which is what a reader should see.
        "cpu_budget": s.cpu_budget,
        "workers": workers,
        "serving": s.serving,
        "steering": s.steering,
        "steering_updates": s.steering_updates,
        "listeners": queues.iter().map(|q| serde_json::json!({
            "listener": q.listener,
            "slot": q.slot,
            "queued": q.queued,
            "backlog": q.backlog,
        })).collect::<Vec<_>>(),
        "log_lines_dropped": s.log_lines_dropped,
    });
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn sample_status() -> PoolStatus {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        PoolStatus {
            ready: false,
            generation: 3,
            desired: 2,
            cpu_budget: 1.5,
            start_time: t0,
            restarts_total: 4,
            exits: BTreeMap::from([("exit_nonzero", 3), ("signal", 1)]),
            workers: vec![
                WorkerStatus {
                    slot: 0,
                    pid: Some(42),
                    state: "ready",
                    generation: 3,
                    restarts: 1,
                    started_at: Some(t0 + Duration::from_millis(1500)),
                    last_exit: Some("exit 1".into()),
                    last_exit_reason: Some("exit_nonzero"),
                    status_text: Some("serving".into()),
                },
                WorkerStatus {
                    slot: 1,
                    pid: None,
                    state: "backoff",
                    generation: 2,
                    restarts: 3,
                    started_at: None,
                    last_exit: Some("signal SIGKILL".into()),
                    last_exit_reason: Some("signal"),
                    status_text: None,
                },
            ],
            log_lines_dropped: 0,
            serving: vec![0],
            steering: "on".into(),
            steering_updates: 3,
        }
    }

    /// A running admin endpoint on a free loopback port, with its two channel ends.
    struct Fixture {
        addr: SocketAddr,
        status: watch::Sender<PoolStatus>,
        pings: mpsc::Receiver<Ask>,
    }

    fn start(limits: Limits) -> Fixture {
        let (status_tx, status_rx) = watch::channel(sample_status());
        let (ping_tx, ping_rx) = mpsc::channel(8);
        let mut admin = Admin::bind("127.0.0.1:0", status_rx, ping_tx).expect("bind");
        admin.limits = limits;
        let addr = admin.local_addr();
        admin.spawn();
        Fixture {
            addr,
            status: status_tx,
            pings: ping_rx,
        }
    }

    /// Answers pings the way the supervisor loop will.
    fn answer_pings(mut pings: mpsc::Receiver<Ask>) {
        tokio::spawn(async move {
            while let Some(ask) = pings.recv().await {
                match ask {
                    Ask::Pong(tx) => drop(tx.send(())),
                    Ask::Queues(tx) => drop(tx.send(sample_queues())),
                    Ask::Command(_, tx) => drop(tx.send(Err("no pool in this test".into()))),
                }
            }
        });
    }

    fn sample_queues() -> Vec<Queue> {
        vec![
            Queue {
                listener: "http".into(),
                slot: Some(0),
                queued: 2,
                backlog: 1024,
            },
            Queue {
                listener: "unix".into(),
                slot: None,
                queued: 0,
                backlog: 128,
            },
        ]
    }

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A minimal HTTP/1.1 client: one request, `Connection: close`, read to EOF.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
            .await
            .expect("reply in time")
            .expect("read");
        let raw = String::from_utf8(raw).expect("utf-8 reply");
        let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status code");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Reply {
            status,
            headers,
            body: body.to_string(),
        }
    }

    /// A strict reader of the text exposition format: returns (name, labels, value) samples,
    /// failing the test on any line that does not fit or a sample whose family lacks HELP/TYPE.
    fn parse_prometheus(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
        let mut helped = HashSet::new();
        let mut typed = HashSet::new();
        let mut samples = Vec::new();
        assert!(text.ends_with('\n'), "exposition ends with a newline");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(valid_name(name) && !help.is_empty(), "{line}");
                assert!(
                    helped.insert(name.to_string()),
                    "one HELP per family: {line}"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(valid_name(name), "{line}");
                assert!(
                    matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ),
                    "{line}"
                );
                assert!(helped.contains(name), "HELP before TYPE: {line}");
                assert!(
                    typed.insert(name.to_string()),
                    "one TYPE per family: {line}"
                );
                continue;
            }
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let (name, labels, value) = parse_sample(line);
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
            };
            let name = name.as_str();
            assert!(valid_name(name), "{line}");
            assert!(typed.contains(name), "TYPE before samples: {line}");
            samples.push((name.to_string(), labels, value));
        }
        samples
    }

    /// Splits `name{k="v",...} value`, undoing the three escapes of label values.
    fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, &str) {
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(mut inner) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = inner.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = inner
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("label=\"value\" in {line:?}"));
                assert!(valid_name(key), "label name in {line:?}");
                let mut value = String::new();
                let mut chars = after.char_indices();
                let close = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            other => panic!("bad escape {other:?} in {line:?}"),
                        },
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label value in {line:?}"),
                    }
                };
                labels.insert(key.to_string(), value);
                inner = &after[close + 1..];
                inner = inner.strip_prefix(',').unwrap_or(inner);
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("one space before the value in {line:?}"));
        assert!(
            !value.is_empty() && !value.contains(' '),
            "value in {line:?}"
        );
        (name, labels, value)
    }

    fn valid_name(n: &str) -> bool {
        let mut chars = n.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn value_of(
        samples: &[(String, BTreeMap<String, String>, f64)],
        name: &str,
        label: Option<(&str, &str)>,
    ) -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
    }

    #[test]
    fn metrics_are_valid_exposition_with_every_state_and_reason() {
        let samples = parse_prometheus(&render_metrics(&sample_status(), &sample_queues()));
        for state in WORKER_STATES {
            let want = match state {
                "ready" | "backoff" => 1.0,
                _ => 0.0,
            };
            let got = value_of(&samples, "cluster_init_workers", Some(("state", state)));
            assert_eq!(got, want, "{state}");
        }
        for reason in crate::pool::ExitReason::ALL.map(|r| r.as_str()) {
            let want = match reason {
                "exit_nonzero" => 3.0,
                "signal" => 1.0,
                _ => 0.0,
            };
            let got = value_of(
                &samples,
                "cluster_init_worker_exits_total",
                Some(("reason", reason)),
            );
            assert_eq!(got, want, "{reason}");
        }
        assert_eq!(
            value_of(&samples, "cluster_init_workers_desired", None),
            2.0
        );
        assert_eq!(value_of(&samples, "cluster_init_restarts_total", None), 4.0);
        assert_eq!(value_of(&samples, "cluster_init_cpu_budget", None), 1.5);
        assert_eq!(value_of(&samples, "cluster_init_generation", None), 3.0);
        assert_eq!(value_of(&samples, "cluster_init_ready", None), 0.0);
        assert_eq!(
            value_of(&samples, "cluster_init_start_time_seconds", None),
            1_700_000_000.0
        );
    }

    #[test]
    fn metrics_escape_unknown_labels_and_spell_odd_floats() {
        let mut s = sample_status();
        s.exits.insert("we\"ird\\", 1);
        s.cpu_budget = f64::INFINITY;
        let text = render_metrics(&s, &[]);
        assert!(text.contains(r#"reason="we\"ird\\"} 1"#), "{text}");
        assert!(text.contains("cluster_init_cpu_budget +Inf\n"), "{text}");
        parse_prometheus(&text);
    }

    #[test]
    fn status_json_has_every_field() {
        let v: serde_json::Value =
            serde_json::from_str(&render_status(&sample_status(), &sample_queues())).expect("json");
        assert_eq!(v["ready"], false);
        assert_eq!(v["generation"], 3);
        assert_eq!(v["desired"], 2);
        assert_eq!(v["cpu_budget"], 1.5);
        let w = v["workers"].as_array().expect("workers");
        assert_eq!(w.len(), 2);
        assert_eq!(w[0]["slot"], 0);
        assert_eq!(w[0]["pid"], 42);
        assert_eq!(w[0]["state"], "ready");
        assert_eq!(w[0]["generation"], 3);
        assert_eq!(w[0]["restarts"], 1);
        assert_eq!(w[0]["started_at"], 1_700_000_001.5);
        assert_eq!(w[0]["last_exit"], "exit 1");
        assert!(w[1]["pid"].is_null());
        assert!(w[1]["started_at"].is_null());
        assert_eq!(w[1]["last_exit"], "signal SIGKILL");
    }

    #[test]
    fn listen_addr_forms() {
        let tcp = |host, port| Ok(AdminAddr { host, port });
        let ip = |s: &str| Host::Ip(s.parse().unwrap());
        assert_eq!(parse_listen_addr(":9090"), tcp(Host::Any, 9090));
        assert_eq!(parse_listen_addr("9090"), tcp(Host::Any, 9090));
        assert_eq!(
            parse_listen_addr("127.0.0.1:9090"),
            tcp(ip("127.0.0.1"), 9090)
        );
        assert_eq!(parse_listen_addr("[::]:9090"), tcp(ip("::"), 9090));
        assert_eq!(parse_listen_addr("[::1]:0"), tcp(ip("::1"), 0));
        assert_eq!(
            parse_listen_addr("localhost:9090"),
            tcp(Host::Name("localhost".into()), 9090)
        );
        for (bad, why) in [
            (":", "missing port"),
            (":99999", "out of range"),
            ("", "expected"),
            ("::1:9090", "brackets"),
            ("bad host:9090", "not a host name"),
            ("unix:/run/admin.sock", "TCP only"),
            ("/run/admin.sock", "TCP only"),
            ("metrics=:9090", "NAME="),
        ] {
            let err = parse_listen_addr(bad).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn listen_addr_display_parses_back() {
        for s in [":9090", "127.0.0.1:1", "[::1]:0", "localhost:9090"] {
            let parsed = parse_listen_addr(s).unwrap();
            assert_eq!(parsed.to_string(), s);
            assert_eq!(parse_listen_addr(&parsed.to_string()), Ok(parsed));
        }
    }

    #[test]
    fn any_port_binds_dual_stack() {
        let (_status_tx, status_rx) = watch::channel(sample_status());
        let (ping_tx, _ping_rx) = mpsc::channel(1);
        let admin = Admin::bind(":0", status_rx, ping_tx).expect("bind :0");
        let port = admin.local_addr().port();
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("IPv4 client");
        if admin.local_addr().is_ipv6() {
            std::net::TcpStream::connect(("::1", port)).expect("IPv6 client");
        }
    }

    #[test]
    fn bind_conflict_names_address_and_reason() {
        let taken = StdTcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr").to_string();
        let (_status_tx, status_rx) = watch::channel(sample_status());
        let (ping_tx, _ping_rx) = mpsc::channel(1);
        let err = Admin::bind(&addr, status_rx, ping_tx)
            .err()
            .expect("second bind fails");
        assert_eq!(err, format!("cannot bind {addr}: address in use"));
    }

    #[tokio::test]
    async fn endpoints_answer_with_status_and_content_type() {
        let fx = start(Limits::default());
        answer_pings(fx.pings);
        let cases = [
            ("GET", "/livez", 200, TEXT),
            ("GET", "/readyz", 503, TEXT),
            ("GET", "/metrics", 200, PROMETHEUS_TEXT),
            ("GET", "/status", 200, JSON),
            ("GET", "/status?pretty=1", 200, JSON),
            ("GET", "/", 404, TEXT),
            ("GET", "/metricsx", 404, TEXT),
            ("POST", "/metrics", 405, TEXT),
            ("DELETE", "/livez", 405, TEXT),
        ];
        for (method, path, code, ctype) in cases {
            let r = request(fx.addr, method, path).await;
            assert_eq!(r.status, code, "{method} {path}");
            assert_eq!(r.header("content-type"), Some(ctype), "{method} {path}");
            if code == 405 {
                assert_eq!(r.header("allow"), Some("GET, HEAD"));
            }
        }
        let m = request(fx.addr, "GET", "/metrics").await;
        parse_prometheus(&m.body);
        let s = request(fx.addr, "GET", "/status").await;
        let v: serde_json::Value = serde_json::from_str(&s.body).expect("json body");
        assert_eq!(v["workers"][1]["state"], "backoff");

        let head = request(fx.addr, "HEAD", "/metrics").await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty(), "HEAD has no body");
    }

    #[tokio::test]
    async fn readyz_follows_the_published_snapshot() {
        let fx = start(Limits::default());
        assert_eq!(request(fx.addr, "GET", "/readyz").await.status, 503);
        fx.status.send_modify(|s| s.ready = true);
        assert_eq!(request(fx.addr, "GET", "/readyz").await.status, 200);
        let m = request(fx.addr, "GET", "/metrics").await;
        assert!(m.body.contains("\ncluster_init_ready 1\n"), "{}", m.body);
    }

    #[tokio::test]
    async fn livez_fails_when_the_supervisor_does_not_answer() {
        let fx = start(Limits::default());
        // Pings pile up unanswered in the channel, as with a stuck supervisor loop.
        let t = Instant::now();
        let r = request(fx.addr, "GET", "/livez").await;
        assert_eq!(r.status, 503);
        assert!(t.elapsed() >= PONG_TIMEOUT);
        assert!(t.elapsed() < PONG_TIMEOUT + Duration::from_secs(1));
        // A supervisor that is gone altogether: answered at once.
        drop(fx.pings);
        let t = Instant::now();
        assert_eq!(request(fx.addr, "GET", "/livez").await.status, 503);
        assert!(t.elapsed() < PONG_TIMEOUT);
    }

    #[tokio::test]
    async fn silent_and_garbage_clients_do_not_delay_a_good_request() {
        let fx = start(Limits::default());
        answer_pings(fx.pings);
        let _silent = TcpStream::connect(fx.addr).await.expect("connect");
        let mut garbage = TcpStream::connect(fx.addr).await.expect("connect");
        garbage
            .write_all(b"\x00\x01\xffNOT HTTP AT ALL\r\n\r\n")
            .await
            .expect("write");
        // A half-sent head, left hanging.
        let mut partial = TcpStream::connect(fx.addr).await.expect("connect");
        partial
            .write_all(b"GET /metrics HTTP/1.1\r\nHost:")
            .await
            .expect("write");

        let t = Instant::now();
        let r = request(fx.addr, "GET", "/livez").await;
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "good request took {:?}",
            t.elapsed()
        );
        // The garbage client got an error status and a closed connection, not a hang.
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), garbage.read_to_end(&mut raw))
            .await
            .expect("garbage connection closed in time")
            .expect("read");
        assert!(
            raw.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&raw)
        );
    }

    #[tokio::test]
    async fn silent_client_is_dropped_after_the_header_timeout() {
        let fx = start(Limits {
            header_read_timeout: Duration::from_millis(200),
            ..Limits::default()
        });
        let mut silent = TcpStream::connect(fx.addr).await.expect("connect");
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf))
            .await
            .expect("closed by the server in time");
        // hyper may write a 408 before closing; either way the connection ends.
        if let Ok(n) = n {
            if n > 0 {
                assert!(buf.starts_with(b"HTTP/1.1 408"), "{:?}", &buf[..n]);
            }
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_connection_gives_way_to_a_probe() {
        let fx = start(Limits {
            max_connections: 2,
            ..Limits::default()
        });
        answer_pings(fx.pings);
        let mut a = TcpStream::connect(fx.addr).await.expect("connect");
        let _b = TcpStream::connect(fx.addr).await.expect("connect");
        // Let the server take both before the probe comes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        let r = request(fx.addr, "GET", "/livez").await;
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        // The oldest, idle, was closed to make room.
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), a.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "oldest connection closed: {n:?}"
        );
    }

    #[tokio::test]
    async fn every_answer_closes_its_connection() {
        let fx = start(Limits::default());
        let mut s = TcpStream::connect(fx.addr).await.expect("connect");
        s.write_all(
            b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\nGET /readyz HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await
        .expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut raw))
            .await
            .expect("closed by the server at once")
            .expect("read");
        let text = String::from_utf8_lossy(&raw);
        assert_eq!(text.matches("HTTP/1.1 503").count(), 1, "{text}");
        assert!(text.contains("connection: close"), "{text}");
    }
}
