//! The embedding service as the admin routes see it: its status turned into a `MapView`, READY
//! maps joined to the items' names and categories. A joined map (its JSON and its protobuf) is
//! built once per (corpus fingerprint, parameters, items version) and shared by every request
//! after.

use std::{sync::Arc, time::Duration};

use embeddingmap_proto::{
    codec::is_decode_error,
    v1::{
        self as pb, MapState, embedding_map_service_client::EmbeddingMapServiceClient,
        neighbor_service_client::NeighborServiceClient,
    },
};
use prost::Message;
use service_kit::trace_context;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};

use crate::{
    error::ApiError,
    items::ItemStore,
    map_view::{JoinedMap, MapView, Refresh},
};

#[derive(Clone)]
pub struct MapGateway {
    client: EmbeddingMapServiceClient<Channel>,
    channel: Channel,
    /// Names and categories; its version is part of the ETag, so a joined map is never stale.
    items: ItemStore,
    cache: Arc<Mutex<Option<Arc<JoinedMap>>>>,
    /// `Bearer <token>` for an embedding service that requires one.
    authorization: Option<MetadataValue<Ascii>>,
}

impl MapGateway {
    /// Connects lazily: the API starts (and stays ready) while the embedding service is down,
    /// and reconnects by itself when it returns.
    pub fn new(
        url: &str,
        connect_timeout: Duration,
        call_timeout: Duration,
        max_message_bytes: usize,
        token: Option<&str>,
        items: ItemStore,
    ) -> anyhow::Result<Self> {
        let authorization = token
            .map(|token| MetadataValue::try_from(format!("Bearer {token}")))
            .transpose()
            .map_err(|_| anyhow::anyhow!("the embedding token must be printable ASCII"))?;
        let channel = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(connect_timeout)
            .timeout(call_timeout)
            .connect_lazy();
        Ok(MapGateway {
            client: EmbeddingMapServiceClient::new(channel.clone()).max_decoding_message_size(max_message_bytes),
            channel,
            items,
            cache: Arc::new(Mutex::new(None)),
            authorization,
        })
    }

    /// The map as the admin routes answer it, counted by outcome.
    pub async fn view(&self) -> Result<MapView, ApiError> {
        let view = match self.fetch(true).await {
            Ok(summary) => self.view_of(summary).await,
            Err(error) => Err(error),
        };
        let outcome = match &view {
            Ok(MapView::Ready(..)) => "ready",
            Ok(MapView::Computing(_)) => "computing",
            Ok(MapView::Failed(_)) => "failed",
            Err(_) => "unavailable",
        };
        metrics::counter!("map_gateway_answers_total", "outcome" => outcome).increment(1);
        view
    }

    /// The READY map served, joined, if there is one (for selections and exports).
    pub async fn served(&self) -> Result<Option<Arc<JoinedMap>>, ApiError> {
        Ok(match self.view().await? {
            MapView::Ready(map, _) => Some(map),
            MapView::Computing(_) | MapView::Failed(_) => None,
        })
    }

    /// Turns an upstream status (points omitted) into the admin view, joining READY maps.
    pub async fn view_of(&self, status: pb::EmbeddingMapStatus) -> Result<MapView, ApiError> {
        match status.state() {
            MapState::Ready => {
                let refresh = Refresh::of(&status);
                let summary = status.map.unwrap_or_default();
                Ok(MapView::Ready(self.joined(&summary).await?, refresh))
            }
            MapState::Failed => Ok(MapView::Failed(status.failure.unwrap_or_default())),
            _ => Ok(MapView::Computing(status.progress.unwrap_or_default())),
        }
    }

    async fn fetch(&self, omit_points: bool) -> Result<pb::EmbeddingMapStatus, ApiError> {
        let request = self.request(pb::GetEmbeddingMapRequest { omit_points });
        Ok(self.client.clone().get_embedding_map(request).await.map_err(unavailable)?.into_inner())
    }

    /// Upstream status changes, for the admin watch stream.
    pub async fn watch(&self) -> Result<tonic::Streaming<pb::EmbeddingMapStatus>, ApiError> {
        let mut client = self.client.clone();
        Ok(client
            .watch_embedding_map(self.request(pb::WatchEmbeddingMapRequest { omit_points: true }))
            .await
            .map_err(unavailable)?
            .into_inner())
    }

    /// A point's true neighbours, from the embedding service. Its refusals keep their meaning: an
    /// unknown id is not found, a vector of the wrong dimension an invalid argument.
    pub async fn find_neighbors(&self, query: pb::FindNeighborsRequest) -> Result<pb::FindNeighborsResponse, ApiError> {
        let mut client = NeighborServiceClient::new(self.channel.clone());
        match client.find_neighbors(self.request(query)).await {
            Ok(answer) => Ok(answer.into_inner()),
            Err(status) if status.code() == tonic::Code::NotFound => Err(ApiError::not_found(status.message())),
            // A message that did not decode, on either side, is no fault of the query.
            Err(status) if status.code() == tonic::Code::InvalidArgument && !is_decode_error(&status) => {
                Err(ApiError::invalid("vector", status.message()))
            }
            Err(status) => Err(unavailable(status)),
        }
    }

    /// The ids and positions of the map the served one (`generation`) refreshed. Its refusals
    /// keep their meaning: another generation served is a conflict, none kept is not found.
    pub async fn previous(&self, generation: u64) -> Result<pb::PreviousMap, ApiError> {
        let request = self.request(pb::GetPreviousMapRequest { generation });
        match self.client.clone().get_previous_map(request).await {
            Ok(answer) => Ok(answer.into_inner()),
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                Err(ApiError::GenerationNotServed { asked: generation, served: status.message().to_owned() })
            }
            Err(status) if status.code() == tonic::Code::NotFound => Err(ApiError::not_found(format!(
                "a previous map of map {generation} (none is kept for a first map or a fresh layout)"
            ))),
            Err(status) => Err(unavailable(status)),
        }
    }

    /// Asks the embedding service for a refresh.
    pub async fn refresh(&self) -> Result<pb::RefreshEmbeddingMapResponse, ApiError> {
        let request = self.request(pb::RefreshEmbeddingMapRequest {});
        Ok(self.client.clone().refresh_embedding_map(request).await.map_err(unavailable)?.into_inner())
    }

    /// A call to the embedding service: its token, and the trace of the request being served.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(authorization) = &self.authorization {
            request.metadata_mut().insert("authorization", authorization.clone());
        }
        if let Some(traceparent) = trace_context::outgoing()
            && let Ok(value) = MetadataValue::try_from(traceparent.as_bytes())
        {
            request.metadata_mut().insert(trace_context::TRACEPARENT, value);
        }
        request
    }

    async fn joined(&self, summary: &pb::EmbeddingMap) -> Result<Arc<JoinedMap>, ApiError> {
        let version = self.items.version().await?;
        let wanted = etag(summary, version);
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref().filter(|cached| cached.etag == wanted) {
            metrics::counter!("map_gateway_joins_total", "result" => "cached").increment(1);
            return Ok(cached.clone());
        }
        let full = self.fetch(false).await?;
        metrics::counter!("map_gateway_joins_total", "result" => "built").increment(1);
        let map = full
            .map
            .filter(|_| full.state == MapState::Ready as i32)
            .ok_or_else(|| ApiError::EmbeddingUnavailable("the map changed while it was being read; retry".into()))?;
        // A new map may have come between the summary and the points: the ETag is the points'.
        let etag = etag(&map, version);
        let labels = self.items.labels().await?;
        let joined = Arc::new(JoinedMap::new(map, &labels, etag));
        *cache = Some(joined.clone());
        Ok(joined)
    }
}

/// READY admin map answers from the joined map's shared encoding; an unreachable embedding
/// service is answered here too; a map computing or failed is answered by the handler.
impl service_kit::ready_answers::ReadyMaps for MapGateway {
    async fn encoded_ready(&self, omit_points: bool) -> Result<Option<Vec<bytes::Bytes>>, tonic::Status> {
        Ok(self.view().await?.encoded_ready(omit_points))
    }
}

fn unavailable(status: tonic::Status) -> ApiError {
    ApiError::EmbeddingUnavailable(format!("{:?}: {}", status.code(), status.message()))
}

/// The map's identity (its corpus, parameters and generation, which determine its points) and the
/// items' persisted version; no clock, so two embedding replicas' identical maps share an ETag
/// and a restart cannot make an old ETag match new content. Weak (`W/`): the body's refresh
/// fields (`refreshing`, `last_refresh`) change beside the same map, and say so in headers too.
fn etag(summary: &pb::EmbeddingMap, items_version: i64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(summary.corpus_fingerprint.as_bytes());
    hasher.update(summary.generation.to_le_bytes());
    hasher.update(summary.parameters.clone().unwrap_or_default().encode_to_vec());
    hasher.update(items_version.to_le_bytes());
    format!("W/\"{}\"", &format!("{:x}", hasher.finalize())[..32])
}
