//! Notification bodies → normalised `ObjectEvent`s: S3 `{"Records":[…]}` as AWS, MinIO and Ceph
//! RGW send it, Alibaba OSS `{"events":[…]}`, SNS envelopes around S3 notifications, and the
//! messages that carry no event (`s3:TestEvent`, SNS subscription confirmations).
//!
//! # Object keys, per origin
//!
//! | `eventSource` | key as sent | fngate's key |
//! |---|---|---|
//! | `aws:s3` | form-URL-encoded: `red flower.jpg` → `red+flower.jpg`, `+` → `%2B`, `/` may be `%2F` | `+` → space, then `%XX` → byte; must be UTF-8 |
//! | `minio:s3` | as AWS (`Tile_+002.mtl` → `Tile_%2B002.mtl`, `a/b` → `a%2Fb`) | as AWS |
//! | `ceph:s3` | raw: the key itself | unchanged: `a%41+b` stays `a%41+b` |
//! | `acs:oss` | raw | unchanged |
//!
//! AWS documents the encoding ("the object key name value is URL encoded … `red+flower.jpg`")
//! and MinIO follows it. Ceph RGW's bucket-notification record carries the key as stored. For
//! OSS, Alibaba's notification reference describes `oss.object.key` as the object's name with no
//! encoding, its Function Compute samples hand `events[0].oss.object.key` straight to the OSS
//! SDK, and the notification itself travels JSON-in-Base64 (MNS), which needs no URL escaping:
//! fngate takes OSS keys as sent. Decoding a raw key would corrupt any key containing `%` or `+`.
//!
//! OSS notifications relayed by MNS arrive Base64-encoded; a body that is Base64 of a JSON
//! object is decoded first. Event names lose any `s3:` / `oss:` prefix.

use super::{ObjectEvent, Origin, base64_decode, strip_event_prefix};
use crate::config::MAX_EVENT_MAX_RECORDS;
use crate::telemetry::hex_digit;
use serde::de::{DeserializeOwned, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::marker::PhantomData;

/// S3's limit on key length (OSS: 1023, Ceph's default: 1024).
const MAX_KEY_BYTES: usize = 1024;
const MAX_BUCKET_BYTES: usize = 255;
const MAX_EVENT_NAME_BYTES: usize = 128;
/// etag, version id, sequencer, time, region.
const MAX_FIELD_BYTES: usize = 1024;
const MAX_METADATA_ENTRIES: usize = 64;
/// Names and values together (S3 allows 2 KB of user metadata).
const MAX_METADATA_BYTES: usize = 8 * 1024;
/// SNS confirmation fields kept for the log line and the answer.
const MAX_SNS_FIELD_CHARS: usize = 2048;

/// What a notification body turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// Zero or more object events.
    Events {
        shape: Shape,
        events: Vec<ObjectEvent>,
    },
    /// `s3:TestEvent`, sent when a bucket notification is configured: acknowledged, never run.
    Test {
        shape: Shape,
        bucket: Option<String>,
    },
    /// An SNS (un)subscription confirmation: logged for the operator, never fetched.
    Sns(SnsConfirmation),
}

impl Notification {
    /// The `shape` metric label.
    pub fn shape_label(&self) -> &'static str {
        match self {
            Notification::Events { shape, .. } => shape.label(),
            Notification::Test { .. } => "test",
            Notification::Sns(_) => "sns_confirmation",
        }
    }
}

/// The envelope the events came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"Records":[…]}` (AWS, MinIO, Ceph RGW).
    S3,
    /// `{"events":[…]}` (Alibaba OSS).
    Oss,
    /// An SNS `Notification` whose `Message` is an S3 notification.
    Sns,
}

impl Shape {
    pub fn label(self) -> &'static str {
        match self {
            Shape::S3 => "s3",
            Shape::Oss => "oss",
            Shape::Sns => "sns",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnsKind {
    /// `SubscriptionConfirmation`: SNS sends nothing until someone visits `SubscribeURL`.
    Subscribe,
    /// `UnsubscribeConfirmation`: the subscription ended; `SubscribeURL` would restore it.
    Unsubscribe,
}

/// The fields an operator needs to confirm an SNS subscription (each cut to 2,048 characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnsConfirmation {
    pub kind: SnsKind,
    pub topic_arn: Option<String>,
    pub subscribe_url: Option<String>,
    pub token: Option<String>,
    pub message_id: Option<String>,
}

/// Why a body is not a notification fngate can take; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("{path}: {detail}")]
    Invalid { path: String, detail: String },
    #[error(
        "not an object-storage notification: {0}; expected {{\"Records\":[…]}} (S3, MinIO, Ceph RGW), {{\"events\":[…]}} (Alibaba OSS), an SNS message or an s3:TestEvent"
    )]
    UnknownShape(String),
    #[error("{count} records; this source takes at most {max} per notification (max_records)")]
    TooManyRecords { count: usize, max: usize },
}

fn invalid(path: String, detail: impl Into<String>) -> ParseError {
    ParseError::Invalid {
        path,
        detail: detail.into(),
    }
}

/// Parses one notification body from `source`; at most `max_records` events.
pub fn parse(source: &str, body: &[u8], max_records: usize) -> Result<Notification, ParseError> {
    let trimmed = body.trim_ascii();
    if trimmed.first() != Some(&b'{')
        && !trimmed.is_empty()
        && let Some(decoded) = base64_decode(trimmed)
        && decoded.trim_ascii_start().first() == Some(&b'{')
    {
        return parse_json(source, &decoded, max_records, true);
    }
    parse_json(source, body, max_records, true)
}

fn parse_json(
    source: &str,
    body: &[u8],
    max_records: usize,
    allow_sns: bool,
) -> Result<Notification, ParseError> {
    let env: RawEnvelope = from_json(body)?;
    match env {
        RawEnvelope {
            records: Some(_),
            events: Some(_),
            ..
        } => Err(ParseError::UnknownShape(
            "it has both `Records` and `events`".into(),
        )),
        RawEnvelope {
            records: Some(Bounded(records)),
            ..
        } => {
            check_count(records.len(), max_records)?;
            let events = records
                .into_iter()
                .enumerate()
                .map(|(i, r)| s3_event(source, i, r))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Notification::Events {
                shape: Shape::S3,
                events,
            })
        }
        RawEnvelope {
            events: Some(Bounded(records)),
            ..
        } => {
            check_count(records.len(), max_records)?;
            let events = records
                .into_iter()
                .enumerate()
                .map(|(i, r)| oss_event(source, i, r))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Notification::Events {
                shape: Shape::Oss,
                events,
            })
        }
        RawEnvelope {
            sns_type: Some(t), ..
        } if !allow_sns => Err(ParseError::UnknownShape(format!(
            "an SNS `{}` message inside an SNS message",
            cut(&t, 64)
        ))),
        RawEnvelope {
            sns_type: Some(t),
            message,
            topic_arn,
            subscribe_url,
            token,
            message_id,
            ..
        } => match t.as_str() {
            "Notification" => {
                let Some(message) = message else {
                    return Err(invalid("Message".into(), "missing in an SNS Notification"));
                };
                match parse_json(source, message.as_bytes(), max_records, false) {
                    Ok(Notification::Events { events, .. }) => Ok(Notification::Events {
                        shape: Shape::Sns,
                        events,
                    }),
                    Ok(Notification::Test { bucket, .. }) => Ok(Notification::Test {
                        shape: Shape::Sns,
                        bucket,
                    }),
                    Ok(other) => Ok(other),
                    Err(e) => Err(in_sns_message(e)),
                }
            }
            "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
                let field = |v: Option<String>| v.map(|s| cut(&s, MAX_SNS_FIELD_CHARS));
                Ok(Notification::Sns(SnsConfirmation {
                    kind: if t == "SubscriptionConfirmation" {
                        SnsKind::Subscribe
                    } else {
                        SnsKind::Unsubscribe
                    },
                    topic_arn: field(topic_arn),
                    subscribe_url: field(subscribe_url),
                    token: field(token),
                    message_id: field(message_id),
                }))
            }
            other => Err(ParseError::UnknownShape(format!(
                "SNS message type `{}` (expected Notification, SubscriptionConfirmation or UnsubscribeConfirmation)",
                cut(other, 64)
            ))),
        },
        RawEnvelope {
            event: Some(e),
            bucket,
            ..
        } if e == "s3:TestEvent" => Ok(Notification::Test {
            shape: Shape::S3,
            bucket: bucket.map(|b| cut(&b, MAX_BUCKET_BYTES)),
        }),
        _ => Err(ParseError::UnknownShape(
            "no `Records`, `events`, SNS `Type` or s3:TestEvent `Event`".into(),
        )),
    }
}

fn check_count(count: usize, max: usize) -> Result<(), ParseError> {
    if count > max {
        return Err(ParseError::TooManyRecords { count, max });
    }
    Ok(())
}

/// An error inside an SNS `Message` names the field from the envelope down.
fn in_sns_message(e: ParseError) -> ParseError {
    match e {
        ParseError::NotJson(d) => invalid("Message".into(), format!("not JSON: {d}")),
        ParseError::Invalid { path, detail } => invalid(format!("Message.{path}"), detail),
        ParseError::UnknownShape(d) => ParseError::UnknownShape(format!("in the SNS Message, {d}")),
        e @ ParseError::TooManyRecords { .. } => e,
    }
}

/// JSON → `T`, with the path of a field of the wrong type in the error.
fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ParseError> {
    // A derived struct would also take a JSON array (its fields by position): only objects here.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => ParseError::UnknownShape("the JSON is not an object".into()),
                Err(e) => ParseError::NotJson(e.to_string()),
            },
        );
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => invalid(path, inner.to_string()),
            _ => ParseError::NotJson(inner.to_string()),
        }
    })?;
    de.end().map_err(|e| ParseError::NotJson(e.to_string()))?;
    Ok(value)
}

/// The top level of every shape; unknown fields are ignored (senders add fields over time).
#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(rename = "Records")]
    records: Option<Bounded<RawS3Record>>,
    events: Option<Bounded<RawOssRecord>>,
    // SNS
    #[serde(rename = "Type")]
    sns_type: Option<String>,
    #[serde(rename = "Message")]
    message: Option<String>,
    #[serde(rename = "MessageId")]
    message_id: Option<String>,
    #[serde(rename = "TopicArn")]
    topic_arn: Option<String>,
    #[serde(rename = "SubscribeURL")]
    subscribe_url: Option<String>,
    #[serde(rename = "Token")]
    token: Option<String>,
    // s3:TestEvent
    #[serde(rename = "Event")]
    event: Option<String>,
    #[serde(rename = "Bucket")]
    bucket: Option<String>,
}

/// A list that refuses to grow past `MAX_EVENT_MAX_RECORDS` while it is parsed, so a body of
/// tiny records cannot make a huge allocation; the source's own `max_records` is checked after.
struct Bounded<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Bounded<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Bounded<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of event records")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(x) = seq.next_element()? {
                    if out.len() == MAX_EVENT_MAX_RECORDS {
                        return Err(A::Error::custom(format!(
                            "more than {MAX_EVENT_MAX_RECORDS} records in one notification"
                        )));
                    }
                    out.push(x);
                }
                Ok(Bounded(out))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

#[derive(Deserialize)]
struct RawS3Record {
    #[serde(rename = "eventSource")]
    event_source: Option<String>,
    #[serde(rename = "eventName")]
    event_name: Option<String>,
    #[serde(rename = "eventTime")]
    event_time: Option<String>,
    #[serde(rename = "awsRegion")]
    aws_region: Option<String>,
    s3: Option<RawS3Entity>,
}

#[derive(Deserialize)]
struct RawS3Entity {
    bucket: Option<RawBucket>,
    object: Option<RawS3Object>,
}

#[derive(Deserialize)]
struct RawBucket {
    name: Option<String>,
}

#[derive(Deserialize)]
struct RawS3Object {
    key: Option<String>,
    size: Option<NumOrText>,
    #[serde(rename = "eTag")]
    etag: Option<String>,
    /// Ceph RGW releases spell it `etag`.
    #[serde(rename = "etag")]
    etag_lower: Option<String>,
    #[serde(rename = "versionId")]
    version_id: Option<String>,
    sequencer: Option<String>,
    /// MinIO: `{"X-Amz-Meta-Colour": "blue", "content-type": "…"}`.
    #[serde(rename = "userMetadata")]
    user_metadata: Option<BTreeMap<String, String>>,
    /// Ceph RGW: `[{"key": "x-amz-meta-colour", "val": "blue"}]`.
    metadata: Option<Vec<RawKeyVal>>,
}

#[derive(Deserialize)]
struct RawKeyVal {
    key: Option<String>,
    val: Option<String>,
}

#[derive(Deserialize)]
struct RawOssRecord {
    #[serde(rename = "eventSource")]
    event_source: Option<String>,
    #[serde(rename = "eventName")]
    event_name: Option<String>,
    #[serde(rename = "eventTime")]
    event_time: Option<String>,
    region: Option<String>,
    oss: Option<RawOssEntity>,
}

#[derive(Deserialize)]
struct RawOssEntity {
    bucket: Option<RawBucket>,
    object: Option<RawOssObject>,
}

#[derive(Deserialize)]
struct RawOssObject {
    key: Option<String>,
    size: Option<NumOrText>,
    #[serde(rename = "eTag")]
    etag: Option<String>,
    #[serde(rename = "versionId")]
    version_id: Option<String>,
}

/// Sizes are numbers from AWS, MinIO and OSS; Ceph's documented sample writes `"1024"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Text(String),
}

fn size(path: String, v: Option<NumOrText>) -> Result<Option<u64>, ParseError> {
    match v {
        None => Ok(None),
        Some(NumOrText::Num(n)) => Ok(Some(n)),
        Some(NumOrText::Text(t)) if t.is_empty() => Ok(None),
        Some(NumOrText::Text(t)) => t
            .parse::<u64>()
            .map(Some)
            .map_err(|_| invalid(path, format!("`{}` is not a size in bytes", cut(&t, 32)))),
    }
}

fn required(path: String, v: Option<String>, max: usize) -> Result<String, ParseError> {
    match v {
        None => Err(invalid(path, "missing")),
        Some(s) if s.is_empty() => Err(invalid(path, "empty")),
        Some(s) if s.len() > max => Err(invalid(path, format!("{} bytes; at most {max}", s.len()))),
        Some(s) => Ok(s),
    }
}

/// An optional string field: absent, null and `""` are all `None`.
fn optional(path: String, v: Option<String>) -> Result<Option<String>, ParseError> {
    match v {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) if s.len() > MAX_FIELD_BYTES => Err(invalid(
            path,
            format!("{} bytes; at most {MAX_FIELD_BYTES}", s.len()),
        )),
        Some(s) => Ok(Some(s)),
    }
}

fn event_name(path: String, v: Option<String>) -> Result<String, ParseError> {
    let raw = required(path.clone(), v, MAX_EVENT_NAME_BYTES + 4)?;
    let name = strip_event_prefix(&raw);
    if name.is_empty()
        || name.len() > MAX_EVENT_NAME_BYTES
        || !name.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid(
            path,
            format!(
                "`{}` is not an event name like \"ObjectCreated:Put\"",
                cut(&raw, 64)
            ),
        ));
    }
    Ok(name.to_string())
}

fn key(path: String, raw: Option<String>, origin: Origin) -> Result<String, ParseError> {
    let raw = required(path.clone(), raw, MAX_KEY_BYTES * 3)?;
    let key = match origin {
        Origin::Aws | Origin::Minio => form_decode(&raw).map_err(|d| {
            invalid(
                path.clone(),
                format!(
                    "`{}` {d} ({} keys are URL-encoded)",
                    cut(&raw, 64),
                    origin.as_str()
                ),
            )
        })?,
        Origin::Ceph | Origin::Oss => raw,
    };
    if key.is_empty() {
        return Err(invalid(path, "empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(
            path,
            format!(
                "{} bytes; object keys are at most {MAX_KEY_BYTES}",
                key.len()
            ),
        ));
    }
    Ok(key)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte, then UTF-8.
pub(super) fn form_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    if !b.iter().any(|&c| c == b'%' || c == b'+') {
        return Ok(s.to_string());
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                match (
                    b.get(i + 1).and_then(|&c| hex_digit(c)),
                    b.get(i + 2).and_then(|&c| hex_digit(c)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 3;
                    }
                    _ => return Err(format!("has a `%` at byte {i} without two hex digits")),
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once URL-decoded".to_string())
}

/// User metadata as `name → value`: only `x-amz-meta-*` entries, the prefix removed, names
/// lower-cased (HTTP header names are case-insensitive); the first of duplicates wins.
fn metadata<'a>(
    path: &str,
    entries: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<BTreeMap<String, String>, ParseError> {
    let mut out = BTreeMap::new();
    let mut bytes = 0;
    for (name, value) in entries {
        let lower = name.to_ascii_lowercase();
        let Some(bare) = lower.strip_prefix("x-amz-meta-") else {
            continue;
        };
        if bare.is_empty() || out.contains_key(bare) {
            continue;
        }
        bytes += bare.len() + value.len();
        if out.len() == MAX_METADATA_ENTRIES || bytes > MAX_METADATA_BYTES {
            return Err(invalid(
                path.to_string(),
                format!(
                    "more user metadata than fngate takes ({MAX_METADATA_ENTRIES} entries, {MAX_METADATA_BYTES} bytes)"
                ),
            ));
        }
        out.insert(bare.to_string(), value.to_string());
    }
    Ok(out)
}

fn s3_event(source: &str, i: usize, r: RawS3Record) -> Result<ObjectEvent, ParseError> {
    let at = |field: &str| format!("Records[{i}].{field}");
    let origin = match r.event_source.as_deref() {
        Some("aws:s3") => Origin::Aws,
        Some("minio:s3") => Origin::Minio,
        Some("ceph:s3") => Origin::Ceph,
        Some(other) => {
            return Err(invalid(
                at("eventSource"),
                format!(
                    "`{}`: expected aws:s3, minio:s3 or ceph:s3 (it decides how the key is encoded)",
                    cut(other, 64)
                ),
            ));
        }
        None => {
            return Err(invalid(
                at("eventSource"),
                "missing; expected aws:s3, minio:s3 or ceph:s3 (it decides how the key is encoded)",
            ));
        }
    };
    let event_name = event_name(at("eventName"), r.event_name)?;
    let Some(s3) = r.s3 else {
        return Err(invalid(at("s3"), "missing"));
    };
    let bucket = required(
        at("s3.bucket.name"),
        s3.bucket.and_then(|b| b.name),
        MAX_BUCKET_BYTES,
    )?;
    let Some(object) = s3.object else {
        return Err(invalid(at("s3.object"), "missing"));
    };
    let key = key(at("s3.object.key"), object.key, origin)?;
    let mut meta_entries: Vec<(&str, &str)> = Vec::new();
    if let Some(m) = &object.user_metadata {
        meta_entries.extend(m.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    if let Some(list) = &object.metadata {
        meta_entries.extend(
            list.iter()
                .filter_map(|kv| Some((kv.key.as_deref()?, kv.val.as_deref().unwrap_or("")))),
        );
    }
    let metadata = metadata(&at("s3.object.metadata"), meta_entries.into_iter())?;
    Ok(ObjectEvent {
        source: source.to_string(),
        origin,
        event_name,
        bucket,
        key,
        size: size(at("s3.object.size"), object.size)?,
        etag: optional(at("s3.object.eTag"), object.etag.or(object.etag_lower))?,
        version_id: optional(at("s3.object.versionId"), object.version_id)?,
        sequencer: optional(at("s3.object.sequencer"), object.sequencer)?,
        time: optional(at("eventTime"), r.event_time)?,
        region: optional(at("awsRegion"), r.aws_region)?,
        metadata,
    })
}

fn oss_event(source: &str, i: usize, r: RawOssRecord) -> Result<ObjectEvent, ParseError> {
    let at = |field: &str| format!("events[{i}].{field}");
    if let Some(other) = r.event_source.as_deref()
        && other != "acs:oss"
    {
        return Err(invalid(
            at("eventSource"),
            format!("`{}`: an OSS notification says acs:oss", cut(other, 64)),
        ));
    }
    let event_name = event_name(at("eventName"), r.event_name)?;
    let Some(oss) = r.oss else {
        return Err(invalid(at("oss"), "missing"));
    };
    let bucket = required(
        at("oss.bucket.name"),
        oss.bucket.and_then(|b| b.name),
        MAX_BUCKET_BYTES,
    )?;
    let Some(object) = oss.object else {
        return Err(invalid(at("oss.object"), "missing"));
    };
    Ok(ObjectEvent {
        source: source.to_string(),
        origin: Origin::Oss,
        event_name,
        bucket,
        key: key(at("oss.object.key"), object.key, Origin::Oss)?,
        size: size(at("oss.object.size"), object.size)?,
        etag: optional(at("oss.object.eTag"), object.etag)?,
        version_id: optional(at("oss.object.versionId"), object.version_id)?,
        sequencer: None,
        time: optional(at("eventTime"), r.event_time)?,
        region: optional(at("region"), r.region)?,
        metadata: BTreeMap::new(),
    })
}

/// At most `max` bytes of `s`, cut at a character boundary (for messages and logs).
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(body: &str) -> Vec<ObjectEvent> {
        match parse("src", body.as_bytes(), 1000) {
            Ok(Notification::Events { events, .. }) => events,
            other => panic!("not events: {other:?}"),
        }
    }

    fn err(body: &str) -> String {
        parse("src", body.as_bytes(), 1000)
            .expect_err("should be refused")
            .to_string()
    }

    /// An S3-style record for `origin` with `key` as the sender writes it.
    fn s3_record(origin: &str, key: &str) -> String {
        format!(
            r#"{{"Records":[{{"eventVersion":"2.1","eventSource":"{origin}","awsRegion":"us-east-1","eventTime":"2024-05-01T10:00:00.000Z","eventName":"s3:ObjectCreated:Put","s3":{{"s3SchemaVersion":"1.0","bucket":{{"name":"b"}},"object":{{"key":{},"size":5,"eTag":"e","sequencer":"01"}}}}}}]}}"#,
            serde_json::to_string(key).unwrap()
        )
    }

    fn oss_record(key: &str) -> String {
        format!(
            r#"{{"events":[{{"eventName":"ObjectCreated:PutObject","eventSource":"acs:oss","eventTime":"2024-05-01T10:00:00.000Z","eventVersion":"1.0","oss":{{"bucket":{{"name":"b"}},"object":{{"key":{},"size":5,"eTag":"E"}}}},"region":"cn-hangzhou"}}]}}"#,
            serde_json::to_string(key).unwrap()
        )
    }

    fn one_key(body: &str) -> String {
        let e = events(body);
        assert_eq!(e.len(), 1);
        e[0].key.clone()
    }

    #[test]
    fn aws_documented_put_example() {
        let e = events(include_str!("testdata/aws_put.json"));
        assert_eq!(e.len(), 1);
        let e = &e[0];
        assert_eq!(e.origin, Origin::Aws);
        assert_eq!(e.source, "src");
        assert_eq!(e.event_name, "ObjectCreated:Put");
        assert_eq!(e.bucket, "amzn-s3-demo-bucket");
        assert_eq!(e.key, "HappyFace.jpg");
        assert_eq!(e.size, Some(1024));
        assert_eq!(e.etag.as_deref(), Some("d41d8cd98f00b204e9800998ecf8427e"));
        assert_eq!(
            e.version_id.as_deref(),
            Some("096fKKXTRTtl3on89fVO.nfljtsv6qko")
        );
        assert_eq!(e.sequencer.as_deref(), Some("0055AED6DCD90281E5"));
        assert_eq!(e.time.as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(e.region.as_deref(), Some("us-west-2"));
        assert!(e.metadata.is_empty());
    }

    #[test]
    fn aws_test_event_is_recognised() {
        let n = parse("src", include_bytes!("testdata/aws_test_event.json"), 10).unwrap();
        assert_eq!(
            n,
            Notification::Test {
                shape: Shape::S3,
                bucket: Some("amzn-s3-demo-bucket".into())
            }
        );
        assert_eq!(n.shape_label(), "test");
    }

    #[test]
    fn aws_and_minio_keys_are_form_decoded() {
        for origin in ["aws:s3", "minio:s3"] {
            let k = |raw: &str| one_key(&s3_record(origin, raw));
            assert_eq!(k("red+flower.jpg"), "red flower.jpg");
            assert_eq!(k("this+im+%2B+age+blah.txt"), "this im + age blah.txt");
            assert_eq!(k("a%2Fb%2Fc.txt"), "a/b/c.txt");
            assert_eq!(k("a/b/c.txt"), "a/b/c.txt");
            assert_eq!(k("100%25+done.txt"), "100% done.txt");
            assert_eq!(k("%E7%8C%AB/%C3%BCber.png"), "猫/über.png");
            assert_eq!(k("Tile_%2B002_%2B002.mtl"), "Tile_+002_+002.mtl");
            // Malformed escapes and invalid UTF-8 are refused, naming the record.
            let e = err(&s3_record(origin, "bad%zz.txt"));
            assert!(
                e.starts_with("Records[0].s3.object.key: `bad%zz.txt` has a `%`"),
                "{e}"
            );
            let e = err(&s3_record(origin, "trailing%4"));
            assert!(e.contains("without two hex digits"), "{e}");
            let e = err(&s3_record(origin, "%FF%FE"));
            assert!(e.contains("is not UTF-8"), "{e}");
        }
    }

    #[test]
    fn ceph_and_oss_keys_are_taken_as_sent() {
        for raw in [
            "a b.txt",
            "a+b.txt",
            "a%41b.txt",
            "100%.txt",
            "dir/sub/x.png",
            "猫/über.png",
            "%2B+%20",
        ] {
            assert_eq!(one_key(&s3_record("ceph:s3", raw)), raw);
            assert_eq!(one_key(&oss_record(raw)), raw);
        }
    }

    #[test]
    fn minio_sample() {
        let e = events(include_str!("testdata/minio_put.json"));
        assert_eq!(e.len(), 1);
        let e = &e[0];
        assert_eq!(e.origin, Origin::Minio);
        assert_eq!(e.event_name, "ObjectCreated:Put");
        assert_eq!(e.bucket, "images");
        assert_eq!(e.key, "photos/2024/my photo+1.jpg");
        assert_eq!(e.size, Some(248682));
        assert_eq!(e.sequencer.as_deref(), Some("17A76FE05CF3469B"));
        assert_eq!(e.region, None, "MinIO sends an empty awsRegion");
        // content-type is not user metadata.
        assert_eq!(
            e.metadata.iter().collect::<Vec<_>>(),
            vec![(&"colour".to_string(), &"blue".to_string())]
        );
    }

    #[test]
    fn ceph_documented_sample_and_real_variants() {
        let e = events(include_str!("testdata/ceph_put.json"));
        assert_eq!(e.len(), 1);
        let e = &e[0];
        assert_eq!(e.origin, Origin::Ceph);
        assert_eq!(e.event_name, "ObjectCreated:Put");
        assert_eq!(e.bucket, "mybucket1");
        assert_eq!(e.key, "myimage1.jpg");
        assert_eq!(
            e.size,
            Some(1024),
            "Ceph's sample writes the size as a string"
        );
        assert_eq!(e.etag.as_deref(), Some("37b51d194a7513e45b56f6524f2d51f2"));
        assert_eq!(e.version_id, None, "an empty versionId is no version");
        assert_eq!(e.sequencer.as_deref(), Some("F7E6D75DC742D108"));
        assert_eq!(e.region.as_deref(), Some("zonegroup1"));

        let batch = events(include_str!("testdata/ceph_batch.json"));
        assert_eq!(batch.len(), 3);
        assert_eq!(batch[0].key, "raw key+with%41 and spaces/ü.txt");
        assert_eq!(
            batch[0].etag.as_deref(),
            Some("819c1e1c1b4c7b9853301ba2e6c300f1")
        );
        assert_eq!(
            batch[0].time.as_deref(),
            Some("2021-02-19 02:03:08.330496Z")
        );
        assert_eq!(
            batch[0].metadata.get("colour").map(String::as_str),
            Some("blue")
        );
        assert_eq!(batch[0].metadata.len(), 1, "only x-amz-meta-* entries");
        assert_eq!(batch[1].event_name, "ObjectRemoved:Delete");
        assert_eq!(batch[1].size, Some(0));
        assert_eq!(batch[1].etag, None, "an empty etag is no etag");
        assert_eq!(batch[2].event_name, "ObjectCreated:CompleteMultipartUpload");
        assert_eq!(batch[2].version_id.as_deref(), Some("v7"));
    }

    #[test]
    fn oss_documented_sample() {
        let e = events(include_str!("testdata/oss_put.json"));
        assert_eq!(e.len(), 1);
        let e = &e[0];
        assert_eq!(e.origin, Origin::Oss);
        assert_eq!(e.event_name, "ObjectCreated:PutObject");
        assert_eq!(e.bucket, "bucketname");
        assert_eq!(e.key, "image/a.jpg");
        assert_eq!(e.size, Some(122539));
        assert_eq!(e.etag.as_deref(), Some("688A7BF4F233DC9C88A80BF985AB7329"));
        assert_eq!(e.time.as_deref(), Some("2017-04-21T12:46:37.000Z"));
        assert_eq!(e.region.as_deref(), Some("cn-shanghai"));
        assert_eq!(e.sequencer, None);
    }

    #[test]
    fn oss_through_mns_is_base64() {
        let json = include_str!("testdata/oss_put.json");
        let b64 = crate::telemetry::base64(json.as_bytes());
        assert_eq!(
            parse("src", b64.as_bytes(), 10).unwrap(),
            parse("src", json.as_bytes(), 10).unwrap()
        );
        // Base64 of something that is not a notification is still refused.
        let e = parse("src", crate::telemetry::base64(b"hello").as_bytes(), 10).unwrap_err();
        assert!(matches!(e, ParseError::NotJson(_)), "{e}");
    }

    #[test]
    fn sns_notification_wraps_s3() {
        let n = parse("src", include_bytes!("testdata/sns_notification.json"), 10).unwrap();
        let Notification::Events { shape, events } = n else {
            panic!("{n:?}")
        };
        assert_eq!(shape, Shape::Sns);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].key, "photos/red flower.jpg");
        assert_eq!(events[0].bucket, "amzn-s3-demo-bucket");
        // The S3 test event through SNS.
        let test = include_str!("testdata/aws_test_event.json");
        let wrapped =
            serde_json::json!({"Type": "Notification", "MessageId": "m", "Message": test});
        assert_eq!(
            parse("src", wrapped.to_string().as_bytes(), 10).unwrap(),
            Notification::Test {
                shape: Shape::Sns,
                bucket: Some("amzn-s3-demo-bucket".into())
            }
        );
        // Errors inside the Message name it.
        let bad = serde_json::json!({"Type": "Notification", "Message": "{\"Records\":[{\"eventSource\":\"aws:s3\",\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"object\":{\"key\":\"k\"}}}]}"});
        let e = parse("src", bad.to_string().as_bytes(), 10)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "Message.Records[0].s3.bucket.name: missing");
        let nested = serde_json::json!({"Type": "Notification", "Message": serde_json::json!({"Type": "Notification", "Message": "{}"}).to_string()});
        let e = parse("src", nested.to_string().as_bytes(), 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inside an SNS message"), "{e}");
        let e = parse(
            "src",
            br#"{"Type":"Notification","Message":"not json"}"#,
            10,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("Message: not JSON"), "{e}");
    }

    #[test]
    fn sns_confirmations_carry_what_the_operator_needs() {
        let n = parse(
            "src",
            include_bytes!("testdata/sns_subscription_confirmation.json"),
            10,
        )
        .unwrap();
        let Notification::Sns(c) = n else {
            panic!("{n:?}")
        };
        assert_eq!(c.kind, SnsKind::Subscribe);
        assert_eq!(
            c.topic_arn.as_deref(),
            Some("arn:aws:sns:us-west-2:123456789012:MyTopic")
        );
        assert!(
            c.subscribe_url
                .as_deref()
                .unwrap()
                .starts_with("https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription")
        );
        assert!(c.token.as_deref().unwrap().starts_with("2336412f37"));
        let un =
            br#"{"Type":"UnsubscribeConfirmation","TopicArn":"t","Token":"x","SubscribeURL":"u"}"#;
        let Notification::Sns(c) = parse("src", un, 10).unwrap() else {
            panic!()
        };
        assert_eq!(c.kind, SnsKind::Unsubscribe);
        let e = err(r#"{"Type":"Gossip"}"#);
        assert!(e.contains("SNS message type `Gossip`"), "{e}");
    }

    #[test]
    fn bad_input_is_refused_with_a_clear_message() {
        let cases: &[(&str, &str)] = &[
            ("", "the body is not JSON: EOF while parsing"),
            ("{\"Records\": [", "the body is not JSON: EOF while parsing"),
            ("{} trailing", "the body is not JSON: trailing characters"),
            (
                "[1,2]",
                "not an object-storage notification: the JSON is not an object",
            ),
            (
                "{\"hello\":1}",
                "not an object-storage notification: no `Records`",
            ),
            (
                "{\"Records\":[],\"events\":[]}",
                "not an object-storage notification: it has both",
            ),
            (
                "{\"Records\":{}}",
                "Records: invalid type: map, expected a list of event records",
            ),
            ("{\"Records\":[{}]}", "Records[0].eventSource: missing"),
            (
                "{\"Records\":[{\"eventSource\":\"ctyun:s3\"}]}",
                "Records[0].eventSource: `ctyun:s3`: expected aws:s3, minio:s3 or ceph:s3",
            ),
            (
                "{\"Records\":[{\"eventSource\":\"aws:s3\",\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":{\"name\":\"b\"}}}]}",
                "Records[0].s3.object: missing",
            ),
            (
                "{\"Records\":[{\"eventSource\":\"aws:s3\",\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":{\"name\":\"b\"},\"object\":{}}}]}",
                "Records[0].s3.object.key: missing",
            ),
            (
                "{\"Records\":[{\"eventSource\":\"aws:s3\",\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":{},\"object\":{\"key\":\"k\"}}}]}",
                "Records[0].s3.bucket.name: missing",
            ),
            (
                "{\"Records\":[{\"eventSource\":\"aws:s3\",\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":{\"name\":\"b\"},\"object\":{\"key\":7}}}]}",
                "Records[0].s3.object.key: invalid type: integer `7`, expected a string",
            ),
            (
                "{\"Records\":[{\"eventSource\":\"aws:s3\",\"eventName\":\"Object Created\",\"s3\":{}}]}",
                "Records[0].eventName: `Object Created` is not an event name",
            ),
            (
                "{\"Records\":[{\"eventSource\":\"aws:s3\",\"eventName\":\"ObjectCreated:Put\",\"s3\":{\"bucket\":{\"name\":\"b\"},\"object\":{\"key\":\"k\",\"size\":\"big\"}}}]}",
                "Records[0].s3.object.size: `big` is not a size in bytes",
            ),
            (
                "{\"events\":[{\"eventName\":\"ObjectCreated:PutObject\"}]}",
                "events[0].oss: missing",
            ),
            (
                "{\"events\":[{\"eventSource\":\"aws:s3\"}]}",
                "events[0].eventSource: `aws:s3`: an OSS notification says acs:oss",
            ),
            (
                "{\"Event\":\"s3:SomethingElse\"}",
                "not an object-storage notification",
            ),
        ];
        for (body, want) in cases {
            let got = err(body);
            assert!(
                got.starts_with(want),
                "{body}\n  got:  {got}\n  want: {want}"
            );
        }
        let long_key = s3_record("ceph:s3", &"k".repeat(1025));
        assert!(err(&long_key).contains("object keys are at most 1024"));
    }

    #[test]
    fn record_counts_are_bounded() {
        let one = r#"{"eventSource":"ceph:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}"#;
        let body = format!("{{\"Records\":[{}]}}", [one; 5].join(","));
        assert_eq!(
            parse("src", body.as_bytes(), 4).unwrap_err(),
            ParseError::TooManyRecords { count: 5, max: 4 }
        );
        assert!(parse("src", body.as_bytes(), 5).is_ok());
        // Past the hard cap the list is refused while it is read, whatever the source allows.
        let huge = format!(
            "{{\"Records\":[{}]}}",
            vec!["{}"; MAX_EVENT_MAX_RECORDS + 1].join(",")
        );
        let e = parse("src", huge.as_bytes(), usize::MAX)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("Records: more than 10000 records"), "{e}");
    }

    #[test]
    fn metadata_is_bounded() {
        let mut m = serde_json::Map::new();
        for i in 0..65 {
            m.insert(format!("X-Amz-Meta-K{i}"), "v".into());
        }
        let body = serde_json::json!({"Records":[{"eventSource":"minio:s3","eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k","userMetadata":m}}}]});
        let e = err(&body.to_string());
        assert!(
            e.starts_with("Records[0].s3.object.metadata: more user metadata"),
            "{e}"
        );
    }

    #[test]
    fn serialised_payload_shape() {
        let e = &events(include_str!("testdata/minio_put.json"))[0];
        let v = serde_json::to_value(e).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "bucket",
                "etag",
                "event_name",
                "key",
                "metadata",
                "origin",
                "region",
                "sequencer",
                "size",
                "source",
                "time",
                "version_id"
            ]
        );
        assert_eq!(v["origin"], "minio:s3");
        assert_eq!(v["key"], "photos/2024/my photo+1.jpg");
    }
}
