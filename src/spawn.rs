//! Starting one worker: fork + exec with everything prepared before the fork.
//!
//! Between fork and exec the child may only make async-signal-safe calls: no allocation, no
//! locks, no logging. So the program path, argv, the environment block (with a placeholder for
//! `LISTEN_PID`, which must be the child's own pid) and a scratch array for descriptors are all
//! built by the parent, and the child only writes into memory it already owns.
//!
//! Exec failure is detected through a CLOEXEC pipe: a successful exec closes it (EOF), a failed
//! one writes errno into it before `_exit(127)`.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Descriptors handed to a worker start at 3 (the `sd_listen_fds` contract).
pub const FIRST_FD: RawFd = 3;

/// A command resolved once at start: where it is and what argv it gets.
#[derive(Debug)]
pub struct Program {
    path: CString,
    argv: Vec<CString>,
    /// What the user typed, for messages: `./server`.
    pub display: String,
    /// The executable's file name, for logs and spans: `server`.
    pub exe_name: String,
}

/// The command cannot run at all (found at start): reported once, never crash-looped.
#[derive(Debug, PartialEq, Eq)]
pub struct CannotRun {
    /// 127 when not found, 126 when found but not executable (the shells' convention).
    pub code: i32,
    pub message: String,
}

impl CannotRun {
    fn from_errno(display: &str, errno: i32) -> CannotRun {
        let code = if errno == libc::ENOENT { 127 } else { 126 };
        let reason = nix::errno::Errno::from_raw(errno).desc();
        CannotRun {
            code,
            message: format!("cannot run {display}: {reason}"),
        }
    }
}

impl Program {
    /// Resolves `command[0]` like `execvp` would (through `PATH` when it has no slash), so that the
    /// child can use plain `execve`, which is async-signal-safe where `execvp` is not.
    pub fn resolve(command: &[OsString], path_var: Option<&OsStr>) -> Result<Program, CannotRun> {
        let first = command.first().ok_or(CannotRun {
            code: 2,
            message: "no command given".into(),
        })?;
        let display = first.to_string_lossy().into_owned();
        let exe_name = Path::new(first)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| display.clone());
        let nul = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| CannotRun {
                code: 2,
                message: format!("cannot run {display}: argument contains a NUL byte"),
            })
        };
        let resolved = if first.as_bytes().contains(&b'/') {
            PathBuf::from(first)
        } else {
            search_path(first, path_var).map_err(|e| CannotRun::from_errno(&display, e))?
        };
        let argv = command.iter().map(|a| nul(a)).collect::<Result<_, _>>()?;
        Ok(Program {
            path: nul(resolved.as_os_str())?,
            argv,
            display,
            exe_name,
        })
    }

    /// The arguments after the program, for the opt-in span attribute.
    pub fn args(&self) -> Vec<String> {
        self.argv[1..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    pub fn argv_lossy(&self) -> Vec<String> {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }
}

fn search_path(name: &OsStr, path_var: Option<&OsStr>) -> Result<PathBuf, i32> {
    let default = OsStr::new("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let mut errno = libc::ENOENT;
    for dir in std::env::split_paths(path_var.unwrap_or(default)) {
        let candidate = dir.join(name);
        let Ok(meta) = candidate.metadata() else {
            continue;
        };
        if meta.is_file() && nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
        {
            return Ok(candidate);
        }
        // Like execvp: a match we may not execute is remembered, but a later one can still win.
        errno = libc::EACCES;
    }
    Err(errno)
}

/// The environment of one worker, ready for `execve`.
pub struct EnvBlock {
    storage: Vec<Vec<u8>>,
    /// Index in `storage` of `LISTEN_PID=` followed by room for the digits.
    listen_pid: Option<usize>,
}

const LISTEN_PID_KEY: &[u8] = b"LISTEN_PID=";
/// Room for any pid (pid_max is at most 2^22) plus the terminating NUL.
const PID_ROOM: usize = 12;

impl EnvBlock {
    /// `base` (our own environment, already filtered) with `extra` overriding same-named keys.
    /// With `listen_pid`, a `LISTEN_PID` placeholder the child fills with its own pid.
    pub fn new(
        base: &[(OsString, OsString)],
        extra: &[(String, String)],
        listen_pid: bool,
    ) -> EnvBlock {
        let mut storage = Vec::with_capacity(base.len() + extra.len() + 1);
        let overridden = |k: &OsStr| {
            extra.iter().any(|(e, _)| OsStr::new(e) == k) || (listen_pid && k == "LISTEN_PID")
        };
        for (k, v) in base.iter().filter(|(k, _)| !overridden(k)) {
            storage.push(entry(k.as_bytes(), v.as_bytes()));
        }
        for (k, v) in extra {
            storage.push(entry(k.as_bytes(), v.as_bytes()));
        }
        let listen_pid = listen_pid.then(|| {
            let mut e = LISTEN_PID_KEY.to_vec();
            e.resize(LISTEN_PID_KEY.len() + PID_ROOM, 0);
            storage.push(e);
            storage.len() - 1
        });
        EnvBlock {
            storage,
            listen_pid,
        }
    }
}

fn entry(k: &[u8], v: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(k.len() + v.len() + 2);
    e.extend_from_slice(k);
    e.push(b'=');
    // execve reads C strings: a NUL inside a value would just end it early.
    e.extend(v.iter().copied().filter(|&b| b != 0));
    e.push(0);
    e
}

/// Our environment minus the variables that describe *our* activation, not the workers'.
pub fn inherited_env() -> Vec<(OsString, OsString)> {
    const OURS: [&str; 5] = [
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
    ];
    std::env::vars_os()
        .filter(|(k, _)| !OURS.iter().any(|o| k == o))
        .collect()
}

/// A forked worker whose exec is not confirmed yet.
pub struct Forked {
    pub pid: i32,
    /// The exec-error pipe: EOF once exec succeeded, four bytes of errno if it failed. Read it
    /// with [`exec_outcome`] when it turns readable; the loop never waits on it.
    pub exec_pipe: OwnedFd,
}

/// Forks one worker in its own process group, with `fds` at 3, 4, ... and nothing else of ours
/// open, and returns at once: exec happens in the child. `Err(errno)` when no process could be
/// made (the pipe or the fork failed: no descriptors, pids or memory left).
///
/// Every signal the init handles is blocked in the init (see `signals`), so no signal can be
/// acted on in the child before it has reset its dispositions and mask.
/// `stdio`: descriptors to become the worker's stdout and stderr (the write ends of the pipes
/// `--worker-output` relays); None keeps the init's own.
pub fn spawn(
    program: &Program,
    mut env: EnvBlock,
    fds: &[RawFd],
    stdio: Option<[RawFd; 2]>,
) -> Result<Forked, i32> {
    let mut argv: Vec<*const libc::c_char> = program.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let listen_pid_ptr = env
        .listen_pid
        .map(|i| env.storage[i][LISTEN_PID_KEY.len()..].as_mut_ptr());
    let mut envp: Vec<*const libc::c_char> =
        env.storage.iter().map(|e| e.as_ptr().cast()).collect();
    envp.push(std::ptr::null());
    let mut scratch: Vec<RawFd> = vec![-1; fds.len()];
    let parent = std::process::id() as libc::pid_t;

    let (err_read, err_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(|e| e as i32)?;

    // SAFETY: the child only runs `child_after_fork`, which makes async-signal-safe calls on
    // memory prepared above, then execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the child of a fork; see `child_after_fork`.
        unsafe {
            child_after_fork(ChildPlan {
                path: program.path.as_ptr(),
                argv: argv.as_ptr(),
                envp: envp.as_ptr(),
                listen_pid: listen_pid_ptr,
                fds,
                scratch: scratch.as_mut_ptr(),
                err_fd: err_write.as_raw_fd(),
                parent,
                stdio: stdio.unwrap_or([-1, -1]),
            })
        }
    }
    let fork_errno = nix::errno::Errno::last_raw();
    drop(err_write);
    if pid < 0 {
        return Err(fork_errno);
    }
    // Also set from the parent: whichever runs first, the group exists before we signal it.
    // EACCES (the child already exec'd) and ESRCH (it already died) are both fine here.
    // SAFETY: plain syscall on a pid we own.
    unsafe { libc::setpgid(pid, pid) };
    Ok(Forked {
        pid,
        exec_pipe: err_read,
    })
}

/// What the exec-error pipe says: `None` while the child has not exec'd yet (nothing to read),
/// `Some(Ok(()))` once exec succeeded (EOF), `Some(Err(errno))` when it failed.
pub fn exec_outcome(pipe: &OwnedFd) -> Option<Result<(), i32>> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    loop {
        match nix::unistd::read(pipe, &mut buf[got..]) {
            // EOF: exec closed the pipe (or the child died before it could write).
            Ok(0) => return Some(Ok(())),
            Ok(n) => {
                got += n;
                if got == 4 {
                    return Some(Err(i32::from_ne_bytes(buf)));
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // Four bytes are written at once (less than PIPE_BUF): a partial read cannot wait.
            Err(nix::errno::Errno::EAGAIN) if got == 0 => return None,
            Err(_) => return Some(Ok(())),
        }
    }
}

struct ChildPlan<'a> {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    listen_pid: Option<*mut u8>,
    fds: &'a [RawFd],
    scratch: *mut RawFd,
    err_fd: RawFd,
    parent: libc::pid_t,
    /// New stdout and stderr, or -1 to keep ours.
    stdio: [RawFd; 2],
}

/// Runs in the forked child. Only async-signal-safe calls; no allocation.
///
/// # Safety
/// Call only in the child of `fork`, with `plan` pointing at memory prepared by the parent
/// before the fork (argv, envp, the LISTEN_PID digits, `scratch` with room for `fds.len()`).
unsafe fn child_after_fork(plan: ChildPlan) -> ! {
    // Default dispositions for everything: exec keeps ignored signals ignored (Rust ignores
    // SIGPIPE), and a server must start as if launched by a shell. 32 and 33 too, which can
    // arrive ignored from our own parent and would then stay ignored in workers.
    for sig in 1..=crate::signals::SIGRTMAX {
        crate::signals::reset_to_default(sig);
    }
    // Own process group: the stop signal then reaches `sh -c` wrappers, npm and their children.
    libc::setpgid(0, 0);
    // Die with the init, even if it is SIGKILLed; if it already died, do not start orphaned.
    libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        0,
        0,
        0,
    );
    if libc::getppid() != plan.parent {
        libc::_exit(1);
    }

    // First, while 1 and 2 are still ours: the listener moves below may reuse the numbers the
    // pipes sit at, and dup2 leaves the copies at 1 and 2 without CLOEXEC.
    for (target, fd) in [1, 2].into_iter().zip(plan.stdio) {
        if fd >= 0 && libc::dup2(fd, target) < 0 {
            fail(plan.err_fd);
        }
    }
    let n = plan.fds.len() as RawFd;
    // The exec-error pipe first moves above the target range: the dup2s below would otherwise
    // replace it with a socket when it sits at 3..3+n, and an exec failure would go unreported.
    let err_fd = libc::fcntl(plan.err_fd, libc::F_DUPFD_CLOEXEC, FIRST_FD + n);
    if err_fd < 0 {
        fail(plan.err_fd);
    }
    // Two passes, through copies above the target range, so that a source that happens to sit
    // at a target number is neither overwritten nor left with CLOEXEC.
    for (i, &fd) in plan.fds.iter().enumerate() {
        let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FIRST_FD + n);
        if copy < 0 {
            fail(err_fd);
        }
        *plan.scratch.add(i) = copy;
    }
    for i in 0..plan.fds.len() {
        if libc::dup2(*plan.scratch.add(i), FIRST_FD + i as RawFd) < 0 {
            fail(err_fd);
        }
    }
    close_from(FIRST_FD + n, err_fd);

    if let Some(digits) = plan.listen_pid {
        write_decimal(digits, libc::getpid() as u32);
    }

    // The raw syscall, like above: the C library would keep some real-time signals blocked.
    let empty = 0u64;
    libc::syscall(
        libc::SYS_rt_sigprocmask,
        libc::SIG_SETMASK,
        &empty as *const u64,
        std::ptr::null_mut::<u64>(),
        8usize,
    );
    libc::execve(plan.path, plan.argv, plan.envp);
    fail(err_fd)
}

/// Closes every descriptor from `first` up, except `keep` (the exec-error pipe, CLOEXEC itself).
///
/// # Safety
/// Only between fork and exec: it closes descriptors other code may still think it owns.
unsafe fn close_from(first: RawFd, keep: RawFd) {
    let ranges: [(RawFd, RawFd); 2] = if keep >= first {
        [(first, keep - 1), (keep + 1, RawFd::MAX)]
    } else {
        [(first, RawFd::MAX), (1, 0)]
    };
    for (lo, hi) in ranges {
        if lo > hi {
            continue;
        }
        let r = libc::syscall(
            libc::SYS_close_range,
            lo as libc::c_uint,
            hi as libc::c_uint,
            0,
        );
        if r != 0 {
            // Kernels before 5.9: everything of ours is CLOEXEC anyway; this only catches
            // descriptors our own parent leaked to us.
            let mut fd = lo;
            while fd <= hi && fd < 65536 {
                libc::close(fd);
                fd += 1;
            }
        }
    }
}

/// Writes `value` in decimal and a NUL at `out`, without allocating.
///
/// # Safety
/// `out` must have room for 11 bytes.
unsafe fn write_decimal(mut out: *mut u8, value: u32) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    let mut v = value;
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while len > 0 {
        len -= 1;
        *out = digits[len];
        out = out.add(1);
    }
    *out = 0;
}

/// Reports errno through the exec-error pipe and ends the child.
///
/// # Safety
/// Only in the forked child.
unsafe fn fail(err_fd: RawFd) -> ! {
    let errno = *libc::__errno_location();
    let bytes = errno.to_ne_bytes();
    libc::write(err_fd, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn resolves_through_path_and_reports_127_126() {
        let p = Program::resolve(&[os("sh"), os("-c"), os("true")], None).expect("sh");
        assert!(p.path.to_bytes().ends_with(b"/sh"));
        assert_eq!(p.args(), ["-c", "true"]);
        let missing = Program::resolve(&[os("no-such-program-xyz")], None).unwrap_err();
        assert_eq!(missing.code, 127);
        assert!(
            missing.message.contains("cannot run no-such-program-xyz"),
            "{}",
            missing.message
        );
    }

    #[test]
    fn env_block_overrides_and_reserves_listen_pid() {
        let base = vec![
            (os("A"), os("1")),
            (os("CLUSTER_WORKER_ID"), os("9")),
            (os("LISTEN_PID"), os("5")),
        ];
        let env = EnvBlock::new(&base, &[("CLUSTER_WORKER_ID".into(), "0".into())], true);
        let text: Vec<String> = env
            .storage
            .iter()
            .map(|e| String::from_utf8_lossy(e.split(|&b| b == 0).next().unwrap()).into_owned())
            .collect();
        assert!(text.contains(&"A=1".to_string()));
        assert!(text.contains(&"CLUSTER_WORKER_ID=0".to_string()));
        assert!(!text.contains(&"CLUSTER_WORKER_ID=9".to_string()));
        assert_eq!(
            text.iter().filter(|t| t.starts_with("LISTEN_PID=")).count(),
            1
        );
        assert_eq!(
            env.storage[env.listen_pid.unwrap()].len(),
            LISTEN_PID_KEY.len() + PID_ROOM
        );
    }

    #[test]
    fn decimal_writer() {
        let mut buf = [0xffu8; PID_ROOM];
        // SAFETY: buf has room for 10 digits and a NUL.
        unsafe { write_decimal(buf.as_mut_ptr(), 4194304) };
        assert_eq!(&buf[..8], b"4194304\0");
    }
}
