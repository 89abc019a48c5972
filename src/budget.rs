//! What `--workers max` (or `max-K`) means now: the CPU budget ([`crate::cpu`]) rounded to a
//! worker count and, with `--worker-memory`, bounded by the memory limit too, at start and each
//! time the budget is read again while the pool runs (`--budget-interval`).
//!
//! `max` = min(CPU max, floor((memory limit - `--memory-reserve`) / `--worker-memory`)), minus
//! K, never below 1, never above [`MAX_WORKERS`]. The [`Watch`] re-reads only the files found at
//! start (the quota and cpuset files of the cgroup and its ancestors, the memory limit files),
//! so a read costs a few small file reads; a read that finds a file unreadable or malformed is
//! an error, and the pool keeps its size (a budget that vanished is not a budget of 1 host).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::cpu::{self, CpuBudget, Rounding};
use crate::memory;
use crate::pool::MAX_WORKERS;

/// How a budget becomes a worker count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub rounding: Rounding,
    /// The K of `max-K`.
    pub minus: u32,
    /// `--worker-memory`: the memory one worker is expected to use.
    pub worker_memory: Option<u64>,
    /// `--memory-reserve`: memory of the limit kept for everything but the workers.
    pub reserve: u64,
}

/// The worker count a budget allows, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Sizing {
    pub max: u32,
    pub cpu: CpuBudget,
    /// What the CPU budget alone allows (rounded, before `-K`).
    pub cpu_max: u32,
    /// The memory limit, when `--worker-memory` asked for one to be read and one is set.
    pub memory: Option<memory::Limit>,
    /// What the memory alone allows.
    pub memory_max: Option<u32>,
    /// `cpu` or `memory`: which bound won.
    pub bounded_by: &'static str,
}

impl Sizing {
    /// What the budget allows by the rule.
    pub fn of(cpu: CpuBudget, memory: Option<memory::Limit>, rule: Rule) -> Sizing {
        let cpu_max = cpu::workers_for(cpu.budget, rule.rounding, 0).min(MAX_WORKERS);
        let memory_max = match (rule.worker_memory, &memory) {
            (Some(per), Some(limit)) => {
                let usable = limit.bytes.saturating_sub(rule.reserve);
                Some(
                    u32::try_from(usable / per.max(1))
                        .unwrap_or(u32::MAX)
                        .max(1),
                )
            }
            _ => None,
        };
        let (whole, bounded_by) = match memory_max {
            Some(m) if m < cpu_max => (m, "memory"),
            _ => (cpu_max, "cpu"),
        };
        Sizing {
            max: whole.saturating_sub(rule.minus).clamp(1, MAX_WORKERS),
            cpu,
            cpu_max,
            memory,
            memory_max,
            bounded_by,
        }
    }

    /// One line: what the budget is and which bound won, e.g. `cgroup v1 quota 1.50 CPUs
    /// (/sys/fs/cgroup/cpu/cpu.cfs_quota_us), floor; memory 400 MiB / 300 MiB per worker: 1`.
    pub fn explain(&self, rule: Rule) -> String {
        let mut line = self.cpu.explain(rule.rounding);
        if let (Some(limit), Some(per), Some(max)) =
            (&self.memory, rule.worker_memory, self.memory_max)
        {
            let reserve = if rule.reserve > 0 {
                format!(" - {} MiB reserve", rule.reserve >> 20)
            } else {
                String::new()
            };
            line.push_str(&format!(
                "; memory {} MiB ({}){reserve} / {} MiB per worker: {max}",
                limit.bytes >> 20,
                limit.file.display(),
                per >> 20
            ));
        } else if rule.worker_memory.is_some() {
            line.push_str("; no memory limit found");
        }
        if self.bounded_by == "memory" {
            line.push_str("; memory is the tighter bound");
        }
        if rule.minus > 0 {
            line.push_str(&format!("; minus {}", rule.minus));
        }
        line
    }

    /// The `memory` object of `--dry-run`.
    pub fn memory_json(&self, rule: Rule) -> Value {
        json!({
            "worker_memory": rule.worker_memory,
            "reserve": rule.reserve,
            "limit": self.memory.as_ref().map(|l| l.bytes),
            "file": self.memory.as_ref().map(|l| l.file.display().to_string()),
            "max": self.memory_max,
            "bounded_by": self.bounded_by,
        })
    }
}

/// The budget's files, found at start, read again on demand.
pub struct Watch {
    root: PathBuf,
    places: cpu::Places,
    /// `--cpus`: the CPU part is fixed; only the memory bound is read again.
    explicit: Option<f64>,
    memory_files: Vec<PathBuf>,
    rule: Rule,
}

impl Watch {
    /// Finds the files under `root` ("/" in production) and reads the budget once. With
    /// `explicit` (`--cpus`), no CPU limit is read.
    pub fn start(root: &Path, rule: Rule, explicit: Option<f64>) -> (Watch, Sizing) {
        let (places, warnings) = match explicit {
            Some(_) => (cpu::Places::default(), Vec::new()),
            None => cpu::locate(root),
        };
        let memory_files = if rule.worker_memory.is_some() {
            memory::limit_files(root)
        } else {
            Vec::new()
        };
        let cpu = match explicit {
            Some(n) => cpu::explicit(n, cpu::sched_affinity()),
            None => places.measure(root, cpu::sched_affinity(), warnings),
        };
        let mut memory_warning = None;
        let memory = memory::read_limit(&memory_files).unwrap_or_else(|e| {
            memory_warning = Some(e);
            None
        });
        let mut sizing = Sizing::of(cpu, memory, rule);
        sizing.cpu.warnings.extend(memory_warning);
        let watch = Watch {
            root: root.to_path_buf(),
            places,
            explicit,
            memory_files,
            rule,
        };
        (watch, sizing)
    }

    /// Reads the budget again. `Err` names the file that could not be read as it was at start.
    pub fn read(&self) -> Result<Sizing, String> {
        let cpu = match self.explicit {
            Some(n) => cpu::explicit(n, cpu::sched_affinity()),
            None => self
                .places
                .measure(&self.root, cpu::sched_affinity(), Vec::new()),
        };
        if let Some(w) = cpu.warnings.first().filter(|_| self.explicit.is_none()) {
            return Err(w.clone());
        }
        let memory = memory::read_limit(&self.memory_files)?;
        Ok(Sizing::of(cpu, memory, self.rule))
    }

    pub fn rule(&self) -> Rule {
        self.rule
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(n: f64) -> CpuBudget {
        cpu::explicit(n, Some(8))
    }

    fn limit(mib: u64) -> Option<memory::Limit> {
        Some(memory::Limit {
            bytes: mib << 20,
            file: "/sys/fs/cgroup/memory.max".into(),
        })
    }

    const RULE: Rule = Rule {
        rounding: Rounding::Floor,
        minus: 0,
        worker_memory: Some(300 << 20),
        reserve: 0,
    };

    #[test]
    fn memory_bounds_max_when_it_is_tighter() {
        let s = Sizing::of(cpus(2.0), limit(400), RULE);
        assert_eq!((s.max, s.bounded_by, s.memory_max), (1, "memory", Some(1)));
        assert!(
            s.explain(RULE).contains("memory 400 MiB"),
            "{}",
            s.explain(RULE)
        );
        let s = Sizing::of(cpus(2.0), limit(700), RULE);
        assert_eq!((s.max, s.bounded_by), (2, "cpu"));
        let s = Sizing::of(cpus(4.0), limit(700), RULE);
        assert_eq!((s.max, s.bounded_by), (2, "memory"));
    }

    #[test]
    fn the_reserve_minus_k_and_the_floors_apply() {
        let rule = Rule {
            reserve: 200 << 20,
            ..RULE
        };
        assert_eq!(Sizing::of(cpus(8.0), limit(1000), rule).max, 2);
        // Never below 1, even when a worker does not fit at all.
        assert_eq!(Sizing::of(cpus(8.0), limit(100), rule).max, 1);
        let rule = Rule { minus: 1, ..RULE };
        assert_eq!(Sizing::of(cpus(8.0), limit(1000), rule).max, 2);
        assert_eq!(Sizing::of(cpus(1.0), None, rule).max, 1);
        // No memory limit: the CPU alone decides.
        assert_eq!(Sizing::of(cpus(3.0), None, RULE).max, 3);
        assert_eq!(Sizing::of(cpus(5000.0), None, RULE).max, MAX_WORKERS);
    }
}
