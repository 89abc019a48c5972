//! Where cluster-init's own lines go: a bounded, non-blocking writer in front of stderr (and one
//! in front of stdout for the workers' lines `--worker-output` relays).
//!
//! stderr is usually a pipe the workers share, read by a container runtime that may stall. A
//! blocking write there would stop PID 1 in the middle of a stop, with workers never signalled.
//! So lines go into a bounded queue and out through a descriptor of our own that never blocks;
//! what does not fit is dropped and counted (`cluster_init_log_lines_dropped_total`, and a
//! warning once the stream moves again), never waited for.
//!
//! The descriptor: `/proc/self/fd/2` opened again gives a new open file description of the same
//! pipe, FIFO, terminal or file, which we alone set `O_NONBLOCK` on (setting it on fd 2 itself
//! would change it for every worker sharing it). Sockets (journald's stdout) cannot be opened that
//! way: they get `MSG_DONTWAIT` sends on a duplicate. Without /proc, a `poll` before each write
//! keeps the wait at zero in all but a race with the workers' own writes.
//!
//! Lines are written whole, several at once, in writes of at most `PIPE_BUF` bytes, which the
//! kernel keeps atomic on a pipe: a line is never torn or interleaved with a worker's output.
//! Longer lines are split at that bound.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// What one write may carry and still be atomic on a pipe.
pub const PIPE_BUF: usize = 4096;
/// Bytes of lines held while the stream does not move.
const QUEUE_LIMIT: usize = 256 * 1024;

/// A line sink on one descriptor. Shared by the threads that log (the supervisor and the
/// trace exporter's thread), hence the mutex; no call ever waits on the descriptor.
pub struct Sink {
    inner: Mutex<Inner>,
    dropped: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Our own O_NONBLOCK open file description.
    Private,
    /// A socket: `send` with MSG_DONTWAIT.
    Socket,
    /// The shared description: write only what `poll` says fits.
    Poll,
    /// Nothing to write to (fd 2 closed): lines are thrown away.
    Closed,
}

struct Inner {
    fd: Option<OwnedFd>,
    mode: Mode,
    queue: VecDeque<Vec<u8>>,
    queued: usize,
}

static STDERR: OnceLock<Sink> = OnceLock::new();
static STDOUT: OnceLock<Sink> = OnceLock::new();

/// The sink in front of stderr (opened on first use).
pub fn stderr() -> &'static Sink {
    STDERR.get_or_init(|| Sink::open(libc::STDERR_FILENO))
}

/// The sink in front of stdout, for workers' output relayed with `--worker-output`.
pub fn stdout() -> &'static Sink {
    STDOUT.get_or_init(|| Sink::open(libc::STDOUT_FILENO))
}

/// The stdout sink if anything opened it (only relays do).
pub fn stdout_if_open() -> Option<&'static Sink> {
    STDOUT.get()
}

impl Sink {
    /// A sink for `target` (a descriptor of ours, which stays open and untouched).
    pub fn open(target: RawFd) -> Sink {
        let (fd, mode) = private_description(target);
        Sink {
            inner: Mutex::new(Inner {
                fd,
                mode,
                queue: VecDeque::new(),
                queued: 0,
            }),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues one line (a newline is added when missing) and writes what the stream takes now.
    pub fn line(&self, line: &[u8]) {
        self.lines(std::iter::once(line));
    }

    /// Queues lines and writes what the stream takes now: the lines one read of a worker's pipe
    /// brought go out together, in as few writes as `PIPE_BUF` allows.
    pub fn lines<L: AsRef<[u8]>>(&self, lines: impl IntoIterator<Item = L>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.mode == Mode::Closed {
            return;
        }
        // Set once a write made no room: the stream is stuck for the rest of this batch.
        let mut stuck = false;
        for line in lines {
            let line = line.as_ref();
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            // A read of many short lines grows when formatted: make room by writing before
            // counting a line as dropped.
            if inner.queued + line.len() + 1 > QUEUE_LIMIT {
                if !stuck {
                    inner.flush();
                }
                if inner.queued + line.len() + 1 > QUEUE_LIMIT {
                    stuck = true;
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            for chunk in split(line) {
                inner.queued += chunk.len();
                inner.queue.push_back(chunk);
            }
        }
        inner.flush();
    }

    /// Writes what the stream takes now; true when nothing is left queued.
    pub fn flush(&self) -> bool {
        match self.inner.lock() {
            Ok(mut inner) => {
                inner.flush();
                inner.queue.is_empty()
            }
            Err(_) => true,
        }
    }

    /// The descriptor to wait on for writability while lines are queued; None when there is
    /// nothing to wait for.
    pub fn pending_fd(&self) -> Option<RawFd> {
        let inner = self.inner.lock().ok()?;
        if inner.queue.is_empty() {
            return None;
        }
        inner.fd.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// Bytes queued, not yet written.
    pub fn queued(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.queued)
    }

    /// Lines dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

impl Inner {
    fn flush(&mut self) {
        let Some(fd) = self.fd.as_ref().map(|f| f.as_raw_fd()) else {
            self.queue.clear();
            self.queued = 0;
            return;
        };
        while !self.queue.is_empty() {
            // Whole lines, as many as fit in one atomic write.
            let mut chunk = Vec::with_capacity(PIPE_BUF);
            let mut lines = 0;
            for line in &self.queue {
                if !chunk.is_empty() && chunk.len() + line.len() > PIPE_BUF {
                    break;
                }
                chunk.extend_from_slice(line);
                lines += 1;
            }
            if self.mode == Mode::Poll && !writable_now(fd) {
                return;
            }
            match write_once(fd, self.mode, &chunk) {
                Ok(n) if n == chunk.len() => {
                    for _ in 0..lines {
                        if let Some(l) = self.queue.pop_front() {
                            self.queued -= l.len();
                        }
                    }
                }
                Ok(n) => {
                    // A terminal or a file took part of it: keep the rest, in order.
                    self.drop_front_bytes(n);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // EPIPE, EIO: nobody reads. Queuing more would only fill memory.
                    self.queue.clear();
                    self.queued = 0;
                    return;
                }
            }
        }
    }

    fn drop_front_bytes(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.queued -= front.len();
                self.queue.pop_front();
            } else {
                front.drain(..n);
                self.queued -= n;
                n = 0;
            }
        }
    }
}

/// Splits a line into pieces of at most `PIPE_BUF` bytes, each ending in a newline.
fn split(line: &[u8]) -> Vec<Vec<u8>> {
    let room = PIPE_BUF - 1;
    if line.is_empty() {
        return vec![b"\n".to_vec()];
    }
    line.chunks(room)
        .map(|c| {
            let mut v = Vec::with_capacity(c.len() + 1);
            v.extend_from_slice(c);
            v.push(b'\n');
            v
        })
        .collect()
}

fn private_description(target: RawFd) -> (Option<OwnedFd>, Mode) {
    // SAFETY: F_GETFD takes no pointer; it only asks whether `target` is open.
    if unsafe { libc::fcntl(target, libc::F_GETFD) } < 0 {
        return (None, Mode::Closed);
    }
    let path = format!("/proc/self/fd/{target}\0");
    // O_APPEND: a regular file shared with the workers must not be overwritten at our offset.
    let flags =
        libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_APPEND | libc::O_NOCTTY;
    // SAFETY: a NUL-terminated path and plain flags.
    let fd = unsafe { libc::open(path.as_ptr().cast(), flags) };
    if fd >= 0 {
        // SAFETY: open just returned this descriptor to us.
        return (Some(unsafe { OwnedFd::from_raw_fd(fd) }), Mode::Private);
    }
    // SAFETY: F_DUPFD_CLOEXEC duplicates an open descriptor of ours.
    let dup = unsafe { libc::fcntl(target, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return (None, Mode::Closed);
    }
    // SAFETY: fcntl just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(dup) };
    let mut kind = 0i32;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: SO_TYPE writes one int into `kind`; a non-socket fails with ENOTSOCK.
    let is_socket = unsafe {
        libc::getsockopt(
            dup,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut i32).cast(),
            &mut len,
        )
    } == 0;
    (Some(fd), if is_socket { Mode::Socket } else { Mode::Poll })
}

fn writable_now(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLOUT != 0
}

fn write_once(fd: RawFd, mode: Mode, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: writing from a buffer we own, of its length.
    let n = unsafe {
        match mode {
            Mode::Socket => libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            ),
            _ => libc::write(fd, buf.as_ptr().cast(), buf.len()),
        }
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A `tracing_subscriber` writer: one formatted event is gathered, then handed over as lines.
pub struct EventWriter {
    sink: &'static Sink,
    buf: Vec<u8>,
}

impl io::Write for EventWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        for line in self.buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            self.sink.line(line);
        }
    }
}

/// Makes [`EventWriter`]s for the sink.
#[derive(Clone, Copy)]
pub struct MakeEventWriter(pub &'static Sink);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeEventWriter {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            sink: self.0,
            buf: Vec::with_capacity(256),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
    }

    #[test]
    fn a_full_pipe_never_blocks_and_drops_are_counted() {
        let (read, write) = pipe();
        let sink = Sink::open(write.as_raw_fd());
        assert_eq!(sink.inner.lock().unwrap().mode, Mode::Private);
        let line = vec![b'x'; 1000];
        // 64 KiB of pipe, 256 KiB of queue: the rest is dropped, and nothing waits.
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            sink.line(&line);
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        let dropped = sink.take_dropped();
        assert!(dropped > 500, "{dropped}");
        assert!(sink.pending_fd().is_some());
        // The reader catches up: what was queued comes out whole, in order.
        let mut reader = std::fs::File::from(read);
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 16];
        while !sink.flush() {
            let n = reader.read(&mut buf).unwrap();
            assert!(buf[..n].iter().all(|&b| b == b'x' || b == b'\n'));
            total += n;
        }
        drop(write);
        drop(sink);
        total += reader.read_to_end(&mut Vec::new()).unwrap();
        assert_eq!(total % 1001, 0, "a line was torn");
        assert_eq!(total / 1001 + dropped as usize, 1000);
    }

    #[test]
    fn lines_queued_together_go_out_in_one_write() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        // A datagram socket keeps each write apart, so the reader sees how many there were.
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let sink = Sink::open(ours.as_raw_fd());
        sink.lines([&b"one"[..], b"two\n", b"three"]);
        let mut buf = [0u8; 256];
        let recv = |buf: &mut [u8]| {
            nix::sys::socket::recv(
                theirs.as_raw_fd(),
                buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            )
        };
        let n = recv(&mut buf).expect("nothing written");
        assert_eq!(&buf[..n], b"one\ntwo\nthree\n");
        assert_eq!(
            recv(&mut buf),
            Err(nix::errno::Errno::EAGAIN),
            "a second write"
        );
    }

    #[test]
    fn a_batch_larger_than_the_queue_is_written_not_dropped_when_the_stream_takes_it() {
        let mut file = tempfile::tempfile().expect("tempfile");
        let sink = Sink::open(file.as_raw_fd());
        let line = [b'y'; 19];
        sink.lines(std::iter::repeat_n(&line[..], 20_000));
        assert_eq!(sink.take_dropped(), 0);
        assert!(sink.flush());
        let mut text = Vec::new();
        std::io::Seek::rewind(&mut file).unwrap();
        file.read_to_end(&mut text).unwrap();
        assert_eq!(text.len(), 20_000 * 20);
    }

    #[test]
    fn long_lines_are_split_at_pipe_buf() {
        let parts = split(&vec![b'a'; 10_000]);
        assert!(parts
            .iter()
            .all(|p| p.len() <= PIPE_BUF && p.ends_with(b"\n")));
        assert_eq!(parts.iter().map(|p| p.len() - 1).sum::<usize>(), 10_000);
    }

    #[test]
    fn a_closed_descriptor_swallows_lines() {
        // Far above anything a test process opens, so never reused under our feet.
        let sink = Sink::open(1 << 20);
        sink.line(b"lost");
        assert!(sink.flush());
    }
}
