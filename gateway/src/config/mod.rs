//! Configuration: TOML file → raw serde structs → whole-file validation → an immutable snapshot.
//!
//! The snapshot (`Config`) is what the rest of the gateway reads, through `arc_swap` in
//! `crate::state`. A reload builds a new snapshot from scratch; a file with any problem changes
//! nothing and every problem comes back with its path (`service[0].function[1].timeout: …`).

mod raw;
mod units;
mod validate;

pub use units::{format_duration, parse_duration, parse_size};

use http::Method;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

// Defaults, named so the docs (`config/reference.toml`) and the code say the same thing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9443";
pub const DEFAULT_DATA_DIR: &str = "data";
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_INSTANCE_CONCURRENCY: u32 = 1;
pub const MAX_INSTANCE_CONCURRENCY: u32 = 10_000;
/// vCPUs an instance is metered with when a function does not say (`cpu`).
pub const DEFAULT_CPU: f64 = 1.0;
pub const MAX_CPU: f64 = 512.0;
/// Memory an instance is metered with when a function does not say (`memory`).
pub const DEFAULT_MEMORY: u64 = 1 << 30;
pub const MAX_MEMORY: u64 = 4 << 40;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_MAX_QUEUED: usize = 100;
pub const MAX_MAX_QUEUED: usize = 1_000_000;
pub const DEFAULT_MAX_QUEUE_WAIT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_BODY: u64 = 32 * 1024 * 1024;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
pub const DEFAULT_MAX_H2_STREAMS: u32 = 256;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// An instance-login session with no input and no output for this long is closed.
pub const DEFAULT_EXEC_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Instance-login sessions open at once.
pub const DEFAULT_EXEC_MAX_SESSIONS: u64 = 16;
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_millis(5);
pub const MAX_PLUGIN_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_PLUGIN_MEMORY: u64 = 16 * 1024 * 1024;
pub const MAX_PLUGIN_MEMORY: u64 = 256 * 1024 * 1024;
pub const MAX_PLUGIN_BODY_PREFIX: usize = 64 * 1024;
pub const MAX_PLUGINS_PER_TRIGGER: usize = 8;
pub const DEFAULT_GPU_CARDS_MAX: u32 = 10;
pub const DEFAULT_MAX_INSTANCES: u32 = 10;
pub const MAX_MAX_INSTANCES: u32 = 1_000;
pub const DEFAULT_IDLE_TIMEOUT_INSTANCE: Duration = Duration::from_secs(300);
pub const DEFAULT_PORT_ENV: &str = "PORT";
pub const DEFAULT_READINESS_PATH: &str = "/health";
pub const DEFAULT_READINESS_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_READINESS_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_READINESS_FAILURES: u32 = 3;
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Consecutive failed calls (connection refused or reset, malformed answer) that take a static
/// endpoint out of rotation.
pub const DEFAULT_PASSIVE_FAILURES: u32 = 3;
/// How long an endpoint taken out of rotation waits before its first probe; doubled after each
/// failed probe (and after an ejection soon after a recovery), up to the maximum.
pub const DEFAULT_PASSIVE_COOLDOWN: Duration = Duration::from_secs(5);
pub const DEFAULT_PASSIVE_MAX_COOLDOWN: Duration = Duration::from_secs(60);
pub const DEFAULT_PASSIVE_PROBE_PATH: &str = "/";
pub const DEFAULT_PASSIVE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_TRACKING_WINDOW: Duration = Duration::from_secs(60);
pub const DEFAULT_ASYNC_MAX_RETRIES: u32 = 3;
pub const MAX_ASYNC_MAX_RETRIES: u32 = 8;
pub const DEFAULT_MAX_EVENT_AGE: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_ASYNC_MAX_CONCURRENCY: u32 = 8;
pub const DEFAULT_ASYNC_MAX_PAYLOAD: u64 = 6 * 1024 * 1024;
pub const DEFAULT_TASK_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const QUEUE_FILE: &str = "queue.sqlite";
pub const DEFAULT_EVENT_MAX_BODY: u64 = 4 * 1024 * 1024;
pub const MAX_EVENT_MAX_BODY: u64 = 64 * 1024 * 1024;
pub const DEFAULT_EVENT_MAX_RECORDS: usize = 1000;
/// Also the hard cap while parsing: a body never allocates more records than this.
pub const MAX_EVENT_MAX_RECORDS: usize = 10_000;
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(3600);
pub const DEFAULT_HMAC_WINDOW: Duration = Duration::from_secs(300);
pub const MAX_HMAC_WINDOW: Duration = Duration::from_secs(3600);
/// Shortest accepted webhook secret (bearer token or HMAC key).
pub const MIN_EVENT_SECRET_BYTES: usize = 16;
pub const DEFAULT_AMQP_PREFETCH: u16 = 64;
/// Environment variables an instance gets from fngate's own environment without asking.
pub const BASE_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one file; never empty.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} problem(s)",
            self.file.display(),
            self.problems.len()
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

/// The compiled, immutable configuration snapshot.
#[derive(Debug)]
pub struct Config {
    pub file: PathBuf,
    pub server: ServerSettings,
    pub functions: Vec<Arc<FunctionSpec>>,
    pub triggers: Vec<HttpTriggerSpec>,
    pub plugins: Vec<PluginSpec>,
    /// The global log sinks (`[telemetry] log`): every line unless a service opts out.
    pub log: LogSinks,
    /// Services with their own `log` settings, by service name.
    pub service_logs: std::collections::BTreeMap<String, ServiceLog>,
    /// OTLP trace export (`[telemetry] otlp` + `traces`); `None`: no traces.
    pub traces: Option<TracesSpec>,
    /// OTLP metrics push (`[telemetry] metrics = { otlp = true }`); read at start only.
    pub metrics: Option<MetricsSpec>,
    /// The node's GPU pool, in config order (card indexes follow it).
    pub gpus: Vec<crate::scheduler::gpu::CardType>,
    /// The account's cap on physical GPU cards in use.
    pub gpu_cards_max: u32,
    pub queue: QueueSpec,
    /// `[[event_source]]`s, in file order.
    pub event_sources: Vec<EventSourceSpec>,
    /// `kind = "oss"` triggers, in file order (HTTP triggers are in `triggers`).
    pub oss_triggers: Vec<OssTriggerSpec>,
}

/// Default `max_size` of a file log sink.
pub const DEFAULT_LOG_MAX_SIZE: u64 = 64 * 1024 * 1024;
/// Smallest `max_size` accepted (tests use tiny files; a real one is megabytes).
pub const MIN_LOG_MAX_SIZE: u64 = 512;
/// Default number of rotated files kept (`fngate.log.1` … `fngate.log.5`).
pub const DEFAULT_LOG_KEEP: u32 = 5;
pub const MAX_LOG_KEEP: u32 = 1000;

/// Where log lines go: stdout and/or one size-rotated file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogSinks {
    pub stdout: bool,
    pub file: Option<FileSinkSpec>,
    /// `otlp = true`: lines also go to the collector of `[telemetry] otlp`.
    pub otlp: Option<OtlpSpec>,
}

/// `file = { path, max_size, keep }`, the path resolved against the config file's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkSpec {
    pub path: PathBuf,
    pub max_size: u64,
    pub keep: u32,
}

/// A service's own sinks (`[[service]] log`), used by all its functions and instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLog {
    pub sinks: LogSinks,
    /// The global sinks get the service's lines too (default true).
    pub inherit: bool,
}

/// Where object-storage notifications come from (`[[event_source]]`).
#[derive(Debug, Clone)]
pub struct EventSourceSpec {
    /// Used in `POST /events/{name}`, in metric labels and as the event's `source`.
    pub name: String,
    pub kind: EventSourceKind,
    /// Largest notification body (a webhook request or a broker message).
    pub max_body: u64,
    /// Most records one notification may carry.
    pub max_records: usize,
    /// How long a redelivered event is guaranteed to be recognised (task records are kept for
    /// `[queue] retention` after they finish; validation refuses a longer window).
    pub dedupe_window: Duration,
}

#[derive(Debug, Clone)]
pub enum EventSourceKind {
    /// `POST /events/{name}` on the public listener.
    Webhook { auth: WebhookAuth },
    /// A NATS subject; with `jetstream`, a durable consumer of that stream. Consumed by the
    /// broker ingestion runtime (not part of `crate::events`).
    Nats {
        url: String,
        subject: String,
        jetstream: Option<JetStreamConsumer>,
    },
    /// An AMQP 0-9-1 queue (RabbitMQ). Consumed by the broker ingestion runtime.
    Amqp {
        url: String,
        queue: String,
        prefetch: u16,
    },
}

impl EventSourceKind {
    pub fn label(&self) -> &'static str {
        match self {
            EventSourceKind::Webhook { .. } => "webhook",
            EventSourceKind::Nats { .. } => "nats",
            EventSourceKind::Amqp { .. } => "amqp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConsumer {
    pub stream: String,
    /// Durable consumer name.
    pub consumer: String,
}

/// How a webhook sender proves itself.
#[derive(Debug, Clone)]
pub enum WebhookAuth {
    /// Only with an explicit `auth = "anonymous"`.
    Anonymous,
    /// `Authorization: Bearer <token>`, or HTTP Basic with the token as the password (for
    /// senders that can only put credentials in the URL).
    Bearer(Secret),
    /// `x-fngate-signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">` with
    /// `x-fngate-timestamp: <unix seconds>` within `window` of fngate's clock.
    Hmac { secret: Secret, window: Duration },
}

/// A `kind = "oss"` trigger: which events of a source run which function.
#[derive(Debug, Clone)]
pub struct OssTriggerSpec {
    pub name: String,
    /// Index into `Config::functions`.
    pub function: usize,
    /// Index into `Config::event_sources`.
    pub source: usize,
    /// Event-name patterns without any `s3:`/`oss:` prefix; `*` matches any run of characters.
    pub events: Vec<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    /// Indexes into `Config::plugins`, applied in order (`on-event`).
    pub plugins: Vec<usize>,
    pub priority: i32,
}

/// The async queue: the embedded store's file and how long finished tasks are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// The embedded store's file (unused with NATS).
    pub path: PathBuf,
    pub retention: Duration,
    pub kind: QueueKind,
}

/// Where tasks live: `[queue] kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueKind {
    /// A SQLite file in data_dir, owned by one gateway.
    Embedded,
    /// A NATS JetStream work-queue stream and key-value bucket, shared by every gateway
    /// configured with the same URL and stream.
    Nats { url: String, stream: String },
}

pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_NATS_STREAM: &str = "FNGATE";

/// The collector (`[telemetry] otlp = { endpoint, protocol }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSpec {
    /// The collector's base URL (`http://HOST:PORT`, no trailing slash); over HTTP the signals
    /// go to `/v1/traces`, `/v1/metrics` and `/v1/logs`.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// HTTP/protobuf (the collector's port 4318).
    Http,
    /// gRPC over plain HTTP/2 (port 4317).
    Grpc,
}

/// OTLP metrics push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSpec {
    pub otlp: OtlpSpec,
    /// Every series is pushed this often (cumulative values).
    pub interval: std::time::Duration,
}

pub const DEFAULT_METRICS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
pub const MIN_METRICS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Where invocation spans go and how many.
#[derive(Debug, Clone, PartialEq)]
pub struct TracesSpec {
    /// The collector.
    pub otlp: OtlpSpec,
    /// Share of traces started here that are recorded (a client's `traceparent` decides for
    /// its own).
    pub sample_ratio: f64,
}

pub const DEFAULT_TRACE_SAMPLE_RATIO: f64 = 0.1;

/// Where a destination record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// POSTed as JSON.
    Http(http::Uri),
    /// Published on this subject through the NATS queue's connection (`nats:SUBJECT`).
    Nats(String),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Http(u) => write!(f, "{u}"),
            Destination::Nats(s) => write!(f, "nats:{s}"),
        }
    }
}

/// How a function's async invocations run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncSpec {
    pub max_retries: u32,
    pub max_event_age: Duration,
    pub on_success: Option<Destination>,
    pub on_failure: Option<Destination>,
    pub max_concurrency: u32,
    pub max_payload: u64,
}

impl Default for AsyncSpec {
    fn default() -> Self {
        AsyncSpec {
            max_retries: DEFAULT_ASYNC_MAX_RETRIES,
            max_event_age: DEFAULT_MAX_EVENT_AGE,
            on_success: None,
            on_failure: None,
            max_concurrency: DEFAULT_ASYNC_MAX_CONCURRENCY,
            max_payload: DEFAULT_ASYNC_MAX_PAYLOAD,
        }
    }
}

/// How a trigger's requests are invoked unless the request or a plugin says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationType {
    Sync,
    Async,
}

/// A policy plugin as configured; loading and compiling happen in `crate::policy`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PluginSpec {
    pub name: String,
    pub path: PathBuf,
    /// Sorted, so equal configs compare equal.
    pub config: std::collections::BTreeMap<String, String>,
    pub timeout: Duration,
    pub memory: u64,
    pub on_error: OnError,
    /// Bytes of the request body the plugin sees (its `body_prefix` config value), 0 for none.
    pub body_prefix: usize,
    pub wall_clock: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnError {
    /// Answer 503 naming the plugin.
    FailClosed,
    /// Go on as if the plugin were not there.
    FailOpen,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub tls_reload_interval: Duration,
    pub plaintext_listen: Option<SocketAddr>,
    pub admin_listen: SocketAddr,
    /// `None`: generate one into `data_dir/admin-token` at start-up.
    pub admin_token: Option<Secret>,
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub exec: ExecSettings,
}

/// Instance login (`[server.exec]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSettings {
    /// A session with no input and no output for this long is closed.
    pub idle_timeout: Duration,
    /// Sessions open at once across the gateway; more are refused with 503.
    pub max_sessions: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_h2_streams: u32,
    pub shutdown_grace: Duration,
}

/// A secret value with where it came from; `Debug` never prints the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub source: String,
    pub value: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, redacted)", self.source)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub service: String,
    pub name: String,
    /// `service/function`, the name used in logs, metrics and trigger references.
    pub id: String,
    pub instance_concurrency: u32,
    pub timeout: Duration,
    pub max_queued: usize,
    pub max_queue_wait: Duration,
    pub max_body: u64,
    pub backend: BackendSpec,
    /// A GPU slice each instance needs (process backends only).
    pub gpu: Option<GpuRequest>,
    pub scaling: ScalingSpec,
    pub async_: AsyncSpec,
    /// vCPUs of one instance, for usage metering (not enforced).
    pub cpu: f64,
    /// Memory of one instance in bytes, for usage metering (not enforced).
    pub memory: u64,
}

impl FunctionSpec {
    /// Whether two specs start instances the same way: if not, a reload replaces the instances.
    pub fn same_recipe(&self, other: &FunctionSpec) -> bool {
        self.backend == other.backend && self.gpu == other.gpu
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// Fixed upstream endpoints, each one an always-provisioned instance.
    Static {
        endpoints: Vec<Endpoint>,
        health: PassiveHealth,
    },
    /// A command fngate runs for each instance it starts.
    Process(Arc<ProcessSpec>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub command: Vec<String>,
    /// Service env overlaid with the function's own, plus the inherited variables' values.
    pub env: std::collections::BTreeMap<String, String>,
    pub port_env: String,
    pub cwd: PathBuf,
    pub readiness: Readiness,
    pub startup_timeout: Duration,
    pub stop_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub path: String,
    /// Health-probe period once the instance is ready (start-up probes are faster).
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed probes after which a ready instance is removed.
    pub failure_threshold: u32,
}

/// Passive health of static endpoints: failed calls take an endpoint out of rotation, a probe
/// brings it back (`crate::scheduler::health`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Consecutive failed calls that take an endpoint out of rotation.
    pub failures: u32,
    /// Wait before the first probe of an endpoint out of rotation.
    pub cooldown: Duration,
    /// The longest wait between probes, however often they fail.
    pub max_cooldown: Duration,
    /// Whether a call that times out counts as failed (by default it does not: a slow model
    /// is alive, and the function timeout already bounds the call).
    pub timeouts: bool,
    /// `GET` this path; any HTTP answer, whatever its status, brings the endpoint back.
    pub probe_path: String,
    pub probe_timeout: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            failures: DEFAULT_PASSIVE_FAILURES,
            cooldown: DEFAULT_PASSIVE_COOLDOWN,
            max_cooldown: DEFAULT_PASSIVE_MAX_COOLDOWN,
            timeouts: false,
            probe_path: DEFAULT_PASSIVE_PROBE_PATH.to_string(),
            probe_timeout: DEFAULT_PASSIVE_PROBE_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuRequest {
    pub gpu_type: String,
    pub memory_gb: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScalingSpec {
    pub max_instances: u32,
    /// Provisioned target from the file; the admin API and scheduled rules move it at run time.
    pub provisioned: u32,
    pub idle_timeout: Duration,
    pub schedule: crate::scheduler::scaling::Schedule,
    pub tracking: Option<crate::scheduler::scaling::TrackingRule>,
}

impl ScalingSpec {
    /// Static endpoints: every endpoint is a provisioned instance and nothing scales.
    pub fn fixed(instances: u32) -> ScalingSpec {
        ScalingSpec {
            max_instances: instances,
            provisioned: instances,
            idle_timeout: DEFAULT_IDLE_TIMEOUT_INSTANCE,
            schedule: Default::default(),
            tracking: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` as written, used as the instance's stable identity.
    pub authority: http::uri::Authority,
}

#[derive(Debug, Clone)]
pub struct HttpTriggerSpec {
    pub name: String,
    /// Index into `Config::functions`.
    pub function: usize,
    pub host: Option<HostMatch>,
    /// Normalised path prefix: starts with `/`, no trailing `/` (except the root itself).
    pub path: Option<String>,
    /// `None`: every method.
    pub methods: Option<Vec<Method>>,
    pub auth: AuthSpec,
    pub strip_prefix: bool,
    /// Indexes into `Config::plugins`, applied in order.
    pub plugins: Vec<usize>,
    /// The largest `body_prefix` of those plugins: body bytes read before the chain runs.
    pub body_prefix: usize,
    pub invocation: InvocationType,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone)]
pub enum AuthSpec {
    Anonymous,
    Bearer(Secret),
}

/// Reads, parses, validates and compiles a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }],
    })?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let config = from_str(&text, path, &base)?;
    check_log_paths(&config)?;
    Ok(config)
}

/// A file sink whose file or directory cannot be written is a config problem (at `check`, start
/// and reload), found without creating anything: the file, if it exists, must be a writable
/// regular file; otherwise its nearest existing ancestor must be a writable directory.
fn check_log_paths(config: &Config) -> Result<(), ConfigError> {
    use rustix::fs::{Access, access};
    let mut files = vec![("telemetry.log.file".to_string(), &config.log.file)];
    for (name, s) in &config.service_logs {
        files.push((format!("service `{name}` log.file"), &s.sinks.file));
    }
    let mut problems = Vec::new();
    for (path, f) in files {
        let Some(f) = f else { continue };
        let problem = match std::fs::metadata(&f.path) {
            Ok(m) if !m.is_file() => Some("exists and is not a regular file".to_string()),
            Ok(_) => access(&f.path, Access::WRITE_OK)
                .err()
                .map(|e| format!("is not writable: {e}")),
            Err(_) => {
                let mut dir = f.path.parent();
                while let Some(d) = dir
                    && !d.as_os_str().is_empty()
                    && !d.exists()
                {
                    dir = d.parent();
                }
                let d = dir
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                if !d.is_dir() {
                    Some(format!("{} is not a directory", d.display()))
                } else {
                    access(d, Access::WRITE_OK | Access::EXEC_OK)
                        .err()
                        .map(|e| format!("cannot be created in {}: {e}", d.display()))
                }
            }
        };
        if let Some(message) = problem {
            problems.push(Problem {
                path,
                message: format!("{}: {message}", f.path.display()),
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError {
            file: config.file.clone(),
            problems,
        })
    }
}

/// Parses and compiles configuration text; relative paths resolve against `base`.
pub fn from_str(text: &str, file: &Path, base: &Path) -> Result<Config, ConfigError> {
    let raw = validate::parse(text).map_err(|p| ConfigError {
        file: file.to_path_buf(),
        problems: vec![p],
    })?;
    validate::compile(raw, file, base, &|name| std::env::var(name).ok()).map_err(|problems| {
        ConfigError {
            file: file.to_path_buf(),
            problems,
        }
    })
}

#[cfg(test)]
pub(crate) use validate::compile_with_env;
pub(crate) use validate::compile_with_env_in;
