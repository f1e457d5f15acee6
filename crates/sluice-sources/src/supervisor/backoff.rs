//! Reconnect delays. A connection that delivered at least one message and then dropped is no
//! failure: the next attempt comes after a uniformly random time in `[0, initial]`, however
//! often that happens (a provider that cuts every connection after a second must not be
//! answered with ever longer waits while it keeps sending). Only consecutive *failed* attempts
//! back off exponentially with full jitter: the n-th waits a random time in
//! `[0, min(max, initial × 2ⁿ)]`.

use std::time::Duration;

use rand::Rng;

/// The reconnect delay state of one source.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max, attempt: 0 }
    }

    /// The upper bound of the next delay.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).unwrap_or(self.max).min(self.max)
    }

    /// How many failed attempts in a row the next delay follows.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt after a connection ended; `delivered`: it delivered
    /// at least one message (then the failure count starts over).
    pub(crate) fn after(&mut self, delivered: bool) -> Duration {
        self.after_with(delivered, &mut rand::rng())
    }

    pub(crate) fn after_with<R: Rng>(&mut self, delivered: bool, rng: &mut R) -> Duration {
        if delivered {
            self.attempt = 0;
        }
        let ceiling = self.ceiling();
        if !delivered {
            self.attempt = self.attempt.saturating_add(1);
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// Starts the failure count over.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn failures_double_the_ceiling_up_to_the_max_and_delays_stay_below_it() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(3));
        let expected = [100, 200, 400, 800, 1600, 3000, 3000, 3000];
        for ms in expected {
            assert_eq!(b.ceiling(), Duration::from_millis(ms));
            let d = b.after_with(false, &mut rng);
            assert!(d <= Duration::from_millis(ms), "{d:?} > {ms}ms");
        }
        for _ in 0..100 {
            b.after_with(false, &mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(3));
    }

    #[test]
    fn a_connection_that_delivered_is_reconnected_within_the_initial_delay_every_time() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        for _ in 0..5 {
            b.after_with(false, &mut rng);
        }
        assert_eq!(b.attempt(), 5);
        // Cut after a second of data, a thousand times in a row: never more than 250 ms.
        for _ in 0..1000 {
            assert!(b.after_with(true, &mut rng) <= Duration::from_millis(250));
        }
        assert_eq!(b.attempt(), 0);
        // The next failure starts from the bottom again.
        assert_eq!(b.ceiling(), Duration::from_millis(250));
        b.after_with(false, &mut rng);
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut low = 0;
        let mut high = 0;
        for _ in 0..1000 {
            let mut b = Backoff::new(Duration::from_millis(1000), Duration::from_secs(1));
            let d = b.after_with(false, &mut rng);
            if d < Duration::from_millis(250) {
                low += 1;
            }
            if d > Duration::from_millis(750) {
                high += 1;
            }
        }
        assert!(low > 150 && high > 150, "low {low} high {high}");
    }
}
