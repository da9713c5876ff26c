//! Object-storage events from an AMQP queue on a real RabbitMQ node: the consumer waits for a
//! queue that does not exist yet, acks a message once its task is stored (a redelivered event
//! makes no second task), rejects a bad one without requeueing it, comes back after the broker
//! drops its connection, and follows a reload onto another queue. A retryable failure (here a
//! fail-closed plugin that traps) requeues the message after a pause instead of spinning.

use crate::harness::*;
use http::Method;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::time::{Duration, Instant};

const CEPH_PUT: &str = include_str!("../../gateway/src/events/testdata/ceph_put.json");

fn config(amqp: &str, queue: &str, backend: &str) -> String {
    config_with(amqp, queue, backend, "")
}

/// `extra` goes at the end of the `thumbs` trigger (and may add sections after it).
fn config_with(amqp: &str, queue: &str, backend: &str, extra: &str) -> String {
    format!(
        r#"
[[service]]
name = "media"
[[service.function]]
name = "thumb"
backend = {{ kind = "static", endpoints = ["{backend}"] }}

[[event_source]]
name = "bus"
kind = "amqp"
url = "{amqp}"
queue = "{queue}"
prefetch = 4

[[trigger]]
name = "thumbs"
kind = "oss"
function = "media/thumb"
source = "bus"
{extra}
"#
    )
}

async fn channel(url: &str) -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

async fn declare(ch: &lapin::Channel, queue: &str) {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// (ready messages, consumers) of `queue`.
async fn queue_state(ch: &lapin::Channel, queue: &str) -> (u32, u32) {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap();
    (q.message_count(), q.consumer_count())
}

async fn publish(ch: &lapin::Channel, queue: &str, body: &str) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        lapin::BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn task_count(gw: &Gateway) -> usize {
    gw.admin_json("/tasks?function=media%2Fthumb&limit=100")
        .await["tasks"]
        .as_array()
        .map_or(0, Vec::len)
}

async fn wait_tasks(gw: &Gateway, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let have = task_count(gw).await;
        if have >= n {
            // Long enough for a duplicate, were one on its way.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(task_count(gw).await, n, "one task per distinct event");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{have} of {n} tasks:\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the first metric line naming `name` with all of `labels`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_messages_are_acked_once_stored_rejected_when_bad_and_consumed_across_reconnects() {
    // A node of its own: this test drops every connection of the broker, which would break the
    // other tests' connections on the shared node.
    let rabbit = tokio::task::spawn_blocking(RabbitMq::start).await.unwrap();
    let be = Backend::start("a");
    let (q1, q2) = ("amqp-test-events", "amqp-test-events-2");

    // The gateway first: its queue does not exist yet, the consumer retries until it does.
    // The queue is declared only once a retry was counted (declared sooner, it could beat the
    // consumer's first attempt).
    let gw = Gateway::start(&config(&rabbit.url, q1, &be.url()));
    let reconnects = ["fngate_event_source_reconnects_total", "source=\"bus\""];
    eventually(
        "the missing queue made the consumer retry",
        Duration::from_secs(20),
        || async { metric(&gw, reconnects[0], &reconnects[1..]).await >= 1.0 },
    )
    .await;
    let (_conn, ch) = channel(&rabbit.url).await;
    declare(&ch, q1).await;

    // One event twice (a redelivery): one task. A malformed message: rejected, never a task,
    // and not requeued (it would be counted again and again).
    publish(&ch, q1, CEPH_PUT).await;
    publish(&ch, q1, CEPH_PUT).await;
    publish(&ch, q1, "{not json").await;
    wait_tasks(&gw, 1).await;
    let rejected = ["source=\"bus\"", "reason=\"bad_input\""];
    eventually(
        "the bad message rejected",
        Duration::from_secs(10),
        || async { metric(&gw, "fngate_events_rejected_total", &rejected).await == 1.0 },
    )
    .await;
    eventually("the queue drained", Duration::from_secs(10), || async {
        queue_state(&ch, q1).await == (0, 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        metric(&gw, "fngate_events_rejected_total", &rejected).await,
        1.0,
        "a rejected message is not redelivered"
    );
    assert_eq!(queue_state(&ch, q1).await, (0, 1));
    let before = metric(&gw, reconnects[0], &reconnects[1..]).await;

    // The broker drops every connection: the consumer reconnects and goes on.
    rabbit.ctl(&["close_all_connections", "test: dropped by the broker"]);
    let (_conn, ch) = channel(&rabbit.url).await;
    eventually("a reconnect", Duration::from_secs(15), || async {
        metric(&gw, reconnects[0], &reconnects[1..]).await > before
    })
    .await;
    publish(
        &ch,
        q1,
        &CEPH_PUT.replace("myimage1.jpg", "after reconnect+1.jpg"),
    )
    .await;
    wait_tasks(&gw, 2).await;

    // A reload onto another queue stops the old consumer and starts a new one.
    declare(&ch, q2).await;
    gw.write_config(&config(&rabbit.url, q2, &be.url()));
    let r = gw.admin(Method::POST, "/admin/reload").await;
    assert!(r.status.is_success(), "{}", r.text());
    eventually(
        "the consumer moved queues",
        Duration::from_secs(15),
        || async { queue_state(&ch, q1).await.1 == 0 && queue_state(&ch, q2).await.1 == 1 },
    )
    .await;
    publish(
        &ch,
        q2,
        &CEPH_PUT.replace("myimage1.jpg", "second queue.jpg"),
    )
    .await;
    wait_tasks(&gw, 3).await;
    assert_eq!(queue_state(&ch, q2).await, (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_failure_requeues_the_message_after_a_pause_until_it_can_be_taken() {
    let rabbit = tokio::task::spawn_blocking(RabbitMq::shared).await.unwrap();
    let be = Backend::start("a");
    let queue = "amqp-test-retry";
    let (_conn, ch) = channel(&rabbit.url).await;
    declare(&ch, queue).await;
    let hostile = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release/hostile.wasm");
    assert!(
        hostile.exists(),
        "{} missing: run plugins/build.sh",
        hostile.display()
    );
    let trapping = format!(
        r#"plugins = ["trap"]
[[plugin]]
name = "trap"
path = "{}"
config = {{ mode = "trap" }}
on_error = "fail-closed"
"#,
        hostile.canonicalize().unwrap().display()
    );
    let gw = Gateway::start(&config_with(&rabbit.url, queue, &be.url(), &trapping));
    publish(&ch, queue, CEPH_PUT).await;

    // Each delivery fails and goes back to the queue a second later: a few attempts, not a spin.
    let failed = ["source=\"bus\"", "reason=\"plugin_failed\""];
    eventually(
        "a first failed attempt",
        Duration::from_secs(15),
        || async { metric(&gw, "fngate_events_rejected_total", &failed).await >= 1.0 },
    )
    .await;
    let first = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let attempts = metric(&gw, "fngate_events_rejected_total", &failed).await;
    let most = 2.0 + first.elapsed().as_secs_f64();
    assert!(
        (2.0..=most).contains(&attempts),
        "{attempts} attempts in {:?}",
        first.elapsed()
    );
    assert_eq!(
        task_count(&gw).await,
        0,
        "nothing stored while the plugin fails"
    );

    // Without the plugin the next redelivery is taken: one task, the queue drained.
    gw.write_config(&config(&rabbit.url, queue, &be.url()));
    let r = gw.admin(Method::POST, "/admin/reload").await;
    assert!(r.status.is_success(), "{}", r.text());
    wait_tasks(&gw, 1).await;
    eventually("the queue drained", Duration::from_secs(10), || async {
        queue_state(&ch, queue).await == (0, 1)
    })
    .await;
}
