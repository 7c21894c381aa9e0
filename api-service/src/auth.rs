//! The admin bearer token, checked in constant time on every admin route of every transport.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

#[derive(Clone)]
pub struct AdminToken {
    // Compared as digests, so neither the content nor the length leaks through timing.
    digest: Arc<[u8; 32]>,
}

impl AdminToken {
    pub fn new(token: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(token.len() >= 16, "the admin token must be at least 16 characters");
        Ok(AdminToken { digest: Arc::new(Sha256::digest(token.as_bytes()).into()) })
    }

    /// Checks a gRPC call's `authorization` metadata.
    ///
    /// Called first thing in each admin handler rather than in an interceptor: an interceptor
    /// answers before the request body is read, and HTTP/1.1 gRPC-web clients then see the
    /// connection reset under their upload (EPIPE) instead of UNAUTHENTICATED.
    pub fn check_grpc<T>(&self, request: &tonic::Request<T>) -> Result<(), ApiError> {
        self.check(request.metadata().get("authorization").and_then(|v| v.to_str().ok()))
    }

    /// Accepts `Bearer <token>` (scheme in any case, token exactly).
    pub fn check(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        let presented = authorization
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(ApiError::Unauthenticated)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(digest.ct_eq(&*self.digest)) { Ok(()) } else { Err(ApiError::Unauthenticated) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_passes() {
        let token = AdminToken::new("correct-horse-battery").unwrap();
        assert!(token.check(Some("Bearer correct-horse-battery")).is_ok());
        assert!(token.check(Some("bearer correct-horse-battery")).is_ok());
        for wrong in [
            "Bearer Correct-horse-battery",
            "Bearer correct-horse-batter",
            "correct-horse-battery",
            "Basic correct-horse-battery",
            "",
        ] {
            assert!(token.check(Some(wrong)).is_err(), "{wrong:?} passed");
        }
        assert!(token.check(None).is_err());
        assert!(AdminToken::new("short").is_err());
    }
}
