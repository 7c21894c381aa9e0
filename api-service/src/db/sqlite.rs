//! SQLite: the pool and its SQL. Every connection, including ones opened later, is set up by the
//! same options: WAL, busy_timeout 5000 ms, synchronous NORMAL, foreign keys on, and the
//! checkpoint policy (SQLite's own, or none where Litestream checkpoints). Writes go through
//! `write_transaction`, which begins IMMEDIATE so that waiting for the write lock happens at
//! BEGIN, where busy_timeout applies, and never as an un-retried SQLITE_BUSY mid-transaction.

use std::{collections::HashMap, path::Path, str::FromStr};

use sqlx::{
    Row, Sqlite, SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{BUSY_TIMEOUT, EventOutcome, ITEM_COLUMNS, item_from_row, labels_from_rows, stat_rows, stats_from_row};
use crate::{
    event_writer::Checked,
    events::ItemStats,
    items::{Import, Item, NewItem},
};

/// Bytes the WAL file is truncated to after a checkpoint.
pub const WAL_SIZE_LIMIT: u64 = 4 * 1024 * 1024;

/// Who copies the WAL back into the database file (a checkpoint).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Checkpoints {
    /// SQLite itself, after a commit leaves 1000 pages in the WAL (its auto-checkpoint).
    #[default]
    Sqlite,
    /// A replicator beside the service (Litestream), which must read every WAL frame before it
    /// is checkpointed away: the service never checkpoints (`wal_autocheckpoint = 0`) and the
    /// replicator does it after shipping. Without one the WAL grows without bound.
    Replicator,
}

impl Checkpoints {
    /// `PRAGMA wal_autocheckpoint`'s value: pages in the WAL that start a checkpoint, 0 for never.
    fn autocheckpoint_pages(self) -> u32 {
        match self {
            Checkpoints::Sqlite => 1000,
            Checkpoints::Replicator => 0,
        }
    }
}

pub async fn open(path: &Path, connections: u32, checkpoints: Checkpoints) -> Result<SqlitePool, sqlx::Error> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
    }
    let options = SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(BUSY_TIMEOUT)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        // After a checkpoint, cut the WAL file back to this size: without it the file keeps the
        // size of its largest burst (say, while a long read held checkpoints back) forever.
        .pragma("journal_size_limit", WAL_SIZE_LIMIT.to_string())
        .pragma("wal_autocheckpoint", checkpoints.autocheckpoint_pages().to_string());
    SqlitePoolOptions::new()
        .max_connections(connections.max(1))
        // A request waits for a free connection at most as long as it would wait for a lock.
        .acquire_timeout(BUSY_TIMEOUT)
        .connect_with(options)
        .await
}

/// A write transaction that holds the write lock from its first statement.
pub async fn write_transaction(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

pub(super) async fn items_version(pool: &SqlitePool) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT version FROM items_version WHERE id = 1").fetch_one(pool).await?.try_get(0)
}

pub(super) async fn create_item(pool: &SqlitePool, item: &NewItem, now: i64) -> Result<Option<Item>, sqlx::Error> {
    let mut tx = write_transaction(pool).await?;
    if sqlx::query("SELECT 1 FROM items WHERE id = ?").bind(item.id).fetch_optional(&mut *tx).await?.is_some() {
        return Ok(None);
    }
    let row =
        sqlx::query(&format!("INSERT INTO items ({ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) RETURNING {ITEM_COLUMNS}"))
            .bind(item.id)
            .bind(&item.name)
            .bind(&item.category)
            .bind(item.attributes_json())
            .bind(now)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
    let created = item_from_row(&row)?;
    commit_items(tx).await?;
    Ok(Some(created))
}

pub(super) async fn update_item(pool: &SqlitePool, item: &NewItem, now: i64) -> Result<Option<Item>, sqlx::Error> {
    let mut tx = write_transaction(pool).await?;
    let row = sqlx::query(&format!(
        "UPDATE items SET name = ?, category = ?, attributes = ?, updated_at = ? WHERE id = ? RETURNING {ITEM_COLUMNS}"
    ))
    .bind(&item.name)
    .bind(&item.category)
    .bind(item.attributes_json())
    .bind(now)
    .bind(item.id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let updated = item_from_row(&row)?;
    commit_items(tx).await?;
    Ok(Some(updated))
}

pub(super) async fn item(pool: &SqlitePool, id: i64) -> Result<Option<Item>, sqlx::Error> {
    let row =
        sqlx::query(&format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = ?")).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(item_from_row).transpose()
}

pub(super) async fn items(pool: &SqlitePool, after: Option<i64>, limit: i64) -> Result<Vec<Item>, sqlx::Error> {
    // Two statements rather than `? IS NULL OR id > ?`, so that each is a rowid range search.
    let rows = match after {
        None => {
            let sql = format!("SELECT {ITEM_COLUMNS} FROM items ORDER BY id LIMIT ?");
            sqlx::query(&sql).bind(limit).fetch_all(pool).await?
        }
        Some(after) => {
            let sql = format!("SELECT {ITEM_COLUMNS} FROM items WHERE id > ? ORDER BY id LIMIT ?");
            sqlx::query(&sql).bind(after).bind(limit).fetch_all(pool).await?
        }
    };
    rows.iter().map(item_from_row).collect()
}

/// Two statements whatever the count, so the write lock is held briefly.
pub(super) async fn import_items(pool: &SqlitePool, import: &Import, now: i64) -> Result<u32, sqlx::Error> {
    let mut tx = write_transaction(pool).await?;
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE id IN (SELECT value FROM json_each(?))")
        .bind(&import.ids)
        .fetch_one(&mut *tx)
        .await?;
    // `WHERE true` tells SQLite's parser that ON CONFLICT is the upsert, not a join's.
    sqlx::query(&format!(
        "INSERT INTO items ({ITEM_COLUMNS})
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, ?, ? FROM json_each(?) WHERE true
         ON CONFLICT(id) DO UPDATE SET name = excluded.name, category = excluded.category,
            attributes = excluded.attributes, updated_at = excluded.updated_at"
    ))
    .bind(now)
    .bind(now)
    .bind(&import.rows)
    .execute(&mut *tx)
    .await?;
    commit_items(tx).await?;
    Ok(existing as u32)
}

pub(super) async fn attribute_names(pool: &SqlitePool, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT DISTINCT key FROM items, json_each(items.attributes) ORDER BY key LIMIT ?")
        .bind(limit)
        .fetch_all(pool)
        .await
}

pub(super) async fn attribute_values(pool: &SqlitePool, name: &str) -> Result<HashMap<i64, String>, sqlx::Error> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT items.id AS id, json_each.value AS value FROM items, json_each(items.attributes) \
         WHERE json_each.key = ?",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

pub(super) async fn labels(
    pool: &SqlitePool,
    ids: Option<&[i64]>,
) -> Result<HashMap<i64, (String, String)>, sqlx::Error> {
    let rows = match ids {
        None => sqlx::query("SELECT id, name, category FROM items").fetch_all(pool).await?,
        Some(ids) => {
            let ids = serde_json::to_string(ids).map_err(|error| sqlx::Error::Encode(error.into()))?;
            sqlx::query("SELECT id, name, category FROM items WHERE id IN (SELECT value FROM json_each(?))")
                .bind(ids)
                .fetch_all(pool)
                .await?
        }
    };
    labels_from_rows(&rows)
}

pub(super) async fn top_stats(pool: &SqlitePool, limit: i64) -> Result<Vec<ItemStats>, sqlx::Error> {
    let rows = sqlx::query("SELECT item_id, views, searches FROM item_stats ORDER BY views DESC, item_id LIMIT ?")
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(stats_from_row).collect()
}

pub(super) async fn stats_of(pool: &SqlitePool, item_id: i64) -> Result<Option<ItemStats>, sqlx::Error> {
    let row = sqlx::query("SELECT item_id, views, searches FROM item_stats WHERE item_id = ?")
        .bind(item_id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(stats_from_row).transpose()
}

/// Each event's insert is tried first: it is the common case, and the database itself says when
/// the key is taken (no row returned) or the item unknown (the foreign key, checked by the
/// statement since it is not deferred), a failed statement leaving the transaction and its other
/// events as they were. The counts add up in memory and are written in one statement at the end.
pub(super) async fn write_events(
    pool: &SqlitePool,
    events: &[&Checked],
    now: i64,
) -> Result<Vec<EventOutcome>, sqlx::Error> {
    let mut tx = write_transaction(pool).await?;
    let mut outcomes = Vec::with_capacity(events.len());
    for event in events {
        let inserted = sqlx::query(
            "INSERT INTO events (item_id, kind, client_key, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT(client_key) DO NOTHING RETURNING id",
        )
        .bind(event.item_id)
        .bind(event.kind.code())
        .bind(&event.client_key)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await;
        outcomes.push(match inserted {
            Ok(Some(row)) => EventOutcome::Inserted(row.try_get("id")?),
            Err(error) if super::is_foreign_key_violation(&error) => EventOutcome::UnknownItem,
            Err(error) => return Err(error),
            Ok(None) => {
                let (id, item_id, kind) = sqlx::query_as("SELECT id, item_id, kind FROM events WHERE client_key = ?")
                    .bind(&event.client_key)
                    .fetch_one(&mut *tx)
                    .await?;
                EventOutcome::KeyTaken { id, item_id, kind }
            }
        });
    }
    let rows = stat_rows(events, &outcomes);
    if !rows.is_empty() {
        // `WHERE true` tells SQLite's parser that ON CONFLICT is the upsert, not a join's.
        sqlx::query(
            "INSERT INTO item_stats (item_id, views, searches)
             SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?) WHERE true
             ON CONFLICT(item_id) DO UPDATE SET views = views + excluded.views, searches = searches + excluded.searches",
        )
        .bind(serde_json::to_string(&rows).map_err(|error| sqlx::Error::Encode(error.into()))?)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Marks the items as changed and commits `tx`.
async fn commit_items(mut tx: Transaction<'static, Sqlite>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE items_version SET version = version + 1 WHERE id = 1").execute(&mut *tx).await?;
    tx.commit().await
}
