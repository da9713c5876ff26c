//! Usage metering: what each invocation held while it ran (instance time × the instance's spec),
//! aggregated in memory into hourly buckets per (service, function, tenant, GPU type), flushed to
//! a SQLite file in `data_dir` by a background task, and counted in metrics.
//!
//! Fair sharing (docs/metering.md has a worked example): each instance keeps a [`ShareClock`], the
//! busy time one in-flight request has been charged since the instance existed. Between two events
//! on the instance (a request starting or finishing) the elapsed time is split equally among the
//! requests in flight, so the clock advances by `elapsed / in_flight`. A request notes the clock
//! when it starts; its share is the clock at its end minus that mark. O(1) per event, and the
//! shares of an instance always add up to the time it had at least one request.
//!
//! Billing: on-demand instances (and static endpoints, which fngate neither starts nor stops) are
//! billed for request time only; fngate-started provisioned instances for their whole lifetime
//! (from ready to gone), under the tenant [`RESERVED_TENANT`]. Invocations on a provisioned
//! instance still count invocations and busy seconds for their tenant, with no resource-seconds
//! (the reservation pays for those).
//!
//! Nothing here runs on the request path but a short map update under a mutex; the store is
//! written from a background task every [`FLUSH_INTERVAL`] and at graceful shutdown.

pub mod store;

use crate::config::FunctionSpec;
use crate::scheduler::gpu::GpuShare;
use metrics::Counter;
use serde::Serialize;
use std::collections::HashMap;

/// Maps looked up on every invocation by a tenant key: foldhash (keyed per process, a few
/// instructions for a short key) instead of SipHash. Their keys are capped in number
/// (`MAX_PENDING_BUCKETS`, `MAX_TENANT_LABELS`), so a crafted set of colliding keys stays cheap.
type TenantMap<V> = HashMap<String, V, foldhash::fast::RandomState>;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use store::{Group, Store, StoreError, UsageRow};

/// How often the in-memory totals are written to `data_dir/usage.sqlite3`: what a SIGKILL can
/// lose at most.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// Tenant of the usage of provisioned (reserved) instances, billed for their lifetime.
pub const RESERVED_TENANT: &str = "(reserved)";
/// Distinct tenants that get their own metric label; the rest are counted as [`OTHER_TENANT`].
pub const MAX_TENANT_LABELS: usize = 64;
/// Buckets held in memory between flushes; new tenants beyond it fold into [`OTHER_TENANT`].
pub const MAX_PENDING_BUCKETS: usize = 10_000;
/// Longest tenant key kept; longer keys are cut (at a character boundary).
pub const MAX_TENANT_LEN: usize = 128;
pub const OTHER_TENANT: &str = "other";

/// The busy time one in-flight request on an instance has been charged so far.
#[derive(Debug)]
pub struct ShareClock {
    in_flight: u32,
    last: Instant,
    per_request_s: f64,
    /// Since when an existing provisioned instance's lifetime is not yet metered.
    reserved_mark: Option<Instant>,
}

impl ShareClock {
    pub fn new(now: Instant) -> ShareClock {
        ShareClock {
            in_flight: 0,
            last: now,
            per_request_s: 0.0,
            reserved_mark: None,
        }
    }

    fn advance(&mut self, now: Instant) {
        let now = now.max(self.last);
        if self.in_flight > 0 {
            self.per_request_s +=
                now.duration_since(self.last).as_secs_f64() / f64::from(self.in_flight);
        }
        self.last = now;
    }

    /// A request starts: returns its mark.
    pub fn start(&mut self, now: Instant) -> f64 {
        self.advance(now);
        self.in_flight += 1;
        self.per_request_s
    }

    /// A request that started at `mark` finishes: returns its share of busy time in seconds.
    pub fn finish(&mut self, now: Instant, mark: f64) -> f64 {
        self.advance(now);
        self.in_flight = self.in_flight.saturating_sub(1);
        (self.per_request_s - mark).max(0.0)
    }

    /// Provisioned lifetime not yet metered, up to `now`; `reserved` says whether the instance
    /// counts as reserved now (from here on).
    pub fn reserved_since_last(&mut self, now: Instant, reserved: bool) -> Option<Duration> {
        let prev = self.reserved_mark.take();
        if reserved {
            self.reserved_mark = Some(now);
        }
        prev.map(|p| now.saturating_duration_since(p))
    }
}

/// How an invocation's resource-seconds are billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Billing {
    /// On-demand instance or static endpoint: the request's share of busy time is billed.
    Request,
    /// Provisioned instance: its lifetime is billed (tenant `(reserved)`), not the request.
    Reserved,
}

impl Billing {
    pub fn as_str(self) -> &'static str {
        match self {
            Billing::Request => "request",
            Billing::Reserved => "reserved",
        }
    }
}

/// What one invocation held: its share of the instance's busy time × the instance's spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    #[serde(serialize_with = "ns")]
    pub busy_s: f64,
    #[serde(serialize_with = "ns")]
    pub vcpu_s: f64,
    #[serde(serialize_with = "ns")]
    pub memory_gb_s: f64,
    #[serde(serialize_with = "ns")]
    pub gpu_gb_s: f64,
    #[serde(serialize_with = "opt_str", skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<Arc<str>>,
    pub billing: Billing,
}

/// A resource-seconds figure at nanosecond resolution: `0.000197209`, not the float's 17 digits.
pub fn round_ns(v: f64) -> f64 {
    (v * 1e9).round() / 1e9
}

fn ns<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round_ns(*v))
}

fn opt_str<S: serde::Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&v.as_deref(), s)
}

impl Usage {
    pub fn new(
        spec: &FunctionSpec,
        gpu: Option<&GpuShare>,
        seconds: f64,
        billing: Billing,
    ) -> Self {
        Usage {
            busy_s: seconds,
            vcpu_s: spec.cpu * seconds,
            memory_gb_s: spec.memory as f64 / GIB * seconds,
            gpu_gb_s: gpu.map_or(0.0, |g| f64::from(g.memory_gb) * seconds),
            gpu_type: gpu.map(|g| g.gpu_type.clone()),
            billing,
        }
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// Bucket key: (hour start in unix seconds, service, function, tenant, GPU type or "").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub hour: i64,
    pub service: String,
    pub function: String,
    pub tenant: String,
    pub gpu_type: String,
}

/// Sums for one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Totals {
    pub invocations: u64,
    pub busy_s: f64,
    pub vcpu_s: f64,
    pub memory_gb_s: f64,
    pub gpu_gb_s: f64,
    /// Provisioned instance-seconds (rows of the `(reserved)` tenant only).
    pub reserved_s: f64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.invocations += o.invocations;
        self.busy_s += o.busy_s;
        self.vcpu_s += o.vcpu_s;
        self.memory_gb_s += o.memory_gb_s;
        self.gpu_gb_s += o.gpu_gb_s;
        self.reserved_s += o.reserved_s;
    }
}

#[derive(Debug, Clone)]
struct Handles {
    invocations: Counter,
    busy: Counter,
    vcpu: Counter,
    memory: Counter,
    gpu: Counter,
}

/// Buckets of one hour and GPU type, by tenant.
#[derive(Debug)]
struct HourBuckets {
    hour: i64,
    gpu_type: Option<Arc<str>>,
    tenants: TenantMap<Totals>,
}

#[derive(Debug, Default)]
struct FnInner {
    /// Not yet flushed; a handful of entries (the current hour, per GPU type).
    pending: Vec<HourBuckets>,
    pending_keys: usize,
    folded: u64,
    /// Metric handles by tenant key; a tenant past the label cap maps to the `other` handles.
    handles: TenantMap<Handles>,
}

/// The usage of one function not yet flushed, and its metric handles; one per function runtime,
/// so that metering takes the function's own short lock, not a process-wide one, and allocates
/// nothing for a tenant and hour it has seen.
#[derive(Debug)]
pub struct FunctionMeter {
    service: String,
    function: String,
    id: String,
    meter: Arc<Meter>,
    inner: Mutex<FnInner>,
}

impl FunctionMeter {
    fn lock(&self) -> MutexGuard<'_, FnInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One finished invocation.
    pub fn invocation(&self, tenant: Option<&str>, usage: &Usage) {
        let billed = usage.billing == Billing::Request;
        let t = Totals {
            invocations: 1,
            busy_s: usage.busy_s,
            vcpu_s: if billed { usage.vcpu_s } else { 0.0 },
            memory_gb_s: if billed { usage.memory_gb_s } else { 0.0 },
            gpu_gb_s: if billed { usage.gpu_gb_s } else { 0.0 },
            reserved_s: 0.0,
        };
        self.add(tenant.unwrap_or(""), usage.gpu_type.as_ref(), t);
    }

    /// Lifetime of a provisioned instance, `seconds` more of it.
    pub fn reserved(&self, spec: &FunctionSpec, gpu: Option<&GpuShare>, seconds: f64) {
        if seconds <= 0.0 {
            return;
        }
        let u = Usage::new(spec, gpu, seconds, Billing::Reserved);
        let t = Totals {
            invocations: 0,
            busy_s: 0.0,
            vcpu_s: u.vcpu_s,
            memory_gb_s: u.memory_gb_s,
            gpu_gb_s: u.gpu_gb_s,
            reserved_s: seconds,
        };
        self.add(RESERVED_TENANT, u.gpu_type.as_ref(), t);
    }

    fn add(&self, tenant: &str, gpu_type: Option<&Arc<str>>, t: Totals) {
        let hour = hour_of(crate::scheduler::unix_now() as i64);
        let tenant = truncate(tenant, MAX_TENANT_LEN);
        let mut g = self.lock();
        let g = &mut *g;
        let idx = match g
            .pending
            .iter()
            .position(|b| b.hour == hour && b.gpu_type.as_deref() == gpu_type.map(|a| &**a))
        {
            Some(i) => i,
            None => {
                g.pending.push(HourBuckets {
                    hour,
                    gpu_type: gpu_type.cloned(),
                    tenants: TenantMap::default(),
                });
                g.pending.len() - 1
            }
        };
        let tenants = &mut g.pending[idx].tenants;
        match tenants.get_mut(tenant) {
            Some(sum) => sum.add(&t),
            None => {
                let key = if g.pending_keys >= MAX_PENDING_BUCKETS {
                    g.folded += 1;
                    OTHER_TENANT
                } else {
                    g.pending_keys += 1;
                    tenant
                };
                tenants.entry(key.to_string()).or_default().add(&t);
            }
        }
        let h = match g.handles.get(tenant) {
            // A tenant seen before: one lookup.
            Some(h) => h,
            None => {
                let (own, h) = self.handles_for(tenant, &g.handles);
                if own || g.handles.len() < 2 * MAX_TENANT_LABELS {
                    g.handles.insert(tenant.to_string(), h.clone());
                }
                if !own {
                    // Tenants past the cap share `other`'s handles (looked up by that name once
                    // the map stops remembering them one by one).
                    g.handles.entry(OTHER_TENANT.to_string()).or_insert(h);
                }
                g.handles
                    .get(tenant)
                    .or_else(|| g.handles.get(OTHER_TENANT))
                    .expect("inserted above")
            }
        };
        // Counters are integers: resource-seconds are counted in milliseconds.
        h.invocations.increment(t.invocations);
        h.busy.increment(milli(t.busy_s));
        h.vcpu.increment(milli(t.vcpu_s));
        h.memory.increment(milli(t.memory_gb_s));
        h.gpu.increment(milli(t.gpu_gb_s));
    }

    /// Handles for a tenant first seen here: its own label while the process-wide cap allows
    /// (true), else `other`'s.
    fn handles_for(&self, tenant: &str, known: &TenantMap<Handles>) -> (bool, Handles) {
        let label = {
            let mut labels = self.meter.labels.lock().unwrap_or_else(|e| e.into_inner());
            if labels.contains(tenant) || labels.len() < MAX_TENANT_LABELS {
                labels.insert(tenant.to_string());
                tenant
            } else {
                OTHER_TENANT
            }
        };
        let own = label == tenant;
        if let Some(h) = known.get(label) {
            return (own, h.clone());
        }
        let l = |name: &'static str| metrics::counter!(name, "service" => self.service.clone(), "function" => self.id.clone(), "tenant" => label.to_string());
        use crate::telemetry as tm;
        let h = Handles {
            invocations: l(tm::USAGE_INVOCATIONS),
            busy: l(tm::USAGE_BUSY_SECONDS),
            vcpu: l(tm::USAGE_VCPU_SECONDS),
            memory: l(tm::USAGE_MEMORY_GB_SECONDS),
            gpu: l(tm::USAGE_GPU_GB_SECONDS),
        };
        (own, h)
    }

    /// Moves what is pending into `batch`.
    fn drain(&self, batch: &mut HashMap<Key, Totals>) -> u64 {
        let (pending, folded) = {
            let mut g = self.lock();
            g.pending_keys = 0;
            (
                std::mem::take(&mut g.pending),
                std::mem::take(&mut g.folded),
            )
        };
        for b in pending {
            for (tenant, t) in b.tenants {
                let key = Key {
                    hour: b.hour,
                    service: self.service.clone(),
                    function: self.function.clone(),
                    tenant,
                    gpu_type: b.gpu_type.as_deref().unwrap_or("").to_string(),
                };
                batch.entry(key).or_default().add(&t);
            }
        }
        folded
    }
}

/// The gateway's usage meter: the registry of function meters, the tenant label cap, the store.
#[derive(Debug, Default)]
pub struct Meter {
    functions: Mutex<Vec<Arc<FunctionMeter>>>,
    labels: Mutex<std::collections::HashSet<String>>,
    /// A batch a failed write left behind, tried again with the next flush.
    retry: Mutex<HashMap<Key, Totals>>,
    /// One flush at a time, so a query's flush also waits for a periodic one in progress.
    flushing: tokio::sync::Mutex<()>,
    store: std::sync::OnceLock<Arc<Store>>,
}

impl Meter {
    pub fn new() -> Arc<Meter> {
        Arc::new(Meter::default())
    }

    /// The meter of a function runtime; kept until flushed after the runtime is gone.
    pub fn function(self: &Arc<Self>, spec: &FunctionSpec) -> Arc<FunctionMeter> {
        let f = Arc::new(FunctionMeter {
            service: spec.service.clone(),
            function: spec.name.clone(),
            id: spec.id.clone(),
            meter: self.clone(),
            inner: Mutex::new(FnInner::default()),
        });
        lock(&self.functions).push(f.clone());
        f
    }

    /// Opens (or creates) `data_dir/usage.sqlite3`; totals kept before are kept.
    pub fn open(&self, data_dir: &Path) -> Result<(), StoreError> {
        let s = Store::open(&data_dir.join(store::FILE))?;
        let _ = self.store.set(Arc::new(s));
        Ok(())
    }

    /// Writes the in-memory totals to the store (if open). On failure they stay in memory and
    /// the next flush tries again.
    pub async fn flush(self: &Arc<Self>) {
        let Some(store) = self.store.get().cloned() else {
            return;
        };
        let _one = self.flushing.lock().await;
        let mut batch = std::mem::take(&mut *lock(&self.retry));
        let mut folded = 0;
        {
            let mut fns = lock(&self.functions);
            for f in fns.iter() {
                folded += f.drain(&mut batch);
            }
            // A meter only this registry holds belongs to a function a reload removed: its
            // usage is in the batch now.
            fns.retain(|f| Arc::strong_count(f) > 1);
        }
        if folded > 0 {
            tracing::warn!(
                folded,
                max = MAX_PENDING_BUCKETS,
                "usage buckets over the in-memory bound of a function: new tenants counted as `other` until the next flush"
            );
        }
        if batch.is_empty() {
            return;
        }
        let result = tokio::task::spawn_blocking(move || {
            let r = store.add(&batch);
            (r, batch)
        })
        .await;
        match result {
            Ok((Ok(()), _)) => {}
            Ok((Err(e), batch)) => {
                metrics::counter!(crate::telemetry::USAGE_FLUSH_FAILURES).increment(1);
                tracing::error!("cannot write usage to {}: {e}; kept in memory", store::FILE);
                let mut r = lock(&self.retry);
                for (k, t) in batch {
                    r.entry(k).or_default().add(&t);
                }
            }
            Err(e) => tracing::error!("usage flush task failed: {e}"),
        }
    }

    /// Hourly totals in `[from, to)` (unix seconds; `from` rounded down to its hour), after a
    /// flush so the answer includes everything metered so far.
    pub async fn query(
        self: &Arc<Self>,
        from: i64,
        to: i64,
        group: Group,
    ) -> Result<Vec<UsageRow>, StoreError> {
        self.flush().await;
        let Some(store) = self.store.get().cloned() else {
            return Err(StoreError("the usage store is not open".into()));
        };
        tokio::task::spawn_blocking(move || store.query(hour_of(from), to, group))
            .await
            .map_err(|e| StoreError(e.to_string()))?
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `metrics` counters are integers: resource-seconds are counted in thousandths.
fn milli(x: f64) -> u64 {
    (x * 1000.0).round() as u64
}

pub fn hour_of(unix: i64) -> i64 {
    unix.div_euclid(3600) * 3600
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Runs the periodic flush until the process ends.
pub fn spawn_flusher(meter: Arc<Meter>) {
    tokio::spawn(async move {
        let mut t = tokio::time::interval(FLUSH_INTERVAL);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            meter.flush().await;
        }
    });
}

/// Parses an RFC 3339 timestamp (`2026-11-25T10:00:00Z`, offsets and fractions allowed) or
/// unix seconds into unix seconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .map_err(|_| format!("`{s}` is out of range"));
    }
    crate::telemetry::parse_rfc3339(s)
        .map(|(secs, _)| secs)
        .ok_or_else(|| {
            format!("`{s}` is neither unix seconds nor an RFC 3339 time (2026-11-25T10:00:00Z)")
        })
}

#[cfg(test)]
mod tests;
