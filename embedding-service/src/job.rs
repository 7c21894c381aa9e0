//! The map job: one dedicated OS thread that loads the corpus and runs the pipeline, so the
//! async runtime never carries CPU-bound work. It is started before the server binds and is
//! never joined: shutdown does not wait for it, and a panic inside it becomes a FAILED status.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    thread::JoinHandle,
    time::{Instant, SystemTime},
};

use embeddingmap_proto::v1 as pb;

use crate::{
    corpus::{Corpus, CorpusSource},
    error::MapError,
    pipeline::{self, MapOutput, MapSettings},
    status::StatusPublisher,
};

pub const THREAD_NAME: &str = "map-compute";

/// Starts the job; the status board sees COMPUTING at once and READY or FAILED at the end.
pub fn spawn_map_job(
    source: CorpusSource,
    settings: MapSettings,
    publisher: StatusPublisher,
    started: Instant,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(THREAD_NAME.to_owned()).spawn(move || {
        let outcome = catch_unwind(AssertUnwindSafe(|| compute(&source, &settings, &publisher, started)))
            .unwrap_or_else(|panic| Err(MapError::Crashed(panic_message(panic.as_ref()))));
        match outcome {
            Ok(map) => {
                tracing::info!(points = map.count, seconds = started.elapsed().as_secs_f64(), "embedding map ready");
                publisher.ready(map);
            }
            Err(error) => {
                tracing::error!(corpus = %source.describe(), "embedding map failed: {error}");
                publisher.failed(error.to_string());
            }
        }
    })
}

fn compute(
    source: &CorpusSource,
    settings: &MapSettings,
    publisher: &StatusPublisher,
    started: Instant,
) -> Result<pb::EmbeddingMap, MapError> {
    tracing::info!(corpus = %source.describe(), "loading corpus");
    let corpus = source.load()?;
    let (count, dimensions) = (corpus.len(), corpus.dimensions());
    publisher.point_count(count as u64);
    tracing::info!(points = count, dimensions, "corpus loaded; computing map");
    // Fingerprinted now: the pipeline consumes the vectors.
    let corpus_fingerprint = corpus.fingerprint();
    let Corpus { ids, vectors } = corpus;
    let MapOutput { points, parameters, timings } = pipeline::compute_map(vectors, settings, publisher)?;
    tracing::info!(?timings, "map phases done");
    Ok(pb::EmbeddingMap {
        points: ids.iter().zip(&points).map(|(&id, &[x, y])| pb::Point { id, x, y }).collect(),
        count: count as u64,
        parameters: Some((&parameters).into()),
        corpus_fingerprint,
        computed_at: Some(prost_types::Timestamp::from(SystemTime::now())),
        compute_duration: prost_types::Duration::try_from(started.elapsed()).ok(),
        input_dimensions: dimensions as u32,
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic without a message".to_owned())
}
