//! The invoker: one public request in, one invocation out.
//!
//! Stages, in order (data flows one way):
//!  1. trigger match (404 / 405) and auth (401)
//!  2. admission: body limit from Content-Length (413)
//!  3. scheduling: a slot on an instance, or the bounded queue (429)
//!  4. forwarding: stream the request to the instance, stream the response back (502 / 504)
//!  5. telemetry: one log line and the metrics, when the response body ends or is abandoned
//!
//! The slot is held by the response body, so an instance counts as busy until the last byte has
//! gone to the client (or the client has gone away).

pub mod dispatch;

use crate::backend::{
    self, BodyLimitExceeded, ClientBodyFailed, UpstreamBody, X_COLD_START, X_INSTANCE_ID,
    X_INSTANCE_KIND, X_REQUEST_ID,
};
use crate::body::{BoxError, ResponseBody};
use crate::error::GatewayError;
use crate::policy::{
    Decision, FailureKind, Invocation, LiveState, PluginFailure, RequestView, RouteChange,
    WitRequest,
};
use crate::scheduler::{Acquired, ScheduleError, Slot};
use crate::state::{Gateway, Runtime};
use crate::telemetry::{self, Hex, InvocationLog, Ms, Reject, RequestId, UpstreamFailure};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Handles one request on the public listener. Never fails: errors become responses here.
pub async fn handle(
    gw: Arc<Gateway>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    // Object-storage webhooks have their own pipeline (auth, parse, fan-out to oss triggers).
    if crate::events::is_webhook_path(req.uri().path()) {
        return crate::events::webhook(gw, conn, req).await;
    }
    let start = Instant::now();
    let request_id = telemetry::next_request_id();
    let rt = gw.runtime();
    let mut record = Record::new(rt.clone(), request_id, conn, &req, start);
    match invoke(&gw, &rt, conn, req, &mut record).await {
        Ok(resp) => resp,
        Err(err) => {
            record.status = err.status().as_u16();
            record.error = Some(err.to_string());
            let mut resp = err.into_response(request_id.as_str());
            resp.headers_mut()
                .insert(X_REQUEST_ID.clone(), request_id.header_value());
            record.finish();
            resp
        }
    }
}

async fn invoke(
    gw: &Gateway,
    rt: &Arc<Runtime>,
    conn: ConnInfo,
    req: Request<Incoming>,
    record: &mut Record,
) -> Result<Response<ResponseBody>, GatewayError> {
    let (mut parts, mut body) = req.into_parts();
    let deadline_base = record.start;

    // 1. Trigger match and auth.
    // Owned (a refcount bump) because the request is taken apart before the host is used again.
    let host_value = request_host(&parts);
    let host = host_value.as_ref().and_then(|v| v.to_str().ok());
    let host_no_port = host.map(strip_port);
    let path = parts.uri.path();
    let (trigger, tidx, mut fidx, rest) = match rt.router.route(host_no_port, &parts.method, path) {
        crate::trigger::Route::Matched {
            trigger,
            index,
            function,
            rest,
        } => (trigger, index, function, rest),
        crate::trigger::Route::NotFound => {
            telemetry::rejected_unrouted();
            return Err(GatewayError::NotFound {
                path: path.to_string(),
            });
        }
        crate::trigger::Route::MethodNotAllowed { allow } => {
            return Err(GatewayError::MethodNotAllowed {
                method: parts.method.to_string(),
                allow,
            });
        }
    };
    record.trigger = Some(tidx);
    record.function = Some(fidx);
    // Stage marks only feed trace spans: no clock reads when the request is not traced.
    let traced = record.trace.as_ref().is_some_and(|t| t.is_sampled());
    if traced {
        record.matched_at = Some(Instant::now());
    }
    if !crate::trigger::authorize(&trigger.auth, parts.headers.get(header::AUTHORIZATION)) {
        rt.functions[fidx].metrics.rejected(Reject::Unauthorized);
        return Err(GatewayError::Unauthorized {
            trigger: trigger.name.clone(),
        });
    }
    // The trigger's credential identifies who is calling: the tenant usage is metered to,
    // unless a plugin decides another.
    if matches!(trigger.auth, crate::config::AuthSpec::Bearer(_)) {
        record.tenant = Some(trigger.name.clone());
    }
    let declared_len = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());

    // 2. Policy plugins, in the trigger's order.
    let mut rest = std::borrow::Cow::Borrowed(rest);
    let mut priority = 0;
    // A plugin's choice of sync or async wins over the header and the trigger.
    let mut plugin_async: Option<bool> = None;
    let mut header_changes: Vec<RouteChange> = Vec::new();
    let mut replay = std::collections::VecDeque::new();
    let plugins_from = traced.then(Instant::now);
    if !trigger.plugins.is_empty() {
        let want_prefix = trigger.body_prefix;
        let prefix = if want_prefix > 0 {
            let deadline = deadline_base + rt.config.functions[fidx].timeout;
            let (prefix, frames) = read_prefix(&mut body, want_prefix, deadline).await?;
            replay = frames;
            Some(prefix)
        } else {
            None
        };
        let view = RequestView {
            request_id: record.request_id.as_str().to_string(),
            method: parts.method.to_string(),
            scheme: if conn.tls { "https" } else { "http" }.to_string(),
            authority: host.unwrap_or("").to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            client_addr: conn.peer.ip().to_string(),
            trigger: trigger.name.clone(),
            function: rt.config.functions[fidx].id.clone(),
            body_prefix: prefix,
            body_length: declared_len,
        };
        let mut wreq = WitRequest::new(view);
        let live: Arc<dyn LiveState> = rt.clone();
        for &pi in &trigger.plugins {
            let plugin = &rt.plugins[pi];
            let failure = match plugin.on_request(&wreq, &live).await {
                Ok(Decision::Reject {
                    status,
                    headers,
                    body,
                }) => {
                    record.status = status.as_u16();
                    record.error = Some(format!("rejected by plugin `{}`", plugin.name()));
                    let resp = plugin_rejection(status, headers, body, record.request_id);
                    record.finish();
                    return Ok(resp);
                }
                Ok(Decision::Proceed(change)) => {
                    // A route to a function this generation does not have is the plugin's fault.
                    let target = match &change.function {
                        None => Ok(fidx),
                        Some(f) => rt.function(f).map(|(i, _)| i).ok_or_else(|| PluginFailure {
                            plugin: plugin.name().to_string(),
                            kind: FailureKind::InvalidDecision,
                            detail: format!("routes to `{f}`, which is not a configured function"),
                            on_error: plugin.spec.on_error,
                        }),
                    };
                    match target {
                        Ok(i) => {
                            fidx = i;
                            record.function = Some(fidx);
                            if let Some(inv) = change.invocation {
                                plugin_async = Some(inv == Invocation::Async);
                            }
                            priority = change.priority.unwrap_or(priority);
                            if let Some(t) = &change.tenant {
                                record.tenant = Some(t.clone());
                            }
                            if let Some(p) = &change.path {
                                rest = std::borrow::Cow::Owned(p.clone());
                            }
                            wreq.apply(&change);
                            header_changes.push(change);
                            continue;
                        }
                        Err(f) => f,
                    }
                }
                Err(f) => f,
            };
            match failure.on_error {
                crate::config::OnError::FailOpen => {
                    tracing::warn!(
                        request_id = record.request_id.as_str(),
                        "{failure}; failing open"
                    );
                }
                crate::config::OnError::FailClosed => {
                    tracing::warn!(
                        request_id = record.request_id.as_str(),
                        "{failure}; failing closed"
                    );
                    return Err(GatewayError::PluginFailed {
                        plugin: failure.plugin,
                        detail: failure.detail,
                    });
                }
            }
        }
        record.plugins_span = plugins_from.map(|from| (from, Instant::now()));
    }
    let function = &rt.functions[fidx];
    let spec = function.spec().clone();

    // Sync or async: a plugin's choice, else the header, else the trigger.
    let async_wanted = match parts.headers.get(&X_INVOCATION_TYPE).map(|v| v.as_bytes()) {
        _ if plugin_async.is_some() => plugin_async == Some(true),
        Some(b"async") => true,
        Some(b"sync") => false,
        Some(_) => {
            return Err(GatewayError::BadRequest(
                "x-fngate-invocation-type must be `sync` or `async`".into(),
            ));
        }
        None => trigger.invocation == crate::config::InvocationType::Async,
    };
    // `x-fngate-log-type: tail`: the instance's output while serving this request comes back
    // in `x-fngate-log-result`. Without the header the request pays one header lookup.
    let want_tail = match parts.headers.get(&X_LOG_TYPE).map(|v| v.as_bytes()) {
        None => false,
        Some(v) if v.eq_ignore_ascii_case(b"tail") => true,
        Some(v) if v.eq_ignore_ascii_case(b"none") => false,
        Some(_) => {
            return Err(GatewayError::BadRequest(
                "x-fngate-log-type must be `tail` or `none`".into(),
            ));
        }
    };

    // 3. Admission: a declared length over the limit (an async payload is stored whole, so its
    // limit may be smaller) is refused before taking a slot or storing anything.
    let body_limit = if async_wanted {
        spec.async_.max_payload
    } else {
        spec.max_body
    };
    if let Some(len) = declared_len
        && len > body_limit
    {
        function.metrics.rejected(Reject::BodyTooLarge);
        return Err(GatewayError::BodyTooLarge {
            function: spec.id.clone(),
            limit: body_limit,
        });
    }

    // The request as the function will see it, for a sync call now or an async one later.
    let strip_authorization = matches!(trigger.auth, crate::config::AuthSpec::Bearer(_));
    backend::strip_hop_by_hop(&mut parts.headers);
    backend::add_forwarded(&mut parts.headers, conn.peer.ip(), conn.tls, host);
    if strip_authorization {
        // The bearer token is the gateway's credential, not the function's.
        parts.headers.remove(header::AUTHORIZATION);
    }
    if let Some(h) = host_value.clone() {
        parts.headers.insert(header::HOST, h);
    }
    for change in header_changes {
        for n in change.remove_headers {
            parts.headers.remove(n);
        }
        for (n, v) in change.set_headers {
            parts.headers.insert(n, v);
        }
    }
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), record.request_id.header_value());
    // W3C trace context: the backend's spans become children of this invocation's (a client's
    // own traceparent is replaced: its span is this invocation's parent, not the backend's).
    if let Some(t) = &record.trace {
        parts
            .headers
            .insert(telemetry::trace::TRACEPARENT.clone(), t.traceparent());
    }

    // 3b. Async: stored durably, answered 202; the dispatcher runs it later.
    if async_wanted {
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        return accept_async(
            gw,
            &spec,
            parts,
            body,
            replay,
            path_and_query,
            priority,
            deadline_base + spec.timeout,
            record,
        )
        .await;
    }

    // 4. Scheduling.
    let Acquired { slot, queue_wait } = match function.acquire(priority).await {
        Ok(a) => a,
        Err(ScheduleError::QueueFull { max_queued }) => {
            function.metrics.rejected(Reject::QueueFull);
            return Err(GatewayError::QueueFull {
                function: spec.id.clone(),
                max_queued,
            });
        }
        Err(ScheduleError::QueueTimeout { waited }) => {
            function.metrics.rejected(Reject::QueueTimeout);
            record.queue_wait = waited;
            return Err(GatewayError::QueueTimeout {
                function: spec.id.clone(),
                waited_ms: waited.as_millis() as u64,
            });
        }
        Err(ScheduleError::GpuCapacity { gpu_type, detail }) => {
            function.metrics.rejected(Reject::GpuCapacity);
            return Err(GatewayError::GpuCapacity {
                function: spec.id.clone(),
                gpu_type,
                detail,
            });
        }
        Err(ScheduleError::StartFailed {
            detail,
            retry_after,
        }) => {
            function.metrics.rejected(Reject::ColdStartFailed);
            return Err(GatewayError::ColdStartFailed {
                function: spec.id.clone(),
                detail,
                retry_after,
            });
        }
        Err(ScheduleError::Retired) => {
            return Err(GatewayError::FunctionRetired {
                function: spec.id.clone(),
            });
        }
    };
    function.metrics.queue_wait.record(queue_wait.as_secs_f64());
    record.queue_wait = queue_wait;
    let instance = slot.instance().clone();
    record.instance = Some(instance.clone());
    let cold = slot.cold().then(|| instance.cold_start()).flatten();
    // The record frees the slot (and meters it) when it finishes, on every path from here.
    record.slot = Some(slot);
    // Output numbered from here on is this request's (and that of requests overlapping it on
    // the same instance). Static endpoints have no captured output.
    let tail = if want_tail {
        Some(gw.launcher.output(&instance.id).map(|ring| {
            let from = ring.seq();
            (ring, from)
        }))
    } else {
        None
    };
    record.cold_start = cold.map(|c| (queue_wait, c));
    let Some(authority) = instance.authority().cloned() else {
        // Only ready instances get slots, and they always have an address: a bug if reached.
        return Err(GatewayError::InstanceUnavailable {
            function: spec.id.clone(),
            instance: instance.id.to_string(),
        });
    };

    // 5. Forwarding.
    let deadline = tokio::time::Instant::from_std(deadline_base) + spec.timeout;
    let upstream_uri = {
        let pq = match parts.uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(pq)
            .build()
            .map_err(|e| GatewayError::BadRequest(format!("cannot forward this path: {e}")))?
    };
    parts.uri = upstream_uri;
    parts.version = Version::HTTP_11;
    let upstream_req = Request::from_parts(
        parts,
        UpstreamBody::new(body, spec.max_body, record.bytes_in.clone()).with_replay(replay),
    );

    let upstream_start = Instant::now();
    record.upstream_start = Some(upstream_start);
    let result = tokio::time::timeout_at(deadline, gw.client.request(upstream_req)).await;
    let resp = match result {
        Err(_) => {
            function.metrics.upstream_failed(UpstreamFailure::Timeout);
            function.call_failed(&instance, UpstreamFailure::Timeout, "no answer in time");
            return Err(GatewayError::UpstreamTimeout {
                function: spec.id.clone(),
                instance: instance.id.to_string(),
                timeout_ms: spec.timeout.as_millis() as u64,
            });
        }
        Ok(Err(e)) => {
            if find_source::<BodyLimitExceeded>(&e).is_some() {
                function.metrics.rejected(Reject::BodyTooLarge);
                return Err(GatewayError::BodyTooLarge {
                    function: spec.id.clone(),
                    limit: spec.max_body,
                });
            }
            if let Some(c) = find_source::<ClientBodyFailed>(&e) {
                return Err(GatewayError::BadRequest(c.to_string()));
            }
            let detail = error_chain(&e);
            if e.is_connect() {
                function.metrics.upstream_failed(UpstreamFailure::Connect);
                function.call_failed(&instance, UpstreamFailure::Connect, &detail);
                return Err(GatewayError::UpstreamConnect {
                    function: spec.id.clone(),
                    instance: instance.id.to_string(),
                    detail,
                });
            }
            function.metrics.upstream_failed(UpstreamFailure::Protocol);
            function.call_failed(&instance, UpstreamFailure::Protocol, &detail);
            return Err(GatewayError::UpstreamProtocol {
                function: spec.id.clone(),
                instance: instance.id.to_string(),
                detail,
            });
        }
        Ok(Ok(resp)) => resp,
    };
    function.call_answered(&instance);
    record.upstream_headers = Some(upstream_start.elapsed());

    let (mut parts, body) = resp.into_parts();
    backend::strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    h.insert(X_REQUEST_ID.clone(), record.request_id.header_value());
    if let Ok(v) = HeaderValue::from_str(&instance.id) {
        h.insert(X_INSTANCE_ID.clone(), v);
    }
    h.insert(
        X_INSTANCE_KIND.clone(),
        HeaderValue::from_static(instance.kind().as_str()),
    );
    if cold.is_some() {
        h.insert(
            X_COLD_START.clone(),
            HeaderValue::from(queue_wait.as_millis() as u64),
        );
    }
    if let Some(tail) = tail {
        let text = match tail {
            Some((ring, from)) => {
                ring.settle().await;
                ring.since(from)
            }
            None => Vec::new(),
        };
        let v = HeaderValue::from_str(&telemetry::base64(&text))
            .expect("base64 is a valid header value");
        parts.headers.insert(X_LOG_RESULT.clone(), v);
    }
    record.status = parts.status.as_u16();
    let body = ProxyBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
        record: Some(std::mem::replace(record, record.detached())),
        timeout: spec.timeout,
    };
    Ok(Response::from_parts(
        parts,
        ResponseBody::Proxied { inner: body },
    ))
}

static X_INVOCATION_TYPE: http::HeaderName =
    http::HeaderName::from_static("x-fngate-invocation-type");
static X_LOG_TYPE: http::HeaderName = http::HeaderName::from_static("x-fngate-log-type");
static X_LOG_RESULT: http::HeaderName = http::HeaderName::from_static("x-fngate-log-result");
static X_ASYNC_DELAY: http::HeaderName = http::HeaderName::from_static("x-fngate-async-delay");
/// Longest `x-fngate-async-delay` accepted.
const MAX_ASYNC_DELAY_S: u64 = 24 * 3600;

/// Stores an async invocation durably and answers 202 with its task id; a repeated task id
/// answers with the existing task and stores nothing. Nothing is answered 202 unless stored.
#[allow(clippy::too_many_arguments)]
async fn accept_async(
    gw: &Gateway,
    spec: &crate::config::FunctionSpec,
    parts: http::request::Parts,
    body: Incoming,
    replay: std::collections::VecDeque<Frame<Bytes>>,
    path_and_query: String,
    priority: i32,
    deadline: Instant,
    record: &mut Record,
) -> Result<Response<ResponseBody>, GatewayError> {
    use crate::queue::{AcceptOutcome, NewTask, TaskRequest, new_task_id, now_ms, valid_task_id};
    let Some(dispatcher) = gw.tasks.get() else {
        return Err(GatewayError::QueueUnavailable {
            detail: "the async queue is not open".into(),
        });
    };
    let task_id = match parts.headers.get(&dispatch::X_TASK_ID) {
        None => new_task_id(),
        Some(v) => match v.to_str() {
            Ok(id) if valid_task_id(id) => id.to_string(),
            _ => {
                return Err(GatewayError::BadRequest(format!(
                    "x-fngate-task-id must be at most {} letters, digits, `_` or `-`, starting with a letter or `_`",
                    crate::queue::MAX_TASK_ID_LEN
                )));
            }
        },
    };
    let delay_s = match parts.headers.get(&X_ASYNC_DELAY) {
        None => 0,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(d) if d <= MAX_ASYNC_DELAY_S => d,
            _ => {
                return Err(GatewayError::BadRequest(format!(
                    "x-fngate-async-delay must be whole seconds from 0 to {MAX_ASYNC_DELAY_S}"
                )));
            }
        },
    };
    // A declared length was checked at admission; a chunked body is cut at the same limit.
    let limit = spec.async_.max_payload;
    // The whole body, bounded by the async payload limit and the function's timeout.
    let collect = async {
        let mut upstream =
            UpstreamBody::new(body, limit, record.bytes_in.clone()).with_replay(replay);
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) =
            std::future::poll_fn(|cx| Pin::new(&mut upstream).poll_frame(cx)).await
        {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        buf.extend_from_slice(d);
                    }
                }
                Err(e) if find_source::<BodyLimitExceeded>(e.as_ref()).is_some() => {
                    return Err(GatewayError::BodyTooLarge {
                        function: spec.id.clone(),
                        limit,
                    });
                }
                Err(e) => return Err(GatewayError::BadRequest(format!("request body: {e}"))),
            }
        }
        Ok(buf.freeze())
    };
    let body =
        match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), collect).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(GatewayError::BadRequest(
                    "the request body did not arrive within the function's timeout".into(),
                ));
            }
        };
    let mut headers = Vec::with_capacity(parts.headers.len() + 1);
    for (n, v) in &parts.headers {
        // A caller's own tenant header would bill someone else: only the gateway sets it.
        if n == X_INVOCATION_TYPE
            || n == X_ASYNC_DELAY
            || n == dispatch::X_TASK_ID
            || n == dispatch::X_TENANT
        {
            continue;
        }
        headers.push((n.as_str().to_string(), v.as_bytes().to_vec()));
    }
    if let Some(t) = record
        .tenant
        .as_ref()
        .filter(|t| HeaderValue::from_str(t).is_ok())
    {
        headers.push((
            dispatch::X_TENANT.as_str().to_string(),
            t.as_bytes().to_vec(),
        ));
    }
    let now = now_ms();
    let task = NewTask {
        task_id,
        request_id: record.request_id.as_str().to_string(),
        function: spec.id.clone(),
        priority,
        not_before_ms: now + delay_s * 1000,
        max_retries: spec.async_.max_retries,
        max_event_age_ms: spec.async_.max_event_age.as_millis() as u64,
        request: TaskRequest {
            method: parts.method.to_string(),
            path_and_query,
            headers,
            body,
        },
    };
    let due = task.not_before_ms;
    let outcome = dispatcher.store.accept(task).await.map_err(|e| match e {
        crate::queue::StoreError::TooLarge { limit, .. } => GatewayError::BodyTooLarge {
            function: spec.id.clone(),
            limit: limit as u64,
        },
        e => {
            tracing::warn!(function = %spec.id, "async accept failed: {e}");
            GatewayError::QueueUnavailable {
                detail: e.to_string(),
            }
        }
    })?;
    let (summary, existing) = match &outcome {
        AcceptOutcome::Stored(s) => (s, false),
        AcceptOutcome::Existing(s) => (s, true),
    };
    if !existing {
        dispatcher.wake(&spec.id, due);
    }
    if let (Some(rt), Some(i)) = (&record.rt, record.function) {
        rt.functions[i].metrics.async_accepted(existing);
    }
    let body = serde_json::json!({
        "task_id": summary.id,
        "request_id": summary.request_id,
        "function": summary.function,
        "state": summary.state,
        "existing": existing,
    });
    let mut resp = Response::new(ResponseBody::full(body.to_string()));
    *resp.status_mut() = http::StatusCode::ACCEPTED;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(X_REQUEST_ID.clone(), record.request_id.header_value());
    if let Ok(v) = HeaderValue::from_str(&summary.id) {
        h.insert(dispatch::X_TASK_ID.clone(), v);
    }
    record.status = 202;
    record.task_id = Some(summary.id.clone());
    record.finish();
    Ok(resp)
}

/// A plugin's rejection as the client sees it: the plugin's status, headers and body.
fn plugin_rejection(
    status: http::StatusCode,
    headers: Vec<(http::HeaderName, HeaderValue)>,
    body: String,
    request_id: RequestId,
) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    for (n, v) in headers {
        h.insert(n, v);
    }
    h.insert(X_REQUEST_ID.clone(), request_id.header_value());
    resp
}

/// The host the client asked for: the URI authority (HTTP/2, absolute-form) or the Host header.
fn request_host(parts: &http::request::Parts) -> Option<HeaderValue> {
    match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    }
}

/// Reads up to `n` body bytes for plugins; the frames read are replayed to the function.
async fn read_prefix(
    body: &mut Incoming,
    n: usize,
    deadline: Instant,
) -> Result<(Vec<u8>, std::collections::VecDeque<Frame<Bytes>>), GatewayError> {
    use http_body_util::BodyExt;
    let mut prefix = Vec::with_capacity(n.min(64 * 1024));
    let mut frames = std::collections::VecDeque::new();
    while prefix.len() < n {
        let next =
            tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), body.frame()).await;
        match next {
            Err(_) => {
                return Err(GatewayError::BadRequest(
                    "request body too slow for the policy plugins".into(),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(GatewayError::BadRequest(format!("request body: {e}"))),
            Ok(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let take = (n - prefix.len()).min(d.len());
                    prefix.extend_from_slice(&d[..take]);
                }
                frames.push_back(frame);
            }
        }
    }
    Ok((prefix, frames))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split(']')
            .next()
            .map_or(host, |h| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

/// What the log line needs, filled in as the request moves through the stages. Emitted exactly
/// once: by `finish`, or by `Drop` when the client went away first.
pub struct Record {
    rt: Option<Arc<Runtime>>,
    request_id: RequestId,
    start: Instant,
    method: http::Method,
    uri: Uri,
    version: Version,
    client: SocketAddr,
    trigger: Option<usize>,
    function: Option<usize>,
    instance: Option<Arc<crate::scheduler::Instance>>,
    /// The instance slot while the invocation runs; freed first thing in `finish`.
    slot: Option<Slot>,
    usage: Option<crate::metering::Usage>,
    queue_wait: Duration,
    upstream_start: Option<Instant>,
    upstream_headers: Option<Duration>,
    status: u16,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    error: Option<String>,
    tenant: Option<String>,
    /// The request's wait and the instance's cold-start split, when it waited for a cold start.
    cold_start: Option<(Duration, crate::scheduler::ColdStart)>,
    /// The task an async request was stored as.
    task_id: Option<String>,
    /// The invocation's trace (when OTLP traces are configured) and the stage marks its child
    /// spans are drawn from.
    trace: Option<telemetry::trace::Invocation>,
    matched_at: Option<Instant>,
    plugins_span: Option<(Instant, Instant)>,
}

impl Record {
    fn new(
        rt: Arc<Runtime>,
        request_id: RequestId,
        conn: ConnInfo,
        req: &Request<Incoming>,
        start: Instant,
    ) -> Self {
        let bytes_in = Arc::new(AtomicU64::new(0));
        let mut r = Record::blank(request_id, start, conn.peer, req.version(), bytes_in);
        r.rt = Some(rt);
        r.trace = telemetry::trace::start(req.headers());
        r.method = req.method().clone();
        r.uri = req.uri().clone();
        r
    }

    /// An inert copy left behind when the record moves into the response body.
    fn detached(&self) -> Self {
        // Shares the byte counter instead of allocating one: the copy is never logged.
        Record::blank(
            self.request_id,
            self.start,
            self.client,
            self.version,
            self.bytes_in.clone(),
        )
    }

    fn blank(
        request_id: RequestId,
        start: Instant,
        client: SocketAddr,
        version: Version,
        bytes_in: Arc<AtomicU64>,
    ) -> Self {
        Record {
            rt: None,
            request_id,
            start,
            method: http::Method::GET,
            uri: Uri::default(),
            version,
            client,
            trigger: None,
            function: None,
            instance: None,
            slot: None,
            usage: None,
            queue_wait: Duration::ZERO,
            upstream_start: None,
            upstream_headers: None,
            status: 0,
            bytes_in,
            bytes_out: 0,
            error: None,
            tenant: None,
            cold_start: None,
            task_id: None,
            trace: None,
            matched_at: None,
            plugins_span: None,
        }
    }

    fn finish(&mut self) {
        // Free the slot before logging so the next request is not kept waiting by the log.
        if let Some(slot) = self.slot.take() {
            self.usage = slot.finish(self.tenant.as_deref());
        }
        let Some(rt) = self.rt.take() else { return };
        // One reading of the clock for every figure of the invocation, so that its parts never
        // add up to more than its whole (upstream_ms ≤ duration_ms).
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.start);
        let function = self.function.map(|i| &rt.functions[i]);
        if let Some(f) = function {
            f.metrics.finished(self.status, elapsed);
            f.metrics
                .window
                .record(self.status, elapsed, self.error.is_some());
        }
        let trace = self.trace.take();
        let traced = trace.as_ref().is_some_and(|t| t.is_sampled());
        if rt.log.is_off() && !traced {
            // No sink and no span wants the line: skip building it.
            return;
        }
        let trigger = self
            .trigger
            .and_then(|i| rt.config.triggers.get(i))
            .map(|t| t.name.as_str());
        let fspec = self.function.map(|i| &rt.config.functions[i]);
        let ids = trace.as_ref().map(|t| t.ids_hex());
        // The wall clock, read once for the line and the spans (a fraction of a microsecond
        // after `now`: the metrics above are all that runs between).
        let now_wall = std::time::SystemTime::now();
        let line = InvocationLog {
            ts: telemetry::Timestamp::at(now_wall),
            kind: "invocation",
            request_id: self.request_id.as_str(),
            trigger,
            function: fspec.map(|f| f.id.as_str()),
            instance_id: self.instance.as_ref().map(|i| &*i.id),
            instance_kind: self.instance.as_ref().map(|i| i.kind().as_str()),
            cold_start_ms: self.cold_start.map(|(w, _)| Ms(w)),
            cold_start_spawn_ms: self.cold_start.map(|(_, c)| Ms(c.spawn)),
            cold_start_readiness_ms: self.cold_start.map(|(_, c)| Ms(c.readiness)),
            task_id: self.task_id.as_deref(),
            queue_wait_ms: Ms(self.queue_wait),
            upstream_ms: self
                .upstream_start
                .map(|s| Ms(now.saturating_duration_since(s))),
            duration_ms: Ms(elapsed),
            method: self.method.as_str(),
            path: self.uri.path(),
            protocol: match self.version {
                Version::HTTP_2 => "h2",
                Version::HTTP_10 => "http/1.0",
                _ => "http/1.1",
            },
            client: self.client.ip(),
            status: self.status,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out,
            error: self.error.as_deref(),
            tenant: self.tenant.as_deref(),
            usage: self.usage.as_ref(),
            trace_id: ids.map(|(t, _)| Hex(t)),
            span_id: ids.map(|(_, s)| Hex(s)),
        };
        rt.log
            .emit_invocation(fspec.map(|f| f.service.as_str()), &line);
        if let Some(trace) = &trace
            && trace.is_sampled()
        {
            self.export_trace(trace, &line, now, now_wall);
        }
    }

    /// The invocation's span tree, from the marks this record kept.
    fn export_trace(
        &self,
        trace: &telemetry::trace::Invocation,
        line: &InvocationLog<'_>,
        now: Instant,
        now_wall: std::time::SystemTime,
    ) {
        use telemetry::trace::{Attr, Finished};
        let wall = |at: Instant| telemetry::trace::wall(at, now, now_wall);
        let mut tree = Finished::new(wall(self.start), now_wall);
        if let Some(m) = self.matched_at {
            tree.child("trigger match", wall(self.start), wall(m));
        }
        if let Some((a, b)) = self.plugins_span {
            tree.child("plugin decision", wall(a), wall(b));
        }
        if let Some(up) = self.upstream_start {
            if !self.queue_wait.is_zero() {
                tree.child("queue wait", wall(up - self.queue_wait), wall(up));
            }
            if let Some((waited, _)) = self.cold_start {
                tree.child("cold start", wall(up - waited), wall(up));
            }
            tree.child("upstream call", wall(up), now_wall);
        }
        tree.attributes.reserve_exact(11);
        tree.attributes.extend([
            ("fngate.request_id", Attr::Str(line.request_id)),
            ("http.request.method", Attr::Str(line.method)),
            ("url.path", Attr::Str(line.path)),
            (
                "http.response.status_code",
                Attr::Int(i64::from(line.status)),
            ),
        ]);
        for (k, v) in [
            ("fngate.trigger", line.trigger),
            ("fngate.function", line.function),
            ("fngate.instance.id", line.instance_id),
            ("fngate.instance.kind", line.instance_kind),
            ("fngate.task_id", line.task_id),
            ("fngate.tenant", line.tenant),
        ] {
            if let Some(v) = v {
                tree.attributes.push((k, Attr::Str(v)));
            }
        }
        if let Some(ms) = line.cold_start_ms {
            tree.attributes
                .push(("fngate.cold_start_ms", Attr::F64(ms.as_f64())));
        }
        tree.error = line.error;
        trace.finish(&tree);
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if self.rt.is_some() {
            // The future or body was dropped before completion: the client went away.
            if self.error.is_none() {
                self.error = Some(if self.upstream_headers.is_some() {
                    "client closed the connection during the response".into()
                } else {
                    "client closed the connection before the response".into()
                });
            }
            if self.upstream_headers.is_none() {
                // nginx's convention for "client closed request".
                self.status = 499;
            }
            self.finish();
        }
    }
}

pin_project_lite::pin_project! {
    /// The upstream response on its way to the client; holds the instance slot until the end.
    pub struct ProxyBody {
        #[pin]
        inner: Incoming,
        deadline: Pin<Box<Sleep>>,
        // Holds the instance slot until the end (see `Record::finish`).
        record: Option<Record>,
        timeout: Duration,
    }
}

impl ProxyBody {
    /// When the client abandons the body, dropping `record` finishes it the same way.
    fn end(record: &mut Option<Record>, error: Option<String>) {
        if let Some(mut r) = record.take() {
            if error.is_some() {
                r.error = error;
            }
            r.finish();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(r)) = (frame.data_ref(), this.record.as_mut()) {
                    r.bytes_out += d.len() as u64;
                }
                // With a Content-Length, the server stops polling once it has that many bytes; the
                // invocation is complete now, not when the body is eventually dropped.
                if this.inner.is_end_stream() {
                    ProxyBody::end(this.record, None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let msg = format!("upstream failed mid-response: {}", error_chain(&e));
                ProxyBody::end(this.record, Some(msg));
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                ProxyBody::end(this.record, None);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.record.is_some() && this.deadline.as_mut().poll(cx).is_ready() {
                    let msg = format!(
                        "function timeout of {} ms reached while streaming the response",
                        this.timeout.as_millis()
                    );
                    ProxyBody::end(this.record, Some(msg.clone()));
                    return Poll::Ready(Some(Err(msg.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.com:8443"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
