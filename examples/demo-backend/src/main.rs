//! `demo-backend`: command line, runtime setup and the HTTP/1.1 accept loop of the sample backend.

mod body;
mod handlers;
mod model;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::handlers::{State, Stats};

const USAGE: &str = "\
usage: demo-backend [--listen ADDR] [--id NAME] [--delay-ms N] [--threads N]

Sample function backend for the fngate demo, tests and benchmarks.

  --listen ADDR    address to bind (default 127.0.0.1:$PORT, or 127.0.0.1:9001 without PORT)
  --id NAME        instance name in responses (default $FNGATE_INSTANCE_ID, or \"demo\")
  --delay-ms N     latency added to every request except /health and /stats (default 0)
  --threads N      tokio worker threads (default 1)
  -h, --help       print this help

Prints `listening on ADDR` once bound. Endpoints: GET /health, GET /stats, POST /stats/reset,
GET /bytes/N, POST /generate, anything else echoes the request as JSON. Query knobs on counted
paths: sleep_ms, status, crash, reset, hang, sse (+interval_ms), echo_body.
";

#[derive(Debug, PartialEq)]
struct Config {
    listen: SocketAddr,
    id: String,
    delay: Duration,
    threads: usize,
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
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }

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
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("demo-backend: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or SIGINT.
async fn serve(config: Config) -> Result<(), String> {
    // Install handlers before announcing the port: a test may signal as soon as it reads it.
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;

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
    }));

    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {local}")
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("stdout: {e}"))?;
    }

    tokio::select! {
        () = accept_loop(listener, state) => Ok(()),
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
    }
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
            }
        );
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
