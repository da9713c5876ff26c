//! OpenTelemetry traces: one span per invocation with children for trigger match, plugin
//! decision, queue wait, cold start and the upstream call, exported over OTLP (HTTP/protobuf or
//! gRPC).
//!
//! The root span starts when the request arrives (so its id can go to the backend in
//! `traceparent` before the call) and ends with the invocation log line; the children are
//! recorded then, from the timings the invocation record already keeps. Sampling is the SDK's
//! parent-based ratio sampler: a client's `traceparent` decides when present (its sampled flag),
//! the configured ratio otherwise. Unsampled requests still propagate `traceparent` (flag 00).
//! Export runs on the batch processor's own thread; a slow or dead collector drops spans (the
//! SDK's bounded queue), it never blocks a request.

use crate::config::{OtlpProtocol, OtlpSpec};
use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

static TRACING: OnceLock<(SdkTracerProvider, Tracer)> = OnceLock::new();
pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Starts the exporter (once per process). Over HTTP spans go to `{endpoint}/v1/traces`; over
/// gRPC the exporter's channel runs on the caller's runtime (call this inside it).
pub fn init(otlp: &OtlpSpec, sample_ratio: f64) -> Result<(), String> {
    if TRACING.get().is_some() {
        return Ok(());
    }
    let endpoint = &otlp.endpoint;
    let exporter = match otlp.protocol {
        OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .with_timeout(Duration::from_secs(5))
            .build(),
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build(),
    }
    .map_err(|e| format!("cannot build the OTLP exporter for {endpoint}: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            sample_ratio,
        ))))
        .with_resource(Resource::builder().with_service_name("fngate").build())
        .build();
    let tracer = provider.tracer("fngate");
    let _ = TRACING.set((provider, tracer));
    Ok(())
}

/// Flushes what is buffered (at shutdown).
pub fn shutdown() {
    if let Some((provider, _)) = TRACING.get() {
        let _ = provider.force_flush();
        let _ = provider.shutdown();
    }
}

/// `00-{trace id}-{span id}-{flags}` → a remote parent; anything else is ignored.
fn parse_traceparent(v: &HeaderValue) -> Option<SpanContext> {
    let s = v.to_str().ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    ))
}

/// `00-{trace id}-{span id}-{flags}`, hex-encoded in place: sent on every request, so no
/// formatting machinery.
fn traceparent_value(trace: [u8; 16], span: [u8; 8], flags: u8) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    fn hex(out: &mut [u8], bytes: &[u8]) {
        for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 15)];
        }
    }
    let mut out = *b"00-________________________________-________________-__";
    hex(&mut out[3..35], &trace);
    hex(&mut out[36..52], &span);
    hex(&mut out[53..55], &[flags]);
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The trace of one invocation, from arrival to the log line.
pub struct Invocation {
    span: opentelemetry_sdk::trace::Span,
}

impl std::fmt::Debug for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invocation")
            .field("context", self.span.span_context())
            .finish()
    }
}

/// Starts an invocation's root span when tracing is configured.
pub fn start(headers: &HeaderMap) -> Option<Invocation> {
    let (_, tracer) = TRACING.get()?;
    let parent = match headers.get(&TRACEPARENT).and_then(parse_traceparent) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    };
    let span = tracer
        .span_builder("invocation")
        .with_kind(SpanKind::Server)
        .start_with_context(tracer, &parent);
    Some(Invocation { span })
}

/// Wall-clock time of a monotonic instant, given one pair read together.
pub fn wall(at: Instant, now: Instant, now_wall: SystemTime) -> SystemTime {
    match now.checked_duration_since(at) {
        Some(ago) => now_wall - ago,
        None => now_wall + at.duration_since(now),
    }
}

impl Invocation {
    /// The header for the backend: this invocation's span as the parent.
    pub fn traceparent(&self) -> HeaderValue {
        let sc = self.span.span_context();
        traceparent_value(
            sc.trace_id().to_bytes(),
            sc.span_id().to_bytes(),
            sc.trace_flags().to_u8(),
        )
    }

    pub fn is_sampled(&self) -> bool {
        self.span.span_context().is_sampled()
    }

    /// A finished child span.
    pub fn child(&self, name: &'static str, start: SystemTime, end: SystemTime) {
        let Some((_, tracer)) = TRACING.get() else {
            return;
        };
        let parent = Context::new().with_remote_span_context(self.span.span_context().clone());
        let mut child = tracer
            .span_builder(name)
            .with_kind(if name == "upstream call" {
                SpanKind::Client
            } else {
                SpanKind::Internal
            })
            .with_start_time(start)
            .start_with_context(tracer, &parent);
        child.end_with_timestamp(end);
    }

    /// Ends the root span with its attributes.
    pub fn finish(mut self, attributes: Vec<KeyValue>, error: Option<&str>, end: SystemTime) {
        self.span.set_attributes(attributes);
        if let Some(e) = error {
            self.span.set_status(Status::error(e.to_owned()));
        }
        self.span.end_with_timestamp(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let ok =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let sc = parse_traceparent(&ok).unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        let unsampled =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!parse_traceparent(&unsampled).unwrap().is_sampled());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(
                parse_traceparent(&HeaderValue::from_static(bad)).is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn traceparent_header_shape() {
        let mut trace = [0u8; 16];
        trace[0] = 0x4b;
        trace[15] = 0x36;
        let span = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
        assert_eq!(
            traceparent_value(trace, span, 1),
            "00-4b000000000000000000000000000036-00f067aa0ba902b7-01"
        );
        assert_eq!(
            traceparent_value([0xff; 16], [0xff; 8], 0),
            "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-00"
        );
    }

    #[test]
    fn wall_clock_of_instants() {
        let now = Instant::now();
        let wall_now = SystemTime::now();
        let earlier = now - Duration::from_millis(250);
        assert_eq!(
            wall(earlier, now, wall_now),
            wall_now - Duration::from_millis(250)
        );
        assert_eq!(wall(now, now, wall_now), wall_now);
    }
}
