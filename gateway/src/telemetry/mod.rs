//! Telemetry: the per-invocation log line, metrics through the `metrics` facade, request ids.
//!
//! Metric handles are registered once per function (`FunctionMetrics`) so the hot path never
//! formats a metric name or allocates a label. Labels stay low-cardinality: function, status class,
//! reason, listener — never request ids or paths. The names are documented in `docs/metrics.md`.

#[cfg(test)]
mod doc_check;
mod log;
pub mod otlp;
pub mod trace;
pub mod window;

pub use log::{
    FileTarget, Hex, InstanceLog, InvocationLog, LogSink, Ms, Sink, SinkRegistry, rotated,
};
pub use window::{Window, WindowSnapshot};

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const INVOCATIONS: &str = "fngate_invocations_total";
pub const INVOCATION_DURATION: &str = "fngate_invocation_duration_seconds";
pub const QUEUE_WAIT: &str = "fngate_queue_wait_seconds";
pub const IN_FLIGHT: &str = "fngate_in_flight";
pub const QUEUE_DEPTH: &str = "fngate_queue_depth";
pub const REJECTIONS: &str = "fngate_rejections_total";
pub const UPSTREAM_ERRORS: &str = "fngate_upstream_errors_total";
pub const CONNECTIONS_OPEN: &str = "fngate_connections_open";
pub const CONNECTIONS_TOTAL: &str = "fngate_connections_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "fngate_tls_handshake_failures_total";
pub const CONFIG_RELOADS: &str = "fngate_config_reloads_total";
pub const CERT_RELOADS: &str = "fngate_tls_cert_reloads_total";
pub const LOG_LINES_DROPPED: &str = "fngate_log_lines_dropped_total";
pub const PLUGIN_CALLS: &str = "fngate_plugin_calls_total";
pub const PLUGIN_FAILURES: &str = "fngate_plugin_failures_total";
pub const PLUGIN_CALL_DURATION: &str = "fngate_plugin_call_duration_seconds";
pub const PLUGIN_COUNTER: &str = "fngate_plugin_counter_total";
pub const PLUGIN_HISTOGRAM: &str = "fngate_plugin_histogram";
pub const PLUGIN_LOG_SAMPLED: &str = "fngate_plugin_log_lines_sampled_total";
pub const INSTANCES: &str = "fngate_instances";
pub const COLD_STARTS: &str = "fngate_cold_starts_total";
pub const COLD_START_DURATION: &str = "fngate_cold_start_duration_seconds";
pub const INSTANCE_EXITS: &str = "fngate_instance_exits_total";
pub const ENDPOINT_HEALTH_TRANSITIONS: &str = "fngate_endpoint_health_transitions_total";
pub const ENDPOINTS_UNHEALTHY: &str = "fngate_endpoints_unhealthy";
pub const PROVISIONED_TARGET: &str = "fngate_provisioned_target";
pub const INSTANCE_LOG_LINES: &str = "fngate_instance_log_lines_total";
pub const ASYNC_ACCEPTED: &str = "fngate_async_accepted_total";
pub const ASYNC_DESTINATIONS: &str = "fngate_async_destinations_total";
pub const EVENTS_RECEIVED: &str = "fngate_events_received_total";
pub const EVENTS_MATCHED: &str = "fngate_events_matched_total";
pub const EVENTS_FILTERED: &str = "fngate_events_filtered_total";
pub const EVENTS_DROPPED: &str = "fngate_events_dropped_total";
pub const EVENTS_ENQUEUED: &str = "fngate_events_enqueued_total";
pub const EVENTS_DEDUPLICATED: &str = "fngate_events_deduplicated_total";
pub const EVENTS_REJECTED: &str = "fngate_events_rejected_total";
pub const EVENT_SOURCE_RECONNECTS: &str = "fngate_event_source_reconnects_total";
pub const ASYNC_ATTEMPTS: &str = "fngate_async_attempts_total";
pub const ASYNC_ATTEMPT_DURATION: &str = "fngate_async_attempt_duration_seconds";
pub const ASYNC_EXPIRED: &str = "fngate_async_expired_total";
pub const ASYNC_STOPPED: &str = "fngate_async_stopped_total";
pub const ASYNC_QUEUE_DEPTH: &str = "fngate_async_queue_depth";
pub const ASYNC_OLDEST_AGE: &str = "fngate_async_oldest_task_age_seconds";
pub const USAGE_INVOCATIONS: &str = "fngate_usage_invocations_total";
pub const USAGE_BUSY_SECONDS: &str = "fngate_usage_busy_milliseconds_total";
pub const USAGE_VCPU_SECONDS: &str = "fngate_usage_vcpu_milliseconds_total";
pub const USAGE_MEMORY_GB_SECONDS: &str = "fngate_usage_memory_gb_milliseconds_total";
pub const USAGE_GPU_GB_SECONDS: &str = "fngate_usage_gpu_gb_milliseconds_total";
pub const USAGE_FLUSH_FAILURES: &str = "fngate_usage_flush_failures_total";
pub const STORE_COMMIT_COMMANDS: &str = "fngate_async_store_commit_commands";
pub const STORE_COMMIT_DURATION: &str = "fngate_async_store_commit_seconds";
pub const OTLP_EXPORT_FAILURES: &str = "fngate_otlp_export_failures_total";
pub const TRACES_DROPPED: &str = "fngate_traces_dropped_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0,
];

const STORE_COMMIT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A histogram's buckets, the same on the Prometheus endpoint and in OTLP.
fn histogram_bounds(name: &str) -> Option<&'static [f64]> {
    if name == STORE_COMMIT_COMMANDS {
        Some(STORE_COMMIT_BUCKETS)
    } else if name.ends_with("_seconds") {
        Some(LATENCY_BUCKETS)
    } else {
        None
    }
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global `metrics` recorder (once per process): the Prometheus endpoint's, and
/// with `otlp` set also a copy of every series that is pushed to the collector every `interval`.
/// Without `otlp` a record call is exactly the Prometheus recorder's.
pub fn install_metrics(otlp: Option<(&crate::config::OtlpSpec, Duration)>) -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(STORE_COMMIT_COMMANDS.into()),
                    STORE_COMMIT_BUCKETS,
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first, e.g. in unit tests; then metrics go there.
            match otlp {
                None => {
                    let _ = metrics::set_global_recorder(recorder);
                }
                Some((spec, interval)) => {
                    let both = otlp::OtlpRecorder::new(recorder);
                    otlp::start_metrics(&both, spec, interval);
                    let _ = metrics::set_global_recorder(both);
                }
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        INVOCATIONS,
        "Invocations finished, by function and status class"
    );
    describe_histogram!(
        INVOCATION_DURATION,
        metrics::Unit::Seconds,
        "Time from request to last response byte"
    );
    describe_histogram!(
        QUEUE_WAIT,
        metrics::Unit::Seconds,
        "Time a request waited for a slot"
    );
    describe_gauge!(IN_FLIGHT, "Requests holding an instance slot");
    describe_gauge!(QUEUE_DEPTH, "Requests waiting for a slot");
    describe_counter!(
        REJECTIONS,
        "Requests refused before reaching a backend, by reason"
    );
    describe_counter!(UPSTREAM_ERRORS, "Backend failures, by kind");
    describe_gauge!(CONNECTIONS_OPEN, "Client connections open, by listener");
    describe_counter!(
        CONNECTIONS_TOTAL,
        "Client connections accepted, by listener"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed or timed out"
    );
    describe_counter!(CONFIG_RELOADS, "Configuration reloads, by result");
    describe_counter!(CERT_RELOADS, "TLS certificate reloads, by result");
    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because a sink could not keep up or write, by sink (stdout, file, otlp)"
    );
    describe_counter!(
        OTLP_EXPORT_FAILURES,
        "OTLP exports (metrics pushes, log batches, span batches) the collector did not take, by signal"
    );
    describe_counter!(
        TRACES_DROPPED,
        "Sampled invocation traces not exported, by reason (buffer_full, export_failed)"
    );
    describe_counter!(
        EVENTS_RECEIVED,
        "Object-storage events received, by source and shape"
    );
    describe_counter!(
        EVENTS_MATCHED,
        "Object-storage (event, trigger) pairs that passed the trigger's filters"
    );
    describe_counter!(
        EVENTS_FILTERED,
        "Object-storage events that matched no trigger"
    );
    describe_counter!(EVENTS_DROPPED, "Matched events a policy plugin dropped");
    describe_counter!(EVENTS_ENQUEUED, "Matched events stored as new tasks");
    describe_counter!(
        EVENTS_DEDUPLICATED,
        "Matched events whose task already existed (redeliveries)"
    );
    describe_counter!(EVENTS_REJECTED, "Event notifications refused, by reason");
    describe_histogram!(
        STORE_COMMIT_COMMANDS,
        "Commands (accepts, claims, finishes …) the embedded task store commits together"
    );
    describe_histogram!(
        STORE_COMMIT_DURATION,
        metrics::Unit::Seconds,
        "One group commit of the embedded task store, statements and fsync"
    );
}

/// A duration as milliseconds with microsecond precision, as log lines and the admin API show it.
pub fn millis(d: Duration) -> f64 {
    Ms(d).as_f64()
}

/// Status classes used as a label: a fixed set so handles can be pre-registered.
pub fn status_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Rejection reasons, a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    QueueFull,
    QueueTimeout,
    BodyTooLarge,
    Unauthorized,
    MethodNotAllowed,
    /// Waited for GPU capacity that never came.
    GpuCapacity,
    /// The function's instances fail to start.
    ColdStartFailed,
}

impl Reject {
    const ALL: [Reject; 7] = [
        Reject::QueueFull,
        Reject::QueueTimeout,
        Reject::BodyTooLarge,
        Reject::Unauthorized,
        Reject::MethodNotAllowed,
        Reject::GpuCapacity,
        Reject::ColdStartFailed,
    ];
    fn label(self) -> &'static str {
        match self {
            Reject::QueueFull => "queue_full",
            Reject::QueueTimeout => "queue_timeout",
            Reject::BodyTooLarge => "body_too_large",
            Reject::Unauthorized => "unauthorized",
            Reject::MethodNotAllowed => "method_not_allowed",
            Reject::GpuCapacity => "gpu_capacity",
            Reject::ColdStartFailed => "cold_start_failed",
        }
    }
}

/// Upstream failure kinds, a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Timeout,
    Protocol,
}

impl UpstreamFailure {
    fn label(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Protocol => "protocol",
        }
    }
}

/// Pre-registered metric handles for one function.
#[derive(Debug)]
pub struct FunctionMetrics {
    invocations: [Counter; 5],
    pub duration: Histogram,
    pub queue_wait: Histogram,
    pub in_flight: Gauge,
    pub queue_depth: Gauge,
    rejections: [Counter; 7],
    upstream: [Counter; 3],
    /// Indexed by `[kind][state]` as in `crate::scheduler` (provisioned, on-demand) ×
    /// (starting, ready, draining, stopping).
    pub instances: [[Gauge; 4]; 2],
    /// ok, failed
    cold_starts: [Counter; 2],
    cold_start_duration: Histogram,
    /// exited (unexpectedly), unhealthy, stopped (by fngate)
    exits: [Counter; 3],
    /// Static endpoints leaving rotation, coming back.
    health_transitions: [Counter; 2],
    /// Static endpoints out of rotation now.
    pub endpoints_unhealthy: Gauge,
    pub provisioned_target: Gauge,
    /// Async accepts: stored, existing (a repeated task id).
    async_accepted: [Counter; 2],
    /// The last minute in process, for the dashboard (`GET /admin/overview`).
    pub window: Window,
}

/// Why an instance went away, a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceExit {
    Exited = 0,
    Unhealthy = 1,
    Stopped = 2,
}

impl FunctionMetrics {
    pub fn new(function: &str) -> Self {
        let f = function.to_string();
        FunctionMetrics {
            invocations: CLASSES.map(|c| metrics::counter!(INVOCATIONS, "function" => f.clone(), "status" => c)),
            duration: metrics::histogram!(INVOCATION_DURATION, "function" => f.clone()),
            queue_wait: metrics::histogram!(QUEUE_WAIT, "function" => f.clone()),
            in_flight: metrics::gauge!(IN_FLIGHT, "function" => f.clone()),
            queue_depth: metrics::gauge!(QUEUE_DEPTH, "function" => f.clone()),
            rejections: Reject::ALL.map(|r| metrics::counter!(REJECTIONS, "function" => f.clone(), "reason" => r.label())),
            upstream: [UpstreamFailure::Connect, UpstreamFailure::Timeout, UpstreamFailure::Protocol]
                .map(|u| metrics::counter!(UPSTREAM_ERRORS, "function" => f.clone(), "kind" => u.label())),
            instances: ["provisioned", "on-demand"].map(|k| {
                ["starting", "ready", "draining", "stopping"].map(|s| {
                    metrics::gauge!(INSTANCES, "function" => f.clone(), "kind" => k, "state" => s)
                })
            }),
            cold_starts: ["ok", "failed"]
                .map(|r| metrics::counter!(COLD_STARTS, "function" => f.clone(), "result" => r)),
            cold_start_duration: metrics::histogram!(COLD_START_DURATION, "function" => f.clone()),
            exits: ["exited", "unhealthy", "stopped"]
                .map(|r| metrics::counter!(INSTANCE_EXITS, "function" => f.clone(), "reason" => r)),
            health_transitions: ["unhealthy", "healthy"].map(|t| {
                metrics::counter!(ENDPOINT_HEALTH_TRANSITIONS, "function" => f.clone(), "to" => t)
            }),
            endpoints_unhealthy: metrics::gauge!(ENDPOINTS_UNHEALTHY, "function" => f.clone()),
            provisioned_target: metrics::gauge!(PROVISIONED_TARGET, "function" => f.clone()),
            async_accepted: ["stored", "existing"]
                .map(|r| metrics::counter!(ASYNC_ACCEPTED, "function" => f.clone(), "result" => r)),
            window: Window::new(),
        }
    }

    /// An instance start that became ready after `Some(spawn to ready)`, or failed (`None`).
    pub fn cold_start(&self, took: Option<Duration>) {
        self.cold_starts[usize::from(took.is_none())].increment(1);
        if let Some(d) = took {
            self.cold_start_duration.record(d.as_secs_f64());
        }
        self.window.cold_start(took);
    }

    /// An async request stored as a new task, or answered with the existing task of its id.
    pub fn async_accepted(&self, existing: bool) {
        self.async_accepted[usize::from(existing)].increment(1);
    }

    pub fn instance_exit(&self, why: InstanceExit) {
        self.exits[why as usize].increment(1);
    }

    /// A static endpoint left rotation (`healthy` false) or came back.
    pub fn endpoint_health(&self, healthy: bool) {
        self.health_transitions[usize::from(healthy)].increment(1);
    }

    pub fn finished(&self, status: u16, elapsed: Duration) {
        self.invocations[status_class(status)].increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }

    pub fn rejected(&self, r: Reject) {
        let i = Reject::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.rejections[i].increment(1);
    }

    pub fn upstream_failed(&self, u: UpstreamFailure) {
        self.upstream[u as usize].increment(1);
    }
}

/// Rejections that happen before any function is known (unknown route).
pub fn rejected_unrouted() {
    metrics::counter!(REJECTIONS, "function" => "", "reason" => "not_found").increment(1);
}

/// Request ids: unique per process run and hard to guess; 16 hex digits.
pub fn next_request_id() -> RequestId {
    RequestId::from_u64(unique_u64())
}

/// A number unique per process run and hard to guess: splitmix64 of a counter from a random
/// seed (request ids, trace and span ids).
pub(crate) fn unique_u64() -> u64 {
    unique_u64s::<1>()[0]
}

/// `N` such numbers for one step of the counter (a trace's ids: one atomic add, not three).
pub(crate) fn unique_u64s<const N: usize>() -> [u64; N] {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        h.write_u32(std::process::id());
        h.finish()
    });
    // splitmix64 is a bijection, so distinct counters give distinct values.
    let first = COUNTER.fetch_add(N as u64, Ordering::Relaxed);
    std::array::from_fn(|i| {
        let mut z = seed.wrapping_add(
            first
                .wrapping_add(i as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// Each byte's two lower-case hex digits.
pub const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

/// `bytes` in lower-case hex into `out` (twice as long): request ids, trace and span ids.
pub fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
}

/// An IP address as `Display` writes it, into `buf`, without the formatting machinery for
/// IPv4 (every request writes its client's: `x-forwarded-for`, the log line).
pub fn ip_text(ip: std::net::IpAddr, buf: &mut [u8; 45]) -> &[u8] {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + o / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
            &buf[..n]
        }
        // At most 45 characters (an IPv4-mapped form included): the write cannot fall short.
        std::net::IpAddr::V6(v6) => {
            use std::io::Write as _;
            let mut rest = &mut buf[..];
            let _ = write!(rest, "{v6}");
            let n = 45 - rest.len();
            &buf[..n]
        }
    }
}

/// One hex digit's value (either case); `None` for anything else.
pub fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Hex digits (either case) → bytes into `out` (half as long); `None` on anything else.
pub fn unhex(hex: &[u8], out: &mut [u8]) -> Option<()> {
    if hex.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(())
}

/// Waits on `cv` until `done` holds or `deadline` passes, and hands the lock back (the log
/// writers and the trace exporter gather rounds this way).
pub(crate) fn wait_until<'a, T>(
    cv: &std::sync::Condvar,
    mut guard: std::sync::MutexGuard<'a, T>,
    deadline: std::time::Instant,
    done: impl Fn(&T) -> bool,
) -> std::sync::MutexGuard<'a, T> {
    while !done(&guard) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        guard = cv
            .wait_timeout(guard, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    guard
}

/// A request id kept inline (no allocation) and usable as a header value.
#[derive(Clone, Copy)]
pub struct RequestId([u8; 16]);

impl RequestId {
    fn from_u64(v: u64) -> Self {
        let mut out = [0u8; 16];
        hex_into(&mut out, &v.to_be_bytes());
        RequestId(out)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }

    pub fn header_value(&self) -> http::HeaderValue {
        http::HeaderValue::from_str(self.as_str()).expect("hex digits are a valid header value")
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Standard base64 with padding (the `x-fngate-log-result` header).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let v = (chunk[0] as u32) << 16
            | (chunk.get(1).copied().unwrap_or(0) as u32) << 8
            | chunk.get(2).copied().unwrap_or(0) as u32;
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                T[((v >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// RFC 3339 UTC timestamp with milliseconds, without pulling in a date crate. Called for every
/// log line: the date and time of day are formatted once per second per thread.
pub fn rfc3339_now() -> String {
    Timestamp::now().as_str().to_owned()
}

/// An RFC 3339 UTC time with milliseconds (`2026-11-25T10:00:00.123Z`), kept inline: a log line
/// carries one without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Timestamp([u8; 24]);

impl Timestamp {
    /// Now. The date and time of day are formatted once per second per thread.
    pub fn now() -> Self {
        Timestamp::at(SystemTime::now())
    }

    /// The time `t` (a clock reading the caller uses for other figures too).
    pub fn at(t: SystemTime) -> Self {
        thread_local! {
            static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
        }
        let now = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = now.as_secs();
        let ms = now.subsec_millis();
        let (at, mut prefix) = SECOND.get();
        if at != secs {
            // Years past 9999 do not fit the fixed width; they are not expected in a log.
            let p = rfc3339_second(secs as i64);
            let n = p.len().min(19);
            prefix[..n].copy_from_slice(&p.as_bytes()[..n]);
            SECOND.set((secs, prefix));
        }
        let mut out = [0u8; 24];
        out[..19].copy_from_slice(&prefix);
        out[19] = b'.';
        out[20] = b'0' + (ms / 100) as u8;
        out[21] = b'0' + (ms / 10 % 10) as u8;
        out[22] = b'0' + (ms % 10) as u8;
        out[23] = b'Z';
        Timestamp(out)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00.000Z")
    }

    /// The ASCII bytes (no UTF-8 check: log encoders copy them as they are).
    pub fn as_bytes(&self) -> &[u8; 24] {
        &self.0
    }
}

impl std::fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// RFC 3339 UTC timestamp of a Unix second (`2026-11-25T10:00:00Z`).
pub fn rfc3339(secs: i64) -> String {
    let mut s = rfc3339_second(secs);
    s.push('Z');
    s
}

/// An RFC 3339 time (`2026-11-25T10:00:00.123Z`; `t` or a space for `T`, any fraction, `Z` or
/// `±HH:MM`) as Unix seconds and nanoseconds. The admin API's time bounds and the OTLP log
/// exporter (reading back the `ts` of a line) both parse with it.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        // Nanoseconds from the first nine digits; finer digits are dropped.
        let digits = &frac[..n.min(9)];
        nanos = digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32);
        rest = &frac[n..];
    }
    let offset = match rest.as_bytes() {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(s.len() - 5..s.len() - 3)?, num(s.len() - 2..s.len())?);
            if oh > 23 || om > 59 {
                return None;
            }
            let v = oh * 3600 + om * 60;
            if *sign == b'-' { -v } else { v }
        }
        _ => return None,
    };
    // A leap second (:60) is read as :59.
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec.min(59) - offset;
    Some((secs, nanos))
}

/// Howard Hinnant's days_from_civil (proleptic Gregorian): days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second.
fn rfc3339_second(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_hex() {
        let a = next_request_id();
        let b = next_request_id();
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str().len(), 16);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn ids_taken_together_are_distinct_from_each_other_and_the_next() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let [a, b, c] = unique_u64s::<3>();
            for v in [a, b, c, unique_u64()] {
                assert!(seen.insert(v), "{v:x} twice");
            }
        }
    }

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "::",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip, &mut [0; 45]), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn base64_encodes() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff, 0x00, 0x10, 0x80]), "/wAQgA==");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(rfc3339_second(0), "1970-01-01T00:00:00");
        assert_eq!(rfc3339_second(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(rfc3339_second(1_795_996_799), "2026-11-29T23:59:59");
    }

    #[test]
    fn rfc3339_parses_back() {
        for secs in [0, 951_782_400, 1_795_996_799] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some((secs, 0)));
        }
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:01.5Z"),
            Some((951_782_401, 500_000_000))
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:01.1234567891Z"),
            Some((951_782_401, 123_456_789))
        );
        assert_eq!(
            parse_rfc3339("2026-11-25T11:30:00+01:30"),
            Some((1_795_600_800, 0))
        );
        for bad in [
            "",
            "x",
            "2026-11-25T10:00:00.Z",
            "2026-11-25T10:00:00",
            "2026-11-25T10:00:00+1:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn timestamp_shape() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
