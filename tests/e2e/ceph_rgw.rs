//! A real object store sending real bucket notifications: a single-node Ceph cluster with
//! radosgw (`scripts/ceph-rgw.sh`) on loopback, driven by a real S3 client (boto3,
//! `tests/ceph/rgw_s3.py`). One bucket notifies two SNS-API topics:
//!
//! - an HTTP push to fngate's webhook, over HTTPS (`verify-ssl=false`: RGW pushes to the
//!   gateway's self-signed certificate; no plaintext listener is needed), authenticated with the
//!   source's bearer token as the Basic password in the push-endpoint URL, which RGW's libcurl
//!   sends as `Authorization: Basic`;
//! - an AMQP push to an exchange on a private RabbitMQ node (`amqp-ack-level=broker`), bound to
//!   the queue an `amqp` event source consumes.
//!
//! Upload, overwrite, delete and a multipart upload, with keys holding spaces, `+`, `%`, `/` and
//! non-ASCII characters, must reach the function exactly once per path, with the keys exactly as
//! uploaded (RGW sends them unencoded) and the overwrite as an event of its own. RGW 16 sends no
//! `s3:TestEvent`; a newer one that does would show up as a task too many.

use crate::harness::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "rgw-webhook-token-0123456789";
const BUCKET: &str = "uploads";
const EXCHANGE: &str = "rgw-notifications";
const QUEUE: &str = "fngate-rgw-events";

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// A Ceph cluster (mon, memstore OSD, radosgw) in a temp dir; stopped on drop.
struct Ceph {
    dir: TempDir,
    endpoint: String,
}

impl Ceph {
    /// Starts a cluster; one failed start (a slow, loaded machine) is retried on fresh ports
    /// with its output shown.
    fn start() -> Ceph {
        match std::panic::catch_unwind(Ceph::start_once) {
            Ok(c) => c,
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "(no message)".into());
                eprintln!("first Ceph start failed, trying once more: {msg}");
                Ceph::start_once()
            }
        }
    }

    fn start_once() -> Ceph {
        let dir = TempDir::new("ceph");
        let (rgw, mon) = (free_port(), free_port());
        let started = Instant::now();
        let out = Command::new(repo().join("scripts/ceph-rgw.sh"))
            .arg("start")
            .arg(&dir.0)
            .args([rgw.to_string(), mon.to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/ceph-rgw.sh");
        let ceph = Ceph {
            dir,
            endpoint: format!("http://127.0.0.1:{rgw}"),
        };
        assert!(
            out.status.success(),
            "scripts/ceph-rgw.sh start failed (are radosgw, ceph-mon, ceph-osd and uuid-runtime \
             installed? scripts/test.sh installs them):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("ceph rgw up in {:?}", started.elapsed());
        ceph
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/ceph-rgw.sh"))
            .arg("stop")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .status();
    }
}

/// A function backend that keeps every event it is invoked with.
struct Recorder {
    addr: std::net::SocketAddr,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let store = events.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let store = store.clone();
                            async move {
                                let body = req.into_body().collect().await?.to_bytes();
                                let event = serde_json::from_slice(&body)
                                    .unwrap_or(serde_json::Value::Null);
                                store.lock().unwrap().push(event);
                                Ok::<_, hyper::Error>(http::Response::new(
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
        Recorder { addr, events }
    }

    fn events_from(&self, source: &str) -> Vec<serde_json::Value> {
        let all = self.events.lock().unwrap();
        all.iter()
            .filter(|e| e["source"] == source)
            .cloned()
            .collect()
    }
}

fn config(recorder: &Recorder, amqp_url: &str) -> String {
    format!(
        r#"
[[service]]
name = "media"
[[service.function]]
name = "hooked"
backend = {{ kind = "static", endpoints = ["http://{rec}"] }}
[[service.function]]
name = "queued"
backend = {{ kind = "static", endpoints = ["http://{rec}"] }}

[[event_source]]
name = "rgw"
kind = "webhook"
auth = {{ bearer = {{ env = "RGW_EVENT_TOKEN" }} }}

[[event_source]]
name = "rgw-amqp"
kind = "amqp"
url = "{amqp_url}"
queue = "{QUEUE}"
prefetch = 8

[[trigger]]
name = "from-webhook"
kind = "oss"
function = "media/hooked"
source = "rgw"
events = ["ObjectCreated:*", "ObjectRemoved:*"]

[[trigger]]
name = "from-amqp"
kind = "oss"
function = "media/queued"
source = "rgw-amqp"
events = ["ObjectCreated:*", "ObjectRemoved:*"]
"#,
        rec = recorder.addr
    )
}

/// The exchange RGW publishes to and fngate's queue bound to it (fngate only consumes).
async fn declare_amqp(url: &str) -> lapin::Connection {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        EXCHANGE.into(),
        lapin::ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await
    .unwrap();
    let queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(QUEUE.into(), queue, FieldTable::default())
        .await
        .unwrap();
    // RGW's routing key is the topic name.
    ch.queue_bind(
        QUEUE.into(),
        EXCHANGE.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    conn
}

/// Runs tests/ceph/rgw_s3.py with `spec` on stdin; its JSON answer.
fn s3_client(spec: &serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    let python = std::env::var("FNGATE_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python)
        .arg(repo().join("tests/ceph/rgw_s3.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with boto3 (scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tests/ceph/rgw_s3.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (event name, key, etag) sorted; the etag only where it identifies the object version.
fn summary(events: &[serde_json::Value]) -> Vec<(String, String, Option<String>)> {
    let mut v: Vec<_> = events
        .iter()
        .map(|e| {
            let name = e["event_name"].as_str().unwrap_or("?").to_string();
            let etag = if name.starts_with("ObjectRemoved") {
                None
            } else {
                e["etag"].as_str().map(str::to_string)
            };
            (name, e["key"].as_str().unwrap_or("?").to_string(), etag)
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rgw_notifications_reach_the_function_once_by_webhook_and_by_amqp() {
    let started = Instant::now();
    // RabbitMQ (~10 s) and Ceph (~15 s) start side by side.
    let rabbit = tokio::task::spawn_blocking(RabbitMq::shared);
    let ceph = tokio::task::spawn_blocking(Ceph::start).await.unwrap();
    let rabbit = rabbit.await.unwrap();
    eprintln!("brokers up in {:?}", started.elapsed());
    let _amqp = declare_amqp(&rabbit.url).await;

    let recorder = Recorder::start().await;
    let gw = Gateway::start_in(
        TempDir::new("ceph-gw"),
        &config(&recorder, &rabbit.url),
        &[("RGW_EVENT_TOKEN", TOKEN)],
    );

    let keys = [
        "images/cat 1+2%20=3.png",
        "docs/ünï cødé/日本 語+%.txt",
        "videos/big file+%2F ß.bin",
    ];
    let spec = serde_json::json!({
        "endpoint": ceph.endpoint,
        "access_key": "testkey",
        "secret_key": "testsecret",
        "bucket": BUCKET,
        "events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
        "topics": [
            {"name": "fngate-webhook", "attributes": {
                "push-endpoint": format!("https://fngate:{TOKEN}@127.0.0.1:{}/events/rgw", gw.public.port()),
                "verify-ssl": "false",
            }},
            {"name": "fngate-amqp", "attributes": {
                "push-endpoint": format!("amqp://127.0.0.1:{}", rabbit.port),
                "amqp-exchange": EXCHANGE,
                "amqp-ack-level": "broker",
            }},
        ],
        "ops": [
            {"op": "put", "key": keys[0], "body": "first"},
            {"op": "put", "key": keys[0], "body": "second, an overwrite"},
            {"op": "put", "key": keys[1], "body": "text"},
            {"op": "delete", "key": keys[0]},
            {"op": "multipart", "key": keys[2], "parts": [5 * 1024 * 1024, 10]},
        ],
    });
    let done = s3_client(&spec);
    let ops = done["ops"].as_array().unwrap();
    let etag = |i: usize| Some(ops[i]["etag"].as_str().unwrap().to_string());
    assert_ne!(etag(0), etag(1), "the overwrite changed the object");
    let mut expected = vec![
        (
            "ObjectCreated:Put".to_string(),
            keys[0].to_string(),
            etag(0),
        ),
        (
            "ObjectCreated:Put".to_string(),
            keys[0].to_string(),
            etag(1),
        ),
        (
            "ObjectCreated:Put".to_string(),
            keys[1].to_string(),
            etag(2),
        ),
        (
            "ObjectRemoved:Delete".to_string(),
            keys[0].to_string(),
            None,
        ),
        (
            "ObjectCreated:CompleteMultipartUpload".to_string(),
            keys[2].to_string(),
            etag(4),
        ),
    ];
    expected.sort();

    // Both paths deliver every event (the webhook ones before the S3 calls returned).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (h, q) = (
            recorder.events_from("rgw").len(),
            recorder.events_from("rgw-amqp").len(),
        );
        if h >= expected.len() && q >= expected.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "webhook {h}, amqp {q} of {} events; recorded: {:#?}\nfngate stderr:\n{}",
            expected.len(),
            recorder.events.lock().unwrap(),
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Long enough for a duplicate, were one on its way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for source in ["rgw", "rgw-amqp"] {
        let events = recorder.events_from(source);
        assert_eq!(
            summary(&events),
            expected,
            "events through {source}: {events:#?}"
        );
        for e in &events {
            assert_eq!(e["bucket"], BUCKET, "{e}");
            assert_eq!(e["origin"], "ceph:s3", "{e}");
        }
    }
    // Every RGW push authenticated (Basic, the token as password) and answered 200.
    let calls: Vec<_> = gw
        .settled_log_lines()
        .await
        .into_iter()
        .filter(|l| l["kind"] == "event_webhook")
        .collect();
    assert_eq!(calls.len(), expected.len(), "{calls:#?}");
    for c in &calls {
        assert_eq!(c["source"], "rgw", "{c}");
        assert_eq!(c["status"], 200, "{c}");
        assert_eq!(c["enqueued"], 1, "{c}");
    }
    // One task per event and path, nothing else (no s3:TestEvent, no duplicate), all run.
    for function in ["media%2Fhooked", "media%2Fqueued"] {
        let tasks = gw
            .admin_json(&format!("/tasks?function={function}&limit=100"))
            .await;
        let tasks = tasks["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), expected.len(), "{function}: {tasks:#?}");
        for t in tasks {
            assert!(t["id"].as_str().unwrap().starts_with("_ev-"), "{t}");
        }
    }
    eprintln!("test done in {:?}", started.elapsed());
}
