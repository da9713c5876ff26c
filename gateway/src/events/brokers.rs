//! Broker event sources: `[[event_source]] kind = "nats"` consumers (and `"amqp"` ones, whose
//! consumer is in `amqp.rs`) that feed notifications to `ingest`, acknowledging a message only
//! once every task it produced is stored.
//!
//! - JetStream (`stream` + `consumer` set): a durable pull consumer on the existing stream,
//!   shared by every gateway. Ack after ingest; a retryable failure (store or fail-closed
//!   plugin) naks with a delay so the broker redelivers; bad input is terminated (it would fail
//!   the same way again) and counted.
//! - A plain subject: a queue-group subscription (one gateway of the group gets each message).
//!   Core NATS has no redelivery, so a failed ingest is logged and counted, and a message with a
//!   reply subject gets an error reply. Use JetStream where losing a notification matters.
//!
//! `Sources::sync` runs at start and after each reload: consumers whose settings changed or
//! vanished stop, new ones start. Each reconnects with backoff on its own.

use crate::config::{EventSourceKind, EventSourceSpec};
use crate::state::Gateway;
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Redelivery delay after a retryable ingest failure.
const NAK_DELAY: Duration = Duration::from_secs(1);
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Messages fetched per pull; each is ingested and acked before the next pull.
const FETCH_BATCH: usize = 64;

/// The running broker consumers, by source name.
#[derive(Default)]
pub struct Sources {
    running: HashMap<String, (EventSourceKind, JoinHandle<()>)>,
}

impl Drop for Sources {
    fn drop(&mut self) {
        for (_, (_, h)) in self.running.drain() {
            h.abort();
        }
    }
}

impl Sources {
    /// Starts and stops consumers to match `specs`.
    pub fn sync(&mut self, gw: &Arc<Gateway>, specs: &[EventSourceSpec]) {
        let wanted: HashMap<&str, &EventSourceSpec> = specs
            .iter()
            .filter(|s| {
                matches!(
                    s.kind,
                    EventSourceKind::Nats { .. } | EventSourceKind::Amqp { .. }
                )
            })
            .map(|s| (s.name.as_str(), s))
            .collect();
        self.running.retain(|name, (kind, handle)| {
            let keep = wanted
                .get(name.as_str())
                .is_some_and(|s| same(&s.kind, kind));
            if !keep {
                tracing::info!(source = %name, "stopping the event source consumer");
                handle.abort();
            }
            keep
        });
        for (name, spec) in wanted {
            if self.running.contains_key(name) {
                continue;
            }
            let handle = tokio::spawn(run(Arc::downgrade(gw), spec.clone()));
            self.running
                .insert(name.to_owned(), (spec.kind.clone(), handle));
        }
    }
}

fn same(a: &EventSourceKind, b: &EventSourceKind) -> bool {
    match (a, b) {
        (
            EventSourceKind::Nats {
                url: u1,
                subject: s1,
                jetstream: j1,
            },
            EventSourceKind::Nats {
                url: u2,
                subject: s2,
                jetstream: j2,
            },
        ) => u1 == u2 && s1 == s2 && j1 == j2,
        (
            EventSourceKind::Amqp {
                url: u1,
                queue: q1,
                prefetch: p1,
            },
            EventSourceKind::Amqp {
                url: u2,
                queue: q2,
                prefetch: p2,
            },
        ) => u1 == u2 && q1 == q2 && p1 == p2,
        _ => false,
    }
}

/// One source's consumer, reconnecting with backoff until aborted or the gateway is gone.
async fn run(gw: Weak<Gateway>, spec: EventSourceSpec) {
    let mut backoff = RECONNECT_MIN;
    loop {
        if gw.strong_count() == 0 {
            return;
        }
        let started = tokio::time::Instant::now();
        let err = match &spec.kind {
            EventSourceKind::Nats {
                url,
                subject,
                jetstream: Some(js),
            } => consume_jetstream(&gw, &spec.name, url, subject, &js.stream, &js.consumer).await,
            EventSourceKind::Nats {
                url,
                subject,
                jetstream: None,
            } => consume_subject(&gw, &spec.name, url, subject).await,
            EventSourceKind::Amqp {
                url,
                queue,
                prefetch,
            } => super::amqp::consume(&gw, &spec.name, url, queue, *prefetch).await,
            _ => return,
        };
        tracing::warn!(source = %spec.name, "event source consumer stopped: {err}; reconnecting in {} ms", backoff.as_millis());
        metrics::counter!(crate::telemetry::EVENT_SOURCE_RECONNECTS, "source" => spec.name.clone())
            .increment(1);
        if started.elapsed() > RECONNECT_MAX {
            backoff = RECONNECT_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

async fn connect(source: &str, url: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .name(format!("fngate event source {source}"))
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))
}

async fn consume_jetstream(
    gw: &Weak<Gateway>,
    source: &str,
    url: &str,
    subject: &str,
    stream: &str,
    consumer: &str,
) -> String {
    let client = match connect(source, url).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let js = jetstream::new(client);
    let stream_h = match js.get_stream(stream).await {
        Ok(s) => s,
        Err(e) => return format!("stream `{stream}`: {e}"),
    };
    let config = jetstream::consumer::pull::Config {
        durable_name: Some(consumer.to_owned()),
        filter_subject: subject.to_owned(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        description: Some(format!("fngate event source {source}")),
        ..Default::default()
    };
    let c: jetstream::consumer::PullConsumer =
        match stream_h.get_or_create_consumer(consumer, config).await {
            Ok(c) => c,
            Err(e) => return format!("consumer `{consumer}` on stream `{stream}`: {e}"),
        };
    tracing::info!(
        source,
        stream,
        consumer,
        subject,
        "consuming object-storage events from JetStream"
    );
    loop {
        let mut batch = match c
            .batch()
            .max_messages(FETCH_BATCH)
            .expires(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(b) => b,
            Err(e) => return format!("fetching: {e}"),
        };
        while let Some(m) = batch.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => return format!("fetching: {e}"),
            };
            let Some(gw) = gw.upgrade() else {
                return "the gateway stopped".into();
            };
            let ack = match super::ingest(&gw, source, &m.message.payload).await {
                Ok(_) => AckKind::Ack,
                Err(e) if e.is_retryable() => {
                    tracing::warn!(
                        source,
                        "event message not taken, the broker will redeliver it: {e}"
                    );
                    AckKind::Nak(Some(NAK_DELAY))
                }
                Err(e) => {
                    tracing::warn!(source, "event message dropped: {e}");
                    AckKind::Term
                }
            };
            drop(gw);
            if let Err(e) = m.double_ack_with(ack).await {
                tracing::warn!(
                    source,
                    "acknowledging an event message failed (it will be redelivered and deduplicated): {e}"
                );
            }
        }
    }
}

async fn consume_subject(gw: &Weak<Gateway>, source: &str, url: &str, subject: &str) -> String {
    let client = match connect(source, url).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let mut sub = match client
        .queue_subscribe(subject.to_owned(), format!("fngate-{source}"))
        .await
    {
        Ok(s) => s,
        Err(e) => return format!("subscribing to `{subject}`: {e}"),
    };
    tracing::info!(
        source,
        subject,
        "consuming object-storage events from a NATS subject (no redelivery: prefer JetStream)"
    );
    while let Some(msg) = sub.next().await {
        let Some(gw) = gw.upgrade() else {
            return "the gateway stopped".into();
        };
        // A sender that used request/reply learns the outcome (and can retry on an error).
        let answer = match super::ingest(&gw, source, &msg.payload).await {
            Ok(_) => "{\"ok\":true}".to_owned(),
            Err(e) => {
                tracing::warn!(
                    source,
                    "event message not taken (a plain subject cannot redeliver it): {e}"
                );
                serde_json::json!({ "error": e.to_string(), "retryable": e.is_retryable() })
                    .to_string()
            }
        };
        drop(gw);
        if let Some(reply) = msg.reply {
            let body = answer;
            let _ = client.publish(reply, body.into()).await;
        }
    }
    "the subscription ended".into()
}
