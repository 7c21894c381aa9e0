//! Figures for the api-service, measured against the real binaries (build with --release):
//! event writes per second and their p50/p99 latency at 1, 8, 64 and 256 concurrent HTTP clients
//! and 64 gRPC clients, beside the service's event writer driven in process and the same statements
//! run by the sqlite3 shell one transaction each (the ceiling), and the latency of the READY map
//! endpoint for a 10k-point map; then the same 64 HTTP clients spread over 1, 2 and 3 replicas
//! on one PostgreSQL database (a server of its own, started here; skipped where none is
//! installed).
//!
//!     cargo run --release -p end-to-end-tests --bin api-bench [-- --postgres-only]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use embeddingmap_proto::api::{self as pb, event_service_client::EventServiceClient};
use end_to_end_tests::{ServiceProcess, api::*, corpus_files, start_embedding};
use serde_json::json;

/// Events written in each load run, split evenly over its clients.
const EVENTS_PER_RUN: usize = 12_800;
const MAP_POINTS: usize = 10_000;
const MAP_REQUESTS: usize = 300;

#[tokio::main]
async fn main() {
    if std::env::args().any(|arg| arg == "--postgres-only") {
        return postgres_replicas().await;
    }
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

    // Event writes: HTTP at several client counts, and gRPC, each client writing in turn.
    let mut loads = Vec::new();
    for (transport, clients) in [
        (Transport::Http, 1),
        (Transport::Http, 8),
        (Transport::Http, 64),
        (Transport::Http, 256),
        (Transport::Grpc, 64),
    ] {
        loads.push(event_load(std::slice::from_ref(&api), transport, clients).await);
    }
    let events = EVENTS_PER_RUN as f64;

    // The service's own writer in process: 64 tasks, no network, no HTTP.
    let ceiling = api_service::db::Target::Sqlite(dir.path().join("ceiling.sqlite3"));
    let pool = api_service::db::open(&ceiling, 1, api_service::db::Checkpoints::Sqlite).await.unwrap();
    sqlx::query(
        "INSERT INTO items (id, name, category, attributes, created_at, updated_at) VALUES (1, 'one', '', '{}', 0, 0)",
    )
    .execute(pool.as_sqlite().unwrap())
    .await
    .unwrap();
    // Batches as the service's flags (and their API_* variables) set them.
    let config = <api_service::config::Config as clap::Parser>::parse_from(["api-service", "--admin-token", "bench"]);
    let (writer, writer_task) = api_service::event_writer::EventWriter::start(pool.clone(), config.event_batches());
    let started = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let writer = writer.clone();
            tokio::spawn(async move {
                for n in (task..EVENTS_PER_RUN).step_by(64) {
                    let event = api_service::events::NewEvent {
                        item_id: 1,
                        kind: api_service::events::EventKind::View,
                        client_key: Some(n.to_string()),
                    };
                    writer.record(event).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let writer_seconds = started.elapsed().as_secs_f64();
    writer_task.drain(Duration::from_secs(5)).await;
    pool.close().await;

    // The ceiling: the sqlite3 shell running the statements the writer runs for one event, one
    // transaction per event.
    let plain = dir.path().join("plain.sqlite3");
    std::fs::copy(dir.path().join("ceiling.sqlite3"), &plain).unwrap();
    let mut script = String::from(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;\n",
    );
    for n in 0..EVENTS_PER_RUN {
        script.push_str(&format!(
            "BEGIN IMMEDIATE; \
             INSERT INTO events (item_id, kind, client_key, created_at) VALUES (1, 1, 'p{n}', 0) \
             ON CONFLICT(client_key) DO NOTHING RETURNING id; \
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

    println!("api-service benchmark (2-core machine, release build; the load generator shares the cores)");
    println!("  event writes                           events/s   p50 ms   p99 ms   / shell ceiling");
    let ceiling = events / plain_seconds;
    for load in &loads {
        println!(
            "  {:<4} {:>3} clients                       {:>8.0} {:>8.2} {:>8.2} {:>10.2}",
            load.transport.name(),
            load.clients,
            load.per_second,
            load.p50_ms,
            load.p99_ms,
            load.per_second / ceiling
        );
    }
    println!(
        "  the event writer in process, 64 tasks: {:>8.0} events/s ({events} events in {writer_seconds:.2} s)",
        events / writer_seconds
    );
    println!(
        "  its statements, sqlite3 shell, 1 each: {:>8.0} events/s ({events} events in {plain_seconds:.2} s)",
        ceiling
    );
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
    postgres_replicas().await;
}

/// 64 HTTP clients writing events to 1, 2 and 3 api-service replicas on one PostgreSQL database
/// (client `i` to replica `i % n`), each replica count on a fresh database.
async fn postgres_replicas() {
    println!(
        "  event writes on PostgreSQL, 64 HTTP clients in all   events/s   p50 ms   p99 ms   CPU: postgres / replicas / load generator (cores)"
    );
    for replicas in 1..=3 {
        let Some(server) = end_to_end_tests::postgres::Postgres::start() else { return };
        let url = server.create_database("bench");
        let apis: Vec<Arc<ServiceProcess>> =
            (0..replicas).map(|_| Arc::new(start_api(url.as_str(), "http://127.0.0.1:9", &[]))).collect();
        let items: Vec<_> = (0..MAP_POINTS).map(|id| json!({ "id": id, "name": format!("item {id}") })).collect();
        let response = admin_post(&apis[0], "/api/admin/items/import", &json!({ "items": items })).await;
        assert!(response.status().is_success());
        let before = [cpu_seconds("postgres"), cpu_seconds("api-service"), own_cpu_seconds()];
        let started = Instant::now();
        let load = event_load(&apis, Transport::Http, 64).await;
        let seconds = started.elapsed().as_secs_f64();
        let after = [cpu_seconds("postgres"), cpu_seconds("api-service"), own_cpu_seconds()];
        let cores: Vec<String> = (0..3).map(|i| format!("{:.2}", (after[i] - before[i]) / seconds)).collect();
        println!(
            "  {replicas} replica{}                                         {:>8.0} {:>8.2} {:>8.2}   {}",
            if replicas == 1 { " " } else { "s" },
            load.per_second,
            load.p50_ms,
            load.p99_ms,
            cores.join(" / ")
        );
    }
}

#[derive(Clone, Copy)]
enum Transport {
    Http,
    Grpc,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Http => "HTTP",
            Transport::Grpc => "gRPC",
        }
    }
}

struct Load {
    transport: Transport,
    clients: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `EVENTS_PER_RUN` events from `clients` concurrent clients (HTTP clients share a connection
/// pool; each gRPC client has its own connection), each waiting for its answer before the next;
/// client `i` writes to `apis[i % apis.len()]`.
async fn event_load(apis: &[Arc<ServiceProcess>], transport: Transport, clients: usize) -> Load {
    let per_client = EVENTS_PER_RUN / clients;
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..clients {
        let (api, http) = (apis[writer % apis.len()].clone(), http.clone());
        let mut grpc = match transport {
            Transport::Grpc => Some(EventServiceClient::new(grpc_channel(&api).await)),
            Transport::Http => None,
        };
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for n in 0..per_client {
                let (item_id, key) =
                    ((writer * 131 + n) % MAP_POINTS, format!("{}-{clients}-{writer}-{n}", transport.name()));
                let sent = Instant::now();
                match grpc.as_mut() {
                    Some(grpc) => {
                        let request = pb::RecordEventRequest {
                            item_id: item_id as i64,
                            kind: pb::EventKind::View.into(),
                            client_key: key,
                        };
                        grpc.record_event(request).await.unwrap();
                    }
                    None => {
                        let body = json!({ "item_id": item_id, "kind": "view", "client_key": key });
                        let response = http.post(http_url(&api, "/api/events")).json(&body).send().await.unwrap();
                        assert_eq!(response.status(), 201);
                    }
                }
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(EVENTS_PER_RUN);
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let seconds = started.elapsed().as_secs_f64();
    Load {
        transport,
        clients,
        per_second: latencies.len() as f64 / seconds,
        p50_ms: percentile(&mut latencies, 0.5),
        p99_ms: percentile(&mut latencies, 0.99),
    }
}

/// CPU seconds (user and system) used so far by every process named `name` (`/proc/PID/comm`),
/// to say where a load's time goes on this machine's two cores.
fn cpu_seconds(name: &str) -> f64 {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_str().is_some_and(|pid| pid.chars().all(|c| c.is_ascii_digit())))
        .filter(|entry| std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|comm| comm.trim() == name))
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .map(|stat| stat_cpu_seconds(&stat))
        .sum()
}

fn own_cpu_seconds() -> f64 {
    stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").unwrap())
}

/// utime + stime of a `/proc/PID/stat` line, in seconds (clock ticks of 1/100 s).
fn stat_cpu_seconds(stat: &str) -> f64 {
    // Fields after the command name (which may hold spaces, so split after its closing paren).
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}
