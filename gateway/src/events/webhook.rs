//! `POST /events/{source}` on the public listeners: the HTTP face of `ingest`.
//!
//! Order: source lookup (404) → method (405) → credentials from the headers (401; a stale or
//! unsigned HMAC call is refused before its body is read) → declared length (413) → body, read
//! up to the source's `max_body` (413) → HMAC over the body (401) → `ingest` (400 / 413 / 503,
//! or 200 once every matching event is stored). One log line per call (`kind: "event_webhook"`).

use super::auth::{self, AuthFailure, Pending};
use super::ingest::{IngestError, Ingested, ingest_in};
use super::parse::SnsKind;
use crate::backend::X_REQUEST_ID;
use crate::body::ResponseBody;
use crate::config::{EventSourceKind, WebhookAuth};
use crate::error::GatewayError;
use crate::invoker::ConnInfo;
use crate::state::{Gateway, Runtime};
use crate::telemetry::{self, RequestId};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Requests whose path starts with this are object-storage webhooks, never function routes
/// (validation keeps services and HTTP trigger paths off it).
pub const ROUTE_PREFIX: &str = "/events/";
/// A sender that takes longer than this to deliver its body is cut off.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

pub fn is_webhook_path(path: &str) -> bool {
    path.starts_with(ROUTE_PREFIX)
}

/// The log line of one webhook call (`docs/logging.md`).
#[derive(Serialize)]
struct WebhookLog<'a> {
    ts: String,
    kind: &'static str,
    request_id: &'a str,
    source: Option<&'a str>,
    shape: Option<&'static str>,
    status: u16,
    client: String,
    bytes_in: usize,
    duration_ms: f64,
    received: Option<usize>,
    matched: Option<usize>,
    enqueued: Option<usize>,
    deduplicated: Option<usize>,
    filtered: Option<usize>,
    dropped: Option<usize>,
    error: Option<String>,
}

/// Handles one webhook request. Never fails: errors become responses here (through
/// `GatewayError`, the one place that turns errors into HTTP answers).
pub async fn webhook(
    gw: Arc<Gateway>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let request_id = telemetry::next_request_id();
    let rt = gw.runtime();
    let mut line = WebhookLog {
        ts: String::new(),
        kind: "event_webhook",
        request_id: request_id.as_str(),
        source: None,
        shape: None,
        status: 0,
        client: conn.peer.ip().to_string(),
        bytes_in: 0,
        duration_ms: 0.0,
        received: None,
        matched: None,
        enqueued: None,
        deduplicated: None,
        filtered: None,
        dropped: None,
        error: None,
    };
    let mut resp = match handle(&gw, &rt, request_id, req, &mut line).await {
        Ok(resp) => resp,
        Err(e) => {
            line.error = Some(e.to_string());
            e.into_response(request_id.as_str())
        }
    };
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.header_value());
    line.status = resp.status().as_u16();
    line.duration_ms = telemetry::millis(start.elapsed());
    line.ts = telemetry::rfc3339_now();
    rt.log.emit(&line);
    resp
}

async fn handle<'a>(
    gw: &Gateway,
    rt: &'a Arc<Runtime>,
    request_id: RequestId,
    req: Request<Incoming>,
    line: &mut WebhookLog<'a>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let path = req.uri().path();
    let name = &path[ROUTE_PREFIX.len()..];
    let found = rt.config.event_sources.iter().position(|s| s.name == name);
    let (index, src, auth) = match found.map(|i| (i, &rt.config.event_sources[i])) {
        Some((i, s)) => match &s.kind {
            EventSourceKind::Webhook { auth } => (i, s, auth),
            other => {
                return Err(GatewayError::NotFound {
                    path: format!(
                        "{path} (event source `{name}` is kind {}, not webhook)",
                        other.label()
                    ),
                });
            }
        },
        None => {
            metrics::counter!(telemetry::EVENTS_REJECTED, "source" => "", "reason" => "unknown_source")
                .increment(1);
            return Err(GatewayError::NotFound {
                path: cut(path, 128),
            });
        }
    };
    line.source = Some(src.name.as_str());
    let rejected = |reason: &'static str| {
        metrics::counter!(telemetry::EVENTS_REJECTED, "source" => src.name.clone(), "reason" => reason)
            .increment(1);
    };
    if req.method() != Method::POST {
        rejected("method_not_allowed");
        return Err(GatewayError::MethodNotAllowed {
            method: req.method().to_string(),
            allow: "POST".into(),
        });
    }
    let unauthorized = |f: AuthFailure| {
        rejected("unauthorized");
        GatewayError::EventUnauthorized {
            event_source: src.name.clone(),
            reason: f.to_string(),
            bearer: matches!(auth, WebhookAuth::Bearer(_)),
        }
    };
    let pending = auth::check_headers(auth, req.headers(), unix_now()).map_err(unauthorized)?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        rejected("body_too_large");
        GatewayError::EventTooLarge(format!(
            "the notification body exceeds {} bytes, the max_body of event source `{}`",
            src.max_body, src.name
        ))
    };
    if declared.is_some_and(|n| n > src.max_body) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(req.into_body(), src.max_body as usize);
    let body: Bytes = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => {
            rejected("bad_input");
            return Err(GatewayError::BadRequest(format!(
                "the notification body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(e)) => {
            rejected("bad_input");
            return Err(GatewayError::BadRequest(format!("request body: {e}")));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    line.bytes_in = body.len();
    if matches!(pending, Pending::Signature { .. }) {
        auth::verify_body(auth, &pending, &body).map_err(unauthorized)?;
    }
    let ingested = ingest_in(gw, rt, index, &body, request_id.as_str()).await;
    let (status, json) = match ingested {
        Ok(Ingested::Events { shape, outcome }) => {
            line.shape = Some(shape.label());
            line.received = Some(outcome.received);
            line.matched = Some(outcome.matched);
            line.enqueued = Some(outcome.enqueued);
            line.deduplicated = Some(outcome.deduplicated);
            line.filtered = Some(outcome.filtered);
            line.dropped = Some(outcome.dropped);
            (
                StatusCode::OK,
                serde_json::to_value(outcome).unwrap_or_default(),
            )
        }
        Ok(Ingested::Test { bucket }) => {
            line.shape = Some("test");
            (
                StatusCode::OK,
                serde_json::json!({
                    "test_event": true,
                    "bucket": bucket,
                    "message": "s3:TestEvent acknowledged; nothing is run",
                }),
            )
        }
        Ok(Ingested::Sns(c)) => {
            line.shape = Some("sns_confirmation");
            let (kind, message) = match c.kind {
                SnsKind::Subscribe => (
                    "SubscriptionConfirmation",
                    "not confirmed: fngate does not fetch URLs; the gateway log has the SubscribeURL and token for an operator to confirm the subscription",
                ),
                SnsKind::Unsubscribe => (
                    "UnsubscribeConfirmation",
                    "acknowledged; the subscription has ended",
                ),
            };
            (
                StatusCode::OK,
                serde_json::json!({
                    "sns": kind,
                    "topic_arn": c.topic_arn,
                    "confirmed": false,
                    "message": message,
                }),
            )
        }
        Err(e) => return Err(into_gateway_error(e)),
    };
    let mut resp = Response::new(ResponseBody::full(json.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn into_gateway_error(e: IngestError) -> GatewayError {
    match e {
        IngestError::UnknownSource { name } => GatewayError::NotFound {
            path: format!("{ROUTE_PREFIX}{name}"),
        },
        e @ IngestError::BadInput { .. } => GatewayError::BadEvent(e.to_string()),
        e @ (IngestError::TooLarge { .. } | IngestError::PayloadTooLarge { .. }) => {
            GatewayError::EventTooLarge(e.to_string())
        }
        IngestError::PluginFailed {
            plugin,
            trigger,
            detail,
        } => GatewayError::PluginFailed {
            plugin,
            detail: format!("{detail} (trigger `{trigger}`; deliver the notification again)"),
        },
        IngestError::QueueUnavailable { detail } => GatewayError::QueueUnavailable { detail },
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_paths() {
        assert!(is_webhook_path("/events/rgw"));
        assert!(is_webhook_path("/events/"));
        assert!(!is_webhook_path("/events"));
        assert!(!is_webhook_path("/eventsx/rgw"));
        assert!(!is_webhook_path("/demo/events/rgw"));
    }

    #[test]
    fn ingest_errors_map_to_the_documented_codes() {
        use crate::events::ParseError;
        let cases: Vec<(IngestError, u16, &str)> = vec![
            (
                IngestError::BadInput {
                    source_name: "s".into(),
                    error: ParseError::NotJson("x".into()),
                },
                400,
                "bad_event",
            ),
            (
                IngestError::TooLarge {
                    source_name: "s".into(),
                    size: 9,
                    limit: 8,
                },
                413,
                "body_too_large",
            ),
            (
                IngestError::PayloadTooLarge {
                    trigger: "t".into(),
                    function: "a/b".into(),
                    key: "k".into(),
                    size: 9,
                    limit: 8,
                },
                413,
                "body_too_large",
            ),
            (
                IngestError::PluginFailed {
                    plugin: "p".into(),
                    trigger: "t".into(),
                    detail: "trap".into(),
                },
                503,
                "plugin_failed",
            ),
            (
                IngestError::QueueUnavailable {
                    detail: "busy".into(),
                },
                503,
                "queue_unavailable",
            ),
            (
                IngestError::UnknownSource { name: "x".into() },
                404,
                "not_found",
            ),
        ];
        for (e, status, code) in cases {
            let g = into_gateway_error(e);
            assert_eq!(g.status().as_u16(), status, "{g}");
            assert_eq!(g.code(), code, "{g}");
        }
        let u = GatewayError::EventUnauthorized {
            event_source: "s".into(),
            reason: "the token does not match".into(),
            bearer: true,
        };
        assert_eq!(u.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(u.code(), "unauthorized");
        let r = u.into_response("rid");
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
