//! The live dashboard on the admin listener: the page at `/` (and `/dashboard`) and the one JSON
//! call it polls, `GET /admin/overview`.
//!
//! The page is a static shell (`dashboard.html`, inline CSS and JS, no external resources) and
//! holds no data, so it is served without the token: a browser cannot attach a bearer header to
//! a navigation, and a cookie would need a login flow and CSRF care that the admin API does not
//! have. The operator pastes the token once; the page keeps it in the tab's `sessionStorage`
//! and sends it as `Authorization: Bearer` on each poll, like any other admin client. A token
//! can also be handed over in the fragment (`/#token=…`), which browsers never send to the
//! server; the page moves it to `sessionStorage` and strips it from the address bar. Every
//! number comes from `/admin/overview`, which needs the token like the rest of the admin API.
//! A Content-Security-Policy with the hashes of the inline script and style lets nothing else
//! run or load.

use super::json_response;
use crate::body::ResponseBody;
use crate::queue::{QueueCounts, now_ms};
use crate::scheduler::FunctionState;
use crate::state::Gateway;
use crate::telemetry::WindowSnapshot;
use crate::telemetry::window::{LATENCY_SECONDS, RATE_SECONDS, SERIES_SECONDS};
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};
use std::sync::OnceLock;
use std::time::Duration;

const PAGE: &str = include_str!("dashboard.html");

/// How long the overview waits for the task store's counts before answering without them.
const TASK_COUNTS_TIMEOUT: Duration = Duration::from_millis(1500);

/// `GET /` and `GET /dashboard`: the page shell.
pub(super) fn page() -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(PAGE));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, csp().clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// Only the page's own inline script and style run; it may only call back to this origin.
fn csp() -> &'static HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| {
        let script = sha256_b64(inline(PAGE, "script").as_bytes());
        let style = sha256_b64(inline(PAGE, "style").as_bytes());
        let v = format!(
            "default-src 'none'; script-src 'sha256-{script}'; style-src 'sha256-{style}'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        );
        HeaderValue::from_str(&v).expect("base64 and ASCII make a valid header value")
    })
}

/// The text between `<tag>` and `</tag>` (the page has one of each).
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = page.find(&open).map(|i| i + open.len()).unwrap_or(0);
    let end = page[start..].find(&close).map_or(start, |i| start + i);
    &page[start..end]
}

/// SHA-256 from the TLS stack's crypto provider (aws-lc-rs), so the CSP hashes need no extra crate.
fn sha256_b64(data: &[u8]) -> String {
    use rustls::crypto::hash::HashAlgorithm;
    let rustls::SupportedCipherSuite::Tls13(suite) =
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
    else {
        unreachable!("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite")
    };
    let h = suite.common.hash_provider;
    assert_eq!(h.algorithm(), HashAlgorithm::SHA256);
    crate::telemetry::base64(h.hash(data).as_ref())
}

/// `GET /admin/overview`: everything the dashboard shows, in one answer.
pub(super) async fn overview(gw: &Gateway) -> Response<ResponseBody> {
    let rt = gw.runtime();
    let specs = &rt.config.functions;
    // The task store answers for all functions at once (concurrently), within a bound: a slow
    // broker must not stall the dashboard's other numbers.
    let tasks: Vec<Option<Result<QueueCounts, String>>> = match gw.tasks.get() {
        Some(d) => {
            let all =
                futures_util::future::join_all(specs.iter().map(|s| async move {
                    d.store.counts(&s.id).await.map_err(|e| e.to_string())
                }));
            match tokio::time::timeout(TASK_COUNTS_TIMEOUT, all).await {
                Ok(v) => v.into_iter().map(Some).collect(),
                Err(_) => specs
                    .iter()
                    .map(|_| Some(Err("the task store did not answer in time".into())))
                    .collect(),
            }
        }
        None => specs.iter().map(|_| None).collect(),
    };
    let now = now_ms();
    let mut functions = Vec::with_capacity(specs.len());
    let mut services: Vec<Service> = Vec::new();
    let mut totals = Totals::default();
    for ((spec, f), tasks) in specs.iter().zip(&rt.functions).zip(tasks) {
        let st = f.snapshot();
        let w = f.metrics.window.snapshot();
        totals.add(&st, &w, tasks.as_ref().and_then(|t| t.as_ref().ok()));
        match services.iter_mut().find(|s| s.name == spec.service) {
            Some(s) => s.add(&spec.id, &st, &w),
            None => {
                let mut s = Service::new(&spec.service);
                s.add(&spec.id, &st, &w);
                services.push(s);
            }
        }
        functions.push(function_json(spec, st, w, tasks, now));
    }
    let gpus = &gw.node.gpus;
    let body = json!({
        "generation": rt.generation,
        "time_ms": now,
        "window": {
            "series_s": SERIES_SECONDS,
            "rate_s": RATE_SECONDS,
            "latency_s": LATENCY_SECONDS,
        },
        "queue": gw.tasks.get().map(|d| json!({"kind": d.store.kind()})),
        "gpus": { "cards_in_use": gpus.cards_in_use(), "cards_max": gpus.cards_max() },
        "totals": totals.json(),
        "services": services.iter().map(Service::json).collect::<Vec<_>>(),
        "functions": functions,
    });
    let mut r = json_response(StatusCode::OK, body);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn function_json(
    spec: &crate::config::FunctionSpec,
    st: FunctionState,
    w: WindowSnapshot,
    tasks: Option<Result<QueueCounts, String>>,
    now_ms: u64,
) -> Value {
    let (tasks, tasks_error) = match tasks {
        Some(Ok(c)) => (Some(tasks_json(&c, now_ms)), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    json!({
        "id": spec.id,
        "service": spec.service,
        "name": spec.name,
        "backend": match &spec.backend {
            crate::config::BackendSpec::Static { .. } => "static",
            crate::config::BackendSpec::Process(_) => "process",
        },
        "gpu": spec.gpu.as_ref().map(|g| json!({"type": g.gpu_type, "memory_gb": g.memory_gb})),
        "instance_concurrency": spec.instance_concurrency,
        "max_instances": st.max_instances,
        "provisioned_target": st.provisioned_target,
        "max_queued": spec.max_queued,
        "in_flight": st.in_flight,
        "queue_depth": st.queued,
        "requests": {
            "total": w.requests_total,
            "errors": w.errors_total,
            "per_s": w.requests_per_s,
            "errors_per_s": w.errors_per_s,
            "series": w.series,
            "error_series": w.error_series,
        },
        "latency_ms": { "p50": w.p50_ms, "p99": w.p99_ms, "samples": w.latency_samples },
        "cold_starts": {
            "total": w.cold_starts_total,
            "failed": w.cold_start_failures_total,
            "recent": w.cold_starts_window,
            "last_ms": w.last_cold_start_ms,
        },
        "tasks": tasks,
        "tasks_error": tasks_error,
        "last_start_error": st.last_start_error,
        "waiting_for_gpu": st.waiting_for_gpu,
        "instances": st.instances,
    })
}

fn tasks_json(c: &QueueCounts, now_ms: u64) -> Value {
    json!({
        "enqueued": c.enqueued,
        "running": c.running,
        "retrying": c.retrying,
        "succeeded": c.succeeded,
        "failed": c.failed,
        "stopped": c.stopped,
        "expired": c.expired,
        "oldest_waiting_age_s": c.oldest_waiting_ms.map(|t| now_ms.saturating_sub(t) as f64 / 1000.0),
    })
}

/// Sums over every function, for the cards at the top of the page.
#[derive(Default)]
struct Totals {
    functions: usize,
    instances: usize,
    busy: u64,
    slots: u64,
    in_flight: u64,
    queue_depth: u64,
    requests_total: u64,
    errors_total: u64,
    requests_per_s: f64,
    errors_per_s: f64,
    cold_starts_total: u64,
    /// Enqueued + Retrying; `None` while no task store answered.
    tasks_waiting: Option<u64>,
    tasks_running: Option<u64>,
    series: Vec<u64>,
}

impl Totals {
    fn add(&mut self, st: &FunctionState, w: &WindowSnapshot, tasks: Option<&QueueCounts>) {
        self.functions += 1;
        self.instances += st.instances.len();
        for i in &st.instances {
            self.busy += u64::from(i.busy);
            self.slots += u64::from(i.concurrency);
        }
        self.in_flight += u64::from(st.in_flight);
        self.queue_depth += st.queued as u64;
        self.requests_total += w.requests_total;
        self.errors_total += w.errors_total;
        self.requests_per_s += w.requests_per_s;
        self.errors_per_s += w.errors_per_s;
        self.cold_starts_total += w.cold_starts_total;
        if let Some(c) = tasks {
            *self.tasks_waiting.get_or_insert(0) += c.enqueued + c.retrying;
            *self.tasks_running.get_or_insert(0) += c.running;
        }
        self.series.resize(w.series.len().max(self.series.len()), 0);
        for (t, &n) in self.series.iter_mut().zip(&w.series) {
            *t += u64::from(n);
        }
    }

    fn json(&self) -> Value {
        json!({
            "functions": self.functions,
            "instances": self.instances,
            "busy": self.busy,
            "slots": self.slots,
            "in_flight": self.in_flight,
            "queue_depth": self.queue_depth,
            "requests_total": self.requests_total,
            "errors_total": self.errors_total,
            "requests_per_s": self.requests_per_s,
            "errors_per_s": self.errors_per_s,
            "cold_starts_total": self.cold_starts_total,
            "tasks_waiting": self.tasks_waiting,
            "tasks_running": self.tasks_running,
            "series": self.series,
        })
    }
}

/// One service's functions and their summed numbers.
struct Service {
    name: String,
    functions: Vec<String>,
    instances: usize,
    requests_total: u64,
    errors_total: u64,
    requests_per_s: f64,
    errors_per_s: f64,
}

impl Service {
    fn new(name: &str) -> Self {
        Service {
            name: name.to_string(),
            functions: Vec::new(),
            instances: 0,
            requests_total: 0,
            errors_total: 0,
            requests_per_s: 0.0,
            errors_per_s: 0.0,
        }
    }

    fn add(&mut self, id: &str, st: &FunctionState, w: &WindowSnapshot) {
        self.functions.push(id.to_string());
        self.instances += st.instances.len();
        self.requests_total += w.requests_total;
        self.errors_total += w.errors_total;
        self.requests_per_s += w.requests_per_s;
        self.errors_per_s += w.errors_per_s;
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "functions": self.functions,
            "instances": self.instances,
            "requests_total": self.requests_total,
            "errors_total": self.errors_total,
            "requests_per_s": self.requests_per_s,
            "errors_per_s": self.errors_per_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_small_and_self_contained() {
        assert!(PAGE.len() < 30 * 1024, "{} bytes", PAGE.len());
        for external in ["http://", "https://", "//fonts", "@import", "url("] {
            // The SVG namespace URI is an identifier, not a fetch.
            let hits = PAGE
                .match_indices(external)
                .filter(|(i, _)| !PAGE[*i..].starts_with("http://www.w3.org/2000/svg"))
                .count();
            assert_eq!(hits, 0, "page refers to {external}");
        }
        // CSP-friendly: no inline handlers, no eval, exactly one script and one style element.
        for banned in [
            " onclick=",
            " onload=",
            " onsubmit=",
            "eval(",
            "new Function",
        ] {
            assert!(!PAGE.contains(banned), "{banned}");
        }
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        assert!(inline(PAGE, "script").contains("/admin/overview"));
        assert!(inline(PAGE, "style").contains("--bg"));
    }

    #[test]
    fn csp_hashes_the_inline_parts() {
        // SHA-256("abc"), the FIPS 180-2 example.
        assert_eq!(
            sha256_b64(b"abc"),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        let v = csp().to_str().unwrap();
        assert!(
            v.starts_with("default-src 'none'; script-src 'sha256-"),
            "{v}"
        );
        assert!(v.contains(&sha256_b64(inline(PAGE, "script").as_bytes())));
        assert!(v.contains("connect-src 'self'"));
    }
}
