//! Instance login: an admin-only session in a running process instance, in its working directory
//! with its environment, over a WebSocket on the admin listener (`fngate exec`, docs/exec.md).
//!
//! `GET /admin/functions/{service}/{function}/instances/{id}/exec` with a WebSocket upgrade. The
//! checks (token, function, process backend, live instance, session cap) answer plain HTTP errors
//! before the upgrade; the session then speaks `protocol`. While it is open the instance counts as
//! busy and is not reclaimed for idleness; a session without input or output for
//! `server.exec.idle_timeout` is closed. Every session is logged (target `fngate::exec`).

pub mod client;
pub mod protocol;

use crate::body::ResponseBody;
use crate::error::error_response;
use crate::instances::{SessionChild, SessionIo};
use crate::invoker::ConnInfo;
use crate::state::Gateway;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use protocol::ClientMsg;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// How long the client has to send its `Start` message after the upgrade.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long output still arriving after the command exits is forwarded before the exit status.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);
/// How often a session checks that its instance is still running.
const INSTANCE_CHECK: Duration = Duration::from_secs(1);

/// The count of open sessions, bounded by `server.exec.max_sessions`.
#[derive(Debug, Default)]
pub struct Sessions(Arc<AtomicUsize>);

/// One open session's place under the cap.
#[derive(Debug)]
struct SessionSlot(Arc<AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Sessions {
    fn try_open(&self, max: usize) -> Option<SessionSlot> {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| SessionSlot(self.0.clone()))
    }

    /// Sessions open now.
    pub fn open(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// `service`, `function`, `instance id` of an exec path.
pub fn target(path: &str) -> Option<(&str, &str, &str)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["admin", "functions", svc, func, "instances", id, "exec"] => Some((svc, func, id)),
        _ => None,
    }
}

/// Checks an exec request (the caller has checked the admin token) and upgrades it.
pub fn accept(
    gw: &Arc<Gateway>,
    conn: ConnInfo,
    mut req: Request<Incoming>,
    rid: &str,
) -> Response<ResponseBody> {
    let Some((svc, func, id)) = target(req.uri().path()) else {
        return error_response(StatusCode::NOT_FOUND, "not_found", "no such route", rid);
    };
    let fid = format!("{svc}/{func}");
    let rt = gw.runtime();
    let Some((_, f)) = rt.function(&fid) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no function {fid}"),
            rid,
        );
    };
    if !matches!(f.spec().backend, crate::config::BackendSpec::Process(_)) {
        return error_response(
            StatusCode::CONFLICT,
            "not_a_process",
            &format!("instance login needs a process backend; {fid} forwards to a static endpoint"),
            rid,
        );
    }
    let Some(inst) = f.instance(id) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!(
                "no instance {id} of {fid} (GET /admin/functions/{svc}/{func}/instances lists them)"
            ),
            rid,
        );
    };
    let Some(ctx) = gw.launcher.exec_context(id) else {
        return error_response(
            StatusCode::CONFLICT,
            "not_running",
            &format!("instance {id} of {fid} has no running process"),
            rid,
        );
    };
    let Some(key) = websocket_key(&req) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "websocket_required",
            "instance login is a WebSocket session (HTTP/1.1 Upgrade: websocket, version 13); use `fngate exec`",
            rid,
        );
    };
    let settings = rt.config.server.exec.clone();
    let Some(slot) = gw.exec_sessions.try_open(settings.max_sessions) else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sessions",
            &format!(
                "{} instance-login sessions are open, the most allowed (server.exec.max_sessions)",
                settings.max_sessions
            ),
            rid,
        );
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let session = Session {
        gw: gw.clone(),
        conn,
        function: fid,
        inst,
        ctx,
        idle_timeout: settings.idle_timeout,
    };
    tokio::spawn(async move {
        let _slot = slot;
        match upgrade.await {
            Ok(io) => {
                let cfg = WebSocketConfig::default()
                    .max_message_size(Some(protocol::MAX_MESSAGE))
                    .max_frame_size(Some(protocol::MAX_MESSAGE));
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(cfg))
                        .await;
                session.run(ws).await;
            }
            Err(e) => tracing::debug!(target: "fngate::exec", error = %e, "upgrade failed"),
        }
    });
    let mut r = Response::new(ResponseBody::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// The `Sec-WebSocket-Accept` value for a well-formed WebSocket upgrade request.
fn websocket_key(req: &Request<Incoming>) -> Option<String> {
    let h = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if req.version() != http::Version::HTTP_11
        || !has(header::CONNECTION, "upgrade")
        || !has(header::UPGRADE, "websocket")
        || h.get(header::SEC_WEBSOCKET_VERSION)? != "13"
    {
        return None;
    }
    let key = h.get(header::SEC_WEBSOCKET_KEY)?;
    Some(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

struct Session {
    gw: Arc<Gateway>,
    conn: ConnInfo,
    function: String,
    inst: Arc<crate::scheduler::Instance>,
    ctx: Arc<crate::instances::ExecContext>,
    idle_timeout: Duration,
}

/// Input for the command, from the session loop to the writer task.
enum Input {
    Data(Vec<u8>),
    Eof,
}

/// How a session ended.
enum End {
    Exited(i32),
    Closed(String),
    ClientGone,
}

impl Session {
    async fn run(self, mut ws: Ws) {
        let start = match read_start(&mut ws).await {
            Ok(s) => s,
            Err(msg) => {
                close(&mut ws, protocol::CLOSED, msg.as_bytes()).await;
                return;
            }
        };
        let t0 = Instant::now();
        let started = crate::telemetry::rfc3339_now();
        let command = if start.command.is_empty() {
            "(login shell)".to_string()
        } else {
            start.command.join(" ")
        };
        let child = match self
            .ctx
            .spawn(&start.command, start.tty, start.term.as_deref())
        {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start `{command}` in {}: {e}", self.inst.id);
                close(&mut ws, protocol::CLOSED, msg.as_bytes()).await;
                return;
            }
        };
        let _hold = self.inst.hold_for_session();
        tracing::info!(
            target: "fngate::exec",
            client = %self.conn.peer,
            instance = %self.inst.id,
            tty = start.tty.is_some(),
            "instance login session opened by the admin token holder"
        );
        let end = self.drive(&mut ws, child).await;
        let (outcome, exit_status) = match &end {
            End::Exited(code) => {
                close(&mut ws, protocol::EXIT, &code.to_be_bytes()).await;
                ("exited".to_string(), Some(*code))
            }
            End::Closed(msg) => {
                close(&mut ws, protocol::CLOSED, msg.as_bytes()).await;
                (msg.clone(), None)
            }
            End::ClientGone => ("client disconnected".to_string(), None),
        };
        tracing::info!(
            target: "fngate::exec",
            who = "admin token",
            client = %self.conn.peer,
            function = %self.function,
            instance = %self.inst.id,
            command = %command,
            started = %started,
            duration_ms = t0.elapsed().as_millis() as u64,
            exit_status,
            outcome = %outcome,
            "instance login session closed"
        );
    }

    /// Moves bytes both ways until the command exits, the client leaves, the session idles out or
    /// the instance stops. Dropping `child` on return kills what is left of the command.
    async fn drive(&self, ws: &mut Ws, mut child: SessionChild) -> End {
        let (out_tx, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(8);
        let (in_tx, in_rx) = mpsc::channel::<Input>(8);
        let mut pty = None;
        let mut tasks = tokio::task::JoinSet::new();
        match child.io.take() {
            Some(SessionIo::Pty(p)) => {
                let p = Arc::new(p);
                pty = Some(p.clone());
                tasks.spawn(pump_pty(p.clone(), out_tx));
                tasks.spawn(feed_pty(p, in_rx));
            }
            Some(SessionIo::Pipes {
                stdin,
                stdout,
                stderr,
            }) => {
                tasks.spawn(pump_pipe(stdout, protocol::STDOUT, out_tx.clone()));
                tasks.spawn(pump_pipe(stderr, protocol::STDERR, out_tx));
                tasks.spawn(feed_pipe(stdin, in_rx));
            }
            None => return End::Closed("the session has no input or output".into()),
        }
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        let mut check = tokio::time::interval(INSTANCE_CHECK);
        let idle_msg = || {
            format!(
                "session closed after {} without input or output (server.exec.idle_timeout)",
                crate::config::format_duration(self.idle_timeout)
            )
        };
        let mut out_done = false;
        let status = loop {
            tokio::select! {
                msg = ws.next() => {
                    let data = match msg {
                        Some(Ok(Message::Binary(b))) => b,
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                        Some(Ok(Message::Text(_))) => {
                            return End::Closed("bad message: text after the start message".into());
                        }
                        Some(Ok(Message::Close(_)) | Err(_)) | None => return End::ClientGone,
                    };
                    idle.as_mut().reset(tokio::time::Instant::now() + self.idle_timeout);
                    match protocol::decode_client(&data) {
                        Ok(ClientMsg::Stdin(d)) => {
                            let _ = in_tx.send(Input::Data(d.to_vec())).await;
                        }
                        Ok(ClientMsg::StdinEof) => {
                            let _ = in_tx.send(Input::Eof).await;
                        }
                        Ok(ClientMsg::Resize { cols, rows }) => {
                            if let Some(p) = &pty {
                                let _ = p.resize(cols, rows);
                            }
                        }
                        Err(msg) => return End::Closed(msg),
                    }
                }
                out = out_rx.recv(), if !out_done => {
                    let Some((kind, data)) = out else {
                        // All output read: the command's exit follows.
                        out_done = true;
                        continue;
                    };
                    idle.as_mut().reset(tokio::time::Instant::now() + self.idle_timeout);
                    if ws.send(Message::Binary(protocol::frame(kind, &data).into())).await.is_err() {
                        return End::ClientGone;
                    }
                }
                status = child.child.wait() => break status,
                () = &mut idle => return End::Closed(idle_msg()),
                _ = check.tick() => {
                    if self.gw.launcher.exec_context(&self.inst.id).is_none() {
                        return End::Closed(format!("instance {} stopped", self.inst.id));
                    }
                }
            }
        };
        // Output the command wrote just before exiting is still in the pipes or the PTY.
        let deadline = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
        while let Ok(Some((kind, data))) = tokio::time::timeout_at(deadline, out_rx.recv()).await {
            if ws
                .send(Message::Binary(protocol::frame(kind, &data).into()))
                .await
                .is_err()
            {
                return End::ClientGone;
            }
        }
        tasks.abort_all();
        match status {
            Ok(s) => End::Exited(exit_code(s)),
            Err(e) => End::Closed(format!("cannot wait for the command: {e}")),
        }
    }
}

/// The exit status as a shell reports it: the code, or 128 + the signal.
fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code()
        .or_else(|| s.signal().map(|n| 128 + n))
        .unwrap_or(255)
}

async fn read_start(ws: &mut Ws) -> Result<protocol::Start, String> {
    match tokio::time::timeout(START_TIMEOUT, ws.next()).await {
        Err(_) => Err(format!(
            "no start message within {}",
            crate::config::format_duration(START_TIMEOUT)
        )),
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(t.as_str()).map_err(|e| {
            format!("bad start message (expected JSON like {{\"command\": [\"pwd\"]}}): {e}")
        }),
        Ok(Some(Ok(_))) => Err("bad start message: expected a JSON text message first".into()),
        Ok(_) => Err("the client left before starting".into()),
    }
}

/// Sends the last message and closes the WebSocket.
async fn close(ws: &mut Ws, kind: u8, payload: &[u8]) {
    let _ = ws
        .send(Message::Binary(protocol::frame(kind, payload).into()))
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

async fn pump_pipe(mut r: impl AsyncRead + Unpin, kind: u8, tx: mpsc::Sender<(u8, Vec<u8>)>) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 || tx.send((kind, buf[..n].to_vec())).await.is_err() {
            return;
        }
    }
}

async fn pump_pty(p: Arc<crate::instances::Pty>, tx: mpsc::Sender<(u8, Vec<u8>)>) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = p.read(&mut buf).await {
        if n == 0
            || tx
                .send((protocol::STDOUT, buf[..n].to_vec()))
                .await
                .is_err()
        {
            return;
        }
    }
}

async fn feed_pipe(mut stdin: tokio::process::ChildStdin, mut rx: mpsc::Receiver<Input>) {
    while let Some(Input::Data(d)) = rx.recv().await {
        if stdin.write_all(&d).await.is_err() {
            return;
        }
    }
    // End of input (or the session is over): closing the pipe gives the command EOF.
}

async fn feed_pty(p: Arc<crate::instances::Pty>, mut rx: mpsc::Receiver<Input>) {
    while let Some(input) = rx.recv().await {
        // A terminal has no end of input; the user types `exit` or ^D.
        if let Input::Data(d) = input
            && p.write_all(&d).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_paths_name_their_instance() {
        assert_eq!(
            target("/admin/functions/s/f/instances/s-f-1/exec"),
            Some(("s", "f", "s-f-1"))
        );
        assert_eq!(target("/admin/functions/s/f/instances"), None);
        assert_eq!(target("/admin/functions/s/f/instances/x/exec/more"), None);
    }

    #[test]
    fn the_session_cap_holds_and_frees() {
        let s = Sessions::default();
        let a = s.try_open(2).unwrap();
        let _b = s.try_open(2).unwrap();
        assert!(s.try_open(2).is_none());
        drop(a);
        assert_eq!(s.open(), 1);
        assert!(s.try_open(2).is_some());
    }
}
