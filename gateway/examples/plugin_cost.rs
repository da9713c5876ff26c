//! Micro-benchmark of one policy plugin call through the host: reused instances (what fngate
//! does) against a fresh instance per call. Run by bench/plugins.sh:
//! `cargo run --release -p fngate --example plugin_cost -- plugins/target/wasm32-wasip2/release/header_router.wasm`

use fngate::config::{OnError, PluginSpec};
use fngate::policy::{FunctionLoad, LiveState, PolicyHost, RequestView, WitRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Idle;
impl LiveState for Idle {
    fn function_load(&self, _: &str) -> Option<FunctionLoad> {
        Some(FunctionLoad::default())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "plugins/target/wasm32-wasip2/release/header_router.wasm".into());
    let calls: usize = std::env::var("CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let host = PolicyHost::new().expect("engine");
    let spec = PluginSpec {
        name: "router".into(),
        path: path.into(),
        config: [
            ("routes".to_string(), "b=demo/echo-b".to_string()),
            ("canary_percent".to_string(), "10".to_string()),
            (
                "canary_function".to_string(),
                "demo/echo-canary".to_string(),
            ),
        ]
        .into_iter()
        .collect(),
        timeout: Duration::from_millis(5),
        memory: 16 << 20,
        on_error: OnError::FailClosed,
        body_prefix: 0,
        wall_clock: false,
    };
    let plugin = host.load(&spec).expect("load plugin");
    // A realistic request: a dozen headers as a browser or SDK sends them.
    let headers: Vec<(String, String)> = [
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        ),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("content-type", "application/json"),
        ("content-length", "512"),
        ("authorization", "Bearer key-abc"),
        ("x-variant", "a"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-forwarded-for", "10.0.0.1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let live: Arc<dyn LiveState> = Arc::new(Idle);
    let mut report = Vec::new();
    for mode in ["reuse", "fresh", "reuse", "fresh", "reuse", "fresh"] {
        let mut samples = Vec::with_capacity(calls);
        for i in 0..calls {
            let req = WitRequest::new(RequestView {
                request_id: format!("{i:016x}"),
                method: "POST".into(),
                scheme: "https".into(),
                authority: "api.example.com".into(),
                path: "/echo/v1/chat".into(),
                query: None,
                headers: headers.clone(),
                client_addr: "127.0.0.1".into(),
                trigger: "echo-http".into(),
                function: "demo/echo".into(),
                body_prefix: None,
                body_length: Some(512),
            });
            let t = Instant::now();
            let d = if mode == "reuse" {
                plugin.on_request(&req, &live).await
            } else {
                plugin.on_request_fresh(&req, &live).await
            };
            samples.push(t.elapsed());
            d.expect("decision");
        }
        samples.sort();
        let q = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6;
        println!(
            "{mode:>5}: calls={calls} p50={:.2}us p90={:.2}us p99={:.2}us",
            q(0.5),
            q(0.9),
            q(0.99)
        );
        report.push((mode, q(0.5)));
    }
    let med = |m: &str| {
        let mut v: Vec<f64> = report
            .iter()
            .filter(|(k, _)| *k == m)
            .map(|(_, x)| *x)
            .collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!(
        "summary: reuse_p50_us={:.2} fresh_p50_us={:.2} ratio={:.1}x",
        med("reuse"),
        med("fresh"),
        med("fresh") / med("reuse")
    );
}
