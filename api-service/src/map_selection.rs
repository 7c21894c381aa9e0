//! What an admin takes away from the map: the points inside a polygon of map coordinates, paged,
//! and a CSV export of those (or of every point), streamed. Both name the generation they were
//! drawn on, and a generation that is no longer served is refused rather than answered from
//! another map's coordinates.

use std::{convert::Infallible, sync::Arc};

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use embeddingmap_proto::api as api_pb;
use serde::{Deserialize, Serialize};

use crate::{error::ApiError, map_view::JoinedMap};

/// Most vertices a polygon may have (a lasso simplified by the page has far fewer).
pub const MAX_VERTICES: usize = 10_000;
/// Points in a page of a selection when the request does not say, and the most it may ask for.
pub const DEFAULT_PAGE_SIZE: usize = 1_000;
pub const MAX_PAGE_SIZE: usize = 10_000;
/// Rows of CSV written per chunk of the streamed export.
const ROWS_PER_CHUNK: usize = 2_000;

/// A simple polygon in map coordinates, checked: 3 to `MAX_VERTICES` finite vertices, with its
/// bounding box (most points of a map fall outside a selection's box and cost one comparison).
#[derive(Debug, Clone)]
pub struct Polygon {
    vertices: Vec<(f64, f64)>,
    min: (f64, f64),
    max: (f64, f64),
}

impl Polygon {
    pub fn new(vertices: Vec<[f64; 2]>) -> Result<Self, ApiError> {
        if !(3..=MAX_VERTICES).contains(&vertices.len()) {
            return Err(ApiError::invalid(
                "polygon",
                format!("give 3 to {MAX_VERTICES} vertices, got {}", vertices.len()),
            ));
        }
        if vertices.iter().flatten().any(|v| !v.is_finite()) {
            return Err(ApiError::invalid("polygon", "every coordinate must be a finite number"));
        }
        let vertices: Vec<(f64, f64)> = vertices.into_iter().map(|[x, y]| (x, y)).collect();
        let fold = |pick: fn(f64, f64) -> f64| {
            vertices.iter().fold(vertices[0], |(ax, ay), &(x, y)| (pick(ax, x), pick(ay, y)))
        };
        let (min, max) = (fold(f64::min), fold(f64::max));
        Ok(Polygon { vertices, min, max })
    }

    /// Whether `(x, y)` is inside, by the even-odd rule (a ray to the right crosses the boundary
    /// an odd number of times), so a self-crossing lasso selects what it visibly encloses.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        if x < self.min.0 || x > self.max.0 || y < self.min.1 || y > self.max.1 {
            return false;
        }
        let mut inside = false;
        let mut previous = self.vertices[self.vertices.len() - 1];
        for &current in &self.vertices {
            let ((x1, y1), (x2, y2)) = (previous, current);
            if (y1 > y) != (y2 > y) && x < x1 + (y - y1) * (x2 - x1) / (y2 - y1) {
                inside = !inside;
            }
            previous = current;
        }
        inside
    }
}

/// `POST /api/admin/embedding-map/select`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectRequest {
    /// The generation the polygon was drawn on.
    pub generation: u64,
    pub polygon: Vec<[f64; 2]>,
    #[serde(default)]
    pub page_size: Option<usize>,
    /// From the previous page's `next_page_token`.
    #[serde(default)]
    pub page_token: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SelectedPoint {
    pub id: i64,
    pub x: f32,
    pub y: f32,
    pub name: String,
    pub category: String,
}

#[derive(Debug, Serialize)]
pub struct SelectResponse {
    pub generation: u64,
    /// Points inside the polygon, over all pages.
    pub count: usize,
    pub points: Vec<SelectedPoint>,
    /// Absent on the last page.
    pub next_page_token: Option<String>,
}

/// `POST /api/admin/embedding-map/export`: every point, or those inside `polygon`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    pub generation: u64,
    #[serde(default)]
    pub polygon: Option<Vec<[f64; 2]>>,
}

/// The map served, if it is `generation`.
pub fn of_generation(map: Option<Arc<JoinedMap>>, generation: u64) -> Result<Arc<JoinedMap>, ApiError> {
    match map {
        Some(map) if map.generation == generation => Ok(map),
        Some(map) => {
            Err(ApiError::GenerationNotServed { asked: generation, served: format!("now {}", map.generation) })
        }
        None => Err(ApiError::GenerationNotServed { asked: generation, served: "no map is ready".into() }),
    }
}

/// The points of `map` inside `polygon` (all of them without one), in the map's order, with
/// their rows (for the cluster columns).
fn inside(map: &JoinedMap, polygon: Option<&Polygon>) -> Vec<(usize, api_pb::MapPoint)> {
    map.points()
        .into_iter()
        .enumerate()
        .filter(|(_, point)| polygon.is_none_or(|polygon| polygon.contains(f64::from(point.x), f64::from(point.y))))
        .collect()
}

/// Runs `work` (decoding the map, testing every point) on a blocking thread: it is CPU work of
/// up to seconds on a large map, which would otherwise hold an async worker every other request
/// needs.
async fn off_the_workers<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| ApiError::Internal(error.to_string()))?
}

pub async fn select(map: Option<Arc<JoinedMap>>, request: SelectRequest) -> Result<SelectResponse, ApiError> {
    off_the_workers(move || select_now(map, request)).await
}

fn select_now(map: Option<Arc<JoinedMap>>, request: SelectRequest) -> Result<SelectResponse, ApiError> {
    let polygon = Polygon::new(request.polygon)?;
    let page_size = match request.page_size {
        None | Some(0) => DEFAULT_PAGE_SIZE,
        Some(size) if size <= MAX_PAGE_SIZE => size,
        Some(size) => return Err(ApiError::invalid("page_size", format!("at most {MAX_PAGE_SIZE}, got {size}"))),
    };
    let start = match request.page_token.as_deref() {
        None | Some("") => 0,
        Some(token) => {
            token.parse::<usize>().map_err(|_| ApiError::invalid("page_token", "not a token this API gave"))?
        }
    };
    let map = of_generation(map, request.generation)?;
    let selected = inside(&map, Some(&polygon));
    if start > selected.len() {
        return Err(ApiError::invalid("page_token", "past the end of the selection"));
    }
    let end = (start + page_size).min(selected.len());
    let count = selected.len();
    let points = selected
        .into_iter()
        .skip(start)
        .take(end - start)
        .map(|(_, p)| SelectedPoint { id: p.id, x: p.x, y: p.y, name: p.name, category: p.category })
        .collect();
    Ok(SelectResponse {
        generation: map.generation,
        count,
        points,
        next_page_token: (end < count).then(|| end.to_string()),
    })
}

/// The export as a streamed CSV download: the points are decoded once, the text is written a
/// chunk at a time as the client reads.
pub async fn export(map: Option<Arc<JoinedMap>>, request: ExportRequest) -> Result<Response, ApiError> {
    let polygon = request.polygon.map(Polygon::new).transpose()?;
    let map = of_generation(map, request.generation)?;
    let (map, rows) = off_the_workers(move || {
        let rows = inside(&map, polygon.as_ref());
        Ok((map, rows))
    })
    .await?;
    let levels = map.cluster_assignments.len();
    let mut header: Vec<String> = ["id", "name", "category", "x", "y"].map(String::from).to_vec();
    header.extend((0..levels).map(|level| format!("cluster_level_{level}")));
    header.push("generation".into());
    let head = csv_chunk(std::iter::once(header));
    let generation = map.generation.to_string();
    let mut rows = rows.into_iter();
    let chunks = std::iter::from_fn(move || {
        let records: Vec<Vec<String>> = rows
            .by_ref()
            .take(ROWS_PER_CHUNK)
            .map(|(row, point)| {
                let mut record = vec![
                    point.id.to_string(),
                    cell(&point.name),
                    cell(&point.category),
                    point.x.to_string(),
                    point.y.to_string(),
                ];
                let clusters = map.cluster_assignments.iter();
                record.extend(clusters.map(|level| level.get(row).map_or(String::new(), u32::to_string)));
                record.push(generation.clone());
                record
            })
            .collect();
        (!records.is_empty()).then(|| Ok::<Bytes, Infallible>(csv_chunk(records)))
    });
    let body = Body::from_stream(futures_util::stream::iter(std::iter::once(Ok(head)).chain(chunks)));
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    let disposition = format!("attachment; filename=\"embedding-map-generation-{}.csv\"", request.generation);
    headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).expect("ASCII"));
    Ok(response)
}

/// A text cell, escaped against spreadsheet formula injection (OWASP's rule): one starting with
/// `=`, `+`, `-`, `@`, a tab or a carriage return is prefixed with `'` so it stays text.
fn cell(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text.to_owned() }
}

/// Records as CSV text (quoted where needed, by the csv crate).
fn csv_chunk(records: impl IntoIterator<Item = Vec<String>>) -> Bytes {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for record in records {
        // Writing to a Vec cannot fail.
        let _ = writer.write_record(&record);
    }
    Bytes::from(writer.into_inner().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_even_odd_rule_selects_what_a_lasso_encloses() {
        let square = Polygon::new(vec![[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]]).unwrap();
        assert!(square.contains(1.0, 1.0));
        assert!(!square.contains(5.0, 1.0));
        assert!(!square.contains(-1.0, 2.0));
        // A bow tie crossing itself: both lobes are inside, the space beside the crossing not.
        let bow_tie = Polygon::new(vec![[0.0, 0.0], [4.0, 4.0], [4.0, 0.0], [0.0, 4.0]]).unwrap();
        assert!(bow_tie.contains(0.5, 2.0) && bow_tie.contains(3.5, 2.0));
        assert!(!bow_tie.contains(2.0, 0.5));
    }

    #[test]
    fn polygons_and_cells_are_checked_and_escaped() {
        assert!(Polygon::new(vec![[0.0, 0.0], [1.0, 1.0]]).is_err());
        assert!(Polygon::new(vec![[0.0, 0.0], [1.0, f64::NAN], [1.0, 0.0]]).is_err());
        assert_eq!(cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(cell("-1+2"), "'-1+2");
        assert_eq!(cell("plain, with comma"), "plain, with comma");
        assert_eq!(
            csv_chunk([vec!["a,b".to_owned(), "say \"hi\"".to_owned()]]),
            Bytes::from("\"a,b\",\"say \"\"hi\"\"\"\n")
        );
    }
}
