//! Real-time signals by the kernel's numbers (34..64), whichever C library the binary under test
//! was built with (`tests/run` runs this suite against the glibc debug build and the musl release
//! build): every instance sent to cluster-init reaches every worker, as PID 1 and as a subreaper,
//! and `--stop-signal SIGRTMIN+2` is kernel signal 36. The workers are `citest rtcount`, which
//! block 34..64 and count each queued instance with sigtimedwait.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{alive, scratch, wait_for, Init, Mode};

const LONG: Duration = Duration::from_secs(10);
const FIRST: i32 = 34;
const LAST: i32 = 64;
const BURST: u64 = 50;

/// What each worker counted: pid -> (signal -> instances), from `citest rtcount`'s files.
fn counts(dir: &Path) -> BTreeMap<i32, BTreeMap<i32, u64>> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<i32>() else {
            continue; // a file being written (PID.tmp)
        };
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let per_signal = text
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
            .collect();
        all.insert(pid, per_signal);
    }
    all
}

fn start(mode: Mode, opts: &[&str], dir: &Path, extra_env: &[(&str, &str)]) -> Option<Init> {
    let citest = common::artifacts::citest()?;
    let citest = citest.to_str().expect("UTF-8 path");
    let mut args = opts.to_vec();
    args.extend(["--", citest, "rtcount"]);
    let mut env = vec![("RT_DIR", dir.to_str().expect("UTF-8 path"))];
    env.extend_from_slice(extra_env);
    Init::start(mode, &args, &env)
}

/// Starts 2 counting workers, waits until both have blocked the signals (their first file),
/// sends a burst of 50 SIGRTMIN+2 (36) then each of 34..64 once, and checks every count.
fn every_instance_reaches_every_worker(mode: Mode) {
    let dir = scratch();
    let Some(mut init) = start(mode, &["-w", "2"], dir.path(), &[]) else {
        return;
    };
    init.wait_workers(2, LONG);
    wait_for(LONG, || (counts(dir.path()).len() == 2).then_some(()))
        .unwrap_or_else(|| panic!("{mode:?}: the workers never reported; log:\n{}", init.log()));
    let pid = init.pid();
    for _ in 0..BURST {
        // SAFETY: plain syscall.
        unsafe { libc::kill(pid, FIRST + 2) };
    }
    for sig in FIRST..=LAST {
        // SAFETY: plain syscall.
        unsafe { libc::kill(pid, sig) };
    }
    let expected = |sig: i32| if sig == FIRST + 2 { BURST + 1 } else { 1 };
    let total: u64 = (FIRST..=LAST).map(expected).sum();
    // Counts only grow: wait until both reached the total, or for the bound.
    let _ = wait_for(LONG, || {
        let c = counts(dir.path());
        (c.len() == 2 && c.values().all(|m| m.values().sum::<u64>() >= total)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(200)); // anything beyond the expected would show now
    let measured = counts(dir.path());
    eprintln!("{mode:?} with {}: measured {measured:?}", common::bin());
    if !alive(pid) {
        let code = init.wait(LONG);
        panic!(
            "{mode:?}: {} died during the real-time signals (exit {code:?}; 128+N is signal N); log:\n{}",
            common::bin(),
            init.log()
        );
    }
    // Keyed by the pid each worker saw itself as (its namespace's, as PID 1).
    assert_eq!(measured.len(), 2, "{mode:?}: {measured:?}");
    for (w, got) in &measured {
        let wrong: Vec<String> = (FIRST..=LAST)
            .filter(|&s| got.get(&s).copied().unwrap_or(0) != expected(s))
            .map(|s| {
                format!(
                    "{s}: {} of {}",
                    got.get(&s).copied().unwrap_or(0),
                    expected(s)
                )
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "{mode:?}: worker {w} received (signal: got of sent) {wrong:?}; log:\n{}",
            init.log()
        );
    }
}

#[test]
fn every_realtime_signal_instance_reaches_every_worker_as_pid1() {
    every_instance_reaches_every_worker(Mode::Pid1);
}

#[test]
fn a_subreaper_survives_and_forwards_every_realtime_signal_instance() {
    every_instance_reaches_every_worker(Mode::Subreaper);
}

#[test]
fn stop_signal_sigrtmin_plus_2_is_kernel_signal_36() {
    let dir = scratch();
    // The worker exits 0 on 36 only; any other stop signal leaves it running into the SIGKILL.
    let Some(mut init) = start(
        Mode::Subreaper,
        &[
            "-w",
            "1",
            "--stop-signal",
            "SIGRTMIN+2",
            "--stop-timeout",
            "3s",
        ],
        dir.path(),
        &[("RT_STOP", "36")],
    ) else {
        return;
    };
    let worker = init.wait_workers(1, LONG)[0];
    wait_for(LONG, || (!counts(dir.path()).is_empty()).then_some(())).expect("worker reported");
    init.signal(libc::SIGTERM);
    let code = init.wait(LONG);
    // A subreaper's worker sees its own pid as the host does.
    let got = counts(dir.path()).remove(&worker).unwrap_or_default();
    let received: Vec<i32> = got
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(&s, _)| s)
        .collect();
    eprintln!("stop signal received by the worker: {received:?}, exit {code:?}");
    assert_eq!(
        received,
        [36],
        "the worker got {received:?} as the stop signal (exit {code:?}); log:\n{}",
        init.log()
    );
    assert_eq!(code, Some(0), "log:\n{}", init.log());
}
