//! The map's status, owned by the computing thread and read by every RPC.
//!
//! A `watch` channel holds the latest status: RPCs answer from it without waiting, watchers wake
//! on each change, and intermediate progress is coalesced for free. READY and FAILED are final.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use embeddingmap_proto::v1::{self as pb, MapState, Phase};
use prost::Message;
use tokio::sync::watch;

/// How often optimisation progress is published at most; phase changes always are.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub enum MapStatus {
    Computing {
        phase: Phase,
        iteration: u32,
        total_iterations: u32,
        point_count: u64,
    },
    /// The finished map, encoded once and shared by every answer.
    Ready(Arc<ReadyMap>),
    Failed {
        message: String,
        phase: Phase,
    },
}

impl MapStatus {
    pub fn is_final(&self) -> bool {
        !matches!(self, MapStatus::Computing { .. })
    }

    /// The status as sent on the wire. `elapsed` is measured now, so polls see time move.
    pub fn to_proto(&self, started: Instant, omit_points: bool) -> pb::EmbeddingMapStatus {
        match self {
            MapStatus::Computing { phase, iteration, total_iterations, point_count } => pb::EmbeddingMapStatus {
                state: MapState::Computing.into(),
                progress: Some(pb::Progress {
                    phase: (*phase).into(),
                    iteration: *iteration,
                    total_iterations: *total_iterations,
                    elapsed: prost_types::Duration::try_from(started.elapsed()).ok(),
                    point_count: *point_count,
                }),
                ..Default::default()
            },
            MapStatus::Ready(map) => map.to_proto(omit_points),
            MapStatus::Failed { message, phase } => pb::EmbeddingMapStatus {
                state: MapState::Failed.into(),
                failure: Some(pb::Failure { message: message.clone(), phase: (*phase).into() }),
                ..Default::default()
            },
        }
    }
}

/// A READY map as answers carry it: the whole `EmbeddingMapStatus` message encoded once with its
/// points and once without. `service_kit::ready_answers` sends these bytes as they are (no copy per answer);
/// the few answers built as messages decode them.
#[derive(Debug)]
pub struct ReadyMap {
    with_points: Bytes,
    summary: Bytes,
}

impl ReadyMap {
    pub fn new(map: pb::EmbeddingMap) -> Self {
        let status =
            |map| pb::EmbeddingMapStatus { state: MapState::Ready.into(), map: Some(map), ..Default::default() };
        let summary = pb::EmbeddingMap { points: Vec::new(), ..map.clone() };
        ReadyMap { with_points: status(map).encode_to_vec().into(), summary: status(summary).encode_to_vec().into() }
    }

    /// The encoded `EmbeddingMapStatus`; cloning it shares the bytes.
    pub fn encoded(&self, omit_points: bool) -> Bytes {
        if omit_points { self.summary.clone() } else { self.with_points.clone() }
    }

    fn to_proto(&self, omit_points: bool) -> pb::EmbeddingMapStatus {
        // Encoded by `new` from a valid message, so it decodes.
        pb::EmbeddingMapStatus::decode(self.encoded(omit_points)).unwrap_or_default()
    }
}

/// Read side, cheap to clone into every RPC handler.
#[derive(Clone)]
pub struct StatusBoard {
    receiver: watch::Receiver<MapStatus>,
    started: Instant,
}

impl StatusBoard {
    pub fn current(&self, omit_points: bool) -> pb::EmbeddingMapStatus {
        self.receiver.borrow().to_proto(self.started, omit_points)
    }

    /// The encoded answer while the map is READY.
    pub fn encoded_ready(&self, omit_points: bool) -> Option<Bytes> {
        match &*self.receiver.borrow() {
            MapStatus::Ready(map) => Some(map.encoded(omit_points)),
            _ => None,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<MapStatus> {
        self.receiver.clone()
    }

    pub fn started(&self) -> Instant {
        self.started
    }
}

impl service_kit::ready_answers::ReadyMaps for StatusBoard {
    async fn encoded_ready(&self, omit_points: bool) -> Result<Option<Bytes>, tonic::Status> {
        Ok(StatusBoard::encoded_ready(self, omit_points))
    }
}

/// Write side, owned by the computing thread.
pub struct StatusPublisher {
    sender: watch::Sender<MapStatus>,
    last_progress: Mutex<Instant>,
}

/// A fresh status pair: COMPUTING in the loading phase, clocked from now.
pub fn status_channel(total_iterations: u32) -> (StatusPublisher, StatusBoard) {
    let started = Instant::now();
    let (sender, receiver) =
        watch::channel(MapStatus::Computing { phase: Phase::Loading, iteration: 0, total_iterations, point_count: 0 });
    (StatusPublisher { sender, last_progress: Mutex::new(started) }, StatusBoard { receiver, started })
}

impl StatusPublisher {
    /// The phase now running; always published.
    pub fn phase(&self, phase: Phase) {
        self.update_computing(|current, _| *current = phase);
    }

    pub fn point_count(&self, points: u64) {
        self.sender.send_modify(|status| {
            if let MapStatus::Computing { point_count, .. } = status {
                *point_count = points;
            }
        });
    }

    /// Optimisation progress, published at most every `PROGRESS_INTERVAL` and at the last step.
    pub fn iteration(&self, done: u32) {
        let mut last = self.last_progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let status = self.sender.borrow().clone();
        let MapStatus::Computing { total_iterations, .. } = status else { return };
        if done < total_iterations && last.elapsed() < PROGRESS_INTERVAL {
            return;
        }
        *last = Instant::now();
        self.update_computing(|_, iteration| *iteration = done);
    }

    pub fn ready(&self, map: pb::EmbeddingMap) {
        self.sender.send_replace(MapStatus::Ready(Arc::new(ReadyMap::new(map))));
    }

    pub fn failed(&self, message: String) {
        let phase = match &*self.sender.borrow() {
            MapStatus::Computing { phase, .. } => *phase,
            _ => Phase::Unspecified,
        };
        self.sender.send_replace(MapStatus::Failed { message, phase });
    }

    fn update_computing(&self, change: impl FnOnce(&mut Phase, &mut u32)) {
        self.sender.send_if_modified(|status| match status {
            MapStatus::Computing { phase, iteration, .. } => {
                change(phase, iteration);
                true
            }
            _ => false,
        });
    }
}

impl crate::pipeline::ProgressSink for StatusPublisher {
    fn phase(&self, phase: Phase) {
        StatusPublisher::phase(self, phase);
    }

    fn iteration(&self, done: u32) {
        StatusPublisher::iteration(self, done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn final_states_stay_final() {
        let (publisher, board) = status_channel(10);
        publisher.failed("broken corpus".into());
        publisher.phase(Phase::Pca);
        let status = board.current(false);
        assert_eq!(status.state(), MapState::Failed);
        assert_eq!(status.failure.unwrap().phase(), Phase::Loading);
    }

    #[test]
    fn ready_can_omit_points() {
        let (publisher, board) = status_channel(10);
        publisher.ready(pb::EmbeddingMap {
            points: vec![pb::Point { id: 1, x: 0.5, y: 0.25 }],
            count: 1,
            ..Default::default()
        });
        assert_eq!(board.current(false).map.unwrap().points.len(), 1);
        let summary = board.current(true).map.unwrap();
        assert_eq!((summary.points.len(), summary.count), (0, 1));
        let shared = board.encoded_ready(false).unwrap();
        assert_eq!(shared.as_ptr(), board.encoded_ready(false).unwrap().as_ptr(), "answers share one encoding");
        assert_eq!(pb::EmbeddingMapStatus::decode(shared).unwrap(), board.current(false));
    }
}
