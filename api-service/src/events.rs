//! Events (public traffic) and the per-item counts they keep.

use embeddingmap_proto::api as pb;
use serde::{Deserialize, Serialize};
use sqlx::{Row, SqlitePool};

use crate::error::ApiError;

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
pub async fn stats(pool: &SqlitePool, item_ids: &[i64], limit: u32) -> Result<Vec<ItemStats>, ApiError> {
    let to_stats = |row: &sqlx::sqlite::SqliteRow| -> Result<ItemStats, sqlx::Error> {
        Ok(ItemStats {
            item_id: row.try_get("item_id")?,
            views: row.try_get::<i64, _>("views")? as u64,
            searches: row.try_get::<i64, _>("searches")? as u64,
        })
    };
    if item_ids.is_empty() {
        let limit = match limit {
            0 => 100,
            n if n > 1000 => return Err(ApiError::invalid("limit", "at most 1000")),
            n => n,
        };
        let rows = sqlx::query("SELECT item_id, views, searches FROM item_stats ORDER BY views DESC, item_id LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
        return Ok(rows.iter().map(to_stats).collect::<Result<_, _>>()?);
    }
    if item_ids.len() > 1000 {
        return Err(ApiError::invalid("item_ids", "at most 1000"));
    }
    let mut stats = Vec::with_capacity(item_ids.len());
    for &item_id in item_ids {
        let row = sqlx::query("SELECT item_id, views, searches FROM item_stats WHERE item_id = ?")
            .bind(item_id)
            .fetch_optional(pool)
            .await?;
        stats.push(match row {
            Some(row) => to_stats(&row)?,
            None => ItemStats { item_id, views: 0, searches: 0 },
        });
    }
    Ok(stats)
}
