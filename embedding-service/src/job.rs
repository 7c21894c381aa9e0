//! The map job: one dedicated OS thread that loads the corpus and runs the pipeline, so the
//! async runtime never carries CPU-bound work. It computes the first map, then waits for refresh
//! requests and computes each next map while the current one is served. It is started before the
//! server binds and is never joined: shutdown does not wait for it, and a panic inside it becomes
//! a failure in the status.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
    sync::mpsc,
    thread::JoinHandle,
    time::{Instant, SystemTime},
};

use embeddingmap_proto::v1::{self as pb, refresh_embedding_map_response::Start};

use crate::{
    corpus::{Corpus, CorpusSource, CorpusVersion},
    error::MapError,
    map_store::{MAX_GENERATION, MapStore},
    neighbor_index::NeighborIndex,
    pipeline::{self, MapOutput, MapSettings, UnitRows, WarmStart},
    status::{ReadyMap, StatusBoard, StatusPublisher},
};

pub const THREAD_NAME: &str = "map-compute";

/// Asks the job for a refresh; cheap to clone into handlers and signal tasks.
#[derive(Clone)]
pub struct RefreshRequests {
    /// Holds one request at most: requests made while one waits share it.
    sender: mpsc::SyncSender<()>,
    board: StatusBoard,
}

impl RefreshRequests {
    pub fn request(&self) -> Start {
        let computing = self.board.subscribe().borrow().computing().is_some();
        // Full: a refresh is already waiting, and it will read the corpus as it is by then.
        let _ = self.sender.try_send(());
        if computing { Start::Queued } else { Start::Started }
    }
}

/// Starts the job; the status board sees COMPUTING at once and READY or FAILED at the end of the
/// first map, then each refresh's progress and outcome.
pub fn spawn_map_job(
    source: CorpusSource,
    settings: MapSettings,
    publisher: StatusPublisher,
    board: StatusBoard,
    store: Option<MapStore>,
) -> std::io::Result<RefreshRequests> {
    let (sender, requests) = mpsc::sync_channel(1);
    let _: JoinHandle<()> = std::thread::Builder::new().name(THREAD_NAME.to_owned()).spawn(move || {
        // A map served before the first computation came from the store: the first computation
        // checks the corpus against it, unasked, so an unchanged corpus is not reported.
        let mut first = if publisher.current().is_some() { Trigger::StoredMapCheck } else { Trigger::Requested };
        // The version of the corpus files last read whole (a vectors file and its ids together),
        // which the next read is checked against: moved on by every read that succeeds, also
        // when the map computed from it then fails.
        let mut last_read: Option<CorpusVersion> = None;
        loop {
            compute_and_publish(&source, &settings, &publisher, store.as_ref(), first, &mut last_read);
            first = Trigger::Requested;
            // Every sender gone means the server is gone.
            if requests.recv().is_err() {
                return;
            }
            tracing::info!(corpus = %source.describe(), "refreshing the map");
            publisher.computation_started();
        }
    })?;
    Ok(RefreshRequests { sender, board })
}

/// Why a computation runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Trigger {
    /// The first map, or a refresh someone asked for (or the corpus watch saw a change).
    Requested,
    /// The check, at boot, of a map served from the store before its corpus was read.
    StoredMapCheck,
}

/// What a computation that succeeded found.
enum Outcome {
    /// A new map of the corpus as it is now (boxed: it is ten times the other variant's size),
    /// and its parent's positions when it was laid out from them.
    New { map: Box<pb::EmbeddingMap>, previous: Option<pb::PreviousMap> },
    /// The corpus has the served map's fingerprint: the map stays.
    Unchanged,
}

struct Computed {
    outcome: Outcome,
    /// The corpus's neighbour index, for the map served after this computation.
    neighbors: Arc<NeighborIndex>,
}

/// One computation: the first map, or a refresh from the map served now.
fn compute_and_publish(
    source: &CorpusSource,
    settings: &MapSettings,
    publisher: &StatusPublisher,
    store: Option<&MapStore>,
    trigger: Trigger,
    last_read: &mut Option<CorpusVersion>,
) {
    let started = Instant::now();
    let parent = publisher.current();
    let outcome =
        catch_unwind(AssertUnwindSafe(|| compute(source, settings, publisher, parent.as_deref(), last_read, started)))
            .unwrap_or_else(|panic| Err(MapError::Crashed(panic_message(panic.as_ref()))));
    match outcome {
        Ok(Computed { outcome: Outcome::New { map, previous }, neighbors }) => {
            let (points, generation) = (map.count, map.generation);
            tracing::info!(points, generation, seconds = started.elapsed().as_secs_f64(), "embedding map ready");
            // Stored before it is served, so a replica that sees it served can also find it.
            if let Some(store) = store
                && let Err(error) = store.save(&map, previous.as_ref())
            {
                tracing::warn!(store = %store.dir().display(), "cannot store the map ({error}); serving it anyway");
            }
            publisher.ready(*map, Some(neighbors), previous);
        }
        Ok(Computed { outcome: Outcome::Unchanged, neighbors }) => {
            tracing::info!("the corpus is unchanged (same fingerprint); the map stays");
            publisher.unchanged(trigger == Trigger::Requested, neighbors);
        }
        Err(error) if trigger == Trigger::StoredMapCheck && error.is_corpus_load_error() => {
            // Nothing says the stored map is this corpus's map until the corpus is read.
            tracing::error!(corpus = %source.describe(), "embedding map failed: {error}; the stored map is withdrawn");
            publisher.stored_map_unconfirmed(error.to_string());
        }
        Err(error) => {
            tracing::error!(corpus = %source.describe(), "embedding map failed: {error}");
            publisher.failed(error.to_string());
        }
    }
}

/// The map of the corpus as it is now (unchanged if it has the `parent` map's fingerprint), with
/// the corpus's neighbour index. `last_read` is the version of the corpus files last read whole,
/// which this read is checked against and then replaces.
fn compute(
    source: &CorpusSource,
    settings: &MapSettings,
    publisher: &StatusPublisher,
    parent: Option<&ReadyMap>,
    last_read: &mut Option<CorpusVersion>,
    started: Instant,
) -> Result<Computed, MapError> {
    tracing::info!(corpus = %source.describe(), "loading corpus");
    let (corpus, version) = source.load_after(last_read.as_ref())?;
    *last_read = Some(version);
    let (count, dimensions) = (corpus.len(), corpus.dimensions());
    publisher.point_count(count as u64);
    // Fingerprinted now: the pipeline consumes the vectors.
    let corpus_fingerprint = corpus.fingerprint();
    if parent.is_some_and(|parent| parent.summary.corpus_fingerprint == corpus_fingerprint) {
        // The served map's own corpus: its index takes the vectors as they are.
        let neighbors = Arc::new(NeighborIndex::new(corpus.ids, corpus.vectors));
        return Ok(Computed { outcome: Outcome::Unchanged, neighbors });
    }
    let generation = match parent {
        None => 1,
        Some(parent) => parent
            .summary
            .generation
            .checked_add(1)
            .filter(|&next| next <= MAX_GENERATION)
            .ok_or(MapError::GenerationsExhausted { generation: parent.summary.generation })?,
    };
    let Corpus { ids, vectors } = corpus;
    // The neighbours are searched in the corpus's own space: the index keeps the rows the map's
    // PCA reads, one copy for both (1.5 GB at 1M x 384).
    let vectors = UnitRows::new(vectors);
    let neighbors = Arc::new(NeighborIndex::from_unit_rows(ids.clone(), &vectors));
    if parent.is_none() {
        publisher.corpus_loaded(&neighbors);
    }
    // A refresh starts from the map it replaces, unless most of the points are new.
    let parent_points = parent.map(ReadyMap::points);
    let start = parent_points
        .as_ref()
        .map(|points| WarmStart::from_parent(points.iter().map(|p| (p.id, [p.x, p.y])), &ids))
        .filter(|start| start.applies(settings));
    // Laid out from them, the parent's positions compare with the new map's and stay beside it,
    // to show what moved (16 bytes a point); a fresh layout's do not compare, and are dropped now.
    let previous = parent.zip(parent_points).filter(|_| start.is_some()).map(|(parent, points)| pb::PreviousMap {
        generation,
        previous_generation: parent.summary.generation,
        previous_fingerprint: parent.summary.corpus_fingerprint.clone(),
        points,
    });
    tracing::info!(points = count, dimensions, incremental = start.is_some(), "corpus loaded; computing map");
    let MapOutput { points, parameters, timings } = match &start {
        Some(start) => pipeline::compute_map_from(vectors, settings, publisher, start)?,
        None => pipeline::compute_map(vectors, settings, publisher)?,
    };
    tracing::info!(?timings, "map phases done");
    crate::telemetry::record_phases(&timings);
    let points: Vec<pb::Point> = ids.iter().zip(&points).map(|(&id, &[x, y])| pb::Point { id, x, y }).collect();
    // Found once per map version, on the map itself.
    let cluster_levels = crate::clusters::find(&points);
    let map = pb::EmbeddingMap {
        points,
        cluster_levels,
        count: count as u64,
        parameters: Some((&parameters).into()),
        corpus_fingerprint,
        computed_at: Some(prost_types::Timestamp::from(SystemTime::now())),
        compute_duration: prost_types::Duration::try_from(started.elapsed()).ok(),
        input_dimensions: dimensions as u32,
        generation,
        layout: parameters.layout.name().to_owned(),
        parent_fingerprint: parent.map(|parent| parent.summary.corpus_fingerprint.clone()).unwrap_or_default(),
    };
    Ok(Computed { outcome: Outcome::New { map: Box::new(map), previous }, neighbors })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic without a message".to_owned())
}
