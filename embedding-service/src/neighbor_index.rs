//! A point's true neighbours, from the embedding rather than the picture: cosine similarity in the
//! corpus's own space (before PCA). The map keeps local neighbourhoods and distorts the rest, so
//! "who is really close to this point?" is answered here.
//!
//! The corpus's rows are kept L2-normalised beside the map being served (float32: 4 bytes per
//! dimension per point, 92 MB at 60k x 384), and a search is exact: every row's dot product with
//! the query, the best `k` kept. Queries are answered in batches (`search`): a block of rows is
//! read once for all of them, as one matrix-matrix product, so a scan bound by memory bandwidth
//! for one query serves many for little more (docs/benchmarks.md has the figures).

use std::{cmp::Ordering, collections::HashMap, sync::Arc};

use ndarray::{Array2, ArrayView1, Axis, s};
use rayon::prelude::*;

use crate::pipeline::UnitRows;

/// Most neighbours one query may ask for.
pub const MAX_K: u32 = 100;
/// Neighbours given when a query does not say.
pub const DEFAULT_K: u32 = 10;
/// Rows multiplied at once: small enough that a block's similarities (rows x queries) stay in
/// cache-sized pieces, large enough to amortise the product's packing.
const BLOCK_ROWS: usize = 4096;

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
    /// `n x d`, each row of unit length (a zero row stays zero); shared with the map being
    /// computed from them.
    vectors: Arc<Array2<f32>>,
}

/// A checked query: the unit vector to compare, how many to give, and the row to leave out (the
/// point itself, for a query by id). Made only by `NeighborIndex::query_by_*`, so it always fits
/// the index it came from.
#[derive(Debug, Clone)]
pub struct Query {
    vector: QueryVector,
    k: usize,
    skip: Option<usize>,
}

#[derive(Debug, Clone)]
enum QueryVector {
    Row(usize),
    Given(Vec<f32>),
}

impl std::fmt::Debug for NeighborIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeighborIndex").field("points", &self.ids.len()).field("bytes", &self.memory_bytes()).finish()
    }
}

impl NeighborIndex {
    /// From the corpus's ids and rows (normalised here, so `vectors` may be the raw corpus).
    pub fn new(ids: Vec<i64>, vectors: Array2<f32>) -> Self {
        Self::from_unit_rows(ids, &UnitRows::new(vectors))
    }

    /// From the corpus's ids and its rows as the map reads them, without a copy.
    pub fn from_unit_rows(ids: Vec<i64>, vectors: &UnitRows) -> Self {
        let rows = ids.iter().enumerate().map(|(row, &id)| (id, row)).collect();
        NeighborIndex { ids, rows, vectors: vectors.shared() }
    }

    pub fn dimensions(&self) -> usize {
        self.vectors.ncols()
    }

    /// Bytes the index holds: the vectors, the ids and the id lookup.
    pub fn memory_bytes(&self) -> usize {
        self.vectors.len() * 4 + self.ids.len() * (8 + 24)
    }

    /// The query for the `k` nearest other points of the point `id`.
    pub fn query_by_id(&self, id: i64, k: u32) -> Result<Query, QueryError> {
        let k = checked_k(k)?;
        let row = *self.rows.get(&id).ok_or(QueryError::UnknownId(id))?;
        if self.vectors.row(row).iter().all(|v| *v == 0.0) {
            return Err(QueryError::ZeroVector(id));
        }
        Ok(Query { vector: QueryVector::Row(row), k, skip: Some(row) })
    }

    /// The query for the `k` nearest points of a vector (any length: it is normalised).
    pub fn query_by_vector(&self, vector: &[f32], k: u32) -> Result<Query, QueryError> {
        let k = checked_k(k)?;
        if vector.len() != self.dimensions() {
            return Err(QueryError::WrongDimensions { got: vector.len(), expected: self.dimensions() });
        }
        // In f64: squares of large finite f32 values would overflow.
        let norm = vector.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return Err(QueryError::BadVector);
        }
        let unit = vector.iter().map(|v| (f64::from(*v) / norm) as f32).collect();
        Ok(Query { vector: QueryVector::Given(unit), k, skip: None })
    }

    /// The `k` nearest other points of the point `id`, best first (one query alone: the service
    /// answers through `NeighborBatches`).
    #[cfg(test)]
    pub fn by_id(&self, id: i64, k: u32) -> Result<Vec<(i64, f32)>, QueryError> {
        let query = self.query_by_id(id, k)?;
        Ok(self.search(std::slice::from_ref(&query)).swap_remove(0))
    }

    /// The `k` nearest points of a query vector, best first.
    #[cfg(test)]
    pub fn by_vector(&self, vector: &[f32], k: u32) -> Result<Vec<(i64, f32)>, QueryError> {
        let query = self.query_by_vector(vector, k)?;
        Ok(self.search(std::slice::from_ref(&query)).swap_remove(0))
    }

    /// Answers `queries` together, each its best `k` by cosine similarity, best first, ties by
    /// id so answers are the same every time. Blocks of rows are spread over the threads; each
    /// block is read once for every query (one matrix-matrix product), then the blocks' bests
    /// are merged. A query's answer does not depend on the others in the batch: each similarity
    /// is the same dot product whatever the batch (a test holds it to that, bit for bit).
    pub fn search(&self, queries: &[Query]) -> Vec<Vec<(i64, f32)>> {
        if queries.is_empty() {
            return Vec::new();
        }
        let mut matrix = Array2::<f32>::zeros((queries.len(), self.dimensions()));
        for (mut row, query) in matrix.axis_iter_mut(Axis(0)).zip(queries) {
            match &query.vector {
                QueryVector::Row(at) => row.assign(&self.vectors.row(*at)),
                QueryVector::Given(unit) => row.assign(&ArrayView1::from(unit)),
            }
        }
        let empty = || queries.iter().map(|query| Best::new(query.k)).collect::<Vec<_>>();
        let starts: Vec<usize> = (0..self.vectors.nrows()).step_by(BLOCK_ROWS).collect();
        starts
            .into_par_iter()
            .map(|start| {
                let end = (start + BLOCK_ROWS).min(self.vectors.nrows());
                // queries x rows, so that each query's similarities are one contiguous row.
                let similarities = matrix.dot(&self.vectors.slice(s![start..end, ..]).t());
                let mut bests = empty();
                for ((best, query), row) in bests.iter_mut().zip(queries).zip(similarities.axis_iter(Axis(0))) {
                    for (offset, &similarity) in row.iter().enumerate() {
                        let at = start + offset;
                        if Some(at) != query.skip {
                            best.offer((self.ids[at], similarity));
                        }
                    }
                }
                bests
            })
            .reduce(empty, |mut merged, other| {
                for (into, from) in merged.iter_mut().zip(other) {
                    for candidate in from.kept {
                        into.offer(candidate);
                    }
                }
                merged
            })
            .into_iter()
            .map(|best| best.kept)
            .collect()
    }
}

/// The best `k` candidates seen so far, best first: higher similarity, then lower id. A total
/// order, so the set kept does not depend on the order candidates are offered in.
struct Best {
    k: usize,
    kept: Vec<(i64, f32)>,
}

impl Best {
    fn new(k: usize) -> Self {
        Best { k, kept: Vec::with_capacity(k + 1) }
    }

    fn offer(&mut self, candidate: (i64, f32)) {
        let order = |a: &(i64, f32), b: &(i64, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.kept.len() == self.k && order(&candidate, &self.kept[self.k - 1]) != Ordering::Less {
            return;
        }
        let at = self.kept.partition_point(|kept| order(kept, &candidate) == Ordering::Less);
        self.kept.insert(at, candidate);
        self.kept.truncate(self.k);
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

    /// A corpus of `n` pseudo-random rows of `d` dimensions (a fixed generator, no crate).
    fn random_index(n: usize, d: usize) -> NeighborIndex {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let values = (0..n * d)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        NeighborIndex::new((0..n as i64).map(|i| i * 3 + 1).collect(), Array2::from_shape_vec((n, d), values).unwrap())
    }

    #[test]
    fn a_batch_answers_each_query_as_it_would_be_answered_alone_and_as_brute_force_does() {
        // More rows than one block, and a last block that is not full.
        let index = random_index(2 * BLOCK_ROWS + 123, 48);
        let queries: Vec<Query> = (0..37)
            .map(|q| {
                if q % 2 == 0 {
                    index.query_by_id(index.ids[q * 211], 10).unwrap()
                } else {
                    let vector: Vec<f32> = (0..48).map(|i| ((q * 31 + i * 7) % 13) as f32 - 6.0).collect();
                    index.query_by_vector(&vector, 1 + q as u32 % 20).unwrap()
                }
            })
            .collect();
        let together = index.search(&queries);
        for (query, answer) in queries.iter().zip(&together) {
            // Bit for bit the answer of the query alone.
            assert_eq!(&index.search(std::slice::from_ref(query))[0], answer);
            // And the brute-force answer: every row's similarity in f64, sorted.
            let unit: Vec<f32> = match &query.vector {
                QueryVector::Row(at) => index.vectors.row(*at).to_vec(),
                QueryVector::Given(unit) => unit.clone(),
            };
            let mut all: Vec<(i64, f64)> = (0..index.ids.len())
                .filter(|row| Some(*row) != query.skip)
                .map(|row| {
                    let vector = index.vectors.row(row);
                    let dot = vector.iter().zip(&unit).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                    (index.ids[row], dot)
                })
                .collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            assert_eq!(answer.len(), query.k);
            for ((id, similarity), (expected_id, expected)) in answer.iter().zip(&all) {
                assert!((f64::from(*similarity) - expected).abs() < 1e-5, "{similarity} vs {expected}");
                // Ids agree except where two similarities are within rounding of each other.
                if id != expected_id {
                    let theirs = all.iter().find(|(other, _)| other == id).unwrap().1;
                    assert!((theirs - expected).abs() < 1e-5, "{id} in place of {expected_id}");
                }
            }
        }
    }
}
