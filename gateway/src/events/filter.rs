//! Which `oss` triggers an event matches: bucket (exact), event-name patterns with `*`
//! wildcards, key prefix and suffix. The source is matched by the caller (a trigger only ever
//! sees its own source's events).

use super::ObjectEvent;
use crate::config::OssTriggerSpec;

/// Event names and patterns are compared without the `s3:` (AWS, MinIO, Ceph) or `oss:`
/// (Alibaba EventBridge) prefix, so `s3:ObjectCreated:*` in a config means `ObjectCreated:*`.
pub fn strip_event_prefix(name: &str) -> &str {
    name.strip_prefix("s3:")
        .or_else(|| name.strip_prefix("oss:"))
        .unwrap_or(name)
}

/// Whether `event` passes `trigger`'s filters (all of them; an absent filter passes).
pub fn trigger_matches(trigger: &OssTriggerSpec, event: &ObjectEvent) -> bool {
    trigger.bucket.as_ref().is_none_or(|b| *b == event.bucket)
        && trigger
            .prefix
            .as_ref()
            .is_none_or(|p| event.key.starts_with(p.as_str()))
        && trigger
            .suffix
            .as_ref()
            .is_none_or(|s| event.key.ends_with(s.as_str()))
        && trigger
            .events
            .iter()
            .any(|p| pattern_matches(p, &event.event_name))
}

/// Glob match where `*` stands for any run of characters (including none) and everything else
/// is literal and case-sensitive: `ObjectCreated:*`, `*:Delete*`, `*`. Linear in practice:
/// backtracks only to the latest `*`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the latest `*` was, and how much of the name it has swallowed so far.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Origin;
    use std::collections::BTreeMap;

    #[test]
    fn patterns() {
        let yes = [
            ("*", "ObjectCreated:Put"),
            ("*", ""),
            ("ObjectCreated:*", "ObjectCreated:Put"),
            ("ObjectCreated:*", "ObjectCreated:CompleteMultipartUpload"),
            ("ObjectCreated:*", "ObjectCreated:"),
            ("ObjectCreated:Put", "ObjectCreated:Put"),
            ("*:Delete", "ObjectRemoved:Delete"),
            ("Object*:*", "ObjectRemoved:DeleteMarkerCreated"),
            ("*Put*", "ObjectCreated:PutObject"),
            ("a*b*c", "aXXbYYbZZc"),
            ("**", "x"),
        ];
        for (p, n) in yes {
            assert!(pattern_matches(p, n), "{p} should match {n}");
        }
        let no = [
            ("ObjectCreated:*", "ObjectRemoved:Delete"),
            ("ObjectCreated:Put", "ObjectCreated:Post"),
            ("ObjectCreated:Put", "ObjectCreated:PutObject"),
            ("objectcreated:*", "ObjectCreated:Put"),
            ("*:Delete", "ObjectRemoved:DeleteMarkerCreated"),
            ("a*b*c", "aXXbYYbZZ"),
            ("", "x"),
        ];
        for (p, n) in no {
            assert!(!pattern_matches(p, n), "{p} should not match {n}");
        }
    }

    #[test]
    fn prefixes_are_stripped() {
        assert_eq!(strip_event_prefix("s3:ObjectCreated:*"), "ObjectCreated:*");
        assert_eq!(
            strip_event_prefix("oss:ObjectCreated:PutObject"),
            "ObjectCreated:PutObject"
        );
        assert_eq!(strip_event_prefix("ObjectCreated:Put"), "ObjectCreated:Put");
        assert_eq!(strip_event_prefix("s3:"), "");
    }

    fn trigger() -> OssTriggerSpec {
        OssTriggerSpec {
            name: "t".into(),
            function: 0,
            source: 0,
            events: vec!["*".into()],
            bucket: None,
            prefix: None,
            suffix: None,
            plugins: vec![],
            priority: 0,
        }
    }

    fn event(bucket: &str, key: &str, name: &str) -> ObjectEvent {
        ObjectEvent {
            source: "s".into(),
            origin: Origin::Aws,
            event_name: name.into(),
            bucket: bucket.into(),
            key: key.into(),
            size: None,
            etag: None,
            version_id: None,
            sequencer: None,
            time: None,
            region: None,
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn triggers_filter_on_every_field() {
        let all = trigger();
        assert!(trigger_matches(
            &all,
            &event("b", "k", "ObjectRemoved:Delete")
        ));

        let t = OssTriggerSpec {
            events: vec!["ObjectCreated:*".into(), "ObjectRestore:Completed".into()],
            bucket: Some("photos".into()),
            prefix: Some("images/".into()),
            suffix: Some(".png".into()),
            ..trigger()
        };
        let ok = event("photos", "images/cat 1.png", "ObjectCreated:Put");
        assert!(trigger_matches(&t, &ok));
        assert!(trigger_matches(
            &t,
            &event("photos", "images/x.png", "ObjectRestore:Completed")
        ));
        assert!(!trigger_matches(
            &t,
            &event("other", "images/x.png", "ObjectCreated:Put")
        ));
        assert!(!trigger_matches(
            &t,
            &event("photos", "docs/x.png", "ObjectCreated:Put")
        ));
        assert!(!trigger_matches(
            &t,
            &event("photos", "images/x.jpg", "ObjectCreated:Put")
        ));
        assert!(!trigger_matches(
            &t,
            &event("photos", "images/x.png", "ObjectRemoved:Delete")
        ));
        // Filters see the decoded key, byte for byte, and buckets compare exactly.
        assert!(!trigger_matches(
            &t,
            &event("Photos", "images/x.png", "ObjectCreated:Put")
        ));
        assert!(!trigger_matches(
            &t,
            &event("photos", "images%2Fx.png", "ObjectCreated:Put")
        ));
        let uni = OssTriggerSpec {
            prefix: Some("猫/".into()),
            ..trigger()
        };
        assert!(trigger_matches(
            &uni,
            &event("b", "猫/über.png", "ObjectCreated:Put")
        ));
        // A key that is exactly the prefix (or the suffix) matches too.
        let exact = OssTriggerSpec {
            prefix: Some("a".into()),
            suffix: Some("a".into()),
            ..trigger()
        };
        assert!(trigger_matches(
            &exact,
            &event("b", "a", "ObjectCreated:Put")
        ));
    }
}
