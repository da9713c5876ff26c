//! The live dashboard: `GET /admin/overview` against traffic of known shape, what the page and
//! the overview give out without the token, and the page itself in headless Chromium
//! (`tests/browser/dashboard.mjs`, playwright-core), compared with the API under load.

use crate::harness::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The overview's entry for one function.
async fn function(gw: &Gateway, id: &str) -> serde_json::Value {
    let o = gw.admin_json("/admin/overview").await;
    o["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {o}"))
        .clone()
}

#[tokio::test]
async fn overview_and_page_give_nothing_without_the_token() {
    let a = Backend::start("a");
    let gw = Gateway::start(&one_function(&[a.url()], "", ""));
    let mut c = gw.tls().connect(gw.admin, false).await;
    for auth in [None, Some("Bearer wrong"), Some("Basic dGVzdA==")] {
        let h: Vec<(&str, &str)> = auth.map(|v| ("authorization", v)).into_iter().collect();
        let r = c
            .send(Method::GET, "/admin/overview", &h, Bytes::new())
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(r.error_code(), "unauthorized");
        assert!(!r.text().contains("demo/echo"), "{}", r.text());
    }
    let r = gw.admin(Method::POST, "/admin/overview").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // The page is a static shell: served without the token, holding no data, locked by a CSP.
    for path in ["/", "/dashboard"] {
        let r = c.send(Method::GET, path, &[], Bytes::new()).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        let csp = r.header("content-security-policy").unwrap();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'sha256-"),
            "{csp}"
        );
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        let html = r.text();
        assert!(html.len() < 30 * 1024, "{} bytes", html.len());
        assert!(html.contains("/admin/overview"));
        for secret in ["demo/echo", ADMIN_TOKEN, &a.addr.to_string()] {
            assert!(!html.contains(secret), "the page shell contains {secret}");
        }
        let r = c
            .send(Method::POST, path, &[("content-length", "0")], Bytes::new())
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "POST {path}");
    }
    // The public listener serves neither.
    assert_eq!(
        gw.get("/admin/overview").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(gw.get("/dashboard").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn overview_counts_requests_errors_latency_and_tasks() {
    let a = Backend::start("a");
    let gw = Gateway::start(&one_function(&[a.url()], "instance_concurrency = 4", ""));
    for i in 0..50 {
        let path = match i % 10 {
            0 => "/echo/x?status=503",           // 5 backend errors
            1 if i < 30 => "/echo/x?status=404", // 3 caller errors: not counted as errors
            _ => "/echo/x",
        };
        gw.get(path).await;
    }
    for i in 0..2 {
        let r = gw
            .request(
                Method::POST,
                "/echo/async",
                &[("x-fngate-invocation-type", "async")],
                Bytes::from(format!("{{\"n\":{i}}}")),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    // Both tasks run; the series only shows complete seconds, so wait past the current one.
    eventually(
        "both async tasks to succeed",
        Duration::from_secs(10),
        || async { function(&gw, "demo/echo").await["tasks"]["succeeded"] == 2 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let o = gw.admin_json("/admin/overview").await;
    let f = &o["functions"][0];
    assert_eq!(f["id"], "demo/echo");
    assert_eq!(f["service"], "demo");
    // 50 sync + 2 async accepts (202), each a finished invocation.
    assert_eq!(f["requests"]["total"], 52, "{f}");
    assert_eq!(f["requests"]["errors"], 5, "{f}");
    let series = f["requests"]["series"].as_array().unwrap();
    assert_eq!(
        series.len(),
        o["window"]["series_s"].as_u64().unwrap() as usize
    );
    assert_eq!(series.iter().map(|v| v.as_u64().unwrap()).sum::<u64>(), 52);
    let errors: u64 = f["requests"]["error_series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(errors, 5);
    assert!(f["requests"]["per_s"].as_f64().unwrap() > 0.0, "{f}");
    let p50 = f["latency_ms"]["p50"].as_f64().unwrap();
    let p99 = f["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p99 >= p50, "{f}");
    assert_eq!(f["latency_ms"]["samples"], 52);
    assert_eq!(f["queue_depth"], 0);
    assert_eq!(f["in_flight"], 0);
    assert_eq!(
        f["cold_starts"]["total"], 0,
        "static endpoints never cold-start"
    );
    let t = &f["tasks"];
    assert_eq!(t["succeeded"], 2, "{t}");
    assert_eq!(t["enqueued"], 0);
    assert_eq!(t["oldest_waiting_age_s"], serde_json::Value::Null);
    let inst = f["instances"].as_array().unwrap();
    assert_eq!(inst.len(), 1);
    assert_eq!(inst[0]["id"], format!("echo@{}", a.addr).as_str());
    assert_eq!(inst[0]["kind"], "provisioned");
    assert_eq!(inst[0]["state"], "ready");
    assert_eq!(inst[0]["concurrency"], 4);
    assert_eq!(inst[0]["busy"], 0);

    assert_eq!(o["totals"]["requests_total"], 52);
    assert_eq!(o["totals"]["errors_total"], 5);
    assert_eq!(o["totals"]["instances"], 1);
    assert_eq!(o["totals"]["slots"], 4);
    assert_eq!(o["totals"]["tasks_waiting"], 0);
    assert_eq!(o["services"][0]["name"], "demo");
    assert_eq!(o["services"][0]["functions"][0], "demo/echo");
    assert_eq!(o["services"][0]["requests_total"], 52);
    assert_eq!(o["queue"]["kind"], "embedded");

    // The same numbers as the invocation log.
    let logged = gw
        .settled_log_lines()
        .await
        .into_iter()
        .filter(|l| l["kind"] == "invocation" && l["function"] == "demo/echo")
        .count();
    assert_eq!(logged, 52);
}

/// What the browser test needs; `Err` says what is missing and how to get it.
fn browser_prerequisites() -> Result<(PathBuf, PathBuf), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("tests/browser/dashboard.mjs");
    let chromium =
        PathBuf::from(std::env::var("FNGATE_CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    if !chromium.exists() {
        return Err(format!(
            "{} is missing: `apt-get install chromium` (scripts/test.sh does it)",
            chromium.display()
        ));
    }
    if !root
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        return Err(
            "playwright-core is missing: `npm ci` in tests/browser (scripts/test.sh does it)"
                .into(),
        );
    }
    Ok((script, chromium))
}

#[tokio::test]
async fn dashboard_in_headless_chromium_agrees_with_the_api() {
    let (script, chromium) = match browser_prerequisites() {
        Ok(p) => p,
        Err(why) if std::env::var_os("FNGATE_SKIP_BROWSER").is_some() => {
            eprintln!("SKIP (FNGATE_SKIP_BROWSER): {why}");
            return;
        }
        Err(why) => panic!("{why}; set FNGATE_SKIP_BROWSER=1 to skip this test"),
    };
    let a = Backend::start("a");
    let b = Backend::start("b");
    // A static function on two endpoints, and a process function holding half of a GPU card.
    let config = format!(
        r#"
[[gpu]]
type = "A10"
memory_gb = 24
count = 1

{}
[[service]]
name = "ml"

[[service.function]]
name = "model"
instance_concurrency = 2
gpu = {{ type = "A10", memory_gb = 12 }}
scaling = {{ provisioned = 1, max_instances = 2 }}
backend = {{ kind = "process", command = ["{}"], startup_timeout = "10s", readiness = {{ interval = "100ms" }} }}

[[trigger]]
name = "model"
kind = "http"
function = "ml/model"
path = "/model"
"#,
        one_function(&[a.url(), b.url()], "instance_concurrency = 4", ""),
        backend_bin().display()
    );
    let gw = Gateway::start(&config);
    eventually(
        "the provisioned model instance",
        Duration::from_secs(20),
        || async {
            function(&gw, "ml/model").await["instances"]
                .as_array()
                .is_some_and(|l| l.len() == 1 && l[0]["state"] == "ready")
        },
    )
    .await;

    // A short load: 200 requests to demo/echo (10 of them backend errors) on 8 connections,
    // and a few sync and async calls of ml/model.
    let started = Instant::now();
    let mut load = Vec::new();
    for w in 0..8 {
        let tls = gw.tls();
        let addr = gw.public;
        load.push(tokio::spawn(async move {
            let mut c = tls.connect(addr, false).await;
            for i in 0..25 {
                let path = if (w * 25 + i) % 20 == 0 {
                    "/echo/x?status=500"
                } else {
                    "/echo/x"
                };
                c.send(Method::GET, path, &[], Bytes::new()).await;
            }
        }));
    }
    for _ in 0..10 {
        assert_eq!(gw.get("/model/x").await.status, StatusCode::OK);
    }
    for _ in 0..3 {
        let r = gw
            .request(
                Method::POST,
                "/model/a",
                &[("x-fngate-invocation-type", "async")],
                Bytes::from_static(b"{}"),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    for l in load {
        l.await.unwrap();
    }
    eprintln!("load sent in {:?}", started.elapsed());
    let echo = function(&gw, "demo/echo").await;
    assert_eq!(echo["requests"]["total"], 200, "{echo}");
    assert_eq!(echo["requests"]["errors"], 10, "{echo}");
    let model = function(&gw, "ml/model").await;
    assert_eq!(model["requests"]["total"], 13, "{model}");
    assert_eq!(model["instances"][0]["gpu"]["memory_gb"], 12, "{model}");
    assert_eq!(model["cold_starts"]["total"], 1, "{model}");

    let artifacts = fngate_bin()
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("test-artifacts");
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .args(["--url", &format!("https://127.0.0.1:{}", gw.admin.port())])
        .arg("--ca")
        .arg(&gw.ca)
        .arg("--screenshot")
        .arg(&shot)
        .arg("--chromium")
        .arg(&chromium)
        .args(["--function", "demo/echo", "--expect-requests", "200"])
        .env("FNGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser test did not finish in 180 s")
        .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- dashboard.mjs stdout ---\n{stdout}--- stderr ---\n{stderr}");
    assert!(out.status.success(), "dashboard.mjs failed: {}", out.status);
    assert!(stdout.contains("all checks passed"));
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
}
