//! Black-box tests: the real `fngate` binary on loopback, real `demo-backend` processes, real TLS
//! clients (rustls and curl). Build the workspace first: `cargo build --workspace`.

mod async_tasks;
mod forwarding;
mod harness;
mod instances;
mod operations;
mod plugins;
mod routing;
mod scheduling;
