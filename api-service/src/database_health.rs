//! Whether the database has answered lately, for readiness. A short outage (a PostgreSQL
//! failover or restart) keeps the replica ready: callers get retryable answers (503 with
//! Retry-After) meanwhile, and a Service that lost every endpoint at once would turn those into
//! connection errors. Only an outage longer than `--database-outage-grace` takes the replica out.
//! On SQLite the ping is reported (`database_up`) but never gates readiness: the file is local,
//! and a ping that waited on a busy pool would take the one replica out for being busy.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::Database;

/// How often the database is asked, and how long an answer may take.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct DatabaseHealth {
    started: Instant,
    /// Milliseconds after `started` of the last answer.
    last_answer: Arc<AtomicU64>,
    grace: Duration,
    /// Whether a failing ping may make the replica unready (PostgreSQL only).
    gates_readiness: bool,
}

impl DatabaseHealth {
    /// Asks `database` every second until `shutdown` (the database has just answered: it was
    /// opened and migrated).
    pub fn spawn(database: Database, grace: Duration, shutdown: CancellationToken) -> Self {
        let gates_readiness = matches!(database, Database::Postgres(_));
        let health = DatabaseHealth {
            started: Instant::now(),
            last_answer: Arc::new(AtomicU64::new(0)),
            grace,
            gates_readiness,
        };
        let watcher = health.clone();
        tokio::spawn(async move {
            let up = metrics::gauge!("database_up");
            up.set(1.0);
            let mut every = tokio::time::interval(PING_EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                match tokio::time::timeout(PING_TIMEOUT, database.ping()).await {
                    Ok(Ok(())) => {
                        watcher.last_answer.store(watcher.started.elapsed().as_millis() as u64, Ordering::Release);
                        up.set(1.0);
                    }
                    failed => {
                        let reason = failed.map_or_else(|_| "no answer in time".to_owned(), |e| format!("{e:?}"));
                        tracing::warn!(task = "database-health", "the database did not answer: {reason}");
                        up.set(0.0);
                    }
                }
            }
        });
        health
    }

    /// False once a PostgreSQL database has not answered for longer than the grace.
    pub fn healthy(&self) -> bool {
        if !self.gates_readiness {
            return true;
        }
        let last = Duration::from_millis(self.last_answer.load(Ordering::Acquire));
        self.started.elapsed().saturating_sub(last) <= self.grace
    }
}
