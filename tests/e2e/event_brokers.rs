//! Object-storage events from a broker: a JetStream stream and a plain NATS subject on a real
//! nats-server, ingested into async tasks (acked only once stored, deduplicated on redelivery,
//! bad messages terminated instead of redelivered forever).

use crate::harness::*;
use std::time::{Duration, Instant};

const CEPH_PUT: &str = include_str!("../../gateway/src/events/testdata/ceph_put.json");

fn config(nats: &str, backend: &str) -> String {
    format!(
        r#"
[[service]]
name = "media"
[[service.function]]
name = "thumb"
backend = {{ kind = "static", endpoints = ["{backend}"] }}

[[event_source]]
name = "bus"
kind = "nats"
url = "{nats}"
subject = "s3.events.>"
stream = "S3"
consumer = "fngate"

[[event_source]]
name = "plain"
kind = "nats"
url = "{nats}"
subject = "s3.plain"

[[trigger]]
name = "thumbs"
kind = "oss"
function = "media/thumb"
source = "bus"
events = ["ObjectCreated:*"]

[[trigger]]
name = "plain-thumbs"
kind = "oss"
function = "media/thumb"
source = "plain"
"#
    )
}

async fn tasks(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.admin_json("/tasks?function=media/thumb&limit=1000")
        .await["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn wait_tasks(gw: &Gateway, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = tasks(gw).await;
        if t.len() >= n {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} tasks, have {}: {t:#?}",
            t.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn jetstream_and_plain_subject_events_become_tasks_once() {
    let nats = NatsServer::start();
    let be = Backend::start("a");
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "S3".into(),
            subjects: vec!["s3.events.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let gw = Gateway::start(&config(&nats.url, &be.url()));

    // One notification, published twice (a redelivery): one task.
    for _ in 0..2 {
        js.publish("s3.events.rgw", CEPH_PUT.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A malformed one: terminated, never a task, never redelivered forever.
    js.publish("s3.events.rgw", "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let t = wait_tasks(&gw, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t2 = tasks(&gw).await;
    assert_eq!(t2.len(), 1, "redelivered event deduplicated: {t2:#?}");
    assert!(t[0]["id"].as_str().unwrap().starts_with("_ev"), "{t:#?}");
    // Every message was acknowledged (the bad one terminated): nothing left pending.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("fngate")
            .await
            .unwrap();
        let info = c.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "messages left unacked: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A plain subject with request/reply: the sender learns the outcome.
    let other = CEPH_PUT.replace("myimage1.jpg", "other image+1.jpg");
    let reply = client
        .request("s3.plain", other.into())
        .await
        .expect("a reply");
    assert_eq!(&reply.payload[..], b"{\"ok\":true}");
    let bad = client
        .request("s3.plain", "[]".into())
        .await
        .expect("a reply");
    let v: serde_json::Value = serde_json::from_slice(&bad.payload).unwrap();
    assert_eq!(v["retryable"], false, "{v}");
    let t = wait_tasks(&gw, 2).await;
    assert_eq!(t.len(), 2);
    // The function ran with the normalised event (Ceph keys arrive raw: `+` stays `+`).
    let deadline = Instant::now() + Duration::from_secs(20);
    for task in &t {
        let id = task["id"].as_str().unwrap();
        loop {
            let full = gw.admin_json(&format!("/tasks/{id}")).await;
            if full["task"]["state"] == "Succeeded" {
                break;
            }
            assert!(Instant::now() < deadline, "{full:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let stats = be.stats().await;
    assert_eq!(stats["requests"], 2, "{stats}");
}
