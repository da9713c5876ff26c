//! The transport-independent core of event ingestion: one notification body from a source →
//! every matching (event, trigger) pair stored durably as an async task, or an error that says
//! whether the sender should deliver the notification again (`IngestError::is_retryable`).
//!
//! Nothing is acknowledged before every task is stored: plugins run for all pairs first (a
//! fail-closed plugin failure stores nothing), then the tasks are accepted together (the store
//! commits them in groups). If any accept fails the caller answers 5xx / nacks; the tasks that
//! were stored are recognised by their ids when the notification comes again.
//!
//! Counting (`Outcome`): `received` events; `filtered` events that matched no trigger;
//! `matched` (event, trigger) pairs that passed the filters, each of which ends `enqueued`
//! (a new task), `deduplicated` (its task already existed) or `dropped` (by a plugin).

use super::parse::{Notification, ParseError, Shape, SnsConfirmation, SnsKind, parse};
use super::{ObjectEvent, dedupe_id, trigger_matches};
use crate::config::{EventSourceSpec, OnError, OssTriggerSpec};
use crate::policy::{EventDecision, FailureKind, LiveState, PluginFailure};
use crate::queue::{AcceptOutcome, NewTask, StoreError, TaskRequest, now_ms};
use crate::state::{Gateway, Runtime};
use crate::telemetry;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Accepts in flight at once for one notification: enough to fill the store's group commits.
const ACCEPT_CONCURRENCY: usize = 256;

/// What one notification with events came to (the webhook's 200 body).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub received: usize,
    pub matched: usize,
    pub enqueued: usize,
    pub deduplicated: usize,
    pub filtered: usize,
    pub dropped: usize,
}

/// A notification that was taken: acknowledge it (2xx / ack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Events, every matching one stored as a task (or already stored).
    Events { shape: Shape, outcome: Outcome },
    /// `s3:TestEvent`: nothing to run.
    Test { bucket: Option<String> },
    /// An SNS (un)subscription confirmation, logged for the operator; fngate never fetches the
    /// URL itself (it would be a request to a URL chosen by whoever can reach the webhook).
    Sns(SnsConfirmation),
}

/// A notification that was not taken.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("no event source `{name}`")]
    UnknownSource { name: String },
    #[error("event source `{source_name}`: the notification is {size} bytes; max_body is {limit}")]
    TooLarge {
        source_name: String,
        size: usize,
        limit: u64,
    },
    #[error("event source `{source_name}`: {error}")]
    BadInput {
        source_name: String,
        error: ParseError,
    },
    #[error(
        "trigger `{trigger}`: the event for key `{key}` is {size} bytes, over the async max_payload of function {function} ({limit} bytes)"
    )]
    PayloadTooLarge {
        trigger: String,
        function: String,
        key: String,
        size: usize,
        limit: u64,
    },
    #[error("policy plugin `{plugin}` failed on trigger `{trigger}`: {detail}")]
    PluginFailed {
        plugin: String,
        trigger: String,
        detail: String,
    },
    #[error("the async queue cannot take the events now: {detail}")]
    QueueUnavailable { detail: String },
}

impl IngestError {
    /// Whether the sender should deliver the same notification again (webhook 5xx, broker
    /// nack): the store or a fail-closed plugin failed, or the source is not (or no longer)
    /// configured. The others (bad input, too large) would fail the same way again: answer 4xx,
    /// ack the broker message.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            IngestError::PluginFailed { .. }
                | IngestError::QueueUnavailable { .. }
                | IngestError::UnknownSource { .. }
        )
    }

    /// The `reason` label of `fngate_events_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::UnknownSource { .. } => "unknown_source",
            IngestError::TooLarge { .. } => "body_too_large",
            IngestError::BadInput { .. } => "bad_input",
            IngestError::PayloadTooLarge { .. } => "payload_too_large",
            IngestError::PluginFailed { .. } => "plugin_failed",
            IngestError::QueueUnavailable { .. } => "queue_unavailable",
        }
    }
}

/// Ingests one notification body that arrived through `source` (for broker consumers: call it
/// per message, ack on `Ok`, and on `Err` nack when `is_retryable()`, else ack and drop).
pub async fn ingest(gw: &Gateway, source: &str, body: &[u8]) -> Result<Ingested, IngestError> {
    let rt = gw.runtime();
    let Some(index) = rt
        .config
        .event_sources
        .iter()
        .position(|s| s.name == source)
    else {
        rejected("", "unknown_source");
        return Err(IngestError::UnknownSource {
            name: source.chars().take(64).collect(),
        });
    };
    let request_id = telemetry::next_request_id();
    ingest_in(gw, &rt, index, body, request_id.as_str()).await
}

/// `ingest` on a generation already loaded; `request_id` goes to every task it stores, so a
/// function's `x-fngate-request-id` leads back to the call that delivered the event.
pub(super) async fn ingest_in(
    gw: &Gateway,
    rt: &Arc<Runtime>,
    index: usize,
    body: &[u8],
    request_id: &str,
) -> Result<Ingested, IngestError> {
    let src = &rt.config.event_sources[index];
    let result = ingest_source(gw, rt, index, src, body, request_id).await;
    if let Err(e) = &result {
        rejected(&src.name, e.reason());
    }
    result
}

async fn ingest_source(
    gw: &Gateway,
    rt: &Arc<Runtime>,
    index: usize,
    src: &EventSourceSpec,
    body: &[u8],
    request_id: &str,
) -> Result<Ingested, IngestError> {
    if body.len() as u64 > src.max_body {
        return Err(IngestError::TooLarge {
            source_name: src.name.clone(),
            size: body.len(),
            limit: src.max_body,
        });
    }
    let notification =
        parse(&src.name, body, src.max_records).map_err(|error| IngestError::BadInput {
            source_name: src.name.clone(),
            error,
        })?;
    let shape_label = notification.shape_label();
    match notification {
        Notification::Test { bucket, .. } => {
            received(&src.name, shape_label, 1);
            tracing::info!(
                source = %src.name,
                bucket = ?bucket,
                "s3:TestEvent received; acknowledged, nothing is run"
            );
            Ok(Ingested::Test { bucket })
        }
        Notification::Sns(c) => {
            received(&src.name, shape_label, 1);
            // Debug formatting: these strings come from the request, so they are escaped.
            match c.kind {
                SnsKind::Subscribe => tracing::warn!(
                    source = %src.name,
                    topic_arn = ?c.topic_arn,
                    subscribe_url = ?c.subscribe_url,
                    token = ?c.token,
                    "SNS subscription to this webhook awaits confirmation; fngate does not fetch URLs: \
                     visit subscribe_url, or run `aws sns confirm-subscription --topic-arn <topic_arn> --token <token>`"
                ),
                SnsKind::Unsubscribe => tracing::warn!(
                    source = %src.name,
                    topic_arn = ?c.topic_arn,
                    "SNS unsubscribed this webhook; visiting subscribe_url would restore it"
                ),
            }
            Ok(Ingested::Sns(c))
        }
        Notification::Events { shape, events } => {
            received(&src.name, shape.label(), events.len() as u64);
            let outcome = dispatch(gw, rt, index, src, &events, request_id).await?;
            Ok(Ingested::Events { shape, outcome })
        }
    }
}

/// One task to store, with the trigger (position among the source's triggers) it came from.
struct Planned {
    trigger: usize,
    /// For an error message only.
    key: String,
    task: NewTask,
}

/// Per-trigger counts for the metrics.
#[derive(Default, Clone, Copy)]
struct TriggerCounts {
    matched: u64,
    dropped: u64,
    enqueued: u64,
    deduplicated: u64,
}

async fn dispatch(
    gw: &Gateway,
    rt: &Arc<Runtime>,
    index: usize,
    src: &EventSourceSpec,
    events: &[ObjectEvent],
    request_id: &str,
) -> Result<Outcome, IngestError> {
    let triggers: Vec<&OssTriggerSpec> = rt
        .config
        .oss_triggers
        .iter()
        .filter(|t| t.source == index)
        .collect();
    let mut outcome = Outcome {
        received: events.len(),
        ..Outcome::default()
    };
    let mut counts = vec![TriggerCounts::default(); triggers.len()];
    let result = plan(
        rt,
        src,
        &triggers,
        events,
        request_id,
        &mut outcome,
        &mut counts,
    )
    .await;
    let stored = match result {
        Ok(planned) => store(gw, &triggers, planned, &mut outcome, &mut counts).await,
        Err(e) => Err(e),
    };
    emit_counts(&src.name, &triggers, &counts, outcome.filtered as u64);
    stored.map(|()| outcome)
}

/// Filters and plugin chains for every (event, trigger) pair: the tasks to store.
async fn plan(
    rt: &Arc<Runtime>,
    src: &EventSourceSpec,
    triggers: &[&OssTriggerSpec],
    events: &[ObjectEvent],
    request_id: &str,
    outcome: &mut Outcome,
    counts: &mut [TriggerCounts],
) -> Result<Vec<Planned>, IngestError> {
    let live: Arc<dyn LiveState> = rt.clone();
    let now = now_ms();
    let mut planned = Vec::new();
    for event in events {
        // The payload is the same for every trigger: serialised once, shared by refcount.
        let mut payload: Option<Bytes> = None;
        let mut any = false;
        for (ti, t) in triggers.iter().enumerate() {
            if !trigger_matches(t, event) {
                continue;
            }
            any = true;
            outcome.matched += 1;
            counts[ti].matched += 1;
            let Some(route) = run_chain(rt, &live, t, event).await? else {
                outcome.dropped += 1;
                counts[ti].dropped += 1;
                continue;
            };
            let spec = &rt.config.functions[route.function];
            let body = payload
                .get_or_insert_with(|| {
                    Bytes::from(
                        serde_json::to_vec(event).expect("an ObjectEvent always serialises"),
                    )
                })
                .clone();
            if body.len() as u64 > spec.async_.max_payload {
                return Err(IngestError::PayloadTooLarge {
                    trigger: t.name.clone(),
                    function: spec.id.clone(),
                    key: event.key.chars().take(256).collect(),
                    size: body.len(),
                    limit: spec.async_.max_payload,
                });
            }
            let mut headers = vec![
                ("content-type".to_string(), b"application/json".to_vec()),
                (
                    "x-fngate-event-source".to_string(),
                    src.name.as_bytes().to_vec(),
                ),
                (
                    "x-fngate-event-name".to_string(),
                    event.event_name.as_bytes().to_vec(),
                ),
                ("x-fngate-trigger".to_string(), t.name.as_bytes().to_vec()),
            ];
            if let Some(tenant) = route
                .tenant
                .filter(|t| http::HeaderValue::from_str(t).is_ok())
            {
                headers.push(("x-fngate-tenant".to_string(), tenant.into_bytes()));
            }
            planned.push(Planned {
                trigger: ti,
                key: event.key.chars().take(256).collect(),
                task: NewTask {
                    task_id: dedupe_id(&t.name, event),
                    request_id: request_id.to_string(),
                    function: spec.id.clone(),
                    priority: route.priority,
                    not_before_ms: now,
                    max_retries: spec.async_.max_retries,
                    max_event_age_ms: spec.async_.max_event_age.as_millis() as u64,
                    request: TaskRequest {
                        method: "POST".to_string(),
                        path_and_query: "/".to_string(),
                        headers,
                        body,
                    },
                },
            });
        }
        if !any {
            outcome.filtered += 1;
        }
    }
    Ok(planned)
}

/// Where a plugin chain sent an event.
struct Route {
    function: usize,
    priority: i32,
    tenant: Option<String>,
}

/// The trigger's plugins in order; `None` when one dropped the event. A failing plugin follows
/// its `on_error`: fail-open goes on as if it were absent, fail-closed fails the notification
/// (retryable: the sender delivers it again).
async fn run_chain(
    rt: &Arc<Runtime>,
    live: &Arc<dyn LiveState>,
    t: &OssTriggerSpec,
    event: &ObjectEvent,
) -> Result<Option<Route>, IngestError> {
    let mut route = Route {
        function: t.function,
        priority: t.priority,
        tenant: None,
    };
    for &pi in &t.plugins {
        let plugin = &rt.plugins[pi];
        let view = event.view(&t.name, &rt.config.functions[route.function].id);
        let failure = match plugin.on_event(&view, live).await {
            Ok(EventDecision::Drop(why)) => {
                tracing::debug!(
                    trigger = %t.name,
                    plugin = plugin.name(),
                    bucket = %event.bucket,
                    "event dropped by plugin: {why}"
                );
                return Ok(None);
            }
            Ok(EventDecision::Dispatch {
                function,
                priority,
                tenant,
            }) => {
                let target = match &function {
                    None => Ok(route.function),
                    Some(f) => rt.function(f).map(|(i, _)| i).ok_or_else(|| PluginFailure {
                        plugin: plugin.name().to_string(),
                        kind: FailureKind::InvalidDecision,
                        detail: format!("routes to `{f}`, which is not a configured function"),
                        on_error: plugin.spec.on_error,
                    }),
                };
                match target {
                    Ok(i) => {
                        route.function = i;
                        route.priority = priority.unwrap_or(route.priority);
                        if tenant.is_some() {
                            route.tenant = tenant;
                        }
                        continue;
                    }
                    Err(f) => f,
                }
            }
            Err(f) => f,
        };
        match failure.on_error {
            OnError::FailOpen => {
                tracing::warn!(trigger = %t.name, "{failure}; failing open");
            }
            OnError::FailClosed => {
                tracing::warn!(trigger = %t.name, "{failure}; failing closed, the sender will redeliver");
                return Err(IngestError::PluginFailed {
                    plugin: failure.plugin,
                    trigger: t.name.clone(),
                    detail: failure.detail,
                });
            }
        }
    }
    Ok(Some(route))
}

/// Accepts every planned task; `Ok` only when all are stored (or already were).
async fn store(
    gw: &Gateway,
    triggers: &[&OssTriggerSpec],
    planned: Vec<Planned>,
    outcome: &mut Outcome,
    counts: &mut [TriggerCounts],
) -> Result<(), IngestError> {
    if planned.is_empty() {
        return Ok(());
    }
    let Some(dispatcher) = gw.tasks.get() else {
        return Err(IngestError::QueueUnavailable {
            detail: "the async queue is not open".into(),
        });
    };
    /// What is left of a planned task once the store has it.
    struct Accepted {
        trigger: usize,
        key: String,
        function: String,
        result: Result<AcceptOutcome, StoreError>,
    }
    let results: Vec<Accepted> = futures_util::stream::iter(planned)
        .map(|p| async move {
            let function = p.task.function.clone();
            Accepted {
                trigger: p.trigger,
                key: p.key,
                function,
                result: dispatcher.store.accept(p.task).await,
            }
        })
        .buffer_unordered(ACCEPT_CONCURRENCY)
        .collect()
        .await;
    let mut wake = BTreeSet::new();
    let mut failure: Option<IngestError> = None;
    for a in results {
        let ti = a.trigger;
        match a.result {
            Ok(AcceptOutcome::Stored(_)) => {
                outcome.enqueued += 1;
                counts[ti].enqueued += 1;
                wake.insert(a.function);
            }
            Ok(AcceptOutcome::Existing(_)) => {
                outcome.deduplicated += 1;
                counts[ti].deduplicated += 1;
            }
            Err(e) => {
                // A payload the queue can never hold is not worth redelivering; anything else is.
                let this = match e {
                    StoreError::TooLarge { size, limit } => IngestError::PayloadTooLarge {
                        trigger: triggers[ti].name.clone(),
                        function: a.function,
                        key: a.key,
                        size,
                        limit: limit as u64,
                    },
                    e => IngestError::QueueUnavailable {
                        detail: e.to_string(),
                    },
                };
                if failure.as_ref().is_none_or(|f| !f.is_retryable()) {
                    failure = Some(this);
                }
            }
        }
    }
    let now = now_ms();
    for f in &wake {
        dispatcher.wake(f, now);
    }
    match failure {
        None => Ok(()),
        Some(e) => {
            tracing::warn!(
                stored = outcome.enqueued,
                "storing event tasks failed: {e}; the sender should deliver again"
            );
            Err(e)
        }
    }
}

fn received(source: &str, shape: &'static str, n: u64) {
    metrics::counter!(telemetry::EVENTS_RECEIVED, "source" => source.to_string(), "shape" => shape)
        .increment(n);
}

fn rejected(source: &str, reason: &'static str) {
    metrics::counter!(telemetry::EVENTS_REJECTED, "source" => source.to_string(), "reason" => reason)
        .increment(1);
}

/// One increment per trigger and counter per notification, never per event.
fn emit_counts(
    source: &str,
    triggers: &[&OssTriggerSpec],
    counts: &[TriggerCounts],
    filtered: u64,
) {
    if filtered > 0 {
        metrics::counter!(telemetry::EVENTS_FILTERED, "source" => source.to_string())
            .increment(filtered);
    }
    for (t, c) in triggers.iter().zip(counts) {
        for (name, n) in [
            (telemetry::EVENTS_MATCHED, c.matched),
            (telemetry::EVENTS_DROPPED, c.dropped),
            (telemetry::EVENTS_ENQUEUED, c.enqueued),
            (telemetry::EVENTS_DEDUPLICATED, c.deduplicated),
        ] {
            if n > 0 {
                metrics::counter!(name, "source" => source.to_string(), "trigger" => t.name.clone())
                    .increment(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        let bad = IngestError::BadInput {
            source_name: "s".into(),
            error: ParseError::NotJson("x".into()),
        };
        assert!(!bad.is_retryable());
        assert_eq!(bad.reason(), "bad_input");
        assert_eq!(bad.to_string(), "event source `s`: the body is not JSON: x");
        let big = IngestError::TooLarge {
            source_name: "s".into(),
            size: 10,
            limit: 5,
        };
        assert!(!big.is_retryable());
        assert!(IngestError::QueueUnavailable { detail: "x".into() }.is_retryable());
        assert!(
            IngestError::PluginFailed {
                plugin: "p".into(),
                trigger: "t".into(),
                detail: "trap".into()
            }
            .is_retryable()
        );
        assert_eq!(
            serde_json::to_value(Outcome {
                received: 3,
                matched: 2,
                enqueued: 1,
                deduplicated: 1,
                filtered: 1,
                dropped: 0
            })
            .unwrap(),
            serde_json::json!({"received":3,"matched":2,"enqueued":1,"deduplicated":1,"filtered":1,"dropped":0})
        );
    }
}
