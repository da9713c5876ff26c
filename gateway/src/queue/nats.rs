//! `NatsStore`: the task store several gateways share through NATS JetStream.
//!
//! Layout, for a configured stream name `S` (default `FNGATE`):
//!
//! - stream `S`, subjects `S.tasks.>`, work-queue retention: one message per *pending run* of a
//!   task, on subject `S.tasks.{service}.{function}`. The message carries the whole request,
//!   so a message is always enough to (re)build its task.
//! - one durable pull consumer per function (`fn-{len}-{service}-{function}`), explicit ack,
//!   shared by every gateway: each message goes to one gateway at a time. Its ack wait is the
//!   function's timeout plus a margin; a running attempt sends progress acks, so the ack wait
//!   only bounds how long a dead gateway's tasks wait before another gateway runs them.
//! - key-value bucket `S_TASKS`: key = task id, value = the task record (state, attempts,
//!   history, result, and the request while the task is Failed or Expired so it can be
//!   redriven). Every change is a compare-and-set on the key's revision, so two gateways never
//!   both move one task.
//! - core subjects `S.wake` (a task of a function was accepted or redriven: claim now) and
//!   `S.stop` (a task was stopped: abort it where it runs).
//!
//! The record names the stream sequence of the message that may run it (`seq`): a message
//! whose sequence differs is stale (a duplicate publish, or a redrive that did not complete)
//! and is dropped. Orders of writes, so that a crash at any point loses nothing that was
//! answered with 202 and never runs a task twice in the normal case:
//!
//! - accept: publish the message (deduplicated by task id within the stream's duplicate
//!   window), then create the record. A crash in between leaves a message without a record;
//!   whoever claims it creates the record from the message.
//! - finish: update the record, then ack (success, failure) or nak with the retry delay. A
//!   crash in between redelivers a message whose record is final: dropped.
//! - redrive: publish the new message, then point the record at it.
//!
//! Priority orders tasks within one claim; across claims JetStream delivers in publish order.
//! Finished records expire with the bucket's max age (the queue's retention), so `prune` has
//! nothing to do; `recover` neither: unacknowledged messages come back by themselves.

use super::codec::{decode_frames, decode_headers, encode_frames, encode_headers};
use super::{
    AcceptOutcome, Claimed, Finish, ListFilter, NewTask, QueueCounts, RESULT_BODY_LIMIT, Stopped,
    StoreError, StoreFuture, StoreListener, Task, TaskEvent, TaskPage, TaskRequest, TaskResult,
    TaskState, TaskStore, TaskSummary, now_ms, valid_task_id,
};
use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Redeliveries of one message before JetStream gives up on it. Retries (one delivery each)
/// and not-yet-due naks stay far below this; it only stops a message that crashes every
/// gateway that claims it from circulating forever.
pub const MAX_DELIVER: i64 = 64;
/// Added to the function's timeout for the consumer's ack wait (`NatsOptions::ack_wait_margin`).
/// Progress acks start with the claim, so the margin only covers a late progress ack.
pub const DEFAULT_ACK_WAIT_MARGIN: Duration = Duration::from_secs(2);
const MIN_ACK_WAIT: Duration = Duration::from_secs(1);
/// How often a shared store asks the dispatcher to claim without a wake-up.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Publishes within this window with the same task id are one message.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Room kept under the server's max payload for the record's metadata and history.
const RECORD_HEADROOM: usize = 64 * 1024;
/// Compare-and-set rounds before a contested update gives up (answered as retryable).
const CAS_ROUNDS: usize = 16;
/// `list` reads at most this many records per call (it scans the bucket).
const LIST_SCAN_LIMIT: usize = 100_000;

#[derive(Clone, Debug)]
pub struct NatsOptions {
    pub url: String,
    pub stream: String,
    /// The bucket's max age: finished task records are kept this long after their last change.
    pub retention: Duration,
    /// The consumer's ack wait is the function's timeout plus this.
    pub ack_wait_margin: Duration,
}

pub struct NatsStore {
    url: String,
    name: String,
    client: async_nats::Client,
    js: jetstream::Context,
    kv: kv::Store,
    max_payload: usize,
    ack_wait_margin: Duration,
    /// Per function: the consumer and the ack wait it was created with.
    consumers: tokio::sync::Mutex<HashMap<String, (PullConsumer, Duration)>>,
    timeouts: Mutex<HashMap<String, Duration>>,
    inflight: Arc<Mutex<HashMap<String, Inflight>>>,
    listener: Arc<OnceLock<Weak<dyn StoreListener>>>,
    control: JoinHandle<()>,
}

/// A claimed message this gateway runs: acked, naked or kept alive from here.
struct Inflight {
    msg: Arc<jetstream::Message>,
    request: TaskRequest,
    /// The record as the claim wrote it, and its revision.
    record: (Record, u64),
    progress: JoinHandle<()>,
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.progress.abort();
    }
}

impl Drop for NatsStore {
    fn drop(&mut self) {
        self.control.abort();
    }
}

impl std::fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStore")
            .field("url", &self.url)
            .field("stream", &self.name)
            .finish_non_exhaustive()
    }
}

/// The request as a message carries it (the record's `seq` names the message).
#[derive(Serialize, Deserialize)]
struct MsgMeta {
    id: String,
    request_id: String,
    function: String,
    priority: i32,
    not_before_ms: u64,
    max_retries: u32,
    max_event_age_ms: u64,
    created_ms: u64,
    enqueued_ms: u64,
    method: String,
    path: String,
}

/// The task record kept in the bucket.
#[derive(Serialize, Deserialize, Clone)]
struct RecordMeta {
    summary: TaskSummary,
    events: Vec<TaskEvent>,
    /// Stream sequence of the message that may run this task.
    seq: u64,
    /// `(method, path)` of the kept request (Failed/Expired only).
    request: Option<(String, String)>,
    /// `(status, truncated)` of the kept result.
    result: Option<(u16, bool)>,
}

#[derive(Clone)]
struct Record {
    meta: RecordMeta,
    request: Option<TaskRequest>,
    result: Option<TaskResult>,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let meta = serde_json::to_vec(&self.meta).unwrap_or_default();
        let empty: &[u8] = &[];
        let rq_h = self.request.as_ref().map(|r| encode_headers(&r.headers));
        let rs_h = self.result.as_ref().map(|r| encode_headers(&r.headers));
        encode_frames(&[
            &meta,
            rq_h.as_deref().unwrap_or(empty),
            self.request.as_ref().map_or(empty, |r| &r.body[..]),
            rs_h.as_deref().unwrap_or(empty),
            self.result.as_ref().map_or(empty, |r| &r.body[..]),
        ])
    }

    fn decode(bytes: &[u8]) -> Result<Record, String> {
        let p = decode_frames(bytes, 5)?;
        let meta: RecordMeta =
            serde_json::from_slice(p[0]).map_err(|e| format!("record metadata: {e}"))?;
        let request = match &meta.request {
            Some((method, path)) => Some(TaskRequest {
                method: method.clone(),
                path_and_query: path.clone(),
                headers: decode_headers(p[1])?,
                body: Bytes::copy_from_slice(p[2]),
            }),
            None => None,
        };
        let result = match meta.result {
            Some((status, truncated)) => Some(TaskResult {
                status,
                headers: decode_headers(p[3])?,
                body: Bytes::copy_from_slice(p[4]),
                truncated,
            }),
            None => None,
        };
        Ok(Record {
            meta,
            request,
            result,
        })
    }

    fn task(&self) -> Task {
        Task {
            summary: self.meta.summary.clone(),
            request: self.request.clone(),
            result: self.result.clone(),
            events: self.meta.events.clone(),
        }
    }

    fn set_request(&mut self, r: Option<TaskRequest>) {
        self.meta.request = r
            .as_ref()
            .map(|r| (r.method.clone(), r.path_and_query.clone()));
        self.request = r;
    }

    fn set_result(&mut self, r: Option<TaskResult>, limit: usize) {
        let r = r.map(|mut r| {
            if r.body.len() > limit {
                r.body = r.body.slice(..limit);
                r.truncated = true;
            }
            r
        });
        self.meta.summary.result_status = r.as_ref().map(|r| r.status);
        self.meta.result = r.as_ref().map(|r| (r.status, r.truncated));
        self.result = r;
    }

    /// State change with its history line.
    fn set_state(&mut self, state: TaskState, now: u64, detail: impl Into<String>) {
        let s = &mut self.meta.summary;
        s.state = state;
        s.updated_ms = now;
        s.finished_ms = state.is_final().then_some(now);
        self.meta.events.push(TaskEvent {
            at_ms: now,
            state,
            detail: detail.into(),
        });
    }
}

fn encode_message(t: &MsgMeta, req: &TaskRequest) -> Vec<u8> {
    let meta = serde_json::to_vec(t).unwrap_or_default();
    encode_frames(&[&meta, &encode_headers(&req.headers), &req.body])
}

fn decode_message(bytes: &[u8]) -> Result<(MsgMeta, TaskRequest), String> {
    let p = decode_frames(bytes, 3)?;
    let meta: MsgMeta =
        serde_json::from_slice(p[0]).map_err(|e| format!("message metadata: {e}"))?;
    let req = TaskRequest {
        method: meta.method.clone(),
        path_and_query: meta.path.clone(),
        headers: decode_headers(p[1])?,
        body: Bytes::copy_from_slice(p[2]),
    };
    Ok((meta, req))
}

/// Whether `id` has the shape of `new_task_id()`: `t_` and 28 lowercase hex digits.
fn looks_generated(id: &str) -> bool {
    id.len() == 30
        && id.starts_with("t_")
        && id
            .bytes()
            .skip(2)
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `service/function` → the subject tail `service.function`. Names are lowercase letters,
/// digits, `-` and `_` (config validation), all legal in subject tokens.
fn subject_tail(function: &str) -> String {
    function.replace('/', ".")
}

/// A durable consumer name (no `.`, `*`, `>`), unambiguous for any service/function split.
fn consumer_name(function: &str) -> String {
    let (svc, f) = function.split_once('/').unwrap_or((function, ""));
    format!("fn-{}-{svc}-{f}", svc.len())
}

impl NatsStore {
    /// Connects, and creates the stream and the bucket if they do not exist yet (every
    /// gateway does this at start; creating an existing one with the same settings is a
    /// no-op).
    pub async fn open(opts: &NatsOptions) -> Result<NatsStore, StoreError> {
        let err = |op: &'static str| {
            let url = opts.url.clone();
            move |e: String| StoreError::Nats {
                url: url.clone(),
                op,
                detail: e,
            }
        };
        let client = async_nats::ConnectOptions::new()
            .name("fngate")
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .connect(opts.url.as_str())
            .await
            .map_err(|e| err("connect")(e.to_string()))?;
        // retry_on_initial_connect returns at once; wait (bounded) for the first connection so
        // a wrong URL fails start-up with a clear message instead of every accept timing out.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while client.connection_state() != async_nats::connection::State::Connected {
            if tokio::time::Instant::now() > deadline {
                return Err(err("connect")("no connection within 10 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let js = jetstream::new(client.clone());
        let name = opts.stream.clone();
        js.get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.tasks.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            description: Some("fngate async tasks: one message per pending run".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| err("creating the task stream")(e.to_string()))?;
        let bucket = format!("{name}_TASKS");
        // The bucket's stream is created here rather than with `create_key_value`, which first
        // queries account limits in a shape NATS 2.9 (Debian's) does not answer in. The settings
        // are those of a KV bucket with history 1.
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("fngate async task records".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: opts.retention,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| err("creating the task bucket")(e.to_string()))?;
        let kv = js
            .get_key_value(&bucket)
            .await
            .map_err(|e| err("opening the task bucket")(e.to_string()))?;
        let max_payload = client.server_info().max_payload.max(64 * 1024);
        let inflight: Arc<Mutex<HashMap<String, Inflight>>> = Arc::default();
        let listener: Arc<OnceLock<Weak<dyn StoreListener>>> = Arc::default();
        let control = spawn_control(&client, &name, inflight.clone(), listener.clone())
            .await
            .map_err(|e| err("subscribing to control subjects")(e))?;
        Ok(NatsStore {
            url: opts.url.clone(),
            name,
            client,
            js,
            kv,
            max_payload,
            ack_wait_margin: opts.ack_wait_margin,
            consumers: Default::default(),
            timeouts: Default::default(),
            inflight,
            listener,
            control,
        })
    }

    fn nats_err(&self, op: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Nats {
            url: self.url.clone(),
            op,
            detail: e.to_string(),
        }
    }

    fn corrupt(&self, id: &str, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: format!("{} bucket {}_TASKS", self.url, self.name).into(),
            id: id.to_owned(),
            detail,
        }
    }

    /// Biggest result body a record may keep under the server's max payload.
    fn result_limit(&self) -> usize {
        RESULT_BODY_LIMIT.min(self.max_payload.saturating_sub(RECORD_HEADROOM))
    }

    async fn load(&self, id: &str) -> Result<Option<(Record, u64)>, StoreError> {
        match self.kv.entry(id).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                let rec = Record::decode(&e.value).map_err(|d| self.corrupt(id, d))?;
                Ok(Some((rec, e.revision)))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(self.nats_err("reading a task record", e)),
        }
    }

    /// Read-modify-write with compare-and-set; `f` may run more than once.
    async fn modify<F>(&self, id: &str, f: F) -> Result<Record, StoreError>
    where
        F: FnMut(&mut Record) -> Result<(), StoreError>,
    {
        Ok(self.modify_from(id, None, f).await?.0)
    }

    /// `modify` starting from a record and revision already known (the lease's): one round
    /// trip fewer when nobody changed the record meanwhile. Returns the new revision too.
    async fn modify_from<F>(
        &self,
        id: &str,
        mut known: Option<(Record, u64)>,
        mut f: F,
    ) -> Result<(Record, u64), StoreError>
    where
        F: FnMut(&mut Record) -> Result<(), StoreError>,
    {
        for _ in 0..CAS_ROUNDS {
            let (mut rec, rev) = match known.take() {
                Some(k) => k,
                None => match self.load(id).await? {
                    Some(k) => k,
                    None => return Err(StoreError::NotFound { id: id.to_owned() }),
                },
            };
            f(&mut rec)?;
            match self.kv.update(id, rec.encode().into(), rev).await {
                Ok(new_rev) => return Ok((rec, new_rev)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(self.nats_err("updating a task record", e)),
            }
        }
        Err(self.nats_err(
            "updating a task record",
            format!("task `{id}` kept changing under {CAS_ROUNDS} attempts"),
        ))
    }

    /// Publishes a run message; returns its stream sequence (the original one for a
    /// duplicate within the window).
    async fn publish_run(
        &self,
        meta: &MsgMeta,
        req: &TaskRequest,
        msg_id: &str,
    ) -> Result<u64, StoreError> {
        let body = encode_message(meta, req);
        if body.len() > self.max_payload {
            return Err(StoreError::TooLarge {
                size: body.len(),
                limit: self.max_payload,
            });
        }
        let subject = format!("{}.tasks.{}", self.name, subject_tail(&meta.function));
        let ack = self
            .js
            .send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .payload(body.into())
                    .message_id(msg_id),
            )
            .await
            .map_err(|e| self.nats_err("publishing a task", e))?
            .await
            .map_err(|e| self.nats_err("publishing a task", e))?;
        Ok(ack.sequence)
    }

    fn announce(&self, function: &str) {
        let client = self.client.clone();
        let subject = format!("{}.wake", self.name);
        let payload = Bytes::copy_from_slice(function.as_bytes());
        // Best effort: a lost wake is caught by the next poll.
        tokio::spawn(async move {
            let _ = client.publish(subject, payload).await;
        });
    }

    async fn consumer(&self, function: &str) -> Result<PullConsumer, StoreError> {
        let timeout = lock(&self.timeouts)
            .get(function)
            .copied()
            .unwrap_or(Duration::from_secs(30));
        let ack_wait = (timeout + self.ack_wait_margin).max(MIN_ACK_WAIT);
        let mut consumers = self.consumers.lock().await;
        if let Some((c, w)) = consumers.get(function)
            && *w == ack_wait
        {
            return Ok(c.clone());
        }
        let config = pull::Config {
            durable_name: Some(consumer_name(function)),
            filter_subject: format!("{}.tasks.{}", self.name, subject_tail(function)),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver: MAX_DELIVER,
            max_ack_pending: 100_000,
            description: Some(format!("fngate async tasks of {function}")),
            ..Default::default()
        };
        let stream = self
            .js
            .get_stream(&self.name)
            .await
            .map_err(|e| self.nats_err("opening the task stream", e))?;
        // create_consumer updates an existing durable consumer's ack wait.
        let c = match stream.create_consumer(config).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    function,
                    "cannot create or update the NATS consumer: {e}; using the existing one"
                );
                stream
                    .get_consumer(&consumer_name(function))
                    .await
                    .map_err(|e| self.nats_err("opening a task consumer", e))?
            }
        };
        consumers.insert(function.to_owned(), (c.clone(), ack_wait));
        Ok(c)
    }

    /// Turns one delivered message into a claimed task, an expired task, or nothing (stale,
    /// final, not yet due: each handled here).
    async fn claim_one(
        &self,
        msg: jetstream::Message,
        now: u64,
        ack_wait: Duration,
    ) -> Result<Piece, StoreError> {
        let (seq, delivered) = match msg.info() {
            Ok(i) => (i.stream_sequence, i.delivered),
            Err(e) => return Err(self.nats_err("reading a message's metadata", e)),
        };
        let (m, request) = match decode_message(&msg.message.payload) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(seq, "dropping an unreadable task message: {e}");
                let _ = msg.ack_with(AckKind::Term).await;
                return Ok(Piece::Nothing);
            }
        };
        enum Verdict {
            Drop(&'static str),
            Later(u64),
            Expire,
            Run,
        }
        let mut verdict = Verdict::Drop("");
        let kept_request = request.clone();
        let mut rebuilt = false;
        let rec = loop {
            let r = self
            .modify_from(&m.id, None, |rec| {
                let s = &rec.meta.summary;
                verdict = if rec.meta.seq != seq {
                    Verdict::Drop("stale")
                } else if s.state.is_final() {
                    Verdict::Drop("final")
                } else if s.not_before_ms > now {
                    Verdict::Later(s.not_before_ms)
                } else if s.max_event_age_ms > 0
                    && now.saturating_sub(s.enqueued_ms) > s.max_event_age_ms
                {
                    Verdict::Expire
                } else {
                    Verdict::Run
                };
                match verdict {
                    // Nothing to write: a no-op update would still bump the revision.
                    Verdict::Drop(_) | Verdict::Later(_) => Err(StoreError::InvalidInput(String::new())),
                    Verdict::Expire => {
                        let age = now.saturating_sub(rec.meta.summary.enqueued_ms);
                        rec.set_request(Some(kept_request.clone()));
                        rec.meta.summary.last_error = Some(format!(
                            "older than max_event_age ({} ms) before an attempt could start",
                            rec.meta.summary.max_event_age_ms
                        ));
                        rec.set_state(TaskState::Expired, now, format!("expired: {age} ms old"));
                        Ok(())
                    }
                    Verdict::Run => {
                        let was = rec.meta.summary.state;
                        let s = &mut rec.meta.summary;
                        s.attempts += 1;
                        s.started_ms = Some(now);
                        let n = s.attempts;
                        let detail = if was == TaskState::Running {
                            format!("attempt {n} (its previous gateway stopped acknowledging; delivery {delivered})")
                        } else {
                            format!("attempt {n}")
                        };
                        rec.set_state(TaskState::Running, now, detail);
                        Ok(())
                    }
                }
            })
            .await;
            match r {
                Err(StoreError::NotFound { .. }) if !rebuilt => {
                    // Published but the accept never created the record (it crashed in
                    // between): the message alone is the task. Creating it here races only
                    // with that accept.
                    rebuilt = true;
                    let rec =
                        new_record(&m, seq, "accepted (record rebuilt from its queue message)");
                    if let Err(e) = self.kv.create(&m.id, rec.encode().into()).await
                        && e.kind() != kv::CreateErrorKind::AlreadyExists
                    {
                        let _ = msg
                            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                            .await;
                        return Err(self.nats_err("creating a task record", e));
                    }
                }
                r => break r,
            }
        };
        match (verdict, rec) {
            (Verdict::Drop(why), _) => {
                tracing::debug!(task = %m.id, seq, why, "dropping a task message");
                let _ = msg.double_ack().await;
                Ok(Piece::Nothing)
            }
            (Verdict::Later(due), _) => {
                let delay = Duration::from_millis(due.saturating_sub(now));
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                self.wake_at(&m.function, due);
                Ok(Piece::Nothing)
            }
            (Verdict::Expire, Ok((rec, _))) => {
                let _ = msg.double_ack().await;
                Ok(Piece::Expired(rec.task()))
            }
            (Verdict::Run, Ok((rec, rev))) => {
                let msg = Arc::new(msg);
                let keep = msg.clone();
                let progress = tokio::spawn(async move {
                    let every = ack_wait / 3;
                    loop {
                        tokio::time::sleep(every).await;
                        let _ = keep.ack_with(AckKind::Progress).await;
                    }
                });
                let mut task = rec.task();
                task.request = Some(request.clone());
                lock(&self.inflight).insert(
                    m.id.clone(),
                    Inflight {
                        msg,
                        request,
                        record: (rec, rev),
                        progress,
                    },
                );
                Ok(Piece::Run(task))
            }
            (_, Err(e)) => {
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                Err(e)
            }
        }
    }

    fn wake_at(&self, function: &str, due: u64) {
        if let Some(l) = self.listener.get().and_then(Weak::upgrade) {
            l.wake(function, due);
        }
    }
}

/// What one delivered message came to in a claim.
enum Piece {
    Run(Task),
    Expired(Task),
    /// Dropped (stale, final, unreadable) or put back until due.
    Nothing,
}

fn new_record(m: &MsgMeta, seq: u64, detail: &str) -> Record {
    let summary = TaskSummary {
        id: m.id.clone(),
        request_id: m.request_id.clone(),
        function: m.function.clone(),
        state: TaskState::Enqueued,
        priority: m.priority,
        attempts: 0,
        max_retries: m.max_retries,
        max_event_age_ms: m.max_event_age_ms,
        created_ms: m.created_ms,
        enqueued_ms: m.enqueued_ms,
        updated_ms: m.enqueued_ms,
        not_before_ms: m.not_before_ms,
        started_ms: None,
        finished_ms: None,
        instance_id: None,
        last_error: None,
        result_status: None,
    };
    Record {
        meta: RecordMeta {
            summary,
            events: vec![TaskEvent {
                at_ms: m.enqueued_ms,
                state: TaskState::Enqueued,
                detail: detail.to_owned(),
            }],
            seq,
            request: None,
            result: None,
        },
        request: None,
        result: None,
    }
}

/// Listens on `S.wake` and `S.stop` for the life of the store.
async fn spawn_control(
    client: &async_nats::Client,
    name: &str,
    inflight: Arc<Mutex<HashMap<String, Inflight>>>,
    listener: Arc<OnceLock<Weak<dyn StoreListener>>>,
) -> Result<JoinHandle<()>, String> {
    let mut wakes = client
        .subscribe(format!("{name}.wake"))
        .await
        .map_err(|e| e.to_string())?;
    let mut stops = client
        .subscribe(format!("{name}.stop"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(tokio::spawn(async move {
        loop {
            let (msg, is_stop) = tokio::select! {
                m = wakes.next() => (m, false),
                m = stops.next() => (m, true),
            };
            let Some(msg) = msg else { return };
            let Ok(text) = std::str::from_utf8(&msg.payload) else {
                continue;
            };
            let Some(l) = listener.get().and_then(Weak::upgrade) else {
                continue;
            };
            if is_stop {
                // The record is already Stopped: end the lease here and abort the attempt.
                let gone = lock(&inflight).remove(text);
                if let Some(inf) = gone {
                    let _ = inf.msg.double_ack().await;
                    l.abort(text);
                }
            } else {
                l.wake(text, now_ms());
            }
        }
    }))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TaskStore for NatsStore {
    fn accept(&self, task: NewTask) -> StoreFuture<'_, AcceptOutcome> {
        Box::pin(async move {
            if !valid_task_id(&task.task_id) {
                return Err(StoreError::invalid_task_id(&task.task_id));
            }
            // A repeated id must not publish a second message. The lookup is only an economy,
            // not what makes it safe (a record names its one message; any other is dropped as
            // stale when claimed), so ids in the format fngate generates skip it: one round
            // trip fewer for the common case.
            if !looks_generated(&task.task_id)
                && let Some((rec, _)) = self.load(&task.task_id).await?
            {
                return Ok(AcceptOutcome::Existing(rec.meta.summary));
            }
            let now = now_ms();
            let meta = MsgMeta {
                id: task.task_id.clone(),
                request_id: task.request_id.clone(),
                function: task.function.clone(),
                priority: task.priority,
                not_before_ms: task.not_before_ms,
                max_retries: task.max_retries,
                max_event_age_ms: task.max_event_age_ms,
                created_ms: now,
                enqueued_ms: now,
                method: task.request.method.clone(),
                path: task.request.path_and_query.clone(),
            };
            let seq = self
                .publish_run(&meta, &task.request, &task.task_id)
                .await?;
            let rec = new_record(&meta, seq, "accepted");
            match self.kv.create(&task.task_id, rec.encode().into()).await {
                Ok(_) => {
                    self.announce(&task.function);
                    Ok(AcceptOutcome::Stored(rec.meta.summary))
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    // A concurrent accept of the same id (its publish was the same message),
                    // or a claimer that rebuilt the record from our message.
                    match self.load(&task.task_id).await? {
                        Some((r, _)) if r.meta.summary.request_id == task.request_id => {
                            Ok(AcceptOutcome::Stored(r.meta.summary))
                        }
                        Some((r, _)) => Ok(AcceptOutcome::Existing(r.meta.summary)),
                        None => Err(self.nats_err(
                            "creating a task record",
                            "the record vanished while being created",
                        )),
                    }
                }
                Err(e) => Err(self.nats_err("creating a task record", e)),
            }
        })
    }

    fn claim<'a>(
        &'a self,
        function: &'a str,
        now_ms: u64,
        limit: usize,
    ) -> StoreFuture<'a, Claimed> {
        Box::pin(async move {
            let mut out = Claimed::default();
            if limit == 0 {
                return Ok(out);
            }
            let consumer = self.consumer(function).await?;
            let ack_wait = consumer.cached_info().config.ack_wait;
            let mut batch = consumer
                .fetch()
                .max_messages(limit)
                .messages()
                .await
                .map_err(|e| self.nats_err("fetching tasks", e))?;
            let mut first_err = None;
            let mut msgs = Vec::with_capacity(limit);
            while let Some(m) = batch.next().await {
                match m {
                    Ok(m) => msgs.push(m),
                    Err(e) => {
                        first_err = Some(self.nats_err("fetching tasks", e));
                        break;
                    }
                }
            }
            // Each message costs a few round trips (record read, compare-and-set): overlap them.
            let pieces = futures_util::future::join_all(
                msgs.into_iter()
                    .map(|m| self.claim_one(m, now_ms, ack_wait)),
            )
            .await;
            for p in pieces {
                match p {
                    Ok(Piece::Run(t)) => out.tasks.push(t),
                    Ok(Piece::Expired(t)) => out.expired.push(t),
                    Ok(Piece::Nothing) => {}
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if out.tasks.is_empty()
                && out.expired.is_empty()
                && let Some(e) = first_err
            {
                return Err(e);
            }
            out.tasks.sort_by(|a, b| {
                b.summary
                    .priority
                    .cmp(&a.summary.priority)
                    .then(a.summary.enqueued_ms.cmp(&b.summary.enqueued_ms))
            });
            Ok(out)
        })
    }

    fn finish<'a>(&'a self, id: &'a str, outcome: Finish) -> StoreFuture<'a, TaskSummary> {
        Box::pin(async move {
            let inflight = lock(&self.inflight).remove(id);
            let kept = inflight.as_ref().map(|i| i.request.clone());
            let known = inflight.as_ref().map(|i| i.record.clone());
            let limit = self.result_limit();
            let now = now_ms();
            let rec = self
                .modify_from(id, known, |rec| {
                    match rec.meta.summary.state {
                        TaskState::Running => {}
                        TaskState::Stopped => {
                            rec.meta.events.push(TaskEvent {
                                at_ms: now,
                                state: TaskState::Stopped,
                                detail: format!(
                                    "the attempt stopped by an operator ended: {:?}",
                                    outcome.state()
                                ),
                            });
                            return Ok(());
                        }
                        state => {
                            return Err(StoreError::InvalidTransition {
                                id: id.to_owned(),
                                state,
                                action: "finish",
                                rule: "only a Running task has an attempt to finish",
                            });
                        }
                    }
                    let s = &mut rec.meta.summary;
                    match &outcome {
                        Finish::Succeeded { result, instance } => {
                            s.instance_id = Some(instance.clone());
                            s.last_error = None;
                            rec.set_result(Some(result.clone()), limit);
                            rec.set_request(None);
                            rec.set_state(TaskState::Succeeded, now, "succeeded");
                        }
                        Finish::RetryAt {
                            at_ms,
                            error,
                            instance,
                            result,
                        } => {
                            s.not_before_ms = *at_ms;
                            s.last_error = Some(error.clone());
                            if instance.is_some() {
                                s.instance_id = instance.clone();
                            }
                            rec.set_result(result.clone(), limit);
                            rec.set_state(
                                TaskState::Retrying,
                                now,
                                format!("retry at {at_ms}: {error}"),
                            );
                        }
                        Finish::Failed {
                            error,
                            instance,
                            result,
                        } => {
                            s.last_error = Some(error.clone());
                            if instance.is_some() {
                                s.instance_id = instance.clone();
                            }
                            rec.set_result(result.clone(), limit);
                            rec.set_request(kept.clone());
                            rec.set_state(TaskState::Failed, now, format!("failed: {error}"));
                        }
                        Finish::Expired { error } => {
                            s.last_error = Some(error.clone());
                            rec.set_request(kept.clone());
                            rec.set_state(TaskState::Expired, now, format!("expired: {error}"));
                        }
                    }
                    Ok(())
                })
                .await;
            let rec = match rec {
                Ok((r, _)) => r,
                Err(e) => {
                    // Keep the lease where it was: the message comes back after the ack wait.
                    if let Some(i) = inflight {
                        lock(&self.inflight).insert(id.to_owned(), i);
                    }
                    return Err(e);
                }
            };
            if let Some(i) = inflight {
                match (&outcome, rec.meta.summary.state) {
                    (Finish::RetryAt { at_ms, .. }, TaskState::Retrying) => {
                        let delay = Duration::from_millis(at_ms.saturating_sub(now_ms()));
                        let _ = i.msg.ack_with(AckKind::Nak(Some(delay))).await;
                        self.wake_at(&rec.meta.summary.function, *at_ms);
                    }
                    _ => {
                        let _ = i.msg.double_ack().await;
                    }
                }
            }
            Ok(rec.meta.summary)
        })
    }

    fn stop<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Stopped> {
        Box::pin(async move {
            let mut previous = TaskState::Enqueued;
            let now = now_ms();
            let rec = self
                .modify(id, |rec| {
                    previous = rec.meta.summary.state;
                    match previous {
                        TaskState::Enqueued | TaskState::Retrying | TaskState::Running => {
                            rec.set_request(None);
                            rec.set_state(TaskState::Stopped, now, "stopped by an operator");
                            Ok(())
                        }
                        // Idempotent: nothing to write.
                        TaskState::Stopped => Err(StoreError::InvalidInput(String::new())),
                        state => Err(StoreError::InvalidTransition {
                            id: id.to_owned(),
                            state,
                            action: "stop",
                            rule: "a finished task cannot be stopped",
                        }),
                    }
                })
                .await;
            let summary = match rec {
                Ok(r) => r.meta.summary,
                Err(StoreError::InvalidInput(m)) if m.is_empty() => match self.load(id).await? {
                    Some((r, _)) => r.meta.summary,
                    None => return Err(StoreError::NotFound { id: id.to_owned() }),
                },
                Err(e) => return Err(e),
            };
            if previous == TaskState::Running {
                // Wherever it runs: the gateway holding the lease acks it and aborts.
                let _ = self
                    .client
                    .publish(format!("{}.stop", self.name), Bytes::from(id.to_owned()))
                    .await;
            }
            Ok(Stopped {
                previous,
                task: summary,
            })
        })
    }

    fn redrive<'a>(&'a self, id: &'a str) -> StoreFuture<'a, TaskSummary> {
        Box::pin(async move {
            let Some((rec, _)) = self.load(id).await? else {
                return Err(StoreError::NotFound { id: id.to_owned() });
            };
            let s = &rec.meta.summary;
            if !matches!(s.state, TaskState::Failed | TaskState::Expired) {
                return Err(StoreError::InvalidTransition {
                    id: id.to_owned(),
                    state: s.state,
                    action: "retry",
                    rule: "only Failed and Expired tasks can be redriven",
                });
            }
            let Some(request) = rec.request.clone() else {
                return Err(self.corrupt(id, "a Failed/Expired record without its request".into()));
            };
            let now = now_ms();
            let meta = MsgMeta {
                id: id.to_owned(),
                request_id: s.request_id.clone(),
                function: s.function.clone(),
                priority: s.priority,
                not_before_ms: 0,
                max_retries: s.max_retries,
                max_event_age_ms: s.max_event_age_ms,
                created_ms: s.created_ms,
                enqueued_ms: now,
                method: request.method.clone(),
                path: request.path_and_query.clone(),
            };
            // Message first, then the record points at it: a crash in between leaves a stale
            // message (dropped) and a task still Failed, as the operator was told.
            let seq = self
                .publish_run(&meta, &request, &format!("{id}.r{now}"))
                .await?;
            let rec = self
                .modify(id, |rec| {
                    let state = rec.meta.summary.state;
                    if !matches!(state, TaskState::Failed | TaskState::Expired) {
                        return Err(StoreError::InvalidTransition {
                            id: id.to_owned(),
                            state,
                            action: "retry",
                            rule: "only Failed and Expired tasks can be redriven",
                        });
                    }
                    let s = &mut rec.meta.summary;
                    s.attempts = 0;
                    s.enqueued_ms = now;
                    s.not_before_ms = 0;
                    s.started_ms = None;
                    s.last_error = None;
                    rec.meta.seq = seq;
                    rec.set_request(None);
                    rec.set_result(None, 0);
                    rec.set_state(TaskState::Enqueued, now, "redriven by an operator");
                    Ok(())
                })
                .await?;
            self.announce(&rec.meta.summary.function);
            Ok(rec.meta.summary)
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Task>> {
        Box::pin(async move {
            if !valid_task_id(id) {
                return Ok(None);
            }
            Ok(self.load(id).await?.map(|(r, _)| r.task()))
        })
    }

    fn list(&self, filter: ListFilter) -> StoreFuture<'_, TaskPage> {
        Box::pin(async move {
            let limit = filter.limit.clamp(1, super::MAX_LIST_LIMIT);
            let after: Option<(u64, String)> = match &filter.cursor {
                None => None,
                Some(c) => {
                    let parsed = c
                        .split_once(':')
                        .and_then(|(t, id)| Some((t.parse().ok()?, id.to_owned())));
                    match parsed {
                        Some(p) => Some(p),
                        None => {
                            return Err(StoreError::InvalidInput(format!(
                                "invalid cursor `{c}`: pass the next_cursor of a previous page"
                            )));
                        }
                    }
                }
            };
            let mut keys = self
                .kv
                .keys()
                .await
                .map_err(|e| self.nats_err("listing task records", e))?;
            let mut all = Vec::new();
            while let Some(k) = keys.next().await {
                let k = k.map_err(|e| self.nats_err("listing task records", e))?;
                if all.len() >= LIST_SCAN_LIMIT {
                    break;
                }
                all.push(k);
            }
            let mut rows = Vec::new();
            for chunk in all.chunks(64) {
                let loads = chunk.iter().map(|k| self.load(k));
                for r in futures_util::future::join_all(loads).await {
                    if let Some((rec, _)) = r? {
                        let s = rec.meta.summary;
                        if filter.function.as_ref().is_some_and(|f| *f != s.function)
                            || filter.state.is_some_and(|st| st != s.state)
                        {
                            continue;
                        }
                        if let Some((t, id)) = &after
                            && (s.created_ms, &s.id) <= (*t, id)
                        {
                            continue;
                        }
                        rows.push(s);
                    }
                }
            }
            rows.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
            let next_cursor = (rows.len() > limit).then(|| {
                let last = &rows[limit - 1];
                format!("{}:{}", last.created_ms, last.id)
            });
            rows.truncate(limit);
            Ok(TaskPage {
                tasks: rows,
                next_cursor,
            })
        })
    }

    fn counts<'a>(&'a self, function: &'a str) -> StoreFuture<'a, QueueCounts> {
        Box::pin(async move {
            // From the consumer, not a scan: messages waiting (enqueued, retrying, delayed) and
            // leased (running). Final states are not counted here: use the tasks list.
            let mut c = self.consumer(function).await?;
            let info = c
                .info()
                .await
                .map_err(|e| self.nats_err("reading queue depth", e))?;
            Ok(QueueCounts {
                enqueued: info.num_pending,
                running: info.num_ack_pending as u64,
                ..Default::default()
            })
        })
    }

    fn recover(&self) -> StoreFuture<'_, usize> {
        // Unacknowledged messages of a dead gateway are redelivered after their ack wait.
        Box::pin(async { Ok(0) })
    }

    fn prune(&self, _finished_before_ms: u64) -> StoreFuture<'_, usize> {
        // The bucket's max age is the retention: JetStream removes old records itself.
        Box::pin(async { Ok(0) })
    }

    fn kind(&self) -> &'static str {
        "nats"
    }

    fn set_listener(&self, listener: Weak<dyn StoreListener>) {
        let _ = self.listener.set(listener);
    }

    fn poll_interval(&self) -> Duration {
        POLL_INTERVAL
    }

    fn set_function_timeout(&self, function: &str, timeout: Duration) {
        let mut t = lock(&self.timeouts);
        if t.get(function) != Some(&timeout) {
            t.insert(function.to_owned(), timeout);
        }
    }

    fn publish<'a>(&'a self, subject: &'a str, payload: Bytes) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.client
                .publish(subject.to_owned(), payload)
                .await
                .map_err(|e| self.nats_err("publishing a destination record", e))?;
            self.client
                .flush()
                .await
                .map_err(|e| self.nats_err("publishing a destination record", e))
        })
    }
}

#[cfg(test)]
#[path = "nats_tests.rs"]
mod tests;
