//! The CPU budget: how many CPUs this container may really use, and the worker count that follows.
//!
//! Owns the affinity mask, cgroup v1 and v2 CPU quotas (found through `/proc/self/mountinfo` and
//! `/proc/self/cgroup`, every ancestor walked), the `--cpus` quantity form, rounding to a worker
//! count, and the per-worker env for runtimes that size themselves. Apart from [`sched_affinity`]
//! everything is a function of a filesystem root, so tests hand in fixture trees for `/proc` and
//! `/sys`. Broken input never fails detection: it falls back to the affinity and says why in
//! [`CpuBudget::warnings`], which the caller logs. The same locator finds this process's cgroup
//! for other controllers ([`cgroup_dir`]; `memory` reads its OOM counters there).

use std::fmt::Display;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    Floor,
    Ceil,
}

impl Rounding {
    pub fn as_str(self) -> &'static str {
        match self {
            Rounding::Floor => "floor",
            Rounding::Ceil => "ceil",
        }
    }
}

impl FromStr for Rounding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "floor" => Ok(Rounding::Floor),
            "ceil" => Ok(Rounding::Ceil),
            _ => Err(format!("{s:?} is not a rounding (use floor or ceil)")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

/// CPUs this process may be scheduled on.
#[derive(Clone, Debug, PartialEq)]
pub struct Affinity {
    pub cpus: f64,
    /// `sched_getaffinity`, or the path of the `cpuset.cpus.effective` file that was smaller.
    pub source: String,
}

impl Affinity {
    fn sched(cpus: Option<u32>) -> Option<Affinity> {
        cpus.filter(|&n| n > 0).map(|n| Affinity {
            cpus: f64::from(n),
            source: "sched_getaffinity".into(),
        })
    }
}

/// The tightest CFS bandwidth limit over this process's cgroup and its ancestors.
#[derive(Clone, Debug, PartialEq)]
pub struct Quota {
    pub cpus: f64,
    /// As seen from the host root (`/sys/fs/cgroup/...`), whatever root detection ran against.
    pub file: PathBuf,
    pub version: CgroupVersion,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Affinity,
    Quota,
    Explicit,
}

impl Bound {
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::Affinity => "affinity",
            Bound::Quota => "quota",
            Bound::Explicit => "explicit",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CpuBudget {
    pub affinity: Option<Affinity>,
    pub quota: Option<Quota>,
    /// `--cpus`, which replaces detection.
    pub explicit: Option<f64>,
    /// Fractional on purpose: the rounding is the caller's choice.
    pub budget: f64,
    pub bounded_by: Bound,
    pub warnings: Vec<String>,
}

/// Number of CPUs in this process's affinity mask; `None` if the kernel will not say.
pub fn sched_affinity() -> Option<u32> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let n = (0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .count();
    u32::try_from(n).ok().filter(|&n| n > 0)
}

/// Detects the budget from the files under `root` ("/" in production).
pub fn detect(root: &Path, sched_affinity: Option<u32>) -> CpuBudget {
    let (places, warnings) = locate(root);
    places.measure(root, sched_affinity, warnings)
}

/// Where this process's CPU limits are: the cgroup directories (v1 cpu controller, v2 unified)
/// found once through mountinfo, so that the budget can be read again while the pool runs
/// (an in-place resize rewrites the quota files) without parsing mountinfo again.
#[derive(Clone, Debug, Default)]
pub struct Places {
    v1: Option<Place>,
    v2: Option<Place>,
}

/// Finds the places, with the warnings that came up on the way.
pub fn locate(root: &Path) -> (Places, Vec<String>) {
    let mut host = Host {
        root,
        warnings: Vec::new(),
    };
    let layout = host.layout();
    let v1 = layout
        .as_ref()
        .and_then(|l| host.locate(l, CgroupVersion::V1, "cpu"));
    let v2 = layout
        .as_ref()
        .and_then(|l| host.locate(l, CgroupVersion::V2, "cpu"));
    (Places { v1, v2 }, host.warnings)
}

impl Places {
    /// Reads the budget from the places' files (a handful of small files under `root`).
    /// `warnings` start the budget's list.
    pub fn measure(
        &self,
        root: &Path,
        sched_affinity: Option<u32>,
        warnings: Vec<String>,
    ) -> CpuBudget {
        let mut host = Host { root, warnings };
        // The kernel already narrows the affinity mask to the cpuset; the file still matters
        // when sched_getaffinity failed, and it is what a fixture can control.
        let cpuset = self.v2.as_ref().and_then(|place| host.cpuset(place));
        let affinity = match (Affinity::sched(sched_affinity), cpuset) {
            (Some(mask), Some(set)) => Some(if set.cpus < mask.cpus { set } else { mask }),
            (mask, set) => mask.or(set),
        };
        // On a hybrid host the cpu controller sits in v1 and the v2 tree has no cpu.max files,
        // so reading both and keeping the tighter needs no guess about which one is in charge.
        let v1 = self
            .v1
            .as_ref()
            .and_then(|place| host.quota(place, CgroupVersion::V1));
        let v2 = self
            .v2
            .as_ref()
            .and_then(|place| host.quota(place, CgroupVersion::V2));
        let quota = tighter(v1, v2);

        let (budget, bounded_by) = match (&affinity, &quota) {
            (Some(a), Some(q)) if q.cpus < a.cpus => (q.cpus, Bound::Quota),
            (Some(a), _) => (a.cpus, Bound::Affinity),
            (None, Some(q)) => (q.cpus, Bound::Quota),
            (None, None) => {
                host.warnings
                    .push("no affinity mask and no cgroup quota found: assuming 1 CPU".into());
                (1.0, Bound::Affinity)
            }
        };
        CpuBudget {
            affinity,
            quota,
            explicit: None,
            budget,
            bounded_by,
            warnings: host.warnings,
        }
    }
}

/// Every directory of this process's cgroup of one hierarchy, the leaf first, up to the root
/// of its mount (found as [`cgroup_dir`] finds the leaf): where the limits of a controller that
/// caps children by its ancestors' limits (memory) are read.
pub fn cgroup_dirs(root: &Path, version: CgroupVersion, controller: &str) -> Vec<PathBuf> {
    let mut host = Host {
        root,
        warnings: Vec::new(),
    };
    let Some(layout) = host.layout() else {
        return Vec::new();
    };
    let Some(place) = host.locate(&layout, version, controller) else {
        return Vec::new();
    };
    place
        .dirs()
        .map(|d| root.join(d.strip_prefix("/").unwrap_or(d)))
        .collect()
}

/// Where this process's cgroup shows in the filesystem (as seen from `root`, "/" in production),
/// found the way the quota is: through mountinfo, mount roots translated. For v1, the hierarchy
/// that carries `controller`; for v2, the unified one (`controller` is not looked at).
pub fn cgroup_dir(root: &Path, version: CgroupVersion, controller: &str) -> Option<PathBuf> {
    let mut host = Host {
        root,
        warnings: Vec::new(),
    };
    let layout = host.layout()?;
    let place = host.locate(&layout, version, controller)?;
    Some(root.join(place.leaf.strip_prefix("/").unwrap_or(&place.leaf)))
}

/// The budget when `--cpus` was given: no cgroup is read, the affinity is kept for the record.
pub fn explicit(cpus: f64, sched_affinity: Option<u32>) -> CpuBudget {
    let affinity = Affinity::sched(sched_affinity);
    let mut warnings = Vec::new();
    if let Some(a) = affinity.as_ref().filter(|a| cpus > a.cpus) {
        warnings.push(format!(
            "--cpus {cpus:.2} is more than the {} CPUs of the affinity mask",
            a.cpus
        ));
    }
    CpuBudget {
        affinity,
        quota: None,
        explicit: Some(cpus),
        budget: cpus,
        bounded_by: Bound::Explicit,
        warnings,
    }
}

/// Parses a Kubernetes CPU quantity: `2`, `1.5`, `0.5`, `1500m`.
pub fn parse_quantity(s: &str) -> Result<f64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty CPU quantity".into());
    }
    if s.starts_with('-') {
        return Err(format!("CPU quantity {s} is negative"));
    }
    let (number, per_cpu) = match s.strip_suffix('m') {
        Some(millis) => (millis, 1000.0),
        None => (s, 1.0),
    };
    // f64's parser also takes "inf", "NaN", "1e3" and "+2", none of which Kubernetes would.
    let plain = number.bytes().any(|b| b.is_ascii_digit())
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|&b| b == b'.').count() <= 1;
    let value = match number.parse::<f64>() {
        Ok(v) if plain && v.is_finite() => v / per_cpu,
        _ => return Err(format!("{s:?} is not a CPU quantity (e.g. 2, 1.5, 1500m)")),
    };
    if value <= 0.0 {
        return Err(format!("CPU quantity {s} must be more than 0"));
    }
    Ok(value)
}

/// Turns a budget into the worker count `max` means, minus `minus` (the `max-K` form); at least 1.
pub fn workers_for(budget: f64, rounding: Rounding, minus: u32) -> u32 {
    // Quotas are ratios of microseconds, so a whole number of CPUs can come out a hair off it;
    // without the slack, ceil would make 3 workers of 2.0000000001 CPUs.
    const SLACK: f64 = 1e-6;
    let whole = match rounding {
        Rounding::Floor => (budget + SLACK).floor(),
        Rounding::Ceil => (budget - SLACK).ceil(),
    };
    let whole = if whole >= 1.0 {
        whole.min(f64::from(u32::MAX)) as u32
    } else {
        1 // also NaN, which fails every comparison
    };
    whole.saturating_sub(minus).max(1)
}

/// Runtimes that size their thread pools from the CPU count they see. Each worker would otherwise
/// see the whole budget (or the host's cores) and N workers would oversubscribe it N times over.
const PER_WORKER_VARS: &[&str] = &[
    "GOMAXPROCS",             // Go: threads running Go code at once
    "DOTNET_PROCESSOR_COUNT", // .NET: Environment.ProcessorCount, thread pool and server GC heaps
    "UV_THREADPOOL_SIZE",     // libuv (Node): pool for fs, dns, crypto; defaults to 4 regardless
    // OpenMP: numpy/scipy BLAS, PyTorch and friends default to every host core; OpenBLAS and MKL
    // fall back to this name when their own is unset, so one variable covers the three.
    "OMP_NUM_THREADS",
    // Python 3.13+: overrides os.cpu_count(), which sizes multiprocessing and executor pools.
    "PYTHON_CPU_COUNT",
];

/// Each worker's share of the budget for [`PER_WORKER_VARS`]; the caller sets only unset ones.
pub fn per_worker_env(budget: f64, workers: u32) -> Vec<(&'static str, String)> {
    let share = budget / f64::from(workers.max(1));
    // Nearest rather than floor: 1.5 CPUs for one worker is better used by 2 threads than by 1.
    let share = if share >= 1.0 {
        share.round() as u32
    } else {
        1
    };
    let share = share.to_string();
    PER_WORKER_VARS
        .iter()
        .map(|&name| (name, share.clone()))
        .collect()
}

impl CpuBudget {
    /// The `cpu` object of `--dry-run`; `workers_max` is what `--workers max` resolves to.
    pub fn to_json(&self, rounding: Rounding, workers_max: u32) -> Value {
        json!({
            "affinity": self.affinity.as_ref().map(|a| json!({"cpus": a.cpus, "source": a.source})),
            "quota": self.quota.as_ref().map(|q| json!({
                "cpus": q.cpus,
                "file": q.file.display().to_string(),
                "cgroup": q.version.as_str(),
            })),
            "explicit": self.explicit,
            "budget": self.budget,
            "bounded_by": self.bounded_by.as_str(),
            "rounding": rounding.as_str(),
            "max": workers_max,
            "warnings": self.warnings,
        })
    }

    /// One line for the start-up log; the caller prefixes `workers=N: `.
    pub fn explain(&self, rounding: Rounding) -> String {
        let how = match (self.bounded_by, &self.affinity, &self.quota, self.explicit) {
            (Bound::Explicit, _, _, Some(cpus)) => format!("--cpus {cpus:.2}"),
            (Bound::Quota, _, Some(q), _) => format!(
                "cgroup {} quota {:.2} CPUs ({})",
                q.version.as_str(),
                q.cpus,
                q.file.display()
            ),
            (_, Some(a), quota, _) => {
                let quota = match quota {
                    None => "no cgroup quota".to_string(),
                    Some(q) => format!(
                        "cgroup {} quota {:.2} is not lower",
                        q.version.as_str(),
                        q.cpus
                    ),
                };
                format!("affinity {} CPUs ({}, {quota})", a.cpus, a.source)
            }
            _ => format!("{} CPU assumed (nothing detected)", self.budget),
        };
        format!("{how}, {}", rounding.as_str())
    }
}

/// Parses a cpu list such as `0-3,8,10-11` into the number of CPUs it names.
fn count_cpu_list(list: &str) -> Option<u32> {
    let mut count = 0u32;
    for part in list.trim().split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last): (u32, u32) = (first.parse().ok()?, last.parse().ok()?);
        count = count.checked_add(last.checked_sub(first)?.checked_add(1)?)?;
    }
    Some(count)
}

/// One line of `/proc/self/mountinfo`, the fields we use.
struct Mount {
    /// The part of the hierarchy mounted here (field 4): not `/` when mounted from a cgroup
    /// namespace or a bind mount of a sub-cgroup.
    root: String,
    point: PathBuf,
    fstype: String,
    super_options: String,
}

struct Layout {
    mounts: Vec<Mount>,
    /// `/proc/self/cgroup` lines as (controllers, path); controllers empty for v2.
    cgroups: Vec<(String, String)>,
}

/// A cgroup directory and the mount point its ancestor walk stops at: nothing above a mount's
/// root is visible through it.
#[derive(Clone, Debug)]
struct Place {
    leaf: PathBuf,
    top: PathBuf,
}

impl Place {
    /// The leaf first, then each parent up to and including the mount point.
    fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.leaf
            .ancestors()
            .take_while(|d| d.starts_with(&self.top))
    }
}

/// The real filesystem under `root`, plus the warnings detection gathers on the way.
struct Host<'a> {
    root: &'a Path,
    warnings: Vec<String>,
}

const MOUNTINFO: &str = "/proc/self/mountinfo";
const CGROUP: &str = "/proc/self/cgroup";

impl Host<'_> {
    fn read(&self, real: &Path) -> io::Result<String> {
        let relative = real.strip_prefix("/").unwrap_or(real);
        std::fs::read_to_string(self.root.join(relative))
    }

    fn warn(&mut self, file: &Path, what: impl Display) {
        self.warnings.push(format!("{}: {what}", file.display()));
    }

    /// Reads a controller file; a missing one is no limit, an unreadable one is a warning.
    fn read_limit(&mut self, file: &Path) -> Option<String> {
        match self.read(file) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                self.warn(file, format_args!("cannot read: {e}; ignoring this limit"));
                None
            }
        }
    }

    fn layout(&mut self) -> Option<Layout> {
        let mut read = |file: &str| match self.read(Path::new(file)) {
            Ok(text) => Some(text),
            Err(e) => {
                self.warn(
                    Path::new(file),
                    format_args!("cannot read: {e}; no cgroup limits"),
                );
                None
            }
        };
        let (mountinfo, cgroup) = (read(MOUNTINFO)?, read(CGROUP)?);
        let mounts = mountinfo.lines().filter_map(parse_mount).collect();
        let cgroups = cgroup
            .lines()
            .filter_map(|line| {
                let mut fields = line.splitn(3, ':');
                let (_id, controllers) = (fields.next()?, fields.next()?);
                Some((controllers.to_string(), fields.next()?.to_string()))
            })
            .collect();
        Some(Layout { mounts, cgroups })
    }

    /// Where this process's cgroup of one hierarchy shows in the filesystem.
    fn locate(
        &mut self,
        layout: &Layout,
        version: CgroupVersion,
        controller: &str,
    ) -> Option<Place> {
        let has_cpu = |list: &str| list.split(',').any(|c| c == controller);
        let path = &layout
            .cgroups
            .iter()
            .find(|(controllers, _)| match version {
                CgroupVersion::V1 => has_cpu(controllers),
                CgroupVersion::V2 => controllers.is_empty(),
            })?
            .1;
        let mounts: Vec<&Mount> = (layout.mounts.iter())
            .filter(|m| match version {
                CgroupVersion::V1 => m.fstype == "cgroup" && has_cpu(&m.super_options),
                CgroupVersion::V2 => m.fstype == "cgroup2",
            })
            .collect();
        // Several mounts of one hierarchy happen (bind mounts); prefer one that shows our cgroup.
        let (mount, below_root) = match mounts
            .iter()
            .find_map(|&m| Some((m, below(path, &m.root)?)))
        {
            Some(found) => found,
            None => {
                let mount = *mounts.first()?;
                // Inside a cgroup namespace our path reads "/" while the mount shows the host's
                // path to the container: the mount point is our cgroup. Any other path outside
                // the mount root (moved after the mount was made) leaves it as the best guess.
                if path != "/" {
                    self.warn(
                        Path::new(CGROUP),
                        format_args!(
                            "cgroup {path} is outside the root {} of the mount at {}; reading limits there",
                            mount.root,
                            mount.point.display()
                        ),
                    );
                }
                (mount, PathBuf::new())
            }
        };
        Some(Place {
            leaf: mount.point.join(below_root),
            top: mount.point.clone(),
        })
    }

    fn quota(&mut self, place: &Place, version: CgroupVersion) -> Option<Quota> {
        let mut best = None;
        // A parent's limit caps every child, and children default to unlimited: walk them all.
        for dir in place.dirs() {
            let found = match version {
                CgroupVersion::V1 => self.v1_quota(dir),
                CgroupVersion::V2 => self.v2_quota(dir),
            };
            best = tighter(best, found);
        }
        best
    }

    fn v1_quota(&mut self, dir: &Path) -> Option<Quota> {
        let quota_file = dir.join("cpu.cfs_quota_us");
        let quota = self.read_limit(&quota_file)?;
        // v1's spelling of "no limit", the default of every cgroup.
        if quota.trim() == "-1" {
            return None;
        }
        let period_file = dir.join("cpu.cfs_period_us");
        let Some(period) = self.read_limit(&period_file) else {
            self.warn(&period_file, "missing beside a quota; ignoring this limit");
            return None;
        };
        let cpus = self.ratio(&quota_file, quota.trim(), &period_file, period.trim())?;
        Some(Quota {
            cpus,
            file: quota_file,
            version: CgroupVersion::V1,
        })
    }

    fn v2_quota(&mut self, dir: &Path) -> Option<Quota> {
        let file = dir.join("cpu.max");
        let text = self.read_limit(&file)?;
        let fields: Vec<&str> = text.split_whitespace().collect();
        let cpus = match fields[..] {
            // Every cgroup's default, not a broken file: no limit here, nothing to warn about.
            ["max", _] | ["max"] => return None,
            [quota, period] => self.ratio(&file, quota, &file, period)?,
            _ => {
                self.warn(
                    &file,
                    format_args!("malformed {:?}; ignoring this limit", text.trim()),
                );
                return None;
            }
        };
        Some(Quota {
            cpus,
            file,
            version: CgroupVersion::V2,
        })
    }

    fn ratio(
        &mut self,
        quota_file: &Path,
        quota: &str,
        period_file: &Path,
        period: &str,
    ) -> Option<f64> {
        let Ok(quota) = quota.parse::<u64>() else {
            self.warn(
                quota_file,
                format_args!("malformed quota {quota:?}; ignoring this limit"),
            );
            return None;
        };
        match period.parse::<u64>() {
            Ok(0) => self.warn(period_file, "zero period; ignoring this limit"),
            Ok(_) if quota == 0 => self.warn(quota_file, "zero quota; ignoring this limit"),
            Ok(period) => return Some(quota as f64 / period as f64),
            Err(_) => self.warn(
                period_file,
                format_args!("malformed period {period:?}; ignoring this limit"),
            ),
        }
        None
    }

    /// CPUs of the nearest `cpuset.cpus.effective` (cgroup v2); a cgroup without the cpuset
    /// controller enabled has no such file and runs on its parent's set.
    fn cpuset(&mut self, place: &Place) -> Option<Affinity> {
        for dir in place.dirs() {
            let file = dir.join("cpuset.cpus.effective");
            if let Some(text) = self.read_limit(&file) {
                match count_cpu_list(&text) {
                    Some(n) if n > 0 => {
                        return Some(Affinity {
                            cpus: f64::from(n),
                            source: file.display().to_string(),
                        })
                    }
                    _ => self.warn(&file, format_args!("malformed cpu list {:?}", text.trim())),
                }
                return None;
            }
        }
        None
    }
}

fn tighter(a: Option<Quota>, b: Option<Quota>) -> Option<Quota> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.cpus < a.cpus { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// `path` relative to a mount's `root`; None when it lies outside (or tries to climb with `..`).
fn below(path: &str, root: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    path.strip_prefix(root).ok().map(Path::to_path_buf)
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`: six fields,
/// any number of optional ones, then ` - ` and the filesystem type, source and super options.
fn parse_mount(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let mut before = before.split(' ');
    let root = unescape(before.nth(3)?);
    let point = PathBuf::from(unescape(before.next()?));
    let mut after = after.split(' ');
    let fstype = after.next()?.to_string();
    let super_options = after.nth(1).unwrap_or("").to_string();
    Some(Mount {
        root,
        point,
        fstype,
        super_options,
    })
}

/// The kernel writes space, tab, newline and backslash in mountinfo paths as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    /// This machine's shape: cgroup v1 controllers plus a cgroup2 mount without the cpu
    /// controller, with the optional `shared:N` fields a systemd host adds.
    const HYBRID: &str = "\
22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime shared:5 - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime shared:6 - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime shared:7 - cgroup cgroup rw,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
";
    /// Docker on an older distribution: cpu co-mounted with cpuacct, container path as root.
    const V1_DOCKER: &str = "\
1021 1013 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid,nodev,noexec,relatime master:11 - cgroup cgroup rw,cpu,cpuacct
";
    const V2: &str = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    struct Fixture(TempDir);

    impl Fixture {
        fn new(mountinfo: &str, cgroup: &str) -> Self {
            let f = Fixture(TempDir::new().unwrap());
            f.file(MOUNTINFO, mountinfo).file(CGROUP, cgroup)
        }

        fn file(self, real: &str, text: &str) -> Self {
            let path = self.0.path().join(real.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
            self
        }

        fn v1(self, dir: &str, quota: &str, period: &str) -> Self {
            self.file(&format!("{dir}/cpu.cfs_quota_us"), quota)
                .file(&format!("{dir}/cpu.cfs_period_us"), period)
        }

        fn detect(&self, sched: Option<u32>) -> CpuBudget {
            detect(self.0.path(), sched)
        }
    }

    fn quota_file(b: &CpuBudget) -> String {
        b.quota.as_ref().unwrap().file.display().to_string()
    }

    #[test]
    fn v1_quota_of_a_docker_container_bounds_the_budget() {
        let b = Fixture::new(V1_DOCKER, "4:cpu,cpuacct:/docker/abc\n")
            .v1("/sys/fs/cgroup/cpu,cpuacct", "150000\n", "100000\n")
            .detect(Some(4));
        assert_eq!((b.budget, b.bounded_by), (1.5, Bound::Quota));
        assert_eq!(
            quota_file(&b),
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us"
        );
        assert_eq!(b.quota.unwrap().version, CgroupVersion::V1);
        assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    }

    #[test]
    fn v2_cpu_max_bounds_the_budget() {
        let b = Fixture::new(V2, "0::/app\n")
            .file("/sys/fs/cgroup/app/cpu.max", "250000 100000\n")
            .detect(Some(4));
        assert_eq!((b.budget, b.bounded_by), (2.5, Bound::Quota));
        assert_eq!(
            b.explain(Rounding::Floor),
            "cgroup v2 quota 2.50 CPUs (/sys/fs/cgroup/app/cpu.max), floor"
        );
    }

    #[test]
    fn v2_max_is_no_limit_and_no_warning() {
        let b = Fixture::new(V2, "0::/app\n")
            .file("/sys/fs/cgroup/app/cpu.max", "max 100000\n")
            .detect(Some(2));
        assert_eq!(
            (b.budget, b.bounded_by, &b.quota),
            (2.0, Bound::Affinity, &None)
        );
        assert!(b.warnings.is_empty(), "{:?}", b.warnings);
        assert_eq!(
            b.explain(Rounding::Floor),
            "affinity 2 CPUs (sched_getaffinity, no cgroup quota), floor"
        );
    }

    #[test]
    fn hybrid_host_reads_the_v1_cpu_controller() {
        let b = Fixture::new(HYBRID, "2:cpuacct:/a\n1:cpu:/a\n0::/a\n")
            .v1("/sys/fs/cgroup/cpu/a", "100000", "100000")
            .v1("/sys/fs/cgroup/cpuacct/a", "50000", "100000") // not the cpu controller
            .file("/sys/fs/cgroup/unified/a/cgroup.procs", "")
            .detect(Some(2));
        assert_eq!(
            (b.budget, quota_file(&b).as_str()),
            (1.0, "/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us")
        );
        assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    }

    #[test]
    fn parent_limit_caps_an_unlimited_child() {
        let b = Fixture::new(HYBRID, "1:cpu:/a/b\n0::/\n")
            .v1("/sys/fs/cgroup/cpu", "-1", "100000")
            .v1("/sys/fs/cgroup/cpu/a", "100000", "100000")
            .v1("/sys/fs/cgroup/cpu/a/b", "-1", "100000")
            .detect(Some(2));
        assert_eq!(
            (b.budget, quota_file(&b).as_str()),
            (1.0, "/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us")
        );
    }

    #[test]
    fn tighter_child_wins_over_its_parent() {
        let b = Fixture::new(HYBRID, "1:cpu:/a/b\n")
            .v1("/sys/fs/cgroup/cpu/a", "200000", "100000")
            .v1("/sys/fs/cgroup/cpu/a/b", "50000", "100000")
            .detect(Some(2));
        assert_eq!(
            (b.budget, quota_file(&b).as_str()),
            (0.5, "/sys/fs/cgroup/cpu/a/b/cpu.cfs_quota_us")
        );
    }

    #[test]
    fn mount_root_is_translated_for_a_namespaced_mount() {
        // The mount shows /kubepods/pod1 at /sys/fs/cgroup, so our /kubepods/pod1/ctr is
        // /sys/fs/cgroup/ctr; the decoy is where a naive join would look.
        let mountinfo =
            "30 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw,relatime shared:4 - cgroup2 cgroup2 rw\n";
        let b = Fixture::new(mountinfo, "0::/kubepods/pod1/ctr\n")
            .file("/sys/fs/cgroup/cpu.max", "300000 100000")
            .file("/sys/fs/cgroup/ctr/cpu.max", "150000 100000")
            .file("/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "10000 100000")
            .detect(Some(4));
        assert_eq!(
            (b.budget, quota_file(&b).as_str()),
            (1.5, "/sys/fs/cgroup/ctr/cpu.max")
        );
        assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    }

    #[test]
    fn cgroup_namespace_root_path_reads_the_mount_point() {
        let mountinfo =
            "30 23 0:26 /kubepods/pod1/ctr /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n";
        let b = Fixture::new(mountinfo, "0::/\n")
            .file("/sys/fs/cgroup/cpu.max", "100000 100000")
            .detect(Some(4));
        assert_eq!(
            (b.budget, quota_file(&b).as_str()),
            (1.0, "/sys/fs/cgroup/cpu.max")
        );
        assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    }

    #[test]
    fn path_outside_the_mount_root_warns_and_reads_the_mount_point() {
        let mountinfo = "30 23 0:26 /pod1 /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n";
        for path in ["/pod2/ctr", "/pod1/../pod2", "/pod10"] {
            let b = Fixture::new(mountinfo, &format!("0::{path}\n"))
                .file("/sys/fs/cgroup/cpu.max", "100000 100000")
                .detect(Some(4));
            assert_eq!(b.budget, 1.0, "{path}");
            assert!(
                b.warnings[0].starts_with("/proc/self/cgroup: cgroup "),
                "{:?}",
                b.warnings
            );
        }
    }

    #[test]
    fn cpuset_smaller_than_affinity_bounds_the_budget() {
        let b = Fixture::new(V2, "0::/app\n")
            .file("/sys/fs/cgroup/cpuset.cpus.effective", "0-7\n")
            .file("/sys/fs/cgroup/app/cpuset.cpus.effective", "0,2\n")
            .detect(Some(8));
        let a = b.affinity.unwrap();
        assert_eq!(
            (a.cpus, a.source.as_str()),
            (2.0, "/sys/fs/cgroup/app/cpuset.cpus.effective")
        );
        assert_eq!((b.budget, b.bounded_by), (2.0, Bound::Affinity));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-3,8,10-11\n"), Some(7));
        assert_eq!(count_cpu_list("5"), Some(1));
        for bad in ["", "3-1", "a", "0-", "1,,2"] {
            assert_eq!(count_cpu_list(bad), None, "{bad:?}");
        }
    }

    /// Each case: the files, then the one the warning must name. All fall back to affinity 3.
    #[test]
    fn broken_limits_fall_back_to_affinity_naming_the_file() {
        let v1 =
            |q: &str, p: &str| Fixture::new(HYBRID, "1:cpu:/a\n").v1("/sys/fs/cgroup/cpu/a", q, p);
        let v2 = |max: &str| Fixture::new(V2, "0::/a\n").file("/sys/fs/cgroup/a/cpu.max", max);
        let cases = [
            (
                v1("100000", "0"),
                "/sys/fs/cgroup/cpu/a/cpu.cfs_period_us: zero period",
            ),
            (
                v1("lots", "100000"),
                "/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us: malformed",
            ),
            (
                v1("-5", "100000"),
                "/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us: malformed",
            ),
            (
                v1("0", "100000"),
                "/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us: zero quota",
            ),
            (
                v1("100000", ""),
                "/sys/fs/cgroup/cpu/a/cpu.cfs_period_us: malformed",
            ),
            (v2("100000 0"), "/sys/fs/cgroup/a/cpu.max: zero period"),
            (v2("lots 100000"), "/sys/fs/cgroup/a/cpu.max: malformed"),
            (v2(""), "/sys/fs/cgroup/a/cpu.max: malformed"),
            (v2("1 2 3"), "/sys/fs/cgroup/a/cpu.max: malformed"),
            // A directory where the file should be: read fails with EISDIR, as root or not.
            (
                Fixture::new(V2, "0::/a\n").file("/sys/fs/cgroup/a/cpu.max/x", ""),
                "/sys/fs/cgroup/a/cpu.max: cannot read",
            ),
            (
                Fixture::new(V2, "0::/a\n").file("/sys/fs/cgroup/a/cpuset.cpus.effective", "0-"),
                "/sys/fs/cgroup/a/cpuset.cpus.effective: malformed",
            ),
        ];
        for (fixture, warning) in cases {
            let b = fixture.detect(Some(3));
            assert_eq!(
                (b.budget, b.bounded_by, &b.quota),
                (3.0, Bound::Affinity, &None),
                "{warning}"
            );
            assert!(
                b.warnings.len() == 1 && b.warnings[0].starts_with(warning),
                "want {warning:?}, got {:?}",
                b.warnings
            );
        }
    }

    #[test]
    fn missing_proc_files_fall_back_to_affinity() {
        let empty = TempDir::new().unwrap();
        let b = detect(empty.path(), Some(2));
        assert_eq!((b.budget, b.bounded_by), (2.0, Bound::Affinity));
        assert!(
            b.warnings[0].starts_with("/proc/self/mountinfo: cannot read"),
            "{:?}",
            b.warnings
        );

        let b = detect(empty.path(), None);
        assert_eq!((b.budget, b.affinity, b.warnings.len()), (1.0, None, 2));
    }

    #[test]
    fn mountinfo_octal_escapes() {
        let m =
            parse_mount(r"40 31 0:37 /a\040b /sys/fs/cgroup/my\134cpu rw - cgroup cgroup rw,cpu")
                .unwrap();
        assert_eq!(
            (m.root.as_str(), m.point),
            ("/a b", PathBuf::from(r"/sys/fs/cgroup/my\cpu"))
        );
        assert_eq!(unescape(r"\777\04"), r"\777\04");
    }

    #[test]
    fn quantities() {
        for (s, want) in [
            ("2", 2.0),
            ("1.5", 1.5),
            ("1500m", 1.5),
            ("0.5", 0.5),
            ("250m", 0.25),
            (" 3 ", 3.0),
        ] {
            assert_eq!(parse_quantity(s), Ok(want), "{s:?}");
        }
        for s in [
            "0", "0m", "0.0", "-1", "-500m", "", " ", "m", "abc", "1.5.0", "2k", "1e3", "inf",
            "NaN", "+2", "1,5",
        ] {
            assert!(parse_quantity(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn rounding_to_workers() {
        use Rounding::{Ceil, Floor};
        for (budget, rounding, minus, want) in [
            (1.5, Floor, 0, 1),
            (1.5, Ceil, 0, 2),
            (2.0, Floor, 0, 2),
            (2.0, Ceil, 0, 2),
            (2.0 + 1e-9, Ceil, 0, 2),
            (3.0 - 1e-9, Floor, 0, 3),
            (0.2, Floor, 0, 1),
            (0.2, Ceil, 0, 1),
            (2.0, Floor, 1, 1),
            (2.0, Floor, 5, 1),
            (8.0, Ceil, 3, 5),
            (f64::NAN, Ceil, 0, 1),
        ] {
            assert_eq!(
                workers_for(budget, rounding, minus),
                want,
                "{budget} {rounding:?} -{minus}"
            );
        }
        assert_eq!("ceil".parse(), Ok(Ceil));
        assert!("round".parse::<Rounding>().is_err());
    }

    #[test]
    fn per_worker_share() {
        let env = per_worker_env(4.0, 2);
        assert!(env.iter().all(|(_, v)| v == "2"), "{env:?}");
        let names: Vec<_> = env.iter().map(|(k, _)| *k).collect();
        for name in ["GOMAXPROCS", "DOTNET_PROCESSOR_COUNT", "UV_THREADPOOL_SIZE"] {
            assert!(names.contains(&name));
        }
        assert_eq!(per_worker_env(1.5, 4)[0].1, "1");
        assert_eq!(per_worker_env(1.5, 1)[0].1, "2");
        assert_eq!(per_worker_env(8.0, 0)[0].1, "8");
    }

    #[test]
    fn json_and_explain_shapes() {
        let b = Fixture::new(HYBRID, "1:cpu:/x\n")
            .v1("/sys/fs/cgroup/cpu/x", "150000", "100000")
            .detect(Some(2));
        assert_eq!(
            b.to_json(Rounding::Floor, 1),
            json!({
                "affinity": {"cpus": 2.0, "source": "sched_getaffinity"},
                "quota": {"cpus": 1.5, "file": "/sys/fs/cgroup/cpu/x/cpu.cfs_quota_us", "cgroup": "v1"},
                "explicit": null, "budget": 1.5, "bounded_by": "quota", "rounding": "floor", "max": 1,
                "warnings": [],
            })
        );
        let e = explicit(1.5, Some(2));
        assert_eq!(e.explain(Rounding::Ceil), "--cpus 1.50, ceil");
        assert_eq!(e.to_json(Rounding::Ceil, 2)["explicit"], json!(1.5));
        assert_eq!(
            e.to_json(Rounding::Ceil, 2)["bounded_by"],
            json!("explicit")
        );
        assert_eq!(explicit(4.0, Some(2)).warnings.len(), 1);
    }

    #[test]
    fn sched_affinity_sees_at_least_one_cpu() {
        assert!(sched_affinity().is_some_and(|n| n >= 1));
    }
}
