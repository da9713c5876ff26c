//! Process instances: spawning a function's command on a loopback port, waiting for readiness,
//! health probes, capturing its output into the log stream, and stopping it (SIGTERM, then
//! SIGKILL after the grace period) so that no child outlives the gateway.
//!
//! The scheduler decides *when* an instance starts or stops; this module only carries that out and
//! reports back (`FunctionRuntime::instance_ready` / `instance_gone`). One tokio task supervises
//! each process from spawn to reaping.

mod probe;

use crate::config::ProcessSpec;
use crate::scheduler::{ColdStart, FunctionRuntime, Gone, Instance, Launcher};
use crate::telemetry::{self, LogSink};
use arc_swap::ArcSwap;
use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::task::TaskTracker;

/// Longest instance output line kept; longer ones are cut (and say so).
const MAX_LINE: usize = 16 * 1024;
/// Output lines kept per instance for start-failure messages.
const TAIL_LINES: usize = 8;
/// Start-up probes run every `STARTUP_PROBE_FIRST` while the port refuses connections (a refused
/// loopback connect costs microseconds, and noticing the port late is most of the gateway's
/// share of a cold start). Once something listens but is not ready yet (a model still loading
/// behind a 503), probes back off to `STARTUP_PROBE_MAX`, never above the configured interval.
const STARTUP_PROBE_FIRST: Duration = Duration::from_millis(1);
const STARTUP_PROBE_MAX: Duration = Duration::from_millis(5);

/// Starts and supervises process instances for every function.
#[derive(Debug)]
pub struct ProcessLauncher {
    log: ArcSwap<LogSink>,
    tasks: TaskTracker,
    closing: AtomicBool,
    /// Process groups alive now, for the last-resort kill at shutdown.
    groups: Groups,
}

/// Process-group ids of live instances.
#[derive(Debug, Clone, Default)]
struct Groups(Arc<Mutex<Vec<u32>>>);

impl Groups {
    fn set(&self, pgid: u32, alive: bool) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if alive {
            g.push(pgid);
        } else {
            g.retain(|p| *p != pgid);
        }
    }

    fn all(&self) -> Vec<u32> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ProcessLauncher {
    pub fn new(log: LogSink) -> Arc<Self> {
        Arc::new(ProcessLauncher {
            log: ArcSwap::from_pointee(log),
            tasks: TaskTracker::new(),
            closing: AtomicBool::new(false),
            groups: Groups::default(),
        })
    }

    /// Where instance output goes; follows the config's log settings on reload.
    pub fn set_log(&self, log: LogSink) {
        self.log.store(Arc::new(log));
    }

    /// Waits for every supervised process to be stopped and reaped (the caller has asked each
    /// function to stop its instances). Past `deadline` whatever is left is killed outright.
    pub async fn shutdown(&self, deadline: Duration) {
        self.closing.store(true, Ordering::Relaxed);
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            let groups = self.groups.all();
            tracing::warn!(
                left = groups.len(),
                "instances still running after the shutdown grace; killing them"
            );
            for pgid in groups {
                signal_group(pgid, rustix::process::Signal::KILL);
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
        }
    }
}

impl Launcher for ProcessLauncher {
    fn launch(&self, function: Arc<FunctionRuntime>, inst: Arc<Instance>, spec: Arc<ProcessSpec>) {
        if self.closing.load(Ordering::Relaxed) {
            function.instance_gone(
                &inst,
                Gone::StartFailed("the gateway is shutting down".into()),
            );
            return;
        }
        let log = self.log.load_full();
        let groups = self.groups.clone();
        self.tasks.spawn(async move {
            supervise(log, groups, function, inst, spec).await;
        });
    }
}

/// One instance from spawn to reaping.
async fn supervise(
    log: Arc<LogSink>,
    groups: Groups,
    function: Arc<FunctionRuntime>,
    inst: Arc<Instance>,
    spec: Arc<ProcessSpec>,
) {
    let t0 = Instant::now();
    let fid = function.spec().id.clone();
    let port = match free_port() {
        Ok(p) => p,
        Err(e) => {
            function.instance_gone(
                &inst,
                Gone::StartFailed(format!("no free loopback port: {e}")),
            );
            return;
        }
    };
    let authority: http::uri::Authority = format!("127.0.0.1:{port}")
        .parse()
        .expect("loopback authority parses");
    inst.set_authority(authority);
    let mut child = match spawn(&spec, &fid, &inst, port) {
        Ok(c) => c,
        Err(e) => {
            function.instance_gone(
                &inst,
                Gone::StartFailed(format!("cannot start `{}`: {e}", spec.command[0])),
            );
            return;
        }
    };
    let pid = child.id().unwrap_or(0);
    inst.set_pid(pid);
    groups.set(pid, true);
    let spawn_time = t0.elapsed();
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    if let Some(out) = child.stdout.take() {
        tokio::spawn(capture(
            out,
            "stdout",
            fid.clone(),
            inst.id.clone(),
            log.clone(),
            tail.clone(),
        ));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(capture(
            err,
            "stderr",
            fid.clone(),
            inst.id.clone(),
            log,
            tail.clone(),
        ));
    }
    tracing::debug!(function = %fid, instance = %inst.id, pid, port, "instance spawned");

    let gone = match wait_ready(&mut child, &inst, &spec, port).await {
        Startup::Ready => {
            let cold = ColdStart {
                spawn: spawn_time,
                readiness: t0.elapsed().saturating_sub(spawn_time),
            };
            if function.instance_ready(&inst, cold) {
                run(&mut child, &inst, &spec, port).await
            } else {
                stop(&mut child, pid, spec.stop_grace).await;
                Gone::Stopped
            }
        }
        Startup::Exited(status) => Gone::StartFailed(format!(
            "exited with {} during start-up{}",
            describe(status),
            last_output(&tail)
        )),
        Startup::TimedOut(last) => {
            stop(&mut child, pid, spec.stop_grace).await;
            Gone::StartFailed(format!(
                "not ready within the start-up timeout of {} (last probe of {}: {last}){}",
                crate::config::format_duration(spec.startup_timeout),
                spec.readiness.path,
                last_output(&tail)
            ))
        }
        Startup::Stopped => {
            stop(&mut child, pid, spec.stop_grace).await;
            Gone::Stopped
        }
    };
    // Whatever the leader did, no member of its group outlives the instance.
    signal_group(pid, rustix::process::Signal::KILL);
    groups.set(pid, false);
    let gone = match gone {
        Gone::Exited(msg) => Gone::Exited(format!("{msg}{}", last_output(&tail))),
        g => g,
    };
    function.instance_gone(&inst, gone);
}

enum Startup {
    Ready,
    Exited(ExitStatus),
    TimedOut(String),
    Stopped,
}

/// What happened first while waiting on something for an instance.
enum Event<T> {
    Exited(std::io::Result<ExitStatus>),
    StopRequested,
    Done(T),
}

/// Waits for `fut`, unless the process exits or fngate asks it to stop first.
async fn race<T>(child: &mut Child, inst: &Instance, fut: impl Future<Output = T>) -> Event<T> {
    tokio::select! {
        biased;
        status = child.wait() => Event::Exited(status),
        () = inst.stop_requested() => Event::StopRequested,
        v = fut => Event::Done(v),
    }
}

fn exit_message(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => format!("exited with {}", describe(s)),
        Err(e) => format!("cannot wait for the process: {e}"),
    }
}

/// Probes until the instance answers its readiness path, exits, is stopped, or runs out of time.
async fn wait_ready(child: &mut Child, inst: &Instance, spec: &ProcessSpec, port: u16) -> Startup {
    let deadline = tokio::time::Instant::now() + spec.startup_timeout;
    let max_gap = STARTUP_PROBE_MAX.min(spec.readiness.interval);
    let first_gap = STARTUP_PROBE_FIRST.min(max_gap);
    let mut gap = first_gap;
    let mut last = String::from("no probe yet");
    loop {
        let probe = probe::get(port, &spec.readiness.path, spec.readiness.timeout);
        match race(child, inst, tokio::time::timeout_at(deadline, probe)).await {
            Event::Exited(Ok(s)) => return Startup::Exited(s),
            Event::Exited(Err(e)) => return Startup::TimedOut(exit_message(Err(e))),
            Event::StopRequested => return Startup::Stopped,
            Event::Done(Err(_)) => return Startup::TimedOut(last),
            Event::Done(Ok(Ok(()))) => return Startup::Ready,
            Event::Done(Ok(Err(e))) => {
                gap = match e {
                    probe::ProbeError::Refused(_) => first_gap,
                    probe::ProbeError::Unhealthy(_) => (gap * 3 / 2)
                        .max(gap + Duration::from_millis(1))
                        .min(max_gap),
                };
                last = e.to_string();
            }
        }
        let pause = tokio::time::timeout_at(deadline, tokio::time::sleep(gap));
        match race(child, inst, pause).await {
            Event::Exited(Ok(s)) => return Startup::Exited(s),
            Event::Exited(Err(e)) => return Startup::TimedOut(exit_message(Err(e))),
            Event::StopRequested => return Startup::Stopped,
            Event::Done(Err(_)) => return Startup::TimedOut(last),
            Event::Done(Ok(())) => {}
        }
    }
}

/// A ready instance: health probes every interval until it exits, fails, or is stopped.
async fn run(child: &mut Child, inst: &Instance, spec: &ProcessSpec, port: u16) -> Gone {
    let pid = inst.pid().unwrap_or(0);
    let mut failures = 0u32;
    let mut ticker = tokio::time::interval(spec.readiness.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let probe = async {
            ticker.tick().await;
            probe::get(port, &spec.readiness.path, spec.readiness.timeout).await
        };
        let result = match race(child, inst, probe).await {
            Event::Exited(status) => return Gone::Exited(exit_message(status)),
            Event::StopRequested => {
                stop(child, pid, spec.stop_grace).await;
                return Gone::Stopped;
            }
            Event::Done(r) => r,
        };
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= spec.readiness.failure_threshold {
                    stop(child, pid, spec.stop_grace).await;
                    return Gone::Unhealthy(format!(
                        "{failures} health probes of {} failed in a row, the last: {e}",
                        spec.readiness.path
                    ));
                }
            }
        }
    }
}

/// SIGTERM to the instance's process group, SIGKILL after `grace`, then reap.
async fn stop(child: &mut Child, pid: u32, grace: Duration) {
    if pid == 0 {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return;
    }
    signal_group(pid, rustix::process::Signal::TERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(
            pid,
            "instance ignored SIGTERM for {grace:?}; sending SIGKILL"
        );
        signal_group(pid, rustix::process::Signal::KILL);
        let _ = child.wait().await;
    }
}

fn signal_group(pgid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        // ESRCH (already gone) is the normal case after a clean exit.
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// Binds port 0 on loopback and releases it for the instance. Another process could take it in
/// between; the instance then fails to bind, exits, and the start is retried.
fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

#[allow(unsafe_code)]
fn spawn(spec: &ProcessSpec, function: &str, inst: &Instance, port: u16) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.command[0]);
    cmd.args(&spec.command[1..])
        .current_dir(&spec.cwd)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so stopping it stops whatever it started too.
        .process_group(0)
        // A safety net: if the supervising task is dropped, the child is killed.
        .kill_on_drop(true);
    for name in crate::config::BASE_ENV {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd.envs(&spec.env)
        .env(&spec.port_env, port.to_string())
        .env("FNGATE_FUNCTION", function)
        .env("FNGATE_INSTANCE_ID", &*inst.id)
        .env("FNGATE_INSTANCE_KIND", inst.kind().as_str());
    if let Some(share) = &inst.gpu {
        cmd.envs(share.env());
    }
    // SAFETY: the closure runs in the child between fork and exec and only makes two
    // async-signal-safe system calls (prctl, getppid); it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(|| {
            // If the gateway dies without stopping its instances (SIGKILL), the kernel ends them.
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The gateway may have died between fork and prctl: then nobody would send it.
            if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
                return Err(std::io::Error::other("the gateway exited during spawn"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Forwards an instance's output, line by line, into the log stream.
async fn capture(
    stream: impl AsyncRead + Unpin,
    name: &'static str,
    function: String,
    instance: Arc<str>,
    log: Arc<LogSink>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut reader = BufReader::with_capacity(MAX_LINE, stream);
    let mut buf = Vec::with_capacity(1024);
    let lines = metrics::counter!(telemetry::INSTANCE_LOG_LINES, "function" => function.clone(), "stream" => name);
    loop {
        buf.clear();
        // Keep at most MAX_LINE bytes of a line (the rest is read and dropped) so a process that
        // prints without newlines cannot make the gateway buffer without bound.
        let mut truncated = false;
        let eof = loop {
            let available = match reader.fill_buf().await {
                Ok(b) if !b.is_empty() => b,
                _ => break true,
            };
            let newline = available.iter().position(|&b| b == b'\n');
            let take = newline.unwrap_or(available.len());
            let room = MAX_LINE - buf.len();
            truncated |= take > room;
            buf.extend_from_slice(&available[..take.min(room)]);
            reader.consume(take + usize::from(newline.is_some()));
            if newline.is_some() {
                break false;
            }
        };
        if buf.is_empty() && eof {
            return;
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        let mut line = String::from_utf8_lossy(&buf).into_owned();
        if truncated {
            line.push_str(" …[truncated]");
        }
        lines.increment(1);
        log.emit(&telemetry::InstanceLog {
            ts: telemetry::rfc3339_now(),
            kind: "instance_log",
            function: &function,
            instance_id: &instance,
            stream: name,
            line: &line,
        });
        let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
        drop(t);
        if eof {
            return;
        }
    }
}

fn last_output(tail: &Mutex<VecDeque<String>>) -> String {
    let t = tail.lock().unwrap_or_else(|e| e.into_inner());
    match t.back() {
        Some(l) => {
            let l: String = l.chars().take(300).collect();
            format!("; last output: {l}")
        }
        None => String::new(),
    }
}

fn describe(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8]) -> Vec<String> {
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        capture(
            input,
            "stdout",
            "s/f".into(),
            "s-f-1".into(),
            Arc::new(LogSink::off()),
            tail.clone(),
        )
        .await;
        let t = tail.lock().unwrap();
        t.iter().cloned().collect()
    }

    #[tokio::test]
    async fn output_is_split_into_bounded_lines() {
        assert_eq!(
            lines_of(b"one\r\ntwo\n\nthree").await,
            ["one", "two", "", "three"]
        );
        assert!(lines_of(b"").await.is_empty());
        // A line without a newline is cut at MAX_LINE; the rest of it is dropped, not buffered.
        let mut long = vec![b'x'; MAX_LINE * 3];
        long.extend_from_slice(b"\nafter\n");
        let got = lines_of(&long).await;
        assert_eq!(got.len(), 2);
        assert!(got[0].ends_with("…[truncated]"));
        assert_eq!(got[0].len(), MAX_LINE + " …[truncated]".len());
        assert_eq!(got[1], "after");
        // Invalid UTF-8 is replaced, never fatal.
        assert_eq!(lines_of(b"a\xffb\n").await, ["a\u{fffd}b"]);
        // Only the last TAIL_LINES are kept for error messages.
        let many: String = (0..20).map(|i| format!("l{i}\n")).collect();
        let got = lines_of(many.as_bytes()).await;
        assert_eq!(got.len(), TAIL_LINES);
        assert_eq!(got.last().unwrap(), "l19");
    }

    #[test]
    fn exit_statuses_are_described() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(ExitStatus::from_raw(7 << 8)), "status 7");
        assert_eq!(describe(ExitStatus::from_raw(9)), "signal 9");
    }
}
