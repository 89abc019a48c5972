//! Which signals mean what to cluster-init, and how they reach the event loop.
//!
//! PID 1 has no default signal actions, and as a subreaper the defaults would kill us, so every
//! catchable signal gets a handler. The handlers (signal-hook) only write to a self-pipe; the
//! supervisor reads the pending set when tokio says the pipe is readable. Standard signals coalesce
//! (as they do in the kernel), so a storm of thousands costs one wakeup per batch.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;
use tokio::io::unix::AsyncFd;

/// What a signal asks of the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meaning {
    /// A child changed state: reap.
    Child,
    /// TERM, INT: stop gracefully (a second one: stop now).
    GracefulStop,
    /// QUIT: stop now.
    FastStop,
    /// HUP: reload (forwarded for now).
    Reload,
    /// TTIN / TTOU: add / remove a worker.
    ScaleUp,
    ScaleDown,
    /// Everything else goes to every worker's process group.
    Forward,
}

pub fn meaning(sig: i32) -> Meaning {
    match sig {
        libc::SIGCHLD => Meaning::Child,
        libc::SIGTERM | libc::SIGINT => Meaning::GracefulStop,
        libc::SIGQUIT => Meaning::FastStop,
        libc::SIGHUP => Meaning::Reload,
        libc::SIGTTIN => Meaning::ScaleUp,
        libc::SIGTTOU => Meaning::ScaleDown,
        _ => Meaning::Forward,
    }
}

/// Signals we catch. Left out: KILL and STOP (cannot be caught); ILL, FPE, SEGV, BUS, TRAP, ABRT
/// and SYS, which mean a fault in our own code (a handler that returns would loop on the faulting
/// instruction, so the default action is the honest one); PIPE, which Rust ignores so that a closed
/// stderr is a write error, not our death.
pub fn caught() -> Vec<i32> {
    let skip = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGTRAP,
        libc::SIGABRT,
        libc::SIGSYS,
        libc::SIGPIPE,
    ];
    (1..32)
        .chain(libc::SIGRTMIN()..=libc::SIGRTMAX())
        .filter(|s| !skip.contains(s))
        .collect()
}

/// The pending-signal source the event loop awaits.
pub struct Signals {
    // Declared first so it deregisters from epoll before `delivery` closes the fd.
    ready: AsyncFd<i32>,
    delivery: SignalDelivery<UnixStream, SignalOnly>,
}

impl Signals {
    /// Installs the handlers. Must run inside the tokio runtime.
    pub fn install() -> io::Result<Signals> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let fd = read.as_raw_fd();
        let delivery = SignalDelivery::with_pipe(read, write, SignalOnly, caught())?;
        // SAFETY: `fd` belongs to `read`, which `delivery` owns and keeps open for as long as
        // `ready` exists (the struct drops `ready` first).
        let ready = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? };
        Ok(Signals { ready, delivery })
    }

    /// Waits until at least one signal arrived and returns those pending (each number once).
    pub async fn next_batch(&mut self) -> io::Result<Vec<i32>> {
        loop {
            let mut guard = self.ready.readable().await?;
            let batch: Vec<i32> = self.delivery.pending().collect();
            guard.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }
}
