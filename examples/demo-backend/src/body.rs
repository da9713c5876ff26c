//! The one response body type: static/owned bytes, paced event streams, and request echo.
//!
//! A single enum instead of a boxed trait object keeps the hot paths (`/bytes/N`, `/health`)
//! allocation-free, and lets every variant carry the in-flight guard so `/stats` counts a request
//! until its body is finished or dropped.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::handlers::InFlight;
use crate::model::Generator;

const SLAB_LEN: usize = 64 * 1024;

/// `/bytes/N` is served from slices of this, so no size needs an allocation.
static SLAB: [u8; SLAB_LEN] = [b'x'; SLAB_LEN];

const DONE: &[u8] = b"data: [DONE]\n\n";

pub struct Body {
    kind: Kind,
    guard: Option<InFlight>,
}

enum Kind {
    Full(Option<Bytes>),
    /// Remaining length of a `/bytes/N` answer larger than the slab.
    Repeat(u64),
    Events(Box<Events>),
    Echo(Incoming),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self::from_kind(Kind::Full((!bytes.is_empty()).then_some(bytes)))
    }

    pub fn from_static(bytes: &'static [u8]) -> Self {
        Self::full(Bytes::from_static(bytes))
    }

    /// `n` bytes of `x`.
    pub fn xs(n: u64) -> Self {
        match usize::try_from(n) {
            Ok(n) if n <= SLAB_LEN => Self::from_static(&SLAB[..n]),
            _ => Self::from_kind(Kind::Repeat(n)),
        }
    }

    /// `count` events `data: token {i}`, then `[DONE]`.
    pub fn ticks(count: u64, interval: Duration) -> Self {
        Self::events(
            Source::Ticks {
                next: 0,
                total: count,
            },
            interval,
        )
    }

    /// One `data: {"token":..,"index":..}` event per generated token, then `[DONE]`.
    pub fn tokens(generator: Generator, interval: Duration) -> Self {
        Self::events(
            Source::Tokens {
                generator,
                index: 0,
            },
            interval,
        )
    }

    /// Streams the request body back as it arrives.
    pub fn echo(incoming: Incoming) -> Self {
        Self::from_kind(Kind::Echo(incoming))
    }

    pub fn set_guard(&mut self, guard: InFlight) {
        self.guard = Some(guard);
    }

    fn events(source: Source, interval: Duration) -> Self {
        let pace = (!interval.is_zero()).then(|| Pace {
            sleep: Box::pin(tokio::time::sleep(interval)),
            interval,
            armed: false,
        });
        Self::from_kind(Kind::Events(Box::new(Events {
            source,
            pace,
            done: false,
        })))
    }

    fn from_kind(kind: Kind) -> Self {
        Self { kind, guard: None }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = match &mut this.kind {
            Kind::Full(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
            Kind::Repeat(remaining) => (*remaining > 0).then(|| {
                let n = usize::try_from(*remaining).map_or(SLAB_LEN, |r| r.min(SLAB_LEN));
                *remaining -= n as u64;
                Ok(Frame::data(Bytes::from_static(&SLAB[..n])))
            }),
            Kind::Events(events) => ready!(events.poll_next(cx)).map(|b| Ok(Frame::data(b))),
            Kind::Echo(incoming) => ready!(Pin::new(incoming).poll_frame(cx)),
        };
        if frame.is_none() {
            this.guard = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Repeat(remaining) => *remaining == 0,
            Kind::Events(events) => events.done,
            Kind::Echo(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Repeat(remaining) => SizeHint::with_exact(*remaining),
            Kind::Events(_) => SizeHint::default(),
            Kind::Echo(incoming) => incoming.size_hint(),
        }
    }
}

/// Produces SSE events lazily inside the body, so each is written as it is produced and the
/// stream stops the moment hyper drops the body (client gone): no producer task to outlive it.
struct Events {
    source: Source,
    pace: Option<Pace>,
    done: bool,
}

struct Pace {
    sleep: Pin<Box<Sleep>>,
    interval: Duration,
    /// False until the first event: that one goes out immediately.
    armed: bool,
}

enum Source {
    Ticks { next: u64, total: u64 },
    Tokens { generator: Generator, index: u64 },
}

impl Events {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.source.exhausted() {
            // [DONE] follows the last event at once rather than after another interval.
            self.done = true;
            return Poll::Ready(Some(Bytes::from_static(DONE)));
        }
        if let Some(pace) = &mut self.pace {
            let now = Instant::now();
            if pace.armed {
                ready!(pace.sleep.as_mut().poll(cx));
                // Schedule from the previous deadline so the cadence does not drift, unless a
                // slow reader already put us behind.
                let next = pace.sleep.deadline() + pace.interval;
                let next = if next > now {
                    next
                } else {
                    now + pace.interval
                };
                pace.sleep.as_mut().reset(next);
            } else {
                pace.armed = true;
                pace.sleep.as_mut().reset(now + pace.interval);
            }
        }
        Poll::Ready(Some(self.source.next_event()))
    }
}

impl Source {
    fn exhausted(&self) -> bool {
        match self {
            Source::Ticks { next, total } => next >= total,
            Source::Tokens { generator, .. } => generator.remaining() == 0,
        }
    }

    fn next_event(&mut self) -> Bytes {
        match self {
            Source::Ticks { next, .. } => {
                let event = format!("data: token {next}\n\n");
                *next += 1;
                Bytes::from(event)
            }
            Source::Tokens { generator, index } => {
                let mut event = Vec::with_capacity(48);
                event.extend_from_slice(b"data: {\"token\":");
                crate::handlers::json_str(&mut event, generator.next_token().unwrap_or_default());
                event.extend_from_slice(format!(",\"index\":{index}}}\n\n").as_bytes());
                *index += 1;
                Bytes::from(event)
            }
        }
    }
}
