//! Shared gateway state: the current generation (config snapshot, router, function runtimes),
//! swapped atomically on reload, and what lives for the whole process (upstream client, sinks).

use crate::backend::{self, UpstreamClient};
use crate::config::{self, Config, ConfigError, Problem, ServerSettings};
use crate::instances::ProcessLauncher;
use crate::policy::{FunctionLoad, LiveState, Plugin, PolicyHost};
use crate::scheduler::{FunctionRuntime, Node, gpu::GpuPool};
use crate::telemetry::{FileTarget, LogSink, SinkRegistry};
use crate::trigger::Router;
use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One configuration generation. Requests load it once and use it to the end, so a reload never
/// changes the rules under a request in flight.
#[derive(Debug)]
pub struct Runtime {
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Router,
    /// Parallel to `config.functions`.
    pub functions: Vec<Arc<FunctionRuntime>>,
    /// Parallel to `config.plugins`.
    pub plugins: Vec<Arc<Plugin>>,
    by_id: HashMap<String, usize>,
    pub log: LogSink,
}

impl Runtime {
    pub fn function(&self, id: &str) -> Option<(usize, &Arc<FunctionRuntime>)> {
        self.by_id.get(id).map(|&i| (i, &self.functions[i]))
    }
}

impl LiveState for Runtime {
    fn function_load(&self, function: &str) -> Option<FunctionLoad> {
        let (i, f) = self.function(function)?;
        let (provisioned, on_demand, busy, queued, starting) = f.load();
        Some(FunctionLoad {
            provisioned_instances: provisioned,
            on_demand_instances: on_demand,
            busy_slots: busy,
            total_slots: (provisioned + on_demand) * self.config.functions[i].instance_concurrency,
            queue_depth: queued as u32,
            cold_starts_in_progress: starting,
        })
    }
}

pub struct Gateway {
    pub current: ArcSwap<Runtime>,
    pub client: UpstreamClient,
    pub config_path: PathBuf,
    pub prometheus: PrometheusHandle,
    pub admin_token: Vec<u8>,
    pub ready: AtomicBool,
    pub policy: Arc<PolicyHost>,
    /// The GPU pool and process launcher every function's instances use; fixed at start-up.
    pub node: Arc<Node>,
    pub launcher: Arc<ProcessLauncher>,
    /// The async queue's dispatcher (and through it the task store), once opened at start-up.
    pub tasks: std::sync::OnceLock<Arc<crate::invoker::dispatch::Dispatcher>>,
    /// Instance-login sessions open now (bounded by `server.exec.max_sessions`).
    pub exec_sessions: crate::exec::Sessions,
    /// Log sinks live across generations (a kept file path keeps its writer).
    sinks: SinkRegistry,
    generation: AtomicU64,
    reload_lock: std::sync::Mutex<()>,
}

/// What a successful reload changed, for the admin API and the log.
#[derive(Debug, serde::Serialize)]
pub struct ReloadReport {
    pub generation: u64,
    pub functions_added: Vec<String>,
    pub functions_removed: Vec<String>,
    pub functions_updated: Vec<String>,
    pub triggers: usize,
    /// Settings that only take effect after a restart.
    pub restart_required: Vec<String>,
}

impl Gateway {
    pub fn new(
        config: Config,
        prometheus: PrometheusHandle,
        admin_token: Vec<u8>,
        policy: Arc<PolicyHost>,
    ) -> Result<Arc<Self>, ConfigError> {
        let sinks = SinkRegistry::new();
        let config_path = config.file.clone();
        let node = Node::new(GpuPool::new(&config.gpus, config.gpu_cards_max));
        let config = Arc::new(config);
        let log = log_router(&config, &sinks)?;
        let launcher = ProcessLauncher::new(log.clone());
        node.set_launcher(launcher.clone());
        let runtime = build_runtime(1, config, None, log, &policy, &node)?.0;
        Ok(Arc::new(Gateway {
            current: ArcSwap::from_pointee(runtime),
            client: backend::client(),
            config_path,
            prometheus,
            admin_token,
            ready: AtomicBool::new(false),
            policy,
            node,
            launcher,
            tasks: std::sync::OnceLock::new(),
            exec_sessions: crate::exec::Sessions::default(),
            sinks,
            generation: AtomicU64::new(1),
            reload_lock: std::sync::Mutex::new(()),
        }))
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Writes the log lines still buffered in every sink (at shutdown; blocking, bounded).
    pub fn flush_logs(&self, timeout: std::time::Duration) {
        self.sinks.flush(timeout);
    }

    /// Re-reads the config file; on any problem nothing changes and every problem is returned.
    pub fn reload(&self) -> Result<ReloadReport, ConfigError> {
        // Two reloads at once would race on which generation wins; one at a time.
        let _one = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.try_reload();
        let outcome = if result.is_ok() { "ok" } else { "rejected" };
        metrics::counter!(crate::telemetry::CONFIG_RELOADS, "result" => outcome).increment(1);
        result
    }

    fn try_reload(&self) -> Result<ReloadReport, ConfigError> {
        let new = config::load(&self.config_path)?;
        let old = self.current.load_full();
        let mut restart_required = server_changes(&old.config.server, &new.server);
        if old.config.gpus != new.gpus {
            restart_required.push("gpu".into());
        }
        if old.config.gpu_cards_max != new.gpu_cards_max {
            restart_required.push("account.gpu_cards_max".into());
        }
        // The trace exporter and the metrics recorder are installed once per process.
        if old.config.traces != new.traces {
            restart_required.push("telemetry.otlp / telemetry.traces".into());
        }
        if old.config.metrics != new.metrics {
            restart_required.push("telemetry.metrics".into());
        }
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let new = Arc::new(new);
        let log = log_router(&new, &self.sinks)?;
        let (runtime, mut report) =
            build_runtime(generation, new, Some(&old), log, &self.policy, &self.node)?;
        self.generation.store(generation, Ordering::Relaxed);
        report.restart_required = restart_required;
        self.launcher.set_log(runtime.log.clone());
        self.current.store(Arc::new(runtime));
        Ok(report)
    }
}

/// Builds a generation. Plugins load first: if any fails, nothing else is touched (function
/// runtimes are only updated once everything is known to be good).
fn build_runtime(
    generation: u64,
    config: Arc<Config>,
    old: Option<&Runtime>,
    log: LogSink,
    policy: &PolicyHost,
    node: &Arc<Node>,
) -> Result<(Runtime, ReloadReport), ConfigError> {
    let mut plugins = Vec::with_capacity(config.plugins.len());
    let mut problems = Vec::new();
    for (i, spec) in config.plugins.iter().enumerate() {
        match policy.load(spec) {
            Ok(p) => plugins.push(p),
            Err(e) => problems.push(Problem {
                path: format!("plugin[{i}]"),
                message: e.to_string(),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError {
            file: config.file.clone(),
            problems,
        });
    }
    let mut previous: HashMap<&str, &Arc<FunctionRuntime>> = HashMap::new();
    if let Some(old) = old {
        for (spec, rt) in old.config.functions.iter().zip(&old.functions) {
            previous.insert(spec.id.as_str(), rt);
        }
    }
    let mut report = ReloadReport {
        generation,
        functions_added: vec![],
        functions_removed: vec![],
        functions_updated: vec![],
        triggers: config.triggers.len(),
        restart_required: vec![],
    };
    let mut functions = Vec::with_capacity(config.functions.len());
    for spec in &config.functions {
        match previous.remove(spec.id.as_str()) {
            Some(rt) => {
                if **rt.spec() != **spec {
                    report.functions_updated.push(spec.id.clone());
                }
                rt.update(spec.clone());
                functions.push(rt.clone());
            }
            None => {
                report.functions_added.push(spec.id.clone());
                functions.push(FunctionRuntime::new(spec.clone(), node.clone()));
            }
        }
    }
    for (id, rt) in previous {
        report.functions_removed.push(id.to_string());
        rt.retire();
    }
    let router = Router::new(&config);
    let by_id = config
        .functions
        .iter()
        .enumerate()
        .map(|(i, f)| (f.id.clone(), i))
        .collect();
    Ok((
        Runtime {
            generation,
            config,
            router,
            functions,
            plugins,
            by_id,
            log,
        },
        report,
    ))
}

/// The generation's log routing: global sinks, and each service with its own `log` settings.
/// A file that cannot be opened is a config problem: the start or reload fails and says why.
fn log_router(config: &Config, sinks: &SinkRegistry) -> Result<LogSink, ConfigError> {
    let mut problems = Vec::new();
    let mut open =
        |path: String, s: &config::LogSinks, out: &mut Vec<Arc<crate::telemetry::Sink>>| {
            if s.stdout {
                out.push(sinks.stdout());
            }
            if let Some(o) = &s.otlp {
                out.push(sinks.otlp(o));
            }
            if let Some(f) = &s.file {
                match sinks.file(&FileTarget::new(f.path.clone(), f.max_size, f.keep)) {
                    Ok(sink) => out.push(sink),
                    Err(e) => problems.push(Problem {
                        path,
                        message: format!("cannot open {}: {e}", f.path.display()),
                    }),
                }
            }
        };
    let mut global = Vec::new();
    open("telemetry.log.file".into(), &config.log, &mut global);
    let mut services = HashMap::new();
    for (name, svc) in &config.service_logs {
        let mut own = Vec::new();
        open(format!("service `{name}` log.file"), &svc.sinks, &mut own);
        if svc.inherit {
            own.extend(global.iter().cloned());
        }
        services.insert(name.clone(), own);
    }
    if !problems.is_empty() {
        return Err(ConfigError {
            file: config.file.clone(),
            problems,
        });
    }
    Ok(LogSink::routed(global, services))
}

fn server_changes(old: &ServerSettings, new: &ServerSettings) -> Vec<String> {
    let mut out = Vec::new();
    if old.listen != new.listen {
        out.push("server.listen".into());
    }
    if old.plaintext_listen != new.plaintext_listen {
        out.push("server.plaintext_listen".into());
    }
    if old.admin_listen != new.admin_listen {
        out.push("server.admin_listen".into());
    }
    if old.tls != new.tls || old.tls_reload_interval != new.tls_reload_interval {
        out.push("server.tls".into());
    }
    if old.admin_token != new.admin_token {
        out.push("server.admin_token".into());
    }
    if old.data_dir != new.data_dir {
        out.push("server.data_dir".into());
    }
    if old.limits != new.limits {
        out.push("server.limits".into());
    }
    out
}
