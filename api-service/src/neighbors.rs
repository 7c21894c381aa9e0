//! A point's true neighbours for the admin: asked of the embedding service (cosine similarity in
//! the embedding), joined with the items' names and categories. One shape for both transports.

use embeddingmap_proto::{api as api_pb, v1 as pb};
use serde::{Deserialize, Serialize};

use crate::{error::ApiError, state::AppState};

/// Most neighbours one query may ask for, as the embedding service allows.
pub const MAX_K: u32 = 100;

/// What to find the neighbours of.
pub enum Query {
    Id(i64),
    Vector(Vec<f32>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorQuery {
    pub vector: Vec<f32>,
    /// 1 to 100; absent means 10.
    #[serde(default)]
    pub k: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct Neighbor {
    pub id: i64,
    pub similarity: f32,
    /// None when no item has this id.
    pub name: Option<String>,
    pub category: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Neighbors {
    pub neighbors: Vec<Neighbor>,
    pub generation: u64,
}

impl From<Neighbors> for api_pb::AdminNeighbors {
    fn from(found: Neighbors) -> Self {
        api_pb::AdminNeighbors {
            neighbors: found
                .neighbors
                .into_iter()
                .map(|n| api_pb::AdminNeighbor {
                    id: n.id,
                    similarity: n.similarity,
                    name: n.name,
                    category: n.category,
                })
                .collect(),
            generation: found.generation,
        }
    }
}

/// The `k` (1-100, 0 for 10) nearest points of `query`, named.
pub async fn find(state: &AppState, query: Query, k: u32) -> Result<Neighbors, ApiError> {
    if k > MAX_K {
        return Err(ApiError::invalid("k", format!("at most {MAX_K}")));
    }
    let query = match query {
        Query::Id(id) => pb::find_neighbors_request::Query::Id(id),
        Query::Vector(values) if values.iter().any(|v| !v.is_finite()) => {
            return Err(ApiError::invalid("vector", "every value must be a finite number"));
        }
        Query::Vector(values) => pb::find_neighbors_request::Query::Vector(pb::QueryVector { values }),
    };
    let found = state.map.find_neighbors(pb::FindNeighborsRequest { query: Some(query), k }).await?;
    let ids: Vec<i64> = found.neighbors.iter().map(|n| n.id).collect();
    let mut labels = state.items.labels_of(&ids).await?;
    let neighbors = found
        .neighbors
        .into_iter()
        .map(|n| {
            let (name, category) = labels.remove(&n.id).unzip();
            Neighbor { id: n.id, similarity: n.similarity, name, category }
        })
        .collect();
    Ok(Neighbors { neighbors, generation: found.generation })
}
