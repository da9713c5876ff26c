//! `SqliteStore`: the embedded `TaskStore`, one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! Threads, so that no tokio worker ever blocks on SQLite or an fsync:
//!
//! - one **writer** thread owns the only write connection. Every state change (accept, claim,
//!   finish, stop, redrive, recover, prune) is a command on a bounded channel. The writer takes
//!   what is queued (up to `max_batch`), runs each command in its own savepoint inside ONE
//!   transaction, commits (one WAL fsync), and only then answers every waiter. This is the group
//!   commit: while one fsync runs, the next batch queues up, so concurrent accepts share fsyncs
//!   and a lone accept pays one fsync without waiting for company. (No linger timer: a fixed
//!   ~1 ms wait for more work would cap a single sequential caller at ~1,000 accepts/s, while the
//!   fsync itself already is the window in which the next batch gathers.)
//! - one **reader** thread with its own connection serves get, list and counts; WAL lets it read
//!   committed data while the writer writes, so dashboards never stall accepts.
//!
//! A full write channel makes callers wait up to `enqueue_timeout`, then fail with
//! `StoreError::Busy` (the accept path answers 503): memory stays bounded by the channel.
//! A `<file>.lock` advisory lock keeps a second process (or a second `open` in this one) from
//! running `recover` on tasks that another gateway is still running.

use super::error::StoreError;
use super::sql;
use super::types::{
    AcceptOutcome, Claimed, Finish, ListFilter, NewTask, QueueCounts, Stopped, Task, TaskPage,
    TaskSummary, now_ms, valid_task_id,
};
use super::{StoreFuture, TaskStore};
use rusqlite::{Connection, OpenFlags};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Tuning of `SqliteStore`; `Default` is what the gateway uses.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Most commands committed together (one fsync).
    pub max_batch: usize,
    /// Write commands that may wait for the writer; more callers wait (backpressure).
    pub queue_capacity: usize,
    /// How long a caller waits for room in the write channel before `StoreError::Busy`.
    pub enqueue_timeout: Duration,
    /// SQLite's own wait for a lock (checkpoints, the reader): never hit in normal operation.
    pub busy_timeout: Duration,
    /// Rows deleted per prune command, so one prune never holds the writer for long.
    pub prune_chunk: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            // Closed-loop clients commit together: a cap of 64 held 256 concurrent accepts to
            // four fsyncs in a row instead of one.
            max_batch: 256,
            queue_capacity: 4096,
            enqueue_timeout: Duration::from_secs(2),
            busy_timeout: Duration::from_secs(5),
            prune_chunk: 1000,
        }
    }
}

/// The WAL may grow past this between checkpoints, but is truncated back to it afterwards.
const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum WriteOp {
    Accept(NewTask, Reply<AcceptOutcome>),
    Claim {
        function: String,
        now_ms: u64,
        limit: usize,
        reply: Reply<Claimed>,
    },
    Finish {
        id: String,
        outcome: Finish,
        reply: Reply<TaskSummary>,
    },
    Stop {
        id: String,
        reply: Reply<Stopped>,
    },
    Redrive {
        id: String,
        reply: Reply<TaskSummary>,
    },
    Recover(Reply<usize>),
    Prune {
        before_ms: u64,
        max_rows: usize,
        reply: Reply<usize>,
    },
    Close(oneshot::Sender<()>),
}

enum ReadOp {
    Get {
        id: String,
        reply: Reply<Option<Task>>,
    },
    List {
        filter: ListFilter,
        reply: Reply<TaskPage>,
    },
    Counts {
        function: String,
        reply: Reply<QueueCounts>,
    },
    Close(oneshot::Sender<()>),
}

/// The embedded task store. Cheap to clone (channel handles); `close` before reopening the
/// same file.
#[derive(Clone)]
pub struct SqliteStore {
    path: Arc<PathBuf>,
    writes: mpsc::Sender<WriteOp>,
    reads: mpsc::Sender<ReadOp>,
    enqueue_timeout: Duration,
    prune_chunk: usize,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn open_err(path: &Path) -> impl Fn(String) -> StoreError + '_ {
    move |detail| StoreError::Open {
        path: path.to_owned(),
        detail,
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` with default options.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens the store: takes the lock file, sets WAL + FULL, creates or checks the schema and
    /// starts the writer and reader threads. Blocking (file I/O): call it at start-up or from
    /// `spawn_blocking`. Does not `recover`: the caller does, once it is ready to dispatch.
    pub fn open_with(path: &Path, opts: SqliteOptions) -> Result<Self, StoreError> {
        let fail = open_err(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| fail(format!("cannot create directory {}: {e}", dir.display())))?;
        }
        let lock = take_lock(path)?;

        let mut writer = Connection::open(path).map_err(|e| fail(e.to_string()))?;
        configure(&writer, path, &opts)?;
        sql::init_schema(&mut writer, path)?;
        // Read-write flags with query_only: a read-only-opened connection cannot recover a
        // WAL index (-shm) on its own, the writer may not have created yet.
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| fail(e.to_string()))?;
        reader
            .busy_timeout(opts.busy_timeout)
            .and_then(|()| reader.pragma_update(None, "query_only", true))
            .map_err(|e| fail(format!("configure reader connection: {e}")))?;

        let (wtx, wrx) = mpsc::channel(opts.queue_capacity.max(1));
        let (rtx, rrx) = mpsc::channel(opts.queue_capacity.max(1));
        let max_batch = opts.max_batch.max(1);
        let wpath = path.to_owned();
        std::thread::Builder::new()
            .name("fngate-queue-writer".into())
            .spawn(move || writer_loop(writer, wpath, wrx, max_batch, lock))
            .map_err(|e| fail(format!("cannot start writer thread: {e}")))?;
        let rpath = path.to_owned();
        std::thread::Builder::new()
            .name("fngate-queue-reader".into())
            .spawn(move || reader_loop(reader, rpath, rrx))
            .map_err(|e| fail(format!("cannot start reader thread: {e}")))?;

        Ok(SqliteStore {
            path: Arc::new(path.to_owned()),
            writes: wtx,
            reads: rtx,
            enqueue_timeout: opts.enqueue_timeout,
            prune_chunk: opts.prune_chunk.max(1),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Finishes queued commands, closes both connections (checkpointing the WAL) and releases
    /// the lock file. Later calls on any clone fail with `StoreError::Closed`.
    pub async fn close(&self) {
        // Reader first, so that the writer's connection is the last one and its close
        // checkpoints the WAL into the main file.
        let (tx, rx) = oneshot::channel();
        if self.reads.send(ReadOp::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let (tx, rx) = oneshot::channel();
        if self.writes.send(WriteOp::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    fn closed(&self, thread: &'static str) -> StoreError {
        StoreError::Closed {
            path: self.path.to_path_buf(),
            thread,
        }
    }

    async fn write<T>(&self, op: impl FnOnce(Reply<T>) -> WriteOp) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        match self.writes.send_timeout(op(tx), self.enqueue_timeout).await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                return Err(StoreError::Busy {
                    path: self.path.to_path_buf(),
                    waited_ms: self.enqueue_timeout.as_millis() as u64,
                });
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => return Err(self.closed("writer")),
        }
        // No timeout here: the command is already queued and may commit; giving up would turn
        // a stored task into an error answer. The channel bound keeps this wait bounded in
        // memory, and the HTTP layer bounds it in time.
        rx.await.map_err(|_| self.closed("writer"))?
    }

    async fn read<T>(&self, op: impl FnOnce(Reply<T>) -> ReadOp) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        match self.reads.send_timeout(op(tx), self.enqueue_timeout).await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                return Err(StoreError::Busy {
                    path: self.path.to_path_buf(),
                    waited_ms: self.enqueue_timeout.as_millis() as u64,
                });
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => return Err(self.closed("reader")),
        }
        rx.await.map_err(|_| self.closed("reader"))?
    }
}

fn check_id(id: &str) -> Result<(), StoreError> {
    if valid_task_id(id) {
        Ok(())
    } else {
        Err(StoreError::invalid_task_id(id))
    }
}

impl TaskStore for SqliteStore {
    fn accept(&self, task: NewTask) -> StoreFuture<'_, AcceptOutcome> {
        Box::pin(async move {
            check_id(&task.task_id)?;
            if task.function.is_empty() {
                return Err(StoreError::InvalidInput(format!(
                    "task `{}` names no function",
                    task.task_id
                )));
            }
            self.write(|reply| WriteOp::Accept(task, reply)).await
        })
    }

    fn claim<'a>(
        &'a self,
        function: &'a str,
        now_ms: u64,
        limit: usize,
    ) -> StoreFuture<'a, Claimed> {
        Box::pin(async move {
            if limit == 0 {
                return Ok(Claimed::default());
            }
            let function = function.to_owned();
            self.write(|reply| WriteOp::Claim {
                function,
                now_ms,
                limit,
                reply,
            })
            .await
        })
    }

    fn finish<'a>(&'a self, id: &'a str, outcome: Finish) -> StoreFuture<'a, TaskSummary> {
        Box::pin(async move {
            check_id(id)?;
            let id = id.to_owned();
            self.write(|reply| WriteOp::Finish { id, outcome, reply })
                .await
        })
    }

    fn stop<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Stopped> {
        Box::pin(async move {
            check_id(id)?;
            let id = id.to_owned();
            self.write(|reply| WriteOp::Stop { id, reply }).await
        })
    }

    fn redrive<'a>(&'a self, id: &'a str) -> StoreFuture<'a, TaskSummary> {
        Box::pin(async move {
            check_id(id)?;
            let id = id.to_owned();
            self.write(|reply| WriteOp::Redrive { id, reply }).await
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Task>> {
        Box::pin(async move {
            check_id(id)?;
            let id = id.to_owned();
            self.read(|reply| ReadOp::Get { id, reply }).await
        })
    }

    fn list(&self, filter: ListFilter) -> StoreFuture<'_, TaskPage> {
        Box::pin(async move { self.read(|reply| ReadOp::List { filter, reply }).await })
    }

    fn counts<'a>(&'a self, function: &'a str) -> StoreFuture<'a, QueueCounts> {
        Box::pin(async move {
            let function = function.to_owned();
            self.read(|reply| ReadOp::Counts { function, reply }).await
        })
    }

    fn recover(&self) -> StoreFuture<'_, usize> {
        Box::pin(async move { self.write(WriteOp::Recover).await })
    }

    fn prune(&self, finished_before_ms: u64) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            // Chunked: each chunk is one command in a batch, so accepts interleave with a big
            // prune instead of waiting for all of it.
            let mut total = 0;
            loop {
                let n = self
                    .write(|reply| WriteOp::Prune {
                        before_ms: finished_before_ms,
                        max_rows: self.prune_chunk,
                        reply,
                    })
                    .await?;
                total += n;
                if n < self.prune_chunk {
                    return Ok(total);
                }
            }
        })
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

fn take_lock(path: &Path) -> Result<File, StoreError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Open {
            path: path.to_owned(),
            detail: format!("cannot open lock file {}: {e}", lock_path.display()),
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.to_owned(),
            lock: lock_path,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Open {
            path: path.to_owned(),
            detail: format!("cannot lock {}: {e}", lock_path.display()),
        }),
    }
}

fn configure(conn: &Connection, path: &Path, opts: &SqliteOptions) -> Result<(), StoreError> {
    let fail = open_err(path);
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(|e| fail(format!("set journal_mode=WAL: {e}")))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(fail(format!(
            "journal_mode is {mode}, not wal (is the file on a filesystem without shared memory?)"
        )));
    }
    // FULL: in WAL mode this fsyncs the WAL at every commit, which is what makes a returned
    // accept durable against power loss; NORMAL would only survive a process crash.
    conn.pragma_update(None, "synchronous", "FULL")
        .and_then(|()| conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT))
        .and_then(|()| conn.busy_timeout(opts.busy_timeout))
        .map_err(|e| fail(format!("configure connection: {e}")))?;
    // Room for every statement the writer uses, so none is re-prepared per batch.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// A command's answer, held back until its transaction's commit succeeds or fails.
trait Deliver: Send {
    fn deliver(self: Box<Self>, commit_failed: Option<&StoreError>);
}

struct Done<T> {
    reply: Reply<T>,
    value: Result<T, StoreError>,
}

impl<T: Send> Deliver for Done<T> {
    fn deliver(self: Box<Self>, commit_failed: Option<&StoreError>) {
        let value = match (self.value, commit_failed) {
            // Its savepoint was released, but the transaction around it did not commit.
            (Ok(_), Some(e)) => Err(e.clone()),
            (v, _) => v,
        };
        // The caller may have gone away (request cancelled): nothing to tell.
        let _ = self.reply.send(value);
    }
}

fn done<T: Send + 'static>(reply: Reply<T>, value: Result<T, StoreError>) -> Box<dyn Deliver> {
    Box::new(Done { reply, value })
}

impl WriteOp {
    fn refuse(self, err: StoreError) {
        match self {
            WriteOp::Accept(_, r) => drop(r.send(Err(err))),
            WriteOp::Claim { reply, .. } => drop(reply.send(Err(err))),
            WriteOp::Finish { reply, .. } | WriteOp::Redrive { reply, .. } => {
                drop(reply.send(Err(err)))
            }
            WriteOp::Stop { reply, .. } => drop(reply.send(Err(err))),
            WriteOp::Recover(r) | WriteOp::Prune { reply: r, .. } => drop(r.send(Err(err))),
            WriteOp::Close(ack) => drop(ack.send(())),
        }
    }
}

fn exec(conn: &Connection, path: &Path, sql: &str, op: &'static str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut st| st.execute([]))
        .map(|_| ())
        .map_err(sql::sql_err(path, op))
}

fn writer_loop(
    conn: Connection,
    path: PathBuf,
    mut rx: mpsc::Receiver<WriteOp>,
    max_batch: usize,
    lock: File,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut close = None;
    let commit_size = metrics::histogram!(crate::telemetry::STORE_COMMIT_COMMANDS);
    let commit_time = metrics::histogram!(crate::telemetry::STORE_COMMIT_DURATION);
    while close.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op {
                WriteOp::Close(ack) => close = Some(ack),
                op => batch.push(op),
            }
            if close.is_none() && batch.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let t0 = std::time::Instant::now();
            commit_size.record(batch.len() as f64);
            run_batch(&conn, &path, &mut batch);
            commit_time.record(t0.elapsed().as_secs_f64());
        }
    }
    // Closing: refuse whatever other clones still queued, then let go of the file.
    rx.close();
    while let Ok(op) = rx.try_recv() {
        op.refuse(StoreError::Closed {
            path: path.clone(),
            thread: "writer",
        });
    }
    drop(conn);
    drop(lock);
    if let Some(ack) = close {
        let _ = ack.send(());
    }
}

/// One transaction, one fsync, for the whole batch; every answer goes out after the commit.
fn run_batch(conn: &Connection, path: &Path, batch: &mut Vec<WriteOp>) {
    if let Err(e) = exec(conn, path, "BEGIN IMMEDIATE", "begin transaction") {
        for op in batch.drain(..) {
            op.refuse(e.clone());
        }
        return;
    }
    let now = now_ms();
    let mut answers = Vec::with_capacity(batch.len());
    let mut poisoned = None;
    for op in batch.drain(..) {
        if let Some(e) = &poisoned {
            op.refuse(StoreError::clone(e));
            continue;
        }
        let answer = match op {
            // No savepoint: an accept refuses nothing at this point (its id and function were
            // checked before it was queued, a repeated id is `ON CONFLICT DO NOTHING`), so it
            // can only fail on I/O, and then the whole batch rolls back (no one gets a 202).
            // Savepoints cost a statement journal copy of every page they touch: measured as
            // the largest single item of the accept path's CPU profile.
            WriteOp::Accept(task, reply) => {
                let value = sql::accept(conn, path, &task, now);
                if let Err(e) = &value {
                    poisoned = Some(e.clone());
                }
                done(reply, value)
            }
            WriteOp::Claim {
                function,
                now_ms,
                limit,
                reply,
            } => savepoint(conn, path, &mut poisoned, reply, |c| {
                sql::claim(c, path, &function, now_ms, limit)
            }),
            WriteOp::Finish { id, outcome, reply } => {
                savepoint(conn, path, &mut poisoned, reply, |c| {
                    sql::finish(c, path, &id, &outcome, now)
                })
            }
            WriteOp::Stop { id, reply } => savepoint(conn, path, &mut poisoned, reply, |c| {
                sql::stop(c, path, &id, now)
            }),
            WriteOp::Redrive { id, reply } => savepoint(conn, path, &mut poisoned, reply, |c| {
                sql::redrive(c, path, &id, now)
            }),
            WriteOp::Recover(reply) => savepoint(conn, path, &mut poisoned, reply, |c| {
                sql::recover(c, path, now)
            }),
            WriteOp::Prune {
                before_ms,
                max_rows,
                reply,
            } => savepoint(conn, path, &mut poisoned, reply, |c| {
                sql::prune(c, path, before_ms, max_rows)
            }),
            // Filtered out by writer_loop.
            WriteOp::Close(ack) => {
                let _ = ack.send(());
                continue;
            }
        };
        answers.push(answer);
    }
    let commit = match &poisoned {
        Some(e) => {
            let _ = exec(conn, path, "ROLLBACK", "roll back");
            Err(e.clone())
        }
        None => exec(conn, path, "COMMIT", "commit").inspect_err(|_| {
            // A failed COMMIT can leave the transaction open; end it so the next batch starts
            // clean.
            if !conn.is_autocommit() {
                let _ = exec(conn, path, "ROLLBACK", "roll back");
            }
        }),
    };
    for a in answers {
        a.deliver(commit.as_ref().err());
    }
}

/// Runs one command in its own savepoint: a command that fails (unknown id, refused transition)
/// leaves no partial write and does not disturb the others in the batch. If even the rollback
/// fails, the transaction is in an unknown state: `poisoned` makes the batch roll back whole.
fn savepoint<T: Send + 'static>(
    conn: &Connection,
    path: &Path,
    poisoned: &mut Option<StoreError>,
    reply: Reply<T>,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Box<dyn Deliver> {
    if let Err(e) = exec(conn, path, "SAVEPOINT op", "savepoint") {
        *poisoned = Some(e.clone());
        return done(reply, Err(e));
    }
    let value = f(conn);
    let end = match &value {
        Ok(_) => exec(conn, path, "RELEASE op", "release savepoint"),
        Err(_) => exec(conn, path, "ROLLBACK TO op", "roll back savepoint")
            .and_then(|()| exec(conn, path, "RELEASE op", "release savepoint")),
    };
    if let Err(e) = end {
        *poisoned = Some(e.clone());
        return done(reply, Err(e));
    }
    done(reply, value)
}

fn reader_loop(mut conn: Connection, path: PathBuf, mut rx: mpsc::Receiver<ReadOp>) {
    while let Some(op) = rx.blocking_recv() {
        match op {
            ReadOp::Get { id, reply } => {
                let _ = reply.send(snapshot(&mut conn, &path, |c| {
                    sql::load_task(c, &path, &id)
                }));
            }
            ReadOp::List { filter, reply } => {
                let _ = reply.send(snapshot(&mut conn, &path, |c| sql::list(c, &path, &filter)));
            }
            ReadOp::Counts { function, reply } => {
                let _ = reply.send(snapshot(&mut conn, &path, |c| {
                    sql::counts(c, &path, &function)
                }));
            }
            ReadOp::Close(ack) => {
                rx.close();
                drop(conn);
                let _ = ack.send(());
                return;
            }
        }
    }
}

/// A read transaction, so a task's row, payload and result come from one committed state.
fn snapshot<T>(
    conn: &mut Connection,
    path: &Path,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = conn
        .transaction()
        .map_err(sql::sql_err(path, "begin read"))?;
    let out = f(&tx);
    // Read-only: ending it cannot lose anything; an error here only matters if `f` succeeded.
    let end = tx.commit().map_err(sql::sql_err(path, "end read"));
    let out = out?;
    end.map(|()| out)
}
