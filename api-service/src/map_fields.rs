//! Colouring the map by any item field: the attribute names the items carry, and one field's
//! values in the order of the map's points. Attributes are strings; a field is numeric when every
//! value it has parses as a finite number, and then travels as numbers, with its range, for a
//! continuous scale.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;

use crate::{error::ApiError, map_view::JoinedMap};

/// The `generation` of `GET /api/admin/embedding-map/fields/{name}?generation=G` (and of
/// `.../previous`), read by the error table's rules (other parameters, such as a cache-buster,
/// are ignored).
pub fn generation_of(query: &HashMap<String, String>) -> Result<u64, ApiError> {
    let text = query.get("generation").ok_or_else(|| ApiError::invalid("generation", "give the map's generation"))?;
    text.parse().map_err(|_| ApiError::invalid("generation", format!("not a generation: {text:?}")))
}

/// One field's values, one per point in the map's order (`null` where an item lacks it).
#[derive(Debug, Serialize, PartialEq)]
pub struct FieldColumn {
    pub generation: u64,
    pub field: String,
    pub numeric: bool,
    /// The range of a numeric field's values (absent for text, or when no point has a value).
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub values: Values,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Values {
    Numbers(Vec<Option<f64>>),
    Texts(Vec<Option<String>>),
}

/// `values` by id, laid out in the order of `map`'s points (a map `of_generation` checked).
pub async fn column(map: Arc<JoinedMap>, field: String, values: HashMap<i64, String>) -> Result<FieldColumn, ApiError> {
    tokio::task::spawn_blocking(move || lay_out(&map, field, values))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))
}

fn lay_out(map: &JoinedMap, field: String, mut values: HashMap<i64, String>) -> FieldColumn {
    let texts: Vec<Option<String>> = map.points().iter().map(|point| values.remove(&point.id)).collect();
    let numbers: Option<Vec<Option<f64>>> = texts
        .iter()
        .map(|text| match text {
            None => Some(None),
            Some(text) => text.trim().parse::<f64>().ok().filter(|n| n.is_finite()).map(Some),
        })
        .collect();
    let numbers = numbers.filter(|numbers| numbers.iter().any(Option::is_some));
    let (numeric, min, max, values) = match numbers {
        Some(numbers) => {
            let present = numbers.iter().flatten();
            let min = present.clone().copied().reduce(f64::min);
            let max = present.copied().reduce(f64::max);
            (true, min, max, Values::Numbers(numbers))
        }
        None => (false, None, None, Values::Texts(texts)),
    };
    FieldColumn { generation: map.generation, field, numeric, min, max, values }
}
