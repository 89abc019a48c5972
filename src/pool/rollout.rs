//! Replacing workers one slot at a time (a SIGHUP reload, a worker over the memory cap) and
//! changing the pool's size.
//!
//! A replacement is one step: a successor starts on the slot's own sockets while the old worker
//! serves (`Replacing`); once the successor is ready it takes the slot and the old worker leaves
//! with the stop signal; the next step starts when the old worker's whole process group is gone.
//! So a reload never runs more than one extra worker. A successor that fails before it is ready
//! abandons the whole rollout: the old workers keep serving.

use std::collections::VecDeque;
use std::time::Instant;

use super::{
    new_slot, Effect, ExitReason, Pool, Replace, Report, ScaleWhy, SlotState, Stop, StopStage,
    StopWhy, MAX_WORKERS,
};

/// How long a removed slot's worker keeps serving, out of steering, before its stop signal: the
/// connections already queued on its socket are accepted first.
pub(crate) const DRAIN_BEFORE_STOP: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Debug, Default)]
pub(super) struct Rollout {
    queue: VecDeque<(u32, Replace)>,
    current: Option<Step>,
    /// The generation a reload is rolling out, until its last step is done.
    reload: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    slot: u32,
    /// The worker being replaced; the step is done when its process group is gone.
    old: i32,
}

impl Rollout {
    /// The process (group) `pid` is gone: if it was the step's old worker, the step is done.
    pub(super) fn step_done(&mut self, pid: i32) {
        if self.current.is_some_and(|s| s.old == pid) {
            self.current = None;
        }
    }

    fn involves(&self, slot: u32) -> bool {
        self.current.is_some_and(|s| s.slot == slot) || self.queue.iter().any(|(s, _)| *s == slot)
    }
}

impl Pool {
    /// SIGHUP (or `ctl reload`): a new generation, every slot replaced in turn.
    pub(super) fn reload(&mut self, _now: Instant) {
        if self.stopping() {
            return;
        }
        self.generation += 1;
        self.version += 1;
        self.rollout.reload = Some(self.generation);
        self.report(Report::ReloadBegun {
            generation: self.generation,
        });
        for i in 0..self.slots.len() {
            let id = self.slots[i].id;
            if !self.rollout.queue.iter().any(|(s, _)| *s == id) {
                self.rollout.queue.push_back((id, Replace::Reload));
            }
        }
    }

    /// Starts the next replacement once the previous one is done. A reload is complete only
    /// when every worker runs its generation: a slot whose worker of an older generation is
    /// still starting waits in the queue until it serves (then it is replaced), and a slot that
    /// is down gets the new generation with its next start.
    pub(super) fn advance_rollout(&mut self, now: Instant) {
        if self.rollout.current.is_some() {
            return;
        }
        let mut later = VecDeque::new();
        while let Some((id, why)) = self.rollout.queue.pop_front() {
            let Some(i) = self.slot_index(id) else {
                continue;
            };
            let stale = |w: &super::Worker| match why {
                Replace::MemoryCap => true,
                Replace::Reload => self.rollout.reload.is_some_and(|g| w.generation < g),
            };
            match &self.slots[i].state {
                SlotState::Serving(w) if stale(w) => {}
                SlotState::Starting(w) if self.rollout.reload.is_some_and(|g| w.generation < g) => {
                    later.push_back((id, Replace::Reload));
                    continue;
                }
                _ => continue,
            }
            let SlotState::Serving(old) = self.take_state(i) else {
                unreachable!("checked above");
            };
            self.rollout.current = Some(Step {
                slot: id,
                old: old.pid,
            });
            self.report(Report::Replacing {
                slot: id,
                pid: old.pid,
                why,
            });
            self.set_state(
                i,
                SlotState::Replacing {
                    old,
                    new: None,
                    why,
                },
            );
            self.launch(i, now);
            break;
        }
        // What still waits goes first, in its order.
        while let Some(item) = later.pop_back() {
            self.rollout.queue.push_front(item);
        }
        if self.rollout.current.is_none() && self.rollout.queue.is_empty() {
            if let Some(generation) = self.rollout.reload.take() {
                self.report(Report::ReloadComplete { generation });
            }
        }
    }

    /// A worker of the generation being rolled out failed (before it took over, or right
    /// after, with `--ready started`): a broken release must not reach the other slots.
    pub(super) fn new_generation_failed(&mut self, generation: u64, slot: u32, reason: ExitReason) {
        if self.rollout.reload == Some(generation) {
            // The step's old worker may still be leaving: the next step waits for it.
            let step = self.rollout.current;
            self.abandon_rollout(slot, reason);
            self.rollout.current = step;
        }
    }

    /// The successor on `slot` failed before it took over: the old workers keep serving and
    /// the rest of the rollout is dropped.
    pub(super) fn abandon_rollout(&mut self, slot: u32, reason: ExitReason) {
        let reload = self.rollout.reload.is_some();
        self.rollout = Rollout::default();
        // A memory-cap replacement that failed is told by the successor's own exit line.
        if reload {
            self.report(Report::ReloadAbandoned { slot, reason });
        }
    }

    /// Asks for the memory of every serving worker that is not already being replaced.
    pub(super) fn check_memory(&mut self, now: Instant) {
        let Some((_, every)) = self.s.memory_cap else {
            return;
        };
        self.next_memory_check = Some(now + every);
        let pids: Vec<i32> = self
            .slots
            .iter()
            .filter(|s| !self.rollout.involves(s.id))
            .filter_map(|s| match &s.state {
                SlotState::Serving(w) => Some(w.pid),
                _ => None,
            })
            .collect();
        if !pids.is_empty() {
            self.out.push(Effect::MeasureMemory(pids));
        }
    }

    /// Workers over the cap are queued for replacement, like one slot of a reload.
    pub(super) fn memory_measured(&mut self, used: &[(i32, u64)], _now: Instant) {
        let Some((cap, _)) = self.s.memory_cap else {
            return;
        };
        for &(pid, bytes) in used {
            let serving = self.slots.iter().find_map(|s| match &s.state {
                SlotState::Serving(w) if w.pid == pid => Some(w.slot),
                _ => None,
            });
            let Some(slot) = serving else {
                continue;
            };
            if bytes > cap && !self.rollout.involves(slot) {
                self.report(Report::OverMemory {
                    slot,
                    pid,
                    used: bytes,
                    cap,
                });
                self.rollout.queue.push_back((slot, Replace::MemoryCap));
            }
        }
    }

    /// Grows or shrinks the pool to `to` slots: new slots start at once; removed ones (the
    /// highest first) leave gracefully and their sockets are closed.
    pub(super) fn scale_to(&mut self, to: u32, why: ScaleWhy, now: Instant) {
        self.scale(to, why, None, now);
    }

    /// A new budget: `max` is applied once two reads in a row agree on it (a budget that flaps
    /// around a rounding edge never churns workers). A manual scale stays until the budget
    /// changes again: only a change of the budget's own `max` resizes the pool.
    pub(super) fn budget_read(&mut self, max: u32, detail: String, now: Instant) {
        if max == self.budget_max {
            self.budget_seen = None;
            return;
        }
        if self.budget_seen != Some(max) {
            self.budget_seen = Some(max);
            return;
        }
        self.budget_seen = None;
        self.budget_max = max;
        self.scale(max, ScaleWhy::Budget, Some(detail), now);
    }

    fn scale(&mut self, to: u32, why: ScaleWhy, detail: Option<String>, now: Instant) {
        let from = self.slots.len() as u32;
        let refuse = if self.stopping() {
            Some("the pool is stopping")
        } else if to < 1 {
            Some("the pool keeps at least 1 worker")
        } else if to > MAX_WORKERS {
            Some("the pool has at most 1024 workers")
        } else {
            None
        };
        if let Some(reason) = refuse {
            return self.report(Report::ScaleRefused { why, reason });
        }
        if to == from {
            return;
        }
        let mut lives = Vec::new();
        for id in from..to {
            self.slots.push(new_slot(&self.s, id, now));
        }
        while self.slots.len() as u32 > to {
            let Some(slot) = self.slots.pop() else {
                break;
            };
            let id = slot.id;
            self.rollout.queue.retain(|(s, _)| *s != id);
            if self.rollout.current.is_some_and(|s| s.slot == id) {
                self.rollout.current = None;
            }
            for w in slot.state.workers() {
                lives.push(w.pid);
            }
            let workers: Vec<_> = match slot.state {
                SlotState::Starting(w) | SlotState::Serving(w) => vec![w],
                SlotState::Replacing { old, new, .. } => std::iter::once(old).chain(new).collect(),
                SlotState::Stopping(w, stop) => {
                    // Already on its way out: it keeps its deadline.
                    self.leaving.push((w, stop));
                    vec![]
                }
                SlotState::Waiting { .. } | SlotState::Launching | SlotState::Ended => vec![],
            };
            for w in workers {
                // Out of steering at once; the stop signal once what reached it is taken.
                self.leaving.push((
                    w,
                    Stop {
                        why: StopWhy::ScaledDown,
                        stage: StopStage::Draining {
                            signal_at: now + DRAIN_BEFORE_STOP,
                        },
                    },
                ));
            }
            self.out.push(Effect::CloseSlot(id));
        }
        self.version += 1;
        self.report(Report::Scaled {
            from,
            to,
            why,
            lives,
            detail,
        });
    }
}
