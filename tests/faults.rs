//! Faults and hostile input against the real binaries, counted the way SQLite's and Jepsen's
//! checks count them: every write is acknowledged, failed or unknown, and at the end nothing
//! acknowledged may be missing or doubled. Ends by printing a scorecard.
//!
//! Each section is a test of its own (`cargo test --test faults NAME` runs one), and the sections
//! run one at a time, since several measure timings on a small machine. A section counts what
//! happened rather than asserting as it goes: a fault counts as survived only if every check after
//! it passed, a bad input as a clear error only if the answer was the one expected, an
//! acknowledged write as lost only if the database lacks it. It fails once, at its end and after
//! its rows are kept, if any count shows a regression. Every section's rows are kept in
//! `artifacts/scorecard/`, and the scorecard of all that ran is gathered in
//! `artifacts/scorecard.txt`, which the test command prints.

use std::{
    collections::{BTreeMap, HashSet},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use embeddingmap_proto::api::{
    self as pb, event_service_client::EventServiceClient, item_service_client::ItemServiceClient,
};
use end_to_end_tests::{
    EMBEDDING, ServiceProcess,
    api::*,
    binary, eventually,
    sqlite::{hold_write_lock, sqlite3, sqlite3_script},
    start_embedding, within,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

#[path = "faults/connections.rs"]
mod connections;
#[path = "faults/group_commit.rs"]
mod group_commit;
#[path = "faults/imports.rs"]
mod imports;
#[path = "faults/map_files.rs"]
mod map_files;
#[path = "faults/replays.rs"]
mod replays;

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Row {
    operations: usize,
    faults: usize,
    survived: usize,
    bad_inputs: usize,
    clear_errors: usize,
    acknowledged_lost: usize,
    crashes: usize,
    writes_outside_data: usize,
    failed_checks: usize,
    /// What went wrong, in words, listed under the table.
    problems: Vec<String>,
    /// Measurements the area is judged by (peak memory, timings), listed under the table.
    figures: Vec<String>,
}

impl Row {
    /// Adds `other`'s counts, figures and problems to this row's.
    fn merge(&mut self, other: Row) {
        self.operations += other.operations;
        self.faults += other.faults;
        self.survived += other.survived;
        self.bad_inputs += other.bad_inputs;
        self.clear_errors += other.clear_errors;
        self.acknowledged_lost += other.acknowledged_lost;
        self.crashes += other.crashes;
        self.writes_outside_data += other.writes_outside_data;
        self.failed_checks += other.failed_checks;
        self.problems.extend(other.problems);
        self.figures.extend(other.figures);
    }

    /// Counts a failed check, described by `expected`, unless it `passed`; returns `passed`.
    fn check(&mut self, passed: bool, expected: impl Into<String>) -> bool {
        if !passed {
            self.failed_checks += 1;
            self.problems.push(expected.into());
        }
        passed
    }

    /// Counts a fault: survived if every check after it passed.
    fn fault(&mut self, survived: bool) {
        self.faults += 1;
        self.survived += usize::from(survived);
    }

    /// Counts a bad input: a clear error only if the answer was `clear`; `answered` says what came
    /// back when it was not.
    fn bad_input(&mut self, clear: bool, answered: impl Into<String>) {
        self.bad_inputs += 1;
        if clear {
            self.clear_errors += 1;
        } else {
            self.problems.push(answered.into());
        }
    }
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Scorecard(BTreeMap<String, Row>);

impl Scorecard {
    fn row(&mut self, area: &str) -> &mut Row {
        self.0.entry(area.to_owned()).or_default()
    }

    /// Adds `other`'s rows, area by area.
    fn merge(&mut self, other: Scorecard) {
        for (area, row) in other.0 {
            self.row(&area).merge(row);
        }
    }

    /// `field` summed over every area.
    fn total(&self, field: fn(&Row) -> usize) -> usize {
        self.0.values().map(field).sum()
    }

    /// Every count of a regression, named; each must be zero.
    fn regressions(&self) -> [(&'static str, usize); 6] {
        [
            ("bad inputs without a clear error", self.total(|r| r.bad_inputs - r.clear_errors)),
            ("faults not survived", self.total(|r| r.faults - r.survived)),
            ("acknowledged writes lost", self.total(|r| r.acknowledged_lost)),
            ("crashes", self.total(|r| r.crashes)),
            ("files written outside the data directory", self.total(|r| r.writes_outside_data)),
            ("failed checks", self.total(|r| r.failed_checks)),
        ]
    }

    fn render(&self) -> String {
        let mut text = format!(
            "fault and abuse scorecard\n{:<22} {:>10} {:>7} {:>9} {:>11} {:>12} {:>10} {:>8} {:>15} {:>13}\n",
            "area",
            "operations",
            "faults",
            "survived",
            "bad inputs",
            "clear errors",
            "acked lost",
            "crashes",
            "outside writes",
            "failed checks"
        );
        for (area, r) in &self.0 {
            text += &format!(
                "{area:<22} {:>10} {:>7} {:>9} {:>11} {:>12} {:>10} {:>8} {:>15} {:>13}\n",
                r.operations,
                r.faults,
                r.survived,
                r.bad_inputs,
                r.clear_errors,
                r.acknowledged_lost,
                r.crashes,
                r.writes_outside_data,
                r.failed_checks
            );
        }
        let totals: Vec<String> = self.regressions().iter().map(|(name, count)| format!("{name}: {count}")).collect();
        text += &format!("{}\n", totals.join("; "));
        for (area, r) in &self.0 {
            for figure in &r.figures {
                text += &format!("{area}: {figure}\n");
            }
        }
        for (area, r) in &self.0 {
            for problem in &r.problems {
                text += &format!("{area}: {problem}\n");
            }
        }
        text
    }
}

/// The status `request` is answered with, or None if no answer came.
async fn status_of(request: reqwest::RequestBuilder) -> Option<StatusCode> {
    request.send().await.ok().map(|response| response.status())
}

/// The status of the admin map endpoint, or None if no answer came.
async fn map_status(client: &reqwest::Client, api: &ServiceProcess) -> Option<StatusCode> {
    status_of(client.get(http_url(api, "/api/admin/embedding-map")).bearer_auth(ADMIN_TOKEN)).await
}

/// The `grpc-status` header of a gRPC-web answer (a trailers-only one), if it has one.
fn grpc_status(response: &reqwest::Response) -> Option<u16> {
    response.headers().get("grpc-status").and_then(|value| value.to_str().ok()).and_then(|value| value.parse().ok())
}

async fn create_items(api: &ServiceProcess, count: usize) {
    let items: Vec<_> = (0..count).map(|id| json!({ "id": id, "name": format!("item {id}") })).collect();
    let response = admin_post(api, "/api/admin/items/import", &json!({ "items": items })).await;
    assert!(response.status().is_success());
}

/// How writers' events were answered.
#[derive(Default)]
struct Tally {
    /// Keys of the events answered with success.
    acknowledged: Vec<String>,
    /// Refusals that said to retry: 503 with Retry-After.
    retryable: usize,
    /// Every other outcome, in words: no answer, or another status.
    other: Vec<String>,
    attempts: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.acknowledged.extend(other.acknowledged);
        self.retryable += other.retryable;
        self.other.extend(other.other);
        self.attempts += other.attempts;
    }
}

/// Writers posting events with unique client keys, one after another, until `stop`.
fn spawn_writers(
    api: &ServiceProcess,
    writers: usize,
    prefix: String,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    (0..writers)
        .map(|writer| {
            let url = http_url(api, "/api/events");
            let (stop, prefix) = (stop.clone(), prefix.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("{prefix}-w{writer}-{}", tally.attempts);
                    tally.attempts += 1;
                    let body = json!({ "item_id": tally.attempts % 10, "kind": "view", "client_key": key });
                    // Anything but success may or may not be stored; it is never acknowledged.
                    match client.post(&url).json(&body).send().await {
                        Ok(response) if response.status().is_success() => tally.acknowledged.push(key),
                        Ok(response)
                            if response.status() == StatusCode::SERVICE_UNAVAILABLE
                                && response.headers().contains_key("retry-after") =>
                        {
                            tally.retryable += 1
                        }
                        Ok(response) => tally.other.push(format!("answered {}", response.status())),
                        Err(error) => tally.other.push(format!("no answer: {error}")),
                    }
                }
                tally
            })
        })
        .collect()
}

/// Waits for `spawn_writers`' writers and adds up their tallies.
async fn join_writers(writers: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::default();
    for writer in writers {
        total.add(writer.await.unwrap());
    }
    total
}

/// Of `acknowledged`, how many keys the events table lacks; and whether any key is stored twice.
fn missing_and_doubled(database: &std::path::Path, acknowledged: &[String]) -> (usize, Option<String>) {
    let stored = sqlite3(database, "SELECT client_key FROM events;");
    let stored: Vec<&str> = stored.lines().collect();
    let unique: HashSet<&str> = stored.iter().copied().collect();
    let missing = acknowledged.iter().filter(|key| !unique.contains(key.as_str())).count();
    let doubled = (unique.len() != stored.len())
        .then(|| format!("no event stored twice: {} stored, {} distinct", stored.len(), unique.len()));
    (missing, doubled)
}

/// Whether the per-item counts kept beside the events disagree with the events, in words.
fn counts_disagree(database: &std::path::Path) -> Option<String> {
    let events = sqlite3(database, "SELECT item_id, kind, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2;");
    let counts = sqlite3(
        database,
        "SELECT item_id, 1, views FROM item_stats WHERE views > 0 UNION ALL
         SELECT item_id, 2, searches FROM item_stats WHERE searches > 0 ORDER BY 1, 2;",
    );
    (events != counts).then(|| format!("item_stats counts\n{counts} for the events\n{events}"))
}

/// Counts the kill -9 numbered `kill` as a fault, survived if `api`, started after it on the same
/// database, is ready.
async fn count_kill(row: &mut Row, api: &ServiceProcess, kill: u64) {
    let ready = status_of(http_client().get(http_url(api, "/readyz"))).await == Some(StatusCode::OK);
    let ready = row.check(ready, format!("ready again after kill -9 number {kill}"));
    row.fault(ready);
}

async fn crash_safety(card: &mut Scorecard) {
    const ROUNDS: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("crash.sqlite3");
    let row = card.row("crash (kill -9) x10");
    let mut tally = Tally::default();
    {
        let api = start_api(&database, "http://127.0.0.1:9", &[]);
        create_items(&api, 10).await;
    }
    for round in 0..ROUNDS {
        let api = start_api(&database, "http://127.0.0.1:9", &[]);
        if round > 0 {
            count_kill(row, &api, round).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        // Enough writers that the events are written in batches (group commit).
        let writers = spawn_writers(&api, 32, format!("r{round}"), stop.clone());
        // A pseudo-random moment in the load, different each round.
        tokio::time::sleep(Duration::from_millis(150 + (round * 7919) % 450)).await;
        drop(api); // SIGKILL, mid-write
        stop.store(true, Ordering::Relaxed);
        tally.add(join_writers(writers).await);
    }
    let (missing, doubled) = missing_and_doubled(&database, &tally.acknowledged);
    row.operations += tally.attempts;
    row.acknowledged_lost += missing;
    row.check(doubled.is_none(), doubled.unwrap_or_default());
    let acknowledged = tally.acknowledged.len();
    row.check(acknowledged > 100, format!("the load was real: {acknowledged} acknowledged"));
    let integrity = sqlite3(&database, "PRAGMA integrity_check;");
    row.check(integrity.trim() == "ok", format!("integrity_check says {integrity:?}"));
    let disagree = counts_disagree(&database);
    row.check(disagree.is_none(), disagree.unwrap_or_default());
    count_kill(row, &start_api(&database, "http://127.0.0.1:9", &[]), ROUNDS).await;
}

async fn downstream_faults(card: &mut Scorecard) {
    let embedding = start_embedding(&[]);
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("down.sqlite3"), &embedding.url(), &["--embedding-timeout", "2s"]);
    let client = http_client();
    let map_ready = async || (map_status(&client, &api).await == Some(StatusCode::OK)).then_some(());
    eventually("the map became ready", Duration::from_secs(120), Duration::from_millis(50), map_ready).await;
    let row = card.row("downstream faults");

    // Frozen (SIGSTOP): an answer within the call timeout, not a hang.
    embedding.signal("STOP");
    // `kill` returns once the signal is queued; wait until every thread has really stopped.
    let stat = format!("/proc/{}/stat", embedding.pid());
    eventually("the embedding service stopped", Duration::from_secs(10), Duration::from_millis(5), async || {
        std::fs::read_to_string(&stat).unwrap().split(") ").nth(1).unwrap().starts_with('T').then_some(())
    })
    .await;
    let started = Instant::now();
    let frozen = map_status(&client, &api).await;
    let waited = started.elapsed();
    row.operations += 1;
    let mut survived =
        row.check(frozen == Some(StatusCode::SERVICE_UNAVAILABLE), format!("503 while frozen, got {frozen:?}"));
    survived &= row
        .check(waited < Duration::from_secs(4), format!("answered within the 2 s deadline plus margin ({waited:?})"));
    embedding.signal("CONT");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let thawed = map_status(&client, &api).await;
    survived &= row.check(thawed == Some(StatusCode::OK), format!("serves again after SIGCONT, got {thawed:?}"));
    row.fault(survived);

    // Killed, then back on the same port.
    let port = embedding.address.port();
    drop(embedding);
    let mut unavailable = 0;
    for _ in 0..20 {
        row.operations += 1;
        unavailable += usize::from(map_status(&client, &api).await == Some(StatusCode::SERVICE_UNAVAILABLE));
    }
    let mut survived =
        row.check(unavailable == 20, format!("503 while the embedding service is gone: {unavailable} of 20"));
    let listen = format!("127.0.0.1:{port}");
    let _back = start_embedding(&["--listen", &listen]);
    let recovered = within(Duration::from_secs(120), Duration::from_millis(50), async || {
        row.operations += 1;
        (map_status(&client, &api).await == Some(StatusCode::OK)).then_some(())
    })
    .await;
    survived &= row.check(recovered.is_some(), "recovered once the embedding service was back");
    row.fault(survived);

    // An embedding service whose map FAILED: the failure, promptly, with its reason.
    let failed = start_embedding(&["--corpus", "/nonexistent/corpus.npy"]);
    let api_failed = start_api(&dir.path().join("failed.sqlite3"), &failed.url(), &[]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = client.get(http_url(&api_failed, "/api/admin/embedding-map")).bearer_auth(ADMIN_TOKEN).send().await;
    row.operations += 1;
    let (status, body) = match response {
        Ok(response) => (Some(response.status()), response.json().await.unwrap_or(Value::Null)),
        Err(_) => (None, Value::Null),
    };
    let reported = status == Some(StatusCode::INTERNAL_SERVER_ERROR)
        && body["status"] == "failed"
        && body["error"]["code"] == "map_failed"
        && body["error"]["message"].as_str().is_some_and(|message| message.contains("does not exist"));
    let survived =
        row.check(reported, format!("a failed map: 500, map_failed, \"does not exist\"; got {status:?} {body}"));
    row.fault(survived);
    // No connection was leaked by all of that: the api-service still answers and is ready.
    let ready = status_of(client.get(http_url(&api, "/readyz"))).await;
    row.check(ready == Some(StatusCode::OK), format!("still ready after the downstream faults, got {ready:?}"));
}

async fn deadlines_and_locks(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("deadline.sqlite3");
    let api = start_api(&database, "http://127.0.0.1:9", &[]);
    create_items(&api, 10).await;
    let row = card.row("deadlines and locks");
    let no_change = "UPDATE items SET name = name WHERE id = 0;";

    // A client deadline shorter than the wait for the lock.
    let mut holder = hold_write_lock(&database, 2, no_change);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The deadline travels as grpc-timeout, as every client sends it; the server must enforce it
    // and say DEADLINE_EXCEEDED. (Sent as gRPC-web, so no client-side timer races the server's.)
    let message =
        pb::RecordEventRequest { item_id: 1, kind: pb::EventKind::View.into(), client_key: "deadline".into() };
    let response = grpc_web_request(&api, GRPC, "/embeddingmap.api.v1.EventService/RecordEvent")
        .header("grpc-timeout", "200m")
        .body(grpc_web_frame(&prost::Message::encode_to_vec(&message)))
        .send()
        .await;
    row.operations += 1;
    let status = response.as_ref().ok().and_then(grpc_status);
    let deadline_exceeded = status == Some(Code::DeadlineExceeded as u16);
    let mut survived =
        row.check(deadline_exceeded, format!("grpc-status 4 past the deadline, got {status:?}: {response:?}"));
    let mut events = EventServiceClient::new(grpc_channel(&api).await);
    holder.wait().unwrap();
    // Nothing leaked: the next write succeeds at once.
    let started = Instant::now();
    let mut refused = Vec::new();
    for n in 0..20 {
        let request =
            pb::RecordEventRequest { item_id: 1, kind: pb::EventKind::View.into(), client_key: format!("after-{n}") };
        if let Err(error) = events.record_event(request).await {
            refused.push(error);
        }
        row.operations += 1;
    }
    let took = started.elapsed();
    survived &= row.check(refused.is_empty(), format!("writes after a cancelled one succeed, refused: {refused:?}"));
    survived &= row
        .check(took < Duration::from_secs(2), format!("no connection left waiting on a dead transaction ({took:?})"));
    row.fault(survived);

    // A lock held past busy_timeout: retryable errors, then recovery by itself.
    let mut holder = hold_write_lock(&database, 7, no_change);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let post_event =
        || http_client().post(http_url(&api, "/api/events")).json(&json!({ "item_id": 1, "kind": "view" })).send();
    let busy = post_event().await;
    row.operations += 1;
    let retryable = busy
        .as_ref()
        .is_ok_and(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE && r.headers().contains_key("retry-after"));
    let mut survived = row.check(retryable, format!("503 with Retry-After while locked, got {busy:?}"));
    holder.wait().unwrap();
    let after = post_event().await;
    survived &= row.check(
        after.as_ref().is_ok_and(|r| r.status() == StatusCode::CREATED),
        format!("201 once unlocked, got {after:?}"),
    );
    row.fault(survived);

    // A long read transaction during writes: the WAL is bounded again once it ends.
    let wal = database.with_extension("sqlite3-wal");
    let mut reader = sqlite3_script(&database, "BEGIN; SELECT count(*) FROM events;\n.shell sleep 3\nCOMMIT;");
    let client = http_client();
    let write_burst = |prefix: &'static str| {
        let (client, url) = (client.clone(), http_url(&api, "/api/events"));
        async move {
            let mut refused = 0;
            for n in 0..1500 {
                let body = json!({ "item_id": n % 10, "kind": "search", "client_key": format!("{prefix}{n}") });
                refused +=
                    usize::from(!client.post(&url).json(&body).send().await.is_ok_and(|r| r.status().is_success()));
            }
            refused
        }
    };
    let mut refused = write_burst("held-").await;
    reader.wait().unwrap();
    let during = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    refused += write_burst("free-").await;
    let after = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    row.operations += 3000;
    let mut survived =
        row.check(refused == 0, format!("every write of the bursts succeeds, {refused} of 3000 did not"));
    // Once the reader is gone a checkpoint completes, and the WAL is cut back to its size limit.
    survived &= row.check(during > (8 << 20), format!("the held reader let the WAL grow ({during} bytes)"));
    survived &= row.check(after <= (8 << 20), format!("WAL still {after} bytes after the reader ended (was {during})"));
    row.fault(survived);
}

/// An HTTP answer's status code, or why none came.
fn http_status(sent: reqwest::Result<reqwest::Response>) -> Result<u16, String> {
    sent.map(|response| response.status().as_u16()).map_err(|error| error.to_string())
}

async fn hostile_input(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("hostile.sqlite3"), "http://127.0.0.1:9", &["--max-body-bytes", "65536"]);
    create_items(&api, 3).await;
    // A fresh connection per request: a refused upload closes its connection, which must not
    // be mistaken for the next request's answer.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(30)).build().unwrap();
    let row = card.row("hostile input");
    let mut tried = |answer: Result<u16, String>, expected: &[u16], what: &str| {
        let clear = answer.as_ref().is_ok_and(|status| expected.contains(status));
        row.bad_input(clear, format!("{what}: got {answer:?}, expected one of {expected:?}"));
    };

    let items = http_url(&api, "/api/admin/items");
    // An oversized body is answered 413 as soon as the limit is passed, and the connection closed;
    // a client still uploading may see only the close. Either way the body was refused.
    let post = |body: Vec<u8>, content_type: &'static str| {
        let request = client.post(&items).bearer_auth(ADMIN_TOKEN).header("content-type", content_type).body(body);
        async move {
            match request.send().await {
                Err(error) if error.is_request() => Ok(413),
                sent => http_status(sent),
            }
        }
    };
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    tried(post(nested.into_bytes(), "application/json").await, &[400, 413], "deeply nested JSON");
    let deep_object = format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000));
    tried(post(deep_object.into_bytes(), "application/json").await, &[400], "deeply nested object");
    let huge_name = json!({ "id": 5, "name": "x".repeat(60_000) }).to_string();
    tried(post(huge_name.into_bytes(), "application/json").await, &[400], "huge string within the body limit");
    tried(post(vec![b'{'; 200_000], "application/json").await, &[413], "body over the limit");
    tried(post(b"{\"id\": 5, \"name\": \"\xff\xfe\"}".to_vec(), "application/json").await, &[400], "invalid UTF-8");
    tried(post(b"{\"id\": NaN, \"name\": \"n\"}".to_vec(), "application/json").await, &[400], "NaN");
    tried(post(b"{\"id\": 1e400, \"name\": \"n\"}".to_vec(), "application/json").await, &[400], "infinite number");
    tried(
        post(b"{\"id\": 9223372036854775808, \"name\": \"n\"}".to_vec(), "application/json").await,
        &[400],
        "id out of range",
    );
    let path_id =
        client.get(http_url(&api, "/api/admin/items/99999999999999999999")).bearer_auth(ADMIN_TOKEN).send().await;
    tried(http_status(path_id), &[400], "path id out of range");
    let event = client
        .post(http_url(&api, "/api/events"))
        .json(&json!({ "item_id": -1, "kind": "view", "client_key": "k\u{0}" }))
        .send()
        .await;
    tried(http_status(event), &[400], "NUL in a client key");

    // Header flood: too many or too large headers are refused by the HTTP layer.
    let mut flood = client.get(http_url(&api, "/livez"));
    for n in 0..2000 {
        flood = flood.header(format!("x-flood-{n}"), "y".repeat(64));
    }
    let flood_status = flood.send().await.map(|r| r.status().as_u16()).unwrap_or(431);
    tried(Ok(flood_status), &[431, 400], "header flood");

    // gRPC-web: garbage frames, garbage protobuf, unknown methods, oversized messages. An answer
    // is its HTTP status and grpc-status header.
    let grpc_web = |path: &'static str, body: Vec<u8>| {
        let request = grpc_web_request(&api, GRPC, path).bearer_auth(ADMIN_TOKEN).body(body);
        async move {
            let response = request.send().await.map_err(|error| error.to_string())?;
            Ok::<_, String>((response.status().as_u16(), grpc_status(&response)))
        }
    };
    let garbage_frame = grpc_web("/embeddingmap.api.v1.ItemService/GetItem", vec![7, 1, 2]).await;
    let clear =
        matches!(garbage_frame, Ok((http, grpc)) if (400..500).contains(&http) || grpc.is_some_and(|code| code != 0));
    row.bad_input(clear, format!("garbage frame: got {garbage_frame:?}, expected a 4xx or a gRPC error"));
    let mut tried_grpc = |answer: Result<(u16, Option<u16>), String>, expected: Code, what: &str| {
        let clear = matches!(answer, Ok((_, Some(code))) if code == expected as u16);
        row.bad_input(clear, format!("{what}: got {answer:?}, expected grpc-status {}", expected as u16));
    };
    let garbage_proto = grpc_web("/embeddingmap.api.v1.ItemService/GetItem", grpc_web_frame(&[0xff; 6])).await;
    tried_grpc(garbage_proto, Code::InvalidArgument, "garbage protobuf");
    let unknown = grpc_web("/embeddingmap.api.v1.ItemService/DropTables", grpc_web_frame(&[])).await;
    tried_grpc(unknown, Code::Unimplemented, "unknown method");
    let big =
        pb::ImportItemsRequest { items: vec![pb::NewItem { id: 1, name: "x".repeat(100_000), ..Default::default() }] };
    let mut items_client = ItemServiceClient::new(grpc_channel(&api).await);
    let answer = items_client.import_items(admin(big)).await.map(drop);
    let clear = matches!(&answer, Err(error) if error.code() == Code::ResourceExhausted);
    row.bad_input(clear, format!("oversized gRPC message: got {answer:?}, expected RESOURCE_EXHAUSTED"));

    // After all of it, the process still serves.
    let live = status_of(client.get(http_url(&api, "/livez"))).await;
    row.check(live == Some(StatusCode::OK), format!("still serves after the hostile input, /livez got {live:?}"));
    row.operations += row.bad_inputs;
    row.check(!api.log().contains(ADMIN_TOKEN), "the token never reaches the log");
}

async fn shutdown_under_load(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("drain.sqlite3");
    let mut api = start_api(&database, "http://127.0.0.1:9", &["--readiness-drain", "1s"]);
    create_items(&api, 10).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Enough writers that events are queued for the writer when SIGTERM comes.
    let writers = spawn_writers(&api, 32, "drain".into(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let readiness = status_of(http_client().get(http_url(&api, "/readyz"))).await;
    let exit = api.wait_exit(Duration::from_secs(15));
    stop.store(true, Ordering::Relaxed);
    let tally = join_writers(writers).await;
    let (lost, doubled) = missing_and_doubled(&database, &tally.acknowledged);
    let row = card.row("shutdown under load");
    row.operations += tally.attempts;
    row.acknowledged_lost += lost;
    row.check(doubled.is_none(), doubled.unwrap_or_default());
    let readiness_dropped = readiness == Some(StatusCode::SERVICE_UNAVAILABLE);
    let mut survived = row.check(readiness_dropped, format!("readiness drops first, /readyz got {readiness:?}"));
    survived &= row.check(exit.is_some(), "exits within the grace period");
    if let Some((status, _)) = exit.filter(|(status, _)| !status.success()) {
        row.crashes += 1;
        row.problems.push(format!("exited after SIGTERM with {status}"));
        survived = false;
    }
    row.fault(survived && lost == 0);
}

/// System calls that create, change or remove a file, traced with `strace`.
const FILE_WRITES: &str = "trace=open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,truncate,link,linkat,symlink,symlinkat";

/// Starts `binary` under `strace -f`, recording its file-changing calls in `trace`.
fn start_traced(
    binary_name: &str,
    trace: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    labels: &[&str],
) -> ServiceProcess {
    let program = binary(binary_name);
    let mut traced =
        vec!["-f", "-qq", "-e", FILE_WRITES, "-o", trace.to_str().unwrap(), "--", program.to_str().unwrap()];
    traced.extend_from_slice(args);
    ServiceProcess::start_listening(std::path::Path::new("strace"), &traced, env, labels)
}

/// SIGTERM to the process `strace` runs (its only child), then waits for both to end.
fn stop_traced(mut tracer: ServiceProcess) {
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", tracer.pid())).unwrap();
    let traced = children.split_whitespace().next().expect("a traced child");
    assert!(Command::new("kill").args(["-TERM", traced]).status().unwrap().success());
    tracer.wait_exit(Duration::from_secs(15)).expect("exits after SIGTERM");
}

/// Paths a trace shows created, opened for writing, renamed, linked or removed. Calls another
/// thread interrupted (`<unfinished ...>`) count whatever their result: an attempt is enough.
fn written_paths(trace: &str) -> Vec<String> {
    let write_flags = ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"];
    trace
        .lines()
        .filter(|line| !line.contains(" = -1 "))
        .filter(|line| {
            let opens = line.split_whitespace().nth(1).is_some_and(|call| call.starts_with("open"));
            !opens || write_flags.iter().any(|flag| line.contains(flag))
        })
        // Every quoted argument of these calls is a path (rename and link have two).
        .flat_map(|line| line.split('"').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

/// Both services run a full cycle (boot, map, writes, shutdown) under `strace`; every file they
/// change must sit in the api-service's data directory.
async fn file_writes(card: &mut Scorecard) {
    let sandbox = tempfile::tempdir().unwrap();
    let (data, home, tmp) = (sandbox.path().join("data"), sandbox.path().join("home"), sandbox.path().join("tmp"));
    for dir in [&data, &home, &tmp] {
        std::fs::create_dir(dir).unwrap();
    }
    let env = [("HOME", home.to_str().unwrap()), ("TMPDIR", tmp.to_str().unwrap()), ("API_ADMIN_TOKEN", ADMIN_TOKEN)];
    let embedding_trace = sandbox.path().join("embedding.trace");
    // The embedding service's map store, the one place it may write.
    let maps = data.join("maps");
    let embedding = start_traced(
        "embedding-service",
        &embedding_trace,
        &["--listen", "127.0.0.1:0", "--map-store", maps.to_str().unwrap()],
        &env,
        &[EMBEDDING],
    );
    let database = data.join("api.sqlite3");
    let api_trace = sandbox.path().join("api.trace");
    let embedding_url = embedding.url();
    let api = start_traced("api-service", &api_trace, &api_args(&database, &embedding_url), &env, &[GRPC, HTTP]);
    create_items(&api, 20).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&api, 2, "sandbox".into(), stop.clone());
    let client = http_client();
    let map_ready = async || (map_status(&client, &api).await == Some(StatusCode::OK)).then_some(());
    eventually("the map became ready under strace", Duration::from_secs(60), Duration::from_millis(100), map_ready)
        .await;
    stop.store(true, Ordering::Relaxed);
    let operations = join_writers(writers).await.attempts;
    stop_traced(api);
    stop_traced(embedding);

    let mut written: Vec<String> = [&embedding_trace, &api_trace]
        .into_iter()
        .flat_map(|trace| written_paths(&std::fs::read_to_string(trace).unwrap()))
        .collect();
    written.sort();
    written.dedup();
    let outside: Vec<&String> =
        written.iter().filter(|path| !path.starts_with(data.to_str().unwrap()) && *path != "/dev/null").collect();
    let row = card.row("file writes (strace)");
    row.operations += operations;
    row.writes_outside_data += outside.len();
    if !outside.is_empty() {
        row.problems.push(format!("files changed outside the data directory: {outside:?}"));
    }
    let seen = written.iter().any(|path| path.starts_with(data.to_str().unwrap()));
    row.check(seen, format!("the trace sees the database writes: {written:?}"));
    let stored = written.iter().any(|path| path.starts_with(maps.to_str().unwrap()));
    row.check(stored, format!("the trace sees the map store's writes: {written:?}"));
    println!("files changed by both services: {written:?}");
}

/// The sections run one at a time, whichever test threads cargo gives them.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the section `name` with a scorecard of its own; keeps its rows and gathers the scorecard
/// of every section kept so far (the test command clears them before a run); fails if it counted
/// a regression.
async fn section(name: &str, run: impl AsyncFnOnce(&mut Scorecard)) {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Each section's rows are kept in artifacts/scorecard/, the scorecard gathered beside them.
    let kept = end_to_end_tests::artifacts_dir().join("scorecard");
    std::fs::create_dir_all(&kept).unwrap();
    // A section that fails before its end must not leave an earlier run's clean rows behind.
    let _ = std::fs::remove_file(kept.join(format!("{name}.json")));
    let mut card = Scorecard::default();
    run(&mut card).await;
    std::fs::write(kept.join(format!("{name}.json")), serde_json::to_vec(&card).unwrap()).unwrap();
    let mut gathered = Scorecard::default();
    for entry in std::fs::read_dir(&kept).unwrap() {
        let rows = std::fs::read(entry.unwrap().path()).unwrap();
        gathered.merge(serde_json::from_slice(&rows).unwrap());
    }
    std::fs::write(end_to_end_tests::artifacts_dir().join("scorecard.txt"), gathered.render()).unwrap();
    let scorecard = card.render();
    println!("\n{scorecard}");
    // Every regression shows as a count in the scorecard; any count above zero fails here.
    let regressions: Vec<(&str, usize)> = card.regressions().into_iter().filter(|&(_, count)| count > 0).collect();
    assert!(regressions.is_empty(), "{regressions:?}\n{scorecard}");
}

macro_rules! sections {
    ($($name:ident => $($run:ident)::+),* $(,)?) => {
        mod sections {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    section(stringify!($name), async |card: &mut Scorecard| super::$($run)::+(card).await).await;
                }
            )*
        }
    };
}

sections! {
    crash_safety => crash_safety,
    downstream_faults => downstream_faults,
    deadlines_and_locks => deadlines_and_locks,
    hostile_input => hostile_input,
    unauthenticated_uploads => connections::unauthenticated_uploads,
    slow_and_idle_connections => connections::slow_and_idle_connections,
    unread_map_calls => connections::unread_map_calls,
    event_flood => connections::event_flood,
    rapid_reset => connections::rapid_reset,
    locked_past_busy_timeout => group_commit::locked_past_busy_timeout,
    full_queue => group_commit::full_queue,
    imports_beside_events => imports::imports_beside_events,
    bad_item_input => imports::bad_item_input,
    two_file_update => map_files::two_file_update,
    fifo_corpus => map_files::fifo_corpus,
    oversized_npy_header => map_files::oversized_npy_header,
    planted_stored_maps => map_files::planted_stored_maps,
    reused_keys => replays::reused_keys,
    etags_across_restarts => replays::etags_across_restarts,
    shutdown_under_load => shutdown_under_load,
    file_writes => file_writes,
}
