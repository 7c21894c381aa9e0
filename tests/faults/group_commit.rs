//! Events go through one writer that commits them in batches: when the database is locked from
//! outside past busy_timeout, and when more events come than its queue holds, every caller is
//! answered (written, or told to retry) and nothing acknowledged is missing.

use super::*;

/// An outside process holds the write lock past busy_timeout while 64 clients write.
pub async fn locked_past_busy_timeout(card: &mut Scorecard) {
    const WRITERS: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("group-locked.sqlite3");
    let api = start_api(&database, "http://127.0.0.1:9", &[]);
    create_items(&api, 10).await;
    let row = card.row("group commit");

    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&api, WRITERS, "locked".into(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 7 s, past the service's 5 s busy_timeout; the holder itself waits its turn for the lock.
    let mut holder = hold_write_lock(&database, 7, "UPDATE items SET name = name WHERE id = 0;");
    let held = Instant::now();
    let committed = holder.wait().unwrap().success();
    let held = held.elapsed();
    // Writing resumes once the lock is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = join_writers(writers).await;

    let (missing, doubled) = missing_and_doubled(&database, &tally.acknowledged);
    row.operations += tally.attempts;
    row.acknowledged_lost += missing;
    let mut survived = row.check(doubled.is_none(), doubled.unwrap_or_default());
    survived &= row.check(committed, "the outside writer held the lock and committed");
    survived &= row.check(
        tally.other.is_empty(),
        format!("every caller answered: written, or 503 with Retry-After; also {:?}", tally.other),
    );
    survived &= row.check(tally.retryable > 0, "the lock held past busy_timeout gave retryable errors");
    let after = http_client()
        .post(http_url(&api, "/api/events"))
        .json(&json!({ "item_id": 1, "kind": "view", "client_key": "locked-after" }))
        .send()
        .await
        .map(|response| response.status());
    survived &= row.check(after.as_ref().is_ok_and(|s| *s == StatusCode::CREATED), format!("201 after, got {after:?}"));
    let disagree = counts_disagree(&database);
    survived &= row.check(disagree.is_none(), disagree.unwrap_or_default());
    row.fault(survived);
    row.figures.push(format!(
        "lock held {:.1} s, {WRITERS} writers: {} written, {} told to retry, {} otherwise",
        held.as_secs_f64(),
        tally.acknowledged.len(),
        tally.retryable,
        tally.other.len()
    ));
}

/// More events at once than the writer's queue holds, while it waits for a lock: the surplus is
/// refused at once with 503 and Retry-After, the queued events are written, and then all is as
/// before.
pub async fn full_queue(card: &mut Scorecard) {
    const CALLERS: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("group-full.sqlite3");
    let api = start_api(&database, "http://127.0.0.1:9", &["--event-queue", "8"]);
    create_items(&api, 10).await;
    let row = card.row("group commit");
    let client = http_client();
    let post = |key: String| {
        let body = json!({ "item_id": 2, "kind": "search", "client_key": key });
        let request = client.post(http_url(&api, "/api/events")).json(&body);
        async move {
            match request.send().await {
                Ok(response) => {
                    let (status, retry_after) = (response.status(), response.headers().contains_key("retry-after"));
                    let body: Value = response.json().await.unwrap_or_default();
                    Ok((status, retry_after, body["error"]["code"].as_str().unwrap_or_default().to_owned()))
                }
                Err(error) => Err(error.to_string()),
            }
        }
    };

    // The lock keeps the writer's first batch waiting, so the queue behind it fills.
    let mut holder = hold_write_lock(&database, 2, "UPDATE items SET name = name WHERE id = 0;");
    let answers = futures_util::future::join_all((0..CALLERS).map(|n| post(format!("full-{n}")))).await;
    holder.wait().unwrap();
    let written = answers.iter().filter(|a| matches!(a, Ok((s, ..)) if *s == StatusCode::CREATED)).count();
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Ok((s, true, code)) if *s == StatusCode::SERVICE_UNAVAILABLE && code == "overloaded"))
        .count();
    row.operations += CALLERS;
    let mut survived = row.check(
        written + refused == CALLERS,
        format!("each caller written (201) or refused (503 overloaded, Retry-After): {answers:?}"),
    );
    survived &= row.check(refused > 0 && written > 0, format!("{refused} refused at once, {written} written"));
    let stored = sqlite3(&database, "SELECT count(*) FROM events;").trim().parse::<usize>().unwrap_or(0);
    survived &= row.check(stored == written, format!("{stored} events stored for {written} written"));

    // Recovered: the queue takes events again.
    let again = futures_util::future::join_all((0..8).map(|n| post(format!("again-{n}")))).await;
    row.operations += again.len();
    let recovered = again.iter().all(|a| matches!(a, Ok((s, ..)) if *s == StatusCode::CREATED));
    survived &= row.check(recovered, format!("201 for each event once the lock is gone: {again:?}"));
    row.fault(survived);
    row.figures
        .push(format!("queue of 8, {CALLERS} events at once while locked: {written} written, {refused} refused"));
}
