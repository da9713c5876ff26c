//! A/B routing by header, with a hash-based canary split for everything else.
//!
//! Config: `header` (default "x-variant"); `routes` = "a=demo/echo-a,b=demo/echo-b" (header
//! value → function); `canary_function` and `canary_percent` (0–100, default 0). The request
//! carries `x-fngate-route: header|canary|default` to say which rule applied.

use fngate_plugin::{Decision, Plugin, Request, config, export_plugin, hash64};

/// Tells the backend which rule routed the request.
const ROUTE_HEADER: &str = "x-fngate-route";

struct HeaderRouter;

impl Plugin for HeaderRouter {
    fn on_request(req: Request) -> Decision {
        let header = config::get_or("header", "x-variant");
        if let Some(value) = req.header(&header) {
            let routes = config::map("routes");
            if let Some((_, function)) = routes.into_iter().find(|(v, _)| v == value.trim()) {
                return Decision::route_to(function).set_header(ROUTE_HEADER, "header");
            }
        }
        if let Some(canary) = config::get("canary_function")
            && in_canary(&req.request_id, config::parse_or("canary_percent", 0))
        {
            return Decision::route_to(canary).set_header(ROUTE_HEADER, "canary");
        }
        Decision::pass().set_header(ROUTE_HEADER, "default")
    }
}

/// Whether `request_id` falls in the first `percent` of 100 hash buckets: the same id always
/// lands on the same side, and ids spread evenly.
fn in_canary(request_id: &str, percent: u64) -> bool {
    hash64(request_id) % 100 < percent
}

export_plugin!(HeaderRouter);

#[cfg(test)]
mod tests {
    use super::*;
    use fngate_plugin::testing::{Host, request};

    fn host() -> Host {
        Host::new()
            .config("routes", "a=demo/echo-a, b=demo/echo-b")
            .config("canary_function", "demo/echo-canary")
            .config("canary_percent", "10")
    }

    fn route(req: Request) -> (Option<String>, String) {
        let d = HeaderRouter::on_request(req);
        let r = d.route().expect("never rejects");
        let rule = r.set_headers.iter().find(|(n, _)| n == ROUTE_HEADER);
        (r.function.clone(), rule.expect("route header").1.clone())
    }

    #[test]
    fn header_value_picks_the_function() {
        host().install();
        let mut req = request("GET", "/echo");
        req.headers.push(("x-variant".into(), "b".into()));
        assert_eq!(route(req), (Some("demo/echo-b".into()), "header".into()));
    }

    #[test]
    fn configured_header_name_and_unknown_values() {
        host().config("header", "X-Group").install();
        let mut req = request("GET", "/echo");
        req.headers.push(("x-group".into(), "a".into()));
        assert_eq!(route(req).1, "header");
        let mut req = request("GET", "/echo");
        req.headers.push(("x-group".into(), "zzz".into()));
        assert_ne!(route(req).1, "header", "unknown values fall through");
    }

    #[test]
    fn canary_split_is_sticky_and_close_to_the_percentage() {
        host().install();
        let mut canary = 0;
        for i in 0..10_000u64 {
            let mut req = request("GET", "/echo");
            req.request_id = format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let (function, rule) = route(req.clone());
            assert_eq!(route(req), (function.clone(), rule.clone()), "sticky");
            if rule == "canary" {
                assert_eq!(function.as_deref(), Some("demo/echo-canary"));
                canary += 1;
            } else {
                assert_eq!((function, rule.as_str()), (None, "default"));
            }
        }
        assert!(
            (900..1100).contains(&canary),
            "{canary} of 10000 in the canary"
        );
    }

    #[test]
    fn canary_off_without_percent_and_at_bounds() {
        Host::new().config("canary_function", "demo/c").install();
        assert_eq!(route(request("GET", "/")).1, "default");
        assert!((0..1000).all(|i| in_canary(&i.to_string(), 100)));
        assert!((0..1000).all(|i| !in_canary(&i.to_string(), 0)));
    }
}
