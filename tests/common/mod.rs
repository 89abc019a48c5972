//! Shared helpers for the integration tests: the binary under test, visible skips, bounded waits.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cluster-init")
}

/// Whether skips must fail (set by `.ci/run`).
pub fn strict() -> bool {
    std::env::var("CLUSTER_INIT_STRICT_TESTS").is_ok_and(|v| v == "1")
}

/// Returns true when `ok`; otherwise prints a visible skip (or panics under strict mode) and returns false.
/// Use as `if !require(is_root(), "root") { return; }`.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if strict() {
        panic!("CLUSTER_INIT_STRICT_TESTS=1 but this test needs {what}");
    }
    eprintln!("SKIPPED: this test needs {what}");
    false
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Polls `f` every 20 ms until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
