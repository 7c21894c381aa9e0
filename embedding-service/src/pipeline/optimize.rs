//! The t-SNE optimisation itself, on bhtsne with our own neighbours.

use std::{sync::OnceLock, time::Instant};

use bhtsne::{Neighbor, tSNE};
use embeddingmap_proto::v1::Phase;

use super::{GradientMethod, MapParameters, PhaseTimings, ProgressSink};
use crate::error::MapError;

/// Barnes-Hut accuracy/speed trade-off, the value the reference implementations use.
const THETA: f32 = 0.5;

/// Longest step a point may take in one iteration, openTSNE's default: lets the learning rate
/// rise to N after early exaggeration without flinging points off the map.
const MAX_STEP_NORM: f32 = 5.0;

/// Runs the optimisation on a dedicated rayon pool of `parameters.threads` threads and returns
/// one `[x, y]` per point. The neighbour lists are freed once bhtsne has copied them.
pub fn optimize(
    neighbors: Vec<Vec<Neighbor<f32>>>,
    initial: Vec<f32>,
    parameters: &MapParameters,
    progress: &dyn ProgressSink,
    timings: &mut PhaseTimings,
) -> Result<Vec<[f32; 2]>, MapError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(parameters.threads)
        .thread_name(|i| format!("tsne-{i}"))
        .build()
        .map_err(|e| MapError::InvalidParameter(format!("cannot start {} worker threads: {e}", parameters.threads)))?;
    // bhtsne reads only the sample count from `data` when neighbours are given.
    let samples = vec![(); neighbors.len()];

    progress.phase(Phase::Affinities);
    let started = Instant::now();
    let optimizing_since = OnceLock::<Instant>::new();
    let embedding = pool.install(|| {
        let mut tsne: tSNE<f32, (), 2> = tSNE::new(&samples);
        tsne.perplexity(parameters.perplexity as f32)
            .epochs(parameters.iterations as usize)
            .stop_lying_epoch(parameters.exaggeration_iterations as usize)
            .momentum_switch_epoch(parameters.exaggeration_iterations as usize)
            .early_exaggeration(parameters.early_exaggeration as f32)
            .learning_rate(parameters.learning_rate as f32)
            .final_learning_rate(parameters.final_learning_rate as f32)
            .max_step_norm(MAX_STEP_NORM)
            .initial_embedding(initial)
            .epoch_callback(|epoch, _| {
                // The first epoch ends after bhtsne has built the affinities.
                if optimizing_since.set(Instant::now()).is_ok() {
                    progress.phase(Phase::Optimizing);
                }
                progress.iteration(epoch as u32 + 1);
            });
        match parameters.gradient {
            GradientMethod::Fft => tsne.fit_sne_with_neighbors(neighbors),
            GradientMethod::BarnesHut => tsne.barnes_hut_with_neighbors(THETA, neighbors),
        };
        tsne.embedding()
    });
    let finished = Instant::now();
    let optimizing_since = optimizing_since.get().copied().unwrap_or(finished);
    timings.affinities = optimizing_since - started;
    timings.optimize = finished - optimizing_since;

    if let Some(bad) = embedding.iter().position(|v| !v.is_finite()) {
        return Err(MapError::InvalidParameter(format!(
            "the optimisation diverged (point {} is not finite); lower --learning-rate",
            bad / 2
        )));
    }
    Ok(embedding.chunks_exact(2).map(|xy| [xy[0], xy[1]]).collect())
}
