//! The host's services as plain functions, plus [`hash64`].
//!
//! On wasm32 `sys` is the generated import bindings; elsewhere it is the [`crate::testing`]
//! host, so the same plugin code runs in native unit tests.

use crate::FunctionLoad;

#[cfg(target_arch = "wasm32")]
pub(crate) mod sys {
    pub(crate) use crate::bindings::fngate::policy::host::{
        config_entries, config_get, counter_add, function_state, histogram_record, log,
        monotonic_now, rate_limit,
    };
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing::sys;

/// The live state of a function ("service/function"), or `None` when no such function exists.
///
/// Use it to route by load: a function with a deep queue or no ready slot is a reason to send
/// the request elsewhere.
///
/// ```no_run
/// use fngate_plugin::{Decision, state};
///
/// let busy = state("llm/t4").is_some_and(|s| s.queue_depth >= 8);
/// let decision = if busy { Decision::route_to("llm/a10") } else { Decision::pass() };
/// ```
pub fn state(function: &str) -> Option<FunctionLoad> {
    sys::function_state(function)
}

/// Takes one token from the token bucket `key` and says whether there was one.
///
/// The bucket refills at `per_second` tokens per second up to `burst`; it is scoped to this
/// plugin and shared by all its instances across the gateway, so this is the place for limits
/// and shared counters (never a global variable). At most 10,000 keys are tracked per plugin.
///
/// ```no_run
/// use fngate_plugin::{Decision, rate_limit};
///
/// if !rate_limit("tenant:acme", 50.0, 100) {
///     let _ = Decision::reject(429, "slow down").with_header("retry-after", "1");
/// }
/// ```
pub fn rate_limit(key: &str, per_second: f64, burst: u32) -> bool {
    sys::rate_limit(key, per_second, burst)
}

/// Adds `value` to the counter `name`, exported by the gateway as
/// `fngate_plugin_counter_total{plugin, name}`.
///
/// Counters and histograms share a limit of 32 distinct names per plugin; use fixed names, never
/// ones built from request data.
///
/// ```no_run
/// fngate_plugin::counter("route_long", 1);
/// ```
pub fn counter(name: &str, value: u64) {
    sys::counter_add(name, value);
}

/// Records `value` in the histogram `name`, exported as `fngate_plugin_histogram{plugin, name}`.
///
/// ```no_run
/// # let body_bytes = 512u64;
/// fngate_plugin::histogram("prompt_bytes", body_bytes as f64);
/// ```
pub fn histogram(name: &str, value: f64) {
    sys::histogram_record(name, value);
}

/// Nanoseconds from an arbitrary fixed point; only differences mean anything (there is no wall
/// clock in the sandbox).
///
/// ```no_run
/// let start = fngate_plugin::now_ns();
/// // … work …
/// fngate_plugin::histogram("work_ns", (fngate_plugin::now_ns() - start) as f64);
/// ```
pub fn now_ns() -> u64 {
    sys::monotonic_now()
}

/// A stable 64-bit hash of `bytes`: FNV-1a followed by a 64-bit avalanche finaliser, so that
/// every bit (and `hash % n` for any `n`) is well mixed. The value never changes between SDK
/// versions, which makes it right for sticky splits.
///
/// ```
/// use fngate_plugin::hash64;
///
/// // A 10% canary split keyed by the request id (uniformly distributed hex digits).
/// let in_canary = |request_id: &str| hash64(request_id) % 100 < 10;
/// assert_eq!(in_canary("9e71362d27fd85ff"), in_canary("9e71362d27fd85ff"));
/// assert_eq!(hash64(b""), hash64(""));
/// ```
pub fn hash64(bytes: impl AsRef<[u8]>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for &b in bytes.as_ref() {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    // FNV-1a leaves the last byte poorly mixed into the high bits; MurmurHash3's fmix64 fixes
    // that.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::hash64;

    #[test]
    fn hash64_is_stable() {
        // Pinned values: a change here breaks every sticky split in production.
        // (Checked against an independent implementation.)
        assert_eq!(hash64(""), 0xefd0_1f60_ba99_2926);
        assert_eq!(hash64("9e71362d27fd85ff"), 0x10ee_04e8_d179_65d6);
        assert_eq!(hash64("9e71362d27fd85ff"), hash64(b"9e71362d27fd85ff"));
    }

    #[test]
    fn hash64_splits_request_ids_evenly() {
        // 100,000 sequential hex ids (a worst case for weak hashes) into 100 buckets: each
        // bucket should get 1,000 ± a few percent.
        let mut buckets = [0u32; 100];
        for i in 0..100_000u64 {
            buckets[(hash64(format!("{i:016x}")) % 100) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(
            *min > 880 && *max < 1120,
            "uneven split: min {min}, max {max}"
        );
    }
}
