//! Recent per-function numbers for the dashboard: request and error rates, latency quantiles and
//! cold starts over the last minute, kept in process so the admin API can answer without a
//! metrics backend.
//!
//! Fed once per finished invocation (where the log line is written) and once per cold start, so
//! the dashboard, `GET /admin/overview` and the log agree. Memory is fixed when the function is
//! created: a ring of 1-second count slots and a ring of 10-second latency histograms, all
//! atomics. Recording is a handful of relaxed atomic adds; the only lock is taken by the first
//! recording of each new slot (once a second per function, uncontended), to clear the slot it
//! reuses. Readers never block writers; a snapshot taken while a slot rotates may be off by the
//! requests of that instant, which a dashboard can live with. Totals are exact.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Seconds of per-second history the snapshot returns (the sparkline).
pub const SERIES_SECONDS: usize = 60;
/// Request and error rates are averaged over this many complete seconds.
pub const RATE_SECONDS: u64 = 10;
/// Latency quantiles cover the current 10-second slot and the five before it (50–60 s).
pub const LATENCY_SLOT_SECONDS: u64 = 10;
const LATENCY_SLOTS_READ: u64 = 6;
/// The most seconds the latency quantiles reach back.
pub const LATENCY_SECONDS: u64 = LATENCY_SLOT_SECONDS * LATENCY_SLOTS_READ;

/// Count slots kept: the series plus the second in progress, rounded up to a power of two.
const COUNT_SLOTS: usize = 64;
/// Latency slots kept: the ones read plus one spare, so the slot being reused is never read.
const LATENCY_SLOTS: usize = LATENCY_SLOTS_READ as usize + 1;

/// Log-linear latency buckets in microseconds: exact below 8 µs, then 8 buckets per power of
/// two up to 2^32 µs (71 minutes). A quantile is reported as its bucket's midpoint, within
/// 1/16 (6.25 %) of the true sample.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
const MAX_US: u64 = (1 << 32) - 1;
pub const LATENCY_BUCKETS: usize = SUB + (32 - SUB_BITS as usize) * SUB;

/// Which latency bucket holds `us` microseconds.
fn bucket(us: u64) -> usize {
    let us = us.min(MAX_US);
    if us < SUB as u64 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros(); // floor(log2 us) >= SUB_BITS
    let sub = (us >> (e - SUB_BITS)) as usize & (SUB - 1);
    SUB + (e - SUB_BITS) as usize * SUB + sub
}

/// The half-open range `[lo, hi)` of microseconds that bucket `i` holds.
fn bucket_bounds(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, i as u64 + 1);
    }
    let e = ((i - SUB) / SUB) as u32 + SUB_BITS;
    let sub = ((i - SUB) % SUB) as u64;
    let width = 1u64 << (e - SUB_BITS);
    let lo = (SUB as u64 + sub) * width;
    (lo, lo + width)
}

/// Whether an invocation counts as an error on the dashboard: any 5xx (backend or gateway),
/// `429` (the gateway shed it: queue full, queue wait, GPU capacity), and a response that
/// started well but failed mid-stream (the gateway noted an error on a 1xx–3xx status). Other
/// 4xx answers are the caller's mistake and `499` is a caller that left: not errors.
pub fn is_error(status: u16, gateway_error: bool) -> bool {
    status >= 500 || status == 429 || (gateway_error && status < 400)
}

/// Monotonic whole seconds since the first call: the clock `Window` uses outside tests.
fn now_s() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs()
}

#[derive(Default)]
struct Counts {
    requests: AtomicU32,
    errors: AtomicU32,
    cold_starts: AtomicU32,
}

impl Counts {
    fn clear(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        self.cold_starts.store(0, Ordering::Relaxed);
    }
}

struct Latencies {
    buckets: [AtomicU32; LATENCY_BUCKETS],
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

impl Latencies {
    fn clear(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }
}

/// A slot of a ring: `epoch` is the slot-sized period it holds, plus one (0: never written).
#[derive(Default)]
struct Slot<T> {
    epoch: AtomicU64,
    data: T,
}

/// A fixed ring of slots, each `width` seconds, reused in turn.
struct Ring<T> {
    slots: Box<[Slot<T>]>,
    width: u64,
}

impl<T: Default> Ring<T> {
    fn new(len: usize, width: u64) -> Self {
        Ring {
            slots: (0..len).map(|_| Slot::default()).collect(),
            width,
        }
    }

    fn epoch(&self, now_s: u64) -> u64 {
        now_s / self.width + 1
    }

    fn slot(&self, epoch: u64) -> &Slot<T> {
        &self.slots[(epoch % self.slots.len() as u64) as usize]
    }

    /// The slot for `now_s`, cleared first if it still holds an older period.
    fn current(&self, now_s: u64, rotate: &Mutex<()>, clear: impl Fn(&T)) -> &T {
        let epoch = self.epoch(now_s);
        let slot = self.slot(epoch);
        if slot.epoch.load(Ordering::Acquire) != epoch {
            let _one = rotate.lock().unwrap_or_else(|e| e.into_inner());
            // Another recorder may have cleared it while this one waited.
            if slot.epoch.load(Ordering::Acquire) != epoch {
                clear(&slot.data);
                slot.epoch.store(epoch, Ordering::Release);
            }
        }
        &slot.data
    }

    /// The data of period `epoch`, if the ring still holds it.
    fn get(&self, epoch: u64) -> Option<&T> {
        let slot = self.slot(epoch);
        (epoch > 0 && slot.epoch.load(Ordering::Acquire) == epoch).then_some(&slot.data)
    }
}

/// One function's recent numbers. Created with the function; lives as long as it does (across
/// reloads), so rates do not reset when the config changes.
pub struct Window {
    counts: Ring<Counts>,
    latency: Ring<Latencies>,
    rotate: Mutex<()>,
    requests_total: AtomicU64,
    errors_total: AtomicU64,
    cold_starts_total: AtomicU64,
    cold_start_failures_total: AtomicU64,
    /// Microseconds of the last successful cold start; `u64::MAX` when none yet.
    last_cold_start_us: AtomicU64,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("requests_total", &self.requests_total)
            .finish_non_exhaustive()
    }
}

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

impl Window {
    pub fn new() -> Self {
        Window {
            counts: Ring::new(COUNT_SLOTS, 1),
            latency: Ring::new(LATENCY_SLOTS, LATENCY_SLOT_SECONDS),
            rotate: Mutex::new(()),
            requests_total: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            cold_starts_total: AtomicU64::new(0),
            cold_start_failures_total: AtomicU64::new(0),
            last_cold_start_us: AtomicU64::new(u64::MAX),
        }
    }

    /// One finished invocation: its status, time from arrival to last byte, and whether the
    /// gateway noted an error on it. No allocation, no lock except once a second (see above).
    pub fn record(&self, status: u16, elapsed: Duration, gateway_error: bool) {
        self.record_at(now_s(), status, elapsed, gateway_error);
    }

    fn record_at(&self, now_s: u64, status: u16, elapsed: Duration, gateway_error: bool) {
        let error = is_error(status, gateway_error);
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        let c = self.counts.current(now_s, &self.rotate, Counts::clear);
        c.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors_total.fetch_add(1, Ordering::Relaxed);
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        let l = self.latency.current(now_s, &self.rotate, Latencies::clear);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        l.buckets[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// An instance start that became ready (`Some(spawn to ready)`) or failed (`None`).
    pub fn cold_start(&self, took: Option<Duration>) {
        self.cold_start_at(now_s(), took);
    }

    fn cold_start_at(&self, now_s: u64, took: Option<Duration>) {
        match took {
            Some(d) => {
                self.cold_starts_total.fetch_add(1, Ordering::Relaxed);
                let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1);
                self.last_cold_start_us.store(us, Ordering::Relaxed);
                let c = self.counts.current(now_s, &self.rotate, Counts::clear);
                c.cold_starts.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.cold_start_failures_total
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// What the dashboard shows, as of now.
    pub fn snapshot(&self) -> WindowSnapshot {
        self.snapshot_at(now_s())
    }

    fn snapshot_at(&self, now_s: u64) -> WindowSnapshot {
        let now_epoch = self.counts.epoch(now_s);
        let mut series = Vec::with_capacity(SERIES_SECONDS);
        let mut error_series = Vec::with_capacity(SERIES_SECONDS);
        let mut cold_starts_window = 0u64;
        // Complete seconds only, oldest first: the second in progress would read low.
        for back in (1..=SERIES_SECONDS as u64).rev() {
            let (r, e, c) = now_epoch
                .checked_sub(back)
                .and_then(|ep| self.counts.get(ep))
                .map_or((0, 0, 0), |c| {
                    (
                        c.requests.load(Ordering::Relaxed),
                        c.errors.load(Ordering::Relaxed),
                        c.cold_starts.load(Ordering::Relaxed),
                    )
                });
            series.push(r);
            error_series.push(e);
            cold_starts_window += u64::from(c);
        }
        if let Some(c) = self.counts.get(now_epoch) {
            cold_starts_window += u64::from(c.cold_starts.load(Ordering::Relaxed));
        }
        let recent = SERIES_SECONDS - RATE_SECONDS as usize;
        let rate = |s: &[u32]| s[recent..].iter().map(|&n| u64::from(n)).sum::<u64>() as f64;
        let mut hist = [0u64; LATENCY_BUCKETS];
        let lat_epoch = self.latency.epoch(now_s);
        for back in 0..LATENCY_SLOTS_READ {
            if let Some(l) = lat_epoch
                .checked_sub(back)
                .and_then(|ep| self.latency.get(ep))
            {
                for (h, b) in hist.iter_mut().zip(&l.buckets) {
                    *h += u64::from(b.load(Ordering::Relaxed));
                }
            }
        }
        let samples: u64 = hist.iter().sum();
        let last = self.last_cold_start_us.load(Ordering::Relaxed);
        WindowSnapshot {
            requests_total: self.requests_total.load(Ordering::Relaxed),
            errors_total: self.errors_total.load(Ordering::Relaxed),
            requests_per_s: rate(&series) / RATE_SECONDS as f64,
            errors_per_s: rate(&error_series) / RATE_SECONDS as f64,
            series,
            error_series,
            latency_samples: samples,
            p50_ms: quantile(&hist, samples, 0.50).map(us_to_ms),
            p99_ms: quantile(&hist, samples, 0.99).map(us_to_ms),
            cold_starts_total: self.cold_starts_total.load(Ordering::Relaxed),
            cold_start_failures_total: self.cold_start_failures_total.load(Ordering::Relaxed),
            cold_starts_window,
            last_cold_start_ms: (last != u64::MAX).then(|| us_to_ms(last as f64)),
        }
    }
}

/// The `q` quantile (0 < q <= 1) of a histogram holding `n` samples, in microseconds: the
/// midpoint of the bucket holding the sample of rank ceil(q·n).
fn quantile(hist: &[u64; LATENCY_BUCKETS], n: u64, q: f64) -> Option<f64> {
    if n == 0 {
        return None;
    }
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    let mut seen = 0;
    for (i, &c) in hist.iter().enumerate() {
        seen += c;
        if seen >= rank {
            let (lo, hi) = bucket_bounds(i);
            return Some(if hi - lo == 1 {
                lo as f64
            } else {
                (lo + hi) as f64 / 2.0
            });
        }
    }
    None
}

fn us_to_ms(us: f64) -> f64 {
    (us * 1000.0).round() / 1e6 // ms with 3 decimals (µs precision), as the log line shows
}

/// A function's recent numbers as the admin API returns them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WindowSnapshot {
    /// Invocations finished since the gateway started (exact).
    pub requests_total: u64,
    /// Of those, errors (see `is_error`).
    pub errors_total: u64,
    /// Averages over the last `RATE_SECONDS` complete seconds.
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    /// Requests (errors) finished in each of the last `SERIES_SECONDS` complete seconds, oldest first.
    pub series: Vec<u32>,
    pub error_series: Vec<u32>,
    /// Invocations the quantiles are drawn from (the last 50–60 s).
    pub latency_samples: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub cold_starts_total: u64,
    pub cold_start_failures_total: u64,
    /// Cold starts in the last `SERIES_SECONDS` seconds (and the one in progress).
    pub cold_starts_window: u64,
    pub last_cold_start_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn buckets_hold_their_values_and_stay_in_range() {
        let mut last = 0;
        for us in (0..5000).chain([65_535, 1 << 20, MAX_US - 1, MAX_US, u64::MAX]) {
            let i = bucket(us);
            assert!(i < LATENCY_BUCKETS, "{us} → {i}");
            assert!(i >= last, "buckets are monotonic");
            last = i;
            let (lo, hi) = bucket_bounds(i);
            let v = us.min(MAX_US);
            assert!(lo <= v && v < hi, "{us} not in bucket {i} [{lo}, {hi})");
            // Relative width at most 1/8, so the midpoint is within 1/16.
            assert!(
                hi - lo == 1 || (hi - lo) * SUB as u64 <= lo,
                "{i}: [{lo}, {hi})"
            );
        }
        assert_eq!(bucket(MAX_US), LATENCY_BUCKETS - 1);
        // Consecutive buckets tile the range without gaps.
        for i in 1..LATENCY_BUCKETS {
            assert_eq!(bucket_bounds(i - 1).1, bucket_bounds(i).0, "gap before {i}");
        }
    }

    #[test]
    fn quantiles_of_known_distributions() {
        let w = Window::new();
        assert_eq!(w.snapshot_at(0).p50_ms, None);
        // 98 fast requests and 2 slow ones: p50 is fast, p99 (rank 99) is slow.
        for _ in 0..98 {
            w.record_at(5, 200, ms(2), false);
        }
        for _ in 0..2 {
            w.record_at(5, 200, ms(400), false);
        }
        let s = w.snapshot_at(5);
        assert_eq!(s.latency_samples, 100);
        let p50 = s.p50_ms.unwrap();
        let p99 = s.p99_ms.unwrap();
        assert!((p50 - 2.0).abs() / 2.0 <= 1.0 / 16.0, "p50 {p50}");
        assert!((p99 - 400.0).abs() / 400.0 <= 1.0 / 16.0, "p99 {p99}");
        // 200 more fast ones: rank 297 of 300 is fast, p99 drops.
        for _ in 0..200 {
            w.record_at(5, 200, ms(2), false);
        }
        let p99 = w.snapshot_at(5).p99_ms.unwrap();
        assert!(p99 < 3.0, "p99 {p99}");

        // A uniform 1..=1000 ms spread: quantiles within the bucket error.
        let w = Window::new();
        for v in 1..=1000 {
            w.record_at(0, 200, ms(v), false);
        }
        let s = w.snapshot_at(0);
        let (p50, p99) = (s.p50_ms.unwrap(), s.p99_ms.unwrap());
        assert!((p50 - 500.0).abs() / 500.0 <= 1.0 / 16.0, "p50 {p50}");
        assert!((p99 - 990.0).abs() / 990.0 <= 1.0 / 16.0, "p99 {p99}");
        // Sub-8 µs values are exact.
        let w = Window::new();
        w.record_at(0, 200, Duration::from_micros(3), false);
        assert_eq!(w.snapshot_at(0).p99_ms, Some(0.003));
    }

    #[test]
    fn counts_series_and_rates() {
        let w = Window::new();
        // 3 requests a second for seconds 100..=109, one of them an error.
        for t in 100..110 {
            w.record_at(t, 200, ms(1), false);
            w.record_at(t, 200, ms(1), false);
            w.record_at(t, 503, ms(1), true);
        }
        // In second 110 (in progress) two more: counted in totals, not yet in the series.
        w.record_at(110, 200, ms(1), false);
        w.record_at(110, 200, ms(1), false);
        let s = w.snapshot_at(110);
        assert_eq!(s.requests_total, 32);
        assert_eq!(s.errors_total, 10);
        assert_eq!(s.series.len(), SERIES_SECONDS);
        assert_eq!(&s.series[50..], &[3; 10]);
        assert!(s.series[..50].iter().all(|&n| n == 0));
        assert_eq!(&s.error_series[50..], &[1; 10]);
        assert_eq!(s.requests_per_s, 3.0);
        assert_eq!(s.errors_per_s, 1.0);
        // At 115 the rate covers 105..=114: five seconds of 3, second 110's 2, then nothing.
        let s = w.snapshot_at(115);
        assert_eq!(s.requests_per_s, (3.0 * 5.0 + 2.0) / 10.0);
    }

    #[test]
    fn old_buckets_expire_and_slots_are_reused_clean() {
        let w = Window::new();
        for _ in 0..7 {
            w.record_at(0, 200, ms(50), false);
        }
        let s = w.snapshot_at(1);
        assert_eq!(s.series[SERIES_SECONDS - 1], 7);
        assert_eq!(s.latency_samples, 7);
        // Second 0 is the oldest of the 60 complete seconds before second 60, gone at 61.
        let s = w.snapshot_at(60);
        assert_eq!(s.series[0], 7);
        let s = w.snapshot_at(61);
        assert!(s.series.iter().all(|&n| n == 0), "{:?}", s.series);
        assert_eq!(s.requests_per_s, 0.0);
        assert_eq!(s.requests_total, 7, "totals never expire");
        // The latency slot 0–9 is read up to second 59 (with 10–19 … 50–59), not at 60.
        assert_eq!(w.snapshot_at(59).latency_samples, 7);
        let s = w.snapshot_at(60);
        assert_eq!(s.latency_samples, 0);
        assert_eq!(s.p99_ms, None);
        // Second 64 reuses second 0's count slot and 70 its latency slot: both start from zero.
        w.record_at(64, 200, ms(1), false);
        w.record_at(70, 200, ms(1), false);
        let s = w.snapshot_at(71);
        assert_eq!(s.series[SERIES_SECONDS - 7], 1, "second 64");
        assert_eq!(s.series[SERIES_SECONDS - 1], 1, "second 70");
        assert_eq!(s.series.iter().sum::<u32>(), 2);
        assert_eq!(s.latency_samples, 2);
        // A reader long after (ring wrapped many times) sees nothing stale.
        let s = w.snapshot_at(64 * 1000);
        assert!(s.series.iter().all(|&n| n == 0));
        assert_eq!(s.latency_samples, 0);
    }

    #[test]
    fn errors_are_5xx_shed_and_broken_streams() {
        assert!(is_error(500, false));
        assert!(is_error(502, true));
        assert!(is_error(429, true));
        assert!(is_error(200, true), "failed mid-response");
        assert!(!is_error(200, false));
        assert!(!is_error(202, false));
        assert!(!is_error(404, true));
        assert!(!is_error(413, true));
        assert!(!is_error(499, true), "the caller left");
    }

    #[test]
    fn cold_starts() {
        let w = Window::new();
        assert_eq!(w.snapshot_at(0).last_cold_start_ms, None);
        w.cold_start_at(3, Some(ms(1500)));
        w.cold_start_at(4, None);
        w.cold_start_at(5, Some(Duration::from_micros(250_500)));
        let s = w.snapshot_at(5);
        assert_eq!(s.cold_starts_total, 2);
        assert_eq!(s.cold_start_failures_total, 1);
        assert_eq!(s.cold_starts_window, 2);
        assert_eq!(s.last_cold_start_ms, Some(250.5));
        let s = w.snapshot_at(70);
        assert_eq!(s.cold_starts_window, 0);
        assert_eq!(s.cold_starts_total, 2);
    }

    #[test]
    fn concurrent_recording_loses_nothing() {
        let w = std::sync::Arc::new(Window::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        w.record_at(i / 1000, 200, ms(1), false);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = w.snapshot_at(10);
        assert_eq!(s.requests_total, 40_000);
        assert_eq!(s.series.iter().map(|&n| u64::from(n)).sum::<u64>(), 40_000);
        assert_eq!(s.latency_samples, 40_000);
    }
}
