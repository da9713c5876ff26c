//! Lookups on what a plugin is given: the request, the object event, a function's state.

use crate::{FunctionLoad, ObjectEvent, Request};

impl Request {
    /// The value of the first header called `name` (compared case-insensitively), if any.
    ///
    /// ```
    /// # let mut req = fngate_plugin::testing::request("GET", "/");
    /// req.headers.push(("x-variant".into(), "b".into()));
    /// assert_eq!(req.header("X-Variant"), Some("b"));
    /// assert_eq!(req.header("x-other"), None);
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the headers called `name` (compared case-insensitively), in arrival order.
    ///
    /// ```
    /// # let mut req = fngate_plugin::testing::request("GET", "/");
    /// req.headers.push(("accept".into(), "text/html".into()));
    /// req.headers.push(("accept".into(), "application/json".into()));
    /// assert_eq!(req.header_all("accept").collect::<Vec<_>>(), ["text/html", "application/json"]);
    /// ```
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The token of an `authorization: Bearer TOKEN` header (scheme compared
    /// case-insensitively, surrounding spaces trimmed); `None` when the header is missing, uses
    /// another scheme or has an empty token.
    ///
    /// ```
    /// # let mut req = fngate_plugin::testing::request("GET", "/");
    /// req.headers.push(("authorization".into(), "Bearer key-abc".into()));
    /// assert_eq!(req.bearer_token(), Some("key-abc"));
    /// ```
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.header("authorization")?.trim_start();
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }

    /// The body prefix the host passed (when the plugin's config sets `body_prefix`), or an empty
    /// slice.
    ///
    /// ```
    /// # let mut req = fngate_plugin::testing::request("POST", "/");
    /// req.body_prefix = Some(b"{\"prompt\":".to_vec());
    /// assert!(req.body_prefix_bytes().starts_with(b"{"));
    /// ```
    pub fn body_prefix_bytes(&self) -> &[u8] {
        self.body_prefix.as_deref().unwrap_or_default()
    }
}

impl ObjectEvent {
    /// The value of the user metadata entry `name` (compared case-insensitively), if any.
    ///
    /// ```
    /// # let mut ev = fngate_plugin::testing::event("uploads", "a.png");
    /// ev.metadata.push(("x-amz-meta-owner".into(), "acme".into()));
    /// assert_eq!(ev.meta("X-Amz-Meta-Owner"), Some("acme"));
    /// ```
    pub fn meta(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Default for FunctionLoad {
    /// All zero: no instances, no slots, nothing queued.
    ///
    /// ```
    /// assert_eq!(fngate_plugin::FunctionLoad::default().total_slots, 0);
    /// ```
    fn default() -> Self {
        FunctionLoad {
            provisioned_instances: 0,
            on_demand_instances: 0,
            busy_slots: 0,
            total_slots: 0,
            queue_depth: 0,
            cold_starts_in_progress: 0,
        }
    }
}

impl FunctionLoad {
    /// Slots free right now (`total_slots - busy_slots`, never negative).
    ///
    /// ```
    /// let s = fngate_plugin::FunctionLoad { total_slots: 4, busy_slots: 3, ..Default::default() };
    /// assert_eq!(s.free_slots(), 1);
    /// ```
    pub fn free_slots(&self) -> u32 {
        self.total_slots.saturating_sub(self.busy_slots)
    }

    /// Ready instances, provisioned and on-demand.
    ///
    /// ```
    /// let s = fngate_plugin::FunctionLoad { provisioned_instances: 1, on_demand_instances: 2, ..Default::default() };
    /// assert_eq!(s.ready_instances(), 3);
    /// ```
    pub fn ready_instances(&self) -> u32 {
        self.provisioned_instances
            .saturating_add(self.on_demand_instances)
    }
}
