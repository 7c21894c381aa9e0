//! A point's true neighbours, from the embedding rather than the picture: cosine similarity in the
//! corpus's own space (before PCA). The map keeps local neighbourhoods and distorts the rest, so
//! "who is really close to this point?" is answered here.
//!
//! The corpus's rows are kept L2-normalised beside the map being served (float32: 4 bytes per
//! dimension per point, 92 MB at 60k x 384), and a query is an exact scan: one dot product per
//! row, the best `k` kept. Exact at every size served here (see the latency figures in docs/benchmarks.md).

use std::{cmp::Ordering, collections::HashMap};

use ndarray::{Array2, ArrayView1};

/// Most neighbours one query may ask for.
pub const MAX_K: u32 = 100;
/// Neighbours given when a query does not say.
pub const DEFAULT_K: u32 = 10;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QueryError {
    #[error("id {0} is not in the corpus")]
    UnknownId(i64),
    #[error("the query vector has {got} dimensions; the corpus has {expected}")]
    WrongDimensions { got: usize, expected: usize },
    #[error("the query vector must be finite and not all zeros")]
    BadVector,
    #[error("point {0}'s vector is all zeros: it has no direction to compare")]
    ZeroVector(i64),
    #[error("k must be within 1..={MAX_K}, got {0}")]
    BadK(u32),
}

/// The corpus of the map being served, ready to be searched.
pub struct NeighborIndex {
    ids: Vec<i64>,
    rows: HashMap<i64, usize>,
    /// `n x d`, each row of unit length (a zero row stays zero).
    vectors: Array2<f32>,
}

impl std::fmt::Debug for NeighborIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeighborIndex").field("points", &self.ids.len()).field("bytes", &self.memory_bytes()).finish()
    }
}

impl NeighborIndex {
    /// From the corpus's ids and rows (normalised here, so `vectors` may be the raw corpus).
    pub fn new(ids: Vec<i64>, vectors: Array2<f32>) -> Self {
        let rows = ids.iter().enumerate().map(|(row, &id)| (id, row)).collect();
        NeighborIndex { ids, rows, vectors: crate::pipeline::l2_normalized(vectors) }
    }

    pub fn dimensions(&self) -> usize {
        self.vectors.ncols()
    }

    /// Bytes the index holds: the vectors, the ids and the id lookup.
    pub fn memory_bytes(&self) -> usize {
        self.vectors.len() * 4 + self.ids.len() * (8 + 24)
    }

    /// The `k` nearest other points of the point `id`.
    pub fn by_id(&self, id: i64, k: u32) -> Result<Vec<(i64, f32)>, QueryError> {
        let k = checked_k(k)?;
        let row = *self.rows.get(&id).ok_or(QueryError::UnknownId(id))?;
        if self.vectors.row(row).iter().all(|v| *v == 0.0) {
            return Err(QueryError::ZeroVector(id));
        }
        Ok(self.search(self.vectors.row(row), k, Some(row)))
    }

    /// The `k` nearest points of a query vector (any length: it is normalised).
    pub fn by_vector(&self, vector: &[f32], k: u32) -> Result<Vec<(i64, f32)>, QueryError> {
        let k = checked_k(k)?;
        if vector.len() != self.dimensions() {
            return Err(QueryError::WrongDimensions { got: vector.len(), expected: self.dimensions() });
        }
        // In f64: squares of large finite f32 values would overflow.
        let norm = vector.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return Err(QueryError::BadVector);
        }
        let query: Vec<f32> = vector.iter().map(|v| (f64::from(*v) / norm) as f32).collect();
        Ok(self.search(ArrayView1::from(&query), k, None))
    }

    /// Every row's cosine similarity to `query` (one matrix-vector product), the best `k`
    /// (other than `skip`), best first; ties by id so answers are the same every time.
    fn search(&self, query: ArrayView1<f32>, k: usize, skip: Option<usize>) -> Vec<(i64, f32)> {
        let similarities = self.vectors.dot(&query);
        let mut best: Vec<(i64, f32)> = Vec::with_capacity(k + 1);
        let order = |a: &(i64, f32), b: &(i64, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        for (row, &similarity) in similarities.iter().enumerate() {
            if Some(row) == skip {
                continue;
            }
            let candidate = (self.ids[row], similarity);
            if best.len() == k && order(&candidate, &best[k - 1]) != Ordering::Less {
                continue;
            }
            let at = best.partition_point(|kept| order(kept, &candidate) == Ordering::Less);
            best.insert(at, candidate);
            best.truncate(k);
        }
        best
    }
}

fn checked_k(k: u32) -> Result<usize, QueryError> {
    match k {
        0 => Ok(DEFAULT_K as usize),
        k if k <= MAX_K => Ok(k as usize),
        k => Err(QueryError::BadK(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> NeighborIndex {
        let vectors = Array2::from_shape_vec((4, 2), vec![1.0, 0.0, 0.9, 0.1, 0.0, 1.0, -1.0, 0.0]).unwrap();
        NeighborIndex::new(vec![10, 11, 12, 13], vectors)
    }

    #[test]
    fn neighbours_by_id_and_by_vector_are_the_nearest_by_cosine() {
        let index = index();
        let by_id = index.by_id(10, 2).unwrap();
        assert_eq!(by_id.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [11, 12]);
        assert!((by_id[0].1 - 0.9 / (0.82f32).sqrt()).abs() < 1e-6);
        let by_vector = index.by_vector(&[0.0, 3.0], 1).unwrap();
        assert_eq!(by_vector, [(12, 1.0)]);
        assert_eq!(index.by_id(10, 0).unwrap().len(), 3, "k 0 is the default, at most the others");
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        let index = index();
        assert_eq!(index.by_id(99, 5), Err(QueryError::UnknownId(99)));
        assert_eq!(index.by_vector(&[1.0], 5), Err(QueryError::WrongDimensions { got: 1, expected: 2 }));
        assert_eq!(index.by_vector(&[0.0, 0.0], 5), Err(QueryError::BadVector));
        assert_eq!(index.by_vector(&[f32::NAN, 0.0], 5), Err(QueryError::BadVector));
        assert_eq!(index.by_id(10, 101), Err(QueryError::BadK(101)));
    }
}
