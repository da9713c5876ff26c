//! The `fngate` command line: `serve` runs the gateway, `check` validates a configuration,
//! `exec` logs in to a running process instance.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fngate",
    version,
    about = "Edge gateway and trigger router for serverless GPU inference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML). Relative paths inside it resolve against its directory.
        #[arg(long, short, env = "FNGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file and print every problem with its path; exit 1 if any.
    Check {
        #[arg(long, short, env = "FNGATE_CONFIG")]
        config: PathBuf,
    },
    /// Run a command (default: a shell) in a running process instance, in its working directory
    /// with its environment; exits with the command's status (255 if the session fails).
    Exec {
        /// The admin listener, e.g. https://127.0.0.1:9443.
        #[arg(long)]
        admin: String,
        /// The admin token.
        #[arg(long, env = "FNGATE_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// PEM file of the CA that signed the admin certificate (the generated one is
        /// data_dir/tls/ca.pem).
        #[arg(long, env = "FNGATE_CACERT")]
        cacert: PathBuf,
        /// service/function/instance-id (GET /admin/functions/{service}/{function}/instances).
        target: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match fngate::server::check(&config) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {} problem(s)", e.file.display(), e.problems.len());
                for p in &e.problems {
                    eprintln!("{p}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Exec {
            admin,
            token,
            cacert,
            target,
            command,
        } => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::from(255);
                }
            };
            let opts = fngate::exec::client::Options {
                admin,
                token,
                cacert,
                target,
                command,
            };
            let code = rt.block_on(fngate::exec::client::run(opts));
            // A read of stdin may still be parked on a blocking thread: do not wait for it.
            rt.shutdown_background();
            ExitCode::from(u8::try_from(code).unwrap_or(255))
        }
        Command::Serve { config } => {
            init_logging();
            let cfg = match fngate::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!(
                        "{}: {} problem(s); not starting",
                        e.file.display(),
                        e.problems.len()
                    );
                    for p in &e.problems {
                        eprintln!("{p}");
                    }
                    return ExitCode::FAILURE;
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(fngate::server::serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("fngate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Operational messages go to stderr (`FNGATE_LOG` filters, e.g. `debug`); invocation lines go to
/// stdout as JSON, one per request.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    // lapin logs every broker-side channel error at ERROR; the AMQP event source already logs
    // them once with the source's name, so its own lines stay off unless FNGATE_LOG asks.
    let filter = EnvFilter::try_from_env("FNGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=off,async_nats=warn"));
    let json = std::env::var("FNGATE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
