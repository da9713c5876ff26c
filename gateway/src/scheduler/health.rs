//! Passive health of static endpoints: which endpoint is in rotation.
//!
//! A static endpoint is not a process fngate watches, so its health is read off the calls it
//! serves. `passive_health.failures` failed calls in a row (connection refused or reset,
//! malformed answer; a timeout only with `timeouts = true`) take it out of rotation: new
//! requests go to the function's other endpoints while any of them is in rotation. Any HTTP
//! answer counts as a success, a 5xx included: the backend is alive and said so. After a
//! cooldown the upkeep loop probes the endpoint (`GET probe_path`, any HTTP answer passes); a
//! pass puts it back, a failure doubles the wait up to `max_cooldown`. An endpoint ejected again
//! within `max_cooldown` of coming back also waits twice as long as the last time, so a flapping
//! endpoint costs fewer failed calls each round.
//!
//! When every endpoint of a function is out of rotation, requests still go to them (fail open):
//! the evidence is a handful of failed calls, and trying costs no more than refusing (a refused
//! connection fails in well under a millisecond) while a recovered backend starts serving at
//! once instead of after the next probe.
//!
//! The request path pays two relaxed atomic loads per answered call (the failure count and the
//! state; a store more after a failure) and one load per instance looked at when a slot is
//! picked, which happens under the function lock anyway. Transitions take the function lock;
//! they are rare.

use crate::config::PassiveHealth;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Where an endpoint stands; only `Healthy` ones are in rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Healthy = 0,
    /// Out of rotation, waiting for its next probe.
    Unhealthy = 1,
    /// Out of rotation, a probe on its way.
    Probing = 2,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Healthy,
            1 => Health::Unhealthy,
            _ => Health::Probing,
        }
    }
}

/// One endpoint's passive-health record. Every instance has one; only static endpoints use it.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    state: AtomicU8,
    /// Failed calls in a row.
    failures: AtomicU32,
    /// Ejections and failed probes in a row: the exponent of the cooldown.
    level: AtomicU32,
    /// `now_ms()` when the next probe is due (while out of rotation).
    retry_at_ms: AtomicU64,
    /// `now_ms()` when it last came back; 0 if it never left.
    recovered_ms: AtomicU64,
    /// Why it left rotation, or why its last probe failed; written only on transitions.
    last_error: Mutex<Option<String>>,
}

/// The wait before the probe after `level` ejections or failed probes in a row.
pub fn cooldown(h: &PassiveHealth, level: u32) -> Duration {
    h.cooldown
        .saturating_mul(1 << level.min(16))
        .min(h.max_cooldown)
}

impl EndpointHealth {
    pub fn health(&self) -> Health {
        Health::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn in_rotation(&self) -> bool {
        self.state.load(Ordering::Relaxed) == Health::Healthy as u8
    }

    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn level(&self) -> u32 {
        self.level.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    /// Milliseconds until the next probe, while out of rotation.
    pub fn retry_in_ms(&self, now_ms: u64) -> Option<u64> {
        (self.health() != Health::Healthy).then(|| {
            self.retry_at_ms
                .load(Ordering::Relaxed)
                .saturating_sub(now_ms)
        })
    }

    /// A call got an HTTP answer. True when that changes something (the caller then takes the
    /// slow path, [`EndpointHealth::recover`]).
    #[inline]
    pub fn answered(&self) -> bool {
        self.failures.load(Ordering::Relaxed) != 0 || !self.in_rotation()
    }

    /// An answer from an endpoint in rotation: its failures in a row are over.
    pub fn clear_failures(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Clears the failure count; true if the endpoint was out of rotation and is back.
    pub fn recover(&self, now_ms: u64) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        if self.in_rotation() {
            return false;
        }
        self.state.store(Health::Healthy as u8, Ordering::Relaxed);
        self.recovered_ms.store(now_ms, Ordering::Relaxed);
        self.set_error(None);
        true
    }

    /// A call failed; returns the failures in a row now.
    pub fn failed(&self) -> u32 {
        self.failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Takes the endpoint out of rotation if it is in; returns the cooldown before its probe.
    /// Call under the function lock, so only one caller ejects it.
    pub fn eject(&self, h: &PassiveHealth, now_ms: u64, why: String) -> Option<Duration> {
        if !self.in_rotation() {
            return None;
        }
        let recovered = self.recovered_ms.load(Ordering::Relaxed);
        let flapping =
            recovered != 0 && now_ms.saturating_sub(recovered) < h.max_cooldown.as_millis() as u64;
        let level = if flapping { self.level() + 1 } else { 0 };
        Some(self.out_of_rotation(h, now_ms, level, why))
    }

    /// Out of rotation at cooldown `level`, for `why`; returns the wait before the next probe.
    fn out_of_rotation(&self, h: &PassiveHealth, now_ms: u64, level: u32, why: String) -> Duration {
        let level = level.min(32);
        self.level.store(level, Ordering::Relaxed);
        let wait = cooldown(h, level);
        self.retry_at_ms
            .store(now_ms + wait.as_millis() as u64, Ordering::Relaxed);
        self.set_error(Some(why));
        self.state.store(Health::Unhealthy as u8, Ordering::Relaxed);
        wait
    }

    /// Claims the probe if one is due; the caller must report back with [`probe_failed`] or
    /// [`recover`].
    ///
    /// [`probe_failed`]: EndpointHealth::probe_failed
    /// [`recover`]: EndpointHealth::recover
    pub fn take_probe(&self, now_ms: u64) -> bool {
        self.health() == Health::Unhealthy
            && self.retry_at_ms.load(Ordering::Relaxed) <= now_ms
            && self
                .state
                .compare_exchange(
                    Health::Unhealthy as u8,
                    Health::Probing as u8,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// The probe failed: out of rotation for twice as long as last time (bounded). Returns
    /// the new cooldown, or `None` if a served call brought the endpoint back meanwhile.
    pub fn probe_failed(&self, h: &PassiveHealth, now_ms: u64, why: String) -> Option<Duration> {
        if self.health() != Health::Probing {
            return None;
        }
        Some(self.out_of_rotation(h, now_ms, self.level() + 1, why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PassiveHealth {
        PassiveHealth {
            failures: 3,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(10),
            ..PassiveHealth::default()
        }
    }

    #[test]
    fn cooldown_doubles_up_to_the_maximum() {
        let h = spec();
        let waits: Vec<u64> = (0..6).map(|l| cooldown(&h, l).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(cooldown(&h, 1000), Duration::from_secs(10));
    }

    #[test]
    fn eject_probe_and_recover() {
        let h = spec();
        let e = EndpointHealth::default();
        assert!(e.in_rotation() && !e.answered());
        assert_eq!(e.failed(), 1);
        assert!(
            e.answered(),
            "a failure makes the next answer take the slow path"
        );
        assert!(!e.recover(10), "still in rotation: nothing to report");
        assert!(!e.answered());
        e.failed();
        e.failed();
        assert_eq!(e.eject(&h, 1_000, "refused".into()), Some(h.cooldown));
        assert_eq!(e.eject(&h, 1_000, "again".into()), None, "ejected once");
        assert_eq!(e.health(), Health::Unhealthy);
        assert_eq!(e.last_error().as_deref(), Some("refused"));
        assert_eq!(e.retry_in_ms(1_400), Some(600));
        assert!(!e.take_probe(1_999), "not due yet");
        assert!(e.take_probe(2_000));
        assert!(!e.take_probe(2_000), "one probe at a time");
        assert_eq!(e.health(), Health::Probing);
        assert_eq!(
            e.probe_failed(&h, 2_000, "refused".into()),
            Some(Duration::from_secs(2))
        );
        assert!(e.take_probe(4_000));
        assert_eq!(
            e.probe_failed(&h, 4_000, "refused".into()),
            Some(Duration::from_secs(4))
        );
        assert!(e.take_probe(8_000));
        assert!(e.recover(8_000));
        assert!(e.in_rotation() && e.failures() == 0 && e.last_error().is_none());
        // Ejected again soon after coming back: the wait goes on growing from where it was.
        assert_eq!(
            e.eject(&h, 9_000, "reset".into()),
            Some(Duration::from_secs(8))
        );
        // A served call brought it back while the probe ran: the probe's failure is stale.
        assert!(e.take_probe(17_000));
        assert!(e.recover(17_500));
        assert_eq!(e.probe_failed(&h, 17_600, "late".into()), None);
        assert!(e.in_rotation());
        // Ejected long after its last recovery: back to the first cooldown.
        assert_eq!(e.eject(&h, 60_000, "refused".into()), Some(h.cooldown));
    }
}
