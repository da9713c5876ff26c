//! Policy plugins: the only module of the gateway that touches wasmtime.
//!
//! The rest of the gateway sees plain Rust types: a `RequestView` goes in, a `Decision` comes out,
//! or a `PluginFailure` that says which plugin failed and whether to fail open.
//!
//! How a call runs (the hot path):
//! - one `Engine` per process with the pooling allocator (copy-on-write memory images, memory kept
//!   resident between uses), epoch interruption driven by one ticker thread, and
//!   `concurrency_support(false)` because the WIT is synchronous;
//! - each plugin file is compiled once (cached by content) into an `InstancePre`;
//! - instances are reused: a plugin keeps a small pool of instantiated stores. A call takes one,
//!   sets its epoch deadline and runs; after a trap, deadline or memory failure the instance is
//!   thrown away, and every instance is retired after `MAX_CALLS_PER_INSTANCE` calls. Reuse costs
//!   ~2 µs per call against ~9 µs for a fresh instance (bench/RESULTS.md), so globals in a plugin
//!   are a per-instance cache at best; shared state goes through the `rate-limit` import.

mod host;

use crate::config::{OnError, PluginSpec};
use host::{Limiter, PluginState, Shared};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

pub use host::{FunctionLoad, LiveState};

mod bindings {
    // Exports are called with `call_async`: WASI's stream functions (a guest printing to stderr,
    // e.g. on panic) are async in wasmtime-wasi and must not block inside a tokio worker. Our own
    // host imports are plain synchronous functions.
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        exports: { default: async },
    });
}

/// The guest ABI's types; `pub(crate)` for the fuzz bodies in `crate::fuzzing`.
pub(crate) use bindings::fngate::policy::types as wit;
use bindings::{Policy, PolicyPre};

/// The least time an instantiation gets, whatever the plugin's per-call `timeout`.
const INSTANTIATE_DEADLINE: Duration = Duration::from_millis(250);
/// Epoch ticks are 1 ms; a deadline is rounded up to whole ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Idle instances kept per plugin; more concurrent calls instantiate fresh ones.
const IDLE_INSTANCES_PER_PLUGIN: usize = 16;
/// An instance is retired after this many calls so plugin-side leaks stay bounded.
const MAX_CALLS_PER_INSTANCE: u32 = 10_000;
/// Compiled components kept for reuse across reloads.
const COMPILED_CACHE_ENTRIES: usize = 32;
/// Limits on what a decision may carry; beyond them the decision is refused as invalid.
const MAX_DECISION_HEADERS: usize = 64;
const MAX_DECISION_HEADER_BYTES: usize = 16 * 1024;
const MAX_REJECT_BODY: usize = 64 * 1024;
const MAX_DECISION_STRING: usize = 256;
const MAX_PATH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("plugin `{plugin}`: cannot read {path}: {detail}")]
    Read {
        plugin: String,
        path: String,
        detail: String,
    },
    #[error("plugin `{plugin}`: {path} is not a valid policy component: {detail}")]
    Compile {
        plugin: String,
        path: String,
        detail: String,
    },
    #[error("plugin `{plugin}`: {path} does not fit the fngate:policy world: {detail}")]
    Link {
        plugin: String,
        path: String,
        detail: String,
    },
    #[error("cannot set up the plugin engine: {0}")]
    Engine(String),
}

/// The request as a plugin sees it.
#[derive(Debug, Clone)]
pub struct RequestView {
    pub request_id: String,
    pub method: String,
    pub scheme: String,
    pub authority: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub client_addr: String,
    pub trigger: String,
    pub function: String,
    pub body_prefix: Option<Vec<u8>>,
    pub body_length: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invocation {
    Sync,
    Async,
}

/// Changes a plugin asks for; `None` keeps the current choice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteChange {
    pub function: Option<String>,
    pub invocation: Option<Invocation>,
    pub priority: Option<i32>,
    pub tenant: Option<String>,
    pub set_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove_headers: Vec<http::HeaderName>,
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Proceed(RouteChange),
    Reject {
        status: http::StatusCode,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        body: String,
    },
}

/// A normalised object-storage event as a plugin sees it.
#[derive(Debug, Clone, Default)]
pub struct EventView {
    pub source: String,
    pub event_name: String,
    pub bucket: String,
    pub key: String,
    pub size: Option<u64>,
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub sequencer: Option<String>,
    pub time: Option<String>,
    pub region: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub trigger: String,
    pub function: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventDecision {
    Dispatch {
        function: Option<String>,
        priority: Option<i32>,
        tenant: Option<String>,
    },
    Drop(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Trap,
    Deadline,
    Memory,
    InvalidDecision,
    Instantiate,
}

impl FailureKind {
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Deadline => "deadline",
            FailureKind::Memory => "memory",
            FailureKind::InvalidDecision => "invalid_decision",
            FailureKind::Instantiate => "instantiate",
        }
    }
}

/// A plugin call that produced no usable decision.
#[derive(Debug, Clone)]
pub struct PluginFailure {
    pub plugin: String,
    pub kind: FailureKind,
    pub detail: String,
    pub on_error: OnError,
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plugin `{}` failed ({}): {}",
            self.plugin,
            self.kind.label(),
            self.detail
        )
    }
}

/// Owns the engine, the linker and the compiled-component cache; one per process.
pub struct PolicyHost {
    engine: Engine,
    linker: Linker<PluginState>,
    components: Mutex<HashMap<u64, Component>>,
    plugins: Mutex<HashMap<(u64, PluginSpec), Weak<Plugin>>>,
    shared: Mutex<HashMap<String, Arc<Shared>>>,
    ticker: Arc<Ticker>,
}

impl PolicyHost {
    pub fn new() -> Result<Arc<Self>, PolicyError> {
        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .concurrency_support(false)
            .memory_init_cow(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(512)
            .total_core_instances(2048)
            .total_memories(512)
            .total_tables(1024)
            // A call runs to completion on one worker thread (deadlines trap, they never yield), so
            // concurrent stacks are bounded by the worker count; fewer reserved stacks also keep
            // the gateway cheap to fork when it spawns an instance.
            .total_stacks(64)
            // Calls run on pooled fiber stacks; keeping their hot top resident avoids page faults
            // on every call.
            .async_stack_keep_resident(256 << 10)
            .max_memory_size(crate::config::MAX_PLUGIN_MEMORY as usize)
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = match Engine::new(&cfg) {
            Ok(e) => e,
            // The pool reserves its address space up front (terabytes of it, not memory); where
            // that is refused (a `ulimit -v`, a strict overcommit policy, valgrind) plugins still
            // run, with memories allocated per instance: slower to instantiate, same limits.
            Err(pooled) => {
                cfg.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                let engine =
                    Engine::new(&cfg).map_err(|e| PolicyError::Engine(format!("{e:#}")))?;
                tracing::warn!(
                    "plugin instances are allocated on demand: the pooling allocator cannot reserve its address space ({pooled:#})"
                );
                engine
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PolicyError::Engine(format!("{e:#}")))?;
        Policy::add_to_linker::<_, wasmtime::component::HasSelf<PluginState>>(&mut linker, |s| s)
            .map_err(|e| PolicyError::Engine(format!("{e:#}")))?;
        let ticker = Ticker::spawn(&engine);
        Ok(Arc::new(PolicyHost {
            engine,
            linker,
            components: Mutex::new(HashMap::new()),
            plugins: Mutex::new(HashMap::new()),
            shared: Mutex::new(HashMap::new()),
            ticker,
        }))
    }

    /// Loads (or reuses) a plugin: the file is compiled once per content, the plugin object is
    /// reused while its file and settings are unchanged, so reloads keep warm instance pools.
    /// One instance is created and called with nothing to check that the component links.
    pub fn load(&self, spec: &PluginSpec) -> Result<Arc<Plugin>, PolicyError> {
        let path = spec.path.display().to_string();
        let bytes = std::fs::read(&spec.path).map_err(|e| PolicyError::Read {
            plugin: spec.name.clone(),
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        let key = h.finish();
        // Each lookup takes and releases its lock before anything else locks again.
        let reusable = lock(&self.plugins)
            .get(&(key, spec.clone()))
            .and_then(Weak::upgrade);
        if let Some(p) = reusable {
            return Ok(p);
        }
        let cached = lock(&self.components).get(&key).cloned();
        let component = match cached {
            Some(c) => c,
            None => {
                let c = Component::new(&self.engine, &bytes).map_err(|e| PolicyError::Compile {
                    plugin: spec.name.clone(),
                    path: path.clone(),
                    detail: format!("{e:#}"),
                })?;
                let mut cache = lock(&self.components);
                // Every swapped-in file version stays compiled until the cache fills up; then
                // start over (live plugins hold their own `InstancePre`).
                if cache.len() >= COMPILED_CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(key, c.clone());
                c
            }
        };
        let link_err = |e: wasmtime::Error| PolicyError::Link {
            plugin: spec.name.clone(),
            path: path.clone(),
            detail: format!("{e:#}"),
        };
        let pre = self.linker.instantiate_pre(&component).map_err(link_err)?;
        let pre = PolicyPre::new(pre).map_err(link_err)?;
        // Rate-limit buckets and metric names belong to the plugin name, so they survive swaps.
        let shared = lock(&self.shared)
            .entry(spec.name.clone())
            .or_insert_with(|| Arc::new(Shared::new(&spec.name)))
            .clone();
        let plugin = Arc::new(Plugin {
            spec: spec.clone(),
            engine: self.engine.clone(),
            ticker: self.ticker.clone(),
            pre,
            idle: Mutex::new(Vec::new()),
            shared,
            config: Arc::new(spec.config.clone().into_iter().collect()),
            metrics: PluginMetrics::new(&spec.name),
        });
        // Instantiate once now so a component that cannot start is refused at load, not per request.
        // Loading happens on config (re)load, possibly inside the async runtime: run the async
        // instantiation on a scoped thread with its own small runtime.
        let checked = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match rt {
                        Ok(rt) => rt.block_on(plugin.instantiate(None)).map_err(|f| f.detail),
                        Err(e) => Err(e.to_string()),
                    }
                })
                .join()
                .unwrap_or_else(|_| Err("instantiation panicked".into()))
        });
        let inst = checked.map_err(|detail| PolicyError::Link {
            plugin: spec.name.clone(),
            path,
            detail,
        })?;
        plugin.give_back(inst);
        let mut cache = lock(&self.plugins);
        cache.retain(|_, w| w.strong_count() > 0);
        cache.insert((key, spec.clone()), Arc::downgrade(&plugin));
        Ok(plugin)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One thread per engine advances the epoch every millisecond while plugins are being called, and
/// sleeps when none has been called for `TICKER_IDLE_AFTER`, so a gateway without plugin traffic
/// is not woken 1,000 times a second. It stops when the engine is gone.
struct Ticker {
    start: Instant,
    /// Milliseconds since `start` of the latest call.
    last_call_ms: AtomicU64,
    sleeping: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

const TICKER_IDLE_AFTER: Duration = Duration::from_secs(1);

impl Ticker {
    fn spawn(engine: &Engine) -> Arc<Ticker> {
        let t = Arc::new(Ticker {
            start: Instant::now(),
            last_call_ms: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let weak = engine.weak();
        let ticker = t.clone();
        std::thread::Builder::new()
            .name("fngate-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    if ticker.idle() {
                        // Announce the sleep before re-checking, and re-check under the lock that
                        // `touch` takes to notify: a call that starts meanwhile either sees
                        // `sleeping` and wakes us, or we see its timestamp and keep ticking.
                        let guard = lock(&ticker.lock);
                        ticker.sleeping.store(true, Ordering::SeqCst);
                        if ticker.idle() {
                            let _ = ticker.wake.wait_timeout(guard, TICKER_IDLE_AFTER);
                        }
                        ticker.sleeping.store(false, Ordering::SeqCst);
                    } else {
                        std::thread::sleep(EPOCH_TICK);
                    }
                }
            })
            .expect("spawn epoch ticker thread");
        t
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn idle(&self) -> bool {
        self.now_ms()
            .saturating_sub(self.last_call_ms.load(Ordering::SeqCst))
            > TICKER_IDLE_AFTER.as_millis() as u64
    }

    /// Called as a plugin call starts: keeps the ticker ticking, waking it if it sleeps.
    fn touch(&self) {
        self.last_call_ms.store(self.now_ms(), Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let _g = lock(&self.lock);
            self.wake.notify_one();
        }
    }
}

struct Instance {
    store: Store<PluginState>,
    policy: Policy,
    calls: u32,
}

/// A loaded plugin version with its pool of ready instances.
pub struct Plugin {
    pub spec: PluginSpec,
    engine: Engine,
    ticker: Arc<Ticker>,
    pre: PolicyPre<PluginState>,
    idle: Mutex<Vec<Instance>>,
    shared: Arc<Shared>,
    config: Arc<Vec<(String, String)>>,
    metrics: PluginMetrics,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.spec.name)
            .finish()
    }
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    async fn instantiate(
        &self,
        live: Option<Arc<dyn LiveState>>,
    ) -> Result<Instance, PluginFailure> {
        // Instantiation runs guest code (start functions) under a deadline too, at least
        // INSTANTIATE_DEADLINE: epoch ticks count wall time, and a first instantiation on a
        // loaded machine (a thread descheduled for a few ms) must not fail a healthy plugin.
        self.ticker.touch();
        let state = PluginState::new(
            self.shared.clone(),
            self.config.clone(),
            Limiter::new(self.spec.memory as usize),
            self.spec.wall_clock,
            live,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(deadline_ticks(self.spec.timeout.max(INSTANTIATE_DEADLINE)));
        let policy = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.failure(&store, e, FailureKind::Instantiate))?;
        Ok(Instance {
            store,
            policy,
            calls: 0,
        })
    }

    async fn take(&self, live: &Arc<dyn LiveState>) -> Result<Instance, PluginFailure> {
        self.ticker.touch();
        let pooled = lock(&self.idle).pop();
        let mut inst = match pooled {
            Some(i) => i,
            None => self.instantiate(Some(live.clone())).await?,
        };
        inst.store.data_mut().begin_call(live.clone());
        inst.store
            .set_epoch_deadline(deadline_ticks(self.spec.timeout));
        Ok(inst)
    }

    fn give_back(&self, mut inst: Instance) {
        inst.calls += 1;
        inst.store.data_mut().end_call();
        if inst.calls >= MAX_CALLS_PER_INSTANCE {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < IDLE_INSTANCES_PER_PLUGIN {
            idle.push(inst);
        }
    }

    fn failure(
        &self,
        store: &Store<PluginState>,
        e: wasmtime::Error,
        default: FailureKind,
    ) -> PluginFailure {
        let kind = if store.data().limiter.denied() {
            FailureKind::Memory
        } else {
            match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => FailureKind::Deadline,
                Some(_) => FailureKind::Trap,
                None => default,
            }
        };
        let detail = match kind {
            FailureKind::Deadline => format!(
                "exceeded its deadline of {} ms",
                self.spec.timeout.as_secs_f64() * 1e3
            ),
            FailureKind::Memory => format!("exceeded its memory cap of {} bytes", self.spec.memory),
            _ => {
                let mut s = format!("{e:#}");
                cut_at_char(&mut s, 512);
                s
            }
        };
        self.fail(kind, detail)
    }

    fn fail(&self, kind: FailureKind, detail: String) -> PluginFailure {
        self.metrics.failed(kind);
        PluginFailure {
            plugin: self.spec.name.clone(),
            kind,
            detail,
            on_error: self.spec.on_error,
        }
    }

    /// Runs `on-request`. `live` answers the plugin's function-state questions.
    pub async fn on_request(
        &self,
        req: &WitRequest,
        live: &Arc<dyn LiveState>,
    ) -> Result<Decision, PluginFailure> {
        let start = Instant::now();
        let mut inst = self.take(live).await?;
        let out = inst.policy.call_on_request(&mut inst.store, &req.0).await;
        let result = match out {
            Ok(d) => {
                self.give_back(inst);
                convert_decision(d).map_err(|m| self.fail(FailureKind::InvalidDecision, m))
            }
            // The instance may be in any state after a failure: drop it.
            Err(e) => Err(self.failure(&inst.store, e, FailureKind::Trap)),
        };
        self.metrics.called(start.elapsed(), result.is_ok());
        result
    }

    /// Runs `on-request` on a fresh instance that is dropped afterwards: what every call would
    /// cost without instance reuse. For the benchmark in `gateway/examples/plugin_cost.rs`.
    #[doc(hidden)]
    pub async fn on_request_fresh(
        &self,
        req: &WitRequest,
        live: &Arc<dyn LiveState>,
    ) -> Result<Decision, PluginFailure> {
        let mut inst = self.instantiate(Some(live.clone())).await?;
        let out = inst.policy.call_on_request(&mut inst.store, &req.0).await;
        match out {
            Ok(d) => convert_decision(d).map_err(|m| self.fail(FailureKind::InvalidDecision, m)),
            Err(e) => Err(self.failure(&inst.store, e, FailureKind::Trap)),
        }
    }

    /// Runs `on-event`.
    pub async fn on_event(
        &self,
        ev: &EventView,
        live: &Arc<dyn LiveState>,
    ) -> Result<EventDecision, PluginFailure> {
        let start = Instant::now();
        let wev = wit::ObjectEvent {
            source: ev.source.clone(),
            event_name: ev.event_name.clone(),
            bucket: ev.bucket.clone(),
            key: ev.key.clone(),
            size: ev.size,
            etag: ev.etag.clone(),
            version_id: ev.version_id.clone(),
            sequencer: ev.sequencer.clone(),
            time: ev.time.clone(),
            region: ev.region.clone(),
            metadata: ev.metadata.clone(),
            trigger: ev.trigger.clone(),
            function: ev.function.clone(),
        };
        let mut inst = self.take(live).await?;
        let out = inst.policy.call_on_event(&mut inst.store, &wev).await;
        let result = match out {
            Ok(d) => {
                self.give_back(inst);
                convert_event_decision(d).map_err(|m| self.fail(FailureKind::InvalidDecision, m))
            }
            Err(e) => Err(self.failure(&inst.store, e, FailureKind::Trap)),
        };
        self.metrics.called(start.elapsed(), result.is_ok());
        result
    }
}

fn deadline_ticks(timeout: Duration) -> u64 {
    // +1: the current tick may be about to end.
    (timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64).max(1) + 1
}

/// The request in the plugin ABI's shape, built once per request and shared by a chain.
pub struct WitRequest(wit::Request);

impl WitRequest {
    pub fn new(v: RequestView) -> Self {
        WitRequest(wit::Request {
            request_id: v.request_id,
            method: v.method,
            scheme: v.scheme,
            authority: v.authority,
            path: v.path,
            query: v.query,
            headers: v.headers,
            client_addr: v.client_addr,
            trigger: v.trigger,
            function: v.function,
            body_prefix: v.body_prefix,
            body_length: v.body_length,
        })
    }

    /// After a plugin changed the route, later plugins in the chain see the new function and path.
    pub fn apply(&mut self, change: &RouteChange) {
        if let Some(f) = &change.function {
            self.0.function = f.clone();
        }
        if let Some(p) = &change.path {
            self.0.path = p.clone();
        }
        for name in &change.remove_headers {
            self.0
                .headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_str()));
        }
        for (name, value) in &change.set_headers {
            self.0
                .headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_str()));
            self.0.headers.push((
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
    }
}

fn check_opt_len(what: &str, v: &Option<String>, max: usize) -> Result<(), String> {
    match v {
        Some(s) if s.len() > max => Err(format!("{what} is {} bytes; the limit is {max}", s.len())),
        _ => Ok(()),
    }
}

fn convert_headers(
    hs: Vec<(String, String)>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    if hs.len() > MAX_DECISION_HEADERS {
        return Err(format!(
            "{} headers; the limit is {MAX_DECISION_HEADERS}",
            hs.len()
        ));
    }
    let total: usize = hs.iter().map(|(n, v)| n.len() + v.len()).sum();
    if total > MAX_DECISION_HEADER_BYTES {
        return Err(format!(
            "{total} bytes of headers; the limit is {MAX_DECISION_HEADER_BYTES}"
        ));
    }
    hs.into_iter()
        .map(|(n, v)| {
            let name = http::HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("`{}` is not a header name", truncate(&n)))?;
            if crate::backend::is_hop_by_hop_or_framing(&name) {
                return Err(format!(
                    "`{name}` is a hop-by-hop or framing header, which only fngate sets"
                ));
            }
            let value = http::HeaderValue::from_str(&v).map_err(|_| {
                format!(
                    "the value of `{}` is not a valid header value",
                    truncate(&n)
                )
            })?;
            Ok((name, value))
        })
        .collect()
}

pub(crate) fn convert_decision(d: wit::Decision) -> Result<Decision, String> {
    match d {
        wit::Decision::Proceed(r) => {
            check_opt_len("function", &r.function, MAX_DECISION_STRING)?;
            check_opt_len("tenant", &r.tenant, MAX_DECISION_STRING)?;
            if let Some(p) = &r.path
                && (!p.starts_with('/')
                    || p.len() > MAX_PATH
                    || p.contains('?')
                    || p.parse::<http::uri::PathAndQuery>().is_err())
            {
                return Err(format!(
                    "path rewrite `{}` must be a path starting with `/` (no query)",
                    truncate(p)
                ));
            }
            if r.remove_headers.len() > MAX_DECISION_HEADERS {
                return Err(format!(
                    "{} headers to remove; the limit is {MAX_DECISION_HEADERS}",
                    r.remove_headers.len()
                ));
            }
            let remove_headers = r
                .remove_headers
                .iter()
                .map(|n| {
                    http::HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| format!("`{}` is not a header name", truncate(n)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Decision::Proceed(RouteChange {
                function: r.function,
                invocation: r.invocation.map(|i| match i {
                    wit::InvocationType::Sync => Invocation::Sync,
                    wit::InvocationType::Async => Invocation::Async,
                }),
                priority: r.priority,
                tenant: r.tenant,
                set_headers: convert_headers(r.set_headers)?,
                remove_headers,
                path: r.path,
            }))
        }
        wit::Decision::Reject(rej) => {
            let status = http::StatusCode::from_u16(rej.status)
                .ok()
                .filter(|s| (400..=599).contains(&s.as_u16()))
                .ok_or_else(|| format!("reject status {} is not in 400..=599", rej.status))?;
            if rej.body.len() > MAX_REJECT_BODY {
                return Err(format!(
                    "reject body is {} bytes; the limit is {MAX_REJECT_BODY}",
                    rej.body.len()
                ));
            }
            Ok(Decision::Reject {
                status,
                headers: convert_headers(rej.headers)?,
                body: rej.body,
            })
        }
    }
}

pub(crate) fn convert_event_decision(d: wit::EventDecision) -> Result<EventDecision, String> {
    match d {
        wit::EventDecision::Dispatch(r) => {
            check_opt_len("function", &r.function, MAX_DECISION_STRING)?;
            check_opt_len("tenant", &r.tenant, MAX_DECISION_STRING)?;
            Ok(EventDecision::Dispatch {
                function: r.function,
                priority: r.priority,
                tenant: r.tenant,
            })
        }
        wit::EventDecision::Drop(mut why) => {
            cut_at_char(&mut why, MAX_DECISION_STRING);
            Ok(EventDecision::Drop(why))
        }
    }
}

/// Shortens `s` to at most `max` bytes without splitting a character (guest strings are UTF-8
/// of any shape: `String::truncate` in the middle of a character panics).
pub(crate) fn cut_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Per-plugin metric handles, registered once.
struct PluginMetrics {
    ok: metrics::Counter,
    failed: [metrics::Counter; 5],
    duration: metrics::Histogram,
}

impl PluginMetrics {
    fn new(plugin: &str) -> Self {
        let p = plugin.to_string();
        let kinds = [
            FailureKind::Trap,
            FailureKind::Deadline,
            FailureKind::Memory,
            FailureKind::InvalidDecision,
            FailureKind::Instantiate,
        ];
        PluginMetrics {
            ok: metrics::counter!(crate::telemetry::PLUGIN_CALLS, "plugin" => p.clone(), "result" => "ok"),
            failed: kinds.map(|k| {
                metrics::counter!(crate::telemetry::PLUGIN_FAILURES, "plugin" => p.clone(), "kind" => k.label())
            }),
            duration: metrics::histogram!(crate::telemetry::PLUGIN_CALL_DURATION, "plugin" => p.clone()),
        }
    }

    fn called(&self, took: Duration, ok: bool) {
        if ok {
            self.ok.increment(1);
        }
        self.duration.record(took.as_secs_f64());
    }

    fn failed(&self, kind: FailureKind) {
        self.failed[kind as usize].increment(1);
    }
}

#[cfg(test)]
mod tests;
