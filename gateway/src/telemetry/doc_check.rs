//! Keeps `docs/metrics.md` in step with the code: every metric name constant must have a row in
//! its table, every row must name a metric the code records, and the type column must agree
//! with the Prometheus naming convention (counters, and only counters, end in `_total`).

const DOC: &str = include_str!("../../../docs/metrics.md");
/// The files that declare metric names as `pub const …: &str = "fngate_…";`.
const SOURCES: [(&str, &str); 2] = [
    ("telemetry/mod.rs", include_str!("mod.rs")),
    ("scheduler/gpu.rs", include_str!("../scheduler/gpu.rs")),
];

/// `(constant, metric name, file)` for each metric name constant in the sources.
fn constants() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut out = Vec::new();
    for (file, text) in SOURCES {
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix("pub const ") else {
                continue;
            };
            let Some((ident, value)) = rest.split_once(": &str = \"") else {
                continue;
            };
            let Some(name) = value.strip_suffix("\";") else {
                continue;
            };
            if name.starts_with("fngate_") {
                out.push((ident, name, file));
            }
        }
    }
    out
}

/// `(metric name, type)` for each row of the table in `docs/metrics.md`.
fn documented() -> Vec<(&'static str, &'static str)> {
    DOC.lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix('|')?.split('|').map(str::trim);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.next()?;
            name.starts_with("fngate_").then_some((name, kind))
        })
        .collect()
}

#[test]
fn the_sources_declare_metric_names() {
    let names = constants();
    assert!(
        names.iter().any(|(_, n, _)| *n == super::INVOCATIONS),
        "the parser found no metric constants: {names:?}"
    );
    assert!(
        names.len() >= 40,
        "only {} metric constants found",
        names.len()
    );
}

#[test]
fn every_metric_constant_is_documented() {
    let doc = documented();
    let missing: Vec<String> = constants()
        .into_iter()
        .filter(|(_, name, _)| !doc.iter().any(|(d, _)| d == name))
        .map(|(ident, name, file)| format!("{name} ({ident} in gateway/src/{file})"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/metrics.md lacks a table row for: {}",
        missing.join(", ")
    );
}

#[test]
fn every_documented_metric_exists() {
    let names = constants();
    let stale: Vec<&str> = documented()
        .into_iter()
        .map(|(d, _)| d)
        .filter(|d| !names.iter().any(|(_, n, _)| n == d))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/metrics.md documents metrics no constant declares: {stale:?}"
    );
}

#[test]
fn documented_types_follow_the_naming_convention() {
    let mut seen = std::collections::HashSet::new();
    for (name, kind) in documented() {
        assert!(seen.insert(name), "{name} has two rows in docs/metrics.md");
        assert!(
            matches!(kind, "counter" | "gauge" | "histogram"),
            "{name}: type `{kind}` is not counter, gauge or histogram"
        );
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} is documented as a {kind}: counters, and only counters, end in `_total`"
        );
    }
}
