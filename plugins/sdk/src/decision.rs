//! Constructors and builder methods for the decision types a plugin returns.
//!
//! The builders on [`Decision`] and [`EventDecision`] edit the route when the decision goes on
//! (proceed / dispatch) and do nothing on a refusal, so a chain reads top to bottom:
//! `Decision::route_to("llm/a10").priority(5).set_header("x-gpu", "a10")`.

use crate::{Decision, EventDecision, EventRoute, InvocationType, Rejection, Route};

impl Default for Route {
    /// A route that changes nothing.
    ///
    /// ```
    /// assert_eq!(fngate_plugin::Route::default(), fngate_plugin::Route::new());
    /// ```
    fn default() -> Self {
        Route {
            function: None,
            invocation: None,
            priority: None,
            tenant: None,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            path: None,
        }
    }
}

impl Route {
    /// A route that changes nothing; add changes with the builder methods.
    ///
    /// ```
    /// use fngate_plugin::{Decision, Route};
    ///
    /// let d: Decision = Route::new().function("llm/a10").priority(3).into();
    /// assert_eq!(d, Decision::route_to("llm/a10").priority(3));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `function` ("service/function") instead of the trigger's.
    ///
    /// ```
    /// let r = fngate_plugin::Route::new().function("llm/a10");
    /// assert_eq!(r.function.as_deref(), Some("llm/a10"));
    /// ```
    pub fn function(mut self, function: impl Into<String>) -> Self {
        self.function = Some(function.into());
        self
    }

    /// Sets the queue priority (higher goes first when no slot is free; default 0).
    ///
    /// ```
    /// assert_eq!(fngate_plugin::Route::new().priority(10).priority, Some(10));
    /// ```
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sets the tenant key recorded in the log line and used for metering.
    ///
    /// ```
    /// let r = fngate_plugin::Route::new().tenant("acme");
    /// assert_eq!(r.tenant.as_deref(), Some("acme"));
    /// ```
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Sets header `name` (lower-cased) on the request to the function, replacing any header of
    /// that name the client sent. The last `set_header`/`remove_header` for a name wins.
    ///
    /// ```
    /// let r = fngate_plugin::Route::new().set_header("X-Tenant", "acme").set_header("x-tenant", "globex");
    /// assert_eq!(r.set_headers, [("x-tenant".to_owned(), "globex".to_owned())]);
    /// ```
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = lower(name.into());
        self.remove_headers.retain(|n| *n != name);
        self.set_headers.retain(|(n, _)| *n != name);
        self.set_headers.push((name, value.into()));
        self
    }

    /// Removes header `name` (lower-cased) from the request to the function. The last
    /// `set_header`/`remove_header` for a name wins.
    ///
    /// ```
    /// let r = fngate_plugin::Route::new().remove_header("Authorization");
    /// assert_eq!(r.remove_headers, ["authorization"]);
    /// ```
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        let name = lower(name.into());
        self.set_headers.retain(|(n, _)| *n != name);
        if !self.remove_headers.contains(&name) {
            self.remove_headers.push(name);
        }
        self
    }

    /// Sets the path the function sees (must start with `/`; the query is kept).
    ///
    /// ```
    /// let r = fngate_plugin::Route::new().path("/v2/generate");
    /// assert_eq!(r.path.as_deref(), Some("/v2/generate"));
    /// ```
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Invokes asynchronously: the request is stored durably and answered 202 at once.
    ///
    /// ```
    /// use fngate_plugin::{InvocationType, Route};
    /// assert_eq!(Route::new().invocation_async().invocation, Some(InvocationType::Async));
    /// ```
    pub fn invocation_async(mut self) -> Self {
        self.invocation = Some(InvocationType::Async);
        self
    }

    /// Invokes synchronously: the caller waits for the response.
    ///
    /// ```
    /// use fngate_plugin::{InvocationType, Route};
    /// assert_eq!(Route::new().invocation_sync().invocation, Some(InvocationType::Sync));
    /// ```
    pub fn invocation_sync(mut self) -> Self {
        self.invocation = Some(InvocationType::Sync);
        self
    }
}

impl From<Route> for Decision {
    /// `Decision::Proceed(route)`.
    ///
    /// ```
    /// use fngate_plugin::{Decision, Route};
    /// assert_eq!(Decision::from(Route::new()), Decision::pass());
    /// ```
    fn from(route: Route) -> Self {
        Decision::Proceed(route)
    }
}

impl From<Rejection> for Decision {
    /// `Decision::Reject(rejection)`.
    ///
    /// ```
    /// use fngate_plugin::{Decision, Rejection};
    /// let r = Rejection { status: 403, headers: vec![], body: "no".into() };
    /// assert!(Decision::from(r).is_reject());
    /// ```
    fn from(rejection: Rejection) -> Self {
        Decision::Reject(rejection)
    }
}

impl Decision {
    /// Lets the request through as the trigger (or an earlier plugin) routed it.
    ///
    /// ```
    /// use fngate_plugin::{Decision, Route};
    /// assert_eq!(Decision::pass(), Decision::Proceed(Route::new()));
    /// ```
    pub fn pass() -> Self {
        Decision::Proceed(Route::new())
    }

    /// Sends the request to `function` ("service/function", which must exist in the config).
    ///
    /// ```
    /// use fngate_plugin::Decision;
    /// let d = Decision::route_to("demo/echo-b").set_header("x-fngate-route", "header");
    /// assert_eq!(d.route().unwrap().function.as_deref(), Some("demo/echo-b"));
    /// ```
    pub fn route_to(function: impl Into<String>) -> Self {
        Route::new().function(function).into()
    }

    /// Answers the client with `status` (400..=599) and a plain-text `body`; the function is not
    /// called. Add response headers with [`with_header`](Decision::with_header).
    ///
    /// ```
    /// use fngate_plugin::Decision;
    /// let d = Decision::reject(403, "tenant suspended");
    /// assert!(d.is_reject());
    /// ```
    pub fn reject(status: u16, body: impl Into<String>) -> Self {
        Decision::Reject(Rejection {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: body.into(),
        })
    }

    /// Answers the client with `status` and a JSON error body in the gateway's own shape,
    /// `{"error":{"code":"…","message":"…"}}` (the client also gets the request id in the
    /// `x-fngate-request-id` header). `code` should be a stable `snake_case` identifier.
    ///
    /// ```
    /// use fngate_plugin::Decision;
    /// let d = Decision::reject_error(401, "missing_api_key", "send \"authorization: Bearer KEY\"");
    /// let Decision::Reject(r) = d else { unreachable!() };
    /// assert_eq!(
    ///     r.body,
    ///     r#"{"error":{"code":"missing_api_key","message":"send \"authorization: Bearer KEY\""}}"#
    /// );
    /// ```
    pub fn reject_error(status: u16, code: &str, message: &str) -> Self {
        let mut body = String::with_capacity(32 + code.len() + message.len());
        body.push_str(r#"{"error":{"code":""#);
        push_json_escaped(&mut body, code);
        body.push_str(r#"","message":""#);
        push_json_escaped(&mut body, message);
        body.push_str(r#""}}"#);
        Decision::Reject(Rejection {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        })
    }

    /// Adds a header to the response of a [`reject`](Decision::reject) (replacing one of the same
    /// name); does nothing on a proceed decision — use [`set_header`](Decision::set_header) to
    /// change the request instead.
    ///
    /// ```
    /// use fngate_plugin::Decision;
    /// let d = Decision::reject(429, "slow down").with_header("Retry-After", "1");
    /// let Decision::Reject(r) = d else { unreachable!() };
    /// assert!(r.headers.contains(&("retry-after".into(), "1".into())));
    /// ```
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Decision::Reject(r) = &mut self {
            let name = lower(name.into());
            r.headers.retain(|(n, _)| *n != name);
            r.headers.push((name, value.into()));
        }
        self
    }

    /// The route of a proceed decision; `None` for a rejection.
    ///
    /// ```
    /// use fngate_plugin::Decision;
    /// assert_eq!(Decision::route_to("a/b").route().unwrap().function.as_deref(), Some("a/b"));
    /// assert!(Decision::reject(400, "").route().is_none());
    /// ```
    pub fn route(&self) -> Option<&Route> {
        match self {
            Decision::Proceed(route) => Some(route),
            Decision::Reject(_) => None,
        }
    }

    /// Whether this decision refuses the request.
    ///
    /// ```
    /// assert!(!fngate_plugin::Decision::pass().is_reject());
    /// ```
    pub fn is_reject(&self) -> bool {
        matches!(self, Decision::Reject(_))
    }

    /// Applies `f` to the route of a proceed decision; a rejection is returned unchanged.
    ///
    /// ```
    /// use fngate_plugin::Decision;
    /// let d = Decision::pass().map_route(|r| r.tenant("acme"));
    /// assert_eq!(d.route().unwrap().tenant.as_deref(), Some("acme"));
    /// ```
    pub fn map_route(self, f: impl FnOnce(Route) -> Route) -> Self {
        match self {
            Decision::Proceed(route) => Decision::Proceed(f(route)),
            reject @ Decision::Reject(_) => reject,
        }
    }

    /// [`Route::function`] on a proceed decision.
    ///
    /// ```
    /// let d = fngate_plugin::Decision::pass().function("llm/t4");
    /// assert_eq!(d, fngate_plugin::Decision::route_to("llm/t4"));
    /// ```
    pub fn function(self, function: impl Into<String>) -> Self {
        self.map_route(|r| r.function(function))
    }

    /// [`Route::priority`] on a proceed decision.
    ///
    /// ```
    /// let d = fngate_plugin::Decision::pass().priority(10);
    /// assert_eq!(d.route().unwrap().priority, Some(10));
    /// ```
    pub fn priority(self, priority: i32) -> Self {
        self.map_route(|r| r.priority(priority))
    }

    /// [`Route::tenant`] on a proceed decision.
    ///
    /// ```
    /// let d = fngate_plugin::Decision::pass().tenant("acme");
    /// assert_eq!(d.route().unwrap().tenant.as_deref(), Some("acme"));
    /// ```
    pub fn tenant(self, tenant: impl Into<String>) -> Self {
        self.map_route(|r| r.tenant(tenant))
    }

    /// [`Route::set_header`] on a proceed decision: sets a header on the request to the function.
    ///
    /// ```
    /// let d = fngate_plugin::Decision::pass().set_header("x-tenant", "acme");
    /// assert_eq!(d.route().unwrap().set_headers, [("x-tenant".into(), "acme".into())]);
    /// ```
    pub fn set_header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.map_route(|r| r.set_header(name, value))
    }

    /// [`Route::remove_header`] on a proceed decision.
    ///
    /// ```
    /// let d = fngate_plugin::Decision::pass().remove_header("authorization");
    /// assert_eq!(d.route().unwrap().remove_headers, ["authorization"]);
    /// ```
    pub fn remove_header(self, name: impl Into<String>) -> Self {
        self.map_route(|r| r.remove_header(name))
    }

    /// [`Route::path`] on a proceed decision.
    ///
    /// ```
    /// let d = fngate_plugin::Decision::pass().path("/v1/chat");
    /// assert_eq!(d.route().unwrap().path.as_deref(), Some("/v1/chat"));
    /// ```
    pub fn path(self, path: impl Into<String>) -> Self {
        self.map_route(|r| r.path(path))
    }

    /// [`Route::invocation_async`] on a proceed decision.
    ///
    /// ```
    /// use fngate_plugin::{Decision, InvocationType};
    /// let d = Decision::route_to("media/transcode").invocation_async();
    /// assert_eq!(d.route().unwrap().invocation, Some(InvocationType::Async));
    /// ```
    pub fn invocation_async(self) -> Self {
        self.map_route(Route::invocation_async)
    }

    /// [`Route::invocation_sync`] on a proceed decision.
    ///
    /// ```
    /// use fngate_plugin::{Decision, InvocationType};
    /// let d = Decision::pass().invocation_sync();
    /// assert_eq!(d.route().unwrap().invocation, Some(InvocationType::Sync));
    /// ```
    pub fn invocation_sync(self) -> Self {
        self.map_route(Route::invocation_sync)
    }
}

impl Default for EventRoute {
    /// A route that changes nothing.
    ///
    /// ```
    /// let r = fngate_plugin::EventRoute::default();
    /// assert!(r.function.is_none() && r.priority.is_none() && r.tenant.is_none());
    /// ```
    fn default() -> Self {
        EventRoute {
            function: None,
            priority: None,
            tenant: None,
        }
    }
}

impl EventDecision {
    /// Dispatches the event to the trigger's function.
    ///
    /// ```
    /// use fngate_plugin::{EventDecision, EventRoute};
    /// assert_eq!(EventDecision::dispatch(), EventDecision::Dispatch(EventRoute::default()));
    /// ```
    pub fn dispatch() -> Self {
        EventDecision::Dispatch(EventRoute::default())
    }

    /// Dispatches the event to `function` ("service/function") instead.
    ///
    /// ```
    /// let d = fngate_plugin::EventDecision::route_to("media/thumbnail");
    /// assert_eq!(d.route().unwrap().function.as_deref(), Some("media/thumbnail"));
    /// ```
    pub fn route_to(function: impl Into<String>) -> Self {
        EventDecision::dispatch().function(function)
    }

    /// Skips the event; `reason` goes to the gateway's log.
    ///
    /// ```
    /// let d = fngate_plugin::EventDecision::drop("temporary upload");
    /// assert_eq!(d, fngate_plugin::EventDecision::Drop("temporary upload".into()));
    /// ```
    pub fn drop(reason: impl Into<String>) -> Self {
        EventDecision::Drop(reason.into())
    }

    /// The route of a dispatch decision; `None` when the event is dropped.
    ///
    /// ```
    /// assert!(fngate_plugin::EventDecision::drop("x").route().is_none());
    /// ```
    pub fn route(&self) -> Option<&EventRoute> {
        match self {
            EventDecision::Dispatch(route) => Some(route),
            EventDecision::Drop(_) => None,
        }
    }

    /// Sets the function of a dispatch decision; a drop is returned unchanged.
    ///
    /// ```
    /// let d = fngate_plugin::EventDecision::dispatch().function("media/transcribe");
    /// assert_eq!(d, fngate_plugin::EventDecision::route_to("media/transcribe"));
    /// ```
    pub fn function(mut self, function: impl Into<String>) -> Self {
        if let EventDecision::Dispatch(r) = &mut self {
            r.function = Some(function.into());
        }
        self
    }

    /// Sets the queue priority of a dispatch decision; a drop is returned unchanged.
    ///
    /// ```
    /// let d = fngate_plugin::EventDecision::dispatch().priority(-1);
    /// assert_eq!(d.route().unwrap().priority, Some(-1));
    /// ```
    pub fn priority(mut self, priority: i32) -> Self {
        if let EventDecision::Dispatch(r) = &mut self {
            r.priority = Some(priority);
        }
        self
    }

    /// Sets the tenant of a dispatch decision; a drop is returned unchanged.
    ///
    /// ```
    /// let d = fngate_plugin::EventDecision::dispatch().tenant("acme");
    /// assert_eq!(d.route().unwrap().tenant.as_deref(), Some("acme"));
    /// ```
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        if let EventDecision::Dispatch(r) = &mut self {
            r.tenant = Some(tenant.into());
        }
        self
    }
}

/// Header names travel lower-case; lower-case in place when needed.
fn lower(mut name: String) -> String {
    name.make_ascii_lowercase();
    name
}

/// Appends `s` to `out` as the inside of a JSON string.
fn push_json_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_header_operation_wins() {
        let r = Route::new()
            .set_header("x-a", "1")
            .remove_header("X-A")
            .remove_header("x-a");
        assert!(r.set_headers.is_empty());
        assert_eq!(r.remove_headers, ["x-a"]);
        let r = r.set_header("x-a", "2");
        assert!(r.remove_headers.is_empty());
        assert_eq!(r.set_headers, [("x-a".to_owned(), "2".to_owned())]);
    }

    #[test]
    fn builders_leave_rejections_alone() {
        let d = Decision::reject(403, "no")
            .priority(3)
            .set_header("x", "y")
            .function("a/b");
        assert_eq!(d, Decision::reject(403, "no"));
        assert_eq!(
            Decision::pass().with_header("x", "y"),
            Decision::pass(),
            "with_header is for rejections"
        );
        assert_eq!(
            EventDecision::drop("x").function("a/b").priority(1),
            EventDecision::drop("x")
        );
    }

    #[test]
    fn json_escaping() {
        let mut s = String::new();
        push_json_escaped(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#"a\"b\\c\nd\u0001é"#);
    }
}
