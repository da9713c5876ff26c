//! Logging to the gateway's log, tagged with the plugin's name.
//!
//! Lines longer than 1 KiB are cut and a plugin that logs more than 100 lines per second is
//! sampled, so log decisions worth a human's attention, not every request. Never log an API key
//! or the `authorization` header (beware `{:?}` of a whole [`Request`](crate::Request)).
//!
//! ```no_run
//! use fngate_plugin::log;
//!
//! log::info("routing table loaded");
//! log::warn(format!("unknown variant {:?}", "c"));
//! ```

use crate::Level;
use crate::host::sys;

/// Writes `message` at `level`.
///
/// ```no_run
/// fngate_plugin::log::log(fngate_plugin::Level::Info, "hello");
/// ```
pub fn log(level: Level, message: impl AsRef<str>) {
    sys::log(level, message.as_ref());
}

/// Writes `message` at trace level.
///
/// ```no_run
/// fngate_plugin::log::trace("entering on_request");
/// ```
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message);
}

/// Writes `message` at debug level.
///
/// ```no_run
/// fngate_plugin::log::debug(format!("route {}", "demo/echo-a"));
/// ```
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message);
}

/// Writes `message` at info level.
///
/// ```no_run
/// fngate_plugin::log::info("canary enabled");
/// ```
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message);
}

/// Writes `message` at warn level.
///
/// ```no_run
/// fngate_plugin::log::warn("config routes is empty");
/// ```
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message);
}

/// Writes `message` at error level.
///
/// ```no_run
/// fngate_plugin::log::error("spill function llm/a10 does not exist");
/// ```
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message);
}
