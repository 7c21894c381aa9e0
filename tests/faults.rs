//! Faults and hostile input against the real binaries, counted the way SQLite's and Jepsen's
//! checks count them: every write is acknowledged, failed or unknown, and at the end nothing
//! acknowledged may be missing or doubled. Ends by printing a scorecard.
//!
//! Sections run one after another in one test so the scorecard sees them all.

use std::{
    collections::{BTreeMap, HashSet},
    io::Write,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use embeddingmap_proto::api::{self as pb, event_service_client::EventServiceClient};
use end_to_end_tests::{ServiceProcess, api::*, binary};
use reqwest::StatusCode;
use serde_json::json;
use tonic::Code;

#[derive(Default)]
struct Row {
    operations: usize,
    faults: usize,
    survived: usize,
    bad_inputs: usize,
    clear_errors: usize,
    acknowledged_lost: usize,
    crashes: usize,
    writes_outside_data: usize,
}

#[derive(Default)]
struct Scorecard(BTreeMap<&'static str, Row>);

impl Scorecard {
    fn row(&mut self, area: &'static str) -> &mut Row {
        self.0.entry(area).or_default()
    }

    /// `field` summed over every area.
    fn total(&self, field: fn(&Row) -> usize) -> usize {
        self.0.values().map(field).sum()
    }

    fn render(&self) -> String {
        let mut text = format!(
            "fault and abuse scorecard\n{:<22} {:>10} {:>7} {:>9} {:>11} {:>12} {:>10} {:>8} {:>15}\n",
            "area", "operations", "faults", "survived", "bad inputs", "clear errors", "acked lost", "crashes", "outside writes"
        );
        for (area, r) in &self.0 {
            text += &format!(
                "{area:<22} {:>10} {:>7} {:>9} {:>11} {:>12} {:>10} {:>8} {:>15}\n",
                r.operations, r.faults, r.survived, r.bad_inputs, r.clear_errors, r.acknowledged_lost, r.crashes, r.writes_outside_data
            );
        }
        text += &format!(
            "acknowledged writes lost: {}; crashes: {}; files written outside the data directory: {}\n",
            self.total(|r| r.acknowledged_lost),
            self.total(|r| r.crashes),
            self.total(|r| r.writes_outside_data)
        );
        text
    }
}

fn sqlite3(database: &std::path::Path, sql: &str) -> String {
    let output = Command::new("sqlite3").arg(database).arg(sql).output().expect("sqlite3");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Holds SQLite's write lock from outside for `seconds`.
fn hold_write_lock(database: &std::path::Path, seconds: u32) -> std::process::Child {
    let mut holder = Command::new("sqlite3").arg(database).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut stdin = holder.stdin.take().unwrap();
    writeln!(stdin, "BEGIN IMMEDIATE; UPDATE items SET name = name WHERE id = 0;\n.shell sleep {seconds}\nCOMMIT;").unwrap();
    holder
}

async fn create_items(api: &ServiceProcess, count: usize) {
    let items: Vec<_> = (0..count).map(|id| json!({ "id": id, "name": format!("item {id}") })).collect();
    let response = http_client().post(http_url(api, "/api/admin/items/import")).bearer_auth(ADMIN_TOKEN).json(&json!({ "items": items })).send().await.unwrap();
    assert!(response.status().is_success());
}

/// Writers posting events with unique client keys until `stop`; returns the acknowledged keys.
fn spawn_writers(api: &ServiceProcess, writers: usize, prefix: String, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<(Vec<String>, usize)>> {
    (0..writers)
        .map(|writer| {
            let url = http_url(api, "/api/events");
            let (stop, prefix) = (stop.clone(), prefix.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                let (mut acknowledged, mut attempts) = (Vec::new(), 0);
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("{prefix}-w{writer}-{attempts}");
                    attempts += 1;
                    let body = json!({ "item_id": attempts % 10, "kind": "view", "client_key": key });
                    match client.post(&url).json(&body).send().await {
                        Ok(response) if response.status().is_success() => acknowledged.push(key),
                        _ => {} // failed or unknown: may or may not be stored, never acknowledged
                    }
                }
                (acknowledged, attempts)
            })
        })
        .collect()
}

async fn crash_safety(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("crash.sqlite3");
    let mut acknowledged = Vec::new();
    let mut attempts = 0;
    {
        let api = start_api(&database, "http://127.0.0.1:9", &[]);
        create_items(&api, 10).await;
    }
    for round in 0..10u64 {
        let api = start_api(&database, "http://127.0.0.1:9", &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let writers = spawn_writers(&api, 8, format!("r{round}"), stop.clone());
        // A pseudo-random moment in the load, different each round.
        tokio::time::sleep(Duration::from_millis(150 + (round * 7919) % 450)).await;
        drop(api); // SIGKILL, mid-write
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            let (keys, tried) = writer.await.unwrap();
            acknowledged.extend(keys);
            attempts += tried;
        }
    }
    let stored = sqlite3(&database, "SELECT client_key FROM events;");
    let stored: Vec<&str> = stored.lines().collect();
    let unique: HashSet<&str> = stored.iter().copied().collect();
    let lost = acknowledged.iter().filter(|key| !unique.contains(key.as_str())).count();
    let row = card.row("crash (kill -9) x10");
    row.operations += attempts;
    row.faults += 10;
    row.survived += 10;
    row.acknowledged_lost += lost;
    assert_eq!(lost, 0, "acknowledged writes lost after kill -9");
    assert_eq!(unique.len(), stored.len(), "no event stored twice");
    assert!(acknowledged.len() > 100, "the load was real: {} acknowledged", acknowledged.len());
    assert_eq!(sqlite3(&database, "PRAGMA integrity_check;").trim(), "ok");
    // The counts kept beside the events agree with them.
    assert_eq!(sqlite3(&database, "SELECT sum(views) FROM item_stats;").trim(), stored.len().to_string());
}

async fn downstream_faults(card: &mut Scorecard) {
    let embedding = ServiceProcess::start_listening(&binary("embedding-service"), &["--listen", "127.0.0.1:0"], &[], &["embedding-service"]);
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("down.sqlite3"), &embedding.url(), &["--embedding-timeout", "2s"]);
    let client = http_client();
    let get_map = || client.get(http_url(&api, "/api/admin/embedding-map")).bearer_auth(ADMIN_TOKEN).send();
    let started = Instant::now();
    while get_map().await.unwrap().status() != StatusCode::OK {
        assert!(started.elapsed() < Duration::from_secs(120));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = card.row("downstream faults");

    // Frozen (SIGSTOP): an answer within the call timeout, not a hang.
    embedding.signal("STOP");
    // `kill` returns once the signal is queued; wait until every thread has really stopped.
    while !std::fs::read_to_string(format!("/proc/{}/stat", embedding.pid())).unwrap().split(") ").nth(1).unwrap().starts_with('T') {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    row.faults += 1;
    let started = Instant::now();
    let frozen = get_map().await.unwrap();
    let waited = started.elapsed();
    row.operations += 1;
    assert_eq!(frozen.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(waited < Duration::from_secs(4), "answered within the 2 s deadline plus margin ({waited:?})");
    embedding.signal("CONT");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get_map().await.unwrap().status(), StatusCode::OK, "serves again after SIGCONT");
    row.survived += 1;

    // Killed, then back on the same port.
    let port = embedding.address.port();
    drop(embedding);
    row.faults += 1;
    for _ in 0..20 {
        row.operations += 1;
        assert_eq!(get_map().await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let listen = format!("127.0.0.1:{port}");
    let _back = ServiceProcess::start_listening(&binary("embedding-service"), &["--listen", &listen], &[], &["embedding-service"]);
    let started = Instant::now();
    loop {
        row.operations += 1;
        if get_map().await.unwrap().status() == StatusCode::OK {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    row.survived += 1;

    // An embedding service whose map FAILED: the failure, promptly, with its reason.
    let failed = ServiceProcess::start_listening(
        &binary("embedding-service"),
        &["--listen", "127.0.0.1:0", "--corpus", "/nonexistent/corpus.npy"],
        &[],
        &["embedding-service"],
    );
    let api_failed = start_api(&dir.path().join("failed.sqlite3"), &failed.url(), &[]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = client.get(http_url(&api_failed, "/api/admin/embedding-map")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    row.faults += 1;
    row.operations += 1;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "failed");
    assert_eq!(body["error"]["code"], "map_failed");
    assert!(body["error"]["message"].as_str().unwrap().contains("does not exist"), "{body}");
    row.survived += 1;
    // No connection was leaked by all of that: the api-service still answers and is ready.
    assert_eq!(client.get(http_url(&api, "/readyz")).send().await.unwrap().status(), StatusCode::OK);
}

async fn deadlines_and_locks(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("deadline.sqlite3");
    let api = start_api(&database, "http://127.0.0.1:9", &[]);
    create_items(&api, 10).await;
    let row = card.row("deadlines and locks");

    // A client deadline shorter than the wait for the lock.
    let mut holder = hold_write_lock(&database, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The deadline travels as grpc-timeout, as every client sends it; the server must enforce it
    // and say DEADLINE_EXCEEDED. (Sent as gRPC-web, so no client-side timer races the server's.)
    let message = pb::RecordEventRequest { item_id: 1, kind: pb::EventKind::View.into(), client_key: "deadline".into() };
    let mut frame = vec![0u8];
    let payload = prost::Message::encode_to_vec(&message);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    let response = reqwest::Client::builder()
        .http1_only()
        .build()
        .unwrap()
        .post(format!("http://{}/embeddingmap.api.v1.EventService/RecordEvent", api.address_of(GRPC)))
        .header("content-type", "application/grpc-web+proto")
        .header("grpc-timeout", "200m")
        .body(frame)
        .send()
        .await
        .unwrap();
    row.faults += 1;
    row.operations += 1;
    assert_eq!(response.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned()), Some("4".to_owned()), "{:?}", response.headers());
    let mut events = EventServiceClient::new(grpc_channel(&api).await);
    holder.wait().unwrap();
    // Nothing leaked: the next write succeeds at once.
    let started = Instant::now();
    for n in 0..20 {
        let request = pb::RecordEventRequest { item_id: 1, kind: pb::EventKind::View.into(), client_key: format!("after-{n}") };
        events.record_event(request).await.expect("write after a cancelled one");
        row.operations += 1;
    }
    assert!(started.elapsed() < Duration::from_secs(2), "no connection left waiting on a dead transaction");
    row.survived += 1;

    // A lock held past busy_timeout: retryable errors, then recovery by itself.
    let mut holder = hold_write_lock(&database, 7);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = http_client().post(http_url(&api, "/api/events")).json(&json!({ "item_id": 1, "kind": "view" })).send().await.unwrap();
    row.faults += 1;
    row.operations += 1;
    assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(busy.headers().contains_key("retry-after"));
    holder.wait().unwrap();
    let after = http_client().post(http_url(&api, "/api/events")).json(&json!({ "item_id": 1, "kind": "view" })).send().await.unwrap();
    assert_eq!(after.status(), StatusCode::CREATED);
    row.survived += 1;

    // A long read transaction during writes: the WAL is bounded again once it ends.
    let wal = database.with_extension("sqlite3-wal");
    let mut reader = Command::new("sqlite3").arg(&database).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    writeln!(reader.stdin.as_mut().unwrap(), "BEGIN; SELECT count(*) FROM events;\n.shell sleep 3\nCOMMIT;").unwrap();
    drop(reader.stdin.take());
    let client = http_client();
    let write_burst = |prefix: &'static str| {
        let (client, url) = (client.clone(), http_url(&api, "/api/events"));
        async move {
            for n in 0..1500 {
                let body = json!({ "item_id": n % 10, "kind": "search", "client_key": format!("{prefix}{n}") });
                assert!(client.post(&url).json(&body).send().await.unwrap().status().is_success());
            }
        }
    };
    write_burst("held-").await;
    reader.wait().unwrap();
    let during = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    write_burst("free-").await;
    let after = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    row.operations += 3000;
    row.faults += 1;
    // Once the reader is gone a checkpoint completes, and the WAL is cut back to its size limit.
    assert!(during > (8 << 20), "the held reader let the WAL grow ({during} bytes)");
    assert!(after <= (8 << 20), "WAL still {after} bytes after the reader ended (was {during})");
    row.survived += 1;
}

async fn hostile_input(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("hostile.sqlite3"), "http://127.0.0.1:9", &["--max-body-bytes", "65536"]);
    create_items(&api, 3).await;
    // A fresh connection per request: a refused upload closes its connection, which must not
    // be mistaken for the next request's answer.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(30)).build().unwrap();
    let row = card.row("hostile input");
    let mut tried = |status: u16, expected: &[u16], what: &str| {
        row.bad_inputs += 1;
        assert!(expected.contains(&status), "{what}: got {status}, expected one of {expected:?}");
        row.clear_errors += 1;
    };

    let items = http_url(&api, "/api/admin/items");
    // An oversized body is answered 413 as soon as the limit is passed, and the connection closed;
    // a client still uploading may see only the close. Either way the body was refused.
    let post = |body: Vec<u8>, content_type: &'static str| {
        let request = client.post(&items).bearer_auth(ADMIN_TOKEN).header("content-type", content_type).body(body);
        async move {
            match request.send().await {
                Ok(response) => response.status().as_u16(),
                Err(error) if error.is_request() => 413,
                Err(error) => panic!("{error}"),
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
    tried(post(b"{\"id\": 9223372036854775808, \"name\": \"n\"}".to_vec(), "application/json").await, &[400], "id out of range");
    let path_id = client.get(http_url(&api, "/api/admin/items/99999999999999999999")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    tried(path_id.status().as_u16(), &[400], "path id out of range");
    let event = client.post(http_url(&api, "/api/events")).json(&json!({ "item_id": -1, "kind": "view", "client_key": "k\u{0}" })).send().await.unwrap();
    tried(event.status().as_u16(), &[400], "NUL in a client key");

    // Header flood: too many or too large headers are refused by the HTTP layer.
    let mut flood = client.get(http_url(&api, "/livez"));
    for n in 0..2000 {
        flood = flood.header(format!("x-flood-{n}"), "y".repeat(64));
    }
    let flood_status = flood.send().await.map(|r| r.status().as_u16()).unwrap_or(431);
    tried(flood_status, &[431, 400], "header flood");

    // gRPC-web: garbage frames, garbage protobuf, unknown methods, oversized messages.
    let grpc_web = |path: &'static str, body: Vec<u8>| {
        reqwest::Client::builder().http1_only().build().unwrap()
            .post(format!("http://{}{path}", api.address_of(GRPC)))
            .header("content-type", "application/grpc-web+proto")
            .bearer_auth(ADMIN_TOKEN)
            .body(body)
            .send()
    };
    let status_of = |response: &reqwest::Response| response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u16>().ok());
    let garbage_frame = grpc_web("/embeddingmap.api.v1.ItemService/GetItem", vec![7, 1, 2]).await.unwrap();
    row.bad_inputs += 1;
    assert!(garbage_frame.status().is_client_error() || status_of(&garbage_frame).is_some_and(|s| s != 0), "garbage frame");
    row.clear_errors += 1;
    let mut frame = vec![0, 0, 0, 0, 6];
    frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    let garbage_proto = grpc_web("/embeddingmap.api.v1.ItemService/GetItem", frame).await.unwrap();
    let code = status_of(&garbage_proto);
    row.bad_inputs += 1;
    assert_eq!(code, Some(Code::Internal as u16), "garbage protobuf");
    row.clear_errors += 1;
    let unknown = grpc_web("/embeddingmap.api.v1.ItemService/DropTables", vec![0, 0, 0, 0, 0]).await.unwrap();
    row.bad_inputs += 1;
    assert_eq!(status_of(&unknown), Some(Code::Unimplemented as u16), "unknown method");
    row.clear_errors += 1;
    let big = pb::ImportItemsRequest { items: vec![pb::NewItem { id: 1, name: "x".repeat(100_000), ..Default::default() }] };
    let mut items_client = embeddingmap_proto::api::item_service_client::ItemServiceClient::new(grpc_channel(&api).await);
    let error = items_client.import_items(admin(big)).await.unwrap_err();
    row.bad_inputs += 1;
    assert_eq!(error.code(), Code::ResourceExhausted, "oversized gRPC message: {error:?}");
    row.clear_errors += 1;

    // After all of it, the process still serves.
    assert_eq!(client.get(http_url(&api, "/livez")).send().await.unwrap().status(), StatusCode::OK);
    row.operations += row.bad_inputs;
    assert!(!api.log().contains(ADMIN_TOKEN), "the token never reaches the log");
}

async fn shutdown_under_load(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("drain.sqlite3");
    let mut api = start_api(&database, "http://127.0.0.1:9", &["--readiness-drain", "1s"]);
    create_items(&api, 10).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&api, 8, "drain".into(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = http_client().get(http_url(&api, "/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE, "readiness drops first");
    let (status, _) = api.wait_exit(Duration::from_secs(15)).expect("exits within the grace period");
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    let mut attempts = 0;
    for writer in writers {
        let (keys, tried) = writer.await.unwrap();
        acknowledged.extend(keys);
        attempts += tried;
    }
    let stored: HashSet<String> = sqlite3(&database, "SELECT client_key FROM events;").lines().map(str::to_owned).collect();
    let lost = acknowledged.iter().filter(|key| !stored.contains(*key)).count();
    let row = card.row("shutdown under load");
    row.operations += attempts;
    row.faults += 1;
    row.acknowledged_lost += lost;
    if !status.success() {
        row.crashes += 1;
    }
    assert!(status.success(), "{status:?}");
    assert_eq!(lost, 0);
    row.survived += 1;
}

/// System calls that create, change or remove a file, traced with `strace`.
const FILE_WRITES: &str = "trace=open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,truncate,link,linkat,symlink,symlinkat";

/// Starts `binary` under `strace -f`, recording its file-changing calls in `trace`.
fn start_traced(binary_name: &str, trace: &std::path::Path, args: &[&str], env: &[(&str, &str)], labels: &[&str]) -> ServiceProcess {
    let program = binary(binary_name);
    let mut traced = vec!["-f", "-qq", "-e", FILE_WRITES, "-o", trace.to_str().unwrap(), "--", program.to_str().unwrap()];
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
    let embedding = start_traced("embedding-service", &embedding_trace, &["--listen", "127.0.0.1:0"], &env, &["embedding-service"]);
    let database = data.join("api.sqlite3");
    let api_trace = sandbox.path().join("api.trace");
    let embedding_url = embedding.url();
    let api = start_traced("api-service", &api_trace, &api_args(&database, &embedding_url), &env, &[GRPC, HTTP]);
    create_items(&api, 20).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&api, 2, "sandbox".into(), stop.clone());
    let started = Instant::now();
    while http_client().get(http_url(&api, "/api/admin/embedding-map")).bearer_auth(ADMIN_TOKEN).send().await.unwrap().status() != StatusCode::OK {
        assert!(started.elapsed() < Duration::from_secs(60), "map ready under strace");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut operations = 0;
    for writer in writers {
        operations += writer.await.unwrap().1;
    }
    stop_traced(api);
    stop_traced(embedding);

    let mut written: Vec<String> = [&embedding_trace, &api_trace]
        .into_iter()
        .flat_map(|trace| written_paths(&std::fs::read_to_string(trace).unwrap()))
        .collect();
    written.sort();
    written.dedup();
    let outside: Vec<&String> = written.iter().filter(|path| !path.starts_with(data.to_str().unwrap()) && *path != "/dev/null").collect();
    let row = card.row("file writes (strace)");
    row.operations += operations;
    row.writes_outside_data += outside.len();
    assert!(written.iter().any(|path| path.starts_with(data.to_str().unwrap())), "the trace sees the database writes: {written:?}");
    assert!(outside.is_empty(), "files changed outside the data directory: {outside:?}");
    println!("files changed by both services: {written:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_and_hostile_input_lose_nothing_and_crash_nothing() {
    let mut local = Scorecard::default();
    crash_safety(&mut local).await;
    downstream_faults(&mut local).await;
    deadlines_and_locks(&mut local).await;
    hostile_input(&mut local).await;
    shutdown_under_load(&mut local).await;
    file_writes(&mut local).await;
    // Printed, and kept in artifacts/ so the test command can show it after cargo's captured output.
    let scorecard = local.render();
    println!("\n{scorecard}");
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("scorecard.txt"), &scorecard).unwrap();
    assert_eq!(
        (local.total(|r| r.acknowledged_lost), local.total(|r| r.crashes), local.total(|r| r.writes_outside_data)),
        (0, 0, 0),
        "{scorecard}"
    );
}
