//! Operators: the admin API, config check and reload, certificate reload, connection limits.

use crate::harness::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[tokio::test]
async fn admin_api_needs_its_token() {
    let a = Backend::start("a");
    let gw = Gateway::start(&one_function(&[a.url()], "instance_concurrency = 3", ""));
    let mut c = gw.tls().connect(gw.admin, false).await;
    // Probes need no token.
    let r = c.send(Method::GET, "/healthz", &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = c.send(Method::GET, "/readyz", &[], Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    // Everything else does.
    for path in ["/metrics", "/admin/functions"] {
        let r = c.send(Method::GET, path, &[], Bytes::new()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(r.error_code(), "unauthorized");
        let r = c
            .send(
                Method::GET,
                path,
                &[("authorization", "Bearer wrong")],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(gw.get("/echo/x").await.status, StatusCode::OK);
    let f = gw.admin_json("/admin/functions").await;
    let func = &f["functions"][0];
    assert_eq!(func["id"], "demo/echo");
    assert_eq!(func["instance_concurrency"], 3);
    assert_eq!(
        func["instances"][0]["id"],
        format!("echo@{}", a.addr).as_str()
    );
    assert_eq!(func["instances"][0]["kind"], "provisioned");
    assert_eq!(func["instances"][0]["busy"], 0);
    let inst = gw.admin_json("/admin/functions/demo/echo/instances").await;
    assert_eq!(inst["instances"].as_array().unwrap().len(), 1);

    let m = gw.admin(Method::GET, "/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    let m = m.text();
    for needle in [
        "fngate_invocations_total{function=\"demo/echo\",status=\"2xx\"} 1",
        "fngate_invocation_duration_seconds_bucket{function=\"demo/echo\"",
        "fngate_in_flight{function=\"demo/echo\"} 0",
        "fngate_queue_depth{function=\"demo/echo\"} 0",
        "fngate_connections_total{listener=\"public\"}",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
}

#[tokio::test]
async fn check_reports_every_problem_with_its_path() {
    let dir = TempDir::new("check");
    let bad = dir.0.join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[[service]]
name = "demo"
[[service.function]]
name = "echo"
colour = "blue"
backend = { kind = "static", endpoints = ["http://127.0.0.1:9001"] }
"#,
    )
    .unwrap();
    let out = std::process::Command::new(fngate_bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service[0].function[0].colour: unknown field `colour`"),
        "{err}"
    );

    std::fs::write(
        &bad,
        r#"
[[gpu]]
type = "A10"
memory_gb = 24
[[service]]
name = "demo"
[[service.function]]
name = "echo"
instance_concurrency = 0
timeout = "30"
backend = { kind = "static", endpoints = ["http://127.0.0.1"] }
gpu = { type = "A10", memory_gb = 30 }
[[trigger]]
name = "t"
kind = "http"
function = "demo/nope"
"#,
    )
    .unwrap();
    let out = std::process::Command::new(fngate_bin())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "6 problem(s)",
        "service[0].function[0].gpu: GPU placement needs a process backend",
        "service[0].function[0].instance_concurrency: 0 is outside 1..=10000",
        "service[0].function[0].timeout: `30` has no unit",
        "service[0].function[0].backend.endpoints[0]: `http://127.0.0.1` needs an explicit port",
        "service[0].function[0].gpu.memory_gb: 30 exceeds A10 cards (24 GB)",
        "trigger[0].function: no function `demo/nope`",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }

    // `serve` refuses the same file and says why.
    let out = std::process::Command::new(fngate_bin())
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not starting"));

    // The shipped configs are valid.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    for f in ["config/demo.toml", "config/reference.toml"] {
        // The demo's webhook token comes from the environment scripts/demo.sh sets.
        let out = std::process::Command::new(fngate_bin())
            .args(["check", "--config"])
            .arg(root.join(f))
            .env("FNGATE_DEMO_EVENT_TOKEN", "demo-event-token-0123456789")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn reload_applies_good_config_and_rejects_bad_one() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let gw = Gateway::start(&one_function(&[a.url()], "", ""));
    assert_eq!(gw.get("/echo/x").await.json()["instance"], "a");

    // A request in flight across reloads finishes normally.
    let tls = gw.tls();
    let addr = gw.public;
    let slow = tokio::spawn(async move {
        tls.connect(addr, false)
            .await
            .send(Method::GET, "/echo/?sleep_ms=800", &[], Bytes::new())
            .await
    });
    eventually("slow request running", Duration::from_secs(5), || async {
        a.stats().await["in_flight"] == 1
    })
    .await;

    // Bad: an unknown key and a bad value. Nothing changes; every problem comes back.
    gw.write_config(&one_function(&[b.url()], "colour = \"red\"", ""));
    let r = gw.admin(Method::POST, "/admin/reload").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "invalid_config");
    assert!(
        v["error"]["problems"][0]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{v}"
    );
    gw.write_config(&one_function(
        &[b.url()],
        "timeout = \"soon\"\nmax_queued = -1",
        "",
    ));
    let r = gw.admin(Method::POST, "/admin/reload").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    assert_eq!(
        gw.get("/echo/x").await.json()["instance"],
        "a",
        "old config still serving"
    );

    // Good: new endpoint and a new trigger path.
    gw.write_config(
        &one_function(&[b.url()], "", "").replace("path = \"/echo\"", "path = \"/v2\""),
    );
    let r = gw.admin(Method::POST, "/admin/reload").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["report"]["functions_updated"][0], "demo/echo");
    let r = gw.get("/v2/x").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["instance"], "b");
    assert_eq!(gw.get("/echo/x").await.status, StatusCode::NOT_FOUND);

    let r = slow.await.unwrap();
    assert_eq!(
        r.status,
        StatusCode::OK,
        "in-flight request survived the reload"
    );
    assert_eq!(r.json()["instance"], "a");

    // SIGHUP reloads too (here: back to the first backend).
    gw.write_config(&one_function(&[a.url()], "", ""));
    let pid = gw.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    eventually("SIGHUP reload", Duration::from_secs(5), || async {
        gw.get("/echo/x").await.status == StatusCode::OK
    })
    .await;
}

fn write_cert(
    dir: &std::path::Path,
    cn: &str,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.signed_by(&key, issuer).unwrap();
    // Key first, then cert, the way cert managers usually write them.
    std::fs::write(dir.join("key.pem.tmp"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("cert.pem.tmp"), cert.pem()).unwrap();
    std::fs::rename(dir.join("key.pem.tmp"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.pem.tmp"), dir.join("cert.pem")).unwrap();
    cert.der().to_vec()
}

#[tokio::test]
async fn certificate_reload_without_dropping_connections() {
    let a = Backend::start("a");
    let dir = TempDir::new("certs");
    let certs = dir.0.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    // Our own CA for this test.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(certs.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let first = write_cert(&certs, "first", &issuer);

    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         admin_token = {{ env = \"FNGATE_TEST_ADMIN_TOKEN\" }}\ndata_dir = \"data\"\n\
         tls = {{ cert = \"certs/cert.pem\", key = \"certs/key.pem\", reload_interval = \"200ms\" }}\n{}",
        one_function(&[a.url()], "", "")
    );
    let gw = Gateway::start_in(dir, &cfg, &[]);
    let tls = Tls::trusting(&certs.join("ca.pem"));
    let mut old = tls.connect(gw.public, false).await;
    assert_eq!(old.peer_cert.as_deref(), Some(first.as_slice()));
    assert_eq!(
        old.send(Method::GET, "/echo/1", &[], Bytes::new())
            .await
            .status,
        StatusCode::OK
    );

    let second = write_cert(&certs, "second", &issuer);
    eventually("new certificate served", Duration::from_secs(10), || {
        let tls = tls.clone();
        let second = second.clone();
        let addr = gw.public;
        async move { tls.connect(addr, false).await.peer_cert.as_deref() == Some(second.as_slice()) }
    })
    .await;
    // The connection made before the swap keeps working.
    assert_eq!(
        old.send(Method::GET, "/echo/2", &[], Bytes::new())
            .await
            .status,
        StatusCode::OK
    );

    // A broken pair is refused and the current certificate stays.
    std::fs::write(certs.join("cert.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let c = tls.connect(gw.public, false).await;
    assert_eq!(c.peer_cert.as_deref(), Some(second.as_slice()));
    assert!(gw.stderr().contains("TLS certificate reload failed"));
}

#[tokio::test]
async fn header_limits_and_slowloris() {
    let a = Backend::start("a");
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nplaintext_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         admin_token = {{ env = \"FNGATE_TEST_ADMIN_TOKEN\" }}\ndata_dir = \"data\"\n\
         [server.limits]\nmax_header_bytes = \"4KiB\"\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n{}",
        one_function(&[a.url()], "", "")
    );
    let gw = Gateway::start(&cfg);
    let plain = gw.plaintext.unwrap();

    // Oversized headers: 431.
    let big = "x".repeat(8 * 1024);
    let r = gw
        .request(Method::GET, "/echo/", &[("x-big", &big)], Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // Slowloris: a head that never completes is cut at header_read_timeout.
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(plain).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /echo/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(200));
        let _ = s.write_all(b"a");
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );

    // An idle TLS connection is closed after idle_timeout (h2 has no header timer).
    let t = Instant::now();
    let mut c = gw.tls().connect(gw.public, true).await;
    assert_eq!(
        c.send(Method::GET, "/echo/", &[], Bytes::new())
            .await
            .status,
        StatusCode::OK
    );
    eventually("idle h2 connection closed", Duration::from_secs(6), || {
        let closed = c.is_closed();
        async move { closed }
    })
    .await;
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
}
