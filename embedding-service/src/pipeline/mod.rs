//! The map pipeline: L2-normalise, PCA, FAISS k-nearest neighbours, then t-SNE (bhtsne) with
//! those neighbours. Runs synchronously on the calling thread (plus its own worker pools);
//! callers keep it off the async runtime.

mod knn;
mod locality;
mod optimize;
mod prepare;
pub mod quality;
mod settings;
mod warm_start;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::ValueEnum;
use embeddingmap_proto::v1::Phase;

use crate::error::MapError;

/// The map-making code's version, part of every stored map's key: raised by any change that makes
/// the same corpus and settings give another map (a new optimiser step, a fixed neighbour
/// search), so a map the older code stored is computed anew rather than served as current.
pub const ALGORITHM_VERSION: u32 = 2;

pub use knn::KnnMethod;
pub use prepare::{PcaWidth, UnitRows, l2_normalized};
pub use settings::{GradientChoice, KnnChoice, Layout, MapParameters, MapSettings};
pub use warm_start::WarmStart;

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
    /// The optimisation iterations this run will make, once its parameters are resolved.
    fn planned(&self, _total_iterations: u32) {}
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

/// Computes the map of a corpus's rows (`n x d`, at unit length), one point per row. Blocking
/// and CPU-bound. The rows are only read, for the PCA, and this handle on them is dropped then:
/// unless a neighbour index shares them, the neighbour search and the optimisation run without
/// them (300 MB at 200k x 384).
pub fn compute_map(
    vectors: UnitRows,
    settings: &MapSettings,
    progress: &dyn ProgressSink,
) -> Result<MapOutput, MapError> {
    compute(vectors, settings, progress, None)
}

/// As `compute_map`, starting from a parent map (`start`: the parent's position of each row it
/// had): no early exaggeration and `--refresh-iterations`, so the layout stays recognisable.
/// Deterministic like a fresh map: the same parent, corpus and settings give the same points.
pub fn compute_map_from(
    vectors: UnitRows,
    settings: &MapSettings,
    progress: &dyn ProgressSink,
    start: &WarmStart,
) -> Result<MapOutput, MapError> {
    compute(vectors, settings, progress, Some(start))
}

fn compute(
    vectors: UnitRows,
    settings: &MapSettings,
    progress: &dyn ProgressSink,
    start: Option<&WarmStart>,
) -> Result<MapOutput, MapError> {
    let (points, dimensions) = vectors.rows().dim();
    let mut parameters = settings.resolve(points, dimensions)?;
    if let Some(start) = start {
        if start.positions.len() != points {
            return Err(MapError::InvalidParameter(format!(
                "a warm start of {} rows for a corpus of {points}",
                start.positions.len()
            )));
        }
        parameters = parameters.incremental(settings);
    }
    progress.planned(parameters.iterations);
    use_threads(parameters.threads);
    let mut timings = PhaseTimings::default();

    // Normalised when the rows were made, before the neighbour index took them.
    progress.phase(Phase::Normalizing);
    timings.normalize = vectors.normalized_in;

    progress.phase(Phase::Pca);
    let started = Instant::now();
    let reduced = match prepare::pca_reduce(vectors.rows(), parameters.pca_width)? {
        Some(projected) => Arc::new(projected),
        // Narrow enough already: the rows themselves, shared rather than copied.
        None => vectors.shared(),
    };
    drop(vectors);
    parameters.pca_dimensions = reduced.ncols() as u32;
    let initial = match (start, parameters.init) {
        // Placed once the neighbours are known.
        (Some(_), _) => Vec::new(),
        (None, Initialization::Pca) => prepare::pca_initial_layout(&reduced)?,
        (None, Initialization::Random) => prepare::random_initial_layout(reduced.nrows(), parameters.seed),
    };
    timings.pca = started.elapsed();

    progress.phase(Phase::NearestNeighbors);
    let started = Instant::now();
    let (neighbors, cells) =
        knn::nearest_neighbors_and_cells(&reduced, parameters.neighbors as usize, parameters.knn, parameters.threads)?;
    drop(reduced);
    let initial = match start {
        Some(start) => start.initial_layout(&neighbors),
        None => initial,
    };
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
