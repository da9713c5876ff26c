//! Forwarding: streaming both ways, backend failures (502), timeouts (504), body limits (413).

use crate::harness::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use std::time::{Duration, Instant};

#[tokio::test]
async fn sse_tokens_arrive_one_by_one() {
    let a = Backend::start("a");
    let gw = Gateway::start(&one_function(&[a.url()], "", ""));
    for h2 in [false, true] {
        let mut c = gw.tls().connect(gw.public, h2).await;
        let start = Instant::now();
        let body = Bytes::new();
        let resp = c
            .send_streaming(
                Method::GET,
                "/echo/stream?sse=5&interval_ms=150",
                &[],
                http_body_util::Full::new(body)
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        let mut arrivals = Vec::new();
        let mut text = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            if let Some(d) = frame.data_ref() {
                let chunk = String::from_utf8_lossy(d).into_owned();
                for _ in chunk.matches("data: token") {
                    arrivals.push(start.elapsed());
                }
                text.push_str(&chunk);
            }
        }
        assert_eq!(arrivals.len(), 5, "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"));
        // Each token is delivered when produced, not all at the end.
        for w in arrivals.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                gap >= Duration::from_millis(80),
                "tokens bunched: {arrivals:?}"
            );
        }
        assert!(
            arrivals[4] - arrivals[0] >= Duration::from_millis(450),
            "{arrivals:?}"
        );
    }
}

#[tokio::test]
async fn request_body_streams_to_the_backend_and_back() {
    let a = Backend::start("a");
    let gw = Gateway::start(&one_function(&[a.url()], "max_body = \"4MiB\"", ""));
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = gw
        .request(
            Method::POST,
            "/echo/up?echo_body=1",
            &[("content-type", "application/x-test")],
            payload.clone().into(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/x-test"));
    assert_eq!(r.body.len(), payload.len());
    assert!(r.body == payload);
    let rid = r.header("x-fngate-request-id").unwrap().to_string();
    let line = gw.log_line(&rid).await;
    assert_eq!(line["bytes_in"], 3_000_000);
    assert_eq!(line["bytes_out"], 3_000_000);
}

#[tokio::test]
async fn body_limit_gives_413() {
    let a = Backend::start("a");
    let gw = Gateway::start(&one_function(&[a.url()], "max_body = \"1KiB\"", ""));
    // Declared length over the limit: refused before the backend sees anything.
    let r = gw
        .request(Method::POST, "/echo/", &[], Bytes::from(vec![b'x'; 2048]))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.error_code(), "body_too_large");
    assert_eq!(a.stats().await["requests"], 0);

    // Chunked (no Content-Length): cut when it passes the limit.
    let mut c = gw.tls().connect(gw.public, false).await;
    let body = chunked(vec![Bytes::from(vec![b'y'; 512]); 8]);
    let resp = c
        .send_streaming(Method::POST, "/echo/", &[], body)
        .await
        .unwrap();
    let r = Resp::collect(resp).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());

    // Within the limit is fine.
    let r = gw
        .request(Method::POST, "/echo/", &[], Bytes::from(vec![b'x'; 1024]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn backend_down_crash_and_reset_give_502() {
    // A port with nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let a = Backend::start("a");
    let gw = Gateway::start(&format!(
        r#"
[[service]]
name = "demo"
[[service.function]]
name = "down"
backend = {{ kind = "static", endpoints = ["http://{dead}"] }}
[[service.function]]
name = "echo"
backend = {{ kind = "static", endpoints = ["{a}"] }}
[[trigger]]
name = "down"
kind = "http"
function = "demo/down"
path = "/down"
[[trigger]]
name = "echo"
kind = "http"
function = "demo/echo"
path = "/echo"
"#,
        a = a.url()
    ));
    let r = gw.get("/down/x").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.error_code(), "upstream_unreachable");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("demo/down") && msg.contains(&format!("down@{dead}")),
        "{msg}"
    );

    let r = gw.get("/echo/x?reset=1").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.error_code(), "upstream_failed");
    assert!(r.text().contains(&format!("echo@{}", a.addr)));

    // Still healthy afterwards, and no slot leaked.
    assert_eq!(gw.get("/echo/x").await.status, StatusCode::OK);
    let r = gw.get("/echo/x?crash=1").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    let f = gw.admin_json("/admin/functions").await;
    for func in f["functions"].as_array().unwrap() {
        assert_eq!(func["in_flight"], 0, "{func}");
    }
    let m = gw.admin(Method::GET, "/metrics").await.text();
    assert!(
        m.contains("fngate_upstream_errors_total{function=\"demo/down\",kind=\"connect\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn function_timeout_gives_504_and_frees_the_slot() {
    let a = Backend::start("a");
    let gw = Gateway::start(&one_function(
        &[a.url()],
        "instance_concurrency = 1\ntimeout = \"400ms\"",
        "",
    ));
    let t = Instant::now();
    let r = gw.get("/echo/?sleep_ms=3000").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.error_code(), "upstream_timeout");
    assert!(t.elapsed() < Duration::from_millis(1500));
    eventually("backend call aborted", Duration::from_secs(5), || async {
        a.stats().await["in_flight"] == 0
    })
    .await;
    let r = gw.get("/echo/ok").await;
    assert_eq!(r.status, StatusCode::OK);

    // A stream that outlives the timeout is cut, and the slot comes back.
    let mut c = gw.tls().connect(gw.public, false).await;
    let resp = c
        .send_streaming(
            Method::GET,
            "/echo/?sse=20&interval_ms=100",
            &[],
            http_body_util::Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await;
    assert!(collected.is_err(), "stream must be cut at the timeout");
    eventually(
        "slot freed after cut stream",
        Duration::from_secs(5),
        || async { gw.admin_json("/admin/functions").await["functions"][0]["in_flight"] == 0 },
    )
    .await;
}
