//! The map as an operator sees it in metrics. The gauges follow the status board, as the health
//! names do (`health.rs`): one task reads every change, so no code path that changes the status
//! has to remember a metric.

use embeddingmap_proto::v1::{MapState, refresh_outcome::Result as RefreshResult};
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram, gauge};

use crate::{pipeline::PhaseTimings, status::StatusBoard};

pub fn describe() {
    describe_gauge!("embedding_map_state", "1 for the map's state (computing, ready, failed), 0 for the others.");
    describe_gauge!("embedding_map_refreshing", "1 while a refresh computes beside the served map.");
    describe_gauge!("embedding_map_generation", "Generation of the map served (0 before the first).");
    describe_gauge!("embedding_map_points", "Points of the map served.");
    describe_gauge!(
        "embedding_map_phase_seconds",
        Unit::Seconds,
        "Seconds each phase of the last completed computation took."
    );
    describe_counter!("embedding_map_refreshes_total", "Finished refreshes, by result: updated, unchanged or failed.");
    describe_gauge!(
        "embedding_corpus_vector_bytes",
        Unit::Bytes,
        "Bytes of corpus vectors kept for true-neighbour queries."
    );
    describe_histogram!(
        "embedding_neighbor_query_seconds",
        Unit::Seconds,
        "Time from a neighbour query's arrival to its answer: waiting for its batch, then the batch's scan."
    );
    describe_histogram!("embedding_neighbor_batch_size", "Neighbour queries answered by one scan of the corpus.");
    // From the start at 0, so that the first failed refresh is an increase alerts can see.
    for result in ["updated", "unchanged", "failed"] {
        metrics::counter!("embedding_map_refreshes_total", "result" => result).absolute(0);
    }
}

/// Follows the status board into the map's gauges and the refresh outcome counter.
pub async fn follow_status(board: StatusBoard) {
    let mut receiver = board.subscribe();
    let mut last_refresh = None;
    loop {
        let status = receiver.borrow_and_update().clone();
        let state = status.state();
        for (name, value) in
            [("computing", MapState::Computing), ("ready", MapState::Ready), ("failed", MapState::Failed)]
        {
            gauge!("embedding_map_state", "state" => name).set(f64::from(u8::from(state == value)));
        }
        let map = status.ready();
        gauge!("embedding_map_refreshing").set(f64::from(u8::from(map.is_some() && status.computing().is_some())));
        gauge!("embedding_map_generation").set(map.map_or(0.0, |map| map.summary.generation as f64));
        gauge!("embedding_map_points").set(map.map_or(0.0, |map| map.summary.count as f64));
        gauge!("embedding_corpus_vector_bytes")
            .set(status.neighbors.as_ref().map_or(0.0, |neighbors| neighbors.memory_bytes() as f64));
        // Each outcome once: a new one has a new finish time.
        if let Some(outcome) = &status.last_refresh
            && last_refresh.as_ref() != Some(&outcome.finished_at)
        {
            last_refresh = Some(outcome.finished_at);
            let result = match outcome.result() {
                RefreshResult::Updated => "updated",
                RefreshResult::Unchanged => "unchanged",
                RefreshResult::Failed => "failed",
                RefreshResult::Unspecified => "unspecified",
            };
            metrics::counter!("embedding_map_refreshes_total", "result" => result).increment(1);
        }
        if receiver.changed().await.is_err() {
            return;
        }
    }
}

/// The phases of a computation that completed.
pub fn record_phases(timings: &PhaseTimings) {
    let PhaseTimings { normalize, pca, knn, affinities, optimize } = timings;
    for (phase, took) in
        [("normalize", normalize), ("pca", pca), ("knn", knn), ("affinities", affinities), ("optimize", optimize)]
    {
        gauge!("embedding_map_phase_seconds", "phase" => phase).set(took.as_secs_f64());
    }
}
