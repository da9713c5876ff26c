//! Scheduling decisions per second with many functions configured: acquire + release cycles
//! through `FunctionRuntime` (the per-function scheduler), no network. Run by bench/scheduler.sh:
//! `cargo run --release -p fngate --example scheduler_rate`
//!
//! Builds `FUNCTIONS` (default 1,000) functions, each with a static backend of 2 endpoints and
//! `instance_concurrency = 4` (8 slots), twice: once before the Prometheus recorder is installed
//! (metric handles are no-ops) and once after (`fngate::telemetry::install_metrics`, as
//! `fngate serve` runs). Then it measures each mode on both sets back to back:
//!
//! - `single`: one task on a current-thread runtime; each decision picks a pseudo-random function
//!   (an LCG, so every run draws the same sequence), takes a slot and frees it;
//! - `spread-tN`: N tasks on a multi-thread runtime with 2 workers, each with its own LCG seed;
//! - `one-fn-tN`: N tasks (N ≤ 8, so never more than its 8 slots) all on function 0: the cost of
//!   the function's lock when both workers hammer it;
//! - `one-fn-queue-t32`: 32 tasks on function 0 holding their slot across one `yield_now`, so
//!   24 of them queue: the waiter path (queue entry, hand-over of a freed slot, wake-up).
//!
//! Prints one line per mode: `mode=… metrics=… tasks=… decisions=… secs=… decisions_per_s=…
//! ns_per_decision=…` (ns per decision is wall time / decisions, i.e. inverse throughput).
//! `ITERS` (default 2,000,000) decisions per mode; `FUNCTIONS` functions.

use fngate::config::{BackendSpec, Endpoint, FunctionSpec, ScalingSpec};
use fngate::scheduler::gpu::GpuPool;
use fngate::scheduler::{FunctionRuntime, Node};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENDPOINTS: u16 = 2;
const CONCURRENCY: u32 = 4;
const WORKERS: usize = 2;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Knuth's MMIX LCG; the high bits are the usable ones.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn spec(i: usize) -> Arc<FunctionSpec> {
    // Static endpoints are never connected to here: the scheduler only hands out slots.
    let base = 20_000 + (i as u16) * ENDPOINTS;
    Arc::new(FunctionSpec {
        service: "bench".into(),
        name: format!("f{i}"),
        id: format!("bench/f{i}"),
        instance_concurrency: CONCURRENCY,
        timeout: Duration::from_secs(30),
        max_queued: 1_000,
        max_queue_wait: Duration::from_secs(10),
        max_body: 1 << 20,
        backend: BackendSpec::Static {
            endpoints: (0..ENDPOINTS)
                .map(|k| Endpoint {
                    authority: format!("127.0.0.1:{}", base + k)
                        .parse()
                        .expect("authority"),
                })
                .collect(),
            health: Default::default(),
        },
        gpu: None,
        scaling: ScalingSpec::fixed(ENDPOINTS as u32),
        async_: Default::default(),
        cpu: fngate::config::DEFAULT_CPU,
        memory: fngate::config::DEFAULT_MEMORY,
    })
}

fn build(n: usize) -> Arc<Vec<Arc<FunctionRuntime>>> {
    let node = Node::new(GpuPool::new(&[], 10));
    Arc::new(
        (0..n)
            .map(|i| FunctionRuntime::new(spec(i), node.clone()))
            .collect(),
    )
}

/// One decision: take a slot on function `f` and free it at once.
async fn cycle(f: &Arc<FunctionRuntime>) {
    let a = f.acquire(0).await.expect("a free slot");
    drop(a);
}

fn report(mode: &str, metrics: &str, tasks: usize, decisions: usize, took: Duration) {
    let secs = took.as_secs_f64();
    println!(
        "mode={mode} metrics={metrics} tasks={tasks} decisions={decisions} secs={secs:.3} decisions_per_s={:.0} ns_per_decision={:.1}",
        decisions as f64 / secs,
        secs * 1e9 / decisions as f64
    );
}

fn single(fns: &Arc<Vec<Arc<FunctionRuntime>>>, iters: usize, metrics: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let n = fns.len();
    rt.block_on(async {
        let mut lcg = Lcg(1);
        // Warm-up: touch every function once.
        for f in fns.iter() {
            cycle(f).await;
        }
        let t = Instant::now();
        for _ in 0..iters {
            cycle(&fns[lcg.next(n)]).await;
        }
        report("single", metrics, 1, iters, t.elapsed());
    });
}

/// One multi-task measurement.
#[derive(Clone)]
struct Case {
    mode: String,
    tasks: usize,
    iters: usize,
    /// Every task on function 0 instead of a pseudo-random one.
    one_function: bool,
    /// Keep each slot across one yield (so others queue when tasks exceed slots).
    hold: bool,
}

/// `case.tasks` tasks on the 2-worker runtime.
fn multi(
    rt: &tokio::runtime::Runtime,
    fns: &Arc<Vec<Arc<FunctionRuntime>>>,
    metrics: &str,
    case: Case,
) {
    let Case {
        mode,
        tasks,
        iters,
        one_function,
        hold,
    } = case;
    let per_task = iters / tasks;
    let n = fns.len();
    // No start barrier: a task woken by another on the same worker lands in that worker's LIFO
    // slot, which the other worker cannot steal, so tasks that never yield would run one after
    // the other. Spawned from outside the runtime, tasks go to the shared queue and both workers
    // take some. Each task times itself; the run is first start to last end (the thread that
    // awaits the handles may be scheduled long after the workers finished).
    let took = rt.block_on(async {
        let mut handles = Vec::with_capacity(tasks);
        for k in 0..tasks {
            let fns = fns.clone();
            handles.push(tokio::spawn(async move {
                let mut lcg = Lcg(k as u64 * 7919 + 1);
                let t0 = Instant::now();
                for _ in 0..per_task {
                    let f = if one_function { 0 } else { lcg.next(n) };
                    let a = fns[f].acquire(0).await.expect("a slot");
                    if hold {
                        tokio::task::yield_now().await;
                    }
                    drop(a);
                }
                (t0, Instant::now())
            }));
        }
        let mut first: Option<Instant> = None;
        let mut last: Option<Instant> = None;
        for h in handles {
            let (a, b) = h.await.expect("task");
            first = Some(first.map_or(a, |f| f.min(a)));
            last = Some(last.map_or(b, |l| l.max(b)));
        }
        last.expect("tasks ran") - first.expect("tasks ran")
    });
    report(&mode, metrics, tasks, per_task * tasks, took);
}

/// Every mode, each measured on both sets back to back (metrics off, then on).
fn run_all(sets: &[(&Arc<Vec<Arc<FunctionRuntime>>>, &str)], iters: usize) {
    for (fns, metrics) in sets {
        single(fns, iters, metrics);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .expect("runtime");
    let case = |mode: String, tasks, iters, one_function, hold| Case {
        mode,
        tasks,
        iters,
        one_function,
        hold,
    };
    let mut cases = Vec::new();
    for tasks in [2, 8] {
        cases.push(case(format!("spread-t{tasks}"), tasks, iters, false, false));
    }
    for tasks in [2, 8] {
        cases.push(case(format!("one-fn-t{tasks}"), tasks, iters, true, false));
    }
    // Fewer iterations: every decision here goes through a yield and, for most, a queue entry.
    cases.push(case("one-fn-queue-t32".into(), 32, iters / 4, true, true));
    for c in cases {
        for (fns, metrics) in sets {
            multi(&rt, fns, metrics, c.clone());
        }
    }
    // Nothing is left held or queued.
    for (fns, _) in sets {
        for f in fns.iter() {
            let s = f.snapshot();
            assert_eq!((s.in_flight, s.queued), (0, 0), "{}", f.spec().id);
        }
    }
}

fn main() {
    let iters = env_num("ITERS", 2_000_000);
    let functions = env_num("FUNCTIONS", 1_000);
    let t = Instant::now();
    let plain = build(functions);
    let built_plain = t.elapsed();
    fngate::telemetry::install_metrics(None);
    let t = Instant::now();
    let with_metrics = build(functions);
    let built_metrics = t.elapsed();
    println!(
        "functions={functions} endpoints_per_function={ENDPOINTS} instance_concurrency={CONCURRENCY} workers={WORKERS} iters={iters} build_ms_off={:.1} build_ms_on={:.1}",
        built_plain.as_secs_f64() * 1e3,
        built_metrics.as_secs_f64() * 1e3
    );
    run_all(&[(&plain, "off"), (&with_metrics, "on")], iters);
}
