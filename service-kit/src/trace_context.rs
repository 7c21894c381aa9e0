//! W3C trace context (`traceparent`) through both services. Every request runs in a `request`
//! span carrying `trace_id` and `span_id`, so each log line written while serving it (the JSON
//! format prints the span's fields) can be joined across services by its trace id. A caller's
//! trace is continued only when the service trusts the caller (the api-service: admin calls and
//! its trusted proxies; a public client would otherwise choose the ids in our logs); any other
//! request starts a trace of its own. Calls a request makes onward carry its `traceparent`
//! ([`outgoing`]).
//!
//! No OpenTelemetry SDK: the ids and the header are all the propagation needs, and the logs are
//! where an operator looks today; an OTLP exporter can later read the same spans.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

/// The header's name, as W3C Trace Context spells it.
pub const TRACEPARENT: &str = "traceparent";

/// One span's place in a trace.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceContext {
    /// Reads a `traceparent` header: `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not all
    /// zero. Later versions may append fields after the flags, which are ignored; version `ff`
    /// is invalid. Anything else is `None`, and the request starts a trace of its own.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let (trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let hex = |text: &str, out: &mut [u8]| -> Option<()> {
            if text.len() != out.len() * 2 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return None;
            }
            for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
                *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
            }
            Some(())
        };
        let mut context = TraceContext { trace_id: [0; 16], span_id: [0; 8], flags: 0 };
        hex(version, &mut [0])?;
        hex(trace_id, &mut context.trace_id)?;
        hex(span_id, &mut context.span_id)?;
        let mut flag_byte = [0];
        hex(flags, &mut flag_byte)?;
        context.flags = flag_byte[0];
        (context.trace_id != [0; 16] && context.span_id != [0; 8]).then_some(context)
    }

    /// A new trace, sampled.
    pub fn root() -> TraceContext {
        let mut trace_id = [0; 16];
        fill_random(&mut trace_id);
        TraceContext { trace_id, span_id: new_span_id(), flags: 1 }
    }

    /// This service's span within the caller's trace.
    pub fn child(&self) -> TraceContext {
        TraceContext { span_id: new_span_id(), ..*self }
    }

    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span_id)
    }

    /// The `traceparent` naming this span as the parent of the call it goes with.
    pub fn header(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id(), self.span_id(), self.flags)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_span_id() -> [u8; 8] {
    let mut id = [0; 8];
    fill_random(&mut id);
    id
}

/// Random ids; never all zero (invalid in W3C).
fn fill_random(bytes: &mut [u8]) {
    loop {
        // The OS generator cannot fail on Linux once booted; a failure leaves zeros and retries.
        let _ = getrandom::fill(bytes);
        if bytes.iter().any(|&b| b != 0) {
            return;
        }
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The `traceparent` for a call made while serving a request: its trace, with its span as the
/// parent. `None` outside a request.
pub fn outgoing() -> Option<HeaderValue> {
    CURRENT.try_with(|context| HeaderValue::from_str(&context.header()).ok()).ok().flatten()
}

/// Whether a request's own `traceparent` is taken.
pub type Trust = Arc<dyn Fn(&http::request::Parts) -> bool + Send + Sync>;

/// Runs each request in a `request` span with its trace context (continued when `trust` says
/// so, else new), and in scope for [`outgoing`]. Logs each request's end at debug level.
#[derive(Clone)]
pub struct TraceContextLayer {
    service: &'static str,
    trust: Trust,
}

impl TraceContextLayer {
    pub fn new(service: &'static str, trust: Trust) -> Self {
        TraceContextLayer { service, trust }
    }

    /// Continues every caller's trace: for a service whose callers are all internal.
    pub fn trusting_all(service: &'static str) -> Self {
        TraceContextLayer::new(service, Arc::new(|_| true))
    }
}

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService { inner, service: self.service, trust: self.trust.clone() }
    }
}

#[derive(Clone)]
pub struct TraceContextService<S> {
    inner: S,
    service: &'static str,
    trust: Trust,
}

impl<S, B, R> Service<Request<B>> for TraceContextService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let parent = parts
            .headers
            .get(TRACEPARENT)
            .and_then(|value| value.to_str().ok())
            .and_then(TraceContext::parse)
            .filter(|_| (self.trust)(&parts));
        let context = parent.map_or_else(TraceContext::root, |parent| parent.child());
        let span = tracing::info_span!(
            "request",
            service = self.service,
            method = %parts.method,
            path = parts.uri.path(),
            trace_id = %context.trace_id(),
            span_id = %context.span_id(),
            parent_span_id = %parent.map(|parent| parent.span_id()).unwrap_or_default(),
        );
        let started = std::time::Instant::now();
        let response = self.inner.call(Request::from_parts(parts, body));
        Box::pin(
            CURRENT.scope(
                context,
                async move {
                    let response = response.await;
                    if let Ok(response) = &response {
                        tracing::debug!(
                            status = response.status().as_u16(),
                            took_ms = started.elapsed().as_millis() as u64,
                            "request answered"
                        );
                    }
                    response
                }
                .instrument(span),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specs_example_round_trips() {
        let context = TraceContext::parse(EXAMPLE).unwrap();
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id(), "00f067aa0ba902b7");
        assert_eq!(context.header(), EXAMPLE);
        let child = context.child();
        assert_eq!(child.trace_id(), context.trace_id());
        assert_ne!(child.span_id(), context.span_id());
    }

    #[test]
    fn malformed_headers_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A later version may add fields.
        assert!(TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
    }

    #[test]
    fn new_traces_have_nonzero_distinct_ids() {
        let (a, b) = (TraceContext::root(), TraceContext::root());
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(TraceContext::parse(&a.header()).is_some());
    }
}
