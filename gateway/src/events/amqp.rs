//! AMQP 0-9-1 event sources (`[[event_source]] kind = "amqp"`, RabbitMQ): one consumer on an
//! existing queue that feeds each message to `ingest`, acknowledging it only once every task it
//! produced is stored.
//!
//! - `basic.qos(prefetch)` bounds what the broker hands over unacknowledged, and so what this
//!   consumer holds in memory; up to `prefetch` messages are ingested at once (their tasks share
//!   the store's group commits).
//! - Ingested (or a test / confirmation message): `basic.ack`.
//! - Retryable failure (store unavailable, fail-closed plugin): `basic.nack` with requeue, after
//!   `NACK_DELAY`, so a broken store does not spin the broker and the gateway.
//! - Bad input (not JSON, unknown shape, too large): `basic.reject` without requeue (it would
//!   fail the same way forever); it goes to the queue's dead-letter exchange if there is one.
//!   `ingest` counts it in `fngate_events_rejected_total`; it is logged here.
//!
//! fngate only consumes: the queue, its exchange and bindings are the operator's (a passive
//! declare checks the queue exists). Connection or channel loss ends `consume`; the caller
//! (`brokers::run`) counts the reconnect and tries again with backoff. Unacked messages go back
//! to the queue when the connection closes; their redelivery is deduplicated by task id.
//!
//! Only plain `amqp://` is built in (no TLS stack for lapin): an `amqps://` source logs why it
//! cannot run, once, and waits for a reload.

use crate::state::Gateway;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::sync::Weak;
use std::time::Duration;

/// Wait before a retryable failure's message goes back to the queue.
const NACK_DELAY: Duration = Duration::from_secs(1);
/// Connecting (TCP + AMQP handshake) and each setup call take at most this long.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Consumes `queue` until the connection or channel is lost (or the gateway stops); returns why.
pub(super) async fn consume(
    gw: &Weak<Gateway>,
    source: &str,
    url: &str,
    queue: &str,
    prefetch: u16,
) -> String {
    let shown = redact(url);
    if url.starts_with("amqps://") {
        tracing::error!(
            source,
            url = %shown,
            "amqps:// is not supported by this build (plain amqp:// only); the source stays idle until the config changes"
        );
        std::future::pending::<()>().await;
    }
    let props = ConnectionProperties::default()
        .with_connection_name(format!("fngate event source {source}").into());
    let conn = match tokio::time::timeout(SETUP_TIMEOUT, Connection::connect(url, props)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return format!("cannot connect to {shown}: {e}"),
        Err(_) => return format!("cannot connect to {shown}: no answer in {SETUP_TIMEOUT:?}"),
    };
    let consumer = match setup(&conn, queue, prefetch).await {
        Ok(c) => c,
        Err(e) => return format!("{shown}: {e}"),
    };
    tracing::info!(
        source,
        url = %shown,
        queue,
        prefetch,
        "consuming object-storage events from an AMQP queue"
    );
    let why = deliver(gw, source, consumer).await;
    // Dropping the connection closes it; the broker requeues whatever is still unacked.
    drop(conn);
    why
}

/// A channel with `basic.qos(prefetch)` and a manual-ack consumer on `queue`.
async fn setup(conn: &Connection, queue: &str, prefetch: u16) -> Result<lapin::Consumer, String> {
    async fn step<T>(
        what: &str,
        f: impl std::future::Future<Output = lapin::Result<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(SETUP_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: no answer in {SETUP_TIMEOUT:?}")),
        }
    }
    let channel = step("opening a channel", conn.create_channel()).await?;
    step(
        "basic.qos",
        channel.basic_qos(prefetch, BasicQosOptions { global: false }),
    )
    .await?;
    step(
        &format!("queue `{queue}` (it must exist; fngate does not declare it)"),
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    step(
        &format!("consuming queue `{queue}`"),
        channel.basic_consume(
            queue.into(),
            // Empty: the broker picks a unique tag (several gateways may share the queue).
            "".into(),
            BasicConsumeOptions {
                no_ack: false,
                exclusive: false,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
}

/// Ingests deliveries as they come, at most as many at once as the broker hands over (prefetch).
async fn deliver(gw: &Weak<Gateway>, source: &str, mut consumer: lapin::Consumer) -> String {
    let mut in_flight = FuturesUnordered::new();
    let why = loop {
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            next = consumer.next() => match next {
                Some(Ok(d)) => {
                    if gw.strong_count() == 0 {
                        break "the gateway stopped".to_owned();
                    }
                    in_flight.push(handle(gw.clone(), source, d));
                }
                Some(Err(e)) => break format!("consuming: {e}"),
                None => break "the broker cancelled the consumer".to_owned(),
            },
        }
    };
    // Let messages already being ingested finish (their tasks may be half stored); their acks
    // fail on a lost channel, and the broker redelivers them to be deduplicated.
    while in_flight.next().await.is_some() {}
    why
}

/// What to answer the broker for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ack,
    Requeue,
    Reject,
}

async fn handle(gw: Weak<Gateway>, source: &str, d: Delivery) {
    let verdict = match gw.upgrade() {
        // The gateway is going away: leave the message to the broker.
        None => Verdict::Requeue,
        Some(gw) => match super::ingest(&gw, source, &d.data).await {
            Ok(_) => Verdict::Ack,
            Err(e) if e.is_retryable() => {
                tracing::warn!(
                    source,
                    redelivered = d.redelivered,
                    "event message not taken, requeued for redelivery in {NACK_DELAY:?}: {e}"
                );
                Verdict::Requeue
            }
            Err(e) => {
                tracing::warn!(
                    source,
                    bytes = d.data.len(),
                    "event message rejected (not requeued; dead-lettered if the queue has a dead-letter exchange): {e}"
                );
                Verdict::Reject
            }
        },
    };
    let settled = match verdict {
        Verdict::Ack => d.acker.ack(BasicAckOptions::default()).await,
        Verdict::Requeue => {
            tokio::time::sleep(NACK_DELAY).await;
            d.acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
        }
        Verdict::Reject => d.acker.reject(BasicRejectOptions { requeue: false }).await,
    };
    if let Err(e) = settled {
        tracing::warn!(
            source,
            ?verdict,
            "settling an event message failed (it will be redelivered and deduplicated): {e}"
        );
    }
}

/// `url` with any password replaced, for logs and errors.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("amqp://user:s3cret@rabbit:5672/%2f"),
            "amqp://user:***@rabbit:5672/%2f"
        );
        assert_eq!(redact("amqp://u:p@h"), "amqp://u:***@h");
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
        // An `@` in the path is not userinfo.
        assert_eq!(redact("amqp://h/v@x"), "amqp://h/v@x");
        assert_eq!(redact("not a url"), "not a url");
    }
}
