//! Provisioned-instance scaling rules: scheduled targets by time of day (UTC) and target tracking
//! of utilisation, as pure functions of the time the caller passes in.
//!
//! No clock is read here, so the rules are deterministic under test; the gateway samples demand and
//! evaluates the rules on its own ticker. A function may have both a manual or scheduled target
//! and a tracking rule; the gateway then keeps the larger of the two (`effective_target`), which
//! is how Alibaba Function Compute combines its scheduled and metric-tracking provisioned policies:
//! a schedule sets a floor for known peaks, tracking adds instances for unforeseen load.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

const SECS_PER_DAY: u32 = 86_400;

/// Bounds the tracker's memory whatever the sampling rate; past it the oldest samples go first,
/// so the mean covers a shorter span than the window rather than growing without bound.
pub const MAX_SAMPLES: usize = 3600;

/// The target to run: the larger of the manual/scheduled target and the tracking rule's.
pub fn effective_target(manual: u32, tracked: Option<u32>) -> u32 {
    tracked.map_or(manual, |t| manual.max(t))
}

/// Seconds since midnight UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay(pub u32);

impl TimeOfDay {
    /// Parses "H:MM", "HH:MM", "H:MM:SS" or "HH:MM:SS" (24 h, UTC).
    pub fn parse(text: &str) -> Result<TimeOfDay, String> {
        let bad = || format!("`{text}` is not a time of day like \"08:30\" or \"08:30:15\" (UTC)");
        let mut parts = text.split(':');
        let hours = parts.next().ok_or_else(bad)?;
        let minutes = parts.next().ok_or_else(bad)?;
        let seconds = parts.next();
        if parts.next().is_some() {
            return Err(bad());
        }
        let h = field(hours, 1..=2, 23).ok_or_else(bad)?;
        let m = field(minutes, 2..=2, 59).ok_or_else(bad)?;
        let s = match seconds {
            Some(s) => field(s, 2..=2, 59).ok_or_else(bad)?,
            None => 0,
        };
        Ok(TimeOfDay(h * 3600 + m * 60 + s))
    }

    /// From a unix timestamp in seconds.
    pub fn from_unix(secs: u64) -> TimeOfDay {
        TimeOfDay(u32::try_from(secs % u64::from(SECS_PER_DAY)).unwrap_or(0))
    }
}

/// A run of ASCII digits of an allowed length, at most `max`.
fn field(text: &str, digits: std::ops::RangeInclusive<usize>, max: u32) -> Option<u32> {
    if !digits.contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|&v| v <= max)
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        write!(f, "{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }
}

/// At `at` every day, set the provisioned target to `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRule {
    pub at: TimeOfDay,
    pub target: u32,
}

/// The schedule, rules sorted by time (construct with `Schedule::new`, which sorts; duplicate
/// times are the caller's validation problem).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schedule {
    rules: Vec<ScheduledRule>,
}

impl Schedule {
    /// Sorts the rules by time of day. A time at or past 24:00 (only possible by building a
    /// `TimeOfDay` by hand) wraps like `from_unix` does, so every rule fires once a day.
    pub fn new(mut rules: Vec<ScheduledRule>) -> Schedule {
        for rule in &mut rules {
            rule.at.0 %= SECS_PER_DAY;
        }
        // Stable: among duplicate times the caller's last one is the one that ends up in force.
        rules.sort_by_key(|r| r.at);
        Schedule { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[ScheduledRule] {
        &self.rules
    }

    /// The rule in force at `now_unix` (the latest at or before now today, or else the last of
    /// the previous day); None if empty.
    pub fn in_force(&self, now_unix: u64) -> Option<&ScheduledRule> {
        let now = TimeOfDay::from_unix(now_unix);
        self.rules
            .iter()
            .rev()
            .find(|r| r.at <= now)
            .or_else(|| self.rules.last())
    }

    /// The rule that fired in (prev_unix, now_unix], i.e. whose time of day was crossed; if
    /// several, the last one crossed. Handles midnight wrap and gaps longer than a day (then: the
    /// one in force at now). None if none crossed or prev >= now.
    pub fn fired(&self, prev_unix: u64, now_unix: u64) -> Option<&ScheduledRule> {
        if prev_unix >= now_unix {
            return None;
        }
        // The rule in force at `now` is the one whose latest occurrence is the most recent at or
        // before `now`; anything crossed in the interval was crossed no later than that, so the
        // interval crossed a rule exactly when it contains that occurrence.
        let rule = self.in_force(now_unix)?;
        let day = u64::from(SECS_PER_DAY);
        let today = now_unix - now_unix % day;
        let at = u64::from(rule.at.0);
        let occurrence = if at <= now_unix % day {
            Some(today.saturating_add(at))
        } else {
            // Before the unix epoch there is no previous day, and so no occurrence to cross.
            today.checked_sub(day).map(|yesterday| yesterday + at)
        };
        occurrence.filter(|&t| t > prev_unix).map(|_| rule)
    }
}

/// Keep provisioned utilisation near `utilization` (0 < u <= 1) with between `min` and `max`
/// instances, judging demand by its mean over `window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackingRule {
    pub utilization: f64,
    pub min: u32,
    pub max: u32,
    pub window: Duration,
}

/// Demand samples over a sliding window; at most `MAX_SAMPLES` are kept.
#[derive(Debug, Clone)]
pub struct Tracker {
    rule: TrackingRule,
    window_ms: u64,
    /// (monotonic ms, demand), oldest first, times non-decreasing.
    samples: VecDeque<(u64, f64)>,
}

impl Tracker {
    pub fn new(rule: TrackingRule) -> Tracker {
        Tracker {
            rule,
            window_ms: u64::try_from(rule.window.as_millis()).unwrap_or(u64::MAX),
            samples: VecDeque::new(),
        }
    }

    pub fn rule(&self) -> &TrackingRule {
        &self.rule
    }

    /// Records one sample: demand = requests in flight + requests queued for the function, at
    /// time `now_ms` (monotonic milliseconds supplied by the caller); drops samples older than the
    /// window. Call it before `desired`, which has no clock and sees only what was kept.
    pub fn sample(&mut self, now_ms: u64, demand: f64) {
        // A time earlier than the last sample is treated as that time, so the deque stays ordered
        // and expiry from the front stays correct.
        let now_ms = self.samples.back().map_or(now_ms, |&(t, _)| now_ms.max(t));
        while let Some(&(t, _)) = self.samples.front() {
            if now_ms.saturating_sub(t) > self.window_ms {
                self.samples.pop_front();
            } else {
                break;
            }
        }
        // A NaN or infinite reading is a bug upstream, not demand; negative demand means none.
        if !demand.is_finite() {
            return;
        }
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now_ms, demand.max(0.0)));
    }

    /// Mean demand over the samples kept; None before the first sample.
    pub fn mean(&self) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let sum: f64 = self.samples.iter().map(|&(_, d)| d).sum();
        Some(sum / self.samples.len() as f64)
    }

    /// The target the rule wants: ceil(mean demand over the window / (instance_concurrency *
    /// utilization)), clamped to [min, max]. With no samples yet: min.
    ///
    /// Should `min` exceed `max` (a config validation failure), `min` wins: it is the floor the
    /// operator promised capacity for.
    pub fn desired(&self, instance_concurrency: u32) -> u32 {
        let TrackingRule { min, max, .. } = self.rule;
        let Some(mean) = self.mean() else {
            return min;
        };
        // Validation rejects these; here they only must not produce NaN or a division by zero.
        let utilization = if self.rule.utilization.is_finite() && self.rule.utilization > 0.0 {
            self.rule.utilization.min(1.0)
        } else {
            1.0
        };
        let per_instance = f64::from(instance_concurrency.max(1)) * utilization;
        // Summing samples leaves rounding dust (6.000000001) that would otherwise cost a whole
        // extra instance.
        let wanted = (mean / per_instance - 1e-9).ceil();
        // `as` saturates: huge → u32::MAX, negative or NaN → 0.
        let wanted = if wanted.is_nan() { 0 } else { wanted as u32 };
        wanted.min(max).max(min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn tod(text: &str) -> u64 {
        u64::from(TimeOfDay::parse(text).unwrap().0)
    }

    fn rule(at: &str, target: u32) -> ScheduledRule {
        ScheduledRule {
            at: TimeOfDay::parse(at).unwrap(),
            target,
        }
    }

    fn tracker(utilization: f64, min: u32, max: u32, window_s: u64) -> Tracker {
        Tracker::new(TrackingRule {
            utilization,
            min,
            max,
            window: Duration::from_secs(window_s),
        })
    }

    #[test]
    fn parse_good_times() {
        assert_eq!(TimeOfDay::parse("08:30"), Ok(TimeOfDay(8 * 3600 + 30 * 60)));
        assert_eq!(TimeOfDay::parse("8:30"), Ok(TimeOfDay(8 * 3600 + 30 * 60)));
        assert_eq!(
            TimeOfDay::parse("08:30:15"),
            Ok(TimeOfDay(8 * 3600 + 30 * 60 + 15))
        );
        assert_eq!(TimeOfDay::parse("8:30:15"), TimeOfDay::parse("08:30:15"));
        assert_eq!(TimeOfDay::parse("00:00"), Ok(TimeOfDay(0)));
        assert_eq!(TimeOfDay::parse("0:00:00"), Ok(TimeOfDay(0)));
        assert_eq!(TimeOfDay::parse("23:59:59"), Ok(TimeOfDay(86_399)));
    }

    #[test]
    fn parse_bad_times() {
        for text in [
            "24:00",
            "12:60",
            "",
            "12",
            "aa:bb",
            "12:30:60",
            "12:3",
            "12:300",
            "123:00",
            ":30",
            "12:",
            "12:30:",
            "12:30:1",
            "12:30:15:00",
            "+8:30",
            "-1:30",
            " 8:30",
            "8:30 ",
            "08:3a",
            "08h30",
            "٠٨:٣٠",
            "99999999999:00",
            "12:30:99",
        ] {
            let err = TimeOfDay::parse(text).unwrap_err();
            assert_eq!(
                err,
                format!("`{text}` is not a time of day like \"08:30\" or \"08:30:15\" (UTC)")
            );
        }
        assert_eq!(
            TimeOfDay::parse("25:00").unwrap_err(),
            "`25:00` is not a time of day like \"08:30\" or \"08:30:15\" (UTC)"
        );
    }

    #[test]
    fn display_and_from_unix() {
        assert_eq!(TimeOfDay(8 * 3600 + 30 * 60 + 15).to_string(), "08:30:15");
        assert_eq!(TimeOfDay(0).to_string(), "00:00:00");
        assert_eq!(TimeOfDay(86_399).to_string(), "23:59:59");
        assert_eq!(TimeOfDay::parse("8:05").unwrap().to_string(), "08:05:00");
        // Out-of-range values built by hand still print without panicking.
        let _ = TimeOfDay(u32::MAX).to_string();
        assert_eq!(TimeOfDay::from_unix(0), TimeOfDay(0));
        assert_eq!(TimeOfDay::from_unix(1_700_000_000), TimeOfDay(80_000));
        assert_eq!(TimeOfDay::from_unix(3 * DAY + 61), TimeOfDay(61));
        assert!(TimeOfDay::from_unix(u64::MAX).0 < 86_400);
    }

    #[test]
    fn schedule_sorts_and_reports() {
        let s = Schedule::new(vec![rule("18:00", 1), rule("08:00", 5), rule("12:00", 3)]);
        let times: Vec<String> = s.rules().iter().map(|r| r.at.to_string()).collect();
        assert_eq!(times, ["08:00:00", "12:00:00", "18:00:00"]);
        assert!(!s.is_empty());
        assert!(Schedule::default().is_empty());
        assert_eq!(Schedule::new(vec![]), Schedule::default());
        // Hand-built times past midnight wrap.
        let s = Schedule::new(vec![ScheduledRule {
            at: TimeOfDay(86_400 + 60),
            target: 1,
        }]);
        assert_eq!(s.rules()[0].at, TimeOfDay(60));
    }

    #[test]
    fn in_force() {
        let s = Schedule::new(vec![rule("08:00", 5), rule("20:00", 1)]);
        let day = 19_000 * DAY;
        assert_eq!(s.in_force(day + tod("08:00")).unwrap().target, 5);
        assert_eq!(s.in_force(day + tod("12:00")).unwrap().target, 5);
        assert_eq!(s.in_force(day + tod("19:59:59")).unwrap().target, 5);
        assert_eq!(s.in_force(day + tod("20:00")).unwrap().target, 1);
        assert_eq!(s.in_force(day + tod("23:59:59")).unwrap().target, 1);
        // Before the first rule of the day: the previous day's last rule.
        assert_eq!(s.in_force(day + tod("07:59:59")).unwrap().target, 1);
        assert_eq!(s.in_force(day).unwrap().target, 1);
        assert_eq!(s.in_force(0).unwrap().target, 1);
        assert_eq!(s.in_force(u64::MAX).map(|r| r.target), Some(1));
        assert!(Schedule::default().in_force(day).is_none());
    }

    #[test]
    fn in_force_with_duplicate_times_takes_the_last_given() {
        let s = Schedule::new(vec![rule("08:00", 5), rule("08:00", 7)]);
        assert_eq!(s.in_force(tod("09:00")).unwrap().target, 7);
    }

    #[test]
    fn fired_across_midnight() {
        let s = Schedule::new(vec![rule("00:00", 2), rule("12:00", 6)]);
        let day_n = 19_000 * DAY;
        let prev = day_n + tod("23:59:58");
        let now = day_n + DAY + tod("00:00:02");
        assert_eq!(s.fired(prev, now).unwrap().target, 2);
        // Exactly at the rule's time counts; exactly at prev does not.
        assert_eq!(s.fired(prev, day_n + DAY).unwrap().target, 2);
        assert!(s.fired(day_n + DAY, now).is_none());
        // A rule late in the day crossed just before midnight.
        let s = Schedule::new(vec![rule("08:00", 2), rule("23:59:59", 6)]);
        assert_eq!(s.fired(prev, now).unwrap().target, 6);
    }

    #[test]
    fn fired_several_returns_the_last_crossed() {
        let s = Schedule::new(vec![rule("08:00", 1), rule("09:00", 2), rule("10:00", 3)]);
        let day = 19_000 * DAY;
        assert_eq!(
            s.fired(day + tod("07:00"), day + tod("09:30"))
                .unwrap()
                .target,
            2
        );
        assert_eq!(
            s.fired(day + tod("07:00"), day + tod("11:00"))
                .unwrap()
                .target,
            3
        );
        // Wrapping over midnight, crossing 10:00 yesterday and 08:00 today.
        assert_eq!(
            s.fired(day - DAY + tod("09:30"), day + tod("08:30"))
                .unwrap()
                .target,
            1
        );
    }

    #[test]
    fn not_fired_when_nothing_crossed() {
        let s = Schedule::new(vec![rule("08:00", 1), rule("20:00", 2)]);
        let day = 19_000 * DAY;
        assert!(s.fired(day + tod("09:00"), day + tod("19:59:59")).is_none());
        assert!(s.fired(day + tod("20:00"), day + tod("23:00")).is_none());
        assert!(
            s.fired(day + tod("21:00"), day + DAY + tod("07:00"))
                .is_none()
        );
        // prev >= now.
        assert!(s.fired(day + tod("09:00"), day + tod("09:00")).is_none());
        assert!(s.fired(day + tod("21:00"), day + tod("07:00")).is_none());
        assert!(Schedule::default().fired(0, 10 * DAY).is_none());
        // Near the epoch, with no previous day.
        assert!(s.fired(0, tod("07:00")).is_none());
        assert_eq!(s.fired(0, tod("08:00")).unwrap().target, 1);
    }

    #[test]
    fn fired_after_a_gap_longer_than_a_day() {
        let s = Schedule::new(vec![rule("08:00", 1), rule("20:00", 2)]);
        let day = 19_000 * DAY;
        let prev = day + tod("09:00");
        assert_eq!(s.fired(prev, prev + 3 * DAY).unwrap().target, 1);
        assert_eq!(
            s.fired(prev, prev + 2 * DAY + tod("12:00")).unwrap().target,
            2
        );
        // Exactly one day crosses every rule once: the last is the one in force now.
        assert_eq!(s.fired(prev, prev + DAY).unwrap().target, 1);
        assert_eq!(s.fired(0, u64::MAX).unwrap(), s.in_force(u64::MAX).unwrap());
    }

    #[test]
    fn fired_with_one_rule() {
        let s = Schedule::new(vec![rule("06:00", 4)]);
        let day = 19_000 * DAY;
        assert!(s.fired(day + tod("06:00"), day + tod("23:00")).is_none());
        assert_eq!(
            s.fired(day + tod("05:00"), day + tod("06:00:01"))
                .unwrap()
                .target,
            4
        );
        assert_eq!(
            s.fired(day + tod("07:00"), day + DAY + tod("06:00"))
                .unwrap()
                .target,
            4
        );
    }

    /// Ticking every `step` seconds over three days, each rule fires exactly once per day, at its
    /// time, and the last one fired always matches the one in force.
    #[test]
    fn fired_by_ticking_matches_in_force() {
        let s = Schedule::new(vec![
            rule("00:00", 1),
            rule("06:30", 2),
            rule("23:59:59", 3),
        ]);
        for step in [1, 7, 3600, 40_000] {
            let start = 19_000 * DAY - 5;
            let mut prev = start;
            let mut fired = 0;
            while prev < start + 3 * DAY {
                let now = prev + step;
                if let Some(r) = s.fired(prev, now) {
                    fired += 1;
                    assert_eq!(Some(r), s.in_force(now));
                } else {
                    assert_eq!(s.in_force(prev), s.in_force(now), "step {step} at {now}");
                }
                prev = now;
            }
            if step == 1 {
                assert_eq!(fired, 9);
            }
        }
    }

    #[test]
    fn effective_target_is_the_larger() {
        assert_eq!(effective_target(3, None), 3);
        assert_eq!(effective_target(3, Some(5)), 5);
        assert_eq!(effective_target(3, Some(1)), 3);
        assert_eq!(effective_target(0, Some(0)), 0);
    }

    #[test]
    fn steady_demand_tracks_the_target() {
        let mut t = tracker(0.5, 0, 100, 60);
        for i in 0..60 {
            t.sample(i * 1000, 6.0);
        }
        assert_eq!(t.mean(), Some(6.0));
        assert_eq!(t.desired(2), 6);
        assert_eq!(t.desired(4), 3);
        assert_eq!(t.desired(5), 3); // 6 / 2.5 = 2.4 → 3
        assert_eq!(t.rule().utilization, 0.5);
    }

    #[test]
    fn rounding_dust_does_not_add_an_instance() {
        // 4.9 / 0.7 is 7.000000000000001 in f64; seven instances of one slot at 70 % hold it.
        let mut t = tracker(0.7, 0, 100, 60);
        t.sample(0, 4.9);
        assert!(t.mean().unwrap() / 0.7 > 7.0);
        assert_eq!(t.desired(1), 7);
        // Real excess still counts.
        t.sample(1, 5.1);
        assert_eq!(t.mean(), Some(5.0));
        assert_eq!(t.desired(1), 8);
    }

    #[test]
    fn clamped_to_min_and_max() {
        let mut t = tracker(1.0, 2, 5, 60);
        t.sample(0, 0.5);
        assert_eq!(t.desired(1), 2);
        t.sample(1, 1000.0);
        assert_eq!(t.desired(1), 5);
        // min above max: min wins.
        let mut t = tracker(1.0, 4, 2, 60);
        assert_eq!(t.desired(1), 4);
        t.sample(0, 100.0);
        assert_eq!(t.desired(1), 4);
    }

    #[test]
    fn no_samples_gives_min() {
        let t = tracker(0.5, 3, 10, 60);
        assert_eq!(t.mean(), None);
        assert_eq!(t.desired(2), 3);
        assert_eq!(tracker(0.5, 0, 10, 60).desired(2), 0);
    }

    #[test]
    fn window_expiry_drops_old_samples() {
        let mut t = tracker(1.0, 1, 50, 10);
        for i in 0..10 {
            t.sample(i * 1000, 20.0);
        }
        assert_eq!(t.desired(1), 20);
        // Demand falls to zero; once the busy samples are older than the window, back to min.
        t.sample(15_000, 0.0);
        assert!(t.desired(1) > 1);
        t.sample(19_000, 0.0);
        assert!(t.desired(1) > 1, "the 9 s sample is exactly one window old");
        t.sample(19_001, 0.0);
        assert_eq!(t.mean(), Some(0.0));
        assert_eq!(t.desired(1), 1);
        // A sample exactly one window old is still in it.
        let mut t = tracker(1.0, 0, 50, 10);
        t.sample(0, 4.0);
        t.sample(10_000, 0.0);
        assert_eq!(t.mean(), Some(2.0));
        t.sample(10_001, 0.0);
        assert_eq!(t.mean(), Some(0.0));
    }

    #[test]
    fn zero_window_keeps_only_the_latest_instant() {
        let mut t = tracker(1.0, 0, 50, 0);
        t.sample(5, 8.0);
        t.sample(5, 4.0);
        assert_eq!(t.mean(), Some(6.0));
        t.sample(6, 3.0);
        assert_eq!(t.desired(1), 3);
    }

    #[test]
    fn samples_are_bounded() {
        let mut t = tracker(1.0, 0, u32::MAX, 3600 * 24);
        for i in 0..(MAX_SAMPLES as u64 * 3) {
            t.sample(
                i,
                if i < MAX_SAMPLES as u64 * 2 {
                    100.0
                } else {
                    1.0
                },
            );
        }
        assert_eq!(t.samples.len(), MAX_SAMPLES);
        assert_eq!(t.mean(), Some(1.0));
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let mut t = tracker(1.0, 0, 50, 10);
        t.sample(100_000, 4.0);
        t.sample(0, 2.0);
        assert_eq!(t.mean(), Some(3.0));
        t.sample(111_000, 0.0);
        assert_eq!(t.mean(), Some(0.0));
    }

    #[test]
    fn guards_against_zero_nan_and_infinity() {
        // Zero concurrency counts as one slot.
        let mut t = tracker(1.0, 0, 100, 60);
        t.sample(0, 3.0);
        assert_eq!(t.desired(0), 3);

        // NaN and infinite samples are ignored; negative demand counts as none.
        t.sample(1, f64::NAN);
        t.sample(2, f64::INFINITY);
        t.sample(3, f64::NEG_INFINITY);
        assert_eq!(t.mean(), Some(3.0));
        t.sample(4, -3.0);
        assert_eq!(t.mean(), Some(1.5));
        assert_eq!(t.desired(1), 2);

        // Only NaN samples: as if none were taken.
        let mut t = tracker(1.0, 2, 100, 60);
        t.sample(0, f64::NAN);
        assert_eq!(t.desired(1), 2);

        // Invalid utilisation falls back to 1; above 1 is capped at 1.
        for u in [0.0, -0.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 7.0] {
            let mut t = tracker(u, 0, 100, 60);
            t.sample(0, 6.0);
            assert_eq!(t.desired(2), 3, "utilization {u}");
        }
        // A tiny utilisation asks for a lot, capped at max.
        let mut t = tracker(f64::MIN_POSITIVE, 0, 100, 60);
        t.sample(0, 1.0);
        assert_eq!(t.desired(1), 100);

        // Huge demand does not overflow.
        let mut t = tracker(1.0, 0, u32::MAX, 60);
        t.sample(0, f64::MAX);
        t.sample(1, f64::MAX);
        assert_eq!(t.desired(1), u32::MAX);

        // Huge windows and times do not overflow.
        let mut t = Tracker::new(TrackingRule {
            utilization: 1.0,
            min: 0,
            max: 10,
            window: Duration::MAX,
        });
        t.sample(0, 2.0);
        t.sample(u64::MAX, 4.0);
        assert_eq!(t.desired(1), 3);
    }
}
