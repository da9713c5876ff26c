//! Triggers: custom paths and hosts, the canonical path, 404/405/401, forwarded headers, the log line.

use crate::harness::*;
use bytes::Bytes;
use http::{Method, StatusCode};

#[tokio::test]
async fn routes_triggers_and_canonical_paths() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let gw = Gateway::start_in(
        TempDir::new("routing"),
        &format!(
            r#"
[[service]]
name = "demo"

[[service.function]]
name = "echo"
backend = {{ kind = "static", endpoints = ["{a}"] }}

[[service.function]]
name = "vhost"
backend = {{ kind = "static", endpoints = ["{b}"] }}

[[service.function]]
name = "private"
backend = {{ kind = "static", endpoints = ["{b}"] }}

[[trigger]]
name = "echo-http"
kind = "http"
function = "demo/echo"
path = "/echo"
methods = ["GET", "POST"]

[[trigger]]
name = "by-host"
kind = "http"
function = "demo/vhost"
host = "api.localhost"

[[trigger]]
name = "secured"
kind = "http"
function = "demo/private"
path = "/private"
auth = {{ bearer = {{ env = "PRIVATE_TOKEN" }} }}
"#,
            a = a.url(),
            b = b.url()
        ),
        &[("PRIVATE_TOKEN", "let-me-in")],
    );

    // Custom path, prefix stripped, query kept; gateway headers on the way in and out.
    let r = gw.get("/echo/some/path?q=1&r=two").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["instance"], "a");
    assert_eq!(v["path"], "/some/path");
    assert_eq!(v["query"], "q=1&r=two");
    let rid = r.header("x-fngate-request-id").unwrap().to_string();
    assert_eq!(rid.len(), 16);
    assert_eq!(v["headers"]["x-fngate-request-id"], rid.as_str());
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    assert_eq!(v["headers"]["x-forwarded-host"], "localhost");
    assert_eq!(
        r.header("x-fngate-instance-id").unwrap(),
        format!("echo@{}", a.addr)
    );
    assert_eq!(r.header("x-fngate-instance-kind"), Some("provisioned"));

    // Canonical path.
    let r = gw.get("/demo/echo/x").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["path"], "/x");

    // Host trigger takes every path on its host.
    let mut c = gw.tls().connect(gw.public, false).await;
    let r = c
        .send(
            Method::GET,
            "/anything",
            &[("host", "API.localhost:443")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["instance"], "b");

    // 404, 405 with Allow, both with the JSON error body.
    let r = gw.get("/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "not_found");
    let r = gw.get("/echoes").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "segment-aware prefix");
    let r = gw
        .request(Method::DELETE, "/echo/x", &[], Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("GET, POST"));
    assert_eq!(r.error_code(), "method_not_allowed");
    let r = gw
        .request(Method::PUT, "/demo/echo/x", &[], Bytes::new())
        .await;
    assert_eq!(
        r.status,
        StatusCode::METHOD_NOT_ALLOWED,
        "canonical path takes the trigger's methods"
    );

    // Bearer auth: 401 without or with a wrong token, through with the right one; the gateway's
    // token is not passed to the function.
    let r = gw.get("/private/x").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.error_code(), "unauthorized");
    let r = gw
        .request(
            Method::GET,
            "/private/x",
            &[("authorization", "Bearer let-me-out")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = gw
        .request(Method::GET, "/demo/private/x", &[], Bytes::new())
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "canonical path takes the trigger's auth"
    );
    let r = gw
        .request(
            Method::GET,
            "/private/x",
            &[("authorization", "Bearer let-me-in")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json()["headers"].get("authorization").is_none());

    // The admin API is not on the public listener.
    let r = gw.get("/admin/functions").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // One log line per invocation with the documented fields.
    let line = gw.log_line(&rid).await;
    assert_eq!(line["kind"], "invocation");
    assert_eq!(line["trigger"], "echo-http");
    assert_eq!(line["function"], "demo/echo");
    assert_eq!(line["instance_id"], format!("echo@{}", a.addr).as_str());
    assert_eq!(line["instance_kind"], "provisioned");
    assert_eq!(line["status"], 200);
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/echo/some/path");
    assert!(line["error"].is_null(), "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() > 0);
    for key in [
        "ts",
        "queue_wait_ms",
        "upstream_ms",
        "duration_ms",
        "client",
        "bytes_in",
    ] {
        assert!(line.get(key).is_some(), "missing {key} in {line}");
    }
    // The parts never add up to more than the whole: one clock reading ends both.
    assert!(
        line["upstream_ms"].as_f64().unwrap() <= line["duration_ms"].as_f64().unwrap(),
        "{line}"
    );
    // Fields without a value are left out: no cold start, no error.
    for key in ["cold_start_ms", "error", "task_id"] {
        assert!(line.get(key).is_none(), "{key} in {line}");
    }
}

#[tokio::test]
async fn http2_by_alpn_and_curl() {
    let a = Backend::start("a");
    let gw = Gateway::start(&one_function(&[a.url()], "", ""));
    let mut c = gw.tls().connect(gw.public, true).await;
    assert!(c.h2, "server must pick h2 by ALPN");
    // Several streams on one connection.
    for i in 0..3 {
        let r = c
            .send(
                Method::POST,
                &format!("/echo/h2/{i}"),
                &[],
                Bytes::from_static(b"hello"),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["body_bytes"], 5);
    }

    // curl (a different TLS and HTTP/2 stack) with --http2, trusting the generated CA.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&gw.ca)
        .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
        .arg(format!("https://localhost:{}/echo/curl", gw.public.port()))
        .output()
        .expect("curl is installed");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn plaintext_listener_only_when_configured() {
    let a = Backend::start("a");
    // Without plaintext_listen, listeners.json says null.
    let gw = Gateway::start(&one_function(&[a.url()], "", ""));
    assert!(gw.plaintext.is_none());
    drop(gw);

    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nplaintext_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         admin_token = {{ env = \"FNGATE_TEST_ADMIN_TOKEN\" }}\ndata_dir = \"data\"\n{}",
        one_function(&[a.url()], "", "")
    );
    let gw = Gateway::start(&cfg);
    let addr = gw.plaintext.expect("plaintext listener bound");
    let r = plain_request(addr, Method::GET, "/echo/plain", Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "http");
}
