//! The adaptive reset rate, as pure decisions: a [`Controller`] fed with what the owners did
//! with the upgrades this proxy routed ([`Window`]) and the time, answering the rate to reset
//! at. No clock, no lock, no I/O: the pacer in [`super`] gathers the observations
//! ([`UpgradeTally`]) and drives it.
//!
//! The rule is multiplicative increase, multiplicative decrease. Over each window of
//! [`WINDOW`], the member with the worst upgrades decides: any refusal, or a p99 latency above
//! the target, halves the rate; a window where every member stayed under the target raises it
//! by half, up to the cap (`resets.ratePerSecond`). A window without upgrades holds the rate:
//! no evidence either way. Each proxy runs its own controller; proxies resetting towards the
//! same new owner all see its latency rise and all back off, with no shared store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the rate is reconsidered. Short against the 2 s a scale event may take, long
/// enough to see a few dozen upgrades at the start rate.
pub const WINDOW: Duration = Duration::from_millis(100);
/// The factor a good window raises the rate by: from 1,000/s to the 5,000/s default cap in
/// four windows (0.4 s).
pub const INCREASE: f64 = 1.5;
/// The factor a bad window lowers the rate by (TCP's halving: two bad windows undo more than
/// three good ones).
pub const DECREASE: f64 = 0.5;
/// The share of a member's upgrades allowed over the latency target (the 99th percentile).
pub const SLOW_SHARE: f64 = 0.01;
/// Latency samples kept per member per window; beyond it only refusals are counted (the
/// sample already says whether the window is slow).
pub const MAX_SAMPLES: usize = 4096;

/// What the controller needs from `resets` (the config in use at each decision).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// The rate a wave of resets starts at, per second.
    pub start: f64,
    /// The lowest rate a backing-off controller goes to, per second: resets keep moving
    /// while the new owner recovers (the cap wins when it is lower).
    pub floor: f64,
    /// The most per second (`ratePerSecond`).
    pub cap: f64,
    /// The p99 upgrade latency above which the rate goes down.
    pub target: Duration,
}

/// What one member did with this proxy's upgrades over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberWindow {
    /// Upgrade latencies (connect to 101), microseconds; at most [`MAX_SAMPLES`].
    pub latencies_us: Vec<u32>,
    /// Upgrades refused: 5xx, 429, 421, or no answer at all.
    pub refused: u32,
}

/// A window's verdict, from its worst member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No upgrade was seen.
    Quiet,
    /// Every member answered under the target and refused none.
    Good,
    /// Some member refused an upgrade or was slow at the 99th percentile.
    Bad,
}

/// Judges a window: the worst member decides.
pub fn judge(window: &mut HashMap<Arc<str>, MemberWindow>, target: Duration) -> Verdict {
    let mut verdict = Verdict::Quiet;
    for member in window.values_mut() {
        if member.refused > 0 || p99_us(&mut member.latencies_us) > target.as_micros() {
            return Verdict::Bad;
        }
        if !member.latencies_us.is_empty() {
            verdict = Verdict::Good;
        }
    }
    verdict
}

/// The 99th percentile of `samples` (nearest rank; 0 for none). Reorders them.
pub fn p99_us(samples: &mut [u32]) -> u128 {
    if samples.is_empty() {
        return 0;
    }
    // Nearest rank: the value with at most 1 % of the samples above it.
    let above = (samples.len() as f64 * SLOW_SHARE).floor() as usize;
    let rank = samples.len() - 1 - above.min(samples.len() - 1);
    let (_, value, _) = samples.select_nth_unstable(rank);
    u128::from(*value)
}

/// The adaptive rate of one proxy.
#[derive(Debug, Clone)]
pub struct Controller {
    /// Resets per second now; `None` between waves (the next starts at `Settings::start`).
    rate: Option<f64>,
    /// When the current window began.
    window_start: Option<Instant>,
}

impl Default for Controller {
    fn default() -> Self {
        Controller::new()
    }
}

impl Controller {
    /// A controller between waves.
    pub fn new() -> Self {
        Controller {
            rate: None,
            window_start: None,
        }
    }

    /// The rate to reset at `now`. When a window has passed since the last decision,
    /// `window` is asked for what it saw (and should forget it) and the rate moves.
    pub fn rate(
        &mut self,
        now: Instant,
        settings: Settings,
        window: impl FnOnce() -> Verdict,
    ) -> f64 {
        let floor = settings.floor.min(settings.cap);
        let current = self
            .rate
            .unwrap_or(settings.start)
            .clamp(floor, settings.cap);
        let start = *self.window_start.get_or_insert(now);
        let next = if now.saturating_duration_since(start) >= WINDOW {
            self.window_start = Some(now);
            match window() {
                Verdict::Quiet => current,
                Verdict::Good => (current * INCREASE).min(settings.cap),
                Verdict::Bad => (current * DECREASE).max(floor),
            }
        } else {
            current
        };
        self.rate = Some(next);
        next
    }

    /// The queue ran dry: the wave is over, and the next starts again at the start rate (the
    /// owners it goes to may be others, in another state).
    pub fn idle(&mut self) {
        self.rate = None;
        self.window_start = None;
    }
}

/// The upper bound of a reset's `retryAfterMs` in adaptive mode: the time the `queued` resets
/// still waiting take at `rate`, at most `jitter_ms`. The clients reset first wait longest,
/// so every client of a wave is back about when its last reset goes out, spread over that time.
pub fn retry_bound_ms(jitter_ms: u64, queued: usize, rate: f64) -> u64 {
    let drain_ms = (queued as f64 * 1000.0 / rate.max(1.0)).ceil();
    // `as` saturates; the bound is at most `jitter_ms` anyway.
    (drain_ms as u64).min(jitter_ms)
}

/// The upgrades of the current window, by member, as the connection tasks report them.
#[derive(Debug, Default)]
pub struct UpgradeTally {
    members: HashMap<Arc<str>, MemberWindow>,
}

impl UpgradeTally {
    /// Notes an upgrade `member` switched after `latency`, or refused (`refused`).
    pub fn note(&mut self, member: &Arc<str>, latency: Duration, refused: bool) {
        let entry = self.members.entry(Arc::clone(member)).or_default();
        if refused {
            entry.refused = entry.refused.saturating_add(1);
        } else if entry.latencies_us.len() < MAX_SAMPLES {
            let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
            entry.latencies_us.push(us);
        }
    }

    /// The window so far, leaving an empty one.
    pub fn take(&mut self) -> HashMap<Arc<str>, MemberWindow> {
        std::mem::take(&mut self.members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Settings = Settings {
        start: 1000.0,
        floor: 100.0,
        cap: 5000.0,
        target: Duration::from_millis(50),
    };

    fn window(samples_ms: &[u64], refused: u32) -> HashMap<Arc<str>, MemberWindow> {
        let mut tally = UpgradeTally::default();
        let member: Arc<str> = Arc::from("n-3");
        for ms in samples_ms {
            tally.note(&member, Duration::from_millis(*ms), false);
        }
        for _ in 0..refused {
            tally.note(&member, Duration::ZERO, true);
        }
        tally.take()
    }

    /// Feeds `verdicts`, one per window, and answers the rate after each.
    fn run(verdicts: &[Verdict], settings: Settings) -> Vec<f64> {
        let t0 = Instant::now();
        let mut c = Controller::new();
        let first = c.rate(t0, settings, || panic!("no window yet"));
        assert_eq!(first, settings.start.min(settings.cap));
        verdicts
            .iter()
            .enumerate()
            .map(|(i, v)| c.rate(t0 + WINDOW * (i as u32 + 1), settings, || *v))
            .collect()
    }

    #[test]
    fn good_windows_raise_the_rate_by_half_up_to_the_cap() {
        let rates = run(&[Verdict::Good; 6], SETTINGS);
        assert_eq!(rates, [1500.0, 2250.0, 3375.0, 5000.0, 5000.0, 5000.0]);
    }

    #[test]
    fn a_bad_window_halves_the_rate_down_to_the_floor_and_quiet_ones_hold_it() {
        let mut verdicts = vec![Verdict::Good, Verdict::Bad, Verdict::Quiet];
        verdicts.extend([Verdict::Bad; 10]);
        let rates = run(&verdicts, SETTINGS);
        assert_eq!(&rates[..4], [1500.0, 750.0, 750.0, 375.0]);
        assert_eq!(rates[rates.len() - 1], SETTINGS.floor);
    }

    #[test]
    fn the_cap_bounds_the_start_and_the_floor() {
        let low = Settings {
            cap: 5.0,
            ..SETTINGS
        };
        assert_eq!(run(&[Verdict::Good, Verdict::Bad], low), [5.0, 5.0]);
        // A cap lowered mid-wave (a config reload) applies at the next decision.
        let t0 = Instant::now();
        let mut c = Controller::new();
        c.rate(t0, SETTINGS, || Verdict::Quiet);
        assert_eq!(c.rate(t0, low, || Verdict::Quiet), 5.0);
    }

    #[test]
    fn the_rate_moves_once_per_window_and_a_new_wave_starts_over() {
        let t0 = Instant::now();
        let mut c = Controller::new();
        c.rate(t0, SETTINGS, || Verdict::Good);
        let asked = std::cell::Cell::new(0);
        let good = || {
            asked.set(asked.get() + 1);
            Verdict::Good
        };
        assert_eq!(c.rate(t0 + WINDOW / 2, SETTINGS, good), 1000.0);
        assert_eq!(c.rate(t0 + WINDOW, SETTINGS, good), 1500.0);
        assert_eq!(c.rate(t0 + WINDOW * 3 / 2, SETTINGS, good), 1500.0);
        assert_eq!(asked.get(), 1);
        c.idle();
        assert_eq!(c.rate(t0 + WINDOW * 10, SETTINGS, good), 1000.0);
    }

    #[test]
    fn the_worst_member_at_the_99th_percentile_or_any_refusal_makes_a_bad_window() {
        let target = SETTINGS.target;
        assert_eq!(judge(&mut HashMap::new(), target), Verdict::Quiet);
        // 1 slow upgrade in 100 is the 1 % the percentile allows; 2 are not.
        let mut fast = vec![5; 99];
        fast.push(400);
        assert_eq!(judge(&mut window(&fast, 0), target), Verdict::Good);
        fast[0] = 400;
        assert_eq!(judge(&mut window(&fast, 0), target), Verdict::Bad);
        // Few samples: one slow is above the 99th percentile.
        assert_eq!(judge(&mut window(&[5, 5, 60], 0), target), Verdict::Bad);
        assert_eq!(judge(&mut window(&[5], 1), target), Verdict::Bad);
        assert_eq!(judge(&mut window(&[], 1), target), Verdict::Bad);
        let mut two = window(&[5, 6], 0);
        two.extend(window(&[], 0));
        two.insert(Arc::from("n-0"), window(&[70], 0).remove("n-3").expect("w"));
        assert_eq!(judge(&mut two, target), Verdict::Bad);
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        assert_eq!(p99_us(&mut []), 0);
        assert_eq!(p99_us(&mut [7]), 7);
        let mut hundred: Vec<u32> = (1..=100).collect();
        assert_eq!(p99_us(&mut hundred), 99);
        let mut thousand: Vec<u32> = (1..=1000).rev().collect();
        assert_eq!(p99_us(&mut thousand), 990);
    }

    #[test]
    fn the_retry_bound_is_the_queue_s_time_at_the_rate_at_most_the_jitter() {
        assert_eq!(retry_bound_ms(1000, 0, 500.0), 0);
        assert_eq!(retry_bound_ms(1000, 100, 1000.0), 100);
        assert_eq!(retry_bound_ms(1000, 5000, 1000.0), 1000);
        assert_eq!(retry_bound_ms(0, 5000, 1000.0), 0);
        assert_eq!(retry_bound_ms(u64::MAX, usize::MAX, 0.0), u64::MAX);
    }

    #[test]
    fn a_tally_keeps_a_bounded_sample_and_counts_every_refusal() {
        let mut tally = UpgradeTally::default();
        let m: Arc<str> = Arc::from("n-1");
        for _ in 0..MAX_SAMPLES + 10 {
            tally.note(&m, Duration::from_secs(u64::MAX / 2), false);
            tally.note(&m, Duration::ZERO, true);
        }
        let w = tally.take();
        assert_eq!(w["n-1"].latencies_us.len(), MAX_SAMPLES);
        assert_eq!(w["n-1"].latencies_us[0], u32::MAX);
        assert_eq!(w["n-1"].refused as usize, MAX_SAMPLES + 10);
        assert!(tally.take().is_empty());
    }
}
