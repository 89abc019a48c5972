//! The Helm chart's scenarios (tests/chart/test_chart.py), run offline by `cargo test`.
//!
//! The chart is rendered, linted and validated by Python packages that bundle Helm's Go SDK and
//! the Kubernetes schemas, so no helm binary and no cluster are needed. This test keeps a
//! virtualenv with tests/chart/requirements.txt under `target/chart-venv`, made again only when
//! the requirements (or the Python) change, then runs pytest on the suite, its output streamed.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

const PIP_INSTALL_LIMIT: Duration = Duration::from_secs(300);
const VENV_LIMIT: Duration = Duration::from_secs(120);
const SUITE_LIMIT: Duration = Duration::from_secs(300);

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/chart-venv`, next to `target/tmp` (the target dir may be elsewhere: CARGO_TARGET_DIR).
fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .join("chart-venv")
}

/// Runs `cmd` in its own process group; kills the whole group (pip's children too) after `limit`.
/// Returns None on timeout or when the program cannot be started.
fn run_bounded(mut cmd: Command, what: &str, limit: Duration) -> Option<ExitStatus> {
    cmd.stdin(Stdio::null()).process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("cannot start {what}: {e}");
            return None;
        }
    };
    let status = common::wait_for(limit, || child.try_wait().ok().flatten());
    if status.is_none() {
        eprintln!("{what} still running after {limit:?}: killing it");
        // SAFETY: plain syscall; the negative pid names the child's own process group.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
    }
    status
}

/// What the venv was made from: when this changes, the venv is made again.
fn venv_stamp(requirements: &Path) -> String {
    let python = Command::new("python3")
        .arg("--version")
        .output()
        .expect("python3 --version");
    let requirements =
        std::fs::read_to_string(requirements).expect("read tests/chart/requirements.txt");
    format!(
        "{}{}",
        String::from_utf8_lossy(&python.stdout),
        requirements
    )
}

/// Makes (or reuses) the venv; returns its python, or None after a visible skip.
fn chart_venv() -> Option<PathBuf> {
    let requirements = repo_root().join("tests/chart/requirements.txt");
    let has_venv = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !common::require(has_venv, "python3 with the venv and ensurepip modules") {
        return None;
    }
    let stamp = venv_stamp(&requirements);
    let dir = venv_dir();
    let python = dir.join("bin/python");
    let stamp_file = dir.join("cluster-init-requirements.stamp");
    if std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) && python.exists() {
        return Some(python);
    }

    eprintln!("making {} from {}", dir.display(), requirements.display());
    let _ = std::fs::remove_dir_all(&dir);
    let mut venv = Command::new("python3");
    venv.args(["-m", "venv"]).arg(&dir);
    let made = run_bounded(venv, "python3 -m venv", VENV_LIMIT).is_some_and(|s| s.success());
    if !common::require(made, "python3 -m venv to work") {
        return None;
    }
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "-r",
    ])
    .arg(&requirements)
    .env("PIP_DEFAULT_TIMEOUT", "60");
    let installed = run_bounded(pip, "pip install", PIP_INSTALL_LIMIT).is_some_and(|s| s.success());
    if !common::require(
        installed,
        "pip install -r tests/chart/requirements.txt (PyPI reachable)",
    ) {
        // Leave no half-made venv behind: the next run starts over.
        let _ = std::fs::remove_dir_all(&dir);
        return None;
    }
    // Written last: a venv without its stamp is never trusted.
    std::fs::write(&stamp_file, stamp).expect("write the venv stamp");
    Some(python)
}

#[test]
fn helm_chart_renders_validates_and_maps_values_to_cluster_init_env() {
    let Some(python) = chart_venv() else {
        return;
    };
    let mut pytest = Command::new(python);
    pytest
        .args(["-m", "pytest", "tests/chart", "-q", "-rfE"])
        .current_dir(repo_root())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // The suite also feeds each rendered pod's environment to the real binary.
        .env("CLUSTER_INIT_BIN", env!("CARGO_BIN_EXE_cluster-init"));
    let status = run_bounded(pytest, "pytest tests/chart", SUITE_LIMIT)
        .expect("the chart suite did not finish (see above)");
    assert!(
        status.success(),
        "the chart suite failed ({status}): see pytest's output above"
    );
}
