//! Exponential backoff with full jitter, for every reconnect loop (the ring stream
//! subscription, the node's bus, the proxy's reset publisher).
//!
//! Each delay is drawn uniformly from `[0, ceiling]`, and the ceiling doubles from `initial` to
//! `max` with every failure ("full jitter" in AWS's *Exponential Backoff and Jitter*). When a
//! shared dependency (the ring hub, RabbitMQ) restarts, every pod that lost it retries at a
//! different moment instead of in lockstep.

use std::time::Duration;

/// A reconnect delay sequence; see the module docs.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The first ceiling, and the ceiling after [`Backoff::reset`].
    initial: Duration,
    /// The largest ceiling.
    max: Duration,
    /// The ceiling of the next delay.
    ceiling: Duration,
}

impl Backoff {
    /// Ceilings `initial`, `2 × initial`, … up to `max` (`initial` is capped at `max`).
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            ceiling: initial,
        }
    }

    /// The next delay: random up to the current ceiling, which then doubles (up to the max).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = ceiling.saturating_mul(2).min(self.max);
        full_jitter(ceiling)
    }

    /// A delay up to the max, and the max from now on: for failures that will not fix
    /// themselves soon (a refused token).
    pub fn max_delay(&mut self) -> Duration {
        self.ceiling = self.max;
        full_jitter(self.max)
    }

    /// Back to the first ceiling, after a success.
    pub fn reset(&mut self) {
        self.ceiling = self.initial;
    }

    /// The ceiling the next delay is drawn under.
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// The largest ceiling.
    pub fn max(&self) -> Duration {
        self.max
    }
}

/// A duration drawn uniformly from `[0, ceiling]`, at nanosecond resolution.
fn full_jitter(ceiling: Duration) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn the_ceiling_doubles_to_the_max_and_resets() {
        let mut backoff = Backoff::new(INITIAL, MAX);
        let mut ceilings = Vec::new();
        for _ in 0..9 {
            ceilings.push(backoff.ceiling());
            let delay = backoff.next_delay();
            assert!(delay <= *ceilings.last().expect("pushed"), "{delay:?}");
        }
        let ms: Vec<u128> = ceilings.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), INITIAL);
        assert!(backoff.next_delay() <= INITIAL);
        assert!(backoff.max_delay() <= MAX);
        assert_eq!(
            backoff.ceiling(),
            MAX,
            "after max_delay the ceiling stays at the max"
        );
    }

    #[test]
    fn delays_spread_over_the_whole_range() {
        // Full jitter: draws land in both halves of [0, ceiling], so peers that failed together
        // do not retry together. With 200 draws, missing a half has probability 2^-199.
        let draws: Vec<Duration> = (0..200).map(|_| full_jitter(MAX)).collect();
        assert!(draws.iter().all(|d| *d <= MAX));
        assert!(draws.iter().any(|d| *d < MAX / 2));
        assert!(draws.iter().any(|d| *d > MAX / 2));
    }

    #[test]
    fn an_initial_above_the_max_is_capped() {
        let backoff = Backoff::new(Duration::from_secs(60), MAX);
        assert_eq!(backoff.ceiling(), MAX);
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
    }
}
