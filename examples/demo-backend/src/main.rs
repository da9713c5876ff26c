//! `demo-backend`: command line, runtime setup and the HTTP/1.1 accept loop of the sample backend.

mod body;
mod handlers;
mod model;

use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroU8;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::handlers::{Readiness, State, Stats};

const USAGE: &str = "\
usage: demo-backend [--listen ADDR] [--id NAME] [--delay-ms N] [--threads N]
                    [--startup-delay-ms N] [--fail-start CODE]
                    [--unready | --unready-after N] [--ignore-sigterm]

Sample function backend for the fngate demo, tests and benchmarks.

  --listen ADDR           address to bind (default 127.0.0.1:$PORT, or 127.0.0.1:9001 without PORT)
  --id NAME               instance name in responses (default $FNGATE_INSTANCE_ID, or \"demo\")
  --delay-ms N            latency added to every request except /health, /stats and /env (default 0)
  --threads N             tokio worker threads (default 1)
  --startup-delay-ms N    sleep N ms before binding, like a slow model load; prints
                          `starting (delay N ms)` to stderr first
  --fail-start CODE       print `fatal: simulated start-up failure` to stderr and exit with CODE
                          (1..=255) instead of binding (after --startup-delay-ms, if given)
  --unready               GET /health always answers 503 {\"status\":\"unready\"}
  --unready-after N       GET /health answers 200 to the first N checks, then 503 forever
  --ignore-sigterm        SIGTERM only prints `ignoring SIGTERM` to stderr; without it SIGTERM
                          prints `stopping on SIGTERM` to stderr and exits 0
  -h, --help              print this help

Prints `listening on ADDR` once bound. Endpoints: GET /health, GET /stats, POST /stats/reset,
GET /env (selected environment variables, pid and cwd as JSON), GET /bytes/N, POST /generate,
anything else echoes the request as JSON. Query knobs on counted paths: sleep_ms, status, crash,
reset, hang, sse (+interval_ms), echo_body, log (writes TEXT to stdout and `err: TEXT` to stderr).
";

#[derive(Debug, PartialEq)]
struct Config {
    listen: SocketAddr,
    id: String,
    delay: Duration,
    threads: usize,
    /// `Some` only when the flag is given, so `starting (delay N ms)` is printed only then.
    startup_delay: Option<Duration>,
    fail_start: Option<NonZeroU8>,
    /// Healthy `/health` checks before readiness is lost for good; `None`: always ready.
    unready_after: Option<u64>,
    ignore_sigterm: bool,
}

#[derive(Debug, PartialEq)]
enum Command {
    Run(Config),
    Help,
}

/// `env` is injected so tests need not touch the real environment.
fn parse_args(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, String> {
    let mut listen = None;
    let mut id = None;
    let mut delay_ms = 0;
    let mut threads = 1;
    let mut startup_delay = None;
    let mut fail_start = None;
    let mut unready = false;
    let mut unready_after = None;
    let mut ignore_sigterm = false;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                listen = Some(
                    v.parse()
                        .map_err(|_| format!("--listen: bad address {v:?}"))?,
                );
            }
            "--id" => id = Some(value()?),
            "--delay-ms" => {
                let v = value()?;
                delay_ms = v
                    .parse()
                    .map_err(|_| format!("--delay-ms: bad number {v:?}"))?;
            }
            "--threads" => {
                let v = value()?;
                threads = match v.parse() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("--threads: expected a positive number, got {v:?}")),
                };
            }
            "--startup-delay-ms" => {
                let v = value()?;
                let ms = v
                    .parse()
                    .map_err(|_| format!("--startup-delay-ms: bad number {v:?}"))?;
                startup_delay = Some(Duration::from_millis(ms));
            }
            "--fail-start" => {
                let v = value()?;
                // 0 would read as success to the gateway, defeating the point of the flag.
                fail_start = Some(v.parse().map_err(|_| {
                    format!("--fail-start: expected an exit code 1..=255, got {v:?}")
                })?);
            }
            "--unready-after" => {
                let v = value()?;
                unready_after = Some(
                    v.parse()
                        .map_err(|_| format!("--unready-after: bad number {v:?}"))?,
                );
            }
            // Switches take no value; `--unready=x` would otherwise be silently accepted.
            "--unready" | "--ignore-sigterm" if inline.is_some() => {
                return Err(format!("{flag} takes no value"));
            }
            "--unready" => unready = true,
            "--ignore-sigterm" => ignore_sigterm = true,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let unready_after = match (unready, unready_after) {
        (true, Some(_)) => return Err("--unready and --unready-after exclude each other".into()),
        (true, None) => Some(0),
        (false, n) => n,
    };

    let listen = match (listen, env("PORT")) {
        (Some(listen), _) => listen,
        (None, Some(port)) => {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("PORT: bad port {port:?}"))?;
            SocketAddr::from(([127, 0, 0, 1], port))
        }
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 9001)),
    };
    let id = id
        .or_else(|| env("FNGATE_INSTANCE_ID"))
        .unwrap_or_else(|| "demo".to_owned());
    // It goes out verbatim in the x-backend-instance header.
    HeaderValue::from_str(&id)
        .map_err(|_| format!("instance id {id:?} is not a valid header value"))?;

    Ok(Command::Run(Config {
        listen,
        id,
        delay: Duration::from_millis(delay_ms),
        threads,
        startup_delay,
        fail_start,
        unready_after,
        ignore_sigterm,
    }))
}

fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("demo-backend: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("demo-backend: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(config));
    // Connection tasks may be mid-stream or hanging on purpose; do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("demo-backend: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM (unless ignored) or SIGINT. The exit code is not 0 only for
/// `--fail-start`.
async fn serve(config: Config) -> Result<ExitCode, String> {
    // Install handlers before announcing the port, and before the start-up delay: a test may
    // signal as soon as it reads the port, and a gateway may stop an instance still starting.
    let mut signals = Signals::install(config.ignore_sigterm)?;

    if let Some(delay) = config.startup_delay {
        say_err(&format!("starting (delay {} ms)", delay.as_millis()));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = signals.stopped() => return Ok(ExitCode::SUCCESS),
        }
    }
    if let Some(code) = config.fail_start {
        say_err("fatal: simulated start-up failure");
        return Ok(ExitCode::from(code.get()));
    }

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;

    let id: &'static str = Box::leak(config.id.into_boxed_str());
    let id_header = HeaderValue::from_maybe_shared(Bytes::from_static(id.as_bytes()))
        .map_err(|_| format!("instance id {id:?} is not a valid header value"))?;
    let state: &'static State = Box::leak(Box::new(State {
        id,
        id_header,
        delay: config.delay,
        stats: Stats::default(),
        readiness: Readiness::new(config.unready_after),
    }));

    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {local}")
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("stdout: {e}"))?;
    }

    tokio::select! {
        () = accept_loop(listener, state) => {}
        () = signals.stopped() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The stop signals, and whether SIGTERM is one of them.
struct Signals {
    term: Signal,
    int: Signal,
    ignore_sigterm: bool,
}

impl Signals {
    /// SIGTERM is caught even when ignored: left at its default it would kill the process, and
    /// the point of `--ignore-sigterm` is to make the gateway escalate to SIGKILL.
    fn install(ignore_sigterm: bool) -> Result<Self, String> {
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?,
            int: signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?,
            ignore_sigterm,
        })
    }

    /// Completes on the first signal that should stop the process.
    async fn stopped(&mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    if !self.ignore_sigterm {
                        say_err("stopping on SIGTERM");
                        return;
                    }
                    say_err("ignoring SIGTERM");
                }
                _ = self.int.recv() => {
                    say_err("stopping on SIGINT");
                    return;
                }
            }
        }
    }
}

/// One diagnostic line on stderr. Write errors are ignored: the reader (usually the gateway) may
/// have gone away, and a lost diagnostic must not take the process down the way `eprintln!` would.
fn say_err(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}").and_then(|()| stderr.flush());
}

async fn accept_loop(listener: TcpListener, state: &'static State) {
    let mut builder = http1::Builder::new();
    builder.keep_alive(true).pipeline_flush(true);
    let builder: &'static http1::Builder = Box::leak(Box::new(builder));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Usually fd exhaustion under load: back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        // Small request/response pairs dominate; Nagle would add latency to every one.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |req| handlers::handle(state, req));
            // Errors here are client disconnects or deliberate resets; nothing to report.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Command, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_args(args.iter().map(|a| (*a).to_owned()), move |key| {
            env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        })
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match parse(args, env) {
            Ok(Command::Run(config)) => config,
            other => panic!("expected a config, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = config(&[], &[]);
        assert_eq!(c.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(c.id, "demo");
        assert_eq!(c.delay, Duration::ZERO);
        assert_eq!(c.threads, 1);
        assert_eq!(c.startup_delay, None);
        assert_eq!(c.fail_start, None);
        assert_eq!(c.unready_after, None);
        assert!(!c.ignore_sigterm);
    }

    #[test]
    fn environment_fallbacks() {
        let c = config(&[], &[("PORT", "8123"), ("FNGATE_INSTANCE_ID", "fn-7")]);
        assert_eq!(c.listen, "127.0.0.1:8123".parse().unwrap());
        assert_eq!(c.id, "fn-7");
        // Flags beat the environment.
        let c = config(
            &["--listen", "127.0.0.1:0", "--id", "a"],
            &[("PORT", "8123"), ("FNGATE_INSTANCE_ID", "b")],
        );
        assert_eq!(c.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.id, "a");
        assert!(parse(&[], &[("PORT", "http")]).is_err());
    }

    #[test]
    fn all_flags_both_spellings() {
        let c = config(
            &[
                "--listen=0.0.0.0:80",
                "--id=x",
                "--delay-ms",
                "25",
                "--threads=4",
                "--startup-delay-ms=200",
                "--fail-start",
                "7",
                "--unready-after=2",
                "--ignore-sigterm",
            ],
            &[],
        );
        assert_eq!(
            c,
            Config {
                listen: "0.0.0.0:80".parse().unwrap(),
                id: "x".into(),
                delay: Duration::from_millis(25),
                threads: 4,
                startup_delay: Some(Duration::from_millis(200)),
                fail_start: NonZeroU8::new(7),
                unready_after: Some(2),
                ignore_sigterm: true,
            }
        );
        let c = config(&["--startup-delay-ms", "0", "--fail-start=255"], &[]);
        assert_eq!(c.startup_delay, Some(Duration::ZERO));
        assert_eq!(c.fail_start, NonZeroU8::new(255));
    }

    #[test]
    fn readiness_flags() {
        assert_eq!(config(&["--unready"], &[]).unready_after, Some(0));
        assert_eq!(
            config(&["--unready-after", "3"], &[]).unready_after,
            Some(3)
        );
        assert_eq!(config(&["--unready-after=0"], &[]).unready_after, Some(0));
        assert!(parse(&["--unready", "--unready-after", "3"], &[]).is_err());
        assert!(parse(&["--unready-after"], &[]).is_err());
        assert!(parse(&["--unready-after", "-1"], &[]).is_err());
        assert!(parse(&["--unready=1"], &[]).is_err());
        assert!(parse(&["--ignore-sigterm=yes"], &[]).is_err());
    }

    #[test]
    fn start_up_flag_errors() {
        assert!(parse(&["--fail-start"], &[]).is_err());
        assert!(parse(&["--fail-start", "0"], &[]).is_err());
        assert!(parse(&["--fail-start", "256"], &[]).is_err());
        assert!(parse(&["--fail-start", "x"], &[]).is_err());
        assert!(parse(&["--startup-delay-ms"], &[]).is_err());
        assert!(parse(&["--startup-delay-ms", "-5"], &[]).is_err());
        assert!(parse(&["--startup-delay-ms", "1.5"], &[]).is_err());
    }

    #[test]
    fn usage_mentions_every_flag() {
        for flag in [
            "--listen",
            "--id",
            "--delay-ms",
            "--threads",
            "--startup-delay-ms",
            "--fail-start",
            "--unready",
            "--unready-after",
            "--ignore-sigterm",
            "--help",
            "GET /env",
            "log",
        ] {
            assert!(USAGE.contains(flag), "usage does not mention {flag}");
        }
    }

    #[test]
    fn help_and_errors() {
        assert_eq!(parse(&["--help"], &[]), Ok(Command::Help));
        assert_eq!(parse(&["--id", "x", "-h"], &[]), Ok(Command::Help));
        assert!(parse(&["--listen"], &[]).is_err());
        assert!(parse(&["--listen", "localhost"], &[]).is_err());
        assert!(parse(&["--threads", "0"], &[]).is_err());
        assert!(parse(&["--delay-ms", "-1"], &[]).is_err());
        assert!(parse(&["--bogus"], &[]).is_err());
        assert!(parse(&["extra"], &[]).is_err());
        assert!(parse(&["--id", "bad\nid"], &[]).is_err());
    }
}
