//! Reconnect delays: exponential backoff with jitter.
//!
//! Attempt `n` waits a uniform time in `[min, min(max, min * 2^n)]`: the ceiling doubles
//! per failed attempt up to `max`, and the jitter spreads a fleet that lost Redis at the
//! same moment over the whole range, so it does not come back in step. The random
//! numbers are splitmix64 seeded per connection (no crate for a few bits of jitter).

use std::time::Duration;

/// Exponential backoff with jitter: attempt `n` waits uniformly in
/// `[min, min(max, min * 2^n)]`.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// A backoff between `min` and `max`, its jitter seeded by `seed`.
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
            rng: seed,
        }
    }

    /// The next wait (and one more attempt counted).
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.min.saturating_mul(1u32 << self.attempt.min(30)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let span = (cap - self.min).as_nanos() as u64;
        let jitter = if span == 0 { 0 } else { self.next_u64() % (span + 1) };
        self.min + Duration::from_nanos(jitter)
    }

    /// Back to the first attempt (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// splitmix64.
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let (min, max) = (Duration::from_millis(50), Duration::from_secs(5));
        let mut b = Backoff::new(min, max, 42);
        let mut last_cap = Duration::ZERO;
        for n in 0..40u32 {
            let cap = (min * 2u32.saturating_pow(n.min(20))).min(max);
            let d = b.next_delay();
            assert!(d >= min && d <= cap, "attempt {n}: {d:?} not in [{min:?}, {cap:?}]");
            last_cap = cap;
        }
        assert_eq!(last_cap, max);
        // Jitter: many draws at the cap spread over the range, not all the same.
        let draws: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        let (lo, hi) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
        assert!(
            *lo < Duration::from_secs(1) && *hi > Duration::from_secs(4),
            "{lo:?} .. {hi:?}"
        );
        b.reset();
        assert!(b.next_delay() == min, "attempt 0 is the minimum");
        assert!(b.next_delay() <= min * 2);
        // Two seeds, two sequences: a fleet does not retry in step.
        let mut a = Backoff::new(min, max, 1);
        let mut c = Backoff::new(min, max, 2);
        let sa: Vec<_> = (0..10).map(|_| a.next_delay()).collect();
        let sc: Vec<_> = (0..10).map(|_| c.next_delay()).collect();
        assert_ne!(sa, sc);
    }
}
