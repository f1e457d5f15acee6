//! Exponential backoff with full jitter: the n-th consecutive failed attempt waits a uniformly
//! random time in `[0, min(max, initial × 2ⁿ)]`. A connection that stayed up for
//! `reset_after` starts the sequence over.

use std::time::Duration;

use rand::Rng;

/// The reconnect delay state of one source.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration, reset_after: Duration) -> Backoff {
        Backoff { initial, max, reset_after, attempt: 0 }
    }

    /// The upper bound of the next delay.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).unwrap_or(self.max).min(self.max)
    }

    /// How many delays have been handed out since the last reset.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The next delay (and one step further for the one after).
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    pub(crate) fn next_delay_with<R: Rng>(&mut self, rng: &mut R) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// A connection ended after being up for `up_for` (`None`: it never came up). A healthy one
    /// (up at least `reset_after`) resets the sequence.
    pub(crate) fn connection_ended(&mut self, up_for: Option<Duration>) {
        if up_for.is_some_and(|d| d >= self.reset_after) {
            self.reset();
        }
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ceilings_double_up_to_the_max_and_delays_stay_below_them() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(3), Duration::from_secs(10));
        let expected = [100, 200, 400, 800, 1600, 3000, 3000, 3000];
        for ms in expected {
            assert_eq!(b.ceiling(), Duration::from_millis(ms));
            let d = b.next_delay_with(&mut rng);
            assert!(d <= Duration::from_millis(ms), "{d:?} > {ms}ms");
        }
        for _ in 0..100 {
            b.next_delay_with(&mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(3));
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut low = 0;
        let mut high = 0;
        for _ in 0..1000 {
            let mut b = Backoff::new(Duration::from_millis(1000), Duration::from_secs(1), Duration::from_secs(1));
            let d = b.next_delay_with(&mut rng);
            if d < Duration::from_millis(250) {
                low += 1;
            }
            if d > Duration::from_millis(750) {
                high += 1;
            }
        }
        assert!(low > 150 && high > 150, "low {low} high {high}");
    }

    #[test]
    fn only_a_healthy_connection_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30), Duration::from_secs(10));
        for _ in 0..5 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_millis(3200));
        b.connection_ended(None);
        b.connection_ended(Some(Duration::from_secs(9)));
        assert_eq!(b.attempt(), 5);
        b.connection_ended(Some(Duration::from_secs(10)));
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
