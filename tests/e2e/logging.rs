//! Log sinks and log tails against the real binary: a size-rotated file sink, per-service sinks,
//! `x-fngate-log-type: tail` on process and static backends, and unwritable sink paths refused.

use crate::harness::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    read_lines(path)
        .iter()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", path.display()))
        })
        .collect()
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

fn decode_base64(text: &str) -> Vec<u8> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = T.iter().position(|&t| t == c).expect("base64 alphabet") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// An HTTP trigger at `/{name}` for `function`.
fn trigger(name: &str, function: &str) -> String {
    format!(
        "\n[[trigger]]\nname = \"{name}\"\nkind = \"http\"\nfunction = \"{function}\"\npath = \"/{name}\"\n"
    )
}

#[tokio::test]
async fn file_sink_rotates_and_keeps_its_files() {
    let backend = Backend::start("b1");
    let config = format!(
        "{}\n[telemetry]\nlog = {{ stdout = false, file = {{ path = \"logs/fngate.log\", max_size = \"2KiB\", keep = 2 }} }}\n",
        one_function(&[backend.url()], "", "")
    );
    let gw = Gateway::start(&config);
    let log = gw.dir.0.join("logs/fngate.log");
    let mut ids = Vec::new();
    for i in 0..40 {
        let r = gw.get(&format!("/echo/{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
        ids.push(r.header("x-fngate-request-id").unwrap().to_string());
    }
    let last = ids.last().unwrap().clone();
    eventually(
        "the last request's line in the file",
        Duration::from_secs(5),
        || {
            let lines = read_lines(&log);
            let last = last.clone();
            async move { lines.iter().any(|l| l.contains(&last)) }
        },
    )
    .await;
    // 40 lines of ~500 bytes are several 2 KiB files: rotation happened, and only `keep` stayed.
    assert!(rotated(&log, 1).exists() && rotated(&log, 2).exists());
    assert!(!rotated(&log, 3).exists(), "keep = 2");
    let mut seen = 0;
    for p in [log.clone(), rotated(&log, 1), rotated(&log, 2)] {
        let size = std::fs::metadata(&p).unwrap().len();
        assert!(size <= 2048, "{} is {size} bytes", p.display());
        for l in json_lines(&p) {
            assert_eq!(l["kind"], "invocation");
            assert_eq!(l["function"], "demo/echo");
            seen += 1;
        }
    }
    assert!(seen < 40, "older files were deleted");
    // stdout = false: nothing on stdout.
    assert!(gw.log_lines().is_empty());
    // Nothing dropped.
    let metrics = gw.admin(Method::GET, "/metrics").await.text();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("fngate_log_lines_dropped_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_service_sink_gets_only_its_service_lines() {
    let backend = Backend::start("b1");
    let url = backend.url();
    let config = format!(
        r#"
[[service]]
name = "alpha"
log = {{ file = "logs/alpha.log", inherit = false }}

[[service.function]]
name = "f"
backend = {{ kind = "static", endpoints = ["{url}"] }}

[[service]]
name = "beta"
log = {{ file = "logs/beta.log" }}

[[service.function]]
name = "f"
backend = {{ kind = "static", endpoints = ["{url}"] }}

[[service]]
name = "gamma"

[[service.function]]
name = "f"
backend = {{ kind = "static", endpoints = ["{url}"] }}

[telemetry]
log = {{ stdout = true, file = "logs/all.log" }}
{}"#,
        ["alpha", "beta", "gamma"]
            .map(|s| trigger(s, &format!("{s}/f")))
            .concat()
    );
    let gw = Gateway::start(&config);
    for svc in ["alpha", "beta", "gamma"] {
        for _ in 0..3 {
            let r = gw.get(&format!("/{svc}/x")).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
    }
    let logs = gw.dir.0.join("logs");
    let count = |file: &str, function: &str| {
        json_lines(&logs.join(file))
            .iter()
            .filter(|l| l["function"] == function)
            .count()
    };
    eventually("lines in every sink", Duration::from_secs(5), || {
        let done = count("alpha.log", "alpha/f") == 3
            && count("beta.log", "beta/f") == 3
            && count("all.log", "gamma/f") == 3
            && count("all.log", "beta/f") == 3
            && gw
                .log_lines()
                .iter()
                .filter(|l| l["function"] == "gamma/f")
                .count()
                == 3;
        async move { done }
    })
    .await;
    // alpha opted out of the global sinks; beta inherits them; gamma has only them.
    assert_eq!(json_lines(&logs.join("alpha.log")).len(), 3);
    assert_eq!(json_lines(&logs.join("beta.log")).len(), 3);
    assert_eq!(count("all.log", "alpha/f"), 0);
    assert!(!gw.log_lines().iter().any(|l| l["function"] == "alpha/f"));
    assert_eq!(
        gw.log_lines()
            .iter()
            .filter(|l| l["function"] == "beta/f")
            .count(),
        3
    );
}

#[tokio::test]
async fn log_tail_returns_the_instance_output_of_the_request() {
    let backend = Backend::start("static");
    let config = format!(
        r#"
[[service]]
name = "demo"
log = {{ file = "logs/demo.log" }}

[[service.function]]
name = "p"
max_queue_wait = "20s"
backend = {{ kind = "process", command = ["{}"], startup_timeout = "10s", stop_grace = "2s", readiness = {{ interval = "200ms" }} }}

[[service.function]]
name = "s"
backend = {{ kind = "static", endpoints = ["{}"] }}
{}{}"#,
        backend_bin().display(),
        backend.url(),
        trigger("p", "demo/p"),
        trigger("s", "demo/s"),
    );
    let gw = Gateway::start(&config);
    let tail = [("x-fngate-log-type", "tail")];
    // The first request cold-starts the instance.
    let r = gw
        .request(Method::GET, "/p/x?log=first-marker", &tail, Bytes::new())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let text = String::from_utf8(decode_base64(r.header("x-fngate-log-result").unwrap())).unwrap();
    assert!(text.contains("first-marker\n"), "{text:?}");
    assert!(text.contains("err: first-marker\n"), "{text:?}");

    // Warm: exactly this request's lines, not the previous request's.
    let r = gw
        .request(Method::GET, "/p/x?log=second-marker", &tail, Bytes::new())
        .await;
    let text = String::from_utf8(decode_base64(r.header("x-fngate-log-result").unwrap())).unwrap();
    assert!(text.contains("second-marker\n") && text.contains("err: second-marker\n"));
    assert!(!text.contains("first-marker"), "{text:?}");

    // Without the header: no result header.
    let r = gw.get("/p/x?log=third").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-fngate-log-result"), None);

    // Static endpoints have no captured output: an empty value.
    let r = gw.request(Method::GET, "/s/x", &tail, Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-fngate-log-result"), Some(""));

    // A value other than tail / none is a clear 400.
    let r = gw
        .request(
            Method::GET,
            "/p/x",
            &[("x-fngate-log-type", "everything")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // The instance's output also went to the service's file sink, tagged.
    let file = gw.dir.0.join("logs/demo.log");
    eventually(
        "instance output in the service sink",
        Duration::from_secs(5),
        || {
            let found = json_lines(&file)
                .iter()
                .any(|l| l["kind"] == "instance_log" && l["line"] == "second-marker");
            async move { found }
        },
    )
    .await;
}

#[tokio::test]
async fn unwritable_sink_paths_are_config_problems() {
    let dir = TempDir::new("log-check");
    std::fs::write(dir.0.join("not-a-dir"), "").unwrap();
    let cfg = dir.0.join("fngate.toml");
    std::fs::write(
        &cfg,
        r#"
[[service]]
name = "demo"
log = { file = "not-a-dir/demo.log" }
[[service.function]]
name = "echo"
backend = { kind = "static", endpoints = ["http://127.0.0.1:9001"] }

[telemetry]
log = { file = { path = "not-a-dir/x/fngate.log", max_size = "1MiB" }, otlp = true }
"#,
    )
    .unwrap();
    let out = std::process::Command::new(fngate_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("telemetry.log.otlp: OTLP logs need an exporter: set telemetry.otlp"),
        "{err}"
    );
    // The file check runs once the rest is valid.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(", otlp = true", ""),
    )
    .unwrap();
    let out = std::process::Command::new(fngate_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("telemetry.log.file:") && err.contains("not-a-dir is not a directory"),
        "{err}"
    );
    assert!(err.contains("service `demo` log.file:"), "{err}");
}
