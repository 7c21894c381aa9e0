//! Every pooled connection, including ones the pool opens later, runs with WAL, a 5 s busy
//! timeout and the chosen checkpoint policy: hold all connections at once and ask each one.

use api_service::db;
use sqlx::Row;

#[tokio::test]
async fn every_pooled_connection_reports_wal_busy_timeout_and_its_checkpoints() {
    for (checkpoints, autocheckpoint) in [(db::Checkpoints::Sqlite, 1000), (db::Checkpoints::Replicator, 0)] {
        every_pooled_connection_reports(checkpoints, autocheckpoint).await;
    }
}

async fn every_pooled_connection_reports(checkpoints: db::Checkpoints, autocheckpoint: i64) {
    let dir = tempfile::tempdir().unwrap();
    let pool = db::sqlite::open(&dir.path().join("pragmas.sqlite3"), 6, checkpoints).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(pool.acquire().await.unwrap());
    }
    for connection in &mut held {
        let mode: String = sqlx::query("PRAGMA journal_mode").fetch_one(&mut **connection).await.unwrap().get(0);
        let timeout: i64 = sqlx::query("PRAGMA busy_timeout").fetch_one(&mut **connection).await.unwrap().get(0);
        let synchronous: i64 = sqlx::query("PRAGMA synchronous").fetch_one(&mut **connection).await.unwrap().get(0);
        let foreign_keys: i64 = sqlx::query("PRAGMA foreign_keys").fetch_one(&mut **connection).await.unwrap().get(0);
        let wal_limit: i64 =
            sqlx::query("PRAGMA journal_size_limit").fetch_one(&mut **connection).await.unwrap().get(0);
        assert_eq!((mode.as_str(), timeout, synchronous, foreign_keys), ("wal", 5000, 1, 1));
        assert_eq!(wal_limit as u64, db::sqlite::WAL_SIZE_LIMIT);
        let pages: i64 = sqlx::query("PRAGMA wal_autocheckpoint").fetch_one(&mut **connection).await.unwrap().get(0);
        assert_eq!(pages, autocheckpoint, "{checkpoints:?}");
    }
    assert_eq!(held.len(), 6, "all six connections were open at once");
}

#[tokio::test]
async fn a_deferred_read_then_write_is_what_begin_immediate_avoids() {
    // Two connections: one reads in a write transaction begun IMMEDIATE while another commits;
    // with IMMEDIATE the second writer waits (busy_timeout) instead of failing at once.
    let dir = tempfile::tempdir().unwrap();
    let target = db::Target::Sqlite(dir.path().join("immediate.sqlite3"));
    let pool = db::open(&target, 2, db::Checkpoints::Sqlite).await.unwrap().as_sqlite().unwrap().clone();
    sqlx::query(
        "INSERT INTO items (id, name, category, attributes, created_at, updated_at) VALUES (1, 'a', '', '{}', 0, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut first = db::sqlite::write_transaction(&pool).await.unwrap();
    let release = tokio::spawn(async move {
        sqlx::query("UPDATE items SET name = 'b' WHERE id = 1").execute(&mut *first).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        first.commit().await.unwrap();
    });
    let mut second = db::sqlite::write_transaction(&pool).await.expect("waits for the lock instead of failing");
    let name: String = sqlx::query("SELECT name FROM items WHERE id = 1").fetch_one(&mut *second).await.unwrap().get(0);
    assert_eq!(name, "b", "the second writer saw the first one's commit");
    second.commit().await.unwrap();
    release.await.unwrap();
}
