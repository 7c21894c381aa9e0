//! The SQLite pool. Every connection, including ones opened later, is set up by the same
//! options: WAL, busy_timeout 5000 ms, synchronous NORMAL, foreign keys on, and the checkpoint
//! policy (SQLite's own, or none where Litestream checkpoints). Writes go through
//! `write_transaction`, which begins IMMEDIATE so that waiting for the write lock happens at
//! BEGIN, where busy_timeout applies, and never as an un-retried SQLITE_BUSY mid-transaction.

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    Sqlite, SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

/// How long a statement waits for a lock before SQLite gives up with SQLITE_BUSY.
pub const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

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
    let pool = SqlitePoolOptions::new()
        .max_connections(connections.max(1))
        // A request waits for a free connection at most as long as it would wait for a lock.
        .acquire_timeout(BUSY_TIMEOUT)
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
    Ok(pool)
}

/// A write transaction that holds the write lock from its first statement.
pub async fn write_transaction(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// SQLITE_BUSY or SQLITE_LOCKED (any extended code), or a pool that had no connection to give.
pub fn is_busy(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db.code().and_then(|code| code.parse::<i32>().ok()).is_some_and(|code| {
            let primary = code & 0xff;
            primary == 5 || primary == 6
        }),
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
