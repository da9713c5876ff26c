//! Instance lifecycle with real child processes: cold starts, scale to zero, provisioned targets
//! and rules, GPU placement and the card cap, crashes, failed starts, and no orphans.

use crate::harness::*;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::time::{Duration, Instant};

/// A service `demo` with process-backend functions, each reachable at `/{name}/…`.
struct Functions(String);

impl Functions {
    fn new() -> Functions {
        Functions("[[service]]\nname = \"demo\"\n".into())
    }

    /// `args` are extra demo-backend flags; `extra` are function keys (scaling, gpu, …).
    fn add(mut self, name: &str, args: &[&str], extra: &str) -> Functions {
        let mut command = vec![format!("\"{}\"", backend_bin().display())];
        command.extend(args.iter().map(|a| format!("\"{a}\"")));
        let wait = if extra.contains("max_queue_wait") {
            ""
        } else {
            "max_queue_wait = \"20s\""
        };
        self.0.push_str(&format!(
            r#"
[[service.function]]
name = "{name}"
{wait}
{extra}
backend = {{ kind = "process", command = [{}], startup_timeout = "10s", stop_grace = "2s", readiness = {{ interval = "200ms" }} }}

[[trigger]]
name = "{name}"
kind = "http"
function = "demo/{name}"
path = "/{name}"
"#,
            command.join(", ")
        ));
        self
    }

    fn with(mut self, text: &str) -> Functions {
        self.0 = format!("{text}\n{}", self.0);
        self
    }

    fn start(self) -> Gateway {
        Gateway::start(&self.0)
    }
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}

async fn instances(gw: &Gateway, f: &str) -> Vec<serde_json::Value> {
    gw.admin_json(&format!("/admin/functions/demo/{f}/instances"))
        .await["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until the function has exactly `n` ready instances of `kind`, and returns all instances.
async fn wait_ready(gw: &Gateway, f: &str, kind: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = instances(gw, f).await;
        let ready = last
            .iter()
            .filter(|i| i["kind"] == kind && i["state"] == "ready")
            .count();
        if ready == n {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "{f}: wanted {n} ready {kind} instances, have {last:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn pids(list: &[serde_json::Value]) -> Vec<u64> {
    list.iter().filter_map(|i| i["pid"].as_u64()).collect()
}

async fn put_target(gw: &Gateway, f: &str, target: u32) -> Resp {
    let mut c = gw.tls().connect(gw.admin, false).await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    c.send(
        Method::PUT,
        &format!("/admin/functions/demo/{f}/provisioned"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Bytes::from(format!("{{\"target\":{target}}}")),
    )
    .await
}

fn sigterm(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

#[tokio::test]
async fn cold_start_is_measured_reported_and_logged() {
    let gw = Functions::new()
        .add("p", &["--startup-delay-ms", "150"], "")
        .start();
    assert!(
        instances(&gw, "p").await.is_empty(),
        "no instance before the first request"
    );
    let t0 = Instant::now();
    let r = gw.get("/p/env").await;
    let took = t0.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let cold: u64 = r
        .header("x-fngate-cold-start")
        .expect("a cold start is reported")
        .parse()
        .unwrap();
    assert!(
        cold >= 150,
        "the backend sleeps 150 ms before listening: {cold}"
    );
    assert_eq!(r.header("x-fngate-instance-kind"), Some("on-demand"));
    let id = r.header("x-fngate-instance-id").unwrap().to_string();
    // The instance got its identity and a loopback port through its environment.
    let env = r.json();
    assert_eq!(env["FNGATE_INSTANCE_ID"], id.as_str());
    assert_eq!(env["FNGATE_FUNCTION"], "demo/p");
    assert!(env["PORT"].as_str().unwrap().parse::<u16>().is_ok());
    let rid = r.header("x-fngate-request-id").unwrap();
    let line = gw.log_line(rid).await;
    let spawn = line["cold_start_spawn_ms"].as_f64().unwrap();
    let ready = line["cold_start_readiness_ms"].as_f64().unwrap();
    assert!(ready >= 150.0, "{line}");
    eprintln!(
        "cold start: client saw {:.1} ms; x-fngate-cold-start {cold} ms; spawn {spawn} ms + readiness {ready} ms (backend start-up delay 150 ms)",
        took.as_secs_f64() * 1e3
    );
    // Warm now: no header, same instance.
    let r = gw.get("/p/x?log=hello-from-the-instance").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-fngate-cold-start"), None);
    assert_eq!(r.header("x-fngate-instance-id"), Some(id.as_str()));
    // The instance's output is in the log stream, tagged with function and instance.
    eventually("instance output in the log", Duration::from_secs(5), || {
        let lines = gw.log_lines();
        let id = id.clone();
        async move {
            lines.iter().any(|l| {
                l["kind"] == "instance_log"
                    && l["function"] == "demo/p"
                    && l["instance_id"] == id.as_str()
                    && l["stream"] == "stdout"
                    && l["line"] == "hello-from-the-instance"
            }) && lines.iter().any(|l| {
                l["kind"] == "instance_log"
                    && l["stream"] == "stderr"
                    && l["line"] == "err: hello-from-the-instance"
            })
        }
    })
    .await;
}

#[tokio::test]
async fn concurrent_arrivals_start_only_the_instances_the_queue_needs() {
    let gw = Functions::new()
        .add(
            "herd",
            &["--startup-delay-ms", "400"],
            "instance_concurrency = 2\nscaling = { max_instances = 10 }",
        )
        .start();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let tls = gw.tls();
        let addr = gw.public;
        tasks.push(tokio::spawn(async move {
            let mut c = tls.connect(addr, false).await;
            c.send(Method::GET, "/herd/x?sleep_ms=300", &[], Bytes::new())
                .await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    // Eight requests at two slots each: four cold starts, not eight.
    let list = instances(&gw, "herd").await;
    assert_eq!(list.len(), 4, "{list:#?}");
    let metrics = gw.admin(Method::GET, "/metrics").await.text();
    assert!(
        metrics.contains(r#"fngate_cold_starts_total{function="demo/herd",result="ok"} 4"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn idle_on_demand_instances_are_stopped_but_never_while_busy() {
    let gw = Functions::new()
        .add("idle", &[], "scaling = { idle_timeout = \"1s\" }")
        .start();
    // A request that runs longer than the idle timeout keeps its instance.
    let r = gw.get("/idle/work?sleep_ms=2200").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = instances(&gw, "idle").await;
    assert_eq!(list.len(), 1);
    let pid = list[0]["pid"].as_u64().unwrap();
    assert!(alive(pid));
    // Without work it goes away: the function scales to zero and the process is gone.
    eventually("scale to zero", Duration::from_secs(6), || async {
        instances(&gw, "idle").await.is_empty()
    })
    .await;
    eventually("process exited", Duration::from_secs(3), || async {
        !alive(pid)
    })
    .await;
    // And comes back on demand.
    let r = gw.get("/idle/again").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("x-fngate-cold-start").is_some());
}

#[tokio::test]
async fn provisioned_instances_are_preferred_and_follow_the_target() {
    let gw = Functions::new()
        .add(
            "pv",
            &[],
            "scaling = { max_instances = 3, provisioned = 1, idle_timeout = \"5m\" }",
        )
        .start();
    // Started ahead of any request.
    let list = wait_ready(&gw, "pv", "provisioned", 1).await;
    let provisioned_id = list[0]["id"].as_str().unwrap().to_string();
    // Two at once: one on the provisioned instance, the other cold-starts an on-demand one.
    let slow = {
        let tls = gw.tls();
        let addr = gw.public;
        tokio::spawn(async move {
            let mut c = tls.connect(addr, false).await;
            c.send(Method::GET, "/pv/slow?sleep_ms=1500", &[], Bytes::new())
                .await
        })
    };
    eventually(
        "provisioned instance busy",
        Duration::from_secs(5),
        || async { instances(&gw, "pv").await.iter().any(|i| i["busy"] == 1) },
    )
    .await;
    let r = gw.get("/pv/second").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-fngate-instance-kind"), Some("on-demand"));
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    // With both idle and running, 100 requests all go to the provisioned instance.
    let mut c = gw.tls().connect(gw.public, false).await;
    for _ in 0..100 {
        let r = c.send(Method::GET, "/pv/x", &[], Bytes::new()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-fngate-instance-kind"), Some("provisioned"));
        assert_eq!(
            r.header("x-fngate-instance-id"),
            Some(provisioned_id.as_str())
        );
    }
    // Target up at run time: the on-demand instance is promoted, one more starts.
    let r = put_target(&gw, "pv", 3).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = wait_ready(&gw, "pv", "provisioned", 3).await;
    assert_eq!(list.len(), 3, "{list:#?}");
    let before = pids(&list);
    // Above max_instances is refused with the reason.
    let r = put_target(&gw, "pv", 4).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.text().contains("max_instances"), "{}", r.text());
    // Target down: two instances stop and their processes exit.
    let r = put_target(&gw, "pv", 1).await;
    assert_eq!(r.status, StatusCode::OK);
    eventually("one instance left", Duration::from_secs(10), || async {
        instances(&gw, "pv").await.len() == 1
    })
    .await;
    let left = pids(&instances(&gw, "pv").await);
    for pid in before.iter().filter(|p| !left.contains(p)) {
        eventually(
            "stopped instance exited",
            Duration::from_secs(5),
            || async { !alive(*pid) },
        )
        .await;
    }
    let f = gw.admin_json("/admin/functions").await;
    assert_eq!(f["functions"][0]["provisioned_target"], 1);
}

#[tokio::test]
async fn a_scheduled_rule_sets_the_provisioned_target_when_it_fires() {
    // Times of day in UTC: a rule 3 s from now, and one half a day away so that the rule in
    // force at start-up says 0.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hms = |t: u64| {
        let s = t % 86_400;
        format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
    };
    let scaling = format!(
        "scaling = {{ max_instances = 3, schedule = [{{ at = \"{}\", target = 2 }}, {{ at = \"{}\", target = 0 }}] }}",
        hms(now + 3),
        hms(now + 43_200)
    );
    let gw = Functions::new().add("sched", &[], &scaling).start();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        instances(&gw, "sched").await.is_empty(),
        "nothing before the rule fires"
    );
    wait_ready(&gw, "sched", "provisioned", 2).await;
    assert!(
        gw.stderr().contains("scheduled rule fired"),
        "{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn gpu_slices_pack_onto_one_card_and_the_card_cap_holds() {
    let gw = Functions::new()
        .add(
            "gpu",
            &[],
            "gpu = { type = \"A10\", memory_gb = 12 }\nscaling = { max_instances = 3 }\nmax_queue_wait = \"1500ms\"",
        )
        .with("[account]\ngpu_cards_max = 1\n\n[[gpu]]\ntype = \"A10\"\nmemory_gb = 24\ncount = 2\n")
        .start();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let tls = gw.tls();
        let addr = gw.public;
        tasks.push(tokio::spawn(async move {
            let mut c = tls.connect(addr, false).await;
            c.send(Method::GET, "/gpu/x?sleep_ms=3000", &[], Bytes::new())
                .await
        }));
    }
    // Two 12 GB instances share card 0; the account may use only one card.
    let list = wait_ready(&gw, "gpu", "on-demand", 2).await;
    for i in &list {
        assert_eq!(i["gpu"]["card"], 0, "{list:#?}");
        assert_eq!(i["gpu"]["fraction"], 0.5);
    }
    let gpus = gw.admin_json("/admin/gpus").await;
    assert_eq!(gpus["cards_in_use"], 1, "{gpus}");
    assert_eq!(gpus["cards"][0]["allocated_gb"], 24, "{gpus}");
    assert_eq!(gpus["cards"][1]["allocated_gb"], 0, "{gpus}");
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.error_code(), "gpu_capacity");
            assert!(r.text().contains("A10"), "{}", r.text());
            assert!(r.header("retry-after").is_some());
        }
        statuses.push(r.status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429]);
    // Each instance learned its card and share.
    let env = gw.get("/gpu/env").await.json();
    assert_eq!(env["CUDA_VISIBLE_DEVICES"], "0");
    assert_eq!(env["FNGATE_GPU_TYPE"], "A10");
    assert_eq!(env["FNGATE_GPU_MEMORY_GB"], "12");
    assert_eq!(env["FNGATE_GPU_MEMORY_FRACTION"], "0.5000");
    let metrics = gw.admin(Method::GET, "/metrics").await.text();
    assert!(
        metrics.contains(r#"fngate_gpu_memory_allocated_gb{gpu_type="A10"} 24"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_crash_mid_request_gives_502_naming_the_instance_then_a_replacement() {
    let gw = Functions::new()
        .add("crash", &[], "scaling = { provisioned = 1 }")
        .start();
    let list = wait_ready(&gw, "crash", "provisioned", 1).await;
    let id = list[0]["id"].as_str().unwrap().to_string();
    let pid = list[0]["pid"].as_u64().unwrap();
    let r = gw.get("/crash/x?crash=1").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.text().contains(&id), "names the instance: {}", r.text());
    // Replaced: a new provisioned instance with another id serves the next request.
    eventually("replacement ready", Duration::from_secs(10), || async {
        let l = instances(&gw, "crash").await;
        l.len() == 1 && l[0]["id"] != id.as_str() && l[0]["state"] == "ready"
    })
    .await;
    assert!(!alive(pid));
    let r = gw.get("/crash/ok").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(r.header("x-fngate-instance-id"), Some(id.as_str()));
    assert!(
        gw.stderr().contains("exited unexpectedly"),
        "{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn instances_that_fail_to_start_or_turn_unhealthy_are_removed_with_clear_errors() {
    let gw = Functions::new()
        .add("exits", &["--fail-start", "7"], "")
        .add(
            "sickens",
            &["--unready-after", "3"],
            "scaling = { provisioned = 1 }",
        )
        .start();
    let r = gw.get("/exits/x").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.error_code(), "cold_start_failed");
    let msg = r.text();
    assert!(msg.contains("exited with status 7"), "{msg}");
    assert!(
        msg.contains("simulated start-up failure"),
        "the last output line: {msg}"
    );
    assert!(r.header("retry-after").is_some());
    // While starts back off, the next request is answered at once with the same reason.
    let t0 = Instant::now();
    let r = gw.get("/exits/y").await;
    assert_eq!(r.error_code(), "cold_start_failed");
    assert!(t0.elapsed() < Duration::from_millis(500));
    assert!(instances(&gw, "exits").await.is_empty());

    // A ready instance whose health probes start failing is removed and replaced.
    let sickens = wait_ready(&gw, "sickens", "provisioned", 1).await;
    let sick_pid = sickens[0]["pid"].as_u64().unwrap();
    eventually(
        "unhealthy instance removed",
        Duration::from_secs(10),
        || async { !alive(sick_pid) },
    )
    .await;
    eventually("replacement", Duration::from_secs(10), || async {
        instances(&gw, "sickens")
            .await
            .iter()
            .any(|i| i["pid"].as_u64() != Some(sick_pid))
    })
    .await;
    assert!(
        gw.stderr().contains("failing health probes"),
        "{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn an_instance_that_never_gets_ready_fails_the_start_after_its_timeout() {
    let mut text = Functions::new().add("unready", &["--unready"], "").0;
    text = text.replace("startup_timeout = \"10s\"", "startup_timeout = \"700ms\"");
    let gw = Gateway::start(&text);
    let t0 = Instant::now();
    let r = gw.get("/unready/x").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.error_code(), "cold_start_failed");
    assert!(r.text().contains("not ready within"), "{}", r.text());
    assert!(r.text().contains("status 503"), "{}", r.text());
    // Retried once, then failed: two start-up timeouts.
    assert!(t0.elapsed() >= Duration::from_millis(1400));
    eventually("no instance left", Duration::from_secs(5), || async {
        instances(&gw, "unready").await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn no_instance_outlives_the_gateway() {
    // SIGTERM: instances are stopped, one of them only by SIGKILL after its grace period.
    let mut gw = Functions::new()
        .add("a", &[], "scaling = { provisioned = 2 }")
        .add(
            "stubborn",
            &["--ignore-sigterm"],
            "scaling = { provisioned = 1 }",
        )
        .start();
    let mut all = pids(&wait_ready(&gw, "a", "provisioned", 2).await);
    all.extend(pids(&wait_ready(&gw, "stubborn", "provisioned", 1).await));
    assert_eq!(all.len(), 3);
    sigterm(gw.child.id());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if gw.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fngate did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for pid in &all {
        assert!(!alive(*pid), "instance {pid} outlived fngate (SIGTERM)");
    }
    assert!(gw.stderr().contains("sending SIGKILL"), "{}", gw.stderr());

    // SIGKILL: the gateway cannot clean up, the kernel does (parent-death signal).
    let mut gw = Functions::new()
        .add("a", &[], "scaling = { provisioned = 2 }")
        .start();
    let all = pids(&wait_ready(&gw, "a", "provisioned", 2).await);
    gw.kill();
    for pid in all {
        eventually(
            "instance gone after SIGKILL of fngate",
            Duration::from_secs(5),
            || async move { !alive(pid) },
        )
        .await;
    }
}

#[tokio::test]
async fn a_reload_that_changes_the_command_replaces_the_instances() {
    let gw = Functions::new()
        .add("rl", &[], "scaling = { provisioned = 1 }")
        .start();
    let old = pids(&wait_ready(&gw, "rl", "provisioned", 1).await)[0];
    // A busy instance of the old recipe finishes its request before it stops.
    let slow = {
        let tls = gw.tls();
        let addr = gw.public;
        tokio::spawn(async move {
            let mut c = tls.connect(addr, false).await;
            c.send(Method::GET, "/rl/slow?sleep_ms=800", &[], Bytes::new())
                .await
        })
    };
    eventually("busy", Duration::from_secs(5), || async {
        instances(&gw, "rl").await.iter().any(|i| i["busy"] == 1)
    })
    .await;
    let text = Functions::new()
        .add("rl", &[], "scaling = { provisioned = 1 }")
        .0
        .replace(
            "kind = \"process\",",
            "kind = \"process\", env = { DEMO_RECIPE = \"2\" },",
        );
    gw.write_config(&text);
    let r = gw.admin(Method::POST, "/admin/reload").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    eventually("old instance stopped", Duration::from_secs(10), || async {
        !alive(old)
    })
    .await;
    let list = wait_ready(&gw, "rl", "provisioned", 1).await;
    assert_ne!(pids(&list)[0], old);
    let env = gw.get("/rl/env").await.json();
    assert_eq!(env["DEMO_RECIPE"], "2");
}
