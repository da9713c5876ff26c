//! The configuration file as written: serde structs that mirror the TOML one to one.
//!
//! Nothing here is trusted: every struct denies unknown fields, and `validate.rs` turns these into
//! the compiled snapshot, collecting every problem with its path. Keys that belong to capabilities
//! this build does not implement yet are parsed loosely (`toml::Value`) so that validation can refuse
//! them with a clear message instead of a serde error.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub account: Option<RawAccount>,
    #[serde(default)]
    pub gpu: Vec<RawGpuCards>,
    pub queue: Option<RawQueue>,
    #[serde(default)]
    pub service: Vec<RawService>,
    #[serde(default)]
    pub trigger: Vec<RawTrigger>,
    #[serde(default)]
    pub event_source: Vec<RawEventSource>,
    #[serde(default)]
    pub plugin: Vec<RawPlugin>,
    pub telemetry: Option<RawTelemetry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub tls: Option<RawTls>,
    pub plaintext_listen: Option<String>,
    pub admin_listen: Option<String>,
    pub admin_token: Option<RawSecret>,
    pub data_dir: Option<String>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub exec: RawExec,
}

/// `[server.exec]`: instance login (`fngate exec`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExec {
    pub idle_timeout: Option<String>,
    pub max_sessions: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    /// How often the cert and key files are checked for changes.
    pub reload_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<SizeValue>,
    pub max_headers: Option<u64>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub tls_handshake_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub max_h2_streams: Option<u64>,
    pub shutdown_grace: Option<String>,
}

/// A secret is never written in the file itself: it comes from the environment or a file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    pub env: Option<String>,
    pub file: Option<String>,
}

/// Sizes may be written as a number of bytes or as a string with a unit ("16MiB").
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// Where async invocations wait: `kind = "embedded"` (a SQLite file in data_dir) or `"nats"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub kind: Option<String>,
    pub url: Option<String>,
    pub stream: Option<String>,
    /// How long finished tasks are kept.
    pub retention: Option<String>,
}

/// A function's async invocation settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAsync {
    pub max_retries: Option<u64>,
    pub max_event_age: Option<String>,
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    /// Async attempts running at once for the function (sync traffic keeps the rest).
    pub max_concurrency: Option<u64>,
    /// Largest async request body stored.
    pub max_payload: Option<SizeValue>,
}

/// The account the node's instances run under; only its GPU card cap exists.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccount {
    pub gpu_cards_max: Option<u64>,
}

/// One `[[gpu]]` entry: `count` cards of one type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGpuCards {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub memory_gb: Option<u64>,
    pub count: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Option<String>,
    #[serde(default)]
    pub function: Vec<RawFunction>,
    /// The service's own log sinks (`inherit` says whether the global ones get its lines too).
    pub log: Option<RawLogSink>,
    /// Environment every process-backend instance of the service's functions gets (a function's
    /// own `backend.env` wins on a clash).
    pub env: Option<std::collections::BTreeMap<String, toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFunction {
    pub name: Option<String>,
    pub instance_concurrency: Option<u64>,
    pub timeout: Option<String>,
    pub max_queued: Option<u64>,
    pub max_queue_wait: Option<String>,
    pub max_body: Option<SizeValue>,
    pub backend: Option<RawBackend>,
    pub gpu: Option<RawGpuRequest>,
    pub scaling: Option<RawScaling>,
    #[serde(rename = "async")]
    pub async_: Option<RawAsync>,
    pub cpu: Option<toml::Value>,
    pub memory: Option<SizeValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub kind: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<String>,
    // Process backends: the command fngate runs for each instance.
    pub command: Option<Vec<String>>,
    pub env: Option<std::collections::BTreeMap<String, toml::Value>>,
    /// Names of fngate's own environment variables passed through to instances.
    pub inherit_env: Option<Vec<String>>,
    pub port_env: Option<String>,
    pub cwd: Option<String>,
    pub readiness: Option<RawReadiness>,
    pub startup_timeout: Option<String>,
    pub stop_grace: Option<String>,
    /// Static backends: when a failing endpoint is taken out of rotation and probed back.
    pub passive_health: Option<RawPassiveHealth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassiveHealth {
    pub failures: Option<u64>,
    pub cooldown: Option<String>,
    pub max_cooldown: Option<String>,
    pub timeouts: Option<bool>,
    pub probe_path: Option<String>,
    pub probe_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReadiness {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub failure_threshold: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGpuRequest {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub memory_gb: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScaling {
    pub max_instances: Option<u64>,
    pub provisioned: Option<u64>,
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub schedule: Vec<RawScheduledRule>,
    pub target_tracking: Option<RawTracking>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScheduledRule {
    pub at: Option<String>,
    pub target: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracking {
    pub utilization: Option<f64>,
    pub min: Option<u64>,
    pub max: Option<u64>,
    pub window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrigger {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub function: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub methods: Option<Vec<String>>,
    /// `"anonymous"` or `{ bearer = { env = "…" } }` / `{ bearer = { file = "…" } }`; parsed in
    /// validation so a mistake gets a message that names the accepted forms.
    pub auth: Option<toml::Value>,
    /// Whether the trigger's path prefix is removed before forwarding (default true).
    pub strip_prefix: Option<bool>,
    pub plugins: Option<Vec<String>>,
    pub invocation: Option<String>,
    // oss trigger keys
    /// The `[[event_source]]` whose events the trigger sees.
    pub source: Option<String>,
    /// Event-name patterns with `*` wildcards (`ObjectCreated:*`).
    pub events: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub bucket: Option<String>,
    /// Queue priority of the trigger's tasks (a plugin may override it).
    pub priority: Option<i64>,
}

/// One `[[event_source]]`: where object-storage notifications come from. Keys of the other kinds
/// are accepted by serde and refused with their path in validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEventSource {
    pub name: Option<String>,
    pub kind: Option<String>,
    /// webhook: `"anonymous"`, `{ bearer = { env = "…" } }` or `{ hmac = { env = "…" }, window = "5m" }`;
    /// parsed in validation so a mistake gets a message that names the accepted forms.
    pub auth: Option<toml::Value>,
    pub max_body: Option<SizeValue>,
    pub max_records: Option<u64>,
    pub dedupe_window: Option<String>,
    // nats / amqp
    pub url: Option<String>,
    pub subject: Option<String>,
    pub stream: Option<String>,
    pub consumer: Option<String>,
    pub queue: Option<String>,
    pub prefetch: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub log: Option<RawLogSink>,
    pub otlp: Option<toml::Value>,
    pub traces: Option<toml::Value>,
    pub metrics: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogSink {
    pub stdout: Option<bool>,
    /// `"path"` or `{ path, max_size, keep }`; parsed in validation to name the accepted forms.
    pub file: Option<toml::Value>,
    /// OTLP logs: refused by name until built.
    pub otlp: Option<toml::Value>,
    /// Per service only: whether the global sinks get the service's lines too.
    pub inherit: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub name: Option<String>,
    pub path: Option<String>,
    /// Free-form string values handed to the plugin through `config-get`.
    #[serde(default)]
    pub config: std::collections::BTreeMap<String, toml::Value>,
    pub timeout: Option<String>,
    pub memory: Option<SizeValue>,
    pub on_error: Option<String>,
    /// Sandbox relaxations; only "wall-clock" exists.
    #[serde(default)]
    pub grants: Vec<String>,
}
