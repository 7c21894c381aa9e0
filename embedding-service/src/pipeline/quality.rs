//! How faithful a map is, for the benchmarks and the quality floor test (the service itself never
//! scores its maps): label 10-NN accuracy, label-free 10-NN preservation, and the neighbour
//! search's recall. Each runs exact searches, so none belongs on a serving path.

use std::collections::{BTreeMap, HashSet};

use ndarray::Array2;

use super::{KnnMethod, MapSettings, all_cores, knn, prepare, use_threads};
use crate::error::MapError;

/// Neighbours the scores compare, as the peers' scorer (`bench/peers.py`) does.
pub const K: usize = 10;

/// Share of the exact k nearest neighbours that the run's neighbour search finds (recall@k), on
/// the same normalised, PCA-reduced vectors the map uses.
pub fn knn_recall(vectors: Array2<f32>, settings: &MapSettings) -> Result<f64, MapError> {
    let (points, dimensions) = vectors.dim();
    let parameters = settings.resolve(points, dimensions)?;
    use_threads(parameters.threads);
    let normalized = prepare::l2_normalized(vectors);
    let reduced = prepare::pca_reduce(&normalized, parameters.pca_width)?.unwrap_or(normalized);
    let k = parameters.neighbors as usize;
    let found = knn::nearest_neighbors(&reduced, k, parameters.knn, parameters.threads)?;
    let exact = knn::nearest_neighbors(&reduced, k, KnnMethod::Exact, parameters.threads)?;
    let hits: usize = found
        .iter()
        .zip(&exact)
        .map(|(found, exact)| {
            let exact: HashSet<usize> = exact.iter().map(|n| n.index).collect();
            found.iter().filter(|n| exact.contains(&n.index)).count()
        })
        .sum();
    Ok(hits as f64 / (k * points) as f64)
}

/// Each row's `K` nearest other rows by exact Euclidean search, flat `n x K` (the pipeline's own
/// exact search, which drops the row itself wherever equal rows rank it).
fn nearest_others(rows: &Array2<f32>) -> Result<Vec<usize>, MapError> {
    let lists = knn::nearest_neighbors(rows, K, KnnMethod::Exact, all_cores())?;
    Ok(lists.iter().flatten().map(|neighbor| neighbor.index).collect())
}

/// Map points as an `n x 2` matrix for the searches.
fn map_rows(points: &[[f32; 2]]) -> Array2<f32> {
    Array2::from_shape_vec((points.len(), 2), points.iter().flatten().copied().collect())
        .expect("two coordinates per point")
}

/// The exact `K` nearest neighbours of each corpus row by cosine similarity, in the full input
/// space (no PCA): what preservation is measured against. Flat `n x K`.
pub fn input_neighbors(vectors: Array2<f32>) -> Result<Vec<usize>, MapError> {
    nearest_others(&prepare::l2_normalized(vectors))
}

/// 10-NN preservation: for each point, the share of its `K` nearest input neighbours (from
/// `input_neighbors`) that are among its `K` nearest in the map; averaged over the points.
pub fn neighbor_preservation(points: &[[f32; 2]], input_neighbors: &[usize]) -> Result<f64, MapError> {
    let in_map = nearest_others(&map_rows(points))?;
    if in_map.len() != input_neighbors.len() {
        return Err(MapError::InvalidParameter("map and corpus differ in length".into()));
    }
    let kept: usize = in_map
        .chunks_exact(K)
        .zip(input_neighbors.chunks_exact(K))
        .map(|(map, input)| map.iter().filter(|j| input.contains(j)).count())
        .sum();
    Ok(kept as f64 / input_neighbors.len() as f64)
}

/// 10-nearest-neighbour label accuracy of a 2-D map: the share of points whose `K` nearest map
/// neighbours' majority label equals their own.
pub fn knn_label_accuracy(points: &[[f32; 2]], labels: &[i64]) -> Result<f64, MapError> {
    let n = points.len().min(labels.len());
    let neighbors = nearest_others(&map_rows(&points[..n]))?;
    let correct = neighbors
        .chunks_exact(K)
        .enumerate()
        .filter(|&(i, row)| {
            let mut votes = BTreeMap::<i64, usize>::new();
            for &j in row {
                *votes.entry(labels[j]).or_default() += 1;
            }
            // Ties go to the smallest label, as numpy's bincount().argmax() does.
            let best = votes.values().copied().max().unwrap_or(0);
            votes.iter().find(|&(_, &count)| count == best).map(|(&label, _)| label) == Some(labels[i])
        })
        .count();
    Ok(correct as f64 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_that_keeps_the_input_order_preserves_every_neighbour_and_a_shuffled_one_few() {
        // Points on a line in 3-D whose map is the same line: every neighbour kept.
        let n = 200;
        let vectors = Array2::from_shape_fn((n, 3), |(i, j)| match j {
            0 => 1.0,
            1 => i as f32 / n as f32,
            _ => 0.0,
        });
        let neighbors = input_neighbors(vectors).unwrap();
        let line: Vec<[f32; 2]> = (0..n).map(|i| [(i as f32 / n as f32).atan(), 0.0]).collect();
        assert!(neighbor_preservation(&line, &neighbors).unwrap() > 0.99);
        // A scrambled map (i -> i * 7 mod n) keeps almost none.
        let scrambled: Vec<[f32; 2]> = (0..n).map(|i| [((i * 7) % n) as f32, 0.0]).collect();
        assert!(neighbor_preservation(&scrambled, &neighbors).unwrap() < 0.2);
    }

    #[test]
    fn label_accuracy_counts_points_whose_neighbours_share_their_label() {
        // Two far-apart groups of 20 with their own labels, then one group relabelled half-half.
        let points: Vec<[f32; 2]> =
            (0..40).map(|i| [if i < 20 { 0.0 } else { 100.0 } + i as f32 * 0.01, 0.0]).collect();
        let labels: Vec<i64> = (0..40).map(|i| i64::from(i >= 20)).collect();
        assert_eq!(knn_label_accuracy(&points, &labels).unwrap(), 1.0);
        let mixed: Vec<i64> = (0..40).map(|i| if i < 20 { 0 } else { i % 2 }).collect();
        assert!(knn_label_accuracy(&points, &mixed).unwrap() < 0.8);
    }
}
