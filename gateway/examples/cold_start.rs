//! Cold-start timing, one batch at a time; driven by bench/coldstart.sh.
//!
//! `cold_start direct [--count N] [--poll-us US] [--gap-ms MS] [--path P] [--pids FILE] -- BACKEND [ARGS…]`
//!   A perfect launcher: for each of N instances, picks a free loopback port, starts BACKEND
//!   with `PORT` set (environment cleared to fngate's base variables, as fngate does), connects
//!   and sends `GET /health` every `--poll-us` (default 150 µs) until it answers 200, then sends
//!   `GET P` (default `/bytes/1024`) on a new connection and takes the time to the first response
//!   byte. The clock starts just before the spawn. Instances stay up until the batch ends, then
//!   are killed (SIGKILL) and reaped; `--pids FILE` gets each child's PID as it starts, so a
//!   script interrupted mid-batch can stop exactly those.
//!   Prints `direct i=… spawn_us=… ready_us=… first_byte_us=… status=… body=…` per instance
//!   (`spawn_us`: until `Command::spawn` returned, i.e. the child has exec'd).
//!
//! `cold_start gateway --addr HOST:PORT [--count N] [--gap-ms MS] [--path-template T]`
//!   Sends one request per function through fngate, sequentially, each on a new connection:
//!   `GET T` with `{}` replaced by the function number (default `/bench/f{}/bytes/1024`). The
//!   clock starts just before the connect (so the client's connection to fngate counts against
//!   fngate) and stops at the first response byte.
//!   Prints `gateway i=… first_byte_us=… status=… body=… cold_start_ms=… instance=…` per request.
//!
//! Blocking std sockets and `std::thread::sleep` on purpose: one request at a time, and the
//! direct poll period is far below tokio's 1 ms timer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What fngate passes to instances from its own environment (`fngate::config::BASE_ENV`).
const BASE_ENV: &[&str] = fngate::config::BASE_ENV;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

fn usage() -> ! {
    eprintln!(
        "usage: cold_start direct [--count N] [--poll-us US] [--gap-ms MS] [--path P] [--pids FILE] -- BACKEND [ARGS…]\n       cold_start gateway --addr HOST:PORT [--count N] [--gap-ms MS] [--path-template T]"
    );
    std::process::exit(2)
}

struct Opts {
    count: usize,
    poll: Duration,
    gap: Duration,
    path: String,
    addr: Option<SocketAddr>,
    pids: Option<std::path::PathBuf>,
    command: Vec<String>,
}

fn parse(args: &[String]) -> Opts {
    let mut o = Opts {
        count: 10,
        poll: Duration::from_micros(150),
        gap: Duration::from_millis(20),
        path: String::new(),
        addr: None,
        pids: None,
        command: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_else(|| usage());
        match a.as_str() {
            "--count" => o.count = val().parse().unwrap_or_else(|_| usage()),
            "--poll-us" => {
                o.poll = Duration::from_micros(val().parse().unwrap_or_else(|_| usage()))
            }
            "--gap-ms" => o.gap = Duration::from_millis(val().parse().unwrap_or_else(|_| usage())),
            "--path" | "--path-template" => o.path = val(),
            "--addr" => o.addr = Some(val().parse().unwrap_or_else(|_| usage())),
            "--pids" => o.pids = Some(val().into()),
            "--" => {
                o.command = it.by_ref().cloned().collect();
            }
            _ => usage(),
        }
    }
    o
}

/// An HTTP/1.1 answer read to the end (requests say `Connection: close`).
struct Answer {
    /// Request sent → first response byte, measured from the caller's `t0`.
    first_byte: Duration,
    status: u16,
    headers: Vec<(String, String)>,
    body_len: usize,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn request(s: &mut TcpStream, path: &str, host: &str, t0: Instant) -> std::io::Result<Answer> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut data = Vec::with_capacity(4096);
    let n = s.read(&mut buf)?;
    let first_byte = t0.elapsed();
    if n == 0 {
        return Err(std::io::Error::other("connection closed without an answer"));
    }
    data.extend_from_slice(&buf[..n]);
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let raw_body = &data[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body_len = if chunked {
        dechunked_len(raw_body)
    } else {
        raw_body.len()
    };
    Ok(Answer {
        first_byte,
        status,
        headers,
        body_len,
    })
}

/// Payload length of a chunked body (sizes in hex, each followed by CRLF, data, CRLF).
fn dechunked_len(mut b: &[u8]) -> usize {
    let mut total = 0;
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        total += size;
        b = b.get(eol + 2 + size + 2..).unwrap_or(&[]);
    }
    total
}

fn free_port() -> u16 {
    let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

/// One readiness probe: 2xx on `GET /health`.
fn probe(addr: SocketAddr, t0: Instant) -> bool {
    match TcpStream::connect(addr) {
        Ok(mut s) => request(&mut s, "/health", &addr.to_string(), t0)
            .is_ok_and(|a| (200..300).contains(&a.status)),
        Err(_) => false,
    }
}

fn spawn(command: &[String], port: u16) -> Child {
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for name in BASE_ENV {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd.env("PORT", port.to_string());
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", command[0]))
}

fn direct(o: &Opts) {
    if o.command.is_empty() {
        usage();
    }
    let path = if o.path.is_empty() {
        "/bytes/1024"
    } else {
        &o.path
    };
    let mut children = Vec::with_capacity(o.count);
    let mut pid_file = o.pids.as_ref().map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", p.display()))
    });
    for i in 0..o.count {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let t0 = Instant::now();
        let mut child = spawn(&o.command, port);
        let spawned = t0.elapsed();
        if let Some(f) = pid_file.as_mut() {
            // After the clock started, but a few µs against milliseconds of start-up.
            let _ = writeln!(f, "{}", child.id());
        }
        let deadline = t0 + STARTUP_TIMEOUT;
        let mut probes = 0u32;
        let ready = loop {
            probes += 1;
            if probe(addr, t0) {
                break t0.elapsed();
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("backend exited during start-up: {st}");
            }
            assert!(Instant::now() < deadline, "backend not ready in time");
            std::thread::sleep(o.poll);
        };
        let mut s = TcpStream::connect(addr).expect("connect to the ready backend");
        let a = request(&mut s, path, &addr.to_string(), t0).expect("request");
        println!(
            "direct i={i} spawn_us={:.1} ready_us={:.1} first_byte_us={:.1} status={} body={} probes={probes}",
            spawned.as_secs_f64() * 1e6,
            ready.as_secs_f64() * 1e6,
            a.first_byte.as_secs_f64() * 1e6,
            a.status,
            a.body_len
        );
        children.push(child);
        std::thread::sleep(o.gap);
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn gateway(o: &Opts) {
    let addr = o.addr.unwrap_or_else(|| usage());
    let template = if o.path.is_empty() {
        "/bench/f{}/bytes/1024"
    } else {
        &o.path
    };
    for i in 0..o.count {
        let path = template.replace("{}", &i.to_string());
        let t0 = Instant::now();
        let mut s = TcpStream::connect(addr).expect("connect to fngate");
        let a = request(&mut s, &path, &addr.to_string(), t0).expect("request through fngate");
        println!(
            "gateway i={i} first_byte_us={:.1} status={} body={} cold_start_ms={} instance={} request_id={}",
            a.first_byte.as_secs_f64() * 1e6,
            a.status,
            a.body_len,
            a.header("x-fngate-cold-start").unwrap_or("-"),
            a.header("x-fngate-instance-id").unwrap_or("-"),
            a.header("x-fngate-request-id").unwrap_or("-"),
        );
        std::thread::sleep(o.gap);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first() else { usage() };
    let o = parse(&args[1..]);
    match mode.as_str() {
        "direct" => direct(&o),
        "gateway" => gateway(&o),
        _ => usage(),
    }
}
