//! The pool follows its budget while it runs: a `max` pool re-reads its cgroup's CPU quota (and,
//! with `--worker-memory`, its memory limit) and resizes through the normal slot transitions, as
//! after an in-place pod resize. Real cgroup v1 limits on this host (the VM tier proves cgroup
//! v2), real servers, `ab` load while it happens.

mod common;

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::cgroup::Cgroup;
use common::{wait_for, Pool};

const LONG: Duration = Duration::from_secs(20);

fn ready(p: &Pool) -> usize {
    p.status()["workers"]
        .as_array()
        .map_or(0, |w| w.iter().filter(|w| w["state"] == "ready").count())
}

/// Waits until exactly `n` workers are ready and no other runs.
fn settle(p: &Pool, n: usize, what: &str) {
    p.wait_status(what, |s| {
        let w = s["workers"].as_array().unwrap();
        w.iter().filter(|w| w["state"] == "ready").count() == n
            && w.iter().filter(|w| w["pid"].is_i64()).count() == n
            && s["desired"] == n
    });
}

fn quota(cg: &Cgroup, cpus: u64) {
    cg.write("cpu.cfs_period_us", "100000");
    cg.write("cpu.cfs_quota_us", &(cpus * 100_000).to_string());
}

/// `ab` against `addr` for `secs` seconds in the background: (complete, failed, non-2xx, its
/// report).
fn ab(addr: &str, secs: u32) -> Option<std::thread::JoinHandle<(u64, u64, u64, String)>> {
    let found = std::process::Command::new("ab").arg("-V").output();
    if !common::require(
        found.is_ok_and(|o| o.status.success()),
        "ab (apache2-utils)",
    ) {
        return None;
    }
    let url = format!("http://{addr}/");
    Some(std::thread::spawn(move || {
        let out = std::process::Command::new("ab")
            .args([
                "-q",
                "-r",
                "-t",
                &secs.to_string(),
                "-n",
                "10000000",
                "-c",
                "8",
                &url,
            ])
            .output()
            .expect("run ab");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        // ab counts a body of another length as a failure ("Length"): ours name the worker's
        // pid, so only connect, receive and exception failures are failures.
        let failed = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("(Connect: "))
            .map_or(0, |rest| {
                rest.split(", ")
                    .filter(|kv| !kv.starts_with("Length"))
                    .filter_map(|kv| {
                        kv.rsplit(' ')
                            .next()?
                            .trim_end_matches(')')
                            .parse::<u64>()
                            .ok()
                    })
                    .sum()
            });
        (
            field("Complete requests:"),
            failed,
            field("Non-2xx responses:"),
            text,
        )
    }))
}

#[test]
fn a_cpu_quota_going_1_2_1_gives_1_2_1_workers_without_a_failed_request() {
    let Some(cg) = Cgroup::create("cpu", "live") else {
        return;
    };
    quota(&cg, 1);
    let p = Pool::start_with(&["-w", "max", "--budget-interval", "200ms"], &[], |cmd| {
        cg.join(cmd)
    });
    settle(&p, 1, "1 worker at 1 CPU");
    let Some(load) = ab(&p.addr, 8) else {
        return;
    };
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    quota(&cg, 2);
    settle(&p, 2, "2 workers at 2 CPUs");
    let up = t.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    quota(&cg, 1);
    settle(&p, 1, "back to 1 worker at 1 CPU");
    let down = t.elapsed();
    let (complete, failed, non_2xx, text) = load.join().expect("ab");
    assert!(complete > 500, "{text}");
    assert_eq!((failed, non_2xx), (0, 0), "{text}\nlog:\n{}", p.init.log());
    assert!(
        up < Duration::from_secs(3) && down < Duration::from_secs(3),
        "{up:?} {down:?}"
    );
    let log = p.init.log();
    assert!(
        log.contains("budget changed") && log.contains("scaling 1 -> 2"),
        "{log}"
    );
    assert_eq!(p.metric("cluster_init_cpu_budget"), Some(1.0));
}

#[test]
fn a_memory_limit_bounds_max_with_worker_memory_and_raising_it_adds_a_worker() {
    let (Some(cpu), Some(mem)) = (
        Cgroup::create("cpu", "mem-cpu"),
        Cgroup::create("memory", "mem"),
    ) else {
        return;
    };
    quota(&cpu, 2);
    mem.write("memory.limit_in_bytes", &(400u64 << 20).to_string());
    let p = Pool::start_with(
        &[
            "-w",
            "max",
            "--budget-interval",
            "200ms",
            "--worker-memory",
            "300M",
        ],
        &[],
        |cmd| {
            cpu.join(cmd);
            mem.join(cmd);
        },
    );
    settle(&p, 1, "1 worker: 400 MiB / 300 MiB");
    assert!(
        p.init.log().contains("memory is the tighter bound"),
        "{}",
        p.init.log()
    );
    mem.write("memory.limit_in_bytes", &(700u64 << 20).to_string());
    settle(&p, 2, "2 workers: 700 MiB / 300 MiB on 2 CPUs");
    assert_eq!(ready(&p), 2);
}

#[test]
fn dry_run_says_which_bound_won() {
    let (Some(cpu), Some(mem)) = (
        Cgroup::create("cpu", "dry-cpu"),
        Cgroup::create("memory", "dry"),
    ) else {
        return;
    };
    quota(&cpu, 2);
    mem.write("memory.limit_in_bytes", &(400u64 << 20).to_string());
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args(["--dry-run", "--worker-memory", "300M", "--", "true"]);
    cpu.join(&mut cmd);
    mem.join(&mut cmd);
    let out = cmd.output().expect("dry run");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    assert_eq!(plan["workers"], 1, "{plan}");
    assert_eq!(plan["memory"]["bounded_by"], "memory", "{plan}");
    assert_eq!(plan["memory"]["limit"], 400u64 << 20, "{plan}");
    assert_eq!(plan["memory"]["max"], 1, "{plan}");
    assert_eq!(plan["cpu"]["max"], 2, "{plan}");
}

#[test]
fn a_budget_file_that_breaks_mid_run_is_one_warning_and_the_pool_keeps_its_size() {
    let Some(cg) = Cgroup::create("cpu", "broken") else {
        return;
    };
    quota(&cg, 1);
    // The init sees, in a mount namespace of its own, a file of ours over its quota file.
    let dir = common::scratch();
    let fake = dir.path().join("quota");
    std::fs::write(&fake, "200000\n").unwrap();
    let target = CString::new(cg.path().join("cpu.cfs_quota_us").to_str().unwrap()).unwrap();
    let source = CString::new(fake.to_str().unwrap()).unwrap();
    let root = CString::new("/").unwrap();
    let p = Pool::start_with(&["-w", "max", "--budget-interval", "200ms"], &[], |cmd| {
        cg.join(cmd);
        // SAFETY: unshare and mount are plain syscalls; the strings were made before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    settle(&p, 2, "2 workers at the fake 2 CPUs");
    std::fs::write(&fake, "many\n").unwrap();
    let warned = wait_for(LONG, || {
        p.init
            .log()
            .contains("cannot read the budget")
            .then_some(())
    });
    assert!(warned.is_some(), "log:\n{}", p.init.log());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        p.init.log().matches("cannot read the budget").count(),
        1,
        "{}",
        p.init.log()
    );
    settle(&p, 2, "still 2 workers");
    // Readable again, and lower: the pool follows again.
    std::fs::write(&fake, "100000\n").unwrap();
    settle(&p, 1, "1 worker at the fake 1 CPU");
}
