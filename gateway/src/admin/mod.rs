//! The admin API, on its own listener: health, readiness, metrics, function state and reload.
//!
//! Everything except `/healthz` and `/readyz` (for probes) and the dashboard's page shell (`/`,
//! `/dashboard`: static, no data; see `dashboard.rs`) needs `Authorization: Bearer <admin token>`.
//! The public listener never routes here.

mod dashboard;
mod tasks;
mod usage;

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
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let rid = telemetry::next_request_id();
    let authed = authorized(&gw, req.headers().get(header::AUTHORIZATION));
    let mut resp = if authed && req.method() == Method::POST && req.uri().path() == "/admin/reload"
    {
        reload(gw.clone(), rid.as_str()).await
    } else if authed && req.method() == Method::GET && req.uri().path() == "/admin/usage" {
        usage::handle(&gw, req.uri().query(), rid.as_str()).await
    } else if authed && req.method() == Method::GET && req.uri().path() == "/admin/overview" {
        dashboard::overview(&gw).await
    } else if authed && (req.uri().path() == "/tasks" || req.uri().path().starts_with("/tasks/")) {
        tasks::handle(
            &gw,
            req.method(),
            req.uri().path(),
            req.uri().query(),
            rid.as_str(),
        )
        .await
    } else if authed
        && req.method() == Method::GET
        && crate::exec::target(req.uri().path()).is_some()
    {
        crate::exec::accept(&gw, conn, req, rid.as_str())
    } else if let Some(id) = authed.then(|| provisioned_target_path(&req)).flatten() {
        set_provisioned(&gw, &id, req, rid.as_str()).await
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
        (&Method::GET, "/" | "/dashboard") => return dashboard::page(),
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
        (&Method::GET, ["admin", "gpus"]) => {
            let pool = &gw.node.gpus;
            let cards: Vec<_> = pool
                .cards()
                .into_iter()
                .map(|c| {
                    json!({
                        "index": c.index,
                        "type": c.gpu_type,
                        "memory_gb": c.memory_gb,
                        "allocated_gb": c.allocated_gb,
                        "shares": c.shares,
                    })
                })
                .collect();
            json_response(
                StatusCode::OK,
                json!({
                    "cards_in_use": pool.cards_in_use(),
                    "cards_max": pool.cards_max(),
                    "cards": cards,
                }),
            )
        }
        (
            _,
            ["metrics"]
            | [""]
            | ["dashboard"]
            | ["admin", "overview"]
            | ["admin", "functions"]
            | ["admin", "reload"]
            | ["admin", "gpus"]
            | ["admin", "usage"]
            | ["admin", "functions", _, _, "provisioned"],
        ) => error_response(
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

/// `PUT /admin/functions/{service}/{function}/provisioned` → `service/function`.
fn provisioned_target_path(req: &Request<Incoming>) -> Option<String> {
    if req.method() != Method::PUT {
        return None;
    }
    let segments: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["admin", "functions", svc, func, "provisioned"] => Some(format!("{svc}/{func}")),
        _ => None,
    }
}

/// Largest body the admin API reads (`{"target": N}` is a dozen bytes).
const MAX_ADMIN_BODY: usize = 4096;

/// Sets a function's provisioned-instance target at run time.
async fn set_provisioned(
    gw: &Gateway,
    id: &str,
    req: Request<Incoming>,
    rid: &str,
) -> Response<ResponseBody> {
    use http_body_util::BodyExt;
    let bad = |msg: &str| error_response(StatusCode::BAD_REQUEST, "bad_request", msg, rid);
    let rt = gw.runtime();
    let Some((_, f)) = rt.function(id) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no function {id}"),
            rid,
        );
    };
    let body = http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY);
    let bytes = match tokio::time::timeout(std::time::Duration::from_secs(10), body.collect()).await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return bad(&format!("cannot read the body: {e}")),
        Err(_) => return bad("the body did not arrive within 10 s"),
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Target {
        target: u32,
    }
    let target = match serde_json::from_slice::<Target>(&bytes) {
        Ok(t) => t.target,
        Err(e) => {
            return bad(&format!("expected a JSON body like {{\"target\": 2}}: {e}"));
        }
    };
    match f.set_provisioned_target(target) {
        Ok(t) => {
            tracing::info!(
                function = id,
                target = t,
                "provisioned target set (admin API)"
            );
            let st = f.snapshot();
            json_response(
                StatusCode::OK,
                json!({
                    "function": id,
                    "target": t,
                    "provisioned_target": st.provisioned_target,
                    "instances": st.instances,
                }),
            )
        }
        Err(msg) => error_response(StatusCode::CONFLICT, "invalid_target", &msg, rid),
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
        "backend": match &spec.backend {
            crate::config::BackendSpec::Static { .. } => "static",
            crate::config::BackendSpec::Process(_) => "process",
        },
        "gpu": spec.gpu.as_ref().map(|g| json!({"type": g.gpu_type, "memory_gb": g.memory_gb})),
        "max_instances": st.max_instances,
        "idle_timeout_ms": spec.scaling.idle_timeout.as_millis() as u64,
        "provisioned_target": st.provisioned_target,
        "manual_target": st.manual_target,
        "tracked_target": st.tracked_target,
        "last_start_error": st.last_start_error,
        "waiting_for_gpu": st.waiting_for_gpu,
        "in_flight": st.in_flight,
        "queued": st.queued,
        "instances": st.instances,
    })
}

fn authorized(gw: &Gateway, v: Option<&HeaderValue>) -> bool {
    crate::trigger::bearer_matches(v, &gw.admin_token)
}

pub(crate) fn json_response(status: StatusCode, v: serde_json::Value) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
