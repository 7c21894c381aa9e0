//! The admin bearer token, checked in constant time on every admin route of every transport,
//! before any of the request's body is read: by `admin_only` in front of the gRPC services (both
//! ports), by `http::require_admin` in front of the HTTP routes.

use embeddingmap_proto::api::event_service_server;
use service_kit::bearer::{BearerToken, RequireBearerLayer, service_of};

use crate::error::ApiError;

#[derive(Clone)]
pub struct AdminToken(BearerToken);

impl AdminToken {
    pub fn new(token: &str) -> anyhow::Result<Self> {
        BearerToken::new(token).map(AdminToken).map_err(|e| anyhow::anyhow!("the admin token: {e}"))
    }

    /// Accepts `Bearer <token>` (scheme in any case, token exactly).
    pub fn check(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        if self.0.accepts(authorization) { Ok(()) } else { Err(ApiError::Unauthenticated) }
    }

    /// The layer that refuses an admin gRPC call without the token before its body is read.
    pub fn admin_only(&self) -> RequireBearerLayer {
        RequireBearerLayer::new(self.0.clone(), is_admin_path)
    }
}

/// The gRPC services anyone may call: events (public traffic), health (probes) and reflection.
/// Every other path needs the admin token, so a service added later is admin-only without a line
/// changed here, and a path no service serves is refused before it is found missing.
const PUBLIC_SERVICES: [&str; 4] = [
    event_service_server::SERVICE_NAME,
    tonic_health::pb::health_server::SERVICE_NAME,
    service_kit::reflection::SERVICE_NAMES[0],
    service_kit::reflection::SERVICE_NAMES[1],
];

fn is_admin_path(path: &str) -> bool {
    !PUBLIC_SERVICES.contains(&service_of(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_is_guarded_but_the_public_ones() {
        assert!(is_admin_path("/embeddingmap.api.v1.ItemService/ImportItems"));
        assert!(is_admin_path("/embeddingmap.api.v1.AdminMapService/GetEmbeddingMap"));
        assert!(is_admin_path("/embeddingmap.api.v1.ServiceAddedLater/Anything"), "deny by default");
        assert!(is_admin_path("/embeddingmap.api.v1.EventServiceX/RecordEvent"));
        assert!(is_admin_path("/"));
        assert!(!is_admin_path("/embeddingmap.api.v1.EventService/RecordEvent"));
        assert!(!is_admin_path("/grpc.health.v1.Health/Check"));
        assert!(!is_admin_path("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert!(!is_admin_path("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
    }
}
