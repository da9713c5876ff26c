//! Durable accepts per second of the embedded task store (`fngate::queue::SqliteStore`, WAL +
//! `synchronous=FULL`, group commit), and the cost of a claim + finish cycle. Run by
//! bench/queue.sh: `cargo run --release -p fngate --example queue_accepts`
//!
//! For each concurrency in `CONCURRENCY` (default `1,16,64,256`), a fresh store file receives
//! `ACCEPTS` accepts (default 20,000; `ACCEPTS_SINGLE`, default 4,000, for one task, which pays
//! one fsync per accept) of 200-byte bodies from that many tokio tasks on a 2-worker runtime,
//! as the gateway runs. Every accept returns only after its commit's fsync.
//!
//! Then on the store of the last run: `claim-finish-b1` (one task claims one task and finishes
//! it: two commits per cycle) and `claim-finish-b64` (claim 64, finish them from 64 tasks at
//! once, so the finishes share commits), `CYCLES` tasks each (default 2,000).
//!
//! Prints one line per mode: `mode=… tasks=… ops=… secs=… ops_per_s=… p50_us=… p99_us=…`
//! (latency of one accept, or ns_per_cycle for the cycle modes). `DIR` (default the system temp
//! dir) is where the store files go: put it on the disk the gateway's data_dir would use.
//! `MAX_BATCH` overrides the group-commit batch size (default 64).

use bytes::Bytes;
use fngate::queue::{
    AcceptOutcome, Finish, NewTask, SqliteOptions, SqliteStore, TaskRequest, TaskResult, TaskStore,
    new_task_id, now_ms,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKERS: usize = 2;
const BODY_BYTES: usize = 200;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn new_task(function: &str) -> NewTask {
    NewTask {
        task_id: new_task_id(),
        request_id: "0123456789abcdef".into(),
        function: function.into(),
        priority: 0,
        not_before_ms: 0,
        max_retries: 3,
        max_event_age_ms: 24 * 3600 * 1000,
        request: TaskRequest {
            method: "POST".into(),
            path_and_query: "/bench/gen".into(),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: Bytes::from(vec![b'x'; BODY_BYTES]),
        },
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &Path, name: &str) -> anyhow::Result<SqliteStore> {
    let opts = SqliteOptions {
        max_batch: env_num("MAX_BATCH", SqliteOptions::default().max_batch),
        ..Default::default()
    };
    Ok(SqliteStore::open_with(&dir.join(name), opts)?)
}

async fn accepts(store: &Arc<SqliteStore>, tasks: usize, total: usize) -> anyhow::Result<()> {
    let per_task = total.div_ceil(tasks);
    let started = Instant::now();
    let mut handles = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        let store = Arc::clone(store);
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let t = new_task("bench/gen");
                let t0 = Instant::now();
                match store.accept(t).await? {
                    AcceptOutcome::Stored(_) => {}
                    AcceptOutcome::Existing(s) => anyhow::bail!("id collision: {}", s.id),
                }
                lat.push(t0.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::with_capacity(per_task * tasks);
    for h in handles {
        lat.extend(h.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "mode=accept tasks={tasks} ops={} secs={secs:.3} ops_per_s={:.0} p50_us={:.0} p99_us={:.0}",
        lat.len(),
        lat.len() as f64 / secs,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
    );
    Ok(())
}

fn result() -> TaskResult {
    TaskResult {
        status: 200,
        headers: vec![],
        body: Bytes::from_static(b"{\"ok\":true}"),
        truncated: false,
    }
}

async fn cycles(store: &Arc<SqliteStore>, batch: usize, total: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut done = 0;
    while done < total {
        let claimed = store.claim("bench/gen", now_ms(), batch).await?;
        anyhow::ensure!(!claimed.tasks.is_empty(), "ran out of tasks after {done}");
        let mut handles = Vec::with_capacity(claimed.tasks.len());
        for t in claimed.tasks {
            let store = Arc::clone(store);
            handles.push(tokio::spawn(async move {
                let finish = Finish::Succeeded {
                    result: result(),
                    instance: "bench-1".into(),
                };
                store.finish(&t.summary.id, finish).await.map(|_| ())
            }));
        }
        for h in handles {
            h.await??;
            done += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "mode=claim-finish-b{batch} tasks={batch} ops={done} secs={secs:.3} ops_per_s={:.0} ns_per_cycle={:.0}",
        done as f64 / secs,
        secs * 1e9 / done as f64,
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let total = env_num("ACCEPTS", 20_000);
    let single = env_num("ACCEPTS_SINGLE", 4_000);
    let cycle_count = env_num("CYCLES", 2_000);
    let conc: Vec<usize> = std::env::var("CONCURRENCY")
        .unwrap_or_else(|_| "1,16,64,256".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let base = std::env::var_os("DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = Dir(base.join(format!("fngate-queue-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut last = None;
        for (i, &tasks) in conc.iter().enumerate() {
            let store = Arc::new(open(&dir.0, &format!("accept-{i}.db"))?);
            let n = if tasks == 1 { single } else { total };
            accepts(&store, tasks, n).await?;
            if let Some(prev) = last.replace(store) {
                prev.close().await;
            }
        }
        let store = match last {
            Some(s) => s,
            None => {
                let s = Arc::new(open(&dir.0, "cycles.db")?);
                accepts(&s, 64, cycle_count * 2).await?;
                s
            }
        };
        let queued = store.counts("bench/gen").await?.enqueued as usize;
        anyhow::ensure!(
            queued >= cycle_count * 2,
            "need {} queued tasks for the cycle modes, have {queued}: raise ACCEPTS",
            cycle_count * 2
        );
        cycles(&store, 1, cycle_count).await?;
        cycles(&store, 64, cycle_count).await?;
        store.close().await;
        anyhow::Ok(())
    })
}
