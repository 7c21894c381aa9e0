//! The one writer of public writes, and of admin imports beside them.
//!
//! Group commit for events. Public traffic is many small writes; one transaction each made
//! callers queue on SQLite's write lock one by one and pay a commit apiece. Here every event goes
//! through one writer task (one per replica on PostgreSQL): it takes what is queued (up to a
//! batch), writes it in one transaction (`BEGIN IMMEDIATE` on SQLite), commits, and only then
//! answers each caller.
//!
//! One rule for keys holds within and across batches: each event's insert runs in the transaction
//! that holds the batch's earlier events, so a retry in the same batch meets its first copy as one
//! in a later batch does. A bad event (a taken key, an unknown item) fails alone: SQLite undoes
//! its statement alone, and on PostgreSQL no statement of a batch fails (`db::postgres`); a batch that fails for any other
//! reason than a busy database is written again event by event, so whatever failed fails alone.
//!
//! Imports (`ItemStore::import`) go through the same task, from a second, small queue. An import
//! that took the write lock on its own made the events behind it wait for all of it, past
//! busy_timeout under looping 10k-item imports. Now the writer alone decides who holds the lock:
//! the events queued when an import's turn comes are written first, then the import, in its one
//! transaction (all or nothing, two set-based statements, so the lock is held briefly), then the
//! events that came meanwhile. Events go first whenever both wait, yet an import waiting after a
//! batch is taken next (after the events already queued), so a steady stream of events cannot
//! hold it back for ever.

use std::time::Duration;

use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    db::{self, Database, EventOutcome},
    error::ApiError,
    events::{EventKind, NewEvent, Recorded},
    items::Import,
};

/// Imports waiting for the writer; past it, callers are refused at once (503). Each holds a whole
/// import in memory, so few: two admin tools at once fit.
pub const IMPORT_QUEUE: usize = 4;

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

/// Hands events and imports to the writer task; cheap to clone.
#[derive(Clone)]
pub struct EventWriter {
    events: mpsc::Sender<Pending>,
    imports: mpsc::Sender<PendingImport>,
}

/// The writer task, kept by the server to drain it at shutdown.
pub struct WriterTask {
    /// Set once, at shutdown: queued events and imports are written until then.
    stop: watch::Sender<Option<Instant>>,
    handle: JoinHandle<()>,
}

struct Pending {
    event: Checked,
    reply: oneshot::Sender<Result<Recorded, ApiError>>,
}

struct PendingImport {
    import: Import,
    reply: oneshot::Sender<Result<(u32, u32), ApiError>>,
}

/// The writer's queues, as its task holds them.
struct Queues {
    events: mpsc::Receiver<Pending>,
    imports: mpsc::Receiver<PendingImport>,
}

/// An event whose fields passed the checks that need no database.
pub(crate) struct Checked {
    pub(crate) item_id: i64,
    pub(crate) kind: EventKind,
    pub(crate) client_key: Option<String>,
}

impl EventWriter {
    pub fn start(db: Database, settings: BatchSettings) -> (EventWriter, WriterTask) {
        let (writer, queues) = EventWriter::queues(settings);
        let (stop, stopped) = watch::channel(None);
        let handle = tokio::spawn(run(db, settings, queues, stopped));
        (writer, WriterTask { stop, handle })
    }

    fn queues(settings: BatchSettings) -> (EventWriter, Queues) {
        let (events, event_queue) = mpsc::channel(settings.queue.max(1));
        let (imports, import_queue) = mpsc::channel(IMPORT_QUEUE);
        (EventWriter { events, imports }, Queues { events: event_queue, imports: import_queue })
    }

    /// Records `event` and bumps its item's count; answers once the commit holding it is done.
    pub async fn record(&self, event: NewEvent) -> Result<Recorded, ApiError> {
        let event = check(event)?;
        let (reply, answer) = oneshot::channel();
        self.events.try_send(Pending { event, reply }).map_err(refusal)?;
        // The writer answers every event it takes; a dropped reply means it stopped (shutdown).
        answer.await.unwrap_or(Err(ApiError::ShuttingDown))
    }

    /// Writes `import` in one transaction, after the events queued before its turn; answers
    /// (created, updated) once it is committed.
    pub async fn import(&self, import: Import) -> Result<(u32, u32), ApiError> {
        let (reply, answer) = oneshot::channel();
        self.imports.try_send(PendingImport { import, reply }).map_err(refusal)?;
        answer.await.unwrap_or(Err(ApiError::ShuttingDown))
    }

    /// False once the writer has stopped taking events.
    pub fn is_running(&self) -> bool {
        !self.events.is_closed()
    }
}

/// A write the queue did not take: full (retry shortly) or closed (shutting down).
fn refusal<T>(error: mpsc::error::TrySendError<T>) -> ApiError {
    match error {
        mpsc::error::TrySendError::Full(_) => ApiError::Overloaded,
        mpsc::error::TrySendError::Closed(_) => ApiError::ShuttingDown,
    }
}

impl WriterTask {
    /// Stops taking events and imports and writes what is queued, events first, until `grace`
    /// has passed; callers whose batch or import has not begun by then are answered "shutting
    /// down" (retryable). A write already begun finishes, so no caller is told "no" about a
    /// committed write.
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

async fn run(db: Database, settings: BatchSettings, queues: Queues, mut stop: watch::Receiver<Option<Instant>>) {
    let Queues { events: mut queue, mut imports } = queues;
    let max_batch = settings.max_batch.max(1);
    let mut batch = Vec::with_capacity(max_batch);
    let depth = metrics::gauge!("event_writer_queue_depth");
    loop {
        // What is left after the last write (a burst's backlog drains to 0 here).
        depth.set(queue.len() as f64);
        // Biased: shutdown, then events, then imports, so an import is taken only when no event
        // waits, or after a batch (below).
        let import = tokio::select! {
            biased;
            _ = stopping(&mut stop) => break,
            taken = queue.recv_many(&mut batch, max_batch) => {
                if taken == 0 {
                    break;
                }
                gather(&mut queue, &mut batch, &settings).await;
                depth.set(queue.len() as f64);
                write_and_answer(&db, &mut batch).await;
                // An import waiting takes its turn after this batch and the events queued by now,
                // so a steady stream of events cannot hold it back for ever.
                imports.try_recv().ok()
            }
            import = imports.recv() => match import {
                Some(import) => Some(import),
                None => break,
            },
        };
        if let Some(import) = import {
            write_queued(&db, &mut queue, &mut batch, max_batch).await;
            import_and_answer(&db, import).await;
        }
    }
    // Shutdown: refuse new writes, then write what is already queued while the grace lasts,
    // events first as always.
    queue.close();
    imports.close();
    let deadline = stop.borrow().unwrap_or_else(Instant::now);
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        if Instant::now() < deadline {
            write_and_answer(&db, &mut batch).await;
        } else {
            for pending in batch.drain(..) {
                let _ = pending.reply.send(Err(ApiError::ShuttingDown));
            }
        }
    }
    while let Some(import) = imports.recv().await {
        if Instant::now() < deadline {
            import_and_answer(&db, import).await;
        } else {
            let _ = import.reply.send(Err(ApiError::ShuttingDown));
        }
    }
    tracing::debug!(task = "event-writer", "queues drained");
}

/// Resolves once shutdown has begun (or the server dropped the stop handle).
async fn stopping(stop: &mut watch::Receiver<Option<Instant>>) {
    let _ = stop.wait_for(Option::is_some).await;
}

/// Once `batch` has an event, waits up to `max_wait` for more, up to a full batch.
async fn gather(queue: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>, settings: &BatchSettings) {
    if settings.max_wait.is_zero() {
        return;
    }
    let max_batch = settings.max_batch.max(1);
    let deadline = Instant::now() + settings.max_wait;
    while batch.len() < max_batch {
        let limit = max_batch - batch.len();
        match tokio::time::timeout_at(deadline, queue.recv_many(batch, limit)).await {
            Ok(taken) if taken > 0 => {}
            _ => break,
        }
    }
}

/// Writes the events queued now, batch by batch; events that come meanwhile wait their turn.
async fn write_queued(db: &Database, queue: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>, max_batch: usize) {
    let mut owed = queue.len();
    while owed > 0 {
        let taken = queue.recv_many(batch, owed.min(max_batch)).await;
        if taken == 0 {
            break;
        }
        owed -= taken;
        write_and_answer(db, batch).await;
    }
}

/// Writes an import and answers its caller.
async fn import_and_answer(db: &Database, pending: PendingImport) {
    // A caller that left before its import began (its deadline passed) is not written, as for
    // events: it had no answer, and it would hold the lock for no one.
    if pending.reply.is_closed() {
        return;
    }
    let started = std::time::Instant::now();
    let answer = pending.import.write(db, db::now_millis()).await;
    match &answer {
        Ok((created, updated)) => tracing::info!(
            task = "event-writer",
            created,
            updated,
            took_ms = started.elapsed().as_millis() as u64,
            "import written"
        ),
        Err(error) => tracing::warn!(task = "event-writer", "an import failed: {error}"),
    }
    let _ = pending.reply.send(answer.map_err(ApiError::from));
}

/// Writes `batch` (emptying it) and answers each of its callers.
async fn write_and_answer(db: &Database, batch: &mut Vec<Pending>) {
    // A caller that left before its batch began (its deadline passed, its connection closed) is
    // not written; it had no answer, so a retry under its key is the way to know.
    batch.retain(|pending| !pending.reply.is_closed());
    if batch.is_empty() {
        return;
    }
    let events: Vec<&Checked> = batch.iter().map(|pending| &pending.event).collect();
    metrics::histogram!("event_writer_batch_size").record(events.len() as f64);
    let answers = match write(db, &events).await {
        Ok(answers) => answers,
        Err(error) if db::is_busy(&error) || events.len() == 1 => vec![Err(ApiError::from(error)); events.len()],
        Err(error) => {
            tracing::warn!(events = events.len(), "a batch of events failed ({error}); writing them one by one");
            let mut answers = Vec::with_capacity(events.len());
            for event in &events {
                answers
                    .push(write(db, &[*event]).await.map_or_else(|error| Err(error.into()), |mut one| one.remove(0)));
            }
            answers
        }
    };
    for (pending, answer) in batch.drain(..).zip(answers) {
        let _ = pending.reply.send(answer); // the caller may have left meanwhile
    }
}

/// Writes `events` in one transaction: each event's own answer, or the error that failed them all.
/// Counts the transaction by its end, and times it.
async fn write(db: &Database, events: &[&Checked]) -> Result<Vec<Result<Recorded, ApiError>>, sqlx::Error> {
    let started = Instant::now();
    let written = write_transaction(db, events).await;
    let result = match &written {
        Ok(_) => "committed",
        Err(error) if db::is_busy(error) => "busy",
        Err(_) => "failed",
    };
    metrics::counter!("event_writer_transactions_total", "result" => result).increment(1);
    metrics::histogram!("event_writer_transaction_seconds").record(started.elapsed());
    written
}

async fn write_transaction(db: &Database, events: &[&Checked]) -> Result<Vec<Result<Recorded, ApiError>>, sqlx::Error> {
    let outcomes = db.write_events(events, db::now_millis()).await?;
    Ok(events.iter().zip(outcomes).map(|(event, outcome)| answer(event, outcome)).collect())
}

/// What an event's outcome means to its caller. A key names one event: the same event retried
/// gets the original answer; another event under a used key is refused, never silently answered
/// with the first one's id.
fn answer(event: &Checked, outcome: EventOutcome) -> Result<Recorded, ApiError> {
    match outcome {
        EventOutcome::Inserted(event_id) => Ok(Recorded { event_id, created: true }),
        EventOutcome::UnknownItem => Err(ApiError::not_found(format!("item {}", event.item_id))),
        EventOutcome::KeyTaken { id, item_id, kind } if item_id == event.item_id && kind == event.kind.code() => {
            Ok(Recorded { event_id: id, created: false })
        }
        EventOutcome::KeyTaken { .. } => Err(ApiError::KeyReused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::NewItem;

    /// A database with item 1, and a log of the rows written to `events` and `items` in the order
    /// SQLite wrote them.
    async fn logged_database(dir: &std::path::Path) -> Database {
        let db = sqlite_database(&dir.join("order.sqlite3")).await;
        sqlx::raw_sql(
            "INSERT INTO items (id, name, created_at, updated_at) VALUES (1, 'one', 0, 0);
             CREATE TABLE written (seq INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT NOT NULL);
             CREATE TRIGGER event_written AFTER INSERT ON events
                BEGIN INSERT INTO written (what) VALUES ('event ' || NEW.client_key); END;
             CREATE TRIGGER item_created AFTER INSERT ON items
                BEGIN INSERT INTO written (what) VALUES ('item ' || NEW.id); END;
             CREATE TRIGGER item_replaced AFTER UPDATE OF name ON items
                BEGIN INSERT INTO written (what) VALUES ('item ' || NEW.id); END;",
        )
        .execute(db.as_sqlite().unwrap())
        .await
        .unwrap();
        db
    }

    async fn sqlite_database(path: &std::path::Path) -> Database {
        db::open(&db::Target::Sqlite(path.to_owned()), 1, db::Checkpoints::Sqlite).await.unwrap()
    }

    async fn written(db: &Database) -> Vec<String> {
        sqlx::query_scalar("SELECT what FROM written ORDER BY seq").fetch_all(db.as_sqlite().unwrap()).await.unwrap()
    }

    /// Queues an event for item 1 under `key` straight into the writer's queue; its answer.
    fn queue_event(writer: &EventWriter, key: &str) -> oneshot::Receiver<Result<Recorded, ApiError>> {
        let (reply, answer) = oneshot::channel();
        let event = Checked { item_id: 1, kind: EventKind::View, client_key: Some(key.to_owned()) };
        assert!(writer.events.try_send(Pending { event, reply }).is_ok());
        answer
    }

    /// Queues an import of `ids` straight into the writer's queue; its answer.
    fn queue_import(writer: &EventWriter, ids: &[i64]) -> oneshot::Receiver<Result<(u32, u32), ApiError>> {
        let items: Vec<NewItem> = ids
            .iter()
            .map(|&id| NewItem {
                id,
                name: format!("item {id}"),
                category: String::new(),
                attributes: Default::default(),
            })
            .collect();
        let (reply, answer) = oneshot::channel();
        assert!(writer.imports.try_send(PendingImport { import: Import::new(&items).unwrap(), reply }).is_ok());
        answer
    }

    fn settings(max_batch: usize) -> BatchSettings {
        BatchSettings { max_batch, max_wait: Duration::ZERO, queue: 64 }
    }

    #[tokio::test]
    async fn events_queued_before_an_import_are_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = logged_database(dir.path()).await;
        let (writer, queues) = EventWriter::queues(settings(2));
        // The import is queued first, yet the five events (three batches) waiting beside it go
        // first; the import is written whole after them.
        let import = queue_import(&writer, &[1, 2, 3]);
        let events: Vec<_> = (1..=5).map(|n| queue_event(&writer, &format!("e{n}"))).collect();
        let (_stop, stopped) = watch::channel(None);
        let task = tokio::spawn(run(db.clone(), settings(2), queues, stopped));
        assert_eq!(import.await.unwrap().unwrap(), (2, 1));
        for event in events {
            assert!(event.await.unwrap().unwrap().created);
        }
        assert_eq!(
            written(&db).await,
            ["event e1", "event e2", "event e3", "event e4", "event e5", "item 1", "item 2", "item 3"]
        );
        // Then the writer goes on: an event for an item the import created.
        let after = queue_event(&writer, "after");
        assert!(after.await.unwrap().unwrap().created);
        drop(writer);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_answers_queued_imports_written_while_grace_lasts_else_shutting_down() {
        for grace_left in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let db = logged_database(dir.path()).await;
            let (writer, queues) = EventWriter::queues(settings(256));
            let import = queue_import(&writer, &[2]);
            let event = queue_event(&writer, "last");
            // Shutdown came before the writer took anything.
            let deadline = if grace_left { Instant::now() + Duration::from_secs(30) } else { Instant::now() };
            let (_stop, stopped) = watch::channel(Some(deadline));
            run(db.clone(), settings(256), queues, stopped).await;
            if grace_left {
                assert_eq!(import.await.unwrap().unwrap(), (1, 0));
                assert!(event.await.unwrap().unwrap().created);
                assert_eq!(written(&db).await, ["event last", "item 2"]);
            } else {
                assert!(matches!(import.await.unwrap(), Err(ApiError::ShuttingDown)));
                assert!(matches!(event.await.unwrap(), Err(ApiError::ShuttingDown)));
                assert!(written(&db).await.is_empty());
            }
            // The queues are closed: later writes are refused at once.
            assert!(matches!(
                writer.record(NewEvent { item_id: 1, kind: EventKind::View, client_key: None }).await,
                Err(ApiError::ShuttingDown)
            ));
        }
    }

    #[tokio::test]
    async fn one_batch_answers_each_event_by_its_own_rule_and_counts_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_database(&dir.path().join("batch.sqlite3")).await;
        let pool = db.as_sqlite().unwrap();
        sqlx::query("INSERT INTO items (id, name, created_at, updated_at) VALUES (1, 'one', 0, 0), (2, 'two', 0, 0)")
            .execute(pool)
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
        let answers = write(&db, &events.iter().collect::<Vec<_>>()).await.unwrap();
        let first = answers[0].as_ref().unwrap();
        assert!(first.created);
        assert!(matches!(answers[1], Ok(Recorded { event_id, created: false }) if event_id == first.event_id));
        assert!(matches!(answers[2], Err(ApiError::KeyReused)));
        assert!(matches!(answers[3], Err(ApiError::NotFound { .. })));
        assert!(matches!(answers[4], Ok(Recorded { created: true, .. })));
        assert!(matches!(answers[5], Ok(Recorded { created: true, .. })));
        let counts: Vec<(i64, i64, i64)> =
            sqlx::query_as("SELECT item_id, views, searches FROM item_stats ORDER BY item_id")
                .fetch_all(pool)
                .await
                .unwrap();
        assert_eq!(counts, [(1, 1, 0), (2, 1, 1)]);
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await.unwrap();
        assert_eq!(stored, 3);
    }
}
