//! OpenTelemetry traces: one span per invocation with children for trigger match, plugin
//! decision, queue wait, cold start and the upstream call, exported over OTLP (HTTP/protobuf or
//! gRPC).
//!
//! fngate records the spans itself instead of going through an OpenTelemetry SDK: an
//! invocation's whole tree is known when its log line is written (the invocation record keeps
//! the stage marks), so a sampled invocation's spans are encoded as OTLP protobuf right there,
//! from borrowed strings, and appended to one bounded buffer; the exporter thread sends what
//! has accumulated every `EXPORT_INTERVAL`. The request path never allocates a span object,
//! never takes a channel per span and never wakes the exporter (an SDK span processor does all
//! three for each of the six spans), and an unsampled invocation costs three random numbers and
//! its `traceparent`.
//!
//! Sampling follows the OpenTelemetry parent-based trace-id-ratio sampler: a client's
//! `traceparent` decides when present (its sampled flag), the configured ratio of trace ids
//! otherwise. Unsampled requests still propagate `traceparent` (flag 00). A slow or dead
//! collector makes the buffer fill up; then traces are dropped and counted
//! (`fngate_traces_dropped_total`), never waited for.

use super::otlp::Client;
use crate::config::OtlpSpec;
use http::{HeaderMap, HeaderValue};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Sampled invocations buffered for export; past this they are dropped and counted.
pub const MAX_PENDING_TRACES: usize = 8192;
/// Encoded spans buffered for export, in bytes; past this traces are dropped and counted.
pub const MAX_PENDING_BYTES: usize = 8 << 20;
/// The exporter sends what has accumulated this long after the first trace of a round.
const EXPORT_INTERVAL: Duration = Duration::from_millis(500);
/// Past this many buffered traces the exporter is woken at once.
const EXPORT_EARLY: usize = 1024;
/// Spans per export request (collectors cap message sizes).
const SPANS_PER_REQUEST: usize = 4096;

static TRACING: OnceLock<Tracing> = OnceLock::new();

struct Tracing {
    sampler: Sampler,
    shared: Arc<Shared>,
}

/// OpenTelemetry's `TraceIdRatioBased`: the trace id's low 8 bytes, shifted right once, are
/// compared with `ratio × 2^63`, so every process samples the same trace ids.
#[derive(Debug, Clone, Copy)]
struct Sampler {
    /// A trace started here is sampled when its id's low 63 bits fall under this bound.
    bound: u64,
    /// Ratio 1.0: every trace (the bound cannot say "all").
    always: bool,
}

impl Sampler {
    fn new(ratio: f64) -> Self {
        let bound = if ratio <= 0.0 {
            0
        } else {
            (ratio.min(1.0) * (1u64 << 63) as f64) as u64
        };
        Sampler {
            bound,
            always: ratio >= 1.0,
        }
    }

    fn samples(self, trace_id: &[u8; 16]) -> bool {
        let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
        self.always || (low >> 1) < self.bound
    }
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the exporter (first trace of a round, a full round, shutdown).
    wake: Condvar,
    /// Tells `shutdown` the exporter has sent its last round.
    done: Condvar,
}

#[derive(Default)]
struct Pending {
    /// Encoded `Span` messages (as `ScopeSpans.spans` fields), trace after trace.
    spans: Vec<u8>,
    /// Where each trace's spans end in `spans`, and how many it has.
    ends: Vec<(usize, usize)>,
    closed: bool,
    exited: bool,
}

/// Starts the exporter thread (once per process).
pub fn init(otlp: &OtlpSpec, sample_ratio: f64) -> Result<(), String> {
    if TRACING.get().is_some() {
        return Ok(());
    }
    // Fails early on a malformed endpoint; the exporter builds its own client on its thread.
    if let crate::config::OtlpProtocol::Grpc = otlp.protocol {
        tonic::transport::Endpoint::from_shared(otlp.endpoint.clone())
            .map_err(|e| format!("cannot use the OTLP endpoint {}: {e}", otlp.endpoint))?;
    }
    let shared = Arc::new(Shared::new());
    let (spec, s) = (otlp.clone(), shared.clone());
    std::thread::Builder::new()
        .name("fngate-traces".into())
        .spawn(move || exporter(&s, &spec))
        .map_err(|e| format!("cannot start the trace exporter: {e}"))?;
    let _ = TRACING.set(Tracing {
        sampler: Sampler::new(sample_ratio),
        shared,
    });
    Ok(())
}

/// Sends what is buffered and stops the exporter, waiting up to 3 s (at shutdown).
pub fn shutdown() {
    let Some(t) = TRACING.get() else { return };
    let sh = &*t.shared;
    let mut p = lock(&sh.pending);
    p.closed = true;
    sh.wake.notify_one();
    let deadline = Instant::now() + Duration::from_secs(3);
    drop(super::wait_until(&sh.done, p, deadline, |p| p.exited));
}

fn lock(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `00-{trace id}-{span id}-{flags}` → (trace id, parent span id, sampled); anything else is
/// ignored (the request starts a trace of its own).
fn parse_traceparent(v: &HeaderValue) -> Option<([u8; 16], [u8; 8], bool)> {
    let s = v.to_str().ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || !version.bytes().all(|b| b.is_ascii_hexdigit())
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    super::unhex(trace.as_bytes(), &mut trace_id)?;
    super::unhex(span.as_bytes(), &mut span_id)?;
    let mut f = [0u8; 1];
    super::unhex(flags.as_bytes(), &mut f)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, f[0] & 1 == 1))
}

/// `00-{trace id}-{span id}-{flags}`, hex-encoded in place: made for every request, so no
/// formatting machinery.
fn traceparent_text(trace: [u8; 16], span: [u8; 8], flags: u8) -> [u8; 55] {
    let mut out = *b"00-________________________________-________________-__";
    super::hex_into(&mut out[3..35], &trace);
    super::hex_into(&mut out[36..52], &span);
    super::hex_into(&mut out[53..55], &[flags]);
    out
}

#[cfg(test)]
fn traceparent_value(trace: [u8; 16], span: [u8; 8], flags: u8) -> HeaderValue {
    HeaderValue::from_bytes(&traceparent_text(trace, span, flags)).expect("hex and dashes")
}

/// The trace of one invocation, from arrival to the log line: its ids and whether it is sampled.
#[derive(Debug)]
pub struct Invocation {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The client's span, when it sent a valid `traceparent`.
    parent: Option<[u8; 8]>,
    sampled: bool,
    /// The `traceparent` for the backend, whose hex ids the log line copies too.
    text: [u8; 55],
}

/// Starts an invocation's trace when tracing is configured.
pub fn start(headers: &HeaderMap) -> Option<Invocation> {
    let t = TRACING.get()?;
    // A span id and, when the client sent no trace, a trace id: one step of the id counter.
    let [s, t_hi, t_lo] = super::unique_u64s::<3>();
    let span_id = nonzero(s.to_be_bytes());
    Some(
        match headers.get(&TRACEPARENT).and_then(parse_traceparent) {
            Some((trace_id, parent, sampled)) => {
                Invocation::new(trace_id, span_id, Some(parent), sampled)
            }
            None => {
                let trace_id = trace_id(t_hi, t_lo);
                let sampled = t.sampler.samples(&trace_id);
                Invocation::new(trace_id, span_id, None, sampled)
            }
        },
    )
}

/// A trace id of two random numbers.
fn trace_id(hi: u64, lo: u64) -> [u8; 16] {
    nonzero(((u128::from(hi) << 64) | u128::from(lo)).to_be_bytes())
}

/// A random id made valid: W3C forbids an all-zero id.
fn nonzero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id.iter().all(|&b| b == 0) {
        id[N - 1] = 1;
    }
    id
}

/// Wall-clock time of a monotonic instant, given one pair read together.
pub fn wall(at: Instant, now: Instant, now_wall: SystemTime) -> SystemTime {
    match now.checked_duration_since(at) {
        Some(ago) => now_wall - ago,
        None => now_wall + at.duration_since(now),
    }
}

/// A span attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr<'a> {
    Str(&'a str),
    Int(i64),
    F64(f64),
}

/// Most children a tree has: trigger match, plugin decision, queue wait, cold start, upstream.
const MAX_CHILDREN: usize = 5;

/// A finished invocation's span tree, borrowing from the invocation's record: encoded at once.
#[derive(Debug)]
pub struct Finished<'a> {
    pub start: SystemTime,
    pub end: SystemTime,
    /// Child spans: name, start, end (at most `MAX_CHILDREN`; more are left out).
    children: [(&'static str, SystemTime, SystemTime); MAX_CHILDREN],
    n_children: usize,
    pub attributes: Vec<(&'static str, Attr<'a>)>,
    pub error: Option<&'a str>,
}

/// Trace id, the invocation's span id, and the caller's span when it sent one.
type Ids = ([u8; 16], [u8; 8], Option<[u8; 8]>);

impl<'a> Finished<'a> {
    pub fn new(start: SystemTime, end: SystemTime) -> Self {
        Finished {
            start,
            end,
            children: [("", UNIX_EPOCH, UNIX_EPOCH); MAX_CHILDREN],
            n_children: 0,
            attributes: Vec::new(),
            error: None,
        }
    }

    pub fn child(&mut self, name: &'static str, start: SystemTime, end: SystemTime) {
        if let Some(slot) = self.children.get_mut(self.n_children) {
            *slot = (name, start, end);
            self.n_children += 1;
        }
    }

    fn children(&self) -> &[(&'static str, SystemTime, SystemTime)] {
        &self.children[..self.n_children]
    }
}

thread_local! {
    /// Encoding buffers of this thread: the tree's spans, and one span while its length is
    /// not known yet.
    static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        std::cell::RefCell::new((Vec::with_capacity(4096), Vec::with_capacity(1024)));
}

impl Invocation {
    fn new(trace_id: [u8; 16], span_id: [u8; 8], parent: Option<[u8; 8]>, sampled: bool) -> Self {
        Invocation {
            trace_id,
            span_id,
            parent,
            sampled,
            text: traceparent_text(trace_id, span_id, u8::from(sampled)),
        }
    }

    /// The header for the backend: this invocation's span as the parent.
    pub fn traceparent(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    pub fn is_sampled(&self) -> bool {
        self.sampled
    }

    /// The trace id and the invocation's span id in lower-case hex, for the log line.
    pub fn ids_hex(&self) -> (&[u8], &[u8]) {
        (&self.text[3..35], &self.text[36..52])
    }

    /// Encodes a sampled invocation's tree for the exporter; never waits. A full buffer drops
    /// it (counted).
    pub fn finish(&self, tree: &Finished<'_>) {
        if !self.sampled {
            return;
        }
        let Some(t) = TRACING.get() else { return };
        let ids = (self.trace_id, self.span_id, self.parent);
        SCRATCH.with_borrow_mut(|(spans, msg)| {
            spans.clear();
            let count = encode_tree(tree, ids, spans, msg);
            if !t.shared.offer(spans, count) {
                metrics::counter!(super::TRACES_DROPPED, "reason" => "buffer_full").increment(1);
            }
            if spans.capacity() > 64 * 1024 {
                *spans = Vec::with_capacity(4096);
            }
        });
    }
}

impl Shared {
    fn new() -> Self {
        Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
        }
    }

    /// Appends one trace's encoded spans for the exporter; false (nothing kept) when the
    /// buffer is full or closed.
    fn offer(&self, spans: &[u8], count: usize) -> bool {
        let mut p = lock(&self.pending);
        let n = p.ends.len();
        if n >= MAX_PENDING_TRACES || p.spans.len() + spans.len() > MAX_PENDING_BYTES || p.closed {
            return false;
        }
        p.spans.extend_from_slice(spans);
        let end = p.spans.len();
        p.ends.push((end, count));
        drop(p);
        // The first trace of a round starts the exporter's timer; a large round wakes it early.
        if n == 0 || n + 1 == EXPORT_EARLY {
            self.wake.notify_one();
        }
        true
    }
}

/// The exporter thread: `EXPORT_INTERVAL` after the first trace of a round (sooner for a large
/// round or at shutdown) it takes the buffer and sends it as one or a few OTLP requests. The
/// client is built here, off the gateway's runtime; a failed export drops its traces (counted)
/// and the next round tries again.
fn exporter(sh: &Shared, spec: &OtlpSpec) {
    let mut client: Option<Client> = None;
    let mut no_client = String::new();
    let mut failing = false;
    // The last round's emptied buffers take the next round's traces (no allocation per round).
    let (mut spans, mut ends) = (Vec::new(), Vec::new());
    loop {
        let mut p = lock(&sh.pending);
        while p.ends.is_empty() && !p.closed {
            p = sh.wake.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        let tick = Instant::now() + EXPORT_INTERVAL;
        let mut p = super::wait_until(&sh.wake, p, tick, |p| {
            p.closed || p.ends.len() >= EXPORT_EARLY
        });
        std::mem::swap(&mut p.spans, &mut spans);
        std::mem::swap(&mut p.ends, &mut ends);
        let closed = p.closed;
        drop(p);
        if !ends.is_empty() {
            let n = ends.len() as u64;
            if client.is_none() {
                // Tried again each round; the failure below says why it could not be built.
                match Client::new(spec) {
                    Ok(c) => client = Some(c),
                    Err(e) => no_client = format!("building the OTLP client: {e}"),
                }
            }
            let sent = match &client {
                Some(c) => export(c, &spans, &ends),
                None => Err(no_client.clone()),
            };
            spans.clear();
            ends.clear();
            // A burst may have grown the buffers a lot; keep moderate ones between bursts.
            if spans.capacity() > MAX_PENDING_BYTES / 8 {
                spans = Vec::new();
                ends = Vec::new();
            }
            match sent {
                Ok(()) if failing => {
                    tracing::info!("trace export works again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) => {
                    metrics::counter!(super::OTLP_EXPORT_FAILURES, "signal" => "traces")
                        .increment(1);
                    metrics::counter!(super::TRACES_DROPPED, "reason" => "export_failed")
                        .increment(n);
                    if !failing {
                        tracing::warn!("trace export failed, dropping traces: {e}");
                        failing = true;
                    }
                }
            }
        }
        if closed {
            let mut p = lock(&sh.pending);
            p.exited = true;
            drop(p);
            sh.done.notify_all();
            return;
        }
    }
}

/// Sends a round's encoded spans in requests of about `SPANS_PER_REQUEST` spans.
fn export(client: &Client, spans: &[u8], ends: &[(usize, usize)]) -> Result<(), String> {
    for r in requests(ends, SPANS_PER_REQUEST) {
        client.export_traces(encode_request(&spans[r]))?;
    }
    Ok(())
}

/// Byte ranges of a round's spans, one per export request: split between traces, each with
/// `per_request` spans or more (the last one fewer).
fn requests(
    ends: &[(usize, usize)],
    per_request: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let (mut from, mut n) = (0, 0);
    let last = ends.last().map_or(0, |&(end, _)| end);
    ends.iter()
        .filter_map(move |&(end, count)| {
            n += count;
            (n >= per_request || end == last).then(|| {
                let r = from..end;
                (from, n) = (end, 0);
                r
            })
        })
        .filter(|r| !r.is_empty())
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

/// Span flags (OTLP): the W3C sampled flag, and whether the parent's remoteness is known / true.
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;
/// OTLP `SpanKind` and `StatusCode` values.
const KIND_INTERNAL: u64 = 1;
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
const STATUS_ERROR: u64 = 2;

/// The protobuf wire format, written directly: the export is the only consumer of a span, so it
/// is encoded from the invocation's record with no message objects in between (building and
/// encoding those cost more than the rest of the request's telemetry).
mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn varint_len(v: u64) -> usize {
        (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
    }

    pub fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, u64::from(field << 3 | u32::from(wire)));
    }

    pub fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
        key(out, field, 0);
        varint(out, v);
    }

    pub fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
        key(out, field, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn fixed32(out: &mut Vec<u8>, field: u32, v: u32) {
        key(out, field, 5);
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// A `bytes`, `string` or embedded message field.
    pub fn bytes(out: &mut Vec<u8>, field: u32, data: &[u8]) {
        key(out, field, 2);
        varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }

    /// A `KeyValue` (key, `AnyValue`) as field `field`: lengths are computed, not buffered.
    pub fn attr(out: &mut Vec<u8>, field: u32, k: &str, v: &super::Attr<'_>) {
        use super::Attr;
        let value_len = match v {
            Attr::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
            Attr::Int(i) => 1 + varint_len(*i as u64),
            Attr::F64(_) => 1 + 8,
        };
        let kv_len =
            1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(value_len as u64) + value_len;
        key(out, field, 2);
        varint(out, kv_len as u64);
        bytes(out, 1, k.as_bytes());
        key(out, 2, 2);
        varint(out, value_len as u64);
        match v {
            Attr::Str(s) => bytes(out, 1, s.as_bytes()),
            Attr::Int(i) => uint(out, 3, *i as u64),
            Attr::F64(f) => fixed64(out, 4, f.to_bits()),
        }
    }
}

/// Appends one invocation's spans (children, then the root) to `out` as `ScopeSpans.spans`
/// fields; returns how many.
fn encode_tree(tree: &Finished<'_>, ids: Ids, out: &mut Vec<u8>, scratch: &mut Vec<u8>) -> usize {
    let (trace_id, root_id, parent) = ids;
    // A span's fields up to its kind and times: trace id, span id, parent, name, kind, start, end.
    let head =
        |scratch: &mut Vec<u8>, id: &[u8], parent: Option<&[u8]>, name: &str, kind, start, end| {
            scratch.clear();
            pb::bytes(scratch, 1, &trace_id);
            pb::bytes(scratch, 2, id);
            if let Some(p) = parent {
                pb::bytes(scratch, 4, p);
            }
            pb::bytes(scratch, 5, name.as_bytes());
            pb::uint(scratch, 6, kind);
            pb::fixed64(scratch, 7, nanos(start));
            pb::fixed64(scratch, 8, nanos(end));
        };
    for &(name, start, end) in tree.children() {
        let kind = if name == "upstream call" {
            KIND_CLIENT
        } else {
            KIND_INTERNAL
        };
        head(
            scratch,
            &nonzero(super::unique_u64().to_be_bytes()),
            Some(&root_id),
            name,
            kind,
            start,
            end,
        );
        pb::fixed32(scratch, 16, FLAG_SAMPLED | FLAG_HAS_IS_REMOTE);
        pb::bytes(out, 2, scratch);
    }
    let p = parent.as_ref().map(|p| &p[..]);
    head(
        scratch,
        &root_id,
        p,
        "invocation",
        KIND_SERVER,
        tree.start,
        tree.end,
    );
    for (k, v) in &tree.attributes {
        pb::attr(scratch, 9, k, v);
    }
    if let Some(message) = tree.error {
        let len = 1 + pb::varint_len(message.len() as u64) + message.len() + 2;
        pb::key(scratch, 15, 2);
        pb::varint(scratch, len as u64);
        pb::bytes(scratch, 2, message.as_bytes());
        pb::uint(scratch, 3, STATUS_ERROR);
    }
    let remote = if parent.is_some() { FLAG_IS_REMOTE } else { 0 };
    pb::fixed32(scratch, 16, FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | remote);
    pb::bytes(out, 2, scratch);
    tree.children().len() + 1
}

/// `ExportTraceServiceRequest { resource_spans: [{ resource, scope_spans: [{ scope, spans }] }] }`
/// around already encoded spans; the resource and scope are the other signals' (`otlp`).
fn encode_request(spans: &[u8]) -> Vec<u8> {
    use prost::Message as _;
    static HEAD: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    let (resource, scope) = HEAD.get_or_init(|| {
        let (mut r, mut s) = (Vec::new(), Vec::new());
        if let Some(res) = super::otlp::resource() {
            pb::bytes(&mut r, 1, &res.encode_to_vec());
        }
        if let Some(sc) = super::otlp::scope() {
            pb::bytes(&mut s, 1, &sc.encode_to_vec());
        }
        (r, s)
    });
    let scope_spans_len = scope.len() + spans.len();
    let resource_spans_len =
        resource.len() + 1 + pb::varint_len(scope_spans_len as u64) + scope_spans_len;
    let mut out = Vec::with_capacity(resource_spans_len + 16);
    pb::key(&mut out, 1, 2);
    pb::varint(&mut out, resource_spans_len as u64);
    out.extend_from_slice(resource);
    pb::key(&mut out, 2, 2);
    pb::varint(&mut out, scope_spans_len as u64);
    out.extend_from_slice(scope);
    out.extend_from_slice(spans);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let ok =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let (trace, span, sampled) = parse_traceparent(&ok).unwrap();
        assert_eq!(trace[0], 0x4b);
        assert_eq!(trace[15], 0x36);
        assert_eq!(span, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(sampled);
        let unsampled =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!parse_traceparent(&unsampled).unwrap().2);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert!(
                parse_traceparent(&HeaderValue::from_static(bad)).is_none(),
                "{bad}"
            );
        }
        // A later version may carry more fields.
        let v01 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert!(parse_traceparent(&HeaderValue::from_static(v01)).is_some());
    }

    #[test]
    fn traceparent_header_shape() {
        let mut trace = [0u8; 16];
        trace[0] = 0x4b;
        trace[15] = 0x36;
        let span = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
        assert_eq!(
            traceparent_value(trace, span, 1),
            "00-4b000000000000000000000000000036-00f067aa0ba902b7-01"
        );
        assert_eq!(
            traceparent_value([0xff; 16], [0xff; 8], 0),
            "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-00"
        );
    }

    fn random_trace_id() -> [u8; 16] {
        let [hi, lo] = crate::telemetry::unique_u64s::<2>();
        trace_id(hi, lo)
    }

    #[test]
    fn ratio_sampling_takes_that_share_of_trace_ids() {
        let tenth = Sampler::new(0.1);
        let n = 100_000;
        let hits = (0..n).filter(|_| tenth.samples(&random_trace_id())).count();
        assert!((9_000..11_000).contains(&hits), "{hits} of {n}");
        // The extremes: none at 0 (or below), every id at 1 (or above), the largest included.
        for (ratio, want) in [(0.0, false), (-1.0, false), (1.0, true), (2.0, true)] {
            let s = Sampler::new(ratio);
            for id in [[0xff; 16], [0x01; 16], random_trace_id()] {
                assert_eq!(s.samples(&id), want, "ratio {ratio}");
            }
        }
        // The same id gets the same decision whatever process decides (OpenTelemetry's rule):
        // the id's low 63 bits against the bound.
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&((tenth.bound - 1) << 1).to_be_bytes());
        assert!(tenth.samples(&id));
        id[8..].copy_from_slice(&(tenth.bound << 1).to_be_bytes());
        assert!(!tenth.samples(&id));
    }

    #[test]
    fn a_tree_becomes_a_root_span_and_its_children() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
        use prost::Message as _;
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut tree = Finished::new(t0, t0 + Duration::from_millis(5));
        tree.child("trigger match", t0, t0 + Duration::from_micros(10));
        tree.child(
            "upstream call",
            t0 + Duration::from_millis(1),
            t0 + Duration::from_millis(5),
        );
        let path = "/a/é".repeat(100);
        tree.attributes.extend([
            ("http.response.status_code", Attr::Int(502)),
            ("url.path", Attr::Str(&path)),
            ("fngate.cold_start_ms", Attr::F64(306.25)),
            ("negative", Attr::Int(-3)),
        ]);
        tree.error = Some("upstream failed");
        let unparented = Finished::new(t0, t0);
        let (mut spans, mut scratch) = (Vec::new(), Vec::new());
        let ids = ([7; 16], [8; 8], Some([9; 8]));
        assert_eq!(encode_tree(&tree, ids, &mut spans, &mut scratch), 3);
        let ids = ([1; 16], [2; 8], None);
        assert_eq!(encode_tree(&unparented, ids, &mut spans, &mut scratch), 1);
        // What a collector decodes.
        let req = ExportTraceServiceRequest::decode(&encode_request(&spans)[..]).unwrap();
        let rs = &req.resource_spans[0];
        assert_eq!(rs.resource, super::super::otlp::resource());
        assert_eq!(rs.scope_spans[0].scope, super::super::otlp::scope());
        let spans = &rs.scope_spans[0].spans;
        assert_eq!(spans.len(), 4);
        let root = &spans[2];
        assert_eq!(root.name, "invocation");
        assert_eq!(root.span_id, vec![8; 8]);
        assert_eq!(root.parent_span_id, vec![9; 8]);
        assert_eq!(root.kind, SpanKind::Server as i32);
        assert_eq!(root.flags, 0x301);
        assert_eq!(root.status.as_ref().unwrap().message, "upstream failed");
        assert_eq!(root.status.as_ref().unwrap().code, 2);
        assert_eq!(root.start_time_unix_nano, 1_800_000_000_000_000_000);
        assert_eq!(
            root.end_time_unix_nano - root.start_time_unix_nano,
            5_000_000
        );
        let attr = |i: usize| {
            let kv = &root.attributes[i];
            (kv.key.as_str(), kv.value.clone().unwrap().value.unwrap())
        };
        assert_eq!(attr(0), ("http.response.status_code", Value::IntValue(502)));
        assert_eq!(
            attr(1),
            ("url.path", Value::StringValue("/a/é".repeat(100)))
        );
        assert_eq!(
            attr(2),
            ("fngate.cold_start_ms", Value::DoubleValue(306.25))
        );
        assert_eq!(attr(3), ("negative", Value::IntValue(-3)));
        for child in &spans[..2] {
            assert_eq!(child.trace_id, vec![7; 16]);
            assert_eq!(child.parent_span_id, vec![8; 8]);
            assert_eq!(child.flags, 0x101);
            assert_ne!(child.span_id, root.span_id);
        }
        assert_eq!(spans[0].name, "trigger match");
        assert_eq!(spans[0].kind, SpanKind::Internal as i32);
        assert_eq!(
            spans[0].end_time_unix_nano - spans[0].start_time_unix_nano,
            10_000
        );
        assert_eq!(spans[1].kind, SpanKind::Client as i32);
        assert!(spans[3].parent_span_id.is_empty() && spans[3].status.is_none());
        assert_eq!(spans[3].flags, 0x101);
    }

    #[test]
    fn the_export_buffer_is_bounded_by_traces_and_bytes() {
        let sh = Shared::new();
        let span = [0u8; 100];
        for _ in 0..MAX_PENDING_TRACES {
            assert!(sh.offer(&span, 2));
        }
        assert!(!sh.offer(&span, 2), "one trace past the count");
        let sh = Shared::new();
        let big = vec![0u8; MAX_PENDING_BYTES / 4];
        for _ in 0..4 {
            assert!(sh.offer(&big, 6));
        }
        assert!(!sh.offer(&[0], 1), "one byte past the size");
        let p = lock(&sh.pending);
        assert_eq!(p.spans.len(), MAX_PENDING_BYTES);
        assert_eq!(p.ends.last(), Some(&(MAX_PENDING_BYTES, 6)));
        drop(p);
        // Closed at shutdown: nothing more is taken.
        let sh = Shared::new();
        lock(&sh.pending).closed = true;
        assert!(!sh.offer(&span, 1));
    }

    #[test]
    fn a_round_is_split_into_requests_between_traces() {
        // Traces of 6, 6, 1 and 6 spans ending at these byte offsets.
        let ends = [(10, 6), (20, 6), (25, 1), (40, 6)];
        use std::ops::Range;
        let split = |per| requests(&ends, per).collect::<Vec<Range<usize>>>();
        assert_eq!(split(4096), vec![Range { start: 0, end: 40 }]);
        assert_eq!(split(12), [0..20, 20..40]);
        assert_eq!(split(6), [0..10, 10..20, 20..40]);
        assert_eq!(split(1), [0..10, 10..20, 20..25, 25..40]);
        assert!(requests(&[], 6).next().is_none());
    }

    #[test]
    fn wall_clock_of_instants() {
        let now = Instant::now();
        let wall_now = SystemTime::now();
        let earlier = now - Duration::from_millis(250);
        assert_eq!(
            wall(earlier, now, wall_now),
            wall_now - Duration::from_millis(250)
        );
        assert_eq!(wall(now, now, wall_now), wall_now);
    }
}
