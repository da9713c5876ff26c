//! HTTP triggers: which function a request is for, with which trigger's auth, and the path the
//! function sees.
//!
//! Order of matching: custom triggers by host (exact, then wildcard, then any host) and longest
//! path prefix; then the canonical `/{service}/{function}/{rest…}`, which answers with the methods
//! and auth of that function's HTTP triggers. Path prefixes match whole segments: `/echo` matches
//! `/echo` and `/echo/x`, never `/echoes`. Lookup allocates nothing.

use crate::config::{AuthSpec, Config, HostMatch, HttpTriggerSpec};
use http::Method;
use std::collections::HashMap;
use subtle::ConstantTimeEq;

#[derive(Debug)]
pub struct Router {
    /// Custom triggers (with a host or a path), most specific first; indexes into `triggers`.
    custom: Vec<usize>,
    /// service → function → that function's triggers, in file order.
    canonical: HashMap<String, HashMap<String, (usize, Vec<usize>)>>,
    triggers: Vec<HttpTriggerSpec>,
}

/// The outcome of matching one request.
#[derive(Debug)]
pub enum Route<'a> {
    Matched {
        trigger: &'a HttpTriggerSpec,
        /// Index of the trigger in `Config::triggers`.
        index: usize,
        /// Index into `Config::functions`.
        function: usize,
        /// The path the function sees (without the query), always starting with `/`.
        rest: &'a str,
    },
    NotFound,
    MethodNotAllowed {
        allow: String,
    },
}

impl Router {
    pub fn new(config: &Config) -> Self {
        let triggers = config.triggers.clone();
        let mut custom: Vec<usize> = (0..triggers.len())
            .filter(|&i| triggers[i].host.is_some() || triggers[i].path.is_some())
            .collect();
        custom.sort_by_key(|&i| {
            let t = &triggers[i];
            let host_rank = match &t.host {
                Some(HostMatch::Exact(_)) => 0,
                Some(HostMatch::Suffix(s)) => 1 + usize::MAX / 4 - s.len().min(usize::MAX / 4),
                None => usize::MAX / 2,
            };
            let path_len = t.path.as_deref().unwrap_or("/").len();
            (host_rank, std::cmp::Reverse(path_len), i)
        });
        let mut canonical: HashMap<String, HashMap<String, (usize, Vec<usize>)>> = HashMap::new();
        for (i, t) in triggers.iter().enumerate() {
            let f = &config.functions[t.function];
            canonical
                .entry(f.service.clone())
                .or_default()
                .entry(f.name.clone())
                .or_insert_with(|| (t.function, Vec::new()))
                .1
                .push(i);
        }
        Router {
            custom,
            canonical,
            triggers,
        }
    }

    /// `host` is the request authority without the port, as sent (any case).
    pub fn route<'a>(&'a self, host: Option<&str>, method: &Method, path: &'a str) -> Route<'a> {
        let mut group: Option<(&Option<HostMatch>, &Option<String>)> = None;
        let mut allow: Vec<&Method> = Vec::new();
        let mut any_method_group = false;
        for &i in &self.custom {
            let t = &self.triggers[i];
            if let Some((gh, gp)) = group {
                // Only triggers on the same host and path as the first match compete on method.
                if gh != &t.host || gp != &t.path {
                    break;
                }
            } else {
                if !host_matches(&t.host, host) {
                    continue;
                }
                let Some(prefix_len) = prefix_match(t.path.as_deref().unwrap_or("/"), path) else {
                    continue;
                };
                let _ = prefix_len;
                group = Some((&t.host, &t.path));
            }
            match &t.methods {
                None => return self.matched(i, path),
                Some(ms) if ms.contains(method) => return self.matched(i, path),
                Some(ms) => allow.extend(ms.iter()),
            }
            any_method_group = true;
        }
        if any_method_group {
            return Route::MethodNotAllowed {
                allow: join_methods(allow),
            };
        }

        // Canonical: /{service}/{function}/{rest…}
        let Some(after) = path.strip_prefix('/') else {
            return Route::NotFound;
        };
        let (svc, after) = after.split_once('/').unwrap_or((after, ""));
        let (func, _) = after.split_once('/').unwrap_or((after, ""));
        let Some((function, trig)) = self.canonical.get(svc).and_then(|m| m.get(func)) else {
            return Route::NotFound;
        };
        let rest_start = 1 + svc.len() + 1 + func.len();
        let rest = if rest_start >= path.len() {
            "/"
        } else {
            &path[rest_start..]
        };
        for &i in trig {
            let t = &self.triggers[i];
            // A host-restricted trigger does not open the canonical path on other hosts.
            if !host_matches(&t.host, host) {
                continue;
            }
            match &t.methods {
                Some(ms) if !ms.contains(method) => allow.extend(ms.iter()),
                _ => {
                    return Route::Matched {
                        trigger: t,
                        index: i,
                        function: *function,
                        rest,
                    };
                }
            }
        }
        if allow.is_empty() {
            return Route::NotFound;
        }
        Route::MethodNotAllowed {
            allow: join_methods(allow),
        }
    }

    fn matched<'a>(&'a self, i: usize, path: &'a str) -> Route<'a> {
        let t = &self.triggers[i];
        let rest = match (&t.path, t.strip_prefix) {
            (Some(p), true) if p != "/" => {
                let r = &path[p.len()..];
                if r.is_empty() { "/" } else { r }
            }
            _ => path,
        };
        Route::Matched {
            trigger: t,
            index: i,
            function: t.function,
            rest,
        }
    }
}

fn host_matches(want: &Option<HostMatch>, host: Option<&str>) -> bool {
    match (want, host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(HostMatch::Exact(h)), Some(got)) => h.eq_ignore_ascii_case(got),
        (Some(HostMatch::Suffix(s)), Some(got)) => {
            got.len() > s.len() && got[got.len() - s.len()..].eq_ignore_ascii_case(s)
        }
    }
}

/// Segment-aware prefix match; returns the prefix length on a match.
fn prefix_match(prefix: &str, path: &str) -> Option<usize> {
    if prefix == "/" {
        return Some(1);
    }
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(prefix.len())
}

fn join_methods(mut ms: Vec<&Method>) -> String {
    ms.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    ms.dedup();
    ms.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
}

/// Checks a request's credentials against a trigger's auth, in constant time for the token.
pub fn authorize(auth: &AuthSpec, authorization: Option<&http::HeaderValue>) -> bool {
    match auth {
        AuthSpec::Anonymous => true,
        AuthSpec::Bearer(secret) => bearer_matches(authorization, &secret.value),
    }
}

/// `Authorization: Bearer <token>` against an expected token; the scheme is case-insensitive
/// (RFC 7235) and the token is compared without early exit.
pub fn bearer_matches(authorization: Option<&http::HeaderValue>, expected: &[u8]) -> bool {
    let Some(v) = authorization else { return false };
    let v = v.as_bytes();
    if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    v[7..].trim_ascii().ct_eq(expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::compile_with_env;

    const CFG: &str = r#"
[[service]]
name = "demo"
[[service.function]]
name = "echo"
backend = { kind = "static", endpoints = ["http://127.0.0.1:9001"] }
[[service.function]]
name = "other"
backend = { kind = "static", endpoints = ["http://127.0.0.1:9002"] }
[[service.function]]
name = "hidden"
backend = { kind = "static", endpoints = ["http://127.0.0.1:9003"] }

[[trigger]]
name = "echo-http"
kind = "http"
function = "demo/echo"
path = "/echo"
methods = ["GET", "POST"]

[[trigger]]
name = "echo-deep"
kind = "http"
function = "demo/other"
path = "/echo/deep"

[[trigger]]
name = "vhost"
kind = "http"
function = "demo/other"
host = "api.example.com"

[[trigger]]
name = "wild"
kind = "http"
function = "demo/echo"
host = "*.example.org"
path = "/v1"
strip_prefix = false

[[trigger]]
name = "secured"
kind = "http"
function = "demo/other"
path = "/secure"
methods = ["PUT"]
auth = { bearer = { env = "TOK" } }
"#;

    fn router() -> (Router, Config) {
        let c = compile_with_env(CFG, &[("TOK", "abc")]).unwrap();
        (Router::new(&c), c)
    }

    fn hit(r: &Router, host: Option<&str>, m: Method, p: &str) -> String {
        match r.route(host, &m, p) {
            Route::Matched { trigger, rest, .. } => format!("{} {}", trigger.name, rest),
            Route::NotFound => "404".into(),
            Route::MethodNotAllowed { allow } => format!("405 {allow}"),
        }
    }

    #[test]
    fn matching() {
        let (r, _) = router();
        assert_eq!(hit(&r, None, Method::GET, "/echo"), "echo-http /");
        assert_eq!(hit(&r, None, Method::GET, "/echo/a/b"), "echo-http /a/b");
        assert_eq!(hit(&r, None, Method::GET, "/echoes"), "404");
        assert_eq!(hit(&r, None, Method::DELETE, "/echo/x"), "405 GET, POST");
        assert_eq!(
            hit(&r, None, Method::DELETE, "/echo/deep/x"),
            "echo-deep /x"
        );
        assert_eq!(
            hit(&r, Some("API.example.com"), Method::GET, "/echo/x"),
            "vhost /echo/x"
        );
        assert_eq!(
            hit(&r, Some("a.example.org"), Method::GET, "/v1/x"),
            "wild /v1/x"
        );
        assert_eq!(hit(&r, Some("example.org"), Method::GET, "/v1/x"), "404");
        // Canonical paths take the function's triggers' methods.
        assert_eq!(
            hit(&r, None, Method::POST, "/demo/echo/gen"),
            "echo-http /gen"
        );
        assert_eq!(hit(&r, None, Method::PUT, "/demo/echo"), "405 GET, POST");
        assert_eq!(hit(&r, None, Method::PUT, "/demo/other/x"), "echo-deep /x");
        // A function without HTTP triggers is not reachable over HTTP.
        assert_eq!(hit(&r, None, Method::GET, "/demo/hidden/x"), "404");
        assert_eq!(hit(&r, None, Method::GET, "/"), "404");
        assert_eq!(hit(&r, None, Method::GET, "/nope/echo"), "404");
    }

    #[test]
    fn bearer_auth() {
        let (r, _) = router();
        let Route::Matched { trigger, .. } = r.route(None, &Method::PUT, "/secure") else {
            panic!()
        };
        let ok = http::HeaderValue::from_static("Bearer abc");
        let ok2 = http::HeaderValue::from_static("bearer  abc ");
        let bad = http::HeaderValue::from_static("Bearer abd");
        let basic = http::HeaderValue::from_static("Basic abc");
        assert!(authorize(&trigger.auth, Some(&ok)));
        assert!(authorize(&trigger.auth, Some(&ok2)));
        assert!(!authorize(&trigger.auth, Some(&bad)));
        assert!(!authorize(&trigger.auth, Some(&basic)));
        assert!(!authorize(&trigger.auth, None));
    }
}
