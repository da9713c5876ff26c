//! A real Prometheus (Debian's 2.42) scrapes fngate's admin listener over TLS with the admin
//! token, and its query API returns the invocation counters the requests produced.

use crate::harness::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Prometheus server on a free loopback port with its TSDB in a temp dir, scraping one
/// gateway every second; killed (by its PID, it is our child) on drop. `FNGATE_PROMETHEUS`
/// picks another binary than the `prometheus` on PATH. A system Prometheus on :9090 is neither
/// used nor disturbed.
struct Prometheus {
    child: Child,
    dir: TempDir,
    addr: SocketAddr,
}

impl Prometheus {
    fn scraping(gw: &Gateway) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // JSON strings are YAML double-quoted strings: paths and the token need no escaping.
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: fngate\n    scheme: https\n    metrics_path: /metrics\n\
             \x20   tls_config:\n      ca_file: {ca}\n\
             \x20   authorization:\n      type: Bearer\n      credentials: {token}\n\
             \x20   static_configs:\n      - targets: [{target}]\n",
            ca = quote(gw.ca.to_str().unwrap()),
            token = quote(ADMIN_TOKEN),
            target = quote(&gw.admin.to_string()),
        );
        let config_path = dir.0.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let bin = std::env::var("FNGATE_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            // A hidden flag: how often new targets reach the scrape loops (5 s by default). The
            // discovery manager still sends its first target set only after 5 s, so the first
            // scrape lands about 5 s after the start whatever the scrape interval.
            .arg("--scrape.discovery-reload-interval=100ms")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus must be installed (scripts/test.sh installs it)");
        let mut p = Prometheus { child, dir, addr };
        p.wait_ready();
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// Until `GET /-/ready` answers 200 (the TSDB is open and scraping has begun).
    fn wait_ready(&mut self) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = std::net::TcpStream::connect(self.addr).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET /-/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
                let mut head = [0u8; 12];
                s.read_exact(&mut head)?;
                Ok(head.ends_with(b" 200"))
            });
            if matches!(ready, Ok(true)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited early ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An instant query; returns the result vector's `(labels, value)` pairs.
    async fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let r = plain_request(self.addr, Method::GET, &path, Bytes::new()).await;
        assert_eq!(r.status, StatusCode::OK, "{promql}: {}", r.text());
        let v = r.json();
        assert_eq!(v["status"], "success", "{promql}: {v}");
        assert_eq!(v["data"]["resultType"], "vector", "{promql}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// Polls `promql` (one series) until it equals `want`; fails at once if it goes past it.
    async fn wait_for(&self, promql: &str, want: f64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let result = self.query(promql).await;
            assert!(result.len() <= 1, "{promql}: several series {result:?}");
            if let Some((labels, value)) = result.into_iter().next() {
                assert!(value <= want, "{promql} = {value}, more than {want}");
                if value == want {
                    return labels;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{promql} did not reach {want} in time; targets: {}\nprometheus log:\n{}",
                plain_request(self.addr, Method::GET, "/api/v1/targets", Bytes::new())
                    .await
                    .text(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log ({}) ---\n{}",
                self.dir.0.display(),
                self.log()
            );
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for a query parameter).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::test]
async fn prometheus_scrapes_the_invocation_counters() {
    let a = Backend::start("a");
    let gw = Gateway::start(&one_function(&[a.url()], "", ""));
    let mut c = gw.tls().connect(gw.public, false).await;
    let mut send = async |path: &str, want: StatusCode| {
        let r = c.send(Method::GET, path, &[], Bytes::new()).await;
        assert_eq!(r.status, want, "{path}: {}", r.text());
    };
    for _ in 0..5 {
        send("/echo/ok", StatusCode::OK).await;
    }
    for _ in 0..2 {
        send("/echo/teapot?status=418", StatusCode::IM_A_TEAPOT).await;
    }

    let prom = Prometheus::scraping(&gw);
    let ok = r#"fngate_invocations_total{job="fngate",function="demo/echo",status="2xx"}"#;
    let labels = prom.wait_for(ok, 5.0).await;
    assert_eq!(labels["instance"], gw.admin.to_string(), "{labels}");
    prom.wait_for(
        r#"fngate_invocations_total{job="fngate",function="demo/echo",status="4xx"}"#,
        2.0,
    )
    .await;
    // Pre-registered classes that saw no request are scraped as zero, not left out.
    prom.wait_for(
        r#"fngate_invocations_total{job="fngate",function="demo/echo",status="5xx"}"#,
        0.0,
    )
    .await;
    let up = prom.query(r#"up{job="fngate"}"#).await;
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].1, 1.0, "scrape target down: {up:?}");

    // Later requests show up in later scrapes: the counter is live, not a one-off.
    for _ in 0..3 {
        send("/echo/ok", StatusCode::OK).await;
    }
    prom.wait_for(ok, 8.0).await;
    let total = prom
        .query(r#"sum(fngate_invocations_total{job="fngate",function="demo/echo"})"#)
        .await;
    assert_eq!(total.len(), 1, "{total:?}");
    assert_eq!(total[0].1, 10.0, "{total:?}");
}
