//! Per-instance concurrency, the bounded queue (429), and slots freed on every kind of ending.

use crate::harness::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::time::{Duration, Instant};

#[tokio::test]
async fn concurrency_cap_holds_under_50_parallel_requests() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let gw = Gateway::start(&one_function(
        &[a.url(), b.url()],
        "instance_concurrency = 2\nmax_queued = 100\nmax_queue_wait = \"30s\"",
        "",
    ));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let tls = gw.tls();
        let addr = gw.public;
        tasks.push(tokio::spawn(async move {
            let mut c = tls.connect(addr, i % 2 == 0).await;
            c.send(Method::GET, "/echo/work?sleep_ms=60", &[], Bytes::new())
                .await
        }));
    }
    let mut per_instance = std::collections::HashMap::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        *per_instance
            .entry(r.json()["instance"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    for be in [&a, &b] {
        let s = be.stats().await;
        assert!(
            s["max_in_flight"].as_u64().unwrap() <= 2,
            "backend {} saw {} at once",
            be.id,
            s["max_in_flight"]
        );
        assert_eq!(s["in_flight"], 0);
    }
    assert_eq!(per_instance.values().sum::<i32>(), 50);
    assert_eq!(
        per_instance.len(),
        2,
        "both instances used: {per_instance:?}"
    );
    let f = gw.admin_json("/admin/functions").await;
    let f = &f["functions"][0];
    assert_eq!(f["in_flight"], 0);
    assert_eq!(f["queued"], 0);
}

#[tokio::test]
async fn full_queue_and_queue_timeout_get_429() {
    let a = Backend::start("a");
    let gw = Gateway::start(&one_function(
        &[a.url()],
        "instance_concurrency = 1\nmax_queued = 1\nmax_queue_wait = \"700ms\"",
        "",
    ));
    // One running (holds the only slot for 2 s), one queued.
    let tls = gw.tls();
    let addr = gw.public;
    let running = tokio::spawn({
        let tls = tls.clone();
        async move {
            tls.connect(addr, false)
                .await
                .send(Method::GET, "/echo/?sleep_ms=2000", &[], Bytes::new())
                .await
        }
    });
    eventually("first request running", Duration::from_secs(5), || async {
        a.stats().await["in_flight"] == 1
    })
    .await;
    let queued = tokio::spawn({
        let tls = tls.clone();
        async move {
            let t = Instant::now();
            let r = tls
                .connect(addr, false)
                .await
                .send(Method::GET, "/echo/", &[], Bytes::new())
                .await;
            (r, t.elapsed())
        }
    });
    eventually("second request queued", Duration::from_secs(5), || async {
        gw.admin_json("/admin/functions").await["functions"][0]["queued"] == 1
    })
    .await;

    // Queue full: refused at once.
    let t = Instant::now();
    let r = gw.get("/echo/").await;
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "429 must be quick"
    );
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.error_code(), "queue_full");
    assert_eq!(r.header("retry-after"), Some("1"));

    // The queued one gives up after max_queue_wait.
    let (r, waited) = queued.await.unwrap();
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.error_code(), "queue_timeout");
    assert!(r.header("retry-after").is_some());
    assert!(
        waited >= Duration::from_millis(650) && waited < Duration::from_millis(1800),
        "{waited:?}"
    );

    assert_eq!(running.await.unwrap().status, StatusCode::OK);
    // Metrics count both rejections.
    let m = gw.admin(Method::GET, "/metrics").await.text();
    assert!(
        m.contains("fngate_rejections_total{function=\"demo/echo\",reason=\"queue_full\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("fngate_rejections_total{function=\"demo/echo\",reason=\"queue_timeout\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn queued_request_takes_the_first_freed_slot() {
    let a = Backend::start("a");
    let gw = Gateway::start(&one_function(
        &[a.url()],
        "instance_concurrency = 1\nmax_queued = 10\nmax_queue_wait = \"10s\"",
        "",
    ));
    let tls = gw.tls();
    let addr = gw.public;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            tls.connect(addr, false)
                .await
                .send(Method::GET, "/echo/?sleep_ms=300", &[], Bytes::new())
                .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    // Served one after the other, without waiting for any timeout.
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(850) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(a.stats().await["max_in_flight"], 1);
}

#[tokio::test]
async fn client_disconnect_cancels_upstream_and_frees_the_slot() {
    let a = Backend::start("a");
    let gw = Gateway::start(&one_function(&[a.url()], "instance_concurrency = 1", ""));
    for h2 in [false, true] {
        let mut c = gw.tls().connect(gw.public, h2).await;
        let body = http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
            http_body_util::Full::new(Bytes::new()),
            |never| match never {},
        ));
        let pending = tokio::spawn(async move {
            let _ = c
                .send_streaming(Method::GET, "/echo/?hang=1", &[], body)
                .await;
        });
        eventually("backend busy", Duration::from_secs(5), || async {
            a.stats().await["in_flight"] == 1
        })
        .await;
        pending.abort(); // drops the client connection
        eventually(
            "backend request cancelled",
            Duration::from_secs(5),
            || async { a.stats().await["in_flight"] == 0 },
        )
        .await;
        eventually("slot freed", Duration::from_secs(5), || async {
            gw.admin_json("/admin/functions").await["functions"][0]["in_flight"] == 0
        })
        .await;
        // The slot is usable again.
        let r = gw.get("/echo/after").await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let lines = gw.settled_log_lines().await;
    let cancelled: Vec<_> = lines.iter().filter(|l| l["status"] == 499).collect();
    assert_eq!(cancelled.len(), 2, "{lines:?}");
    assert!(
        cancelled[0]["error"]
            .as_str()
            .unwrap()
            .contains("client closed")
    );
}
