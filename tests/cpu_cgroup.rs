//! The CPU budget on the real kernel: each scenario runs the built binary's `--dry-run` inside a
//! cgroup v1 cpu controller made for it (or under `taskset`, or with `--cpus`) and reads the
//! worker count it would start. Cgroup scenarios need root and a writable `/sys/fs/cgroup/cpu`.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::cgroup::Cgroup;

/// A cgroup of the v1 cpu controller for one scenario, on a host with CPUs to limit.
fn cpu_cgroup(scenario: &str) -> Option<Cgroup> {
    if !common::require(affinity() >= 2, "at least 2 CPUs in the affinity mask") {
        return None;
    }
    Cgroup::create("cpu", scenario)
}

/// Sets the CFS bandwidth limit of the cgroup's innermost directory.
fn limit(cg: &Cgroup, quota_us: u64, period_us: u64) {
    cg.write("cpu.cfs_period_us", &period_us.to_string());
    cg.write("cpu.cfs_quota_us", &quota_us.to_string());
}

fn affinity() -> usize {
    let set =
        nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("sched_getaffinity");
    (0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .count()
}

/// `cluster-init ARGS --dry-run -- true`, started as `wrapper... BIN ...`, with its own
/// CLUSTER_INIT_* settings only; returns the printed JSON.
fn dry_run(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut argv: Vec<&str> = wrapper.to_vec();
    argv.push(common::bin());
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--dry-run", "--", "true"]);
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("CLUSTER_INIT_")) {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut out = String::new();
            let _ = pipe.read_to_string(&mut out);
            out
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let status = common::wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{argv:?} did not exit within 10 s");
    }
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{argv:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{argv:?} printed no JSON ({e}):\n{stdout}\nstderr: {stderr}"))
}

/// Runs the dry run as a member of `cgroup`: the shell joins it, then becomes the binary.
fn dry_run_in(cgroup: &Path, args: &[&str]) -> Value {
    let dir = cgroup.to_str().expect("cgroup path is UTF-8");
    dry_run(
        &[
            "sh",
            "-c",
            r#"echo $$ > "$0/cgroup.procs" && exec "$@""#,
            dir,
        ],
        args,
        &[],
    )
}

fn workers(v: &Value) -> u64 {
    v["workers"]
        .as_u64()
        .unwrap_or_else(|| panic!("no worker count in {v}"))
}

#[test]
fn quota_of_one_and_a_half_cpus_gives_one_worker_by_default_and_two_with_ceil() {
    let Some(cg) = cpu_cgroup("quota") else {
        return;
    };
    limit(&cg, 150_000, 100_000);

    let floor = dry_run_in(cg.path(), &[]);
    assert_eq!(workers(&floor), 1, "{floor}");
    assert_eq!(floor["cpu"]["budget"], 1.5, "{floor}");
    assert_eq!(floor["cpu"]["bounded_by"], "quota", "{floor}");
    assert_eq!(floor["cpu"]["rounding"], "floor", "{floor}");
    let file = cg.path().join("cpu.cfs_quota_us");
    assert_eq!(
        floor["cpu"]["quota"]["file"],
        file.to_str().unwrap_or_default(),
        "{floor}"
    );
    assert_eq!(floor["cpu"]["quota"]["cgroup"], "v1", "{floor}");

    let ceil = dry_run_in(cg.path(), &["--cpu-round", "ceil"]);
    assert_eq!(workers(&ceil), 2, "{ceil}");
    assert_eq!(ceil["cpu"]["max"], 2, "{ceil}");
}

#[test]
fn parent_only_limit_caps_an_unlimited_child() {
    let Some(mut cg) = cpu_cgroup("parent") else {
        return;
    };
    limit(&cg, 100_000, 100_000);
    let parent_file = cg.path().join("cpu.cfs_quota_us");
    cg.child("child");

    let v = dry_run_in(cg.path(), &[]);
    assert_eq!(workers(&v), 1, "{v}");
    assert_eq!(
        v["cpu"]["quota"]["file"],
        parent_file.to_str().unwrap_or_default(),
        "{v}"
    );
}

#[test]
fn taskset_to_one_cpu_gives_one_worker() {
    let taskset = Command::new("taskset").args(["-c", "0", "true"]).status();
    if !common::require(taskset.is_ok_and(|s| s.success()), "taskset") {
        return;
    }
    let v = dry_run(&["taskset", "-c", "0"], &[], &[]);
    assert_eq!(workers(&v), 1, "{v}");
    assert_eq!(v["cpu"]["affinity"]["cpus"], 1.0, "{v}");
}

#[test]
fn cpus_flag_replaces_detection() {
    for (args, want) in [
        (&["--cpus", "1500m"][..], 1),
        (&["--cpus", "1500m", "--cpu-round", "ceil"][..], 2),
    ] {
        let v = dry_run(&[], args, &[]);
        assert_eq!(workers(&v), want, "{args:?}: {v}");
        assert_eq!(v["cpu"]["explicit"], 1.5, "{v}");
        assert_eq!(v["cpu"]["bounded_by"], "explicit", "{v}");
    }
}

#[test]
fn cpus_env_replaces_detection() {
    for (args, want) in [(&[][..], 1), (&["--cpu-round", "ceil"][..], 2)] {
        let v = dry_run(&[], args, &[("CLUSTER_INIT_CPUS", "1500m")]);
        assert_eq!(workers(&v), want, "{args:?}: {v}");
        assert_eq!(v["cpu"]["explicit"], 1.5, "{v}");
    }
}
