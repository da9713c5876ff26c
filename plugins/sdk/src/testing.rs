//! A stand-in for the gateway, so plugins can be unit-tested natively
//! (`cargo test --target x86_64-unknown-linux-gnu -p my-plugin`). Only compiled on targets other
//! than wasm32; inside a component the real host answers.
//!
//! Each test thread has its own host: [`Host::install`] sets its config and function states,
//! then the plugin's hooks are called directly. Rate limits are real token buckets on a fake
//! clock that only moves with [`advance`]; logs, counters and histograms are recorded.
//!
//! ```
//! use fngate_plugin::testing::{self, Host};
//! use fngate_plugin::{Decision, Plugin, Request, config};
//!
//! struct Router;
//! impl Plugin for Router {
//!     fn on_request(req: Request) -> Decision {
//!         match req.header("x-variant") {
//!             Some("b") => Decision::route_to(config::get_or("b", "demo/echo-b")),
//!             _ => Decision::pass(),
//!         }
//!     }
//! }
//!
//! Host::new().config("b", "demo/echo-beta").install();
//! let mut req = testing::request("GET", "/echo");
//! req.headers.push(("x-variant".into(), "b".into()));
//! assert_eq!(Router::on_request(req), Decision::route_to("demo/echo-beta"));
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::{FunctionLoad, Level, ObjectEvent, Request};

/// The test host's settings: config and function states. Build one, then
/// [`install`](Host::install) it on the current thread.
///
/// ```
/// use fngate_plugin::{FunctionLoad, testing::Host};
///
/// Host::new()
///     .config("short_function", "llm/t4")
///     .state("llm/t4", FunctionLoad { total_slots: 2, queue_depth: 9, ..Default::default() })
///     .install();
/// assert_eq!(fngate_plugin::config::get("short_function").as_deref(), Some("llm/t4"));
/// assert_eq!(fngate_plugin::state("llm/t4").unwrap().queue_depth, 9);
/// ```
#[derive(Debug, Default, Clone)]
pub struct Host {
    config: BTreeMap<String, String>,
    states: BTreeMap<String, FunctionLoad>,
}

impl Host {
    /// A host with no config and no functions.
    ///
    /// ```
    /// fngate_plugin::testing::Host::new().install();
    /// assert!(fngate_plugin::config::entries().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets config `key` to `value`.
    ///
    /// ```
    /// fngate_plugin::testing::Host::new().config("canary_percent", "10").install();
    /// assert_eq!(fngate_plugin::config::parse_or("canary_percent", 0u64), 10);
    /// ```
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.config.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Makes function `function` exist with `state`.
    ///
    /// ```
    /// use fngate_plugin::{FunctionLoad, testing::Host};
    /// Host::new().state("llm/a10", FunctionLoad::default()).install();
    /// assert!(fngate_plugin::state("llm/a10").is_some());
    /// assert!(fngate_plugin::state("llm/none").is_none());
    /// ```
    pub fn state(mut self, function: &str, state: FunctionLoad) -> Self {
        self.states.insert(function.to_owned(), state);
        self
    }

    /// Makes this the current thread's host, with empty logs, counters and rate-limit buckets
    /// and the clock at zero.
    ///
    /// ```
    /// fngate_plugin::testing::Host::new().install();
    /// assert_eq!(fngate_plugin::now_ns(), 0);
    /// ```
    pub fn install(self) {
        HOST.with_borrow_mut(|h| {
            *h = Recorder {
                host: self,
                ..Recorder::default()
            }
        });
        crate::config::forget_warnings();
    }
}

/// Moves the test clock ([`crate::now_ns`]) forward, refilling rate-limit buckets.
///
/// ```
/// use fngate_plugin::{rate_limit, testing};
///
/// testing::Host::new().install();
/// assert!(rate_limit("k", 1.0, 1));
/// assert!(!rate_limit("k", 1.0, 1));
/// testing::advance(1_000_000_000);
/// assert!(rate_limit("k", 1.0, 1));
/// ```
pub fn advance(ns: u64) {
    HOST.with_borrow_mut(|h| h.now += ns);
}

/// The lines logged since [`Host::install`], oldest first.
///
/// ```
/// fngate_plugin::testing::Host::new().install();
/// fngate_plugin::log::warn("careful");
/// assert_eq!(fngate_plugin::testing::logs(), [(fngate_plugin::Level::Warn, "careful".to_owned())]);
/// ```
pub fn logs() -> Vec<(Level, String)> {
    HOST.with_borrow(|h| h.logs.clone())
}

/// The total added to counter `name` since [`Host::install`].
///
/// ```
/// fngate_plugin::testing::Host::new().install();
/// fngate_plugin::counter("route_long", 2);
/// assert_eq!(fngate_plugin::testing::counter("route_long"), 2);
/// ```
pub fn counter(name: &str) -> u64 {
    HOST.with_borrow(|h| h.counters.get(name).copied().unwrap_or(0))
}

/// The values recorded in histogram `name` since [`Host::install`].
///
/// ```
/// fngate_plugin::testing::Host::new().install();
/// fngate_plugin::histogram("prompt_bytes", 512.0);
/// assert_eq!(fngate_plugin::testing::histogram("prompt_bytes"), [512.0]);
/// ```
pub fn histogram(name: &str) -> Vec<f64> {
    HOST.with_borrow(|h| h.histograms.get(name).cloned().unwrap_or_default())
}

/// A request as the gateway would pass it: the given method and path, scheme "https",
/// authority "localhost", request id "0123456789abcdef", client "127.0.0.1", trigger "test",
/// function "demo/echo", no headers, no query, no body.
///
/// ```
/// let mut req = fngate_plugin::testing::request("POST", "/echo/v1");
/// req.headers.push(("x-api-key".into(), "key-abc".into()));
/// req.body_length = Some(4096);
/// ```
pub fn request(method: &str, path: &str) -> Request {
    Request {
        request_id: "0123456789abcdef".into(),
        method: method.into(),
        scheme: "https".into(),
        authority: "localhost".into(),
        path: path.into(),
        query: None,
        headers: Vec::new(),
        client_addr: "127.0.0.1".into(),
        trigger: "test".into(),
        function: "demo/echo".into(),
        body_prefix: None,
        body_length: None,
    }
}

/// An `ObjectCreated:Put` event for `bucket`/`key` from source "test", trigger "test",
/// function "demo/echo", everything else empty.
///
/// ```
/// let mut ev = fngate_plugin::testing::event("uploads", "images/cat.png");
/// ev.size = Some(1024);
/// ```
pub fn event(bucket: &str, key: &str) -> ObjectEvent {
    ObjectEvent {
        source: "test".into(),
        event_name: "ObjectCreated:Put".into(),
        bucket: bucket.into(),
        key: key.into(),
        size: None,
        etag: None,
        version_id: None,
        sequencer: None,
        time: None,
        region: None,
        metadata: Vec::new(),
        trigger: "test".into(),
        function: "demo/echo".into(),
    }
}

/// What the current thread's host holds and has recorded.
#[derive(Default)]
struct Recorder {
    host: Host,
    now: u64,
    /// Tokens and the time they were counted, per key.
    buckets: BTreeMap<String, (f64, u64)>,
    logs: Vec<(Level, String)>,
    counters: BTreeMap<String, u64>,
    histograms: BTreeMap<String, Vec<f64>>,
}

thread_local! {
    static HOST: RefCell<Recorder> = RefCell::new(Recorder::default());
}

/// The host imports, answered by the current thread's [`Host`].
pub(crate) mod sys {
    use super::HOST;
    use crate::{FunctionLoad, Level};

    pub(crate) fn log(level: Level, message: &str) {
        HOST.with_borrow_mut(|h| h.logs.push((level, message.to_owned())));
    }

    pub(crate) fn config_get(key: &str) -> Option<String> {
        HOST.with_borrow(|h| h.host.config.get(key).cloned())
    }

    pub(crate) fn config_entries() -> Vec<(String, String)> {
        HOST.with_borrow(|h| {
            let config = &h.host.config;
            config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        })
    }

    pub(crate) fn monotonic_now() -> u64 {
        HOST.with_borrow(|h| h.now)
    }

    pub(crate) fn counter_add(name: &str, value: u64) {
        HOST.with_borrow_mut(|h| *h.counters.entry(name.to_owned()).or_default() += value);
    }

    pub(crate) fn histogram_record(name: &str, value: f64) {
        HOST.with_borrow_mut(|h| h.histograms.entry(name.to_owned()).or_default().push(value));
    }

    pub(crate) fn rate_limit(key: &str, per_second: f64, burst: u32) -> bool {
        HOST.with_borrow_mut(|h| {
            let now = h.now;
            let (tokens, at) = h
                .buckets
                .entry(key.to_owned())
                .or_insert((f64::from(burst), now));
            let refill = (now - *at) as f64 / 1e9 * per_second;
            *tokens = (*tokens + refill).min(f64::from(burst));
            *at = now;
            if *tokens >= 1.0 {
                *tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }

    pub(crate) fn function_state(function: &str) -> Option<FunctionLoad> {
        HOST.with_borrow(|h| h.host.states.get(function).copied())
    }
}
