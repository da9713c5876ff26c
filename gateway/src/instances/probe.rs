//! The readiness and health probe: one `GET path` over a fresh connection, 2xx = healthy; and
//! the passive-health probe of static endpoints, which any HTTP answer passes.
//!
//! Hand-written rather than the pooled client: a probe must not reuse a connection that a dying
//! process left half-open, and it only needs the status line.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Enough for any status line; the rest of the answer is ignored.
const READ_LIMIT: usize = 512;

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// Nothing listens on the port yet (cheap to ask again soon).
    Refused(String),
    /// Something listens but did not answer 2xx in time.
    Unhealthy(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Refused(m) | ProbeError::Unhealthy(m) => f.write_str(m),
        }
    }
}

/// A process instance's readiness or health: `GET path` on its loopback port answers 2xx.
pub async fn get(port: u16, path: &str, timeout: Duration) -> Result<(), ProbeError> {
    let host = format!("127.0.0.1:{port}");
    match status(&host, path, timeout).await? {
        c if (200..300).contains(&c) => Ok(()),
        c => Err(ProbeError::Unhealthy(format!("status {c}"))),
    }
}

/// A static endpoint (`host:port`) is alive: `GET path` gets an HTTP answer, whatever its
/// status (a 5xx comes from a live backend, as in passive health).
pub async fn answers(authority: &str, path: &str, timeout: Duration) -> Result<(), String> {
    status(authority, path, timeout)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The status code of `GET path` on `host` (`host:port`).
async fn status(host: &str, path: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let mut s = match tokio::time::timeout(timeout, TcpStream::connect(host)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ProbeError::Refused(format!("connect: {e}"))),
        Err(_) => {
            return Err(ProbeError::Refused(format!(
                "connect: no answer within {timeout:?}"
            )));
        }
    };
    match tokio::time::timeout(timeout, exchange(&mut s, host, path)).await {
        Ok(r) => r.map_err(ProbeError::Unhealthy),
        Err(_) => Err(ProbeError::Unhealthy(format!(
            "no answer within {timeout:?}"
        ))),
    }
}

async fn exchange(s: &mut TcpStream, host: &str, path: &str) -> Result<u16, String> {
    let _ = s.set_nodelay(true);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fngate-probe\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; READ_LIMIT];
    let mut n = 0;
    // Read until the status line is complete (or the peer closes).
    while n < buf.len() {
        let m = s
            .read(&mut buf[n..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if m == 0 {
            break;
        }
        n += m;
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    parse_status(&buf[..n])
}

fn parse_status(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    match code {
        _ if !version.starts_with("HTTP/1.") => Err(if head.is_empty() {
            "connection closed without an answer".into()
        } else {
            format!(
                "not an HTTP answer: {:?}",
                line.chars().take(60).collect::<String>()
            )
        }),
        Some(c) => Ok(c),
        None => Err(format!(
            "bad status line {:?}",
            line.chars().take(60).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_status;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Ok(200));
        assert_eq!(parse_status(b"HTTP/1.0 204 No Content\r\n"), Ok(204));
        assert_eq!(parse_status(b"HTTP/1.1 503 Unavailable\r\n"), Ok(503));
        assert!(
            parse_status(b"HTTP/1.1 2OO OK\r\n")
                .unwrap_err()
                .contains("bad status")
        );
        assert!(parse_status(b"").unwrap_err().contains("closed"));
        assert!(
            parse_status(b"SSH-2.0-OpenSSH\r\n")
                .unwrap_err()
                .contains("not an HTTP")
        );
        assert!(
            parse_status(b"HTTP/1.1 abc\r\n")
                .unwrap_err()
                .contains("bad status")
        );
    }
}
