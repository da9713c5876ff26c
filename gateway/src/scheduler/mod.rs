//! Per-function scheduling: instances and their lifecycle decisions, concurrency slots, the bounded
//! wait queue, cold starts, provisioned targets, idle reclaim and GPU placement.
//!
//! This is where the per-instance concurrency limit is enforced. A `Slot` is the right to run one
//! request on one instance; it is only ever created under the function's lock when the instance is
//! ready and has `busy < instance_concurrency`, or handed over directly from a finishing request to
//! the first waiter (the busy count never dips, so nobody can slip in between). Dropping a `Slot`
//! frees it.
//!
//! Instance *decisions* (start one, stop one, promote one to provisioned) are made here, under the
//! same lock; the *mechanics* of a process (spawn, readiness, stop) live behind the [`Launcher`]
//! trait in `crate::instances`, which reports back through [`FunctionRuntime::instance_ready`] and
//! [`FunctionRuntime::instance_gone`].
//!
//! The lock is a plain `std::sync::Mutex`, held for a few comparisons and never across `.await`.

pub mod gpu;
pub mod health;
pub mod scaling;

use crate::config::{BackendSpec, FunctionSpec, ProcessSpec};
use crate::metering::{Billing, FunctionMeter, Meter, ShareClock, Usage};
use crate::telemetry::{FunctionMetrics, InstanceExit, UpstreamFailure, millis as ms};
use arc_swap::ArcSwap;
use gpu::{GpuPool, GpuShare, PlaceError};
use scaling::Tracker;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceKind {
    Provisioned = 0,
    OnDemand = 1,
}

impl InstanceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceKind::Provisioned => "provisioned",
            InstanceKind::OnDemand => "on-demand",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Spawned (or about to be), not ready yet: takes no work.
    Starting = 0,
    /// Takes work.
    Ready = 1,
    /// Takes no new work; stopped once its requests finish.
    Draining = 2,
    /// Being stopped (or an old static endpoint finishing its requests).
    Stopping = 3,
}

impl InstanceState {
    fn from_u8(v: u8) -> InstanceState {
        match v {
            0 => InstanceState::Starting,
            1 => InstanceState::Ready,
            2 => InstanceState::Draining,
            _ => InstanceState::Stopping,
        }
    }
}

/// How long an instance's cold start took, split at the point the process existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdStart {
    /// Choosing a port, placing, and spawning the process.
    pub spawn: Duration,
    /// Spawned → first passing readiness probe.
    pub readiness: Duration,
}

impl ColdStart {
    pub fn total(&self) -> Duration {
        self.spawn + self.readiness
    }
}

/// Monotonic milliseconds since the first call, for timestamps kept in atomics.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One running copy of a function: an upstream address with a number of slots.
#[derive(Debug)]
pub struct Instance {
    /// `function@host:port` for static endpoints (stable across reloads), `service-function-N`
    /// for started instances.
    pub id: Arc<str>,
    /// Set before the process is spawned; always set once the instance is ready.
    authority: OnceLock<http::uri::Authority>,
    kind: AtomicU8,
    state: AtomicU8,
    /// Requests in flight; changed only under the function lock, read freely for reporting.
    busy: AtomicU32,
    created: Instant,
    /// `now_ms()` when the instance last had no work (or became ready).
    idle_since_ms: AtomicU64,
    pub gpu: Option<GpuShare>,
    cold: OnceLock<ColdStart>,
    pid: AtomicU32,
    /// True for instances fngate starts (and so must stop).
    pub managed: bool,
    stop: Notify,
    /// Fair shares of busy time between overlapping requests (`crate::metering`); locked only
    /// under the function lock.
    clock: Mutex<ShareClock>,
    /// Instance-login sessions open on it: it is busy, and not reclaimed for idleness, while any is.
    sessions: AtomicU32,
    /// Passive health, for static endpoints (`health`); started instances stay healthy here.
    pub health: health::EndpointHealth,
}

impl Instance {
    fn new(
        id: Arc<str>,
        kind: InstanceKind,
        state: InstanceState,
        managed: bool,
        gpu: Option<GpuShare>,
    ) -> Instance {
        Instance {
            id,
            authority: OnceLock::new(),
            kind: AtomicU8::new(kind as u8),
            state: AtomicU8::new(state as u8),
            busy: AtomicU32::new(0),
            created: Instant::now(),
            idle_since_ms: AtomicU64::new(now_ms()),
            gpu,
            cold: OnceLock::new(),
            pid: AtomicU32::new(0),
            managed,
            stop: Notify::new(),
            clock: Mutex::new(ShareClock::new(Instant::now())),
            sessions: AtomicU32::new(0),
            health: health::EndpointHealth::default(),
        }
    }

    fn clock(&self) -> MutexGuard<'_, ShareClock> {
        self.clock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A provisioned instance fngate started is billed for its lifetime, not per request.
    fn reserved(&self) -> bool {
        self.managed
            && self.kind() == InstanceKind::Provisioned
            && self.state() != InstanceState::Starting
    }

    pub fn busy(&self) -> u32 {
        self.busy.load(Ordering::Relaxed)
    }

    /// Instance-login sessions open now.
    pub fn sessions(&self) -> u32 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Marks a login session open until the guard drops; the instance's idle time restarts then.
    pub fn hold_for_session(self: &Arc<Self>) -> SessionHold {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        SessionHold(self.clone())
    }

    /// No requests in flight and no login session open.
    fn idle(&self) -> bool {
        self.busy() == 0 && self.sessions() == 0
    }

    pub fn kind(&self) -> InstanceKind {
        if self.kind.load(Ordering::Relaxed) == 0 {
            InstanceKind::Provisioned
        } else {
            InstanceKind::OnDemand
        }
    }

    pub fn state(&self) -> InstanceState {
        InstanceState::from_u8(self.state.load(Ordering::Relaxed))
    }

    fn set_state(&self, s: InstanceState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// Where requests for this instance go; `None` only before a started instance has its port.
    pub fn authority(&self) -> Option<&http::uri::Authority> {
        self.authority.get()
    }

    /// Called by the launcher once, before spawning.
    pub fn set_authority(&self, a: http::uri::Authority) {
        let _ = self.authority.set(a);
    }

    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
    }

    pub fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::Relaxed)).filter(|p| *p != 0)
    }

    pub fn cold_start(&self) -> Option<ColdStart> {
        self.cold.get().copied()
    }

    /// Resolves once fngate wants this instance stopped (it may already be).
    pub async fn stop_requested(&self) {
        self.stop.notified().await
    }

    /// Marks the instance stopping and wakes its launcher task. Call under the function lock.
    fn request_stop(&self) {
        self.set_state(InstanceState::Stopping);
        // notify_one stores a permit, so a launcher that is not waiting yet still sees it.
        self.stop.notify_one();
    }
}

/// Starts processes for instances; implemented by `crate::instances`.
pub trait Launcher: Send + Sync + std::fmt::Debug {
    /// Starts `instance` (state Starting). The launcher must eventually call exactly one of
    /// `function.instance_ready` (then, later, `instance_gone`) or `instance_gone`.
    fn launch(
        &self,
        function: Arc<FunctionRuntime>,
        instance: Arc<Instance>,
        spec: Arc<ProcessSpec>,
    );
}

/// What the node offers every function: the GPU pool and the process launcher.
#[derive(Debug)]
pub struct Node {
    pub gpus: GpuPool,
    launcher: OnceLock<Arc<dyn Launcher>>,
    /// Usage of every function's instances.
    pub meter: Arc<Meter>,
}

impl Node {
    pub fn new(gpus: GpuPool) -> Arc<Node> {
        Arc::new(Node {
            gpus,
            launcher: OnceLock::new(),
            meter: Meter::new(),
        })
    }

    pub fn set_launcher(&self, l: Arc<dyn Launcher>) {
        let _ = self.launcher.set(l);
    }
}

/// Why a request could not get a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// `max_queued` requests are already waiting.
    QueueFull { max_queued: usize },
    /// Waited `max_queue_wait` without a slot.
    QueueTimeout { waited: Duration },
    /// Waited `max_queue_wait` and the instance that would have served it could not be placed.
    GpuCapacity { gpu_type: String, detail: String },
    /// The function's instances keep failing to start.
    StartFailed {
        detail: String,
        retry_after: Duration,
    },
    /// The function was removed by a reload (or the gateway is stopping) while the request waited.
    Retired,
}

/// Why an instance went away, as the launcher reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gone {
    /// It never became ready: spawn error, exit during start-up, or start-up timeout.
    StartFailed(String),
    /// A ready instance exited on its own.
    Exited(String),
    /// A ready instance kept failing its health probe and was stopped.
    Unhealthy(String),
    /// fngate stopped it (idle, target lowered, reload, shutdown).
    Stopped,
}

/// The right to run one request on one instance; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    function: Arc<FunctionRuntime>,
    instance: Option<Arc<Instance>>,
    /// Granted on an instance the moment it finished its cold start.
    cold: bool,
    /// The instance's share clock when this slot was granted.
    mark: f64,
    /// Whom the usage is metered to.
    tenant: Option<String>,
}

impl Slot {
    pub fn instance(&self) -> &Arc<Instance> {
        self.instance
            .as_ref()
            .expect("slot holds its instance until dropped")
    }

    /// Whether this request waited for (and got) a freshly started instance.
    pub fn cold(&self) -> bool {
        self.cold
    }

    /// Meters this invocation's usage to `tenant` (unattributed without one).
    pub fn set_tenant(&mut self, tenant: Option<String>) {
        self.tenant = tenant;
    }

    /// Frees the slot and meters the invocation to `tenant` (else the one set before);
    /// returns what it used.
    pub fn finish(mut self, tenant: Option<&str>) -> Option<Usage> {
        self.end(tenant)
    }

    fn end(&mut self, tenant: Option<&str>) -> Option<Usage> {
        let inst = self.instance.take()?;
        let share = self.function.release(&inst, self.mark);
        let spec = self.function.spec.load();
        let billing = if inst.reserved() {
            Billing::Reserved
        } else {
            Billing::Request
        };
        let usage = Usage::new(&spec, inst.gpu.as_ref(), share, billing);
        self.function
            .meter
            .invocation(tenant.or(self.tenant.as_deref()), &usage);
        Some(usage)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.end(None);
    }
}

/// A granted slot and how long the request queued for it.
#[derive(Debug)]
pub struct Acquired {
    pub slot: Slot,
    pub queue_wait: Duration,
}

type WaiterKey = (Reverse<i32>, u64);
type Grant = Result<Slot, ScheduleError>;

/// Consecutive start failures before waiters are failed and further starts back off.
const START_FAILURES_BEFORE_BACKOFF: u32 = 2;
const MAX_START_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Inner {
    instances: Vec<Arc<Instance>>,
    /// Ordered by priority (high first), then arrival.
    waiters: BTreeMap<WaiterKey, oneshot::Sender<Grant>>,
    next_seq: u64,
    /// Rotates the starting point among equally loaded instances so light load spreads out.
    cursor: usize,
    in_flight: u32,
    retired: bool,
    next_instance: u64,
    /// The provisioned target set by the file, the admin API or the last scheduled rule.
    target: u32,
    tracker: Option<Tracker>,
    /// What the target-tracking rule wants (0 without one).
    tracked: u32,
    /// Unix seconds of the last schedule check.
    schedule_seen: u64,
    /// Why the last cold start for waiting requests could not be placed.
    gpu_blocked: Option<PlaceError>,
    start_failures: u32,
    last_start_error: Option<String>,
    backoff_until: Option<Instant>,
}

impl Inner {
    fn count_state(&self, s: InstanceState) -> usize {
        self.instances.iter().filter(|i| i.state() == s).count()
    }

    fn in_backoff(&self, now: Instant) -> Option<Duration> {
        self.backoff_until
            .filter(|t| *t > now)
            .map(|t| t.duration_since(now))
    }

    /// Nothing can serve and starts are backing off: the error new requests get at once.
    fn failing(&self, now: Instant) -> Option<ScheduleError> {
        let retry_after = self.in_backoff(now)?;
        let alive = self
            .instances
            .iter()
            .any(|i| matches!(i.state(), InstanceState::Ready | InstanceState::Starting));
        if alive {
            return None;
        }
        Some(ScheduleError::StartFailed {
            detail: self
                .last_start_error
                .clone()
                .unwrap_or_else(|| "instances fail to start".into()),
            retry_after,
        })
    }
}

/// The live state of one function; survives reloads so in-flight counts stay true.
#[derive(Debug)]
pub struct FunctionRuntime {
    spec: ArcSwap<FunctionSpec>,
    inner: Mutex<Inner>,
    pub metrics: FunctionMetrics,
    node: Arc<Node>,
    /// This function's usage not yet flushed.
    meter: Arc<FunctionMeter>,
}

impl FunctionRuntime {
    pub fn new(spec: Arc<FunctionSpec>, node: Arc<Node>) -> Arc<Self> {
        let metrics = FunctionMetrics::new(&spec.id);
        let meter = node.meter.function(&spec);
        let rt = Arc::new(FunctionRuntime {
            spec: ArcSwap::new(spec.clone()),
            inner: Mutex::new(Inner::default()),
            metrics,
            node,
            meter,
        });
        {
            let mut g = rt.lock();
            let now_unix = unix_now();
            g.target = initial_target(&spec, now_unix);
            g.schedule_seen = now_unix;
            g.tracker = spec.scaling.tracking.map(Tracker::new);
        }
        rt.update(spec);
        rt
    }

    pub fn spec(&self) -> arc_swap::Guard<Arc<FunctionSpec>> {
        self.spec.load()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in a few lines of arithmetic; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a new spec from a reload. Static endpoints that stay keep their busy counts;
    /// started instances stay unless the way they are started changed, in which case they drain.
    pub fn update(self: &Arc<Self>, spec: Arc<FunctionSpec>) {
        let old = self.spec.swap(spec.clone());
        let (grants, launches) = {
            let mut g = self.lock();
            if !old.same_recipe(&spec) {
                for inst in g.instances.iter().filter(|i| i.managed) {
                    retire_instance(inst);
                }
            }
            if old.scaling.provisioned != spec.scaling.provisioned
                || old.scaling.schedule != spec.scaling.schedule
            {
                g.target = initial_target(&spec, unix_now());
            }
            if old.scaling.tracking != spec.scaling.tracking {
                g.tracker = spec.scaling.tracking.map(Tracker::new);
                g.tracked = 0;
            }
            let endpoints: &[crate::config::Endpoint] = match &spec.backend {
                BackendSpec::Static { endpoints, .. } => endpoints,
                BackendSpec::Process(_) => &[],
            };
            let mut next: Vec<Arc<Instance>> = Vec::with_capacity(g.instances.len());
            for ep in endpoints {
                let existing = g
                    .instances
                    .iter()
                    .find(|i| !i.managed && i.authority() == Some(&ep.authority))
                    .cloned();
                next.push(existing.unwrap_or_else(|| {
                    let inst = Instance::new(
                        format!("{}@{}", spec.name, ep.authority).into(),
                        InstanceKind::Provisioned,
                        InstanceState::Ready,
                        false,
                        None,
                    );
                    inst.set_authority(ep.authority.clone());
                    Arc::new(inst)
                }));
            }
            for old in std::mem::take(&mut g.instances) {
                if old.managed {
                    // Started instances leave the list only when their process is gone.
                    next.push(old);
                } else if !next.iter().any(|n| Arc::ptr_eq(n, &old)) {
                    // A static endpoint dropped by the reload finishes what it has, unlisted.
                    old.set_state(InstanceState::Stopping);
                }
            }
            g.instances = next;
            self.publish_unhealthy(&g);
            self.metrics
                .provisioned_target
                .set(self.effective_target(&g, &spec) as f64);
            // The concurrency limit may have grown or instances been added: serve waiters now.
            let grants = self.grant_locked(&mut g, None);
            let launches = self.plan_starts(&mut g, &spec, Instant::now());
            (grants, launches)
        };
        self.send(grants);
        self.launch(launches);
    }

    /// The function was removed by a reload, or the gateway is stopping: waiters are told at once,
    /// started instances drain (running work finishes), none start again.
    pub fn retire(&self) {
        let waiters = {
            let mut g = self.lock();
            g.retired = true;
            for inst in g.instances.iter().filter(|i| i.managed) {
                retire_instance(inst);
            }
            std::mem::take(&mut g.waiters)
        };
        self.metrics.queue_depth.set(0.0);
        for (_, tx) in waiters {
            let _ = tx.send(Err(ScheduleError::Retired));
        }
    }

    /// Stops every started instance now, busy or not (the gateway is shutting down).
    pub fn stop_all(&self) {
        self.retire();
        let g = self.lock();
        for inst in g.instances.iter().filter(|i| i.managed) {
            inst.request_stop();
        }
    }

    /// Takes a free slot, or waits for one in the bounded queue (starting instances as needed).
    pub async fn acquire(self: &Arc<Self>, priority: i32) -> Result<Acquired, ScheduleError> {
        let start = Instant::now();
        let (key, rx, wait, launches) = {
            let mut g = self.lock();
            if g.retired {
                return Err(ScheduleError::Retired);
            }
            let spec = self.spec.load();
            if let Some((inst, mark)) = g
                .waiters
                .is_empty()
                .then(|| pick(&mut g, spec.instance_concurrency))
                .flatten()
            {
                g.in_flight += 1;
                self.metrics.in_flight.increment(1.0);
                drop(g);
                return Ok(Acquired {
                    slot: Slot {
                        function: self.clone(),
                        instance: Some(inst),
                        cold: false,
                        mark,
                        tenant: None,
                    },
                    queue_wait: Duration::ZERO,
                });
            }
            if let Some(e) = g.failing(start) {
                return Err(e);
            }
            if g.waiters.len() >= spec.max_queued {
                return Err(ScheduleError::QueueFull {
                    max_queued: spec.max_queued,
                });
            }
            let (tx, rx) = oneshot::channel();
            let key = (Reverse(priority), g.next_seq);
            g.next_seq += 1;
            g.waiters.insert(key, tx);
            self.metrics.queue_depth.set(g.waiters.len() as f64);
            let launches = self.plan_starts(&mut g, &spec, start);
            (key, rx, spec.max_queue_wait, launches)
        };
        self.launch(launches);
        // Removes our entry if we stop waiting for any reason (timeout, client gone).
        let guard = WaiterGuard { rt: self, key };
        let mut rx = rx;
        let result = match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(grant)) => grant,
            Ok(Err(_)) => Err(ScheduleError::Retired),
            // A slot handed over in the same instant as the deadline is still ours to use.
            Err(_) => match rx.try_recv() {
                Ok(grant) => grant,
                Err(_) => Err(self.timeout_error(start.elapsed())),
            },
        };
        drop(guard);
        result.map(|slot| Acquired {
            slot,
            queue_wait: start.elapsed(),
        })
    }

    /// A queue timeout names the GPU type when GPU capacity is what kept the request waiting.
    fn timeout_error(&self, waited: Duration) -> ScheduleError {
        let g = self.lock();
        match &g.gpu_blocked {
            Some(e) => ScheduleError::GpuCapacity {
                gpu_type: match e {
                    PlaceError::UnknownType { gpu_type }
                    | PlaceError::TooLarge { gpu_type, .. }
                    | PlaceError::NoCapacity { gpu_type, .. } => gpu_type.clone(),
                },
                detail: e.to_string(),
            },
            None => ScheduleError::QueueTimeout { waited },
        }
    }

    /// Frees a slot on `inst` granted at share-clock `mark`; returns the request's busy share.
    fn release(self: &Arc<Self>, inst: &Arc<Instance>, mark: f64) -> f64 {
        let (share, grants) = {
            let mut g = self.lock();
            let share = inst.clock().finish(Instant::now(), mark);
            let left = inst.busy.fetch_sub(1, Ordering::Relaxed) - 1;
            g.in_flight -= 1;
            self.metrics.in_flight.decrement(1.0);
            if left == 0 {
                inst.idle_since_ms.store(now_ms(), Ordering::Relaxed);
                if inst.state() == InstanceState::Draining {
                    inst.request_stop();
                }
            }
            if g.waiters.is_empty() {
                return share;
            }
            (share, self.grant_locked(&mut g, None))
        };
        self.send(grants);
        share
    }

    /// Pairs free slots with waiters, first by priority then arrival. Slots on `fresh` (an
    /// instance that just became ready) are marked as cold-start grants.
    fn grant_locked(
        self: &Arc<Self>,
        g: &mut Inner,
        fresh: Option<&Arc<Instance>>,
    ) -> Vec<(oneshot::Sender<Grant>, Slot)> {
        let mut grants = Vec::new();
        let limit = self.spec.load().instance_concurrency;
        while !g.waiters.is_empty() {
            let Some((inst, mark)) = pick(g, limit) else {
                break;
            };
            let (_, tx) = g.waiters.pop_first().expect("checked non-empty");
            g.in_flight += 1;
            self.metrics.in_flight.increment(1.0);
            let cold = fresh.is_some_and(|f| Arc::ptr_eq(f, &inst));
            grants.push((
                tx,
                Slot {
                    function: self.clone(),
                    instance: Some(inst),
                    cold,
                    mark,
                    tenant: None,
                },
            ));
        }
        if !grants.is_empty() {
            self.metrics.queue_depth.set(g.waiters.len() as f64);
        }
        grants
    }

    /// Sends grants outside the lock; a waiter that gave up in the meantime hands its slot
    /// straight back, unused (so not metered as an invocation).
    fn send(self: &Arc<Self>, grants: Vec<(oneshot::Sender<Grant>, Slot)>) {
        for (tx, slot) in grants {
            if let Err(Ok(mut unused)) = tx.send(Ok(slot))
                && let Some(inst) = unused.instance.take()
            {
                self.release(&inst, unused.mark);
            }
        }
    }

    /// Decides how many instances to start for the requests waiting now: only as many as the
    /// queue needs beyond the slots already being created (no thundering herd).
    fn plan_starts(&self, g: &mut Inner, spec: &FunctionSpec, now: Instant) -> Vec<Arc<Instance>> {
        if g.retired || !matches!(spec.backend, BackendSpec::Process(_)) || g.waiters.is_empty() {
            return Vec::new();
        }
        if g.in_backoff(now).is_some() {
            return Vec::new();
        }
        let conc = spec.instance_concurrency as usize;
        let coming = g.count_state(InstanceState::Starting) * conc;
        let demand = g.waiters.len();
        if demand <= coming {
            return Vec::new();
        }
        let want = (demand - coming).div_ceil(conc);
        let mut out = Vec::new();
        for _ in 0..want {
            match self.new_instance(g, spec, InstanceKind::OnDemand) {
                Some(inst) => out.push(inst),
                None => break,
            }
        }
        out
    }

    /// Creates a Starting instance if `max_instances` and GPU capacity allow.
    fn new_instance(
        &self,
        g: &mut Inner,
        spec: &FunctionSpec,
        kind: InstanceKind,
    ) -> Option<Arc<Instance>> {
        if g.instances.len() >= spec.scaling.max_instances as usize {
            return None;
        }
        let gpu = match &spec.gpu {
            None => None,
            Some(req) => match self.node.gpus.place(&req.gpu_type, req.memory_gb) {
                Ok(share) => Some(share),
                Err(e) => {
                    if g.gpu_blocked.as_ref() != Some(&e) {
                        tracing::info!(function = %spec.id, "cannot start an instance yet: {e}");
                    }
                    g.gpu_blocked = Some(e);
                    return None;
                }
            },
        };
        g.gpu_blocked = None;
        g.next_instance += 1;
        let id: Arc<str> = format!("{}-{}-{}", spec.service, spec.name, g.next_instance).into();
        let inst = Arc::new(Instance::new(id, kind, InstanceState::Starting, true, gpu));
        g.instances.push(inst.clone());
        Some(inst)
    }

    fn launch(self: &Arc<Self>, instances: Vec<Arc<Instance>>) {
        if instances.is_empty() {
            return;
        }
        let spec = self.spec.load();
        let BackendSpec::Process(p) = &spec.backend else {
            return;
        };
        let launcher = self.node.launcher.get().cloned();
        for inst in instances {
            match &launcher {
                Some(l) => l.launch(self.clone(), inst, p.clone()),
                None => self.instance_gone(
                    &inst,
                    Gone::StartFailed("this gateway has no process launcher".into()),
                ),
            }
        }
    }

    /// The launcher's report that `inst` passed readiness. Returns false when fngate no longer
    /// wants it (it was asked to stop while starting): the launcher then stops it.
    pub fn instance_ready(self: &Arc<Self>, inst: &Arc<Instance>, cold: ColdStart) -> bool {
        let grants = {
            let mut g = self.lock();
            if inst.state() != InstanceState::Starting {
                return false;
            }
            let _ = inst.cold.set(cold);
            inst.idle_since_ms.store(now_ms(), Ordering::Relaxed);
            inst.set_state(InstanceState::Ready);
            // A provisioned instance's billed lifetime starts now.
            inst.clock()
                .reserved_since_last(Instant::now(), inst.reserved());
            g.start_failures = 0;
            g.last_start_error = None;
            g.backoff_until = None;
            self.grant_locked(&mut g, Some(inst))
        };
        self.metrics.cold_start(Some(cold.total()));
        tracing::info!(
            function = %self.spec.load().id,
            instance = %inst.id,
            kind = inst.kind().as_str(),
            spawn_ms = ms(cold.spawn),
            readiness_ms = ms(cold.readiness),
            "instance ready"
        );
        self.send(grants);
        true
    }

    /// The launcher's report that `inst`'s process is gone (or never started).
    pub fn instance_gone(self: &Arc<Self>, inst: &Arc<Instance>, why: Gone) {
        let now = Instant::now();
        let spec = self.spec.load();
        let was = inst.state();
        let (failed, launches) = {
            let mut g = self.lock();
            g.instances.retain(|i| !Arc::ptr_eq(i, inst));
            let lived = inst.clock().reserved_since_last(now, false);
            if let Some(d) = lived {
                self.meter
                    .reserved(&spec, inst.gpu.as_ref(), d.as_secs_f64());
            }
            inst.set_state(InstanceState::Stopping);
            let mut failed = Vec::new();
            if let Gone::StartFailed(msg) = &why {
                g.start_failures += 1;
                g.last_start_error = Some(msg.clone());
                if g.start_failures >= START_FAILURES_BEFORE_BACKOFF {
                    let exp = (g.start_failures - START_FAILURES_BEFORE_BACKOFF).min(8);
                    let backoff = (Duration::from_millis(500) * (1 << exp)).min(MAX_START_BACKOFF);
                    g.backoff_until = Some(now + backoff);
                    // Nobody else can serve the waiters: tell them why now rather than at timeout.
                    if let Some(err) = g.failing(now) {
                        failed = std::mem::take(&mut g.waiters)
                            .into_values()
                            .map(|tx| (tx, err.clone()))
                            .collect();
                        self.metrics.queue_depth.set(0.0);
                    }
                }
            }
            let launches = self.plan_starts(&mut g, &spec, now);
            (failed, launches)
        };
        if let Some(share) = &inst.gpu {
            self.node.gpus.release(share);
        }
        match &why {
            Gone::StartFailed(msg) => {
                self.metrics.cold_start(None);
                tracing::warn!(function = %spec.id, instance = %inst.id, "instance failed to start: {msg}");
            }
            Gone::Exited(msg) => {
                self.metrics.instance_exit(InstanceExit::Exited);
                tracing::warn!(function = %spec.id, instance = %inst.id, "instance exited unexpectedly: {msg}");
            }
            Gone::Unhealthy(msg) => {
                self.metrics.instance_exit(InstanceExit::Unhealthy);
                tracing::warn!(function = %spec.id, instance = %inst.id, "instance removed after failing health probes: {msg}");
            }
            Gone::Stopped => {
                self.metrics.instance_exit(InstanceExit::Stopped);
                tracing::info!(function = %spec.id, instance = %inst.id, state = ?was, "instance stopped");
            }
        }
        for (tx, err) in failed {
            let _ = tx.send(Err(err));
        }
        self.launch(launches);
    }

    /// Periodic upkeep (about every 250 ms): scheduled rules, target tracking, the provisioned
    /// target, idle reclaim, and starts that GPU capacity or a back-off held up.
    pub fn maintain(self: &Arc<Self>, now: Instant, now_unix: u64) {
        let spec = self.spec.load();
        if !matches!(spec.backend, BackendSpec::Process(_)) {
            return;
        }
        let launches = {
            let mut g = self.lock();
            if g.retired {
                return;
            }
            if let Some(rule) = spec.scaling.schedule.fired(g.schedule_seen, now_unix) {
                tracing::info!(function = %spec.id, at = %rule.at, target = rule.target, "scheduled rule fired: provisioned target set");
                g.target = rule.target;
            }
            g.schedule_seen = now_unix;
            let demand = (g.in_flight as usize + g.waiters.len()) as f64;
            if let Some(t) = g.tracker.as_mut() {
                t.sample(now_ms(), demand);
                let d = t.desired(spec.instance_concurrency);
                g.tracked = d;
            }
            let target = self.effective_target(&g, &spec);
            self.metrics.provisioned_target.set(target as f64);
            let mut launches = self.reconcile_provisioned(&mut g, &spec, target, now);
            // Provisioned lifetime since the last upkeep.
            let reserved: Vec<(Arc<Instance>, Duration)> = g
                .instances
                .iter()
                .filter(|i| i.managed)
                .filter_map(|i| {
                    let d = i.clock().reserved_since_last(now, i.reserved())?;
                    Some((i.clone(), d))
                })
                .collect();
            // Scale to zero: an on-demand instance without work for idle_timeout. Checked under
            // the lock that grants slots, so it cannot take work while being stopped.
            let idle_ms = spec.scaling.idle_timeout.as_millis() as u64;
            let now_m = now_ms();
            if g.waiters.is_empty() {
                for inst in &g.instances {
                    if inst.kind() == InstanceKind::OnDemand
                        && inst.state() == InstanceState::Ready
                        && inst.idle()
                        && now_m.saturating_sub(inst.idle_since_ms.load(Ordering::Relaxed))
                            >= idle_ms
                    {
                        tracing::info!(function = %spec.id, instance = %inst.id, "stopping idle on-demand instance");
                        inst.request_stop();
                    }
                }
                g.gpu_blocked = None;
            }
            launches.extend(self.plan_starts(&mut g, &spec, now));
            self.publish_counts(&g);
            (launches, reserved)
        };
        let (launches, reserved) = launches;
        for (inst, d) in reserved {
            self.meter
                .reserved(&spec, inst.gpu.as_ref(), d.as_secs_f64());
        }
        self.launch(launches);
    }

    fn effective_target(&self, g: &Inner, spec: &FunctionSpec) -> u32 {
        let tracked = g.tracker.as_ref().map(|_| g.tracked);
        scaling::effective_target(g.target, tracked).min(spec.scaling.max_instances)
    }

    /// Brings the provisioned instances (starting or ready) to `target`: promotes running
    /// on-demand instances first (no cold start needed), then starts new ones; above the target,
    /// stops starting ones first, then idle ones, then drains the least busy.
    fn reconcile_provisioned(
        &self,
        g: &mut Inner,
        spec: &FunctionSpec,
        target: u32,
        now: Instant,
    ) -> Vec<Arc<Instance>> {
        let live = |i: &Arc<Instance>| {
            i.managed
                && i.kind() == InstanceKind::Provisioned
                && matches!(i.state(), InstanceState::Starting | InstanceState::Ready)
        };
        let have = g.instances.iter().filter(|i| live(i)).count() as u32;
        let mut out = Vec::new();
        if have < target {
            let mut need = target - have;
            for inst in &g.instances {
                if need == 0 {
                    break;
                }
                if inst.managed
                    && inst.kind() == InstanceKind::OnDemand
                    && matches!(inst.state(), InstanceState::Ready | InstanceState::Starting)
                {
                    inst.kind
                        .store(InstanceKind::Provisioned as u8, Ordering::Relaxed);
                    // Billed for its lifetime from here on.
                    inst.clock().reserved_since_last(now, inst.reserved());
                    need -= 1;
                }
            }
            if g.in_backoff(now).is_none() {
                while need > 0 {
                    match self.new_instance(g, spec, InstanceKind::Provisioned) {
                        Some(inst) => out.push(inst),
                        None => break,
                    }
                    need -= 1;
                }
            }
        } else if have > target {
            let mut extra: Vec<&Arc<Instance>> = g.instances.iter().filter(|i| live(i)).collect();
            // Starting first, then the least busy.
            extra.sort_by_key(|i| (i.state() != InstanceState::Starting, i.busy()));
            for inst in extra.into_iter().take((have - target) as usize) {
                retire_instance(inst);
            }
        }
        out
    }

    fn publish_counts(&self, g: &Inner) {
        let mut counts = [[0u32; 4]; 2];
        for i in &g.instances {
            counts[i.kind() as usize][i.state() as usize] += 1;
        }
        for (k, row) in counts.iter().enumerate() {
            for (s, n) in row.iter().enumerate() {
                self.metrics.instances[k][s].set(*n as f64);
            }
        }
    }

    /// Sets the provisioned target at run time (admin API). It holds until a scheduled rule
    /// fires or a reload changes the function's `scaling.provisioned`.
    pub fn set_provisioned_target(self: &Arc<Self>, target: u32) -> Result<u32, String> {
        let spec = self.spec.load();
        if !matches!(spec.backend, BackendSpec::Process(_)) {
            return Err(format!(
                "{} has static endpoints, which are always provisioned; a target applies to process backends",
                spec.id
            ));
        }
        if target > spec.scaling.max_instances {
            return Err(format!(
                "target {target} exceeds {}'s max_instances ({})",
                spec.id, spec.scaling.max_instances
            ));
        }
        let launches = {
            let mut g = self.lock();
            if g.retired {
                return Err(format!("{} is being removed", spec.id));
            }
            g.target = target;
            let eff = self.effective_target(&g, &spec);
            self.metrics.provisioned_target.set(eff as f64);
            let l = self.reconcile_provisioned(&mut g, &spec, eff, Instant::now());
            self.publish_counts(&g);
            l
        };
        self.launch(launches);
        Ok(target)
    }

    /// Counts for plugins routing by load: (provisioned instances, on-demand instances, in flight,
    /// queued, instances starting).
    pub fn load(&self) -> (u32, u32, u32, usize, u32) {
        let g = self.lock();
        let mut provisioned = 0;
        let mut on_demand = 0;
        let mut starting = 0;
        for i in &g.instances {
            match i.state() {
                InstanceState::Ready => match i.kind() {
                    InstanceKind::Provisioned => provisioned += 1,
                    InstanceKind::OnDemand => on_demand += 1,
                },
                InstanceState::Starting => starting += 1,
                _ => {}
            }
        }
        (
            provisioned,
            on_demand,
            g.in_flight,
            g.waiters.len(),
            starting,
        )
    }

    /// A call on `inst` got an HTTP answer (any status): a static endpoint's failure count
    /// restarts, and one out of rotation is back. Two relaxed loads when nothing changes.
    #[inline]
    pub fn call_answered(self: &Arc<Self>, inst: &Arc<Instance>) {
        if !inst.managed && inst.health.answered() {
            if inst.health.in_rotation() {
                inst.health.clear_failures();
            } else {
                self.endpoint_back(inst, "a call was answered");
            }
        }
    }

    /// A call on `inst` failed below HTTP (`kind`, `detail` for the log): after
    /// `passive_health.failures` in a row a static endpoint leaves rotation.
    pub fn call_failed(
        self: &Arc<Self>,
        inst: &Arc<Instance>,
        kind: UpstreamFailure,
        detail: &str,
    ) {
        if inst.managed {
            return;
        }
        let spec = self.spec.load();
        let BackendSpec::Static { health: h, .. } = &spec.backend else {
            return;
        };
        if kind == UpstreamFailure::Timeout && !h.timeouts {
            return;
        }
        let failures = inst.health.failed();
        if failures < h.failures || !inst.health.in_rotation() {
            return;
        }
        let grants = {
            let mut g = self.lock();
            let Some(wait) = inst.health.eject(h, now_ms(), detail.to_string()) else {
                return;
            };
            self.metrics.endpoint_health(false);
            self.publish_unhealthy(&g);
            tracing::warn!(
                function = %spec.id,
                instance = %inst.id,
                failures,
                cooldown_ms = wait.as_millis() as u64,
                error = detail,
                "static endpoint out of rotation after failed calls"
            );
            // If that was the last endpoint in rotation, waiters now fail open onto the others.
            self.grant_locked(&mut g, None)
        };
        self.send(grants);
    }

    /// Static endpoints whose cooldown is over, each claimed for one probe: (instance, path,
    /// timeout). The caller probes and reports with [`FunctionRuntime::probe_result`].
    pub fn probes_due(&self) -> Vec<(Arc<Instance>, String, Duration)> {
        let spec = self.spec.load();
        let BackendSpec::Static { health: h, .. } = &spec.backend else {
            return Vec::new();
        };
        let now = now_ms();
        let g = self.lock();
        g.instances
            .iter()
            .filter(|i| !i.managed && i.health.take_probe(now))
            .map(|i| (i.clone(), h.probe_path.clone(), h.probe_timeout))
            .collect()
    }

    /// How the probe of `inst` went.
    pub fn probe_result(self: &Arc<Self>, inst: &Arc<Instance>, result: Result<(), String>) {
        match result {
            Ok(()) => self.endpoint_back(inst, "a probe was answered"),
            Err(why) => {
                let spec = self.spec.load();
                let BackendSpec::Static { health: h, .. } = &spec.backend else {
                    return;
                };
                if let Some(wait) = inst.health.probe_failed(h, now_ms(), why.clone()) {
                    tracing::debug!(function = %spec.id, instance = %inst.id, next_probe_ms = wait.as_millis() as u64, error = %why, "static endpoint probe failed");
                }
            }
        }
    }

    fn endpoint_back(self: &Arc<Self>, inst: &Arc<Instance>, how: &'static str) {
        let grants = {
            let mut g = self.lock();
            if !inst.health.recover(now_ms()) {
                return;
            }
            self.metrics.endpoint_health(true);
            self.publish_unhealthy(&g);
            tracing::info!(function = %self.spec.load().id, instance = %inst.id, how, "static endpoint back in rotation");
            self.grant_locked(&mut g, None)
        };
        self.send(grants);
    }

    fn publish_unhealthy(&self, g: &Inner) {
        let n = g
            .instances
            .iter()
            .filter(|i| !i.managed && !i.health.in_rotation())
            .count();
        self.metrics.endpoints_unhealthy.set(n as f64);
    }

    /// One of this function's instances by id.
    pub fn instance(&self, id: &str) -> Option<Arc<Instance>> {
        self.lock().instances.iter().find(|i| &*i.id == id).cloned()
    }

    /// A consistent picture for the admin API.
    pub fn snapshot(&self) -> FunctionState {
        let spec = self.spec.load();
        let g = self.lock();
        let now_m = now_ms();
        FunctionState {
            in_flight: g.in_flight,
            queued: g.waiters.len(),
            provisioned_target: self.effective_target(&g, &spec),
            manual_target: g.target,
            tracked_target: g.tracker.as_ref().map(|_| g.tracked),
            max_instances: spec.scaling.max_instances,
            last_start_error: g.last_start_error.clone(),
            waiting_for_gpu: g.gpu_blocked.as_ref().map(|e| e.to_string()),
            instances: g
                .instances
                .iter()
                .map(|i| {
                    let state = i.state();
                    InstanceInfo {
                        id: i.id.to_string(),
                        endpoint: i.authority().map(|a| format!("http://{a}")),
                        kind: i.kind(),
                        state,
                        busy: i.busy(),
                        sessions: i.sessions(),
                        concurrency: spec.instance_concurrency,
                        pid: i.pid(),
                        gpu: i.gpu.as_ref().map(|s| GpuState {
                            card: s.card,
                            gpu_type: s.gpu_type.to_string(),
                            memory_gb: s.memory_gb,
                            fraction: s.fraction(),
                        }),
                        age_s: i.created.elapsed().as_secs_f64(),
                        idle_s: (state == InstanceState::Ready && i.idle()).then(|| {
                            now_m.saturating_sub(i.idle_since_ms.load(Ordering::Relaxed)) as f64
                                / 1000.0
                        }),
                        cold_start_ms: i.cold_start().map(|c| ColdStartState {
                            spawn: ms(c.spawn),
                            readiness: ms(c.readiness),
                        }),
                        health: (!i.managed).then(|| HealthState {
                            state: i.health.health(),
                            consecutive_failures: i.health.failures(),
                            ejections: i.health.level(),
                            retry_in_s: i.health.retry_in_ms(now_m).map(|r| r as f64 / 1000.0),
                            last_error: i.health.last_error(),
                        }),
                    }
                })
                .collect(),
        }
    }
}

/// Stop now if idle, else drain (no new work, stop when the last request ends).
fn retire_instance(inst: &Instance) {
    match inst.state() {
        InstanceState::Starting => inst.request_stop(),
        InstanceState::Ready if inst.busy() == 0 => inst.request_stop(),
        InstanceState::Ready => inst.set_state(InstanceState::Draining),
        InstanceState::Draining | InstanceState::Stopping => {}
    }
}

fn initial_target(spec: &FunctionSpec, now_unix: u64) -> u32 {
    spec.scaling
        .schedule
        .in_force(now_unix)
        .map_or(spec.scaling.provisioned, |r| r.target)
}

/// Wall-clock unix seconds, for time-of-day rules.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Least-loaded ready instance with a free slot, provisioned before on-demand, and the
/// instance's share-clock mark for the new request.
fn pick(g: &mut Inner, limit: u32) -> Option<(Arc<Instance>, f64)> {
    let n = g.instances.len();
    if n == 0 {
        return None;
    }
    let start = g.cursor % n;
    // The best instance in rotation, and the best out of rotation (static endpoints that failed
    // passive health), taken only when none is in rotation: fail open (`health`).
    let mut best: Option<(usize, (u8, u32))> = None;
    let mut fallback: Option<(usize, (u8, u32))> = None;
    let mut any_in_rotation = false;
    for k in 0..n {
        let idx = (start + k) % n;
        let inst = &g.instances[idx];
        if inst.state() != InstanceState::Ready {
            continue;
        }
        let in_rotation = inst.health.in_rotation();
        any_in_rotation |= in_rotation;
        let busy = inst.busy.load(Ordering::Relaxed);
        if busy >= limit {
            continue;
        }
        let rank = (inst.kind.load(Ordering::Relaxed), busy);
        let slot = if in_rotation {
            &mut best
        } else {
            &mut fallback
        };
        if slot.is_none_or(|(_, r)| rank < r) {
            *slot = Some((idx, rank));
        }
    }
    let (idx, _) = if any_in_rotation { best } else { fallback }?;
    g.cursor = idx + 1;
    let inst = g.instances[idx].clone();
    inst.busy.fetch_add(1, Ordering::Relaxed);
    let mark = inst.clock().start(Instant::now());
    Some((inst, mark))
}

struct WaiterGuard<'a> {
    rt: &'a Arc<FunctionRuntime>,
    key: WaiterKey,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut g = self.rt.lock();
        if g.waiters.remove(&self.key).is_some() {
            self.rt.metrics.queue_depth.set(g.waiters.len() as f64);
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FunctionState {
    pub in_flight: u32,
    pub queued: usize,
    /// The provisioned instance count fngate is keeping now.
    pub provisioned_target: u32,
    /// The target from the file, the admin API or the last scheduled rule.
    pub manual_target: u32,
    /// What the target-tracking rule wants, when there is one.
    pub tracked_target: Option<u32>,
    pub max_instances: u32,
    pub last_start_error: Option<String>,
    pub waiting_for_gpu: Option<String>,
    pub instances: Vec<InstanceInfo>,
}

/// Keeps an instance counted busy while a login session is open on it.
#[derive(Debug)]
pub struct SessionHold(Arc<Instance>);

impl Drop for SessionHold {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(now_ms(), Ordering::Relaxed);
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One instance as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceInfo {
    pub id: String,
    pub endpoint: Option<String>,
    pub kind: InstanceKind,
    pub state: InstanceState,
    pub busy: u32,
    /// Instance-login sessions open on it (each keeps it busy).
    pub sessions: u32,
    pub concurrency: u32,
    pub pid: Option<u32>,
    pub gpu: Option<GpuState>,
    pub age_s: f64,
    /// Seconds without work, for a ready instance that has none.
    pub idle_s: Option<f64>,
    pub cold_start_ms: Option<ColdStartState>,
    /// Passive health, for static endpoints.
    pub health: Option<HealthState>,
}

/// A static endpoint's passive health as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthState {
    pub state: health::Health,
    /// Failed calls in a row.
    pub consecutive_failures: u32,
    /// Ejections and failed probes in a row (the cooldown doubles with each).
    pub ejections: u32,
    /// Seconds to the next probe, while out of rotation.
    pub retry_in_s: Option<f64>,
    /// Why it left rotation, or why its last probe failed.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuState {
    pub card: u32,
    pub gpu_type: String,
    pub memory_gb: u32,
    pub fraction: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ColdStartState {
    pub spawn: f64,
    pub readiness: f64,
}

#[cfg(test)]
mod tests;
