//! Memory as the kernel accounts it: a worker's PSS including its descendants (for
//! `--max-worker-memory`), and the cgroup's OOM-kill counter (to name OOM deaths as such).
//! Also the process tree itself (who is whose parent), which `notify` walks too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::cpu::{self, CgroupVersion};

/// parent pid -> child pids, for every process visible in `/proc`.
pub fn process_tree(proc_root: &Path) -> HashMap<i32, Vec<i32>> {
    let mut tree: HashMap<i32, Vec<i32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return tree;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(ppid) = parent_pid(proc_root, pid) {
            tree.entry(ppid).or_default().push(pid);
        }
    }
    tree
}

/// The ppid from `/proc/PID/stat`. The command name (field 2) is in parentheses and may itself
/// contain spaces, parentheses and bytes that are not UTF-8, so we parse from the last `)`.
pub fn parent_pid(proc_root: &Path, pid: i32) -> Option<i32> {
    let stat = std::fs::read(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    // After the name: state, then ppid.
    let mut fields = rest.split_ascii_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// `root` and all its descendants, found through each thread's `children` file, so that only
/// the worker's own tree is read, not every process on the host. Falls back to a scan of
/// `/proc` where the kernel has no `children` files.
pub fn tree_of(proc_root: &Path, root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        // pid reuse cannot form a cycle in one walk, but a bound costs nothing.
        if out.len() > 100_000 {
            break;
        }
        out.push(pid);
        let Ok(tasks) = std::fs::read_dir(proc_root.join(pid.to_string()).join("task")) else {
            continue;
        };
        let mut any_children_file = false;
        for task in tasks.flatten() {
            if let Ok(kids) = std::fs::read_to_string(task.path().join("children")) {
                any_children_file = true;
                stack.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<i32>().ok()),
                );
            }
        }
        if !any_children_file {
            let tree = process_tree(proc_root);
            let mut rest = Vec::new();
            let mut todo = vec![root];
            while let Some(p) = todo.pop() {
                rest.push(p);
                todo.extend(tree.get(&p).into_iter().flatten());
            }
            return rest;
        }
    }
    out
}

/// Bytes of `pids`: PSS where the kernel has `smaps_rollup`, RSS otherwise.
pub fn bytes_of(proc_root: &Path, pids: &[i32]) -> u64 {
    pids.iter()
        .map(|&p| process_bytes(proc_root, p).unwrap_or(0))
        .sum()
}

/// Measures workers' memory on a thread of its own: reading `smaps_rollup` takes the target's
/// memory-map lock, and a process in the middle of a huge `mmap` could hold PID 1 up otherwise.
pub struct Meter {
    requests: std::sync::mpsc::Sender<Vec<i32>>,
}

impl Meter {
    /// Starts the thread; None when no thread can be made (a tight pids limit): the caller
    /// tries again at the next check.
    pub fn start(results: tokio::sync::mpsc::UnboundedSender<Vec<(i32, u64)>>) -> Option<Meter> {
        let (requests, rx) = std::sync::mpsc::channel::<Vec<i32>>();
        std::thread::Builder::new()
            .name("memory".into())
            .spawn(move || {
                let proc_root = Path::new("/proc");
                while let Ok(pids) = rx.recv() {
                    let used = pids
                        .into_iter()
                        .map(|p| (p, bytes_of(proc_root, &tree_of(proc_root, p))))
                        .collect();
                    if results.send(used).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(Meter { requests })
    }

    /// Asks for these workers' memory (with their descendants); the answer comes on the channel.
    pub fn request(&self, pids: Vec<i32>) {
        let _ = self.requests.send(pids);
    }
}

/// Bytes of memory of `root` and all its descendants: PSS where the kernel has
/// `smaps_rollup` (shared pages are split between sharers, so a prefork server's copy-on-write
/// pages are not counted once per process), RSS otherwise.
pub fn tree_bytes(proc_root: &Path, tree: &HashMap<i32, Vec<i32>>, root: i32) -> u64 {
    let mut total = 0;
    let mut stack = vec![root];
    let mut seen = 0usize;
    while let Some(pid) = stack.pop() {
        // pid reuse cannot form a cycle in one snapshot, but a bound costs nothing.
        seen += 1;
        if seen > 100_000 {
            break;
        }
        total += process_bytes(proc_root, pid).unwrap_or(0);
        if let Some(kids) = tree.get(&pid) {
            stack.extend(kids);
        }
    }
    total
}

fn process_bytes(proc_root: &Path, pid: i32) -> Option<u64> {
    let dir = proc_root.join(pid.to_string());
    if let Ok(rollup) = std::fs::read_to_string(dir.join("smaps_rollup")) {
        if let Some(kb) = field_kb(&rollup, "Pss:") {
            return Some(kb * 1024);
        }
    }
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    field_kb(&status, "VmRSS:").map(|kb| kb * 1024)
}

fn field_kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Where our memory cgroup's OOM-kill counter lives, if we can find it: v1 `memory.oom_control`
/// of the memory hierarchy, else v2 `memory.events`. The cgroup is located as the CPU quota is
/// (mount roots translated, so it is also found inside containers).
pub fn oom_counter_file(root: &Path) -> Option<PathBuf> {
    let v1 =
        cpu::cgroup_dir(root, CgroupVersion::V1, "memory").map(|d| d.join("memory.oom_control"));
    let v2 = cpu::cgroup_dir(root, CgroupVersion::V2, "").map(|d| d.join("memory.events"));
    [v1, v2].into_iter().flatten().find(|f| f.exists())
}

/// The `oom_kill` count in `memory.events` (v2) or `memory.oom_control` (v1).
pub fn oom_kills(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))?
        .trim()
        .parse()
        .ok()
}

/// The tightest memory limit over this process's cgroup and its ancestors, and the file that
/// set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u64,
    pub file: PathBuf,
}

/// The files a memory limit can be in, found once (as the CPU quota's are, mount roots
/// translated): v2 `memory.max` and v1 `memory.limit_in_bytes` of the cgroup and every ancestor.
pub fn limit_files(root: &Path) -> Vec<PathBuf> {
    let v2 = cpu::cgroup_dirs(root, CgroupVersion::V2, "")
        .into_iter()
        .map(|d| d.join("memory.max"));
    let v1 = cpu::cgroup_dirs(root, CgroupVersion::V1, "memory")
        .into_iter()
        .map(|d| d.join("memory.limit_in_bytes"));
    v2.chain(v1).filter(|f| f.exists()).collect()
}

/// Reads `files`: the tightest limit, None when none is set. A file that cannot be read or
/// parsed is an error naming it (the caller keeps what it had).
pub fn read_limit(files: &[PathBuf]) -> Result<Option<Limit>, String> {
    // v1 spells "no limit" as the largest page-aligned i64; anything this big is no limit.
    const UNLIMITED: u64 = 1 << 62;
    let mut best: Option<Limit> = None;
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
        let text = text.trim();
        if text == "max" {
            continue;
        }
        let bytes: u64 = text
            .parse()
            .map_err(|_| format!("{}: malformed limit {text:?}", file.display()))?;
        if bytes >= UNLIMITED {
            continue;
        }
        if best.as_ref().is_none_or(|b| bytes < b.bytes) {
            best = Some(Limit {
                bytes,
                file: file.clone(),
            });
        }
    }
    Ok(best)
}

/// With cgroup v2 `memory.oom.group` = 1, one OOM kill takes the whole container down, which
/// defeats restarting just the worker that grew: worth a warning at start.
pub fn oom_group_enabled(root: &Path) -> Option<PathBuf> {
    let file = cpu::cgroup_dir(root, CgroupVersion::V2, "")?.join("memory.oom.group");
    std::fs::read_to_string(&file)
        .is_ok_and(|v| v.trim() == "1")
        .then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_tree_including_descendants() {
        let root = Path::new("/proc");
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let tree = process_tree(root);
        assert!(tree
            .get(&me)
            .is_some_and(|k| k.contains(&(child.id() as i32))));
        let alone = process_bytes(root, me).unwrap();
        let with_child = tree_bytes(root, &tree, me);
        assert!(with_child > alone, "{with_child} <= {alone}");
        let walked = tree_of(root, me);
        assert!(walked.contains(&me) && walked.contains(&(child.id() as i32)));
        assert!(bytes_of(root, &walked) > alone);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A fixture root with `mountinfo` and `cgroup` as /proc/self shows them.
    fn fixture(mountinfo: &str, cgroup: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/self")).unwrap();
        std::fs::write(dir.path().join("proc/self/mountinfo"), mountinfo).unwrap();
        std::fs::write(dir.path().join("proc/self/cgroup"), cgroup).unwrap();
        dir
    }

    fn write(root: &Path, file: &str, text: &str) {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn the_tightest_memory_limit_over_the_ancestors_wins() {
        let dir = fixture(
            "41 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n",
            "0::/pod/app\n",
        );
        let r = dir.path();
        write(r, "sys/fs/cgroup/pod/memory.max", "419430400\n");
        write(r, "sys/fs/cgroup/pod/app/memory.max", "max\n");
        let files = limit_files(r);
        assert_eq!(files.len(), 2, "{files:?}");
        let limit = read_limit(&files).unwrap().expect("a limit");
        assert_eq!(limit.bytes, 400 << 20);
        assert!(limit.file.ends_with("pod/memory.max"));
        write(r, "sys/fs/cgroup/pod/memory.max", "max\n");
        assert_eq!(read_limit(&files), Ok(None));
        write(r, "sys/fs/cgroup/pod/memory.max", "lots\n");
        assert!(read_limit(&files).unwrap_err().contains("malformed"));
    }

    #[test]
    fn reads_oom_counters_and_oom_group_of_a_v2_cgroup() {
        let dir = fixture(
            "41 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n",
            "0::/pod\n",
        );
        let r = dir.path();
        write(
            r,
            "sys/fs/cgroup/pod/memory.events",
            "low 0\noom 2\noom_kill 3\n",
        );
        write(r, "sys/fs/cgroup/pod/memory.oom.group", "1\n");
        let f = oom_counter_file(r).expect("found");
        assert_eq!(oom_kills(&f), Some(3));
        assert!(oom_group_enabled(r).is_some());
    }

    #[test]
    fn finds_the_v1_memory_cgroup_of_a_container_through_its_mount_root() {
        // Docker on a v1 host: /proc/self/cgroup names the host's path, and the memory hierarchy
        // is mounted from that path, so the counter is at the mount point itself.
        let dir = fixture(
            "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n",
            "4:memory:/docker/abc\n",
        );
        let r = dir.path();
        write(
            r,
            "sys/fs/cgroup/memory/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
        );
        let f = oom_counter_file(r).expect("found");
        assert_eq!(oom_kills(&f), Some(5));
        assert!(oom_group_enabled(r).is_none());
    }
}
