//! The admin bearer token, checked in constant time on every admin route of every transport,
//! before any of the request's body is read: by `admin_only` in front of the gRPC services (both
//! ports), by `http::require_admin` in front of the HTTP routes.

use embeddingmap_proto::api::{
    admin_map_service_server::AdminMapServiceServer, admin_neighbor_service_server::AdminNeighborServiceServer,
    item_service_server::ItemServiceServer, stats_service_server::StatsServiceServer,
};
use service_kit::bearer::{BearerToken, RequireBearerLayer};
use tonic::server::NamedService;

use crate::{error::ApiError, grpc::Api};

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

/// Every gRPC service but events (public), health and reflection is admin-only.
fn is_admin_path(path: &str) -> bool {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
    [
        <ItemServiceServer<Api> as NamedService>::NAME,
        <StatsServiceServer<Api> as NamedService>::NAME,
        <AdminMapServiceServer<Api> as NamedService>::NAME,
        <AdminNeighborServiceServer<Api> as NamedService>::NAME,
    ]
    .contains(&service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_services_are_guarded_and_public_ones_are_not() {
        assert!(is_admin_path("/embeddingmap.api.v1.ItemService/ImportItems"));
        assert!(is_admin_path("/embeddingmap.api.v1.AdminMapService/GetEmbeddingMap"));
        assert!(!is_admin_path("/embeddingmap.api.v1.EventService/RecordEvent"));
        assert!(!is_admin_path("/grpc.health.v1.Health/Check"));
        assert!(!is_admin_path("/embeddingmap.api.v1.ItemServiceX/ImportItems"));
    }
}
