//! Host tests against the real example and hostile components built from `plugins/`
//! (`plugins/build.sh`; the test script builds them before running the tests).

use super::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub(crate) fn plugin_path(lib: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{lib}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run plugins/build.sh first",
        p.display()
    );
    p
}

fn spec(name: &str, lib: &str, config: &[(&str, &str)], on_error: OnError) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        path: plugin_path(lib),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        timeout: Duration::from_millis(20),
        memory: 16 << 20,
        on_error,
        body_prefix: 0,
        wall_clock: false,
    }
}

fn request(headers: &[(&str, &str)]) -> WitRequest {
    WitRequest::new(RequestView {
        request_id: "0123456789abcdef".into(),
        method: "GET".into(),
        scheme: "https".into(),
        authority: "localhost".into(),
        path: "/echo/x".into(),
        query: None,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        client_addr: "127.0.0.1".into(),
        trigger: "echo-http".into(),
        function: "demo/echo".into(),
        body_prefix: None,
        body_length: Some(10),
    })
}

struct FakeLoad(u32);
impl LiveState for FakeLoad {
    fn function_load(&self, f: &str) -> Option<FunctionLoad> {
        (f.starts_with("llm/")).then_some(FunctionLoad {
            provisioned_instances: 1,
            total_slots: 1,
            busy_slots: 1,
            queue_depth: if f == "llm/t4" { self.0 } else { 0 },
            ..Default::default()
        })
    }
}

fn live(q: u32) -> Arc<dyn LiveState> {
    Arc::new(FakeLoad(q))
}

#[tokio::test]
async fn header_router_routes_by_header() {
    let host = PolicyHost::new().unwrap();
    let p = host
        .load(&spec(
            "router",
            "header_router",
            &[
                ("routes", "a=demo/echo-a,b=demo/echo-b"),
                ("canary_percent", "0"),
            ],
            OnError::FailClosed,
        ))
        .unwrap();
    let d = p
        .on_request(&request(&[("x-variant", "b")]), &live(0))
        .await
        .unwrap();
    let Decision::Proceed(r) = d else {
        panic!("{d:?}")
    };
    assert_eq!(r.function.as_deref(), Some("demo/echo-b"));
    let d = p.on_request(&request(&[]), &live(0)).await.unwrap();
    let Decision::Proceed(r) = d else {
        panic!("{d:?}")
    };
    assert_eq!(r.function, None);
}

#[tokio::test]
async fn gpu_router_spills_on_deep_queue() {
    let host = PolicyHost::new().unwrap();
    let p = host
        .load(&spec(
            "gpu",
            "gpu_router",
            &[
                ("long_function", "llm/a10"),
                ("short_function", "llm/t4"),
                ("spill_function", "llm/spill"),
                ("spill_queue_depth", "4"),
                ("long_prompt_bytes", "100"),
            ],
            OnError::FailClosed,
        ))
        .unwrap();
    for (q, want) in [(0, "llm/t4"), (9, "llm/spill")] {
        match p.on_request(&request(&[]), &live(q)).await.unwrap() {
            Decision::Proceed(r) => assert_eq!(r.function.as_deref(), Some(want)),
            d => panic!("{d:?}"),
        }
    }
}

#[tokio::test]
async fn event_filter_drops_and_routes() {
    let host = PolicyHost::new().unwrap();
    let p = host
        .load(&spec(
            "events",
            "event_filter",
            &[
                ("drop_suffixes", ".tmp"),
                ("routes", "images/=media/thumbnail"),
            ],
            OnError::FailClosed,
        ))
        .unwrap();
    let ev = |key: &str| EventView {
        source: "rgw".into(),
        event_name: "ObjectCreated:Put".into(),
        bucket: "b".into(),
        key: key.into(),
        trigger: "t".into(),
        function: "media/default".into(),
        ..Default::default()
    };
    assert!(matches!(
        p.on_event(&ev("x.tmp"), &live(0)).await.unwrap(),
        EventDecision::Drop(_)
    ));
    match p.on_event(&ev("images/cat.png"), &live(0)).await.unwrap() {
        EventDecision::Dispatch { function, .. } => {
            assert_eq!(function.as_deref(), Some("media/thumbnail"))
        }
        d => panic!("{d:?}"),
    }
}

#[tokio::test]
async fn hostile_plugins_are_contained() {
    let host = PolicyHost::new().unwrap();
    for (mode, kind) in [
        ("loop", FailureKind::Deadline),
        ("membomb", FailureKind::Memory),
        ("recursion", FailureKind::Trap),
        ("trap", FailureKind::Trap),
        ("oversized", FailureKind::InvalidDecision),
    ] {
        // The bomb gets a long deadline so the memory cap, not the deadline, stops it on a loaded
        // machine; 64 KiB of headers is over the decision limit and quick to build.
        let timeout = if mode == "membomb" { 500 } else { 20 };
        let p = host
            .load(&PluginSpec {
                timeout: Duration::from_millis(timeout),
                ..spec(
                    &format!("hostile-{mode}"),
                    "hostile",
                    &[("mode", mode), ("size", "65536")],
                    OnError::FailOpen,
                )
            })
            .unwrap();
        let t = Instant::now();
        let f = p.on_request(&request(&[]), &live(0)).await.unwrap_err();
        assert_eq!(f.kind, kind, "{mode}: {f}");
        assert_eq!(f.on_error, OnError::FailOpen);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{mode} took {:?}",
            t.elapsed()
        );
        // A failed instance is discarded; the next call gets a fresh one and fails the same way,
        // never hangs or poisons the pool.
        assert_eq!(
            p.on_request(&request(&[]), &live(0))
                .await
                .unwrap_err()
                .kind,
            kind,
            "{mode} again"
        );
    }
    // A well-behaved instance of the same component is unaffected.
    let ok = host
        .load(&spec(
            "hostile-ok",
            "hostile",
            &[("mode", "ok")],
            OnError::FailClosed,
        ))
        .unwrap();
    assert!(ok.on_request(&request(&[]), &live(0)).await.is_ok());
}

#[tokio::test]
async fn a_file_that_is_not_a_component_is_refused() {
    let host = PolicyHost::new().unwrap();
    let dir = std::env::temp_dir().join(format!("fngate-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.wasm");
    std::fs::write(&bad, b"\0asm garbage").unwrap();
    let mut s = spec("bad", "header_router", &[], OnError::FailClosed);
    s.path = bad;
    let e = host.load(&s).unwrap_err().to_string();
    assert!(
        e.contains("plugin `bad`") && e.contains("not a valid policy component"),
        "{e}"
    );
    s.path = dir.join("missing.wasm");
    let e = host.load(&s).unwrap_err().to_string();
    assert!(e.contains("cannot read"), "{e}");
}

#[tokio::test]
async fn deadline_holds_after_the_ticker_went_idle() {
    let host = PolicyHost::new().unwrap();
    let p = host
        .load(&spec(
            "loop",
            "hostile",
            &[("mode", "loop")],
            OnError::FailClosed,
        ))
        .unwrap();
    // Longer than TICKER_IDLE_AFTER: the ticker is asleep when the next call starts.
    tokio::time::sleep(TICKER_IDLE_AFTER + Duration::from_millis(300)).await;
    let t = Instant::now();
    let f = p.on_request(&request(&[]), &live(0)).await.unwrap_err();
    assert_eq!(f.kind, FailureKind::Deadline);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "deadline enforced late: {:?}",
        t.elapsed()
    );
}

/// Found by the fuzz smoke run: a drop reason with a multi-byte character across the 256-byte
/// cut panicked the host (`String::truncate` off a character boundary).
#[test]
fn an_event_drop_reason_is_cut_on_a_character_boundary() {
    let why = format!("a{}", "é".repeat(200));
    let Ok(EventDecision::Drop(cut)) = convert_event_decision(wit::EventDecision::Drop(why)) else {
        panic!("a drop is a valid decision");
    };
    assert!(cut.len() <= MAX_DECISION_STRING && cut.len() >= MAX_DECISION_STRING - 1);
    assert!(cut.ends_with('é'));
}

/// Found by the fuzz smoke run: an invalid header name of kilobytes went whole into the error
/// text (log line and client body); it is cut to 64 characters.
#[test]
fn an_invalid_header_name_is_cut_in_the_error() {
    let d = wit::Decision::Proceed(wit::Route {
        function: None,
        invocation: None,
        priority: None,
        tenant: None,
        set_headers: vec![("bad name ".repeat(300), "v".into())],
        remove_headers: Vec::new(),
        path: None,
    });
    let err = convert_decision(d).expect_err("not a header name");
    assert!(err.len() < 200, "{err}");
}

/// A plugin that reaches for the file system, the environment or the network gets nothing:
/// no preopened directory, no variables, no socket grants.
#[tokio::test]
async fn a_plugin_cannot_read_files_env_or_network() {
    let host = PolicyHost::new().unwrap();
    let p = host
        .load(&spec(
            "snoop",
            "hostile",
            &[("mode", "snoop"), ("file", "/etc/hostname")],
            OnError::FailClosed,
        ))
        .unwrap();
    let Decision::Proceed(change) = p.on_request(&request(&[]), &live(0)).await.unwrap() else {
        panic!("snoop passes");
    };
    let got: Vec<(String, String)> = change
        .set_headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    eprintln!("FIGURES snoop: {got:?}");
    assert_eq!(got.len(), 4, "{got:?}");
    for (name, value) in &got {
        assert!(value.starts_with("denied"), "{name}: {value}");
    }
}

/// Time to contain each hostile mode, over repeated calls, and the process's memory around
/// them; the figures go to RELIABILITY.md (`--nocapture`).
#[tokio::test]
async fn hostile_modes_are_contained_quickly_with_bounded_memory() {
    const CALLS: usize = 10;
    let host = PolicyHost::new().unwrap();
    let rss = || {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib = |f: &str| -> u64 {
            s.lines()
                .find_map(|l| l.strip_prefix(f))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (kib("VmRSS:"), kib("VmHWM:"))
    };
    let (rss_before, _) = rss();
    let mut figures = Vec::new();
    for (mode, timeout_ms) in [
        ("loop", 20),
        ("membomb", 500),
        ("recursion", 20),
        ("trap", 20),
        ("oversized", 20),
    ] {
        let p = host
            .load(&PluginSpec {
                timeout: Duration::from_millis(timeout_ms),
                ..spec(
                    &format!("figures-{mode}"),
                    "hostile",
                    &[("mode", mode), ("size", "65536")],
                    OnError::FailClosed,
                )
            })
            .unwrap();
        let mut took: Vec<Duration> = Vec::new();
        for _ in 0..CALLS {
            let t = Instant::now();
            p.on_request(&request(&[]), &live(0)).await.unwrap_err();
            took.push(t.elapsed());
        }
        took.sort();
        let max = took[CALLS - 1];
        assert!(max < Duration::from_secs(2), "{mode}: {max:?}");
        figures.push(format!(
            "{mode} (timeout {timeout_ms} ms): median {:.1} ms, max {:.1} ms",
            took[CALLS / 2].as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        ));
    }
    let (rss_after, peak) = rss();
    eprintln!(
        "FIGURES hostile plugins, {CALLS} calls each: {}; test process RSS {} MiB before, {} MiB after, peak {} MiB (16 MiB cap per instance)",
        figures.join("; "),
        rss_before / 1024,
        rss_after / 1024,
        peak / 1024
    );
}

/// A plugin cannot set framing or hop-by-hop headers on the request to the function or on its
/// rejection: `content-length: 0` on a request with a body would desynchronise the upstream.
#[test]
fn framing_and_hop_by_hop_headers_are_refused_in_decisions() {
    for name in [
        "content-length",
        "Transfer-Encoding",
        "connection",
        "upgrade",
        "te",
    ] {
        let proceed = wit::Decision::Proceed(wit::Route {
            function: None,
            invocation: None,
            priority: None,
            tenant: None,
            set_headers: vec![(name.into(), "0".into())],
            remove_headers: Vec::new(),
            path: None,
        });
        let err = convert_decision(proceed).expect_err(name);
        assert!(err.contains("framing"), "{err}");
        let reject = wit::Decision::Reject(wit::Rejection {
            status: 403,
            headers: vec![(name.into(), "0".into())],
            body: "no".into(),
        });
        assert!(convert_decision(reject).is_err(), "{name}");
    }
}
