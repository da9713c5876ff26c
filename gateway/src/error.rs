//! The one place where gateway errors become HTTP responses.
//!
//! Every error knows its origin (client, gateway, upstream), its status, a stable machine code and a
//! message that names the function or instance involved. The body is always
//! `{"error":{"code":"…","message":"…","request_id":"…"}}`.

use crate::body::ResponseBody;
use http::{HeaderValue, Response, StatusCode, header};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route for {path}")]
    NotFound { path: String },
    #[error("method {method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: String },
    #[error("missing or invalid bearer token for trigger `{trigger}`")]
    Unauthorized { trigger: String },
    #[error("request body exceeds {limit} bytes, the limit of function {function}")]
    BodyTooLarge { function: String, limit: u64 },
    #[error("{0}")]
    BadRequest(String),
    /// An object-storage webhook without valid credentials (the reason never holds a secret).
    #[error("event source `{event_source}`: {reason}")]
    EventUnauthorized {
        event_source: String,
        reason: String,
        /// Bearer auth: answer with `WWW-Authenticate: Bearer`.
        bearer: bool,
    },
    /// A notification body fngate cannot read; the message names the record and field.
    #[error("{0}")]
    BadEvent(String),
    /// A notification over its source's `max_body`, or an event over its function's async
    /// `max_payload`.
    #[error("{0}")]
    EventTooLarge(String),
    #[error("function {function} is at capacity: {max_queued} requests already queued")]
    QueueFull { function: String, max_queued: usize },
    #[error("function {function} is at capacity: no instance slot freed within {waited_ms} ms")]
    QueueTimeout { function: String, waited_ms: u64 },
    #[error("function {function} needs a {gpu_type} GPU slice and none freed up in time: {detail}")]
    GpuCapacity {
        function: String,
        gpu_type: String,
        detail: String,
    },
    #[error("function {function} cannot start an instance: {detail}")]
    ColdStartFailed {
        function: String,
        detail: String,
        retry_after: Duration,
    },
    #[error("the async queue cannot take the request now: {detail}")]
    QueueUnavailable { detail: String },
    #[error("instance {instance} of function {function} is not available")]
    InstanceUnavailable { function: String, instance: String },
    #[error("policy plugin `{plugin}` failed: {detail}")]
    PluginFailed { plugin: String, detail: String },
    #[error("{what}: not supported by this build yet")]
    NotImplemented { what: String },
    #[error("function {function} was removed by a configuration reload")]
    FunctionRetired { function: String },
    #[error("instance {instance} of function {function} is unreachable: {detail}")]
    UpstreamConnect {
        function: String,
        instance: String,
        detail: String,
    },
    #[error("instance {instance} of function {function} failed: {detail}")]
    UpstreamProtocol {
        function: String,
        instance: String,
        detail: String,
    },
    #[error(
        "function {function} did not answer within its timeout of {timeout_ms} ms (instance {instance})"
    )]
    UpstreamTimeout {
        function: String,
        instance: String,
        timeout_ms: u64,
    },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            NotFound { .. } => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Unauthorized { .. } | EventUnauthorized { .. } => StatusCode::UNAUTHORIZED,
            BodyTooLarge { .. } | EventTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BadRequest(_) | BadEvent(_) => StatusCode::BAD_REQUEST,
            QueueFull { .. } | QueueTimeout { .. } | GpuCapacity { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            FunctionRetired { .. }
            | PluginFailed { .. }
            | ColdStartFailed { .. }
            | QueueUnavailable { .. }
            | InstanceUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            UpstreamConnect { .. } | UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Stable machine-readable code (part of the public contract).
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            NotFound { .. } => "not_found",
            MethodNotAllowed { .. } => "method_not_allowed",
            Unauthorized { .. } | EventUnauthorized { .. } => "unauthorized",
            BodyTooLarge { .. } | EventTooLarge(_) => "body_too_large",
            BadRequest(_) => "bad_request",
            BadEvent(_) => "bad_event",
            QueueFull { .. } => "queue_full",
            QueueTimeout { .. } => "queue_timeout",
            GpuCapacity { .. } => "gpu_capacity",
            ColdStartFailed { .. } => "cold_start_failed",
            InstanceUnavailable { .. } => "instance_unavailable",
            QueueUnavailable { .. } => "queue_unavailable",
            FunctionRetired { .. } => "function_removed",
            PluginFailed { .. } => "plugin_failed",
            NotImplemented { .. } => "not_implemented",
            UpstreamConnect { .. } => "upstream_unreachable",
            UpstreamProtocol { .. } => "upstream_failed",
            UpstreamTimeout { .. } => "upstream_timeout",
        }
    }

    /// Whether a client may retry the same request safely as far as the gateway knows: the request
    /// never reached a backend.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::QueueFull { .. }
                | GatewayError::QueueTimeout { .. }
                | GatewayError::GpuCapacity { .. }
                | GatewayError::ColdStartFailed { .. }
                | GatewayError::InstanceUnavailable { .. }
                | GatewayError::QueueUnavailable { .. }
                | GatewayError::UpstreamConnect { .. }
        )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::QueueFull { .. }
            | GatewayError::QueueTimeout { .. }
            | GatewayError::GpuCapacity { .. } => Some(Duration::from_secs(1)),
            GatewayError::ColdStartFailed { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    pub fn into_response(self, request_id: &str) -> Response<ResponseBody> {
        let mut resp = error_response(self.status(), self.code(), &self.to_string(), request_id);
        let h = resp.headers_mut();
        if let Some(after) = self.retry_after() {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        match &self {
            GatewayError::MethodNotAllowed { allow, .. } => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    h.insert(header::ALLOW, v);
                }
            }
            GatewayError::Unauthorized { .. }
            | GatewayError::EventUnauthorized { bearer: true, .. } => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}

/// Builds the JSON error body used by both listeners.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": { "code": code, "message": message, "request_id": request_id }
    });
    let mut resp = Response::new(ResponseBody::full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
