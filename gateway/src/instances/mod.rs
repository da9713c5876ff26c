//! Process instances: spawning a function's command on a loopback port, waiting for readiness,
//! health probes, capturing its output into the log stream (and a per-instance ring of recent
//! lines for `x-fngate-log-type: tail`), and stopping it (SIGTERM, then SIGKILL after the grace
//! period) so that no child outlives the gateway.
//!
//! The scheduler decides *when* an instance starts or stops; this module only carries that out and
//! reports back (`FunctionRuntime::instance_ready` / `instance_gone`). One tokio task supervises
//! each process from spawn to reaping.

pub mod probe;
mod session;

pub use session::{ExecContext, ExecEnv, Pty, SessionChild, SessionIo};

use crate::config::ProcessSpec;
use crate::scheduler::{ColdStart, FunctionRuntime, Gone, Instance, Launcher};
use crate::telemetry::{self, LogSink};
use arc_swap::ArcSwap;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::task::TaskTracker;

/// Longest instance output line kept; longer ones are cut (and say so).
const MAX_LINE: usize = 16 * 1024;
/// Output lines kept per instance at least (start-failure messages use the last one).
const TAIL_LINES: usize = 8;
/// Bytes of an invocation's output `x-fngate-log-type: tail` returns (as Function Compute does);
/// each instance's ring keeps at least this much of its latest output.
pub const TAIL_BYTES: usize = 4096;
/// Longest a tail request waits for output already written to the pipes to be read.
const TAIL_SETTLE: Duration = Duration::from_millis(50);
/// Longest a start failure waits for the exited process's remaining output to be read.
const EXIT_OUTPUT_WAIT: Duration = Duration::from_millis(500);
/// Start-up probes run every `STARTUP_PROBE_FIRST` while the port refuses connections (a refused
/// loopback connect costs microseconds, and noticing the port late is most of the gateway's
/// share of a cold start). Once something listens but is not ready yet (a model still loading
/// behind a 503), probes back off to `STARTUP_PROBE_MAX`, never above the configured interval.
const STARTUP_PROBE_FIRST: Duration = Duration::from_millis(1);
const STARTUP_PROBE_MAX: Duration = Duration::from_millis(5);

/// Starts and supervises process instances for every function.
#[derive(Debug)]
pub struct ProcessLauncher {
    /// Shared with every capture task, so a reload re-routes running instances' output too.
    log: Arc<ArcSwap<LogSink>>,
    /// Each live instance's recent output, by instance id (for log tails).
    outputs: Outputs,
    tasks: TaskTracker,
    closing: AtomicBool,
    /// Process groups alive now, for the last-resort kill at shutdown.
    groups: Groups,
    /// Each live instance's working directory and environment, for instance login.
    contexts: Contexts,
}

/// Something kept for each live instance, by instance id.
#[derive(Debug)]
struct ByInstance<T>(Arc<Mutex<HashMap<Arc<str>, Arc<T>>>>);

impl<T> Clone for ByInstance<T> {
    fn clone(&self) -> Self {
        ByInstance(self.0.clone())
    }
}

impl<T> Default for ByInstance<T> {
    fn default() -> Self {
        ByInstance(Arc::default())
    }
}

impl<T> ByInstance<T> {
    fn set(&self, id: &Arc<str>, v: Option<Arc<T>>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match v {
            Some(v) => m.insert(id.clone(), v),
            None => m.remove(id),
        };
    }

    fn get(&self, id: &str) -> Option<Arc<T>> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(id).cloned()
    }
}

/// The output rings of live instances.
type Outputs = ByInstance<OutputRing>;
/// The live instances' login contexts.
type Contexts = ByInstance<ExecContext>;

/// An instance's latest output lines, numbered, so a request can take the lines printed since it
/// started on the instance. Written by the capture tasks; read only by tail requests.
#[derive(Debug, Default)]
pub struct OutputRing {
    /// The number the next line gets.
    next: AtomicU64,
    lines: Mutex<RingLines>,
    /// Duplicates of the read ends of the instance's stdout and stderr pipes: what is still
    /// unread in them (FIONREAD) is output the ring does not have yet.
    pipes: Mutex<Vec<OwnedFd>>,
}

#[derive(Debug, Default)]
struct RingLines {
    lines: VecDeque<(u64, String)>,
    bytes: usize,
}

impl OutputRing {
    fn push(&self, line: String) {
        let mut r = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let seq = self.next.load(Ordering::Relaxed);
        r.bytes += line.len() + 1;
        r.lines.push_back((seq, line));
        // Keep at least TAIL_BYTES and TAIL_LINES; drop older lines beyond both.
        while r.lines.len() > TAIL_LINES {
            let front = r.lines.front().map_or(0, |(_, l)| l.len() + 1);
            if r.bytes - front < TAIL_BYTES {
                break;
            }
            r.bytes -= front;
            r.lines.pop_front();
        }
        self.next.store(seq + 1, Ordering::Release);
    }

    /// The number the next line will get: a request's starting point.
    pub fn seq(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// The last `TAIL_BYTES` of the lines numbered `from` and later, each ending in a newline
    /// (cut at a character boundary, so possibly starting inside a line).
    pub fn since(&self, from: u64) -> Vec<u8> {
        let r = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (seq, line) in &r.lines {
            if *seq >= from {
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        drop(r);
        if out.len() > TAIL_BYTES {
            let mut cut = out.len() - TAIL_BYTES;
            // Lines are valid UTF-8: skip continuation bytes to the next character.
            while cut < out.len() && (out[cut] & 0xC0) == 0x80 {
                cut += 1;
            }
            out.drain(..cut);
        }
        out
    }

    /// Waits (at most `TAIL_SETTLE`) until what the instance wrote before now has been read into
    /// the ring: the backend writes its lines before its response, but the gateway reads the
    /// pipes and the response on different tasks.
    pub async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + TAIL_SETTLE;
        loop {
            let unread: u64 = {
                let pipes = self.pipes.lock().unwrap_or_else(|e| e.into_inner());
                pipes
                    .iter()
                    .map(|p| rustix::io::ioctl_fionread(p).unwrap_or(0))
                    .sum()
            };
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            // A capture task may be between reading the pipe and pushing its lines.
            tokio::time::sleep(Duration::from_millis(1)).await;
            if unread == 0 {
                return;
            }
        }
    }

    fn last(&self) -> Option<String> {
        let r = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        r.lines.back().map(|(_, l)| l.chars().take(300).collect())
    }
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
            log: Arc::new(ArcSwap::from_pointee(log)),
            outputs: Outputs::default(),
            tasks: TaskTracker::new(),
            closing: AtomicBool::new(false),
            groups: Groups::default(),
            contexts: Contexts::default(),
        })
    }

    /// Where instance output goes; follows the config's log settings on reload (running
    /// instances included).
    pub fn set_log(&self, log: LogSink) {
        self.log.store(Arc::new(log));
    }

    /// The recent output of a live process instance (none for static endpoints).
    pub fn output(&self, instance: &str) -> Option<Arc<OutputRing>> {
        self.outputs.get(instance)
    }

    /// The working directory and environment of a live process instance (none for static
    /// endpoints and instances that have stopped).
    pub fn exec_context(&self, instance: &str) -> Option<Arc<ExecContext>> {
        self.contexts.get(instance)
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
        let log = self.log.clone();
        let groups = self.groups.clone();
        let outputs = self.outputs.clone();
        let contexts = self.contexts.clone();
        self.tasks.spawn(async move {
            supervise(log, groups, outputs, contexts, function, inst, spec).await;
        });
    }
}

/// One instance from spawn to reaping.
async fn supervise(
    log: Arc<ArcSwap<LogSink>>,
    groups: Groups,
    outputs: Outputs,
    contexts: Contexts,
    function: Arc<FunctionRuntime>,
    inst: Arc<Instance>,
    spec: Arc<ProcessSpec>,
) {
    let t0 = Instant::now();
    let fid = function.spec().id.clone();
    let service = function.spec().service.clone();
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
    let env = instance_env(&spec, &fid, &inst, port);
    let mut child = match spawn(&spec, &env) {
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
    let tail = Arc::new(OutputRing::default());
    outputs.set(&inst.id, Some(tail.clone()));
    contexts.set(
        &inst.id,
        Some(Arc::new(ExecContext {
            cwd: spec.cwd.clone(),
            env,
        })),
    );
    let who = Source {
        function: fid.clone(),
        service,
        instance: inst.id.clone(),
    };
    let mut captures = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        tail.watch(&out);
        captures.push(tokio::spawn(capture(
            out,
            "stdout",
            who.clone(),
            log.clone(),
            tail.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        tail.watch(&err);
        captures.push(tokio::spawn(capture(err, "stderr", who, log, tail.clone())));
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
        Startup::Exited(status) => {
            // Its last words explain the failure: let the capture tasks read the pipes to the
            // end (bounded: a grandchild may still hold them open).
            let _ = tokio::time::timeout(
                EXIT_OUTPUT_WAIT,
                futures_util::future::join_all(captures.iter_mut()),
            )
            .await;
            Gone::StartFailed(format!(
                "exited with {} during start-up{}",
                describe(status),
                last_output(&tail)
            ))
        }
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
    outputs.set(&inst.id, None);
    contexts.set(&inst.id, None);
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

pub(crate) fn signal_group(pgid: u32, sig: rustix::process::Signal) {
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

/// The environment fngate gives an instance: the inherited base variables, the function's env,
/// the port, the instance's identity and its GPU share.
fn instance_env(spec: &ProcessSpec, function: &str, inst: &Instance, port: u16) -> ExecEnv {
    let mut env: ExecEnv = crate::config::BASE_ENV
        .iter()
        .filter_map(|name| std::env::var_os(name).map(|v| ((*name).into(), v)))
        .collect();
    env.extend(spec.env.iter().map(|(k, v)| (k.into(), v.into())));
    env.push((spec.port_env.clone().into(), port.to_string().into()));
    env.push(("FNGATE_FUNCTION".into(), function.into()));
    env.push(("FNGATE_INSTANCE_ID".into(), (*inst.id).into()));
    env.push(("FNGATE_INSTANCE_KIND".into(), inst.kind().as_str().into()));
    if let Some(share) = &inst.gpu {
        env.extend(share.env().into_iter().map(|(k, v)| (k.into(), v.into())));
    }
    env
}

fn spawn(spec: &ProcessSpec, env: &ExecEnv) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.command[0]);
    cmd.args(&spec.command[1..])
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so stopping it stops whatever it started too.
        .process_group(0)
        // A safety net: if the supervising task is dropped, the child is killed.
        .kill_on_drop(true);
    die_with_gateway(&mut cmd, false);
    cmd.spawn()
}

/// Makes the child die when the gateway does; with `login_tty`, the child also starts a session
/// whose controlling terminal is its stdin (a PTY slave).
#[allow(unsafe_code)]
fn die_with_gateway(cmd: &mut Command, login_tty: bool) {
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (setsid, ioctl, prctl, getppid); it allocates nothing and
    // takes no locks. fd 0 is open in the child (std set up stdin before running the hook).
    unsafe {
        cmd.pre_exec(move || {
            if login_tty {
                rustix::process::setsid()?;
                // fd 0 is the PTY slave (the command's stdin) by now.
                rustix::process::ioctl_tiocsctty(std::os::fd::BorrowedFd::borrow_raw(0))?;
            }
            // If the gateway dies without stopping its instances (SIGKILL), the kernel ends them.
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The gateway may have died between fork and prctl: then nobody would send it.
            if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
                return Err(std::io::Error::other("the gateway exited during spawn"));
            }
            Ok(())
        });
    }
}

/// Whose output a capture task reads.
#[derive(Debug, Clone)]
struct Source {
    function: String,
    service: String,
    instance: Arc<str>,
}

impl OutputRing {
    fn watch(&self, pipe: &impl AsFd) {
        match rustix::io::dup(pipe) {
            Ok(fd) => self
                .pipes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(fd),
            // Tails then only miss the settle wait; not worth failing the instance for.
            Err(e) => tracing::debug!("cannot duplicate an instance pipe: {e}"),
        }
    }
}

/// Forwards an instance's output, line by line, into the log stream and the instance's ring.
async fn capture(
    stream: impl AsyncRead + Unpin,
    name: &'static str,
    who: Source,
    log: Arc<ArcSwap<LogSink>>,
    tail: Arc<OutputRing>,
) {
    let Source {
        function,
        service,
        instance,
    } = who;
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
        log.load().emit_for(
            Some(&service),
            &telemetry::InstanceLog {
                ts: telemetry::Timestamp::now(),
                kind: "instance_log",
                function: &function,
                instance_id: &instance,
                stream: name,
                line: &line,
            },
        );
        tail.push(line);
        if eof {
            return;
        }
    }
}

fn last_output(tail: &OutputRing) -> String {
    match tail.last() {
        Some(l) => format!("; last output: {l}"),
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

    async fn ring_of(input: &[u8]) -> Arc<OutputRing> {
        let tail = Arc::new(OutputRing::default());
        let who = Source {
            function: "s/f".into(),
            service: "s".into(),
            instance: "s-f-1".into(),
        };
        let log = Arc::new(ArcSwap::from_pointee(LogSink::off()));
        capture(input, "stdout", who, log, tail.clone()).await;
        tail
    }

    async fn lines_of(input: &[u8]) -> Vec<String> {
        let tail = ring_of(input).await;
        let t = tail.lines.lock().unwrap();
        t.lines.iter().map(|(_, l)| l.clone()).collect()
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
        // Short lines: all of the last TAIL_BYTES are kept.
        let many: String = (0..20).map(|i| format!("l{i}\n")).collect();
        let got = lines_of(many.as_bytes()).await;
        assert_eq!(got.len(), 20);
        // Long lines: at least TAIL_LINES and TAIL_BYTES, older ones dropped.
        let many: String = (0..20)
            .map(|i| format!("{i:04}{}\n", "x".repeat(996)))
            .collect();
        let got = lines_of(many.as_bytes()).await;
        assert_eq!(got.len(), TAIL_LINES);
        assert!(got.last().unwrap().starts_with("0019"));
    }

    #[tokio::test]
    async fn tails_take_the_lines_since_a_request_started() {
        let ring = OutputRing::default();
        ring.push("before".into());
        let start = ring.seq();
        ring.push("during one".into());
        ring.push("during two".into());
        assert_eq!(ring.since(start), b"during one\nduring two\n");
        assert_eq!(ring.since(ring.seq()), b"");
        // More than TAIL_BYTES since the start: the last TAIL_BYTES, cut at a char boundary.
        let start = ring.seq();
        for i in 0..100 {
            ring.push(format!("é{i:03}{}", "y".repeat(95)));
        }
        let got = ring.since(start);
        assert!(
            got.len() <= TAIL_BYTES && got.len() > TAIL_BYTES - 4,
            "{}",
            got.len()
        );
        let text = String::from_utf8(got).expect("cut at a character boundary");
        assert!(text.ends_with(&format!("é099{}\n", "y".repeat(95))));
        // No pipes: settling returns at once.
        ring.settle().await;
    }

    #[test]
    fn exit_statuses_are_described() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(ExitStatus::from_raw(7 << 8)), "status 7");
        assert_eq!(describe(ExitStatus::from_raw(9)), "signal 9");
    }
}
