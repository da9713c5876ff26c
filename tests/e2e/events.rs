//! Object-storage events through the real gateway: webhook auth (bearer, Basic, HMAC with a
//! replay window), bad and oversized bodies, S3 / SNS / MinIO / Ceph RGW / OSS notifications
//! reaching the right functions with the right keys, filters, test and confirmation messages,
//! redelivery, and a batch of 100 records.

use crate::harness::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TOKEN: &str = "event-token-0123456789abcdef";
const KEY: &str = "hmac-key-0123456789abcdef";

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/events/testdata");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

/// What a function received.
#[derive(Debug, Clone)]
struct Seen {
    headers: BTreeMap<String, String>,
    event: serde_json::Value,
}

/// A function backend that records every request and answers 200.
struct Recorder {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let s = s.clone();
                            async move {
                                let headers = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let event = serde_json::from_slice(&body)
                                    .unwrap_or(serde_json::Value::Null);
                                s.lock().unwrap().push(Seen { headers, event });
                                Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::Full::new(Bytes::from_static(b"ok")),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recorder { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Sorted object keys received.
    fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .seen()
            .iter()
            .map(|s| s.event["key"].as_str().unwrap_or("?").to_string())
            .collect();
        k.sort();
        k
    }

    async fn wait_for(&self, n: usize) {
        eventually(
            &format!("{n} events at the function"),
            Duration::from_secs(15),
            || async { self.seen.lock().unwrap().len() >= n },
        )
        .await;
        // Long enough for a duplicate, were one on its way.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `limits`: keys added to the `rgw` source.
fn config(thumb: &Recorder, all: &Recorder, limits: &str) -> String {
    format!(
        r#"
[[service]]
name = "media"
[[service.function]]
name = "thumb"
backend = {{ kind = "static", endpoints = ["http://{}"] }}
[[service.function]]
name = "all"
backend = {{ kind = "static", endpoints = ["http://{}"] }}

[[event_source]]
name = "rgw"
kind = "webhook"
auth = {{ bearer = {{ env = "EVENT_TOKEN" }} }}
{limits}

[[event_source]]
name = "signed"
kind = "webhook"
auth = {{ hmac = {{ env = "EVENT_KEY" }}, window = "1m" }}

[[trigger]]
name = "thumbs"
kind = "oss"
function = "media/thumb"
source = "rgw"
events = ["s3:ObjectCreated:*"]
prefix = "images/"
suffix = ".png"

[[trigger]]
name = "all"
kind = "oss"
function = "media/all"
source = "rgw"
events = ["ObjectCreated:*", "ObjectRemoved:*"]

[[trigger]]
name = "signed-all"
kind = "oss"
function = "media/all"
source = "signed"
"#,
        thumb.addr, all.addr
    )
}

fn start(thumb: &Recorder, all: &Recorder, limits: &str) -> Gateway {
    Gateway::start_in(
        TempDir::new("events"),
        &config(thumb, all, limits),
        &[("EVENT_TOKEN", TOKEN), ("EVENT_KEY", KEY)],
    )
}

async fn post(gw: &Gateway, source: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    gw.request(
        Method::POST,
        &format!("/events/{source}"),
        headers,
        Bytes::from(body.to_string()),
    )
    .await
}

async fn post_bearer(gw: &Gateway, body: &str) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    post(gw, "rgw", &[("authorization", &auth)], body).await
}

/// An S3 record as `origin` sends it, with the key already encoded the way that origin does.
fn record(origin: &str, bucket: &str, key: &str, name: &str, seq: usize) -> serde_json::Value {
    serde_json::json!({
        "eventVersion": "2.1",
        "eventSource": origin,
        "awsRegion": "us-east-1",
        "eventTime": "2024-05-01T10:00:00.000Z",
        "eventName": name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket},
            "object": {"key": key, "size": 5, "eTag": "0cc175b9c0f1b6468e1199e269772661",
                       "sequencer": format!("{seq:016X}")}
        }
    })
}

fn records(list: Vec<serde_json::Value>) -> String {
    serde_json::json!({ "Records": list }).to_string()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signature(ts: &str, body: &str) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, KEY.as_bytes());
    let tag = hmac::sign(&key, format!("{ts}.{body}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn basic(user: &str, pass: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let data = format!("{user}:{pass}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in data.chunks(3) {
        let v = (chunk[0] as u32) << 16
            | (chunk.get(1).copied().unwrap_or(0) as u32) << 8
            | chunk.get(2).copied().unwrap_or(0) as u32;
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                T[((v >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

async fn task_count(gw: &Gateway, function: &str) -> usize {
    let v = gw
        .admin_json(&format!(
            "/tasks?function={}&limit=1000",
            function.replace('/', "%2F")
        ))
        .await;
    v["tasks"].as_array().unwrap().len()
}

#[tokio::test]
async fn webhooks_refuse_bad_credentials_and_bad_bodies() {
    let thumb = Recorder::start().await;
    let all = Recorder::start().await;
    // A small max_body, so oversized bodies fit in the socket buffers and the 413 is read
    // before the gateway closes the connection.
    let gw = start(&thumb, &all, "max_body = \"2KiB\"");
    let empty = r#"{"Records":[]}"#;

    // Bearer: missing or wrong → 401 with the JSON error shape; Basic with the token as the
    // password (credentials in the sender's URL) is accepted.
    let r = post(&gw, "rgw", &[], empty).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(r.error_code(), "unauthorized");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = post(
        &gw,
        "rgw",
        &[("authorization", "Bearer wrong-token")],
        empty,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(!r.text().contains("wrong-token"), "{}", r.text());
    let r = post(
        &gw,
        "rgw",
        &[("authorization", &basic("sns", TOKEN))],
        empty,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"received":0,"matched":0,"enqueued":0,"deduplicated":0,"filtered":0,"dropped":0})
    );

    // HMAC: signed now → 200; unsigned, wrongly signed, or outside the window → 401.
    let body = records(vec![record(
        "aws:s3",
        "b",
        "signed.txt",
        "ObjectCreated:Put",
        1,
    )]);
    let now = unix_now().to_string();
    let sig = signature(&now, &body);
    let ok = post(
        &gw,
        "signed",
        &[("x-fngate-timestamp", &now), ("x-fngate-signature", &sig)],
        &body,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(ok.json()["enqueued"], 1);
    let r = post(&gw, "signed", &[], &body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code(), "unauthorized");
    assert!(r.header("www-authenticate").is_none());
    let r = post(
        &gw,
        "signed",
        &[("x-fngate-timestamp", &now), ("x-fngate-signature", &sig)],
        &body.replace("signed.txt", "forged.txt"),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("does not match the body"), "{}", r.text());
    let stale = (unix_now() - 120).to_string();
    let r = post(
        &gw,
        "signed",
        &[
            ("x-fngate-timestamp", &stale),
            ("x-fngate-signature", &signature(&stale, &body)),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("replay"), "{}", r.text());

    // Bad bodies: 400 with the field named; nothing stored.
    let auth = format!("Bearer {TOKEN}");
    let h = [("authorization", auth.as_str())];
    for (body, want) in [
        ("{not json", "the body is not JSON"),
        (r#"{"hello":"world"}"#, "not an object-storage notification"),
        (
            r#"{"Records":[{"eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{}}}]}"#,
            "Records[0].s3.object.key: missing",
        ),
        (
            r#"{"Records":[{"eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"bad%zz"}}}]}"#,
            "Records[0].s3.object.key: `bad%zz` has a `%`",
        ),
    ] {
        let r = post(&gw, "rgw", &h, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert_eq!(r.error_code(), "bad_event");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(want), "{body}: {msg}");
    }
    // Over max_body: 413, declared or streamed.
    let big = format!(r#"{{"Records":[],"pad":"{}"}}"#, "x".repeat(4096));
    let r = post(&gw, "rgw", &h, &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert_eq!(r.error_code(), "body_too_large");
    let mut c = gw.tls().connect(gw.public, false).await;
    let chunks = vec![Bytes::from(vec![b' '; 512]); 8];
    let resp = c
        .send_streaming(Method::POST, "/events/rgw", &h, chunked(chunks))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Wrong method, unknown source.
    let r = gw.get("/events/rgw").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = post(&gw, "nope", &h, empty).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "not_found");

    // Only the signed event was stored and run.
    all.wait_for(1).await;
    assert_eq!(all.keys(), ["signed.txt"]);
    assert_eq!(task_count(&gw, "media/all").await, 1);
    assert!(thumb.seen().is_empty());
    // One log line per webhook call, with its outcome.
    let lines: Vec<serde_json::Value> = gw
        .settled_log_lines()
        .await
        .into_iter()
        .filter(|l| l["kind"] == "event_webhook")
        .collect();
    assert!(lines.len() >= 15, "{lines:#?}");
    let signed = lines
        .iter()
        .find(|l| l["request_id"] == ok.header("x-fngate-request-id").unwrap())
        .unwrap();
    assert_eq!(signed["source"], "signed");
    assert_eq!(signed["status"], 200);
    assert_eq!(signed["enqueued"], 1);
    assert!(
        !serde_json::to_string(&lines).unwrap().contains(TOKEN),
        "a token reached the log"
    );
}

#[tokio::test]
async fn notifications_from_every_origin_reach_the_functions_once_with_decoded_keys() {
    let thumb = Recorder::start().await;
    let all = Recorder::start().await;
    let gw = start(&thumb, &all, "max_body = \"256KiB\"");

    // Filters: thumbs takes ObjectCreated:* under images/ ending .png; all takes created and
    // removed events; a restore event matches neither.
    let mixed = records(vec![
        record(
            "aws:s3",
            "photos",
            "images/cat+1.png",
            "ObjectCreated:Put",
            1,
        ),
        record("aws:s3", "photos", "images/cat.jpg", "ObjectCreated:Put", 2),
        record("aws:s3", "photos", "docs/a.png", "ObjectCreated:Copy", 3),
        record(
            "aws:s3",
            "photos",
            "images/old.png",
            "ObjectRemoved:Delete",
            4,
        ),
        record(
            "aws:s3",
            "photos",
            "images/x.png",
            "ObjectRestore:Completed",
            5,
        ),
        record(
            "minio:s3",
            "photos",
            "%E7%8C%AB%2F%C3%BCber+%2B1.png",
            "s3:ObjectCreated:Put",
            6,
        ),
    ]);
    let r = post_bearer(&gw, &mixed).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"received":6,"matched":6,"enqueued":6,"deduplicated":0,"filtered":1,"dropped":0})
    );

    // Real sample notifications from each origin.
    for name in [
        "aws_put.json",
        "sns_notification.json",
        "minio_put.json",
        "ceph_batch.json",
    ] {
        let r = post_bearer(&gw, &fixture(name)).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
    }
    // OSS, with the token as a Basic password.
    let r = post(
        &gw,
        "rgw",
        &[("authorization", &basic("oss", TOKEN))],
        &fixture("oss_put.json"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["enqueued"], 1);

    // A test event and an SNS subscription confirmation are acknowledged, never run.
    let r = post_bearer(&gw, &fixture("aws_test_event.json")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["test_event"], true);
    let r = post_bearer(&gw, &fixture("sns_subscription_confirmation.json")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["sns"], "SubscriptionConfirmation");
    assert_eq!(v["confirmed"], false);
    assert_eq!(v["topic_arn"], "arn:aws:sns:us-west-2:123456789012:MyTopic");

    // Redelivery: the same notification again stores nothing new.
    let r = post_bearer(&gw, &mixed).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        serde_json::json!({"received":6,"matched":6,"enqueued":0,"deduplicated":6,"filtered":1,"dropped":0})
    );
    let r = post_bearer(&gw, &fixture("ceph_batch.json")).await;
    assert_eq!(r.json()["deduplicated"], 3);

    let mut want_all = vec![
        "images/cat 1.png",
        "images/cat.jpg",
        "docs/a.png",
        "images/old.png",
        "猫/über +1.png",
        "HappyFace.jpg",
        "photos/red flower.jpg",
        "photos/2024/my photo+1.jpg",
        "raw key+with%41 and spaces/ü.txt",
        "old.txt",
        "video/big file.mp4",
        "image/a.jpg",
    ];
    want_all.sort();
    all.wait_for(want_all.len()).await;
    thumb.wait_for(1).await;
    assert_eq!(all.keys(), want_all, "each event exactly once");
    assert_eq!(thumb.keys(), ["images/cat 1.png"]);

    // What a function receives: the normalised event and the event headers.
    let seen = all.seen();
    let ceph = seen
        .iter()
        .find(|s| s.event["key"] == "raw key+with%41 and spaces/ü.txt")
        .unwrap();
    assert_eq!(ceph.event["origin"], "ceph:s3");
    assert_eq!(ceph.event["event_name"], "ObjectCreated:Put");
    assert_eq!(ceph.event["bucket"], "photos");
    assert_eq!(ceph.event["size"], 108622);
    assert_eq!(ceph.event["metadata"]["colour"], "blue");
    assert_eq!(ceph.event["source"], "rgw");
    assert_eq!(ceph.headers["content-type"], "application/json");
    assert_eq!(ceph.headers["x-fngate-event-source"], "rgw");
    assert_eq!(ceph.headers["x-fngate-event-name"], "ObjectCreated:Put");
    assert_eq!(ceph.headers["x-fngate-trigger"], "all");
    assert!(ceph.headers["x-fngate-task-id"].starts_with("_ev-"));
    let minio = seen
        .iter()
        .find(|s| s.event["origin"] == "minio:s3" && s.event["bucket"] == "images")
        .unwrap();
    assert_eq!(minio.event["metadata"]["colour"], "blue");
    assert_eq!(minio.event["sequencer"], "17A76FE05CF3469B");
    let oss = seen
        .iter()
        .find(|s| s.event["origin"] == "acs:oss")
        .unwrap();
    assert_eq!(oss.event["event_name"], "ObjectCreated:PutObject");
    assert_eq!(oss.event["region"], "cn-shanghai");
    let t = thumb.seen();
    assert_eq!(t[0].headers["x-fngate-trigger"], "thumbs");
    // Tasks are queryable like any async invocation.
    assert_eq!(task_count(&gw, "media/all").await, want_all.len());
    assert_eq!(task_count(&gw, "media/thumb").await, 1);
}

#[tokio::test]
async fn a_batch_of_100_records_makes_100_tasks() {
    let thumb = Recorder::start().await;
    let all = Recorder::start().await;
    let gw = start(&thumb, &all, "max_body = \"256KiB\"\nmax_records = 100");
    let batch: Vec<serde_json::Value> = (0..100)
        .map(|i| {
            record(
                "ceph:s3",
                "bulk",
                &format!("batch/{i:03} a+b%.bin"),
                "ObjectCreated:Put",
                i,
            )
        })
        .collect();
    let r = post_bearer(&gw, &records(batch.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["enqueued"], 100);
    assert_eq!(task_count(&gw, "media/all").await, 100);
    all.wait_for(100).await;
    let keys = all.keys();
    assert_eq!(keys.len(), 100);
    assert_eq!(keys[0], "batch/000 a+b%.bin");
    assert_eq!(keys[99], "batch/099 a+b%.bin");
    // One more than max_records is refused whole.
    let mut over = batch;
    over.push(record(
        "ceph:s3",
        "bulk",
        "one-too-many",
        "ObjectCreated:Put",
        100,
    ));
    let r = post_bearer(&gw, &records(over)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("101 records"), "{}", r.text());
    assert_eq!(task_count(&gw, "media/all").await, 100);
    // The same record twice in one notification is one task.
    let twice = record("ceph:s3", "bulk", "twice.bin", "ObjectCreated:Put", 500);
    let r = post_bearer(&gw, &records(vec![twice.clone(), twice])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["enqueued"], 1);
    assert_eq!(r.json()["deduplicated"], 1);
    all.wait_for(101).await;
    assert_eq!(all.keys().len(), 101);
    assert_eq!(task_count(&gw, "media/all").await, 101);
}

fn wasm(lib: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{lib}.wasm"));
    assert!(p.exists(), "{} missing: run plugins/build.sh", p.display());
    p.canonicalize().unwrap().display().to_string()
}

#[tokio::test]
async fn plugins_drop_and_reroute_events_and_a_fail_closed_failure_asks_for_redelivery() {
    let thumb = Recorder::start().await;
    let all = Recorder::start().await;
    let cfg = format!(
        r#"
[[service]]
name = "media"
[[service.function]]
name = "thumb"
backend = {{ kind = "static", endpoints = ["http://{thumb}"] }}
[[service.function]]
name = "all"
backend = {{ kind = "static", endpoints = ["http://{all}"] }}

[[plugin]]
name = "filter"
path = "{filter}"
config = {{ drop_suffixes = ".tmp", routes = "images/=media/thumb" }}
[[plugin]]
name = "trap-closed"
path = "{hostile}"
config = {{ mode = "trap" }}
on_error = "fail-closed"
[[plugin]]
name = "trap-open"
path = "{hostile}"
config = {{ mode = "trap" }}
on_error = "fail-open"

[[event_source]]
name = "plug"
kind = "webhook"
auth = "anonymous"
[[event_source]]
name = "closed"
kind = "webhook"
auth = "anonymous"
[[event_source]]
name = "open"
kind = "webhook"
auth = "anonymous"

[[trigger]]
name = "routed"
kind = "oss"
function = "media/all"
source = "plug"
plugins = ["filter"]
priority = 3
[[trigger]]
name = "closed"
kind = "oss"
function = "media/all"
source = "closed"
plugins = ["trap-closed"]
[[trigger]]
name = "open"
kind = "oss"
function = "media/all"
source = "open"
plugins = ["trap-open"]
"#,
        thumb = thumb.addr,
        all = all.addr,
        filter = wasm("event_filter"),
        hostile = wasm("hostile"),
    );
    let gw = Gateway::start(&cfg);
    let body = records(vec![
        record("ceph:s3", "b", "images/a.png", "ObjectCreated:Put", 1),
        record("ceph:s3", "b", "docs/b.txt", "ObjectCreated:Put", 2),
        record("ceph:s3", "b", "upload.tmp", "ObjectCreated:Put", 3),
    ]);
    let r = post(&gw, "plug", &[], &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"received":3,"matched":3,"enqueued":2,"deduplicated":0,"filtered":0,"dropped":1})
    );
    thumb.wait_for(1).await;
    all.wait_for(1).await;
    assert_eq!(thumb.keys(), ["images/a.png"], "re-routed by the plugin");
    assert_eq!(all.keys(), ["docs/b.txt"]);
    assert_eq!(thumb.seen()[0].headers["x-fngate-trigger"], "routed");
    let t = gw.admin_json("/tasks?function=media%2Fthumb").await;
    assert_eq!(t["tasks"][0]["priority"], 3);

    // Fail-closed: nothing stored, 503 so the sender delivers again.
    let r = post(&gw, "closed", &[], &body).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.error_code(), "plugin_failed");
    assert!(r.text().contains("trap-closed"), "{}", r.text());
    // Fail-open: dispatched as if the plugin were not there.
    let r = post(&gw, "open", &[], &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["enqueued"], 3);
    all.wait_for(4).await;
    assert_eq!(
        all.keys(),
        ["docs/b.txt", "docs/b.txt", "images/a.png", "upload.tmp"]
    );
    assert_eq!(task_count(&gw, "media/all").await, 4);
}
