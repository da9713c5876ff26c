//! Object-storage event ingestion: notifications from S3, MinIO, Ceph RGW and Alibaba OSS become
//! durable async invocations of the functions whose `oss` triggers match them.
//!
//! Stages, in order (data flows one way):
//!  1. `auth`: the webhook sender proves itself (bearer token or HMAC signature), else 401
//!  2. `parse`: body bytes → normalised `ObjectEvent`s (or a test / SNS confirmation message)
//!  3. `filter`: each event against each `oss` trigger of its source (bucket, names, prefix, suffix)
//!  4. `ingest`: the trigger's plugin chain (`on-event`), then one task per (event, trigger)
//!     with a deterministic id (`dedupe_id`), all stored before anything is acknowledged
//!
//! `webhook` is the HTTP face (`POST /events/{source}`); brokers (NATS, AMQP) call `ingest`
//! directly and ack or nack on its answer (`IngestError::is_retryable`).
//!
//! # Redelivery and the dedupe window
//!
//! A task's id is a SHA-256 of the trigger and the event's identity, and the task store never
//! accepts a second task with an id it holds. A redelivered notification therefore makes no
//! second invocation for as long as the first task's record exists: always while it waits or
//! runs, and for `[queue] retention` after it finishes. `dedupe_window` is the promise made to
//! users; validation refuses a window longer than the retention that keeps it.

mod amqp;
mod auth;
pub mod brokers;
mod filter;
mod ingest;
mod parse;
mod webhook;

pub use auth::{AuthFailure, sign_hmac};
pub use filter::{pattern_matches, strip_event_prefix, trigger_matches};
pub use ingest::{IngestError, Ingested, Outcome, ingest};
pub use parse::{Notification, ParseError, Shape, SnsConfirmation, SnsKind, parse};
pub use webhook::{ROUTE_PREFIX, is_webhook_path, webhook};

use crate::policy::EventView;
use serde::Serialize;
use std::collections::BTreeMap;

/// Which service sent an event: decides how its object key is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Origin {
    /// Amazon S3 (`aws:s3`): keys form-URL-encoded (space as `+`).
    #[serde(rename = "aws:s3")]
    Aws,
    /// MinIO (`minio:s3`): keys form-URL-encoded like S3.
    #[serde(rename = "minio:s3")]
    Minio,
    /// Ceph RGW (`ceph:s3`): keys sent as they are.
    #[serde(rename = "ceph:s3")]
    Ceph,
    /// Alibaba Cloud OSS (`acs:oss`): keys sent as they are.
    #[serde(rename = "acs:oss")]
    Oss,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Aws => "aws:s3",
            Origin::Minio => "minio:s3",
            Origin::Ceph => "ceph:s3",
            Origin::Oss => "acs:oss",
        }
    }
}

/// One object-storage event, the same whichever service sent it. Serialised as is, it is the
/// JSON body the function receives:
///
/// ```json
/// {"source":"rgw","origin":"ceph:s3","event_name":"ObjectCreated:Put","bucket":"photos",
///  "key":"2024/cat 1.jpg","size":1024,"etag":"37b51d194a7513e45b56f6524f2d51f2",
///  "version_id":null,"sequencer":"F7E6D75DC742D108","time":"2019-11-22T13:47:35.124724Z",
///  "region":"zonegroup1","metadata":{"colour":"blue"}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectEvent {
    /// The `[[event_source]]` it arrived through.
    pub source: String,
    pub origin: Origin,
    /// Without any `s3:` / `oss:` prefix, e.g. `ObjectCreated:Put`.
    pub event_name: String,
    pub bucket: String,
    /// The object key, decoded as its origin encodes it.
    pub key: String,
    pub size: Option<u64>,
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub sequencer: Option<String>,
    /// Event time as the sender wrote it (RFC 3339 from AWS, MinIO and OSS).
    pub time: Option<String>,
    pub region: Option<String>,
    /// User metadata (`x-amz-meta-NAME` → `name`, lower-case), where the sender includes it.
    pub metadata: BTreeMap<String, String>,
}

impl ObjectEvent {
    /// The event as a plugin's `on-event` sees it.
    pub fn view(&self, trigger: &str, function: &str) -> EventView {
        EventView {
            source: self.source.clone(),
            event_name: self.event_name.clone(),
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            size: self.size,
            etag: self.etag.clone(),
            version_id: self.version_id.clone(),
            sequencer: self.sequencer.clone(),
            time: self.time.clone(),
            region: self.region.clone(),
            metadata: self
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            trigger: trigger.to_string(),
            function: function.to_string(),
        }
    }
}

/// Prefix of every event task id (`_ev-` + 64 hex digits: a valid task id).
pub const DEDUPE_ID_PREFIX: &str = "_ev-";

/// The task id of `event` on `trigger`: equal for a redelivery of the same event, different for
/// any other event. The identity is bucket, key and event name plus the version id and/or the
/// sequencer; when the sender gives neither, the etag and the event time. An event with none of
/// the four has no identity to recognise it by and gets a fresh id (at least once, never lost).
pub fn dedupe_id(trigger: &str, event: &ObjectEvent) -> String {
    use aws_lc_rs::digest;
    let mut ctx = digest::Context::new(&digest::SHA256);
    // Length-prefixed fields: no two different field lists hash the same bytes.
    let mut field = |tag: u8, v: &[u8]| {
        ctx.update(&[tag]);
        ctx.update(&(v.len() as u64).to_be_bytes());
        ctx.update(v);
    };
    field(0, b"fngate-event-v1");
    field(1, event.source.as_bytes());
    field(2, trigger.as_bytes());
    field(3, event.bucket.as_bytes());
    field(4, event.key.as_bytes());
    field(5, event.event_name.as_bytes());
    let ordered = event.version_id.is_some() || event.sequencer.is_some();
    if ordered {
        if let Some(v) = &event.version_id {
            field(6, v.as_bytes());
        }
        if let Some(s) = &event.sequencer {
            field(7, s.as_bytes());
        }
    } else if event.etag.is_some() || event.time.is_some() {
        if let Some(e) = &event.etag {
            field(8, e.as_bytes());
        }
        if let Some(t) = &event.time {
            field(9, t.as_bytes());
        }
    } else {
        field(10, crate::queue::new_task_id().as_bytes());
    }
    let digest = ctx.finish();
    let mut id = String::with_capacity(DEDUPE_ID_PREFIX.len() + 64);
    id.push_str(DEDUPE_ID_PREFIX);
    for b in digest.as_ref() {
        id.push(HEX[(b >> 4) as usize] as char);
        id.push(HEX[(b & 15) as usize] as char);
    }
    id
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Standard base64 (RFC 4648, padding optional, ASCII whitespace ignored): HTTP Basic
/// credentials and OSS notifications relayed through MNS.
pub(crate) fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut padding = 0;
    for &c in input {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        if padding > 0 {
            // Data after padding.
            return None;
        }
        // Only the bits not yet emitted matter (fewer than 14): keep the accumulator small.
        acc = ((acc << 6) | u32::from(v)) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Leftover bits must be the zero fill of a final partial group.
    if bits >= 6 || acc & ((1 << bits) - 1) != 0 || padding > 2 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> ObjectEvent {
        ObjectEvent {
            source: "rgw".into(),
            origin: Origin::Ceph,
            event_name: "ObjectCreated:Put".into(),
            bucket: "photos".into(),
            key: "a/b c.jpg".into(),
            size: Some(10),
            etag: Some("e".into()),
            version_id: None,
            sequencer: Some("0055AED6DCD90281E5".into()),
            time: Some("2024-01-01T00:00:00Z".into()),
            region: None,
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn dedupe_ids_are_valid_stable_and_distinct() {
        let e = event();
        let id = dedupe_id("thumbs", &e);
        assert!(crate::queue::valid_task_id(&id), "{id}");
        assert_eq!(id.len(), 4 + 64);
        assert_eq!(id, dedupe_id("thumbs", &e.clone()));
        // The size or region of a redelivery does not matter; what identifies the event does.
        let mut same = e.clone();
        same.size = Some(11);
        same.region = Some("x".into());
        assert_eq!(id, dedupe_id("thumbs", &same));
        assert_ne!(id, dedupe_id("other-trigger", &e));
        for change in [
            |e: &mut ObjectEvent| e.bucket.push('x'),
            |e: &mut ObjectEvent| e.key.push('x'),
            |e: &mut ObjectEvent| e.event_name = "ObjectRemoved:Delete".into(),
            |e: &mut ObjectEvent| e.sequencer = Some("0055AED6DCD90281E6".into()),
            |e: &mut ObjectEvent| e.version_id = Some("v2".into()),
            |e: &mut ObjectEvent| e.source = "minio".into(),
        ] {
            let mut other = e.clone();
            change(&mut other);
            assert_ne!(id, dedupe_id("thumbs", &other), "{other:?}");
        }
        // With a sequencer, etag and time are not part of the identity...
        let mut retimed = e.clone();
        retimed.time = Some("2024-01-01T00:00:01Z".into());
        assert_eq!(id, dedupe_id("thumbs", &retimed));
        // ...without version or sequencer they are.
        let mut plain = e.clone();
        plain.sequencer = None;
        let pid = dedupe_id("thumbs", &plain);
        assert_eq!(pid, dedupe_id("thumbs", &plain));
        let mut plain2 = plain.clone();
        plain2.time = Some("2024-01-01T00:00:01Z".into());
        assert_ne!(pid, dedupe_id("thumbs", &plain2));
        let mut plain3 = plain.clone();
        plain3.etag = Some("f".into());
        assert_ne!(pid, dedupe_id("thumbs", &plain3));
        // No identity at all: never deduplicated.
        let mut bare = plain.clone();
        bare.etag = None;
        bare.time = None;
        assert_ne!(dedupe_id("thumbs", &bare), dedupe_id("thumbs", &bare));
    }

    #[test]
    fn field_boundaries_matter() {
        let mut a = event();
        a.bucket = "ab".into();
        a.key = "c".into();
        let mut b = event();
        b.bucket = "a".into();
        b.key = "bc".into();
        assert_ne!(dedupe_id("t", &a), dedupe_id("t", &b));
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode(b"").unwrap(), b"");
        assert_eq!(base64_decode(b"Zg==").unwrap(), b"f");
        assert_eq!(base64_decode(b"Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode(b"Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode(b"Zm9vYg").unwrap(), b"foob");
        assert_eq!(base64_decode(b"Zm9v\r\nYmFy").unwrap(), b"foobar");
        assert_eq!(
            base64_decode(b"/wAQgA==").unwrap(),
            [0xff, 0x00, 0x10, 0x80]
        );
        assert!(base64_decode(b"Zm9v!").is_none());
        assert!(base64_decode(b"Zg==Zg").is_none());
        assert!(base64_decode(b"Z").is_none());
        assert!(base64_decode(b"Zh==").is_none(), "non-zero fill bits");
    }

    #[test]
    fn views_carry_trigger_and_function() {
        let mut e = event();
        e.metadata.insert("colour".into(), "blue".into());
        let v = e.view("thumbs", "demo/thumb");
        assert_eq!(v.trigger, "thumbs");
        assert_eq!(v.function, "demo/thumb");
        assert_eq!(v.key, "a/b c.jpg");
        assert_eq!(v.metadata, vec![("colour".to_string(), "blue".to_string())]);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["origin"], "ceph:s3");
        assert_eq!(json["version_id"], serde_json::Value::Null);
        assert_eq!(json["metadata"]["colour"], "blue");
    }
}
