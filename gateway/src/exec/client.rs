//! `fngate exec`: the instance-login client. Connects to the admin listener over TLS (rustls on
//! aws-lc-rs, HTTP/1.1), upgrades to a WebSocket and speaks `protocol`. With a terminal on stdin
//! the session gets a PTY: the local terminal goes raw and window-size changes are forwarded.
//! Without one the command runs on pipes and `fngate exec` exits with its status.

use super::protocol::{self, Start};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Exit status for failures of `fngate exec` itself (not the command's).
pub const CLIENT_FAILURE: i32 = 255;

#[derive(Debug, Clone)]
pub struct Options {
    /// `https://host:port` of the admin listener.
    pub admin: String,
    pub token: Option<String>,
    /// PEM file of the CA that signed the admin listener's certificate.
    pub cacert: PathBuf,
    /// `service/function/instance-id`.
    pub target: String,
    pub command: Vec<String>,
}

/// Runs a session; returns the exit status to leave with.
pub async fn run(opts: Options) -> i32 {
    match session(&opts).await {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("fngate exec: {msg}");
            CLIENT_FAILURE
        }
    }
}

async fn session(opts: &Options) -> Result<i32, String> {
    let (svc, func, id) = match opts.target.split('/').collect::<Vec<_>>().as_slice() {
        [s, f, i] if !s.is_empty() && !f.is_empty() && !i.is_empty() => (*s, *f, *i),
        _ => {
            return Err(format!(
                "`{}` is not service/function/instance-id (GET /admin/functions/SERVICE/FUNCTION/instances lists the ids)",
                opts.target
            ));
        }
    };
    let uri: http::Uri = opts
        .admin
        .parse()
        .map_err(|e| format!("--admin {}: {e}", opts.admin))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "--admin {}: expected https://HOST:PORT (the admin listener is TLS only)",
            opts.admin
        ));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("--admin {}: no host", opts.admin))?
        .trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(443);
    let tls = tls_config(&opts.cacert)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("--admin {}: bad host name: {e}", opts.admin))?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))?;

    let authority = uri.authority().map_or(host, |a| a.as_str());
    let url = format!("wss://{authority}/admin/functions/{svc}/{func}/instances/{id}/exec");
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("{url}: {e}"))?;
    if let Some(t) = &opts.token {
        let v = http::HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| "the admin token has characters a header cannot carry".to_string())?;
        req.headers_mut().insert(http::header::AUTHORIZATION, v);
    }
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(protocol::MAX_MESSAGE))
        .max_frame_size(Some(protocol::MAX_MESSAGE));
    let mut ws = match tokio_tungstenite::client_async_with_config(req, stream, Some(cfg)).await {
        Ok((ws, _)) => ws,
        Err(WsError::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            let msg = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
            let hint = if resp.status() == http::StatusCode::UNAUTHORIZED {
                " (pass --token or set FNGATE_ADMIN_TOKEN)"
            } else {
                ""
            };
            return Err(format!("refused ({}): {msg}{hint}", resp.status()));
        }
        Err(e) => return Err(format!("WebSocket handshake with {url} failed: {e}")),
    };

    let tty = std::io::stdin().is_terminal();
    let start = Start {
        command: opts.command.clone(),
        tty: tty.then(|| window_size().unwrap_or((80, 24))),
        term: std::env::var("TERM").ok().filter(|_| tty),
    };
    let text = serde_json::to_string(&start).map_err(|e| e.to_string())?;
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| format!("the session ended at once: {e}"))?;

    let raw = if tty { RawMode::enter() } else { None };
    let result = pump(&mut ws, tty).await;
    drop(raw);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ws.close(None)).await;
    result
}

/// Forwards stdin, output and window sizes until the server sends the exit status or closes.
async fn pump<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, tty: bool) -> Result<i32, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::signal::unix::{SignalKind, signal};
    let mut winch = signal(SignalKind::window_change()).ok();
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 8 * 1024];
    let mut stdin_open = true;
    loop {
        tokio::select! {
            msg = ws.next() => {
                let data = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None => {
                        return Err("the gateway closed the session without an exit status".into());
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("the session broke: {e}")),
                };
                match data.split_first() {
                    Some((&protocol::STDOUT, d)) => {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(d);
                        let _ = out.flush();
                    }
                    Some((&protocol::STDERR, d)) => {
                        let _ = std::io::stderr().lock().write_all(d);
                    }
                    Some((&protocol::EXIT, [a, b, c, d])) => {
                        return Ok(i32::from_be_bytes([*a, *b, *c, *d]));
                    }
                    Some((&protocol::CLOSED, reason)) => {
                        // In raw mode a bare newline would not return the cursor.
                        let nl = if tty { "\r\n" } else { "\n" };
                        return Err(format!("{nl}{}", String::from_utf8_lossy(reason)));
                    }
                    _ => return Err("the gateway sent a message this client does not know".into()),
                }
            }
            n = stdin.read(&mut buf), if stdin_open => {
                let msg = match n {
                    Ok(0) | Err(_) => {
                        stdin_open = false;
                        vec![protocol::STDIN_EOF]
                    }
                    Ok(n) => protocol::frame(protocol::STDIN, &buf[..n]),
                };
                if ws.send(Message::Binary(msg.into())).await.is_err() {
                    return Err("the session broke while sending input".into());
                }
            }
            Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => None } }, if tty => {
                if let Some((cols, rows)) = window_size() {
                    let _ = ws.send(Message::Binary(protocol::resize(cols, rows).into())).await;
                }
            }
        }
    }
}

fn tls_config(cacert: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(cacert)
        .map_err(|e| format!("--cacert {}: {e}", cacert.display()))?;
    for c in certs {
        let c = c.map_err(|e| format!("--cacert {}: {e}", cacert.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("--cacert {}: {e}", cacert.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "--cacert {}: no certificates in it",
            cacert.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The upgrade is an HTTP/1.1 mechanism.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The local terminal's size (columns, rows).
fn window_size() -> Option<(u16, u16)> {
    let w = rustix::termios::tcgetwinsize(std::io::stdin()).ok()?;
    (w.ws_col > 0 && w.ws_row > 0).then_some((w.ws_col, w.ws_row))
}

/// The local terminal in raw mode (keys go to the remote shell as typed); restored on drop.
struct RawMode(rustix::termios::Termios);

impl RawMode {
    fn enter() -> Option<RawMode> {
        use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
        let saved = tcgetattr(std::io::stdin()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(std::io::stdin(), OptionalActions::Now, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}
