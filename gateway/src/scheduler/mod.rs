//! Per-function scheduling: instances, their concurrency slots, and the bounded wait queue.
//!
//! This is where the per-instance concurrency limit is enforced. A `Slot` is the right to run one
//! request on one instance; it is only ever created under the function's lock when the instance has
//! `busy < instance_concurrency`, or handed over directly from a finishing request to the first
//! waiter (the busy count never dips, so nobody can slip in between). Dropping a `Slot` frees it.
//!
//! The lock is a plain `std::sync::Mutex`, held for a few comparisons and never across `.await`.

use crate::config::{BackendSpec, FunctionSpec};
use crate::telemetry::FunctionMetrics;
use arc_swap::ArcSwap;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceKind {
    Provisioned,
    OnDemand,
}

impl InstanceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceKind::Provisioned => "provisioned",
            InstanceKind::OnDemand => "on-demand",
        }
    }
}

/// One running copy of a function: an upstream address with a number of slots.
#[derive(Debug)]
pub struct Instance {
    /// Stable across reloads: `function@host:port` for static endpoints.
    pub id: Arc<str>,
    pub authority: http::uri::Authority,
    pub kind: InstanceKind,
    /// Requests in flight; changed only under the function lock, read freely for reporting.
    busy: AtomicU32,
    /// Set when a reload drops the instance: it takes no new work and finishes what it has.
    removed: AtomicBool,
}

impl Instance {
    pub fn busy(&self) -> u32 {
        self.busy.load(Ordering::Relaxed)
    }
}

/// Why a request could not get a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// `max_queued` requests are already waiting.
    QueueFull { max_queued: usize },
    /// Waited `max_queue_wait` without a slot.
    QueueTimeout { waited: Duration },
    /// The function was removed by a reload while the request waited.
    Retired,
}

/// The right to run one request on one instance; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    function: Arc<FunctionRuntime>,
    instance: Option<Arc<Instance>>,
}

impl Slot {
    pub fn instance(&self) -> &Arc<Instance> {
        self.instance
            .as_ref()
            .expect("slot holds its instance until dropped")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(inst) = self.instance.take() {
            self.function.release(inst);
        }
    }
}

/// A granted slot and how long the request queued for it.
#[derive(Debug)]
pub struct Acquired {
    pub slot: Slot,
    pub queue_wait: Duration,
}

type WaiterKey = (Reverse<i32>, u64);

#[derive(Debug, Default)]
struct Inner {
    instances: Vec<Arc<Instance>>,
    /// Ordered by priority (high first), then arrival.
    waiters: BTreeMap<WaiterKey, oneshot::Sender<Slot>>,
    next_seq: u64,
    /// Rotates the starting point among equally loaded instances so light load spreads out.
    cursor: usize,
    in_flight: u32,
    retired: bool,
}

/// The live state of one function; survives reloads so in-flight counts stay true.
#[derive(Debug)]
pub struct FunctionRuntime {
    spec: ArcSwap<FunctionSpec>,
    inner: Mutex<Inner>,
    pub metrics: FunctionMetrics,
}

impl FunctionRuntime {
    pub fn new(spec: Arc<FunctionSpec>) -> Arc<Self> {
        let metrics = FunctionMetrics::new(&spec.id);
        let rt = Arc::new(FunctionRuntime {
            spec: ArcSwap::new(spec.clone()),
            inner: Mutex::new(Inner::default()),
            metrics,
        });
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

    /// Applies a new spec from a reload: instances whose endpoint stays keep their busy counts.
    pub fn update(self: &Arc<Self>, spec: Arc<FunctionSpec>) {
        self.spec.store(spec.clone());
        {
            let mut g = self.lock();
            let BackendSpec::Static { endpoints } = &spec.backend;
            let mut next = Vec::with_capacity(endpoints.len());
            for ep in endpoints {
                let existing = g
                    .instances
                    .iter()
                    .find(|i| i.authority == ep.authority)
                    .cloned();
                next.push(existing.unwrap_or_else(|| {
                    Arc::new(Instance {
                        id: format!("{}@{}", spec.name, ep.authority).into(),
                        authority: ep.authority.clone(),
                        kind: InstanceKind::Provisioned,
                        busy: AtomicU32::new(0),
                        removed: AtomicBool::new(false),
                    })
                }));
            }
            for old in &g.instances {
                if !next.iter().any(|n| Arc::ptr_eq(n, old)) {
                    old.removed.store(true, Ordering::Relaxed);
                }
            }
            g.instances = next;
        }
        // The concurrency limit may have grown or instances been added: serve waiters now.
        self.dispatch();
    }

    /// The function was removed by a reload: waiters are told at once, running work finishes.
    pub fn retire(&self) {
        let waiters = {
            let mut g = self.lock();
            g.retired = true;
            std::mem::take(&mut g.waiters)
        };
        self.metrics.queue_depth.set(0.0);
        drop(waiters);
    }

    /// Takes a free slot, or waits for one in the bounded queue.
    pub async fn acquire(self: &Arc<Self>, priority: i32) -> Result<Acquired, ScheduleError> {
        let start = Instant::now();
        let (key, rx, wait) = {
            let mut g = self.lock();
            if g.retired {
                return Err(ScheduleError::Retired);
            }
            let limit = self.spec.load().instance_concurrency;
            if let Some(inst) = g.waiters.is_empty().then(|| pick(&mut g, limit)).flatten() {
                g.in_flight += 1;
                self.metrics.in_flight.increment(1.0);
                drop(g);
                return Ok(Acquired {
                    slot: Slot {
                        function: self.clone(),
                        instance: Some(inst),
                    },
                    queue_wait: Duration::ZERO,
                });
            }
            let spec = self.spec.load();
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
            (key, rx, spec.max_queue_wait)
        };
        // Removes our entry if we stop waiting for any reason (timeout, client gone).
        let guard = WaiterGuard { rt: self, key };
        let mut rx = rx;
        let result = match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(_)) => Err(ScheduleError::Retired),
            // A slot handed over in the same instant as the deadline is still ours to use.
            Err(_) => rx.try_recv().map_err(|_| ScheduleError::QueueTimeout {
                waited: start.elapsed(),
            }),
        };
        drop(guard);
        result.map(|slot| Acquired {
            slot,
            queue_wait: start.elapsed(),
        })
    }

    fn release(self: &Arc<Self>, inst: Arc<Instance>) {
        {
            let mut g = self.lock();
            inst.busy.fetch_sub(1, Ordering::Relaxed);
            g.in_flight -= 1;
            self.metrics.in_flight.decrement(1.0);
            if g.waiters.is_empty() {
                return;
            }
        }
        self.dispatch();
    }

    /// Pairs free slots with waiters, first by priority then arrival. Sends happen outside the lock;
    /// a waiter that gave up in the meantime hands its slot straight back through `Slot::drop`.
    fn dispatch(self: &Arc<Self>) {
        let mut grants = Vec::new();
        {
            let mut g = self.lock();
            let limit = self.spec.load().instance_concurrency;
            while !g.waiters.is_empty() {
                let Some(inst) = pick(&mut g, limit) else {
                    break;
                };
                let (_, tx) = g.waiters.pop_first().expect("checked non-empty");
                g.in_flight += 1;
                self.metrics.in_flight.increment(1.0);
                grants.push((tx, inst));
            }
            if !grants.is_empty() {
                self.metrics.queue_depth.set(g.waiters.len() as f64);
            }
        }
        for (tx, inst) in grants {
            // On failure the returned Slot is dropped here, which releases it and re-dispatches.
            let _ = tx.send(Slot {
                function: self.clone(),
                instance: Some(inst),
            });
        }
    }

    /// Counts for plugins routing by load, read without allocating: (provisioned instances,
    /// on-demand instances, in flight, queued).
    pub fn load(&self) -> (u32, u32, u32, usize) {
        let g = self.lock();
        let provisioned = g
            .instances
            .iter()
            .filter(|i| i.kind == InstanceKind::Provisioned)
            .count() as u32;
        (
            provisioned,
            g.instances.len() as u32 - provisioned,
            g.in_flight,
            g.waiters.len(),
        )
    }

    /// A consistent picture for the admin API.
    pub fn snapshot(&self) -> FunctionState {
        let g = self.lock();
        FunctionState {
            in_flight: g.in_flight,
            queued: g.waiters.len(),
            instances: g
                .instances
                .iter()
                .map(|i| InstanceState {
                    id: i.id.to_string(),
                    endpoint: format!("http://{}", i.authority),
                    kind: i.kind,
                    busy: i.busy(),
                })
                .collect(),
        }
    }
}

/// Least-loaded instance with a free slot, provisioned before on-demand.
fn pick(g: &mut Inner, limit: u32) -> Option<Arc<Instance>> {
    let n = g.instances.len();
    if n == 0 {
        return None;
    }
    let start = g.cursor % n;
    let mut best: Option<(usize, (u8, u32))> = None;
    for k in 0..n {
        let idx = (start + k) % n;
        let inst = &g.instances[idx];
        let busy = inst.busy.load(Ordering::Relaxed);
        if busy >= limit || inst.removed.load(Ordering::Relaxed) {
            continue;
        }
        let rank = (matches!(inst.kind, InstanceKind::OnDemand) as u8, busy);
        if best.is_none_or(|(_, r)| rank < r) {
            best = Some((idx, rank));
        }
    }
    let (idx, _) = best?;
    g.cursor = idx + 1;
    let inst = g.instances[idx].clone();
    inst.busy.fetch_add(1, Ordering::Relaxed);
    Some(inst)
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
    pub instances: Vec<InstanceState>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceState {
    pub id: String,
    pub endpoint: String,
    pub kind: InstanceKind,
    pub busy: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Endpoint;

    fn spec(
        endpoints: &[&str],
        concurrency: u32,
        max_queued: usize,
        wait_ms: u64,
    ) -> Arc<FunctionSpec> {
        Arc::new(FunctionSpec {
            service: "s".into(),
            name: "f".into(),
            id: "s/f".into(),
            instance_concurrency: concurrency,
            timeout: Duration::from_secs(5),
            max_queued,
            max_queue_wait: Duration::from_millis(wait_ms),
            max_body: 1024,
            backend: BackendSpec::Static {
                endpoints: endpoints
                    .iter()
                    .map(|e| Endpoint {
                        authority: e.parse().unwrap(),
                    })
                    .collect(),
            },
        })
    }

    #[tokio::test]
    async fn least_loaded_then_queue_then_full() {
        let rt = FunctionRuntime::new(spec(&["a:1", "b:1"], 2, 1, 10_000));
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(rt.acquire(0).await.unwrap().slot);
        }
        // Two per instance, never more.
        let st = rt.snapshot();
        assert!(st.instances.iter().all(|i| i.busy == 2), "{st:?}");
        // One may queue; the next is refused at once.
        let rt2 = rt.clone();
        let waiter =
            tokio::spawn(async move { rt2.acquire(0).await.map(|a| a.slot.instance().id.clone()) });
        tokio::task::yield_now().await;
        while rt.snapshot().queued == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            rt.acquire(0).await.unwrap_err(),
            ScheduleError::QueueFull { max_queued: 1 }
        );
        // Freeing a slot hands it to the waiter directly.
        let freed = held.remove(0);
        let freed_id = freed.instance().id.clone();
        drop(freed);
        assert_eq!(waiter.await.unwrap().unwrap(), freed_id);
        drop(held);
        let st = rt.snapshot();
        assert_eq!(st.in_flight, 0);
        assert!(st.instances.iter().all(|i| i.busy == 0), "{st:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn queue_wait_times_out_and_leaves_no_entry() {
        let rt = FunctionRuntime::new(spec(&["a:1"], 1, 10, 50));
        let _held = rt.acquire(0).await.unwrap();
        let err = rt.acquire(0).await.unwrap_err();
        assert!(matches!(err, ScheduleError::QueueTimeout { .. }));
        assert_eq!(rt.snapshot().queued, 0);
    }

    #[tokio::test]
    async fn priority_orders_waiters() {
        let rt = FunctionRuntime::new(spec(&["a:1"], 1, 10, 10_000));
        let held = rt.acquire(0).await.unwrap().slot;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, prio) in [(0, 0), (1, 5), (2, 1)] {
            let rt2 = rt.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let a = rt2.acquire(prio).await.unwrap();
                tx.send(i).unwrap();
                drop(a);
            });
            while rt.snapshot().queued < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        let order = [
            rx.recv().await.unwrap(),
            rx.recv().await.unwrap(),
            rx.recv().await.unwrap(),
        ];
        assert_eq!(order, [1, 2, 0]);
    }

    #[tokio::test]
    async fn cancelled_waiter_does_not_leak_a_slot() {
        let rt = FunctionRuntime::new(spec(&["a:1"], 1, 10, 10_000));
        let held = rt.acquire(0).await.unwrap().slot;
        let rt2 = rt.clone();
        let w = tokio::spawn(async move { rt2.acquire(0).await.map(|_| ()) });
        while rt.snapshot().queued == 0 {
            tokio::task::yield_now().await;
        }
        w.abort();
        let _ = w.await;
        assert_eq!(rt.snapshot().queued, 0);
        drop(held);
        assert_eq!(rt.snapshot().in_flight, 0);
        assert!(rt.acquire(0).await.is_ok());
    }

    #[tokio::test]
    async fn reload_keeps_busy_counts_and_serves_waiters() {
        let rt = FunctionRuntime::new(spec(&["a:1"], 1, 10, 10_000));
        let held = rt.acquire(0).await.unwrap().slot;
        let rt2 = rt.clone();
        let w =
            tokio::spawn(async move { rt2.acquire(0).await.map(|a| a.slot.instance().id.clone()) });
        while rt.snapshot().queued == 0 {
            tokio::task::yield_now().await;
        }
        // A reload adds an endpoint: the waiter is served by it at once.
        rt.update(spec(&["a:1", "b:2"], 1, 10, 10_000));
        assert_eq!(&*w.await.unwrap().unwrap(), "f@b:2");
        assert_eq!(rt.snapshot().instances[0].busy, 1);
        drop(held);
        assert_eq!(rt.snapshot().in_flight, 0);
    }

    #[tokio::test]
    async fn hard_limit_under_contention() {
        let rt = FunctionRuntime::new(spec(&["a:1", "b:1"], 2, 1000, 10_000));
        let peak = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let rt = rt.clone();
            let peak = peak.clone();
            tasks.push(tokio::spawn(async move {
                let a = rt.acquire(0).await.unwrap();
                let b = a.slot.instance().busy();
                peak.fetch_max(b, Ordering::Relaxed);
                tokio::task::yield_now().await;
                drop(a);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 2);
        assert_eq!(rt.snapshot().in_flight, 0);
    }
}
