//! PostgreSQL: the pool and its SQL. Several api-service replicas share one database, so every
//! rule that must hold across them is the database's: a client key is unique by its index, an
//! item id by its primary key, and the items' version is one row updated in each item write's
//! transaction. Any error aborts a PostgreSQL transaction, so an event batch never lets a
//! statement fail: unknown items are found first (items are never deleted), and taken keys are
//! `ON CONFLICT DO NOTHING`.

use std::{
    collections::{HashMap, HashSet},
    str::FromStr,
};

use sqlx::{
    PgPool, Postgres, Row, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{BUSY_TIMEOUT, EventOutcome, ITEM_COLUMNS, item_from_row, labels_from_rows, stat_rows, stats_from_row};
use crate::{
    event_writer::Checked,
    events::ItemStats,
    items::{Import, Item, NewItem},
};

pub async fn open(url: &str, connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("api-service");
    PgPoolOptions::new()
        .max_connections(connections.max(1))
        // As on SQLite: a request waits this long for a connection, then gets a retryable answer
        // (during a failover, say).
        .acquire_timeout(BUSY_TIMEOUT)
        .connect_with(options)
        .await
}

pub(super) async fn items_version(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT version FROM items_version WHERE id = 1").fetch_one(pool).await?.try_get(0)
}

pub(super) async fn create_item(pool: &PgPool, item: &NewItem, now: i64) -> Result<Option<Item>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The primary key decides, also between replicas creating the same id at once.
    let row = sqlx::query(&format!(
        "INSERT INTO items ({ITEM_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $5)
         ON CONFLICT (id) DO NOTHING RETURNING {ITEM_COLUMNS}"
    ))
    .bind(item.id)
    .bind(&item.name)
    .bind(&item.category)
    .bind(item.attributes_json())
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let created = item_from_row(&row)?;
    commit_items(tx).await?;
    Ok(Some(created))
}

pub(super) async fn update_item(pool: &PgPool, item: &NewItem, now: i64) -> Result<Option<Item>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!(
        "UPDATE items SET name = $1, category = $2, attributes = $3, updated_at = $4 WHERE id = $5
         RETURNING {ITEM_COLUMNS}"
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

pub(super) async fn item(pool: &PgPool, id: i64) -> Result<Option<Item>, sqlx::Error> {
    let row =
        sqlx::query(&format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = $1")).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(item_from_row).transpose()
}

pub(super) async fn items(pool: &PgPool, after: Option<i64>, limit: i64) -> Result<Vec<Item>, sqlx::Error> {
    let rows = match after {
        None => {
            let sql = format!("SELECT {ITEM_COLUMNS} FROM items ORDER BY id LIMIT $1");
            sqlx::query(&sql).bind(limit).fetch_all(pool).await?
        }
        Some(after) => {
            let sql = format!("SELECT {ITEM_COLUMNS} FROM items WHERE id > $1 ORDER BY id LIMIT $2");
            sqlx::query(&sql).bind(after).bind(limit).fetch_all(pool).await?
        }
    };
    rows.iter().map(item_from_row).collect()
}

/// One statement: rows are locked in id order (two replicas' overlapping imports cannot
/// deadlock), and each row says whether it was there before (`xmax` is 0 for a row inserted).
pub(super) async fn import_items(pool: &PgPool, import: &Import, now: i64) -> Result<u32, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let existing: i64 = sqlx::query_scalar(&format!(
        "WITH written AS (
            INSERT INTO items ({ITEM_COLUMNS})
            SELECT (value ->> 0)::bigint, value ->> 1, value ->> 2, value ->> 3, $1, $1
            FROM jsonb_array_elements($2::jsonb) ORDER BY (value ->> 0)::bigint
            ON CONFLICT (id) DO UPDATE SET name = excluded.name, category = excluded.category,
                attributes = excluded.attributes, updated_at = excluded.updated_at
            RETURNING xmax <> 0 AS existed)
         SELECT count(*) FILTER (WHERE existed) FROM written"
    ))
    .bind(now)
    .bind(&import.rows)
    .fetch_one(&mut *tx)
    .await?;
    commit_items(tx).await?;
    Ok(existing as u32)
}

pub(super) async fn attribute_names(pool: &PgPool, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        // Byte order, as SQLite sorts, so both backends offer the same first names.
        "SELECT DISTINCT key COLLATE \"C\" AS key FROM items, jsonb_object_keys(items.attributes::jsonb) AS key \
         ORDER BY 1 LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub(super) async fn attribute_values(pool: &PgPool, name: &str) -> Result<HashMap<i64, String>, sqlx::Error> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT items.id, field.value FROM items, jsonb_each_text(items.attributes::jsonb) AS field
         WHERE field.key = $1",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

pub(super) async fn labels(pool: &PgPool, ids: Option<&[i64]>) -> Result<HashMap<i64, (String, String)>, sqlx::Error> {
    let rows = match ids {
        None => sqlx::query("SELECT id, name, category FROM items").fetch_all(pool).await?,
        Some(ids) => {
            sqlx::query("SELECT id, name, category FROM items WHERE id = ANY($1)").bind(ids).fetch_all(pool).await?
        }
    };
    labels_from_rows(&rows)
}

pub(super) async fn top_stats(pool: &PgPool, limit: i64) -> Result<Vec<ItemStats>, sqlx::Error> {
    let rows = sqlx::query("SELECT item_id, views, searches FROM item_stats ORDER BY views DESC, item_id LIMIT $1")
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(stats_from_row).collect()
}

pub(super) async fn stats_of(pool: &PgPool, item_id: i64) -> Result<Option<ItemStats>, sqlx::Error> {
    let row = sqlx::query("SELECT item_id, views, searches FROM item_stats WHERE item_id = $1")
        .bind(item_id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(stats_from_row).transpose()
}

/// Four statements whatever the batch's size, so a batch costs a few round trips rather than one
/// per event. The batch's items are looked up first, so no statement fails on a foreign key. The
/// events of known items go in one `INSERT ... ON CONFLICT (client_key) DO NOTHING`: a key taken
/// (earlier in this batch, or by any replica's committed event) inserts nothing, and the stored
/// events under the keys not inserted are read in one statement. Rows go in key order: a key in
/// flight on two replicas at once (a client's retry on another replica) makes one batch wait for
/// the other, and with every batch taking its keys in one order the waits cannot form a cycle (a
/// deadlock, which PostgreSQL breaks only after a second, failing a whole batch). The counts are
/// one statement, their rows in item order for the same reason.
pub(super) async fn write_events(
    pool: &PgPool,
    events: &[&Checked],
    now: i64,
) -> Result<Vec<EventOutcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut wanted: Vec<i64> = events.iter().map(|event| event.item_id).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let known: HashSet<i64> = sqlx::query_scalar("SELECT id FROM items WHERE id = ANY($1)")
        .bind(&wanted)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    // Stable: two events under one key keep their order, so the first is the one stored.
    let mut order: Vec<usize> = (0..events.len()).filter(|&at| known.contains(&events[at].item_id)).collect();
    order.sort_by(|&a, &b| events[a].client_key.cmp(&events[b].client_key));
    let column = |value: fn(&Checked) -> i64| order.iter().map(|&at| value(events[at])).collect::<Vec<i64>>();
    let keys: Vec<Option<&str>> = order.iter().map(|&at| events[at].client_key.as_deref()).collect();
    let inserted: Vec<(i64, Option<String>, i64, i64)> = sqlx::query_as(
        "INSERT INTO events (item_id, kind, client_key, created_at)
         SELECT item_id, kind, client_key, $4
         FROM UNNEST($1::bigint[], $2::bigint[], $3::text[]) WITH ORDINALITY AS batch(item_id, kind, client_key, at)
         ORDER BY at
         ON CONFLICT (client_key) DO NOTHING
         RETURNING id, client_key, item_id, kind",
    )
    .bind(column(|event| event.item_id))
    .bind(column(|event| event.kind.code()))
    .bind(&keys)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    // Rows stored under a key answer that key's first event; keyless rows answer events of their
    // item and kind, which are alike to their callers.
    let mut by_key: HashMap<String, i64> = HashMap::new();
    let mut keyless: HashMap<(i64, i64), Vec<i64>> = HashMap::new();
    for (id, key, item_id, kind) in inserted {
        match key {
            Some(key) => {
                by_key.insert(key, id);
            }
            None => keyless.entry((item_id, kind)).or_default().push(id),
        }
    }
    // The event each stored key answers: the batch's first event of a known item under it.
    let mut claimed: HashMap<&str, (usize, i64)> = HashMap::new();
    for (at, event) in events.iter().enumerate() {
        if let Some(key) = event.client_key.as_deref()
            && known.contains(&event.item_id)
            && !claimed.contains_key(key)
            && let Some(id) = by_key.remove(key)
        {
            claimed.insert(key, (at, id));
        }
    }
    let mut outcomes = vec![EventOutcome::UnknownItem; events.len()];
    let mut taken_keys: Vec<&str> = Vec::new();
    for (at, event) in events.iter().enumerate() {
        match (event.client_key.as_deref(), known.contains(&event.item_id)) {
            (None, true) => {
                let id = keyless.get_mut(&(event.item_id, event.kind.code())).and_then(Vec::pop);
                outcomes[at] = EventOutcome::Inserted(id.ok_or(sqlx::Error::RowNotFound)?);
            }
            (None, false) => {}
            (Some(key), _) => match claimed.get(key) {
                Some(&(first, id)) if first == at => outcomes[at] = EventOutcome::Inserted(id),
                // After the event that stored it, as SQLite's statement order would have it.
                Some(&(first, id)) if first < at => {
                    let (item_id, kind) = (events[first].item_id, events[first].kind.code());
                    outcomes[at] = EventOutcome::KeyTaken { id, item_id, kind };
                }
                // An unknown item before the event that stored its key: the key was still free.
                Some(_) => {}
                // Taken before this batch, or (for an unknown item) free.
                None => taken_keys.push(key),
            },
        }
    }
    if !taken_keys.is_empty() {
        let stored: Vec<(String, i64, i64, i64)> =
            sqlx::query_as("SELECT client_key, id, item_id, kind FROM events WHERE client_key = ANY($1)")
                .bind(&taken_keys)
                .fetch_all(&mut *tx)
                .await?;
        let stored: HashMap<String, EventOutcome> = stored
            .into_iter()
            .map(|(key, id, item_id, kind)| (key, EventOutcome::KeyTaken { id, item_id, kind }))
            .collect();
        for (at, event) in events.iter().enumerate() {
            let Some(key) = event.client_key.as_deref().filter(|key| !claimed.contains_key(key)) else { continue };
            match stored.get(key) {
                Some(outcome) => outcomes[at] = *outcome,
                // A known item's key that inserted nothing is stored: not finding it is a fault.
                None if known.contains(&event.item_id) => return Err(sqlx::Error::RowNotFound),
                None => {}
            }
        }
    }
    let rows = stat_rows(events, &outcomes);
    if !rows.is_empty() {
        let column = |at: usize| rows.iter().map(|row| row[at]).collect::<Vec<i64>>();
        sqlx::query(
            "INSERT INTO item_stats (item_id, views, searches)
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[])
             ON CONFLICT (item_id) DO UPDATE SET views = item_stats.views + excluded.views,
                searches = item_stats.searches + excluded.searches",
        )
        .bind(column(0))
        .bind(column(1))
        .bind(column(2))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Marks the items as changed and commits `tx`.
async fn commit_items(mut tx: Transaction<'static, Postgres>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE items_version SET version = version + 1 WHERE id = 1").execute(&mut *tx).await?;
    tx.commit().await
}
