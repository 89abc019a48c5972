//! Workers' stdout and stderr with `--worker-output prefix|json`: each worker writes into two
//! pipes of its own, and the init relays them line by line, as `[slot] line` (PM2's `0|app |`)
//! or as one JSON object (`slot`, `pid`, `generation`, `stream`, `message`). With `inherit`, the
//! default, none of this runs: workers write to the init's own stdout and stderr, and the init
//! stays off the data path.
//!
//! Lines go out through the same bounded, non-blocking [`Sink`]s as the init's own lines, in
//! writes of whole lines (atomic on a pipe), so lines of different workers never interleave
//! mid-line. A line longer than [`LINE_LIMIT`] is cut there and goes out in pieces, each a line.
//! Each pipe is read by a task of its own, at most [`READ_CHUNK`] bytes at a time, with the
//! loop and every other pipe served between reads, so a worker that floods cannot hold up the
//! loop or the other workers' pipes. When the stream out does not keep up (more than
//! [`HIGH_WATER`] bytes queued), relays stop reading until the loop, waiting for the stream to
//! take more, has written some of it ([`room_made`]): the flood then waits in
//! the flooding worker's own pipe (its writes block, as they would on a slow terminal), the
//! init itself never waits, and a quiet worker's line still goes out in its turn. A relay reads
//! until its pipe's end (every writer gone: the worker and whatever of its group inherited it),
//! so what a worker writes just before it dies is relayed too.

use std::os::fd::OwnedFd;
use std::rc::Rc;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::cli::WorkerOutput;
use crate::sink::{self, Sink};

/// A line longer than this is cut into pieces of this size.
pub const LINE_LIMIT: usize = 3500;
/// What one read takes from a pipe before the loop gets its turn.
const READ_CHUNK: usize = 16 * 1024;
/// Relays stop reading while more than this waits for the stream out (well below the sink's
/// bound, so relayed lines are delayed, not dropped).
pub const HIGH_WATER: usize = 96 * 1024;
/// Wakes the relays waiting for room in a stream out. One waker for every relay: a stalled stream
/// costs nothing per worker until it moves.
static ROOM: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Wakes the loop when a relay left lines queued: only the loop waits for the stream to take
/// them.
static QUEUED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The loop wrote some of what waited for stderr or stdout: relays waiting for room look again.
pub fn room_made() {
    ROOM.notify_waiters();
}

/// Returns once a relay has left lines queued for a stream that did not take them at once.
pub async fn lines_queued() {
    QUEUED.notified().await;
}

/// Which of a worker's streams a pipe carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn sink(self) -> &'static Sink {
        match self {
            Stream::Stdout => sink::stdout(),
            Stream::Stderr => sink::stderr(),
        }
    }
}

/// Who wrote the lines, for the prefix or the JSON fields.
#[derive(Clone, Debug)]
pub struct Origin {
    pub slot: u32,
    pub pid: i32,
    pub generation: u64,
}

/// The two pipes of one worker about to be forked: the write ends go to the child, the read
/// ends to [`relay`] once the fork succeeded.
pub struct Pipes {
    pub child: [OwnedFd; 2],
    parent: [OwnedFd; 2],
}

impl Pipes {
    /// Two pipes, CLOEXEC (the child gets its ends by dup2), the read ends non-blocking.
    pub fn new() -> Result<Pipes, i32> {
        let pipe = || {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e as i32)?;
            nix::fcntl::fcntl(
                &r,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .map_err(|e| e as i32)?;
            Ok::<_, i32>((r, w))
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        Ok(Pipes {
            child: [out_w, err_w],
            parent: [out_r, err_r],
        })
    }
}

/// Starts relaying a forked worker's pipes (dropping the child's ends, which only the child
/// holds from now on). Returns the tasks, which end at each pipe's end.
pub fn relay(mode: WorkerOutput, pipes: Pipes, origin: Origin) -> Vec<tokio::task::JoinHandle<()>> {
    let Pipes { child, parent } = pipes;
    drop(child);
    let origin = Rc::new(origin);
    let [out, err] = parent;
    [(out, Stream::Stdout), (err, Stream::Stderr)]
        .into_iter()
        .map(|(fd, stream)| tokio::task::spawn_local(pump(mode, fd, stream, Rc::clone(&origin))))
        .collect()
}

/// Reads one pipe to its end, relaying whole lines.
async fn pump(mode: WorkerOutput, fd: OwnedFd, stream: Stream, origin: Rc<Origin>) {
    // SAFETY: the AsyncFd owns the pipe and keeps it open for as long as it is registered.
    let Ok(fd) = (unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }) else {
        return;
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let Ok(mut guard) = fd.readable().await else {
            break;
        };
        // Checked right before the read, with no wait between: relays woken together read in
        // turn, each seeing what the one before queued.
        while stream.sink().queued() > HIGH_WATER && !stream.sink().flush() {
            QUEUED.notify_one();
            ROOM.notified().await;
        }
        match nix::unistd::read(fd.get_ref(), &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                emit_lines(mode, stream, &origin, &mut pending);
                if stream.sink().queued() > 0 {
                    QUEUED.notify_one();
                }
                // Another worker's pipe, and the loop, get their turn between reads.
                tokio::task::yield_now().await;
            }
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    // A last line without its newline.
    if !pending.is_empty() {
        pending.push(b'\n');
        emit_lines(mode, stream, &origin, &mut pending);
    }
}

/// Relays every complete line of `pending` (and cuts over-long ones), keeping the rest.
fn emit_lines(mode: WorkerOutput, stream: Stream, origin: &Origin, pending: &mut Vec<u8>) {
    let mut start = 0;
    let mut out = Vec::new();
    loop {
        let rest = &pending[start..];
        let end = match rest.iter().position(|&b| b == b'\n') {
            Some(i) if i <= LINE_LIMIT => i,
            _ if rest.len() > LINE_LIMIT => LINE_LIMIT,
            _ => break,
        };
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.push(format_line(mode, stream, origin, line));
        start += end + usize::from(rest.get(end) == Some(&b'\n'));
    }
    if !out.is_empty() {
        stream.sink().lines(out);
    }
    pending.drain(..start);
}

/// One relayed line as it is written out.
pub fn format_line(mode: WorkerOutput, stream: Stream, origin: &Origin, line: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(line);
    match mode {
        WorkerOutput::Json => serde_json::json!({
            "slot": origin.slot,
            "pid": origin.pid,
            "generation": origin.generation,
            "stream": stream.as_str(),
            "message": text,
        })
        .to_string()
        .into_bytes(),
        WorkerOutput::Prefix | WorkerOutput::Inherit => {
            format!("[{}] {text}", origin.slot).into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            slot: 2,
            pid: 42,
            generation: 3,
        }
    }

    #[test]
    fn lines_are_prefixed_or_wrapped_in_json() {
        let line = format_line(WorkerOutput::Prefix, Stream::Stdout, &origin(), b"hello");
        assert_eq!(line, b"[2] hello");
        let line = format_line(
            WorkerOutput::Json,
            Stream::Stderr,
            &origin(),
            b"a \"quote\"\xff",
        );
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["slot"], 2);
        assert_eq!(v["pid"], 42);
        assert_eq!(v["generation"], 3);
        assert_eq!(v["stream"], "stderr");
        assert_eq!(v["message"], "a \"quote\"\u{fffd}");
    }

    #[test]
    fn partial_lines_wait_and_long_ones_are_cut() {
        let mut pending = b"one\ntw".to_vec();
        emit_lines(
            WorkerOutput::Prefix,
            Stream::Stdout,
            &origin(),
            &mut pending,
        );
        assert_eq!(pending, b"tw");
        let mut long = vec![b'x'; LINE_LIMIT * 2 + 10];
        emit_lines(WorkerOutput::Prefix, Stream::Stdout, &origin(), &mut long);
        assert_eq!(long.len(), 10, "two full pieces went out, the rest waits");
    }
}
