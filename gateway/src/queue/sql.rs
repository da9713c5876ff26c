//! The SQLite schema of the embedded task store and every statement run against it. Plain
//! synchronous functions on a `Connection`: `sqlite.rs` decides which thread runs them and
//! inside which transaction, so these can be read (and tested) as straight-line SQL.
//!
//! Schema (version 1):
//!
//! - `meta(key, value)`: `schema_version`. A file with a newer version is refused.
//! - `tasks`: one small row per task (state, timing, attempts, last error, event history as JSON
//!   lines). `seq INTEGER PRIMARY KEY AUTOINCREMENT` is the accept order: monotonic (never
//!   reused after a prune), so "ordered by enqueue time" and the list cursor are both `seq`.
//! - `payloads(seq, method, path_and_query, headers, body)`: the request, written once at accept,
//!   deleted when the task Succeeds or is Stopped. A side table because SQLite rewrites a whole
//!   row on every UPDATE: with the body inline, each claim and finish would rewrite a payload of
//!   up to the function's async limit (MiBs for images) instead of ~200 bytes.
//! - `results(seq, status, headers, body, truncated)`: the latest attempt's response (≤ 1 MiB),
//!   a side table for the same reason.
//!
//! Indexes, each for one query that must not scan 100k+ finished tasks:
//!
//! - `tasks_ready(function, priority DESC, seq, not_before_ms) WHERE state IN (0, 2)`: claim. A
//!   *partial* index holds exactly the Enqueued and Retrying tasks, so it is the "ready table"
//!   without a second table to keep consistent by hand; SQLite maintains it in the same
//!   transaction. Its order is the claim order, so claim reads the first due entries and stops;
//!   `not_before_ms` rides along so delayed entries are skipped without touching the table.
//!   (Many *delayed* high-priority tasks are skipped one index entry each per claim: ~100 ns
//!   apiece, fine for thousands; a backlog of millions of delayed tasks would want a time index.)
//! - `tasks_function(function, seq)`: `list?function=` in accept order.
//! - `tasks_function_state(function, state, seq)`: per-function counts (covering) and
//!   `list?function=&state=`.
//! - `tasks_state(state, seq)`: `list?state=` across functions and recover (Running).
//! - `tasks_finished(finished_ms) WHERE finished_ms IS NOT NULL`: prune.

use super::codec::{decode_events, decode_headers, encode_headers, event_line};
use super::error::StoreError;
use super::types::{
    AcceptOutcome, Finish, ListFilter, MAX_LIST_LIMIT, NewTask, QueueCounts, RESULT_BODY_LIMIT,
    Stopped, Task, TaskPage, TaskRequest, TaskResult, TaskState, TaskSummary,
};
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::Path;

pub(crate) const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE tasks (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    request_id       TEXT    NOT NULL,
    function         TEXT    NOT NULL,
    state            INTEGER NOT NULL,
    priority         INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    max_retries      INTEGER NOT NULL,
    max_event_age_ms INTEGER NOT NULL,
    created_ms       INTEGER NOT NULL,
    enqueued_ms      INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    not_before_ms    INTEGER NOT NULL,
    started_ms       INTEGER,
    finished_ms      INTEGER,
    instance_id      TEXT,
    last_error       TEXT,
    result_status    INTEGER,
    events           TEXT    NOT NULL
);
CREATE INDEX tasks_ready ON tasks(function, priority DESC, seq, not_before_ms) WHERE state IN (0, 2);
CREATE INDEX tasks_function ON tasks(function, seq);
CREATE INDEX tasks_function_state ON tasks(function, state, seq);
CREATE INDEX tasks_state ON tasks(state, seq);
CREATE INDEX tasks_finished ON tasks(finished_ms) WHERE finished_ms IS NOT NULL;
CREATE TABLE payloads (
    seq            INTEGER PRIMARY KEY,
    method         TEXT NOT NULL,
    path_and_query TEXT NOT NULL,
    headers        BLOB NOT NULL,
    body           BLOB NOT NULL
);
CREATE TABLE results (
    seq       INTEGER PRIMARY KEY,
    status    INTEGER NOT NULL,
    headers   BLOB    NOT NULL,
    body      BLOB    NOT NULL,
    truncated INTEGER NOT NULL
);
";

/// The summary columns, in `read_summary` order, `seq` first.
const SUMMARY_COLS: &str = "seq, id, request_id, function, state, priority, attempts, max_retries, \
     max_event_age_ms, created_ms, enqueued_ms, updated_ms, not_before_ms, started_ms, \
     finished_ms, instance_id, last_error, result_status";

/// The claim scan: the partial index `tasks_ready` in its own order (see the module doc).
pub(crate) const CLAIM_SCAN: &str = "SELECT seq, enqueued_ms, max_event_age_ms, attempts FROM tasks \
     WHERE function = ?1 AND state IN (0, 2) AND not_before_ms <= ?2 \
     ORDER BY priority DESC, seq LIMIT ?3";

/// The prune scan. `INDEXED BY`, because without statistics the planner prefers `tasks_state`
/// for the state filter, which walks every final task when nothing is old enough to prune.
/// (`finished_ms` is set exactly in final states; the state filter is a second guard.)
pub(crate) const PRUNE_SCAN: &str = "SELECT seq FROM tasks INDEXED BY tasks_finished \
     WHERE finished_ms < ?1 AND state IN (3, 4, 5, 6) LIMIT ?2";

/// Creates the schema in a new file, or checks the version of an existing one.
pub(crate) fn init_schema(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let e = |op| sql_err(path, op);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(e("begin schema transaction"))?;
    let has_meta: bool = tx
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(e("read schema"))?
        > 0;
    if has_meta {
        let found: Option<i64> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(e("read schema version"))?;
        match found {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew {
                    path: path.to_owned(),
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            // Version 1 is the only one so far; an older version would be migrated here.
            Some(_) => {}
            None => {
                return Err(StoreError::NotATaskStore {
                    path: path.to_owned(),
                });
            }
        }
    } else {
        let other: i64 = tx
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(e("read schema"))?;
        if other > 0 {
            return Err(StoreError::NotATaskStore {
                path: path.to_owned(),
            });
        }
        tx.execute_batch(SCHEMA).map_err(e("create schema"))?;
        tx.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY NOT NULL) WITHOUT ROWID",
        )
        .map_err(e("create schema"))?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
            [SCHEMA_VERSION],
        )
        .map_err(e("create schema"))?;
    }
    tx.commit().map_err(e("commit schema"))
}

pub(crate) fn sql_err(path: &Path, op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |err| StoreError::Sql {
        path: path.to_owned(),
        op,
        detail: err.to_string(),
    }
}

/// Unix ms are far below `i64::MAX`; saturate rather than wrap on absurd input.
fn int(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn uint(v: i64) -> u64 {
    v.max(0) as u64
}

fn read_summary(r: &Row<'_>) -> rusqlite::Result<(i64, TaskSummary)> {
    let code: i64 = r.get(4)?;
    let state = TaskState::from_code(code).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Integer,
            format!("unknown task state code {code}").into(),
        )
    })?;
    Ok((
        r.get(0)?,
        TaskSummary {
            id: r.get(1)?,
            request_id: r.get(2)?,
            function: r.get(3)?,
            state,
            priority: r.get(5)?,
            attempts: r.get(6)?,
            max_retries: r.get(7)?,
            max_event_age_ms: uint(r.get(8)?),
            created_ms: uint(r.get(9)?),
            enqueued_ms: uint(r.get(10)?),
            updated_ms: uint(r.get(11)?),
            not_before_ms: uint(r.get(12)?),
            started_ms: r.get::<_, Option<i64>>(13)?.map(uint),
            finished_ms: r.get::<_, Option<i64>>(14)?.map(uint),
            instance_id: r.get(15)?,
            last_error: r.get(16)?,
            result_status: r.get(17)?,
        },
    ))
}

fn summary_by_id(
    conn: &Connection,
    path: &Path,
    id: &str,
) -> Result<Option<(i64, TaskSummary)>, StoreError> {
    conn.prepare_cached(&format!("SELECT {SUMMARY_COLS} FROM tasks WHERE id = ?1"))
        .and_then(|mut st| st.query_row([id], read_summary).optional())
        .map_err(sql_err(path, "read task"))
}

fn summary_by_seq(conn: &Connection, path: &Path, seq: i64) -> Result<TaskSummary, StoreError> {
    conn.prepare_cached(&format!("SELECT {SUMMARY_COLS} FROM tasks WHERE seq = ?1"))
        .and_then(|mut st| st.query_row([seq], read_summary))
        .map(|(_, s)| s)
        .map_err(sql_err(path, "read task"))
}

/// Reads everything about one task; `None` if no task has this id.
pub(crate) fn load_task(
    conn: &Connection,
    path: &Path,
    id: &str,
) -> Result<Option<Task>, StoreError> {
    let Some((seq, summary)) = summary_by_id(conn, path, id)? else {
        return Ok(None);
    };
    load_rest(conn, path, seq, summary).map(Some)
}

fn load_rest(
    conn: &Connection,
    path: &Path,
    seq: i64,
    summary: TaskSummary,
) -> Result<Task, StoreError> {
    let e = sql_err(path, "read task");
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        id: summary.id.clone(),
        detail,
    };
    let events: String = conn
        .prepare_cached("SELECT events FROM tasks WHERE seq = ?1")
        .and_then(|mut st| st.query_row([seq], |r| r.get(0)))
        .map_err(&e)?;
    let events = decode_events(&events).map_err(corrupt)?;
    let payload = conn
        .prepare_cached("SELECT method, path_and_query, headers, body FROM payloads WHERE seq = ?1")
        .and_then(|mut st| {
            st.query_row([seq], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .optional()
        })
        .map_err(&e)?;
    let request = match payload {
        None => None,
        Some((method, path_and_query, headers, body)) => Some(TaskRequest {
            method,
            path_and_query,
            headers: decode_headers(&headers).map_err(corrupt)?,
            body: Bytes::from(body),
        }),
    };
    let result = conn
        .prepare_cached("SELECT status, headers, body, truncated FROM results WHERE seq = ?1")
        .and_then(|mut st| {
            st.query_row([seq], |r| {
                Ok((
                    r.get::<_, u16>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            })
            .optional()
        })
        .map_err(&e)?;
    let result = match result {
        None => None,
        Some((status, headers, body, truncated)) => Some(TaskResult {
            status,
            headers: decode_headers(&headers).map_err(corrupt)?,
            body: Bytes::from(body),
            truncated,
        }),
    };
    Ok(Task {
        summary,
        request,
        result,
        events,
    })
}

/// Inserts a new task, or answers with the existing one of the same id (written nothing).
pub(crate) fn accept(
    conn: &Connection,
    path: &Path,
    t: &NewTask,
    now: u64,
) -> Result<AcceptOutcome, StoreError> {
    let e = sql_err(path, "insert task");
    let detail = if t.not_before_ms > now {
        format!("accepted; first attempt not before {}", t.not_before_ms)
    } else {
        "accepted".to_owned()
    };
    let events = event_line(now, TaskState::Enqueued, &detail);
    let inserted = conn
        .prepare_cached(
            "INSERT INTO tasks (id, request_id, function, state, priority, attempts, max_retries, \
             max_event_age_ms, created_ms, enqueued_ms, updated_ms, not_before_ms, events) \
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8, ?8, ?8, ?9, ?10) \
             ON CONFLICT(id) DO NOTHING",
        )
        .and_then(|mut st| {
            st.execute(params![
                t.task_id,
                t.request_id,
                t.function,
                TaskState::Enqueued.code(),
                t.priority,
                t.max_retries,
                int(t.max_event_age_ms),
                int(now),
                int(t.not_before_ms),
                events,
            ])
        })
        .map_err(&e)?;
    if inserted == 0 {
        let (_, existing) =
            summary_by_id(conn, path, &t.task_id)?.ok_or_else(|| StoreError::Sql {
                path: path.to_owned(),
                op: "insert task",
                detail: format!("task `{}` conflicted but cannot be read", t.task_id),
            })?;
        return Ok(AcceptOutcome::Existing(existing));
    }
    let seq = conn.last_insert_rowid();
    conn.prepare_cached(
        "INSERT INTO payloads (seq, method, path_and_query, headers, body) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| {
        st.execute(params![
            seq,
            t.request.method,
            t.request.path_and_query,
            encode_headers(&t.request.headers),
            &t.request.body[..],
        ])
    })
    .map_err(&e)?;
    // Built from what was inserted rather than read back: accept is the hot path.
    Ok(AcceptOutcome::Stored(TaskSummary {
        id: t.task_id.clone(),
        request_id: t.request_id.clone(),
        function: t.function.clone(),
        state: TaskState::Enqueued,
        priority: t.priority,
        attempts: 0,
        max_retries: t.max_retries,
        max_event_age_ms: t.max_event_age_ms,
        created_ms: now,
        enqueued_ms: now,
        updated_ms: now,
        not_before_ms: t.not_before_ms,
        started_ms: None,
        finished_ms: None,
        instance_id: None,
        last_error: None,
        result_status: None,
    }))
}

/// Most tasks one claim may expire on top of the `limit` it runs, so that a huge expired
/// backlog is drained over several claims instead of one giant transaction.
pub(crate) const MAX_EXPIRED_PER_CLAIM: usize = 256;

/// Marks up to `limit` due tasks of `function` Running, expiring the too-old ones met on the way.
pub(crate) fn claim(
    conn: &Connection,
    path: &Path,
    function: &str,
    now: u64,
    limit: usize,
) -> Result<super::types::Claimed, StoreError> {
    let e = sql_err(path, "claim tasks");
    let mut out = super::types::Claimed::default();
    while out.tasks.len() < limit && out.expired.len() < MAX_EXPIRED_PER_CLAIM {
        // Collected before updating: SQLite leaves a scan undefined if its rows change under it.
        let want = (limit - out.tasks.len()) as i64;
        let candidates: Vec<(i64, i64, i64, u32)> = conn
            .prepare_cached(CLAIM_SCAN)
            .and_then(|mut st| {
                st.query_map(params![function, int(now), want], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .map_err(&e)?;
        if candidates.is_empty() {
            break;
        }
        for (seq, enqueued, max_age, attempts) in candidates {
            let age = now.saturating_sub(uint(enqueued));
            if max_age > 0 && age > uint(max_age) && out.expired.len() < MAX_EXPIRED_PER_CLAIM {
                let error = format!(
                    "event age {age} ms exceeds max_event_age {max_age} ms; no further attempt"
                );
                conn.prepare_cached(
                    "UPDATE tasks SET state = ?2, updated_ms = ?3, finished_ms = ?3, \
                     last_error = ?4, events = events || ?5 WHERE seq = ?1",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        seq,
                        TaskState::Expired.code(),
                        int(now),
                        error,
                        event_line(now, TaskState::Expired, &error),
                    ])
                })
                .map_err(&e)?;
                let summary = summary_by_seq(conn, path, seq)?;
                out.expired.push(load_rest(conn, path, seq, summary)?);
            } else if max_age > 0 && age > uint(max_age) {
                // Expiry budget of this claim spent: leave it for the next claim.
                break;
            } else {
                let attempt = attempts + 1;
                conn.prepare_cached(
                    "UPDATE tasks SET state = ?2, attempts = ?3, started_ms = ?4, updated_ms = ?4, \
                     instance_id = NULL, events = events || ?5 WHERE seq = ?1",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        seq,
                        TaskState::Running.code(),
                        attempt,
                        int(now),
                        event_line(now, TaskState::Running, &format!("attempt {attempt}")),
                    ])
                })
                .map_err(&e)?;
                let summary = summary_by_seq(conn, path, seq)?;
                out.tasks.push(load_rest(conn, path, seq, summary)?);
            }
        }
    }
    Ok(out)
}

fn task_for_update(
    conn: &Connection,
    path: &Path,
    id: &str,
) -> Result<(i64, TaskSummary), StoreError> {
    summary_by_id(conn, path, id)?.ok_or_else(|| StoreError::NotFound { id: id.to_owned() })
}

fn put_result(
    conn: &Connection,
    path: &Path,
    seq: i64,
    result: &TaskResult,
) -> Result<(), StoreError> {
    let truncated = result.truncated || result.body.len() > RESULT_BODY_LIMIT;
    let body = &result.body[..result.body.len().min(RESULT_BODY_LIMIT)];
    conn.prepare_cached(
        "INSERT OR REPLACE INTO results (seq, status, headers, body, truncated) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| {
        st.execute(params![
            seq,
            result.status,
            encode_headers(&result.headers),
            body,
            truncated
        ])
    })
    .map_err(sql_err(path, "store result"))?;
    conn.prepare_cached("UPDATE tasks SET result_status = ?2 WHERE seq = ?1")
        .and_then(|mut st| st.execute(params![seq, result.status]))
        .map_err(sql_err(path, "store result"))?;
    Ok(())
}

fn drop_payload(conn: &Connection, path: &Path, seq: i64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM payloads WHERE seq = ?1")
        .and_then(|mut st| st.execute([seq]))
        .map_err(sql_err(path, "drop payload"))?;
    Ok(())
}

/// Records how the attempt of a Running task ended.
pub(crate) fn finish(
    conn: &Connection,
    path: &Path,
    id: &str,
    outcome: &Finish,
    now: u64,
) -> Result<TaskSummary, StoreError> {
    let e = sql_err(path, "finish task");
    let (seq, cur) = task_for_update(conn, path, id)?;
    let attempt = cur.attempts;
    let what = match outcome {
        Finish::Succeeded { result, instance } => {
            format!(
                "attempt {attempt} succeeded: status {} from instance {instance}",
                result.status
            )
        }
        Finish::RetryAt { at_ms, error, .. } => {
            format!("attempt {attempt} failed: {error}; next attempt at {at_ms}")
        }
        Finish::Failed { error, .. } => format!("attempt {attempt} failed: {error}"),
        Finish::Expired { error } => format!("expired after attempt {attempt}: {error}"),
    };
    match cur.state {
        TaskState::Running => {}
        // Stopped while the attempt ran: the stop wins; keep a trace of how the attempt ended.
        TaskState::Stopped => {
            conn.prepare_cached("UPDATE tasks SET events = events || ?2 WHERE seq = ?1")
                .and_then(|mut st| {
                    st.execute(params![
                        seq,
                        event_line(now, TaskState::Stopped, &format!("after the stop, {what}")),
                    ])
                })
                .map_err(&e)?;
            return summary_by_seq(conn, path, seq);
        }
        state => {
            return Err(StoreError::InvalidTransition {
                id: id.to_owned(),
                state,
                action: "finish",
                rule: "only the attempt of a Running task can finish",
            });
        }
    }
    let new_state = outcome.state();
    let (instance, error, result, not_before, finished) = match outcome {
        Finish::Succeeded { result, instance } => (
            Some(instance.as_str()),
            None,
            Some(result),
            cur.not_before_ms,
            Some(now),
        ),
        Finish::RetryAt {
            at_ms,
            error,
            instance,
            result,
        } => (
            instance.as_deref(),
            Some(error.as_str()),
            result.as_ref(),
            *at_ms,
            None,
        ),
        Finish::Failed {
            error,
            instance,
            result,
        } => (
            instance.as_deref(),
            Some(error.as_str()),
            result.as_ref(),
            cur.not_before_ms,
            Some(now),
        ),
        Finish::Expired { error } => (
            None,
            Some(error.as_str()),
            None,
            cur.not_before_ms,
            Some(now),
        ),
    };
    conn.prepare_cached(
        "UPDATE tasks SET state = ?2, updated_ms = ?3, finished_ms = ?4, not_before_ms = ?5, \
         instance_id = COALESCE(?6, instance_id), last_error = COALESCE(?7, last_error), \
         events = events || ?8 WHERE seq = ?1",
    )
    .and_then(|mut st| {
        st.execute(params![
            seq,
            new_state.code(),
            int(now),
            finished.map(int),
            int(not_before),
            instance,
            error,
            event_line(now, new_state, &what),
        ])
    })
    .map_err(&e)?;
    if let Some(result) = result {
        put_result(conn, path, seq, result)?;
    }
    if new_state == TaskState::Succeeded {
        drop_payload(conn, path, seq)?;
    }
    summary_by_seq(conn, path, seq)
}

/// Enqueued/Retrying/Running → Stopped; Stopped stays (idempotent); other final states refuse.
pub(crate) fn stop(
    conn: &Connection,
    path: &Path,
    id: &str,
    now: u64,
) -> Result<Stopped, StoreError> {
    let (seq, cur) = task_for_update(conn, path, id)?;
    let detail = match cur.state {
        TaskState::Stopped => {
            return Ok(Stopped {
                previous: TaskState::Stopped,
                task: cur,
            });
        }
        TaskState::Enqueued | TaskState::Retrying => {
            format!("stopped before attempt {}", cur.attempts + 1)
        }
        TaskState::Running => format!(
            "stopped during attempt {}; its upstream call is aborted",
            cur.attempts
        ),
        state => {
            return Err(StoreError::InvalidTransition {
                id: id.to_owned(),
                state,
                action: "stop",
                rule: "it already finished; only Enqueued, Retrying or Running tasks can be stopped",
            });
        }
    };
    conn.prepare_cached(
        "UPDATE tasks SET state = ?2, updated_ms = ?3, finished_ms = ?3, events = events || ?4 \
         WHERE seq = ?1",
    )
    .and_then(|mut st| {
        st.execute(params![
            seq,
            TaskState::Stopped.code(),
            int(now),
            event_line(now, TaskState::Stopped, &detail),
        ])
    })
    .map_err(sql_err(path, "stop task"))?;
    drop_payload(conn, path, seq)?;
    Ok(Stopped {
        previous: cur.state,
        task: summary_by_seq(conn, path, seq)?,
    })
}

/// Failed/Expired → Enqueued with a fresh attempt count and age budget.
pub(crate) fn redrive(
    conn: &Connection,
    path: &Path,
    id: &str,
    now: u64,
) -> Result<TaskSummary, StoreError> {
    let (seq, cur) = task_for_update(conn, path, id)?;
    if !matches!(cur.state, TaskState::Failed | TaskState::Expired) {
        return Err(StoreError::InvalidTransition {
            id: id.to_owned(),
            state: cur.state,
            action: "retry",
            rule: "only Failed or Expired tasks can be retried",
        });
    }
    let has_payload: bool = conn
        .prepare_cached("SELECT count(*) FROM payloads WHERE seq = ?1")
        .and_then(|mut st| st.query_row([seq], |r| r.get::<_, i64>(0)))
        .map_err(sql_err(path, "retry task"))?
        > 0;
    if !has_payload {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            id: id.to_owned(),
            detail: "its request payload is missing, so it cannot run again".into(),
        });
    }
    let detail = format!(
        "retried by an operator; was {} after {} attempt(s)",
        cur.state, cur.attempts
    );
    conn.prepare_cached(
        "UPDATE tasks SET state = ?2, attempts = 0, updated_ms = ?3, enqueued_ms = ?3, \
         not_before_ms = ?3, started_ms = NULL, finished_ms = NULL, instance_id = NULL, \
         events = events || ?4 WHERE seq = ?1",
    )
    .and_then(|mut st| {
        st.execute(params![
            seq,
            TaskState::Enqueued.code(),
            int(now),
            event_line(now, TaskState::Enqueued, &detail),
        ])
    })
    .map_err(sql_err(path, "retry task"))?;
    summary_by_seq(conn, path, seq)
}

/// Running → Enqueued for every task whose attempt died with the previous gateway process.
pub(crate) fn recover(conn: &Connection, path: &Path, now: u64) -> Result<usize, StoreError> {
    conn.prepare_cached(
        "UPDATE tasks SET state = ?1, updated_ms = ?2, instance_id = NULL, \
         events = events || ?3 WHERE state = ?4",
    )
    .and_then(|mut st| {
        st.execute(params![
            TaskState::Enqueued.code(),
            int(now),
            event_line(
                now,
                TaskState::Enqueued,
                "recovered after restart: the running attempt was interrupted"
            ),
            TaskState::Running.code(),
        ])
    })
    .map_err(sql_err(path, "recover running tasks"))
}

/// Deletes up to `max_rows` final tasks finished before `before_ms`; returns how many.
pub(crate) fn prune(
    conn: &Connection,
    path: &Path,
    before_ms: u64,
    max_rows: usize,
) -> Result<usize, StoreError> {
    let e = sql_err(path, "prune tasks");
    let seqs: Vec<i64> = conn
        .prepare_cached(PRUNE_SCAN)
        .and_then(|mut st| {
            st.query_map(params![int(before_ms), max_rows as i64], |r| r.get(0))?
                .collect()
        })
        .map_err(&e)?;
    for &seq in &seqs {
        for sql in [
            "DELETE FROM tasks WHERE seq = ?1",
            "DELETE FROM payloads WHERE seq = ?1",
            "DELETE FROM results WHERE seq = ?1",
        ] {
            conn.prepare_cached(sql)
                .and_then(|mut st| st.execute([seq]))
                .map_err(&e)?;
        }
    }
    Ok(seqs.len())
}

/// One page of summaries, oldest accept first.
pub(crate) fn list(
    conn: &Connection,
    path: &Path,
    filter: &ListFilter,
) -> Result<TaskPage, StoreError> {
    if filter.limit == 0 || filter.limit > MAX_LIST_LIMIT {
        return Err(StoreError::InvalidInput(format!(
            "limit must be between 1 and {MAX_LIST_LIMIT}, not {}",
            filter.limit
        )));
    }
    let after: i64 = match &filter.cursor {
        None => 0,
        Some(c) => c.parse().ok().filter(|v: &i64| *v >= 0).ok_or_else(|| {
            StoreError::InvalidInput(format!(
                "invalid cursor `{}`: pass the next_cursor of the previous page",
                c.chars().take(64).collect::<String>()
            ))
        })?,
    };
    // Four fixed shapes, so each hits its index and stays in the statement cache.
    let sql = match (&filter.function, filter.state) {
        (Some(_), Some(_)) => format!(
            "SELECT {SUMMARY_COLS} FROM tasks WHERE function = ?1 AND state = ?2 AND seq > ?3 \
             ORDER BY seq LIMIT ?4"
        ),
        (Some(_), None) => format!(
            "SELECT {SUMMARY_COLS} FROM tasks WHERE function = ?1 AND ?2 IS NULL AND seq > ?3 \
             ORDER BY seq LIMIT ?4"
        ),
        (None, Some(_)) => format!(
            "SELECT {SUMMARY_COLS} FROM tasks WHERE ?1 IS NULL AND state = ?2 AND seq > ?3 \
             ORDER BY seq LIMIT ?4"
        ),
        (None, None) => format!(
            "SELECT {SUMMARY_COLS} FROM tasks WHERE ?1 IS NULL AND ?2 IS NULL AND seq > ?3 \
             ORDER BY seq LIMIT ?4"
        ),
    };
    // One extra row tells whether another page exists.
    let rows: Vec<(i64, TaskSummary)> = conn
        .prepare_cached(&sql)
        .and_then(|mut st| {
            st.query_map(
                params![
                    filter.function,
                    filter.state.map(TaskState::code),
                    after,
                    (filter.limit + 1) as i64
                ],
                read_summary,
            )?
            .collect()
        })
        .map_err(sql_err(path, "list tasks"))?;
    let more = rows.len() > filter.limit;
    let mut last_seq = after;
    let tasks: Vec<TaskSummary> = rows
        .into_iter()
        .take(filter.limit)
        .map(|(seq, s)| {
            last_seq = seq;
            s
        })
        .collect();
    let next_cursor = more.then(|| last_seq.to_string());
    Ok(TaskPage { tasks, next_cursor })
}

pub(crate) fn counts(
    conn: &Connection,
    path: &Path,
    function: &str,
) -> Result<QueueCounts, StoreError> {
    let e = sql_err(path, "count tasks");
    let mut out = QueueCounts::default();
    let rows: Vec<(i64, i64)> = conn
        .prepare_cached("SELECT state, count(*) FROM tasks WHERE function = ?1 GROUP BY state")
        .and_then(|mut st| {
            st.query_map([function], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(&e)?;
    for (code, n) in rows {
        if let Some(state) = TaskState::from_code(code) {
            *out.slot(state) = uint(n);
        }
    }
    let (oldest, next_due): (Option<i64>, Option<i64>) = conn
        .prepare_cached(
            "SELECT min(enqueued_ms), min(not_before_ms) FROM tasks \
             WHERE function = ?1 AND state IN (0, 2)",
        )
        .and_then(|mut st| st.query_row([function], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(&e)?;
    out.oldest_waiting_ms = oldest.map(uint);
    out.next_due_ms = next_due.map(uint);
    Ok(out)
}
