//! Drops object-storage events that should not run a function, and routes the rest by key
//! prefix.
//!
//! Config: `drop_suffixes` = ".tmp,.part" (keys ending so are dropped); `max_size` (bytes;
//! larger objects are dropped; events without a size pass); `routes` =
//! "images/=media/thumbnail,audio/=media/transcribe" (key prefix → function; the longest
//! matching prefix wins; no match keeps the trigger's function). Requests pass untouched.

use fngate_plugin::{EventDecision, ObjectEvent, Plugin, config, export_plugin};

struct EventFilter;

impl Plugin for EventFilter {
    fn on_event(ev: ObjectEvent) -> EventDecision {
        if let Some(suffix) = config::list("drop_suffixes")
            .into_iter()
            .find(|s| ev.key.ends_with(s.as_str()))
        {
            return EventDecision::drop(format!("key ends with {suffix:?}"));
        }
        let max = config::parse_or("max_size", u64::MAX);
        if let Some(size) = ev.size
            && size > max
        {
            return EventDecision::drop(format!("object is {size} bytes, over max_size {max}"));
        }
        match longest_prefix(config::map("routes"), &ev.key) {
            Some(function) => EventDecision::route_to(function),
            None => EventDecision::dispatch(),
        }
    }
}

/// The function of the longest prefix in `routes` that `key` starts with.
fn longest_prefix(routes: Vec<(String, String)>, key: &str) -> Option<String> {
    routes
        .into_iter()
        .filter(|(prefix, _)| key.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, function)| function)
}

export_plugin!(EventFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use fngate_plugin::testing::{Host, event};

    fn host() -> Host {
        Host::new()
            .config("drop_suffixes", ".tmp, .part")
            .config("max_size", "1000")
            .config(
                "routes",
                "images/=media/thumbnail, images/raw/=media/raw, audio/=media/transcribe",
            )
    }

    fn decide(key: &str, size: Option<u64>) -> EventDecision {
        let mut ev = event("uploads", key);
        ev.size = size;
        EventFilter::on_event(ev)
    }

    #[test]
    fn drops_by_suffix_and_size() {
        host().install();
        assert_eq!(
            decide("images/a.png.part", Some(1)),
            EventDecision::drop(r#"key ends with ".part""#)
        );
        assert!(
            matches!(decide("images/a.png", Some(1001)), EventDecision::Drop(r) if r.contains("over max_size 1000"))
        );
        assert_eq!(
            decide("images/a.png", None),
            EventDecision::route_to("media/thumbnail")
        );
    }

    #[test]
    fn routes_by_longest_prefix() {
        host().install();
        assert_eq!(
            decide("images/raw/a.cr2", Some(10)),
            EventDecision::route_to("media/raw")
        );
        assert_eq!(
            decide("audio/a.mp3", Some(10)),
            EventDecision::route_to("media/transcribe")
        );
        assert_eq!(decide("docs/a.pdf", Some(10)), EventDecision::dispatch());
    }

    #[test]
    fn nothing_configured_dispatches_everything() {
        Host::new().install();
        assert_eq!(decide("x.tmp", Some(u64::MAX)), EventDecision::dispatch());
    }
}
