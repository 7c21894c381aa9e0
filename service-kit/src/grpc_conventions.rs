//! Two places where tonic's status codes differ from the gRPC spec, corrected in one layer that
//! both services put in front of their gRPC services (the api-service inside gRPC-web
//! translation), so they answer alike:
//!
//! - Deadlines. tonic's own server enforces `grpc-timeout` in its outermost layer and answers
//!   CANCELLED ("Timeout expired"), as plain gRPC even to gRPC-web callers. The spec says
//!   DEADLINE_EXCEEDED, the status clients retry on, so the deadline (the caller's, capped by the
//!   server's request timeout) is enforced here, a little early (95 %) so that it fires before
//!   any outer HTTP timeout. A call whose request has not arrived and been answered (its headers,
//!   for a stream) by then is dropped, so a client that stalls mid-request cannot hold its
//!   connection; dropping the handler's future rolls back a transaction and returns its pooled
//!   connection.
//! - Oversized messages. tonic rejects a request over the decoding limit with OUT_OF_RANGE; the
//!   spec says RESOURCE_EXHAUSTED.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

#[derive(Clone, Copy)]
pub struct GrpcConventionsLayer {
    /// The deadline of a call that sets none, and the longest any call may ask for.
    server_timeout: Duration,
}

impl GrpcConventionsLayer {
    pub fn new(server_timeout: Duration) -> Self {
        GrpcConventionsLayer { server_timeout }
    }
}

impl<S> Layer<S> for GrpcConventionsLayer {
    type Service = GrpcConventions<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcConventions { inner, server_timeout: self.server_timeout }
    }
}

#[derive(Clone)]
pub struct GrpcConventions<S> {
    inner: S,
    server_timeout: Duration,
}

impl<S, B> Service<Request<B>> for GrpcConventions<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let asked = request.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        let deadline = asked.map_or(self.server_timeout, |asked| asked.min(self.server_timeout)).mul_f64(0.95);
        let response = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(deadline, response).await {
                Ok(result) => result.map(oversized_is_resource_exhausted),
                Err(_) => Ok(Status::deadline_exceeded("deadline exceeded").into_http()),
            }
        })
    }
}

/// tonic's "decoded message length too large" is answered trailers-only, so the status is in the
/// headers.
fn oversized_is_resource_exhausted(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    let oversized = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .is_some_and(|v| v.to_str().is_ok_and(|m| m.contains("too%20large") || m.contains("too large")));
    if oversized {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("200m"), Some(Duration::from_millis(200)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
