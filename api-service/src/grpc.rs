//! The gRPC services (also served as gRPC-web). Thin: validation and storage live in
//! `items`/`events`, the map in `map_gateway`.

use std::pin::Pin;

use embeddingmap_proto::{api as pb, v1::MapState};
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::{
    error::ApiError,
    events::{self, EventKind, NewEvent},
    items::NewItem,
    map_gateway::MapView,
    state::AppState,
};

pub struct Api(pub AppState);

impl Api {
    /// Every admin handler starts here; the end-to-end auth table holds each one to it.
    fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        Ok(self.0.token.check_grpc(request)?)
    }
}

fn new_item(item: Option<pb::NewItem>) -> Result<NewItem, ApiError> {
    item.map(NewItem::from).ok_or_else(|| ApiError::invalid("item", "is required"))
}

#[tonic::async_trait]
impl pb::item_service_server::ItemService for Api {
    async fn create_item(&self, request: Request<pb::CreateItemRequest>) -> Result<Response<pb::Item>, Status> {
        self.admin(&request)?;
        let item = self.0.items.create(&new_item(request.into_inner().item)?).await?;
        Ok(Response::new(item.into()))
    }

    async fn update_item(&self, request: Request<pb::UpdateItemRequest>) -> Result<Response<pb::Item>, Status> {
        self.admin(&request)?;
        let item = self.0.items.update(&new_item(request.into_inner().item)?).await?;
        Ok(Response::new(item.into()))
    }

    async fn get_item(&self, request: Request<pb::GetItemRequest>) -> Result<Response<pb::Item>, Status> {
        self.admin(&request)?;
        Ok(Response::new(self.0.items.get(request.get_ref().id).await?.into()))
    }

    async fn list_items(&self, request: Request<pb::ListItemsRequest>) -> Result<Response<pb::ListItemsResponse>, Status> {
        self.admin(&request)?;
        let request = request.into_inner();
        let (page, next_page_token) = self.0.items.list(request.page_size, &request.page_token).await?;
        Ok(Response::new(pb::ListItemsResponse { items: page.into_iter().map(Into::into).collect(), next_page_token }))
    }

    async fn import_items(&self, request: Request<pb::ImportItemsRequest>) -> Result<Response<pb::ImportItemsResponse>, Status> {
        self.admin(&request)?;
        let batch: Vec<NewItem> = request.into_inner().items.into_iter().map(NewItem::from).collect();
        let (created, updated) = self.0.items.import(&batch).await?;
        Ok(Response::new(pb::ImportItemsResponse { created, updated }))
    }
}

#[tonic::async_trait]
impl pb::event_service_server::EventService for Api {
    async fn record_event(&self, request: Request<pb::RecordEventRequest>) -> Result<Response<pb::RecordEventResponse>, Status> {
        let request = request.into_inner();
        let event = NewEvent {
            item_id: request.item_id,
            kind: EventKind::from_proto(request.kind)?,
            client_key: Some(request.client_key),
        };
        let recorded = events::record(&self.0.pool, &event).await?;
        Ok(Response::new(pb::RecordEventResponse { event_id: recorded.event_id, created: recorded.created }))
    }
}

#[tonic::async_trait]
impl pb::stats_service_server::StatsService for Api {
    async fn get_item_stats(&self, request: Request<pb::GetItemStatsRequest>) -> Result<Response<pb::GetItemStatsResponse>, Status> {
        self.admin(&request)?;
        let request = request.into_inner();
        let stats = events::stats(&self.0.pool, &request.item_ids, request.limit).await?;
        Ok(Response::new(pb::GetItemStatsResponse { stats: stats.into_iter().map(Into::into).collect() }))
    }
}

fn admin_status(view: MapView, omit_points: bool) -> pb::AdminMapStatus {
    match view {
        MapView::Computing(progress) => {
            pb::AdminMapStatus { state: MapState::Computing.into(), progress: Some(progress), ..Default::default() }
        }
        MapView::Ready(joined) if omit_points => pb::AdminMapStatus { points: Vec::new(), ..joined.status.clone() },
        MapView::Ready(joined) => joined.status.clone(),
        MapView::Failed(failure) => {
            pb::AdminMapStatus { state: MapState::Failed.into(), failure: Some(failure), ..Default::default() }
        }
    }
}

type AdminStream = Pin<Box<dyn Stream<Item = Result<pb::AdminMapStatus, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_map_service_server::AdminMapService for Api {
    async fn get_embedding_map(&self, request: Request<pb::GetAdminMapRequest>) -> Result<Response<pb::AdminMapStatus>, Status> {
        self.admin(&request)?;
        let view = self.0.map.view().await?;
        Ok(Response::new(admin_status(view, request.get_ref().omit_points)))
    }

    type WatchEmbeddingMapStream = AdminStream;

    async fn watch_embedding_map(&self, request: Request<pb::GetAdminMapRequest>) -> Result<Response<AdminStream>, Status> {
        self.admin(&request)?;
        let omit_points = request.get_ref().omit_points;
        let upstream = self.0.map.watch().await?;
        let gateway = self.0.map.clone();
        let stream = upstream.then(move |item| {
            let gateway = gateway.clone();
            async move {
                let status = item.map_err(|e| Status::unavailable(format!("embedding service: {}", e.message())))?;
                Ok(admin_status(gateway.view_of(status).await?, omit_points))
            }
        });
        Ok(Response::new(stream.boxed()))
    }
}
