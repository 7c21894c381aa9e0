//! Events (public traffic) and the per-item counts they keep.

use crate::{db::Database, error::ApiError};
use embeddingmap_proto::api as pb;
use serde::{Deserialize, Serialize};

pub const MAX_CLIENT_KEY_CHARS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    View,
    Search,
}

impl EventKind {
    /// The value stored in `events.kind`.
    pub(crate) fn code(self) -> i64 {
        match self {
            EventKind::View => 1,
            EventKind::Search => 2,
        }
    }

    pub fn from_proto(kind: i32) -> Result<Self, ApiError> {
        match pb::EventKind::try_from(kind) {
            Ok(pb::EventKind::View) => Ok(EventKind::View),
            Ok(pb::EventKind::Search) => Ok(EventKind::Search),
            _ => Err(ApiError::invalid("kind", "must be VIEW or SEARCH")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    pub item_id: i64,
    pub kind: EventKind,
    #[serde(default)]
    pub client_key: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Recorded {
    pub event_id: i64,
    /// False when this event (same key, item and kind) had been recorded before.
    pub created: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ItemStats {
    pub item_id: i64,
    pub views: u64,
    pub searches: u64,
}

impl From<ItemStats> for pb::ItemStats {
    fn from(stats: ItemStats) -> Self {
        pb::ItemStats { item_id: stats.item_id, views: stats.views, searches: stats.searches }
    }
}

/// Counts for `item_ids`, or for the `limit` most viewed items when none are named.
pub async fn stats(db: &Database, item_ids: &[i64], limit: u32) -> Result<Vec<ItemStats>, ApiError> {
    if item_ids.is_empty() {
        let limit = match limit {
            0 => 100,
            n if n > 1000 => return Err(ApiError::invalid("limit", "at most 1000")),
            n => n,
        };
        return Ok(db.top_stats(i64::from(limit)).await?);
    }
    if item_ids.len() > 1000 {
        return Err(ApiError::invalid("item_ids", "at most 1000"));
    }
    let mut stats = Vec::with_capacity(item_ids.len());
    for &item_id in item_ids {
        stats.push(db.stats_of(item_id).await?.unwrap_or(ItemStats { item_id, views: 0, searches: 0 }));
    }
    Ok(stats)
}
