//! k-nearest neighbours with FAISS: exact (flat L2), HNSW, or k-means cells searched exactly.

use bhtsne::Neighbor;
use faiss::{
    Index, MetricType,
    cluster::{Clustering, ClusteringParameters},
    index::flat::FlatIndexImpl,
    index_factory,
};
use ndarray::Array2;
use std::sync::Mutex;

use crate::error::MapError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnnMethod {
    Exact,
    Hnsw,
    /// k-means cells; each cell's points are searched exactly among its `probes` nearest cells.
    Cells {
        probes: usize,
    },
}

/// Up to this many points the automatic choice searches exactly. On seven real labelled corpora
/// (docs/benchmarks.md) the cells' 0.9 recall cost 0.003-0.010 preservation at 10k and 0.015 at
/// 18-19k against exact neighbours, while the exact search took no longer at 10k and 0.6-0.7 s
/// more at 18-19k; its N-squared cost outgrows the cells' from about here.
pub const EXACT_UP_TO: usize = 20_000;

impl KnnMethod {
    /// The automatic choice for a corpus of `points`: exact up to [`EXACT_UP_TO`] points, or
    /// while it has no more cells than `probes` (every cell would be searched anyway), cells
    /// above.
    pub fn automatic(points: usize, probes: usize) -> Self {
        if points <= EXACT_UP_TO || cell_count(points) <= probes {
            KnnMethod::Exact
        } else {
            KnnMethod::Cells { probes }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KnnMethod::Exact => "exact",
            KnnMethod::Hnsw => "hnsw",
            KnnMethod::Cells { .. } => "cells",
        }
    }
}

/// HNSW graph degree and search breadth: recall above 0.99 at k = 90 on 50-d PCA'd embeddings.
const HNSW_DESCRIPTION: &str = "HNSW32,Flat";

const STEP: &str = "the nearest-neighbour search";

/// Each row's neighbours, nearest first.
type NeighborLists = Vec<Vec<Neighbor<f32>>>;

/// `(row, squared distance)` per query and rank, flat `queries x k`; row -1 pads a short list.
type Hits = Vec<(i64, f32)>;

/// k-means rounds for the cells. FAISS's default is 25; the cells only have to group nearby
/// points, and 10 rounds found as many true neighbours in less time.
const KMEANS_ITERATIONS: u32 = 10;

fn faiss_error(error: impl std::fmt::Display) -> MapError {
    MapError::faiss(STEP, error)
}

/// Each row's `k` nearest other rows by Euclidean distance, nearest first.
pub fn nearest_neighbors(
    vectors: &Array2<f32>,
    k: usize,
    method: KnnMethod,
    threads: usize,
) -> Result<NeighborLists, MapError> {
    nearest_neighbors_and_cells(vectors, k, method, threads).map(|(neighbors, _)| neighbors)
}

/// `nearest_neighbors`, plus each row's k-means cell when the method made cells.
pub fn nearest_neighbors_and_cells(
    vectors: &Array2<f32>,
    k: usize,
    method: KnnMethod,
    threads: usize,
) -> Result<(NeighborLists, Option<Vec<usize>>), MapError> {
    let (n, d) = vectors.dim();
    let flat = vectors.as_standard_layout();
    let flat = flat.as_slice().expect("standard layout");
    // Each search asks for k + 1 hits: the row itself is usually the first.
    let hits = match method {
        KnnMethod::Exact => search_exact(flat, flat, d, k + 1, threads)?,
        // efSearch must exceed k for HNSW to return k results; twice k keeps recall high.
        KnnMethod::Hnsw => {
            search_index(HNSW_DESCRIPTION, Some(("efSearch", (2 * (k + 1)).max(64) as f64)), flat, flat, d, k + 1)?
        }
        KnnMethod::Cells { probes } => {
            let (neighbors, assignment) = search_cells(flat, n, d, k, probes, threads)?;
            return Ok((neighbors, Some(assignment)));
        }
    };
    let neighbors = hits
        .chunks_exact(k + 1)
        .enumerate()
        .map(|(row, found)| {
            neighbor_list(row, found, k)
                .ok_or_else(|| faiss_error(format!("point {row} got fewer than {k} neighbours; use --knn exact")))
        })
        .collect::<Result<_, _>>()?;
    Ok((neighbors, None))
}

/// Row `row`'s `k` nearest others from its search hits, or None if the hits hold fewer.
fn neighbor_list(row: usize, found: &[(i64, f32)], k: usize) -> Option<Vec<Neighbor<f32>>> {
    let list: Vec<Neighbor<f32>> = found
        .iter()
        .filter(|&&(index, _)| index >= 0 && index as usize != row)
        // FAISS L2 distances are squared; bhtsne wants plain distances.
        .map(|&(index, squared)| Neighbor { index: index as usize, distance: squared.max(0.0).sqrt() })
        .take(k)
        .collect();
    (list.len() == k).then_some(list)
}

/// `(row, squared distance)` of each query's `k` nearest base rows, flat `queries x k`; -1 pads.
fn search_index(
    description: &str,
    parameter: Option<(&str, f64)>,
    base: &[f32],
    queries: &[f32],
    d: usize,
    k: usize,
) -> Result<Hits, MapError> {
    let mut index = index_factory(d as u32, description, MetricType::L2).map_err(faiss_error)?;
    index.add(base).map_err(faiss_error)?;
    if let Some((name, value)) = parameter {
        faiss::index::autotune::ParameterSpace::new()
            .and_then(|space| space.set_index_parameter(&index, name, value))
            .map_err(faiss_error)?;
    }
    let result = index.search(queries, k).map_err(faiss_error)?;
    Ok(result.labels.iter().map(|label| label.get().map_or(-1, |v| v as i64)).zip(result.distances).collect())
}

/// Exact search with the queries split over `threads` workers, each running FAISS on one thread.
/// FAISS's own parallel search alternates a BLAS product with a parallel heap update, and on few
/// cores the idle side's spinning cost as much as the work; separate workers overlap instead.
fn search_exact(base: &[f32], queries: &[f32], d: usize, k: usize, threads: usize) -> Result<Hits, MapError> {
    let parts: Vec<&[f32]> = queries.chunks((queries.len() / d).div_ceil(threads.max(1)).max(1) * d).collect();
    Ok(on_workers(parts.len(), |worker| search_index("Flat", None, base, parts[worker], d, k))?.concat())
}

/// Runs `job(0..workers)` on as many named threads, each with single-threaded FAISS, and returns
/// the results in worker order; a panicking worker becomes an error.
fn on_workers<T: Send>(workers: usize, job: impl Fn(usize) -> Result<T, MapError> + Sync) -> Result<Vec<T>, MapError> {
    let job = &job;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                std::thread::Builder::new()
                    .name("knn".into())
                    .spawn_scoped(scope, move || {
                        crate::faiss_ext::set_faiss_threads(1);
                        job(worker)
                    })
                    .map_err(faiss_error)
            })
            .collect::<Result<_, _>>()?;
        handles.into_iter().map(|handle| handle.join().map_err(|_| faiss_error("a search worker panicked"))?).collect()
    })
}

/// The vectors of `rows`, concatenated.
fn gather(flat: &[f32], d: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter().flat_map(|&row| &flat[row * d..(row + 1) * d]).copied().collect()
}

/// Stores each of `rows`' neighbour lists from `found` (`k + 1` hits a row) in `lists`, and
/// returns the rows whose hits held fewer than `k` others.
fn store_lists(lists: &mut [Vec<Neighbor<f32>>], rows: &[usize], found: &[(i64, f32)], k: usize) -> Vec<usize> {
    let mut short = Vec::new();
    for (&row, found) in rows.iter().zip(found.chunks_exact(k + 1)) {
        match neighbor_list(row, found, k) {
            Some(list) => lists[row] = list,
            None => short.push(row),
        }
    }
    short
}

/// Number of k-means cells: about sqrt(N), so each holds about sqrt(N) points and searching the
/// centroids costs about what searching a cell's points does.
fn cell_count(n: usize) -> usize {
    ((n as f64).sqrt().round() as usize).clamp(1, n)
}

/// Approximate all-points kNN that keeps FAISS's exact, BLAS-blocked search: k-means splits the
/// points into cells, and each cell's points are searched exactly among the points of the
/// `probes` cells whose centroids are nearest its own. A per-query IVF search visits as many
/// points but one at a time, several times slower. Workers store each cell's lists as they go,
/// so no table of all hits is held beside the lists (at 200k points that was 300 MB).
fn search_cells(
    flat: &[f32],
    n: usize,
    d: usize,
    k: usize,
    probes: usize,
    threads: usize,
) -> Result<(NeighborLists, Vec<usize>), MapError> {
    let cells = cell_count(n);
    let mut parameters = ClusteringParameters::new();
    parameters.set_niter(KMEANS_ITERATIONS);
    let mut clustering = Clustering::new_with_params(d as u32, cells as u32, &parameters).map_err(faiss_error)?;
    let mut quantizer = FlatIndexImpl::new_l2(d as u32).map_err(faiss_error)?;
    clustering.train(flat, &mut quantizer).map_err(faiss_error)?;
    let centroids: Vec<f32> = clustering.centroids().map_err(faiss_error)?.concat();
    let cells = centroids.len() / d;
    let probes = probes.clamp(1, cells);

    let assignment = quantizer.assign(flat, 1).map_err(faiss_error)?.labels;
    let assignment: Vec<usize> = assignment
        .iter()
        .enumerate()
        .map(|(row, cell)| {
            cell.get().map(|c| c as usize).ok_or_else(|| faiss_error(format!("point {row} has no k-means cell")))
        })
        .collect::<Result<_, _>>()?;
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); cells];
    for (row, &cell) in assignment.iter().enumerate() {
        members[cell].push(row);
    }
    let nearby = quantizer.assign(&centroids, probes).map_err(faiss_error)?.labels;

    // Cells go to workers round-robin.
    let threads = threads.max(1);
    let lists = Mutex::new(vec![Vec::new(); n]);
    let short = on_workers(threads, |worker| {
        let mut short = Vec::new();
        for cell in (worker..cells).step_by(threads).filter(|&cell| !members[cell].is_empty()) {
            let near = nearby[cell * probes..(cell + 1) * probes].iter().filter_map(|c| c.get());
            let base_rows: Vec<usize> = near.flat_map(|c| members[c as usize].iter().copied()).collect();
            let found = search_cell(flat, d, k + 1, &members[cell], &base_rows)?;
            let mut lists = lists.lock().map_err(|_| faiss_error("a search worker panicked"))?;
            short.extend(store_lists(&mut lists, &members[cell], &found, k));
        }
        Ok(short)
    })?
    .concat();
    let mut lists = lists.into_inner().map_err(|_| faiss_error("a search worker panicked"))?;
    // Lopsided k-means can leave a cell's neighbourhood with fewer than k points; those points
    // are searched exactly instead.
    if !short.is_empty() {
        let found = search_exact(flat, &gather(flat, d, &short), d, k + 1, threads)?;
        if let Some(&row) = store_lists(&mut lists, &short, &found, k).first() {
            return Err(faiss_error(format!("point {row} has fewer than {k} other points to neighbour")));
        }
    }
    Ok((lists, assignment))
}

/// One cell's points (`rows`) searched exactly among `base_rows`; hits name global rows.
fn search_cell(flat: &[f32], d: usize, k: usize, rows: &[usize], base_rows: &[usize]) -> Result<Hits, MapError> {
    let mut found = search_index("Flat", None, &gather(flat, d, base_rows), &gather(flat, d, rows), d, k)?;
    for (local, _) in &mut found {
        if *local >= 0 {
            *local = base_rows[*local as usize] as i64;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(rows: usize, columns: usize) -> Array2<f32> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        Array2::from_shape_simple_fn((rows, columns), || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
    }

    fn indices(neighbors: &[Vec<Neighbor<f32>>]) -> Vec<Vec<usize>> {
        neighbors.iter().map(|row| row.iter().map(|n| n.index).collect()).collect()
    }

    #[test]
    fn auto_searches_exactly_up_to_its_size_or_while_every_cell_would_be_probed() {
        assert_eq!(KnnMethod::automatic(EXACT_UP_TO, 48), KnnMethod::Exact);
        assert_eq!(KnnMethod::automatic(EXACT_UP_TO + 1, 48), KnnMethod::Cells { probes: 48 });
        assert_eq!(KnnMethod::automatic(200 * 200, 200), KnnMethod::Exact);
        assert_eq!(KnnMethod::automatic(202 * 202, 200), KnnMethod::Cells { probes: 200 });
    }

    #[test]
    fn cells_probing_every_cell_find_the_exact_neighbours_and_fewer_probes_most_of_them() {
        let vectors = noise(900, 8);
        let exact = indices(&nearest_neighbors(&vectors, 10, KnnMethod::Exact, 2).unwrap());
        let all_cells = indices(&nearest_neighbors(&vectors, 10, KnnMethod::Cells { probes: 30 }, 2).unwrap());
        assert_eq!(all_cells, exact);
        let some_cells = indices(&nearest_neighbors(&vectors, 10, KnnMethod::Cells { probes: 8 }, 2).unwrap());
        let shared: usize = some_cells
            .iter()
            .zip(&exact)
            .map(|(found, exact)| found.iter().filter(|i| exact.contains(i)).count())
            .sum();
        let recall = shared as f64 / (900 * 10) as f64;
        assert!((0.5..1.0).contains(&recall), "recall {recall}");
    }

    #[test]
    fn points_whose_cells_hold_fewer_than_k_candidates_are_searched_exactly() {
        // 30 cells of about 30 points, one probe, 200 neighbours wanted: every cell falls short.
        let vectors = noise(900, 8);
        let exact = indices(&nearest_neighbors(&vectors, 200, KnnMethod::Exact, 2).unwrap());
        assert_eq!(indices(&nearest_neighbors(&vectors, 200, KnnMethod::Cells { probes: 1 }, 2).unwrap()), exact);
    }
}
