//! What the gateway offers plugins (the WIT `host` interface) and the sandbox each store runs in.

use super::bindings::fngate::policy::{host, types};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

const MAX_METRIC_NAMES: usize = 32;
const MAX_RATE_KEYS: usize = 10_000;
const MAX_LOG_MESSAGE: usize = 1024;
const MAX_LOG_LINES_PER_SECOND: u32 = 100;

/// Live load of a function, for plugins that route by load.
#[derive(Debug, Clone, Copy, Default)]
pub struct FunctionLoad {
    pub provisioned_instances: u32,
    pub on_demand_instances: u32,
    pub busy_slots: u32,
    pub total_slots: u32,
    pub queue_depth: u32,
    pub cold_starts_in_progress: u32,
}

/// Read-only view of the gateway's functions, provided per call.
pub trait LiveState: Send + Sync {
    fn function_load(&self, function: &str) -> Option<FunctionLoad>;
}

/// Refuses memory growth past the plugin's cap and remembers that it did, so the failure that
/// follows is reported as a memory failure rather than a generic trap.
pub struct Limiter {
    max: usize,
    denied: bool,
}

impl Limiter {
    pub fn new(max: usize) -> Self {
        Limiter { max, denied: false }
    }

    pub fn denied(&self) -> bool {
        self.denied
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// State that belongs to a plugin name and outlives its versions: rate buckets, metric names.
pub struct Shared {
    name: String,
    buckets: Mutex<HashMap<String, Bucket>>,
    counters: Mutex<HashMap<String, metrics::Counter>>,
    histograms: Mutex<HashMap<String, metrics::Histogram>>,
    log_window: Mutex<(Instant, u32)>,
    epoch: Instant,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Shared {
    pub fn new(name: &str) -> Self {
        Shared {
            name: name.to_string(),
            buckets: Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
            histograms: Mutex::new(HashMap::new()),
            log_window: Mutex::new((Instant::now(), 0)),
            epoch: Instant::now(),
        }
    }

    fn names_used(&self) -> usize {
        super::lock(&self.counters).len() + super::lock(&self.histograms).len()
    }

    fn rate_limit(&self, key: String, per_second: f64, burst: u32) -> bool {
        let now = Instant::now();
        let burst = f64::from(burst.max(1));
        let per_second = if per_second.is_finite() {
            per_second.max(0.0)
        } else {
            0.0
        };
        let mut b = super::lock(&self.buckets);
        if !b.contains_key(&key) && b.len() >= MAX_RATE_KEYS {
            // Evict the least recently used bucket; O(n) but only when the map is full.
            if let Some(oldest) = b.iter().min_by_key(|(_, v)| v.last).map(|(k, _)| k.clone()) {
                b.remove(&oldest);
            }
        }
        let bucket = b.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn log_allowed(&self) -> bool {
        let mut w = super::lock(&self.log_window);
        if w.0.elapsed().as_secs() >= 1 {
            *w = (Instant::now(), 0);
        }
        w.1 += 1;
        w.1 <= MAX_LOG_LINES_PER_SECOND
    }
}

/// A clock that always reads the epoch: plugins get no wall clock unless granted.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// The data of one plugin store.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: Limiter,
    shared: Arc<Shared>,
    config: Arc<Vec<(String, String)>>,
    /// Set for the duration of a call; `None` between calls so an idle instance does not keep an
    /// old config generation alive.
    live: Option<Arc<dyn LiveState>>,
}

impl PluginState {
    pub fn new(
        shared: Arc<Shared>,
        config: Arc<Vec<(String, String)>>,
        limiter: Limiter,
        wall_clock: bool,
        live: Option<Arc<dyn LiveState>>,
    ) -> Self {
        // No preopened directories, no environment, no arguments, no sockets, no name lookups;
        // stdout/stderr go nowhere (plugins log through the host import).
        let mut b = wasmtime_wasi::WasiCtxBuilder::new();
        b.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        b.socket_addr_check(|_, _| Box::pin(async { false }));
        if !wall_clock {
            b.wall_clock(FrozenClock);
        }
        PluginState {
            wasi: b.build(),
            table: ResourceTable::new(),
            limiter,
            shared,
            config,
            live,
        }
    }

    pub fn begin_call(&mut self, live: Arc<dyn LiveState>) {
        self.live = Some(live);
    }

    pub fn end_call(&mut self) {
        self.live = None;
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for PluginState {}

impl host::Host for PluginState {
    fn log(&mut self, level: host::Level, message: String) {
        if !self.shared.log_allowed() {
            metrics::counter!(crate::telemetry::PLUGIN_LOG_SAMPLED, "plugin" => self.shared.name.clone()).increment(1);
            return;
        }
        let mut msg = message;
        super::cut_at_char(&mut msg, MAX_LOG_MESSAGE);
        let plugin = self.shared.name.as_str();
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{msg}"),
            host::Level::Debug => tracing::debug!(plugin, "{msg}"),
            host::Level::Info => tracing::info!(plugin, "{msg}"),
            host::Level::Warn => tracing::warn!(plugin, "{msg}"),
            host::Level::Error => tracing::error!(plugin, "{msg}"),
        }
    }

    fn config_get(&mut self, key: String) -> Option<String> {
        self.config
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }

    fn config_entries(&mut self) -> Vec<(String, String)> {
        self.config.as_ref().clone()
    }

    fn monotonic_now(&mut self) -> u64 {
        self.shared.epoch.elapsed().as_nanos() as u64
    }

    fn counter_add(&mut self, name: String, value: u64) {
        let s = &self.shared;
        let existing = super::lock(&s.counters).get(&name).cloned();
        let counter = match existing {
            Some(c) => c,
            None if s.names_used() < MAX_METRIC_NAMES && name.len() <= 64 => {
                let c = metrics::counter!(crate::telemetry::PLUGIN_COUNTER, "plugin" => s.name.clone(), "name" => name.clone());
                super::lock(&s.counters).insert(name, c.clone());
                c
            }
            None => return,
        };
        counter.increment(value);
    }

    fn histogram_record(&mut self, name: String, value: f64) {
        let s = &self.shared;
        let existing = super::lock(&s.histograms).get(&name).cloned();
        let h = match existing {
            Some(h) => h,
            None if s.names_used() < MAX_METRIC_NAMES && name.len() <= 64 => {
                let h = metrics::histogram!(crate::telemetry::PLUGIN_HISTOGRAM, "plugin" => s.name.clone(), "name" => name.clone());
                super::lock(&s.histograms).insert(name, h.clone());
                h
            }
            None => return,
        };
        h.record(value);
    }

    fn rate_limit(&mut self, key: String, per_second: f64, burst: u32) -> bool {
        if key.len() > 256 {
            return false;
        }
        self.shared.rate_limit(key, per_second, burst)
    }

    fn function_state(&mut self, function: String) -> Option<host::FunctionLoad> {
        self.live
            .as_ref()?
            .function_load(&function)
            .map(|l| host::FunctionLoad {
                provisioned_instances: l.provisioned_instances,
                on_demand_instances: l.on_demand_instances,
                busy_slots: l.busy_slots,
                total_slots: l.total_slots,
                queue_depth: l.queue_depth,
                cold_starts_in_progress: l.cold_starts_in_progress,
            })
    }
}
