//! What `grpc.health.v1` reports.
//!
//! - `""` and `embeddingmap.v1.EmbeddingMapService`: SERVING once the server is bound and
//!   answering, whatever the map's state (COMPUTING and FAILED are truthful answers too);
//!   NOT_SERVING again from the moment shutdown begins.
//! - `embeddingmap.v1.MapReady`: SERVING while a map is READY (refreshes keep a map served),
//!   NOT_SERVING before, while the first map computes or after it failed, and again if a map
//!   restored from the store is withdrawn because its corpus cannot be read. Ask for this name
//!   to wait for the map itself.

use embeddingmap_proto::v1::embedding_map_service_server::EmbeddingMapServiceServer;
use tonic::server::NamedService;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::status::StatusBoard;

/// The health name that follows the map's own readiness.
pub const MAP_READY_SERVICE: &str = "embeddingmap.v1.MapReady";

fn serving_names() -> [&'static str; 2] {
    ["", <EmbeddingMapServiceServer<crate::grpc::MapService> as NamedService>::NAME]
}

/// Everything NOT_SERVING: the state before the server is bound, and again once shutdown begins.
pub async fn set_not_serving(reporter: &HealthReporter) {
    for name in serving_names().into_iter().chain([MAP_READY_SERVICE]) {
        reporter.set_service_status(name, ServingStatus::NotServing).await;
    }
}

/// The server is bound and answers RPCs.
pub async fn set_serving(reporter: &HealthReporter) {
    for name in serving_names() {
        reporter.set_service_status(name, ServingStatus::Serving).await;
    }
}

/// Follows the status board: `MAP_READY_SERVICE` is SERVING while a map is ready.
pub async fn follow_map_readiness(board: StatusBoard, reporter: HealthReporter) {
    let mut receiver = board.subscribe();
    loop {
        if receiver.wait_for(|status| status.ready().is_some()).await.is_err() {
            return;
        }
        reporter.set_service_status(MAP_READY_SERVICE, ServingStatus::Serving).await;
        if receiver.wait_for(|status| status.ready().is_none()).await.is_err() {
            return;
        }
        reporter.set_service_status(MAP_READY_SERVICE, ServingStatus::NotServing).await;
    }
}
