//! The map's HTTP JSON, as typed serde views over the messages. Views borrow what they show and
//! the points are serialised from an iterator, so a large map is never held as a
//! `serde_json::Value` (several hundred bytes a point).

use bytes::Bytes;
use embeddingmap_proto::{
    api as api_pb,
    v1::{self as pb, Phase},
};
use serde::Serialize;

/// `RESULT_UPDATED` -> `updated`, as HTTP names a refresh's outcome.
pub fn result_name(outcome: &pb::RefreshOutcome) -> String {
    outcome.result().as_str_name().trim_start_matches("RESULT_").to_lowercase()
}

/// `PHASE_NEAREST_NEIGHBORS` -> `nearest_neighbors`, as HTTP JSON names phases.
pub fn phase_name(phase: Phase) -> String {
    phase.as_str_name().trim_start_matches("PHASE_").to_lowercase()
}

/// Seconds since the epoch (or a duration) as JSON numbers carry them.
pub fn seconds(seconds: i64, nanos: i32) -> f64 {
    seconds as f64 + f64::from(nanos) / 1e9
}

/// A READY map: `points` are the bulk; a refresh's fields come after them, per answer.
#[derive(Serialize)]
#[serde(bound(serialize = "SerializeIter<C>: Serialize, SerializeIter<P>: Serialize"))]
pub struct ReadyJson<'a, C, P> {
    pub status: &'static str,
    pub count: u64,
    pub corpus_fingerprint: &'a str,
    pub generation: u64,
    pub layout: &'a str,
    pub clusters: SerializeIter<C>,
    pub computed_at_unix: f64,
    pub parameters: &'a pb::MapParameters,
    pub points: SerializeIter<P>,
}

/// A point: `name` and `category` are null for an id the items table does not have.
#[derive(Serialize)]
pub struct PointJson<'a> {
    pub id: i64,
    pub x: f32,
    pub y: f32,
    pub name: Option<&'a str>,
    pub category: Option<&'a str>,
}

#[derive(Serialize)]
pub struct ClusterJson<'a> {
    level: u32,
    id: u32,
    x: f32,
    y: f32,
    size: u64,
    label: &'a str,
    category: Option<&'a str>,
}

impl<'a> ClusterJson<'a> {
    pub fn of(cluster: &'a api_pb::MapCluster) -> Self {
        ClusterJson {
            level: cluster.level,
            id: cluster.id,
            x: cluster.x,
            y: cluster.y,
            size: cluster.size,
            label: &cluster.label,
            category: cluster.category.as_deref(),
        }
    }
}

/// The 202 answer while the first map computes.
#[derive(Serialize)]
pub struct ComputingJson {
    pub status: &'static str,
    pub progress: ProgressJson,
}

#[derive(Serialize)]
pub struct ProgressJson {
    phase: String,
    iteration: u32,
    total_iterations: u32,
    point_count: u64,
    elapsed_seconds: f64,
}

impl ProgressJson {
    pub fn of(progress: &pb::Progress) -> Self {
        let elapsed = progress.elapsed.unwrap_or_default();
        ProgressJson {
            phase: phase_name(progress.phase()),
            iteration: progress.iteration,
            total_iterations: progress.total_iterations,
            point_count: progress.point_count,
            elapsed_seconds: seconds(elapsed.seconds, elapsed.nanos),
        }
    }
}

/// The READY object's last fields, which change while the map does not.
#[derive(Serialize)]
pub struct RefreshJson<'a> {
    pub refreshing: Option<ProgressJson>,
    pub last_refresh: Option<LastRefreshJson<'a>>,
}

#[derive(Serialize)]
pub struct LastRefreshJson<'a> {
    pub result: String,
    pub finished_at_unix: f64,
    pub failure: Option<FailureJson<'a>>,
}

#[derive(Serialize)]
pub struct FailureJson<'a> {
    pub phase: String,
    pub message: &'a str,
}

/// A JSON object served in two parts: the large part serialised once and shared by every answer,
/// and each answer's own last fields. Both are typed views; the one brace between them is
/// spliced here and nowhere else.
pub struct OpenObject(Bytes);

impl OpenObject {
    /// `head` serialised without its closing brace. `head` must serialise as a non-empty object.
    pub fn new(head: &impl Serialize) -> Self {
        let mut bytes = serialized(head);
        debug_assert!(bytes.ends_with(b"}") && bytes.len() > 2, "an object with fields");
        bytes.pop();
        OpenObject(Bytes::from(bytes))
    }

    /// The whole object as pieces: the shared part, then `tail`'s fields and the closing brace.
    /// `tail` must serialise as an object.
    pub fn closed_with(&self, tail: &impl Serialize) -> [Bytes; 2] {
        let mut end = serialized(tail);
        debug_assert!(end.starts_with(b"{"), "an object");
        if end.len() > 2 {
            end[0] = b',';
        } else {
            end.remove(0);
        }
        [self.0.clone(), Bytes::from(end)]
    }
}

fn serialized(value: &impl Serialize) -> Vec<u8> {
    // Plain numbers, strings and sequences into a Vec: serde_json cannot fail on these views.
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

/// A sequence serialised as a JSON array from an iterator, without collecting it first. It
/// serialises once (the iterator is consumed).
pub struct SerializeIter<I>(std::cell::Cell<Option<I>>);

impl<I> SerializeIter<I> {
    pub fn new(items: I) -> Self {
        SerializeIter(std::cell::Cell::new(Some(items)))
    }
}

impl<I: Iterator<Item = T>, T: Serialize> Serialize for SerializeIter<I> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.take().into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Head {
        count: u32,
        points: SerializeIter<std::vec::IntoIter<u32>>,
    }

    #[test]
    fn an_open_object_closes_into_one_valid_object() {
        let open = OpenObject::new(&Head { count: 2, points: SerializeIter::new(vec![1, 2].into_iter()) });
        let tail = RefreshJson { refreshing: None, last_refresh: None };
        let whole: serde_json::Value = serde_json::from_slice(&open.closed_with(&tail).concat()).unwrap();
        assert_eq!(
            whole,
            serde_json::json!({ "count": 2, "points": [1, 2], "refreshing": null, "last_refresh": null })
        );

        #[derive(Serialize)]
        struct Nothing {}
        let bare: serde_json::Value = serde_json::from_slice(&open.closed_with(&Nothing {}).concat()).unwrap();
        assert_eq!(bare, serde_json::json!({ "count": 2, "points": [1, 2] }));
    }
}
