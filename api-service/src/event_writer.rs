//! Group commit for events. Public traffic is many small writes; one transaction each made
//! callers queue on SQLite's write lock one by one and pay a commit apiece. Here every event goes
//! through one writer task: it takes what is queued (up to a batch), writes it in one
//! `BEGIN IMMEDIATE` transaction, commits, and only then answers each caller.
//!
//! One rule for keys holds within and across batches: each event's insert runs in the transaction
//! that holds the batch's earlier events, so a retry in the same batch meets its first copy as one
//! in a later batch does. A bad event (a taken key, an unknown item) is refused by its own
//! statement, which SQLite undoes alone, so it fails alone; a batch that fails for any other
//! reason than a busy database is written again event by event, so whatever failed fails alone.

use std::{collections::HashMap, time::Duration};

use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    db,
    error::ApiError,
    events::{EventKind, NewEvent, Recorded},
};

/// How batches are taken; the flags' defaults are measured with `api-bench`.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Most events in one transaction.
    pub max_batch: usize,
    /// How long a batch waits for more events once it has one; zero takes only what is queued
    /// (while a batch commits the next one queues, so batches grow with the load anyway).
    pub max_wait: Duration,
    /// Events waiting for the writer; past it callers are refused at once (503).
    pub queue: usize,
}

/// Hands events to the writer task; cheap to clone.
#[derive(Clone)]
pub struct EventWriter {
    queue: mpsc::Sender<Pending>,
}

/// The writer task, kept by the server to drain it at shutdown.
pub struct WriterTask {
    /// Set once, at shutdown: queued events are written until then.
    stop: watch::Sender<Option<Instant>>,
    handle: JoinHandle<()>,
}

struct Pending {
    event: Checked,
    reply: oneshot::Sender<Result<Recorded, ApiError>>,
}

/// An event whose fields passed the checks that need no database.
struct Checked {
    item_id: i64,
    kind: EventKind,
    client_key: Option<String>,
}

impl EventWriter {
    pub fn start(pool: SqlitePool, settings: BatchSettings) -> (EventWriter, WriterTask) {
        let (sender, receiver) = mpsc::channel(settings.queue.max(1));
        let (stop, stopped) = watch::channel(None);
        let handle = tokio::spawn(run(pool, settings, receiver, stopped));
        (EventWriter { queue: sender }, WriterTask { stop, handle })
    }

    /// Records `event` and bumps its item's count; answers once the commit holding it is done.
    pub async fn record(&self, event: NewEvent) -> Result<Recorded, ApiError> {
        let event = check(event)?;
        let (reply, answer) = oneshot::channel();
        self.queue.try_send(Pending { event, reply }).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => ApiError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ApiError::ShuttingDown,
        })?;
        // The writer answers every event it takes; a dropped reply means it stopped (shutdown).
        answer.await.unwrap_or(Err(ApiError::ShuttingDown))
    }

    /// False once the writer has stopped taking events.
    pub fn is_running(&self) -> bool {
        !self.queue.is_closed()
    }
}

impl WriterTask {
    /// Stops taking events and writes what is queued, batch by batch, until `grace` has passed;
    /// callers whose batch has not begun by then are answered "shutting down" (retryable). A
    /// batch already writing finishes, so no caller is told "no" about a committed event.
    pub async fn drain(self, grace: Duration) {
        let _ = self.stop.send(Some(Instant::now() + grace));
        if let Err(error) = self.handle.await {
            tracing::error!(task = "event-writer", "the event writer failed: {error}");
        }
    }
}

/// Field checks, before an event takes a place in the queue.
fn check(event: NewEvent) -> Result<Checked, ApiError> {
    let client_key = event.client_key.filter(|key| !key.is_empty());
    if let Some(key) = &client_key
        && (key.chars().count() > crate::events::MAX_CLIENT_KEY_CHARS || key.contains('\0'))
    {
        return Err(ApiError::invalid(
            "client_key",
            format!("at most {} characters, no NUL", crate::events::MAX_CLIENT_KEY_CHARS),
        ));
    }
    Ok(Checked { item_id: event.item_id, kind: event.kind, client_key })
}

async fn run(
    pool: SqlitePool,
    settings: BatchSettings,
    mut queue: mpsc::Receiver<Pending>,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    let max_batch = settings.max_batch.max(1);
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let taken = tokio::select! {
            taken = queue.recv_many(&mut batch, max_batch) => taken,
            _ = stop.wait_for(Option::is_some) => break,
        };
        if taken == 0 {
            break;
        }
        if !settings.max_wait.is_zero() {
            let deadline = tokio::time::Instant::now() + settings.max_wait;
            while batch.len() < max_batch {
                let limit = max_batch - batch.len();
                match tokio::time::timeout_at(deadline, queue.recv_many(&mut batch, limit)).await {
                    Ok(taken) if taken > 0 => {}
                    _ => break,
                }
            }
        }
        write_and_answer(&pool, &mut batch).await;
    }
    // Shutdown: refuse new events, then write what is already queued while the grace lasts.
    queue.close();
    let deadline = stop.borrow().unwrap_or_else(Instant::now);
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        if Instant::now() < deadline {
            write_and_answer(&pool, &mut batch).await;
        } else {
            for pending in batch.drain(..) {
                let _ = pending.reply.send(Err(ApiError::ShuttingDown));
            }
        }
    }
    tracing::debug!(task = "event-writer", "queue drained");
}

/// Writes `batch` (emptying it) and answers each of its callers.
async fn write_and_answer(pool: &SqlitePool, batch: &mut Vec<Pending>) {
    // A caller that left before its batch began (its deadline passed, its connection closed) is
    // not written; it had no answer, so a retry under its key is the way to know.
    batch.retain(|pending| !pending.reply.is_closed());
    if batch.is_empty() {
        return;
    }
    let events: Vec<&Checked> = batch.iter().map(|pending| &pending.event).collect();
    let answers = match write(pool, &events).await {
        Ok(answers) => answers,
        Err(error) if db::is_busy(&error) || events.len() == 1 => vec![Err(ApiError::from(error)); events.len()],
        Err(error) => {
            tracing::warn!(events = events.len(), "a batch of events failed ({error}); writing them one by one");
            let mut answers = Vec::with_capacity(events.len());
            for event in &events {
                answers
                    .push(write(pool, &[*event]).await.map_or_else(|error| Err(error.into()), |mut one| one.remove(0)));
            }
            answers
        }
    };
    for (pending, answer) in batch.drain(..).zip(answers) {
        let _ = pending.reply.send(answer); // the caller may have left meanwhile
    }
}

/// Writes `events` in one transaction: each event's own answer, or the error that failed them all.
async fn write(pool: &SqlitePool, events: &[&Checked]) -> Result<Vec<Result<Recorded, ApiError>>, sqlx::Error> {
    let mut tx = db::write_transaction(pool).await?;
    let now = db::now_millis();
    // Per-item counts add up in memory and are written in one statement at the end.
    let mut counts: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut answers = Vec::with_capacity(events.len());
    for event in events {
        let answer = write_one(&mut tx, event, now).await?;
        if answer.as_ref().is_ok_and(|recorded| recorded.created) {
            let count = counts.entry(event.item_id).or_default();
            match event.kind {
                EventKind::View => count.0 += 1,
                EventKind::Search => count.1 += 1,
            }
        }
        answers.push(answer);
    }
    if !counts.is_empty() {
        let rows: Vec<[i64; 3]> = counts.into_iter().map(|(item, (views, searches))| [item, views, searches]).collect();
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
    Ok(answers)
}

/// One event, inside the batch's transaction. The insert is tried first: it is the common case,
/// and the database itself says when the key is taken (no row returned) or the item unknown (the
/// foreign key, checked by the statement since it is not deferred), a failed statement leaving
/// the transaction and its other events as they were.
async fn write_one(
    tx: &mut Transaction<'static, Sqlite>,
    event: &Checked,
    now: i64,
) -> Result<Result<Recorded, ApiError>, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO events (item_id, kind, client_key, created_at) VALUES (?, ?, ?, ?)
         ON CONFLICT(client_key) DO NOTHING RETURNING id",
    )
    .bind(event.item_id)
    .bind(event.kind.code())
    .bind(&event.client_key)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await;
    match inserted {
        Ok(Some(row)) => return Ok(Ok(Recorded { event_id: row.try_get("id")?, created: true })),
        Ok(None) => {}
        Err(error) if db::is_foreign_key_violation(&error) => {
            return Ok(Err(ApiError::not_found(format!("item {}", event.item_id))));
        }
        Err(error) => return Err(error),
    }
    // The key was taken. A key names one event: the same event retried gets the original answer;
    // another event under a used key is refused, never silently answered with the first one's id.
    let row = sqlx::query("SELECT id, item_id, kind FROM events WHERE client_key = ?")
        .bind(&event.client_key)
        .fetch_one(&mut **tx)
        .await?;
    let same_event =
        row.try_get::<i64, _>("item_id")? == event.item_id && row.try_get::<i64, _>("kind")? == event.kind.code();
    Ok(if same_event {
        Ok(Recorded { event_id: row.try_get("id")?, created: false })
    } else {
        Err(ApiError::KeyReused)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_batch_answers_each_event_by_its_own_rule_and_counts_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::open(&dir.path().join("batch.sqlite3"), 1).await.unwrap();
        sqlx::query("INSERT INTO items (id, name, created_at, updated_at) VALUES (1, 'one', 0, 0), (2, 'two', 0, 0)")
            .execute(&pool)
            .await
            .unwrap();
        let event = |item_id, kind, key: Option<&str>| Checked { item_id, kind, client_key: key.map(str::to_owned) };
        let events = [
            event(1, EventKind::View, Some("a")),
            event(1, EventKind::View, Some("a")), // the same event again: the first one's answer
            event(2, EventKind::Search, Some("a")), // another event under a taken key
            event(9, EventKind::View, Some("b")), // an unknown item
            event(2, EventKind::Search, None),
            event(2, EventKind::View, Some("b")), // the unknown item's key was not taken
        ];
        let answers = write(&pool, &events.iter().collect::<Vec<_>>()).await.unwrap();
        let first = answers[0].as_ref().unwrap();
        assert!(first.created);
        assert!(matches!(answers[1], Ok(Recorded { event_id, created: false }) if event_id == first.event_id));
        assert!(matches!(answers[2], Err(ApiError::KeyReused)));
        assert!(matches!(answers[3], Err(ApiError::NotFound { .. })));
        assert!(matches!(answers[4], Ok(Recorded { created: true, .. })));
        assert!(matches!(answers[5], Ok(Recorded { created: true, .. })));
        let counts: Vec<(i64, i64, i64)> =
            sqlx::query_as("SELECT item_id, views, searches FROM item_stats ORDER BY item_id")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(counts, [(1, 1, 0), (2, 1, 1)]);
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap();
        assert_eq!(stored, 3);
    }
}
