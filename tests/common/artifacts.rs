//! Things the tests build once and share between test processes: the static musl release binary
//! (what the Docker image ships), the static C fixture `citest`, and the list of skips that
//! `tests/run` prints at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::{require, run_bounded};

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The target directory these tests were built in (CARGO_TARGET_DIR may move it).
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .to_path_buf()
}

/// An exclusive lock on `target/NAME.lock`, held until the file is dropped: test processes
/// running in parallel build each artifact once.
pub fn lock(name: &str) -> std::fs::File {
    let path = target_dir().join(format!("{name}.lock"));
    let file = std::fs::File::create(&path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    // SAFETY: flock on a descriptor we own; released when `file` is dropped.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
    file
}

/// Appends a skip to `target/skipped-tests.txt` (libtest hides a passing test's stderr, so
/// `tests/run` prints this file at the end).
pub fn record_skip(what: &str) {
    use std::io::Write;
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // Test binaries are named `NAME-HASH`.
    let suite = exe.rsplit_once('-').map_or(exe.as_str(), |(s, _)| s);
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(target_dir().join("skipped-tests.txt"))
    {
        let _ = writeln!(f, "{suite}::{test}: needs {what}");
    }
}

/// Runs `cmd` bounded by `limit` with its output in `target/LOG_NAME.log`; on failure, panics
/// with the log's tail.
fn build(mut cmd: Command, what: &str, log_name: &str, limit: Duration) {
    let log = target_dir().join(format!("{log_name}.log"));
    let out = std::fs::File::create(&log).expect("build log");
    cmd.stdout(out.try_clone().expect("dup log")).stderr(out);
    let status = run_bounded(cmd, what, limit);
    if !status.is_some_and(|s| s.success()) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{what} failed ({status:?}):\n{}", tail.join("\n"));
    }
}

/// The static musl release binary, built once (`cargo build --release --target
/// x86_64-unknown-linux-musl`; cargo itself decides whether anything changed). None after a
/// visible skip when the target is not installed.
pub fn musl_bin() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let sysroot = Command::new("rustc")
            .args(["--print", "sysroot"])
            .output()
            .ok()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        let installed =
            sysroot.is_some_and(|s| s.join("lib/rustlib").join(MUSL_TARGET).join("lib").is_dir());
        if !require(
            installed,
            "the x86_64-unknown-linux-musl target (rustup target add x86_64-unknown-linux-musl)",
        ) {
            return None;
        }
        let _lock = lock("musl-build");
        let target = target_dir();
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--release", "--locked", "--target", MUSL_TARGET])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target);
        // Fat LTO takes minutes on two cores; a hung build must still end.
        build(
            cmd,
            "cargo build --release --target x86_64-unknown-linux-musl",
            "musl-build",
            Duration::from_secs(1200),
        );
        let bin = target.join(MUSL_TARGET).join("release/cluster-init");
        assert!(bin.is_file(), "{} was not built", bin.display());
        Some(bin)
    })
    .clone()
}

/// The static C fixture (tests/fixtures/citest.c), compiled once with `gcc -static -Os` into
/// `target/citest/citest` and again whenever the source is newer. None after a visible skip when
/// gcc cannot link statically here.
pub fn citest() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/citest.c");
        let dir = target_dir().join("citest");
        let bin = dir.join("citest");
        let fresh = || {
            let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            matches!((mtime(&bin), mtime(&src)), (Some(b), Some(s)) if b >= s)
        };
        if fresh() {
            return Some(bin);
        }
        let gcc = Command::new("gcc")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !require(
            gcc,
            "gcc (and static glibc, Debian's libc6-dev) for the C fixture",
        ) {
            return None;
        }
        let _lock = lock("citest-build");
        if fresh() {
            return Some(bin);
        }
        std::fs::create_dir_all(&dir).expect("target/citest");
        let tmp = dir.join(format!("citest.{}", std::process::id()));
        let mut cmd = Command::new("gcc");
        cmd.args(["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&tmp)
            .arg(&src);
        build(
            cmd,
            "gcc -static tests/fixtures/citest.c",
            "citest-build",
            Duration::from_secs(120),
        );
        std::fs::rename(&tmp, &bin).expect("install target/citest/citest");
        Some(bin)
    })
    .clone()
}
