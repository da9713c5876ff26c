//! The NATS JetStream queue against a real nats-server: the SIGKILL durability test of the
//! embedded queue, and two gateways sharing one queue (each task once; all survive one
//! gateway's SIGKILL).

use crate::async_tasks::{killed_mid_stream, task};
use crate::harness::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::time::{Duration, Instant};

#[tokio::test]
async fn nothing_accepted_is_lost_when_fngate_is_killed_with_the_nats_queue() {
    let nats = NatsServer::start();
    killed_mid_stream(&nats.queue_config()).await;
}

async fn send_async(gw: &Gateway, ids: &[String], path: &str) {
    let mut conn = gw.tls().connect(gw.public, false).await;
    for id in ids {
        let r = conn
            .send(
                Method::POST,
                path,
                &[
                    ("x-fngate-invocation-type", "async"),
                    ("x-fngate-task-id", id),
                ],
                Bytes::from_static(b"{}"),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    }
}

async fn wait_all_succeeded(gw: &Gateway, ids: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    for id in ids {
        loop {
            let t = task(gw, id).await;
            if t["task"]["state"] == "Succeeded" {
                break;
            }
            assert!(Instant::now() < deadline, "task {id} not done: {t:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn two_gateways_share_one_queue_and_survive_one_being_killed() {
    let nats = NatsServer::start();
    let be = Backend::start("a");
    let config = format!(
        "{}\n{}",
        nats.queue_config(),
        one_function(
            &[be.url()],
            "instance_concurrency = 8\ntimeout = \"2s\"\nasync = { max_concurrency = 8 }",
            "",
        )
    );
    let mut a = Gateway::start(&config);
    let b = Gateway::start(&config);

    // Normal case: 200 tasks accepted half by each gateway run exactly once in all.
    let ids: Vec<String> = (0..200).map(|i| format!("n{i}")).collect();
    let (first, second) = ids.split_at(100);
    tokio::join!(
        send_async(&a, first, "/echo/work?sleep_ms=2"),
        send_async(&b, second, "/echo/work?sleep_ms=2")
    );
    wait_all_succeeded(&b, &ids, Duration::from_secs(60)).await;
    let runs = be.stats().await["requests"].as_u64().unwrap();
    assert_eq!(runs, 200, "each task runs once when no gateway dies");
    for id in &ids {
        let t = task(&a, id).await;
        assert_eq!(t["task"]["attempts"], 1, "{t:#}");
    }
    // Both gateways ran attempts: the queue is shared, not partitioned by who accepted.
    let succeeded = ["fngate_async_attempts_total", "outcome=\"succeeded\""];
    let (ran_a, ran_b) = (
        metric(&a, succeeded[0], &succeeded[1..]).await,
        metric(&b, succeeded[0], &succeeded[1..]).await,
    );
    assert_eq!(ran_a + ran_b, 200.0);
    assert!(ran_a > 0.0 && ran_b > 0.0, "A ran {ran_a}, B ran {ran_b}");

    // Slow tasks, so that A holds several when it is SIGKILLed; B finishes all of them.
    let slow: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    send_async(&a, &slow, "/echo/work?sleep_ms=300").await;
    // Kill A once the slow tasks are under way (both gateways claim them).
    let deadline = Instant::now() + Duration::from_secs(20);
    while be.stats().await["requests"].as_u64().unwrap() < 212 {
        assert!(Instant::now() < deadline, "slow tasks never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill();
    let before = be.stats().await["requests"].as_u64().unwrap();
    wait_all_succeeded(&b, &slow, Duration::from_secs(60)).await;
    let after = be.stats().await["requests"].as_u64().unwrap();
    let ran = after - 200;
    eprintln!(
        "after A's SIGKILL: all 60 slow tasks succeeded through B; the backend ran {ran} requests for them ({} run twice: in flight on A at the kill; {} had run before the kill)",
        ran.saturating_sub(60),
        before.saturating_sub(200)
    );
    assert!(ran >= 60);
}

#[tokio::test]
async fn destination_records_can_go_to_a_nats_subject() {
    use futures_util::StreamExt;
    let nats = NatsServer::start();
    let be = Backend::start("a");
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let mut sub = client.subscribe("results.demo").await.unwrap();
    client.flush().await.unwrap();
    let gw = Gateway::start(&format!(
        "{}\n{}",
        nats.queue_config(),
        one_function(
            &[be.url()],
            "async = { on_success = \"nats:results.demo\", on_failure = \"nats:failures.demo\" }",
            "",
        )
    ));
    send_async(&gw, &["dest1".to_string()], "/echo/hello").await;
    let msg = tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("a destination record within 20 s")
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(
        record["requestContext"]["condition"], "Success",
        "{record:#}"
    );
    assert!(record["requestContext"]["requestId"].as_str().is_some());
}
