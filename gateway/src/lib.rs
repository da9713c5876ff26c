//! fngate: a WebAssembly-hosted edge gateway and trigger router for serverless GPU inference.
//!
//! Request path, one module per stage (see DESIGN.md):
//! `listener` (TCP, TLS, HTTP) → `trigger` (route, auth) → `invoker` (admission, forwarding) →
//! `scheduler` (instance slots, wait queue, cold starts, GPU placement) → `backend` (pooled
//! upstream client) → `telemetry`. `instances` runs the processes the scheduler asks for.
//! `config` compiles the TOML file into the snapshot held by `state`; `admin` serves operators.
//! `events` turns object-storage notifications into async tasks (`POST /events/{source}`).
//! `exec` is instance login: a shell in a process instance over the admin listener.

pub mod admin;
pub mod backend;
pub mod body;
pub mod config;
pub mod error;
pub mod events;
pub mod exec;
#[doc(hidden)]
pub mod fuzzing;
pub mod instances;
pub mod invoker;
pub mod listener;
pub mod metering;
pub mod policy;
pub mod queue;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod trigger;
