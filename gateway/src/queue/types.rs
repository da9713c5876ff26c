//! The data of the task store: task states, what the accept path hands in, what the store
//! hands back, and the task-id rules. No storage code here: these types are shared by every
//! `TaskStore` implementation (embedded SQLite now, NATS JetStream later).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest caller-chosen task id (`x-fngate-task-id`).
pub const MAX_TASK_ID_LEN: usize = 128;
/// Result bodies longer than this are cut here and flagged `truncated` (GET /tasks/{id} shows
/// "result status, headers and body up to 1 MiB").
pub const RESULT_BODY_LIMIT: usize = 1 << 20;
/// `list` returns at most this many tasks per page.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Page size for callers that do not ask for one (the tasks API's default).
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Default retention of finished tasks before `prune` removes them (7 days).
pub const DEFAULT_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;

/// A task's state, spelled as DESIGN.md and the tasks API spell it.
///
/// `code()` is the integer kept in the store: it is part of the on-disk format, so a variant
/// never changes its code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Stored, waiting for its first attempt (or redriven, or recovered after a restart).
    Enqueued,
    /// Claimed by a dispatcher; an attempt is in flight.
    Running,
    /// An attempt failed with a retryable error; the next one is due at `not_before_ms`.
    Retrying,
    /// An attempt succeeded. Final.
    Succeeded,
    /// A non-retryable failure, or retries exhausted. Final, but can be redriven.
    Failed,
    /// Stopped by an operator. Final.
    Stopped,
    /// Older than its `max_event_age` before it could succeed. Final, but can be redriven.
    Expired,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Enqueued,
        TaskState::Running,
        TaskState::Retrying,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Stopped,
        TaskState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Enqueued => "Enqueued",
            TaskState::Running => "Running",
            TaskState::Retrying => "Retrying",
            TaskState::Succeeded => "Succeeded",
            TaskState::Failed => "Failed",
            TaskState::Stopped => "Stopped",
            TaskState::Expired => "Expired",
        }
    }

    /// Parses the API spelling (`?state=Enqueued`); case-insensitive so `?state=failed` works.
    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    /// The stored code (see the type's doc).
    pub fn code(self) -> i64 {
        match self {
            TaskState::Enqueued => 0,
            TaskState::Running => 1,
            TaskState::Retrying => 2,
            TaskState::Succeeded => 3,
            TaskState::Failed => 4,
            TaskState::Stopped => 5,
            TaskState::Expired => 6,
        }
    }

    pub fn from_code(code: i64) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Succeeded, Failed, Stopped and Expired: no attempt will start unless an operator
    /// redrives it, and `prune` may delete it once past retention.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Stopped | TaskState::Expired
        )
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The HTTP request an async invocation will replay against the function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRequest {
    pub method: String,
    pub path_and_query: String,
    /// In arrival order; values are bytes because HTTP header values need not be UTF-8.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Already bounded by the function's async payload limit on the accept path.
    pub body: Bytes,
}

/// What the accept path hands to `TaskStore::accept`.
#[derive(Clone, Debug)]
pub struct NewTask {
    /// Caller-chosen (`x-fngate-task-id`, checked by `valid_task_id`) or `new_task_id()`.
    pub task_id: String,
    pub request_id: String,
    /// `"service/function"`.
    pub function: String,
    /// Higher runs first.
    pub priority: i32,
    /// Unix ms before which no attempt starts (`x-fngate-async-delay`); 0 = at once.
    pub not_before_ms: u64,
    pub max_retries: u32,
    /// Age (since enqueue) after which a task that has not started an attempt is Expired;
    /// 0 = no age limit.
    pub max_event_age_ms: u64,
    pub request: TaskRequest,
}

/// The response of an attempt, kept for the tasks API and destinations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskResult {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    /// At most `RESULT_BODY_LIMIT` bytes: the store cuts longer bodies.
    pub body: Bytes,
    /// The body was longer than `RESULT_BODY_LIMIT` (set by the store when it cuts, or by a
    /// caller that already stopped reading).
    pub truncated: bool,
}

/// One line of a task's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub at_ms: u64,
    pub state: TaskState,
    pub detail: String,
}

/// A task without its request payload, result body and history: what `list` pages through
/// and what the write operations answer with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub id: String,
    pub request_id: String,
    pub function: String,
    pub state: TaskState,
    pub priority: i32,
    /// Attempts started so far (claims); reset by a redrive.
    pub attempts: u32,
    pub max_retries: u32,
    pub max_event_age_ms: u64,
    /// First accept.
    pub created_ms: u64,
    /// Accept or last redrive: `max_event_age_ms` counts from here, so a redriven task gets a
    /// fresh age budget instead of expiring at once.
    pub enqueued_ms: u64,
    pub updated_ms: u64,
    pub not_before_ms: u64,
    /// Start of the latest attempt.
    pub started_ms: Option<u64>,
    /// Set exactly while the state is final.
    pub finished_ms: Option<u64>,
    pub instance_id: Option<String>,
    pub last_error: Option<String>,
    pub result_status: Option<u16>,
}

/// A task with everything the store keeps about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub summary: TaskSummary,
    /// `None` once the task Succeeded or was Stopped: the payload is dropped then (it can never
    /// run again, and GPU payloads such as images are large). Failed and Expired tasks keep it
    /// so that they can be redriven.
    pub request: Option<TaskRequest>,
    pub result: Option<TaskResult>,
    /// Oldest first.
    pub events: Vec<TaskEvent>,
}

/// Answer of `accept`: a repeated task id never creates a second task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// Durable (committed with fsync) before this was returned.
    Stored(TaskSummary),
    /// A task with this id already existed; nothing was written. Its function may differ from
    /// the new request's: the id alone identifies the task.
    Existing(TaskSummary),
}

impl AcceptOutcome {
    pub fn summary(&self) -> &TaskSummary {
        match self {
            AcceptOutcome::Stored(s) | AcceptOutcome::Existing(s) => s,
        }
    }
}

/// Answer of `claim`.
#[derive(Clone, Debug, Default)]
pub struct Claimed {
    /// Marked Running (attempts + 1), in priority-then-age order: run these.
    pub tasks: Vec<Task>,
    /// Due tasks found older than their `max_event_age_ms` and marked Expired in the same
    /// transaction, without an attempt: send their on_failure destination (EventAgeExceeded).
    pub expired: Vec<Task>,
}

/// How an attempt ended, as the dispatcher reports it to `finish`. The dispatcher decides
/// retry-or-fail (it knows `max_retries` and the status classes); the store only records.
#[derive(Clone, Debug)]
pub enum Finish {
    Succeeded {
        result: TaskResult,
        instance: String,
    },
    /// A retryable failure: state Retrying, next attempt due at `at_ms`.
    RetryAt {
        at_ms: u64,
        error: String,
        instance: Option<String>,
        result: Option<TaskResult>,
    },
    /// Not retryable, or retries exhausted.
    Failed {
        error: String,
        instance: Option<String>,
        result: Option<TaskResult>,
    },
    /// The next attempt would start past `max_event_age_ms`.
    Expired { error: String },
}

impl Finish {
    pub fn state(&self) -> TaskState {
        match self {
            Finish::Succeeded { .. } => TaskState::Succeeded,
            Finish::RetryAt { .. } => TaskState::Retrying,
            Finish::Failed { .. } => TaskState::Failed,
            Finish::Expired { .. } => TaskState::Expired,
        }
    }
}

/// Answer of `stop`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// The state before the stop. `Running`: an attempt is in flight and the caller must abort
    /// its upstream call; the dispatcher's later `finish` leaves the task Stopped.
    /// `Stopped`: it already was (stop is idempotent).
    pub previous: TaskState,
    pub task: TaskSummary,
}

/// Filter and page of `list`. Ordering is stable: oldest accept first.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub function: Option<String>,
    pub state: Option<TaskState>,
    /// 1..=`MAX_LIST_LIMIT`.
    pub limit: usize,
    /// `next_cursor` of the previous page; opaque to callers.
    pub cursor: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct TaskPage {
    pub tasks: Vec<TaskSummary>,
    /// `Some` when more tasks may follow.
    pub next_cursor: Option<String>,
}

/// Per-state task counts of one function, for metrics and the dashboard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    pub enqueued: u64,
    pub running: u64,
    pub retrying: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub stopped: u64,
    pub expired: u64,
    /// `enqueued_ms` of the oldest Enqueued or Retrying task ("age of the oldest task").
    pub oldest_waiting_ms: Option<u64>,
    /// Earliest `not_before_ms` among Enqueued and Retrying tasks: when a dispatcher with
    /// nothing due should look again.
    pub next_due_ms: Option<u64>,
}

impl QueueCounts {
    pub fn get(&self, state: TaskState) -> u64 {
        match state {
            TaskState::Enqueued => self.enqueued,
            TaskState::Running => self.running,
            TaskState::Retrying => self.retrying,
            TaskState::Succeeded => self.succeeded,
            TaskState::Failed => self.failed,
            TaskState::Stopped => self.stopped,
            TaskState::Expired => self.expired,
        }
    }

    pub(crate) fn slot(&mut self, state: TaskState) -> &mut u64 {
        match state {
            TaskState::Enqueued => &mut self.enqueued,
            TaskState::Running => &mut self.running,
            TaskState::Retrying => &mut self.retrying,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::Failed => &mut self.failed,
            TaskState::Stopped => &mut self.stopped,
            TaskState::Expired => &mut self.expired,
        }
    }
}

/// The rule for task ids, caller-chosen ones included: 1 to 128 characters of ASCII letters,
/// digits, `_` and `-`, starting with a letter or `_`. Keeps ids safe in URLs
/// (`/tasks/{id}`), headers, log lines and NATS subjects without escaping.
pub fn valid_task_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TASK_ID_LEN
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

/// A fresh task id: `t_` + 12 hex digits of unix ms + the 16 hex digits of a request id.
///
/// The time prefix makes ids sort roughly by creation and keeps ids of different gateway runs
/// apart; the request-id generator is a bijection of a per-process random seed plus a counter,
/// so ids within one process never repeat. A collision would silently merge a new request into
/// an old task (`AcceptOutcome::Existing`), hence the 112 bits rather than one random u64.
pub fn new_task_id() -> String {
    let rid = crate::telemetry::next_request_id();
    format!("t_{:012x}{}", now_ms() & 0xffff_ffff_ffff, rid.as_str())
}

/// Wall-clock unix milliseconds, the time base of every `*_ms` field.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
