//! The per-invocation log line, the sinks that write log lines without ever blocking a request,
//! and the routing of each line to its sinks (global, or per service).
//!
//! Each sink (stdout, a size-rotated file) owns a bounded byte buffer and one writer thread that
//! takes the whole buffer every few milliseconds and writes it in one go: a request appends its
//! line under a short lock and never wakes anyone. When a sink cannot keep up (a stuck pipe, a
//! full disk) lines are dropped and counted (`fngate_log_lines_dropped_total{sink}`) instead of
//! stalling the request path. A line is serialised once, whatever the number of sinks it goes to.

use serde::Serialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Bytes a sink buffers before it drops lines (some 20,000 invocation lines).
pub const LOG_BUFFER_BYTES: usize = 8 << 20;
/// A writer thread writes what has accumulated this long after the first line of a round. Lines
/// are never handed over one at a time: a wake-up per line would cost the request path a futex
/// call and, on a busy core, a context switch.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Past this many buffered bytes the writer is woken at once instead of at its next tick.
const FLUSH_BYTES: usize = 256 * 1024;

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
    /// Tenant key from a policy plugin's decision, or the bearer-authenticated trigger's name.
    pub tenant: Option<&'a str>,
    /// What the invocation held on its instance (docs/metering.md); null when it got no slot.
    pub usage: Option<&'a crate::metering::Usage>,
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

/// Where a line is written: the bounded hand-off to one writer thread.
#[derive(Debug)]
pub struct Sink {
    shared: Arc<Shared>,
    label: &'static str,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer early (buffer past `FLUSH_BYTES`, a flush request, the sink closing).
    wake: Condvar,
    /// Tells `flush` callers that a write round finished.
    written: Condvar,
    capacity: usize,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    /// Write rounds the writer has finished; `flush` waits for the count to move on.
    rounds: u64,
    /// The writer holds a round's bytes (taken, not yet written).
    writing: bool,
    flush_asked: bool,
    closed: bool,
}

impl Sink {
    /// A sink writing JSON lines to stdout from a dedicated thread.
    pub fn stdout() -> Arc<Sink> {
        Sink::spawn("stdout", LOG_BUFFER_BYTES, Stdout)
    }

    /// A size-rotated file sink. The file is opened (its directory created) before this returns,
    /// so a path that cannot be written is an error now, at start-up or reload, not later.
    pub fn file(spec: &FileTarget) -> std::io::Result<Arc<Sink>> {
        let mut target = spec.clone();
        target.open()?;
        Ok(Sink::spawn("file", LOG_BUFFER_BYTES, target))
    }

    /// An OTLP logs sink: each write round becomes one export (or a few) to the collector. A
    /// slow or dead collector fills the buffer and lines are dropped, as for any sink.
    pub fn otlp(spec: &crate::config::OtlpSpec) -> Arc<Sink> {
        Sink::spawn("otlp", LOG_BUFFER_BYTES, super::otlp::LogTarget::new(spec))
    }

    fn spawn(label: &'static str, capacity: usize, target: impl Target) -> Arc<Sink> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
            capacity,
            dropped: AtomicU64::new(0),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name(format!("fngate-log-{label}"))
            .spawn(move || writer(&s, target, label))
            .expect("spawn log writer thread");
        Arc::new(Sink { shared, label })
    }

    /// Appends a line (without its newline) for the writer; never waits for a write. A full
    /// buffer drops the line and counts it.
    pub fn send(&self, line: &[u8]) {
        let sh = &*self.shared;
        let mut p = sh.pending.lock().unwrap_or_else(|e| e.into_inner());
        let len = p.buf.len();
        if len + line.len() + 1 > sh.capacity {
            drop(p);
            dropped(self.label, &sh.dropped, 1);
            return;
        }
        p.buf.extend_from_slice(line);
        p.buf.push(b'\n');
        // Wake the writer for the first line of a round, or early when the round grows large.
        let wake = len == 0 || (len < FLUSH_BYTES && p.buf.len() >= FLUSH_BYTES);
        drop(p);
        if wake {
            sh.wake.notify_one();
        }
    }

    /// Lines this sink has dropped (buffer full or write failed).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Writes what is buffered now and waits (up to `timeout`) until it is written: at shutdown,
    /// so the last lines are not lost with the process.
    pub fn flush(&self, timeout: Duration) {
        let sh = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut p = sh.pending.lock().unwrap_or_else(|e| e.into_inner());
        // A round under way took its bytes before this call: the lines buffered now go in the next.
        let target = p.rounds + 1 + u64::from(p.writing);
        p.flush_asked = true;
        sh.wake.notify_one();
        drop(wait_until(&sh.written, p, deadline, |p| {
            p.rounds >= target || p.closed
        }));
    }
}

/// Waits on `cv` until `done` holds or `deadline` passes, and hands the lock back.
fn wait_until<'a>(
    cv: &Condvar,
    mut p: MutexGuard<'a, Pending>,
    deadline: Instant,
    done: impl Fn(&Pending) -> bool,
) -> MutexGuard<'a, Pending> {
    while !done(&p) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        p = cv
            .wait_timeout(p, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    p
}

impl Drop for Sink {
    /// The writer writes what is left and ends.
    fn drop(&mut self) {
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        p.closed = true;
        drop(p);
        self.shared.wake.notify_one();
    }
}

fn dropped(label: &'static str, count: &AtomicU64, n: u64) {
    count.fetch_add(n, Ordering::Relaxed);
    metrics::counter!(super::LOG_LINES_DROPPED, "sink" => label).increment(n);
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}
/// A scratch buffer grown past this by one huge line is given back.
const SCRATCH_KEEP: usize = 64 * 1024;

/// Routes each line to its sinks: the service's own, plus the global ones unless the service
/// opted out (`inherit = false`). Cloning is a reference-count bump.
#[derive(Debug, Clone, Default)]
pub struct LogSink {
    routes: Option<Arc<Routes>>,
}

#[derive(Debug, Default)]
struct Routes {
    global: Vec<Arc<Sink>>,
    /// Only services with their own `log` settings; the lists are final (deduplicated).
    services: HashMap<String, Vec<Arc<Sink>>>,
}

impl LogSink {
    /// A router writing everything to `sink` (the historical stdout-only behaviour).
    pub fn single(sink: Arc<Sink>) -> Self {
        LogSink::routed(vec![sink], HashMap::new())
    }

    /// `global` gets every line of services not in `services`; a service in `services` gets
    /// exactly its list (the caller adds the global sinks when the service inherits them).
    pub fn routed(global: Vec<Arc<Sink>>, services: HashMap<String, Vec<Arc<Sink>>>) -> Self {
        let dedup = |mut v: Vec<Arc<Sink>>| {
            let mut out: Vec<Arc<Sink>> = Vec::with_capacity(v.len());
            for s in v.drain(..) {
                if !out.iter().any(|o| Arc::ptr_eq(o, &s)) {
                    out.push(s);
                }
            }
            out
        };
        let global = dedup(global);
        let services: HashMap<_, _> = services.into_iter().map(|(k, v)| (k, dedup(v))).collect();
        if global.is_empty() && services.values().all(Vec::is_empty) {
            return LogSink::off();
        }
        LogSink {
            routes: Some(Arc::new(Routes { global, services })),
        }
    }

    /// A sink that discards everything (telemetry.log.stdout = false and no file).
    pub fn off() -> Self {
        LogSink { routes: None }
    }

    /// True when no line goes anywhere (no stdout, no file, globally or per service).
    pub fn is_off(&self) -> bool {
        self.routes.is_none()
    }

    /// A line that belongs to no service (event webhooks): the global sinks.
    pub fn emit<T: Serialize>(&self, line: &T) {
        self.emit_for(None, line);
    }

    /// A line of `service` (a function's invocation or an instance's output).
    pub fn emit_for<T: Serialize>(&self, service: Option<&str>, line: &T) {
        let Some(r) = &self.routes else { return };
        let sinks = match service {
            Some(s) if !r.services.is_empty() => r.services.get(s).unwrap_or(&r.global),
            _ => &r.global,
        };
        let Some((last, rest)) = sinks.split_last() else {
            return;
        };
        // Serialised once into this thread's scratch buffer, then copied into each sink's.
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            if serde_json::to_writer(&mut *buf, line).is_err() {
                return;
            }
            for s in rest {
                s.send(buf);
            }
            last.send(buf);
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::with_capacity(1024);
            }
        });
    }
}

/// Sinks shared across configuration generations: a reload that keeps a file path keeps its
/// writer (no reopen, no lost buffer); a path no generation uses any more is closed when the
/// last generation holding it goes away.
#[derive(Debug)]
pub struct SinkRegistry {
    stdout: Arc<Sink>,
    files: Mutex<HashMap<PathBuf, (FileTarget, Weak<Sink>)>>,
    /// The OTLP logs sink, kept while a generation uses the same collector.
    otlp: Mutex<Option<(crate::config::OtlpSpec, Weak<Sink>)>>,
}

impl SinkRegistry {
    pub fn new() -> Self {
        SinkRegistry {
            stdout: Sink::stdout(),
            files: Mutex::new(HashMap::new()),
            otlp: Mutex::new(None),
        }
    }

    /// The OTLP logs sink for `spec`, shared by every service that sends its lines there.
    pub fn otlp(&self, spec: &crate::config::OtlpSpec) -> Arc<Sink> {
        let mut otlp = self.otlp.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, w)) = &*otlp
            && s == spec
            && let Some(sink) = w.upgrade()
        {
            return sink;
        }
        let sink = Sink::otlp(spec);
        *otlp = Some((spec.clone(), Arc::downgrade(&sink)));
        sink
    }

    pub fn stdout(&self) -> Arc<Sink> {
        self.stdout.clone()
    }

    /// The file sink for `spec`, reused when a live one writes the same path with the same
    /// rotation settings (changed settings start a new writer once the old one is released).
    pub fn file(&self, spec: &FileTarget) -> std::io::Result<Arc<Sink>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.retain(|_, (_, w)| w.strong_count() > 0);
        if let Some((t, w)) = files.get(&spec.path)
            && t.max_size == spec.max_size
            && t.keep == spec.keep
            && let Some(s) = w.upgrade()
        {
            return Ok(s);
        }
        let sink = Sink::file(spec)?;
        files.insert(spec.path.clone(), (spec.clone(), Arc::downgrade(&sink)));
        Ok(sink)
    }
}

impl SinkRegistry {
    /// Writes every live sink's buffered lines, waiting up to `timeout` for each (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        let mut files: Vec<Arc<Sink>> = {
            let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            files.values().filter_map(|(_, w)| w.upgrade()).collect()
        };
        let otlp = self.otlp.lock().unwrap_or_else(|e| e.into_inner());
        files.extend(otlp.as_ref().and_then(|(_, w)| w.upgrade()));
        drop(otlp);
        for s in files.iter().chain([&self.stdout]) {
            s.flush(timeout);
        }
    }
}

impl Default for SinkRegistry {
    fn default() -> Self {
        SinkRegistry::new()
    }
}

/// What a writer thread writes batches of whole lines (each ending in `\n`) into.
pub(super) trait Target: Send + 'static {
    fn write_lines(&mut self, buf: &[u8]) -> std::io::Result<()>;
}

struct Stdout;

impl Target for Stdout {
    fn write_lines(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf).and_then(|()| out.flush())
    }
}

/// A file that is rotated by size: when the next line would take it past `max_size`, `f` becomes
/// `f.1`, `f.1` becomes `f.2` … up to `f.{keep}` (the oldest is deleted) and a new `f` is opened.
/// With `keep = 0` the file is simply started again.
#[derive(Debug, Clone)]
pub struct FileTarget {
    pub path: PathBuf,
    pub max_size: u64,
    pub keep: u32,
    file: Option<Arc<File>>,
    size: u64,
}

impl FileTarget {
    pub fn new(path: PathBuf, max_size: u64, keep: u32) -> Self {
        FileTarget {
            path,
            max_size,
            keep,
            file: None,
            size: 0,
        }
    }

    fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = f.metadata()?.len();
        self.file = Some(Arc::new(f));
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            // Nothing kept: start the file again.
            File::create(&self.path)?;
        } else {
            let _ = std::fs::remove_file(rotated(&self.path, self.keep));
            for i in (1..self.keep).rev() {
                let from = rotated(&self.path, i);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, i + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.open()
    }

    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            self.open()?;
        }
        let f = self.file.as_ref().expect("opened above");
        if let Err(e) = (&**f).write_all(buf) {
            // Reopened on the next batch (the file may have been removed or the disk freed).
            self.file = None;
            return Err(e);
        }
        self.size += buf.len() as u64;
        Ok(())
    }
}

/// `fngate.log` → `fngate.log.{n}`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl Target for FileTarget {
    fn write_lines(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // Rotate between lines, never inside one: a line longer than max_size gets a file alone.
        let mut seg_start = 0;
        let mut line_start = 0;
        for end in buf
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .map(|(i, _)| i + 1)
        {
            let line = (end - line_start) as u64;
            let used = self.size + (line_start - seg_start) as u64;
            if used > 0 && used + line > self.max_size {
                self.append(&buf[seg_start..line_start])?;
                seg_start = line_start;
                if self.size > 0 {
                    self.rotate()?;
                }
            }
            line_start = end;
        }
        self.append(&buf[seg_start..line_start])
    }
}

/// One writer thread: `FLUSH_INTERVAL` after the first line of a round (sooner when the buffer
/// grows past `FLUSH_BYTES` or a flush is asked) it takes the whole buffer and writes it; a
/// failed write drops those lines (counted), says so once on stderr, and the next round tries
/// again (a file is reopened). Ends when the sink is dropped, after a last write.
fn writer(sh: &Shared, mut target: impl Target, label: &'static str) {
    let mut spare = Vec::with_capacity(64 * 1024);
    let mut failing = false;
    loop {
        let mut p = sh.pending.lock().unwrap_or_else(|e| e.into_inner());
        // Idle: no timer; the first line of a round wakes the writer.
        while p.buf.is_empty() && !p.closed && !p.flush_asked {
            p = sh.wake.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        // Then the round gathers lines for a tick: under load one write carries many lines,
        // instead of the writer spinning through one small write after another.
        let tick = Instant::now() + FLUSH_INTERVAL;
        let mut p = wait_until(&sh.wake, p, tick, |p| {
            p.buf.len() >= FLUSH_BYTES || p.closed || p.flush_asked
        });
        p.flush_asked = false;
        let closed = p.closed;
        // The emptied buffer of the last round takes the new lines: no allocation per round.
        std::mem::swap(&mut p.buf, &mut spare);
        p.writing = true;
        drop(p);
        if !spare.is_empty() {
            match target.write_lines(&spare) {
                Ok(()) => {
                    if failing {
                        tracing::info!(sink = label, "log sink writes again");
                        failing = false;
                    }
                }
                Err(e) => {
                    let lines = spare.iter().filter(|&&b| b == b'\n').count() as u64;
                    dropped(label, &sh.dropped, lines);
                    if !failing {
                        tracing::warn!(sink = label, "log sink cannot write, dropping lines: {e}");
                        failing = true;
                    }
                }
            }
            spare.clear();
            // A burst may have grown the buffer a lot; keep a moderate one between bursts.
            if spare.capacity() > 4 * FLUSH_BYTES {
                spare = Vec::with_capacity(64 * 1024);
            }
        }
        let mut p = sh.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.rounds += 1;
        p.writing = false;
        drop(p);
        sh.written.notify_all();
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "fngate-log-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn files_rotate_by_size_and_keep_the_newest() {
        let dir = temp_dir("rotate");
        let path = dir.join("logs/fngate.log");
        let mut t = FileTarget::new(path.clone(), 100, 2);
        t.open().unwrap();
        // 10 lines of 40 bytes: two lines fit in 100 bytes, so five files' worth.
        for i in 0..10 {
            let line = format!("{{\"n\":{i:02},\"pad\":\"{}\"}}\n", "x".repeat(22));
            assert_eq!(line.len(), 40);
            t.write_lines(line.as_bytes()).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert!(read(&path).contains("\"n\":08") && read(&path).contains("\"n\":09"));
        assert!(read(&rotated(&path, 1)).contains("\"n\":07"));
        assert!(read(&rotated(&path, 2)).contains("\"n\":05"));
        assert!(!rotated(&path, 3).exists(), "only `keep` rotated files");
        for p in [path.clone(), rotated(&path, 1), rotated(&path, 2)] {
            let text = read(&p);
            assert!(text.len() <= 100, "{}: {}", p.display(), text.len());
            assert!(text.lines().all(|l| l.starts_with('{') && l.ends_with('}')));
        }

        // A batch rotates between its lines; a line longer than max_size gets a file alone.
        let mut batch = String::new();
        for i in 0..3 {
            batch.push_str(&format!(
                "{{\"b\":{i:02},\"pad\":\"{}\"}}\n",
                "y".repeat(22)
            ));
        }
        let long = format!("{{\"long\":\"{}\"}}\n", "z".repeat(200));
        batch.push_str(&long);
        t.write_lines(batch.as_bytes()).unwrap();
        assert_eq!(read(&path), long);
        assert!(read(&rotated(&path, 1)).contains("\"b\":02"));

        // keep = 0: the file starts again.
        let p0 = dir.join("zero.log");
        let mut z = FileTarget::new(p0.clone(), 50, 0);
        z.open().unwrap();
        z.write_lines(&[b'a'; 39].iter().chain(b"\n").copied().collect::<Vec<u8>>())
            .unwrap();
        z.write_lines(b"second line, long enough to rotate\n")
            .unwrap();
        assert_eq!(read(&p0), "second line, long enough to rotate\n");
        assert!(!rotated(&p0, 1).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reopening_continues_the_size_count() {
        let dir = temp_dir("reopen");
        let path = dir.join("a.log");
        std::fs::write(&path, vec![b'x'; 90]).unwrap();
        let mut t = FileTarget::new(path.clone(), 100, 1);
        t.open().unwrap();
        t.write_lines(b"0123456789012345\n").unwrap();
        assert_eq!(std::fs::read(rotated(&path, 1)).unwrap().len(), 90);
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789012345\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A target that blocks until released, like a stuck pipe.
    struct Stuck {
        gate: Arc<Mutex<()>>,
        entered: Arc<AtomicU64>,
        written: Arc<Mutex<Vec<u8>>>,
    }
    impl Target for Stuck {
        fn write_lines(&mut self, buf: &[u8]) -> std::io::Result<()> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let _held = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(())
        }
    }

    fn stuck(
        gate: &Arc<Mutex<()>>,
        capacity: usize,
    ) -> (Arc<Sink>, Arc<AtomicU64>, Arc<Mutex<Vec<u8>>>) {
        let entered = Arc::new(AtomicU64::new(0));
        let written = Arc::new(Mutex::new(Vec::new()));
        let t = Stuck {
            gate: gate.clone(),
            entered: entered.clone(),
            written: written.clone(),
        };
        (Sink::spawn("test", capacity, t), entered, written)
    }

    #[test]
    fn a_blocked_sink_never_blocks_the_caller_and_counts_drops() {
        let gate = Arc::new(Mutex::new(()));
        let hold = gate.lock().unwrap();
        // Room for four of the 8-byte lines `{"i":1}` … `{"i":4}`.
        let (sink, entered, written) = stuck(&gate, 32);
        let log = LogSink::single(sink.clone());
        // The writer takes the first line and blocks writing it.
        log.emit(&serde_json::json!({ "i": 0 }));
        let deadline = Instant::now() + Duration::from_secs(5);
        while entered.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "writer never wrote");
            std::thread::sleep(Duration::from_millis(1));
        }
        let t0 = Instant::now();
        for i in 1..100 {
            log.emit(&serde_json::json!({ "i": i }));
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "emit waited");
        // The buffer holds four lines: the other 95 are dropped and counted.
        assert_eq!(sink.dropped(), 95);
        drop(hold);
        loop {
            let n = lines_in(&written);
            if n == 5 {
                break;
            }
            assert!(Instant::now() < deadline, "written {n}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert!(
            text.lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        );
    }

    fn lines_in(written: &Mutex<Vec<u8>>) -> usize {
        written
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    #[test]
    fn flush_writes_what_is_buffered_before_it_returns() {
        let gate = Arc::new(Mutex::new(()));
        let (sink, _, written) = stuck(&gate, 1 << 20);
        for round in 0..3 {
            for i in 0..100 {
                sink.send(format!("{{\"r\":{round},\"i\":{i}}}").as_bytes());
            }
            sink.flush(Duration::from_secs(5));
            let n = lines_in(&written);
            assert_eq!(n, 100 * (round + 1));
        }
        // An idle sink flushes at once.
        let t0 = Instant::now();
        sink.flush(Duration::from_secs(5));
        assert!(t0.elapsed() < Duration::from_secs(1));
        // Dropping the sink writes the rest.
        sink.send(b"last");
        drop(sink);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !written.lock().unwrap().ends_with(b"last\n") {
            assert!(Instant::now() < deadline, "the last line was not written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A target whose writes fail: lines are dropped and counted, never retried forever.
    struct Broken;
    impl Target for Broken {
        fn write_lines(&mut self, _: &[u8]) -> std::io::Result<()> {
            Err(std::io::Error::other("disk full"))
        }
    }

    #[test]
    fn failed_writes_are_counted_as_drops() {
        let sink = Sink::spawn("test", 1024, Broken);
        let log = LogSink::single(sink.clone());
        for i in 0..10 {
            log.emit(&serde_json::json!({ "i": i }));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.dropped() < 10 {
            assert!(Instant::now() < deadline, "dropped {}", sink.dropped());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn lines_follow_their_service() {
        let gate = Arc::new(Mutex::new(()));
        let (global, _, g) = stuck(&gate, 64);
        let (sa, _, a) = stuck(&gate, 64);
        let (sb, _, b) = stuck(&gate, 64);
        let mut services = HashMap::new();
        // `a` inherits the global sinks (listed twice: written once), `b` does not.
        services.insert("a".to_string(), vec![sa, global.clone(), global.clone()]);
        services.insert("b".to_string(), vec![sb]);
        let log = LogSink::routed(vec![global], services);
        log.emit_for(Some("a"), &"from-a");
        log.emit_for(Some("b"), &"from-b");
        log.emit_for(Some("other"), &"from-other");
        log.emit(&"no-service");
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = |v: &Arc<Mutex<Vec<u8>>>| String::from_utf8(v.lock().unwrap().clone()).unwrap();
        while text(&g).lines().count() < 3 || text(&a).is_empty() || text(&b).is_empty() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(text(&g), "\"from-a\"\n\"from-other\"\n\"no-service\"\n");
        assert_eq!(text(&a), "\"from-a\"\n");
        assert_eq!(text(&b), "\"from-b\"\n");
    }
}
