//! The per-invocation log line, the sinks that write log lines without ever blocking a request,
//! and the routing of each line to its sinks (global, or per service).
//!
//! Each sink (stdout, a size-rotated file) owns a bounded channel and one writer thread that
//! batches lines into its target. When a sink cannot keep up (a stuck pipe, a full disk) lines are
//! dropped and counted (`fngate_log_lines_dropped_total{sink}`) instead of stalling the request
//! path. A line is serialised once, whatever the number of sinks it goes to.

use serde::Serialize;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, Weak};

/// Lines a sink buffers before it drops.
pub const LOG_BUFFER_LINES: usize = 16_384;
/// A writer thread writes at most this much in one batch.
const BATCH_BYTES: usize = 60 * 1024;

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
    tx: SyncSender<String>,
    label: &'static str,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    /// A sink writing JSON lines to stdout from a dedicated thread.
    pub fn stdout() -> Arc<Sink> {
        Sink::spawn("stdout", LOG_BUFFER_LINES, Stdout)
    }

    /// A size-rotated file sink. The file is opened (its directory created) before this returns,
    /// so a path that cannot be written is an error now, at start-up or reload, not later.
    pub fn file(spec: &FileTarget) -> std::io::Result<Arc<Sink>> {
        let mut target = spec.clone();
        target.open()?;
        Ok(Sink::spawn("file", LOG_BUFFER_LINES, target))
    }

    fn spawn(label: &'static str, capacity: usize, target: impl Target) -> Arc<Sink> {
        let (tx, rx) = sync_channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        std::thread::Builder::new()
            .name(format!("fngate-log-{label}"))
            .spawn(move || writer(rx, target, label, d))
            .expect("spawn log writer thread");
        Arc::new(Sink { tx, label, dropped })
    }

    /// Hands a line to the writer; never waits. A full buffer drops the line and counts it.
    pub fn send(&self, line: String) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            dropped(self.label, &self.dropped, 1);
        }
    }

    /// Lines this sink has dropped (buffer full or write failed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn dropped(label: &'static str, count: &AtomicU64, n: u64) {
    count.fetch_add(n, Ordering::Relaxed);
    metrics::counter!(super::LOG_LINES_DROPPED, "sink" => label).increment(n);
}

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
        let Ok(text) = serde_json::to_string(line) else {
            return;
        };
        // One copy per extra sink; with a single sink (the default) nothing is copied.
        for s in rest {
            s.send(text.clone());
        }
        last.send(text);
    }
}

/// Sinks shared across configuration generations: a reload that keeps a file path keeps its
/// writer (no reopen, no lost buffer); a path no generation uses any more is closed when the
/// last generation holding it goes away.
#[derive(Debug)]
pub struct SinkRegistry {
    stdout: Arc<Sink>,
    files: Mutex<HashMap<PathBuf, (FileTarget, Weak<Sink>)>>,
}

impl SinkRegistry {
    pub fn new() -> Self {
        SinkRegistry {
            stdout: Sink::stdout(),
            files: Mutex::new(HashMap::new()),
        }
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

impl Default for SinkRegistry {
    fn default() -> Self {
        SinkRegistry::new()
    }
}

/// What a writer thread writes batches of whole lines (each ending in `\n`) into.
trait Target: Send + 'static {
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

/// One writer thread: drains the channel in batches; a failed write drops the batch (counted),
/// says so once on stderr, and the next batch tries again (a file is reopened).
fn writer(
    rx: Receiver<String>,
    mut target: impl Target,
    label: &'static str,
    count: Arc<AtomicU64>,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        buf.clear();
        buf.extend_from_slice(first.as_bytes());
        buf.push(b'\n');
        let mut lines = 1;
        // Drain what is already queued so a burst costs one write.
        while buf.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(line) => {
                    buf.extend_from_slice(line.as_bytes());
                    buf.push(b'\n');
                    lines += 1;
                }
                Err(_) => break,
            }
        }
        match target.write_lines(&buf) {
            Ok(()) => {
                if failing {
                    tracing::info!(sink = label, "log sink writes again");
                    failing = false;
                }
            }
            Err(e) => {
                // Keep draining so senders never block; the lines are lost and counted.
                dropped(label, &count, lines);
                if !failing {
                    tracing::warn!(sink = label, "log sink cannot write, dropping lines: {e}");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

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
        let (sink, entered, written) = stuck(&gate, 4);
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
        // The channel holds four lines: the other 95 are dropped and counted.
        assert_eq!(sink.dropped(), 95);
        drop(hold);
        loop {
            let n = written
                .lock()
                .unwrap()
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
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
