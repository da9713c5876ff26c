//! Routes by prompt size to a GPU class, spilling to another function under load.
//!
//! Config: `long_function` (e.g. "llm/a10") and `short_function` (e.g. "llm/t4"; either unset
//! keeps the trigger's function); `long_prompt_bytes` (default 2048): a body of at least that
//! many bytes (Content-Length, else the body prefix's length — set `body_prefix` for chunked
//! uploads) is long. `spill_function` and `spill_queue_depth` (default 8): when the chosen
//! function has that many requests queued, or no ready slots at all, the request goes to the
//! spill function instead. Sets `x-fngate-gpu-route: long|short|spill` and counts
//! `route_long` / `route_short` / `route_spill`.

use fngate_plugin::{
    Decision, FunctionLoad, Plugin, Request, config, counter, export_plugin, state,
};

/// Each route class: its `x-fngate-gpu-route` value and its counter.
const LONG: (&str, &str) = ("long", "route_long");
const SHORT: (&str, &str) = ("short", "route_short");
const SPILL: (&str, &str) = ("spill", "route_spill");

struct GpuRouter;

impl Plugin for GpuRouter {
    fn on_request(req: Request) -> Decision {
        let long = prompt_bytes(&req) >= config::parse_or("long_prompt_bytes", 2048);
        let (mut class, chosen) = if long {
            (LONG, config::get("long_function"))
        } else {
            (SHORT, config::get("short_function"))
        };
        let mut function = chosen.unwrap_or(req.function);
        if let Some(spill) = config::get("spill_function")
            && should_spill(state(&function), config::parse_or("spill_queue_depth", 8))
        {
            (class, function) = (SPILL, spill);
        }
        counter(class.1, 1);
        Decision::route_to(function).set_header("x-fngate-gpu-route", class.0)
    }
}

/// The prompt's size: the declared body length, else what the body prefix shows, else 0.
fn prompt_bytes(req: &Request) -> u64 {
    req.body_length
        .unwrap_or(req.body_prefix_bytes().len() as u64)
}

/// Whether a function in `state` is too busy: `depth` requests queued, or no ready slot at all
/// (scaled to zero or still cold-starting). An unknown function (`None`) is left to the gateway.
fn should_spill(state: Option<FunctionLoad>, depth: u32) -> bool {
    state.is_some_and(|s| s.queue_depth >= depth || s.total_slots == 0)
}

export_plugin!(GpuRouter);

#[cfg(test)]
mod tests {
    use super::*;
    use fngate_plugin::testing::{self, Host, request};

    fn ready(queue_depth: u32) -> FunctionLoad {
        FunctionLoad {
            provisioned_instances: 1,
            total_slots: 2,
            busy_slots: 2,
            queue_depth,
            ..Default::default()
        }
    }

    fn host(long_state: FunctionLoad) -> Host {
        Host::new()
            .config("long_function", "llm/a10")
            .config("short_function", "llm/t4")
            .config("spill_function", "llm/a100")
            .state("llm/a10", long_state)
            .state("llm/t4", ready(0))
    }

    fn route(body_length: Option<u64>, prefix: usize) -> (String, String) {
        let mut req = request("POST", "/llm");
        req.body_length = body_length;
        req.body_prefix = (prefix > 0).then(|| vec![b'x'; prefix]);
        let d = GpuRouter::on_request(req);
        let r = d.route().expect("never rejects");
        (r.function.clone().unwrap(), r.set_headers[0].1.clone())
    }

    #[test]
    fn splits_by_size() {
        host(ready(0)).install();
        assert_eq!(route(Some(2048), 0), ("llm/a10".into(), "long".into()));
        assert_eq!(
            route(Some(2047), 4096),
            ("llm/t4".into(), "short".into()),
            "declared length wins"
        );
        assert_eq!(route(None, 4096), ("llm/a10".into(), "long".into()));
        assert_eq!(route(None, 0), ("llm/t4".into(), "short".into()));
        assert_eq!(
            (
                testing::counter("route_long"),
                testing::counter("route_short")
            ),
            (2, 2)
        );
    }

    #[test]
    fn spills_on_queue_depth_and_on_no_slots() {
        host(ready(8)).install();
        assert_eq!(route(Some(5000), 0), ("llm/a100".into(), "spill".into()));
        host(ready(7)).install();
        assert_eq!(route(Some(5000), 0).1, "long");
        host(FunctionLoad {
            cold_starts_in_progress: 1,
            ..Default::default()
        })
        .install();
        assert_eq!(route(Some(5000), 0).1, "spill");
        assert_eq!(testing::counter("route_spill"), 1);
    }

    #[test]
    fn defaults_keep_the_trigger_function() {
        Host::new().config("long_prompt_bytes", "10").install();
        assert_eq!(route(Some(100), 0), ("demo/echo".into(), "long".into()));
        assert!(
            !should_spill(None, 0),
            "unknown functions are the gateway's to refuse"
        );
    }
}
