//! Which signals mean what to cluster-init, and how they reach the event loop.
//!
//! Every signal we handle is blocked from the first line of `main`, before any thread exists
//! (threads inherit the mask), and read from a signalfd by the loop. So no handler ever runs, a
//! signal that arrives before the loop starts waits in the kernel, and real-time signals, which
//! the kernel queues one per send, reach the loop one per send, each forwarded. Standard signals
//! coalesce in the kernel, as they always do: a storm of thousands costs a few reads.
//!
//! Real-time signals are named by the kernel's numbers, the same on every build: `SIGRTMIN` is
//! 34 and `SIGRTMAX` 64, as the kernel and glibc-built programs see them. (musl's `SIGRTMIN()`
//! says 35 because musl keeps one more for itself; we would otherwise mis-name and drop 34.) The
//! C library's own masks and tables are bypassed with raw syscalls for the same reason.
//!
//! | signals | meaning |
//! |---|---|
//! | CHLD | reap |
//! | TERM, INT | graceful stop (a second one: SIGKILL now) |
//! | QUIT | fast stop |
//! | HUP | reload (or forwarded with `--hup forward`) |
//! | TTIN, TTOU | one worker more, one less |
//! | every other catchable one, 34..64 included | forwarded to every worker's process group |
//! | ILL, FPE, SEGV, BUS, TRAP, ABRT, SYS | not handled: a fault of our own; default action |
//! | PIPE | ignored: a closed stderr is a write error, not our death |

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The first real-time signal, by the kernel's numbering.
pub const SIGRTMIN: i32 = 34;
/// The last signal there is.
pub const SIGRTMAX: i32 = 64;

/// What a signal asks of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meaning {
    /// A child changed state: reap.
    Child,
    /// TERM, INT: stop gracefully (a second one: stop now).
    GracefulStop,
    /// QUIT: stop now.
    FastStop,
    /// HUP: reload (or forward, by `--hup`).
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

/// Faults of our own code: a handler that returns would loop on the faulting instruction, so
/// the default action is the honest one.
const FAULTS: [i32; 7] = [
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGSYS,
];

/// Signals we handle: every standard one but KILL and STOP (which cannot be), the faults and
/// PIPE; and the real-time signals 34..64. 32 and 33 belong to the C library's threads.
pub fn handled() -> impl Iterator<Item = i32> {
    (1..32)
        .filter(|s| {
            !FAULTS.contains(s) && ![libc::SIGKILL, libc::SIGSTOP, libc::SIGPIPE].contains(s)
        })
        .chain(SIGRTMIN..=SIGRTMAX)
}

/// `sigset_t` as the kernel reads it: bit `n - 1` for signal `n`.
fn kernel_set(signals: impl Iterator<Item = i32>) -> u64 {
    signals.fold(0u64, |set, s| set | 1 << (s - 1))
}

/// Gives `sig` its default action; false when the kernel refused (errno says why). The raw
/// syscall, because glibc's sigaction refuses 32 and 33 (reserved for its threads), yet they can
/// arrive ignored from a parent. One system call and nothing else: async-signal-safe, so a
/// forked child calls it before exec too.
pub fn reset_to_default(sig: i32) -> bool {
    // All-zero is the kernel's struct sigaction for SIG_DFL with no flags and an empty mask.
    const DFL: [u64; 4] = [0; 4];
    // SAFETY: rt_sigaction with a pointer to that struct, of the size the kernel reads (8 bytes
    // of mask); the old action is not asked for.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            DFL.as_ptr(),
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
    r == 0
}

/// Makes this process's signal state its own, whatever its parent left it: every handled
/// signal blocked (so that it waits for the signalfd) with its default disposition (an ignored
/// signal would be thrown away before it could wait), the faults unblocked with their default
/// action (also removing Rust's stack-overflow handler, which swallows the first SIGSEGV sent
/// from outside). Call first in `main`, before any thread starts.
pub fn take_over() -> io::Result<()> {
    // An inherited SIG_IGN for SIGCHLD would even make the kernel reap our workers for us.
    for sig in handled().chain(FAULTS) {
        if !reset_to_default(sig) {
            return Err(io::Error::last_os_error());
        }
    }
    let block = kernel_set(handled());
    let unblock = kernel_set(FAULTS.into_iter());
    for (how, set) in [(libc::SIG_BLOCK, block), (libc::SIG_UNBLOCK, unblock)] {
        // SAFETY: rt_sigprocmask with a pointer to a kernel sigset of 8 bytes.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                how,
                &set as *const u64,
                std::ptr::null_mut::<u64>(),
                8usize,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The signalfd the loop awaits.
pub struct Signals {
    fd: AsyncFd<OwnedFd>,
}

/// `struct signalfd_siginfo` is 128 bytes; the signal number is its first field.
const SIGINFO_SIZE: usize = 128;
/// Siginfos taken per read: a burst of queued real-time signals is read in a few calls.
const READ_BATCH: usize = 64;

impl Signals {
    /// Opens the signalfd for every handled signal. Must run inside the tokio runtime, after
    /// [`take_over`] (a signal that is not blocked is delivered by its disposition instead).
    pub fn open() -> io::Result<Signals> {
        let set = kernel_set(handled());
        // SAFETY: signalfd4 with a pointer to a kernel sigset of 8 bytes; a new fd is returned.
        let raw = unsafe {
            libc::syscall(
                libc::SYS_signalfd4,
                -1,
                &set as *const u64,
                8usize,
                libc::SFD_NONBLOCK | libc::SFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd4 just returned this descriptor to us alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        // SAFETY: the AsyncFd owns the signalfd and keeps it open for as long as it lives.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
        Ok(Signals { fd })
    }

    /// Waits until at least one signal arrived and returns every one pending, in the order the
    /// kernel gives them (queued real-time signals once per send).
    pub async fn next_batch(&self) -> io::Result<Vec<i32>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let batch = self.pending()?;
            guard.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }

    /// Every signal pending now, without waiting (empty when none is).
    pub fn pending(&self) -> io::Result<Vec<i32>> {
        let mut batch = Vec::new();
        let mut buf = [0u8; SIGINFO_SIZE * READ_BATCH];
        {
            loop {
                // SAFETY: reading into a buffer we own, of the length given.
                let n = unsafe {
                    libc::read(
                        self.fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => continue,
                        io::ErrorKind::WouldBlock => break,
                        _ => return Err(e),
                    }
                }
                let n = n as usize;
                for info in buf[..n].chunks_exact(SIGINFO_SIZE) {
                    let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                    batch.push(signo as i32);
                }
                if n < buf.len() {
                    break;
                }
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handled_signals_are_the_kernels_numbers() {
        let all: Vec<i32> = handled().collect();
        assert!(all.contains(&libc::SIGTERM) && all.contains(&libc::SIGCHLD));
        assert!(all.contains(&34) && all.contains(&64), "{all:?}");
        for never in [
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGSEGV,
            libc::SIGPIPE,
            32,
            33,
        ] {
            assert!(!all.contains(&never), "{never}");
        }
        assert_eq!(kernel_set([1, 64].into_iter()), 1 | 1 << 63);
    }

    #[test]
    fn meanings() {
        assert_eq!(meaning(libc::SIGTERM), Meaning::GracefulStop);
        assert_eq!(meaning(libc::SIGTTOU), Meaning::ScaleDown);
        assert_eq!(meaning(SIGRTMIN + 2), Meaning::Forward);
    }
}
