//! Listening sockets: parsing `--listen`, binding, the per-slot sockets of
//! `--balance reuseport`, and the `LISTEN_FDS` contract the workers see.
//!
//! The init owns every listening socket for its whole life and never accepts
//! on one. Workers come and go; the sockets stay, so connections that arrive
//! while a worker restarts wait in the kernel's queue instead of being reset
//! (measured: 200 of 200 served when the init holds the socket, 108 of 200
//! reset when the exiting worker held it and `tcp_migrate_req` is 0).
//!
//! | balance     | sockets per address        | slot `i` gets |
//! |-------------|----------------------------|---------------|
//! | `reuseport` | one per slot, SO_REUSEPORT | socket `i`    |
//! | `shared`    | one                        | that socket   |
//!
//! Unix sockets are always one shared socket (SO_REUSEPORT has no meaning for
//! them). Every socket is CLOEXEC: the spawner decides which fds a worker
//! inherits by `dup2`ing [`Listeners::fds_for_slot`] onto 3, 4, ...
//!
//! Decisions:
//! - `:PORT` (and a bare `PORT`) binds `[::]` with `IPV6_V6ONLY` off, so one
//!   socket takes IPv4 and IPv6 (what Node's `listen(port)` and Go's `":port"`
//!   do; IPv6-only and dual-stack Kubernetes pods need it). If the kernel has
//!   no IPv6 (`ipv6.disable=1`), it binds `0.0.0.0` instead.
//! - The default `LISTEN_FDNAMES` entry is the address kind, `tcp` or `unix`,
//!   so a worker can tell its fds apart even when no `NAME=` was given.
//! - A host name binds the first IPv4 address it resolves to (else the first
//!   address), like Go's `net.Listen`: `localhost:8080` means 127.0.0.1.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::errno::Errno;

use crate::steer::{self, Group};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{
    bind as sys_bind, getsockname, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType,
    SockaddrStorage, UnixAddr,
};

/// First fd a worker (or an activated init) finds its listeners at (sd_listen_fds(3)).
pub const LISTEN_FDS_START: RawFd = 3;

/// Default for `--backlog`; the kernel's `somaxconn` caps it.
pub const DEFAULT_BACKLOG: u32 = 1024;

/// Mode of a unix socket we create: owner and group may connect.
const UNIX_SOCKET_MODE: u32 = 0o660;

/// `sun_path` holds 108 bytes including the terminating NUL.
const UNIX_PATH_MAX: usize = 107;

/// How connections are spread over the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Balance {
    /// One SO_REUSEPORT socket per worker slot; the kernel hashes each new
    /// connection to one of them (even spread, no thundering herd).
    #[default]
    ReusePort,
    /// One socket every worker accepts from.
    Shared,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::ReusePort => "reuseport",
            Balance::Shared => "shared",
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Balance {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reuseport" => Ok(Balance::ReusePort),
            "shared" => Ok(Balance::Shared),
            _ => Err(format!(
                "invalid balance \"{s}\": expected reuseport or shared"
            )),
        }
    }
}

/// The host part of a TCP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// `:PORT`: every interface (see the module doc for which address that is).
    Any,
    Ip(IpAddr),
    /// Resolved when binding, not when parsing: parsing has no side effects.
    Name(String),
}

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    Tcp { host: Host, port: u16 },
    Unix(PathBuf),
}

impl Address {
    /// The default `LISTEN_FDNAMES` entry.
    pub fn kind(&self) -> &'static str {
        match self {
            Address::Tcp { .. } => "tcp",
            Address::Unix(_) => "unix",
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp {
                host: Host::Any,
                port,
            } => write!(f, ":{port}"),
            Address::Tcp {
                host: Host::Ip(ip),
                port,
            } => write!(f, "{}", SocketAddr::new(*ip, *port)),
            Address::Tcp {
                host: Host::Name(name),
                port,
            } => write!(f, "{name}:{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// One `--listen [NAME=]ADDR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenSpec {
    /// The `LISTEN_FDNAMES` entry; `None` means [`Address::kind`].
    pub name: Option<String>,
    pub addr: Address,
}

impl ListenSpec {
    pub fn fd_name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.addr.kind())
    }
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}={}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl FromStr for ListenSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_spec(s).map_err(|why| format!("invalid listen address \"{s}\": {why}"))
    }
}

fn parse_spec(s: &str) -> Result<ListenSpec, String> {
    // `unix:/run/a=b.sock` has an `=` too: only a prefix without `:` or `/` is a name.
    let (name, addr) = match s.split_once('=') {
        Some((name, addr)) if !name.contains([':', '/']) => (Some(parse_name(name)?), addr),
        _ => (None, s),
    };
    Ok(ListenSpec {
        name,
        addr: parse_address(addr)?,
    })
}

/// Names follow systemd's FileDescriptorName=: printable ASCII, no `:` (the
/// `LISTEN_FDNAMES` separator), at most 255 characters.
fn parse_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("empty name before \"=\"".into());
    }
    if name.len() > 255 {
        return Err("name longer than 255 characters".into());
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("name contains {c:?} (printable ASCII only)"));
    }
    Ok(name.to_string())
}

fn parse_address(s: &str) -> Result<Address, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        return parse_unix_path(path).map(Address::Unix);
    }
    if s.starts_with('/') {
        return Err(format!("a unix socket is written unix:{s}"));
    }
    // A bare port is what people type for "this port, every interface".
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Address::Tcp {
            host: Host::Any,
            port: parse_port(s)?,
        });
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, port) = rest.split_once("]:").ok_or("expected [IPV6]:PORT")?;
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("\"{ip}\" is not an IPv6 address"))?;
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or("expected [NAME=]HOST:PORT, :PORT, PORT or unix:/path")?;
        if host.contains(':') {
            return Err("an IPv6 address needs brackets, e.g. [::1]:9000".into());
        }
        (parse_host(host)?, port)
    };
    Ok(Address::Tcp {
        host,
        port: parse_port(port)?,
    })
}

/// One `ADDR` of the `--listen` grammar without the `NAME=` prefix, for the other options that
/// take an address (`--admin-listen`). The error is the reason alone, for the caller to frame.
pub fn parse_addr(s: &str) -> Result<Address, String> {
    parse_address(s)
}

fn parse_host(host: &str) -> Result<Host, String> {
    if host.is_empty() {
        return Ok(Host::Any);
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let valid_name = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid_name {
        Ok(Host::Name(host.to_string()))
    } else {
        Err(format!("\"{host}\" is not a host name or IP address"))
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err("missing port".into());
    }
    // u16::from_str takes a leading `+`; a port is digits only.
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port \"{port}\" is not a number"));
    }
    port.parse()
        .map_err(|_| format!("port {port} is out of range (0-65535)"))
}

fn parse_unix_path(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("missing path after unix:".into());
    }
    if path.starts_with('@') {
        return Err("abstract unix sockets (@name) are not supported".into());
    }
    if path.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    if path.len() > UNIX_PATH_MAX {
        return Err(format!(
            "path is {} bytes, unix sockets allow {UNIX_PATH_MAX}",
            path.len()
        ));
    }
    Ok(PathBuf::from(path))
}

/// Parses the `CLUSTER_INIT_LISTEN` form: specs separated by commas (a unix
/// path containing a comma needs the repeatable `--listen` instead).
pub fn parse_list(s: &str) -> Result<Vec<ListenSpec>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::parse)
        .collect()
}

/// The backlog `listen(2)` gets: the kernel silently truncates anything above
/// `net.core.somaxconn`, so we cap it ourselves and log the real value.
pub fn effective_backlog(requested: u32) -> u32 {
    match read_sysctl("/proc/sys/net/core/somaxconn") {
        Some(max) => requested.min(max),
        None => requested,
    }
}

/// `net.ipv4.tcp_migrate_req` (Linux 5.14+): when 1, connections queued on a
/// reuseport socket that is closed move to its siblings instead of being
/// reset. `None` when the kernel does not have the knob.
pub fn tcp_migrate_req() -> Option<bool> {
    read_sysctl("/proc/sys/net/ipv4/tcp_migrate_req").map(|v| v != 0)
}

fn read_sysctl(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The sockets of one address.
enum Sockets {
    /// Reuseport: one socket per slot, all bound to `addr`, whose port is the
    /// one the kernel picked for slot 0 when the spec said port 0. A slot's
    /// entry is None while it has no socket (parked, removed, or not bound
    /// yet). A socket taken from its slot while processes it was lent to may
    /// still hold a copy is `retired`: it stays in the kernel's group until
    /// its last copy closes, so it is closed (and leaves `group`, the mirror
    /// of the kernel's order) only once those process groups are gone. The
    /// last socket a slot lets go is `held` instead, for the port: the next
    /// slot that needs a socket takes it over, queue and all.
    PerSlot {
        addr: SocketAddr,
        fds: Vec<Option<Lent>>,
        retired: Vec<Lent>,
        held: Option<Lent>,
        group: Group,
        next_key: u32,
    },
    /// One socket for every slot (None once closed for the final stop).
    /// `created` is set when we made the unix socket file and must remove it.
    Shared {
        fd: Option<OwnedFd>,
        created: Option<UnixFile>,
    },
}

/// One listening socket's accept queue, for `/metrics` and stall detection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue {
    /// The `LISTEN_FDNAMES` name.
    pub listener: String,
    /// None for a socket every slot shares.
    pub slot: Option<u32>,
    /// Connections waiting to be accepted.
    pub queued: u32,
    pub backlog: u32,
}

/// A socket file we created, identified by inode so that we never remove a
/// file someone else put at the same path after us.
struct UnixFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// A reuseport socket and the process groups it was lent to (its workers, each the leader of
/// its own group, whose members inherit the fd).
struct Lent {
    key: u32,
    fd: OwnedFd,
    holders: Vec<i32>,
}

impl Lent {
    fn new(key: u32, fd: OwnedFd) -> Lent {
        Lent {
            key,
            fd,
            holders: Vec::new(),
        }
    }
}

struct Entry {
    name: String,
    sockets: Sockets,
}

/// Every listening socket of the init.
pub struct Listeners {
    balance: Balance,
    backlog: u32,
    slots: usize,
    entries: Vec<Entry>,
    /// Inherited through socket activation rather than bound by us.
    inherited: bool,
}

impl Listeners {
    /// Binds every spec, `slots` sockets per TCP address in reuseport mode
    /// (at least one, so that a bad address fails before any worker starts).
    /// The error is one line: `cannot bind 0.0.0.0:8080: address in use`.
    pub fn bind(
        specs: &[ListenSpec],
        balance: Balance,
        slots: usize,
        backlog: u32,
    ) -> Result<Listeners, String> {
        let mut seen = HashSet::new();
        let fixed = |spec: &&ListenSpec| !matches!(spec.addr, Address::Tcp { port: 0, .. });
        if let Some(dup) = specs
            .iter()
            .filter(fixed)
            .find(|spec| !seen.insert(&spec.addr))
        {
            // Two reuseport groups on one port would silently merge into one.
            return Err(format!("cannot bind {}: listed twice", dup.addr));
        }
        let backlog = effective_backlog(backlog);
        let slots = slots.max(1);
        let mut listeners = Listeners {
            balance,
            backlog,
            slots,
            entries: Vec::with_capacity(specs.len()),
            inherited: false,
        };
        // Entries pushed so far are closed (and unlinked) by Drop on error.
        for spec in specs {
            let sockets = match &spec.addr {
                Address::Unix(path) => bind_unix(path, backlog)?,
                Address::Tcp { host, port } => bind_tcp_spec(host, *port, balance, slots, backlog)?,
            };
            listeners.entries.push(Entry {
                name: spec.fd_name().to_string(),
                sockets,
            });
        }
        Ok(listeners)
    }

    /// The sockets passed to the init itself by a socket-activating manager
    /// (`LISTEN_PID` is our pid, `LISTEN_FDS=n`): fds 3..3+n, served in shared
    /// mode. Consumes the protocol: unsets `LISTEN_PID`, `LISTEN_FDS` and
    /// `LISTEN_FDNAMES` and marks the fds CLOEXEC, so that nothing but the
    /// spawner passes them on. `None` when we were not activated or an fd is
    /// not open. Call before any thread starts (it changes the environment).
    pub fn from_activation() -> Option<Listeners> {
        let env = |key| std::env::var(key).ok();
        let fds = activation_fds(
            std::process::id(),
            env("LISTEN_PID").as_deref(),
            env("LISTEN_FDS").as_deref(),
            env("LISTEN_FDNAMES").as_deref(),
        )?;
        for key in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(key);
        }
        // SAFETY: F_GETFD takes no pointer; it only asks whether the fd is open.
        if fds
            .iter()
            .any(|(fd, _)| unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0)
        {
            return None;
        }
        let mut entries = Vec::with_capacity(fds.len());
        for (raw, name) in fds {
            // SAFETY: the fd is open (checked above) and the activation
            // protocol hands it to us alone; the variables that announced it
            // are gone, so nothing else in this process will claim it.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // A failure leaves the fd inheritable, which only leaks it into a
            // child that ignores it; not worth refusing the activation for.
            let _ = fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
            entries.push(Entry {
                name,
                sockets: Sockets::Shared {
                    fd: Some(fd),
                    created: None,
                },
            });
        }
        Some(Listeners {
            balance: Balance::Shared,
            backlog: 0,
            slots: 1,
            entries,
            inherited: true,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether any address has a socket per slot (reuseport TCP): what steering, parking and
    /// stall detection act on.
    pub fn has_per_slot_sockets(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.sockets, Sockets::PerSlot { .. }))
    }

    /// Listeners each worker gets: its `LISTEN_FDS`.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Worker slots the sockets are bound for.
    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// The effective backlog (after the somaxconn cap); 0 when inherited.
    pub fn backlog(&self) -> u32 {
        self.backlog
    }

    /// The fds slot `slot`'s worker gets, in `LISTEN_FDNAMES` order, to be
    /// `dup2`ed onto 3, 4, ... They are our own fds, so some may already sit
    /// in that range: the spawner must move them out of 3..3+count() before
    /// the `dup2`s (or `dup2` them in an order that never clobbers a source).
    /// Call [`Listeners::ensure_slot`] first: a slot without its own socket
    /// would share a sibling's.
    pub fn fds_for_slot(&self, slot: usize) -> Vec<RawFd> {
        self.entries
            .iter()
            .filter_map(|entry| match &entry.sockets {
                // A supervisor bug must not take PID 1 down: a worker that
                // shares a sibling's socket still serves.
                Sockets::PerSlot { fds, .. } => fds
                    .get(slot)
                    .and_then(Option::as_ref)
                    .or_else(|| fds.iter().flatten().next())
                    .map(|lent| lent.fd.as_raw_fd()),
                Sockets::Shared { fd, .. } => fd.as_ref().map(|fd| fd.as_raw_fd()),
            })
            .collect()
    }

    /// The `LISTEN_FDNAMES` value.
    pub fn fd_names(&self) -> String {
        let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        names.join(":")
    }

    /// Binds one more socket per reuseport address for a new highest slot.
    /// On error nothing changes.
    pub fn add_slot(&mut self) -> Result<(), String> {
        self.ensure_slot(self.slots)
    }

    /// Makes sure `slot` has its own socket on every reuseport address (a new
    /// slot, or one whose socket was closed while it was down). On error
    /// nothing changes.
    pub fn ensure_slot(&mut self, slot: usize) -> Result<(), String> {
        if self.balance == Balance::ReusePort {
            let mut bound = Vec::new();
            for (i, entry) in self.entries.iter().enumerate() {
                if let Sockets::PerSlot {
                    addr, fds, held, ..
                } = &entry.sockets
                {
                    if held.is_none() && fds.get(slot).is_none_or(Option::is_none) {
                        // `bound` is dropped on error: the new sockets close.
                        let fd =
                            bind_tcp(*addr, true, self.backlog).map_err(|e| bind_error(addr, e))?;
                        bound.push((i, fd));
                    }
                }
            }
            let mut bound = bound.into_iter().peekable();
            for (i, entry) in self.entries.iter_mut().enumerate() {
                let Sockets::PerSlot {
                    fds,
                    held,
                    group,
                    next_key,
                    ..
                } = &mut entry.sockets
                else {
                    continue;
                };
                if fds.get(slot).is_some_and(Option::is_some) {
                    continue;
                }
                let lent = match held.take() {
                    Some(lent) => lent,
                    None => {
                        let Some((_, fd)) = bound.next_if(|(j, _)| *j == i) else {
                            continue;
                        };
                        let key = *next_key;
                        *next_key += 1;
                        group.joined(key);
                        Lent::new(key, fd)
                    }
                };
                if fds.len() <= slot {
                    fds.resize_with(slot + 1, || None);
                }
                fds[slot] = Some(lent);
            }
        }
        self.slots = self.slots.max(slot + 1);
        Ok(())
    }

    /// `slot`'s sockets were handed to the worker whose process group is
    /// `pgid`: they stay open while that group lives, even once the slot lets
    /// them go. Groups no longer `alive` are forgotten.
    pub fn lend(&mut self, slot: usize, pgid: i32, alive: impl Fn(i32) -> bool) {
        for entry in &mut self.entries {
            if let Sockets::PerSlot { fds, .. } = &mut entry.sockets {
                if let Some(Some(lent)) = fds.get_mut(slot) {
                    lent.holders.retain(|&g| alive(g));
                    lent.holders.push(pgid);
                }
            }
        }
    }

    /// Takes `slot`'s own sockets from it: a slot that is down (parked: with
    /// [`tcp_migrate_req`] the kernel moves their queued connections to the
    /// sockets of the slots that serve) or removed. Each is closed now if no
    /// group it was lent to is `alive`, else when [`Listeners::tend`] finds
    /// them gone. A socket that is the last open one of its address is held
    /// instead: it keeps the port, and the next slot to start takes it over.
    /// True when the kernel's order changed (steer again).
    pub fn close_slot(&mut self, slot: usize, alive: impl Fn(i32) -> bool) -> bool {
        let mut changed = false;
        for entry in &mut self.entries {
            if let Sockets::PerSlot {
                fds,
                retired,
                held,
                group,
                ..
            } = &mut entry.sockets
            {
                let last = fds.iter().flatten().count() <= 1;
                if let Some(mut lent) = fds.get_mut(slot).and_then(Option::take) {
                    lent.holders.retain(|&g| alive(g));
                    if last {
                        // The port stays ours; the next slot to start serves this queue.
                        *held = Some(lent);
                    } else if lent.holders.is_empty() {
                        group.left(lent.key);
                        changed = true;
                    } else {
                        retired.push(lent);
                    }
                }
                while fds.last().is_some_and(Option::is_none) {
                    fds.pop();
                }
            }
        }
        self.slots = self
            .entries
            .iter()
            .filter_map(|e| match &e.sockets {
                Sockets::PerSlot { fds, .. } => Some(fds.len()),
                Sockets::Shared { .. } => None,
            })
            .max()
            .unwrap_or(self.slots);
        changed
    }

    /// Closes the retired sockets whose process groups are all gone. True
    /// when the kernel's order changed (steer again).
    pub fn tend(&mut self, alive: impl Fn(i32) -> bool) -> bool {
        let mut changed = false;
        for entry in &mut self.entries {
            if let Sockets::PerSlot { retired, group, .. } = &mut entry.sockets {
                retired.retain_mut(|lent| {
                    lent.holders.retain(|&g| alive(g));
                    if lent.holders.is_empty() {
                        group.left(lent.key);
                        changed = true;
                        false
                    } else {
                        true
                    }
                });
            }
        }
        changed
    }

    /// Sockets kept open for groups that still hold them, over every address.
    pub fn retired(&self) -> usize {
        self.entries
            .iter()
            .map(|e| match &e.sockets {
                Sockets::PerSlot { retired, .. } => retired.len(),
                Sockets::Shared { .. } => 0,
            })
            .sum()
    }

    /// Steers new connections on every reuseport address to the sockets of
    /// `serving` slots (every slot's, by the kernel's hash, when none serves).
    /// Returns how many programs were attached; an error names the address
    /// whose kernel refused.
    pub fn steer(&self, serving: &[u32]) -> Result<usize, String> {
        let mut attached = 0;
        for entry in &self.entries {
            if let Sockets::PerSlot {
                addr,
                fds,
                held,
                group,
                ..
            } = &entry.sockets
            {
                let Some(first) = fds.iter().flatten().chain(held).next() else {
                    continue;
                };
                let keys: Vec<u32> = serving
                    .iter()
                    .filter_map(|&s| fds.get(s as usize)?.as_ref().map(|l| l.key))
                    .collect();
                steer::attach(first.fd.as_raw_fd(), &group.program(&keys))
                    .map_err(|e| format!("cannot steer {addr}: {e}"))?;
                attached += 1;
            }
        }
        Ok(attached)
    }

    /// Every TCP listening socket's accept queue, read now.
    pub fn queues(&self) -> Vec<Queue> {
        let mut out = Vec::new();
        for entry in &self.entries {
            let sockets: Vec<(Option<u32>, &OwnedFd)> = match &entry.sockets {
                Sockets::PerSlot { fds, .. } => fds
                    .iter()
                    .enumerate()
                    .filter_map(|(slot, lent)| Some((Some(slot as u32), &lent.as_ref()?.fd)))
                    .collect(),
                Sockets::Shared { fd, .. } => fd.iter().map(|fd| (None, fd)).collect(),
            };
            for (slot, fd) in sockets {
                if let Some((queued, backlog)) = steer::queue(fd.as_raw_fd()) {
                    out.push(Queue {
                        listener: entry.name.clone(),
                        slot,
                        queued,
                        backlog,
                    });
                }
            }
        }
        out
    }

    /// Closes every socket of ours, for the final stop: a listener then lives
    /// only as long as the workers' copies, so once a server closes its own
    /// (Node's `server.close()`), new connections are refused instead of
    /// waiting for a worker that will never accept them. Unix socket files
    /// are still removed at drop.
    pub fn close_all(&mut self) {
        for entry in &mut self.entries {
            match &mut entry.sockets {
                Sockets::PerSlot {
                    fds,
                    retired,
                    held,
                    group,
                    ..
                } => {
                    fds.clear();
                    retired.clear();
                    *held = None;
                    *group = Group::default();
                }
                Sockets::Shared { fd, .. } => *fd = None,
            }
        }
    }

    /// One line per address for the start log, e.g.
    /// `http=0.0.0.0:8080 (reuseport x2, backlog 1024)`.
    pub fn describe(&self) -> Vec<String> {
        self.entries
            .iter()
            .zip(self.local_addrs())
            .map(|(entry, addr)| {
                let how = match (&entry.sockets, self.inherited) {
                    (_, true) => "inherited, shared".to_string(),
                    (Sockets::PerSlot { fds, .. }, false) => format!(
                        "reuseport x{}, backlog {}",
                        fds.iter().flatten().count(),
                        self.backlog
                    ),
                    (Sockets::Shared { .. }, false) => format!("shared, backlog {}", self.backlog),
                };
                // The default name is the address's kind: `unix=unix:/run/a.sock` says it twice.
                let default = addr.starts_with("unix:") && entry.name == "unix"
                    || !addr.starts_with("unix:") && entry.name == "tcp";
                if default {
                    format!("{addr} ({how})")
                } else {
                    format!("{}={addr} ({how})", entry.name)
                }
            })
            .collect()
    }

    /// The addresses actually bound (port 0 resolved), one per listener:
    /// `127.0.0.1:41234`, `[::]:8080`, `unix:/run/app.sock`.
    pub fn local_addrs(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|entry| match &entry.sockets {
                Sockets::PerSlot { addr, .. } => addr.to_string(),
                Sockets::Shared { fd: Some(fd), .. } => {
                    sock_name(fd).unwrap_or_else(|| format!("fd {}", fd.as_raw_fd()))
                }
                Sockets::Shared { fd: None, .. } => "closed".to_string(),
            })
            .collect()
    }
}

impl fmt::Debug for Listeners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.describe()).finish()
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for entry in &self.entries {
            if let Sockets::Shared {
                created: Some(file),
                ..
            } = &entry.sockets
            {
                let still_ours = std::fs::symlink_metadata(&file.path)
                    .is_ok_and(|m| m.dev() == file.dev && m.ino() == file.ino);
                if still_ours {
                    let _ = std::fs::remove_file(&file.path);
                }
            }
        }
    }
}

/// The fds and names announced to process `our_pid`, or `None` when the
/// variables are absent, malformed or meant for another process.
fn activation_fds(
    our_pid: u32,
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
) -> Option<Vec<(RawFd, String)>> {
    if listen_pid?.trim().parse::<u32>().ok()? != our_pid {
        return None;
    }
    let n: RawFd = listen_fds?.trim().parse().ok()?;
    if n <= 0 || n > 4096 {
        return None;
    }
    let names: Vec<&str> = names.map(|s| s.split(':').collect()).unwrap_or_default();
    // sd_listen_fds_with_names(3) calls every fd "unknown" when the names are missing.
    let name = |i: usize| {
        names
            .get(i)
            .filter(|n| !n.is_empty())
            .unwrap_or(&"unknown")
            .to_string()
    };
    Some(
        (0..n)
            .map(|i| (LISTEN_FDS_START + i, name(i as usize)))
            .collect(),
    )
}

fn bind_tcp_spec(
    host: &Host,
    port: u16,
    balance: Balance,
    slots: usize,
    backlog: u32,
) -> Result<Sockets, String> {
    let (first_addr, first) = bind_first(host, port, balance == Balance::ReusePort, backlog)?;
    if balance == Balance::Shared {
        return Ok(Sockets::Shared {
            fd: Some(first),
            created: None,
        });
    }
    // Port 0: the later slots must join the port the kernel gave slot 0.
    let addr = match local_addr(&first) {
        Some(bound) => SocketAddr::new(first_addr.ip(), bound.port()),
        None => first_addr,
    };
    let mut fds = vec![Some(Lent::new(0, first))];
    for key in 1..slots as u32 {
        let fd = bind_tcp(addr, true, backlog).map_err(|e| bind_error(&addr, e))?;
        fds.push(Some(Lent::new(key, fd)));
    }
    Ok(Sockets::PerSlot {
        addr,
        fds,
        retired: Vec::new(),
        held: None,
        group: Group::new(slots as u32),
        next_key: slots as u32,
    })
}

/// Binds the first socket of an address, choosing the concrete IP (the admin endpoint's too).
pub fn bind_first(
    host: &Host,
    port: u16,
    reuse_port: bool,
    backlog: u32,
) -> Result<(SocketAddr, OwnedFd), String> {
    let addr = match host {
        Host::Any => {
            let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
            match bind_tcp(v6, reuse_port, backlog) {
                Ok(fd) => return Ok((v6, fd)),
                // No IPv6 in this kernel: IPv4 is then all there is.
                Err(Errno::EAFNOSUPPORT) => {
                    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
                }
                Err(e) => return Err(bind_error(&v6, e)),
            }
        }
        Host::Ip(ip) => SocketAddr::new(*ip, port),
        Host::Name(name) => resolve(name, port)?,
    };
    let fd = bind_tcp(addr, reuse_port, backlog).map_err(|e| bind_error(&addr, e))?;
    Ok((addr, fd))
}

fn resolve(name: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (name, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot bind {name}:{port}: cannot resolve {name}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("cannot bind {name}:{port}: {name} has no address"))
}

fn bind_tcp(addr: SocketAddr, reuse_port: bool, backlog: u32) -> Result<OwnedFd, Errno> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    // A restarted init must get its port back while old connections sit in TIME_WAIT.
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if reuse_port {
        setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    if matches!(addr, SocketAddr::V6(v6) if v6.ip().is_unspecified()) {
        // Dual-stack whatever net.ipv6.bindv6only says on this host.
        setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    }
    sys_bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, backlog)?;
    Ok(fd)
}

fn bind_unix(path: &Path, backlog: u32) -> Result<Sockets, String> {
    let shown = format!("unix:{}", path.display());
    let fail = |why: String| format!("cannot bind {shown}: {why}");
    remove_stale_socket(path).map_err(fail)?;
    let sock_addr = UnixAddr::new(path).map_err(|e| fail(errno_text(e)))?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| fail(errno_text(e)))?;
    sys_bind(fd.as_raw_fd(), &sock_addr).map_err(|e| fail(errno_text(e)))?;
    // The file exists from here on: every failure below must remove it.
    let finish = || -> Result<UnixFile, String> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| fail(e.to_string()))?;
        // The mode is set before listen(): until then a connect is refused,
        // so nobody gets in through the umask's wider mode.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(UNIX_SOCKET_MODE))
            .map_err(|e| fail(format!("cannot set mode 0660: {e}")))?;
        listen(&fd, backlog).map_err(|e| fail(errno_text(e)))?;
        Ok(UnixFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    };
    match finish() {
        Ok(created) => Ok(Sockets::Shared {
            fd: Some(fd),
            created: Some(created),
        }),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// A socket file left by a previous run (a crash, a `kill -9`) would make
/// bind fail forever; remove it when nobody listens on it any more.
fn remove_stale_socket(path: &Path) -> Result<(), String> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err("path exists and is not a socket".into());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(errno_text(Errno::EADDRINUSE)),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            std::fs::remove_file(path).map_err(|e| format!("cannot remove stale socket: {e}"))
        }
        // Let bind report whatever is wrong (permissions, ...).
        Err(_) => Ok(()),
    }
}

/// nix's `Backlog` stops at the compile-time SOMAXCONN (4096), below what
/// `net.core.somaxconn` may allow, so call listen(2) directly.
fn listen(fd: &OwnedFd, backlog: u32) -> Result<(), Errno> {
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    // SAFETY: plain integer arguments; the fd is owned and open.
    Errno::result(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

fn local_addr(fd: &impl AsFd) -> Option<SocketAddr> {
    let storage: SockaddrStorage = getsockname(fd.as_fd().as_raw_fd()).ok()?;
    if let Some(sin) = storage.as_sockaddr_in() {
        return Some(SocketAddr::V4((*sin).into()));
    }
    storage
        .as_sockaddr_in6()
        .map(|sin6| SocketAddr::V6((*sin6).into()))
}

fn sock_name(fd: &impl AsFd) -> Option<String> {
    if let Some(addr) = local_addr(fd) {
        return Some(addr.to_string());
    }
    let storage: SockaddrStorage = getsockname(fd.as_fd().as_raw_fd()).ok()?;
    let unix = storage.as_unix_addr()?;
    match (unix.path(), unix.as_abstract()) {
        (Some(path), _) => Some(format!("unix:{}", path.display())),
        (None, Some(name)) => Some(format!("unix:@{}", String::from_utf8_lossy(name))),
        (None, None) => Some("unix:(unnamed)".into()),
    }
}

fn bind_error(addr: &SocketAddr, e: Errno) -> String {
    format!("cannot bind {addr}: {}", errno_text(e))
}

/// The reasons people hit, in words; the rest as the C library says them.
fn errno_text(e: Errno) -> String {
    match e {
        Errno::EADDRINUSE => "address in use".into(),
        Errno::EACCES => "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".into(),
        Errno::EADDRNOTAVAIL => "address not available on this host".into(),
        Errno::ENOENT => "directory does not exist".into(),
        Errno::ENAMETOOLONG => "path too long".into(),
        _ => e.desc().to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    fn spec(s: &str) -> ListenSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn tcp(host: Host, port: u16) -> Address {
        Address::Tcp { host, port }
    }

    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().expect("test IP"))
    }

    fn port_of(fd: RawFd) -> u16 {
        // SAFETY: test-only; the fd is owned by a Listeners that outlives this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        local_addr(&fd).expect("bound").port()
    }

    /// Accepts on every fd until `total` connections came in or 5 s passed;
    /// returns how many each fd got.
    fn accept_all(fds: &[RawFd], total: usize) -> Vec<usize> {
        let mut counts = vec![0; fds.len()];
        let deadline = Instant::now() + Duration::from_secs(5);
        while counts.iter().sum::<usize>() < total && Instant::now() < deadline {
            for (i, fd) in fds.iter().enumerate() {
                match nix::sys::socket::accept4(
                    *fd,
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                ) {
                    Ok(conn) => {
                        // SAFETY: accept4 just returned this fd to us.
                        drop(unsafe { OwnedFd::from_raw_fd(conn) });
                        counts[i] += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }
        counts
    }

    fn set_nonblocking(fds: &[RawFd]) {
        for fd in fds {
            // SAFETY: test-only; fds owned by a live Listeners.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
            fcntl(fd, FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).expect("nonblocking");
        }
    }

    #[test]
    fn listen_specs_parse_into_addresses() {
        let table = [
            (":8080", None, tcp(Host::Any, 8080)),
            ("8080", None, tcp(Host::Any, 8080)),
            ("0.0.0.0:80", None, tcp(ip("0.0.0.0"), 80)),
            ("[::]:80", None, tcp(ip("::"), 80)),
            ("[::1]:9000", None, tcp(ip("::1"), 9000)),
            (
                "localhost:8080",
                None,
                tcp(Host::Name("localhost".into()), 8080),
            ),
            ("http=:8080", Some("http"), tcp(Host::Any, 8080)),
            (":0", None, tcp(Host::Any, 0)),
            (
                "unix:/tmp/x.sock",
                None,
                Address::Unix("/tmp/x.sock".into()),
            ),
            ("admin=unix:/x", Some("admin"), Address::Unix("/x".into())),
            (
                "unix:/run/a=b.sock",
                None,
                Address::Unix("/run/a=b.sock".into()),
            ),
        ];
        for (input, name, addr) in table {
            let got = spec(input);
            assert_eq!(got.name.as_deref(), name, "{input}");
            assert_eq!(got.addr, addr, "{input}");
        }
    }

    #[test]
    fn addresses_display_as_written() {
        for s in [
            "0.0.0.0:8080",
            "[::1]:9000",
            ":8080",
            "localhost:80",
            "unix:/x",
            "http=:80",
        ] {
            assert_eq!(spec(s).to_string(), s);
        }
        assert_eq!(spec("8080").to_string(), ":8080");
    }

    #[test]
    fn bad_listen_specs_are_rejected_with_the_reason() {
        let table = [
            (":99999", "out of range"),
            ("host:", "missing port"),
            ("unix:", "missing path"),
            ("=:80", "empty name"),
            ("junk", "expected"),
            ("::1:80", "brackets"),
            ("[::1]80", "[IPV6]:PORT"),
            ("[zz]:80", "not an IPv6 address"),
            (":+80", "not a number"),
            ("a b:80", "not a host name"),
            ("/tmp/x.sock", "unix:/tmp/x.sock"),
            ("unix:@abstract", "not supported"),
            ("bad name=:80", "printable ASCII"),
        ];
        for (input, why) in table {
            let err = input.parse::<ListenSpec>().expect_err(input);
            assert!(
                err.starts_with(&format!("invalid listen address \"{input}\": ")),
                "{err}"
            );
            assert!(err.contains(why), "{input}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let long = format!("unix:/{}", "a".repeat(UNIX_PATH_MAX));
        assert!(long.parse::<ListenSpec>().is_err());
    }

    #[test]
    fn the_env_form_is_comma_separated() {
        let list = parse_list("http=:8080, admin=unix:/run/a.sock,").expect("valid list");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].fd_name(), "http");
        assert_eq!(list[1].addr, Address::Unix("/run/a.sock".into()));
        assert_eq!(parse_list("").expect("empty"), vec![]);
        let err = parse_list(":80,:99999").expect_err("bad second item");
        assert!(err.contains(":99999"), "{err}");
    }

    #[test]
    fn reuseport_gives_each_slot_its_own_socket_on_one_port() {
        let listeners =
            Listeners::bind(&[spec("127.0.0.1:0")], Balance::ReusePort, 3, 128).expect("bind");
        let fds: Vec<RawFd> = (0..3).map(|slot| listeners.fds_for_slot(slot)[0]).collect();
        let distinct: HashSet<RawFd> = fds.iter().copied().collect();
        assert_eq!(distinct.len(), 3);
        let port = port_of(fds[0]);
        assert_ne!(port, 0);
        assert!(fds.iter().all(|fd| port_of(*fd) == port));
        assert_eq!(listeners.count(), 1);
        assert_eq!(listeners.local_addrs(), vec![format!("127.0.0.1:{port}")]);
        assert_eq!(
            listeners.describe(),
            vec![format!("127.0.0.1:{port} (reuseport x3, backlog 128)")]
        );
    }

    #[test]
    fn shared_gives_every_slot_the_same_socket() {
        let listeners = Listeners::bind(
            &[spec("http=127.0.0.1:0"), spec("admin=127.0.0.1:0")],
            Balance::Shared,
            4,
            128,
        )
        .expect("bind");
        let first = listeners.fds_for_slot(0);
        assert_eq!(first.len(), 2);
        assert!((1..4).all(|slot| listeners.fds_for_slot(slot) == first));
        assert_eq!(listeners.fd_names(), "http:admin");
        assert!(listeners.describe()[0].starts_with("http=127.0.0.1:"));
        assert!(listeners.describe()[0].ends_with("(shared, backlog 128)"));
    }

    #[test]
    fn a_taken_port_fails_with_address_in_use() {
        let other = TcpListener::bind("127.0.0.1:0").expect("bind std listener");
        let port = other.local_addr().expect("addr").port();
        for balance in [Balance::ReusePort, Balance::Shared] {
            let err = Listeners::bind(&[spec(&format!("127.0.0.1:{port}"))], balance, 2, 128)
                .expect_err("port is taken");
            assert_eq!(err, format!("cannot bind 127.0.0.1:{port}: address in use"));
        }
    }

    #[test]
    fn the_same_address_twice_is_refused() {
        let err = Listeners::bind(&[spec(":8080"), spec("a=8080")], Balance::ReusePort, 1, 128)
            .expect_err("duplicate");
        assert_eq!(err, "cannot bind :8080: listed twice");
    }

    #[test]
    fn any_interface_is_dual_stack() {
        let listeners = Listeners::bind(&[spec(":0")], Balance::ReusePort, 2, 128).expect("bind");
        let fds = [listeners.fds_for_slot(0)[0], listeners.fds_for_slot(1)[0]];
        set_nonblocking(&fds);
        let port = port_of(fds[0]);
        let bound = listeners.local_addrs().remove(0);
        // 0.0.0.0 only on a kernel without IPv6 (ipv6.disable=1).
        assert!(
            [format!("[::]:{port}"), format!("0.0.0.0:{port}")].contains(&bound),
            "{bound}"
        );
        // One [::] socket also takes IPv4, whatever net.ipv6.bindv6only says.
        let _client = TcpStream::connect(("127.0.0.1", port)).expect("IPv4 connect");
        assert_eq!(accept_all(&fds, 1).iter().sum::<usize>(), 1);
    }

    #[test]
    fn unix_socket_is_0660_and_removed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.sock");
        let arg = format!("admin=unix:{}", path.display());
        let listeners = Listeners::bind(&[spec(&arg)], Balance::ReusePort, 3, 128).expect("bind");
        let meta = std::fs::symlink_metadata(&path).expect("socket file");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert!((1..3).all(|slot| listeners.fds_for_slot(slot) == listeners.fds_for_slot(0)));
        assert_eq!(
            listeners.local_addrs(),
            vec![format!("unix:{}", path.display())]
        );
        let mut client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        client.write_all(b"x").expect("write");
        drop(listeners);
        assert!(!path.exists());
    }

    #[test]
    fn a_stale_unix_socket_is_replaced_but_a_live_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.sock");
        let arg = format!("unix:{}", path.display());
        // A previous run that died without cleaning up.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
        assert!(path.exists());
        let ours = Listeners::bind(&[spec(&arg)], Balance::Shared, 1, 128).expect("stale replaced");
        let err = Listeners::bind(&[spec(&arg)], Balance::Shared, 1, 128).expect_err("live socket");
        assert_eq!(err, format!("cannot bind {arg}: address in use"));
        drop(ours);
        std::fs::write(&path, "data").expect("regular file");
        let err =
            Listeners::bind(&[spec(&arg)], Balance::Shared, 1, 128).expect_err("not a socket");
        assert!(err.contains("not a socket"), "{err}");
        assert!(path.exists(), "a regular file is never removed");
    }

    #[test]
    fn drop_leaves_a_socket_file_that_is_no_longer_ours() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.sock");
        let listeners = Listeners::bind(
            &[spec(&format!("unix:{}", path.display()))],
            Balance::Shared,
            1,
            128,
        )
        .expect("bind");
        std::fs::remove_file(&path).expect("remove");
        let theirs = std::os::unix::net::UnixListener::bind(&path).expect("someone else's");
        drop(listeners);
        assert!(path.exists());
        drop(theirs);
    }

    #[test]
    fn backlog_is_capped_at_somaxconn() {
        let max = read_sysctl("/proc/sys/net/core/somaxconn").expect("somaxconn");
        assert_eq!(effective_backlog(u32::MAX), max);
        assert_eq!(effective_backlog(16), 16.min(max));
        let listeners =
            Listeners::bind(&[spec("127.0.0.1:0")], Balance::Shared, 1, u32::MAX).expect("bind");
        assert_eq!(listeners.backlog(), max);
    }

    #[test]
    fn slots_are_added_on_the_same_port_and_removed_from_the_top() {
        let specs = [spec("a=127.0.0.1:0"), spec("b=127.0.0.2:0")];
        let mut listeners = Listeners::bind(&specs, Balance::ReusePort, 2, 128).expect("bind");
        let ports: Vec<u16> = listeners.fds_for_slot(0).into_iter().map(port_of).collect();
        listeners.add_slot().expect("add slot");
        assert_eq!(listeners.slots(), 3);
        let third = listeners.fds_for_slot(2);
        assert_eq!(
            third.iter().map(|fd| port_of(*fd)).collect::<Vec<_>>(),
            ports
        );
        assert!(third
            .iter()
            .all(|fd| !listeners.fds_for_slot(1).contains(fd)));
        assert!(listeners
            .describe()
            .iter()
            .all(|d| d.contains("reuseport x3")));
        assert!(listeners.close_slot(2, |_| false));
        assert!(listeners.close_slot(1, |_| false));
        assert_eq!(listeners.slots(), 1);
        assert!(listeners
            .describe()
            .iter()
            .all(|d| d.contains("reuseport x1")));
        let last = listeners.fds_for_slot(0);
        assert!(!listeners.close_slot(0, |_| false), "held, not closed");
        assert_eq!(listeners.slots(), 0);
        // Still ours: an outsider without SO_REUSEPORT cannot take it.
        assert!(TcpListener::bind(("127.0.0.1", ports[0])).is_err());
        listeners.ensure_slot(0).expect("taken over");
        assert_eq!(
            listeners.fds_for_slot(0),
            last,
            "the held socket, queue and all"
        );
    }

    #[test]
    fn an_added_slot_gets_its_own_tcp_socket_after_a_shared_unix_one() {
        let dir = tempfile::tempdir().unwrap();
        let unix = spec(&format!("unix:{}", dir.path().join("s.sock").display()));
        let specs = [unix, spec("127.0.0.1:0")];
        let mut listeners = Listeners::bind(&specs, Balance::ReusePort, 2, 128).expect("bind");
        listeners.add_slot().expect("add slot");
        let (one, two) = (listeners.fds_for_slot(1), listeners.fds_for_slot(2));
        assert_eq!(two.len(), 2, "slot 2 lacks a socket: {two:?}");
        assert_eq!(one[0], two[0], "the unix socket is shared");
        assert_ne!(one[1], two[1], "slot 2 was handed slot 1's TCP socket");
        assert_eq!(port_of(one[1]), port_of(two[1]));
    }

    #[test]
    fn a_failed_add_slot_changes_nothing() {
        let specs = [spec("a=127.0.0.1:0"), spec("b=127.0.0.2:0")];
        let mut listeners = Listeners::bind(&specs, Balance::ReusePort, 1, 128).expect("bind");
        // Point the second address at a port an outsider holds, as if it had
        // taken the port between our bind and the scale-up.
        let blocker = TcpListener::bind("127.0.0.1:0").expect("blocker");
        let blocked = blocker.local_addr().expect("addr");
        if let Sockets::PerSlot { addr, .. } = &mut listeners.entries[1].sockets {
            *addr = blocked;
        }
        let err = listeners.add_slot().expect_err("taken");
        assert_eq!(err, format!("cannot bind {blocked}: address in use"));
        assert_eq!(listeners.slots(), 1);
        assert!(
            listeners
                .describe()
                .iter()
                .all(|d| d.contains("reuseport x1")),
            "rolled back"
        );
    }

    #[test]
    fn a_closed_slots_next_worker_gets_a_socket_of_its_own() {
        let mut listeners =
            Listeners::bind(&[spec("127.0.0.1:0")], Balance::ReusePort, 3, 128).expect("bind");
        let zero = listeners.fds_for_slot(0);
        assert!(listeners.close_slot(1, |_| false), "parked");
        listeners.ensure_slot(1).expect("rebind");
        let one = listeners.fds_for_slot(1);
        assert_ne!(one, zero, "slot 1's next worker shares slot 0's socket");
        assert_eq!(port_of(one[0]), port_of(zero[0]));
    }

    #[test]
    fn closing_a_slot_closes_that_slot_and_no_other() {
        let mut listeners =
            Listeners::bind(&[spec("127.0.0.1:0")], Balance::ReusePort, 2, 128).expect("bind");
        listeners.add_slot().expect("slot 2");
        let two = listeners.fds_for_slot(2);
        // Slot 3 never got a socket (its start was still to come).
        assert!(!listeners.close_slot(3, |_| false));
        assert_eq!(listeners.fds_for_slot(2), two, "slot 2 lost its socket");
        assert_eq!(listeners.slots(), 3);
    }

    /// The kernel keeps a socket in the group while any process holds a copy: a slot's socket
    /// lent to a group still alive stays open (and in the mirror) until that group is gone, so
    /// the program never points at a socket nobody accepts on.
    #[test]
    fn a_socket_still_held_by_a_live_group_stays_until_the_group_is_gone() {
        let mut listeners =
            Listeners::bind(&[spec("127.0.0.1:0")], Balance::ReusePort, 3, 1024).expect("bind");
        let fds: Vec<RawFd> = (0..3).map(|s| listeners.fds_for_slot(s)[0]).collect();
        let port = port_of(fds[0]);
        listeners.lend(1, 4242, |_| true);
        // SAFETY: a dup of an fd the Listeners owns: the lent worker's copy of fd 3.
        let held = unsafe { OwnedFd::from_raw_fd(libc::fcntl(fds[1], libc::F_DUPFD_CLOEXEC, 3)) };
        let alive = std::cell::Cell::new(true);
        assert!(
            !listeners.close_slot(1, |_| alive.get()),
            "kept for its holder"
        );
        assert_eq!(listeners.retired(), 1);
        listeners.steer(&[0, 2]).expect("steer");
        let live = vec![fds[0], fds[2], held.as_raw_fd()];
        set_nonblocking(&live);
        let clients: Vec<TcpStream> = (0..60)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        let counts = accept_all(&live, clients.len());
        assert_eq!(
            counts[2], 0,
            "steered to the closed slot's socket: {counts:?}"
        );
        assert!(counts[0] > 0 && counts[1] > 0, "{counts:?}");
        // Its holder is gone: the socket closes, the kernel's order changes.
        assert!(!listeners.tend(|_| true));
        drop(held);
        alive.set(false);
        assert!(
            listeners.tend(|_| alive.get()),
            "closed once its holder is gone"
        );
        assert_eq!(listeners.retired(), 0);
        listeners.steer(&[0, 2]).expect("steer");
        drop(clients);
        let clients: Vec<TcpStream> = (0..60)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        let counts = accept_all(
            &fds[..1]
                .iter()
                .chain(&fds[2..])
                .copied()
                .collect::<Vec<_>>(),
            clients.len(),
        );
        assert_eq!(counts.iter().sum::<usize>(), 60, "{counts:?}");
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }

    #[test]
    fn the_kernel_spreads_connections_over_the_slot_sockets() {
        let slots = 4;
        let listeners =
            Listeners::bind(&[spec("127.0.0.1:0")], Balance::ReusePort, slots, 1024).expect("bind");
        let fds: Vec<RawFd> = (0..slots)
            .map(|slot| listeners.fds_for_slot(slot)[0])
            .collect();
        set_nonblocking(&fds);
        let port = port_of(fds[0]);
        let clients: Vec<TcpStream> = (0..64)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        let counts = accept_all(&fds, clients.len());
        assert_eq!(counts.iter().sum::<usize>(), 64, "{counts:?}");
        // Uniform hashing puts all 64 on one of 4 sockets with p = 4^-63.
        assert!(counts.iter().filter(|c| **c > 0).count() >= 2, "{counts:?}");
    }

    #[test]
    fn a_connection_made_before_any_worker_waits_in_the_queue() {
        let listeners =
            Listeners::bind(&[spec("127.0.0.1:0")], Balance::Shared, 1, 128).expect("bind");
        let fd = listeners.fds_for_slot(0)[0];
        let mut client = TcpStream::connect(("127.0.0.1", port_of(fd))).expect("connect");
        client.write_all(b"ping").expect("write");
        // A worker starting later accepts it and reads what was sent.
        let conn = nix::sys::socket::accept(fd).expect("accept");
        // SAFETY: accept just returned this fd to us.
        let mut conn = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(conn) });
        let mut buf = [0; 4];
        conn.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn activation_variables_are_read_only_for_our_pid() {
        let fds = activation_fds(42, Some("42"), Some("2"), Some("http:admin")).expect("ours");
        assert_eq!(fds, vec![(3, "http".to_string()), (4, "admin".to_string())]);
        let fds = activation_fds(42, Some("42"), Some("2"), None).expect("no names");
        assert_eq!(
            fds,
            vec![(3, "unknown".to_string()), (4, "unknown".to_string())]
        );
        assert_eq!(activation_fds(42, Some("43"), Some("1"), None), None);
        assert_eq!(activation_fds(42, None, Some("1"), None), None);
        assert_eq!(activation_fds(42, Some("42"), Some("0"), None), None);
        assert_eq!(activation_fds(42, Some("42"), Some("x"), None), None);
    }

    /// Runs `activated_child` in a fresh process that finds a listening socket
    /// at fd 3 with LISTEN_PID set to its own pid, as a socket-activating
    /// manager would start cluster-init.
    #[test]
    fn an_activated_init_takes_over_fd_3_and_clears_the_variables() {
        use std::os::unix::process::CommandExt;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let raw = listener.as_raw_fd();
        let exe = std::env::current_exe().expect("test binary");
        // libtest names tests by their module path without the crate name.
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let child_test = format!("{module}::activated_child");
        let mut cmd = std::process::Command::new("/bin/sh");
        // `exec` keeps the pid, so $$ is the pid of the test binary.
        cmd.args(["-c", "export LISTEN_PID=$$; exec \"$0\" \"$@\""])
            .arg(exe)
            .args(["--exact", &child_test, "--ignored", "--nocapture"])
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "web")
            .env("ACTIVATED_CHILD_PORT", port.to_string());
        // SAFETY: dup2 and fcntl are async-signal-safe; this runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // dup2(3, 3) is a no-op that leaves CLOEXEC set: clear it by hand.
                let res = if raw == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(raw, 3)
                };
                if res < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().expect("run child");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "{text}");
    }

    #[test]
    #[ignore = "run by an_activated_init_takes_over_fd_3_and_clears_the_variables"]
    fn activated_child() {
        let Ok(port) = std::env::var("ACTIVATED_CHILD_PORT") else {
            return;
        };
        let listeners = Listeners::from_activation().expect("activated");
        assert_eq!(listeners.count(), 1);
        assert_eq!(listeners.fd_names(), "web");
        assert_eq!(listeners.balance(), Balance::Shared);
        assert_eq!(listeners.fds_for_slot(0), vec![3]);
        assert_eq!(listeners.local_addrs(), vec![format!("127.0.0.1:{port}")]);
        assert_eq!(
            listeners.describe(),
            vec![format!("web=127.0.0.1:{port} (inherited, shared)")]
        );
        for key in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            assert!(std::env::var_os(key).is_none(), "{key} still set");
        }
        // SAFETY: fd 3 is owned by `listeners`, alive for this borrow.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(3) };
        let flags = fcntl(fd, FcntlArg::F_GETFD).expect("F_GETFD");
        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC));
        assert!(Listeners::from_activation().is_none(), "consumed once");
    }

    #[test]
    fn the_socket_kept_for_the_port_is_taken_over_by_the_next_slot_to_start() {
        let mut l =
            Listeners::bind(&[spec("127.0.0.1:0")], Balance::ReusePort, 2, 128).expect("bind");
        let port = port_of(l.fds_for_slot(0)[0]);
        // Slot 0 crash-loops and is parked: its socket closes.
        assert!(l.close_slot(0, |_| false));
        // Scale 2 -> 1 removes slot 1 (its worker gone by now): its socket is the last one,
        // kept for the port.
        assert!(!l.close_slot(1, |_| false));
        // Slot 0 starts again, on a new socket.
        l.ensure_slot(0).expect("rebind");
        let zero = l.fds_for_slot(0)[0];
        set_nonblocking(&[zero]);
        let clients: Vec<TcpStream> = (0..40)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect();
        let counts = accept_all(&[zero], clients.len());
        assert_eq!(
            (counts[0], l.slots()),
            (40, 1),
            "connections wait on the removed slot's socket, which nobody accepts on: {:?}",
            l.describe()
        );
    }
}
