//! A misbehaving plugin, for testing the gateway's sandbox: the config key `mode` picks the
//! misbehaviour, the same for `on-request` and `on-event`.
//!
//! | `mode` | what it does |
//! |---|---|
//! | `ok` (default) | passes / dispatches |
//! | `loop` | spins forever (only the deadline stops it) |
//! | `spin` | busy-waits `spin_us` microseconds (default 1000) by the host clock, then passes |
//! | `membomb` | allocates and touches 1 MiB blocks until allocation fails (memory cap) |
//! | `recursion` | recurses without bound (stack overflow) |
//! | `trap` | panics (a trap: `unreachable` under `panic = "abort"`) |
//! | `oversized` | answers with `size` bytes (default 4 MiB) of headers (16 KiB each) / drop reason |
//! | `oversized-path` | answers with a path (request) or function name (event) of `size` bytes |
//! | `bad-status` | rejects with status 200, outside 400..=599 |
//! | `bad-path` | proceeds with a path that does not start with `/` |
//! | `unknown-function` | routes to "nope/nope", which no config defines |
//! | `snoop` | tries to read a file (`file`, default `/etc/passwd`), list `/`, read the environment and open a TCP connection (`addr`, default `127.0.0.1:9`); passes with what it got in `x-hostile-file`, `x-hostile-dir`, `x-hostile-env` and `x-hostile-net` |
//! | `count` | passes, setting `x-hostile-instance` (this instance's first clock reading) and `x-hostile-calls` (calls this instance has served): shows instance reuse and recycling |
//!
//! Unknown modes reject with 500 (drop, for events) and say so.
//!
//! Building 4 MiB means touching fresh memory: measured in a scratch wasmtime 48 host on a
//! busy 2-core machine, a cold instance takes 3–7 ms for either `oversized` mode (the host's
//! lift included), a warm one about 1 ms. To test size limits rather than the deadline, give the
//! plugin a generous `timeout` ("100ms"), or a smaller `size`: anything over the gateway's
//! limits will do (e.g. `size = "65536"` takes microseconds).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use fngate_plugin::{
    Decision, EventDecision, ObjectEvent, Plugin, Request, Route, config, export_plugin, now_ns,
};

struct Hostile;

impl Plugin for Hostile {
    fn on_request(_req: Request) -> Decision {
        let mode = config::get_or("mode", "ok");
        match mode.as_str() {
            "ok" => Decision::pass(),
            "count" => {
                let (instance, calls) = count_call();
                Decision::pass()
                    .set_header("x-hostile-instance", instance.to_string())
                    .set_header("x-hostile-calls", calls.to_string())
            }
            // 16 KiB per header (256 of them for 4 MiB): too many and too big at once, yet few
            // allocations. Built directly: `set_header` checks for duplicates on every call.
            "oversized" => {
                let value = "v".repeat(16 * 1024 - 17);
                Decision::Proceed(Route {
                    set_headers: (0..size().div_ceil(16 * 1024))
                        .map(|i| (format!("x-hostile-{i:07}"), value.clone()))
                        .collect(),
                    ..Route::new()
                })
            }
            "oversized-path" => Decision::pass().path(slash_path(size())),
            "snoop" => snoop()
                .into_iter()
                .fold(Decision::pass(), |d, (name, got)| d.set_header(name, got)),
            "bad-status" => Decision::reject(200, "200 is not a rejection"),
            "bad-path" => Decision::pass().path("no-leading-slash"),
            "unknown-function" => Decision::route_to("nope/nope"),
            other if misbehave(other) => Decision::pass(),
            other => Decision::reject(500, format!("hostile: unknown mode {other:?}")),
        }
    }

    fn on_event(_ev: ObjectEvent) -> EventDecision {
        let mode = config::get_or("mode", "ok");
        match mode.as_str() {
            "ok" | "count" | "bad-status" | "bad-path" => EventDecision::dispatch(),
            "oversized" => EventDecision::drop("r".repeat(size())),
            "oversized-path" => EventDecision::route_to("f".repeat(size())),
            "unknown-function" => EventDecision::route_to("nope/nope"),
            other if misbehave(other) => EventDecision::dispatch(),
            other => EventDecision::drop(format!("hostile: unknown mode {other:?}")),
        }
    }
}

/// Runs the misbehaviours shared by both hooks: `false` for a mode it does not know; of the
/// others only `spin` returns at all.
fn misbehave(mode: &str) -> bool {
    match mode {
        "loop" => {
            let mut n = 0u64;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        "spin" => {
            let until = now_ns() + config::parse_or("spin_us", 1000u64) * 1000;
            while now_ns() < until {
                black_box(());
            }
            true
        }
        "membomb" => {
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut block = vec![0u8; 1 << 20];
                for page in block.iter_mut().step_by(4096) {
                    *page = black_box(1);
                }
                blocks.push(black_box(block));
            }
        }
        "recursion" => {
            let depth = recurse(black_box(0));
            panic!("recursion returned at depth {depth}");
        }
        "trap" => panic!("hostile plugin: trap mode"),
        _ => false,
    }
}

/// What a plugin gets when it reaches for the file system, the environment or the network:
/// `denied: …` for each, unless the host granted it.
fn snoop() -> Vec<(&'static str, String)> {
    fn shown<T>(r: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> String {
        match r {
            Ok(v) => ok(v),
            Err(e) => format!("denied: {e}"),
        }
    }
    let file = config::get_or("file", "/etc/passwd");
    let addr = config::get_or("addr", "127.0.0.1:9");
    let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    vec![
        (
            "x-hostile-file",
            shown(std::fs::read(&file), |b| format!("read {} bytes", b.len())),
        ),
        (
            "x-hostile-dir",
            shown(std::fs::read_dir("/"), |d| {
                format!("listed {} entries", d.count())
            }),
        ),
        (
            "x-hostile-env",
            if vars.is_empty() {
                "denied: no variables".to_string()
            } else {
                format!("read {}", vars.join(","))
            },
        ),
        (
            "x-hostile-net",
            shown(std::net::TcpStream::connect(addr.as_str()), |_| {
                "connected".to_string()
            }),
        ),
    ]
}

/// Recurses until the stack runs out. The opaque base case satisfies the compiler; the
/// frame-local array and the use of the result after the call keep it from becoming a loop.
fn recurse(depth: u64) -> u64 {
    if depth == black_box(u64::MAX) {
        return depth;
    }
    let frame = black_box([depth; 32]);
    let deeper = recurse(black_box(depth + 1));
    black_box(deeper.wrapping_add(frame[(depth % 32) as usize]))
}

/// "/aaa…" of `len` bytes, built in one buffer (every byte a fresh instance touches costs).
fn slash_path(len: usize) -> String {
    let mut path = "a".repeat(len.max(1));
    path.replace_range(..1, "/");
    path
}

/// `size` from config: how many bytes `oversized` modes produce (default 4 MiB).
///
/// Also grows the heap once, up front, by more than that: growing it step by step as the
/// answer is built costs a host call per step, which on a fresh instance takes most of the
/// deadline.
fn size() -> usize {
    let size = config::parse_or("size", 4 << 20);
    let mut reserve = Vec::<u8>::new();
    let _ = reserve.try_reserve(2 * size + (1 << 20)); // best effort: fine if over the cap
    drop(black_box(reserve));
    size
}

/// This instance's id (its first clock reading) and how many calls it has served, this one
/// included. Globals live as long as the instance: that is what `count` shows.
fn count_call() -> (u64, u64) {
    static INSTANCE: AtomicU64 = AtomicU64::new(0);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let _ = INSTANCE.compare_exchange(0, now_ns().max(1), Ordering::Relaxed, Ordering::Relaxed);
    (
        INSTANCE.load(Ordering::Relaxed),
        CALLS.fetch_add(1, Ordering::Relaxed) + 1,
    )
}

export_plugin!(Hostile);

#[cfg(test)]
mod tests {
    use super::*;
    use fngate_plugin::testing::{Host, event, request};

    #[test]
    fn harmless_modes() {
        Host::new().config("mode", "count").install();
        let calls = |d: Decision| d.route().unwrap().set_headers[1].1.clone();
        assert_eq!(calls(Hostile::on_request(request("GET", "/"))), "1");
        assert_eq!(calls(Hostile::on_request(request("GET", "/"))), "2");
        Host::new().config("mode", "nonsense").install();
        assert!(Hostile::on_request(request("GET", "/")).is_reject());
        assert!(matches!(
            Hostile::on_event(event("b", "k")),
            EventDecision::Drop(_)
        ));
        Host::new().install();
        assert_eq!(Hostile::on_request(request("GET", "/")), Decision::pass());
    }

    #[test]
    fn oversized_answers_have_the_configured_size() {
        Host::new()
            .config("mode", "oversized")
            .config("size", "65536")
            .install();
        let d = Hostile::on_request(request("GET", "/"));
        let headers = &d.route().unwrap().set_headers;
        let bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert_eq!((headers.len(), bytes), (4, 65536));
        assert_eq!(slash_path(3), "/aa");
        assert_eq!(slash_path(0), "/");
    }
}
