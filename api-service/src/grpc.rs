//! The gRPC services (also served as gRPC-web). Thin: validation and storage live in
//! `items`/`events`, the map in `map_gateway`.

use std::{pin::Pin, time::Duration};

use embeddingmap_proto::api::{self as pb, admin_map_service_server::AdminMapServiceServer};
use futures_util::{Stream, StreamExt};
use service_kit::{
    bearer::RequireBearerLayer,
    grpc_conventions::GrpcConventionsLayer,
    metrics::GrpcMetricsLayer,
    ready_answers::{MAP_REQUEST_BYTES, ReadyAnswers, ReadyAnswersLayer},
};
use tonic::{Request, Response, Status, server::NamedService};
use tonic_web::GrpcWebLayer;
use tower::{
    Layer, ServiceBuilder,
    layer::util::{Identity, Stack},
};

use crate::{
    auth::AdminToken,
    error::ApiError,
    events::{self, EventKind, NewEvent},
    items::NewItem,
    map_gateway::MapGateway,
    neighbors,
    state::AppState,
};

pub struct Api(pub AppState);

/// Every handler's answer.
type Reply<T> = Result<Response<T>, Status>;

/// The admin map service, built here once for both ports that serve it: the gRPC port (gRPC and
/// gRPC-web) and the HTTP port (gRPC-web for the admin page), so both have the same limits. READY
/// maps are answered from their shared encoding in front of the generated service.
pub fn admin_map_service(state: &AppState, max_response_bytes: usize) -> AdminMapService {
    let server = AdminMapServiceServer::new(Api(state.clone()))
        // Map requests are a flag, a selection's polygon up to `MAX_VERTICES` vertices (two
        // doubles and their tags each); a larger body is refused before it is read whole.
        .max_decoding_message_size(MAP_REQUEST_BYTES.max(crate::map_selection::MAX_VERTICES * 24 + 64))
        .max_encoding_message_size(max_response_bytes);
    let name = <AdminMapServiceServer<Api> as NamedService>::NAME;
    let ready = ReadyAnswersLayer::new(state.map.clone(), name, "GetEmbeddingMap", max_response_bytes);
    ready.layer(server)
}

pub type AdminMapService = ReadyAnswers<AdminMapServiceServer<Api>, MapGateway>;

/// The layers every gRPC call passes through, on either port, outermost first: gRPC-web
/// translated to gRPC, the call counted (by its final status), the deadline and the gRPC error
/// conventions, then the admin token, checked before the request's body is read. Built once and
/// cloned onto each service, so every port counts alike.
pub fn call_layers(token: &AdminToken, request_timeout: Duration, metrics: GrpcMetricsLayer) -> CallLayers {
    ServiceBuilder::new()
        .layer(GrpcWebLayer::new())
        .layer(metrics)
        .layer(GrpcConventionsLayer::new(request_timeout))
        .layer(token.admin_only())
}

pub type CallLayers = ServiceBuilder<
    Stack<RequireBearerLayer, Stack<GrpcConventionsLayer, Stack<GrpcMetricsLayer, Stack<GrpcWebLayer, Identity>>>>,
>;

fn new_item(item: Option<pb::NewItem>) -> Result<NewItem, ApiError> {
    item.map(NewItem::from).ok_or_else(|| ApiError::invalid("item", "is required"))
}

#[tonic::async_trait]
impl pb::item_service_server::ItemService for Api {
    async fn create_item(&self, request: Request<pb::CreateItemRequest>) -> Reply<pb::Item> {
        let item = self.0.items.create(&new_item(request.into_inner().item)?).await?;
        Ok(Response::new(item.into()))
    }

    async fn update_item(&self, request: Request<pb::UpdateItemRequest>) -> Reply<pb::Item> {
        let item = self.0.items.update(&new_item(request.into_inner().item)?).await?;
        Ok(Response::new(item.into()))
    }

    async fn get_item(&self, request: Request<pb::GetItemRequest>) -> Reply<pb::Item> {
        Ok(Response::new(self.0.items.get(request.get_ref().id).await?.into()))
    }

    async fn list_items(&self, request: Request<pb::ListItemsRequest>) -> Reply<pb::ListItemsResponse> {
        let request = request.into_inner();
        let (page, next_page_token) = self.0.items.list(request.page_size, &request.page_token).await?;
        Ok(Response::new(pb::ListItemsResponse { items: page.into_iter().map(Into::into).collect(), next_page_token }))
    }

    async fn import_items(&self, request: Request<pb::ImportItemsRequest>) -> Reply<pb::ImportItemsResponse> {
        let batch: Vec<NewItem> = request.into_inner().items.into_iter().map(NewItem::from).collect();
        let (created, updated) = self.0.items.import(&batch).await?;
        Ok(Response::new(pb::ImportItemsResponse { created, updated }))
    }
}

#[tonic::async_trait]
impl pb::event_service_server::EventService for Api {
    async fn record_event(&self, request: Request<pb::RecordEventRequest>) -> Reply<pb::RecordEventResponse> {
        let peer = request.remote_addr().map(|address| address.ip());
        let forwarded = request.metadata().get_all("x-forwarded-for").iter().next_back().and_then(|v| v.to_str().ok());
        self.0.rate_limit.check(peer, forwarded)?;
        let request = request.into_inner();
        let event = NewEvent {
            item_id: request.item_id,
            kind: EventKind::from_proto(request.kind)?,
            client_key: Some(request.client_key),
        };
        let recorded = self.0.events.record(event).await?;
        Ok(Response::new(pb::RecordEventResponse { event_id: recorded.event_id, created: recorded.created }))
    }
}

#[tonic::async_trait]
impl pb::stats_service_server::StatsService for Api {
    async fn get_item_stats(&self, request: Request<pb::GetItemStatsRequest>) -> Reply<pb::GetItemStatsResponse> {
        let request = request.into_inner();
        let stats = events::stats(&self.0.db, &request.item_ids, request.limit).await?;
        Ok(Response::new(pb::GetItemStatsResponse { stats: stats.into_iter().map(Into::into).collect() }))
    }
}

#[tonic::async_trait]
impl pb::admin_neighbor_service_server::AdminNeighborService for Api {
    async fn find_neighbors(&self, request: Request<pb::FindAdminNeighborsRequest>) -> Reply<pb::AdminNeighbors> {
        let pb::FindAdminNeighborsRequest { query, k } = request.into_inner();
        let query = match query {
            Some(pb::find_admin_neighbors_request::Query::Id(id)) => neighbors::Query::Id(id),
            Some(pb::find_admin_neighbors_request::Query::Vector(vector)) => neighbors::Query::Vector(vector.values),
            None => return Err(ApiError::invalid("query", "give an id or a vector").into()),
        };
        Ok(Response::new(neighbors::find(&self.0, query, neighbors::Count::from_field(k)?).await?.into()))
    }
}

type AdminStream = Pin<Box<dyn Stream<Item = Result<pb::AdminMapStatus, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_map_service_server::AdminMapService for Api {
    async fn get_embedding_map(&self, request: Request<pb::GetAdminMapRequest>) -> Reply<pb::AdminMapStatus> {
        let view = self.0.map.view().await?;
        Ok(Response::new(view.into_admin_status(request.get_ref().omit_points)))
    }

    type WatchEmbeddingMapStream = AdminStream;

    async fn watch_embedding_map(&self, request: Request<pb::GetAdminMapRequest>) -> Reply<AdminStream> {
        let omit_points = request.get_ref().omit_points;
        let upstream = self.0.map.watch().await?;
        let gateway = self.0.map.clone();
        let stream = upstream.then(move |item| {
            let gateway = gateway.clone();
            async move {
                let status = item.map_err(|e| Status::unavailable(format!("embedding service: {}", e.message())))?;
                Ok(gateway.view_of(status).await?.into_admin_status(omit_points))
            }
        });
        Ok(Response::new(stream.boxed()))
    }

    async fn refresh_embedding_map(
        &self,
        _: Request<pb::RefreshAdminMapRequest>,
    ) -> Reply<embeddingmap_proto::v1::RefreshEmbeddingMapResponse> {
        Ok(Response::new(self.0.map.refresh().await?))
    }

    async fn select_map_points(
        &self,
        request: Request<pb::SelectMapPointsRequest>,
    ) -> Reply<pb::SelectMapPointsResponse> {
        let pb::SelectMapPointsRequest { generation, polygon, page_size, page_token } = request.into_inner();
        let request = crate::map_selection::SelectRequest {
            generation,
            polygon: polygon.into_iter().map(|vertex| [vertex.x, vertex.y]).collect(),
            page_size: Some(page_size as usize),
            page_token: Some(page_token),
        };
        let answer = crate::map_selection::select(self.0.map.served().await?, request).await?;
        Ok(Response::new(pb::SelectMapPointsResponse {
            generation: answer.generation,
            count: answer.count as u64,
            points: answer
                .points
                .into_iter()
                .map(|p| pb::MapPoint { id: p.id, x: p.x, y: p.y, name: p.name, category: p.category })
                .collect(),
            next_page_token: answer.next_page_token.unwrap_or_default(),
        }))
    }

    async fn get_previous_map(
        &self,
        request: Request<embeddingmap_proto::v1::GetPreviousMapRequest>,
    ) -> Reply<embeddingmap_proto::v1::PreviousMap> {
        Ok(Response::new(self.0.map.previous(request.get_ref().generation).await?))
    }
}
