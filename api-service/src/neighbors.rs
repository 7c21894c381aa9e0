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

/// How many neighbours a query asks for: 1 to `MAX_K`, checked here once for every transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(u32);

impl Count {
    /// What a query that does not say gets.
    pub const DEFAULT: Count = Count(10);

    pub fn new(k: u32) -> Result<Self, ApiError> {
        if (1..=MAX_K).contains(&k) { Ok(Count(k)) } else { Err(Count::invalid(k)) }
    }

    fn invalid(got: impl std::fmt::Display) -> ApiError {
        ApiError::invalid("k", format!("must be a whole number from 1 to {MAX_K}, got {got}"))
    }

    /// gRPC's field, where 0 (proto3's unset) asks for the default.
    pub fn from_field(k: u32) -> Result<Self, ApiError> {
        if k == 0 { Ok(Count::DEFAULT) } else { Count::new(k) }
    }

    /// A query string's `k`, absent for the default.
    pub fn from_text(k: Option<&str>) -> Result<Self, ApiError> {
        match k {
            None => Ok(Count::DEFAULT),
            Some(text) => text.parse().map_err(|_| Count::invalid(format!("{text:?}"))).and_then(Count::new),
        }
    }
}

/// The `count` nearest points of `query`, named.
pub async fn find(state: &AppState, query: Query, count: Count) -> Result<Neighbors, ApiError> {
    let k = count.0;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_checked_alike_from_every_transport() {
        assert_eq!(Count::from_field(0).unwrap(), Count::DEFAULT, "gRPC's unset field");
        assert_eq!(Count::from_text(None).unwrap(), Count::DEFAULT);
        assert_eq!(Count::from_text(Some("20")).unwrap(), Count::new(20).unwrap());
        for refused in [Count::new(0), Count::new(101), Count::from_field(101), Count::from_text(Some("x"))] {
            assert!(matches!(refused, Err(ApiError::InvalidArgument { ref field, .. }) if field == "k"), "{refused:?}");
        }
    }
}
