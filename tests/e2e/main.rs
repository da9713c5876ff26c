//! Black-box tests: the real `fngate` binary on loopback, real `demo-backend` processes, real TLS
//! clients (rustls and curl). Build the workspace first: `cargo build --workspace`.

mod async_nats;
mod async_tasks;
mod ceph_rgw;
mod dashboard;
mod event_amqp;
mod event_brokers;
mod events;
mod exec;
mod forwarding;
mod harness;
mod instances;
mod logging;
mod metering;
mod operations;
mod otlp;
mod plugins;
mod prometheus;
mod reliability;
mod routing;
mod scheduling;
mod traces;
