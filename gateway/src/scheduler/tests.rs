//! Scheduler unit tests: slots, the queue, and instance decisions with a recording launcher.

use super::*;
use crate::config::{DEFAULT_PASSIVE_FAILURES, Endpoint};

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
            health: Default::default(),
        },
        gpu: None,
        scaling: crate::config::ScalingSpec::fixed(endpoints.len() as u32),
        async_: Default::default(),
        cpu: crate::config::DEFAULT_CPU,
        memory: crate::config::DEFAULT_MEMORY,
    })
}

#[tokio::test]
async fn least_loaded_then_queue_then_full() {
    let rt = FunctionRuntime::new(spec(&["a:1", "b:1"], 2, 1, 10_000), node());
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

#[tokio::test]
async fn a_failing_static_endpoint_leaves_rotation_and_probes_back() {
    let rt = FunctionRuntime::new(spec(&["a:1", "b:1"], 1, 10, 10_000), node());
    let a = rt.instance("f@a:1").unwrap();
    let b = rt.instance("f@b:1").unwrap();
    // Timeouts do not count by default; an answer in between restarts the count.
    rt.call_failed(&a, UpstreamFailure::Timeout, "slow");
    rt.call_failed(&a, UpstreamFailure::Connect, "refused");
    rt.call_failed(&a, UpstreamFailure::Protocol, "reset");
    rt.call_answered(&a);
    assert_eq!(a.health.failures(), 0);
    for _ in 0..DEFAULT_PASSIVE_FAILURES {
        assert!(a.health.in_rotation());
        rt.call_failed(&a, UpstreamFailure::Connect, "refused");
    }
    let st = rt.snapshot();
    let h = st.instances[0].health.as_ref().unwrap();
    assert_eq!(h.state, health::Health::Unhealthy);
    assert_eq!(h.last_error.as_deref(), Some("refused"));
    assert!(h.retry_in_s.unwrap() > 4.0, "{h:?}");
    // Every request goes to b; with b's one slot taken the next one waits rather than use a.
    let held = rt.acquire(0).await.unwrap().slot;
    assert!(Arc::ptr_eq(held.instance(), &b));
    let rt2 = rt.clone();
    let waiter = tokio::spawn(async move { rt2.acquire(0).await.map(|x| x.slot) });
    while rt.snapshot().queued == 0 {
        tokio::task::yield_now().await;
    }
    // b fails too: nothing is in rotation, so the waiter fails open onto a.
    for _ in 0..DEFAULT_PASSIVE_FAILURES {
        rt.call_failed(&b, UpstreamFailure::Protocol, "malformed");
    }
    let got = waiter.await.unwrap().unwrap();
    assert!(Arc::ptr_eq(got.instance(), &a));
    drop((got, held));
    // Not due yet: no probe. A served call on b brings it back at once.
    assert!(rt.probes_due().is_empty());
    rt.call_answered(&b);
    assert!(b.health.in_rotation());
    for _ in 0..4 {
        let s = rt.acquire(0).await.unwrap().slot;
        assert!(Arc::ptr_eq(s.instance(), &b));
    }
    // A passing probe brings a back (ejected here with a 1 ms cooldown so the probe is due).
    rt.call_answered(&a);
    let quick = crate::config::PassiveHealth {
        cooldown: Duration::from_millis(1),
        ..Default::default()
    };
    assert!(a.health.eject(&quick, now_ms(), "x".into()).is_some());
    assert!(!a.health.in_rotation());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let due = rt.probes_due();
    assert_eq!(due.len(), 1);
    assert!(Arc::ptr_eq(&due[0].0, &a));
    assert_eq!(due[0].1, "/");
    rt.probe_result(&a, Ok(()));
    assert!(a.health.in_rotation());
}

#[tokio::test(start_paused = true)]
async fn queue_wait_times_out_and_leaves_no_entry() {
    let rt = FunctionRuntime::new(spec(&["a:1"], 1, 10, 50), node());
    let _held = rt.acquire(0).await.unwrap();
    let err = rt.acquire(0).await.unwrap_err();
    assert!(matches!(err, ScheduleError::QueueTimeout { .. }));
    assert_eq!(rt.snapshot().queued, 0);
}

#[tokio::test]
async fn priority_orders_waiters() {
    let rt = FunctionRuntime::new(spec(&["a:1"], 1, 10, 10_000), node());
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
    let rt = FunctionRuntime::new(spec(&["a:1"], 1, 10, 10_000), node());
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
    let rt = FunctionRuntime::new(spec(&["a:1"], 1, 10, 10_000), node());
    let held = rt.acquire(0).await.unwrap().slot;
    let rt2 = rt.clone();
    let w = tokio::spawn(async move { rt2.acquire(0).await.map(|a| a.slot.instance().id.clone()) });
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
    let rt = FunctionRuntime::new(spec(&["a:1", "b:1"], 2, 1000, 10_000), node());
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

fn node() -> Arc<Node> {
    Node::new(GpuPool::new(&[], 10))
}

/// Records launches; the test plays the process by calling `instance_ready` / `instance_gone`.
#[derive(Debug, Default)]
struct FakeLauncher {
    launched: Mutex<Vec<(Arc<FunctionRuntime>, Arc<Instance>)>>,
}

impl Launcher for FakeLauncher {
    fn launch(&self, f: Arc<FunctionRuntime>, i: Arc<Instance>, _spec: Arc<ProcessSpec>) {
        i.set_authority("127.0.0.1:1".parse().unwrap());
        self.launched.lock().unwrap().push((f, i));
    }
}

impl FakeLauncher {
    fn count(&self) -> usize {
        self.launched.lock().unwrap().len()
    }
    fn get(&self, n: usize) -> (Arc<FunctionRuntime>, Arc<Instance>) {
        self.launched.lock().unwrap()[n].clone()
    }
}

const COLD: ColdStart = ColdStart {
    spawn: Duration::from_millis(1),
    readiness: Duration::from_millis(5),
};

fn process_spec(
    concurrency: u32,
    max_instances: u32,
    provisioned: u32,
    gpu: Option<(&str, u32)>,
    wait_ms: u64,
) -> Arc<FunctionSpec> {
    let mut scaling = crate::config::ScalingSpec::fixed(0);
    scaling.max_instances = max_instances;
    scaling.provisioned = provisioned;
    scaling.idle_timeout = Duration::from_millis(20);
    Arc::new(FunctionSpec {
        service: "s".into(),
        name: "p".into(),
        id: "s/p".into(),
        instance_concurrency: concurrency,
        timeout: Duration::from_secs(5),
        max_queued: 100,
        max_queue_wait: Duration::from_millis(wait_ms),
        max_body: 1024,
        backend: BackendSpec::Process(Arc::new(ProcessSpec {
            command: vec!["true".into()],
            env: Default::default(),
            port_env: "PORT".into(),
            cwd: "/".into(),
            readiness: crate::config::Readiness {
                path: "/health".into(),
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                failure_threshold: 3,
            },
            startup_timeout: Duration::from_secs(5),
            stop_grace: Duration::from_secs(1),
        })),
        gpu: gpu.map(|(t, m)| crate::config::GpuRequest {
            gpu_type: t.into(),
            memory_gb: m,
        }),
        scaling,
        async_: Default::default(),
        cpu: crate::config::DEFAULT_CPU,
        memory: crate::config::DEFAULT_MEMORY,
    })
}

fn with_launcher(gpus: GpuPool) -> (Arc<Node>, Arc<FakeLauncher>) {
    let node = Node::new(gpus);
    let l = Arc::new(FakeLauncher::default());
    node.set_launcher(l.clone());
    (node, l)
}

async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if f() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never held");
}

#[tokio::test]
async fn cold_starts_only_what_the_queue_needs() {
    let (node, l) = with_launcher(GpuPool::new(&[], 10));
    let rt = FunctionRuntime::new(process_spec(2, 10, 0, None, 10_000), node);
    let mut waiting = Vec::new();
    for _ in 0..5 {
        let rt = rt.clone();
        waiting.push(tokio::spawn(async move {
            let a = rt.acquire(0).await.unwrap();
            (a.slot.cold(), a.slot.instance().id.clone(), a)
        }));
    }
    until(|| rt.snapshot().queued == 5).await;
    // Five waiters at two slots per instance: three instances, not five.
    assert_eq!(l.count(), 3);
    let (f, first) = l.get(0);
    assert!(f.instance_ready(&first, COLD));
    until(|| rt.snapshot().queued == 3).await;
    // More arrivals covered by the two instances still starting start nothing new.
    assert_eq!(l.count(), 3);
    for n in 1..3 {
        let (f, i) = l.get(n);
        assert!(f.instance_ready(&i, COLD));
    }
    let mut held = Vec::new();
    for w in waiting {
        let (cold, _, a) = w.await.unwrap();
        assert!(
            cold,
            "every waiter got a slot on a freshly started instance"
        );
        held.push(a);
    }
    let st = rt.snapshot();
    assert!(st.instances.iter().all(|i| i.busy <= 2), "{st:?}");
    drop(held);
    // A warm request is not a cold start.
    let a = rt.acquire(0).await.unwrap();
    assert!(!a.slot.cold());
}

#[tokio::test]
async fn a_waiter_takes_whichever_slot_frees_first() {
    let (node, l) = with_launcher(GpuPool::new(&[], 10));
    let rt = FunctionRuntime::new(process_spec(1, 2, 0, None, 10_000), node);
    let w = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.acquire(0).await.unwrap() })
    };
    until(|| l.count() == 1).await;
    let (f, i1) = l.get(0);
    f.instance_ready(&i1, COLD);
    let held = w.await.unwrap();
    // The next request starts a second instance, but the first frees up sooner.
    let w2 = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.acquire(0).await.unwrap() })
    };
    until(|| l.count() == 2).await;
    drop(held);
    let got = w2.await.unwrap();
    assert!(Arc::ptr_eq(got.slot.instance(), &i1));
    assert!(!got.slot.cold());
    // The instance that finishes starting later serves the next request.
    let (f, i2) = l.get(1);
    assert!(f.instance_ready(&i2, COLD));
    let third = rt.acquire(0).await.unwrap();
    assert!(Arc::ptr_eq(third.slot.instance(), &i2));
}

#[tokio::test]
async fn repeated_start_failures_fail_waiters_and_back_off() {
    let (node, l) = with_launcher(GpuPool::new(&[], 10));
    let rt = FunctionRuntime::new(process_spec(1, 3, 0, None, 10_000), node);
    let w = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.acquire(0).await.map(|_| ()) })
    };
    until(|| l.count() == 1).await;
    let (f, i) = l.get(0);
    f.instance_gone(&i, Gone::StartFailed("exit status 1".into()));
    // The first failure is retried at once.
    assert_eq!(l.count(), 2);
    let (f, i) = l.get(1);
    f.instance_gone(&i, Gone::StartFailed("exit status 1".into()));
    match w.await.unwrap() {
        Err(ScheduleError::StartFailed { detail, .. }) => assert_eq!(detail, "exit status 1"),
        other => panic!("{other:?}"),
    }
    // New requests are told at once while starts back off.
    assert!(matches!(
        rt.acquire(0).await,
        Err(ScheduleError::StartFailed { .. })
    ));
    assert_eq!(l.count(), 2);
    assert!(rt.snapshot().instances.is_empty());
}

#[tokio::test]
async fn idle_on_demand_instances_are_reclaimed_but_never_busy_ones() {
    let (node, l) = with_launcher(GpuPool::new(&[], 10));
    let rt = FunctionRuntime::new(process_spec(1, 3, 0, None, 10_000), node);
    let a = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.acquire(0).await.unwrap() })
    };
    let b = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.acquire(0).await.unwrap() })
    };
    until(|| l.count() == 2).await;
    for n in 0..2 {
        let (f, i) = l.get(n);
        f.instance_ready(&i, COLD);
    }
    let a = a.await.unwrap();
    let b = b.await.unwrap();
    let idle = b.slot.instance().clone();
    drop(b);
    std::thread::sleep(Duration::from_millis(30));
    rt.maintain(Instant::now(), unix_now());
    assert_eq!(idle.state(), InstanceState::Stopping);
    assert_eq!(a.slot.instance().state(), InstanceState::Ready);
    let (f, _) = l.get(0);
    f.instance_gone(&idle, Gone::Stopped);
    assert_eq!(rt.snapshot().instances.len(), 1);
}

#[tokio::test]
async fn provisioned_target_up_promotes_then_starts_and_down_drains() {
    let (node, l) = with_launcher(GpuPool::new(&[], 10));
    let rt = FunctionRuntime::new(process_spec(1, 4, 0, None, 10_000), node);
    // One on-demand instance, busy.
    let a = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.acquire(0).await.unwrap() })
    };
    until(|| l.count() == 1).await;
    let (f, i0) = l.get(0);
    f.instance_ready(&i0, COLD);
    let a = a.await.unwrap();
    assert_eq!(i0.kind(), InstanceKind::OnDemand);
    // Target 3: the running instance is promoted, two more start.
    rt.set_provisioned_target(3).unwrap();
    assert_eq!(i0.kind(), InstanceKind::Provisioned);
    assert_eq!(l.count(), 3);
    for n in 1..3 {
        let (f, i) = l.get(n);
        assert_eq!(i.kind(), InstanceKind::Provisioned);
        f.instance_ready(&i, COLD);
    }
    // Above max_instances is refused with a reason.
    assert!(
        rt.set_provisioned_target(5)
            .unwrap_err()
            .contains("max_instances")
    );
    // Target 1: the two idle ones stop, the busy one is kept (least busy go first).
    rt.set_provisioned_target(1).unwrap();
    let st = rt.snapshot();
    let stopping = st
        .instances
        .iter()
        .filter(|i| i.state == InstanceState::Stopping)
        .count();
    assert_eq!(stopping, 2, "{st:?}");
    assert_eq!(i0.state(), InstanceState::Ready);
    // Target 0 with the instance busy: it drains and stops when its request ends.
    rt.set_provisioned_target(0).unwrap();
    assert_eq!(i0.state(), InstanceState::Draining);
    drop(a);
    assert_eq!(i0.state(), InstanceState::Stopping);
}

#[tokio::test]
async fn provisioned_instances_are_preferred() {
    let (node, l) = with_launcher(GpuPool::new(&[], 10));
    let rt = FunctionRuntime::new(process_spec(4, 3, 1, None, 10_000), node);
    rt.maintain(Instant::now(), unix_now());
    assert_eq!(l.count(), 1);
    let (f, p) = l.get(0);
    f.instance_ready(&p, COLD);
    // Fill the provisioned one, then one request cold-starts an on-demand instance.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(rt.acquire(0).await.unwrap());
    }
    let w = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.acquire(0).await.unwrap() })
    };
    until(|| l.count() == 2).await;
    let (f, od) = l.get(1);
    f.instance_ready(&od, COLD);
    held.push(w.await.unwrap());
    assert_eq!(od.kind(), InstanceKind::OnDemand);
    held.truncate(1);
    // With room on both, new work goes to the provisioned instance.
    for _ in 0..3 {
        let a = rt.acquire(0).await.unwrap();
        assert!(Arc::ptr_eq(a.slot.instance(), &p));
        held.push(a);
    }
}

#[tokio::test(start_paused = true)]
async fn gpu_capacity_packs_cards_and_names_the_type_when_full() {
    use super::gpu::CardType;
    let pool = GpuPool::new(
        &[CardType {
            name: "A10".into(),
            memory_gb: 24,
            count: 2,
        }],
        1,
    );
    let (node, l) = with_launcher(pool);
    let rt = FunctionRuntime::new(process_spec(1, 3, 0, Some(("A10", 12)), 200), node.clone());
    let mut waits = Vec::new();
    for _ in 0..3 {
        let rt = rt.clone();
        waits.push(tokio::spawn(async move { rt.acquire(0).await.map(|_| ()) }));
    }
    until(|| rt.snapshot().queued == 3).await;
    // Two 12 GB instances share card 0; the account's one-card cap refuses a second card.
    assert_eq!(l.count(), 2);
    for n in 0..2 {
        assert_eq!(l.get(n).1.gpu.as_ref().unwrap().card, 0);
    }
    assert_eq!(node.gpus.cards_in_use(), 1);
    assert!(rt.snapshot().waiting_for_gpu.is_some());
    for w in waits {
        let r = w.await.unwrap();
        assert!(
            matches!(&r, Err(ScheduleError::GpuCapacity { gpu_type, .. }) if gpu_type == "A10"),
            "{r:?}"
        );
    }
    // A stopped instance gives its share back.
    let (f, i) = l.get(0);
    f.instance_gone(&i, Gone::StartFailed("x".into()));
    let (f, i) = l.get(1);
    f.instance_gone(&i, Gone::Stopped);
    assert_eq!(node.gpus.cards_in_use(), 0);
}

#[tokio::test]
async fn target_tracking_raises_the_provisioned_target_with_demand() {
    let (node, l) = with_launcher(GpuPool::new(&[], 10));
    let mut spec = (*process_spec(1, 4, 0, None, 10_000)).clone();
    spec.scaling.tracking = Some(scaling::TrackingRule {
        utilization: 0.5,
        min: 0,
        max: 4,
        window: Duration::from_secs(60),
    });
    let rt = FunctionRuntime::new(Arc::new(spec), node);
    // No demand yet: the rule wants its minimum, nothing starts.
    rt.maintain(Instant::now(), unix_now());
    assert_eq!(l.count(), 0);
    // Two requests in flight on two on-demand instances.
    let mut held = Vec::new();
    for n in 0..2 {
        let w = {
            let rt = rt.clone();
            tokio::spawn(async move { rt.acquire(0).await.unwrap() })
        };
        until(|| l.count() == n + 1).await;
        let (f, i) = l.get(n);
        f.instance_ready(&i, COLD);
        held.push(w.await.unwrap());
    }
    // The rule averages demand over its window: samples 0 and 2 → mean 1, at utilization 0.5
    // and one slot each → 2 provisioned instances: the two running ones are promoted.
    rt.maintain(Instant::now(), unix_now());
    let st = rt.snapshot();
    assert_eq!(st.tracked_target, Some(2), "{st:?}");
    assert_eq!(l.count(), 2);
    assert!(
        st.instances
            .iter()
            .all(|i| i.kind == InstanceKind::Provisioned),
        "{st:?}"
    );
    // Another sample at 2 → mean 4/3 → 3: one more starts, ahead of any new request.
    rt.maintain(Instant::now(), unix_now());
    let st = rt.snapshot();
    assert_eq!(st.provisioned_target, 3, "{st:?}");
    assert_eq!(l.count(), 3);
    assert_eq!(l.get(2).1.kind(), InstanceKind::Provisioned);
}

/// Slots carry the share-clock marks: two overlapping requests on one instance are charged
/// the instance's busy time between them, the inner one half its own time.
#[tokio::test]
async fn overlapping_slots_share_the_instance_time() {
    let rt = FunctionRuntime::new(spec(&["a:1"], 2, 1, 10_000), node());
    let t0 = Instant::now();
    let outer = rt.acquire(0).await.unwrap().slot;
    std::thread::sleep(Duration::from_millis(30));
    let t_inner = Instant::now();
    let inner = rt.acquire(0).await.unwrap().slot;
    std::thread::sleep(Duration::from_millis(40));
    let inner_usage = inner.finish(Some("t")).unwrap();
    let inner_time = t_inner.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(30));
    let outer_usage = outer.finish(None).unwrap();
    let busy = t0.elapsed().as_secs_f64();
    assert_eq!(inner_usage.billing, Billing::Request);
    // The inner request was always sharing: half its slot time (taken within the marks).
    assert!(
        inner_usage.busy_s <= inner_time / 2.0 && inner_usage.busy_s >= 0.02,
        "{inner_usage:?} of {inner_time}"
    );
    let sum = inner_usage.busy_s + outer_usage.busy_s;
    assert!(sum <= busy && sum >= 0.1, "{sum} of {busy}");
    assert!((inner_usage.vcpu_s - inner_usage.busy_s).abs() < 1e-12);
    // Both slots are free again.
    assert_eq!(rt.snapshot().in_flight, 0);
}
