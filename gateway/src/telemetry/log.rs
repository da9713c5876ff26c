//! The per-invocation log line and the sink that writes it without ever blocking a request.
//!
//! Lines go through a bounded channel to one writer thread that batches them into stdout. When
//! stdout cannot keep up (a stuck pipe), lines are dropped and counted
//! (`fngate_log_lines_dropped_total`) instead of stalling the request path.

use serde::Serialize;
use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

const LOG_BUFFER_LINES: usize = 16_384;

/// One line per invocation; field names are part of the public contract (docs/logging.md).
#[derive(Debug, Serialize)]
pub struct InvocationLog<'a> {
    pub ts: String,
    pub kind: &'static str,
    pub request_id: &'a str,
    pub trigger: Option<&'a str>,
    pub function: Option<&'a str>,
    pub instance_id: Option<&'a str>,
    pub instance_kind: Option<&'static str>,
    /// Set when the request waited for a cold start: its wait, then the instance's split.
    pub cold_start_ms: Option<f64>,
    pub cold_start_spawn_ms: Option<f64>,
    pub cold_start_readiness_ms: Option<f64>,
    /// The task id of an async request (answered 202).
    pub task_id: Option<&'a str>,
    pub queue_wait_ms: f64,
    pub upstream_ms: Option<f64>,
    pub duration_ms: f64,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'static str,
    pub client: &'a str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub error: Option<&'a str>,
    /// Tenant key from a policy plugin's decision.
    pub tenant: Option<&'a str>,
}

/// One line of an instance's stdout or stderr (process backends).
#[derive(Debug, Serialize)]
pub struct InstanceLog<'a> {
    pub ts: String,
    pub kind: &'static str,
    pub function: &'a str,
    pub instance_id: &'a str,
    pub stream: &'static str,
    pub line: &'a str,
}

/// Where invocation lines go.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: Option<SyncSender<String>>,
}

impl LogSink {
    /// A sink writing JSON lines to stdout from a dedicated thread.
    pub fn stdout() -> Self {
        let (tx, rx) = sync_channel(LOG_BUFFER_LINES);
        std::thread::Builder::new()
            .name("fngate-log".into())
            .spawn(move || writer(rx))
            .expect("spawn log writer thread");
        LogSink { tx: Some(tx) }
    }

    /// A sink that discards everything (telemetry.log.stdout = false).
    pub fn off() -> Self {
        LogSink { tx: None }
    }

    pub fn emit<T: Serialize>(&self, line: &T) {
        let Some(tx) = &self.tx else { return };
        let Ok(text) = serde_json::to_string(line) else {
            return;
        };
        match tx.try_send(text) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                metrics::counter!(super::LOG_LINES_DROPPED, "sink" => "stdout").increment(1);
            }
        }
    }
}

fn writer(rx: Receiver<String>) {
    let stdout = std::io::stdout();
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Ok(first) = rx.recv() {
        buf.clear();
        buf.extend_from_slice(first.as_bytes());
        buf.push(b'\n');
        // Drain what is already queued so a burst costs one write.
        while buf.len() < 60 * 1024 {
            match rx.try_recv() {
                Ok(line) => {
                    buf.extend_from_slice(line.as_bytes());
                    buf.push(b'\n');
                }
                Err(_) => break,
            }
        }
        let mut out = stdout.lock();
        if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
            // stdout is gone (closed pipe): keep draining so senders never block.
            continue;
        }
    }
}
