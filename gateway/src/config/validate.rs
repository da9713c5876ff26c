//! Whole-file validation: every problem is collected with its path before anything is compiled.

use super::raw::*;
use super::*;
use std::collections::{HashMap, HashSet};

/// Parses TOML into the raw structs; a syntax error or an unknown key is reported with its path.
pub(super) fn parse(text: &str) -> Result<RawConfig, Problem> {
    let de = toml::Deserializer::parse(text).map_err(|e| Problem {
        path: String::new(),
        message: one_line(&e.to_string()),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = one_line(&e.inner().to_string());
        Problem {
            path: if path == "." { String::new() } else { path },
            message: inner,
        }
    })
}

/// toml's messages span several lines with a source excerpt; keep the first line and the location.
fn one_line(msg: &str) -> String {
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // "TOML parse error at line 3, column 1" | "|" | "3 | foo" | "^^^" | "unknown field …"
    let location = lines.iter().find(|l| l.starts_with("TOML parse error"));
    let detail = lines.last().copied().unwrap_or("");
    match location {
        Some(loc) if *loc != detail => {
            format!("{detail} ({})", loc.trim_start_matches("TOML parse error "))
        }
        _ => detail.to_string(),
    }
}

/// Host and path of a trigger: two triggers with the same key compete on method.
type RouteKey = (Option<HostMatch>, Option<String>);
/// A trigger's name and its methods (`None`: all).
type TriggerMethods = (String, Option<Vec<Method>>);

struct Ctx<'a> {
    problems: Vec<Problem>,
    base: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// `[queue] kind = "nats"`: NATS subjects are valid destinations.
    nats_queue: bool,
}

impl Ctx<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(
        &mut self,
        path: String,
        v: &Option<String>,
        default: Duration,
        max: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(text) => match parse_duration(text) {
                Ok(d) if d.is_zero() => {
                    self.err(path, "must be greater than zero");
                    default
                }
                Ok(d) if d > max => {
                    self.err(
                        path,
                        format!("{text} exceeds the maximum of {}", format_duration(max)),
                    );
                    default
                }
                Ok(d) => d,
                Err(m) => {
                    self.err(path, m);
                    default
                }
            },
        }
    }

    fn size(
        &mut self,
        path: String,
        v: &Option<SizeValue>,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let n = match v {
            None => return default,
            Some(SizeValue::Bytes(n)) => *n,
            Some(SizeValue::Text(t)) => match parse_size(t) {
                Ok(n) => n,
                Err(m) => {
                    self.err(path, m);
                    return default;
                }
            },
        };
        if n < min || n > max {
            self.err(path, format!("{n} bytes is outside {min}..={max}"));
            return default;
        }
        n
    }

    fn count(&mut self, path: String, v: Option<u64>, default: u64, min: u64, max: u64) -> u64 {
        match v {
            None => default,
            Some(n) if n < min || n > max => {
                self.err(path, format!("{n} is outside {min}..={max}"));
                default
            }
            Some(n) => n,
        }
    }

    fn addr(
        &mut self,
        path: &str,
        v: &Option<String>,
        default: Option<&str>,
    ) -> Option<SocketAddr> {
        let text = v.as_deref().or(default)?;
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    path,
                    format!("`{text}` is not an address like \"127.0.0.1:8443\" or \"[::1]:8443\""),
                );
                None
            }
        }
    }

    fn file_path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn secret(&mut self, path: &str, s: &RawSecret) -> Option<Secret> {
        match (&s.env, &s.file) {
            (Some(var), None) => match (self.env)(var) {
                Some(v) if !v.trim().is_empty() => Some(Secret {
                    source: format!("env {var}"),
                    value: v.trim().as_bytes().to_vec(),
                }),
                _ => {
                    self.err(
                        format!("{path}.env"),
                        format!("environment variable {var} is not set or empty"),
                    );
                    None
                }
            },
            (None, Some(file)) => {
                let full = self.file_path(file);
                match std::fs::read_to_string(&full) {
                    Ok(v) if !v.trim().is_empty() => Some(Secret {
                        source: format!("file {}", full.display()),
                        value: v.trim().as_bytes().to_vec(),
                    }),
                    Ok(_) => {
                        self.err(
                            format!("{path}.file"),
                            format!("{} is empty", full.display()),
                        );
                        None
                    }
                    Err(e) => {
                        self.err(
                            format!("{path}.file"),
                            format!("cannot read {}: {e}", full.display()),
                        );
                        None
                    }
                }
            }
            _ => {
                self.err(path, "give exactly one of `env` or `file`");
                None
            }
        }
    }
}

/// Checks a service or function name: it becomes a path segment, a metric label and a file name.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

const NAME_RULE: &str = "use 1-64 of a-z, 0-9, `-`, `_`, starting with a letter or digit";

pub(super) fn compile(
    raw: RawConfig,
    file: &Path,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<Problem>> {
    let mut cx = Ctx {
        problems: Vec::new(),
        base,
        env,
        nats_queue: false,
    };

    let gpus = compile_gpus(&mut cx, &raw.gpu);
    let gpu_cards_max = cx.count(
        "account.gpu_cards_max".into(),
        raw.account.as_ref().and_then(|a| a.gpu_cards_max),
        DEFAULT_GPU_CARDS_MAX as u64,
        0,
        100_000,
    ) as u32;
    // Capabilities that later releases implement: refused by name, never silently ignored.
    let queue_raw = raw.queue.as_ref();
    let mut queue_kind = QueueKind::Embedded;
    match queue_raw.and_then(|q| q.kind.as_deref()) {
        None | Some("embedded") => {
            for (key, present) in [
                ("url", queue_raw.is_some_and(|q| q.url.is_some())),
                ("stream", queue_raw.is_some_and(|q| q.stream.is_some())),
            ] {
                if present {
                    cx.err(
                        format!("queue.{key}"),
                        "only kind = \"nats\" takes this key",
                    );
                }
            }
        }
        Some("nats") => {
            let url = queue_raw
                .and_then(|q| q.url.clone())
                .unwrap_or_else(|| DEFAULT_NATS_URL.to_owned());
            if !(url.starts_with("nats://") || url.starts_with("tls://"))
                || url.len() <= "nats://".len()
            {
                cx.err(
                    "queue.url",
                    format!("`{url}`: expected nats://HOST:PORT or tls://HOST:PORT"),
                );
            }
            let stream = queue_raw
                .and_then(|q| q.stream.clone())
                .unwrap_or_else(|| DEFAULT_NATS_STREAM.to_owned());
            if stream.is_empty()
                || stream.len() > 32
                || !stream
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                cx.err(
                    "queue.stream",
                    format!(
                        "`{stream}`: a stream name is 1 to 32 letters, digits, `_` and `-` (it prefixes subjects and names the task bucket)"
                    ),
                );
            }
            queue_kind = QueueKind::Nats { url, stream };
            cx.nats_queue = true;
        }
        Some(other) => cx.err(
            "queue.kind",
            format!("`{other}`: expected \"embedded\" or \"nats\""),
        ),
    }
    let retention = cx.duration(
        "queue.retention".into(),
        &queue_raw.and_then(|q| q.retention.clone()),
        DEFAULT_TASK_RETENTION,
        Duration::from_secs(365 * 24 * 3600),
    );
    let event_sources = compile_event_sources(&mut cx, &raw.event_source, retention);
    let mut plugins: Vec<PluginSpec> = Vec::new();
    for (pi, p) in raw.plugin.iter().enumerate() {
        if let Some(spec) = compile_plugin(&mut cx, &format!("plugin[{pi}]"), p) {
            if plugins.iter().any(|x| x.name == spec.name) {
                cx.err(
                    format!("plugin[{pi}].name"),
                    format!("plugin `{}` is defined twice", spec.name),
                );
            }
            plugins.push(spec);
        }
    }

    let server = compile_server(&mut cx, &raw.server);

    let mut log = LogSinks {
        stdout: true,
        file: None,
        otlp: None,
    };
    let mut traces = None;
    let mut metrics = None;
    let mut otlp = None;
    if let Some(t) = &raw.telemetry {
        otlp = t.otlp.as_ref().and_then(|o| compile_otlp(&mut cx, o));
        traces = compile_traces(&mut cx, t.otlp.is_some(), otlp.as_ref(), t.traces.as_ref());
        metrics = t
            .metrics
            .as_ref()
            .and_then(|m| compile_metrics(&mut cx, t.otlp.is_some(), otlp.as_ref(), m));
        if let Some(raw_log) = &t.log {
            log = compile_log_sinks(&mut cx, "telemetry.log", raw_log, true, otlp.as_ref());
            if raw_log.inherit.is_some() {
                cx.err(
                    "telemetry.log.inherit",
                    "only a service's `log` inherits (the global sinks are the ones inherited)",
                );
            }
        }
    }

    let mut functions: Vec<Arc<FunctionSpec>> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut service_names = HashSet::new();
    let mut service_logs = std::collections::BTreeMap::new();
    for (si, svc) in raw.service.iter().enumerate() {
        let sp = format!("service[{si}]");
        let sname = match &svc.name {
            None => {
                cx.err(format!("{sp}.name"), "missing");
                continue;
            }
            Some(n) if !valid_name(n) => {
                cx.err(
                    format!("{sp}.name"),
                    format!("`{n}` is not a valid name: {NAME_RULE}"),
                );
                continue;
            }
            Some(n) if n == EVENTS_ROUTE_SEGMENT => {
                cx.err(
                    format!("{sp}.name"),
                    format!(
                        "`{n}` is reserved: /{n}/{{source}} is the object-storage webhook route"
                    ),
                );
                continue;
            }
            Some(n) => n.clone(),
        };
        if !service_names.insert(sname.clone()) {
            cx.err(
                format!("{sp}.name"),
                format!("service `{sname}` is defined twice"),
            );
        }
        if let Some(raw_log) = &svc.log {
            let sinks =
                compile_log_sinks(&mut cx, &format!("{sp}.log"), raw_log, false, otlp.as_ref());
            service_logs.insert(
                sname.clone(),
                ServiceLog {
                    sinks,
                    inherit: raw_log.inherit.unwrap_or(true),
                },
            );
        }
        let service_env = match &svc.env {
            Some(env) => compile_env(&mut cx, &format!("{sp}.env"), env),
            None => Default::default(),
        };
        for (fi, f) in svc.function.iter().enumerate() {
            let fp = format!("{sp}.function[{fi}]");
            let sv = ServiceCtx {
                name: &sname,
                env: &service_env,
                gpus: &gpus,
            };
            if let Some(spec) = compile_function(&mut cx, &fp, &sv, f) {
                if by_id.contains_key(&spec.id) {
                    cx.err(
                        format!("{fp}.name"),
                        format!("function `{}` is defined twice", spec.id),
                    );
                    continue;
                }
                by_id.insert(spec.id.clone(), functions.len());
                functions.push(Arc::new(spec));
            }
        }
    }

    let mut triggers = Vec::new();
    let mut oss_triggers = Vec::new();
    let mut trigger_names = HashSet::new();
    let mut routes_seen: HashMap<RouteKey, Vec<TriggerMethods>> = HashMap::new();
    for (ti, t) in raw.trigger.iter().enumerate() {
        let tp = format!("trigger[{ti}]");
        if t.kind.as_deref() == Some("oss") {
            let Some(spec) = compile_oss_trigger(&mut cx, &tp, t, &by_id, &plugins, &event_sources)
            else {
                continue;
            };
            if !trigger_names.insert(spec.name.clone()) {
                cx.err(
                    format!("{tp}.name"),
                    format!("trigger `{}` is defined twice", spec.name),
                );
            }
            oss_triggers.push(spec);
            continue;
        }
        if let Some(spec) = compile_trigger(&mut cx, &tp, t, &by_id, &plugins) {
            if !trigger_names.insert(spec.name.clone()) {
                cx.err(
                    format!("{tp}.name"),
                    format!("trigger `{}` is defined twice", spec.name),
                );
            }
            // Two triggers on the same host and path must not claim the same method: the winner would
            // depend on file order.
            let key = (spec.host.clone(), spec.path.clone());
            let others = routes_seen.entry(key).or_default();
            for (other, other_methods) in others.iter() {
                let overlap = match (&spec.methods, other_methods) {
                    (None, _) | (_, None) => true,
                    (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
                };
                if overlap && spec.path.is_some() {
                    cx.err(
                        format!("{tp}.path"),
                        format!("same host, path and method(s) as trigger `{other}`"),
                    );
                }
            }
            others.push((spec.name.clone(), spec.methods.clone()));
            triggers.push(spec);
        }
    }

    let queue = QueueSpec {
        path: server
            .as_ref()
            .map(|s| s.data_dir.join(QUEUE_FILE))
            .unwrap_or_default(),
        retention,
        kind: queue_kind,
    };
    if cx.problems.is_empty() {
        Ok(Config {
            file: file.to_path_buf(),
            server: server.expect("server settings compile when there are no problems"),
            functions,
            triggers,
            plugins,
            log,
            service_logs,
            traces,
            metrics,
            gpus,
            gpu_cards_max,
            queue,
            event_sources,
            oss_triggers,
        })
    } else {
        Err(cx.problems)
    }
}

/// A sub-table's keys against the accepted ones.
fn otlp_table(
    cx: &mut Ctx<'_>,
    path: &str,
    v: &toml::Value,
    keys: &[&str],
) -> Option<toml::map::Map<String, toml::Value>> {
    let Some(t) = v.as_table() else {
        cx.err(path, "expected a table");
        return None;
    };
    for k in t.keys() {
        if !keys.contains(&k.as_str()) {
            cx.err(
                format!("{path}.{k}"),
                format!("unknown key; expected one of {}", keys.join(", ")),
            );
        }
    }
    Some(t.clone())
}

const NEEDS_OTLP: &str =
    "need an exporter: set telemetry.otlp = { endpoint = \"http://127.0.0.1:4318\" }";

/// `[telemetry] otlp = { endpoint, protocol }`: the collector every OTLP signal goes to.
fn compile_otlp(cx: &mut Ctx<'_>, otlp: &toml::Value) -> Option<OtlpSpec> {
    let o = otlp_table(cx, "telemetry.otlp", otlp, &["endpoint", "protocol"])?;
    let protocol = match o.get("protocol").map(|p| p.as_str()) {
        None | Some(Some("http")) => OtlpProtocol::Http,
        Some(Some("grpc")) => OtlpProtocol::Grpc,
        Some(_) => {
            cx.err(
                "telemetry.otlp.protocol",
                "expected \"http\" (HTTP/protobuf) or \"grpc\"",
            );
            OtlpProtocol::Http
        }
    };
    let endpoint = match o.get("endpoint").and_then(|e| e.as_str()) {
        Some(e)
            if e.starts_with("http://")
                && e.len() > "http://".len()
                && !e.contains('?')
                && (protocol == OtlpProtocol::Http
                    || !e["http://".len()..].trim_end_matches('/').contains('/')) =>
        {
            e.trim_end_matches('/').to_owned()
        }
        Some(e) => {
            let hint = match protocol {
                OtlpProtocol::Http => {
                    "like \"http://127.0.0.1:4318\" (plain http; spans go to /v1/traces, metrics to /v1/metrics, logs to /v1/logs)"
                }
                OtlpProtocol::Grpc => "like \"http://127.0.0.1:4317\" (plain http/2, no path)",
            };
            cx.err(
                "telemetry.otlp.endpoint",
                format!("`{e}`: expected the collector's base URL, {hint}"),
            );
            return None;
        }
        None => {
            cx.err(
                "telemetry.otlp.endpoint",
                "missing; the collector's base URL, like \"http://127.0.0.1:4318\"",
            );
            return None;
        }
    };
    Some(OtlpSpec { endpoint, protocol })
}

/// `traces = { sample_ratio }`: traces are exported when `traces` is written, to the collector
/// of `otlp` (`traces` without `otlp` is an error: it has nowhere to go; `otlp` alone sends only
/// what asks for it, as metrics and logs do). `has_otlp` is true when `otlp` is written, valid
/// or not.
fn compile_traces(
    cx: &mut Ctx<'_>,
    has_otlp: bool,
    otlp: Option<&OtlpSpec>,
    traces: Option<&toml::Value>,
) -> Option<TracesSpec> {
    traces?;
    if !has_otlp {
        cx.err("telemetry.traces", format!("traces {NEEDS_OTLP}"));
        return None;
    }
    let mut sample_ratio = DEFAULT_TRACE_SAMPLE_RATIO;
    if let Some(tr) = traces
        && let Some(t) = otlp_table(cx, "telemetry.traces", tr, &["sample_ratio"])
        && let Some(r) = t.get("sample_ratio")
    {
        match r.as_float().or_else(|| r.as_integer().map(|i| i as f64)) {
            Some(x) if (0.0..=1.0).contains(&x) => sample_ratio = x,
            _ => cx.err(
                "telemetry.traces.sample_ratio",
                format!("`{r}`: expected a number from 0.0 to 1.0"),
            ),
        }
    }
    Some(TracesSpec {
        otlp: otlp?.clone(),
        sample_ratio,
    })
}

/// `metrics = { otlp = true, interval = "10s" }`: every series of the Prometheus endpoint is
/// also pushed to the collector.
fn compile_metrics(
    cx: &mut Ctx<'_>,
    has_otlp: bool,
    otlp: Option<&OtlpSpec>,
    v: &toml::Value,
) -> Option<MetricsSpec> {
    let t = otlp_table(cx, "telemetry.metrics", v, &["otlp", "interval"])?;
    let on = match t.get("otlp") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(_) => {
            cx.err(
                "telemetry.metrics.otlp",
                "expected true or false (push metrics to telemetry.otlp)",
            );
            false
        }
    };
    let interval = match t.get("interval") {
        None => DEFAULT_METRICS_INTERVAL,
        Some(toml::Value::String(text)) => match parse_duration(text) {
            Ok(d) if d >= MIN_METRICS_INTERVAL && d <= Duration::from_secs(3600) => d,
            Ok(_) => {
                cx.err(
                    "telemetry.metrics.interval",
                    format!("`{text}`: expected from 100ms to 1h"),
                );
                DEFAULT_METRICS_INTERVAL
            }
            Err(m) => {
                cx.err("telemetry.metrics.interval", m);
                DEFAULT_METRICS_INTERVAL
            }
        },
        Some(other) => {
            cx.err(
                "telemetry.metrics.interval",
                format!("`{other}`: expected a duration such as \"10s\""),
            );
            DEFAULT_METRICS_INTERVAL
        }
    };
    if !on {
        return None;
    }
    if !has_otlp {
        cx.err(
            "telemetry.metrics.otlp",
            format!("OTLP metrics {NEEDS_OTLP}"),
        );
    }
    Some(MetricsSpec {
        otlp: otlp?.clone(),
        interval,
    })
}

/// `log = { stdout, file, otlp }`: `stdout` defaults to `default_stdout` (true globally, false for
/// a service, whose lines reach stdout through the global sinks when it inherits them); `otlp =
/// true` sends the lines to the collector of `telemetry.otlp`.
fn compile_log_sinks(
    cx: &mut Ctx,
    path: &str,
    raw: &RawLogSink,
    default_stdout: bool,
    otlp: Option<&OtlpSpec>,
) -> LogSinks {
    let otlp = match &raw.otlp {
        None | Some(toml::Value::Boolean(false)) => None,
        Some(toml::Value::Boolean(true)) => {
            if otlp.is_none()
                && !cx
                    .problems
                    .iter()
                    .any(|p| p.path.starts_with("telemetry.otlp"))
            {
                cx.err(format!("{path}.otlp"), format!("OTLP logs {NEEDS_OTLP}"));
            }
            otlp.cloned()
        }
        Some(_) => {
            cx.err(
                format!("{path}.otlp"),
                "expected true or false (send lines to telemetry.otlp)",
            );
            None
        }
    };
    let file = raw
        .file
        .as_ref()
        .and_then(|v| compile_file_sink(cx, &format!("{path}.file"), v));
    LogSinks {
        stdout: raw.stdout.unwrap_or(default_stdout),
        file,
        otlp,
    }
}

/// `file = "logs/fngate.log"` or `file = { path = "…", max_size = "64MiB", keep = 5 }`.
fn compile_file_sink(cx: &mut Ctx, path: &str, v: &toml::Value) -> Option<FileSinkSpec> {
    const FORMS: &str = "write `file = \"logs/fngate.log\"` or `file = { path = \"logs/fngate.log\", max_size = \"64MiB\", keep = 5 }`";
    let (file, max_size, keep) = match v {
        toml::Value::String(p) => (p.clone(), None, None),
        toml::Value::Table(t) => {
            for k in t.keys() {
                if !matches!(k.as_str(), "path" | "max_size" | "keep") {
                    cx.err(
                        format!("{path}.{k}"),
                        "unknown key; expected `path`, `max_size` or `keep`",
                    );
                }
            }
            let Some(p) = t.get("path").and_then(toml::Value::as_str) else {
                cx.err(
                    format!("{path}.path"),
                    format!("missing or not a string; {FORMS}"),
                );
                return None;
            };
            let max_size = match t.get("max_size") {
                None => None,
                Some(toml::Value::Integer(n)) if *n >= 0 => Some(SizeValue::Bytes(*n as u64)),
                Some(toml::Value::String(s)) => Some(SizeValue::Text(s.clone())),
                Some(_) => {
                    cx.err(
                        format!("{path}.max_size"),
                        "a size: bytes or a string such as \"64MiB\"",
                    );
                    None
                }
            };
            let keep = match t.get("keep") {
                None => None,
                Some(toml::Value::Integer(n)) if *n >= 0 => Some(*n as u64),
                Some(_) => {
                    cx.err(
                        format!("{path}.keep"),
                        "a number of rotated files (0 or more)",
                    );
                    None
                }
            };
            (p.to_string(), max_size, keep)
        }
        _ => {
            cx.err(path.to_string(), FORMS);
            return None;
        }
    };
    if file.trim().is_empty() || file.ends_with('/') {
        cx.err(
            path.to_string(),
            format!("`{file}` is not a file path; {FORMS}"),
        );
        return None;
    }
    let max_size = cx.size(
        format!("{path}.max_size"),
        &max_size,
        DEFAULT_LOG_MAX_SIZE,
        MIN_LOG_MAX_SIZE,
        u64::MAX / 2,
    );
    let keep = cx.count(
        format!("{path}.keep"),
        keep,
        u64::from(DEFAULT_LOG_KEEP),
        0,
        u64::from(MAX_LOG_KEEP),
    ) as u32;
    Some(FileSinkSpec {
        path: cx.file_path(&file),
        max_size,
        keep,
    })
}

fn compile_server(cx: &mut Ctx<'_>, s: &RawServer) -> Option<ServerSettings> {
    let listen = cx.addr("server.listen", &s.listen, Some(DEFAULT_LISTEN));
    let plaintext_listen = cx.addr("server.plaintext_listen", &s.plaintext_listen, None);
    let admin_listen = cx.addr(
        "server.admin_listen",
        &s.admin_listen,
        Some(DEFAULT_ADMIN_LISTEN),
    );
    let tls = s.tls.as_ref().map(|t| TlsFiles {
        cert: cx.file_path(&t.cert),
        key: cx.file_path(&t.key),
    });
    let tls_reload_interval = cx.duration(
        "server.tls.reload_interval".into(),
        &s.tls.as_ref().and_then(|t| t.reload_interval.clone()),
        DEFAULT_TLS_RELOAD_INTERVAL,
        Duration::from_secs(3600),
    );
    let admin_token = s
        .admin_token
        .as_ref()
        .and_then(|t| cx.secret("server.admin_token", t));
    let data_dir = cx.file_path(s.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR));

    let l = &s.limits;
    let limits = Limits {
        max_header_bytes: cx.size(
            "server.limits.max_header_bytes".into(),
            &l.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES as u64,
            1024,
            1 << 20,
        ) as usize,
        max_headers: cx.count(
            "server.limits.max_headers".into(),
            l.max_headers,
            DEFAULT_MAX_HEADERS as u64,
            8,
            1000,
        ) as usize,
        header_read_timeout: cx.duration(
            "server.limits.header_read_timeout".into(),
            &l.header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT,
            Duration::from_secs(600),
        ),
        idle_timeout: cx.duration(
            "server.limits.idle_timeout".into(),
            &l.idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
            Duration::from_secs(3600),
        ),
        tls_handshake_timeout: cx.duration(
            "server.limits.tls_handshake_timeout".into(),
            &l.tls_handshake_timeout,
            DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            Duration::from_secs(600),
        ),
        max_connections: cx.count(
            "server.limits.max_connections".into(),
            l.max_connections,
            DEFAULT_MAX_CONNECTIONS as u64,
            1,
            1_000_000,
        ) as usize,
        max_h2_streams: cx.count(
            "server.limits.max_h2_streams".into(),
            l.max_h2_streams,
            DEFAULT_MAX_H2_STREAMS as u64,
            1,
            10_000,
        ) as u32,
        shutdown_grace: cx.duration(
            "server.limits.shutdown_grace".into(),
            &l.shutdown_grace,
            DEFAULT_SHUTDOWN_GRACE,
            Duration::from_secs(3600),
        ),
    };

    let exec = ExecSettings {
        idle_timeout: cx.duration(
            "server.exec.idle_timeout".into(),
            &s.exec.idle_timeout,
            DEFAULT_EXEC_IDLE_TIMEOUT,
            Duration::from_secs(7 * 24 * 3600),
        ),
        max_sessions: cx.count(
            "server.exec.max_sessions".into(),
            s.exec.max_sessions,
            DEFAULT_EXEC_MAX_SESSIONS,
            1,
            1024,
        ) as usize,
    };

    let (listen, admin_listen) = (listen?, admin_listen?);
    let mut seen = vec![
        ("server.listen", listen),
        ("server.admin_listen", admin_listen),
    ];
    if let Some(p) = plaintext_listen {
        seen.push(("server.plaintext_listen", p));
    }
    for i in 0..seen.len() {
        for j in 0..i {
            if seen[i].1 == seen[j].1 && seen[i].1.port() != 0 {
                cx.err(seen[i].0, format!("{} is also {}", seen[i].1, seen[j].0));
            }
        }
    }
    Some(ServerSettings {
        listen,
        tls,
        tls_reload_interval,
        plaintext_listen,
        admin_listen,
        admin_token,
        data_dir,
        limits,
        exec,
    })
}

/// What a function inherits from its service and the node.
struct ServiceCtx<'a> {
    name: &'a str,
    env: &'a std::collections::BTreeMap<String, String>,
    gpus: &'a [crate::scheduler::gpu::CardType],
}

fn compile_function(
    cx: &mut Ctx<'_>,
    fp: &str,
    sv: &ServiceCtx<'_>,
    f: &RawFunction,
) -> Option<FunctionSpec> {
    let service = sv.name;
    let name = match &f.name {
        None => {
            cx.err(format!("{fp}.name"), "missing");
            return None;
        }
        Some(n) if !valid_name(n) => {
            cx.err(
                format!("{fp}.name"),
                format!("`{n}` is not a valid name: {NAME_RULE}"),
            );
            return None;
        }
        Some(n) => n.clone(),
    };
    let cpu = match &f.cpu {
        None => DEFAULT_CPU,
        Some(v) => match v.as_float().or_else(|| v.as_integer().map(|i| i as f64)) {
            Some(c) if c > 0.0 && c <= MAX_CPU => c,
            _ => {
                cx.err(
                    format!("{fp}.cpu"),
                    format!("`{v}` must be a number of vCPUs above 0 and at most {MAX_CPU}"),
                );
                DEFAULT_CPU
            }
        },
    };
    let memory = cx.size(
        format!("{fp}.memory"),
        &f.memory,
        DEFAULT_MEMORY,
        1 << 20,
        MAX_MEMORY,
    );
    let instance_concurrency = cx.count(
        format!("{fp}.instance_concurrency"),
        f.instance_concurrency,
        DEFAULT_INSTANCE_CONCURRENCY as u64,
        1,
        MAX_INSTANCE_CONCURRENCY as u64,
    ) as u32;
    let timeout = cx.duration(
        format!("{fp}.timeout"),
        &f.timeout,
        DEFAULT_TIMEOUT,
        MAX_TIMEOUT,
    );
    let max_queued = cx.count(
        format!("{fp}.max_queued"),
        f.max_queued,
        DEFAULT_MAX_QUEUED as u64,
        0,
        MAX_MAX_QUEUED as u64,
    ) as usize;
    let max_queue_wait = cx.duration(
        format!("{fp}.max_queue_wait"),
        &f.max_queue_wait,
        DEFAULT_MAX_QUEUE_WAIT,
        Duration::from_secs(3600),
    );
    let max_body = cx.size(
        format!("{fp}.max_body"),
        &f.max_body,
        DEFAULT_MAX_BODY,
        0,
        1 << 40,
    );

    let backend = match &f.backend {
        None => {
            cx.err(format!("{fp}.backend"), "missing; e.g. backend = { kind = \"static\", endpoints = [\"http://127.0.0.1:9001\"] }");
            None
        }
        Some(b) => compile_backend(cx, &format!("{fp}.backend"), b, sv.env),
    };
    let is_process = matches!(backend, Some(BackendSpec::Process(_)))
        || f.backend.as_ref().and_then(|b| b.kind.as_deref()) == Some("process");
    if is_process && max_queued == 0 {
        cx.err(
            format!("{fp}.max_queued"),
            "a process backend needs max_queued of at least 1: requests wait in the queue for cold starts",
        );
    }
    let gpu = f.gpu.as_ref().and_then(|g| {
        let gp = format!("{fp}.gpu");
        if backend.is_some() && !is_process {
            cx.err(
                gp.clone(),
                "GPU placement needs a process backend (fngate cannot place a static endpoint)",
            );
        }
        compile_gpu_request(cx, &gp, g, sv.gpus)
    });
    let scaling = match (&backend, &f.scaling) {
        (Some(BackendSpec::Static { endpoints, .. }), None) => {
            ScalingSpec::fixed(endpoints.len() as u32)
        }
        (Some(BackendSpec::Static { endpoints, .. }), Some(_)) => {
            cx.err(
                format!("{fp}.scaling"),
                "static endpoints are always provisioned instances; scaling applies to process backends",
            );
            ScalingSpec::fixed(endpoints.len() as u32)
        }
        (_, raw) => compile_scaling(cx, &format!("{fp}.scaling"), raw.as_ref()),
    };
    let async_ = compile_async(cx, &format!("{fp}.async"), f.async_.as_ref(), max_body);
    Some(FunctionSpec {
        async_,
        id: format!("{service}/{name}"),
        service: service.to_string(),
        name,
        instance_concurrency,
        timeout,
        max_queued,
        max_queue_wait,
        max_body,
        backend: backend?,
        gpu,
        scaling,
        cpu,
        memory,
    })
}

fn compile_async(cx: &mut Ctx<'_>, ap: &str, raw: Option<&RawAsync>, max_body: u64) -> AsyncSpec {
    let empty = RawAsync::default();
    let r = raw.unwrap_or(&empty);
    let mut dest = |key: &str, v: &Option<String>| -> Option<Destination> {
        let text = v.as_ref()?;
        if let Some(subject) = text.strip_prefix("nats:") {
            let valid = !subject.is_empty()
                && subject.len() <= 256
                && subject
                    .split('.')
                    .all(|t| !t.is_empty() && !t.contains(['*', '>', ' ', '\t', '\r', '\n']));
            if !valid {
                cx.err(
                    format!("{ap}.{key}"),
                    format!("`{text}`: a NATS destination is \"nats:SUBJECT\" with a literal subject (tokens separated by `.`, no wildcards or spaces)"),
                );
                return None;
            }
            if !cx.nats_queue {
                cx.err(
                    format!("{ap}.{key}"),
                    format!("`{text}`: NATS destinations need [queue] kind = \"nats\" (its connection publishes them)"),
                );
                return None;
            }
            return Some(Destination::Nats(subject.to_owned()));
        }
        match text.parse::<http::Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http"))
                    && u.authority().is_some_and(|a| a.port_u16().is_some()) =>
            {
                Some(Destination::Http(u))
            }
            _ => {
                cx.err(
                    format!("{ap}.{key}"),
                    format!("`{text}` is not a URL like \"http://127.0.0.1:9100/hook\" (http, explicit port) or \"nats:SUBJECT\""),
                );
                None
            }
        }
    };
    let on_success = dest("on_success", &r.on_success);
    let on_failure = dest("on_failure", &r.on_failure);
    AsyncSpec {
        max_retries: cx.count(
            format!("{ap}.max_retries"),
            r.max_retries,
            DEFAULT_ASYNC_MAX_RETRIES as u64,
            0,
            MAX_ASYNC_MAX_RETRIES as u64,
        ) as u32,
        max_event_age: cx.duration(
            format!("{ap}.max_event_age"),
            &r.max_event_age,
            DEFAULT_MAX_EVENT_AGE,
            Duration::from_secs(7 * 24 * 3600),
        ),
        on_success,
        on_failure,
        max_concurrency: cx.count(
            format!("{ap}.max_concurrency"),
            r.max_concurrency,
            DEFAULT_ASYNC_MAX_CONCURRENCY as u64,
            1,
            100_000,
        ) as u32,
        max_payload: cx.size(
            format!("{ap}.max_payload"),
            &r.max_payload,
            DEFAULT_ASYNC_MAX_PAYLOAD.min(max_body),
            0,
            max_body.max(1),
        ),
    }
}

fn compile_gpus(cx: &mut Ctx<'_>, raw: &[RawGpuCards]) -> Vec<crate::scheduler::gpu::CardType> {
    let mut out: Vec<crate::scheduler::gpu::CardType> = Vec::new();
    for (i, g) in raw.iter().enumerate() {
        let gp = format!("gpu[{i}]");
        let name = match &g.type_ {
            Some(t)
                if !t.is_empty()
                    && t.len() <= 64
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                t.clone()
            }
            Some(t) => {
                cx.err(
                    format!("{gp}.type"),
                    format!("`{t}` is not a GPU type name (1-64 of letters, digits, `-`, `_`)"),
                );
                continue;
            }
            None => {
                cx.err(format!("{gp}.type"), "missing, e.g. type = \"A10\"");
                continue;
            }
        };
        if out.iter().any(|c| c.name == name) {
            cx.err(
                format!("{gp}.type"),
                format!("GPU type `{name}` is listed twice; give one entry with its count"),
            );
            continue;
        }
        if g.memory_gb.is_none() {
            cx.err(format!("{gp}.memory_gb"), "missing: memory per card in GB");
            continue;
        }
        let memory_gb = cx.count(format!("{gp}.memory_gb"), g.memory_gb, 0, 1, 4096) as u32;
        let count = cx.count(format!("{gp}.count"), g.count, 1, 1, 1024) as u32;
        out.push(crate::scheduler::gpu::CardType {
            name,
            memory_gb,
            count,
        });
    }
    out
}

fn compile_gpu_request(
    cx: &mut Ctx<'_>,
    gp: &str,
    g: &RawGpuRequest,
    gpus: &[crate::scheduler::gpu::CardType],
) -> Option<GpuRequest> {
    let Some(gpu_type) = &g.type_ else {
        cx.err(
            format!("{gp}.type"),
            "missing: the card type, as in a [[gpu]] entry",
        );
        return None;
    };
    let Some(card) = gpus.iter().find(|c| &c.name == gpu_type) else {
        let known: Vec<&str> = gpus.iter().map(|c| c.name.as_str()).collect();
        cx.err(
            format!("{gp}.type"),
            if known.is_empty() {
                format!("no [[gpu]] pool is configured, so `{gpu_type}` cannot be placed")
            } else {
                format!("`{gpu_type}` is not in the GPU pool ({})", known.join(", "))
            },
        );
        return None;
    };
    let memory_gb = match g.memory_gb {
        None => {
            cx.err(
                format!("{gp}.memory_gb"),
                "missing: GPU memory per instance in GB",
            );
            return None;
        }
        Some(0) => {
            cx.err(format!("{gp}.memory_gb"), "must be at least 1");
            return None;
        }
        Some(m) if m > card.memory_gb as u64 => {
            cx.err(
                format!("{gp}.memory_gb"),
                format!("{m} exceeds {} cards ({} GB)", card.name, card.memory_gb),
            );
            return None;
        }
        Some(m) => m as u32,
    };
    Some(GpuRequest {
        gpu_type: gpu_type.clone(),
        memory_gb,
    })
}

fn compile_scaling(cx: &mut Ctx<'_>, sp: &str, raw: Option<&RawScaling>) -> ScalingSpec {
    use crate::scheduler::scaling::{Schedule, ScheduledRule, TimeOfDay, TrackingRule};
    let empty = RawScaling::default();
    let r = raw.unwrap_or(&empty);
    let max_instances = cx.count(
        format!("{sp}.max_instances"),
        r.max_instances,
        DEFAULT_MAX_INSTANCES as u64,
        1,
        MAX_MAX_INSTANCES as u64,
    ) as u32;
    let provisioned = cx.count(
        format!("{sp}.provisioned"),
        r.provisioned,
        0,
        0,
        max_instances as u64,
    ) as u32;
    let idle_timeout = cx.duration(
        format!("{sp}.idle_timeout"),
        &r.idle_timeout,
        DEFAULT_IDLE_TIMEOUT_INSTANCE,
        Duration::from_secs(7 * 24 * 3600),
    );
    let mut rules = Vec::new();
    for (i, rule) in r.schedule.iter().enumerate() {
        let rp = format!("{sp}.schedule[{i}]");
        let at = match rule.at.as_deref().map(TimeOfDay::parse) {
            None => {
                cx.err(
                    format!("{rp}.at"),
                    "missing: a UTC time of day like \"08:30\"",
                );
                continue;
            }
            Some(Err(m)) => {
                cx.err(format!("{rp}.at"), m);
                continue;
            }
            Some(Ok(t)) => t,
        };
        if rule.target.is_none() {
            cx.err(
                format!("{rp}.target"),
                "missing: the provisioned instance count from this time on",
            );
            continue;
        }
        let target = cx.count(
            format!("{rp}.target"),
            rule.target,
            0,
            0,
            max_instances as u64,
        ) as u32;
        if rules.iter().any(|r: &ScheduledRule| r.at == at) {
            cx.err(format!("{rp}.at"), format!("another rule is also at {at}"));
            continue;
        }
        rules.push(ScheduledRule { at, target });
    }
    let tracking = r.target_tracking.as_ref().and_then(|t| {
        let tp = format!("{sp}.target_tracking");
        let utilization = match t.utilization {
            Some(u) if u > 0.0 && u <= 1.0 => u,
            Some(u) => {
                cx.err(
                    format!("{tp}.utilization"),
                    format!("{u} is outside (0, 1]"),
                );
                return None;
            }
            None => {
                cx.err(
                    format!("{tp}.utilization"),
                    "missing: the busy share of provisioned slots to keep, e.g. 0.6",
                );
                return None;
            }
        };
        let min = cx.count(format!("{tp}.min"), t.min, 0, 0, max_instances as u64) as u32;
        let max = cx.count(
            format!("{tp}.max"),
            t.max,
            max_instances as u64,
            0,
            max_instances as u64,
        ) as u32;
        if min > max {
            cx.err(format!("{tp}.min"), format!("{min} is above max ({max})"));
        }
        let window = cx.duration(
            format!("{tp}.window"),
            &t.window,
            DEFAULT_TRACKING_WINDOW,
            Duration::from_secs(3600),
        );
        Some(TrackingRule {
            utilization,
            min,
            max,
            window,
        })
    });
    ScalingSpec {
        max_instances,
        provisioned,
        idle_timeout,
        schedule: Schedule::new(rules),
        tracking,
    }
}

fn valid_env_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && !n.as_bytes()[0].is_ascii_digit()
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// An environment table: names checked, values strings (numbers and booleans are written out).
fn compile_env(
    cx: &mut Ctx<'_>,
    ep: &str,
    env: &std::collections::BTreeMap<String, toml::Value>,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in env {
        if !valid_env_name(k) {
            cx.err(
                format!("{ep}.{k}"),
                "not an environment variable name (letters, digits, `_`)",
            );
            continue;
        }
        if k.starts_with("FNGATE_") || k == "CUDA_VISIBLE_DEVICES" {
            cx.err(
                format!("{ep}.{k}"),
                "set by fngate for each instance; remove it",
            );
            continue;
        }
        let text = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                cx.err(
                    format!("{ep}.{k}"),
                    format!("`{other}`: a string, number or boolean"),
                );
                continue;
            }
        };
        if text.contains('\0') {
            cx.err(format!("{ep}.{k}"), "contains a NUL byte");
            continue;
        }
        out.insert(k.clone(), text);
    }
    out
}

fn compile_backend(
    cx: &mut Ctx<'_>,
    bp: &str,
    b: &RawBackend,
    service_env: &std::collections::BTreeMap<String, String>,
) -> Option<BackendSpec> {
    match b.kind.as_deref() {
        Some("static") => {}
        Some("process") => return compile_process(cx, bp, b, service_env),
        Some(other) => {
            cx.err(
                format!("{bp}.kind"),
                format!("unknown backend kind `{other}`; expected \"static\" or \"process\""),
            );
            return None;
        }
        None => {
            cx.err(
                format!("{bp}.kind"),
                "missing; expected \"static\" or \"process\"",
            );
            return None;
        }
    }
    for (key, present) in [
        ("command", b.command.is_some()),
        ("env", b.env.is_some()),
        ("inherit_env", b.inherit_env.is_some()),
        ("port_env", b.port_env.is_some()),
        ("cwd", b.cwd.is_some()),
        ("readiness", b.readiness.is_some()),
        ("startup_timeout", b.startup_timeout.is_some()),
        ("stop_grace", b.stop_grace.is_some()),
    ] {
        if present {
            cx.err(format!("{bp}.{key}"), "only process backends take this key");
        }
    }
    if b.endpoints.is_empty() {
        cx.err(
            format!("{bp}.endpoints"),
            "a static backend needs at least one endpoint",
        );
        return None;
    }
    let mut endpoints = Vec::new();
    let mut seen = HashSet::new();
    for (i, e) in b.endpoints.iter().enumerate() {
        let ep = format!("{bp}.endpoints[{i}]");
        match parse_endpoint(e) {
            Ok(authority) => {
                if !seen.insert(authority.clone()) {
                    cx.err(ep, format!("`{e}` is listed twice"));
                } else {
                    endpoints.push(Endpoint { authority });
                }
            }
            Err(m) => cx.err(ep, m),
        }
    }
    let health = compile_passive_health(cx, bp, b.passive_health.as_ref());
    Some(BackendSpec::Static { endpoints, health })
}

fn compile_passive_health(
    cx: &mut Ctx<'_>,
    bp: &str,
    h: Option<&RawPassiveHealth>,
) -> PassiveHealth {
    let hp = format!("{bp}.passive_health");
    let d = PassiveHealth::default();
    let Some(h) = h else { return d };
    let probe_path = h.probe_path.clone().unwrap_or(d.probe_path);
    check_probe_path(cx, format!("{hp}.probe_path"), &probe_path);
    let cooldown = cx.duration(
        format!("{hp}.cooldown"),
        &h.cooldown,
        d.cooldown,
        Duration::from_secs(3600),
    );
    let max_cooldown = cx.duration(
        format!("{hp}.max_cooldown"),
        &h.max_cooldown,
        d.max_cooldown.max(cooldown),
        Duration::from_secs(24 * 3600),
    );
    if max_cooldown < cooldown {
        cx.err(
            format!("{hp}.max_cooldown"),
            format!(
                "{} is shorter than cooldown ({})",
                format_duration(max_cooldown),
                format_duration(cooldown)
            ),
        );
    }
    PassiveHealth {
        failures: cx.count(
            format!("{hp}.failures"),
            h.failures,
            d.failures as u64,
            1,
            1000,
        ) as u32,
        cooldown,
        max_cooldown,
        timeouts: h.timeouts.unwrap_or(d.timeouts),
        probe_path,
        probe_timeout: cx.duration(
            format!("{hp}.probe_timeout"),
            &h.probe_timeout,
            d.probe_timeout,
            Duration::from_secs(600),
        ),
    }
}

/// A probe path goes verbatim into a request line.
fn check_probe_path(cx: &mut Ctx<'_>, path: String, value: &str) {
    if !value.starts_with('/') || value.bytes().any(|c| c <= b' ' || c == 0x7f) {
        cx.err(
            path,
            format!("`{value}` must be a path starting with `/`, without spaces"),
        );
    }
}

fn compile_process(
    cx: &mut Ctx<'_>,
    bp: &str,
    b: &RawBackend,
    service_env: &std::collections::BTreeMap<String, String>,
) -> Option<BackendSpec> {
    if !b.endpoints.is_empty() {
        cx.err(
            format!("{bp}.endpoints"),
            "a process backend starts its own instances; endpoints are for kind = \"static\"",
        );
    }
    if b.passive_health.is_some() {
        cx.err(
            format!("{bp}.passive_health"),
            "only static backends take this key; a process instance has its readiness probe",
        );
    }
    let cwd = match &b.cwd {
        Some(d) => cx.file_path(d),
        None => cx.base.to_path_buf(),
    };
    if !cwd.is_dir() {
        cx.err(
            format!("{bp}.cwd"),
            format!("{} is not a directory", cwd.display()),
        );
    }
    // Problems with the command are noted and checking goes on, so every problem is reported.
    let mut command = match &b.command {
        None => {
            cx.err(
                format!("{bp}.command"),
                "missing, e.g. command = [\"python3\", \"app.py\"]",
            );
            Vec::new()
        }
        Some(c) if c.is_empty() || c[0].is_empty() => {
            cx.err(
                format!("{bp}.command"),
                "empty; the first element is the program",
            );
            Vec::new()
        }
        Some(c) if c.iter().any(|a| a.contains('\0')) => {
            cx.err(format!("{bp}.command"), "contains a NUL byte");
            Vec::new()
        }
        Some(c) => c.clone(),
    };
    // A program given as a path is resolved now, against cwd, so where it runs from never
    // depends on fngate's own working directory; a bare name is looked up in PATH at start.
    if command.first().is_some_and(|c| c.contains('/')) {
        let p = Path::new(&command[0]);
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p.strip_prefix("./").unwrap_or(p))
        };
        if !full.is_file() {
            cx.err(
                format!("{bp}.command[0]"),
                format!("{} does not exist or is not a file", full.display()),
            );
        }
        command[0] = full.to_string_lossy().into_owned();
    }
    let mut env = service_env.clone();
    if let Some(own) = &b.env {
        env.extend(compile_env(cx, &format!("{bp}.env"), own));
    }
    let port_env = b
        .port_env
        .clone()
        .unwrap_or_else(|| DEFAULT_PORT_ENV.to_string());
    if !valid_env_name(&port_env) || port_env.starts_with("FNGATE_") {
        cx.err(
            format!("{bp}.port_env"),
            format!("`{port_env}` is not a usable environment variable name"),
        );
    }
    for (i, name) in b.inherit_env.iter().flatten().enumerate() {
        if !valid_env_name(name) {
            cx.err(
                format!("{bp}.inherit_env[{i}]"),
                format!("`{name}` is not an environment variable name"),
            );
            continue;
        }
        // Unset variables are simply not passed: inheriting is "if fngate has it".
        if let Some(v) = (cx.env)(name) {
            env.entry(name.clone()).or_insert(v);
        }
    }
    let r = b.readiness.as_ref();
    let path = r
        .and_then(|r| r.path.clone())
        .unwrap_or_else(|| DEFAULT_READINESS_PATH.to_string());
    check_probe_path(cx, format!("{bp}.readiness.path"), &path);
    let readiness = Readiness {
        path,
        interval: cx.duration(
            format!("{bp}.readiness.interval"),
            &r.and_then(|r| r.interval.clone()),
            DEFAULT_READINESS_INTERVAL,
            Duration::from_secs(600),
        ),
        timeout: cx.duration(
            format!("{bp}.readiness.timeout"),
            &r.and_then(|r| r.timeout.clone()),
            DEFAULT_READINESS_TIMEOUT,
            Duration::from_secs(600),
        ),
        failure_threshold: cx.count(
            format!("{bp}.readiness.failure_threshold"),
            r.and_then(|r| r.failure_threshold),
            DEFAULT_READINESS_FAILURES as u64,
            1,
            1000,
        ) as u32,
    };
    let startup_timeout = cx.duration(
        format!("{bp}.startup_timeout"),
        &b.startup_timeout,
        DEFAULT_STARTUP_TIMEOUT,
        Duration::from_secs(3600),
    );
    let stop_grace = cx.duration(
        format!("{bp}.stop_grace"),
        &b.stop_grace,
        DEFAULT_STOP_GRACE,
        Duration::from_secs(600),
    );
    if command.is_empty() {
        return None;
    }
    Some(BackendSpec::Process(Arc::new(ProcessSpec {
        command,
        env,
        port_env,
        cwd,
        readiness,
        startup_timeout,
        stop_grace,
    })))
}

fn parse_endpoint(e: &str) -> Result<http::uri::Authority, String> {
    let uri: http::Uri = e
        .parse()
        .map_err(|_| format!("`{e}` is not a URL like \"http://127.0.0.1:9001\""))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("`{e}`: only http:// endpoints are supported"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{e}`: an endpoint is scheme://host:port, without a path"
        ));
    }
    let auth = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{e}` has no host"))?;
    if auth.port_u16().is_none() {
        return Err(format!("`{e}` needs an explicit port"));
    }
    Ok(auth)
}

fn compile_trigger(
    cx: &mut Ctx<'_>,
    tp: &str,
    t: &RawTrigger,
    by_id: &HashMap<String, usize>,
    known_plugins: &[PluginSpec],
) -> Option<HttpTriggerSpec> {
    let name = match &t.name {
        Some(n) if !n.is_empty() => n.clone(),
        _ => {
            cx.err(format!("{tp}.name"), "missing");
            return None;
        }
    };
    match t.kind.as_deref() {
        Some("http") => {}
        Some(other) if other != "oss" => {
            cx.err(
                format!("{tp}.kind"),
                format!("unknown trigger kind `{other}`; expected \"http\" or \"oss\""),
            );
            return None;
        }
        None => {
            cx.err(
                format!("{tp}.kind"),
                "missing; expected \"http\" or \"oss\"",
            );
            return None;
        }
        // Compiled by `compile_oss_trigger`; the caller never sends one here.
        Some(_) => return None,
    }
    for (key, present) in [
        ("source", t.source.is_some()),
        ("events", t.events.is_some()),
        ("prefix", t.prefix.is_some()),
        ("suffix", t.suffix.is_some()),
        ("bucket", t.bucket.is_some()),
        ("priority", t.priority.is_some()),
    ] {
        if present {
            cx.err(format!("{tp}.{key}"), "only oss triggers take this key");
        }
    }
    let plugins = compile_chain(cx, tp, t.plugins.as_deref(), known_plugins);
    match t.invocation.as_deref() {
        None | Some("sync") => {}
        Some("async") => {}
        Some(other) => cx.err(
            format!("{tp}.invocation"),
            format!("`{other}`: expected \"sync\" or \"async\""),
        ),
    }

    let function = match &t.function {
        None => {
            cx.err(
                format!("{tp}.function"),
                "missing; write \"service/function\"",
            );
            None
        }
        Some(f) => match by_id.get(f) {
            Some(i) => Some(*i),
            None => {
                cx.err(
                    format!("{tp}.function"),
                    format!("no function `{f}` is defined (write \"service/function\")"),
                );
                None
            }
        },
    };

    let path = match &t.path {
        None => None,
        Some(p) if !p.starts_with('/') => {
            cx.err(format!("{tp}.path"), format!("`{p}` must start with `/`"));
            None
        }
        Some(p) if p.contains(['?', '#', '*']) || p.contains("//") => {
            cx.err(
                format!("{tp}.path"),
                format!("`{p}` must be a plain path prefix (no `?`, `#`, `*` or `//`)"),
            );
            None
        }
        Some(p) if p == "/events" || p.starts_with("/events/") => {
            cx.err(
                format!("{tp}.path"),
                format!("`{p}`: /events/{{source}} is reserved for object-storage webhooks"),
            );
            None
        }
        Some(p) => {
            let trimmed = p.trim_end_matches('/');
            Some(if trimmed.is_empty() {
                "/".to_string()
            } else {
                trimmed.to_string()
            })
        }
    };
    let host = match &t.host {
        None => None,
        Some(h) => {
            let h = h.to_ascii_lowercase();
            let bare = h.strip_prefix("*.").unwrap_or(&h);
            if bare.is_empty()
                || !bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                cx.err(
                    format!("{tp}.host"),
                    format!("`{h}` is not a host name (a leading `*.` is allowed)"),
                );
                None
            } else if h.starts_with("*.") {
                Some(HostMatch::Suffix(h[1..].to_string()))
            } else {
                Some(HostMatch::Exact(h))
            }
        }
    };
    if t.path.is_none() && t.host.is_none() && function.is_some() {
        // Still useful: the function's canonical path takes this trigger's methods and auth.
    }
    let methods = match &t.methods {
        None => None,
        Some(ms) if ms.is_empty() => {
            cx.err(
                format!("{tp}.methods"),
                "empty; leave it out to allow every method",
            );
            None
        }
        Some(ms) => {
            let mut out = Vec::new();
            for (i, m) in ms.iter().enumerate() {
                let up = m.to_ascii_uppercase();
                match Method::from_bytes(up.as_bytes()) {
                    Ok(method) if up.bytes().all(|b| b.is_ascii_uppercase()) => out.push(method),
                    _ => cx.err(
                        format!("{tp}.methods[{i}]"),
                        format!("`{m}` is not an HTTP method"),
                    ),
                }
            }
            Some(out)
        }
    };
    let auth = match &t.auth {
        None => AuthSpec::Anonymous,
        Some(toml::Value::String(s)) if s == "anonymous" => AuthSpec::Anonymous,
        Some(toml::Value::Table(tbl)) if tbl.len() == 1 && tbl.contains_key("bearer") => {
            let parsed: Result<RawSecret, _> = tbl["bearer"].clone().try_into();
            match parsed {
                Ok(secret) => match cx.secret(&format!("{tp}.auth.bearer"), &secret) {
                    Some(s) => AuthSpec::Bearer(s),
                    None => AuthSpec::Anonymous,
                },
                Err(e) => {
                    cx.err(format!("{tp}.auth.bearer"), one_line(&e.to_string()));
                    AuthSpec::Anonymous
                }
            }
        }
        Some(other) => {
            cx.err(
                format!("{tp}.auth"),
                format!("`{other}`: expected \"anonymous\" or {{ bearer = {{ env = \"VAR\" }} }} or {{ bearer = {{ file = \"path\" }} }}"),
            );
            AuthSpec::Anonymous
        }
    };
    Some(HttpTriggerSpec {
        name,
        function: function?,
        host,
        path,
        methods,
        auth,
        strip_prefix: t.strip_prefix.unwrap_or(true),
        invocation: if t.invocation.as_deref() == Some("async") {
            InvocationType::Async
        } else {
            InvocationType::Sync
        },
        body_prefix: plugins
            .iter()
            .map(|&i| known_plugins[i].body_prefix)
            .max()
            .unwrap_or(0),
        plugins,
    })
}

/// The first path segment of `POST /events/{source}`; no service may take it.
const EVENTS_ROUTE_SEGMENT: &str = "events";

const AUTH_FORMS: &str = "expected { bearer = { env = \"VAR\" } } (or file = \"path\"), { hmac = { env = \"VAR\" }, window = \"5m\" }, or \"anonymous\"";

/// A trigger's `plugins` list: names resolved to indexes into `known_plugins`, in order.
fn compile_chain(
    cx: &mut Ctx<'_>,
    tp: &str,
    names: Option<&[String]>,
    known_plugins: &[PluginSpec],
) -> Vec<usize> {
    let names = names.unwrap_or(&[]);
    let mut plugins = Vec::new();
    if names.len() > MAX_PLUGINS_PER_TRIGGER {
        cx.err(
            format!("{tp}.plugins"),
            format!(
                "{} plugins; a chain has at most {MAX_PLUGINS_PER_TRIGGER}",
                names.len()
            ),
        );
    }
    for (i, n) in names.iter().enumerate() {
        match known_plugins.iter().position(|p| &p.name == n) {
            Some(idx) if plugins.contains(&idx) => cx.err(
                format!("{tp}.plugins[{i}]"),
                format!("plugin `{n}` is listed twice"),
            ),
            Some(idx) => plugins.push(idx),
            None => cx.err(
                format!("{tp}.plugins[{i}]"),
                format!("no [[plugin]] named `{n}`"),
            ),
        }
    }
    plugins
}

fn compile_event_sources(
    cx: &mut Ctx<'_>,
    raw: &[RawEventSource],
    retention: Duration,
) -> Vec<EventSourceSpec> {
    let mut out: Vec<EventSourceSpec> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let ep = format!("event_source[{i}]");
        if let Some(spec) = compile_event_source(cx, &ep, r, retention) {
            if out.iter().any(|s| s.name == spec.name) {
                cx.err(
                    format!("{ep}.name"),
                    format!("event source `{}` is defined twice", spec.name),
                );
                continue;
            }
            out.push(spec);
        }
    }
    out
}

fn compile_event_source(
    cx: &mut Ctx<'_>,
    ep: &str,
    r: &RawEventSource,
    retention: Duration,
) -> Option<EventSourceSpec> {
    let name = match &r.name {
        None => {
            cx.err(format!("{ep}.name"), "missing");
            None
        }
        Some(n) if !valid_name(n) => {
            cx.err(
                format!("{ep}.name"),
                format!(
                    "`{n}` is not a valid name: {NAME_RULE} (it becomes the path /events/{{name}})"
                ),
            );
            None
        }
        Some(n) => Some(n.clone()),
    };
    let max_body = cx.size(
        format!("{ep}.max_body"),
        &r.max_body,
        DEFAULT_EVENT_MAX_BODY,
        1024,
        MAX_EVENT_MAX_BODY,
    );
    let max_records = cx.count(
        format!("{ep}.max_records"),
        r.max_records,
        DEFAULT_EVENT_MAX_RECORDS as u64,
        1,
        MAX_EVENT_MAX_RECORDS as u64,
    ) as usize;
    let dedupe_window = cx.duration(
        format!("{ep}.dedupe_window"),
        &r.dedupe_window,
        DEFAULT_DEDUPE_WINDOW,
        Duration::from_secs(365 * 24 * 3600),
    );
    if dedupe_window > retention {
        cx.err(
            format!("{ep}.dedupe_window"),
            format!(
                "{} is longer than [queue] retention ({}): redeliveries are recognised by their task records, which are deleted after retention; raise retention or shorten the window",
                format_duration(dedupe_window),
                format_duration(retention)
            ),
        );
    }
    // Keys that belong to another kind are refused by name.
    let present = |key: &str| match key {
        "auth" => r.auth.is_some(),
        "url" => r.url.is_some(),
        "subject" => r.subject.is_some(),
        "stream" => r.stream.is_some(),
        "consumer" => r.consumer.is_some(),
        "queue" => r.queue.is_some(),
        "prefetch" => r.prefetch.is_some(),
        _ => false,
    };
    let only = |cx: &mut Ctx<'_>, keys: &[&str], kind: &str| {
        for key in keys {
            if present(key) {
                cx.err(
                    format!("{ep}.{key}"),
                    format!("only kind = \"{kind}\" sources take this key"),
                );
            }
        }
    };
    let kind = match r.kind.as_deref() {
        Some("webhook") => {
            only(cx, &["url", "subject", "stream", "consumer"], "nats");
            only(cx, &["queue", "prefetch"], "amqp");
            let auth = compile_webhook_auth(cx, ep, r.auth.as_ref());
            EventSourceKind::Webhook { auth: auth? }
        }
        Some("nats") => {
            only(cx, &["auth"], "webhook");
            only(cx, &["queue", "prefetch"], "amqp");
            let url = required(cx, ep, "url", &r.url, "nats://HOST:PORT");
            if let Some(u) = &url
                && (!(u.starts_with("nats://") || u.starts_with("tls://"))
                    || u.len() <= "nats://".len())
            {
                cx.err(
                    format!("{ep}.url"),
                    format!("`{u}`: expected nats://HOST:PORT or tls://HOST:PORT"),
                );
            }
            let subject = required(
                cx,
                ep,
                "subject",
                &r.subject,
                "a subject such as \"s3.events\"",
            );
            if let Some(sub) = &subject
                && !valid_nats_subject(sub)
            {
                cx.err(
                    format!("{ep}.subject"),
                    format!("`{sub}`: a NATS subject is tokens separated by `.`, without spaces; `*` is a whole token, `>` only the last"),
                );
            }
            let jetstream = match (&r.stream, &r.consumer) {
                (None, None) => None,
                (Some(stream), Some(consumer)) => {
                    for (key, v) in [("stream", stream), ("consumer", consumer)] {
                        if v.is_empty()
                            || v.len() > 32
                            || !v
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                        {
                            cx.err(
                                format!("{ep}.{key}"),
                                format!("`{v}`: 1 to 32 letters, digits, `_` and `-`"),
                            );
                        }
                    }
                    Some(JetStreamConsumer {
                        stream: stream.clone(),
                        consumer: consumer.clone(),
                    })
                }
                (Some(_), None) => {
                    cx.err(
                        format!("{ep}.consumer"),
                        "missing: a JetStream stream needs a durable consumer name",
                    );
                    None
                }
                (None, Some(_)) => {
                    cx.err(
                        format!("{ep}.stream"),
                        "missing: a durable consumer needs the JetStream stream it reads",
                    );
                    None
                }
            };
            EventSourceKind::Nats {
                url: url?,
                subject: subject?,
                jetstream,
            }
        }
        Some("amqp") => {
            only(cx, &["auth"], "webhook");
            only(cx, &["subject", "stream", "consumer"], "nats");
            let url = required(cx, ep, "url", &r.url, "amqp://HOST:PORT/VHOST");
            if let Some(u) = &url {
                if u.starts_with("amqps://") {
                    cx.err(
                        format!("{ep}.url"),
                        "amqps:// (AMQP over TLS) is not supported by this build yet; use amqp:// to a broker on loopback or a private network",
                    );
                } else if !(u.starts_with("amqp://") && u.len() > "amqp://".len()) {
                    cx.err(
                        format!("{ep}.url"),
                        format!("`{u}`: expected amqp://HOST:PORT/VHOST"),
                    );
                }
            }
            let queue = required(cx, ep, "queue", &r.queue, "the queue name to consume");
            if let Some(q) = &queue
                && (q.is_empty() || q.len() > 255)
            {
                cx.err(
                    format!("{ep}.queue"),
                    "an AMQP queue name is 1 to 255 bytes",
                );
            }
            let prefetch = cx.count(
                format!("{ep}.prefetch"),
                r.prefetch,
                DEFAULT_AMQP_PREFETCH as u64,
                1,
                u16::MAX as u64,
            ) as u16;
            EventSourceKind::Amqp {
                url: url?,
                queue: queue?,
                prefetch,
            }
        }
        Some(other) => {
            cx.err(
                format!("{ep}.kind"),
                format!("`{other}`: expected \"webhook\", \"nats\" or \"amqp\""),
            );
            return None;
        }
        None => {
            cx.err(
                format!("{ep}.kind"),
                "missing; expected \"webhook\", \"nats\" or \"amqp\"",
            );
            return None;
        }
    };
    Some(EventSourceSpec {
        name: name?,
        kind,
        max_body,
        max_records,
        dedupe_window,
    })
}

fn required(
    cx: &mut Ctx<'_>,
    ep: &str,
    key: &str,
    v: &Option<String>,
    hint: &str,
) -> Option<String> {
    match v {
        Some(v) => Some(v.clone()),
        None => {
            cx.err(format!("{ep}.{key}"), format!("missing; {hint}"));
            None
        }
    }
}

/// A subject to subscribe to: literal tokens, `*` tokens, and `>` as the last token.
fn valid_nats_subject(s: &str) -> bool {
    let tokens: Vec<&str> = s.split('.').collect();
    !s.is_empty()
        && s.len() <= 256
        && tokens.iter().enumerate().all(|(i, t)| {
            !t.is_empty()
                && !t.contains([' ', '\t', '\r', '\n'])
                && (!t.contains('*') || *t == "*")
                && (!t.contains('>') || (*t == ">" && i == tokens.len() - 1))
        })
}

/// `auth` of a webhook source: required, so an open webhook is always a written decision.
fn compile_webhook_auth(
    cx: &mut Ctx<'_>,
    ep: &str,
    v: Option<&toml::Value>,
) -> Option<WebhookAuth> {
    let ap = format!("{ep}.auth");
    let secret = |cx: &mut Ctx<'_>, key: &str, v: &toml::Value| -> Option<Secret> {
        let parsed: Result<RawSecret, _> = v.clone().try_into();
        let s = match parsed {
            Ok(raw) => cx.secret(&format!("{ap}.{key}"), &raw)?,
            Err(e) => {
                cx.err(format!("{ap}.{key}"), one_line(&e.to_string()));
                return None;
            }
        };
        if s.value.len() < MIN_EVENT_SECRET_BYTES {
            cx.err(
                format!("{ap}.{key}"),
                format!(
                    "the secret from {} is {} bytes; use at least {MIN_EVENT_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                    s.source,
                    s.value.len()
                ),
            );
            return None;
        }
        Some(s)
    };
    match v {
        None => {
            cx.err(ap, format!("missing; {AUTH_FORMS}"));
            None
        }
        Some(toml::Value::String(s)) if s == "anonymous" => Some(WebhookAuth::Anonymous),
        Some(toml::Value::Table(t)) if t.len() == 1 && t.contains_key("bearer") => {
            secret(cx, "bearer", &t["bearer"]).map(WebhookAuth::Bearer)
        }
        Some(toml::Value::Table(t))
            if t.contains_key("hmac") && t.keys().all(|k| k == "hmac" || k == "window") =>
        {
            let window = match t.get("window") {
                None => DEFAULT_HMAC_WINDOW,
                Some(toml::Value::String(w)) => cx.duration(
                    format!("{ap}.window"),
                    &Some(w.clone()),
                    DEFAULT_HMAC_WINDOW,
                    MAX_HMAC_WINDOW,
                ),
                Some(other) => {
                    cx.err(
                        format!("{ap}.window"),
                        format!("`{other}`: a duration such as \"5m\""),
                    );
                    DEFAULT_HMAC_WINDOW
                }
            };
            secret(cx, "hmac", &t["hmac"]).map(|secret| WebhookAuth::Hmac { secret, window })
        }
        Some(toml::Value::Table(t)) if t.contains_key("window") && t.contains_key("bearer") => {
            cx.err(
                format!("{ap}.window"),
                "only hmac auth takes a window (bearer tokens carry no timestamp)",
            );
            None
        }
        Some(other) => {
            cx.err(ap, format!("`{other}`: {AUTH_FORMS}"));
            None
        }
    }
}

fn compile_oss_trigger(
    cx: &mut Ctx<'_>,
    tp: &str,
    t: &RawTrigger,
    by_id: &HashMap<String, usize>,
    known_plugins: &[PluginSpec],
    sources: &[EventSourceSpec],
) -> Option<OssTriggerSpec> {
    let name = match &t.name {
        Some(n) if !n.is_empty() => Some(n.clone()),
        _ => {
            cx.err(format!("{tp}.name"), "missing");
            None
        }
    };
    for (key, present) in [
        ("path", t.path.is_some()),
        ("host", t.host.is_some()),
        ("methods", t.methods.is_some()),
        ("auth", t.auth.is_some()),
        ("strip_prefix", t.strip_prefix.is_some()),
        ("invocation", t.invocation.is_some()),
    ] {
        if present {
            cx.err(
                format!("{tp}.{key}"),
                "only http triggers take this key (oss triggers always run async; auth belongs to the [[event_source]])",
            );
        }
    }
    let function = match &t.function {
        None => {
            cx.err(
                format!("{tp}.function"),
                "missing; write \"service/function\"",
            );
            None
        }
        Some(f) => match by_id.get(f) {
            Some(i) => Some(*i),
            None => {
                cx.err(
                    format!("{tp}.function"),
                    format!("no function `{f}` is defined (write \"service/function\")"),
                );
                None
            }
        },
    };
    let source = match &t.source {
        None => {
            cx.err(
                format!("{tp}.source"),
                "missing; name the [[event_source]] whose events this trigger sees",
            );
            None
        }
        Some(s) => match sources.iter().position(|x| &x.name == s) {
            Some(i) => Some(i),
            None => {
                cx.err(
                    format!("{tp}.source"),
                    format!("no [[event_source]] named `{s}`"),
                );
                None
            }
        },
    };
    let events = match &t.events {
        None => vec!["*".to_string()],
        Some(list) if list.is_empty() => {
            cx.err(
                format!("{tp}.events"),
                "empty; leave it out to match every event",
            );
            vec![]
        }
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, p) in list.iter().enumerate() {
                let bare = crate::events::strip_event_prefix(p);
                if bare.is_empty()
                    || bare.len() > 128
                    || !bare.bytes().all(|b| b.is_ascii_graphic())
                {
                    cx.err(
                        format!("{tp}.events[{i}]"),
                        format!("`{p}`: an event-name pattern such as \"ObjectCreated:*\" (printable ASCII, at most 128 bytes, `*` matches anything)"),
                    );
                } else {
                    out.push(bare.to_string());
                }
            }
            out
        }
    };
    let mut text = |key: &str, v: &Option<String>, max: usize| -> Option<String> {
        let v = v.as_ref()?;
        if v.is_empty() {
            cx.err(format!("{tp}.{key}"), "empty; leave it out to match any");
            None
        } else if v.len() > max {
            cx.err(
                format!("{tp}.{key}"),
                format!("{} bytes; at most {max}", v.len()),
            );
            None
        } else {
            Some(v.clone())
        }
    };
    let bucket = text("bucket", &t.bucket, 255);
    let prefix = text("prefix", &t.prefix, 1024);
    let suffix = text("suffix", &t.suffix, 1024);
    let priority = match t.priority {
        None => 0,
        Some(p) => match i32::try_from(p) {
            Ok(p) => p,
            Err(_) => {
                cx.err(
                    format!("{tp}.priority"),
                    format!("{p} is outside {}..={}", i32::MIN, i32::MAX),
                );
                0
            }
        },
    };
    let plugins = compile_chain(cx, tp, t.plugins.as_deref(), known_plugins);
    Some(OssTriggerSpec {
        name: name?,
        function: function?,
        source: source?,
        events,
        bucket,
        prefix,
        suffix,
        plugins,
        priority,
    })
}

fn compile_plugin(cx: &mut Ctx<'_>, pp: &str, p: &RawPlugin) -> Option<PluginSpec> {
    let name = match &p.name {
        Some(n) if valid_name(n) => n.clone(),
        Some(n) => {
            cx.err(
                format!("{pp}.name"),
                format!("`{n}` is not a valid name: {NAME_RULE}"),
            );
            return None;
        }
        None => {
            cx.err(format!("{pp}.name"), "missing");
            return None;
        }
    };
    let path = match &p.path {
        Some(path) => cx.file_path(path),
        None => {
            cx.err(format!("{pp}.path"), "missing; the .wasm component file");
            return None;
        }
    };
    let mut config = std::collections::BTreeMap::new();
    for (k, v) in &p.config {
        let text = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                cx.err(
                    format!("{pp}.config.{k}"),
                    format!("`{other}`: plugin config values are strings, numbers or booleans"),
                );
                continue;
            }
        };
        config.insert(k.clone(), text);
    }
    let body_prefix = match config.get("body_prefix") {
        None => 0,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= MAX_PLUGIN_BODY_PREFIX => n,
            _ => {
                cx.err(
                    format!("{pp}.config.body_prefix"),
                    format!("`{v}`: a byte count up to {MAX_PLUGIN_BODY_PREFIX}"),
                );
                0
            }
        },
    };
    let timeout = cx.duration(
        format!("{pp}.timeout"),
        &p.timeout,
        DEFAULT_PLUGIN_TIMEOUT,
        MAX_PLUGIN_TIMEOUT,
    );
    let memory = cx.size(
        format!("{pp}.memory"),
        &p.memory,
        DEFAULT_PLUGIN_MEMORY,
        1 << 20,
        MAX_PLUGIN_MEMORY,
    );
    let on_error = match p.on_error.as_deref() {
        None | Some("fail-closed") => OnError::FailClosed,
        Some("fail-open") => OnError::FailOpen,
        Some(other) => {
            cx.err(
                format!("{pp}.on_error"),
                format!("`{other}`: expected \"fail-closed\" or \"fail-open\""),
            );
            OnError::FailClosed
        }
    };
    let mut wall_clock = false;
    for (i, g) in p.grants.iter().enumerate() {
        match g.as_str() {
            "wall-clock" => wall_clock = true,
            other => cx.err(
                format!("{pp}.grants[{i}]"),
                format!("`{other}`: the only grant is \"wall-clock\"; plugins never get files, network or environment"),
            ),
        }
    }
    Some(PluginSpec {
        name,
        path,
        config,
        timeout,
        memory,
        on_error,
        body_prefix,
        wall_clock,
    })
}

/// Compiles `text` with `env` as the environment, relative paths against `/cfg` (tests).
#[cfg(test)]
pub(crate) fn compile_with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, Vec<Problem>> {
    compile_with_env_in(text, env, Path::new("/cfg"))
}

/// Compiles `text` with `env` as the environment, relative paths against `base` (tests and the
/// fuzz bodies in `crate::fuzzing`).
pub(crate) fn compile_with_env_in(
    text: &str,
    env: &[(&str, &str)],
    base: &Path,
) -> Result<Config, Vec<Problem>> {
    let raw = parse(text).map_err(|p| vec![p])?;
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    compile(raw, Path::new("test.toml"), base, &|k| env.get(k).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        compile_with_env(text, &[])
            .expect_err("config should be rejected")
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8443"

[[service]]
name = "demo"

[[service.function]]
name = "echo"
instance_concurrency = 2
timeout = "30s"
backend = { kind = "static", endpoints = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"] }

[[trigger]]
name = "echo-http"
kind = "http"
function = "demo/echo"
path = "/echo/"
methods = ["GET", "post"]
auth = { bearer = { env = "ECHO_TOKEN" } }
"#;

    #[test]
    fn good_config_compiles_with_defaults() {
        let c = compile_with_env(GOOD, &[("ECHO_TOKEN", "s3cret")]).unwrap();
        assert_eq!(c.functions.len(), 1);
        let f = &c.functions[0];
        assert_eq!(f.id, "demo/echo");
        assert_eq!(f.instance_concurrency, 2);
        assert_eq!(f.max_queued, DEFAULT_MAX_QUEUED);
        assert_eq!(f.max_queue_wait, DEFAULT_MAX_QUEUE_WAIT);
        assert_eq!(c.triggers[0].path.as_deref(), Some("/echo"));
        assert_eq!(
            c.triggers[0].methods.as_ref().unwrap(),
            &[Method::GET, Method::POST]
        );
        assert!(matches!(&c.triggers[0].auth, AuthSpec::Bearer(s) if s.value == b"s3cret"));
        assert_eq!(c.server.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.server.data_dir, Path::new("/cfg/data"));
        // The secret never shows in debug output.
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_key_is_reported_with_its_path() {
        let text = GOOD.replace("timeout = \"30s\"", "timeout = \"30s\"\ncolour = \"blue\"");
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(
                "service[0].function[0].colour: unknown field `colour`, expected one of `name`"
            ),
            "{}",
            p[0]
        );
        assert!(p[0].ends_with("(at line 12, column 1)"), "{}", p[0]);
    }

    #[test]
    fn every_problem_is_collected() {
        let text = r#"
[server]
listen = "nowhere"
[[service]]
name = "Demo"
[[service]]
name = "svc"
[[service.function]]
name = "a"
instance_concurrency = 0
timeout = "30"
max_queue_wait = "5 parsecs"
backend = { kind = "static", endpoints = ["ftp://x:1", "http://127.0.0.1"] }
gpu = { type = "A10", memory_gb = 12 }
[[service.function]]
name = "b"
backend = { kind = "process", command = ["python3"], cwd = "/nonexistent-dir" }
[[trigger]]
name = "t"
kind = "http"
function = "svc/missing"
path = "no-slash"
methods = ["FETCH!"]
auth = "password"
[[trigger]]
name = "u"
kind = "oss"
function = "svc/a"
"#;
        let p = problems(text);
        let expect = [
            "server.listen: `nowhere` is not an address",
            "service[0].name: `Demo` is not a valid name",
            "service[1].function[0].gpu: GPU placement needs a process backend",
            "service[1].function[0].gpu.type: no [[gpu]] pool is configured, so `A10` cannot be placed",
            "service[1].function[0].instance_concurrency: 0 is outside 1..=10000",
            "service[1].function[0].timeout: `30` has no unit",
            "service[1].function[0].max_queue_wait: `5 parsecs`: unknown unit",
            "service[1].function[0].backend.endpoints[0]: `ftp://x:1`: only http:// endpoints",
            "service[1].function[0].backend.endpoints[1]: `http://127.0.0.1` needs an explicit port",
            "service[1].function[1].backend.cwd: /nonexistent-dir is not a directory",
            "trigger[0].function: no function `svc/missing`",
            "trigger[0].path: `no-slash` must start with `/`",
            "trigger[0].methods[0]: `FETCH!` is not an HTTP method",
            "trigger[0].auth: `\"password\"`: expected \"anonymous\"",
            "trigger[1].source: missing; name the [[event_source]] whose events this trigger sees",
        ];
        for e in expect {
            assert!(
                p.iter().any(|x| x.starts_with(e)),
                "missing {e:?} in\n{}",
                p.join("\n")
            );
        }
        assert_eq!(p.len(), expect.len(), "{}", p.join("\n"));
    }

    #[test]
    fn passive_health_of_static_endpoints() {
        let ep = r#"endpoints = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]"#;
        let c = compile_with_env(GOOD, &[("ECHO_TOKEN", "s")]).unwrap();
        let BackendSpec::Static { health, .. } = &c.functions[0].backend else {
            panic!("static")
        };
        assert_eq!(health, &PassiveHealth::default());
        assert_eq!(health.failures, DEFAULT_PASSIVE_FAILURES);
        assert!(!health.timeouts);
        let text = GOOD.replace(
            ep,
            &format!(
                "{ep}, passive_health = {{ failures = 5, cooldown = \"500ms\", max_cooldown = \"10s\", timeouts = true, probe_path = \"/ping\", probe_timeout = \"300ms\" }}"
            ),
        );
        let c = compile_with_env(&text, &[("ECHO_TOKEN", "s")]).unwrap();
        let BackendSpec::Static { health, .. } = &c.functions[0].backend else {
            panic!("static")
        };
        assert_eq!(
            health,
            &PassiveHealth {
                failures: 5,
                cooldown: Duration::from_millis(500),
                max_cooldown: Duration::from_secs(10),
                timeouts: true,
                probe_path: "/ping".into(),
                probe_timeout: Duration::from_millis(300),
            }
        );
        let bad = GOOD.replace(
            ep,
            &format!(
                "{ep}, passive_health = {{ failures = 0, cooldown = \"20s\", max_cooldown = \"10s\", probe_path = \"ping me\" }}"
            ),
        );
        let bad = format!(
            "{bad}\n[[service.function]]\nname = \"p\"\nbackend = {{ kind = \"process\", command = [\"python3\"], passive_health = {{}} }}\n"
        );
        let p = problems(&bad);
        let f = "service[0].function[0].backend.passive_health";
        let expect = [
            format!("{f}.probe_path: `ping me` must be a path starting with `/`"),
            format!("{f}.max_cooldown: 10s is shorter than cooldown (20s)"),
            format!("{f}.failures: 0 is outside 1..=1000"),
            "service[0].function[1].backend.passive_health: only static backends take this key"
                .to_string(),
        ];
        for e in &expect {
            assert!(
                p.iter().any(|x| x.starts_with(e.as_str())),
                "missing {e:?} in\n{}",
                p.join("\n")
            );
        }
    }

    const PROCESS: &str = r#"
[account]
gpu_cards_max = 4
[[gpu]]
type = "A10"
memory_gb = 24
count = 2
[[service]]
name = "llm"
env = { MODEL = "tiny", THREADS = 2 }
[[service.function]]
name = "gen"
instance_concurrency = 4
gpu = { type = "A10", memory_gb = 12 }
scaling = { max_instances = 3, provisioned = 1, idle_timeout = "2m", schedule = [{ at = "20:00", target = 0 }, { at = "08:30", target = 2 }], target_tracking = { utilization = 0.5, min = 1, max = 3, window = "30s" } }
backend = { kind = "process", command = ["python3", "-m", "app"], cwd = "/", env = { THREADS = "8" }, inherit_env = ["FROM_GATEWAY", "UNSET_ONE"], readiness = { path = "/ready", interval = "2s", failure_threshold = 5 }, startup_timeout = "3m" }
"#;

    #[test]
    fn process_backend_gpu_and_scaling_compile() {
        let c = compile_with_env(PROCESS, &[("FROM_GATEWAY", "yes")]).unwrap();
        assert_eq!(c.gpu_cards_max, 4);
        assert_eq!(c.gpus[0].count, 2);
        let f = &c.functions[0];
        let BackendSpec::Process(p) = &f.backend else {
            panic!("not a process backend")
        };
        assert_eq!(p.command, ["python3", "-m", "app"]);
        // The function's own env wins over the service's; inherited values come from fngate's.
        assert_eq!(p.env["THREADS"], "8");
        assert_eq!(p.env["MODEL"], "tiny");
        assert_eq!(p.env["FROM_GATEWAY"], "yes");
        assert!(!p.env.contains_key("UNSET_ONE"));
        assert_eq!(p.port_env, "PORT");
        assert_eq!(p.readiness.path, "/ready");
        assert_eq!(p.readiness.interval, Duration::from_secs(2));
        assert_eq!(p.readiness.timeout, DEFAULT_READINESS_TIMEOUT);
        assert_eq!(p.readiness.failure_threshold, 5);
        assert_eq!(p.startup_timeout, Duration::from_secs(180));
        assert_eq!(f.gpu.as_ref().unwrap().memory_gb, 12);
        assert_eq!(f.scaling.max_instances, 3);
        assert_eq!(f.scaling.provisioned, 1);
        assert_eq!(f.scaling.schedule.rules().len(), 2);
        // Sorted by time of day.
        assert_eq!(f.scaling.schedule.rules()[0].target, 2);
        assert_eq!(f.scaling.tracking.unwrap().min, 1);
    }

    #[test]
    fn process_backend_problems() {
        let text = r#"
[account]
gpu_cards_max = 200000
[[gpu]]
type = "A10"
memory_gb = 24
[[gpu]]
type = "A10"
memory_gb = 24
[[service]]
name = "llm"
[[service.function]]
name = "big"
gpu = { type = "A10", memory_gb = 30 }
backend = { kind = "process", command = ["python3"], cwd = "/" }
[[service.function]]
name = "other"
gpu = { type = "H100", memory_gb = 10 }
max_queued = 0
scaling = { max_instances = 2, provisioned = 3, schedule = [{ at = "25:00", target = 1 }, { at = "08:00", target = 9 }], target_tracking = { utilization = 1.5 } }
backend = { kind = "process", command = [], cwd = "/", port_env = "FNGATE_PORT", env = { FNGATE_X = "1", "bad name" = "v" }, readiness = { path = "health" } }
[[service.function]]
name = "stat"
scaling = { max_instances = 2 }
backend = { kind = "static", endpoints = ["http://127.0.0.1:1"] }
[[service.function]]
name = "missing"
backend = { kind = "process", command = ["./no/such/program"], cwd = "/" }
"#;
        let p = problems(text);
        let expect = [
            "account.gpu_cards_max: 200000 is outside 0..=100000",
            "gpu[1].type: GPU type `A10` is listed twice",
            "service[0].function[0].gpu.memory_gb: 30 exceeds A10 cards (24 GB)",
            "service[0].function[1].max_queued: a process backend needs max_queued of at least 1",
            "service[0].function[1].backend.command: empty",
            "service[0].function[1].backend.env.FNGATE_X: set by fngate",
            "service[0].function[1].backend.env.bad name: not an environment variable name",
            "service[0].function[1].backend.port_env: `FNGATE_PORT` is not a usable",
            "service[0].function[1].gpu.type: `H100` is not in the GPU pool (A10)",
            "service[0].function[1].scaling.provisioned: 3 is outside 0..=2",
            "service[0].function[1].scaling.schedule[0].at: `25:00` is not a time of day",
            "service[0].function[1].scaling.schedule[1].target: 9 is outside 0..=2",
            "service[0].function[1].scaling.target_tracking.utilization: 1.5 is outside (0, 1]",
            "service[0].function[2].scaling: static endpoints are always provisioned",
            "service[0].function[3].backend.command[0]: /no/such/program does not exist",
            "service[0].function[1].backend.readiness.path: `health` must be a path starting with `/`",
        ];
        for e in expect {
            assert!(
                p.iter().any(|x| x.starts_with(e)),
                "missing {e:?} in\n{}",
                p.join("\n")
            );
        }
        assert_eq!(p.len(), expect.len(), "{}", p.join("\n"));
    }

    #[test]
    fn missing_token_env_is_a_problem() {
        let p = problems(GOOD);
        assert_eq!(
            p,
            vec!["trigger[0].auth.bearer.env: environment variable ECHO_TOKEN is not set or empty"]
        );
    }

    #[test]
    fn duplicate_routes_and_names() {
        let text = GOOD.to_string()
            + r#"
[[trigger]]
name = "echo-http"
kind = "http"
function = "demo/echo"
path = "/echo"
methods = ["POST"]
"#;
        let p = compile_with_env(&text, &[("ECHO_TOKEN", "x")]).unwrap_err();
        let p: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert!(
            p.iter()
                .any(|x| x.contains("trigger `echo-http` is defined twice")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|x| x.contains("same host, path and method(s)")),
            "{p:?}"
        );
    }

    #[test]
    fn nats_queue_and_destinations() {
        let ok = format!(
            "{GOOD}\n[queue]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nstream = \"JOBS\"\n"
        );
        let c = compile_with_env(&ok, &[("ECHO_TOKEN", "s3cret")]).expect("valid");
        assert_eq!(
            c.queue.kind,
            QueueKind::Nats {
                url: "nats://127.0.0.1:4222".into(),
                stream: "JOBS".into()
            }
        );
        let with_dest = ok.replace(
            "timeout = \"30s\"",
            "timeout = \"30s\"\nasync = { on_success = \"nats:results.echo\" }",
        );
        let c = compile_with_env(&with_dest, &[("ECHO_TOKEN", "s3cret")]).expect("valid");
        assert_eq!(
            c.functions[0].async_.on_success,
            Some(Destination::Nats("results.echo".into()))
        );
        let p = problems(&format!(
            "{GOOD}\n[queue]\nkind = \"nats\"\nurl = \"http://x\"\nstream = \"a.b\"\n"
        ));
        assert_eq!(
            p,
            [
                "queue.url: `http://x`: expected nats://HOST:PORT or tls://HOST:PORT",
                "queue.stream: `a.b`: a stream name is 1 to 32 letters, digits, `_` and `-` (it prefixes subjects and names the task bucket)",
                "trigger[0].auth.bearer.env: environment variable ECHO_TOKEN is not set or empty",
            ]
        );
        // NATS destinations need the NATS queue; wildcards are refused.
        let embedded = GOOD.replace(
            "timeout = \"30s\"",
            "timeout = \"30s\"\nasync = { on_success = \"nats:results.echo\", on_failure = \"nats:bad.*\" }",
        );
        let p = problems(&embedded);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[0].contains("NATS destinations need [queue] kind = \"nats\""),
            "{p:?}"
        );
        assert!(p[1].contains("no wildcards"), "{p:?}");
    }

    #[test]
    fn otlp_traces() {
        let env = [("ECHO_TOKEN", "s3cret")];
        let ok = format!(
            "{GOOD}\n[telemetry]\notlp = {{ endpoint = \"http://127.0.0.1:4318/\" }}\ntraces = {{ sample_ratio = 0.25 }}\n"
        );
        let c = compile_with_env(&ok, &env).expect("valid");
        let http = OtlpSpec {
            endpoint: "http://127.0.0.1:4318".into(),
            protocol: OtlpProtocol::Http,
        };
        assert_eq!(
            c.traces,
            Some(TracesSpec {
                otlp: http.clone(),
                sample_ratio: 0.25
            })
        );
        assert_eq!(c.metrics, None);
        assert_eq!(c.log.otlp, None);
        let default_ratio = format!(
            "{GOOD}\n[telemetry]\notlp = {{ endpoint = \"http://127.0.0.1:4318\", protocol = \"http\" }}\ntraces = {{}}\n"
        );
        let c = compile_with_env(&default_ratio, &env).expect("valid");
        assert_eq!(c.traces.unwrap().sample_ratio, DEFAULT_TRACE_SAMPLE_RATIO);
        assert!(compile_with_env(GOOD, &env).unwrap().traces.is_none());
        // A collector for logs or metrics alone does not turn traces on.
        let otlp_only = format!(
            "{GOOD}\n[telemetry]\notlp = {{ endpoint = \"http://127.0.0.1:4318\" }}\nlog = {{ otlp = true }}\n"
        );
        let c = compile_with_env(&otlp_only, &env).expect("valid");
        assert!(c.traces.is_none() && c.log.otlp.is_some());

        // gRPC, metrics pushed, logs globally and for one service.
        let all = format!(
            "{GOOD}\n[telemetry]\notlp = {{ endpoint = \"http://127.0.0.1:4317\", protocol = \"grpc\" }}\nmetrics = {{ otlp = true, interval = \"250ms\" }}\nlog = {{ otlp = true }}\ntraces = {{ sample_ratio = 1.0 }}\n"
        );
        let c = compile_with_env(&all, &env).expect("valid");
        let grpc = OtlpSpec {
            endpoint: "http://127.0.0.1:4317".into(),
            protocol: OtlpProtocol::Grpc,
        };
        assert_eq!(c.traces.unwrap().otlp, grpc);
        assert_eq!(
            c.metrics,
            Some(MetricsSpec {
                otlp: grpc.clone(),
                interval: Duration::from_millis(250)
            })
        );
        assert_eq!(c.log.otlp, Some(grpc.clone()));
        let c = compile_with_env(
            &format!("{GOOD}\n[telemetry]\notlp = {{ endpoint = \"http://c:4318\" }}\nmetrics = {{ otlp = true }}\nlog = {{ otlp = false }}\n"),
            &env,
        )
        .expect("valid");
        assert_eq!(c.metrics.unwrap().interval, DEFAULT_METRICS_INTERVAL);
        assert_eq!(c.log.otlp, None);

        let bad = |telemetry: &str| -> Vec<String> {
            compile_with_env(&format!("{GOOD}\n[telemetry]\n{telemetry}\n"), &env)
                .expect_err("invalid")
                .iter()
                .map(|p| p.to_string())
                .collect()
        };
        assert_eq!(
            bad("traces = { sample_ratio = 0.5 }"),
            [
                "telemetry.traces: traces need an exporter: set telemetry.otlp = { endpoint = \"http://127.0.0.1:4318\" }"
            ]
        );
        assert_eq!(
            bad("metrics = { otlp = true }\nlog = { otlp = true }"),
            [
                "telemetry.metrics.otlp: OTLP metrics need an exporter: set telemetry.otlp = { endpoint = \"http://127.0.0.1:4318\" }",
                "telemetry.log.otlp: OTLP logs need an exporter: set telemetry.otlp = { endpoint = \"http://127.0.0.1:4318\" }",
            ]
        );
        assert_eq!(
            bad("otlp = { endpoint = \"https://c:4318\" }"),
            [
                "telemetry.otlp.endpoint: `https://c:4318`: expected the collector's base URL, like \"http://127.0.0.1:4318\" (plain http; spans go to /v1/traces, metrics to /v1/metrics, logs to /v1/logs)"
            ]
        );
        assert_eq!(
            bad("otlp = { endpoint = \"http://c:4317/otlp\", protocol = \"grpc\" }"),
            [
                "telemetry.otlp.endpoint: `http://c:4317/otlp`: expected the collector's base URL, like \"http://127.0.0.1:4317\" (plain http/2, no path)"
            ]
        );
        assert_eq!(
            bad("otlp = { endpoint = \"http://c:4317\", protocol = \"quic\" }"),
            ["telemetry.otlp.protocol: expected \"http\" (HTTP/protobuf) or \"grpc\""]
        );
        assert_eq!(
            bad(
                "otlp = { endpoint = \"http://c:4318\" }\nmetrics = { otlp = 1, interval = \"10ms\", every = 2 }\nlog = { otlp = \"yes\" }"
            ),
            [
                "telemetry.metrics.every: unknown key; expected one of otlp, interval",
                "telemetry.metrics.otlp: expected true or false (push metrics to telemetry.otlp)",
                "telemetry.metrics.interval: `10ms`: expected from 100ms to 1h",
                "telemetry.log.otlp: expected true or false (send lines to telemetry.otlp)",
            ]
        );
        assert_eq!(
            bad(
                "otlp = { endpoint = \"http://c:4318\" }\nmetrics = { otlp = true, interval = 10 }"
            ),
            ["telemetry.metrics.interval: `10`: expected a duration such as \"10s\""]
        );
        assert_eq!(
            bad("otlp = { endpoint = \"http://c:4318\" }\nmetrics = \"on\""),
            ["telemetry.metrics: expected a table"]
        );
        assert_eq!(
            bad(
                "otlp = { endpoint = \"http://c:4318\", colour = 1 }\ntraces = { sample_ratio = 2 }"
            ),
            [
                "telemetry.otlp.colour: unknown key; expected one of endpoint, protocol",
                "telemetry.traces.sample_ratio: `2`: expected a number from 0.0 to 1.0",
            ]
        );
    }

    #[test]
    fn syntax_error_has_location() {
        let p = problems("[server\nlisten = 1");
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("line 1"), "{}", p[0]);
    }

    const EVENTS: &str = r#"
[queue]
retention = "2h"

[[service]]
name = "media"
[[service.function]]
name = "thumb"
backend = { kind = "static", endpoints = ["http://127.0.0.1:9001"] }
[[service.function]]
name = "index"
backend = { kind = "static", endpoints = ["http://127.0.0.1:9002"] }

[[plugin]]
name = "router"
path = "router.wasm"

[[event_source]]
name = "rgw"
kind = "webhook"
auth = { bearer = { env = "EVENT_TOKEN" } }

[[event_source]]
name = "signed"
kind = "webhook"
auth = { hmac = { env = "EVENT_KEY" }, window = "2m" }
max_body = "1MiB"
max_records = 50
dedupe_window = "2h"

[[event_source]]
name = "open"
kind = "webhook"
auth = "anonymous"

[[event_source]]
name = "bus"
kind = "nats"
url = "nats://127.0.0.1:4222"
subject = "s3.events.>"
stream = "S3"
consumer = "fngate"

[[event_source]]
name = "rabbit"
kind = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
queue = "s3-events"

[[trigger]]
name = "thumbs"
kind = "oss"
function = "media/thumb"
source = "rgw"
events = ["s3:ObjectCreated:*", "ObjectRemoved:Delete"]
bucket = "photos"
prefix = "images/"
suffix = ".png"
plugins = ["router"]
priority = 5

[[trigger]]
name = "everything"
kind = "oss"
function = "media/index"
source = "bus"
"#;

    const TOKENS: &[(&str, &str)] = &[
        ("EVENT_TOKEN", "0123456789abcdef0123"),
        ("EVENT_KEY", "hmac-key-0123456789"),
    ];

    #[test]
    fn event_sources_and_oss_triggers_compile() {
        let c = compile_with_env(EVENTS, TOKENS).unwrap();
        assert_eq!(c.event_sources.len(), 5);
        let rgw = &c.event_sources[0];
        assert_eq!(rgw.name, "rgw");
        assert_eq!(rgw.max_body, DEFAULT_EVENT_MAX_BODY);
        assert_eq!(rgw.max_records, DEFAULT_EVENT_MAX_RECORDS);
        assert_eq!(rgw.dedupe_window, DEFAULT_DEDUPE_WINDOW);
        assert!(
            matches!(&rgw.kind, EventSourceKind::Webhook { auth: WebhookAuth::Bearer(s) } if s.value == b"0123456789abcdef0123")
        );
        let signed = &c.event_sources[1];
        assert!(
            matches!(&signed.kind, EventSourceKind::Webhook { auth: WebhookAuth::Hmac { window, .. } } if *window == Duration::from_secs(120))
        );
        assert_eq!(signed.max_body, 1 << 20);
        assert_eq!(signed.max_records, 50);
        assert_eq!(signed.dedupe_window, Duration::from_secs(7200));
        assert!(matches!(
            &c.event_sources[2].kind,
            EventSourceKind::Webhook {
                auth: WebhookAuth::Anonymous
            }
        ));
        let EventSourceKind::Nats {
            url,
            subject,
            jetstream,
        } = &c.event_sources[3].kind
        else {
            panic!("not nats")
        };
        assert_eq!(url, "nats://127.0.0.1:4222");
        assert_eq!(subject, "s3.events.>");
        assert_eq!(
            jetstream,
            &Some(JetStreamConsumer {
                stream: "S3".into(),
                consumer: "fngate".into()
            })
        );
        assert!(matches!(
            &c.event_sources[4].kind,
            EventSourceKind::Amqp { queue, prefetch: DEFAULT_AMQP_PREFETCH, .. } if queue == "s3-events"
        ));

        assert!(c.triggers.is_empty(), "oss triggers are not HTTP routes");
        let t = &c.oss_triggers[0];
        assert_eq!(t.name, "thumbs");
        assert_eq!(c.functions[t.function].id, "media/thumb");
        assert_eq!(t.source, 0);
        assert_eq!(t.events, ["ObjectCreated:*", "ObjectRemoved:Delete"]);
        assert_eq!(t.bucket.as_deref(), Some("photos"));
        assert_eq!(t.prefix.as_deref(), Some("images/"));
        assert_eq!(t.suffix.as_deref(), Some(".png"));
        assert_eq!(t.plugins, [0]);
        assert_eq!(t.priority, 5);
        let all = &c.oss_triggers[1];
        assert_eq!(all.events, ["*"]);
        assert_eq!(all.source, 3);
        assert_eq!(
            (all.bucket.as_ref(), all.prefix.as_ref(), all.priority),
            (None, None, 0)
        );
        assert!(!format!("{c:?}").contains("0123456789abcdef0123"));
    }

    #[test]
    fn bad_event_sources() {
        let text = r#"
[queue]
retention = "1h"
[[event_source]]
name = "no-auth"
kind = "webhook"
[[event_source]]
name = "Bad Name"
kind = "webhook"
auth = "anonymous"
[[event_source]]
name = "short"
kind = "webhook"
auth = { bearer = { env = "SHORT" } }
[[event_source]]
name = "unset"
kind = "webhook"
auth = { hmac = { env = "NOPE" }, window = "2h" }
[[event_source]]
name = "mixed"
kind = "webhook"
auth = { bearer = { env = "LONG" }, window = "5m" }
subject = "x"
[[event_source]]
name = "weird"
kind = "webhook"
auth = "password"
max_body = "1GiB"
max_records = 0
dedupe_window = "2h"
[[event_source]]
name = "n"
kind = "nats"
url = "http://x"
subject = "a..b"
stream = "S"
auth = "anonymous"
[[event_source]]
name = "n2"
kind = "nats"
subject = "a.>.b"
consumer = "c"
[[event_source]]
name = "a"
kind = "amqp"
url = "amqp://h"
prefetch = 0
[[event_source]]
name = "a"
kind = "kafka"
[[event_source]]
name = "open"
kind = "webhook"
auth = "anonymous"
"#;
        let p: Vec<String> =
            compile_with_env(text, &[("SHORT", "abc"), ("LONG", "0123456789abcdef0")])
                .expect_err("rejected")
                .iter()
                .map(|p| p.to_string())
                .collect();
        let expect = [
            "event_source[0].auth: missing; expected { bearer = { env = \"VAR\" } } (or file = \"path\"), { hmac = { env = \"VAR\" }, window = \"5m\" }, or \"anonymous\"",
            "event_source[1].name: `Bad Name` is not a valid name: use 1-64 of a-z, 0-9, `-`, `_`, starting with a letter or digit (it becomes the path /events/{name})",
            "event_source[2].auth.bearer: the secret from env SHORT is 3 bytes; use at least 16 (e.g. `openssl rand -hex 32`)",
            "event_source[3].auth.window: 2h exceeds the maximum of 1h",
            "event_source[3].auth.hmac.env: environment variable NOPE is not set or empty",
            "event_source[4].subject: only kind = \"nats\" sources take this key",
            "event_source[4].auth.window: only hmac auth takes a window (bearer tokens carry no timestamp)",
            "event_source[5].max_body: 1073741824 bytes is outside 1024..=67108864",
            "event_source[5].max_records: 0 is outside 1..=10000",
            "event_source[5].dedupe_window: 2h is longer than [queue] retention (1h): redeliveries are recognised by their task records, which are deleted after retention; raise retention or shorten the window",
            "event_source[5].auth: `\"password\"`: expected { bearer",
            "event_source[6].auth: only kind = \"webhook\" sources take this key",
            "event_source[6].url: `http://x`: expected nats://HOST:PORT or tls://HOST:PORT",
            "event_source[6].subject: `a..b`: a NATS subject is tokens separated by `.`",
            "event_source[6].consumer: missing: a JetStream stream needs a durable consumer name",
            "event_source[7].url: missing; nats://HOST:PORT",
            "event_source[7].subject: `a.>.b`: a NATS subject",
            "event_source[7].stream: missing: a durable consumer needs the JetStream stream it reads",
            "event_source[8].queue: missing; the queue name to consume",
            "event_source[8].prefetch: 0 is outside 1..=65535",
            "event_source[9].kind: `kafka`: expected \"webhook\", \"nats\" or \"amqp\"",
        ];
        for e in expect {
            assert!(
                p.iter().any(|x| x.starts_with(e)),
                "missing {e:?} in\n{}",
                p.join("\n")
            );
        }
        assert_eq!(p.len(), expect.len(), "{}", p.join("\n"));
    }

    #[test]
    fn bad_oss_triggers() {
        let text = r#"
[[service]]
name = "events"
[[service]]
name = "media"
[[service.function]]
name = "thumb"
backend = { kind = "static", endpoints = ["http://127.0.0.1:9001"] }
[[event_source]]
name = "rgw"
kind = "webhook"
auth = "anonymous"
[[trigger]]
name = "a"
kind = "oss"
function = "media/thumb"
[[trigger]]
name = "b"
kind = "oss"
function = "media/nope"
source = "s3"
events = []
bucket = ""
[[trigger]]
name = "c"
kind = "oss"
function = "media/thumb"
source = "rgw"
events = ["ObjectCreated:*", "Object Created", "s3:"]
path = "/x"
invocation = "async"
priority = 9999999999
plugins = ["missing"]
[[trigger]]
name = "d"
kind = "oss"
function = "media/thumb"
source = "rgw"
[[trigger]]
name = "web"
kind = "http"
function = "media/thumb"
path = "/events/rgw"
source = "rgw"
priority = 1
[[trigger]]
name = "d"
kind = "oss"
function = "media/thumb"
source = "rgw"
"#;
        let p = problems(text);
        let expect = [
            "service[0].name: `events` is reserved: /events/{source} is the object-storage webhook route",
            "trigger[0].source: missing; name the [[event_source]] whose events this trigger sees",
            "trigger[1].function: no function `media/nope` is defined",
            "trigger[1].source: no [[event_source]] named `s3`",
            "trigger[1].events: empty; leave it out to match every event",
            "trigger[1].bucket: empty; leave it out to match any",
            "trigger[2].path: only http triggers take this key",
            "trigger[2].invocation: only http triggers take this key",
            "trigger[2].events[1]: `Object Created`: an event-name pattern such as \"ObjectCreated:*\"",
            "trigger[2].events[2]: `s3:`: an event-name pattern",
            "trigger[2].priority: 9999999999 is outside -2147483648..=2147483647",
            "trigger[2].plugins[0]: no [[plugin]] named `missing`",
            "trigger[5].name: trigger `d` is defined twice",
            "trigger[4].source: only oss triggers take this key",
            "trigger[4].priority: only oss triggers take this key",
            "trigger[4].path: `/events/rgw`: /events/{source} is reserved for object-storage webhooks",
        ];
        for e in expect {
            assert!(
                p.iter().any(|x| x.starts_with(e)),
                "missing {e:?} in\n{}",
                p.join("\n")
            );
        }
        assert_eq!(p.len(), expect.len(), "{}", p.join("\n"));
    }

    #[test]
    fn log_sinks_compile_globally_and_per_service() {
        let text = GOOD.replace(
            "[[service]]\nname = \"demo\"\n",
            "[[service]]\nname = \"demo\"\nlog = { file = { path = \"logs/demo.log\", max_size = \"1MiB\", keep = 2 }, inherit = false }\n",
        ) + "\n[telemetry]\nlog = { stdout = false, file = \"/var/log/fngate.log\" }\n";
        let c = compile_with_env(&text, &[("ECHO_TOKEN", "t")]).unwrap();
        assert!(!c.log.stdout);
        assert_eq!(
            c.log.file,
            Some(FileSinkSpec {
                path: "/var/log/fngate.log".into(),
                max_size: DEFAULT_LOG_MAX_SIZE,
                keep: DEFAULT_LOG_KEEP,
            })
        );
        let demo = &c.service_logs["demo"];
        assert!(!demo.inherit && !demo.sinks.stdout);
        assert_eq!(
            demo.sinks.file,
            Some(FileSinkSpec {
                path: "/cfg/logs/demo.log".into(),
                max_size: 1 << 20,
                keep: 2,
            })
        );
        // Defaults: stdout on, no file, no per-service settings.
        let c = compile_with_env(GOOD, &[("ECHO_TOKEN", "t")]).unwrap();
        assert_eq!(
            c.log,
            LogSinks {
                stdout: true,
                file: None,
                otlp: None,
            }
        );
        assert!(c.service_logs.is_empty());
        // A service's lines to the collector only.
        let text = GOOD.replace(
            "[[service]]\nname = \"demo\"\n",
            "[[service]]\nname = \"demo\"\nlog = { otlp = true, inherit = false }\n",
        ) + "\n[telemetry]\notlp = { endpoint = \"http://127.0.0.1:4318\" }\n";
        let c = compile_with_env(&text, &[("ECHO_TOKEN", "t")]).unwrap();
        assert_eq!(c.log.otlp, None);
        let demo = &c.service_logs["demo"];
        assert!(!demo.inherit && !demo.sinks.stdout);
        assert_eq!(
            demo.sinks.otlp.as_ref().map(|o| o.endpoint.as_str()),
            Some("http://127.0.0.1:4318")
        );
    }

    #[test]
    fn bad_log_sinks() {
        let text = GOOD.replace(
            "[[service]]\nname = \"demo\"\n",
            "[[service]]\nname = \"demo\"\nlog = { file = { path = \"d.log\", max_size = \"10\", keep = -1, colour = 1 }, otlp = {} }\n[[service]]\nname = \"other\"\nlog = { otlp = true }\n",
        ) + "\n[telemetry]\nlog = { file = 7, inherit = true }\n";
        let p = problems(&text).join("\n");
        for want in [
            "telemetry.log.file: write `file = ",
            "telemetry.log.inherit: only a service's `log` inherits",
            "service[0].log.file.colour: unknown key",
            "service[0].log.file.keep: a number of rotated files",
            "service[0].log.file.max_size: 10 bytes is outside 512..=",
            "service[0].log.otlp: expected true or false (send lines to telemetry.otlp)",
            "service[1].log.otlp: OTLP logs need an exporter: set telemetry.otlp",
        ] {
            assert!(p.contains(want), "missing `{want}` in:\n{p}");
        }
    }
}
