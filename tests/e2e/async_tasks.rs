//! Async invocations and tasks: durable accept (202), idempotent task ids, delays, retries with
//! destinations, stop and redrive, and nothing lost when fngate is killed mid-stream.

use crate::harness::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A destination endpoint: records every JSON body POSTed to it.
struct Sink {
    addr: std::net::SocketAddr,
    got: Arc<Mutex<Vec<serde_json::Value>>>,
}

async fn sink() -> Sink {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let g = g.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            if let Ok(v) = serde_json::from_slice(&body) {
                                g.lock().unwrap().push(v);
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Sink { addr, got }
}

async fn call(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut h = vec![("x-fngate-invocation-type", "async")];
    h.extend_from_slice(headers);
    gw.request(Method::POST, path, &h, Bytes::from(body.to_string()))
        .await
}

pub(crate) async fn task(gw: &Gateway, id: &str) -> serde_json::Value {
    gw.admin_json(&format!("/tasks/{id}")).await
}

async fn wait_state(gw: &Gateway, id: &str, state: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let t = task(gw, id).await;
        if t["task"]["state"] == state {
            return t;
        }
        assert!(Instant::now() < deadline, "task {id} never {state}: {t:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn admin_post(gw: &Gateway, path: &str) -> Resp {
    let mut c = gw.tls().connect(gw.admin, false).await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    c.send(
        Method::POST,
        path,
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn accepted_durably_run_once_per_id_and_refused_when_it_never_could_run() {
    let be = Backend::start("a");
    let gw = Gateway::start(&one_function(
        &[be.url()],
        "async = { max_payload = \"1KiB\" }",
        "",
    ));
    let r = call(
        &gw,
        "/echo/job",
        &[("x-fngate-task-id", "job_1")],
        "payload",
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.header("x-fngate-task-id"), Some("job_1"));
    let rid = r.header("x-fngate-request-id").unwrap().to_string();
    let t = wait_state(&gw, "job_1", "Succeeded", Duration::from_secs(10)).await;
    assert_eq!(t["task"]["attempts"], 1);
    assert_eq!(t["result"]["status"], 200);
    // The function saw the request as a sync call would, plus the task id.
    let seen: serde_json::Value =
        serde_json::from_str(t["result"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(seen["path"], "/job");
    assert_eq!(seen["headers"]["x-fngate-task-id"], "job_1");
    assert_eq!(seen["headers"]["x-fngate-request-id"], rid.as_str());
    assert_eq!(seen["body_bytes"], 7);
    // The same id again: the existing task, not a second run.
    let r = call(
        &gw,
        "/echo/job",
        &[("x-fngate-task-id", "job_1")],
        "payload",
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.json()["existing"], true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(be.stats().await["requests"], 1);
    // Refused at once, never 202: a bad id, an unknown function, a body the function cannot take.
    let r = call(
        &gw,
        "/echo/x",
        &[("x-fngate-task-id", "9starts-with-digit")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("x-fngate-task-id"), "{}", r.text());
    let r = call(&gw, "/nowhere/x", &[], "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(&gw, "/echo/x", &[], &"x".repeat(2000)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = call(&gw, "/echo/x", &[("x-fngate-async-delay", "soon")], "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // The log line says 202 and names the task.
    let line = gw.log_line(&rid).await;
    assert_eq!(line["status"], 202);
    assert_eq!(line["task_id"], "job_1");
}

#[tokio::test]
async fn delayed_tasks_wait_and_stopped_ones_never_run() {
    let be = Backend::start("a");
    let gw = Gateway::start(&one_function(&[be.url()], "", ""));
    let t0 = Instant::now();
    let r = call(
        &gw,
        "/echo/later",
        &[("x-fngate-task-id", "later"), ("x-fngate-async-delay", "2")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = call(
        &gw,
        "/echo/never",
        &[("x-fngate-task-id", "never"), ("x-fngate-async-delay", "2")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = admin_post(&gw, "/tasks/never/stop").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["previous"], "Enqueued");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(task(&gw, "later").await["task"]["state"], "Enqueued");
    wait_state(&gw, "later", "Succeeded", Duration::from_secs(10)).await;
    assert!(t0.elapsed() >= Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(task(&gw, "never").await["task"]["state"], "Stopped");
    assert_eq!(
        be.stats().await["requests"],
        1,
        "the stopped task never ran"
    );
    // A running task is stopped by aborting its upstream call.
    call(
        &gw,
        "/echo/slow?sleep_ms=10000",
        &[("x-fngate-task-id", "slow")],
        "",
    )
    .await;
    wait_state(&gw, "slow", "Running", Duration::from_secs(5)).await;
    let r = admin_post(&gw, "/tasks/slow/stop").await;
    assert_eq!(r.json()["aborted"], true, "{}", r.text());
    eventually("upstream call aborted", Duration::from_secs(3), || async {
        be.stats().await["in_flight"] == 0
    })
    .await;
    assert_eq!(task(&gw, "slow").await["task"]["state"], "Stopped");
    // Stopping a finished task is refused with the reason.
    let r = admin_post(&gw, "/tasks/later/stop").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let r = gw.admin(Method::GET, "/tasks/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let list = gw
        .admin_json("/tasks?function=demo%2Fecho&state=Stopped")
        .await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 2, "{list:#}");
}

#[tokio::test]
async fn failures_retry_with_backoff_then_reach_the_failure_destination_and_can_be_redriven() {
    let be = Backend::start("a");
    let ok = sink().await;
    let failed = sink().await;
    let gw = Gateway::start(&one_function(
        &[be.url()],
        &format!(
            "async = {{ max_retries = 2, on_success = \"http://{}/ok\", on_failure = \"http://{}/failed\" }}",
            ok.addr, failed.addr
        ),
        "",
    ));
    let t0 = Instant::now();
    call(
        &gw,
        "/echo/x?status=503",
        &[("x-fngate-task-id", "flaky")],
        "",
    )
    .await;
    call(
        &gw,
        "/echo/x?status=404",
        &[("x-fngate-task-id", "bad")],
        "",
    )
    .await;
    call(&gw, "/echo/x", &[("x-fngate-task-id", "fine")], "").await;
    // 404 is not retried.
    let t = wait_state(&gw, "bad", "Failed", Duration::from_secs(5)).await;
    assert_eq!(t["task"]["attempts"], 1);
    // 503: three attempts (1 + max_retries), about 1 s then 2 s apart.
    let t = wait_state(&gw, "flaky", "Failed", Duration::from_secs(15)).await;
    assert_eq!(t["task"]["attempts"], 3, "{t:#}");
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "backoff: {:?}",
        t0.elapsed()
    );
    let states: Vec<&str> = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "Enqueued", "Running", "Retrying", "Running", "Retrying", "Running", "Failed"
        ]
    );
    wait_state(&gw, "fine", "Succeeded", Duration::from_secs(5)).await;
    eventually("destination records", Duration::from_secs(5), || async {
        failed.got.lock().unwrap().len() == 2 && ok.got.lock().unwrap().len() == 1
    })
    .await;
    let f = failed.got.lock().unwrap().clone();
    let flaky = f
        .iter()
        .find(|r| r["requestContext"]["taskId"] == "flaky")
        .unwrap();
    assert_eq!(flaky["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(flaky["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(flaky["responseContext"]["statusCode"], 503);
    let bad = f
        .iter()
        .find(|r| r["requestContext"]["taskId"] == "bad")
        .unwrap();
    assert_eq!(bad["requestContext"]["condition"], "FunctionError");
    let good = ok.got.lock().unwrap()[0].clone();
    assert_eq!(good["requestContext"]["condition"], "Success");
    assert_eq!(good["requestContext"]["function"], "demo/echo");
    // Redrive: a failed task runs again (and fails again here).
    let r = admin_post(&gw, "/tasks/bad/retry").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    eventually("redriven task ran", Duration::from_secs(5), || async {
        let t = task(&gw, "bad").await;
        t["task"]["state"] == "Failed"
            && t["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["state"] == "Running")
                .count()
                == 2
    })
    .await;
    // A succeeded task cannot be redriven.
    let r = admin_post(&gw, "/tasks/fine/retry").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn nothing_accepted_is_lost_when_fngate_is_killed() {
    killed_mid_stream("").await;
}

/// 1,008 async invocations, fngate SIGKILLed after a run-dependent number of accepts, restarted:
/// every 202 runs to completion. `queue` is prepended to the config (`[queue]` section).
pub(crate) async fn killed_mid_stream(queue: &str) {
    let be = Backend::start("a");
    let mut gw = Gateway::start(&format!(
        "{queue}\n{}",
        one_function(
            &[be.url()],
            "instance_concurrency = 16\ntimeout = \"3s\"\nasync = { max_concurrency = 16 }",
            "",
        )
    ));
    // 1,000 async invocations from 16 clients; fngate is SIGKILLed part-way through.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..16 {
        let tls = gw.tls();
        let addr = gw.public;
        let accepted = accepted.clone();
        let sent = sent.clone();
        clients.push(tokio::spawn(async move {
            let Ok(mut conn) = tls.try_connect(addr, false).await else {
                return;
            };
            for i in 0..63 {
                let id = format!("d{c}_{i}");
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    conn.try_send(
                        Method::POST,
                        "/echo/work?sleep_ms=5",
                        &[
                            ("x-fngate-invocation-type", "async"),
                            ("x-fngate-task-id", &id),
                        ],
                        Bytes::from_static(b"{}"),
                    ),
                )
                .await;
                match r {
                    Ok(Ok(r)) if r.status == StatusCode::ACCEPTED => {
                        accepted.lock().unwrap().push(id)
                    }
                    Ok(Ok(r)) => panic!("unexpected {}: {}", r.status, r.text()),
                    // The gateway died under us: stop sending.
                    _ => return,
                }
            }
        }));
    }
    // Kill at a moment that depends on the run: after some hundreds of accepts.
    let kill_after = 300 + (std::process::id() as usize % 400);
    eventually("accepts under way", Duration::from_secs(30), || {
        let n = accepted.lock().unwrap().len();
        async move { n >= kill_after }
    })
    .await;
    gw.kill();
    for c in clients {
        let _ = c.await;
    }
    let accepted = accepted.lock().unwrap().clone();
    eprintln!(
        "killed fngate after {} accepts ({} sent)",
        accepted.len(),
        sent.load(std::sync::atomic::Ordering::Relaxed)
    );
    gw.restart();
    // The rest of the 1,008 invocations go to the restarted gateway.
    let mut all = accepted.clone();
    let mut conn = gw.tls().connect(gw.public, false).await;
    for c in 0..16 {
        for i in 0..63 {
            let id = format!("d{c}_{i}");
            if accepted.contains(&id) {
                continue;
            }
            let r = conn
                .send(
                    Method::POST,
                    "/echo/work?sleep_ms=5",
                    &[
                        ("x-fngate-invocation-type", "async"),
                        ("x-fngate-task-id", &id),
                    ],
                    Bytes::from_static(b"{}"),
                )
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
            all.push(id);
        }
    }
    assert_eq!(all.len(), 1008);
    let accepted = all;
    // Every task that got a 202 runs to completion (with NATS, those the killed gateway held
    // come back after their ack wait: timeout 3 s + 2 s).
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in &accepted {
        loop {
            let t = task(&gw, id).await;
            if t["task"]["state"] == "Succeeded" {
                break;
            }
            assert!(Instant::now() < deadline, "task {id} not done: {t:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // At least once: tasks running at the kill ran again; report how many ran twice.
    let runs = be.stats().await["requests"].as_u64().unwrap();
    let mut stored = 0;
    let mut cursor = String::new();
    loop {
        let page = gw
            .admin_json(&format!("/tasks?state=Succeeded&limit=1000{cursor}"))
            .await;
        stored += page["tasks"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(stored, accepted.len());
    eprintln!(
        "after restart: all {} tasks succeeded; the backend ran {runs} requests ({} duplicates: attempts in flight at the kill, run again)",
        accepted.len(),
        runs.saturating_sub(stored as u64)
    );
    // At least once: every task reached the backend at least once.
    assert!(runs >= stored as u64, "{runs} runs for {stored} tasks");
}
