//! The per-invocation log line, the sinks that write log lines without ever blocking a request,
//! and the routing of each line to its sinks (global, or per service).
//!
//! Each sink (stdout, a size-rotated file) owns a bounded byte buffer and one writer thread that
//! takes the whole buffer every few milliseconds and writes it in one go: a request appends its
//! line under a short lock and never wakes anyone. When a sink cannot keep up (a stuck pipe, a
//! full disk) lines are dropped and counted (`fngate_log_lines_dropped_total{sink}`) instead of
//! stalling the request path. A line is serialised once, whatever the number of sinks it goes to.

use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// Bytes a sink buffers before it drops lines (some 20,000 invocation lines).
pub const LOG_BUFFER_BYTES: usize = 8 << 20;
/// A writer thread writes what has accumulated this long after the first line of a round. Lines
/// are never handed over one at a time: a wake-up per line would cost the request path a futex
/// call and, on a busy core, a context switch.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Past this many buffered bytes the writer is woken at once instead of at its next tick.
const FLUSH_BYTES: usize = 256 * 1024;

/// One line per invocation; field names are part of the public contract (docs/logging.md).
/// Fields without a value are left out of the line (not written as null).
#[derive(Debug, Serialize)]
pub struct InvocationLog<'a> {
    pub ts: super::Timestamp,
    pub kind: &'static str,
    pub request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_kind: Option<&'static str>,
    /// Set when the request waited for a cold start: its wait, then the instance's split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_start_ms: Option<Ms>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_start_spawn_ms: Option<Ms>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_start_readiness_ms: Option<Ms>,
    /// The task id of an async request (answered 202).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<&'a str>,
    pub queue_wait_ms: Ms,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<Ms>,
    pub duration_ms: Ms,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'static str,
    pub client: std::net::IpAddr,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// Tenant key from a policy plugin's decision, or the bearer-authenticated trigger's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'a str>,
    /// What the invocation held on its instance (docs/metering.md); null when it got no slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<&'a crate::metering::Usage>,
    /// The invocation's trace and span (hex) when traces are configured, sampled or not: the
    /// backend got them in `traceparent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<Hex<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<Hex<'a>>,
}

/// A duration written as milliseconds with microsecond resolution (`12.345`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ms(pub Duration);

impl Ms {
    /// Whole microseconds, rounded to nearest.
    pub fn micros(self) -> u64 {
        let d = self.0;
        d.as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from((d.subsec_nanos() + 500) / 1000))
    }

    /// As a float, for span attributes and the derived document.
    pub fn as_f64(self) -> f64 {
        self.micros() as f64 / 1e3
    }
}

impl Serialize for Ms {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

/// Lower-case hex digits (trace and span ids), taken from the `traceparent` text the request
/// already carries: copied into the line as they are.
#[derive(Debug, Clone, Copy)]
pub struct Hex<'a>(pub &'a [u8]);

impl Serialize for Hex<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(self.0).unwrap_or_default())
    }
}

impl InvocationLog<'_> {
    /// The line as JSON, written by hand: the same document as the derived `Serialize` (a test
    /// holds the two equal) without serde's generic machinery or float formatting, since every
    /// invocation writes one.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // The fixed part of a line is under 700 bytes: one reservation, no growth on the way
        // (escapes may still grow it).
        out.reserve(
            700 + self.path.len()
                + self.error.map_or(0, str::len)
                + self.instance_id.map_or(0, str::len)
                + self.trigger.map_or(0, str::len)
                + self.function.map_or(0, str::len)
                + self.task_id.map_or(0, str::len)
                + self.tenant.map_or(0, str::len),
        );
        out.extend_from_slice(b"{\"ts\":\"");
        out.extend_from_slice(self.ts.as_bytes());
        out.extend_from_slice(b"\",\"kind\":");
        raw_str(out, self.kind);
        out.extend_from_slice(b",\"request_id\":");
        raw_str(out, self.request_id);
        opt_str(out, b",\"trigger\":", self.trigger);
        opt_str(out, b",\"function\":", self.function);
        opt_str(out, b",\"instance_id\":", self.instance_id);
        opt_raw(out, b",\"instance_kind\":", self.instance_kind);
        opt_ms(out, b",\"cold_start_ms\":", self.cold_start_ms);
        opt_ms(out, b",\"cold_start_spawn_ms\":", self.cold_start_spawn_ms);
        opt_ms(
            out,
            b",\"cold_start_readiness_ms\":",
            self.cold_start_readiness_ms,
        );
        opt_str(out, b",\"task_id\":", self.task_id);
        opt_ms(out, b",\"queue_wait_ms\":", Some(self.queue_wait_ms));
        opt_ms(out, b",\"upstream_ms\":", self.upstream_ms);
        opt_ms(out, b",\"duration_ms\":", Some(self.duration_ms));
        // An HTTP method is a token (RFC 9110): no quote, backslash or control character.
        out.extend_from_slice(b",\"method\":");
        raw_str(out, self.method);
        out.extend_from_slice(b",\"path\":");
        json_str(out, self.path);
        out.extend_from_slice(b",\"protocol\":");
        raw_str(out, self.protocol);
        out.extend_from_slice(b",\"client\":\"");
        out.extend_from_slice(super::ip_text(self.client, &mut [0; 45]));
        out.extend_from_slice(b"\",\"status\":");
        write_u64(out, u64::from(self.status));
        out.extend_from_slice(b",\"bytes_in\":");
        write_u64(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        write_u64(out, self.bytes_out);
        opt_str(out, b",\"error\":", self.error);
        opt_str(out, b",\"tenant\":", self.tenant);
        if let Some(u) = self.usage {
            out.extend_from_slice(b",\"usage\":{\"busy_s\":");
            json_ns(out, u.busy_s);
            out.extend_from_slice(b",\"vcpu_s\":");
            json_ns(out, u.vcpu_s);
            out.extend_from_slice(b",\"memory_gb_s\":");
            json_ns(out, u.memory_gb_s);
            out.extend_from_slice(b",\"gpu_gb_s\":");
            json_ns(out, u.gpu_gb_s);
            opt_str(out, b",\"gpu_type\":", u.gpu_type.as_deref());
            out.extend_from_slice(b",\"billing\":\"");
            out.extend_from_slice(u.billing.as_str().as_bytes());
            out.extend_from_slice(b"\"}");
        }
        for (key, hex) in [
            (&b",\"trace_id\":\""[..], self.trace_id),
            (b",\"span_id\":\"", self.span_id),
        ] {
            if let Some(Hex(h)) = hex {
                debug_assert!(h.iter().all(u8::is_ascii_hexdigit));
                out.extend_from_slice(key);
                out.extend_from_slice(h);
                out.push(b'"');
            }
        }
        out.push(b'}');
    }
}

/// A JSON string, escaped as serde_json escapes (quote, backslash, control characters). A
/// string with nothing to escape, found eight bytes at a time, is copied whole.
#[inline(always)]
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let b = s.as_bytes();
    if !any_escape(b) {
        // The usual case: names, paths and messages without quotes or control characters.
        out.extend_from_slice(b);
        out.push(b'"');
        return;
    }
    // Something to escape (rare): byte by byte, plain runs copied whole.
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'"' || c == b'\\' || c < 0x20 {
            out.extend_from_slice(&b[start..i]);
            escape(out, c);
            start = i + 1;
        }
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// Whether any byte of `b` needs escaping, eight at a time; the last few bytes are padded
/// into one more word with a plain letter instead of being looked at one by one.
#[inline(always)]
fn any_escape(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        if needs_escape(u64::from_le_bytes(w.try_into().expect("8 bytes"))) {
            return true;
        }
    }
    let rest = words.remainder();
    let mut last = [b'a'; 8];
    last[..rest.len()].copy_from_slice(rest);
    needs_escape(u64::from_le_bytes(last))
}

/// True when one of the eight bytes is `"`, `\` or below 0x20 (bytes ≥ 0x80, UTF-8, never
/// need it). The classic "has a byte less than n" and "has a zero byte" word tricks.
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (below_space | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))) != 0
}

fn escape(out: &mut Vec<u8>, c: u8) {
    match c {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => {
            let [hi, lo] = super::HEX_PAIRS[usize::from(c)];
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hi, lo]);
        }
    }
}

/// A float as serde_json writes it (shortest round-trip form; non-finite values as null).
fn json_f64(out: &mut Vec<u8>, v: f64) {
    if serde_json::to_writer(&mut *out, &v).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// A string known to need no escaping (fixed words, hex ids, HTTP tokens), copied as it is.
#[inline(always)]
fn raw_str(out: &mut Vec<u8>, s: &str) {
    debug_assert!(
        !s.bytes().any(|c| c == b'"' || c == b'\\' || c < 0x20),
        "{s}"
    );
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

#[inline(always)]
fn opt_raw(out: &mut Vec<u8>, key: &[u8], v: Option<&str>) {
    if let Some(s) = v {
        out.extend_from_slice(key);
        raw_str(out, s);
    }
}

#[inline(always)]
fn opt_str(out: &mut Vec<u8>, key: &[u8], v: Option<&str>) {
    if let Some(s) = v {
        out.extend_from_slice(key);
        json_str(out, s);
    }
}

/// Milliseconds with three decimals (whole microseconds): `12.345`.
#[inline(always)]
fn opt_ms(out: &mut Vec<u8>, key: &[u8], v: Option<Ms>) {
    let Some(ms) = v else { return };
    out.extend_from_slice(key);
    let us = ms.micros();
    write_u64(out, us / 1000);
    let frac = (us % 1000) as usize;
    let p = frac % 100 * 2;
    out.extend_from_slice(&[b'.', b'0' + (frac / 100) as u8, PAIRS[p], PAIRS[p + 1]]);
}

/// A usage figure as `metering::round_ns` rounds it (nanosecond resolution), trailing zeros
/// left out: `0.000197209`.
fn json_ns(out: &mut Vec<u8>, v: f64) {
    if v == 0.0 {
        // A share the instance does not have (gpu_gb_s without a GPU): no digits to work out.
        out.extend_from_slice(b"0.0");
        return;
    }
    if !(v.is_finite() && (0.0..1e9).contains(&v)) {
        return json_f64(out, crate::metering::round_ns(v));
    }
    // `(v * 1e9).round()` without the libm call: non-negative and below 2^52, so the truncated
    // value and the remainder are exact, and a half rounds up (away from zero) as `round` does.
    let x = v * 1e9;
    // Below 2^63: the signed conversion is one instruction, the unsigned one a branchy few.
    let mut n = x as i64 as u64;
    if x - n as f64 >= 0.5 {
        n += 1;
    }
    write_u64(out, n / 1_000_000_000);
    let frac = n % 1_000_000_000;
    if frac == 0 {
        out.extend_from_slice(b".0");
        return;
    }
    let digits = nine_digits(frac);
    let end = digits.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
    out.push(b'.');
    out.extend_from_slice(&digits[..end]);
}

/// `v` (below 10^9) as exactly nine digits, zeros in front: a fixed sequence of divisions.
fn nine_digits(v: u64) -> [u8; 9] {
    let pair = |n: u64| {
        let p = n as usize * 2;
        [PAIRS[p], PAIRS[p + 1]]
    };
    let (hi, lo) = (v / 100_000, v % 100_000);
    let (a, b) = (pair(hi / 100), pair(hi % 100));
    let (c, d) = (pair(lo % 10_000 / 100), pair(lo % 100));
    [
        a[0],
        a[1],
        b[0],
        b[1],
        b'0' + (lo / 10_000) as u8,
        c[0],
        c[1],
        d[0],
        d[1],
    ]
}

/// Two digits per division.
const PAIRS: &[u8; 200] = b"00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

#[inline(always)]
fn write_u64(out: &mut Vec<u8>, v: u64) {
    // Most figures in a line are small (milliseconds, byte counts of 0).
    if v < 10 {
        out.push(b'0' + v as u8);
    } else if v < 100 {
        let p = v as usize * 2;
        out.extend_from_slice(&PAIRS[p..p + 2]);
    } else {
        write_large(out, v);
    }
}

#[inline(never)]
fn write_large(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while v >= 100 {
        let p = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[p..p + 2]);
    }
    if v >= 10 {
        let p = v as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[p..p + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + v as u8;
    }
    out.extend_from_slice(&digits[i..]);
}

/// One line of an instance's stdout or stderr (process backends).
#[derive(Debug, Serialize)]
pub struct InstanceLog<'a> {
    pub ts: super::Timestamp,
    pub kind: &'static str,
    pub function: &'a str,
    pub instance_id: &'a str,
    pub stream: &'static str,
    pub line: &'a str,
}

/// Where a line is written: the bounded hand-off to one writer thread.
#[derive(Debug)]
pub struct Sink {
    shared: Arc<Shared>,
    label: &'static str,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer early (buffer past `FLUSH_BYTES`, a flush request, the sink closing).
    wake: Condvar,
    /// Tells `flush` callers that a write round finished.
    written: Condvar,
    capacity: usize,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    /// Write rounds the writer has finished; `flush` waits for the count to move on.
    rounds: u64,
    /// The writer holds a round's bytes (taken, not yet written).
    writing: bool,
    flush_asked: bool,
    closed: bool,
}

impl Sink {
    /// A sink writing JSON lines to stdout from a dedicated thread.
    pub fn stdout() -> Arc<Sink> {
        widen_pipe(std::io::stdout(), PIPE_BYTES);
        Sink::spawn("stdout", LOG_BUFFER_BYTES, Stdout)
    }

    /// A size-rotated file sink. The file is opened (its directory created) before this returns,
    /// so a path that cannot be written is an error now, at start-up or reload, not later.
    pub fn file(spec: &FileTarget) -> std::io::Result<Arc<Sink>> {
        let mut target = spec.clone();
        target.open()?;
        Ok(Sink::spawn("file", LOG_BUFFER_BYTES, target))
    }

    /// An OTLP logs sink: each write round becomes one export (or a few) to the collector. A
    /// slow or dead collector fills the buffer and lines are dropped, as for any sink.
    pub fn otlp(spec: &crate::config::OtlpSpec) -> Arc<Sink> {
        Sink::spawn("otlp", LOG_BUFFER_BYTES, super::otlp::LogTarget::new(spec))
    }

    fn spawn(label: &'static str, capacity: usize, target: impl Target) -> Arc<Sink> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
            capacity,
            dropped: AtomicU64::new(0),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name(format!("fngate-log-{label}"))
            .spawn(move || writer(&s, target, label))
            .expect("spawn log writer thread");
        Arc::new(Sink { shared, label })
    }

    /// Appends a line (without its newline) for the writer; never waits for a write. A full
    /// buffer drops the line and counts it.
    pub fn send(&self, line: &[u8]) {
        let sh = &*self.shared;
        let mut p = sh.pending.lock().unwrap_or_else(|e| e.into_inner());
        let len = p.buf.len();
        if len + line.len() + 1 > sh.capacity {
            drop(p);
            dropped(self.label, &sh.dropped, 1);
            return;
        }
        p.buf.extend_from_slice(line);
        p.buf.push(b'\n');
        // Wake the writer for the first line of a round, or early when the round grows large.
        let wake = len == 0 || (len < FLUSH_BYTES && p.buf.len() >= FLUSH_BYTES);
        drop(p);
        if wake {
            sh.wake.notify_one();
        }
    }

    /// Lines this sink has dropped (buffer full or write failed).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Writes what is buffered now and waits (up to `timeout`) until it is written: at shutdown,
    /// so the last lines are not lost with the process.
    pub fn flush(&self, timeout: Duration) {
        let sh = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut p = sh.pending.lock().unwrap_or_else(|e| e.into_inner());
        // A round under way took its bytes before this call: the lines buffered now go in the next.
        let target = p.rounds + 1 + u64::from(p.writing);
        p.flush_asked = true;
        sh.wake.notify_one();
        drop(super::wait_until(&sh.written, p, deadline, |p| {
            p.rounds >= target || p.closed
        }));
    }
}

impl Drop for Sink {
    /// The writer writes what is left and ends.
    fn drop(&mut self) {
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        p.closed = true;
        drop(p);
        self.shared.wake.notify_one();
    }
}

fn dropped(label: &'static str, count: &AtomicU64, n: u64) {
    count.fetch_add(n, Ordering::Relaxed);
    metrics::counter!(super::LOG_LINES_DROPPED, "sink" => label).increment(n);
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}
/// A scratch buffer grown past this by one huge line is given back.
const SCRATCH_KEEP: usize = 64 * 1024;

/// Routes each line to its sinks: the service's own, plus the global ones unless the service
/// opted out (`inherit = false`). Cloning is a reference-count bump.
#[derive(Debug, Clone, Default)]
pub struct LogSink {
    routes: Option<Arc<Routes>>,
}

#[derive(Debug, Default)]
struct Routes {
    global: Vec<Arc<Sink>>,
    /// Only services with their own `log` settings; the lists are final (deduplicated).
    services: HashMap<String, Vec<Arc<Sink>>>,
}

impl LogSink {
    /// A router writing everything to `sink` (the historical stdout-only behaviour).
    pub fn single(sink: Arc<Sink>) -> Self {
        LogSink::routed(vec![sink], HashMap::new())
    }

    /// `global` gets every line of services not in `services`; a service in `services` gets
    /// exactly its list (the caller adds the global sinks when the service inherits them).
    pub fn routed(global: Vec<Arc<Sink>>, services: HashMap<String, Vec<Arc<Sink>>>) -> Self {
        let dedup = |mut v: Vec<Arc<Sink>>| {
            let mut out: Vec<Arc<Sink>> = Vec::with_capacity(v.len());
            for s in v.drain(..) {
                if !out.iter().any(|o| Arc::ptr_eq(o, &s)) {
                    out.push(s);
                }
            }
            out
        };
        let global = dedup(global);
        let services: HashMap<_, _> = services.into_iter().map(|(k, v)| (k, dedup(v))).collect();
        if global.is_empty() && services.values().all(Vec::is_empty) {
            return LogSink::off();
        }
        LogSink {
            routes: Some(Arc::new(Routes { global, services })),
        }
    }

    /// A sink that discards everything (telemetry.log.stdout = false and no file).
    pub fn off() -> Self {
        LogSink { routes: None }
    }

    /// True when no line goes anywhere (no stdout, no file, globally or per service).
    pub fn is_off(&self) -> bool {
        self.routes.is_none()
    }

    /// A line that belongs to no service (event webhooks): the global sinks.
    pub fn emit<T: Serialize>(&self, line: &T) {
        self.emit_for(None, line);
    }

    /// A line of `service` (a function's invocation or an instance's output).
    pub fn emit_for<T: Serialize>(&self, service: Option<&str>, line: &T) {
        self.emit_with(service, |buf| serde_json::to_writer(buf, line).is_ok());
    }

    /// An invocation's line, with the hand-written encoder (one per invocation: the hot path).
    pub fn emit_invocation(&self, service: Option<&str>, line: &InvocationLog<'_>) {
        self.emit_with(service, |buf| {
            line.write_json(buf);
            true
        });
    }

    /// `encode` writes the line into a scratch buffer (false: nothing to send).
    fn emit_with(&self, service: Option<&str>, encode: impl FnOnce(&mut Vec<u8>) -> bool) {
        let Some(r) = &self.routes else { return };
        let sinks = match service {
            Some(s) if !r.services.is_empty() => r.services.get(s).unwrap_or(&r.global),
            _ => &r.global,
        };
        let Some((last, rest)) = sinks.split_last() else {
            return;
        };
        // Serialised once into this thread's scratch buffer, then copied into each sink's.
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            if !encode(buf) {
                return;
            }
            for s in rest {
                s.send(buf);
            }
            last.send(buf);
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::with_capacity(1024);
            }
        });
    }
}

/// Sinks shared across configuration generations: a reload that keeps a file path keeps its
/// writer (no reopen, no lost buffer); a path no generation uses any more is closed when the
/// last generation holding it goes away.
#[derive(Debug)]
pub struct SinkRegistry {
    stdout: Arc<Sink>,
    files: Mutex<HashMap<PathBuf, (FileTarget, Weak<Sink>)>>,
    /// The OTLP logs sink, kept while a generation uses the same collector.
    otlp: Mutex<Option<(crate::config::OtlpSpec, Weak<Sink>)>>,
}

impl SinkRegistry {
    pub fn new() -> Self {
        SinkRegistry {
            stdout: Sink::stdout(),
            files: Mutex::new(HashMap::new()),
            otlp: Mutex::new(None),
        }
    }

    /// The OTLP logs sink for `spec`, shared by every service that sends its lines there.
    pub fn otlp(&self, spec: &crate::config::OtlpSpec) -> Arc<Sink> {
        let mut otlp = self.otlp.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, w)) = &*otlp
            && s == spec
            && let Some(sink) = w.upgrade()
        {
            return sink;
        }
        let sink = Sink::otlp(spec);
        *otlp = Some((spec.clone(), Arc::downgrade(&sink)));
        sink
    }

    pub fn stdout(&self) -> Arc<Sink> {
        self.stdout.clone()
    }

    /// The file sink for `spec`, reused when a live one writes the same path with the same
    /// rotation settings (changed settings start a new writer once the old one is released).
    pub fn file(&self, spec: &FileTarget) -> std::io::Result<Arc<Sink>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.retain(|_, (_, w)| w.strong_count() > 0);
        if let Some((t, w)) = files.get(&spec.path)
            && t.max_size == spec.max_size
            && t.keep == spec.keep
            && let Some(s) = w.upgrade()
        {
            return Ok(s);
        }
        let sink = Sink::file(spec)?;
        files.insert(spec.path.clone(), (spec.clone(), Arc::downgrade(&sink)));
        Ok(sink)
    }
}

impl SinkRegistry {
    /// Writes every live sink's buffered lines, waiting up to `timeout` for each (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        let mut files: Vec<Arc<Sink>> = {
            let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            files.values().filter_map(|(_, w)| w.upgrade()).collect()
        };
        let otlp = self.otlp.lock().unwrap_or_else(|e| e.into_inner());
        files.extend(otlp.as_ref().and_then(|(_, w)| w.upgrade()));
        drop(otlp);
        for s in files.iter().chain([&self.stdout]) {
            s.flush(timeout);
        }
    }
}

impl Default for SinkRegistry {
    fn default() -> Self {
        SinkRegistry::new()
    }
}

/// What a writer thread writes batches of whole lines (each ending in `\n`) into.
pub(super) trait Target: Send + 'static {
    fn write_lines(&mut self, buf: &[u8]) -> std::io::Result<()>;
}

struct Stdout;

impl Target for Stdout {
    fn write_lines(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf).and_then(|()| out.flush())
    }
}

/// Pipe buffer asked for when stdout is a pipe (Linux's unprivileged maximum by default).
const PIPE_BYTES: usize = 1 << 20;

/// When `out` is a pipe (a container runtime or a log agent reading stdout), asks the kernel for a
/// buffer of `bytes` (`PIPE_BYTES` for stdout) instead of the default 64 KiB: a write round then fits in the pipe, so the
/// writer makes one call per round instead of sleeping and waking for every 64 KiB the reader
/// drains: half the writer's CPU time for a 2 GiB stream read on another core, about 1–2% more
/// throughput in the telemetry bench (bench/RESULTS.md). A
/// pipe already as large, or a refusal (a lowered `fs.pipe-max-size`, a user over its pipe
/// quota), leaves the pipe as it is: a smaller buffer only costs more wake-ups.
fn widen_pipe(out: impl rustix::fd::AsFd, bytes: usize) {
    let is_pipe = rustix::fs::fstat(&out).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo
    });
    if is_pipe && rustix::pipe::fcntl_getpipe_size(&out).is_ok_and(|n| n < bytes) {
        let _ = rustix::pipe::fcntl_setpipe_size(&out, bytes);
    }
}

/// A file that is rotated by size: when the next line would take it past `max_size`, `f` becomes
/// `f.1`, `f.1` becomes `f.2` … up to `f.{keep}` (the oldest is deleted) and a new `f` is opened.
/// With `keep = 0` the file is simply started again.
#[derive(Debug, Clone)]
pub struct FileTarget {
    pub path: PathBuf,
    pub max_size: u64,
    pub keep: u32,
    file: Option<Arc<File>>,
    size: u64,
}

impl FileTarget {
    pub fn new(path: PathBuf, max_size: u64, keep: u32) -> Self {
        FileTarget {
            path,
            max_size,
            keep,
            file: None,
            size: 0,
        }
    }

    fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = f.metadata()?.len();
        self.file = Some(Arc::new(f));
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            // Nothing kept: start the file again.
            File::create(&self.path)?;
        } else {
            let _ = std::fs::remove_file(rotated(&self.path, self.keep));
            for i in (1..self.keep).rev() {
                let from = rotated(&self.path, i);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, i + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.open()
    }

    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            self.open()?;
        }
        let f = self.file.as_ref().expect("opened above");
        if let Err(e) = (&**f).write_all(buf) {
            // Reopened on the next batch (the file may have been removed or the disk freed).
            self.file = None;
            return Err(e);
        }
        self.size += buf.len() as u64;
        Ok(())
    }
}

/// `fngate.log` → `fngate.log.{n}`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl Target for FileTarget {
    fn write_lines(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // The usual case: the whole round fits under max_size, no line needs looking at.
        if self.size + buf.len() as u64 <= self.max_size {
            return self.append(buf);
        }
        // Rotate between lines, never inside one: a line longer than max_size gets a file alone.
        let mut seg_start = 0;
        let mut line_start = 0;
        for end in buf
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .map(|(i, _)| i + 1)
        {
            let line = (end - line_start) as u64;
            let used = self.size + (line_start - seg_start) as u64;
            if used > 0 && used + line > self.max_size {
                self.append(&buf[seg_start..line_start])?;
                seg_start = line_start;
                if self.size > 0 {
                    self.rotate()?;
                }
            }
            line_start = end;
        }
        self.append(&buf[seg_start..line_start])
    }
}

/// One writer thread: `FLUSH_INTERVAL` after the first line of a round (sooner when the buffer
/// grows past `FLUSH_BYTES` or a flush is asked) it takes the whole buffer and writes it; a
/// failed write drops those lines (counted), says so once on stderr, and the next round tries
/// again (a file is reopened). Ends when the sink is dropped, after a last write.
fn writer(sh: &Shared, mut target: impl Target, label: &'static str) {
    let mut spare = Vec::with_capacity(64 * 1024);
    let mut failing = false;
    loop {
        let mut p = sh.pending.lock().unwrap_or_else(|e| e.into_inner());
        // Idle: no timer; the first line of a round wakes the writer.
        while p.buf.is_empty() && !p.closed && !p.flush_asked {
            p = sh.wake.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        // Then the round gathers lines for a tick: under load one write carries many lines,
        // instead of the writer spinning through one small write after another.
        let tick = Instant::now() + FLUSH_INTERVAL;
        let mut p = super::wait_until(&sh.wake, p, tick, |p| {
            p.buf.len() >= FLUSH_BYTES || p.closed || p.flush_asked
        });
        p.flush_asked = false;
        let closed = p.closed;
        // The emptied buffer of the last round takes the new lines: no allocation per round.
        std::mem::swap(&mut p.buf, &mut spare);
        p.writing = true;
        drop(p);
        if !spare.is_empty() {
            match target.write_lines(&spare) {
                Ok(()) => {
                    if failing {
                        tracing::info!(sink = label, "log sink writes again");
                        failing = false;
                    }
                }
                Err(e) => {
                    let lines = spare.iter().filter(|&&b| b == b'\n').count() as u64;
                    dropped(label, &sh.dropped, lines);
                    if !failing {
                        tracing::warn!(sink = label, "log sink cannot write, dropping lines: {e}");
                        failing = true;
                    }
                }
            }
            spare.clear();
            // A burst may have grown the buffer a lot; keep a moderate one between bursts.
            if spare.capacity() > 4 * FLUSH_BYTES {
                spare = Vec::with_capacity(64 * 1024);
            }
        }
        let mut p = sh.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.rounds += 1;
        p.writing = false;
        drop(p);
        sh.written.notify_all();
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "fngate-log-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_pipe_is_widened_and_anything_else_left_alone() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let before = rustix::pipe::fcntl_getpipe_size(&w).unwrap();
        assert!(
            before < PIPE_BYTES,
            "a new pipe has the default buffer: {before}"
        );
        widen_pipe(&w, PIPE_BYTES);
        let after = rustix::pipe::fcntl_getpipe_size(&r).unwrap();
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .map_or(0, |s| s.trim().parse().unwrap_or(0));
        if max >= PIPE_BYTES {
            assert_eq!(after, PIPE_BYTES);
        } else {
            // Refused without privilege; granted with it.
            assert!(after == before || after == PIPE_BYTES, "{after}");
        }
        // A pipe already larger than asked is not shrunk (sizes under the default maximum).
        let (r, w) = rustix::pipe::pipe().unwrap();
        rustix::pipe::fcntl_setpipe_size(&w, 256 * 1024).unwrap();
        widen_pipe(&w, 128 * 1024);
        assert_eq!(rustix::pipe::fcntl_getpipe_size(&r).unwrap(), 256 * 1024);
        // A file is no pipe: nothing to do, nothing fails.
        let dir = temp_dir("widen");
        widen_pipe(File::create(dir.join("f")).unwrap(), PIPE_BYTES);
    }

    #[test]
    fn files_rotate_by_size_and_keep_the_newest() {
        let dir = temp_dir("rotate");
        let path = dir.join("logs/fngate.log");
        let mut t = FileTarget::new(path.clone(), 100, 2);
        t.open().unwrap();
        // 10 lines of 40 bytes: two lines fit in 100 bytes, so five files' worth.
        for i in 0..10 {
            let line = format!("{{\"n\":{i:02},\"pad\":\"{}\"}}\n", "x".repeat(22));
            assert_eq!(line.len(), 40);
            t.write_lines(line.as_bytes()).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert!(read(&path).contains("\"n\":08") && read(&path).contains("\"n\":09"));
        assert!(read(&rotated(&path, 1)).contains("\"n\":07"));
        assert!(read(&rotated(&path, 2)).contains("\"n\":05"));
        assert!(!rotated(&path, 3).exists(), "only `keep` rotated files");
        for p in [path.clone(), rotated(&path, 1), rotated(&path, 2)] {
            let text = read(&p);
            assert!(text.len() <= 100, "{}: {}", p.display(), text.len());
            assert!(text.lines().all(|l| l.starts_with('{') && l.ends_with('}')));
        }

        // A batch rotates between its lines; a line longer than max_size gets a file alone.
        let mut batch = String::new();
        for i in 0..3 {
            batch.push_str(&format!(
                "{{\"b\":{i:02},\"pad\":\"{}\"}}\n",
                "y".repeat(22)
            ));
        }
        let long = format!("{{\"long\":\"{}\"}}\n", "z".repeat(200));
        batch.push_str(&long);
        t.write_lines(batch.as_bytes()).unwrap();
        assert_eq!(read(&path), long);
        assert!(read(&rotated(&path, 1)).contains("\"b\":02"));

        // keep = 0: the file starts again.
        let p0 = dir.join("zero.log");
        let mut z = FileTarget::new(p0.clone(), 50, 0);
        z.open().unwrap();
        z.write_lines(&[b'a'; 39].iter().chain(b"\n").copied().collect::<Vec<u8>>())
            .unwrap();
        z.write_lines(b"second line, long enough to rotate\n")
            .unwrap();
        assert_eq!(read(&p0), "second line, long enough to rotate\n");
        assert!(!rotated(&p0, 1).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reopening_continues_the_size_count() {
        let dir = temp_dir("reopen");
        let path = dir.join("a.log");
        std::fs::write(&path, vec![b'x'; 90]).unwrap();
        let mut t = FileTarget::new(path.clone(), 100, 1);
        t.open().unwrap();
        t.write_lines(b"0123456789012345\n").unwrap();
        assert_eq!(std::fs::read(rotated(&path, 1)).unwrap().len(), 90);
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789012345\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A target that blocks until released, like a stuck pipe.
    struct Stuck {
        gate: Arc<Mutex<()>>,
        entered: Arc<AtomicU64>,
        written: Arc<Mutex<Vec<u8>>>,
    }
    impl Target for Stuck {
        fn write_lines(&mut self, buf: &[u8]) -> std::io::Result<()> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let _held = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(())
        }
    }

    fn stuck(
        gate: &Arc<Mutex<()>>,
        capacity: usize,
    ) -> (Arc<Sink>, Arc<AtomicU64>, Arc<Mutex<Vec<u8>>>) {
        let entered = Arc::new(AtomicU64::new(0));
        let written = Arc::new(Mutex::new(Vec::new()));
        let t = Stuck {
            gate: gate.clone(),
            entered: entered.clone(),
            written: written.clone(),
        };
        (Sink::spawn("test", capacity, t), entered, written)
    }

    #[test]
    fn a_blocked_sink_never_blocks_the_caller_and_counts_drops() {
        let gate = Arc::new(Mutex::new(()));
        let hold = gate.lock().unwrap();
        // Room for four of the 8-byte lines `{"i":1}` … `{"i":4}`.
        let (sink, entered, written) = stuck(&gate, 32);
        let log = LogSink::single(sink.clone());
        // The writer takes the first line and blocks writing it.
        log.emit(&serde_json::json!({ "i": 0 }));
        let deadline = Instant::now() + Duration::from_secs(5);
        while entered.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "writer never wrote");
            std::thread::sleep(Duration::from_millis(1));
        }
        let t0 = Instant::now();
        for i in 1..100 {
            log.emit(&serde_json::json!({ "i": i }));
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "emit waited");
        // The buffer holds four lines: the other 95 are dropped and counted.
        assert_eq!(sink.dropped(), 95);
        drop(hold);
        loop {
            let n = lines_in(&written);
            if n == 5 {
                break;
            }
            assert!(Instant::now() < deadline, "written {n}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert!(
            text.lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        );
    }

    fn lines_in(written: &Mutex<Vec<u8>>) -> usize {
        written
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    #[test]
    fn flush_writes_what_is_buffered_before_it_returns() {
        let gate = Arc::new(Mutex::new(()));
        let (sink, _, written) = stuck(&gate, 1 << 20);
        for round in 0..3 {
            for i in 0..100 {
                sink.send(format!("{{\"r\":{round},\"i\":{i}}}").as_bytes());
            }
            sink.flush(Duration::from_secs(5));
            let n = lines_in(&written);
            assert_eq!(n, 100 * (round + 1));
        }
        // An idle sink flushes at once.
        let t0 = Instant::now();
        sink.flush(Duration::from_secs(5));
        assert!(t0.elapsed() < Duration::from_secs(1));
        // Dropping the sink writes the rest.
        sink.send(b"last");
        drop(sink);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !written.lock().unwrap().ends_with(b"last\n") {
            assert!(Instant::now() < deadline, "the last line was not written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A target whose writes fail: lines are dropped and counted, never retried forever.
    struct Broken;
    impl Target for Broken {
        fn write_lines(&mut self, _: &[u8]) -> std::io::Result<()> {
            Err(std::io::Error::other("disk full"))
        }
    }

    #[test]
    fn failed_writes_are_counted_as_drops() {
        let sink = Sink::spawn("test", 1024, Broken);
        let log = LogSink::single(sink.clone());
        for i in 0..10 {
            log.emit(&serde_json::json!({ "i": i }));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.dropped() < 10 {
            assert!(Instant::now() < deadline, "dropped {}", sink.dropped());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn lines_follow_their_service() {
        let gate = Arc::new(Mutex::new(()));
        let (global, _, g) = stuck(&gate, 64);
        let (sa, _, a) = stuck(&gate, 64);
        let (sb, _, b) = stuck(&gate, 64);
        let mut services = HashMap::new();
        // `a` inherits the global sinks (listed twice: written once), `b` does not.
        services.insert("a".to_string(), vec![sa, global.clone(), global.clone()]);
        services.insert("b".to_string(), vec![sb]);
        let log = LogSink::routed(vec![global], services);
        log.emit_for(Some("a"), &"from-a");
        log.emit_for(Some("b"), &"from-b");
        log.emit_for(Some("other"), &"from-other");
        log.emit(&"no-service");
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = |v: &Arc<Mutex<Vec<u8>>>| String::from_utf8(v.lock().unwrap().clone()).unwrap();
        while text(&g).lines().count() < 3 || text(&a).is_empty() || text(&b).is_empty() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(text(&g), "\"from-a\"\n\"from-other\"\n\"no-service\"\n");
        assert_eq!(text(&a), "\"from-a\"\n");
        assert_eq!(text(&b), "\"from-b\"\n");
    }

    #[test]
    fn the_hand_written_invocation_line_is_the_derived_document() {
        let usage = crate::metering::Usage {
            busy_s: 0.012345678,
            vcpu_s: 0.024691356,
            memory_gb_s: 1e-9,
            gpu_gb_s: 0.0,
            gpu_type: Some("A10".into()),
            billing: crate::metering::Billing::Request,
        };
        let full = InvocationLog {
            ts: super::super::Timestamp::now(),
            kind: "invocation",
            request_id: "0123456789abcdef",
            trigger: Some("echo-http"),
            function: Some("demo/echo"),
            instance_id: Some("demo-echo-1"),
            instance_kind: Some("on-demand"),
            cold_start_ms: Some(Ms(Duration::from_micros(306_250))),
            // Rounded to the nearest microsecond: down, then up.
            cold_start_spawn_ms: Some(Ms(Duration::from_nanos(1_499))),
            cold_start_readiness_ms: Some(Ms(Duration::from_nanos(12_345_678_999_500))),
            task_id: Some("t-1"),
            queue_wait_ms: Ms(Duration::ZERO),
            upstream_ms: Some(Ms(Duration::from_secs(2))),
            duration_ms: Ms(Duration::from_micros(1_500)),
            method: "POST",
            path: "/echo/a\"b\\c\n\u{1}\u{7f}é/ünï",
            protocol: "h2",
            client: "::ffff:10.0.0.1".parse().unwrap(),
            status: 502,
            bytes_in: u64::MAX,
            bytes_out: 0,
            error: Some("upstream said \"no\"\r\n\t\u{8}\u{c}"),
            tenant: Some("acme"),
            usage: Some(&usage),
            trace_id: Some(Hex(b"4bf92f3577b34da6a3ce929d0e0e4736")),
            span_id: Some(Hex(b"00f067aa0ba902b7")),
        };
        let bare = InvocationLog {
            trigger: None,
            function: None,
            instance_id: None,
            instance_kind: None,
            cold_start_ms: None,
            cold_start_spawn_ms: None,
            cold_start_readiness_ms: None,
            task_id: None,
            upstream_ms: None,
            client: "127.0.0.1".parse().unwrap(),
            error: None,
            tenant: None,
            usage: None,
            trace_id: None,
            span_id: None,
            ..full
        };
        // Every figure at its widest (non-finite and huge usage figures take serde_json's
        // float form) and every string empty.
        let wide_usage = crate::metering::Usage {
            busy_s: f64::MAX,
            vcpu_s: -f64::MIN_POSITIVE,
            memory_gb_s: 999_999_999.999_999_9,
            gpu_gb_s: f64::NAN,
            gpu_type: Some("".into()),
            billing: crate::metering::Billing::Request,
        };
        let widest = Ms(Duration::MAX);
        let wide = InvocationLog {
            request_id: "",
            trigger: Some(""),
            function: Some(""),
            instance_id: Some(""),
            instance_kind: Some(""),
            cold_start_ms: Some(widest),
            cold_start_spawn_ms: Some(widest),
            cold_start_readiness_ms: Some(widest),
            task_id: Some(""),
            queue_wait_ms: widest,
            upstream_ms: Some(widest),
            duration_ms: widest,
            method: "",
            path: "",
            protocol: "",
            client: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
                .parse()
                .unwrap(),
            status: u16::MAX,
            bytes_in: u64::MAX,
            bytes_out: u64::MAX,
            error: Some(""),
            tenant: Some(""),
            usage: Some(&wide_usage),
            trace_id: Some(Hex(b"")),
            span_id: Some(Hex(b"")),
            ..full
        };
        // Every escaped string at its worst: six bytes for each byte.
        let worst = "\u{1}".repeat(300);
        let escapes = InvocationLog {
            trigger: Some(&worst),
            function: Some(&worst),
            instance_id: Some(&worst),
            task_id: Some(&worst),
            path: &worst,
            error: Some(&worst),
            tenant: Some(&worst),
            ..wide
        };
        for line in [&full, &bare, &wide, &escapes] {
            let mut buf = Vec::new();
            line.write_json(&mut buf);
            let hand: serde_json::Value = serde_json::from_slice(&buf)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&buf)));
            assert_eq!(hand, serde_json::to_value(line).unwrap());
            // Same fields in the same order, too: the keys as they stand in each text (a key is
            // a quoted name right after `{` or `,`; the test's values hold no such pattern).
            let keys = |text: &str| -> Vec<String> {
                text.split(['{', ','])
                    .filter_map(|part| {
                        let (key, _) = part.strip_prefix('"')?.split_once("\":")?;
                        key.bytes()
                            .all(|c| c.is_ascii_lowercase() || c == b'_')
                            .then(|| key.to_owned())
                    })
                    .collect()
            };
            let derived = serde_json::to_string(line).unwrap();
            assert_eq!(keys(std::str::from_utf8(&buf).unwrap()), keys(&derived));
            assert!(keys(&derived).len() >= 12, "{derived}");
        }
    }

    #[test]
    fn figures_are_written_as_their_rounding_says() {
        let text = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            f(&mut out);
            String::from_utf8(out).unwrap()
        };
        for (d, want) in [
            (Duration::ZERO, "0.000"),
            (Duration::from_nanos(499), "0.000"),
            (Duration::from_nanos(500), "0.001"),
            (Duration::from_micros(1_500), "1.500"),
            (Duration::from_nanos(12_345_678_999_500), "12345679.000"),
        ] {
            assert_eq!(text(&|o| opt_ms(o, b"", Some(Ms(d)))), want, "{d:?}");
        }
        for (v, want) in [
            (0.0, "0.0"),
            (1e-9, "0.000000001"),
            (0.000197209, "0.000197209"),
            (0.1, "0.1"),
            (12.000000001, "12.000000001"),
            (3600.5, "3600.5"),
        ] {
            assert_eq!(text(&|o| json_ns(o, v)), want, "{v}");
            let derived: f64 = want.parse().unwrap();
            assert_eq!(derived, crate::metering::round_ns(v), "{v}");
        }
        for v in [0, 7, 10, 99, 100, 255, 1_000, 65_535, u64::MAX] {
            assert_eq!(text(&|o| write_u64(o, v)), v.to_string());
        }
        for v in [0, 7, 10, 99_999, 100_000, 123_456_789, 999_999_999] {
            assert_eq!(nine_digits(v), *format!("{v:09}").as_bytes());
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let alphabet = [
            'a', 'Z', '0', ' ', '"', '\\', '\n', '\u{1}', '\u{1f}', '\u{7f}', 'é', '€', '/',
        ];
        // Every position of a special character inside and around 8-byte words.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..40 {
            for _ in 0..50 {
                let text: String = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        alphabet[(seed % alphabet.len() as u64) as usize]
                    })
                    .collect();
                let mut out = Vec::new();
                json_str(&mut out, &text);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    serde_json::to_string(&text).unwrap()
                );
            }
        }
    }
}
