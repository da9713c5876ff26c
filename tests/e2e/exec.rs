//! Instance login (`fngate exec`): commands on pipes with the instance's directory, environment
//! and exit status; an interactive shell through a real PTY (driven by `script`); the idle
//! timeout; refusals (no token, static backend, unknown instance); and an open session keeping
//! its instance from being reclaimed.

use crate::harness::*;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A gateway with one process-backend function `demo/p` (scale-to-zero after `idle`) and one
/// static function `demo/s`; `extra` goes before the services (e.g. `[server.exec]`).
fn start(idle: &str, extra: &str) -> Gateway {
    Gateway::start(&format!(
        r#"{extra}

[[service]]
name = "demo"
env = {{ GREETING = "hello from the instance" }}

[[service.function]]
name = "p"
scaling = {{ idle_timeout = "{idle}" }}
backend = {{ kind = "process", command = ["{}"], startup_timeout = "10s", stop_grace = "2s", readiness = {{ interval = "200ms" }} }}

[[service.function]]
name = "s"
backend = {{ kind = "static", endpoints = ["http://127.0.0.1:9"] }}

[[trigger]]
name = "p"
kind = "http"
function = "demo/p"
path = "/p"
"#,
        backend_bin().display()
    ))
}

async fn instances(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.admin_json("/admin/functions/demo/p/instances").await["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Cold-starts `demo/p` and returns its instance (id, pid, port).
async fn one_instance(gw: &Gateway) -> (String, u64, u16) {
    let r = gw.get("/p/env").await;
    assert_eq!(r.status, http::StatusCode::OK, "{}", r.text());
    let list = instances(gw).await;
    assert_eq!(list.len(), 1, "{list:#?}");
    let port = list[0]["endpoint"]
        .as_str()
        .and_then(|e| e.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    (
        list[0]["id"].as_str().unwrap().to_string(),
        list[0]["pid"].as_u64().unwrap(),
        port,
    )
}

/// `fngate exec` against the gateway's admin listener, stdin from `input`, no terminal.
fn exec_cmd(gw: &Gateway, token: Option<&str>, target: &str, command: &[&str]) -> Command {
    let mut c = Command::new(fngate_bin());
    c.args(["exec", "--admin", &format!("https://{}", gw.admin)])
        .arg("--cacert")
        .arg(&gw.ca)
        .arg(target)
        .env_remove("FNGATE_ADMIN_TOKEN");
    if !command.is_empty() {
        c.arg("--").args(command);
    }
    if let Some(t) = token {
        c.env("FNGATE_ADMIN_TOKEN", t);
    }
    c
}

async fn exec(
    gw: &Gateway,
    token: Option<&str>,
    target: &str,
    command: &[&str],
    input: &[u8],
) -> Output {
    let mut c = exec_cmd(gw, token, target, command);
    let input = input.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fngate exec");
        child.stdin.take().unwrap().write_all(&input).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

/// A shell command line running `fngate exec` (a shell, no command) on instance `id`; the admin
/// token comes from the environment.
fn interactive_exec_line(gw: &Gateway, id: &str) -> String {
    let exec = exec_cmd(gw, None, &format!("demo/p/{id}"), &[]);
    std::iter::once(exec.get_program())
        .chain(exec.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn exec_runs_a_command_in_the_instance_with_its_dir_env_and_status() {
    let gw = start("5m", "");
    let (id, pid, port) = one_instance(&gw).await;
    let target = format!("demo/p/{id}");
    let script = "pwd; echo \"port=$PORT id=$FNGATE_INSTANCE_ID fn=$FNGATE_FUNCTION greeting=$GREETING\"; \
                  echo oops >&2; read line; echo \"got $line\"; exit 7";
    let out = exec(
        &gw,
        Some(ADMIN_TOKEN),
        &target,
        &["sh", "-c", script],
        b"typed\n",
    )
    .await;
    let stdout = text(&out.stdout);
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(cwd.to_str().unwrap()), "{stdout}");
    assert_eq!(
        lines.next(),
        Some(format!("port={port} id={id} fn=demo/p greeting=hello from the instance").as_str())
    );
    assert_eq!(lines.next(), Some("got typed"));
    assert_eq!(text(&out.stderr), "oops\n");
    // The session is logged with who, which instance, how long and how it ended.
    eventually("session log line", Duration::from_secs(3), || async {
        gw.stderr().lines().any(|l| {
            l.contains("instance login session closed")
                && l.contains(&id)
                && l.contains("duration_ms=")
                && l.contains("exit_status=7")
                && l.contains("client=127.0.0.1:")
        })
    })
    .await;
    // A successful command exits 0; no command runs the instance's shell on stdin.
    let out = exec(
        &gw,
        Some(ADMIN_TOKEN),
        &target,
        &[],
        b"echo $FNGATE_INSTANCE_ID\n",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{id}\n"));
}

#[tokio::test]
async fn exec_is_refused_without_the_token_for_static_backends_and_unknown_instances() {
    let gw = start("5m", "");
    let (id, _, _) = one_instance(&gw).await;
    let out = exec(&gw, None, &format!("demo/p/{id}"), &["true"], b"").await;
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out.stderr);
    assert!(
        err.contains("refused (401 Unauthorized)") && err.contains("FNGATE_ADMIN_TOKEN"),
        "{err}"
    );
    let out = exec(
        &gw,
        Some("wrong-token"),
        &format!("demo/p/{id}"),
        &["true"],
        b"",
    )
    .await;
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));

    let out = exec(&gw, Some(ADMIN_TOKEN), "demo/s/any", &["true"], b"").await;
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out.stderr);
    assert!(
        err.contains("409") && err.contains("instance login needs a process backend"),
        "{err}"
    );

    let out = exec(&gw, Some(ADMIN_TOKEN), "demo/p/demo-p-999", &["true"], b"").await;
    let err = text(&out.stderr);
    assert!(
        err.contains("404") && err.contains("no instance demo-p-999"),
        "{err}"
    );
    let out = exec(&gw, Some(ADMIN_TOKEN), "demo/p", &["true"], b"").await;
    assert!(
        text(&out.stderr).contains("not service/function/instance-id"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn an_interactive_session_runs_through_a_real_pty() {
    let gw = start("5m", "");
    let (id, _, _) = one_instance(&gw).await;
    // `script` gives fngate exec a terminal; the session then gets a PTY of its own on the gateway.
    let line = interactive_exec_line(&gw, &id);
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("script")
            .args(["-qefc", &line, "/dev/null"])
            .env("FNGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("`script` (util-linux) is installed");
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"tty; stty size; echo \"answer=$((6*7))\"; exit 3\n")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the interactive session did not end"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(stdin);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = text(&out.stdout);
    // The remote shell's tty is a PTY; it ran the line and its exit status came back.
    assert!(stdout.contains("/dev/pts/"), "{stdout}");
    assert!(stdout.contains("answer=42"), "{stdout}");
    // `script`'s own stdin is a pipe, so its terminal has no size: the client sends 80x24.
    assert!(stdout.contains("24 80"), "{stdout}");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn an_idle_session_is_closed_and_an_open_one_keeps_its_instance() {
    let gw = start(
        "1s",
        "[server.exec]\nidle_timeout = \"1500ms\"\nmax_sessions = 1",
    );
    let (id, pid, _) = one_instance(&gw).await;
    let target = format!("demo/p/{id}");
    // Output every 500 ms keeps the session open for 3 s, twice the instance's idle timeout.
    let t0 = Instant::now();
    let session = {
        let mut c = exec_cmd(
            &gw,
            Some(ADMIN_TOKEN),
            &target,
            &[
                "sh",
                "-c",
                "for i in 1 2 3 4 5 6; do echo $i; sleep 0.5; done",
            ],
        );
        tokio::task::spawn_blocking(move || c.stdin(Stdio::null()).output().unwrap())
    };
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let list = instances(&gw).await;
    assert_eq!(list.len(), 1, "the instance was reclaimed during a session");
    assert_eq!(list[0]["pid"].as_u64(), Some(pid));
    assert_eq!(list[0]["sessions"], 1, "{list:#?}");
    assert!(list[0]["idle_s"].is_null(), "{list:#?}");
    // One session is the cap here: a second is refused while the first is open.
    let out = exec(&gw, Some(ADMIN_TOKEN), &target, &["true"], b"").await;
    let err = text(&out.stderr);
    assert!(
        err.contains("503") && err.contains("server.exec.max_sessions"),
        "{err}"
    );
    let out = session.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\n2\n3\n4\n5\n6\n");
    assert!(t0.elapsed() >= Duration::from_secs(3));

    // A session without input or output for the idle timeout is closed, its command killed.
    let t0 = Instant::now();
    let out = exec(
        &gw,
        Some(ADMIN_TOKEN),
        &target,
        &["sh", "-c", "echo started; exec sleep 30"],
        b"",
    )
    .await;
    let took = t0.elapsed();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains(
            "session closed after 1500ms without input or output (server.exec.idle_timeout)"
        ),
        "{err}"
    );
    assert_eq!(text(&out.stdout), "started\n");
    assert!(took < Duration::from_secs(6), "{took:?}");
    eventually(
        "the idle session's command killed",
        Duration::from_secs(3),
        || async {
            !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x0030\x00")
                    && std::fs::read_link(e.path().join("cwd")).ok()
                        == std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
            })
        },
    )
    .await;

    // With the session gone the instance idles out as usual.
    eventually(
        "scale to zero after the session",
        Duration::from_secs(8),
        || async { instances(&gw).await.is_empty() },
    )
    .await;
}

/// Runs a tmux command on the test's own server socket; returns stdout.
fn tmux(socket: &str, args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(["-L", socket, "-f", "/dev/null"])
        .args(args)
        .output()
        .expect("tmux is installed");
    assert!(out.status.success(), "tmux {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Waits until the tmux pane shows `want`; returns the pane.
async fn pane_shows(socket: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pane = tmux(socket, &["capture-pane", "-p", "-t", "exec"]);
        if pane.contains(want) {
            return pane;
        }
        assert!(
            Instant::now() < deadline,
            "pane never showed {want:?}:\n{pane}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn window_size_changes_reach_the_session() {
    let gw = start("5m", "");
    let (id, _, _) = one_instance(&gw).await;
    let line = interactive_exec_line(&gw, &id);
    let socket = format!("fngate-exec-{}", std::process::id());
    let shell = format!("FNGATE_ADMIN_TOKEN={ADMIN_TOKEN} {line}; echo \"exec-exit=$?\"; sleep 30");
    tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-s",
            "exec",
            "-x",
            "100",
            "-y",
            "30",
            &shell,
        ],
    );
    struct Server(String);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["-L", &self.0, "kill-server"])
                .output();
        }
    }
    let _server = Server(socket.clone());
    tmux(
        &socket,
        &["send-keys", "-t", "exec", "echo ready-$((1+1))", "Enter"],
    );
    pane_shows(&socket, "ready-2").await;
    tmux(&socket, &["send-keys", "-t", "exec", "stty size", "Enter"]);
    pane_shows(&socket, "30 100").await;
    tmux(
        &socket,
        &["resize-window", "-t", "exec", "-x", "120", "-y", "40"],
    );
    tmux(&socket, &["send-keys", "-t", "exec", "stty size", "Enter"]);
    pane_shows(&socket, "40 120").await;
    tmux(&socket, &["send-keys", "-t", "exec", "exit 5", "Enter"]);
    pane_shows(&socket, "exec-exit=5").await;
}

/// Pids of processes whose command line is exactly `argv` (NUL-separated).
fn pids_running(argv: &[u8]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == argv))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn session_commands_end_with_the_gateway() {
    for signal in [rustix::process::Signal::TERM, rustix::process::Signal::KILL] {
        let mut gw = start("5m", "");
        let (id, _, _) = one_instance(&gw).await;
        // A distinct argument, so this test finds only its own sleep.
        let arg = format!(
            "{}.{}",
            40 + (signal == rustix::process::Signal::KILL) as u32,
            std::process::id() % 1000
        );
        let argv = format!("sleep\0{arg}\0").into_bytes();
        let mut c = exec_cmd(
            &gw,
            Some(ADMIN_TOKEN),
            &format!("demo/p/{id}"),
            &["sleep", &arg],
        );
        let session = tokio::task::spawn_blocking(move || c.stdin(Stdio::null()).output().unwrap());
        let mut found = Vec::new();
        eventually("the session's command runs", Duration::from_secs(5), || {
            found = pids_running(&argv);
            let ok = found.len() == 1;
            async move { ok }
        })
        .await;
        let gw_pid = rustix::process::Pid::from_raw(gw.child.id() as i32).unwrap();
        rustix::process::kill_process(gw_pid, signal).unwrap();
        let out = session.await.unwrap();
        assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
        eventually(
            "the session's command is gone",
            Duration::from_secs(5),
            || {
                let gone = pids_running(&argv).is_empty();
                async move { gone }
            },
        )
        .await;
        gw.kill();
    }
}
