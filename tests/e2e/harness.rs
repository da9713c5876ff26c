//! Test harness: starts the real `fngate` binary and real `demo-backend` processes on loopback,
//! and talks to them with real TLS clients (rustls trusting the gateway's generated CA).

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub fn fngate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fngate"))
}

pub fn backend_bin() -> PathBuf {
    let p = fngate_bin().with_file_name("demo-backend");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        p.display()
    );
    p
}

/// A fresh directory under the target dir, removed when the test passes.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = fngate_bin().parent().unwrap().join("e2e-tmp").join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        TempDir(base)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A running `demo-backend`; killed (by its PID, it is our child) on drop.
pub struct Backend {
    pub child: Child,
    pub addr: SocketAddr,
    pub id: String,
}

impl Backend {
    pub fn start(id: &str) -> Backend {
        Self::start_with(id, &[])
    }

    pub fn start_with(id: &str, extra: &[&str]) -> Backend {
        let mut child = Command::new(backend_bin())
            .args(["--listen", "127.0.0.1:0", "--id", id])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn demo-backend");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected backend output {line:?}"))
            .parse()
            .unwrap();
        Backend {
            child,
            addr,
            id: id.to_string(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /stats` straight from the backend (plain HTTP, no gateway).
    pub async fn stats(&self) -> serde_json::Value {
        let r = plain_request(self.addr, Method::GET, "/stats", Bytes::new()).await;
        serde_json::from_slice(&r.body).unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running gateway with its own data dir; killed on drop.
pub struct Gateway {
    pub child: Child,
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub plaintext: Option<SocketAddr>,
    pub ca: PathBuf,
}

impl Gateway {
    /// Starts fngate with `config` (TOML). Unless the text sets them, the harness adds loopback
    /// listeners on port 0, the data dir and the admin token.
    pub fn start(config: &str) -> Gateway {
        Self::start_in(TempDir::new("gw"), config, &[])
    }

    pub fn start_in(dir: TempDir, config: &str, env: &[(&str, &str)]) -> Gateway {
        let config_path = dir.0.join("fngate.toml");
        let full = if config.contains("[server]") {
            config.to_string()
        } else {
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                 admin_token = {{ env = \"FNGATE_TEST_ADMIN_TOKEN\" }}\ndata_dir = \"data\"\n\n{config}"
            )
        };
        std::fs::write(&config_path, full).unwrap();
        let child = Command::new(fngate_bin())
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("FNGATE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("FNGATE_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(dir.0.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(dir.0.join("stderr.log")).unwrap())
            .spawn()
            .expect("spawn fngate");
        let mut gw = Gateway {
            child,
            config_path,
            public: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            plaintext: None,
            ca: dir.0.join("data/tls/ca.pem"),
            dir,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&mut self) {
        let listeners = self.dir.0.join("data/listeners.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&listeners)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                self.public = v["public"].as_str().unwrap().parse().unwrap();
                self.admin = v["admin"].as_str().unwrap().parse().unwrap();
                self.plaintext = v["plaintext"].as_str().map(|s| s.parse().unwrap());
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("fngate exited early ({status}):\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "fngate not ready in time:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default()
    }

    /// The invocation log lines written so far.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.0.join("stdout.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The log lines once the log has settled: sinks write in rounds (up to ~20 ms after a
    /// line), so a test that reads right after its last request waits until no new line has
    /// come for 150 ms (at most 5 s).
    pub async fn settled_log_lines(&self) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = self.log_lines();
        loop {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let now = self.log_lines();
            if now.len() == last.len() || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// Waits until a log line with this request id appears.
    pub async fn log_line(&self, request_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(l) = self
                .log_lines()
                .into_iter()
                .find(|l| l["request_id"] == request_id)
            {
                return l;
            }
            assert!(Instant::now() < deadline, "no log line for {request_id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn tls(&self) -> Tls {
        Tls::trusting(&self.ca)
    }

    /// One request over a new TLS connection (HTTP/1.1).
    pub async fn get(&self, path: &str) -> Resp {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Resp {
        let mut c = self.tls().connect(self.public, false).await;
        c.send(method, path, headers, body).await
    }

    /// An admin API request with the admin token.
    pub async fn admin(&self, method: Method, path: &str) -> Resp {
        let mut c = self.tls().connect(self.admin, false).await;
        let auth = format!("Bearer {ADMIN_TOKEN}");
        c.send(method, path, &[("authorization", &auth)], Bytes::new())
            .await
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let r = self.admin(Method::GET, path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()
    }

    /// Rewrites the config file (full text, harness header added as in `start`).
    pub fn write_config(&self, config: &str) {
        let full = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             admin_token = {{ env = \"FNGATE_TEST_ADMIN_TOKEN\" }}\ndata_dir = \"data\"\n\n{config}"
        );
        std::fs::write(&self.config_path, full).unwrap();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts fngate again on the same config and data dir (after `kill`, say); output is
    /// appended to the same log files.
    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.dir.0.join("data/listeners.json"));
        let append = |name: &str| {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(self.dir.0.join(name))
                .unwrap()
        };
        self.child = Command::new(fngate_bin())
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("FNGATE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("FNGATE_LOG", "info")
            .stdout(append("stdout.log"))
            .stderr(append("stderr.log"))
            .spawn()
            .expect("spawn fngate");
        self.wait_ready();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- fngate stderr ({}) ---\n{}",
                self.dir.0.display(),
                self.stderr()
            );
        }
    }
}

/// A rustls client configuration trusting one CA file.
#[derive(Clone)]
pub struct Tls {
    roots: Arc<rustls::RootCertStore>,
}

impl Tls {
    pub fn trusting(ca: &Path) -> Tls {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        Tls {
            roots: Arc::new(roots),
        }
    }

    fn config(&self, h2: bool) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = if h2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Arc::new(cfg)
    }

    /// Opens a TLS connection (verifying the certificate for `localhost`).
    pub async fn connect(&self, addr: SocketAddr, h2: bool) -> Conn {
        self.try_connect(addr, h2).await.expect("TLS connect")
    }

    pub async fn try_connect(&self, addr: SocketAddr, h2: bool) -> std::io::Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        let tls = TlsConnector::from(self.config(h2))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        let peer_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec());
        let alpn_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let sender = if alpn_h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Sender::H1(s)
        };
        Ok(Conn {
            sender,
            peer_cert,
            h2: alpn_h2,
        })
    }
}

pub type ReqBody = BoxBody<Bytes, std::io::Error>;

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

/// One client connection (keep-alive for HTTP/1.1, multiplexed for HTTP/2).
pub struct Conn {
    sender: Sender,
    pub peer_cert: Option<Vec<u8>>,
    pub h2: bool,
}

impl Conn {
    pub fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Resp {
        let body = Full::new(body).map_err(|never| match never {}).boxed();
        let r = self
            .send_streaming(method, path, headers, body)
            .await
            .expect("request failed");
        Resp::collect(r).await
    }

    /// Like `send`, but a failed exchange (the gateway went away) is an error, not a panic.
    pub async fn try_send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Resp, hyper::Error> {
        let body = Full::new(body).map_err(|never| match never {}).boxed();
        let r = self.send_streaming(method, path, headers, body).await?;
        Ok(Resp::collect(r).await)
    }

    pub async fn send_streaming(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Result<http::Response<Incoming>, hyper::Error> {
        let mut b = Request::builder().method(method);
        let custom_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
        b = if self.h2 {
            b.uri(format!("https://localhost{path}"))
        } else if custom_host {
            b.uri(path)
        } else {
            b.uri(path).header("host", "localhost")
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(body).unwrap();
        match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub async fn collect(r: http::Response<Incoming>) -> Resp {
        let (parts, body) = r.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the DESIGN.md error shape and returns the error code.
    pub fn error_code(&self) -> String {
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert_eq!(
            e["request_id"].as_str(),
            self.header("x-fngate-request-id"),
            "request id in body and header differ"
        );
        e["code"].as_str().unwrap().to_string()
    }
}

/// A plain HTTP/1.1 request on a new connection (for backends and the plaintext listener).
pub async fn plain_request(addr: SocketAddr, method: Method, path: &str, body: Bytes) -> Resp {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(body))
        .unwrap();
    Resp::collect(s.send_request(req).await.unwrap()).await
}

/// Polls `f` until it returns true or the timeout passes.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A `[[service]]` + function + trigger block for the common single-function case.
pub fn one_function(endpoints: &[String], extra_fn: &str, extra_trigger: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        r#"
[[service]]
name = "demo"

[[service.function]]
name = "echo"
backend = {{ kind = "static", endpoints = [{}] }}
{extra_fn}

[[trigger]]
name = "echo-http"
kind = "http"
function = "demo/echo"
path = "/echo"
{extra_trigger}
"#,
        eps.join(", ")
    )
}

/// A request body sent as separate chunks without a Content-Length (chunked on HTTP/1.1).
pub fn chunked(chunks: Vec<Bytes>) -> ReqBody {
    struct Chunks(std::collections::VecDeque<Bytes>);
    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }
    }
    Chunks(chunks.into()).boxed()
}

/// A real nats-server with JetStream on a free loopback port, its store in a temp dir; killed on
/// drop. `FNGATE_NATS_SERVER` picks another binary than the `nats-server` on PATH.
pub struct NatsServer {
    child: Child,
    _dir: TempDir,
    pub url: String,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let dir = TempDir::new("nats");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let bin = std::env::var("FNGATE_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.0.join("js"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("nats.log")).unwrap())
            .spawn()
            .expect("nats-server must be installed (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        NatsServer {
            child,
            _dir: dir,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }

    /// The `[queue]` section pointing a gateway at this server.
    pub fn queue_config(&self) -> String {
        format!(
            "[queue]\nkind = \"nats\"\nurl = \"{}\"\nstream = \"FNGATE\"\n",
            self.url
        )
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private RabbitMQ node on free loopback ports (AMQP and Erlang distribution), its database,
/// logs, config and cookie in a temp dir; nothing of the machine's own RabbitMQ is used.
///
/// A small `sh` keeper starts `rabbitmq-server` in a process group of its own and waits on its
/// stdin, a pipe from this process: when the `RabbitMq` is dropped, or the test binary ends (a
/// `shared()` node is never dropped), the pipe closes and the keeper kills that whole group and
/// removes the temp dir. `Drop` also kills the group itself, by its id. An `epmd` that the node
/// had to start (none was running) stays, as with any Erlang node.
///
/// `FNGATE_RABBITMQ_SERVER` picks the server script (default: Debian's
/// `/usr/lib/rabbitmq/bin/rabbitmq-server`, which, unlike the `/usr/sbin` wrapper, does not
/// switch to the `rabbitmq` user; else `rabbitmq-server` on PATH).
pub struct RabbitMq {
    keeper: Child,
    /// The server's process group (its leader's pid).
    pgid: i32,
    pub dir: PathBuf,
    pub port: u16,
    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (guest may log in from loopback).
    pub url: String,
    /// The Erlang node name, unique per start.
    pub node: String,
    server: String,
}

impl RabbitMq {
    /// The node every test of this test binary run shares (started on first use, ~10 s).
    pub fn shared() -> &'static RabbitMq {
        static SHARED: std::sync::OnceLock<RabbitMq> = std::sync::OnceLock::new();
        SHARED.get_or_init(RabbitMq::start)
    }

    pub fn start() -> RabbitMq {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = TempDir::new("rabbitmq");
        // The keeper removes it; `TempDir`'s own drop must not race it.
        let path = std::mem::ManuallyDrop::new(dir).0.clone();
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port()
        };
        let (port, dist_port) = (free_port(), free_port());
        let node = format!(
            "fngate-test-{}-{}@localhost",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let file = |name: &str, text: &str| {
            let p = path.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        // No plugins (the management UI alone adds seconds to the start).
        let plugins = file("enabled_plugins", "[].\n");
        let config = file(
            "rabbitmq.conf",
            &format!("listeners.tcp.1 = 127.0.0.1:{port}\n"),
        );
        // Read instead of /etc/rabbitmq/rabbitmq-env.conf (which names the system node).
        let env_file = file("rabbitmq-env.conf", "");
        let server = std::env::var("FNGATE_RABBITMQ_SERVER").unwrap_or_else(|_| {
            let debian = "/usr/lib/rabbitmq/bin/rabbitmq-server";
            if Path::new(debian).exists() {
                debian.to_string()
            } else {
                "rabbitmq-server".to_string()
            }
        });
        let keeper_script = r#"
setsid "$RMQ_SERVER" >"$RMQ_DIR/server.log" 2>&1 </dev/null &
server=$!
echo "$server"
read -r _ || true
kill -9 "-$server" 2>/dev/null
wait
rm -rf "$RMQ_DIR"
"#;
        let mut keeper = Command::new("sh")
            .args(["-c", keeper_script])
            .env("RMQ_SERVER", &server)
            .env("RMQ_DIR", &path)
            .env("HOME", &path)
            .env("RABBITMQ_CONF_ENV_FILE", env_file)
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", path.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", path.join("log"))
            .env("RABBITMQ_PID_FILE", path.join("rabbitmq.pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", plugins)
            .env("RABBITMQ_CONFIG_FILE", config)
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                path.join("advanced.config"),
            )
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh for rabbitmq-server");
        let mut line = String::new();
        BufReader::new(keeper.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pgid: i32 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("rabbitmq keeper said {line:?}"));
        let rmq = RabbitMq {
            keeper,
            pgid,
            dir: path,
            port,
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            node,
            server,
        };
        rmq.wait_ready();
        rmq
    }

    /// Runs `rabbitmqctl ARGS` against this node (a second or two: it starts an Erlang VM);
    /// panics unless it succeeds. Returns its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let ctl = match self.server.strip_suffix("rabbitmq-server") {
            Some(dir) => format!("{dir}rabbitmqctl"),
            None => "rabbitmqctl".to_string(),
        };
        let out = Command::new(ctl)
            .args(["-n", &self.node])
            .args(args)
            .env("HOME", &self.dir)
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .output()
            .expect("run rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Until the node answers an AMQP protocol header with `connection.start`.
    fn wait_ready(&self) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = std::net::TcpStream::connect(("127.0.0.1", self.port)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"AMQP\x00\x00\x09\x01")?;
                let mut frame = [0u8; 12];
                s.read_exact(&mut frame)?;
                // A method frame on channel 0: class 10 (connection), method 10 (start).
                Ok(frame[0] == 1 && frame[7..11] == [0, 10, 0, 10])
            });
            if matches!(ready, Ok(true)) {
                return;
            }
            let log = || std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "rabbitmq-server did not accept AMQP on port {} in time (is it installed? \
                 scripts/test.sh installs it):\n{}",
                self.port,
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        if let Some(pgid) = rustix::process::Pid::from_raw(self.pgid) {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
        // Closing stdin tells the keeper to clean up (the group is already gone) and exit.
        drop(self.keeper.stdin.take());
        let _ = self.keeper.wait();
    }
}

/// The value of the first `/metrics` line of `name` whose text contains every one of `labels`
/// (0 when there is none).
pub async fn metric(gw: &Gateway, name: &str, labels: &[&str]) -> f64 {
    let text = gw.admin(Method::GET, "/metrics").await.text();
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}
