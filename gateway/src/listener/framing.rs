//! Finds HTTP/1.1 requests that carry both `Content-Length` and `Transfer-Encoding`, which the
//! listener refuses with 400 (RFC 9112 §6.1 allows a server to; a request framed two ways is
//! the raw material of request smuggling through a proxy chain).
//!
//! hyper cannot tell us: it reads such a request by `Transfer-Encoding`, drops every
//! `Content-Length` from the header map (in either header order) and only marks the connection
//! to close after the answer, which the service never sees. So the evidence is gathered from
//! the bytes themselves, as the connection's IO reads them: [`Framing`] follows the message
//! framing of HTTP/1.1 requests (heads, `Content-Length` bodies skipped without looking,
//! chunked bodies by their size lines, as hyper's decoder reads them) and notes the number of
//! the first head that has both headers. The service counts requests and refuses the one with
//! that number. Nothing is buffered and nothing allocated: the state is a few integers.
//!
//! Where the tracker cannot follow (an HTTP/2 preface, a head over [`MAX_HEAD`], bytes that hyper
//! would refuse anyway) it stops looking, and later requests on that connection are read as
//! hyper reads them (`Transfer-Encoding` wins, connection closed after the answer). After a
//! conflicting head it stops too: hyper reads no request after that one.

use crate::telemetry::hex_digit;
use std::sync::atomic::{AtomicU32, Ordering};

/// Longest head (or trailer section) followed; hyper refuses far smaller ones.
pub const MAX_HEAD: usize = 1 << 20;

/// What the IO side found, shared with the connection's service.
#[derive(Debug, Default)]
pub struct Evidence {
    /// 1-based number of the first request head carrying both headers; 0 if none yet.
    conflicting: AtomicU32,
    /// Requests the service has been given.
    served: AtomicU32,
}

impl Evidence {
    /// Called once per request, in order, with its headers: true if this is the request framed
    /// both ways (hyper always leaves its `Transfer-Encoding` header; checked to be sure). One
    /// atomic add per request; the header lookup only for the flagged one.
    #[inline]
    pub fn conflicting(&self, headers: &http::HeaderMap) -> bool {
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        self.conflicting.load(Ordering::Relaxed) == n
            && headers.contains_key(http::header::TRANSFER_ENCODING)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// `Content-Length` body bytes left.
    Body(u64),
    ChunkStart,
    ChunkSize,
    ChunkLws,
    ChunkExt,
    ChunkSizeLf,
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
    /// Not following any more.
    Off,
}

/// Header names matched at the start of a head line (lower case, up to the colon).
const CL: &[u8] = b"content-length";
const TE: &[u8] = b"transfer-encoding";
/// The start of the HTTP/2 prior-knowledge preface, lower-cased (`PRI * HTTP/2.0`).
const PREFACE: &[u8] = b"pri * http/2";
/// Enough of a line to tell the two names and the HTTP/2 preface apart.
const KEEP: usize = 20;

/// The `Content-Length` value so far after one more byte of it: digits accumulate, blanks are
/// skipped, anything else (or an overflow) makes it `None`, as hyper refuses such a value.
fn length_byte(length: Option<u64>, b: u8) -> Option<u64> {
    match b {
        b' ' | b'\t' => length,
        b'0'..=b'9' => length?.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    }
}

/// The byte-level tracker, owned by the connection's IO wrapper.
#[derive(Debug)]
pub struct Framing {
    state: State,
    heads: u32,
    /// Bytes of the current head (or trailers).
    head_bytes: usize,
    /// Complete lines of the current head so far.
    lines: u32,
    /// The current line: its first bytes, lower-cased, and its length so far.
    line: [u8; KEEP],
    line_len: usize,
    /// Past the current line's first colon.
    in_value: bool,
    /// The current line is a `Content-Length` header.
    cl_line: bool,
    has_cl: bool,
    has_te: bool,
    /// The `Content-Length` value (`None`: not a plain number, hyper refuses it).
    length: Option<u64>,
    chunk: u64,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            state: State::Head,
            heads: 0,
            head_bytes: 0,
            lines: 0,
            line: [0; KEEP],
            line_len: 0,
            in_value: false,
            cl_line: false,
            has_cl: false,
            has_te: false,
            length: Some(0),
            chunk: 0,
        }
    }
}

impl Framing {
    /// Follows `data`, the next bytes read from the client.
    pub fn feed(&mut self, evidence: &Evidence, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Body(left) | State::ChunkData(left) => {
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.state = match (self.state, left - n) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::ChunkDataCr,
                        (_, l) => State::ChunkData(l),
                    };
                }
                // At the start of a head line, a line that arrived whole is taken in one step
                // (the common case: a request head read at once); anything else byte by byte.
                State::Head if self.line_len == 0 => match self.whole_line(data) {
                    Some(n) => data = &data[n..],
                    None => {
                        let b = data[0];
                        data = &data[1..];
                        self.byte(evidence, b);
                    }
                },
                _ => {
                    let b = data[0];
                    data = &data[1..];
                    self.byte(evidence, b);
                }
            }
        }
    }

    /// Takes a complete, non-empty head line at the start of `data` in one step, with the same
    /// result as feeding its bytes one at a time; returns the bytes taken, or `None` (nothing
    /// taken) for what the byte path handles: no line end yet, an empty line, a carriage return
    /// other than the one before the line feed, or a line that would pass [`MAX_HEAD`].
    fn whole_line(&mut self, data: &[u8]) -> Option<usize> {
        let nl = memchr::memchr(b'\n', data)?;
        let line = match &data[..nl] {
            [line @ .., b'\r'] => line,
            line => line,
        };
        if line.is_empty()
            || memchr::memchr(b'\r', line).is_some()
            || self.head_bytes + nl + 1 > MAX_HEAD
        {
            return None;
        }
        if self.lines == 0 {
            // The request line, or the HTTP/2 prior-knowledge preface.
            if line.len() >= PREFACE.len() && line[..PREFACE.len()].eq_ignore_ascii_case(PREFACE) {
                self.state = State::Off;
                return Some(nl + 1);
            }
        } else if let Some(colon) = memchr::memchr(b':', line) {
            let name = &line[..colon];
            if name.eq_ignore_ascii_case(CL) {
                self.has_cl = true;
                let length = line[colon + 1..]
                    .iter()
                    .try_fold(0, |l, &b| length_byte(Some(l), b));
                self.length = length;
                if length.is_none() {
                    // Not a number: hyper refuses the request and closes.
                    self.state = State::Off;
                    return Some(nl + 1);
                }
            } else if name.eq_ignore_ascii_case(TE) {
                self.has_te = true;
            }
        }
        self.lines += 1;
        self.head_bytes += nl + 1;
        Some(nl + 1)
    }

    fn byte(&mut self, evidence: &Evidence, b: u8) {
        use State::*;
        self.state = match self.state {
            Head => return self.head_byte(evidence, b),
            ChunkStart => match hex_digit(b) {
                Some(d) => {
                    self.chunk = u64::from(d);
                    ChunkSize
                }
                None => Off,
            },
            ChunkSize => match (hex_digit(b), b) {
                (Some(d), _) => match self
                    .chunk
                    .checked_mul(16)
                    .and_then(|c| c.checked_add(u64::from(d)))
                {
                    Some(c) => {
                        self.chunk = c;
                        ChunkSize
                    }
                    None => Off,
                },
                (_, b'\t' | b' ') => ChunkLws,
                (_, b';') => ChunkExt,
                (_, b'\r') => ChunkSizeLf,
                _ => Off,
            },
            ChunkLws => match b {
                b'\t' | b' ' => ChunkLws,
                b';' => ChunkExt,
                b'\r' => ChunkSizeLf,
                _ => Off,
            },
            ChunkExt => match b {
                b'\r' => ChunkSizeLf,
                b'\n' => Off,
                _ => ChunkExt,
            },
            ChunkSizeLf => match (b, self.chunk) {
                (b'\n', 0) => {
                    self.head_bytes = 0;
                    EndCr
                }
                (b'\n', n) => ChunkData(n),
                _ => Off,
            },
            ChunkDataCr => match b {
                b'\r' => ChunkDataLf,
                _ => Off,
            },
            ChunkDataLf => match b {
                b'\n' => ChunkStart,
                _ => Off,
            },
            EndCr => match b {
                b'\r' => EndLf,
                _ => self.trailer_byte(b),
            },
            Trailer => self.trailer_byte(b),
            TrailerLf => match b {
                b'\n' => EndCr,
                _ => Off,
            },
            EndLf => match b {
                b'\n' => Head,
                _ => Off,
            },
            Body(_) | ChunkData(_) | Off => Off,
        };
    }

    fn trailer_byte(&mut self, b: u8) -> State {
        self.head_bytes += 1;
        match b {
            _ if self.head_bytes > MAX_HEAD => State::Off,
            b'\r' => State::TrailerLf,
            _ => State::Trailer,
        }
    }

    fn head_byte(&mut self, evidence: &Evidence, b: u8) {
        match b {
            // Empty lines before a request line are skipped (as hyper does); after one, the
            // empty line ends the head.
            b'\n' if self.line_len == 0 => {
                if self.lines > 0 {
                    return self.end_head(evidence);
                }
            }
            b'\n' => {
                if self.lines == 0 && self.line[..self.line_len.min(KEEP)].starts_with(PREFACE) {
                    // The HTTP/2 prior-knowledge preface: not HTTP/1.1 from here on.
                    self.state = State::Off;
                    return;
                }
                if self.cl_line && self.length.is_none() {
                    // Not a number: hyper refuses the request and closes.
                    self.state = State::Off;
                    return;
                }
                self.lines += 1;
                self.line_len = 0;
                self.in_value = false;
                self.cl_line = false;
            }
            b'\r' => {}
            _ => {
                if self.line_len < KEEP {
                    self.line[self.line_len] = b.to_ascii_lowercase();
                }
                self.line_len += 1;
                if self.in_value {
                    if self.cl_line {
                        self.length = length_byte(self.length, b);
                    }
                } else if b == b':' && self.lines > 0 {
                    self.in_value = true;
                    let name = &self.line[..(self.line_len - 1).min(KEEP)];
                    if name == CL {
                        // A repeated Content-Length must agree (hyper refuses one that does
                        // not), so the last one read is the length.
                        self.cl_line = true;
                        self.has_cl = true;
                        self.length = Some(0);
                    } else if name == TE {
                        self.has_te = true;
                    }
                }
            }
        }
        self.head_bytes += 1;
        if self.head_bytes > MAX_HEAD {
            self.state = State::Off;
        }
    }

    fn end_head(&mut self, evidence: &Evidence) {
        self.heads += 1;
        self.state = if self.has_cl && self.has_te {
            let _ = evidence.conflicting.compare_exchange(
                0,
                self.heads,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            // hyper answers this request and closes: nothing after it is a request.
            State::Off
        } else if self.has_te {
            State::ChunkStart
        } else {
            match self.length {
                Some(0) => State::Head,
                Some(n) => State::Body(n),
                None => State::Off,
            }
        };
        self.head_bytes = 0;
        self.lines = 0;
        self.line_len = 0;
        self.in_value = false;
        self.cl_line = false;
        self.has_cl = false;
        self.has_te = false;
        self.length = Some(0);
    }
}

/// Feeds `data` in pieces of `step` bytes to a tracker as the listener runs it and to one that
/// takes every byte alone, and compares what later bytes depend on after each piece: the
/// whole-line step must be an exact shortcut. For the unit tests and the `http1_framing` fuzz
/// target; never called by the listener.
pub fn check_whole_lines(data: &[u8], step: usize) -> Result<(), String> {
    let (ev_fast, ev_ref) = (Evidence::default(), Evidence::default());
    let (mut fast, mut reference) = (Framing::default(), Framing::default());
    for piece in data.chunks(step.max(1)) {
        fast.feed(&ev_fast, piece);
        for &b in piece {
            match reference.state {
                State::Off => break,
                State::Body(_) | State::ChunkData(_) => reference.feed(&ev_ref, &[b]),
                _ => reference.byte(&ev_ref, b),
            }
        }
        let (f, r) = (fast.observable(&ev_fast), reference.observable(&ev_ref));
        if f != r {
            return Err(format!(
                "whole lines: {f}; byte by byte: {r}; input {}",
                data.escape_ascii()
            ));
        }
    }
    Ok(())
}

impl Framing {
    /// What later bytes depend on: everything while following, only the outcome once stopped.
    fn observable(&self, ev: &Evidence) -> String {
        let found = ev.conflicting.load(Ordering::Relaxed);
        if self.state == State::Off {
            return format!("off heads={} found={found}", self.heads);
        }
        format!(
            "{:?} heads={} found={found} bytes={} lines={} line={:?}/{} value={} cl={} {} {} {:?} chunk={}",
            self.state,
            self.heads,
            self.head_bytes,
            self.lines,
            &self.line[..self.line_len.min(KEEP)],
            self.line_len,
            self.in_value,
            self.cl_line,
            self.has_cl,
            self.has_te,
            self.length,
            self.chunk
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step`; returns the conflicting head's number (0: none) and
    /// whether the tracker still follows.
    fn run(bytes: &[u8], step: usize) -> (u32, bool) {
        let ev = Evidence::default();
        let mut f = Framing::default();
        for piece in bytes.chunks(step) {
            f.feed(&ev, piece);
        }
        (
            ev.conflicting.load(Ordering::Relaxed),
            f.state != State::Off,
        )
    }

    fn each_step(bytes: &str, want: (u32, bool)) {
        for step in [1, 2, 3, 7, 64, bytes.len().max(1)] {
            assert_eq!(run(bytes.as_bytes(), step), want, "step {step}: {bytes:?}");
        }
    }

    const GET: &str = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn both_headers_in_either_order_and_case() {
        each_step(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            (1, false),
        );
        each_step(
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 5\r\n\r\n0\r\n\r\n",
            (1, false),
        );
    }

    #[test]
    fn one_framing_header_is_fine_and_bodies_are_skipped() {
        // Body bytes that look like a conflicting head are body, not a head.
        let body = "GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cl = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let chunked = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{body}\r\n3 \r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
            body.len()
        );
        each_step(&format!("\r\n{GET}{cl}{chunked}{GET}"), (0, true));
    }

    #[test]
    fn the_conflicting_head_is_counted_after_others() {
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n";
        let both = "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        each_step(&format!("{GET}{chunked}{both}0\r\n\r\n{GET}"), (3, false));
        // The service refuses exactly the third request, and only with Transfer-Encoding.
        let ev = Evidence::default();
        Framing::default().feed(&ev, format!("{GET}{chunked}{both}").as_bytes());
        let mut te = http::HeaderMap::new();
        te.insert(http::header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        assert_eq!(
            [&te, &te, &te].map(|h| ev.conflicting(h)),
            [false, false, true]
        );
        let ev = Evidence::default();
        Framing::default().feed(&ev, both.as_bytes());
        assert!(!ev.conflicting(&http::HeaderMap::new()));
    }

    #[test]
    fn whole_lines_and_single_bytes_agree() {
        // Pieces that make heads, bodies and the odd cases (stray CR, empty lines, bad
        // lengths, the h2 preface, long names), strung together by a fixed pseudo-random walk
        // and fed in pieces of several sizes, compared after every piece.
        let parts: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"POST /x HTTP/1.1\r\n",
            b"Host: a\r\n",
            b"Content-Length: 3\r\n",
            b"content-length:\t12 \r\n",
            b"CONTENT-LENGTH: 1x\r\n",
            b"Content-Length : 3\r\n",
            b"Content-Length: 99999999999999999999999\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"transfer-encoding:gzip, chunked\n",
            b"X-A-Very-Long-Header-Name-Indeed: v:w\r\n",
            b"X: a\rb\r\n",
            b"No colon here\r\n",
            b"\r\n",
            b"\n",
            b"\r",
            b"abc",
            b"3\r\nabc\r\n",
            b"0\r\n\r\n",
            b"0\r\nT: 1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n",
            b"pri * http/2",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for case in 0..400 {
            let mut input = Vec::new();
            for _ in 0..1 + next(24) {
                input.extend_from_slice(parts[next(parts.len())]);
            }
            for step in [1, 2, 5, 16, input.len().max(1)] {
                if let Err(e) = check_whole_lines(&input, step) {
                    panic!("case {case}, step {step}: {e}");
                }
            }
        }
    }

    #[test]
    fn stops_where_hyper_would_refuse_or_not_speak_http1() {
        each_step("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", (0, false));
        each_step(
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
            (0, false),
        );
        each_step(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            (0, false),
        );
        // A space before the colon is not a Content-Length header (hyper refuses the head).
        each_step(
            "POST / HTTP/1.1\r\nContent-Length : 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            (0, true),
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(run(huge.as_bytes(), 4096), (0, false));
    }
}
