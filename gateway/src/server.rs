//! Start-up and shutdown of `fngate serve`: secrets, certificates, listeners, signals.

use crate::config::{self, Config};
use crate::listener::{self, ListenerKind, tls};
use crate::policy::PolicyHost;
use crate::state::Gateway;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

/// Connections the admin listener accepts at once, apart from the public cap so that a flood on
/// the public side never locks operators out.
const ADMIN_MAX_CONNECTIONS: usize = 256;
const ADMIN_TOKEN_FILE: &str = "admin-token";
const LISTENERS_FILE: &str = "listeners.json";
const PLUGIN_WATCH_INTERVAL: Duration = Duration::from_secs(1);
const INSTANCE_UPKEEP_INTERVAL: Duration = Duration::from_millis(250);
const TASK_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let s = config.server.clone();
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("cannot create data_dir {}", s.data_dir.display()))?;

    let admin_token = match &s.admin_token {
        Some(t) => t.value.clone(),
        None => generated_admin_token(&s.data_dir)?,
    };

    let (tls_files, watch_files) = match &s.tls {
        Some(files) => (files.clone(), true),
        None => {
            let extra: Vec<String> = [s.listen.ip()]
                .iter()
                .filter(|ip| !ip.is_unspecified())
                .map(|ip| ip.to_string())
                .collect();
            let g = tls::ensure_self_signed(&s.data_dir, &extra)?;
            tracing::info!(
                ca = %g.ca.display(),
                cert = %g.files.cert.display(),
                created = g.created,
                "no [server.tls] configured: serving a certificate from the local CA; clients trust the CA file"
            );
            (g.files, false)
        }
    };
    let store = tls::CertStore::new(tls::load_certified_key(&tls_files)?);
    let acceptor = TlsAcceptor::from(tls::server_config(store.clone()));

    let prometheus =
        crate::telemetry::install_metrics(config.metrics.as_ref().map(|m| (&m.otlp, m.interval)));
    if let Some(m) = &config.metrics {
        tracing::info!(endpoint = %m.otlp.endpoint, protocol = ?m.otlp.protocol, interval = ?m.interval, "metrics are pushed to OTLP");
    }
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs(5));
        loop {
            t.tick().await;
            upkeep.run_upkeep();
        }
    });

    if let Some(t) = &config.traces {
        crate::telemetry::trace::init(&t.otlp, t.sample_ratio)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!(endpoint = %t.otlp.endpoint, protocol = ?t.otlp.protocol, sample_ratio = t.sample_ratio, "invocation traces go to OTLP");
    }
    let limits = s.limits.clone();
    let policy = PolicyHost::new()?;
    let gw = Gateway::new(config, prometheus, admin_token, policy)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    open_queue(&gw).await?;
    let meter = gw.node.meter.clone();
    let dir = s.data_dir.clone();
    tokio::task::spawn_blocking(move || meter.open(&dir))
        .await?
        .map_err(|e| anyhow::anyhow!("usage store: {e}"))?;
    crate::metering::spawn_flusher(gw.node.meter.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let public_conns = Arc::new(Semaphore::new(limits.max_connections));
    let admin_conns = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));

    let public = listener::bind(s.listen)
        .with_context(|| format!("cannot listen on {} (server.listen)", s.listen))?;
    let admin = listener::bind(s.admin_listen)
        .with_context(|| format!("cannot listen on {} (server.admin_listen)", s.admin_listen))?;
    let plaintext = match s.plaintext_listen {
        Some(a) => Some(
            listener::bind(a)
                .with_context(|| format!("cannot listen on {a} (server.plaintext_listen)"))?,
        ),
        None => None,
    };
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let plaintext_addr = plaintext.as_ref().map(|l| l.local_addr()).transpose()?;

    let mut tasks = Vec::new();
    let h = {
        let gw = gw.clone();
        move |c, r| crate::invoker::handle(gw.clone(), c, r)
    };
    tasks.push(tokio::spawn(listener::serve(
        public,
        ListenerKind::Public,
        Some(acceptor.clone()),
        limits.clone(),
        public_conns.clone(),
        shutdown_rx.clone(),
        h.clone(),
    )));
    if let Some(l) = plaintext {
        tasks.push(tokio::spawn(listener::serve(
            l,
            ListenerKind::Plaintext,
            None,
            limits.clone(),
            public_conns.clone(),
            shutdown_rx.clone(),
            h,
        )));
    }
    let ah = {
        let gw = gw.clone();
        move |c, r| crate::admin::handle(gw.clone(), c, r)
    };
    tasks.push(tokio::spawn(listener::serve(
        admin,
        ListenerKind::Admin,
        Some(acceptor),
        limits.clone(),
        admin_conns.clone(),
        shutdown_rx.clone(),
        ah,
    )));
    if watch_files {
        tls::spawn_reloader(store, tls_files.clone(), s.tls_reload_interval);
    }
    spawn_plugin_watcher(gw.clone());
    spawn_instance_upkeep(gw.clone());
    spawn_event_sources(gw.clone());

    write_listeners(&s.data_dir, public_addr, plaintext_addr, admin_addr)?;
    gw.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        public = %public_addr,
        plaintext = ?plaintext_addr,
        admin = %admin_addr,
        functions = gw.runtime().config.functions.len(),
        triggers = gw.runtime().config.triggers.len(),
        "fngate ready"
    );

    wait_for_signals(&gw).await;
    tracing::info!(grace = ?limits.shutdown_grace, "shutting down: no new connections; finishing requests in progress");
    gw.ready.store(false, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    // Every connection holds a permit: getting them all back means every connection has closed.
    let drained = async {
        let _a = public_conns
            .acquire_many(limits.max_connections as u32)
            .await;
        let _b = admin_conns.acquire_many(ADMIN_MAX_CONNECTIONS as u32).await;
    };
    if tokio::time::timeout(limits.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
    // Requests are done: stop every instance fngate started, and wait until each is reaped.
    let rt = gw.runtime();
    for f in &rt.functions {
        f.stop_all();
    }
    let longest_grace = rt
        .config
        .functions
        .iter()
        .filter_map(|f| match &f.backend {
            config::BackendSpec::Process(p) => Some(p.stop_grace),
            _ => None,
        })
        .max()
        .unwrap_or_default();
    gw.launcher
        .shutdown(longest_grace + Duration::from_secs(2))
        .await;
    // Usage up to here (instances' last lifetime included) is written before the process ends.
    gw.node.meter.flush().await;
    // Spans and log lines still buffered go out before the process ends (blocking calls).
    let _ = tokio::task::spawn_blocking(crate::telemetry::trace::shutdown).await;
    let g = gw.clone();
    let _ = tokio::task::spawn_blocking(move || g.flush_logs(Duration::from_secs(2))).await;
    let _ = tokio::task::spawn_blocking(crate::telemetry::otlp::shutdown_metrics).await;
    let _ = std::fs::remove_file(s.data_dir.join(LISTENERS_FILE));
    Ok(())
}

/// Opens the embedded task store, puts tasks a previous process left running back in the queue
/// (at least once), and starts the dispatcher and the retention pruning.
async fn open_queue(gw: &Arc<Gateway>) -> anyhow::Result<()> {
    let q = gw.runtime().config.queue.clone();
    let store: Arc<dyn crate::queue::TaskStore> = match &q.kind {
        crate::config::QueueKind::Embedded => {
            let path = q.path.clone();
            let store = tokio::task::spawn_blocking(move || crate::queue::SqliteStore::open(&path))
                .await
                .context("opening the task store")?
                .with_context(|| format!("cannot open the task store {}", q.path.display()))?;
            Arc::new(store)
        }
        crate::config::QueueKind::Nats { url, stream } => {
            let opts = crate::queue::NatsOptions {
                url: url.clone(),
                stream: stream.clone(),
                retention: q.retention,
                ack_wait_margin: crate::queue::DEFAULT_ACK_WAIT_MARGIN,
            };
            let store = crate::queue::NatsStore::open(&opts)
                .await
                .with_context(|| format!("cannot open the NATS queue (stream {stream})"))?;
            tracing::info!(url, stream, "async tasks are kept in NATS JetStream");
            Arc::new(store)
        }
    };
    let recovered = store
        .recover()
        .await
        .context("recovering tasks left running")?;
    if recovered > 0 {
        tracing::info!(
            recovered,
            "async tasks left running by the previous process are queued again"
        );
    }
    let d = crate::invoker::dispatch::Dispatcher::new(store.clone(), gw);
    let _ = gw.tasks.set(d.clone());
    tokio::spawn(d.clone().sample_depths());
    tokio::spawn(d.run());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TASK_PRUNE_INTERVAL);
        loop {
            tick.tick().await;
            let cut = crate::queue::now_ms().saturating_sub(q.retention.as_millis() as u64);
            match store.prune(cut).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    pruned = n,
                    "finished async tasks past their retention removed"
                ),
                Err(e) => tracing::warn!("pruning finished tasks failed: {e}"),
            }
        }
    });
    Ok(())
}

/// Keeps the broker event-source consumers (`[[event_source]] kind = "nats"`) in step with the
/// config: started at start-up, restarted or stopped when a reload changes them.
fn spawn_event_sources(gw: Arc<Gateway>) {
    tokio::spawn(async move {
        let mut sources = crate::events::brokers::Sources::default();
        let mut generation = None;
        loop {
            let rt = gw.runtime();
            if generation != Some(rt.generation) {
                generation = Some(rt.generation);
                sources.sync(&gw, &rt.config.event_sources);
            }
            drop(rt);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// Drives every function's periodic instance upkeep: scheduled and tracking rules, provisioned
/// targets, idle reclaim, starts that were waiting on capacity, and the probes of static
/// endpoints out of rotation.
fn spawn_instance_upkeep(gw: Arc<Gateway>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INSTANCE_UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = std::time::Instant::now();
            let unix = crate::scheduler::unix_now();
            for f in &gw.runtime().functions {
                f.maintain(now, unix);
                // Static endpoints out of rotation whose cooldown is over (scheduler::health).
                for (inst, path, timeout) in f.probes_due() {
                    let f = f.clone();
                    tokio::spawn(async move {
                        let result = match inst.authority() {
                            Some(a) => {
                                crate::instances::probe::answers(a.as_str(), &path, timeout).await
                            }
                            None => Err("no address".to_string()),
                        };
                        f.probe_result(&inst, result);
                    });
                }
            }
        }
    });
}

/// Reloads on a blocking thread: compiling a changed plugin takes milliseconds to seconds.
pub async fn reload_in_background(gw: &Arc<Gateway>, why: &'static str) {
    let g = gw.clone();
    match tokio::task::spawn_blocking(move || g.reload()).await {
        Ok(Ok(r)) => tracing::info!(generation = r.generation, why, "configuration reloaded"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, why, "configuration reload rejected; nothing changed")
        }
        Err(e) => {
            tracing::error!(error = %e, why, "configuration reload panicked; nothing changed")
        }
    }
}

/// Polls the current plugin files; a changed file reloads the configuration (and with it the
/// plugin). In-flight requests finish on the version they started with.
fn spawn_plugin_watcher(gw: Arc<Gateway>) {
    tokio::spawn(async move {
        let stamps = |gw: &Gateway| -> Vec<Option<(std::time::SystemTime, u64)>> {
            gw.runtime()
                .config
                .plugins
                .iter()
                .map(|p| {
                    std::fs::metadata(&p.path)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())))
                })
                .collect()
        };
        let mut last = (gw.runtime().generation, stamps(&gw));
        let mut tick = tokio::time::interval(PLUGIN_WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = (gw.runtime().generation, stamps(&gw));
            if now.0 != last.0 {
                last = now; // someone else reloaded; start watching the new set
                continue;
            }
            if now.1 != last.1 {
                // Writers replace files in steps; let the file settle before compiling it.
                tokio::time::sleep(Duration::from_millis(200)).await;
                reload_in_background(&gw, "plugin file changed").await;
                last = (gw.runtime().generation, stamps(&gw));
            }
        }
    });
}

async fn wait_for_signals(gw: &Arc<Gateway>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("install SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => reload_in_background(gw, "SIGHUP").await,
        }
    }
}

/// Reuses or creates the admin token file (mode 0600) when the config names no token.
fn generated_admin_token(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        tracing::info!(file = %path.display(), "admin token read from file (server.admin_token not set)");
        return Ok(t.trim().as_bytes().to_vec());
    }
    let mut raw = [0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut raw)
        .map_err(|_| anyhow::anyhow!("no secure random source for the admin token"))?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    tls::write_file(&path, token.as_bytes(), true)
        .with_context(|| format!("cannot write admin token to {}", path.display()))?;
    tracing::info!(file = %path.display(), "generated an admin token (server.admin_token not set)");
    Ok(token.into_bytes())
}

/// Tells scripts and tests which addresses were bound (useful with port 0).
fn write_listeners(
    dir: &Path,
    public: SocketAddr,
    plaintext: Option<SocketAddr>,
    admin: SocketAddr,
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "public": public.to_string(),
        "plaintext": plaintext.map(|a| a.to_string()),
        "admin": admin.to_string(),
        "pid": std::process::id(),
    });
    tls::write_file(
        &dir.join(LISTENERS_FILE),
        body.to_string().as_bytes(),
        false,
    )?;
    Ok(())
}

/// `fngate check`: every problem on its own line.
pub fn check(path: &Path) -> Result<String, config::ConfigError> {
    let c = config::load(path)?;
    // TLS files named in the config must load too, or `serve` would fail where `check` passed.
    if let Some(files) = &c.server.tls
        && let Err(e) = tls::load_certified_key(files)
    {
        return Err(config::ConfigError {
            file: path.to_path_buf(),
            problems: vec![config::Problem {
                path: "server.tls".into(),
                message: e.to_string(),
            }],
        });
    }
    // Plugins must compile and link too.
    let mut problems = Vec::new();
    if !c.plugins.is_empty() {
        match PolicyHost::new() {
            Ok(host) => {
                for (i, p) in c.plugins.iter().enumerate() {
                    if let Err(e) = host.load(p) {
                        problems.push(config::Problem {
                            path: format!("plugin[{i}]"),
                            message: e.to_string(),
                        });
                    }
                }
            }
            Err(e) => problems.push(config::Problem {
                path: "plugin".into(),
                message: e.to_string(),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(config::ConfigError {
            file: path.to_path_buf(),
            problems,
        });
    }
    Ok(format!(
        "{}: ok ({} function(s), {} trigger(s), {} event source(s), {} plugin(s))",
        path.display(),
        c.functions.len(),
        c.triggers.len() + c.oss_triggers.len(),
        c.event_sources.len(),
        c.plugins.len()
    ))
}
