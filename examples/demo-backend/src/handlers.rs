//! Request routing, the fault-injection query parameters, and the `/stats` counters.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::Body;
use crate::model::{self, Generator};

/// Largest `/bytes/N` answer.
const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Environment variables `/env` always reports (as null when unset), besides every `DEMO_*` one.
const ENV_REPORTED: [&str; 9] = [
    "PORT",
    "FNGATE_INSTANCE_ID",
    "FNGATE_FUNCTION",
    "FNGATE_INSTANCE_KIND",
    "CUDA_VISIBLE_DEVICES",
    "FNGATE_GPU_TYPE",
    "FNGATE_GPU_MEMORY_GB",
    "FNGATE_GPU_MEMORY_FRACTION",
    "FNGATE_GPU_CARD_MEMORY_GB",
];

/// Largest `/generate` request body; the model reads it whole, so it must be bounded.
const MAX_GENERATE_BODY: usize = 1024 * 1024;

const DEFAULT_SSE_INTERVAL: Duration = Duration::from_millis(100);

static INSTANCE_HEADER: HeaderName = HeaderName::from_static("x-backend-instance");
static JSON: HeaderValue = HeaderValue::from_static("application/json");
static TEXT: HeaderValue = HeaderValue::from_static("text/plain");
static OCTETS: HeaderValue = HeaderValue::from_static("application/octet-stream");
static EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
static NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");

/// Process-wide configuration and counters; leaked once at startup so every connection task can
/// hold a plain `&'static` instead of cloning an `Arc` per request.
pub struct State {
    pub id: &'static str,
    /// Built from the leaked `id`, so cloning it onto every response is free.
    pub id_header: HeaderValue,
    pub delay: Duration,
    pub stats: Stats,
    pub readiness: Readiness,
}

/// Decides each `/health` answer, so tests can hold an instance unready or make it fail later.
pub struct Readiness {
    /// Checks answered healthy before readiness is lost for good; `None`: always healthy.
    healthy_checks: Option<u64>,
    checks: AtomicU64,
}

impl Readiness {
    pub fn new(healthy_checks: Option<u64>) -> Self {
        Self {
            healthy_checks,
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one check and says whether it passes.
    fn check(&self) -> bool {
        match self.healthy_checks {
            None => true,
            Some(limit) => self.checks.fetch_add(1, Ordering::Relaxed) < limit,
        }
    }
}

#[derive(Default)]
pub struct Stats {
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    requests: AtomicU64,
}

impl Stats {
    fn enter(&'static self) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self)
    }

    fn to_json(&self) -> String {
        format!(
            "{{\"in_flight\":{},\"max_in_flight\":{},\"requests\":{}}}",
            self.in_flight.load(Ordering::Relaxed),
            self.max_in_flight.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }

    fn reset(&self) {
        self.max_in_flight.store(0, Ordering::Relaxed);
        self.requests.store(0, Ordering::Relaxed);
    }
}

/// Counts one request as in flight until dropped. It lives in the handler future and then in the
/// response body, so it is released when the body is finished or hyper drops either of them
/// because the client went away.
pub struct InFlight(&'static Stats);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Returned for `reset=1` (and unreadable request bodies): hyper closes the connection without
/// writing a response when the service fails.
#[derive(Debug)]
pub struct Abort;

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection aborted on purpose")
    }
}

impl std::error::Error for Abort {}

pub async fn handle(
    state: &'static State,
    req: Request<Incoming>,
) -> Result<Response<Body>, Abort> {
    let path = req.uri().path();
    let (status, content_type, body) = match path {
        "/health" if state.readiness.check() => (StatusCode::OK, &TEXT, Body::from_static(b"ok")),
        "/health" => (
            StatusCode::SERVICE_UNAVAILABLE,
            &JSON,
            Body::from_static(br#"{"status":"unready"}"#),
        ),
        "/env" => (StatusCode::OK, &JSON, Body::full(process_env_json())),
        "/stats" => (StatusCode::OK, &JSON, Body::full(state.stats.to_json())),
        "/stats/reset" if req.method() == Method::POST => {
            state.stats.reset();
            (StatusCode::OK, &JSON, Body::full(state.stats.to_json()))
        }
        "/stats/reset" => method_not_allowed(),
        _ => return counted(state, req).await,
    };
    Ok(respond(state, status, content_type, body))
}

/// Everything except `/health`, `/stats` and `/env`: counted in `/stats` and subject to the query knobs.
async fn counted(state: &'static State, req: Request<Incoming>) -> Result<Response<Body>, Abort> {
    let guard = state.stats.enter();
    let params = match Params::parse(req.uri().query()) {
        Ok(params) => params,
        Err(message) => {
            let (status, content_type, mut body) = error(StatusCode::BAD_REQUEST, &message);
            body.set_guard(guard);
            return Ok(respond(state, status, content_type, body));
        }
    };
    if let Some(line) = &params.log {
        log_line(line);
    }
    if params.crash {
        std::process::exit(3);
    }
    if params.reset {
        return Err(Abort);
    }
    if params.hang {
        // Never completes; hyper drops this future (and the guard) when the client disconnects.
        std::future::pending::<()>().await;
    }
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }

    let (parts, incoming) = req.into_parts();
    let mut response = if params.echo_body {
        // Sleep before answering: the body cannot be read first without buffering it.
        sleep_ms(params.sleep_ms).await;
        let content_type = parts.headers.get(CONTENT_TYPE).cloned();
        let mut response = respond(state, StatusCode::OK, &OCTETS, Body::echo(incoming));
        match content_type {
            Some(value) => response.headers_mut().insert(CONTENT_TYPE, value),
            None => response.headers_mut().remove(CONTENT_TYPE),
        };
        response
    } else {
        let route = Route::of(&parts);
        // For /generate, `None` means the body was over the limit.
        let (body_bytes, payload) = match route {
            Route::Generate => {
                let payload = collect(incoming).await?;
                (payload.as_ref().map_or(0, |p| p.len() as u64), payload)
            }
            _ => (count(incoming).await?, None),
        };
        sleep_ms(params.sleep_ms).await;
        let (status, content_type, body) = if let Some(events) = params.sse {
            let interval = params.interval.unwrap_or(DEFAULT_SSE_INTERVAL);
            (StatusCode::OK, &EVENT_STREAM, Body::ticks(events, interval))
        } else {
            match route {
                Route::Bytes(Ok(n)) => (StatusCode::OK, &OCTETS, Body::xs(n)),
                Route::Bytes(Err(message)) => error(StatusCode::BAD_REQUEST, message),
                Route::GenerateMethod => method_not_allowed(),
                Route::Generate => match payload {
                    Some(payload) => generate(state, &payload, params.interval),
                    None => error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
                },
                Route::Echo => {
                    let json = echo_json(state, &parts, body_bytes);
                    (StatusCode::OK, &JSON, Body::full(json))
                }
            }
        };
        respond(state, status, content_type, body)
    };
    if content_is_stream(&response) {
        response
            .headers_mut()
            .insert(CACHE_CONTROL, NO_CACHE.clone());
    }
    if let Some(status) = params.status {
        *response.status_mut() = status;
    }
    response.body_mut().set_guard(guard);
    Ok(response)
}

fn content_is_stream(response: &Response<Body>) -> bool {
    response.headers().get(CONTENT_TYPE) == Some(&EVENT_STREAM)
}

type Answer = (StatusCode, &'static HeaderValue, Body);

fn respond(
    state: &State,
    status: StatusCode,
    content_type: &HeaderValue,
    body: Body,
) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(&INSTANCE_HEADER, state.id_header.clone());
    headers.insert(CONTENT_TYPE, content_type.clone());
    response
}

fn error(status: StatusCode, message: &str) -> Answer {
    let mut json = Vec::with_capacity(message.len() + 16);
    json.extend_from_slice(b"{\"error\":");
    json_str(&mut json, message);
    json.push(b'}');
    (status, &JSON, Body::full(json))
}

fn method_not_allowed() -> Answer {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

enum Route {
    Bytes(Result<u64, &'static str>),
    Generate,
    GenerateMethod,
    Echo,
}

impl Route {
    fn of(parts: &Parts) -> Self {
        let path = parts.uri.path();
        if let Some(n) = path.strip_prefix("/bytes/") {
            return Route::Bytes(match n.parse::<u64>() {
                Ok(n) if n <= MAX_BYTES => Ok(n),
                Ok(_) => Err("at most 16777216 bytes"),
                Err(_) => Err("expected /bytes/N with N a byte count"),
            });
        }
        match (path, &parts.method) {
            ("/generate", &Method::POST) => Route::Generate,
            ("/generate", _) => Route::GenerateMethod,
            _ => Route::Echo,
        }
    }
}

/// Reads and discards the request body, so keep-alive survives and `body_bytes` is honest.
async fn count(mut incoming: Incoming) -> Result<u64, Abort> {
    let mut total = 0;
    while let Some(frame) = incoming.frame().await {
        if let Ok(data) = frame.map_err(|_| Abort)?.into_data() {
            total += data.len() as u64;
        }
    }
    Ok(total)
}

/// Reads a `/generate` body whole; `None` once it exceeds the limit (the rest is left unread).
async fn collect(mut incoming: Incoming) -> Result<Option<Bytes>, Abort> {
    let mut buf = Vec::new();
    while let Some(frame) = incoming.frame().await {
        if let Ok(data) = frame.map_err(|_| Abort)?.into_data() {
            if buf.len() + data.len() > MAX_GENERATE_BODY {
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Some(Bytes::from(buf)))
}

/// `log=TEXT`: one line on each stream, flushed at once, so tests can check that the gateway
/// captures an instance's stdout and stderr separately. Write errors are ignored: a closed pipe
/// must not fail the request that asked for the line.
fn log_line(line: &str) {
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    }
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "err: {line}").and_then(|()| stderr.flush());
}

/// `/env` for this process.
fn process_env_json() -> Vec<u8> {
    let vars = std::env::vars_os().map(|(k, v)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    });
    let cwd = std::env::current_dir()
        .ok()
        .map(|dir| dir.to_string_lossy().into_owned());
    env_json(vars, std::process::id(), cwd)
        .to_string()
        .into_bytes()
}

/// What the instance was started with, as the gateway set it up: the fixed variables (null when
/// unset), every `DEMO_*` variable, the pid and the working directory. The environment is
/// passed in so tests need not touch the real one.
fn env_json(
    vars: impl IntoIterator<Item = (String, String)>,
    pid: u32,
    cwd: Option<String>,
) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    for name in ENV_REPORTED {
        object.insert(name.to_owned(), serde_json::Value::Null);
    }
    for (name, value) in vars {
        if ENV_REPORTED.contains(&name.as_str()) || name.starts_with("DEMO_") {
            object.insert(name, value.into());
        }
    }
    object.insert("pid".to_owned(), pid.into());
    object.insert("cwd".to_owned(), cwd.into());
    object.into()
}

async fn sleep_ms(ms: Option<u64>) {
    if let Some(ms) = ms.filter(|&ms| ms > 0) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

fn generate(state: &State, payload: &[u8], interval: Option<Duration>) -> Answer {
    let request = match GenerateRequest::parse(payload) {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    if request.stream {
        let generator = Generator::new(&request.prompt, request.max_tokens);
        let body = Body::tokens(generator, interval.unwrap_or(Duration::ZERO));
        return (StatusCode::OK, &EVENT_STREAM, body);
    }
    let text = model::generate(&request.prompt, request.max_tokens);
    let mut json = Vec::with_capacity(text.len() + state.id.len() + 48);
    json.extend_from_slice(b"{\"instance\":");
    json_str(&mut json, state.id);
    json.extend_from_slice(b",\"text\":");
    json_str(&mut json, &text);
    json.extend_from_slice(format!(",\"tokens\":{}}}", request.max_tokens).as_bytes());
    (StatusCode::OK, &JSON, Body::full(json))
}

struct GenerateRequest {
    prompt: String,
    max_tokens: usize,
    stream: bool,
}

impl GenerateRequest {
    fn parse(payload: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))?;
        let object = value.as_object().ok_or("expected a JSON object")?;
        let prompt = match object.get("prompt") {
            Some(serde_json::Value::String(prompt)) => prompt.clone(),
            Some(_) => return Err("\"prompt\" must be a string".into()),
            None => return Err("missing \"prompt\"".into()),
        };
        let max_tokens = match object.get("max_tokens") {
            None | Some(serde_json::Value::Null) => model::DEFAULT_TOKENS,
            Some(value) => match value.as_u64() {
                Some(n) if n <= model::MAX_TOKENS as u64 => n as usize,
                _ => {
                    return Err(format!(
                        "\"max_tokens\" must be an integer from 0 to {}",
                        model::MAX_TOKENS
                    ));
                }
            },
        };
        let stream = match object.get("stream") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(stream)) => *stream,
            Some(_) => return Err("\"stream\" must be a boolean".into()),
        };
        Ok(Self {
            prompt,
            max_tokens,
            stream,
        })
    }
}

fn echo_json(state: &State, parts: &Parts, body_bytes: u64) -> Vec<u8> {
    let mut json = Vec::with_capacity(256 + parts.headers.len() * 48);
    json.extend_from_slice(b"{\"instance\":");
    json_str(&mut json, state.id);
    json.extend_from_slice(b",\"method\":");
    json_str(&mut json, parts.method.as_str());
    json.extend_from_slice(b",\"path\":");
    json_str(&mut json, parts.uri.path());
    json.extend_from_slice(b",\"query\":");
    json_str(&mut json, parts.uri.query().unwrap_or(""));
    json.extend_from_slice(b",\"headers\":{");
    for (i, name) in parts.headers.keys().enumerate() {
        // Repeated headers: the last value wins, as documented for the echo endpoint.
        let Some(value) = parts.headers.get_all(name).iter().next_back() else {
            continue;
        };
        if i > 0 {
            json.push(b',');
        }
        json_str(&mut json, name.as_str());
        json.push(b':');
        json_str(&mut json, &String::from_utf8_lossy(value.as_bytes()));
    }
    let in_flight = state.stats.in_flight.load(Ordering::Relaxed);
    json.extend_from_slice(
        format!("}},\"body_bytes\":{body_bytes},\"in_flight\":{in_flight}}}").as_bytes(),
    );
    json
}

/// Appends `s` as a JSON string literal.
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for (i, c) in s.char_indices() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            _ => out.extend_from_slice(&s.as_bytes()[i..i + c.len_utf8()]),
        }
    }
    out.push(b'"');
}

/// The query knobs understood on every counted path.
#[derive(Debug, Default, PartialEq)]
struct Params {
    sleep_ms: Option<u64>,
    status: Option<StatusCode>,
    crash: bool,
    reset: bool,
    hang: bool,
    sse: Option<u64>,
    interval: Option<Duration>,
    echo_body: bool,
    /// Raw, as it appears in the query: no knob is percent-decoded.
    log: Option<String>,
}

impl Params {
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut params = Params::default();
        let Some(query) = query else {
            return Ok(params);
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("query parameter {key} must be a non-negative integer"))
            };
            let flag = || value == "1" || value == "true";
            match key {
                "sleep_ms" => params.sleep_ms = Some(number()?),
                "status" => {
                    let code = u16::try_from(number()?).ok();
                    let status = code.and_then(|c| StatusCode::from_u16(c).ok());
                    params.status = Some(status.ok_or("query parameter status must be 100..=999")?);
                }
                "crash" => params.crash = flag(),
                "reset" => params.reset = flag(),
                "hang" => params.hang = flag(),
                "sse" => params.sse = Some(number()?),
                "interval_ms" => params.interval = Some(Duration::from_millis(number()?)),
                "echo_body" => params.echo_body = flag(),
                "log" => params.log = Some(value.to_owned()),
                // Unknown parameters belong to whatever the caller is testing; ignore them.
                _ => {}
            }
        }
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_knobs() {
        let p = Params::parse(Some(
            "sleep_ms=50&status=503&sse=3&interval_ms=20&x=y&crash=0",
        ))
        .unwrap();
        assert_eq!(p.sleep_ms, Some(50));
        assert_eq!(p.status, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(p.sse, Some(3));
        assert_eq!(p.interval, Some(Duration::from_millis(20)));
        assert!(!p.crash);
        let p = Params::parse(Some("reset=1&hang=true&echo_body=1")).unwrap();
        assert!(p.reset && p.hang && p.echo_body);
        assert_eq!(Params::parse(None).unwrap(), Params::default());
        assert!(Params::parse(Some("sleep_ms=abc")).is_err());
        assert!(Params::parse(Some("status=42")).is_err());
        assert!(Params::parse(Some("status=70000")).is_err());
    }

    #[test]
    fn params_parse_log() {
        assert_eq!(Params::parse(Some("x=1")).unwrap().log, None);
        let p = Params::parse(Some("log=hello&sleep_ms=1")).unwrap();
        assert_eq!(p.log.as_deref(), Some("hello"));
        // Kept raw, like every other knob; only the first `=` splits.
        let p = Params::parse(Some("log=a%20b=c")).unwrap();
        assert_eq!(p.log.as_deref(), Some("a%20b=c"));
        assert_eq!(Params::parse(Some("log")).unwrap().log.as_deref(), Some(""));
        // The last one wins, as for the other knobs.
        let p = Params::parse(Some("log=one&log=two")).unwrap();
        assert_eq!(p.log.as_deref(), Some("two"));
    }

    #[test]
    fn readiness_counts_checks() {
        let always = Readiness::new(None);
        assert!((0..5).all(|_| always.check()));
        let never = Readiness::new(Some(0));
        assert!(!never.check() && !never.check());
        let two = Readiness::new(Some(2));
        let answers: Vec<bool> = (0..4).map(|_| two.check()).collect();
        assert_eq!(answers, [true, true, false, false]);
    }

    #[test]
    fn env_json_reports_fixed_and_demo_vars() {
        let vars = [
            ("PORT", "8080"),
            ("CUDA_VISIBLE_DEVICES", "0,1"),
            ("DEMO_MODEL", "tiny"),
            ("DEMO_", ""),
            ("HOME", "/root"),
            ("XDEMO_NO", "1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let json = env_json(vars, 42, Some("/srv/fn".into()));
        let object = json.as_object().unwrap();
        assert_eq!(json["PORT"], "8080");
        assert_eq!(json["CUDA_VISIBLE_DEVICES"], "0,1");
        assert_eq!(json["DEMO_MODEL"], "tiny");
        assert_eq!(json["DEMO_"], "");
        assert!(json["FNGATE_INSTANCE_ID"].is_null());
        assert!(json["FNGATE_GPU_CARD_MEMORY_GB"].is_null());
        assert_eq!(json["pid"], 42);
        assert_eq!(json["cwd"], "/srv/fn");
        assert!(!object.contains_key("HOME") && !object.contains_key("XDEMO_NO"));
        assert_eq!(object.len(), ENV_REPORTED.len() + 4);
        assert!(env_json([], 1, None)["cwd"].is_null());
    }

    #[test]
    fn json_str_escapes() {
        let mut out = Vec::new();
        json_str(&mut out, "a\"b\\c\nd\u{1}é");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "\"a\\\"b\\\\c\\nd\\u0001é\"");
        let back: String = serde_json::from_str(&text).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn generate_request_validation() {
        let r = GenerateRequest::parse(br#"{"prompt":"hi"}"#).unwrap();
        assert_eq!(
            (r.prompt.as_str(), r.max_tokens, r.stream),
            ("hi", 16, false)
        );
        let r =
            GenerateRequest::parse(br#"{"prompt":"hi","max_tokens":4096,"stream":true}"#).unwrap();
        assert_eq!((r.max_tokens, r.stream), (4096, true));
        assert!(GenerateRequest::parse(b"not json").is_err());
        assert!(GenerateRequest::parse(br#"{"max_tokens":3}"#).is_err());
        assert!(GenerateRequest::parse(br#"{"prompt":"hi","max_tokens":4097}"#).is_err());
        assert!(GenerateRequest::parse(br#"{"prompt":"hi","max_tokens":-1}"#).is_err());
        assert!(GenerateRequest::parse(br#"{"prompt":"hi","stream":"yes"}"#).is_err());
    }
}
