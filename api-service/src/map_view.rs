//! The admin view of the embedding map, and its one rendering per transport. `MapGateway`
//! produces a `MapView`; HTTP (`into_http`) and gRPC/gRPC-web (`into_admin_status`) render all
//! three states from it, failures through the error table (`ApiError::MapFailed`).

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    body::Body,
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use embeddingmap_proto::{
    api as api_pb,
    v1::{self as pb, MapState},
};
use service_kit::ready_answers::SharedAnswer;

use crate::{
    error::{ApiError, RETRY_AFTER_SECONDS},
    map_json::{
        ClusterJson, ComputingJson, FailureJson, LastRefreshJson, OpenObject, PointJson, ProgressJson, ReadyJson,
        RefreshJson, SerializeIter, phase_name, result_name, seconds,
    },
};

/// What the admin routes show.
pub enum MapView {
    Computing(pb::Progress),
    Ready(Arc<JoinedMap>, Refresh),
    Failed(pb::Failure),
}

/// Beside a READY map: a refresh under way, and how the last one ended. Small, and changing while
/// the map does not, so it is rendered per answer and the map is not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Refresh {
    pub refresh: Option<pb::Progress>,
    pub last_refresh: Option<pb::RefreshOutcome>,
}

impl Refresh {
    pub fn of(status: &pb::EmbeddingMapStatus) -> Self {
        Refresh { refresh: status.refresh, last_refresh: status.last_refresh.clone() }
    }

    /// The fields as an `AdminMapStatus` of their own, whose encoding is appended to the map's.
    fn admin_fields(&self) -> api_pb::AdminMapStatus {
        api_pb::AdminMapStatus { refresh: self.refresh, last_refresh: self.last_refresh.clone(), ..Default::default() }
    }

    /// The READY JSON object's last fields: `refreshing` and `last_refresh`, each an object or null.
    fn json_view(&self) -> RefreshJson<'_> {
        RefreshJson {
            refreshing: self.refresh.as_ref().map(ProgressJson::of),
            last_refresh: self.last_refresh.as_ref().map(|last| {
                let finished = last.finished_at.unwrap_or_default();
                LastRefreshJson {
                    result: result_name(last),
                    finished_at_unix: seconds(finished.seconds, finished.nanos),
                    failure: last
                        .failure
                        .as_ref()
                        .map(|f| FailureJson { phase: phase_name(f.phase()), message: &f.message }),
                }
            }),
        }
    }

    /// The same in headers, for answers without a body (304) too: `X-Map-Refresh:
    /// optimizing; iteration=60/75` while a refresh runs, `X-Map-Last-Refresh: failed` (or
    /// `updated`, `unchanged`) once one has ended.
    fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
        let refresh = self.refresh.as_ref().map(|progress| {
            let value = format!(
                "{}; iteration={}/{}",
                phase_name(progress.phase()),
                progress.iteration,
                progress.total_iterations
            );
            (HeaderName::from_static(REFRESH_HEADER), value)
        });
        let last = self.last_refresh.as_ref().map(|last| {
            let value = result_name(last);
            (HeaderName::from_static(LAST_REFRESH_HEADER), value)
        });
        refresh.into_iter().chain(last).filter_map(|(name, value)| Some((name, HeaderValue::from_str(&value).ok()?)))
    }
}

/// A READY map joined to the items' names and categories, rendered for both transports once and
/// shared by every request until the map or the items change.
pub struct JoinedMap {
    pub etag: String,
    /// `{"status":"ready",...,"points":[...]`: the JSON object without its end, which each answer
    /// gives with the refresh's fields.
    json: OpenObject,
    /// The `AdminMapStatus` message encoded with its points and without; gRPC answers send these
    /// bytes as they are (`service_kit::ready_answers`).
    answer: SharedAnswer<api_pb::AdminMapStatus>,
    /// The map's generation, which selections and exports name.
    pub generation: u64,
    /// Each point's cluster at each level (coarsest first), in the order of the points.
    pub cluster_assignments: Vec<Vec<u32>>,
}

impl JoinedMap {
    pub fn new(map: pb::EmbeddingMap, labels: &HashMap<i64, (String, String)>, etag: String) -> Self {
        let clusters = crate::cluster_labels::label(&map.cluster_levels, &map.points, labels);
        let mut levels: Vec<&pb::ClusterLevel> = map.cluster_levels.iter().collect();
        levels.sort_by_key(|level| level.level);
        let cluster_assignments = levels.iter().map(|level| level.assignment.clone()).collect();
        let points: Vec<api_pb::MapPoint> = map
            .points
            .iter()
            .map(|point| {
                let (name, category) = labels.get(&point.id).cloned().unwrap_or_default();
                api_pb::MapPoint { id: point.id, x: point.x, y: point.y, name, category }
            })
            .collect();
        let computed_at = map.computed_at.unwrap_or_default();
        let parameters = map.parameters.clone().unwrap_or_default();
        let json = OpenObject::new(&ReadyJson {
            status: "ready",
            count: map.count,
            corpus_fingerprint: &map.corpus_fingerprint,
            generation: map.generation,
            layout: &map.layout,
            clusters: SerializeIter::new(clusters.iter().map(ClusterJson::of)),
            computed_at_unix: seconds(computed_at.seconds, computed_at.nanos),
            parameters: &parameters,
            // Serialised straight from borrowed points: a `serde_json::Value` per point would
            // cost several hundred bytes each (over 100 MB at 200k points) for a moment.
            points: SerializeIter::new(points.iter().map(|p| {
                let known = labels.contains_key(&p.id);
                PointJson {
                    id: p.id,
                    x: p.x,
                    y: p.y,
                    name: known.then_some(p.name.as_str()),
                    category: known.then_some(p.category.as_str()),
                }
            })),
        });
        let summary = api_pb::AdminMapStatus {
            state: MapState::Ready.into(),
            count: map.count,
            corpus_fingerprint: map.corpus_fingerprint,
            computed_at: map.computed_at,
            parameters: map.parameters,
            generation: map.generation,
            layout: map.layout.clone(),
            clusters,
            ..Default::default()
        };
        // The points join the copy of the small summary, so they are never copied.
        let status = api_pb::AdminMapStatus { points, ..summary.clone() };
        JoinedMap {
            etag,
            json,
            answer: SharedAnswer::new(&status, &summary),
            generation: map.generation,
            cluster_assignments,
        }
    }

    /// The points with their names and categories, decoded from the shared encoding: selections
    /// and exports are rare, so the map keeps one copy of its points, encoded.
    pub fn points(&self) -> Vec<api_pb::MapPoint> {
        self.answer.decode(false).points
    }
}

/// `GET /api/admin/embedding-map/previous`: the ids and positions of the map the served one
/// refreshed, serialised straight from the message.
pub fn previous_json(previous: &pb::PreviousMap) -> Response {
    #[derive(serde::Serialize)]
    struct JsonPoint {
        id: i64,
        x: f32,
        y: f32,
    }
    #[derive(serde::Serialize)]
    #[serde(bound(serialize = "SerializeIter<I>: serde::Serialize"))]
    struct Previous<'a, I> {
        generation: u64,
        previous_generation: u64,
        previous_fingerprint: &'a str,
        count: usize,
        points: SerializeIter<I>,
    }
    let points = previous.points.iter().map(|p| JsonPoint { id: p.id, x: p.x, y: p.y });
    Json(Previous {
        generation: previous.generation,
        previous_generation: previous.previous_generation,
        previous_fingerprint: &previous.previous_fingerprint,
        count: previous.points.len(),
        points: SerializeIter::new(points),
    })
    .into_response()
}

/// The header that carries a refresh's progress on answers without a body.
pub const REFRESH_HEADER: &str = "x-map-refresh";
/// The header that says how the last refresh ended.
pub const LAST_REFRESH_HEADER: &str = "x-map-last-refresh";

impl MapView {
    /// A READY answer for gRPC as encoded pieces whose concatenation is the message (protobuf
    /// merges concatenated messages): the map's shared encoding, then the refresh's few bytes.
    pub fn encoded_ready(&self, omit_points: bool) -> Option<Vec<Bytes>> {
        let MapView::Ready(joined, refresh) = self else { return None };
        Some(joined.answer.with(omit_points, &refresh.admin_fields()))
    }

    /// HTTP: 202 with progress while computing, 200 (or 304 for a matching `If-None-Match`) with
    /// the joined map once ready, the error table's answer for a failed map.
    pub fn into_http(self, if_none_match: Option<&str>) -> Result<Response, ApiError> {
        match self {
            MapView::Computing(progress) => {
                let body = ComputingJson { status: "computing", progress: ProgressJson::of(&progress) };
                let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
                Ok(response)
            }
            MapView::Ready(joined, refresh) => {
                let etag = HeaderValue::from_str(&joined.etag).map_err(|e| ApiError::Internal(e.to_string()))?;
                // Weak comparison (RFC 9110): a tag matches with or without its `W/`.
                let weak = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
                let matches = if_none_match.is_some_and(|tags| {
                    tags.split(',').any(|tag| weak(tag) == weak(&joined.etag) || tag.trim() == "*")
                });
                let mut response = if matches {
                    StatusCode::NOT_MODIFIED.into_response()
                } else {
                    // The shared map, then this answer's end of the object: no copy of the points.
                    let pieces = joined.json.closed_with(&refresh.json_view());
                    let length: usize = pieces.iter().map(Bytes::len).sum();
                    let pieces = pieces.map(Ok::<_, std::convert::Infallible>);
                    let mut response = Response::new(Body::from_stream(futures_util::stream::iter(pieces)));
                    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(length));
                    response
                };
                response.headers_mut().extend(refresh.headers());
                response.headers_mut().insert(header::ETAG, etag);
                response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                Ok(response)
            }
            MapView::Failed(failure) => {
                Err(ApiError::MapFailed { phase: phase_name(failure.phase()), message: failure.message })
            }
        }
    }

    /// gRPC and gRPC-web: the state as data (a failed map is a successful call that says so).
    pub fn into_admin_status(self, omit_points: bool) -> api_pb::AdminMapStatus {
        match self {
            MapView::Computing(progress) => api_pb::AdminMapStatus {
                state: MapState::Computing.into(),
                progress: Some(progress),
                ..Default::default()
            },
            MapView::Ready(joined, refresh) => {
                let status = joined.answer.decode(omit_points);
                api_pb::AdminMapStatus { refresh: refresh.refresh, last_refresh: refresh.last_refresh, ..status }
            }
            MapView::Failed(failure) => {
                api_pb::AdminMapStatus { state: MapState::Failed.into(), failure: Some(failure), ..Default::default() }
            }
        }
    }
}
