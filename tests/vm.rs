//! The VM tier: the shipped binary (static musl release build) on a real cgroup v2 kernel.
//! `cargo test` boots throwaway qemu VMs (KVM when it works here, else software emulation) with
//! Debian's kernel and an initramfs made here from busybox-static, the musl cluster-init and the
//! static C fixture `citest`. Two boots: one runs every scenario of `tests/vm/scenarios.sh` in
//! sequence (4 vCPUs, cpu/cpuset/memory/pids delegated), one has cluster-init itself as PID 1 of
//! the machine (`rdinit=`). The scenarios VM also runs Debian's runc on cgroup v2 (with its
//! shared libraries packed into the initramfs). Each scenario reports `CITEST <scenario> key=value ...` lines on the
//! second serial port; the tests below parse and assert them, one test per scenario.
//!
//! Needs qemu-system-x86_64, a kernel image (`tests/run` extracts Debian's linux-image-amd64
//! into target/vm/vmlinuz; or CLUSTER_INIT_VM_KERNEL), a static busybox (busybox-static), the
//! musl target and gcc. CLUSTER_INIT_VM_ACCEL=kvm|tcg skips the KVM probe;
//! CLUSTER_INIT_VM_SCENARIOS=a,b boots the scenarios VM with only those.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::artifacts::{self, target_dir};
use common::require;
use serde_json::Value;

/// Software-emulated VMs on 2 shared cores are slow and noisy: generous, bounded.
const SCENARIOS_LIMIT: Duration = Duration::from_secs(420);
const PID1_LIMIT: Duration = Duration::from_secs(150);
/// A KVM guest that works boots in a second or two; one that hangs must not cost much.
const PROBE_LIMIT: Duration = Duration::from_secs(8);

// ---- the initramfs ----

/// A cpio archive in the "newc" format, the one the kernel unpacks as its initramfs
/// (Documentation/driver-api/early-userspace/buffer-format.rst).
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: std::collections::BTreeSet<String>,
}

impl Cpio {
    fn new() -> Cpio {
        Cpio {
            out: Vec::new(),
            ino: 1,
            dirs: Default::default(),
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// A directory (and its parents), once.
    fn dir(&mut self, name: &str) {
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent);
        }
        if self.dirs.insert(name.to_string()) {
            self.entry(name, 0o040755, (0, 0), &[]);
        }
    }

    /// A copy of `from` (symlinks followed), with its parent directories.
    fn file(&mut self, name: &str, from: &Path) {
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent);
        }
        let data = std::fs::read(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
        self.entry(name, 0o100755, (0, 0), &data);
    }

    fn text(&mut self, name: &str, text: &str) {
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(name, 0o100644, (0, 0), text.as_bytes());
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// Whether an ELF file has no program interpreter (PT_INTERP): a static binary, which an
/// initramfs without a C library can run.
fn is_static(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).all(|i| {
        let at = phoff + i * size;
        b.get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().unwrap()) != 3)
    })
}

struct Tools {
    kernel: PathBuf,
    initramfs: PathBuf,
    accel: &'static str,
}

fn find_kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("CLUSTER_INIT_VM_KERNEL").filter(|k| !k.is_empty()) {
        return Some(PathBuf::from(k));
    }
    let fetched = target_dir().join("vm/vmlinuz");
    if fetched.is_file() {
        return Some(fetched);
    }
    let mut boot: Vec<PathBuf> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                && std::fs::File::open(p).is_ok()
        })
        .collect();
    boot.sort();
    boot.pop()
}

fn find_busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_static(p))
}

/// What every boot needs, found or built once per test process; Err names what is missing.
fn tools() -> Result<&'static Tools, String> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let qemu = Command::new("qemu-system-x86_64")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !qemu {
                return Err("qemu-system-x86_64 (Debian: qemu-system-x86)".into());
            }
            let kernel = find_kernel().ok_or(
                "a kernel image: Debian's linux-image-amd64 (tests/run extracts it into \
                 target/vm/vmlinuz), or CLUSTER_INIT_VM_KERNEL",
            )?;
            let busybox = find_busybox().ok_or("a static busybox (Debian: busybox-static)")?;
            // Visible skips inside: the musl target, gcc.
            let cluster_init = artifacts::musl_bin().ok_or("the musl target")?;
            let citest = artifacts::citest().ok_or("gcc -static")?;
            for bin in [&cluster_init, &citest] {
                assert!(is_static(bin), "{} is not static", bin.display());
            }
            let initramfs = build_initramfs(&busybox, &cluster_init, &citest);
            let accel = accel(&kernel, &initramfs);
            Ok(Tools {
                kernel,
                initramfs,
                accel,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// `target/vm/initramfs.cpio`: busybox, the musl cluster-init, citest and the scenario script as
/// /init. Uncompressed: the kernel takes it as it is, and nothing needs unpacking under TCG.
fn build_initramfs(busybox: &Path, cluster_init: &Path, citest: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/scenarios.sh");
    let mut cpio = Cpio::new();
    for dir in ["bin", "dev", "proc", "sys", "tmp"] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init before anything could mount devtmpfs.
    cpio.char_dev("dev/console", 5, 1);
    cpio.char_dev("dev/null", 1, 3);
    cpio.char_dev("dev/ttyS0", 4, 64);
    cpio.char_dev("dev/ttyS1", 4, 65);
    cpio.file("bin/busybox", busybox);
    cpio.symlink("bin/sh", "busybox");
    cpio.file("bin/cluster-init", cluster_init);
    cpio.file("bin/citest", citest);
    cpio.file("init", &script);
    add_runc(&mut cpio);
    let dir = target_dir().join("vm");
    std::fs::create_dir_all(&dir).expect("target/vm");
    let path = dir.join("initramfs.cpio");
    let _lock = artifacts::lock("vm-initramfs");
    let tmp = dir.join(format!("initramfs.cpio.{}", std::process::id()));
    std::fs::write(&tmp, cpio.finish()).expect("write the initramfs");
    std::fs::rename(&tmp, &path).expect("install the initramfs");
    path
}

/// Debian's runc (dynamically linked: with the libraries `ldd` names, at the same paths) and
/// the spec of the runc_v2 scenario's bundle, when runc is on this host; without them the scenario
/// reports that it could not run.
fn add_runc(cpio: &mut Cpio) {
    let Some(runc) = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        return;
    };
    let Ok(ldd) = Command::new("ldd").arg(&runc).output() else {
        return;
    };
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
    let libs: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=> ").map_or(l, |(_, p)| p);
            path.split_whitespace().next().map(str::to_string)
        })
        .filter(|p| p.starts_with('/'))
        .collect();
    let args = [
        "/cluster-init",
        "--ready",
        "notify",
        "--admin-listen",
        "127.0.0.1:9090",
        "--listen",
        "127.0.0.1:8080",
        "--stop-timeout",
        "10s",
        "--log-format",
        "json",
        "--",
        "/citest",
        "serve",
    ];
    let spec = common::oci::spec(&common::oci::Bundle {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![("NOTIFY".into(), "1".into())],
        cpu: Some((150_000, 100_000)),
        cgroup_namespace: true,
        cgroups_path: Some("/runc-ci".into()),
        ..Default::default()
    });
    let Ok(spec) = spec else {
        return;
    };
    for lib in &libs {
        cpio.file(lib.trim_start_matches('/'), Path::new(lib));
    }
    cpio.file("bin/runc", &runc);
    cpio.text("runc/config.json", &spec.to_string());
}

/// KVM when /dev/kvm opens and a guest really boots with it (here, nested under another
/// hypervisor, a KVM guest may hang silently), else TCG.
fn accel(kernel: &Path, initramfs: &Path) -> &'static str {
    match std::env::var("CLUSTER_INIT_VM_ACCEL").as_deref() {
        Ok("kvm") => return "kvm",
        Ok("tcg") => return "tcg",
        _ => {}
    }
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !kvm {
        return "tcg";
    }
    let probe = run_qemu(
        "kvm-probe",
        "kvm",
        kernel,
        initramfs,
        "rdinit=/bin/citest -- poweroff",
        1,
        256,
        PROBE_LIMIT,
    );
    let works = probe.console.contains("CITEST probe booted");
    eprintln!(
        "KVM probe: {} after {:?}; using {}",
        if works { "booted" } else { "no boot" },
        probe.elapsed,
        if works { "kvm" } else { "tcg" }
    );
    if works {
        "kvm"
    } else {
        "tcg"
    }
}

// ---- booting ----

/// What one boot left behind.
struct Boot {
    name: &'static str,
    accel: &'static str,
    /// The first serial port: the kernel's messages and the logs the scenarios dump.
    console: String,
    /// The second serial port: only `CITEST` lines.
    results: Vec<String>,
    /// None when qemu was killed at the time limit.
    status: Option<ExitStatus>,
    elapsed: Duration,
}

/// Boots one VM and waits for it to power off, killing it at `limit`. One VM at a time: the
/// machine has 2 shared cores.
#[allow(clippy::too_many_arguments)]
fn run_qemu(
    name: &'static str,
    accel: &'static str,
    kernel: &Path,
    initramfs: &Path,
    append: &str,
    cpus: u32,
    mem_mib: u32,
    limit: Duration,
) -> Boot {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::Builder::new()
        .prefix(&format!("cluster-init-vm-{name}"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let console = dir.path().join("console.log");
    let results = dir.path().join("results.log");
    let qemu_log = dir.path().join("qemu.log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-machine", &format!("accel={accel}")])
        .args(["-smp", &cpus.to_string(), "-m", &mem_mib.to_string()])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        // panic=-1: a kernel panic reboots at once, and -no-reboot turns that into qemu's exit.
        .args([
            "-append",
            &format!("console=ttyS0 quiet panic=-1 edd=off {append}"),
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()));
    let log = std::fs::File::create(&qemu_log).expect("qemu log");
    cmd.stdout(log.try_clone().expect("dup")).stderr(log);
    // No VM outlives a test run that is killed: qemu dies with the thread waiting for it.
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let status = common::run_bounded(cmd, name, limit);
    let elapsed = start.elapsed();
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let mut console_text = read(&console);
    let qemu_text = read(&qemu_log);
    if !qemu_text.trim().is_empty() {
        console_text.push_str("\n[qemu] ");
        console_text.push_str(&qemu_text);
    }
    let results = read(&results)
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| l.starts_with("CITEST "))
        .collect();
    eprintln!("{name} VM ({accel}): {elapsed:?}, qemu {status:?}");
    Boot {
        name,
        accel,
        console: console_text,
        results,
        status,
        elapsed,
    }
}

fn boot(name: &'static str, append: &str, cpus: u32, limit: Duration) -> Result<Boot, String> {
    let t = tools()?;
    Ok(run_qemu(
        name,
        t.accel,
        &t.kernel,
        &t.initramfs,
        append,
        cpus,
        1024,
        limit,
    ))
}

/// `key=value` words after `CITEST <scenario>`; a value starting with `{` runs to the line's end.
fn parse_values(rest: &str) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (word, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let Some((key, value)) = word.split_once('=') else {
            rest = tail.trim_start();
            continue;
        };
        if value.starts_with('{') {
            let start = rest.find('=').unwrap_or(0) + 1;
            values.insert(key.to_string(), rest[start..].to_string());
            break;
        }
        values.insert(key.to_string(), value.to_string());
        rest = tail.trim_start();
    }
    values
}

impl Boot {
    /// Each `CITEST <scenario> ...` line of one scenario, parsed.
    fn records(&self, scenario: &str) -> Vec<BTreeMap<String, String>> {
        let prefix = format!("CITEST {scenario} ");
        self.results
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(parse_values)
            .collect()
    }

    /// The console between `=== scenario NAME ===` and the next scenario (or all of it).
    fn console_of(&self, scenario: &str) -> &str {
        let marker = format!("=== scenario {scenario} ===");
        match self.console.find(&marker) {
            Some(at) => {
                let rest = &self.console[at..];
                let end = rest[marker.len()..]
                    .find("=== scenario ")
                    .map_or(rest.len(), |e| e + marker.len());
                &rest[..end]
            }
            None => self.console_tail(),
        }
    }

    fn console_tail(&self) -> &str {
        let mut start = self.console.len().saturating_sub(6000);
        while !self.console.is_char_boundary(start) {
            start += 1;
        }
        &self.console[start..]
    }

    fn how_it_ended(&self) -> String {
        match self.status {
            Some(s) => format!(
                "{} VM ({}) ended with {s} after {:?}",
                self.name, self.accel, self.elapsed
            ),
            None => format!(
                "{} VM ({}) was killed at the time limit after {:?}",
                self.name, self.accel, self.elapsed
            ),
        }
    }
}

/// One scenario's measurements (all its lines merged) with what is needed to explain a failure.
struct Scenario<'a> {
    name: &'a str,
    vm: &'a Boot,
    values: BTreeMap<String, String>,
}

impl Scenario<'_> {
    fn explain(&self, what: &str) -> String {
        let lines: Vec<&String> = self
            .vm
            .results
            .iter()
            .filter(|l| l.starts_with(&format!("CITEST {} ", self.name)))
            .collect();
        format!(
            "{}: {what}\nmeasured:\n{}\n{}; console of the scenario:\n{}",
            self.name,
            lines
                .iter()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
            self.vm.how_it_ended(),
            self.vm.console_of(self.name)
        )
    }

    fn check(&self, ok: bool, what: &str) {
        assert!(ok, "{}", self.explain(what));
    }

    fn get(&self, key: &str) -> &str {
        match self.values.get(key) {
            Some(v) => v,
            None => panic!("{}", self.explain(&format!("no {key}= reported"))),
        }
    }

    fn json(&self, key: &str) -> Value {
        let text = self.get(key);
        serde_json::from_str(text).unwrap_or_else(|e| {
            panic!(
                "{}",
                self.explain(&format!("{key} is not one JSON object ({e}): {text}"))
            )
        })
    }
}

fn scenario<'a>(vm: &'a Boot, name: &'a str) -> Scenario<'a> {
    let records = vm.records(name);
    let mut values = BTreeMap::new();
    for r in records {
        values.extend(r);
    }
    let s = Scenario { name, vm, values };
    eprintln!("{name}: measured {:?}", s.values);
    s.check(!s.values.is_empty(), "the scenario reported nothing");
    s
}

/// The VM that runs every scenario of tests/vm/scenarios.sh, booted once per test process.
fn scenarios_vm() -> Option<&'static Boot> {
    static VM: OnceLock<Result<Boot, String>> = OnceLock::new();
    let vm = VM.get_or_init(|| {
        let only = std::env::var("CLUSTER_INIT_VM_SCENARIOS")
            .map(|s| format!(" CITEST_ONLY={s}"))
            .unwrap_or_default();
        boot(
            "scenarios",
            &format!("rdinit=/init{only}"),
            4,
            SCENARIOS_LIMIT,
        )
    });
    match vm {
        Ok(vm) => Some(vm),
        Err(what) => {
            require(false, what);
            None
        }
    }
}

/// The VM whose PID 1 is cluster-init itself, running 3 `citest rtcount` workers; slot 0 sends
/// the real-time signals to pid 1 and then SIGTERM, as a shutdown of the machine would.
fn pid1_vm() -> Option<&'static Boot> {
    static VM: OnceLock<Result<Boot, String>> = OnceLock::new();
    // Unknown KEY=value words of the kernel command line become init's environment, and the
    // words after `--` its arguments.
    let append = "rdinit=/bin/cluster-init CLUSTER_INIT_WORKERS=3 CLUSTER_INIT_LOG_FORMAT=json \
                  CLUSTER_INIT_STOP_TIMEOUT=10s RT_TTY=/dev/ttyS1 RT_DRIVE=1 RT_BURST=50 \
                  -- /bin/citest rtcount";
    match VM.get_or_init(|| boot("pid1", append, 2, PID1_LIMIT)) {
        Ok(vm) => Some(vm),
        Err(what) => {
            require(false, what);
            None
        }
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_f64().map(|f| f as u64))
}

// ---- the scenarios VM ----

#[test]
fn the_vm_is_a_cgroup_v2_kernel_with_4_cpus_and_every_scenario_ran() {
    let Some(vm) = scenarios_vm() else {
        return;
    };
    let s = scenario(vm, "boot");
    s.check(s.get("cpus") == "4", "expected 4 vCPUs");
    let controllers = s.get("controllers");
    for c in ["cpu", "cpuset", "memory", "pids"] {
        s.check(
            controllers.split(',').any(|x| x == c),
            &format!("{c} is not delegated"),
        );
    }
    let done = scenario(vm, "done");
    done.check(!vm.console.contains("Kernel panic"), "the kernel panicked");
    done.check(
        vm.status.is_some_and(|s| s.success()),
        "the VM did not power off by itself",
    );
}

#[test]
fn a_parents_cpu_max_caps_a_child_that_has_none() {
    let Some(vm) = scenarios_vm() else {
        return;
    };
    let s = scenario(vm, "nested_cpu_max");
    s.check(
        s.get("child_cpu_max") == "max_100000",
        "the child should have no limit of its own",
    );
    let plan = s.json("plan");
    s.check(
        plan["cpu"]["quota"]["file"] == "/sys/fs/cgroup/nest/cpu.max",
        "the quota should come from the parent's cpu.max",
    );
    s.check(plan["cpu"]["quota"]["cgroup"] == "v2", "cgroup v2 expected");
    s.check(plan["cpu"]["budget"] == 2.0, "a budget of 2 CPUs expected");
    s.check(plan["workers"] == 2, "the plan should have 2 workers");
    s.check(s.get("workers") == "2", "the pool should run 2 workers");
    s.check(s.get("exit_code") == "0", "SIGTERM should give exit 0");
}

#[test]
fn cpuset_cpus_effective_bounds_the_pool() {
    let Some(vm) = scenarios_vm() else {
        return;
    };
    let s = scenario(vm, "cpuset");
    s.check(s.get("effective") == "0-1", "the cpuset should be 0-1");
    let plan = s.json("plan");
    s.check(
        plan["cpu"]["affinity"]["cpus"] == 2.0,
        "2 CPUs of affinity expected",
    );
    s.check(plan["workers"] == 2, "the plan should have 2 workers");
    s.check(s.get("workers") == "2", "the pool should run 2 workers");
}

#[test]
fn inside_a_cgroup_namespace_the_containers_own_cpu_max_sizes_the_pool() {
    let Some(vm) = scenarios_vm() else {
        return;
    };
    let s = scenario(vm, "cgroup_ns");
    s.check(
        s.get("inside_cgroup") == "0::/app",
        "the process should see itself at /app of its own cgroup namespace",
    );
    let plan = s.json("plan");
    s.check(
        plan["cpu"]["quota"]["file"] == "/sys/fs/cgroup/cpu.max",
        "the namespace root's cpu.max, as the container sees it, should set the quota",
    );
    s.check(plan["cpu"]["budget"] == 1.5, "1.5 CPUs expected");
    s.check(plan["workers"] == 1, "1 worker expected (floor of 1.5)");
}

#[test]
fn a_worker_oom_killed_by_memory_max_is_named_oom() {
    let Some(vm) = scenarios_vm() else {
        return;
    };
    let s = scenario(vm, "oom");
    let kills: u64 = s.get("oom_kill").parse().unwrap_or(0);
    s.check(kills >= 1, "the kernel should have OOM-killed the worker");
    let line = s.json("exit_line");
    s.check(
        line["message"] == "worker exited",
        "a \"worker exited\" line expected",
    );
    s.check(
        line["cluster_init.exit.reason"] == "oom",
        "the exit should be named oom",
    );
    s.check(
        line["cluster_init.exit.signal"].is_string(),
        "the killing signal should be named",
    );
}

#[test]
fn memory_oom_group_is_warned_about() {
    let Some(vm) = scenarios_vm() else {
        return;
    };
    let s = scenario(vm, "oom_group");
    let line = s.json("warn_line");
    s.check(line["level"] == "WARN", "a warning expected");
    s.check(
        line["message"]
            .as_str()
            .is_some_and(|m| m.contains("memory.oom.group")),
        "the warning should name memory.oom.group",
    );
    s.check(s.get("workers") == "1", "the pool should still run");
}

#[test]
fn pids_max_too_low_then_raised_the_failed_spawns_are_retried_and_the_pool_recovers() {
    let Some(vm) = scenarios_vm() else {
        return;
    };
    let s = scenario(vm, "pids_max");
    let threads: u64 = s.get("init_threads").parse().unwrap_or(0);
    let at_limit: u64 = s.get("workers_at_limit").parse().unwrap_or(99);
    s.check(
        threads >= 1 && at_limit == 3u64.saturating_sub(threads) && at_limit < 4,
        "pids.max 3 should leave room for cluster-init's threads and the rest as workers",
    );
    let refused: u64 = s.get("forks_refused").parse().unwrap_or(0);
    s.check(refused >= 1, "the kernel should have refused forks");
    s.check(s.get("init_alive") == "yes", "cluster-init must not exit");
    let failed: u64 = s.get("spawn_failed_lines").parse().unwrap_or(0);
    s.check(
        failed >= 1,
        "failed spawns should be reported as spawn_failed",
    );
    let line = s.json("spawn_failed_line");
    s.check(
        line["cluster_init.exit.reason"] == "spawn_failed",
        "the exit reason should be spawn_failed",
    );
    s.check(
        s.get("workers_after_raise") == "4",
        "the pool should be back to 4 workers once pids.max is raised",
    );
    s.check(s.get("exit_code") == "0", "SIGTERM should give exit 0");
}

#[test]
fn the_live_budget_follows_cpu_max_from_1_to_3_to_2_cpus() {
    let Some(vm) = scenarios_vm() else {
        return;
    };
    let s = scenario(vm, "live_cpu");
    s.check(
        s.get("workers") == "1,3,2",
        "cpu.max 1 -> 3 -> 2 CPUs should give 1 -> 3 -> 2 workers",
    );
    s.check(s.get("exit_code") == "0", "SIGTERM should give exit 0");
}

#[test]
fn the_live_budget_follows_memory_max_with_worker_memory() {
    let Some(vm) = scenarios_vm() else {
        return;
    };
    let s = scenario(vm, "live_memory");
    let plan = s.json("plan");
    s.check(
        plan["workers"] == 1,
        "400M / 300M per worker should plan 1 worker",
    );
    s.check(
        s.get("workers") == "1,2",
        "memory.max 400M -> 700M with 300M per worker should give 1 -> 2 workers",
    );
    s.check(s.get("exit_code") == "0", "SIGTERM should give exit 0");
}

#[test]
fn under_runc_on_cgroup_v2_the_quota_sizes_the_pool_notify_works_read_only_and_workers_are_restarted(
) {
    let Some(vm) = scenarios_vm() else {
        return;
    };
    let s = scenario(vm, "runc_v2");
    if !require(
        !s.values.contains_key("skipped"),
        "runc on this host (Debian: runc), packed into the initramfs",
    ) {
        return;
    }
    s.check(
        s.get("ran") == "yes",
        "the container should be running (runc state); see its log",
    );
    s.check(
        s.get("cgroup_cpu_max") == "150000_100000",
        "runc should have written the spec's quota to cpu.max",
    );
    s.check(s.get("workers") == "1", "1 worker expected (floor of 1.5)");
    s.check(
        s.get("ready") == "yes",
        "/readyz should answer 200 once the worker sent READY=1",
    );
    s.check(
        s.get("answer").contains("count=1"),
        "the worker should answer and know the pool has 1 worker",
    );
    s.check(
        s.get("restarted") == "yes",
        "a worker SIGKILLed from outside should be replaced",
    );
    s.check(
        s.get("rt") == "34:1,36:2,",
        "runc kill 36, 36, 34 should reach the worker as 36 twice and 34 once",
    );
    s.check(
        s.get("exit_code") == "0",
        "runc kill TERM should give exit 0",
    );
}

// ---- cluster-init as PID 1 of the machine ----

#[test]
fn as_pid1_of_the_vm_every_realtime_signal_instance_reaches_every_worker() {
    let Some(vm) = pid1_vm() else {
        return;
    };
    let s = scenario(vm, "pid1_vm");
    let workers = vm.records("pid1_vm");
    s.check(
        workers.len() == 3,
        &format!("3 workers should report, {} did", workers.len()),
    );
    for w in &workers {
        let wrong: Vec<String> = (34..=64)
            .filter_map(|sig: i32| {
                let want = if sig == 36 { 51 } else { 1 };
                let got: u64 = w.get(&sig.to_string()).and_then(|v| v.parse().ok())?;
                (got != want).then(|| format!("{sig}: {got} of {want}"))
            })
            .collect();
        s.check(
            wrong.is_empty(),
            &format!(
                "worker {} received (signal: got of sent) {wrong:?}",
                w.get("worker").map_or("?", |v| v)
            ),
        );
    }
}

#[test]
fn as_pid1_of_the_vm_sigterm_stops_the_pool_and_powers_the_machine_off() {
    let Some(vm) = pid1_vm() else {
        return;
    };
    let s = scenario(vm, "pid1_vm");
    s.check(
        !vm.console.contains("Kernel panic"),
        "the kernel panicked: cluster-init exited instead of powering off",
    );
    s.check(
        !vm.console.contains("/proc/self/mountinfo"),
        "as the machine's init without /proc, cluster-init should mount it (no cgroup warning)",
    );
    s.check(
        vm.status.is_some_and(|st| st.success()),
        "qemu should exit by itself after the power-off",
    );
    let last = vm
        .console
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(|v| v["message"] == "cluster-init exiting");
    s.check(last.is_some(), "no \"cluster-init exiting\" line");
    let last = last.unwrap_or_default();
    s.check(
        as_u64(&last["process.exit.code"]) == Some(0),
        &format!("the final line should say exit code 0: {last}"),
    );
    let power_down = vm.console.find("reboot: Power down");
    let exiting = vm.console.find("cluster-init exiting");
    s.check(
        power_down.is_some() && exiting < power_down,
        "the final log line should come before the power-off",
    );
}
