//! The gRPC services: `embeddingmap.v1.EmbeddingMapService`, which answers from the status board and
//! never waits for the map, and `NeighborService`, which searches the served map's corpus.

use std::pin::Pin;

use embeddingmap_proto::v1::{self as pb, embedding_map_service_server::EmbeddingMapService};
use futures_util::{Stream, StreamExt, stream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{job::RefreshRequests, neighbor_batches::NeighborBatches, neighbor_index::QueryError, status::StatusBoard};

pub struct MapService {
    board: StatusBoard,
    refreshes: RefreshRequests,
    /// Ends open watch streams at shutdown; they follow the map across versions and never end
    /// by themselves.
    shutdown: CancellationToken,
}

impl MapService {
    pub fn new(board: StatusBoard, refreshes: RefreshRequests, shutdown: CancellationToken) -> Self {
        MapService { board, refreshes, shutdown }
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::EmbeddingMapStatus, Status>> + Send>>;

#[tonic::async_trait]
impl EmbeddingMapService for MapService {
    async fn get_embedding_map(
        &self,
        request: Request<pb::GetEmbeddingMapRequest>,
    ) -> Result<Response<pb::EmbeddingMapStatus>, Status> {
        Ok(Response::new(self.board.current(request.get_ref().omit_points)))
    }

    type WatchEmbeddingMapStream = StatusStream;

    async fn watch_embedding_map(
        &self,
        request: Request<pb::WatchEmbeddingMapRequest>,
    ) -> Result<Response<Self::WatchEmbeddingMapStream>, Status> {
        let omit_points = request.get_ref().omit_points;
        let shutdown = self.shutdown.clone();
        let mut receiver = self.board.subscribe();
        receiver.mark_changed();
        // The current status, then each change, until the client leaves or shutdown. Points go
        // out once per map: a refresh's progress comes with the summary only.
        let updates = stream::unfold((receiver, None), move |(mut receiver, mut sent_generation)| {
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    changed = receiver.changed() => changed.ok()?,
                    _ = shutdown.cancelled() => return None,
                }
                let status = receiver.borrow_and_update().clone();
                let generation = status.ready().map(|map| map.summary.generation);
                let message = status.to_proto(omit_points || generation == sent_generation);
                // Forgotten when no map is served, so a map that comes back (a withdrawn stored
                // map's successor starts again at generation 1) is sent with its points.
                sent_generation = generation;
                Some((Ok(message), (receiver, sent_generation)))
            }
        });
        Ok(Response::new(updates.boxed()))
    }

    async fn refresh_embedding_map(
        &self,
        _: Request<pb::RefreshEmbeddingMapRequest>,
    ) -> Result<Response<pb::RefreshEmbeddingMapResponse>, Status> {
        let start = self.refreshes.request();
        tracing::info!(?start, "refresh requested over gRPC");
        Ok(Response::new(pb::RefreshEmbeddingMapResponse { start: start.into() }))
    }

    async fn get_previous_map(
        &self,
        request: Request<pb::GetPreviousMapRequest>,
    ) -> Result<Response<pb::PreviousMap>, Status> {
        let asked = request.get_ref().generation;
        let map = self.board.ready().ok_or_else(|| Status::failed_precondition("no map is ready"))?;
        let served = map.summary.generation;
        if served != asked {
            return Err(Status::failed_precondition(format!("map {served} is; map {asked} is not")));
        }
        let previous = map.previous.as_deref().ok_or_else(|| {
            Status::not_found(format!(
                "map {asked} has no previous map kept: it is the first map, or was stored by a version that kept none"
            ))
        })?;
        Ok(Response::new(previous.clone()))
    }
}

/// `embeddingmap.v1.NeighborService`: a point's true neighbours, from the corpus of the map being
/// served (or, before the first map, of the one computing).
pub struct NeighborSearch {
    board: StatusBoard,
    batches: NeighborBatches,
}

impl NeighborSearch {
    pub fn new(board: StatusBoard, batches: NeighborBatches) -> Self {
        NeighborSearch { board, batches }
    }
}

#[tonic::async_trait]
impl pb::neighbor_service_server::NeighborService for NeighborSearch {
    async fn find_neighbors(
        &self,
        request: Request<pb::FindNeighborsRequest>,
    ) -> Result<Response<pb::FindNeighborsResponse>, Status> {
        let pb::FindNeighborsRequest { query, k } = request.into_inner();
        let query = query.ok_or_else(|| Status::invalid_argument("give the query: an id or a vector"))?;
        // One snapshot: the index and the generation of the map it belongs to.
        let (index, generation) = {
            let status = self.board.subscribe();
            let status = status.borrow();
            (status.neighbors.clone(), status.ready().map_or(0, |map| map.summary.generation))
        };
        let index = index.ok_or_else(|| {
            Status::unavailable(if generation == 0 {
                "the corpus is still loading; retry shortly"
            } else {
                // A map restored from the store whose corpus has since changed: its own vectors are
                // gone, and the new map brings the new corpus's (see the map's refresh status).
                "the map served was restored from the store and its corpus has changed; neighbours \
                 come with the next map (see its refresh and last_refresh)"
            })
        })?;
        let query = match query {
            pb::find_neighbors_request::Query::Id(id) => index.query_by_id(id, k),
            pb::find_neighbors_request::Query::Vector(vector) => index.query_by_vector(&vector.values, k),
        }
        .map_err(|error| match error {
            QueryError::UnknownId(_) => Status::not_found(error.to_string()),
            _ => Status::invalid_argument(error.to_string()),
        })?;
        // A scan of every row, on the batching thread with the queries waiting beside it.
        let neighbors = self.batches.search(index, query).await.map_err(|error| Status::internal(error.to_string()))?;
        Ok(Response::new(pb::FindNeighborsResponse {
            neighbors: neighbors.into_iter().map(|(id, similarity)| pb::Neighbor { id, similarity }).collect(),
            generation,
        }))
    }
}
