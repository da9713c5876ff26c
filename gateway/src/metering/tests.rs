//! Share arithmetic, usage from a spec, time parsing, and the store round trip.

use super::*;
use std::time::Duration;

fn at(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn one_request_is_charged_its_whole_time() {
    let t0 = Instant::now();
    let mut c = ShareClock::new(t0);
    let m = c.start(at(t0, 100));
    assert!(close(c.finish(at(t0, 600), m), 0.5));
    // Idle time is nobody's.
    let m = c.start(at(t0, 1000));
    assert!(close(c.finish(at(t0, 1200), m), 0.2));
}

#[test]
fn two_requests_started_together_split_evenly() {
    let t0 = Instant::now();
    let mut c = ShareClock::new(t0);
    let a = c.start(t0);
    let b = c.start(t0);
    assert!(close(c.finish(at(t0, 1000), a), 0.5));
    assert!(close(c.finish(at(t0, 1000), b), 0.5));
}

/// The worked example of docs/metering.md: A runs 0–3 s, B 1–2 s, C 2.5–4 s on one instance.
#[test]
fn overlapping_requests_share_the_overlap() {
    let t0 = Instant::now();
    let mut c = ShareClock::new(t0);
    let a = c.start(t0);
    let b = c.start(at(t0, 1000));
    let sb = c.finish(at(t0, 2000), b);
    let cc = c.start(at(t0, 2500));
    let sa = c.finish(at(t0, 3000), a);
    let sc = c.finish(at(t0, 4000), cc);
    // A: 1 s alone + 1 s shared with B (0.5) + 0.5 s alone + 0.5 s shared with C (0.25).
    assert!(close(sa, 2.25), "{sa}");
    assert!(close(sb, 0.5), "{sb}");
    // C: 0.5 s shared with A (0.25) + 1 s alone.
    assert!(close(sc, 1.25), "{sc}");
    // The shares add up to the time the instance had work: 0–4 s.
    assert!(close(sa + sb + sc, 4.0));
}

#[test]
fn reserved_lifetime_is_metered_between_marks() {
    let t0 = Instant::now();
    let mut c = ShareClock::new(t0);
    assert_eq!(c.reserved_since_last(t0, true), None);
    assert_eq!(
        c.reserved_since_last(at(t0, 250), true),
        Some(Duration::from_millis(250))
    );
    assert_eq!(
        c.reserved_since_last(at(t0, 400), false),
        Some(Duration::from_millis(150))
    );
    assert_eq!(c.reserved_since_last(at(t0, 900), false), None);
}

fn spec() -> Arc<FunctionSpec> {
    crate::config::compile_with_env(
        r#"
[[gpu]]
type = "A10"
memory_gb = 24
count = 1

[[service]]
name = "s"

[[service.function]]
name = "f"
cpu = 2
memory = "512MiB"
backend = { kind = "process", command = ["true"], cwd = "/" }
gpu = { type = "A10", memory_gb = 6 }
"#,
        &[],
    )
    .unwrap()
    .functions
    .remove(0)
}

#[test]
fn usage_is_share_times_spec() {
    let s = spec();
    assert_eq!(s.cpu, 2.0);
    let share = GpuShare {
        card: 0,
        gpu_type: "A10".into(),
        memory_gb: 6,
        card_memory_gb: 24,
    };
    let u = Usage::new(&s, Some(&share), 1.5, Billing::Request);
    assert!(close(u.vcpu_s, 3.0));
    assert!(close(u.memory_gb_s, 0.75));
    assert!(close(u.gpu_gb_s, 9.0));
    assert_eq!(u.gpu_type.as_deref(), Some("A10"));
}

#[test]
fn times_parse() {
    assert_eq!(parse_time("0"), Ok(0));
    assert_eq!(parse_time("1795600800"), Ok(1_795_600_800));
    assert_eq!(parse_time("2026-11-25T10:00:00Z"), Ok(1_795_600_800));
    assert_eq!(parse_time("2026-11-25T10:00:00.250Z"), Ok(1_795_600_800));
    assert_eq!(parse_time("2026-11-25T11:30:00+01:30"), Ok(1_795_600_800));
    assert_eq!(parse_time("1970-01-01T00:00:00-00:01"), Ok(60));
    for bad in [
        "",
        "-5",
        "2026-11-25",
        "2026-13-01T00:00:00Z",
        "2026-11-25T10:00:00",
        "soon",
    ] {
        assert!(parse_time(bad).is_err(), "{bad} accepted");
    }
}

/// A meter with its store in a fresh directory, and a function meter of `spec()`.
fn meter(tag: &str) -> (std::path::PathBuf, Arc<Meter>, Arc<FunctionMeter>) {
    let dir = std::env::temp_dir().join(format!("fngate-usage-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let m = Meter::new();
    m.open(&dir).unwrap();
    let fm = m.function(&spec());
    (dir, m, fm)
}

#[tokio::test]
async fn totals_survive_reopening_the_store() {
    let (dir, m, fm) = meter("reopen");
    let s = spec();
    let u = Usage::new(&s, None, 2.0, Billing::Request);
    fm.invocation(Some("acme"), &u);
    fm.invocation(Some("acme"), &u);
    fm.invocation(None, &u);
    fm.reserved(&s, None, 10.0);
    m.flush().await;
    // Flushed: a second flush adds nothing.
    m.flush().await;
    let now = crate::scheduler::unix_now() as i64;
    let m2 = Meter::new();
    m2.open(&dir).unwrap();
    let rows = m2
        .query(now - 3600, now + 3600, Group::Tenant)
        .await
        .unwrap();
    let by = |t: &str| rows.iter().find(|r| r.key == t).map(|r| r.totals).unwrap();
    assert_eq!(by("acme").invocations, 2);
    assert!(close(by("acme").vcpu_s, 8.0));
    assert_eq!(by("").invocations, 1);
    assert!(close(by(RESERVED_TENANT).reserved_s, 10.0));
    assert!(close(by(RESERVED_TENANT).vcpu_s, 20.0));
    let rows = m2
        .query(now - 3600, now + 3600, Group::Function)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].key, "s/f");
    assert_eq!(rows[0].totals.invocations, 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn long_tenants_are_cut_at_a_character_boundary() {
    let s = "é".repeat(100);
    let t = truncate(&s, MAX_TENANT_LEN);
    assert!(t.len() <= MAX_TENANT_LEN && t.chars().all(|c| c == 'é'));
}

#[tokio::test]
async fn tenants_past_the_memory_bound_fold_into_other() {
    let (dir, m, fm) = meter("fold");
    let u = Usage::new(&spec(), None, 1.0, Billing::Request);
    for i in 0..MAX_PENDING_BUCKETS + 5 {
        fm.invocation(Some(&format!("t{i}")), &u);
    }
    // A known tenant still gets its own bucket.
    fm.invocation(Some("t0"), &u);
    m.flush().await;
    let now = crate::scheduler::unix_now() as i64;
    let rows = m
        .query(now - 3600, now + 3600, Group::Tenant)
        .await
        .unwrap();
    assert_eq!(rows.len(), MAX_PENDING_BUCKETS + 1);
    let by = |t: &str| rows.iter().find(|r| r.key == t).map(|r| r.totals).unwrap();
    assert_eq!(by(OTHER_TENANT).invocations, 5);
    assert_eq!(by("t0").invocations, 2);
    // After the flush the bound starts again.
    fm.invocation(Some("late"), &u);
    let rows = m
        .query(now - 3600, now + 3600, Group::Tenant)
        .await
        .unwrap();
    assert_eq!(by_key(&rows, "late"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

fn by_key(rows: &[store::UsageRow], k: &str) -> u64 {
    rows.iter()
        .find(|r| r.key == k)
        .map_or(0, |r| r.totals.invocations)
}

#[test]
fn instance_spec_keys_are_checked() {
    let with = |keys: &str| {
        crate::config::compile_with_env(
            &format!(
                "[[service]]\nname = \"s\"\n\n[[service.function]]\nname = \"f\"\n{keys}\n\
                 backend = {{ kind = \"static\", endpoints = [\"http://127.0.0.1:9\"] }}\n"
            ),
            &[],
        )
    };
    let f = with("").unwrap().functions.remove(0);
    assert_eq!((f.cpu, f.memory), (1.0, 1 << 30));
    let f = with("cpu = 0.25\nmemory = \"3GiB\"")
        .unwrap()
        .functions
        .remove(0);
    assert_eq!((f.cpu, f.memory), (0.25, 3 << 30));
    for (keys, want) in [
        (
            "cpu = 0",
            "service[0].function[0].cpu: `0` must be a number of vCPUs above 0",
        ),
        (
            "cpu = \"two\"",
            "service[0].function[0].cpu: `\"two\"` must be a number",
        ),
        ("cpu = 1000", "at most 512"),
        ("memory = \"1KiB\"", "service[0].function[0].memory:"),
        ("memory = \"lots\"", "service[0].function[0].memory:"),
    ] {
        let problems: Vec<String> = with(keys)
            .err()
            .unwrap_or_else(|| panic!("{keys} accepted"))
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert!(
            problems.len() == 1 && problems[0].contains(want),
            "{keys}: {problems:?}"
        );
    }
}
