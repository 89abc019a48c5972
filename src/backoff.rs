//! Restart delays: exponential per slot, capped, with jitter, and forgiven after a healthy life.
//! Each slot owns one `Backoff`, so one slot's crash loop never delays another slot.

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub initial: Duration,
    pub max: Duration,
    /// A life at least this long resets the sequence.
    pub reset_after: Duration,
}

#[derive(Debug)]
pub struct Backoff {
    policy: Policy,
    /// Consecutive short lives.
    failures: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(policy: Policy, seed: u64) -> Backoff {
        Backoff {
            policy,
            failures: 0,
            // xorshift must not start at zero
            rng: seed | 1,
        }
    }

    /// Records a life that lasted `lived` and returns how long to wait before the next one.
    pub fn after_exit(&mut self, lived: Duration) -> Duration {
        if lived >= self.policy.reset_after {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        let exp = self.failures.saturating_sub(1).min(30);
        let base = self
            .policy
            .initial
            .saturating_mul(1u32 << exp)
            .min(self.policy.max);
        // "Equal jitter": somewhere in [base/2, base]. Workers that crash together (a bad deploy,
        // a database restart) then come back spread out instead of stampeding in lockstep, and the
        // delay never drops below half the nominal one, which keeps a crash loop cheap.
        let half = base / 2;
        half + half.mul_f64(self.next_unit())
    }

    /// Consecutive short lives so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    fn next_unit(&mut self) -> f64 {
        // xorshift64: jitter needs spread, not cryptographic quality.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn doubles_within_jitter_and_caps() {
        let mut b = Backoff::new(policy(), 42);
        let short = Duration::from_millis(10);
        let mut nominal = 250u64;
        for _ in 0..12 {
            let d = b.after_exit(short).as_millis() as u64;
            let expected = nominal.min(30_000);
            assert!(
                d >= expected / 2 && d <= expected,
                "{d} not in [{}, {expected}]",
                expected / 2
            );
            nominal *= 2;
        }
        assert_eq!(b.failures(), 12);
    }

    #[test]
    fn healthy_life_resets() {
        let mut b = Backoff::new(policy(), 7);
        for _ in 0..6 {
            b.after_exit(Duration::from_millis(1));
        }
        let d = b.after_exit(Duration::from_secs(31));
        assert_eq!(b.failures(), 1);
        assert!(d <= Duration::from_millis(250));
    }

    #[test]
    fn jitter_varies() {
        let mut b = Backoff::new(policy(), 99);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            b.failures = 4;
            seen.insert(b.after_exit(Duration::ZERO));
        }
        assert!(
            seen.len() > 10,
            "jitter produced only {} values",
            seen.len()
        );
    }
}
