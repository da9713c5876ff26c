//! The plugin's configuration: the `config = { … }` table of its `[[plugin]]` entry in the
//! gateway's TOML, as string keys and string values.
//!
//! Reading a key is a cheap host call; read and parse on each call rather than caching in a
//! global, so a config reload is seen at once. Malformed values are logged (once per plugin
//! instance and key) at `warn` and replaced by the default, so a typo never fails requests.
//!
//! ```toml
//! [[plugin]]
//! name = "router"
//! path = "plugins/target/wasm32-wasip2/release/header_router.wasm"
//! config = { header = "x-variant", routes = "a=demo/echo-a,b=demo/echo-b", canary_percent = "10" }
//! ```

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::str::FromStr;

use crate::host::sys;

/// The value of `key`, or `None` when the config does not set it.
///
/// ```no_run
/// use fngate_plugin::config;
///
/// if let Some(canary) = config::get("canary_function") {
///     fngate_plugin::log::debug(format!("canary is {canary}"));
/// }
/// ```
pub fn get(key: &str) -> Option<String> {
    sys::config_get(key)
}

/// The value of `key`, or `default` when the config does not set it.
///
/// ```no_run
/// let header = fngate_plugin::config::get_or("header", "x-variant");
/// ```
pub fn get_or(key: &str, default: &str) -> String {
    get(key).unwrap_or_else(|| default.to_owned())
}

/// The value of `key` parsed as `T` (surrounding whitespace ignored), or `default` when the key
/// is not set or does not parse (the latter is logged once per instance).
///
/// ```no_run
/// let percent: u64 = fngate_plugin::config::parse_or("canary_percent", 0);
/// let rate: f64 = fngate_plugin::config::parse_or("rate_per_second", 50.0);
/// ```
pub fn parse_or<T: FromStr>(key: &str, default: T) -> T {
    match get(key) {
        None => default,
        Some(raw) => match raw.trim().parse() {
            Ok(v) => v,
            Err(_) => {
                warn_once(
                    key,
                    &format!("config {key} = {raw:?} is not valid; using the default"),
                );
                default
            }
        },
    }
}

/// The value of `key` as a comma-separated map `"a=b,c=d"` → `[("a","b"), ("c","d")]`, in
/// config order; empty when the key is not set. See [`parse_map`] for the syntax; malformed
/// entries are skipped and logged once per instance.
///
/// ```no_run
/// use fngate_plugin::config;
///
/// // config = { routes = "a=demo/echo-a,b=demo/echo-b" }
/// let routes = config::map("routes");
/// let target = routes.iter().find(|(k, _)| k == "a").map(|(_, f)| f.as_str());
/// ```
pub fn map(key: &str) -> Vec<(String, String)> {
    let Some(raw) = get(key) else {
        return Vec::new();
    };
    let (entries, bad) = split_map(&raw);
    if let Some(first) = bad.first() {
        warn_once(
            key,
            &format!("config {key}: entry {first:?} is not key=value; skipped"),
        );
    }
    entries
}

/// The value of `key` as a comma-separated list, trimmed, empty items dropped; empty when the
/// key is not set.
///
/// ```no_run
/// // config = { drop_suffixes = ".tmp, .part" }
/// let suffixes = fngate_plugin::config::list("drop_suffixes"); // [".tmp", ".part"]
/// ```
pub fn list(key: &str) -> Vec<String> {
    get(key).map(|raw| parse_list(&raw)).unwrap_or_default()
}

/// Every configured key and value, sorted by key.
///
/// ```no_run
/// for (key, value) in fngate_plugin::config::entries() {
///     fngate_plugin::log::debug(format!("{key} = {value}"));
/// }
/// ```
pub fn entries() -> Vec<(String, String)> {
    sys::config_entries()
}

/// Parses `"a=b, c = d"` into `[("a","b"), ("c","d")]`: entries are separated by commas, key and
/// value by the first `=`, both trimmed. Empty entries are ignored; entries without `=` or with
/// an empty key are skipped. Values may contain `=` (and `:`), but not commas.
///
/// ```
/// use fngate_plugin::config::parse_map;
///
/// let m = parse_map("a=demo/echo-a, b = demo/echo-b,,bad");
/// assert_eq!(m, [("a".into(), "demo/echo-a".into()), ("b".into(), "demo/echo-b".into())]);
/// ```
pub fn parse_map(raw: &str) -> Vec<(String, String)> {
    split_map(raw).0
}

/// Parses `"a, b,,c"` into `["a", "b", "c"]`: comma-separated, trimmed, empty items dropped.
///
/// ```
/// assert_eq!(fngate_plugin::config::parse_list(".tmp, .part,"), [".tmp", ".part"]);
/// ```
pub fn parse_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The well-formed entries, and the malformed ones (for the warning).
fn split_map(raw: &str) -> (Vec<(String, String)>, Vec<&str>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                entries.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            _ => bad.push(item),
        }
    }
    (entries, bad)
}

/// Logs `message` at warn unless this instance already warned about `key`: an instance serves
/// many calls, and a bad value would otherwise log on every one of them.
fn warn_once(key: &str, message: &str) {
    if WARNED.with_borrow_mut(|warned| warned.insert(key.to_owned())) {
        crate::log::warn(message);
    }
}

thread_local! {
    /// Keys already warned about by this instance (a wasm instance is single-threaded; natively,
    /// each test thread gets its own set).
    static WARNED: RefCell<BTreeSet<String>> = const { RefCell::new(BTreeSet::new()) };
}

/// Forgets which keys were warned about (for [`crate::testing::Host::install`]).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn forget_warnings() {
    WARNED.with_borrow_mut(BTreeSet::clear);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_syntax() {
        assert_eq!(
            parse_map(" key-abc=acme:10 ,x==y, =nokey, novalue,k="),
            [
                ("key-abc".to_owned(), "acme:10".to_owned()),
                ("x".to_owned(), "=y".to_owned()),
                ("k".to_owned(), String::new()),
            ]
        );
        assert!(parse_map("").is_empty());
        assert_eq!(split_map("a=b,oops").1, ["oops"]);
    }

    #[test]
    fn list_syntax() {
        assert_eq!(parse_list(" .tmp ,, .part "), [".tmp", ".part"]);
        assert!(parse_list(" , ").is_empty());
    }
}
