//! The fuzz smoke run of CI: every target's body over its seed corpus and a few thousand
//! deterministic mutations of it. Seconds long; the coverage-guided runs are in `fuzz/`.

use super::*;
use std::path::{Path, PathBuf};

/// Mutated inputs per target.
const MUTATIONS: usize = 5000;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate sits in the repository")
        .to_path_buf()
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let (_, _, dirs) = TARGETS
        .iter()
        .find(|(name, _, _)| *name == target)
        .expect("known target");
    let mut out = Vec::new();
    for dir in *dirs {
        let Ok(entries) = std::fs::read_dir(repo_root().join(dir)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
            .collect();
        files.sort();
        for f in files {
            out.push(std::fs::read(&f).expect("seed readable"));
        }
    }
    out
}

/// xorshift64*: deterministic, so a failure reproduces on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens the parsers care about, spliced in by the mutator.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"%",
    b"%2F",
    b"%ZZ",
    b"+",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"-1",
    b"18446744073709551616",
    b"1e999",
    b"\xc3\xa9",
    b"\xe2\x82\xac",
    b"\xff",
    b"\"Records\":",
    b"\"events\":",
    b"\"Type\":\"Notification\",\"Message\":",
    b"s3:",
    b"oss:",
    b"ObjectCreated:*",
    b"\n",
    b"=",
    b"[[trigger]]\n",
    b"[[service.function]]\n",
    b"\"\"\"",
    b"T|",
    b"R|",
    b"|",
    b"/",
    b"//",
    b"*.",
    b"GET",
    b"POST,GET",
    b"0",
    b"\xff\xff",
];

fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(i..i, t.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                v.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(256)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.below(len + 1);
                for _ in 0..1 + rng.below(8) {
                    v.splice(at..at, chunk.iter().copied());
                }
            }
            5 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(512)).min(other.len());
                    let at = rng.below(len + 1);
                    v.splice(at..at, other[a..b].iter().copied());
                }
            }
            6 if len > 0 => v.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
        }
    }
    v
}

fn smoke(target: &str) {
    let (_, body, _) = TARGETS
        .iter()
        .find(|(name, _, _)| *name == target)
        .expect("known target");
    let corpus = seeds(target);
    assert!(corpus.len() >= 3, "{target}: only {} seeds", corpus.len());
    for s in &corpus {
        body(s);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
    for i in 0..MUTATIONS {
        let seed = &corpus[i % corpus.len()];
        let input = mutate(&mut rng, seed, &corpus);
        let hook = std::panic::catch_unwind(|| body(&input));
        if hook.is_err() {
            panic!(
                "{target}: mutation {i} of seed {} fails; input (escaped): {}",
                i % corpus.len(),
                input.escape_ascii()
            );
        }
    }
}

/// The seeds are inputs the parsers accept, so the mutations start from the paths that matter
/// (a trigger seed that failed validation would never reach the router).
#[test]
fn seeds_are_accepted_inputs() {
    for seed in seeds("http_trigger") {
        let (toml, requests) = trigger_lines(std::str::from_utf8(&seed).unwrap());
        assert!(!requests.is_empty());
        if let Err(p) = compile(&toml) {
            panic!("{toml}\n{p:?}");
        }
    }
    for name in ["demo.toml", "reference.toml"] {
        let text = std::fs::read_to_string(repo_root().join("config").join(name)).unwrap();
        if let Err(p) = compile(&text) {
            panic!("{name}: {p:?}");
        }
    }
    for name in ["good.toml", "process.toml"] {
        let text =
            std::fs::read_to_string(repo_root().join("fuzz/seeds/config").join(name)).unwrap();
        if let Err(p) = compile(&text) {
            panic!("{name}: {p:?}");
        }
    }
    for seed in seeds("event_notification") {
        if seed.starts_with(b"#") {
            continue; // the README
        }
        assert!(
            parse("src", &seed, MAX_EVENT_MAX_RECORDS).is_ok(),
            "{}",
            String::from_utf8_lossy(&seed)
        );
    }
}

#[test]
fn smoke_event_notification() {
    smoke("event_notification");
}

#[test]
fn smoke_config() {
    smoke("config");
}

#[test]
fn smoke_http_trigger() {
    smoke("http_trigger");
}

#[test]
fn smoke_plugin_decision() {
    smoke("plugin_decision");
}

#[test]
fn smoke_http1_framing() {
    smoke("http1_framing");
}

/// Writes the decision encoding that `Reader` reads.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn byte(&mut self, b: u8) -> &mut Self {
        self.0.push(b);
        self
    }

    fn string(&mut self, s: &str) -> &mut Self {
        self.0.extend((s.len() as u16).to_le_bytes());
        self.0.push(0);
        self.0.extend(s.as_bytes());
        self
    }

    fn opt_string(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.byte(1).string(s),
            None => self.byte(0),
        }
    }

    fn opt_i32(&mut self, v: Option<i32>) -> &mut Self {
        match v {
            Some(v) => {
                self.byte(1);
                self.0.extend(v.to_le_bytes());
                self
            }
            None => self.byte(0),
        }
    }

    fn headers(&mut self, hs: &[(&str, &str)]) -> &mut Self {
        self.byte(hs.len() as u8);
        for (n, v) in hs {
            self.string(n).string(v);
        }
        self
    }
}

struct Proceed<'a> {
    function: Option<&'a str>,
    invocation: u8,
    priority: Option<i32>,
    tenant: Option<&'a str>,
    set: &'a [(&'a str, &'a str)],
    remove: &'a [&'a str],
    path: Option<&'a str>,
}

fn proceed(p: Proceed<'_>) -> Vec<u8> {
    let mut w = Writer::default();
    w.byte(0).byte(0).opt_string(p.function).byte(p.invocation);
    w.opt_i32(p.priority).opt_string(p.tenant).headers(p.set);
    w.byte(p.remove.len() as u8);
    for r in p.remove {
        w.string(r);
    }
    w.opt_string(p.path);
    w.0
}

fn reject(status: u16, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.byte(0).byte(1);
    w.0.extend(status.to_le_bytes());
    w.headers(headers).string(body);
    w.0
}

/// What the example plugins in `plugins/` return (header-router, gpu-router, tenant-policy,
/// event-filter, and the hostile plugin's invalid decisions).
fn decision_seeds() -> Vec<Vec<u8>> {
    let none = Proceed {
        function: None,
        invocation: 0,
        priority: None,
        tenant: None,
        set: &[],
        remove: &[],
        path: None,
    };
    let mut out = vec![
        proceed(Proceed {
            set: &[("x-fngate-route", "default")],
            ..none
        }),
        proceed(Proceed {
            function: Some("demo/echo-canary"),
            set: &[("x-fngate-route", "canary")],
            ..none
        }),
        proceed(Proceed {
            function: Some("models/llm-a100"),
            set: &[("x-fngate-gpu-route", "A100")],
            ..none
        }),
        proceed(Proceed {
            priority: Some(5),
            tenant: Some("acme"),
            set: &[("x-tenant", "acme")],
            remove: &["authorization"],
            ..none
        }),
        proceed(Proceed {
            invocation: 2,
            path: Some("/v1/chat/completions"),
            ..none
        }),
        proceed(Proceed {
            path: Some("no-leading-slash"),
            ..none
        }),
        reject(
            429,
            &[("content-type", "application/json"), ("retry-after", "1")],
            r#"{"error":{"code":"tenant_rate_limited","message":"tenant acme is over its request rate limit"}}"#,
        ),
        reject(
            403,
            &[("content-type", "application/json")],
            r#"{"error":{"code":"unknown_api_key","message":"the API key is not known"}}"#,
        ),
        reject(200, &[], "200 is not a rejection"),
    ];
    let mut w = Writer::default();
    w.byte(1)
        .byte(0)
        .opt_string(Some("media/thumbnail"))
        .opt_i32(None)
        .opt_string(None);
    out.push(w.0);
    let mut w = Writer::default();
    w.byte(1).byte(1).string(r#"key ends with ".part""#);
    out.push(w.0);
    let mut w = Writer::default();
    w.byte(1)
        .byte(0)
        .opt_string(None)
        .opt_i32(Some(-3))
        .opt_string(Some("tenant-a"));
    out.push(w.0);
    out
}

/// The decision seeds in `fuzz/seeds/plugin_decision` are `decision_seeds()`; after changing
/// either, `FNGATE_WRITE_FUZZ_SEEDS=1 cargo test -p fngate --lib fuzzing::` rewrites the files.
#[test]
fn decision_seed_files_match_the_encoder() {
    let dir = repo_root().join("fuzz/seeds/plugin_decision");
    let write = std::env::var_os("FNGATE_WRITE_FUZZ_SEEDS").is_some();
    for (i, seed) in decision_seeds().iter().enumerate() {
        let path = dir.join(format!("example-{i:02}"));
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, seed).unwrap();
        }
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; rewrite the seeds", path.display()));
        assert_eq!(
            &on_disk,
            seed,
            "{} is stale; rewrite the seeds",
            path.display()
        );
    }
}
