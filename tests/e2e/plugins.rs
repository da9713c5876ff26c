//! Policy plugins through the real binary: the example plugins end to end, hostile fixtures
//! contained, hot swap under load, and a bad plugin file refused while the old one serves.

use crate::harness::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub(crate) fn wasm(lib: &str) -> PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{lib}.wasm"));
    assert!(p.exists(), "{} missing: run plugins/build.sh", p.display());
    p.canonicalize().unwrap()
}

fn function(name: &str, backend: &Backend, extra: &str) -> String {
    format!(
        "[[service.function]]\nname = \"{name}\"\nbackend = {{ kind = \"static\", endpoints = [\"{}\"] }}\n{extra}\n",
        backend.url()
    )
}

#[tokio::test]
async fn header_router_ab_and_canary() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("canary");
    let cfg = format!(
        r#"
[[plugin]]
name = "router"
path = "{}"
config = {{ routes = "b=demo/echo-b", canary_function = "demo/echo-canary", canary_percent = "30" }}

[[service]]
name = "demo"
{}{}{}
[[trigger]]
name = "echo-http"
kind = "http"
function = "demo/echo"
path = "/echo"
plugins = ["router"]
"#,
        wasm("header_router").display(),
        function("echo", &a, ""),
        function("echo-b", &b, ""),
        function("echo-canary", &c, ""),
    );
    let gw = Gateway::start(&cfg);
    let r = gw
        .request(Method::GET, "/echo/x", &[("x-variant", "b")], Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["instance"], "b");
    assert_eq!(r.json()["headers"]["x-fngate-route"], "header");
    assert_eq!(
        r.header("x-fngate-instance-id").unwrap(),
        format!("echo-b@{}", b.addr)
    );

    // Without the header: about 30% canary, the rest default, decided per request id.
    let mut counts = std::collections::HashMap::new();
    let mut conn = gw.tls().connect(gw.public, true).await;
    for _ in 0..200 {
        let r = conn.send(Method::GET, "/echo/x", &[], Bytes::new()).await;
        assert_eq!(r.status, StatusCode::OK);
        *counts
            .entry(r.json()["instance"].as_str().unwrap().to_string())
            .or_insert(0u32) += 1;
    }
    let canary = counts.get("canary").copied().unwrap_or(0);
    assert!((30..=95).contains(&canary), "canary share {counts:?}");
    assert_eq!(counts.get("b"), None);
    let m = gw.admin(Method::GET, "/metrics").await.text();
    assert!(
        m.contains("fngate_plugin_calls_total{plugin=\"router\",result=\"ok\"} 201"),
        "{m}"
    );
}

#[tokio::test]
async fn tenant_policy_keys_and_rate_limits() {
    let a = Backend::start("a");
    let cfg = format!(
        r#"
[[plugin]]
name = "tenants"
path = "{}"
config = {{ keys = "key-abc=acme:10,key-def=globex:0", rate_per_second = "0.01", burst = "3" }}

[[service]]
name = "demo"
{}
[[trigger]]
name = "api"
kind = "http"
function = "demo/echo"
path = "/api"
plugins = ["tenants"]
"#,
        wasm("tenant_policy").display(),
        function("echo", &a, ""),
    );
    let gw = Gateway::start(&cfg);
    let r = gw.get("/api/x").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert!(r.text().contains("missing_api_key"), "{}", r.text());
    assert!(r.header("x-fngate-request-id").is_some());
    let r = gw
        .request(
            Method::GET,
            "/api/x",
            &[("authorization", "Bearer nope")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("unknown_api_key"));

    for _ in 0..3 {
        let r = gw
            .request(
                Method::GET,
                "/api/x",
                &[("authorization", "Bearer key-abc")],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = r.json();
        assert_eq!(v["headers"]["x-tenant"], "acme");
        assert!(
            v["headers"].get("authorization").is_none(),
            "API key must not reach the function"
        );
        let line = gw.log_line(r.header("x-fngate-request-id").unwrap()).await;
        assert_eq!(line["tenant"], "acme");
    }
    // The burst is spent: rate limited, while another tenant is not.
    let r = gw
        .request(
            Method::GET,
            "/api/x",
            &[("authorization", "Bearer key-abc")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = gw
        .request(
            Method::GET,
            "/api/x",
            &[("authorization", "Bearer key-def")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn gpu_router_by_prompt_size_and_spill() {
    let a10 = Backend::start("a10");
    let t4 = Backend::start("t4");
    let spill = Backend::start("spill");
    let cfg = format!(
        r#"
[[plugin]]
name = "gpu"
path = "{}"
config = {{ long_function = "llm/a10", short_function = "llm/t4", long_prompt_bytes = "1000", spill_function = "llm/spill", spill_queue_depth = "1", body_prefix = "2048" }}

[[service]]
name = "llm"
{}{}{}
[[trigger]]
name = "generate"
kind = "http"
function = "llm/t4"
path = "/generate"
methods = ["POST"]
plugins = ["gpu"]
"#,
        wasm("gpu_router").display(),
        function("a10", &a10, ""),
        function(
            "t4",
            &t4,
            "instance_concurrency = 1\nmax_queued = 10\nmax_queue_wait = \"10s\""
        ),
        function("spill", &spill, ""),
    );
    let gw = Gateway::start(&cfg);
    let r = gw
        .request(Method::POST, "/generate/", &[], Bytes::from(vec![b'p'; 50]))
        .await;
    assert_eq!(r.json()["instance"], "t4");
    assert_eq!(r.json()["headers"]["x-fngate-gpu-route"], "short");
    let r = gw
        .request(
            Method::POST,
            "/generate/",
            &[],
            Bytes::from(vec![b'p'; 5000]),
        )
        .await;
    assert_eq!(r.json()["instance"], "a10");
    assert_eq!(r.json()["body_bytes"], 5000);

    // A chunked body (no Content-Length): the plugin sees the prefix, the function the whole body.
    let mut c = gw.tls().connect(gw.public, false).await;
    let body = chunked(vec![
        Bytes::from(vec![b'q'; 700]),
        Bytes::from(vec![b'q'; 700]),
        Bytes::from(vec![b'q'; 700]),
    ]);
    let r = Resp::collect(
        c.send_streaming(Method::POST, "/generate/", &[], body)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        r.json()["instance"],
        "a10",
        "1400+ bytes of prefix is a long prompt"
    );
    assert_eq!(r.json()["body_bytes"], 2100);

    // Fill t4: one running, one queued; the next short prompt spills.
    let tls = gw.tls();
    let addr = gw.public;
    let mut held = Vec::new();
    for _ in 0..2 {
        let tls = tls.clone();
        held.push(tokio::spawn(async move {
            tls.connect(addr, false)
                .await
                .send(
                    Method::POST,
                    "/generate/?sleep_ms=1500",
                    &[],
                    Bytes::from_static(b"short"),
                )
                .await
        }));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    eventually(
        "t4 queue has one waiting",
        Duration::from_secs(5),
        || async {
            let f = gw.admin_json("/admin/functions").await;
            f["functions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["id"] == "llm/t4" && f["queued"] == 1)
        },
    )
    .await;
    let r = gw
        .request(
            Method::POST,
            "/generate/",
            &[],
            Bytes::from_static(b"short"),
        )
        .await;
    assert_eq!(r.json()["instance"], "spill");
    assert_eq!(r.json()["headers"]["x-fngate-gpu-route"], "spill");
    for h in held {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
}

#[tokio::test]
async fn hostile_plugins_are_contained_while_others_serve() {
    let a = Backend::start("a");
    let mut cfg = String::new();
    // The memory bomb gets a longer deadline: touching 16 MiB of fresh pages on a loaded machine
    // can take longer than 10 ms, and this test wants the memory cap, not the deadline, to stop it.
    for (mode, on_error, timeout) in [
        ("loop", "fail-closed", "10ms"),
        ("membomb", "fail-closed", "500ms"),
        ("recursion", "fail-closed", "10ms"),
        ("trap", "fail-open", "10ms"),
        ("oversized", "fail-closed", "10ms"),
    ] {
        cfg.push_str(&format!(
            // 64 KiB of headers is over the host's decision limit and cheap to build, so the
            // oversized case cannot hit the deadline first on a loaded machine.
            "[[plugin]]\nname = \"{mode}\"\npath = \"{}\"\nconfig = {{ mode = \"{mode}\", size = \"65536\" }}\non_error = \"{on_error}\"\ntimeout = \"{timeout}\"\n\n",
            wasm("hostile").display()
        ));
    }
    cfg.push_str("[[service]]\nname = \"demo\"\n");
    cfg.push_str(&function("echo", &a, "instance_concurrency = 64"));
    for mode in ["loop", "membomb", "recursion", "trap", "oversized"] {
        cfg.push_str(&format!(
            "[[trigger]]\nname = \"{mode}\"\nkind = \"http\"\nfunction = \"demo/echo\"\npath = \"/{mode}\"\nplugins = [\"{mode}\"]\n\n"
        ));
    }
    cfg.push_str("[[trigger]]\nname = \"clean\"\nkind = \"http\"\nfunction = \"demo/echo\"\npath = \"/clean\"\n");
    let gw = Gateway::start(&cfg);

    // Well-behaved traffic runs alongside the hostile calls and must never fail.
    let stop = Arc::new(AtomicBool::new(false));
    let clean_ok = Arc::new(AtomicUsize::new(0));
    let background = {
        let (tls, addr, stop, ok) = (gw.tls(), gw.public, stop.clone(), clean_ok.clone());
        tokio::spawn(async move {
            let mut c = tls.connect(addr, false).await;
            while !stop.load(Ordering::Relaxed) {
                let r = c.send(Method::GET, "/clean/x", &[], Bytes::new()).await;
                assert_eq!(r.status, StatusCode::OK);
                ok.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    for mode in ["loop", "membomb", "recursion", "oversized"] {
        for _ in 0..3 {
            let t = Instant::now();
            let r = gw.get(&format!("/{mode}/x")).await;
            assert_eq!(
                r.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{mode}: {}",
                r.text()
            );
            assert_eq!(r.error_code(), "plugin_failed");
            assert!(
                r.text().contains(&format!("`{mode}`")),
                "names the plugin: {}",
                r.text()
            );
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "{mode} took {:?}",
                t.elapsed()
            );
        }
    }
    // fail-open: as if the plugin were absent.
    let r = gw.get("/trap/x").await;
    assert_eq!(r.status, StatusCode::OK);
    stop.store(true, Ordering::Relaxed);
    background.await.unwrap();
    assert!(clean_ok.load(Ordering::Relaxed) > 5);

    let m = gw.admin(Method::GET, "/metrics").await.text();
    let failures = |p: &str, kind: &str| -> u64 {
        let needle = format!("fngate_plugin_failures_total{{plugin=\"{p}\",kind=\"{kind}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    for (p, kind) in [
        ("loop", "deadline"),
        ("membomb", "memory"),
        ("oversized", "invalid_decision"),
    ] {
        assert_eq!(failures(p, kind), 3, "{p} {kind} in:\n{m}");
    }
    // Deep recursion ends in a stack-overflow trap, or, on a loaded machine, may reach its
    // deadline first: contained either way.
    assert_eq!(
        failures("recursion", "trap") + failures("recursion", "deadline"),
        3,
        "{m}"
    );
    assert!(
        gw.stderr().contains("plugin `loop` failed (deadline)"),
        "{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn hot_swap_under_load_and_bad_file_refused() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let dir = TempDir::new("swap");
    let live_path = dir.0.join("router.wasm");
    std::fs::copy(wasm("header_router"), &live_path).unwrap();
    let cfg = format!(
        r#"
[[plugin]]
name = "router"
path = "router.wasm"
config = {{ routes = "b=demo/echo-b", canary_percent = "0", mode = "ok" }}
# Generous: this test is about swaps, and a loaded CI machine can stall a 5 ms call.
timeout = "200ms"

[[service]]
name = "demo"
{}{}
[[trigger]]
name = "echo-http"
kind = "http"
function = "demo/echo"
path = "/echo"
plugins = ["router"]
"#,
        function("echo", &a, "instance_concurrency = 16"),
        function("echo-b", &b, "instance_concurrency = 16"),
    );
    let gw = Gateway::start_in(dir, &cfg, &[]);
    let routed = |gw: &Gateway| {
        let tls = gw.tls();
        let addr = gw.public;
        async move {
            let r = tls
                .connect(addr, false)
                .await
                .send(Method::GET, "/echo/x", &[("x-variant", "b")], Bytes::new())
                .await;
            assert_eq!(r.status, StatusCode::OK);
            r.json()["instance"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(routed(&gw).await, "b");

    // Steady load on 4 connections while the plugin file is swapped twice.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (tls, addr, stop, failures, total) = (
            gw.tls(),
            gw.public,
            stop.clone(),
            failures.clone(),
            total.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut c = tls.connect(addr, false).await;
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .send(
                        Method::GET,
                        "/echo/x?sleep_ms=5",
                        &[("x-variant", "b")],
                        Bytes::new(),
                    )
                    .await;
                if r.status != StatusCode::OK {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                total.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let replace = |src: PathBuf, dst: &PathBuf| {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    };
    // 1) To a plugin that passes everything: the header no longer routes to b.
    replace(wasm("hostile"), &live_path);
    eventually(
        "swapped to the pass-through plugin",
        Duration::from_secs(10),
        || async { routed(&gw).await == "a" },
    )
    .await;
    // 2) Back to the router.
    replace(wasm("header_router"), &live_path);
    eventually(
        "swapped back to the router",
        Duration::from_secs(10),
        || async { routed(&gw).await == "b" },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(
        total.load(Ordering::Relaxed) > 20,
        "load ran: {}",
        total.load(Ordering::Relaxed)
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no failed request during swaps"
    );

    // A broken file: refused with a clear error, the old version keeps serving.
    std::fs::write(
        live_path.with_extension("tmp"),
        b"\0asm\x01\0\0\0 not really",
    )
    .unwrap();
    std::fs::rename(live_path.with_extension("tmp"), &live_path).unwrap();
    let r = gw.admin(Method::POST, "/admin/reload").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    let problems = r.json()["error"]["problems"].to_string();
    assert!(
        problems.contains("plugin[0]") && problems.contains("not a valid policy component"),
        "{problems}"
    );
    assert_eq!(routed(&gw).await, "b");
    eventually(
        "watcher logged the refusal",
        Duration::from_secs(5),
        || async { gw.stderr().contains("configuration reload rejected") },
    )
    .await;
    assert_eq!(routed(&gw).await, "b");
}

#[tokio::test]
async fn plugin_priority_orders_the_queue() {
    let a = Backend::start("a");
    let cfg = format!(
        r#"
[[plugin]]
name = "tenants"
path = "{}"
config = {{ keys = "hi=acme:10,lo=globex:0", burst = "100" }}

[[service]]
name = "demo"
{}
[[trigger]]
name = "api"
kind = "http"
function = "demo/echo"
path = "/api"
plugins = ["tenants"]
"#,
        wasm("tenant_policy").display(),
        function(
            "echo",
            &a,
            "instance_concurrency = 1\nmax_queued = 10\nmax_queue_wait = \"10s\""
        ),
    );
    let gw = Gateway::start(&cfg);
    let send = |key: &'static str, path: &'static str| {
        let (tls, addr) = (gw.tls(), gw.public);
        tokio::spawn(async move {
            let auth = format!("Bearer {key}");
            let r = tls
                .connect(addr, false)
                .await
                .send(Method::GET, path, &[("authorization", &auth)], Bytes::new())
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            Instant::now()
        })
    };
    let queued = |n: u64| {
        let gw = &gw;
        async move { gw.admin_json("/admin/functions").await["functions"][0]["queued"] == n }
    };
    // The only slot is busy; low priority queues first, high priority second.
    let holder = send("lo", "/api/hold?sleep_ms=600");
    eventually("slot taken", Duration::from_secs(5), || async {
        a.stats().await["in_flight"] == 1
    })
    .await;
    let low = send("lo", "/api/low?sleep_ms=200");
    eventually("low queued", Duration::from_secs(5), || queued(1)).await;
    let high = send("hi", "/api/high?sleep_ms=200");
    eventually("high queued", Duration::from_secs(5), || queued(2)).await;
    holder.await.unwrap();
    let (low_done, high_done) = (low.await.unwrap(), high.await.unwrap());
    assert!(
        high_done < low_done,
        "the priority-10 tenant must run before the earlier priority-0 one"
    );
}
