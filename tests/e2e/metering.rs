//! Usage metering through the real gateway: a scripted workload against demo-backend with known
//! delays, its totals in `GET /admin/usage`, the log line and the metrics; the totals after a
//! SIGKILL restart; fair shares at concurrency 2; a provisioned instance billed by lifetime.
//!
//! Tolerance (docs/metering.md): a request holds its slot at least as long as the backend sleeps
//! and at most [`SLACK_S`] longer (forwarding, the response, a loaded 2-core CI machine).

use crate::harness::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;
use std::time::{Duration, Instant};

const SLACK_S: f64 = 0.15;
const PAID_TOKEN: &str = "paid-token-0123456789";

/// A gateway whose config dir holds the bearer token of the `paid` trigger.
fn start(config: &str) -> Gateway {
    let dir = TempDir::new("metering");
    std::fs::write(dir.0.join("paid-token"), PAID_TOKEN).unwrap();
    Gateway::start_in(dir, config, &[])
}

/// Two triggers on `demo/{function}`: `/free/…` (anonymous: no tenant) and `/paid/…` (bearer:
/// tenant `paid`).
fn triggers(function: &str) -> String {
    format!(
        r#"
[[trigger]]
name = "free"
kind = "http"
function = "demo/{function}"
path = "/free"

[[trigger]]
name = "paid"
kind = "http"
function = "demo/{function}"
path = "/paid"
auth = {{ bearer = {{ file = "paid-token" }} }}
"#
    )
}

fn process_function(name: &str, extra: &str) -> String {
    format!(
        r#"
[[service.function]]
name = "{name}"
max_queue_wait = "20s"
{extra}
backend = {{ kind = "process", command = ["{}"], startup_timeout = "10s", stop_grace = "2s", readiness = {{ interval = "200ms" }} }}
"#,
        backend_bin().display()
    )
}

async fn call(gw: &Gateway, tenant_paid: bool, sleep_ms: u64) -> String {
    let auth = format!("Bearer {PAID_TOKEN}");
    let (path, headers): (String, Vec<(&str, &str)>) = if tenant_paid {
        (
            format!("/paid/x?sleep_ms={sleep_ms}"),
            vec![("authorization", auth.as_str())],
        )
    } else {
        (format!("/free/x?sleep_ms={sleep_ms}"), vec![])
    };
    let r = gw.request(Method::GET, &path, &headers, Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.header("x-fngate-request-id").unwrap().to_string()
}

async fn usage(gw: &Gateway, group_by: &str) -> Value {
    gw.admin_json(&format!("/admin/usage?group_by={group_by}"))
        .await
}

/// The `totals` entry whose group key is `key`.
fn total<'a>(u: &'a Value, field: &str, key: &str) -> &'a Value {
    u["totals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t[field] == key)
        .unwrap_or_else(|| panic!("no totals for {field}={key:?} in {u}"))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} is not a number in {v}"))
}

fn assert_between(what: &str, v: f64, lo: f64, hi: f64) {
    assert!(v >= lo && v <= hi, "{what} = {v}, expected {lo}..={hi}");
}

#[tokio::test]
async fn usage_matches_a_scripted_workload_and_survives_a_restart() {
    let config = format!(
        "[[gpu]]\ntype = \"A10\"\nmemory_gb = 24\ncount = 1\n\n[[service]]\nname = \"demo\"\n{}{}",
        process_function(
            "work",
            "cpu = 2\nmemory = \"512MiB\"\ngpu = { type = \"A10\", memory_gb = 6 }\nscaling = { max_instances = 1, idle_timeout = \"5m\" }"
        ),
        triggers("work")
    );
    let mut gw = start(&config);
    // Warm the on-demand instance (the cold start is not busy time), then the script: tenant
    // `paid` 3 × 200 ms, no tenant 2 × 300 ms (the warm-up's 0 ms included: 3 invocations).
    call(&gw, false, 0).await;
    let mut paid_ids = Vec::new();
    for _ in 0..3 {
        paid_ids.push(call(&gw, true, 200).await);
    }
    for _ in 0..2 {
        call(&gw, false, 300).await;
    }

    // The log line carries the invocation's usage.
    let line = gw.log_line(&paid_ids[0]).await;
    let u = &line["usage"];
    assert_eq!(u["billing"], "request", "{line}");
    assert_eq!(u["gpu_type"], "A10", "{line}");
    let busy = f(u, "busy_s");
    assert_between("log busy_s", busy, 0.2, 0.2 + SLACK_S);
    assert!((f(u, "vcpu_s") - 2.0 * busy).abs() < 1e-9, "{line}");
    assert!((f(u, "memory_gb_s") - 0.5 * busy).abs() < 1e-9, "{line}");
    assert!((f(u, "gpu_gb_s") - 6.0 * busy).abs() < 1e-9, "{line}");
    assert_eq!(line["tenant"], "paid");

    let by_tenant = usage(&gw, "tenant").await;
    let paid = total(&by_tenant, "tenant", "paid");
    assert_eq!(paid["invocations"], 3, "{by_tenant}");
    assert_eq!(paid["gpu_type"], "A10");
    let b = f(paid, "busy_s");
    assert_between("paid busy_s", b, 0.6, 0.6 + 3.0 * SLACK_S);
    assert_between(
        "paid vcpu_s",
        f(paid, "vcpu_s"),
        1.2,
        2.0 * (0.6 + 3.0 * SLACK_S),
    );
    assert!((f(paid, "gpu_gb_s") - 6.0 * b).abs() < 1e-6, "{paid}");
    assert!((f(paid, "memory_gb_s") - 0.5 * b).abs() < 1e-6, "{paid}");
    let free = total(&by_tenant, "tenant", "");
    assert_eq!(free["invocations"], 3, "{by_tenant}");
    assert_between("free busy_s", f(free, "busy_s"), 0.6, 0.6 + 3.0 * SLACK_S);
    eprintln!(
        "scripted: paid busy_s {b:.4} (script 0.6), free busy_s {:.4} (script 0.6)",
        f(free, "busy_s")
    );

    let by_function = usage(&gw, "function").await;
    let work = total(&by_function, "function", "demo/work");
    assert_eq!(work["invocations"], 6, "{by_function}");
    assert!((f(work, "busy_s") - b - f(free, "busy_s")).abs() < 1e-6);
    assert!(!by_function["hours"].as_array().unwrap().is_empty());

    // Metrics count the same invocations, by tenant.
    let n = metric(
        &gw,
        "fngate_usage_invocations_total",
        &["function=\"demo/work\"", "tenant=\"paid\""],
    )
    .await;
    assert_eq!(n, 3.0);
    let ms = metric(
        &gw,
        "fngate_usage_gpu_gb_milliseconds_total",
        &["tenant=\"paid\""],
    )
    .await;
    assert!((ms / 1000.0 - f(paid, "gpu_gb_s")).abs() < 0.01, "{ms}");

    // The query flushed everything: a SIGKILL now loses nothing.
    gw.restart();
    let again = usage(&gw, "tenant").await;
    assert_eq!(again["totals"], by_tenant["totals"]);

    // Unqueried usage reaches the file within one flush interval.
    call(&gw, true, 100).await;
    let flush = f(&again, "flush_interval_s");
    tokio::time::sleep(Duration::from_secs_f64(flush + 1.0)).await;
    gw.restart();
    let after = usage(&gw, "tenant").await;
    assert_eq!(total(&after, "tenant", "paid")["invocations"], 4, "{after}");

    // A graceful stop (SIGTERM) flushes what it has before exiting.
    call(&gw, true, 0).await;
    let pid = rustix::process::Pid::from_raw(gw.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "{status}");
    gw.restart();
    let after = usage(&gw, "tenant").await;
    assert_eq!(total(&after, "tenant", "paid")["invocations"], 5, "{after}");

    // Bad parameters get clear 400s.
    for (q, want) in [
        ("group_by=colour", "group_by `colour`"),
        ("from=yesterday", "from: `yesterday`"),
        ("from=2000&to=1000", "must be before"),
        ("page=2", "unknown query parameter `page`"),
    ] {
        let r = gw.admin(Method::GET, &format!("/admin/usage?{q}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
        assert!(r.text().contains(want), "{q}: {}", r.text());
    }
    let r = gw
        .admin(
            Method::GET,
            "/admin/usage?from=2026-01-01T00:00:00Z&to=2026-01-01T05:00:00Z",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["totals"], serde_json::json!([]));
}

#[tokio::test]
async fn concurrency_two_splits_overlapping_requests() {
    let backend = Backend::start("m1");
    let config = format!(
        "[[service]]\nname = \"demo\"\n\n[[service.function]]\nname = \"pair\"\ninstance_concurrency = 2\n\
         backend = {{ kind = \"static\", endpoints = [\"{}\"] }}\n{}",
        backend.url(),
        triggers("pair")
    );
    let gw = start(&config);
    // A (no tenant) runs 1000 ms; B (`paid`) starts once A is at the backend, 200 ms later, and
    // runs 400 ms, wholly inside A: B is charged half its time, A the rest of the busy time.
    let t0 = Instant::now();
    let a = call(&gw, false, 1000);
    let b = async {
        eventually("A at the backend", Duration::from_secs(5), || async {
            backend.stats().await["in_flight"] == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        call(&gw, true, 400).await
    };
    let (a, b) = tokio::join!(a, b);
    let wall = t0.elapsed().as_secs_f64();
    let la = gw.log_line(&a).await;
    let lb = gw.log_line(&b).await;
    let (sa, sb) = (f(&la["usage"], "busy_s"), f(&lb["usage"], "busy_s"));
    // B shared all its slot time with A: it is charged half of it (its log's duration also
    // counts the moments before it had the slot).
    let b_time = f(&lb, "duration_ms") / 1000.0;
    assert_between("B's share", sb, 0.2, b_time / 2.0 + 0.001);
    // Together they are charged exactly the time the instance had work: A's slot time.
    let a_slot = f(&la, "duration_ms") / 1000.0;
    assert_between("A + B", sa + sb, 1.0, a_slot + 0.001);
    assert!(sa + sb <= wall, "{sa} + {sb} > {wall}");
    assert_between("A's share", sa, 0.8 - SLACK_S, 0.8 + SLACK_S);
    eprintln!(
        "concurrency 2: A {sa:.4} s (expected 0.8), B {sb:.4} s (expected 0.2), A's slot {a_slot:.4} s"
    );

    let by_tenant = usage(&gw, "tenant").await;
    let paid = total(&by_tenant, "tenant", "paid");
    let free = total(&by_tenant, "tenant", "");
    assert!((f(paid, "busy_s") - sb).abs() < 1e-6, "{by_tenant}");
    assert!((f(free, "busy_s") - sa).abs() < 1e-6, "{by_tenant}");
    // Static endpoints are billed by request time with the default spec (1 vCPU, 1 GiB).
    assert!((f(paid, "vcpu_s") - sb).abs() < 1e-6);
    assert!((f(free, "memory_gb_s") - sa).abs() < 1e-6);
}

#[tokio::test]
async fn provisioned_instance_is_metered_for_its_lifetime() {
    let t0 = Instant::now();
    let config = format!(
        "[[service]]\nname = \"demo\"\n{}{}",
        process_function(
            "held",
            "cpu = 0.5\nscaling = { max_instances = 1, provisioned = 1 }"
        ),
        triggers("held")
    );
    let gw = start(&config);
    let t_ready = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = gw.admin_json("/admin/functions/demo/held/instances").await;
            if v["instances"][0]["state"] == "ready" {
                break Instant::now();
            }
            assert!(Instant::now() < deadline, "no ready instance: {v}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let id = call(&gw, false, 100).await;
    let line = gw.log_line(&id).await;
    assert_eq!(line["instance_kind"], "provisioned");
    assert_eq!(line["usage"]["billing"], "reserved", "{line}");

    let t_query = Instant::now();
    let u = usage(&gw, "tenant").await;
    let reserved = total(&u, "tenant", "(reserved)");
    let life = f(reserved, "reserved_s");
    // Metered from ready up to the last upkeep tick (every 250 ms, later on a loaded machine)
    // before the query.
    let hi = (t_query - t0).as_secs_f64() + 0.05;
    let lo = (t_query - t_ready).as_secs_f64() - 0.75;
    assert_between("reserved_s", life, lo, hi);
    eprintln!("provisioned: reserved_s {life:.3} within {lo:.3}..={hi:.3}");
    assert!((f(reserved, "vcpu_s") - 0.5 * life).abs() < 1e-6, "{u}");
    assert_eq!(reserved["invocations"], 0);
    // The request counts for its tenant, but its resources are the reservation's.
    let free = total(&u, "tenant", "");
    assert_eq!(free["invocations"], 1);
    assert_between("busy_s", f(free, "busy_s"), 0.1, 0.1 + SLACK_S);
    assert_eq!(f(free, "vcpu_s"), 0.0);
}

/// Tenants from a policy plugin's decision split the totals; an async run is an invocation
/// metered to the tenant it was accepted with, whatever tenant header the caller sent.
#[tokio::test]
async fn plugin_tenants_and_async_runs_are_metered() {
    let backend = Backend::start("m2");
    let config = format!(
        r#"
[[plugin]]
name = "tenants"
path = "{}"
config = {{ keys = "key-abc=acme:0,key-def=globex:0", rate_per_second = "100", burst = "100" }}

[[service]]
name = "demo"

[[service.function]]
name = "api"
backend = {{ kind = "static", endpoints = ["{}"] }}

[[trigger]]
name = "api"
kind = "http"
function = "demo/api"
path = "/api"
plugins = ["tenants"]
"#,
        crate::plugins::wasm("tenant_policy").display(),
        backend.url()
    );
    let gw = start(&config);
    let send = |key: &'static str, extra: Vec<(&'static str, &'static str)>| {
        let gw = &gw;
        async move {
            let auth = format!("Bearer {key}");
            let mut h = vec![("authorization", auth.as_str())];
            h.extend(extra);
            gw.request(Method::GET, "/api/x?sleep_ms=100", &h, Bytes::new())
                .await
        }
    };
    for key in ["key-abc", "key-abc", "key-def"] {
        let r = send(key, vec![]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let r = send(
        "key-abc",
        vec![
            ("x-fngate-invocation-type", "async"),
            ("x-fngate-task-id", "metered_1"),
            ("x-fngate-tenant", "globex"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    eventually(
        "the async task succeeds",
        Duration::from_secs(10),
        || async {
            crate::async_tasks::task(&gw, "metered_1").await["task"]["state"] == "Succeeded"
        },
    )
    .await;

    // The attempt's log line carries its usage too.
    let attempt = gw
        .stderr()
        .lines()
        .find(|l| l.contains("async attempt") && l.contains("metered_1"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no attempt line:\n{}", gw.stderr()));
    let busy: f64 = attempt
        .split_once("busy_s=")
        .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no busy_s in {attempt}"));
    assert_between("attempt busy_s", busy, 0.1, 0.1 + SLACK_S);
    assert!(
        attempt.contains("billing=\"request\"") || attempt.contains("billing=request"),
        "{attempt}"
    );

    let u = usage(&gw, "tenant").await;
    let acme = total(&u, "tenant", "acme");
    assert_eq!(acme["invocations"], 3, "{u}");
    assert_between("acme busy_s", f(acme, "busy_s"), 0.3, 0.3 + 3.0 * SLACK_S);
    let globex = total(&u, "tenant", "globex");
    assert_eq!(globex["invocations"], 1, "{u}");
    assert_between("globex busy_s", f(globex, "busy_s"), 0.1, 0.1 + SLACK_S);
    assert_eq!(
        metric(&gw, "fngate_usage_invocations_total", &["tenant=\"acme\""]).await,
        3.0
    );
}
