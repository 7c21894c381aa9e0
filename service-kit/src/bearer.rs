//! Bearer tokens: compared in constant time, and checked by a layer before a request's body is
//! read, so an unauthenticated upload costs the server its headers and nothing more.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::{BoxFuture, Either, ready};
use http::{Request, Response};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

#[derive(Clone)]
pub struct BearerToken {
    // Compared as digests, so neither the content nor the length leaks through timing.
    digest: Arc<[u8; 32]>,
}

impl BearerToken {
    pub const MIN_CHARS: usize = 16;

    pub fn new(token: &str) -> Result<Self, String> {
        if token.len() < Self::MIN_CHARS {
            return Err(format!("a bearer token must be at least {} characters", Self::MIN_CHARS));
        }
        Ok(BearerToken { digest: Arc::new(Sha256::digest(token.as_bytes()).into()) })
    }

    /// Accepts an `authorization` value of `Bearer <token>` (scheme in any case, token exactly).
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(presented) = authorization
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
        else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&*self.digest).into()
    }

    /// Whether a request's `authorization` header carries this token.
    pub fn accepts_request<B>(&self, request: &Request<B>) -> bool {
        self.accepts(request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()))
    }
}

/// The service a gRPC request path (`/package.Service/Method`) names.
pub fn service_of(path: &str) -> &str {
    path.trim_start_matches('/').split('/').next().unwrap_or_default()
}

/// Answers gRPC UNAUTHENTICATED (trailers-only, so gRPC-web translates it too) to a call on a
/// guarded path without the token, before the inner service sees it.
#[derive(Clone)]
pub struct RequireBearerLayer {
    token: BearerToken,
    guarded: fn(&str) -> bool,
}

impl RequireBearerLayer {
    /// `guarded` says which request paths need the token.
    pub fn new(token: BearerToken, guarded: fn(&str) -> bool) -> Self {
        RequireBearerLayer { token, guarded }
    }
}

impl<S> Layer<S> for RequireBearerLayer {
    type Service = RequireBearer<S>;

    fn layer(&self, inner: S) -> RequireBearer<S> {
        RequireBearer { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct RequireBearer<S> {
    inner: S,
    layer: RequireBearerLayer,
}

/// A refused request's body is read (and dropped) before the answer, up to this many bytes, unless
/// it declares more: an HTTP/1.1 connection whose request body is left unread is closed, and a
/// client still writing its small body would see that close (EPIPE) instead of the refusal. A
/// body that declares more is not read at all; an unsized (chunked) one at most this much.
const DRAIN_REFUSED_BYTES: u64 = 64 * 1024;

/// How long a refused body may take to arrive; a client that stalls gets the refusal anyway.
const DRAIN_REFUSED_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireBearer<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response<ResBody>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if !(self.layer.guarded)(request.uri().path()) || self.layer.token.accepts_request(&request) {
            return Either::Left(self.inner.call(request));
        }
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let refusal = || Ok(tonic::Status::unauthenticated("missing or wrong bearer token").into_http());
        match declared {
            Some(length) if length > DRAIN_REFUSED_BYTES => Either::Right(Box::pin(ready(refusal()))),
            _ => Either::Right(Box::pin(async move {
                let body = http_body_util::Limited::new(request.into_body(), DRAIN_REFUSED_BYTES as usize);
                let _ = tokio::time::timeout(DRAIN_REFUSED_WITHIN, body.collect()).await;
                refusal()
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_passes() {
        let token = BearerToken::new("correct-horse-battery").unwrap();
        assert!(token.accepts(Some("Bearer correct-horse-battery")));
        assert!(token.accepts(Some("bearer correct-horse-battery")));
        for wrong in [
            "Bearer Correct-horse-battery",
            "Bearer correct-horse-batter",
            "correct-horse-battery",
            "Basic correct-horse-battery",
            "",
        ] {
            assert!(!token.accepts(Some(wrong)), "{wrong:?} passed");
        }
        assert!(!token.accepts(None));
        assert!(BearerToken::new("short").is_err());
    }
}
