//! Real cgroup v1 directories made for one scenario (this host's controllers are v1, writable
//! as root under /sys/fs/cgroup/CONTROLLER), and the `pre_exec` that puts a process in one.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A cgroup made for one scenario, removed children first when the scenario ends, also when it
/// fails; processes left in it are SIGKILLed first.
pub struct Cgroup {
    /// Parent first.
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// `/sys/fs/cgroup/CONTROLLER/cluster-init-test-SCENARIO-PID`; `None` (after a visible skip)
    /// when this host cannot give us one.
    pub fn create(controller: &str, scenario: &str) -> Option<Cgroup> {
        let root = Path::new("/sys/fs/cgroup").join(controller);
        if !super::require(super::is_root(), "root")
            || !super::require(
                root.join("cgroup.procs").exists(),
                &format!("a cgroup v1 {controller} controller at {}", root.display()),
            )
        {
            return None;
        }
        let dir = root.join(format!(
            "cluster-init-test-{scenario}-{}",
            std::process::id()
        ));
        let made = std::fs::create_dir(&dir);
        if !super::require(
            made.is_ok(),
            &format!("a writable {} ({:?})", root.display(), made.err()),
        ) {
            return None;
        }
        Some(Cgroup { dirs: vec![dir] })
    }

    /// The innermost cgroup.
    pub fn path(&self) -> &Path {
        &self.dirs[self.dirs.len() - 1]
    }

    /// Makes a child of the innermost cgroup; it becomes the innermost.
    pub fn child(&mut self, name: &str) {
        let dir = self.path().join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        self.dirs.push(dir);
    }

    /// Writes a controller file of the innermost cgroup (or of `dir`).
    pub fn write(&self, file: &str, value: &str) {
        write_file(&self.path().join(file), value);
    }

    /// Makes `cmd`'s process join the innermost cgroup before it execs (so everything it starts
    /// is born inside).
    pub fn join(&self, cmd: &mut std::process::Command) {
        let procs = CString::new(
            self.path()
                .join("cgroup.procs")
                .to_str()
                .expect("UTF-8 path"),
        )
        .expect("no NUL");
        // SAFETY: open, write and close are async-signal-safe; the path was built before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" is the writer itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Pids in the innermost cgroup.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path().join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

pub fn write_file(path: &Path, value: &str) {
    std::fs::write(path, value).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            let procs = dir.join("cgroup.procs");
            // A task that has just been reaped can keep the cgroup busy for a moment.
            let gone = super::wait_for(Duration::from_secs(3), || {
                for pid in std::fs::read_to_string(&procs)
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: plain syscall; only processes this test put in its own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::fs::remove_dir(dir).ok()
            });
            if gone.is_none() {
                eprintln!(
                    "could not remove cgroup {}; remove it by hand",
                    dir.display()
                );
            }
        }
    }
}
