//! `StoreError`: everything a task store can refuse or fail with, each message naming the file
//! or task involved, and each variant knowing whether it is the caller's fault, a conflict with
//! the task's state, or the store being unavailable (retry later).

use super::types::{MAX_TASK_ID_LEN, TaskState};
use std::path::PathBuf;

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "invalid task id `{id}`: a task id is 1 to {MAX_TASK_ID_LEN} characters of letters, digits, `_` and `-`, starting with a letter or `_`"
    )]
    InvalidTaskId {
        /// Cut to 160 characters so a hostile id cannot bloat the error body.
        id: String,
    },
    #[error("{0}")]
    InvalidInput(String),
    #[error(
        "the stored request would be {size} bytes; the queue takes at most {limit} (the NATS server's max_payload)"
    )]
    TooLarge { size: usize, limit: usize },
    #[error("no task with id `{id}`")]
    NotFound { id: String },
    #[error("cannot {action} task `{id}`: it is {state}; {rule}")]
    InvalidTransition {
        id: String,
        state: TaskState,
        action: &'static str,
        rule: &'static str,
    },
    #[error("cannot open task store {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error(
        "task store {path} is in use by another process (lock file {lock} is held); only one fngate may own an embedded queue file"
    )]
    Locked { path: PathBuf, lock: PathBuf },
    #[error(
        "task store {path} has schema version {found}, newer than this fngate understands ({supported}); run a newer fngate or point data_dir elsewhere"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{path} is an SQLite file but not an fngate task store (no `meta` table)")]
    NotATaskStore { path: PathBuf },
    #[error("task store {path}: {op} failed: {detail}")]
    Sql {
        path: PathBuf,
        op: &'static str,
        detail: String,
    },
    #[error("task store {path}: task `{id}` is unreadable: {detail}")]
    Corrupt {
        path: PathBuf,
        id: String,
        detail: String,
    },
    #[error(
        "task store {path} is overloaded: its write queue stayed full for {waited_ms} ms; try again later"
    )]
    Busy { path: PathBuf, waited_ms: u64 },
    #[error("NATS queue at {url}: {op} failed: {detail}")]
    Nats {
        url: String,
        op: &'static str,
        detail: String,
    },
    #[error("task store {path} is closed (its {thread} thread has stopped)")]
    Closed { path: PathBuf, thread: &'static str },
}

impl StoreError {
    pub(crate) fn invalid_task_id(id: &str) -> Self {
        let id = match id.char_indices().nth(160) {
            Some((cut, _)) => format!("{}…", &id[..cut]),
            None => id.to_owned(),
        };
        StoreError::InvalidTaskId { id }
    }

    /// The request was bad (id, cursor, limit): a 400, never worth retrying as is.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            StoreError::InvalidTaskId { .. }
                | StoreError::InvalidInput(_)
                | StoreError::TooLarge { .. }
        )
    }

    /// The task's state forbids the operation: a 409 for the tasks API.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::InvalidTransition { .. })
    }

    /// The store could not do it now but may later (full write queue, I/O error on commit):
    /// the accept path answers 503 with Retry-After, never 202.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Busy { .. } | StoreError::Sql { .. } | StoreError::Nats { .. }
        )
    }
}
