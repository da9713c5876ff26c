//! Fuzz target bodies: the parsers and converters that take outside input, each wrapped with the
//! properties that must hold for any input. `fuzz/` (cargo-fuzz, its own workspace) calls these
//! for coverage-guided runs; the `smoke` tests below run each body over the seed corpus plus a
//! few thousand deterministic mutations on every `cargo test`, without nightly or a sanitizer.
//!
//! A body returns normally for any input; a panic (including a failed property) is a finding.

use crate::config::{AuthSpec, Config, HostMatch, HttpTriggerSpec, MAX_EVENT_MAX_RECORDS};
use crate::events::{Notification, parse};
use crate::policy::wit;
use crate::trigger::{Route, Router};
use http::Method;

/// Longest error text a notification parser may produce: it goes into the 400 body and a log line.
const MAX_PARSE_ERROR_TEXT: usize = 4096;

/// A target: its name in `fuzz/`, its body, and the seed directories (relative to the
/// repository root) that hold real samples for it.
pub type Target = (&'static str, fn(&[u8]), &'static [&'static str]);

pub const TARGETS: &[Target] = &[
    (
        "event_notification",
        event_notification,
        &[
            "gateway/src/events/testdata",
            "fuzz/seeds/event_notification",
        ],
    ),
    ("config", config, &["config", "fuzz/seeds/config"]),
    ("http_trigger", http_trigger, &["fuzz/seeds/http_trigger"]),
    (
        "plugin_decision",
        plugin_decision,
        &["fuzz/seeds/plugin_decision"],
    ),
    (
        "http1_framing",
        http1_framing,
        &["fuzz/seeds/http1_framing"],
    ),
];

/// Raw HTTP/1.1 request streams through the listener's framing tracker (the `Content-Length` +
/// `Transfer-Encoding` check), in pieces of several sizes as reads deliver them: its whole-line
/// fast path must agree with the byte-by-byte path after every piece.
pub fn http1_framing(data: &[u8]) {
    let first = usize::from(data.first().copied().unwrap_or(1));
    for step in [1, 2, 3, 8, 1 + first % 64, data.len()] {
        if let Err(e) = crate::listener::framing::check_whole_lines(data, step) {
            panic!("step {step}: {e}");
        }
    }
}

/// Object-storage notification bodies (S3 / MinIO / Ceph `Records`, Alibaba OSS `events`, SNS
/// envelopes, Base64-wrapped OSS) through `events::parse`, as `POST /events/{source}` and the
/// broker consumers call it. `max_records` comes from the body's length so both the per-source
/// limit and the hard cap are exercised.
pub fn event_notification(data: &[u8]) {
    let max = if data.len().is_multiple_of(2) {
        MAX_EVENT_MAX_RECORDS
    } else {
        data.len() % 7 + 1
    };
    let parsed = parse("src", data, max);
    assert_eq!(parsed, parse("src", data, max), "parsing is deterministic");
    match parsed {
        Ok(Notification::Events { events, .. }) => {
            assert!(
                events.len() <= max,
                "{} events over max {max}",
                events.len()
            );
            for e in &events {
                assert!(
                    e.key.len() <= 1024 && !e.key.is_empty(),
                    "key length {}",
                    e.key.len()
                );
                assert!(e.bucket.len() <= 255, "bucket length {}", e.bucket.len());
                // The sender's one `s3:` / `oss:` prefix is gone (a name sent doubly prefixed
                // keeps its second one, like any other odd name: filters compare it the same way).
                assert!(
                    !e.event_name.is_empty()
                        && e.event_name.len() <= 128
                        && e.event_name.bytes().all(|b| b.is_ascii_graphic()),
                    "event name {:?}",
                    e.event_name
                );
                assert!(e.metadata.len() <= 64);
                // What ingest does next with each event: dedupe id, filters, the plugin view.
                // The id is stable for an event with an identity (version id, sequencer, etag
                // or time); one with none gets a fresh id each time (run at least once).
                let id = crate::events::dedupe_id("trigger", e);
                let identified = e.version_id.is_some()
                    || e.sequencer.is_some()
                    || e.etag.is_some()
                    || e.time.is_some();
                assert_eq!(
                    identified,
                    id == crate::events::dedupe_id("trigger", e),
                    "dedupe id stability for {e:?}"
                );
                let _ = crate::events::pattern_matches("ObjectCreated:*", &e.event_name);
                let _ = crate::events::pattern_matches(&e.key, &e.event_name);
                let _ = e.view("trigger", "svc/fn");
            }
        }
        Ok(Notification::Test { bucket, .. }) => {
            assert!(bucket.is_none_or(|b| b.len() <= 255 + '…'.len_utf8()));
        }
        Ok(Notification::Sns(c)) => {
            for f in [&c.topic_arn, &c.subscribe_url, &c.token, &c.message_id] {
                assert!(f.as_ref().is_none_or(|s| s.len() <= 2048 + '…'.len_utf8()));
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.len() <= MAX_PARSE_ERROR_TEXT,
                "error text is {} bytes: {}…",
                text.len(),
                text.chars().take(200).collect::<String>()
            );
        }
    }
}

/// Environment the config bodies compile against: the secrets the sample configs name.
pub(crate) const CONFIG_ENV: &[(&str, &str)] = &[
    ("FNGATE_ADMIN_TOKEN", "admin-token-0123456789"),
    ("FNGATE_EVENT_TOKEN", "event-token-0123456789"),
    ("FNGATE_DEMO_EVENT_TOKEN", "demo-event-token-0123456789"),
    ("FNGATE_EVENT_KEY", "event-hmac-key-0123456789"),
    ("ECHO_TOKEN", "echo-token-0123456789"),
];

/// Relative paths in configs resolve against the repository's `config/`, as for the sample
/// configs there (the process backend's `cwd` must exist).
fn compile(text: &str) -> Result<Config, Vec<crate::config::Problem>> {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    crate::config::compile_with_env_in(text, CONFIG_ENV, &base)
}

/// Config text through parse + validate + compile (what `fngate check`, start and reload run),
/// then the trigger router built from the result.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = compile(text);
    match first {
        Err(problems) => {
            assert!(!problems.is_empty(), "rejected without a problem");
            let texts: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            for t in &texts {
                assert!(!t.trim().is_empty(), "empty problem text");
            }
            let again = compile(text).expect_err("validation is deterministic");
            let again: Vec<String> = again.iter().map(|p| p.to_string()).collect();
            assert_eq!(texts, again, "validation is deterministic");
        }
        Ok(config) => {
            for t in &config.triggers {
                assert!(t.function < config.functions.len());
                assert!(t.plugins.iter().all(|&p| p < config.plugins.len()));
            }
            let router = Router::new(&config);
            for path in ["/", "/a", "/demo/echo/x", "*"] {
                for host in [None, Some("example.com")] {
                    check_route(&config, &router, host, &Method::GET, path);
                }
            }
        }
    }
}

/// HTTP trigger matching over triggers and requests written as lines:
/// `T|host|path|METHOD,METHOD|strip` (empty fields: unset) and `R|host|METHOD|path`.
/// The triggers go through the real config validation; each request's route is then checked
/// against the matching rules (host, whole-segment prefix, method, most specific wins).
pub fn http_trigger(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, requests) = trigger_lines(text);
    let Ok(config) = compile(&toml) else {
        return;
    };
    let router = Router::new(&config);
    for (host, method, path) in requests {
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            continue;
        };
        // The path as hyper hands it over: origin form, absolute form or `*`.
        let Ok(uri) = path.parse::<http::Uri>() else {
            continue;
        };
        let host = (!host.is_empty()).then_some(host);
        check_route(&config, &router, host, &method, uri.path());
    }
}

/// The `http_trigger` input as config text (three functions, the `T` lines as triggers) and
/// the `R` lines as (host, method, path).
fn trigger_lines(text: &str) -> (String, Vec<(&str, &str, &str)>) {
    let mut toml = String::from(
        "[server]\nlisten = \"127.0.0.1:8443\"\n\
         [[service]]\nname = \"a\"\n\
         [[service.function]]\nname = \"f0\"\nbackend = { kind = \"static\", endpoints = [\"http://127.0.0.1:9001\"] }\n\
         [[service.function]]\nname = \"f1\"\nbackend = { kind = \"static\", endpoints = [\"http://127.0.0.1:9001\"] }\n\
         [[service]]\nname = \"b\"\n\
         [[service.function]]\nname = \"f2\"\nbackend = { kind = \"static\", endpoints = [\"http://127.0.0.1:9001\"] }\n",
    );
    let mut requests = Vec::new();
    let mut n = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split('|').collect();
        match f.as_slice() {
            ["T", host, path, methods, rest @ ..] if n < 16 => {
                let function = ["a/f0", "a/f1", "b/f2"][n % 3];
                toml.push_str(&format!(
                    "[[trigger]]\nname = \"t{n}\"\nkind = \"http\"\nfunction = \"{function}\"\n"
                ));
                if !host.is_empty() {
                    toml.push_str(&format!("host = {}\n", toml_str(host)));
                }
                if !path.is_empty() {
                    toml.push_str(&format!("path = {}\n", toml_str(path)));
                }
                if !methods.is_empty() {
                    let list: Vec<String> = methods.split(',').map(toml_str).collect();
                    toml.push_str(&format!("methods = [{}]\n", list.join(", ")));
                }
                if let Some(s) = rest.first() {
                    toml.push_str(&format!("strip_prefix = {}\n", !s.is_empty()));
                }
                n += 1;
            }
            ["R", host, method, path] if requests.len() < 64 => {
                requests.push((*host, *method, *path));
            }
            _ => {}
        }
    }
    (toml, requests)
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Whether a custom trigger (one with a host or a path) claims this host and path.
fn claims(t: &HttpTriggerSpec, host: Option<&str>, path: &str) -> bool {
    let host_ok = match (&t.host, host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(HostMatch::Exact(h)), Some(got)) => h.eq_ignore_ascii_case(got),
        (Some(HostMatch::Suffix(s)), Some(got)) => {
            got.len() > s.len() && got.to_ascii_lowercase().ends_with(&s.to_ascii_lowercase())
        }
    };
    let prefix = t.path.as_deref().unwrap_or("/");
    let path_ok = prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|r| r.is_empty() || r.starts_with('/'));
    host_ok && path_ok
}

/// Most specific first: exact host, then longer host suffix, then any host; then longer path.
fn specificity(t: &HttpTriggerSpec) -> (usize, std::cmp::Reverse<usize>) {
    let host = match &t.host {
        Some(HostMatch::Exact(_)) => 0,
        Some(HostMatch::Suffix(s)) => usize::MAX / 4 - s.len(),
        None => usize::MAX,
    };
    (
        host,
        std::cmp::Reverse(t.path.as_deref().unwrap_or("/").len()),
    )
}

fn accepts(t: &HttpTriggerSpec, method: &Method) -> bool {
    t.methods.as_ref().is_none_or(|ms| ms.contains(method))
}

fn check_route(config: &Config, router: &Router, host: Option<&str>, method: &Method, path: &str) {
    let custom: Vec<&HttpTriggerSpec> = config
        .triggers
        .iter()
        .filter(|t| t.host.is_some() || t.path.is_some())
        .collect();
    match router.route(host, method, path) {
        Route::Matched {
            trigger,
            index,
            function,
            rest,
        } => {
            assert_eq!(config.triggers[index].name, trigger.name);
            assert_eq!(function, trigger.function);
            assert!(
                // `*` (OPTIONS) and the empty path of an authority-form target pass unchanged.
                rest.starts_with('/') || (rest == path && !path.starts_with('/')),
                "rest `{rest}` of `{path}`"
            );
            assert!(
                accepts(trigger, method),
                "{} does not take {method}",
                trigger.name
            );
            let is_custom = trigger.host.is_some() || trigger.path.is_some();
            if is_custom && claims(trigger, host, path) {
                // No trigger that claims the request and takes the method is more specific.
                for t in &custom {
                    if claims(t, host, path) && accepts(t, method) {
                        assert!(
                            specificity(t) >= specificity(trigger),
                            "{} chosen over the more specific {} for {host:?} {path}",
                            trigger.name,
                            t.name
                        );
                    }
                }
                if trigger.strip_prefix
                    && let Some(p) = trigger.path.as_deref().filter(|p| *p != "/")
                {
                    let r = &path[p.len()..];
                    assert_eq!(rest, if r.is_empty() { "/" } else { r });
                }
            }
            if let AuthSpec::Bearer(s) = &trigger.auth {
                assert!(!s.value.is_empty());
            }
        }
        Route::NotFound => {
            for t in &custom {
                assert!(
                    !(claims(t, host, path) && accepts(t, method)),
                    "{} claims {host:?} {method} {path} but the route is NotFound",
                    t.name
                );
            }
        }
        Route::MethodNotAllowed { allow } => {
            assert!(!allow.is_empty());
            assert!(
                !allow.split(", ").any(|m| m == method.as_str()),
                "{method} refused but listed in Allow: {allow}"
            );
        }
    }
}

/// A guest's decision, decoded from bytes, through the host's conversion and checks
/// (`policy::convert_decision`, `policy::convert_event_decision`), then applied as the invoker
/// applies it: path rewrite into an upstream URI, headers into a request and a rejection.
pub fn plugin_decision(data: &[u8]) {
    let mut r = Reader(data);
    let tag = r.byte();
    if tag & 1 == 0 {
        let d = decode_decision(&mut r);
        match crate::policy::convert_decision(d) {
            Ok(crate::policy::Decision::Proceed(change)) => {
                if let Some(p) = &change.path {
                    assert!(p.starts_with('/') && !p.contains('?'));
                    for pq in [p.clone(), format!("{p}?a=1&b")] {
                        http::Uri::builder()
                            .scheme("http")
                            .authority("127.0.0.1:9001")
                            .path_and_query(pq.as_str())
                            .build()
                            .unwrap_or_else(|e| {
                                panic!("accepted path `{pq}` is not forwardable: {e}")
                            });
                    }
                }
                assert!(change.set_headers.len() <= 64 && change.remove_headers.len() <= 64);
                assert!(
                    !change
                        .set_headers
                        .iter()
                        .any(|(n, _)| crate::backend::is_hop_by_hop_or_framing(n)),
                    "a framing header got through"
                );
                let mut req = http::Request::new(());
                for n in &change.remove_headers {
                    req.headers_mut().remove(n);
                }
                for (n, v) in &change.set_headers {
                    req.headers_mut().insert(n, v.clone());
                }
                assert!(change.function.as_ref().is_none_or(|f| f.len() <= 256));
                assert!(change.tenant.as_ref().is_none_or(|f| f.len() <= 256));
            }
            Ok(crate::policy::Decision::Reject {
                status,
                headers,
                body,
            }) => {
                assert!((400..=599).contains(&status.as_u16()));
                assert!(body.len() <= 64 * 1024 && headers.len() <= 64);
                assert!(
                    !headers
                        .iter()
                        .any(|(n, _)| crate::backend::is_hop_by_hop_or_framing(n))
                );
                let mut resp = http::Response::new(body);
                *resp.status_mut() = status;
                for (n, v) in headers {
                    resp.headers_mut().insert(n, v);
                }
            }
            Err(msg) => assert!(msg.len() <= 1024, "error text is {} bytes", msg.len()),
        }
    } else {
        let d = decode_event_decision(&mut r);
        match crate::policy::convert_event_decision(d) {
            Ok(crate::policy::EventDecision::Dispatch {
                function, tenant, ..
            }) => {
                assert!(function.is_none_or(|f| f.len() <= 256));
                assert!(tenant.is_none_or(|f| f.len() <= 256));
            }
            Ok(crate::policy::EventDecision::Drop(why)) => assert!(why.len() <= 256),
            Err(msg) => assert!(msg.len() <= 1024, "error text is {} bytes", msg.len()),
        }
    }
}

/// Reads the decision encoding: bytes for tags and numbers, strings as
/// `len: u16 LE, repeat: u8, bytes[len]` (the bytes repeated `repeat + 1` times, so a short input
/// can reach the size limits), lists as a count byte then items. Missing bytes read as zero.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn string(&mut self) -> String {
        let len = usize::from(self.u16());
        let repeat = usize::from(self.byte()) + 1;
        let len = len.min(self.0.len());
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8_lossy(s).repeat(repeat)
    }

    fn opt_string(&mut self) -> Option<String> {
        (self.byte() & 1 == 1).then(|| self.string())
    }

    fn opt_i32(&mut self) -> Option<i32> {
        (self.byte() & 1 == 1)
            .then(|| i32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()]))
    }

    fn headers(&mut self) -> Vec<(String, String)> {
        let n = self.byte();
        (0..n).map(|_| (self.string(), self.string())).collect()
    }
}

fn decode_decision(r: &mut Reader<'_>) -> wit::Decision {
    if r.byte() & 1 == 0 {
        wit::Decision::Proceed(wit::Route {
            function: r.opt_string(),
            invocation: match r.byte() % 3 {
                0 => None,
                1 => Some(wit::InvocationType::Sync),
                _ => Some(wit::InvocationType::Async),
            },
            priority: r.opt_i32(),
            tenant: r.opt_string(),
            set_headers: r.headers(),
            remove_headers: (0..r.byte()).map(|_| r.string()).collect(),
            path: r.opt_string(),
        })
    } else {
        wit::Decision::Reject(wit::Rejection {
            status: r.u16(),
            headers: r.headers(),
            body: r.string(),
        })
    }
}

fn decode_event_decision(r: &mut Reader<'_>) -> wit::EventDecision {
    if r.byte() & 1 == 0 {
        wit::EventDecision::Dispatch(wit::EventRoute {
            function: r.opt_string(),
            priority: r.opt_i32(),
            tenant: r.opt_string(),
        })
    } else {
        wit::EventDecision::Drop(r.string())
    }
}

#[cfg(test)]
mod tests;
