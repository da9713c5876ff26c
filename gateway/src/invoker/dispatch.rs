//! The async dispatcher: runs stored tasks through the same scheduler as sync requests, at most
//! `async.max_concurrency` at once per function, retrying with backoff, expiring old ones, and
//! sending destination records. The store (`crate::queue`) records; this decides.
//!
//! Wake-ups: a function is claimed for when a task of it was accepted or redriven, falls due
//! (delay or retry), or an attempt of it ended (a slot freed). Every configured function is
//! swept at start-up (recovered tasks), after each reload (a function that came back finds its
//! waiting tasks), and every `SWEEP_INTERVAL` as a safety net; claims go through the store's
//! writer, so sweeping is kept rare.

use super::error_chain;
use crate::backend::X_REQUEST_ID;
use crate::config::{Destination, FunctionSpec};
use crate::queue::{
    Finish, StoreListener, Task, TaskRequest, TaskResult, TaskState, TaskStore, now_ms,
};
use crate::scheduler::{FunctionRuntime, Instance, ScheduleError};
use crate::state::Gateway;
use crate::telemetry::UpstreamFailure;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Wake times of delayed tasks are rounded up to this step (ms).
const WAKE_STEP_MS: u64 = 50;
/// How often queue depth gauges are sampled.
const DEPTH_SAMPLE: Duration = Duration::from_secs(5);
/// First retry after this, doubling per attempt, with up to 50% jitter, capped.
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Destination records carry at most this much of the response body.
const DESTINATION_PAYLOAD_LIMIT: usize = 64 * 1024;
const DESTINATION_ATTEMPTS: u32 = 3;
const DESTINATION_TIMEOUT: Duration = Duration::from_secs(10);
pub static X_TASK_ID: HeaderName = HeaderName::from_static("x-fngate-task-id");
/// Set on a stored request by the gateway (never taken from a caller): the tenant its runs are
/// metered to.
pub static X_TENANT: HeaderName = HeaderName::from_static("x-fngate-tenant");
static X_ATTEMPT: HeaderName = HeaderName::from_static("x-fngate-attempt");

pub struct Dispatcher {
    pub store: Arc<dyn TaskStore>,
    gw: Weak<Gateway>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Functions to claim for, by due time (unix ms; 0 = due now). One entry per (time,
    /// function): a burst of accepts for one function adds one entry and one notification.
    wakes: Mutex<BTreeMap<u64, HashSet<String>>>,
    notify: Notify,
    /// Attempts in flight: task id → (function, abort handle).
    running: Mutex<HashMap<String, (String, AbortHandle)>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

impl Dispatcher {
    pub fn new(store: Arc<dyn TaskStore>, gw: &Arc<Gateway>) -> Arc<Self> {
        let d = Arc::new(Dispatcher {
            store,
            gw: Arc::downgrade(gw),
            client: crate::backend::pooled_client(),
            wakes: Mutex::new(BTreeMap::new()),
            notify: Notify::new(),
            running: Mutex::new(HashMap::new()),
        });
        let weak: Weak<dyn StoreListener> = Arc::downgrade(&d) as Weak<dyn StoreListener>;
        d.store.set_listener(weak);
        d
    }

    /// Asks for `function` to be claimed for at `due_ms` (unix ms; now or later).
    pub fn wake(&self, function: &str, due_ms: u64) {
        // Due now: one shared entry at time 0. Later: rounded up to WAKE_STEP_MS, so delayed
        // tasks accepted together share an entry (delays are whole seconds anyway).
        let at = if due_ms <= now_ms() {
            0
        } else {
            due_ms.div_ceil(WAKE_STEP_MS) * WAKE_STEP_MS
        };
        let mut w = lock(&self.wakes);
        let set = w.entry(at).or_default();
        if set.contains(function) {
            // Already asked for; the dispatcher was notified when it was.
            return;
        }
        set.insert(function.to_owned());
        drop(w);
        self.notify.notify_one();
    }

    /// Aborts the attempt in flight for a stopped task, if any; true if there was one.
    pub fn abort(&self, task_id: &str) -> bool {
        match lock(&self.running).remove(task_id) {
            Some((function, handle)) => {
                handle.abort();
                self.wake(&function, now_ms());
                true
            }
            None => false,
        }
    }

    fn running_for(&self, function: &str) -> usize {
        lock(&self.running)
            .values()
            .filter(|(f, _)| f == function)
            .count()
    }

    /// Samples queue depth and the oldest waiting task's age into gauges every `DEPTH_SAMPLE`,
    /// until the gateway is gone.
    pub async fn sample_depths(self: Arc<Self>) {
        let mut tick = tokio::time::interval(DEPTH_SAMPLE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(gw) = self.gw.upgrade() else { return };
            let functions: Vec<String> = gw
                .runtime()
                .config
                .functions
                .iter()
                .map(|f| f.id.clone())
                .collect();
            drop(gw);
            let now = now_ms();
            for f in functions {
                let Ok(c) = self.store.counts(&f).await else {
                    continue;
                };
                for (state, n) in [
                    ("enqueued", c.enqueued),
                    ("retrying", c.retrying),
                    ("running", c.running),
                ] {
                    metrics::gauge!(crate::telemetry::ASYNC_QUEUE_DEPTH, "function" => f.clone(), "state" => state)
                        .set(n as f64);
                }
                let age = c.oldest_waiting_ms.map_or(0, |t| now.saturating_sub(t));
                metrics::gauge!(crate::telemetry::ASYNC_OLDEST_AGE, "function" => f.clone())
                    .set(age as f64 / 1000.0);
            }
        }
    }

    /// The dispatch loop; runs until the gateway is gone.
    pub async fn run(self: Arc<Self>) {
        let mut next_sweep = now_ms();
        let mut generation = 0;
        // A shared store (NATS) gets work from other gateways unannounced: poll it often.
        let sweep_every = self.store.poll_interval().min(SWEEP_INTERVAL);
        loop {
            let Some(gw) = self.gw.upgrade() else { return };
            let now = now_ms();
            let rt = gw.runtime();
            if now >= next_sweep || rt.generation != generation {
                generation = rt.generation;
                for f in &rt.config.functions {
                    lock(&self.wakes).entry(0).or_default().insert(f.id.clone());
                }
                next_sweep = now + sweep_every.as_millis() as u64;
            }
            let due: BTreeSet<String> = {
                let mut w = lock(&self.wakes);
                let later = w.split_off(&(now + 1));
                let due = std::mem::replace(&mut *w, later);
                due.into_values().flatten().collect()
            };
            for function in due {
                self.claim_for(&gw, &function, now).await;
            }
            let next = lock(&self.wakes)
                .first_key_value()
                .map_or(next_sweep, |(t, _)| (*t).min(next_sweep));
            drop(rt);
            drop(gw);
            let wait = Duration::from_millis(next.saturating_sub(now_ms()).clamp(1, 1000));
            let _ = tokio::time::timeout(wait, self.notify.notified()).await;
        }
    }

    async fn claim_for(self: &Arc<Self>, gw: &Arc<Gateway>, function: &str, now: u64) {
        let rt = gw.runtime();
        let Some((_, fr)) = rt.function(function) else {
            // Not configured (any more): its tasks wait for a config that has it, or expire.
            return;
        };
        let spec = fr.spec().clone();
        self.store.set_function_timeout(function, spec.timeout);
        let room =
            (spec.async_.max_concurrency as usize).saturating_sub(self.running_for(function));
        if room == 0 {
            return;
        }
        let claimed = match self.store.claim(function, now, room).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(function, "cannot claim async tasks: {e}");
                self.wake(function, now + 1000);
                return;
            }
        };
        for t in claimed.expired {
            metrics::counter!(crate::telemetry::ASYNC_EXPIRED, "function" => function.to_string())
                .increment(1);
            self.destination(&spec, &t, TaskState::Expired, "EventAgeExceeded", None);
        }
        if claimed.tasks.len() == room {
            // There may be more due: look again once a slot frees (finish wakes) or next loop.
            self.wake(function, now);
        }
        for task in claimed.tasks {
            let this = self.clone();
            let id = task.summary.id.clone();
            let f = function.to_string();
            let gw = gw.clone();
            // Registered before it can finish: the attempt removes its own entry at the end.
            let mut running = lock(&self.running);
            let handle = tokio::spawn(async move { this.attempt(gw, task).await });
            running.insert(id, (f, handle.abort_handle()));
        }
    }

    /// One attempt of a task, then its bookkeeping.
    async fn attempt(self: Arc<Self>, gw: Arc<Gateway>, task: Task) {
        let id = task.summary.id.clone();
        let function = task.summary.function.clone();
        let started = std::time::Instant::now();
        let mut usage = None;
        let outcome = self.call(&gw, &task, &mut usage).await;
        let elapsed = started.elapsed();
        let spec = gw
            .runtime()
            .function(&function)
            .map(|(_, f)| f.spec().clone());
        let finish = decide(&task, outcome);
        let final_state = finish.state();
        let condition = match &finish {
            Finish::Succeeded { .. } => "Success",
            Finish::Expired { .. } => "EventAgeExceeded",
            Finish::Failed {
                result: Some(r), ..
            } if !retryable_status(r.status) => "FunctionError",
            _ => "RetriesExhausted",
        };
        let result = match &finish {
            Finish::Succeeded { result, .. } => Some(result.clone()),
            Finish::Failed { result, .. } | Finish::RetryAt { result, .. } => result.clone(),
            Finish::Expired { .. } => None,
        };
        let retry_at = match &finish {
            Finish::RetryAt { at_ms, .. } => Some(*at_ms),
            _ => None,
        };
        let (status, instance, error) = match &finish {
            Finish::Succeeded { result, instance } => {
                (Some(result.status), Some(instance.clone()), None)
            }
            Finish::RetryAt {
                error,
                instance,
                result,
                ..
            }
            | Finish::Failed {
                error,
                instance,
                result,
            } => (
                result.as_ref().map(|r| r.status),
                instance.clone(),
                Some(error.clone()),
            ),
            Finish::Expired { error } => (None, None, Some(error.clone())),
        };
        lock(&self.running).remove(&id);
        let finished = self.store.finish(&id, finish).await;
        let outcome = match &finished {
            Ok(s) if s.state == TaskState::Stopped => "stopped",
            _ => match final_state {
                TaskState::Succeeded => "succeeded",
                TaskState::Retrying => "retrying",
                TaskState::Expired => "expired",
                _ => "failed",
            },
        };
        metrics::counter!(crate::telemetry::ASYNC_ATTEMPTS, "function" => function.clone(), "outcome" => outcome).increment(1);
        metrics::histogram!(crate::telemetry::ASYNC_ATTEMPT_DURATION, "function" => function.clone()).record(elapsed.as_secs_f64());
        // One line per attempt, beside the invocation log lines of sync requests.
        tracing::info!(
            target: "fngate::async",
            task = %id,
            request_id = %task.summary.request_id,
            function,
            attempt = task.summary.attempts,
            outcome,
            status,
            instance,
            duration_ms = elapsed.as_millis() as u64,
            error,
            busy_s = usage.as_ref().map(|u| u.busy_s),
            vcpu_s = usage.as_ref().map(|u| u.vcpu_s),
            memory_gb_s = usage.as_ref().map(|u| u.memory_gb_s),
            gpu_gb_s = usage.as_ref().map(|u| u.gpu_gb_s),
            billing = usage.as_ref().map(|u| u.billing.as_str()),
            "async attempt"
        );
        match finished {
            Ok(summary) if summary.state == final_state => {
                if let Some(at) = retry_at {
                    self.wake(&function, at);
                } else if let Some(spec) = &spec
                    && has_destination(spec, final_state)
                    && let Ok(Some(t)) = self.store.get(&id).await
                {
                    self.destination(spec, &t, final_state, condition, result.as_ref());
                }
            }
            // Stopped while it ran: it stays stopped and no destination is sent.
            Ok(_) => {}
            Err(e) => {
                tracing::error!(task = %id, function, "cannot record the end of an async attempt: {e}")
            }
        }
        // A slot is free again for this function's queue.
        self.wake(&function, now_ms());
    }

    /// Runs the stored request on an instance: the response (body up to the result limit), or
    /// why not.
    /// `usage` is what the attempt held on its instance, once it had a slot.
    async fn call(
        &self,
        gw: &Gateway,
        task: &Task,
        usage: &mut Option<crate::metering::Usage>,
    ) -> Result<(TaskResult, String), Attempt> {
        let rt = gw.runtime();
        let Some((_, fr)) = rt.function(&task.summary.function) else {
            return Err(Attempt::Fatal(format!(
                "function {} is not configured",
                task.summary.function
            )));
        };
        let Some(req) = &task.request else {
            return Err(Attempt::Fatal("the stored request is missing".into()));
        };
        let spec = fr.spec().clone();
        let mut acquired = match fr.acquire(task.summary.priority).await {
            Ok(a) => a,
            Err(ScheduleError::Retired) => {
                return Err(Attempt::Retry(
                    "the function was removed by a reload".into(),
                ));
            }
            Err(e) => return Err(Attempt::Retry(format!("no instance slot: {e:?}"))),
        };
        // Each attempt is an invocation: metered when the slot is freed, on every path.
        let tenant = req
            .headers
            .iter()
            .find(|(n, _)| n == X_TENANT.as_str())
            .and_then(|(_, v)| String::from_utf8(v.clone()).ok());
        acquired.slot.set_tenant(tenant);
        let inst = acquired.slot.instance().clone();
        let outcome = self.exchange(task, req, &spec, fr, &inst).await;
        *usage = acquired.slot.finish(None);
        outcome
    }

    /// Sends the stored request to `inst` and reads the response (body up to the result limit).
    async fn exchange(
        &self,
        task: &Task,
        req: &TaskRequest,
        spec: &FunctionSpec,
        fr: &Arc<FunctionRuntime>,
        inst: &Arc<Instance>,
    ) -> Result<(TaskResult, String), Attempt> {
        let Some(authority) = inst.authority().cloned() else {
            return Err(Attempt::Retry(format!(
                "instance {} has no address",
                inst.id
            )));
        };
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(req.path_and_query.as_str())
            .build()
            .map_err(|e| Attempt::Fatal(format!("stored path cannot be forwarded: {e}")))?;
        let method = Method::from_bytes(req.method.as_bytes())
            .map_err(|_| Attempt::Fatal(format!("stored method `{}` is invalid", req.method)))?;
        let mut builder = Request::builder().method(method).uri(uri);
        for (n, v) in &req.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_bytes(v),
            ) {
                builder = builder.header(n, v);
            }
        }
        let mut upstream = builder
            .body(Full::new(req.body.clone()))
            .map_err(|e| Attempt::Fatal(format!("stored request is invalid: {e}")))?;
        let h = upstream.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&task.summary.request_id) {
            h.insert(X_REQUEST_ID.clone(), v);
        }
        if let Ok(v) = HeaderValue::from_str(&task.summary.id) {
            h.insert(X_TASK_ID.clone(), v);
        }
        h.insert(X_ATTEMPT.clone(), HeaderValue::from(task.summary.attempts));
        let instance = inst.id.to_string();
        let exchange = async {
            let resp = self.client.request(upstream).await.map_err(|e| {
                let detail = error_chain(&e);
                let kind = if e.is_connect() {
                    UpstreamFailure::Connect
                } else {
                    UpstreamFailure::Protocol
                };
                fr.call_failed(inst, kind, &detail);
                Attempt::Retry(format!("instance {instance}: {detail}"))
            })?;
            fr.call_answered(inst);
            let (parts, mut body) = resp.into_parts();
            let mut buf = BytesMut::new();
            let mut truncated = false;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    Attempt::Retry(format!("instance {instance}: response body: {e}"))
                })?;
                if let Some(d) = frame.data_ref() {
                    let room = crate::queue::RESULT_BODY_LIMIT.saturating_sub(buf.len());
                    if d.len() > room {
                        truncated = true;
                        buf.extend_from_slice(&d[..room]);
                        break;
                    }
                    buf.extend_from_slice(d);
                }
            }
            Ok(TaskResult {
                status: parts.status.as_u16(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                    .collect(),
                body: buf.freeze(),
                truncated,
            })
        };
        let result = match tokio::time::timeout(spec.timeout, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                fr.call_failed(inst, UpstreamFailure::Timeout, "no answer in time");
                return Err(Attempt::Retry(format!(
                    "instance {instance} did not answer within {} ms",
                    spec.timeout.as_millis()
                )));
            }
        };
        Ok((result, instance))
    }

    /// Sends the destination record for a task that reached a final state; retried a few
    /// times in the background, never holding up the queue.
    fn destination(
        &self,
        spec: &FunctionSpec,
        task: &Task,
        state: TaskState,
        condition: &'static str,
        result: Option<&TaskResult>,
    ) {
        let target = match state {
            TaskState::Succeeded => spec.async_.on_success.clone(),
            TaskState::Failed | TaskState::Expired => spec.async_.on_failure.clone(),
            _ => None,
        };
        let Some(target) = target else { return };
        let record = destination_record(task, condition, result);
        let client = self.client.clone();
        let store = self.store.clone();
        let function = spec.id.clone();
        tokio::spawn(async move {
            let body = Bytes::from(record.to_string());
            for attempt in 1..=DESTINATION_ATTEMPTS {
                let ok = match &target {
                    Destination::Http(uri) => {
                        let req = Request::post(uri.clone())
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(Full::new(body.clone()));
                        let Ok(req) = req else { return };
                        let sent =
                            tokio::time::timeout(DESTINATION_TIMEOUT, client.request(req)).await;
                        matches!(&sent, Ok(Ok(r)) if r.status().is_success())
                    }
                    Destination::Nats(subject) => matches!(
                        tokio::time::timeout(
                            DESTINATION_TIMEOUT,
                            store.publish(subject, body.clone())
                        )
                        .await,
                        Ok(Ok(()))
                    ),
                };
                metrics::counter!(crate::telemetry::ASYNC_DESTINATIONS, "function" => function.clone(), "result" => if ok { "ok" } else { "failed" }).increment(1);
                if ok {
                    return;
                }
                if attempt < DESTINATION_ATTEMPTS {
                    tokio::time::sleep(RETRY_BASE * (1 << (attempt - 1))).await;
                }
            }
            tracing::warn!(function, destination = %target, "destination record not delivered after {DESTINATION_ATTEMPTS} attempts");
        });
    }
}

impl StoreListener for Dispatcher {
    fn wake(&self, function: &str, due_ms: u64) {
        Dispatcher::wake(self, function, due_ms);
    }

    fn abort(&self, task_id: &str) {
        Dispatcher::abort(self, task_id);
    }
}

/// How an attempt went wrong before a usable response.
#[derive(Debug)]
enum Attempt {
    /// Worth another attempt (connection, timeout, no slot).
    Retry(String),
    /// Will never work (bad stored request, function gone for good).
    Fatal(String),
}

/// Whether a task ending in `state` sends a destination record (only then is it read back).
fn has_destination(spec: &FunctionSpec, state: TaskState) -> bool {
    match state {
        TaskState::Succeeded => spec.async_.on_success.is_some(),
        TaskState::Failed | TaskState::Expired => spec.async_.on_failure.is_some(),
        _ => false,
    }
}

fn retryable_status(status: u16) -> bool {
    status == 429 || status >= 500
}

/// Retry, fail or succeed, by DESIGN.md's rules: 2xx succeeds; 429, 5xx, connection failures
/// and timeouts retry with backoff up to `max_retries`, unless the next attempt would be past
/// `max_event_age`; other statuses fail at once.
fn decide(task: &Task, outcome: Result<(TaskResult, String), Attempt>) -> Finish {
    let s = &task.summary;
    let (error, instance, result) = match outcome {
        Ok((result, instance)) if (200..300).contains(&result.status) => {
            return Finish::Succeeded { result, instance };
        }
        Ok((result, instance)) if !retryable_status(result.status) => {
            return Finish::Failed {
                error: format!("the function answered {}", result.status),
                instance: Some(instance),
                result: Some(result),
            };
        }
        Ok((result, instance)) => (
            format!("the function answered {}", result.status),
            Some(instance),
            Some(result),
        ),
        Err(Attempt::Fatal(e)) => {
            return Finish::Failed {
                error: e,
                instance: None,
                result: None,
            };
        }
        Err(Attempt::Retry(e)) => (e, None, None),
    };
    if s.attempts > s.max_retries {
        return Finish::Failed {
            error: format!("{error}; {} attempts, retries exhausted", s.attempts),
            instance,
            result,
        };
    }
    let at = now_ms() + backoff(s.attempts, &s.id).as_millis() as u64;
    if at > s.created_ms.saturating_add(s.max_event_age_ms) {
        return Finish::Expired {
            error: format!("{error}; the next attempt would be past the task's max_event_age"),
        };
    }
    Finish::RetryAt {
        at_ms: at,
        error,
        instance,
        result,
    }
}

/// `RETRY_BASE × 2^(attempt-1)` plus up to 50% jitter (derived from the task id and attempt, so
/// tasks failing together spread out), capped at `RETRY_MAX`.
fn backoff(attempt: u32, id: &str) -> Duration {
    let base = RETRY_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let base = base.min(RETRY_MAX);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain(attempt.to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let jitter = base.mul_f64((h % 1000) as f64 / 2000.0);
    (base + jitter).min(RETRY_MAX)
}

/// A record modelled on Lambda's destination record.
fn destination_record(
    task: &Task,
    condition: &str,
    result: Option<&TaskResult>,
) -> serde_json::Value {
    let s = &task.summary;
    let payload = result.map(|r| {
        let body = &r.body[..r.body.len().min(DESTINATION_PAYLOAD_LIMIT)];
        String::from_utf8_lossy(body).into_owned()
    });
    serde_json::json!({
        "version": "1.0",
        "timestamp": crate::telemetry::rfc3339_now(),
        "requestContext": {
            "requestId": s.request_id,
            "taskId": s.id,
            "function": s.function,
            "condition": condition,
            "approximateInvokeCount": s.attempts,
        },
        "responseContext": {
            "statusCode": result.map(|r| r.status),
            "functionError": s.last_error,
        },
        "responsePayload": payload,
        "responsePayloadTruncated": result.is_some_and(|r| r.truncated || r.body.len() > DESTINATION_PAYLOAD_LIMIT),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        for attempt in 1..=8 {
            let b = backoff(attempt, "t_1");
            let base = (RETRY_BASE * (1 << (attempt - 1))).min(RETRY_MAX);
            assert!(
                b >= base && b <= (base + base / 2).min(RETRY_MAX),
                "{attempt}: {b:?}"
            );
        }
        assert_eq!(backoff(30, "x"), RETRY_MAX);
        // Different tasks failing together spread out.
        assert_ne!(backoff(3, "t_a"), backoff(3, "t_b"));
    }

    #[test]
    fn statuses_that_retry() {
        assert!(retryable_status(500) && retryable_status(503) && retryable_status(429));
        assert!(!retryable_status(404) && !retryable_status(400) && !retryable_status(200));
    }
}
