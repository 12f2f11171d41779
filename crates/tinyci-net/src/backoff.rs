//! Waiting between reconnects: exponential, capped, and jittered, so a thousand runners
//! that lost the same site at the same instant do not come back at the same instant.

use std::hash::{BuildHasher as _, Hasher as _};
use std::time::Duration;

/// Exponential backoff with "equal jitter": each wait is a random point in the upper half of
/// the current step (never zero, never above the cap), and the step doubles up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    step: Duration,
    /// xorshift64 state; never zero.
    random: u64,
}

impl Backoff {
    /// Starts at `base`, doubling to at most `max`, seeded from the process's random hasher
    /// keys (distinct per process and per call).
    pub fn new(base: Duration, max: Duration) -> Self {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self::with_seed(base, max, seed)
    }

    /// As [`Backoff::new`], from a given seed (tests).
    pub fn with_seed(base: Duration, max: Duration, seed: u64) -> Self {
        let base = base.max(Duration::from_millis(1));
        Self {
            base,
            max: max.max(base),
            step: base,
            random: seed | 1,
        }
    }

    /// How long to wait before the next attempt; the attempt after waits about twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let spread = u64::try_from((step - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(self.next_random() % spread.max(1))
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.base;
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_and_stay_in_the_upper_half_of_each_step() {
        let (base, max) = (Duration::from_millis(200), Duration::from_secs(5));
        let mut backoff = Backoff::with_seed(base, max, 42);
        let mut step = base;
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} for step {step:?}"
            );
            step = (step * 2).min(max);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= base);
    }

    #[test]
    fn runners_that_lost_the_same_site_spread_out() {
        let (base, max) = (Duration::from_millis(200), Duration::from_secs(30));
        // A thousand agents at the same (capped) step: their waits are not one instant.
        let waits: std::collections::BTreeSet<Duration> = (0..1000u64)
            .map(|agent| {
                let mut backoff = Backoff::with_seed(base, max, agent.wrapping_mul(0x9E37_79B9));
                for _ in 0..10 {
                    backoff.next_delay();
                }
                backoff.next_delay()
            })
            .collect();
        assert!(waits.len() > 900, "only {} distinct waits", waits.len());
        assert!(waits.iter().all(|w| *w >= max / 2 && *w <= max));
    }

    #[test]
    fn two_fresh_backoffs_are_seeded_differently() {
        let base = Duration::from_secs(10);
        let draws = |mut b: Backoff| (0..8).map(|_| b.next_delay()).collect::<Vec<_>>();
        assert_ne!(
            draws(Backoff::new(base, base)),
            draws(Backoff::new(base, base))
        );
    }
}
