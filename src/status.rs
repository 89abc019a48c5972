//! How a process ended, and what that means for cluster-init's own exit status.

use crate::cli::signal_name;

/// A decoded `waitpid` status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn from_wait_status(status: i32) -> Exit {
        if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(libc::WEXITSTATUS(status))
        }
    }

    /// The shell convention: code c as c, death by signal N as 128+N.
    pub fn as_code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(n) => 128 + n,
        }
    }

    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit {c}"),
            Exit::Signal(n) => write!(f, "signal {}", signal_name(*n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(Exit::Code(3).as_code(), 3);
        assert_eq!(Exit::Signal(libc::SIGKILL).as_code(), 137);
        assert_eq!(Exit::Signal(libc::SIGTERM).to_string(), "signal SIGTERM");
        // status word layouts from wait(2): exit code in bits 8..15, signal in bits 0..6
        assert_eq!(Exit::from_wait_status(3 << 8), Exit::Code(3));
        assert_eq!(
            Exit::from_wait_status(libc::SIGKILL),
            Exit::Signal(libc::SIGKILL)
        );
    }
}
