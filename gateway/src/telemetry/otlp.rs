//! OTLP export of metrics, logs and traces: the protobuf messages are built here (spans in
//! `trace`) and pushed from fngate's own threads (the metrics pusher, the OTLP log sink's
//! writer, the trace exporter), over HTTP/protobuf or gRPC. Nothing here runs on a request
//! thread: a record call is the atomic add it already was (plus one for the OTLP side), a log
//! line is appended to a sink's buffer like any other sink's.

use crate::config::{OtlpProtocol, OtlpSpec};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_exporter_prometheus::PrometheusRecorder;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1 as pm;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long one export may take before it counts as failed.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Log records per export request (a full sink buffer is split; collectors cap message sizes).
const LOGS_PER_REQUEST: usize = 2048;

/// One connection to the collector, used by a single thread at a time.
pub struct Client {
    spec: OtlpSpec,
    inner: Inner,
}

enum Inner {
    Http(reqwest::blocking::Client),
    /// A runtime of its own: the channel's connection task runs while an export is awaited.
    Grpc(tokio::runtime::Runtime, tonic::transport::Channel),
}

impl Client {
    /// Built on the thread that uses it (never inside the gateway's runtime: the blocking HTTP
    /// client and a gRPC runtime must not be created or dropped there).
    pub fn new(spec: &OtlpSpec) -> Result<Client, String> {
        let inner = match spec.protocol {
            OtlpProtocol::Http => Inner::Http(
                reqwest::blocking::Client::builder()
                    .timeout(EXPORT_TIMEOUT)
                    .build()
                    .map_err(|e| format!("OTLP HTTP client: {e}"))?,
            ),
            OtlpProtocol::Grpc => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("OTLP gRPC runtime: {e}"))?;
                let endpoint = tonic::transport::Endpoint::from_shared(spec.endpoint.clone())
                    .map_err(|e| format!("OTLP endpoint {}: {e}", spec.endpoint))?
                    .timeout(EXPORT_TIMEOUT)
                    .connect_timeout(EXPORT_TIMEOUT);
                let channel = {
                    let _in = rt.enter();
                    endpoint.connect_lazy()
                };
                Inner::Grpc(rt, channel)
            }
        };
        Ok(Client {
            spec: spec.clone(),
            inner,
        })
    }

    fn post(&self, path: &str, body: Vec<u8>) -> Result<(), String> {
        let Inner::Http(http) = &self.inner else {
            unreachable!("post is the HTTP transport")
        };
        let url = format!("{}{path}", self.spec.endpoint);
        let resp = http
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .map_err(|e| format!("{url}: {e}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("{url}: HTTP {}", resp.status()))
        }
    }

    pub fn export_logs(&self, req: ExportLogsServiceRequest) -> Result<(), String> {
        match &self.inner {
            Inner::Http(_) => self.post("/v1/logs", req.encode_to_vec()),
            Inner::Grpc(rt, ch) => rt
                .block_on(LogsServiceClient::new(ch.clone()).export(req))
                .map(drop)
                .map_err(|e| format!("{} (gRPC logs): {}", self.spec.endpoint, e.message())),
        }
    }

    /// An `ExportTraceServiceRequest` already encoded (spans are encoded straight from fngate's
    /// records, `trace::encode_request`): posted as it is, or sent as the gRPC call's message.
    pub fn export_traces(&self, encoded: Vec<u8>) -> Result<(), String> {
        match &self.inner {
            Inner::Http(_) => self.post("/v1/traces", encoded),
            Inner::Grpc(rt, ch) => rt
                .block_on(async {
                    let mut grpc = tonic::client::Grpc::new(ch.clone());
                    grpc.ready()
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    grpc.unary(
                        tonic::Request::new(bytes::Bytes::from(encoded)),
                        http::uri::PathAndQuery::from_static(
                            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                        ),
                        RawCodec,
                    )
                    .await
                })
                .map(drop)
                .map_err(|e| format!("{} (gRPC traces): {}", self.spec.endpoint, e.message())),
        }
    }

    pub fn export_metrics(&self, req: ExportMetricsServiceRequest) -> Result<(), String> {
        match &self.inner {
            Inner::Http(_) => self.post("/v1/metrics", req.encode_to_vec()),
            Inner::Grpc(rt, ch) => rt
                .block_on(MetricsServiceClient::new(ch.clone()).export(req))
                .map(drop)
                .map_err(|e| format!("{} (gRPC metrics): {}", self.spec.endpoint, e.message())),
        }
    }
}

/// A gRPC codec for messages encoded elsewhere: the request is sent as its bytes, the answer
/// (an export response, possibly with a partial-success note) is read and ignored.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        bytes::Buf::advance(src, n);
        Ok(Some(()))
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

pub(super) fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv("service.name", string("fngate"))],
        ..Default::default()
    })
}

pub(super) fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "fngate".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    })
}

fn string(s: impl Into<String>) -> any_value::Value {
    any_value::Value::StringValue(s.into())
}

fn kv(key: impl Into<String>, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// Histogram bounds when nothing more specific is known (OpenTelemetry's defaults).
const DEFAULT_BOUNDS: &[f64] = &[
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];

/// The global recorder when OTLP metrics are on: every handle writes the Prometheus recorder's
/// storage and an atomic of its own that the pusher reads. A handle is registered once per key;
/// registering a known key again (a `counter!` call site) is one map lookup, as in Prometheus.
pub struct OtlpRecorder {
    prom: PrometheusRecorder,
    store: Arc<Store>,
}

#[derive(Default)]
struct Store {
    counters: RwLock<HashMap<Key, Arc<PairCounter>>>,
    gauges: RwLock<HashMap<Key, Arc<PairGauge>>>,
    histograms: RwLock<HashMap<Key, Arc<PairHistogram>>>,
    /// name → (unit, description), from the `describe_*` calls.
    described: Mutex<HashMap<String, (Option<Unit>, String)>>,
}

struct PairCounter {
    prom: Counter,
    value: AtomicU64,
}
struct PairGauge {
    prom: Gauge,
    /// f64 bits.
    value: AtomicU64,
}
struct PairHistogram {
    prom: Histogram,
    bounds: &'static [f64],
    /// `bounds.len() + 1` buckets: bucket i counts values in (bounds[i-1], bounds[i]].
    buckets: Box<[AtomicU64]>,
    /// f64 bits.
    sum: AtomicU64,
}

impl CounterFn for PairCounter {
    fn increment(&self, v: u64) {
        self.prom.increment(v);
        self.value.fetch_add(v, Ordering::Relaxed);
    }
    fn absolute(&self, v: u64) {
        self.prom.absolute(v);
        self.value.fetch_max(v, Ordering::Relaxed);
    }
}

impl GaugeFn for PairGauge {
    fn increment(&self, v: f64) {
        self.prom.increment(v);
        GaugeFn::increment(&self.value, v);
    }
    fn decrement(&self, v: f64) {
        self.prom.decrement(v);
        GaugeFn::decrement(&self.value, v);
    }
    fn set(&self, v: f64) {
        self.prom.set(v);
        GaugeFn::set(&self.value, v);
    }
}

impl HistogramFn for PairHistogram {
    fn record(&self, v: f64) {
        self.prom.record(v);
        let i = self.bounds.partition_point(|b| *b < v);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((f64::from_bits(s) + v).to_bits())
            });
    }
}

fn lookup_or_insert<T>(
    map: &RwLock<HashMap<Key, Arc<T>>>,
    key: &Key,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    if let Some(h) = map.read().unwrap_or_else(|e| e.into_inner()).get(key) {
        return h.clone();
    }
    map.write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key.clone())
        .or_insert_with(|| Arc::new(make()))
        .clone()
}

impl OtlpRecorder {
    pub fn new(prom: PrometheusRecorder) -> Self {
        OtlpRecorder {
            prom,
            store: Arc::new(Store::default()),
        }
    }

    fn describe(&self, name: &KeyName, unit: Option<Unit>, description: &SharedString) {
        self.store
            .described
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.as_str().to_owned(), (unit, description.to_string()));
    }
}

impl Recorder for OtlpRecorder {
    fn describe_counter(&self, name: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(&name, unit, &description);
        self.prom.describe_counter(name, unit, description);
    }
    fn describe_gauge(&self, name: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(&name, unit, &description);
        self.prom.describe_gauge(name, unit, description);
    }
    fn describe_histogram(&self, name: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(&name, unit, &description);
        self.prom.describe_histogram(name, unit, description);
    }
    fn register_counter(&self, key: &Key, meta: &Metadata<'_>) -> Counter {
        Counter::from_arc(lookup_or_insert(&self.store.counters, key, || {
            PairCounter {
                prom: self.prom.register_counter(key, meta),
                value: AtomicU64::new(0),
            }
        }))
    }
    fn register_gauge(&self, key: &Key, meta: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(lookup_or_insert(&self.store.gauges, key, || PairGauge {
            prom: self.prom.register_gauge(key, meta),
            value: AtomicU64::new(0f64.to_bits()),
        }))
    }
    fn register_histogram(&self, key: &Key, meta: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(lookup_or_insert(&self.store.histograms, key, || {
            let bounds = super::histogram_bounds(key.name()).unwrap_or(DEFAULT_BOUNDS);
            PairHistogram {
                prom: self.prom.register_histogram(key, meta),
                bounds,
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0f64.to_bits()),
            }
        }))
    }
}

fn unit_label(u: Option<Unit>) -> String {
    match u {
        Some(Unit::Seconds) => "s",
        Some(Unit::Milliseconds) => "ms",
        Some(Unit::Bytes) => "By",
        Some(Unit::Count) => "1",
        _ => "",
    }
    .to_owned()
}

/// The metric `name` in `by_name`, created with `data` (no points yet) the first time.
fn metric<'a>(
    by_name: &'a mut std::collections::BTreeMap<String, pm::Metric>,
    described: &HashMap<String, (Option<Unit>, String)>,
    name: &str,
    data: fn() -> pm::metric::Data,
) -> &'a mut pm::Metric {
    by_name.entry(name.to_owned()).or_insert_with(|| {
        let (unit, description) = described.get(name).cloned().unwrap_or_default();
        pm::Metric {
            name: name.to_owned(),
            description,
            unit: unit_label(unit),
            data: Some(data()),
            ..Default::default()
        }
    })
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .map(|l| kv(l.key(), string(l.value())))
        .collect()
}

impl Store {
    /// Every series as it stands now: counters as cumulative monotonic sums, gauges as gauges,
    /// histograms as cumulative explicit-bucket histograms, one metric per name.
    fn snapshot(&self, start: u64) -> ExportMetricsServiceRequest {
        let now = now_nanos();
        let described = self.described.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_name: std::collections::BTreeMap<String, pm::Metric> = Default::default();
        for (key, c) in self
            .counters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let m = metric(&mut by_name, &described, key.name(), || {
                pm::metric::Data::Sum(pm::Sum {
                    data_points: vec![],
                    aggregation_temporality: pm::AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })
            });
            if let Some(pm::metric::Data::Sum(s)) = &mut m.data {
                s.data_points.push(pm::NumberDataPoint {
                    attributes: attributes(key),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    value: Some(pm::number_data_point::Value::AsInt(
                        c.value.load(Ordering::Relaxed) as i64,
                    )),
                    ..Default::default()
                });
            }
        }
        for (key, g) in self.gauges.read().unwrap_or_else(|e| e.into_inner()).iter() {
            let m = metric(&mut by_name, &described, key.name(), || {
                pm::metric::Data::Gauge(pm::Gauge {
                    data_points: vec![],
                })
            });
            if let Some(pm::metric::Data::Gauge(s)) = &mut m.data {
                s.data_points.push(pm::NumberDataPoint {
                    attributes: attributes(key),
                    time_unix_nano: now,
                    value: Some(pm::number_data_point::Value::AsDouble(f64::from_bits(
                        g.value.load(Ordering::Relaxed),
                    ))),
                    ..Default::default()
                });
            }
        }
        for (key, h) in self
            .histograms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let m = metric(&mut by_name, &described, key.name(), || {
                pm::metric::Data::Histogram(pm::Histogram {
                    data_points: vec![],
                    aggregation_temporality: pm::AggregationTemporality::Cumulative as i32,
                })
            });
            let bucket_counts: Vec<u64> = h
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
            if let Some(pm::metric::Data::Histogram(s)) = &mut m.data {
                s.data_points.push(pm::HistogramDataPoint {
                    attributes: attributes(key),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    count: bucket_counts.iter().sum(),
                    sum: Some(f64::from_bits(h.sum.load(Ordering::Relaxed))),
                    bucket_counts,
                    explicit_bounds: h.bounds.to_vec(),
                    ..Default::default()
                });
            }
        }
        ExportMetricsServiceRequest {
            resource_metrics: vec![pm::ResourceMetrics {
                resource: resource(),
                scope_metrics: vec![pm::ScopeMetrics {
                    scope: scope(),
                    metrics: by_name.into_values().collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

/// The pusher: its store, and a way to push once more at shutdown.
struct Pusher {
    store: Arc<Store>,
    spec: OtlpSpec,
    start: u64,
    /// Set at shutdown: the thread pushes a last time and ends.
    stop: Mutex<bool>,
    wake: std::sync::Condvar,
    done: Mutex<Option<std::thread::JoinHandle<()>>>,
}

static PUSHER: OnceLock<Arc<Pusher>> = OnceLock::new();

/// Starts pushing `recorder`'s series to the collector every `interval` (once per process).
pub fn start_metrics(recorder: &OtlpRecorder, spec: &OtlpSpec, interval: Duration) {
    let pusher = Arc::new(Pusher {
        store: recorder.store.clone(),
        spec: spec.clone(),
        start: now_nanos(),
        stop: Mutex::new(false),
        wake: std::sync::Condvar::new(),
        done: Mutex::new(None),
    });
    if PUSHER.set(pusher.clone()).is_err() {
        return;
    }
    let p = pusher.clone();
    let handle = std::thread::Builder::new()
        .name("fngate-otlp-metrics".into())
        .spawn(move || push_loop(&p, interval))
        .expect("spawn the OTLP metrics thread");
    *pusher.done.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
}

fn push_loop(p: &Pusher, interval: Duration) {
    let client = match Client::new(&p.spec) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("OTLP metrics are not pushed: {e}");
            return;
        }
    };
    let mut failing = false;
    loop {
        let stop = {
            let g = p.stop.lock().unwrap_or_else(|e| e.into_inner());
            let (g, _) = p
                .wake
                .wait_timeout_while(g, interval, |stop| !*stop)
                .unwrap_or_else(|e| e.into_inner());
            *g
        };
        match client.export_metrics(p.store.snapshot(p.start)) {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("OTLP metrics push works again");
            }
            Ok(()) => {}
            Err(e) => {
                metrics::counter!(super::OTLP_EXPORT_FAILURES, "signal" => "metrics").increment(1);
                if !failing {
                    failing = true;
                    tracing::warn!("OTLP metrics push failed: {e}");
                }
            }
        }
        if stop {
            return;
        }
    }
}

/// Pushes the final values and stops the pusher (at shutdown; bounded by the export timeout).
pub fn shutdown_metrics() {
    let Some(p) = PUSHER.get() else { return };
    *p.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
    p.wake.notify_all();
    if let Some(h) = p.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = h.join();
    }
}

// ---------------------------------------------------------------------------------------------
// Logs

/// The OTLP log sink's target: a batch of JSON lines (invocation lines, instance output) becomes
/// log records whose attributes are the line's fields.
pub struct LogTarget {
    spec: OtlpSpec,
    client: Option<Client>,
}

impl LogTarget {
    pub fn new(spec: &OtlpSpec) -> Self {
        LogTarget {
            spec: spec.clone(),
            client: None,
        }
    }
}

impl super::log::Target for LogTarget {
    fn write_lines(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.client.is_none() {
            self.client = Some(Client::new(&self.spec).map_err(std::io::Error::other)?);
        }
        let client = self.client.as_ref().expect("built above");
        let observed = now_nanos();
        let records: Vec<LogRecord> = buf
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| record(l, observed))
            .collect();
        for chunk in records.chunks(LOGS_PER_REQUEST) {
            let req = ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: resource(),
                    scope_logs: vec![ScopeLogs {
                        scope: scope(),
                        log_records: chunk.to_vec(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            if let Err(e) = client.export_logs(req) {
                metrics::counter!(super::OTLP_EXPORT_FAILURES, "signal" => "logs").increment(1);
                return Err(std::io::Error::other(e));
            }
        }
        Ok(())
    }
}

/// Severity numbers of the OpenTelemetry log data model.
const INFO: i32 = 9;
const WARN: i32 = 13;
const ERROR: i32 = 17;

/// One JSON line → one log record. An invocation line's body is `METHOD path status`, an
/// instance line's body is the line it printed; every other field becomes an attribute
/// (`usage.*` flattened), and `service` is added from `function` (`service/function`).
fn record(line: &[u8], observed: u64) -> LogRecord {
    let v: serde_json::Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(_) => serde_json::Value::String(String::from_utf8_lossy(line).into_owned()),
    };
    let mut r = LogRecord {
        observed_time_unix_nano: observed,
        time_unix_nano: observed,
        severity_number: INFO,
        ..Default::default()
    };
    let serde_json::Value::Object(fields) = v else {
        r.body = Some(AnyValue {
            value: Some(string(v.as_str().unwrap_or_default())),
        });
        return r;
    };
    if let Some(t) = fields
        .get("ts")
        .and_then(|t| t.as_str())
        .and_then(parse_rfc3339)
    {
        r.time_unix_nano = t;
    }
    let kind = fields.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let body = match kind {
        "instance_log" => {
            if fields.get("stream").and_then(|s| s.as_str()) == Some("stderr") {
                r.severity_number = WARN;
            }
            fields
                .get("line")
                .and_then(|l| l.as_str())
                .unwrap_or("")
                .to_owned()
        }
        "invocation" => {
            let status = fields.get("status").and_then(|s| s.as_u64()).unwrap_or(0);
            r.severity_number = match status {
                500.. => ERROR,
                400..=499 => WARN,
                _ => INFO,
            };
            let s = |k: &str| fields.get(k).and_then(|v| v.as_str()).unwrap_or("");
            format!("{} {} {status}", s("method"), s("path"))
        }
        other => other.to_owned(),
    };
    r.severity_text = match r.severity_number {
        ERROR => "ERROR",
        WARN => "WARN",
        _ => "INFO",
    }
    .into();
    r.body = Some(AnyValue {
        value: Some(string(body)),
    });
    if let Some(f) = fields.get("function").and_then(|f| f.as_str())
        && let Some((service, _)) = f.split_once('/')
    {
        r.attributes.push(kv("service", string(service)));
    }
    // The invocation's trace: the record's own fields, so a collector links log and span.
    let id = |k: &str, out: &mut Vec<u8>, n: usize| {
        let mut b = vec![0u8; n];
        if let Some(h) = fields.get(k).and_then(|v| v.as_str())
            && super::unhex(h.as_bytes(), &mut b).is_some()
        {
            *out = b;
        }
    };
    id("trace_id", &mut r.trace_id, 16);
    id("span_id", &mut r.span_id, 8);
    for (k, v) in &fields {
        if k == "ts" || k == "trace_id" || k == "span_id" || (kind == "instance_log" && k == "line")
        {
            continue;
        }
        push_attr(&mut r.attributes, k, v);
    }
    r
}

fn push_attr(out: &mut Vec<KeyValue>, key: &str, v: &serde_json::Value) {
    use serde_json::Value as J;
    let value = match v {
        J::Null => return,
        J::Bool(b) => any_value::Value::BoolValue(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => string(s.as_str()),
        J::Object(o) => {
            for (k, v) in o {
                push_attr(out, &format!("{key}.{k}"), v);
            }
            return;
        }
        J::Array(_) => string(v.to_string()),
    };
    out.push(kv(key, value));
}

/// `2026-11-25T10:00:00.123Z` (what `rfc3339_now` writes) → Unix nanoseconds.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let (secs, nanos) = super::parse_rfc3339(s)?;
    u64::try_from(secs)
        .ok()
        .map(|s| s * 1_000_000_000 + u64::from(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the test server saw of one call: its path and body.
    type Seen = std::sync::mpsc::Sender<(String, bytes::Bytes)>;
    /// The `grpc-status` and `grpc-message` of the answers still to give.
    type Answers = Arc<Mutex<std::vec::IntoIter<(&'static str, &'static str)>>>;

    /// One call to the test server: keeps its path and body, answers with a length-prefixed
    /// message and the next `grpc-status` (0 once `answers` run out).
    async fn answer(
        req: hyper::Request<hyper::body::Incoming>,
        seen: Seen,
        answers: Answers,
    ) -> Result<
        hyper::Response<
            impl hyper::body::Body<Data = bytes::Bytes, Error = std::convert::Infallible>,
        >,
        hyper::Error,
    > {
        use http_body_util::BodyExt;
        let path = req.uri().path().to_string();
        let body = req.into_body().collect().await?.to_bytes();
        let _ = seen.send((path, body));
        let (status, message) = answers.lock().unwrap().next().unwrap_or(("0", ""));
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", status.parse().unwrap());
        if !message.is_empty() {
            trailers.insert("grpc-message", message.parse().unwrap());
        }
        // An export response: a partial-success note the codec must read and let go of (field 1,
        // a message holding rejected_spans = 3).
        const REPLY: &[u8] = &[0, 0, 0, 0, 4, 0x0a, 0x02, 0x08, 0x03];
        let frames = futures_util::stream::iter([
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from_static(
                REPLY,
            ))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ]);
        Ok(hyper::Response::builder()
            .header("content-type", "application/grpc")
            .body(http_body_util::StreamBody::new(frames))
            .unwrap())
    }

    /// A gRPC server on loopback (plain HTTP/2, its own thread and runtime) answering each call
    /// with `answer`; the receiver gets what each call sent.
    fn grpc_server(
        answers: Vec<(&'static str, &'static str)>,
    ) -> (String, std::sync::mpsc::Receiver<(String, bytes::Bytes)>) {
        let (seen_tx, seen) = std::sync::mpsc::channel();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let answers: Answers = Arc::new(Mutex::new(answers.into_iter()));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((conn, _)) = listener.accept().await {
                    let (seen_tx, answers) = (seen_tx.clone(), answers.clone());
                    let service = hyper::service::service_fn(move |req| {
                        answer(req, seen_tx.clone(), answers.clone())
                    });
                    tokio::spawn(
                        hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), service),
                    );
                }
            });
        });
        (format!("http://{addr}"), seen)
    }

    #[test]
    fn the_raw_grpc_codec_sends_the_bytes_as_they_are_and_reads_the_answer() {
        let (endpoint, seen) = grpc_server(vec![("0", ""), ("8", "collector is full")]);
        let client = Client::new(&OtlpSpec {
            endpoint: endpoint.clone(),
            protocol: OtlpProtocol::Grpc,
        })
        .unwrap();
        // Any bytes: the codec neither parses nor re-encodes what it is given.
        let encoded: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        client.export_traces(encoded.clone()).unwrap();
        let (path, body) = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(
            path,
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        // One gRPC message: not compressed, its length big-endian, then the bytes unchanged.
        assert_eq!(body[0], 0);
        assert_eq!(body[1..5], (encoded.len() as u32).to_be_bytes());
        assert_eq!(&body[5..], &encoded[..]);
        // A refusal comes back as an error naming the collector and what it said.
        let err = client.export_traces(vec![1, 2, 3]).unwrap_err();
        assert!(
            err.contains(&endpoint) && err.contains("gRPC traces"),
            "{err}"
        );
        assert!(err.contains("collector is full"), "{err}");
        let (_, body) = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(&body[..], &[0, 0, 0, 0, 3, 1, 2, 3]);
    }

    #[test]
    fn timestamps_parse_back() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:01.5Z"),
            Some(951_782_401_500_000_000)
        );
        let now = super::super::rfc3339_now();
        let parsed = parse_rfc3339(&now).unwrap();
        assert!(now_nanos().abs_diff(parsed) < 2_000_000_000, "{now}");
        for bad in ["", "1969-12-31T23:59:59Z", "2026-11-25T10:00:00.Z", "x"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn lines_become_records() {
        let r = record(
            br#"{"ts":"2026-11-25T10:00:00.000Z","kind":"invocation","request_id":"ab","function":"shop/cart","status":503,"method":"GET","path":"/c","duration_ms":1.5,"usage":{"busy_ms":2},"error":null,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7"}"#,
            1,
        );
        assert_eq!(r.severity_number, ERROR);
        assert_eq!(r.trace_id[..2], [0x4b, 0xf9]);
        assert_eq!(r.trace_id.len(), 16);
        assert_eq!(r.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(r.body.unwrap().value, Some(string("GET /c 503")));
        let attr = |k: &str| {
            r.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(attr("service"), Some(string("shop")));
        assert_eq!(attr("request_id"), Some(string("ab")));
        assert_eq!(attr("status"), Some(any_value::Value::IntValue(503)));
        assert_eq!(
            attr("duration_ms"),
            Some(any_value::Value::DoubleValue(1.5))
        );
        assert_eq!(attr("usage.busy_ms"), Some(any_value::Value::IntValue(2)));
        assert_eq!(attr("error"), None);
        assert_eq!(attr("ts"), None);
        assert_eq!(attr("trace_id"), None);

        let r = record(
            br#"{"ts":"2026-11-25T10:00:00.000Z","kind":"instance_log","function":"a/b","instance_id":"i1","stream":"stderr","line":"boom"}"#,
            1,
        );
        assert_eq!(r.severity_number, WARN);
        assert_eq!(r.body.unwrap().value, Some(string("boom")));
        assert!(r.attributes.iter().all(|a| a.key != "line"));
    }

    #[test]
    fn histogram_buckets_and_counters() {
        let store = Store::default();
        let h = PairHistogram {
            prom: Histogram::noop(),
            bounds: &[1.0, 2.0],
            buckets: (0..3).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        };
        for v in [0.5, 1.0, 1.5, 7.0] {
            h.record(v);
        }
        let key = Key::from_parts("h_seconds", vec![metrics::Label::new("function", "f")]);
        store.histograms.write().unwrap().insert(key, Arc::new(h));
        let c = PairCounter {
            prom: Counter::noop(),
            value: AtomicU64::new(0),
        };
        c.increment(3);
        store
            .counters
            .write()
            .unwrap()
            .insert(Key::from_name("c_total"), Arc::new(c));
        let req = store.snapshot(7);
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics[0].name, "c_total");
        let Some(pm::metric::Data::Sum(s)) = &metrics[0].data else {
            panic!("{:?}", metrics[0])
        };
        assert!(s.is_monotonic);
        assert_eq!(
            s.data_points[0].value,
            Some(pm::number_data_point::Value::AsInt(3))
        );
        let Some(pm::metric::Data::Histogram(h)) = &metrics[1].data else {
            panic!("{:?}", metrics[1])
        };
        let p = &h.data_points[0];
        assert_eq!(p.bucket_counts, vec![2, 1, 1]);
        assert_eq!((p.count, p.sum, p.start_time_unix_nano), (4, Some(10.0), 7));
        assert_eq!(p.attributes[0].key, "function");
    }
}
