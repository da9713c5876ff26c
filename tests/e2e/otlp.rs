//! OTLP metrics and logs (and traces over gRPC) against a real collector: rotel prints what it
//! receives; the tests read the metric points, log records and spans from that output.

use crate::harness::*;
use crate::traces::Rotel;
use http::{Method, StatusCode};
use std::time::Duration;

/// A service with a process function (its instance prints each request's `log` parameter to
/// stdout, and `err: …` to stderr) and a static one, with triggers at `/p` and `/s`.
fn config(telemetry: &str, service_log: &str, static_url: &str) -> String {
    format!(
        r#"
[telemetry]
{telemetry}

[[service]]
name = "demo"
{service_log}

[[service.function]]
name = "p"
max_queue_wait = "20s"
backend = {{ kind = "process", command = ["{}"], startup_timeout = "10s", stop_grace = "2s", readiness = {{ interval = "200ms" }} }}

[[service.function]]
name = "s"
backend = {{ kind = "static", endpoints = ["{static_url}"] }}

[[trigger]]
name = "p"
kind = "http"
function = "demo/p"
path = "/p"

[[trigger]]
name = "s"
kind = "http"
function = "demo/s"
path = "/s"
"#,
        backend_bin().display(),
    )
}

/// One metric data point as rotel prints it.
#[derive(Debug, Default, Clone)]
struct Point {
    metric: String,
    data_type: String,
    attrs: Vec<String>,
    /// `Value:` of a number point, `Count:` of a histogram point.
    value: String,
}

fn points(text: &str) -> Vec<Point> {
    let mut out: Vec<Point> = Vec::new();
    let (mut metric, mut data_type) = (String::new(), String::new());
    let mut in_attrs = false;
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("-> Name: ") {
            metric = v.to_owned();
        } else if let Some(v) = l.strip_prefix("-> DataType: ") {
            data_type = v.to_owned();
        } else if l.starts_with("NumberDataPoints #") || l.starts_with("HistogramDataPoints #") {
            out.push(Point {
                metric: metric.clone(),
                data_type: data_type.clone(),
                ..Default::default()
            });
            in_attrs = false;
        } else if l == "Data point attributes:" {
            in_attrs = true;
        } else if let (true, Some(v), Some(p)) = (in_attrs, l.strip_prefix("-> "), out.last_mut()) {
            p.attrs.push(v.to_owned());
        } else if let Some(p) = out.last_mut() {
            in_attrs = false;
            if let Some(v) = l
                .strip_prefix("Value: ")
                .or_else(|| l.strip_prefix("Count: "))
            {
                p.value = v.to_owned();
            }
        }
    }
    out
}

/// The newest point of `metric` with all of `attrs`.
fn latest(text: &str, metric: &str, attrs: &[&str]) -> Option<Point> {
    points(text)
        .into_iter()
        .rev()
        .find(|p| p.metric == metric && attrs.iter().all(|a| p.attrs.iter().any(|x| x == a)))
}

/// One log record: body, severity text and attribute lines (`key: Str(value)`).
#[derive(Debug, Default, Clone)]
struct Record {
    body: String,
    severity: String,
    trace: String,
    attrs: Vec<String>,
}

fn records(text: &str) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("LogRecord #") {
            out.push(Record::default());
        } else if let Some(r) = out.last_mut() {
            if let Some(v) = l.strip_prefix("Body: ") {
                r.body = v.to_owned();
            } else if let Some(v) = l.strip_prefix("SeverityText: ") {
                r.severity = v.to_owned();
            } else if l.starts_with("Trace ID") {
                r.trace = l
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
                    .unwrap_or_default();
            } else if let Some(v) = l.strip_prefix("-> ") {
                r.attrs.push(v.to_owned());
            }
        }
    }
    out
}

impl Record {
    fn has(&self, attr: &str) -> bool {
        self.attrs.iter().any(|a| a == attr)
    }
}

async fn wait_for(rotel: &Rotel, gw: &Gateway, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = rotel.text();
        if done(&text) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} not received; collector output (tail):\n{}\n\ngateway stderr:\n{}",
            &text[text.len().saturating_sub(6000)..],
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `n` requests to the process function; returns their request ids.
async fn send(gw: &Gateway, path: &str, n: usize, marker: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = gw
            .request(
                Method::GET,
                &format!("{path}/x?log={marker}-{i}"),
                &[],
                bytes::Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        ids.push(
            r.header("x-fngate-request-id")
                .unwrap_or_default()
                .to_owned(),
        );
    }
    ids
}

/// What both transports must deliver: the invocation counter equal to the requests sent, the
/// duration histogram's count, the invocation lines and the instance's output lines.
async fn check_metrics_and_logs(rotel: &Rotel, gw: &Gateway, ids: &[String], marker: &str) {
    let n = ids.len().to_string();
    wait_for(rotel, gw, "the invocation counter", |t| {
        latest(
            t,
            "fngate_invocations_total",
            &["function: Str(demo/p)", "status: Str(2xx)"],
        )
        .is_some_and(|p| p.value == n)
    })
    .await;
    let text = rotel.text();
    let p = latest(
        &text,
        "fngate_invocations_total",
        &["function: Str(demo/p)", "status: Str(2xx)"],
    )
    .unwrap();
    assert_eq!(p.data_type, "Sum", "{p:?}");
    let h = latest(
        &text,
        "fngate_invocation_duration_seconds",
        &["function: Str(demo/p)"],
    )
    .expect("duration histogram");
    assert_eq!(
        (h.data_type.as_str(), h.value.as_str()),
        ("Histogram", n.as_str()),
        "{h:?}"
    );
    let g = latest(&text, "fngate_in_flight", &["function: Str(demo/p)"]).expect("in-flight gauge");
    assert_eq!(
        (g.data_type.as_str(), g.value.as_str()),
        ("Gauge", "0"),
        "{g:?}"
    );

    let last = format!("Str(err: {marker}-{})", ids.len() - 1);
    wait_for(rotel, gw, "the log records", |t| {
        let r = records(t);
        ids.iter()
            .all(|id| r.iter().any(|x| x.has(&format!("request_id: Str({id})"))))
            && r.iter().any(|x| x.body == last)
    })
    .await;
    let recs = records(&rotel.text());
    let inv = recs
        .iter()
        .find(|r| r.has(&format!("request_id: Str({})", ids[0])))
        .unwrap();
    assert_eq!(inv.body, "Str(GET /p/x 200)", "{inv:?}");
    assert_eq!(inv.severity, "INFO");
    for want in [
        "kind: Str(invocation)",
        "service: Str(demo)",
        "function: Str(demo/p)",
        "trigger: Str(p)",
        "status: Int(200)",
        "method: Str(GET)",
        "instance_kind: Str(on-demand)",
    ] {
        assert!(inv.has(want), "{want} in {inv:#?}");
    }
    assert!(
        inv.attrs
            .iter()
            .any(|a| a.starts_with("instance_id: Str(demo-p-")),
        "{inv:#?}"
    );
    let out = recs
        .iter()
        .find(|r| r.body == format!("Str({marker}-0)"))
        .expect("the instance's stdout line");
    assert_eq!(out.severity, "INFO");
    for want in [
        "kind: Str(instance_log)",
        "stream: Str(stdout)",
        "function: Str(demo/p)",
    ] {
        assert!(out.has(want), "{want} in {out:#?}");
    }
    let err = recs.iter().find(|r| r.body == last).unwrap();
    assert!(
        err.has("stream: Str(stderr)") && err.severity == "WARN",
        "{err:#?}"
    );
}

#[tokio::test]
async fn metrics_logs_and_traces_reach_a_collector_over_grpc() {
    let rotel = tokio::task::spawn_blocking(Rotel::start).await.unwrap();
    let be = Backend::start("s");
    let gw = Gateway::start(&config(
        &format!(
            "otlp = {{ endpoint = \"http://127.0.0.1:{}\", protocol = \"grpc\" }}\ntraces = {{ sample_ratio = 1.0 }}\nmetrics = {{ otlp = true, interval = \"200ms\" }}\nlog = {{ stdout = false, otlp = true }}",
            rotel.grpc
        ),
        "",
        &be.url(),
    ));
    let ids = send(&gw, "/p", 3, "grpc-marker").await;
    check_metrics_and_logs(&rotel, &gw, &ids, "grpc-marker").await;

    // The span tree arrived over gRPC too: each invocation a root with its children.
    wait_for(&rotel, &gw, "the spans", |_| {
        rotel
            .spans()
            .iter()
            .filter(|s| s.name == "invocation")
            .count()
            >= 3
    })
    .await;
    let spans = rotel.spans();
    let root = spans
        .iter()
        .find(|s| {
            s.name == "invocation"
                && s.attrs
                    .iter()
                    .any(|a| a == &format!("fngate.request_id: Str({})", ids[0]))
        })
        .expect("the first request's span");
    assert!(root.parent.is_empty(), "{root:#?}");
    assert!(
        root.attrs
            .iter()
            .any(|a| a == "fngate.function: Str(demo/p)"),
        "{root:#?}"
    );
    let children: Vec<&str> = spans
        .iter()
        .filter(|s| s.trace == root.trace && s.parent == root.id)
        .map(|s| s.name.as_str())
        .collect();
    // The first request started the instance: its wait is the cold start.
    for want in ["trigger match", "cold start", "upstream call"] {
        assert!(children.contains(&want), "{want} in {children:?}");
    }
    // The invocation's log record carries its trace: a collector links the two.
    let recs = records(&rotel.text());
    let inv = recs
        .iter()
        .find(|r| r.has(&format!("request_id: Str({})", ids[0])))
        .unwrap();
    assert_eq!(inv.trace, root.trace, "{inv:#?}");
    assert!(
        inv.attrs.iter().all(|a| !a.starts_with("trace_id")),
        "{inv:#?}"
    );
}

#[tokio::test]
async fn metrics_and_service_logs_reach_a_collector_over_http() {
    let rotel = tokio::task::spawn_blocking(Rotel::start).await.unwrap();
    let be = Backend::start("s");
    // Only the service's lines go to the collector, and only there (inherit = false).
    let gw = Gateway::start(&config(
        &format!(
            "otlp = {{ endpoint = \"http://127.0.0.1:{}\" }}\ntraces = {{ sample_ratio = 0.0 }}\nmetrics = {{ otlp = true, interval = \"200ms\" }}\nlog = {{ stdout = true }}",
            rotel.http
        ),
        "log = { otlp = true, inherit = false }",
        &be.url(),
    ));
    let ids = send(&gw, "/p", 4, "http-marker").await;
    check_metrics_and_logs(&rotel, &gw, &ids, "http-marker").await;
    // The service's lines stayed out of the global stdout sink.
    let global = gw.log_lines();
    assert!(
        global.iter().all(|l| l["function"] != "demo/p"),
        "{global:#?}"
    );

    // A reload moves the service's lines back to the global sinks (log sinks follow a reload);
    // a changed push interval needs a restart, and the reload says so.
    gw.write_config(&config(
        &format!(
            "otlp = {{ endpoint = \"http://127.0.0.1:{}\" }}\ntraces = {{ sample_ratio = 0.0 }}\nmetrics = {{ otlp = true, interval = \"300ms\" }}\nlog = {{ stdout = true }}",
            rotel.http
        ),
        "",
        &be.url(),
    ));
    let r = gw.admin(Method::POST, "/admin/reload").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["report"]["restart_required"],
        serde_json::json!(["telemetry.metrics"])
    );
    let after = send(&gw, "/p", 1, "after-reload").await;
    eventually("the line on stdout", Duration::from_secs(5), || {
        let found = gw
            .log_lines()
            .iter()
            .any(|l| l["request_id"] == after[0].as_str());
        async move { found }
    })
    .await;
    // The OTLP sink would have exported it within a write round (20 ms) and one request.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !rotel.text().contains("after-reload"),
        "the service no longer sends to the collector"
    );
}

#[tokio::test]
async fn a_dead_collector_never_holds_up_requests() {
    // Nothing listens on this port: every export fails (connection refused).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let be = Backend::start("s");
    let gw = Gateway::start(&config(
        &format!(
            "otlp = {{ endpoint = \"http://127.0.0.1:{port}\", protocol = \"grpc\" }}\ntraces = {{ sample_ratio = 1.0 }}\nmetrics = {{ otlp = true, interval = \"100ms\" }}\nlog = {{ stdout = false, otlp = true }}"
        ),
        "",
        &be.url(),
    ));
    let t0 = std::time::Instant::now();
    for _ in 0..20 {
        let r = gw.get("/s/x").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // The failures are visible: lines dropped by the OTLP sink, failed exports of both kinds.
    eventually(
        "the export failures counted",
        Duration::from_secs(15),
        || async {
            metric(&gw, "fngate_log_lines_dropped_total", &["sink=\"otlp\""]).await >= 20.0
                && metric(
                    &gw,
                    "fngate_otlp_export_failures_total",
                    &["signal=\"logs\""],
                )
                .await
                    >= 1.0
                && metric(
                    &gw,
                    "fngate_otlp_export_failures_total",
                    &["signal=\"metrics\""],
                )
                .await
                    >= 1.0
        },
    )
    .await;
}
