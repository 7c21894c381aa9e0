//! HTTP JSON: the same operations as gRPC, the map as 202/200/304, and the probes.

use std::collections::{BTreeMap, HashMap};

use axum::{
    Extension, Json, Router,
    extract::{FromRequest, Path, Query, Request, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::json;
use tonic::transport::server::TcpConnectInfo;

use crate::{
    error::ApiError,
    events::{self, NewEvent},
    items::{self, NewItem},
    map_selection, neighbors,
    state::AppState,
};

/// Every route. Admin routes sit behind the bearer-token check.
pub fn router(state: AppState, max_body_bytes: usize, admin_page: Router<AppState>) -> Router {
    let admin = Router::new()
        .route("/api/admin/embedding-map", get(embedding_map))
        .route("/api/admin/embedding-map/refresh", post(refresh_embedding_map))
        .route("/api/admin/embedding-map/select", post(select_points))
        .route("/api/admin/embedding-map/export", post(export_points))
        .route("/api/admin/embedding-map/fields", get(map_fields))
        .route("/api/admin/embedding-map/fields/{name}", get(map_field_column))
        .route("/api/admin/embedding-map/previous", get(previous_map))
        .route("/api/admin/items", get(list_items).post(create_item))
        .route("/api/admin/items/import", post(import_items))
        .route("/api/admin/items/{id}", get(get_item).put(update_item))
        .route("/api/admin/items/{id}/neighbors", get(item_neighbors))
        .route("/api/admin/neighbors", post(vector_neighbors))
        .route("/api/admin/stats", get(item_stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
        // gzip when the client asks: the READY map's JSON shrinks about fourfold.
        .layer(tower_http::compression::CompressionLayer::new());
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/api/events", post(record_event).route_layer(middleware::from_fn_with_state(state.clone(), limit_rate)))
        .merge(admin)
        .merge(admin_page)
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Wraps each route, so every request is timed under its route template.
        .layer(middleware::from_fn(service_kit::metrics::mark_route))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Admin routes are refused before any work is done.
async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let header = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match state.token.check(header) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// Public writes over the per-client rate limit are refused before their bodies are read.
async fn limit_rate(
    State(state): State<AppState>,
    Extension(peer): Extension<TcpConnectInfo>,
    request: Request,
    next: Next,
) -> Response {
    let forwarded = request.headers().get_all("x-forwarded-for").iter().next_back().and_then(|v| v.to_str().ok());
    match state.rate_limit.check(peer.remote_addr.map(|a| a.ip()), forwarded) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// `Json` with our error bodies: 415 without a JSON content type, 413 over the limit, 400 for
/// syntax errors and for fields of the wrong type (naming the field serde names).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType),
            Err(JsonRejection::BytesRejection(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge)
            }
            Err(JsonRejection::JsonDataError(error)) => Err(ApiError::invalid("body", error.body_text())),
            Err(other) => Err(ApiError::MalformedJson(other.body_text())),
        }
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn embedding_map(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let if_none_match = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    state.map.view().await?.into_http(if_none_match)
}

/// The points inside a polygon of map coordinates, a page at a time.
async fn select_points(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<map_selection::SelectRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(map_selection::select(state.map.served().await?, request).await?).into_response())
}

/// Every point, or those inside a polygon, as a streamed CSV download.
async fn export_points(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<map_selection::ExportRequest>,
) -> Result<Response, ApiError> {
    map_selection::export(state.map.served().await?, request).await
}

/// The attribute names the map can be coloured by.
async fn map_fields(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "fields": state.items.attribute_names().await? })).into_response())
}

/// One attribute's values in the order of the map's points, numbers when every value is one.
async fn map_field_column(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let generation = crate::map_fields::generation_of(&query)?;
    // The generation first: a stale request costs no scan of the items.
    let map = map_selection::of_generation(state.map.served().await?, generation)?;
    let values = state.items.attribute_values(&name).await?;
    Ok(Json(crate::map_fields::column(map, name, values).await?).into_response())
}

/// The ids and positions of the map the served one refreshed, for the map of `generation`.
async fn previous_map(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let generation = crate::map_fields::generation_of(&query)?;
    Ok(crate::map_view::previous_json(&state.map.previous(generation).await?))
}

/// 202: the refresh runs in the background; the map's answers report its progress and outcome.
async fn refresh_embedding_map(State(state): State<AppState>) -> Result<Response, ApiError> {
    let start = state.map.refresh().await?.start();
    let start = start.as_str_name().trim_start_matches("START_").to_lowercase();
    Ok((StatusCode::ACCEPTED, Json(json!({ "refresh": start }))).into_response())
}

/// A corpus point's true neighbours: `?k=` (1-100, default 10).
async fn item_neighbors(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<NeighborParams>,
) -> Result<Json<neighbors::Neighbors>, ApiError> {
    let count = neighbors::Count::from_text(query.k.as_deref())?;
    Ok(Json(neighbors::find(&state, neighbors::Query::Id(parse_id(&id)?), count).await?))
}

/// `?k=`, read as text so that a bad value gets this API's error, not the extractor's.
#[derive(Deserialize)]
struct NeighborParams {
    k: Option<String>,
}

/// The true neighbours of a vector: `{"vector": [...], "k"}`.
async fn vector_neighbors(
    State(state): State<AppState>,
    JsonBody(query): JsonBody<neighbors::VectorQuery>,
) -> Result<Json<neighbors::Neighbors>, ApiError> {
    let count = query.k.map_or(Ok(neighbors::Count::DEFAULT), neighbors::Count::new)?;
    Ok(Json(neighbors::find(&state, neighbors::Query::Vector(query.vector), count).await?))
}

fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.parse().map_err(|_| ApiError::invalid("id", format!("{text:?} is not an integer id")))
}

async fn create_item(State(state): State<AppState>, JsonBody(item): JsonBody<NewItem>) -> Result<Response, ApiError> {
    let item = state.items.create(&item).await?;
    Ok((StatusCode::CREATED, Json(item)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemFields {
    name: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

async fn update_item(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(fields): JsonBody<ItemFields>,
) -> Result<Json<items::Item>, ApiError> {
    let item =
        NewItem { id: parse_id(&id)?, name: fields.name, category: fields.category, attributes: fields.attributes };
    let item = state.items.update(&item).await?;
    Ok(Json(item))
}

async fn get_item(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<items::Item>, ApiError> {
    Ok(Json(state.items.get(parse_id(&id)?).await?))
}

async fn list_items(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let page_size = match query.get("page_size") {
        Some(text) => text.parse().map_err(|_| ApiError::invalid("page_size", "must be a whole number"))?,
        None => 0,
    };
    let token = query.get("page_token").map(String::as_str).unwrap_or_default();
    let (page, next) = state.items.list(page_size, token).await?;
    Ok(Json(json!({ "items": page, "next_page_token": next })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportBody {
    pub(crate) items: Vec<NewItem>,
}

async fn import_items(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<ImportBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (created, updated) = state.items.import(&body.items).await?;
    Ok(Json(json!({ "created": created, "updated": updated })))
}

/// Alive while the event writer runs: it stops only at shutdown, after the listeners, so a
/// writer gone while serving is a fault a restart mends.
async fn livez(State(state): State<AppState>) -> Response {
    if state.events.is_running() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the event writer stopped").into_response()
    }
}

async fn record_event(
    State(state): State<AppState>,
    JsonBody(event): JsonBody<NewEvent>,
) -> Result<Response, ApiError> {
    let recorded = state.events.record(event).await?;
    let status = if recorded.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(recorded)).into_response())
}

async fn item_stats(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ids = match query.get("item_ids").filter(|s| !s.is_empty()) {
        Some(list) => list.split(',').map(parse_id).collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let limit = match query.get("limit") {
        Some(text) => text.parse().map_err(|_| ApiError::invalid("limit", "must be a whole number"))?,
        None => 0,
    };
    Ok(Json(json!({ "stats": events::stats(&state.db, &ids, limit).await? })))
}
