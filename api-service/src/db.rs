//! The database: SQLite (the default: embedded, one replica) or PostgreSQL (several replicas on
//! one database). `Database` holds either pool and offers the storage operations; each backend's
//! module (`sqlite`, `postgres`) holds its SQL and its connection setup, and the domain rules
//! (validation, what an event's outcome means to its caller, the items' version) live once, in
//! `items`, `events` and `event_writer`, above this interface.

mod postgres;
pub mod sqlite;

use std::{collections::HashMap, path::PathBuf, time::Duration};

use sqlx::{PgPool, SqlitePool, migrate::MigrateError};

pub use sqlite::Checkpoints;

use crate::{
    event_writer::Checked,
    events::{EventKind, ItemStats},
    items::{Import, Item, NewItem},
};

/// How long a statement waits for a lock (SQLite's busy_timeout), and a request for a pooled
/// connection, before the caller gets a retryable answer.
pub const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

/// Where the data lives, as `--database` names it.
#[derive(Clone, PartialEq)]
pub enum Target {
    /// A SQLite file, created if missing.
    Sqlite(PathBuf),
    /// A `postgres://` (or `postgresql://`) URL.
    Postgres(String),
}

impl Target {
    /// A `postgres://` or `postgresql://` URL, else a SQLite file path (`sqlite://` is accepted
    /// before it). A URL is checked when it is opened (`open`), not here: a parser's error would
    /// echo the whole value, password and all, into the log.
    pub fn parse(text: &str) -> Result<Target, String> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Target::Postgres(text.to_owned()));
        }
        let path = text.strip_prefix("sqlite://").unwrap_or(text);
        if path.is_empty() {
            return Err("give a SQLite file path or a postgres:// URL".into());
        }
        Ok(Target::Sqlite(PathBuf::from(path)))
    }
}

/// The path, or the URL with any password left out (in its user part or as a `password`
/// parameter): what logs and errors may show.
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Sqlite(path) => write!(f, "{}", path.display()),
            Target::Postgres(url) => match url::Url::parse(url) {
                Ok(mut url) => {
                    if url.password().is_some() {
                        let _ = url.set_password(Some("redacted"));
                    }
                    let pairs: Vec<(String, String)> = url
                        .query_pairs()
                        .map(|(key, value)| {
                            let value = if key == "password" { "redacted".into() } else { value.into_owned() };
                            (key.into_owned(), value)
                        })
                        .collect();
                    if !pairs.is_empty() {
                        url.query_pairs_mut().clear().extend_pairs(pairs);
                    }
                    write!(f, "{url}")
                }
                Err(_) => write!(f, "postgres://<not a URL>"),
            },
        }
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// Either backend's pool; cheap to clone.
#[derive(Clone, Debug)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// What became of one event in its batch's transaction; `event_writer` says what each means to
/// its caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventOutcome {
    /// Stored under this id.
    Inserted(i64),
    /// Its key was taken, by this stored event.
    KeyTaken { id: i64, item_id: i64, kind: i64 },
    /// No item has its id.
    UnknownItem,
}

/// Opens (creating a SQLite file if missing) and migrates the database. `checkpoints` is
/// SQLite's; asking a PostgreSQL database for a replicator's checkpoints is refused, since the
/// setting would silently mean nothing.
pub async fn open(target: &Target, connections: u32, checkpoints: Checkpoints) -> anyhow::Result<Database> {
    let database = match target {
        Target::Sqlite(path) => Database::Sqlite(sqlite::open(path, connections, checkpoints).await?),
        Target::Postgres(url) => {
            if checkpoints != Checkpoints::Sqlite {
                anyhow::bail!(
                    "--wal-checkpoints is SQLite's setting; a PostgreSQL database has no WAL of ours to hand over"
                );
            }
            Database::Postgres(postgres::open(url, connections).await.map_err(|error| {
                // sqlx's own message for a URL it cannot parse may quote the URL.
                match error {
                    sqlx::Error::Configuration(_) => {
                        anyhow::anyhow!("not a PostgreSQL URL this service can use (check its parameters)")
                    }
                    other => anyhow::anyhow!(other),
                }
            })?)
        }
    };
    let migrated = match &database {
        Database::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await,
        Database::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await,
    };
    migrated.map_err(|error| match error {
        MigrateError::VersionMissing(version) => anyhow::anyhow!(
            "the database's schema is newer than this api-service: it has migration {version}, which this \
             binary does not know; run the version of the api-service that wrote it, or a later one"
        ),
        other => anyhow::anyhow!("the database's migrations failed: {other}"),
    })?;
    Ok(database)
}

impl Database {
    /// The backend's name, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }

    pub fn is_closed(&self) -> bool {
        match self {
            Database::Sqlite(pool) => pool.is_closed(),
            Database::Postgres(pool) => pool.is_closed(),
        }
    }

    pub async fn close(&self) {
        match self {
            Database::Sqlite(pool) => pool.close().await,
            Database::Postgres(pool) => pool.close().await,
        }
    }

    /// The SQLite pool, for tests that look at the file's rows.
    pub fn as_sqlite(&self) -> Option<&SqlitePool> {
        match self {
            Database::Sqlite(pool) => Some(pool),
            Database::Postgres(_) => None,
        }
    }

    /// One round trip: whether the database answers now.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Database::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            Database::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
        }
    }

    /// The committed items' version.
    pub async fn items_version(&self) -> Result<i64, sqlx::Error> {
        match self {
            Database::Sqlite(pool) => sqlite::items_version(pool).await,
            Database::Postgres(pool) => postgres::items_version(pool).await,
        }
    }

    /// Stores a new item as of `now`; None if its id is taken.
    pub async fn create_item(&self, item: &NewItem, now: i64) -> Result<Option<Item>, sqlx::Error> {
        match self {
            Database::Sqlite(pool) => sqlite::create_item(pool, item, now).await,
            Database::Postgres(pool) => postgres::create_item(pool, item, now).await,
        }
    }

    /// Replaces an item's fields as of `now` (its `created_at` kept); None if there is no such id.
    pub async fn update_item(&self, item: &NewItem, now: i64) -> Result<Option<Item>, sqlx::Error> {
        match self {
            Database::Sqlite(pool) => sqlite::update_item(pool, item, now).await,
            Database::Postgres(pool) => postgres::update_item(pool, item, now).await,
        }
    }

    pub async fn item(&self, id: i64) -> Result<Option<Item>, sqlx::Error> {
        match self {
            Database::Sqlite(pool) => sqlite::item(pool, id).await,
            Database::Postgres(pool) => postgres::item(pool, id).await,
        }
    }

    /// At most `limit` items by ascending id, after the id `after` if given.
    pub async fn items(&self, after: Option<i64>, limit: i64) -> Result<Vec<Item>, sqlx::Error> {
        match self {
            Database::Sqlite(pool) => sqlite::items(pool, after, limit).await,
            Database::Postgres(pool) => postgres::items(pool, after, limit).await,
        }
    }

    /// Creates or replaces every item of `import` in one transaction as of `now`; returns how
    /// many of its ids were items before.
    pub async fn import_items(&self, import: &Import, now: i64) -> Result<u32, sqlx::Error> {
        match self {
            Database::Sqlite(pool) => sqlite::import_items(pool, import, now).await,
            Database::Postgres(pool) => postgres::import_items(pool, import, now).await,
        }
    }

    /// The attribute names the items carry, in name order, at most `limit`.
    pub async fn attribute_names(&self, limit: i64) -> Result<Vec<String>, sqlx::Error> {
        match self {
            Database::Sqlite(pool) => sqlite::attribute_names(pool, limit).await,
            Database::Postgres(pool) => postgres::attribute_names(pool, limit).await,
        }
    }

    /// Every item's value of the attribute `name`, by id (items without it are absent).
    pub async fn attribute_values(&self, name: &str) -> Result<HashMap<i64, String>, sqlx::Error> {
        match self {
            Database::Sqlite(pool) => sqlite::attribute_values(pool, name).await,
            Database::Postgres(pool) => postgres::attribute_values(pool, name).await,
        }
    }

    /// Names and categories by id: of those of `ids` that are items, or of every item.
    pub async fn labels(&self, ids: Option<&[i64]>) -> Result<HashMap<i64, (String, String)>, sqlx::Error> {
        match self {
            Database::Sqlite(pool) => sqlite::labels(pool, ids).await,
            Database::Postgres(pool) => postgres::labels(pool, ids).await,
        }
    }

    /// The counts of the `limit` most viewed items.
    pub async fn top_stats(&self, limit: i64) -> Result<Vec<ItemStats>, sqlx::Error> {
        match self {
            Database::Sqlite(pool) => sqlite::top_stats(pool, limit).await,
            Database::Postgres(pool) => postgres::top_stats(pool, limit).await,
        }
    }

    /// One item's counts, if it has any.
    pub async fn stats_of(&self, item_id: i64) -> Result<Option<ItemStats>, sqlx::Error> {
        match self {
            Database::Sqlite(pool) => sqlite::stats_of(pool, item_id).await,
            Database::Postgres(pool) => postgres::stats_of(pool, item_id).await,
        }
    }

    /// Writes `events` in one transaction as of `now`, with the counts of those stored: each
    /// event's outcome, or the error that failed them all.
    pub(crate) async fn write_events(&self, events: &[&Checked], now: i64) -> Result<Vec<EventOutcome>, sqlx::Error> {
        match self {
            Database::Sqlite(pool) => sqlite::write_events(pool, events, now).await,
            Database::Postgres(pool) => postgres::write_events(pool, events, now).await,
        }
    }
}

/// The count rows (item, views, searches) that `outcomes` add, by ascending item: on PostgreSQL,
/// replicas that lock count rows in one order cannot deadlock over them.
fn stat_rows(events: &[&Checked], outcomes: &[EventOutcome]) -> Vec<[i64; 3]> {
    let mut counts: HashMap<i64, (i64, i64)> = HashMap::new();
    for (event, outcome) in events.iter().zip(outcomes) {
        if let EventOutcome::Inserted(_) = outcome {
            let count = counts.entry(event.item_id).or_default();
            match event.kind {
                EventKind::View => count.0 += 1,
                EventKind::Search => count.1 += 1,
            }
        }
    }
    let mut rows: Vec<[i64; 3]> = counts.into_iter().map(|(item, (views, searches))| [item, views, searches]).collect();
    rows.sort_unstable();
    rows
}

/// An `items` row (`id, name, category, attributes, created_at, updated_at`), from either backend.
fn item_from_row<R>(row: &R) -> Result<Item, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let attributes: String = row.try_get("attributes")?;
    Ok(Item {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        category: row.try_get("category")?,
        attributes: serde_json::from_str(&attributes).unwrap_or_default(),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// An `item_stats` row, from either backend.
fn stats_from_row<R>(row: &R) -> Result<ItemStats, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ItemStats {
        item_id: row.try_get("item_id")?,
        views: row.try_get::<i64, _>("views")? as u64,
        searches: row.try_get::<i64, _>("searches")? as u64,
    })
}

/// `id, name, category` rows as name and category by id, from either backend.
fn labels_from_rows<R>(rows: &[R]) -> Result<HashMap<i64, (String, String)>, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter().map(|row| Ok((row.try_get("id")?, (row.try_get("name")?, row.try_get("category")?)))).collect()
}

const ITEM_COLUMNS: &str = "id, name, category, attributes, created_at, updated_at";

/// A database that could not answer now but may in a moment: SQLite's busy or locked, a pool
/// with no connection to give, a connection lost, and PostgreSQL's failover, shutdown,
/// serialisation and deadlock errors. Callers get a retryable answer (503 with Retry-After).
pub fn is_busy(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else { return false };
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLITE_BUSY (5) or SQLITE_LOCKED (6), with any extended code.
                return code.parse::<i32>().is_ok_and(|code| matches!(code & 0xff, 5 | 6));
            }
            // PostgreSQL SQLSTATEs: connection exceptions (08), serialisation failure, deadlock,
            // too many connections, lock not available, and the server shutting down or starting.
            // A primary demoted mid-failover answers writes read-only (25006) until clients move.
            code.starts_with("08")
                || matches!(&*code, "25006" | "40001" | "40P01" | "53300" | "55P03" | "57P01" | "57P02" | "57P03")
        }
        _ => false,
    }
}

/// A statement refused by a foreign key.
pub fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// Milliseconds since the Unix epoch, the timestamps stored in the tables.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A stored timestamp as a protobuf one.
pub fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: millis.div_euclid(1000), nanos: (millis.rem_euclid(1000) * 1_000_000) as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_a_postgres_url_or_a_sqlite_path_and_never_shows_a_password() {
        assert_eq!(Target::parse("data/api.sqlite3"), Ok(Target::Sqlite("data/api.sqlite3".into())));
        assert_eq!(Target::parse("sqlite:///var/api.sqlite3"), Ok(Target::Sqlite("/var/api.sqlite3".into())));
        let url = "postgres://api:s3cret@db.internal:5432/api?sslmode=require";
        let target = Target::parse(url).unwrap();
        assert_eq!(target, Target::Postgres(url.into()));
        let shown = format!("{target} {target:?}");
        assert!(!shown.contains("s3cret") && shown.contains("db.internal"), "{shown}");
        let in_query = Target::parse("postgres://api@db/api?password=s3cret&sslmode=require").unwrap();
        let shown = in_query.to_string();
        assert!(!shown.contains("s3cret") && shown.contains("sslmode=require"), "{shown}");
        assert!(Target::parse("").is_err());
    }

    #[test]
    fn count_rows_add_up_stored_events_only_by_ascending_item() {
        let event = |item_id, kind| Checked { item_id, kind, client_key: None };
        let events = [
            event(9, EventKind::View),
            event(2, EventKind::Search),
            event(9, EventKind::View),
            event(5, EventKind::View),
        ];
        let outcomes = [
            EventOutcome::Inserted(1),
            EventOutcome::Inserted(2),
            EventOutcome::Inserted(3),
            EventOutcome::UnknownItem,
        ];
        assert_eq!(stat_rows(&events.iter().collect::<Vec<_>>(), &outcomes), [[2, 0, 1], [9, 2, 0]]);
    }
}
