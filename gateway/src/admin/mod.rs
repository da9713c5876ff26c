//! The admin API, on its own listener: health, readiness, metrics, function state and reload.
//!
//! Everything except `/healthz` and `/readyz` (for probes) needs `Authorization: Bearer <admin token>`.
//! The public listener never routes here.

use crate::body::ResponseBody;
use crate::error::error_response;
use crate::invoker::ConnInfo;
use crate::state::Gateway;
use crate::telemetry;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub async fn handle(
    gw: Arc<Gateway>,
    _conn: ConnInfo,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let rid = telemetry::next_request_id();
    let mut resp = if req.method() == Method::POST
        && req.uri().path() == "/admin/reload"
        && authorized(&gw, req.headers().get(header::AUTHORIZATION))
    {
        reload(gw.clone(), rid.as_str()).await
    } else {
        route(&gw, &req, rid.as_str())
    };
    resp.headers_mut()
        .insert(crate::backend::X_REQUEST_ID.clone(), rid.header_value());
    resp
}

fn route(gw: &Gateway, req: &Request<Incoming>, rid: &str) -> Response<ResponseBody> {
    let path = req.uri().path();
    let method = req.method();
    match (method, path) {
        (&Method::GET, "/healthz") => {
            return json_response(StatusCode::OK, json!({"status": "ok"}));
        }
        (&Method::GET, "/readyz") => {
            return if gw.ready.load(Ordering::Relaxed) {
                json_response(
                    StatusCode::OK,
                    json!({"status": "ready", "generation": gw.runtime().generation}),
                )
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "starting"}),
                )
            };
        }
        _ => {}
    }
    if !authorized(gw, req.headers().get(header::AUTHORIZATION)) {
        let mut r = error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin API needs `Authorization: Bearer <admin token>`",
            rid,
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            let mut r = Response::new(ResponseBody::full(gw.prometheus.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, ["admin", "functions"]) => {
            let rt = gw.runtime();
            let list: Vec<_> = rt
                .config
                .functions
                .iter()
                .zip(&rt.functions)
                .map(|(spec, f)| function_json(spec, &f.snapshot()))
                .collect();
            json_response(
                StatusCode::OK,
                json!({ "generation": rt.generation, "functions": list }),
            )
        }
        (&Method::GET, ["admin", "functions", svc, func, "instances"]) => {
            let rt = gw.runtime();
            match rt.function(&format!("{svc}/{func}")) {
                Some((_, f)) => json_response(
                    StatusCode::OK,
                    json!({ "instances": f.snapshot().instances }),
                ),
                None => error_response(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no function {svc}/{func}"),
                    rid,
                ),
            }
        }
        (&Method::PUT, ["admin", "functions", _, _, "provisioned"]) => error_response(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "provisioned instance targets arrive with on-demand and provisioned scaling; static endpoints are always provisioned",
            rid,
        ),
        (_, ["metrics"] | ["admin", "functions"] | ["admin", "reload"]) => error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed here",
            rid,
        ),
        _ => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no admin route {path}"),
            rid,
        ),
    }
}

/// Reloads on a blocking thread: compiling a changed plugin must not stall a worker.
async fn reload(gw: Arc<Gateway>, rid: &str) -> Response<ResponseBody> {
    match tokio::task::spawn_blocking(move || gw.reload()).await {
        Ok(Ok(report)) => {
            tracing::info!(
                generation = report.generation,
                "configuration reloaded (admin API)"
            );
            json_response(
                StatusCode::OK,
                json!({ "reloaded": true, "report": report }),
            )
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "configuration reload rejected; nothing changed");
            let body = json!({
                "error": {
                    "code": "invalid_config",
                    "message": format!("{} has {} problem(s); nothing was changed", e.file.display(), e.problems.len()),
                    "request_id": rid,
                    "problems": e.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                }
            });
            json_response(StatusCode::UNPROCESSABLE_ENTITY, body)
        }
        Err(_) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "reload failed unexpectedly",
            rid,
        ),
    }
}

fn function_json(
    spec: &crate::config::FunctionSpec,
    st: &crate::scheduler::FunctionState,
) -> serde_json::Value {
    json!({
        "id": spec.id,
        "service": spec.service,
        "name": spec.name,
        "instance_concurrency": spec.instance_concurrency,
        "timeout_ms": spec.timeout.as_millis() as u64,
        "max_queued": spec.max_queued,
        "max_queue_wait_ms": spec.max_queue_wait.as_millis() as u64,
        "max_body": spec.max_body,
        "in_flight": st.in_flight,
        "queued": st.queued,
        "instances": st.instances,
    })
}

fn authorized(gw: &Gateway, v: Option<&HeaderValue>) -> bool {
    crate::trigger::bearer_matches(v, &gw.admin_token)
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
