//! Figures for the api-service, measured against the real binaries (build with --release):
//! event writes per second from 64 concurrent HTTP clients beside a plain in-process SQLite insert
//! loop with the same pragmas (the ceiling), and the latency of the READY map endpoint for a
//! 10k-point map.
//!
//!     cargo run --release -p end-to-end-tests --bin api-bench

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use end_to_end_tests::{api::*, corpus_files, start_embedding};
use serde_json::json;

const CLIENTS: usize = 64;
const EVENTS_PER_CLIENT: usize = 300;
const MAP_POINTS: usize = 10_000;
const MAP_REQUESTS: usize = 300;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_files::write_matrix(
        &dir.path().join("map.npy"),
        MAP_POINTS,
        32,
        &corpus_files::clustered(50, MAP_POINTS / 50, 32),
    );
    let embedding = start_embedding(&["--corpus", corpus.to_str().unwrap()]);
    let api = Arc::new(start_api(&dir.path().join("bench.sqlite3"), &embedding.url(), &[]));
    let client = http_client();
    let items: Vec<_> = (0..MAP_POINTS)
        .map(|id| json!({ "id": id, "name": format!("item {id}"), "category": (id % 50).to_string() }))
        .collect();
    let response = admin_post(&api, "/api/admin/items/import", &json!({ "items": items })).await;
    assert!(response.status().is_success());

    // Event writes over HTTP.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..CLIENTS {
        let (api, client) = (api.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..EVENTS_PER_CLIENT {
                let body = json!({ "item_id": (writer * 131 + n) % MAP_POINTS, "kind": "view", "client_key": format!("{writer}-{n}") });
                let response = client.post(http_url(&api, "/api/events")).json(&body).send().await.unwrap();
                assert_eq!(response.status(), 201);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let http_seconds = started.elapsed().as_secs_f64();
    let events = (CLIENTS * EVENTS_PER_CLIENT) as f64;

    // The ceiling: the same transaction, in process, one connection, no network.
    let pool = api_service::db::open(&dir.path().join("ceiling.sqlite3"), 1).await.unwrap();
    sqlx::query(
        "INSERT INTO items (id, name, category, attributes, created_at, updated_at) VALUES (1, 'one', '', '{}', 0, 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let started = Instant::now();
    for n in 0..CLIENTS * EVENTS_PER_CLIENT {
        let event = api_service::events::NewEvent {
            item_id: 1,
            kind: api_service::events::EventKind::View,
            client_key: Some(n.to_string()),
        };
        api_service::events::record(&pool, &event).await.unwrap();
    }
    let ceiling_seconds = started.elapsed().as_secs_f64();

    // The plain ceiling: the sqlite3 shell running the same statements, one transaction each.
    let plain = dir.path().join("plain.sqlite3");
    std::fs::copy(dir.path().join("ceiling.sqlite3"), &plain).unwrap();
    let mut script = String::from(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;\n",
    );
    for n in 0..CLIENTS * EVENTS_PER_CLIENT {
        script.push_str(&format!(
            "BEGIN IMMEDIATE; SELECT id FROM events WHERE client_key = 'p{n}'; SELECT 1 FROM items WHERE id = 1; \
             INSERT INTO events (item_id, kind, client_key, created_at) VALUES (1, 1, 'p{n}', 0); \
             INSERT INTO item_stats (item_id, views, searches) VALUES (1, 1, 0) ON CONFLICT(item_id) DO UPDATE SET views = views + 1; COMMIT;\n"
        ));
    }
    let script_path = dir.path().join("plain.sql");
    std::fs::write(&script_path, script).unwrap();
    let started = Instant::now();
    let status = std::process::Command::new("sqlite3")
        .arg(&plain)
        .stdin(std::fs::File::open(&script_path).unwrap())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let plain_seconds = started.elapsed().as_secs_f64();

    // The READY map endpoint.
    loop {
        let response =
            client.get(http_url(&api, "/api/admin/embedding-map")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        if response.status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut full = Vec::with_capacity(MAP_REQUESTS);
    let mut etag = String::new();
    let mut bytes = 0;
    for _ in 0..MAP_REQUESTS {
        let started = Instant::now();
        let response =
            client.get(http_url(&api, "/api/admin/embedding-map")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        etag = response.headers()["etag"].to_str().unwrap().to_owned();
        bytes = response.bytes().await.unwrap().len();
        full.push(started.elapsed());
    }
    let mut not_modified = Vec::with_capacity(MAP_REQUESTS);
    for _ in 0..MAP_REQUESTS {
        let started = Instant::now();
        let response = client
            .get(http_url(&api, "/api/admin/embedding-map"))
            .bearer_auth(ADMIN_TOKEN)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 304);
        not_modified.push(started.elapsed());
    }

    println!("api-service benchmark (2-core machine, release build)");
    println!(
        "  event writes, {CLIENTS} HTTP clients:   {:>8.0} events/s ({events} events in {http_seconds:.2} s)",
        events / http_seconds
    );
    println!(
        "  same transaction, sqlx, 1 connection:  {:>8.0} events/s ({events} events in {ceiling_seconds:.2} s)",
        events / ceiling_seconds
    );
    println!(
        "  same statements, sqlite3 shell:        {:>8.0} events/s ({events} events in {plain_seconds:.2} s)",
        events / plain_seconds
    );
    println!("  HTTP / sqlite3 shell (the ceiling):     {:>8.2}", plain_seconds / http_seconds);
    println!(
        "  READY map, {MAP_POINTS} points, {bytes} bytes: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut full, 0.5),
        percentile(&mut full, 0.99)
    );
    println!(
        "  READY map, If-None-Match (304):        p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut not_modified, 0.5),
        percentile(&mut not_modified, 0.99)
    );
}

fn percentile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}
