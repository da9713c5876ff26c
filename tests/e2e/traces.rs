//! OTLP traces against a real collector: rotel (PyPI `rotel`, a Rust OpenTelemetry collector)
//! receives fngate's spans over OTLP HTTP/protobuf and prints them; the test reads the span tree,
//! its parent links and attributes from that output, and checks the backend got `traceparent`.

use crate::harness::*;
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
