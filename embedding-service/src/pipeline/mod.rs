//! The map pipeline: L2-normalise, PCA, FAISS k-nearest neighbours, then t-SNE (bhtsne) with
//! those neighbours. Runs synchronously on the calling thread (plus its own worker pools);
//! callers keep it off the async runtime.

mod knn;
mod locality;
mod optimize;
mod prepare;

use std::time::{Duration, Instant};

use clap::ValueEnum;
use embeddingmap_proto::v1::Phase;

use ndarray::Array2;

use crate::error::MapError;

pub use knn::KnnMethod;

/// Smallest perplexity a clamped run may use; a corpus too small even for it fails.
pub const MIN_PERPLEXITY: f64 = 2.0;

/// Below this many points Barnes-Hut beats FFT interpolation (whose grid cost does not shrink).
pub const FFT_MIN_POINTS: usize = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradientMethod {
    Fft,
    BarnesHut,
}

impl GradientMethod {
    pub fn name(self) -> &'static str {
        match self {
            GradientMethod::Fft => "fft",
            GradientMethod::BarnesHut => "barnes-hut",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Initialization {
    /// The first two principal components, scaled small: deterministic, preserves global layout.
    Pca,
    /// Seeded Gaussian noise.
    Random,
}

impl Initialization {
    pub fn name(self) -> &'static str {
        match self {
            Initialization::Pca => "pca",
            Initialization::Random => "random",
        }
    }
}

/// What the caller asked for; see `MapParameters` for what a run actually used.
#[derive(Debug, Clone)]
pub struct MapSettings {
    pub perplexity: f64,
    pub iterations: u32,
    pub exaggeration_iterations: u32,
    pub early_exaggeration: f64,
    pub seed: u64,
    pub pca_dims: u32,
    /// 0 means every core.
    pub threads: usize,
    /// None means N / early exaggeration.
    pub learning_rate: Option<f64>,
    /// After early exaggeration; None means N / 4.
    pub final_learning_rate: Option<f64>,
    /// None picks by N (see `KnnMethod::automatic`).
    pub knn: Option<KnnMethod>,
    /// Cells searched per cell by the automatic choice.
    pub knn_probes: usize,
    /// None picks by N.
    pub gradient: Option<GradientMethod>,
    pub init: Initialization,
}

/// The parameters a run used, after clamping and automatic choices.
#[derive(Debug, Clone, PartialEq)]
pub struct MapParameters {
    pub perplexity: f64,
    pub iterations: u32,
    pub exaggeration_iterations: u32,
    pub early_exaggeration: f64,
    pub learning_rate: f64,
    pub final_learning_rate: f64,
    pub seed: u64,
    pub pca_dimensions: u32,
    pub neighbors: u32,
    pub knn: KnnMethod,
    pub gradient: GradientMethod,
    pub init: Initialization,
    pub threads: usize,
}

impl MapSettings {
    /// Validates the settings and resolves them for a corpus of `points` x `dimensions`.
    pub fn resolve(&self, points: usize, dimensions: usize) -> Result<MapParameters, MapError> {
        let invalid = |what: String| Err(MapError::InvalidParameter(what));
        if !(self.perplexity.is_finite() && self.perplexity >= MIN_PERPLEXITY) {
            return invalid(format!("perplexity must be at least {MIN_PERPLEXITY}, got {}", self.perplexity));
        }
        if self.iterations == 0 {
            return invalid("iterations must be at least 1".into());
        }
        if self.pca_dims < 2 {
            return invalid(format!("PCA dimensions must be at least 2, got {}", self.pca_dims));
        }
        for rate in [self.learning_rate, self.final_learning_rate].into_iter().flatten() {
            if !(rate.is_finite() && rate > 0.0) {
                return invalid(format!("learning rate must be positive, got {rate}"));
            }
        }
        let needed = (3.0 * MIN_PERPLEXITY) as usize + 1;
        if points < needed {
            return Err(MapError::TooFewPoints { points, needed });
        }
        // bhtsne needs 3 x perplexity neighbours besides the point itself.
        let perplexity = self.perplexity.min((points - 1) as f64 / 3.0);
        let neighbors = ((3.0 * perplexity) as usize).min(points - 1);
        let threads = if self.threads == 0 { all_cores() } else { self.threads };
        Ok(MapParameters {
            perplexity,
            iterations: self.iterations,
            exaggeration_iterations: self.exaggeration_iterations.min(self.iterations),
            early_exaggeration: self.early_exaggeration,
            learning_rate: self
                .learning_rate
                .unwrap_or((points as f64 / self.early_exaggeration).max(50.0)),
            final_learning_rate: self.final_learning_rate.unwrap_or((points as f64 / 4.0).max(50.0)),
            seed: self.seed,
            pca_dimensions: (self.pca_dims as usize).min(dimensions) as u32,
            neighbors: neighbors as u32,
            knn: self.knn.unwrap_or(KnnMethod::automatic(points, self.knn_probes)),
            gradient: self.gradient.unwrap_or(if points >= FFT_MIN_POINTS {
                GradientMethod::Fft
            } else {
                GradientMethod::BarnesHut
            }),
            init: self.init,
            threads,
        })
    }
}

/// FAISS's OpenMP loops get `threads`; BLAS stays on the calling thread (see
/// `faiss_ext::single_threaded_blas`).
fn use_threads(threads: usize) {
    crate::faiss_ext::set_faiss_threads(threads);
    crate::faiss_ext::single_threaded_blas();
}

fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Receives the pipeline's progress; called from the computing thread.
pub trait ProgressSink: Sync {
    fn phase(&self, phase: Phase);
    /// `done` optimisation iterations of the run's total are finished.
    fn iteration(&self, done: u32);
}

/// Time spent in each phase.
#[derive(Debug, Clone, Default)]
pub struct PhaseTimings {
    pub normalize: Duration,
    pub pca: Duration,
    pub knn: Duration,
    pub affinities: Duration,
    pub optimize: Duration,
}

pub struct MapOutput {
    /// One `(x, y)` per corpus row, in corpus order.
    pub points: Vec<[f32; 2]>,
    pub parameters: MapParameters,
    pub timings: PhaseTimings,
}

/// Computes the map of a corpus's vectors (`n x d`), one point per row. Blocking and CPU-bound.
/// The vectors are consumed: normalised in place and freed once projected, which at 200k x 384
/// keeps 300 MB out of the neighbour search and the optimisation.
pub fn compute_map(
    vectors: Array2<f32>,
    settings: &MapSettings,
    progress: &dyn ProgressSink,
) -> Result<MapOutput, MapError> {
    let (points, dimensions) = vectors.dim();
    let parameters = settings.resolve(points, dimensions)?;
    use_threads(parameters.threads);
    let mut timings = PhaseTimings::default();

    progress.phase(Phase::Normalizing);
    let started = Instant::now();
    let normalized = prepare::l2_normalized(vectors);
    timings.normalize = started.elapsed();

    progress.phase(Phase::Pca);
    let started = Instant::now();
    let reduced = prepare::pca_reduce(normalized, parameters.pca_dimensions as usize)?;
    let initial = match parameters.init {
        Initialization::Pca => prepare::pca_initial_layout(&reduced)?,
        Initialization::Random => prepare::random_initial_layout(reduced.nrows(), parameters.seed),
    };
    timings.pca = started.elapsed();

    progress.phase(Phase::NearestNeighbors);
    let started = Instant::now();
    let (neighbors, cells) =
        knn::nearest_neighbors_and_cells(&reduced, parameters.neighbors as usize, parameters.knn, parameters.threads)?;
    drop(reduced);
    let order = cells.map(|cells| locality::order_by_cell(&cells));
    let (neighbors, initial) = match &order {
        Some(order) => (locality::renumber_neighbors(neighbors, order), locality::reorder_rows(&initial, 2, order)),
        None => (neighbors, initial),
    };
    timings.knn = started.elapsed();

    let points = optimize::optimize(neighbors, initial, &parameters, progress, &mut timings)?;
    let points = match &order {
        Some(order) => locality::restore_order(points, order),
        None => points,
    };
    Ok(MapOutput { points, parameters, timings })
}

/// Share of the exact k nearest neighbours that the run's neighbour search finds (recall@k), on
/// the same normalised, PCA-reduced vectors the map uses. For benchmarks: it runs an exact search.
pub fn knn_recall(vectors: Array2<f32>, settings: &MapSettings) -> Result<f64, MapError> {
    let (points, dimensions) = vectors.dim();
    let parameters = settings.resolve(points, dimensions)?;
    use_threads(parameters.threads);
    let reduced = prepare::pca_reduce(prepare::l2_normalized(vectors), parameters.pca_dimensions as usize)?;
    let k = parameters.neighbors as usize;
    let found = knn::nearest_neighbors(&reduced, k, parameters.knn, parameters.threads)?;
    let exact = knn::nearest_neighbors(&reduced, k, KnnMethod::Exact, parameters.threads)?;
    let hits: usize = found
        .iter()
        .zip(&exact)
        .map(|(found, exact)| {
            let exact: std::collections::HashSet<usize> = exact.iter().map(|n| n.index).collect();
            found.iter().filter(|n| exact.contains(&n.index)).count()
        })
        .sum();
    Ok(hits as f64 / (k * points) as f64)
}

/// 10-nearest-neighbour label accuracy of a 2-D map: the share of points whose 10 nearest map
/// neighbours' majority label equals their own. The quality score used against the peers.
pub fn knn_label_accuracy(points: &[[f32; 2]], labels: &[i64]) -> f64 {
    const K: usize = 10;
    let n = points.len().min(labels.len());
    if n <= K {
        return 0.0;
    }
    let flat: Vec<f32> = points[..n].iter().flatten().copied().collect();
    let Ok(hits) = knn::search_exact_l2(&flat, 2, K + 1, all_cores()) else {
        return 0.0;
    };
    let correct = (0..n)
        .filter(|&i| {
            let mut votes = std::collections::BTreeMap::<i64, usize>::new();
            for &j in hits[i * (K + 1)..(i + 1) * (K + 1)].iter().filter(|&&j| j as usize != i).take(K) {
                *votes.entry(labels[j as usize]).or_default() += 1;
            }
            // Ties go to the smallest label, as numpy's bincount().argmax() does.
            let best = votes.values().copied().max().unwrap_or(0);
            votes.iter().find(|&(_, &count)| count == best).map(|(&label, _)| label) == Some(labels[i])
        })
        .count();
    correct as f64 / n as f64
}
