//! The tasks API on the admin listener: look up, list, stop and redrive async tasks.
//!
//! `GET /tasks/{id}`, `GET /tasks?function=&state=&limit=&cursor=`, `POST /tasks/{id}/stop`,
//! `POST /tasks/{id}/retry`. Bodies of stored results are returned as text when they are UTF-8,
//! base64 otherwise (`body_encoding`).

use crate::body::ResponseBody;
use crate::error::error_response;
use crate::queue::{ListFilter, StoreError, Task, TaskState};
use crate::state::Gateway;
use crate::telemetry::hex_digit;
use http::{Method, Response, StatusCode};
use serde_json::json;

pub async fn handle(
    gw: &Gateway,
    method: &Method,
    path: &str,
    query: Option<&str>,
    rid: &str,
) -> Response<ResponseBody> {
    let Some(d) = gw.tasks.get() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_unavailable",
            "the async queue is not open",
            rid,
        );
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = match (method, segments.as_slice()) {
        (&Method::GET, ["tasks"]) => match filter(query) {
            Ok(f) => d.store.list(f).await.map(|page| {
                (
                    StatusCode::OK,
                    json!({ "tasks": page.tasks, "next_cursor": page.next_cursor }),
                )
            }),
            Err(msg) => {
                return error_response(StatusCode::BAD_REQUEST, "bad_request", &msg, rid);
            }
        },
        (&Method::GET, ["tasks", id]) => match d.store.get(id).await {
            Ok(Some(t)) => Ok((StatusCode::OK, task_json(&t))),
            Ok(None) => Err(StoreError::NotFound { id: id.to_string() }),
            Err(e) => Err(e),
        },
        (&Method::POST, ["tasks", id, "stop"]) => d.store.stop(id).await.map(|s| {
            if s.previous != TaskState::Stopped {
                metrics::counter!(crate::telemetry::ASYNC_STOPPED, "function" => s.task.function.clone())
                    .increment(1);
            }
            // Aborted here; with a shared (NATS) queue the gateway running it aborts it too.
            let aborted = s.previous == TaskState::Running && d.abort(id);
            (
                StatusCode::OK,
                json!({ "task": s.task, "previous": s.previous, "aborted": aborted }),
            )
        }),
        (&Method::POST, ["tasks", id, "retry"]) => d.store.redrive(id).await.map(|s| {
            d.wake(&s.function, crate::queue::now_ms());
            (StatusCode::OK, json!({ "task": s }))
        }),
        (_, ["tasks", ..]) => {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "tasks: GET /tasks, GET /tasks/{id}, POST /tasks/{id}/stop, POST /tasks/{id}/retry",
                rid,
            );
        }
        _ => {
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no admin route {path}"),
                rid,
            );
        }
    };
    match result {
        Ok((status, v)) => super::json_response(status, v),
        Err(e) => {
            let (status, code) = match &e {
                StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
                StoreError::InvalidTransition { .. } => (StatusCode::CONFLICT, "invalid_state"),
                StoreError::InvalidTaskId { .. } | StoreError::InvalidInput(_) => {
                    (StatusCode::BAD_REQUEST, "bad_request")
                }
                _ => (StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable"),
            };
            error_response(status, code, &e.to_string(), rid)
        }
    }
}

fn filter(query: Option<&str>) -> Result<ListFilter, String> {
    let mut f = ListFilter {
        limit: crate::queue::DEFAULT_LIST_LIMIT,
        ..Default::default()
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "function" => f.function = Some(v),
            "state" => {
                f.state = Some(TaskState::parse(&v).ok_or_else(|| {
                    format!("state `{v}`: one of Enqueued, Running, Retrying, Succeeded, Failed, Stopped, Expired")
                })?)
            }
            "limit" => {
                f.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=crate::queue::MAX_LIST_LIMIT).contains(n))
                    .ok_or_else(|| {
                        format!("limit `{v}`: 1 to {}", crate::queue::MAX_LIST_LIMIT)
                    })?
            }
            "cursor" => f.cursor = Some(v),
            other => return Err(format!("unknown query parameter `{other}`")),
        }
    }
    Ok(f)
}

/// `%2F` → `/` (function ids contain a slash); `+` stays a plus.
pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_digit(b[i + 1]), hex_digit(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn task_json(t: &Task) -> serde_json::Value {
    let result = t.result.as_ref().map(|r| {
        let (body, encoding) = match std::str::from_utf8(&r.body) {
            Ok(s) => (s.to_string(), "utf-8"),
            Err(_) => (crate::telemetry::base64(&r.body), "base64"),
        };
        json!({
            "status": r.status,
            "headers": r.headers.iter().map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned())).collect::<Vec<_>>(),
            "body": body,
            "body_encoding": encoding,
            "truncated": r.truncated,
        })
    });
    json!({
        "task": t.summary,
        "result": result,
        "events": t.events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("demo%2Fecho"), "demo/echo");
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn list_filters() {
        let f = filter(Some("function=demo%2Fecho&state=Failed&limit=5")).unwrap();
        assert_eq!(f.function.as_deref(), Some("demo/echo"));
        assert_eq!(f.state, Some(TaskState::Failed));
        assert_eq!(f.limit, 5);
        assert!(filter(Some("state=Done")).unwrap_err().contains("Enqueued"));
        assert!(filter(Some("limit=0")).is_err());
        assert!(filter(Some("colour=red")).unwrap_err().contains("colour"));
    }
}
