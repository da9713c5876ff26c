//! OTLP traces against a real collector: rotel (PyPI `rotel`, a Rust OpenTelemetry collector)
//! receives fngate's spans over OTLP HTTP/protobuf and prints them; the test reads the span tree,
//! its parent links and attributes from that output, and checks the backend got `traceparent`.

use crate::harness::*;
use bytes::Bytes;
use http::Method;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Rotel {
    child: Child,
    out: std::path::PathBuf,
    pub http: u16,
    pub grpc: u16,
    _dir: TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

impl Rotel {
    /// A collector that prints the traces, metrics and logs it receives (OTLP gRPC and HTTP).
    pub fn start() -> Rotel {
        // The wheel ships the collector binary inside the package.
        let bin = std::env::var("FNGATE_ROTEL").unwrap_or_else(|_| {
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
                ])
                .output()
                .expect("python3");
            assert!(
                out.status.success(),
                "the rotel collector is needed (pip install rotel; scripts/test.sh installs it): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        });
        let dir = TempDir::new("rotel");
        let out = dir.0.join("rotel.out");
        let (grpc, http) = (free_port(), free_port());
        let child = Command::new(bin)
            .args([
                "start",
                "--otlp-grpc-endpoint",
                &format!("127.0.0.1:{grpc}"),
                "--otlp-http-endpoint",
                &format!("127.0.0.1:{http}"),
                "--exporter",
                "blackhole",
                "--debug-log",
                "traces",
                "--debug-log",
                "metrics",
                "--debug-log",
                "logs",
                "--debug-log-verbosity",
                "detailed",
            ])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rotel-agent");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", http)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err()
        {
            assert!(Instant::now() < deadline, "rotel did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Rotel {
            child,
            out,
            http,
            grpc,
            _dir: dir,
        }
    }

    /// Everything printed so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The spans printed so far: (trace id, parent id, id, name, attribute lines).
    pub fn spans(&self) -> Vec<Span> {
        let text = self.text();
        let mut spans: Vec<Span> = Vec::new();
        for line in text.lines() {
            let l = line.trim();
            let field = |p: &str| l.strip_prefix(p).map(|v| v.trim().to_owned());
            if l.starts_with("Span #") {
                spans.push(Span::default());
            } else if let Some(cur) = spans.last_mut() {
                if let Some(v) = field("Trace ID       :") {
                    cur.trace = v;
                } else if let Some(v) = field("Parent ID      :") {
                    cur.parent = v;
                } else if let Some(v) = field("ID             :") {
                    cur.id = v;
                } else if let Some(v) = field("Name           :") {
                    cur.name = v;
                } else if let Some(v) = l.strip_prefix("-> ") {
                    cur.attrs.push(v.to_owned());
                }
            }
        }
        spans
    }
}

#[derive(Debug, Default, Clone)]
pub struct Span {
    pub trace: String,
    pub parent: String,
    pub id: String,
    pub name: String,
    pub attrs: Vec<String>,
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn invocation_spans_reach_a_real_collector_with_the_callers_trace() {
    let rotel = tokio::task::spawn_blocking(Rotel::start).await.unwrap();
    let be = Backend::start("a");
    let gw = Gateway::start(&format!(
        "[telemetry]\notlp = {{ endpoint = \"http://127.0.0.1:{}\" }}\ntraces = {{ sample_ratio = 1.0 }}\n{}",
        rotel.http,
        one_function(&[be.url()], "", "")
    ));
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let tp = format!("00-{caller_trace}-{caller_span}-01");
    let r = gw
        .request(
            Method::GET,
            "/echo/traced",
            &[("traceparent", &tp)],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The backend got this invocation's span as its parent, in the caller's trace.
    let sent = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        sent.starts_with(&format!("00-{caller_trace}-")) && sent.ends_with("-01"),
        "{sent}"
    );
    let invocation_id = sent.split('-').nth(2).unwrap().to_owned();
    assert_ne!(invocation_id, caller_span);

    // A request without traceparent starts its own trace (ratio 1.0: sampled).
    let r2 = gw.get("/echo/untraced").await;
    assert_eq!(r2.status, 200);
    let own = r2.json()["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(own.len() == 55 && !own.contains(caller_trace), "{own}");

    // Each invocation's log line names its trace and span, so a log leads to its trace.
    let lines = gw.settled_log_lines().await;
    let line = |path: &str| {
        lines
            .iter()
            .find(|l| l["kind"] == "invocation" && l["path"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("no line for {path}: {lines:#?}"))
    };
    let traced = line("/echo/traced");
    assert_eq!(traced["trace_id"], caller_trace, "{traced}");
    assert_eq!(traced["span_id"], invocation_id.as_str(), "{traced}");
    let untraced = line("/echo/untraced");
    assert_eq!(
        untraced["trace_id"],
        own.split('-').nth(1).unwrap(),
        "{untraced}"
    );

    // The span tree arrives at the collector (the batch exporter flushes within seconds).
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = rotel.spans();
        let done = spans
            .iter()
            .any(|s| s.name == "invocation" && s.trace == caller_trace)
            && spans
                .iter()
                .any(|s| s.name == "invocation" && s.trace != caller_trace);
        if done {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans not received: {spans:#?}\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let root = spans
        .iter()
        .find(|s| s.name == "invocation" && s.trace == caller_trace)
        .unwrap();
    assert_eq!(root.parent, caller_span, "the caller's span is the parent");
    assert_eq!(root.id, invocation_id);
    for want in [
        "fngate.function: Str(demo/echo)",
        "fngate.trigger: Str(echo-http)",
        "http.response.status_code: Int(200)",
        "url.path: Str(/echo/traced)",
    ] {
        assert!(root.attrs.iter().any(|a| a == want), "{want} in {root:#?}");
    }
    assert!(
        root.attrs
            .iter()
            .any(|a| a.starts_with("fngate.request_id: Str(")),
        "{root:#?}"
    );
    let children: Vec<&str> = spans
        .iter()
        .filter(|s| s.trace == caller_trace && s.parent == root.id)
        .map(|s| s.name.as_str())
        .collect();
    for want in ["trigger match", "upstream call"] {
        assert!(children.contains(&want), "{want} in {children:?}");
    }
}

/// The plugin decision and the wait for a slot are spans of their own: a request routed by a
/// policy plugin that queues behind a slow one on a one-slot function.
#[tokio::test]
async fn plugin_decision_and_queue_wait_are_child_spans() {
    let rotel = tokio::task::spawn_blocking(Rotel::start).await.unwrap();
    let be = Backend::start("a");
    let gw = Gateway::start(&format!(
        "[telemetry]\notlp = {{ endpoint = \"http://127.0.0.1:{}\" }}\ntraces = {{ sample_ratio = 1.0 }}\n\n[[plugin]]\nname = \"router\"\npath = \"{}\"\nconfig = {{ routes = \"b=demo/echo\" }}\n{}",
        rotel.http,
        crate::plugins::wasm("header_router").display(),
        one_function(
            &[be.url()],
            "instance_concurrency = 1\nmax_queued = 10\nmax_queue_wait = \"10s\"",
            "plugins = [\"router\"]"
        )
    ));
    let slow = gw.get("/echo/slow?sleep_ms=400");
    let queued = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        gw.get("/echo/queued").await
    };
    let (slow, queued) = tokio::join!(slow, queued);
    assert!(
        slow.status == 200 && queued.status == 200,
        "{} {}",
        slow.text(),
        queued.text()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let (spans, root) = loop {
        let spans = rotel.spans();
        let root = spans
            .iter()
            .find(|s| {
                s.name == "invocation" && s.attrs.iter().any(|a| a == "url.path: Str(/echo/queued)")
            })
            .cloned();
        let children = |r: &Span| spans.iter().filter(|s| s.parent == r.id).count();
        if let Some(r) = root
            && children(&r) >= 4
        {
            break (spans, r);
        }
        assert!(
            Instant::now() < deadline,
            "spans not received: {spans:#?}\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace == root.trace && s.parent == root.id)
        .collect();
    let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "trigger match",
        "plugin decision",
        "queue wait",
        "upstream call",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
}

/// Credentials never reach a log line, a span or the gateway's own output: trigger bearer
/// tokens (right and wrong), webhook HMAC signatures (good and forged) and bearer tokens, a
/// wrong admin token, and the Authorization, Cookie, signature headers and query token a
/// client sends to an anonymous trigger; with every request traced and logs at debug level.
#[tokio::test]
async fn credentials_never_reach_logs_or_traces() {
    let rotel = tokio::task::spawn_blocking(Rotel::start).await.unwrap();
    let be = Backend::start("a");
    let (token, key, event_token) = (
        "tok-SECRET-1-0123456789",
        "hmac-SECRET-2-0123456789",
        "evt-SECRET-3-0123456789",
    );
    let cfg = format!(
        r#"
[telemetry]
log = {{ stdout = true, file = "fngate.log" }}
otlp = {{ endpoint = "http://127.0.0.1:{}" }}
traces = {{ sample_ratio = 1.0 }}

[[service]]
name = "demo"
[[service.function]]
name = "echo"
backend = {{ kind = "static", endpoints = ["{}"] }}

[[trigger]]
name = "private"
kind = "http"
function = "demo/echo"
path = "/private"
auth = {{ bearer = {{ env = "PRIVATE_TOKEN" }} }}

[[trigger]]
name = "open"
kind = "http"
function = "demo/echo"
path = "/open"

[[event_source]]
name = "signed"
kind = "webhook"
auth = {{ hmac = {{ env = "EVENT_KEY" }}, window = "1m" }}

[[event_source]]
name = "tokened"
kind = "webhook"
auth = {{ bearer = {{ env = "EVENT_TOKEN" }} }}

[[trigger]]
name = "signed-all"
kind = "oss"
function = "demo/echo"
source = "signed"
"#,
        rotel.http,
        be.url()
    );
    let gw = Gateway::start_in(
        TempDir::new("redact"),
        &cfg,
        &[
            ("PRIVATE_TOKEN", token),
            ("EVENT_KEY", key),
            ("EVENT_TOKEN", event_token),
            ("FNGATE_LOG", "debug"),
        ],
    );
    let mut secrets: Vec<String> = vec![token.into(), key.into(), event_token.into()];
    let bearer = |t: &str| format!("Bearer {t}");

    let r = gw
        .request(
            Method::GET,
            "/private/x",
            &[("authorization", &bearer(token))],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let wrong = "wrong-SECRET-4";
    secrets.push(wrong.into());
    let r = gw
        .request(
            Method::GET,
            "/private/x",
            &[("authorization", &bearer(wrong))],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 401);
    let (fwd, cookie, sig, query) = (
        "fwd-SECRET-5",
        "session=SECRET-6",
        "sha256=SECRET-7",
        "SECRET-8",
    );
    secrets.extend([fwd, cookie, sig, query].map(String::from));
    let r = gw
        .request(
            Method::POST,
            &format!("/open/x?token={query}"),
            &[
                ("authorization", &bearer(fwd)),
                ("cookie", cookie),
                ("x-fngate-signature", sig),
                ("x-hub-signature-256", sig),
            ],
            Bytes::from_static(b"{}"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let body = r#"{"Records":[{"eventSource":"ceph:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k.txt","size":1}}}]}"#;
    let good = fngate::events::sign_hmac(key.as_bytes(), &now, body.as_bytes());
    let forged = fngate::events::sign_hmac(b"not-the-key", &now, body.as_bytes());
    secrets.extend([good.clone(), forged.clone()]);
    for (sig, want) in [(&good, 200), (&forged, 401)] {
        let r = gw
            .request(
                Method::POST,
                "/events/signed",
                &[("x-fngate-timestamp", &now), ("x-fngate-signature", sig)],
                Bytes::from(body),
            )
            .await;
        assert_eq!(r.status, want, "{}", r.text());
    }
    let wrong_event = "evt-wrong-SECRET-9";
    secrets.push(wrong_event.into());
    let r = gw
        .request(
            Method::POST,
            "/events/tokened",
            &[("authorization", &bearer(wrong_event))],
            Bytes::from(body),
        )
        .await;
    assert_eq!(r.status, 401);
    let admin_wrong = "adm-SECRET-10";
    secrets.push(admin_wrong.into());
    let r = plain_admin(&gw, &bearer(admin_wrong)).await;
    assert_eq!(r, 401);

    // Every HTTP invocation's span has arrived before the outputs are read.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rotel
        .spans()
        .iter()
        .filter(|s| s.name == "invocation")
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "spans not received");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outputs = [
        (
            "stdout",
            std::fs::read_to_string(gw.dir.0.join("stdout.log")).unwrap(),
        ),
        ("stderr", gw.stderr()),
        (
            "log file",
            std::fs::read_to_string(gw.dir.0.join("fngate.log")).unwrap(),
        ),
        ("spans", std::fs::read_to_string(&rotel.out).unwrap()),
    ];
    for (what, text) in &outputs {
        assert!(!text.is_empty(), "{what} is empty");
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{what} holds `{s}`:\n{text}");
        }
        assert!(!text.contains("SECRET"), "{what} holds a secret:\n{text}");
    }
    // The lines are there: the requests were logged, only without their credentials.
    assert!(outputs[0].1.contains("/private/x") && outputs[3].1.contains("/open/x"));
}

/// `GET /admin/functions` with the given Authorization; the status.
async fn plain_admin(gw: &Gateway, authorization: &str) -> u16 {
    let mut c = gw.tls().connect(gw.admin, false).await;
    c.send(
        Method::GET,
        "/admin/functions",
        &[("authorization", authorization)],
        Bytes::new(),
    )
    .await
    .status
    .as_u16()
}
