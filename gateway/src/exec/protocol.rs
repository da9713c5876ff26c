//! The instance-login wire protocol, spoken over one WebSocket (docs/exec.md).
//!
//! The client's first message is a text message, the JSON `Start`. Every later message is binary:
//! one type byte, then the payload.

use serde::{Deserialize, Serialize};

/// Client → server: bytes for the command's stdin (the terminal's input with a PTY).
pub const STDIN: u8 = 0x00;
/// Client → server: end of stdin (no payload). Ignored with a PTY.
pub const STDIN_EOF: u8 = 0x01;
/// Client → server: terminal size, columns then rows, each a big-endian u16.
pub const RESIZE: u8 = 0x02;
/// Server → client: bytes the command wrote to stdout (everything, with a PTY).
pub const STDOUT: u8 = 0x10;
/// Server → client: bytes the command wrote to stderr (no PTY only).
pub const STDERR: u8 = 0x11;
/// Server → client: the command ended; big-endian i32 exit status (128 + n for signal n). Last.
pub const EXIT: u8 = 0x12;
/// Server → client: the session ends for a reason other than the command's exit (idle timeout,
/// the instance stopped, the gateway shutting down); UTF-8 text. Last.
pub const CLOSED: u8 = 0x13;

/// Largest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The first message: what to run and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Start {
    /// Program and arguments; empty runs the instance's `$SHELL` (else `/bin/sh`).
    #[serde(default)]
    pub command: Vec<String>,
    /// A terminal size (columns, rows) asks for a PTY; absent runs on pipes.
    #[serde(default)]
    pub tty: Option<(u16, u16)>,
    /// `TERM` for the PTY (default `xterm-256color`).
    #[serde(default)]
    pub term: Option<String>,
}

/// One decoded client message after `Start`.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMsg<'a> {
    Stdin(&'a [u8]),
    StdinEof,
    Resize { cols: u16, rows: u16 },
}

/// Decodes a binary client message; the error says what is wrong with it.
pub fn decode_client(msg: &[u8]) -> Result<ClientMsg<'_>, String> {
    match msg.split_first() {
        Some((&STDIN, data)) => Ok(ClientMsg::Stdin(data)),
        Some((&STDIN_EOF, [])) => Ok(ClientMsg::StdinEof),
        Some((&RESIZE, [c0, c1, r0, r1])) => Ok(ClientMsg::Resize {
            cols: u16::from_be_bytes([*c0, *c1]),
            rows: u16::from_be_bytes([*r0, *r1]),
        }),
        Some((t, rest)) => Err(format!(
            "bad message: type 0x{t:02x} with {} payload bytes",
            rest.len()
        )),
        None => Err("bad message: empty".into()),
    }
}

/// A message: `kind` then `payload`.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 1);
    v.push(kind);
    v.extend_from_slice(payload);
    v
}

/// A resize message.
pub fn resize(cols: u16, rows: u16) -> Vec<u8> {
    let mut v = vec![RESIZE];
    v.extend_from_slice(&cols.to_be_bytes());
    v.extend_from_slice(&rows.to_be_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_round_trip_and_bad_ones_are_named() {
        assert_eq!(
            decode_client(&frame(STDIN, b"ls\n")),
            Ok(ClientMsg::Stdin(b"ls\n"))
        );
        assert_eq!(decode_client(&[STDIN_EOF]), Ok(ClientMsg::StdinEof));
        assert_eq!(
            decode_client(&resize(132, 43)),
            Ok(ClientMsg::Resize {
                cols: 132,
                rows: 43
            })
        );
        assert_eq!(
            decode_client(&[RESIZE, 1]),
            Err("bad message: type 0x02 with 1 payload bytes".into())
        );
        assert_eq!(
            decode_client(&[0x7f]),
            Err("bad message: type 0x7f with 0 payload bytes".into())
        );
        assert!(decode_client(&[]).is_err());
        let s: Start = serde_json::from_str(r#"{"command":["pwd"]}"#).unwrap();
        assert_eq!(s.tty, None);
        assert!(serde_json::from_str::<Start>(r#"{"cmd":["pwd"]}"#).is_err());
    }
}
