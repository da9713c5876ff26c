//! Backends: the pooled HTTP/1.1 client to instances and the request/response header rules.
//!
//! Connections to instances are kept alive and reused (hyper-util's pool). A request is streamed
//! to the instance as it arrives from the client, with the function's body limit enforced on the
//! way; a client that goes away drops the upstream request, which closes that upstream connection.

use crate::body::BoxError;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

pub fn client() -> UpstreamClient {
    pooled_client()
}

/// A pooled keep-alive HTTP/1.1 client to instances, for any request body type (streamed sync
/// requests, stored async ones).
pub fn pooled_client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_keepalive(Some(Duration::from_secs(30)));
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector)
}

/// The body limit of a function was exceeded while streaming the request upstream.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {limit} bytes")]
pub struct BodyLimitExceeded {
    pub limit: u64,
}

/// Reading the client's request body failed (bad chunked framing, a reset stream): the
/// client's fault, answered 400, never counted against the upstream.
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read: {0}")]
pub struct ClientBodyFailed(#[source] pub hyper::Error);

pin_project_lite::pin_project! {
    /// The client's request body on its way upstream: counted, and cut at the function's limit.
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        limit: u64,
        seen: Arc<AtomicU64>,
        // Frames already read for policy plugins, sent first.
        replay: VecDeque<Frame<Bytes>>,
    }
}

impl UpstreamBody {
    pub fn new(inner: Incoming, limit: u64, seen: Arc<AtomicU64>) -> Self {
        UpstreamBody {
            inner,
            limit,
            seen,
            replay: VecDeque::new(),
        }
    }

    pub fn with_replay(mut self, frames: VecDeque<Frame<Bytes>>) -> Self {
        self.replay = frames;
        self
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = match this.replay.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => this.inner.poll_frame(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let total =
                        this.seen.fetch_add(d.len() as u64, Ordering::Relaxed) + d.len() as u64;
                    if total > *this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded {
                            limit: *this.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(ClientBodyFailed(e))))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.replay.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .replay
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let inner = self.inner.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(inner.lower() + buffered);
        if let Some(u) = inner.upper() {
            h.set_upper(u + buffered);
        }
        h
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1); never forwarded.
/// A `static`: a `const` array of header names would be built (and dropped) again at every
/// use, and `strip_hop_by_hop` looks at it for each header of every message.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Whether `n` describes a connection or the message's framing: set only by the proxy itself
/// (a policy plugin may not set one: it would desynchronise the upstream's framing).
pub fn is_hop_by_hop_or_framing(n: &HeaderName) -> bool {
    HOP_BY_HOP.contains(n) || n == header::TRANSFER_ENCODING || n == header::CONTENT_LENGTH
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none: one pass over their few names instead of a hashed lookup for
    // each of the nine names below (twice per request: its headers and the response's).
    if !h
        .keys()
        .any(|k| HOP_BY_HOP.contains(k) || k == header::TRANSFER_ENCODING)
    {
        return;
    }
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    // Framing is the proxy's business on each side; hyper sets it from the body.
    h.remove(header::TRANSFER_ENCODING);
}

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-fngate-request-id");
pub static X_INSTANCE_ID: HeaderName = HeaderName::from_static("x-fngate-instance-id");
pub static X_INSTANCE_KIND: HeaderName = HeaderName::from_static("x-fngate-instance-kind");
pub static X_COLD_START: HeaderName = HeaderName::from_static("x-fngate-cold-start");

/// Appends the client address to `x-forwarded-for` and sets proto and host.
pub fn add_forwarded(
    h: &mut HeaderMap,
    client_ip: std::net::IpAddr,
    tls: bool,
    host: Option<&str>,
) {
    let mut text = [0; 45];
    let ip = crate::telemetry::ip_text(client_ip, &mut text);
    // One hashed lookup for reading and replacing x-forwarded-for.
    let entry = h.entry(&X_FORWARDED_FOR);
    let prev = match &entry {
        header::Entry::Occupied(e) => e.get().to_str().ok().filter(|p| !p.trim().is_empty()),
        header::Entry::Vacant(_) => None,
    };
    let xff = match prev {
        Some(prev) => HeaderValue::from_bytes(&[prev.as_bytes(), b", ", ip].concat()),
        None => HeaderValue::from_bytes(ip),
    };
    if let Ok(v) = xff {
        match entry {
            header::Entry::Occupied(mut e) => {
                e.insert(v);
            }
            header::Entry::Vacant(e) => {
                e.insert(v);
            }
        }
    }
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(v) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        h.insert(X_FORWARDED_HOST.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn forwarded_appends() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        add_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            true,
            Some("gw.example"),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "gw.example");
        // Written as `Display` writes them; an empty previous value is replaced.
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            for prev in [None, Some(""), Some("10.0.0.1")] {
                let mut h = HeaderMap::new();
                if let Some(p) = prev {
                    h.insert(&X_FORWARDED_FOR, HeaderValue::from_static(p));
                }
                add_forwarded(&mut h, ip.parse().unwrap(), false, None);
                let want = match prev {
                    Some(p) if !p.is_empty() => format!("{p}, {ip}"),
                    _ => ip.to_string(),
                };
                assert_eq!(h[&X_FORWARDED_FOR], want.as_str());
                assert_eq!(h[&X_FORWARDED_PROTO], "http");
                assert!(!h.contains_key(&X_FORWARDED_HOST));
            }
        }
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert("x-custom", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        // Each hop-by-hop name alone is found by the one pass and removed.
        for n in HOP_BY_HOP.iter().chain([&header::TRANSFER_ENCODING]) {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            h.insert(n.clone(), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{n}");
        }
    }
}
