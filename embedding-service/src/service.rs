//! `embeddingmap.v1.EmbeddingMapService`: answers from the status board, never waits for the map.

use std::pin::Pin;

use embeddingmap_proto::v1::{self as pb, embedding_map_service_server::EmbeddingMapService};
use futures_util::{Stream, StreamExt, stream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::status::StatusBoard;

pub struct MapService {
    board: StatusBoard,
    /// Ends open watch streams at shutdown, so draining does not wait for a map that may never come.
    shutdown: CancellationToken,
}

impl MapService {
    pub fn new(board: StatusBoard, shutdown: CancellationToken) -> Self {
        MapService { board, shutdown }
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
        let started = self.board.started();
        let shutdown = self.shutdown.clone();
        let mut receiver = self.board.subscribe();
        receiver.mark_changed();
        // Send the current status, then each change; stop after a final one or at shutdown.
        let updates = stream::unfold((receiver, false), move |(mut receiver, finished)| {
            let shutdown = shutdown.clone();
            async move {
                if finished {
                    return None;
                }
                tokio::select! {
                    changed = receiver.changed() => changed.ok()?,
                    _ = shutdown.cancelled() => return None,
                }
                let status = receiver.borrow_and_update().clone();
                let message = status.to_proto(started, omit_points);
                Some((Ok(message), (receiver, status.is_final())))
            }
        });
        Ok(Response::new(updates.boxed()))
    }
}
