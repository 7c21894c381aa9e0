//! The map's status, owned by the computing thread and read by every RPC.
//!
//! A `watch` channel holds the latest status: RPCs answer from it without waiting, watchers wake
//! on each change, and intermediate progress is coalesced for free. Once a map is ready, a map is
//! always served: a refresh computes beside it, and only a new map replaces it. The one exception
//! is a map restored from the store whose corpus then cannot be read to confirm it.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use embeddingmap_proto::v1::{self as pb, MapState, Phase, refresh_outcome::Result as RefreshResult};
use service_kit::ready_answers::SharedAnswer;
use tokio::sync::watch;

use crate::neighbor_index::NeighborIndex;

/// How often optimisation progress is published at most; phase changes always are.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct MapStatus {
    pub serving: Serving,
    /// How the last refresh ended.
    pub last_refresh: Option<pb::RefreshOutcome>,
    /// The corpus of the map served (or, before the first map, of the one computing), searched
    /// for a point's true neighbours.
    pub neighbors: Option<Arc<NeighborIndex>>,
}

/// What is served, with the rules of the three states in the type: READY always has a map, and
/// FAILED is only possible while no map was computed (a refresh that fails keeps the map; a map
/// restored from the store is withdrawn if its corpus cannot be read).
#[derive(Debug, Clone)]
pub enum Serving {
    /// No map yet: the first computation, or another try after a failed one, is under way.
    Computing(Computing),
    /// No map could be computed, and none was ever served.
    Failed(pb::Failure),
    /// The last map computed, kept through refreshes and their failures; `refresh` is a
    /// computation of the next one, under way beside it.
    Ready { map: Arc<ReadyMap>, refresh: Option<Computing> },
}

#[derive(Debug, Clone, Copy)]
pub struct Computing {
    pub phase: Phase,
    pub iteration: u32,
    pub total_iterations: u32,
    pub point_count: u64,
    pub started: Instant,
}

impl Computing {
    fn progress(&self) -> pb::Progress {
        pb::Progress {
            phase: self.phase.into(),
            iteration: self.iteration,
            total_iterations: self.total_iterations,
            // Measured now, so polls see time move.
            elapsed: prost_types::Duration::try_from(self.started.elapsed()).ok(),
            point_count: self.point_count,
        }
    }
}

impl MapStatus {
    fn new(computing: Computing) -> Self {
        MapStatus { serving: Serving::Computing(computing), last_refresh: None, neighbors: None }
    }

    pub fn state(&self) -> MapState {
        match self.serving {
            Serving::Computing(_) => MapState::Computing,
            Serving::Failed(_) => MapState::Failed,
            Serving::Ready { .. } => MapState::Ready,
        }
    }

    /// The map served, if any.
    pub fn ready(&self) -> Option<&Arc<ReadyMap>> {
        match &self.serving {
            Serving::Ready { map, .. } => Some(map),
            _ => None,
        }
    }

    /// The computation under way, if any: the first map's or a refresh's.
    pub fn computing(&self) -> Option<&Computing> {
        match &self.serving {
            Serving::Computing(computing) | Serving::Ready { refresh: Some(computing), .. } => Some(computing),
            _ => None,
        }
    }

    fn computing_mut(&mut self) -> Option<&mut Computing> {
        match &mut self.serving {
            Serving::Computing(computing) | Serving::Ready { refresh: Some(computing), .. } => Some(computing),
            _ => None,
        }
    }

    /// What a READY answer carries beside the map: a refresh's progress, the last one's outcome.
    fn refresh_fields(&self) -> pb::EmbeddingMapStatus {
        pb::EmbeddingMapStatus {
            refresh: self.computing().map(Computing::progress),
            last_refresh: self.last_refresh.clone(),
            ..Default::default()
        }
    }

    /// The status as sent on the wire.
    pub fn to_proto(&self, omit_points: bool) -> pb::EmbeddingMapStatus {
        let last_refresh = self.last_refresh.clone();
        match &self.serving {
            Serving::Ready { map, .. } => {
                let pb::EmbeddingMapStatus { refresh, last_refresh, .. } = self.refresh_fields();
                pb::EmbeddingMapStatus { refresh, last_refresh, ..map.answer.decode(omit_points) }
            }
            Serving::Failed(failure) => pb::EmbeddingMapStatus {
                state: MapState::Failed.into(),
                failure: Some(failure.clone()),
                last_refresh,
                ..Default::default()
            },
            Serving::Computing(computing) => pb::EmbeddingMapStatus {
                state: MapState::Computing.into(),
                progress: Some(computing.progress()),
                last_refresh,
                ..Default::default()
            },
        }
    }

    /// A READY answer as encoded pieces: the map's shared encoding, then the few bytes that
    /// change with a refresh's progress.
    pub fn encoded_ready(&self, omit_points: bool) -> Option<Vec<Bytes>> {
        Some(self.ready()?.answer.with(omit_points, &self.refresh_fields()))
    }
}

/// A READY map as answers carry it: the whole `EmbeddingMapStatus` message encoded once with its
/// points and once without. `service_kit::ready_answers` sends these bytes as they are (no copy
/// per answer); the few answers built as messages decode them.
#[derive(Debug)]
pub struct ReadyMap {
    /// The map without its points, for the job's lineage (fingerprint, generation).
    pub summary: pb::EmbeddingMap,
    answer: SharedAnswer<pb::EmbeddingMapStatus>,
    /// The positions of the map this one refreshed, if kept: what moved, what arrived.
    pub previous: Option<Arc<pb::PreviousMap>>,
}

impl ReadyMap {
    /// `previous` is kept only if it is `map`'s parent (same generation named, its fingerprint
    /// the map's parent's), so a mismatched pair is never shown as a comparison.
    pub fn new(map: pb::EmbeddingMap, previous: Option<pb::PreviousMap>) -> Self {
        let previous = previous.filter(|previous| is_parent_of(previous, &map)).map(Arc::new);
        let status =
            |map| pb::EmbeddingMapStatus { state: MapState::Ready.into(), map: Some(map), ..Default::default() };
        // The bulk is taken out before the summary is copied, so the points are never copied.
        let mut summary = map;
        let points = std::mem::take(&mut summary.points);
        let cluster_levels = std::mem::take(&mut summary.cluster_levels);
        let map = pb::EmbeddingMap { points, cluster_levels, ..summary.clone() };
        ReadyMap { answer: SharedAnswer::new(&status(map), &status(summary.clone())), summary, previous }
    }

    /// The map's points, decoded from its encoding (for a refresh that starts from them).
    pub fn points(&self) -> Vec<pb::Point> {
        self.answer.decode(false).map.map(|map| map.points).unwrap_or_default()
    }
}

/// Whether `previous` holds the positions of `map`'s parent.
pub fn is_parent_of(previous: &pb::PreviousMap, map: &pb::EmbeddingMap) -> bool {
    previous.generation == map.generation
        && previous.previous_generation < map.generation
        && !map.parent_fingerprint.is_empty()
        && previous.previous_fingerprint == map.parent_fingerprint
}

/// Read side, cheap to clone into every RPC handler.
#[derive(Clone)]
pub struct StatusBoard {
    receiver: watch::Receiver<MapStatus>,
}

impl StatusBoard {
    pub fn current(&self, omit_points: bool) -> pb::EmbeddingMapStatus {
        self.receiver.borrow().to_proto(omit_points)
    }

    /// The encoded answer while a map is READY.
    pub fn encoded_ready(&self, omit_points: bool) -> Option<Vec<Bytes>> {
        self.receiver.borrow().encoded_ready(omit_points)
    }

    pub fn subscribe(&self) -> watch::Receiver<MapStatus> {
        self.receiver.clone()
    }

    /// The map served now, if any.
    pub fn ready(&self) -> Option<Arc<ReadyMap>> {
        self.receiver.borrow().ready().cloned()
    }
}

impl service_kit::ready_answers::ReadyMaps for StatusBoard {
    async fn encoded_ready(&self, omit_points: bool) -> Result<Option<Vec<Bytes>>, tonic::Status> {
        Ok(StatusBoard::encoded_ready(self, omit_points))
    }
}

/// Write side, owned by the computing thread.
pub struct StatusPublisher {
    sender: watch::Sender<MapStatus>,
    last_progress: Mutex<Instant>,
    total_iterations: u32,
}

/// A fresh status pair: COMPUTING in the loading phase, clocked from now.
pub fn status_channel(total_iterations: u32) -> (StatusPublisher, StatusBoard) {
    let (sender, receiver) = watch::channel(MapStatus::new(Computing::starting(total_iterations)));
    let publisher = StatusPublisher { sender, last_progress: Mutex::new(Instant::now()), total_iterations };
    (publisher, StatusBoard { receiver })
}

impl Computing {
    /// A computation beginning: loading, clocked from now.
    fn starting(total_iterations: u32) -> Self {
        Computing { phase: Phase::Loading, iteration: 0, total_iterations, point_count: 0, started: Instant::now() }
    }
}

impl StatusPublisher {
    /// A computation (the first map or a refresh) begins: loading, clocked from now.
    pub fn computation_started(&self) {
        let computing = Computing::starting(self.total_iterations);
        self.sender.send_modify(|status| match &mut status.serving {
            Serving::Ready { refresh, .. } => *refresh = Some(computing),
            other => *other = Serving::Computing(computing),
        });
    }

    /// The phase now running; always published.
    pub fn phase(&self, phase: Phase) {
        self.update_computing(|computing| computing.phase = phase);
    }

    pub fn point_count(&self, points: u64) {
        self.update_computing(|computing| computing.point_count = points);
    }

    /// The iterations this computation will run, once it knows (a refresh that starts from the
    /// current map runs fewer).
    pub fn planned(&self, total_iterations: u32) {
        self.update_computing(|computing| computing.total_iterations = total_iterations);
    }

    /// Optimisation progress, published at most every `PROGRESS_INTERVAL` and at the last step.
    pub fn iteration(&self, done: u32) {
        let mut last = self.last_progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let total = self.sender.borrow().computing().map_or(0, |computing| computing.total_iterations);
        if done < total && last.elapsed() < PROGRESS_INTERVAL {
            return;
        }
        *last = Instant::now();
        self.update_computing(|computing| computing.iteration = done);
    }

    /// The first map's corpus is loaded: while no map is served, its neighbours can be asked for
    /// already (once one is, they come only with a map, so they are always points on it).
    pub fn corpus_loaded(&self, neighbors: &Arc<NeighborIndex>) {
        self.sender.send_if_modified(|status| {
            let first = status.ready().is_none();
            if first {
                status.neighbors = Some(neighbors.clone());
            }
            first
        });
    }

    /// The map served from now on, with its corpus's neighbours (None for a stored map, whose
    /// corpus is loaded after) and its parent's positions if kept; a refresh's outcome says it
    /// replaced one.
    pub fn ready(
        &self,
        map: pb::EmbeddingMap,
        neighbors: Option<Arc<NeighborIndex>>,
        previous: Option<pb::PreviousMap>,
    ) {
        let map = Arc::new(ReadyMap::new(map, previous));
        self.sender.send_modify(|status| {
            if status.ready().is_some() {
                status.last_refresh = Some(outcome(RefreshResult::Updated, None));
            }
            status.neighbors = neighbors;
            status.serving = Serving::Ready { map, refresh: None };
        });
    }

    /// A refresh found the corpus as it was: the map stays. `report` is false for the check at
    /// boot of a stored map, which nobody asked for.
    pub fn unchanged(&self, report: bool, neighbors: Arc<NeighborIndex>) {
        self.sender.send_modify(|status| {
            if let Serving::Ready { refresh, .. } = &mut status.serving {
                *refresh = None;
            }
            // The served map's own corpus (a stored map's, the first time it is read).
            status.neighbors = Some(neighbors);
            if report {
                status.last_refresh = Some(outcome(RefreshResult::Unchanged, None));
            }
        });
    }

    /// The computation failed in its current phase: FAILED if no map was ever ready, else the last
    /// good map stays and the failure is the last refresh's outcome.
    pub fn failed(&self, message: String) {
        self.sender.send_modify(|status| {
            let failure = failure_now(status, message);
            match &mut status.serving {
                Serving::Ready { refresh, .. } => {
                    *refresh = None;
                    status.last_refresh = Some(outcome(RefreshResult::Failed, Some(failure)));
                }
                other => *other = Serving::Failed(failure),
            }
        });
    }

    /// The map served since boot came from the store, and the corpus it was to be checked against
    /// could not be read: nothing says it is this corpus's map (a file planted in a shared store
    /// would look the same), so it is withdrawn, and the map is FAILED with the reason.
    pub fn stored_map_unconfirmed(&self, message: String) {
        self.sender.send_modify(|status| {
            let message = format!(
                "{message} (the stored map served since start is withdrawn: it cannot be checked against the corpus)"
            );
            status.serving = Serving::Failed(failure_now(status, message));
            status.neighbors = None;
        });
    }

    /// The map served now, if any: the parent of the next one.
    pub fn current(&self) -> Option<Arc<ReadyMap>> {
        self.sender.borrow().ready().cloned()
    }

    fn update_computing(&self, change: impl FnOnce(&mut Computing)) {
        self.sender.send_if_modified(|status| match status.computing_mut() {
            Some(computing) => {
                change(computing);
                true
            }
            None => false,
        });
    }
}

/// A failure with `message` in the phase the computation under way has reached.
fn failure_now(status: &MapStatus, message: String) -> pb::Failure {
    let phase = status.computing().map_or(Phase::Unspecified, |computing| computing.phase);
    pb::Failure { message, phase: phase.into() }
}

fn outcome(result: RefreshResult, failure: Option<pb::Failure>) -> pb::RefreshOutcome {
    pb::RefreshOutcome {
        result: result.into(),
        failure,
        finished_at: Some(prost_types::Timestamp::from(SystemTime::now())),
    }
}

impl crate::pipeline::ProgressSink for StatusPublisher {
    fn planned(&self, total_iterations: u32) {
        StatusPublisher::planned(self, total_iterations);
    }

    fn phase(&self, phase: Phase) {
        StatusPublisher::phase(self, phase);
    }

    fn iteration(&self, done: u32) {
        StatusPublisher::iteration(self, done);
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn one_point_map(generation: u64) -> pb::EmbeddingMap {
        pb::EmbeddingMap {
            points: vec![pb::Point { id: 1, x: 0.5, y: 0.25 }],
            count: 1,
            generation,
            corpus_fingerprint: format!("corpus {generation}"),
            ..Default::default()
        }
    }

    /// The READY answer as the layer sends it: its pieces, concatenated.
    fn sent(board: &StatusBoard, omit_points: bool) -> pb::EmbeddingMapStatus {
        pb::EmbeddingMapStatus::decode(board.encoded_ready(omit_points).unwrap().concat().as_slice()).unwrap()
    }

    #[test]
    fn computing_reports_phase_progress_and_live_elapsed() {
        let (publisher, board) = status_channel(1000);
        publisher.point_count(1797);
        publisher.phase(Phase::Optimizing);
        publisher.iteration(1000);
        let status = board.current(false);
        assert_eq!(status.state(), MapState::Computing);
        let progress = status.progress.unwrap();
        assert_eq!((progress.phase(), progress.iteration, progress.point_count), (Phase::Optimizing, 1000, 1797));
    }

    #[test]
    fn the_first_map_failing_is_failed_with_its_phase() {
        let (publisher, board) = status_channel(10);
        publisher.failed("broken corpus".into());
        publisher.phase(Phase::Pca);
        let status = board.current(false);
        assert_eq!(status.state(), MapState::Failed);
        assert_eq!(status.failure.unwrap().phase(), Phase::Loading);
    }

    #[test]
    fn ready_can_omit_points_and_answers_share_one_encoding() {
        let (publisher, board) = status_channel(10);
        publisher.ready(one_point_map(1), None, None);
        assert_eq!(board.current(false).map.unwrap().points.len(), 1);
        let summary = board.current(true).map.unwrap();
        assert_eq!((summary.points.len(), summary.count), (0, 1));
        let shared = board.encoded_ready(false).unwrap();
        assert_eq!(shared.len(), 1, "nothing beside the map while no refresh ran");
        assert_eq!(shared[0].as_ptr(), board.encoded_ready(false).unwrap()[0].as_ptr(), "one encoding");
        assert_eq!(sent(&board, false), board.current(false));
    }

    #[test]
    fn a_refresh_keeps_the_map_served_and_reports_how_it_went() {
        let (publisher, board) = status_channel(10);
        publisher.ready(one_point_map(1), None, None);
        publisher.computation_started();
        publisher.phase(Phase::Pca);
        let refreshing = sent(&board, true);
        assert_eq!(refreshing.state(), MapState::Ready);
        assert_eq!(refreshing.map.as_ref().unwrap().generation, 1);
        assert_eq!(refreshing.refresh.as_ref().unwrap().phase(), Phase::Pca);
        let elapsed_aside = |mut status: pb::EmbeddingMapStatus| {
            status.refresh.as_mut().unwrap().elapsed = None;
            status
        };
        assert_eq!(elapsed_aside(refreshing.clone()), elapsed_aside(board.current(true)));

        publisher.failed("the new corpus has NaN".into());
        let failed = board.current(true);
        assert_eq!((failed.state(), failed.map.unwrap().generation), (MapState::Ready, 1));
        let outcome = failed.last_refresh.unwrap();
        assert_eq!(outcome.result(), RefreshResult::Failed);
        assert_eq!(outcome.failure.unwrap().phase(), Phase::Pca);
        assert!(failed.refresh.is_none());

        publisher.computation_started();
        publisher.unchanged(true, Arc::new(NeighborIndex::new(vec![1], ndarray::Array2::zeros((1, 2)))));
        assert_eq!(board.current(true).last_refresh.unwrap().result(), RefreshResult::Unchanged);

        publisher.computation_started();
        let parent = board.ready().unwrap();
        let second = pb::EmbeddingMap { parent_fingerprint: "corpus 1".into(), ..one_point_map(2) };
        let previous = pb::PreviousMap {
            generation: 2,
            previous_generation: 1,
            previous_fingerprint: parent.summary.corpus_fingerprint.clone(),
            points: parent.points(),
        };
        publisher.ready(second, None, Some(previous));
        let updated = sent(&board, false);
        assert_eq!((updated.map.as_ref().unwrap().generation, updated.refresh), (2, None));
        assert_eq!(updated.last_refresh.unwrap().result(), RefreshResult::Updated);
        let previous = board.ready().unwrap().previous.clone().expect("the parent's positions are kept");
        assert_eq!((previous.generation, previous.previous_generation), (2, 1));
        assert_eq!(previous.points, one_point_map(1).points);
    }

    #[test]
    fn positions_that_are_not_the_parents_are_not_kept() {
        let map = pb::EmbeddingMap { parent_fingerprint: "first".into(), ..one_point_map(3) };
        let previous = pb::PreviousMap {
            generation: 3,
            previous_generation: 2,
            previous_fingerprint: "first".into(),
            points: one_point_map(2).points,
        };
        assert!(ReadyMap::new(map.clone(), Some(previous.clone())).previous.is_some());
        for wrong in [
            pb::PreviousMap { generation: 4, ..previous.clone() },
            pb::PreviousMap { previous_generation: 3, ..previous.clone() },
            pb::PreviousMap { previous_fingerprint: "another".into(), ..previous.clone() },
        ] {
            assert!(ReadyMap::new(map.clone(), Some(wrong)).previous.is_none());
        }
        let first = pb::EmbeddingMap { parent_fingerprint: String::new(), ..map };
        let unnamed = pb::PreviousMap { previous_fingerprint: String::new(), ..previous };
        assert!(ReadyMap::new(first, Some(unnamed)).previous.is_none(), "a first map has no parent");
    }
}
