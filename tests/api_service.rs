//! The api-service, end to end: the real binary with a real SQLite file in a temp dir (or a
//! real PostgreSQL) and the real embedding service. The suites of events, items, idempotency,
//! ETags and the admin map run on both backends (`on_both_backends!`).

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use embeddingmap_proto::api::{
    self as pb, admin_map_service_client::AdminMapServiceClient,
    admin_neighbor_service_client::AdminNeighborServiceClient, event_service_client::EventServiceClient,
    item_service_client::ItemServiceClient, stats_service_client::StatsServiceClient,
};
use end_to_end_tests::{
    ServiceProcess,
    api::*,
    corpus_files, digits_labels, digits_vectors, eventually, health_status,
    sqlite::{hold_write_lock, sqlite3},
    start_embedding,
};
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

/// Runs the test body `name(TestDatabase)` on each backend, as `name::on_sqlite` and
/// `name::on_postgres` (which passes, loudly skipped, where PostgreSQL is not installed).
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            use end_to_end_tests::api::TestDatabase;

            #[tokio::test(flavor = "multi_thread")]
            async fn on_sqlite() {
                super::$name(TestDatabase::sqlite()).await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn on_postgres() {
                if let Some(database) = TestDatabase::postgres() {
                    super::$name(database).await
                }
            }
        }
    };
}

on_both_backends!(map_endpoint_goes_202_then_200_joined_then_304_and_survives_an_embedding_restart);
on_both_backends!(bad_input_gets_clear_errors_and_nothing_half_written);
on_both_backends!(concurrent_writers_and_readers_over_both_transports_lose_nothing);

async fn get_map(api: &ServiceProcess, etag: Option<&str>) -> reqwest::Response {
    let mut request = http_client().get(http_url(api, "/api/admin/embedding-map")).bearer_auth(ADMIN_TOKEN);
    if let Some(etag) = etag {
        request = request.header("if-none-match", etag);
    }
    request.send().await.unwrap()
}

/// Polls the map endpoint until 200, checking every 202 on the way; returns the 202 count.
async fn wait_for_ready_map(api: &ServiceProcess) -> (reqwest::Response, usize) {
    let mut computing = 0;
    let ready =
        eventually("the map became ready (200)", Duration::from_secs(120), Duration::from_millis(50), async || {
            let response = get_map(api, None).await;
            match response.status() {
                StatusCode::OK => return Some(response),
                StatusCode::ACCEPTED => {
                    assert!(response.headers().contains_key("retry-after"), "202 carries Retry-After");
                    let body: Value = response.json().await.unwrap();
                    assert_eq!(body["status"], "computing");
                    assert!(body["progress"]["total_iterations"].as_u64().unwrap() > 0, "{body}");
                    computing += 1;
                }
                StatusCode::SERVICE_UNAVAILABLE => assert!(response.headers().contains_key("retry-after")),
                other => panic!("unexpected {other}: {:?}", response.text().await),
            }
            None
        })
        .await;
    (ready, computing)
}

async fn map_endpoint_goes_202_then_200_joined_then_304_and_survives_an_embedding_restart(database: TestDatabase) {
    // The corpus is put in place once the API answers that the map failed for want of it, so the
    // computation is watched from its start however slowly the API boots; more iterations than
    // the default keep it computing for a few polls.
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("digits.npy");
    let embedding = start_embedding(&["--corpus", corpus.to_str().unwrap(), "--iterations", "3000"]);
    let port = embedding.address.port();
    let api = start_api(&database, &embedding.url(), &[]);
    import_digits(&api).await;

    let failed = eventually("the map failed (500)", Duration::from_secs(30), Duration::from_millis(50), async || {
        let response = get_map(&api, None).await;
        (response.status() == StatusCode::INTERNAL_SERVER_ERROR).then_some(response)
    })
    .await;
    let failure: Value = failed.json().await.unwrap();
    assert_eq!(failure["error"]["code"], "map_failed", "{failure}");
    let message = failure["error"]["message"].as_str().unwrap();
    assert!(message.contains("does not exist"), "{failure}");
    corpus_files::copy_into_place(&digits_vectors(), &corpus);
    // Seen computing (202) before it is ready: the failed map stays until the corpus watch starts
    // the computation, which then answers 202 until its last iteration.
    eventually("the map computing (202)", Duration::from_secs(30), Duration::from_millis(50), async || {
        (get_map(&api, None).await.status() == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    let (ready, _) = wait_for_ready_map(&api).await;
    let etag = ready.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    // What the map used, as the embedding service reports it: both rates, the exaggeration and
    // its iterations, the neighbours, the PCA width the corpus got.
    let parameters = &body["parameters"];
    assert_eq!(
        (parameters["iterations"].as_u64(), parameters["exaggeration_iterations"].as_u64()),
        (Some(3000), Some(250))
    );
    assert_eq!(parameters["early_exaggeration"], 12.0);
    assert_eq!(
        (parameters["learning_rate"].as_f64(), parameters["final_learning_rate"].as_f64()),
        (Some(1797.0 / 12.0), Some(1797.0))
    );
    assert_eq!((parameters["neighbors"].as_u64(), parameters["pca_dimensions"].as_u64()), (Some(90), Some(64)));
    assert_eq!(
        (&parameters["knn_method"], &parameters["initialization"]),
        (&Value::from("exact"), &Value::from("pca"))
    );
    let points = body["points"].as_array().unwrap();
    assert_eq!(points.len(), 1797);
    let labels = digits_labels();
    for point in points {
        let id = point["id"].as_u64().unwrap() as usize;
        assert_eq!(point["name"], format!("digit {} #{id}", labels[id]));
        assert_eq!(point["category"], labels[id].to_string());
        assert!(point["x"].as_f64().unwrap().is_finite());
    }
    assert_eq!(get_map(&api, Some(&etag)).await.status(), StatusCode::NOT_MODIFIED);

    // gzip when asked: the same JSON, smaller, under the same ETag.
    let gzipped = http_client()
        .get(http_url(&api, "/api/admin/embedding-map"))
        .bearer_auth(ADMIN_TOKEN)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.status(), StatusCode::OK);
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    assert_eq!(gzipped.headers()["etag"].to_str().unwrap(), etag);
    let compressed = gzipped.bytes().await.unwrap();
    let mut json = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&compressed[..]), &mut json).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&json).unwrap(), body);
    assert!(compressed.len() * 3 < json.len(), "{} bytes gzipped from {}", compressed.len(), json.len());

    // The same map over gRPC.
    let mut admin_map = AdminMapServiceClient::new(grpc_channel(&api).await).max_decoding_message_size(64 << 20);
    let status = admin_map.get_embedding_map(admin(pb::GetAdminMapRequest::default())).await.unwrap().into_inner();
    assert_eq!(status.points.len(), 1797);
    assert_eq!(status.points[5].name, format!("digit {} #5", labels[5]));

    // Renaming an item changes the ETag: the cached JSON is never stale.
    let renamed = http_client()
        .put(http_url(&api, "/api/admin/items/5"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "renamed five", "category": "5" }))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), StatusCode::OK);
    let fresh = get_map(&api, Some(&etag)).await;
    assert_eq!(fresh.status(), StatusCode::OK, "a new ETag after an item changed");
    let body: Value = fresh.json().await.unwrap();
    assert_eq!(body["points"][5]["name"], "renamed five");

    // The embedding service goes away: 503 with Retry-After, promptly; the API stays ready.
    drop(embedding);
    let started = Instant::now();
    let down = get_map(&api, None).await;
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(down.headers().contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(10), "no hang while the embedding service is down");
    let ready = http_client().get(http_url(&api, "/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "a downstream outage does not make the API unready");

    // It comes back on the same address: 200 again without restarting the API.
    let listen = format!("127.0.0.1:{port}");
    let _embedding = start_embedding(&["--listen", &listen]);
    let (again, _) = wait_for_ready_map(&api).await;
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["points"].as_array().unwrap().len(), 1797);
}

/// Every admin operation, by transport. The gRPC list is checked against the protocol's own
/// descriptor, so a new admin method cannot be added without appearing here.
const HTTP_ADMIN_ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/admin/embedding-map"),
    ("POST", "/api/admin/embedding-map/refresh"),
    ("POST", "/api/admin/embedding-map/select"),
    ("POST", "/api/admin/embedding-map/export"),
    ("GET", "/api/admin/embedding-map/fields"),
    ("GET", "/api/admin/embedding-map/fields/row?generation=1"),
    ("GET", "/api/admin/embedding-map/previous?generation=2"),
    ("GET", "/api/admin/items"),
    ("POST", "/api/admin/items"),
    ("POST", "/api/admin/items/import"),
    ("GET", "/api/admin/items/1"),
    ("PUT", "/api/admin/items/1"),
    ("GET", "/api/admin/stats"),
    ("GET", "/api/admin/items/1/neighbors"),
    ("POST", "/api/admin/neighbors"),
];
const GRPC_ADMIN_METHODS: &[&str] = &[
    "ItemService/CreateItem",
    "ItemService/UpdateItem",
    "ItemService/GetItem",
    "ItemService/ListItems",
    "ItemService/ImportItems",
    "StatsService/GetItemStats",
    "AdminMapService/GetEmbeddingMap",
    "AdminMapService/WatchEmbeddingMap",
    "AdminMapService/RefreshEmbeddingMap",
    "AdminMapService/SelectMapPoints",
    "AdminMapService/GetPreviousMap",
    "AdminNeighborService/FindNeighbors",
];
const PUBLIC_GRPC_SERVICES: &[&str] = &["EventService"];

async fn call_admin_method(api: &ServiceProcess, method: &str, token: Option<&str>) -> Result<(), tonic::Status> {
    let channel = grpc_channel(api).await;
    fn wrap<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
        match token {
            Some(token) => authorized(message, token),
            None => tonic::Request::new(message),
        }
    }
    let mut items = ItemServiceClient::new(channel.clone());
    let item = || Some(pb::NewItem { id: 1, name: "one".into(), ..Default::default() });
    match method {
        "ItemService/CreateItem" => {
            items.create_item(wrap(pb::CreateItemRequest { item: item() }, token)).await.map(drop)
        }
        "ItemService/UpdateItem" => {
            items.update_item(wrap(pb::UpdateItemRequest { item: item() }, token)).await.map(drop)
        }
        "ItemService/GetItem" => items.get_item(wrap(pb::GetItemRequest { id: 1 }, token)).await.map(drop),
        "ItemService/ListItems" => items.list_items(wrap(pb::ListItemsRequest::default(), token)).await.map(drop),
        "ItemService/ImportItems" => items.import_items(wrap(pb::ImportItemsRequest::default(), token)).await.map(drop),
        "StatsService/GetItemStats" => StatsServiceClient::new(channel)
            .get_item_stats(wrap(pb::GetItemStatsRequest::default(), token))
            .await
            .map(drop),
        "AdminMapService/GetEmbeddingMap" => AdminMapServiceClient::new(channel)
            .get_embedding_map(wrap(pb::GetAdminMapRequest::default(), token))
            .await
            .map(drop),
        "AdminMapService/WatchEmbeddingMap" => AdminMapServiceClient::new(channel)
            .watch_embedding_map(wrap(pb::GetAdminMapRequest::default(), token))
            .await
            .map(drop),
        "AdminMapService/RefreshEmbeddingMap" => AdminMapServiceClient::new(channel)
            .refresh_embedding_map(wrap(pb::RefreshAdminMapRequest::default(), token))
            .await
            .map(drop),
        "AdminMapService/SelectMapPoints" => AdminMapServiceClient::new(channel)
            .select_map_points(wrap(pb::SelectMapPointsRequest::default(), token))
            .await
            .map(drop),
        "AdminMapService/GetPreviousMap" => AdminMapServiceClient::new(channel)
            .get_previous_map(wrap(embeddingmap_proto::v1::GetPreviousMapRequest::default(), token))
            .await
            .map(drop),
        "AdminNeighborService/FindNeighbors" => AdminNeighborServiceClient::new(channel)
            .find_neighbors(wrap(pb::FindAdminNeighborsRequest::default(), token))
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_route_on_every_transport_requires_the_exact_token() {
    let descriptor = prost_types::FileDescriptorSet::decode(embeddingmap_proto::FILE_DESCRIPTOR_SET).unwrap();
    let declared: BTreeSet<String> = descriptor
        .file
        .iter()
        .filter(|file| file.package() == "embeddingmap.api.v1")
        .flat_map(|file| file.service.iter())
        .filter(|service| !PUBLIC_GRPC_SERVICES.contains(&service.name()))
        .flat_map(|service| service.method.iter().map(move |m| format!("{}/{}", service.name(), m.name())))
        .collect();
    let tested: BTreeSet<String> = GRPC_ADMIN_METHODS.iter().map(|m| m.to_string()).collect();
    assert_eq!(declared, tested, "every admin gRPC method is in the auth table");

    let dir = tempfile::tempdir().unwrap();
    // No embedding service: auth must be decided before any downstream call.
    let api = start_api(&dir.path().join("auth.sqlite3"), "http://127.0.0.1:9", &[]);
    let wrong_tokens: Vec<Option<String>> = vec![
        None,
        Some("wrong-token-0123456789abcdef".into()),
        Some(ADMIN_TOKEN.to_uppercase()),
        Some(format!("{ADMIN_TOKEN}x")),
        Some(String::new()),
    ];
    let client = http_client();
    for (method, path) in HTTP_ADMIN_ROUTES {
        for token in &wrong_tokens {
            let mut request = client.request(method.parse().unwrap(), http_url(&api, path)).json(&json!({}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{method} {path} with {token:?}");
        }
        let with_token = client
            .request(method.parse().unwrap(), http_url(&api, path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_ne!(with_token.status(), StatusCode::UNAUTHORIZED, "{method} {path} with the token");
    }
    for method in GRPC_ADMIN_METHODS {
        for token in &wrong_tokens {
            let error = call_admin_method(&api, method, token.as_deref()).await.expect_err(method);
            assert_eq!(error.code(), Code::Unauthenticated, "{method} with {token:?}: {error:?}");
        }
        if let Err(error) = call_admin_method(&api, method, Some(ADMIN_TOKEN)).await {
            assert_ne!(error.code(), Code::Unauthenticated, "{method} with the token");
        }
    }
    // A service the server does not have (one added later would be the same): refused without
    // the token before it is found missing, UNIMPLEMENTED with it.
    for (token, expected) in [(None, Code::Unauthenticated), (Some(ADMIN_TOKEN), Code::Unimplemented)] {
        let mut request = grpc_web_request(&api, GRPC, "/embeddingmap.api.v1.ServiceAddedLater/Anything");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.body(grpc_web_frame(&[])).send().await.unwrap();
        let status = response.headers().get("grpc-status").map(|value| value.to_str().unwrap().to_owned());
        assert_eq!(status, Some((expected as i32).to_string()), "an unknown service with {token:?}");
    }
    // Public routes need no token.
    let event =
        client.post(http_url(&api, "/api/events")).json(&json!({ "item_id": 1, "kind": "view" })).send().await.unwrap();
    assert_ne!(event.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(client.get(http_url(&api, "/livez")).send().await.unwrap().status(), StatusCode::OK);
    assert!(!api.log().contains(ADMIN_TOKEN), "the token never reaches the log");
}

async fn bad_input_gets_clear_errors_and_nothing_half_written(database: TestDatabase) {
    let api = start_api(&database, "http://127.0.0.1:9", &["--max-body-bytes", "4096"]);
    let client = http_client();
    let items_url = http_url(&api, "/api/admin/items");
    let post_raw = |body: &'static str, content_type: &'static str| {
        client.post(&items_url).bearer_auth(ADMIN_TOKEN).header("content-type", content_type).body(body).send()
    };
    assert_eq!(post_raw("{\"id\": 1, \"name\": ", "application/json").await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        post_raw("{\"id\": 1, \"name\": \"a\"}", "text/plain").await.unwrap().status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let huge = json!({ "id": 1, "name": "x".repeat(10_000) });
    let too_big = client.post(&items_url).bearer_auth(ADMIN_TOKEN).json(&huge).send().await.unwrap();
    assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let blank =
        client.post(&items_url).bearer_auth(ADMIN_TOKEN).json(&json!({ "id": 1, "name": "" })).send().await.unwrap();
    assert_eq!(blank.status(), StatusCode::BAD_REQUEST);
    let body: Value = blank.json().await.unwrap();
    assert_eq!(body["error"]["field"], "name", "{body}");
    let missing = client.get(http_url(&api, "/api/admin/items/424242")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let delete = client.delete(http_url(&api, "/api/admin/items/1")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(delete.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Events for an unknown item, and of an unknown kind.
    for (event, expected) in [
        (json!({ "item_id": 77, "kind": "view" }), StatusCode::NOT_FOUND),
        (json!({ "item_id": 77, "kind": "like" }), StatusCode::BAD_REQUEST),
    ] {
        let answer = client.post(http_url(&api, "/api/events")).json(&event).send().await.unwrap();
        assert_eq!(answer.status(), expected, "{event}");
    }

    // Names are data, never SQL.
    let hostile = "'); DROP TABLE items;--";
    let created = client
        .post(&items_url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "id": 7, "name": hostile }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let fetched: Value = admin_get_json(&api, "/api/admin/items/7").await;
    assert_eq!(fetched["name"], hostile);

    // One bad item in an import: nothing of it is stored.
    let import = json!({ "items": [{ "id": 100, "name": "fine" }, { "id": 101, "name": "" }] });
    let rejected = admin_post(&api, "/api/admin/items/import", &import).await;
    assert_eq!(rejected.status(), StatusCode::BAD_REQUEST);
    let body: Value = rejected.json().await.unwrap();
    assert_eq!(body["error"]["field"], "items[1].name");
    let absent = client.get(http_url(&api, "/api/admin/items/100")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(absent.status(), StatusCode::NOT_FOUND, "the valid half was not written");

    // gRPC names the field too.
    let mut items = ItemServiceClient::new(grpc_channel(&api).await);
    let error = items
        .create_item(admin(pb::CreateItemRequest {
            item: Some(pb::NewItem { id: 9, name: " ".into(), ..Default::default() }),
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("name"), "{error:?}");
    assert_eq!(
        health_status(&api.address_of(GRPC), "").await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

async fn concurrent_writers_and_readers_over_both_transports_lose_nothing(database: TestDatabase) {
    const WRITERS: usize = 64;
    const EVENTS_PER_WRITER: usize = 200;
    const READERS: usize = 64;
    const ITEMS: i64 = 32;
    let api = Arc::new(start_api(&database, "http://127.0.0.1:9", &[]));
    let client = http_client();
    let items: Vec<Value> = (0..ITEMS).map(|id| json!({ "id": id, "name": format!("item {id}") })).collect();
    let imported = admin_post(&api, "/api/admin/items/import", &json!({ "items": items })).await;
    assert_eq!(imported.status(), StatusCode::OK);
    let channel = grpc_channel(&api).await;

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for reader in 0..READERS {
        let (api, client, channel, done) = (api.clone(), client.clone(), channel.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0usize;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if reader % 2 == 0 {
                    let response =
                        client.get(http_url(&api, "/api/admin/stats")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
                    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.text().await);
                } else {
                    StatsServiceClient::new(channel.clone())
                        .get_item_stats(admin(pb::GetItemStatsRequest::default()))
                        .await
                        .unwrap();
                }
                reads += 1;
            }
            reads
        }));
    }
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (api, client, channel) = (api.clone(), client.clone(), channel.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..EVENTS_PER_WRITER {
                let item_id = ((writer * 7 + n) as i64) % ITEMS;
                let key = format!("w{writer}-e{n}");
                if writer % 2 == 0 {
                    let response = client
                        .post(http_url(&api, "/api/events"))
                        .json(&json!({ "item_id": item_id, "kind": "view", "client_key": key }))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), StatusCode::CREATED, "{:?}", response.text().await);
                } else {
                    let recorded = EventServiceClient::new(channel.clone())
                        .record_event(pb::RecordEventRequest {
                            item_id,
                            kind: pb::EventKind::View.into(),
                            client_key: key,
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert!(recorded.created);
                }
                if n % 20 == 0 {
                    let update =
                        pb::NewItem { id: item_id, name: format!("item {item_id} by {writer}"), ..Default::default() };
                    ItemServiceClient::new(channel.clone())
                        .update_item(admin(pb::UpdateItemRequest { item: Some(update) }))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("a writer failed");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads: usize =
        futures_util::future::join_all(readers).await.into_iter().map(|r| r.expect("a reader failed")).sum();
    assert!(reads > 0);

    let stats: Value = admin_get_json(&api, &format!("/api/admin/stats?limit={ITEMS}")).await;
    let total: u64 = stats["stats"].as_array().unwrap().iter().map(|s| s["views"].as_u64().unwrap()).sum();
    assert_eq!(total, (WRITERS * EVENTS_PER_WRITER) as u64, "every acknowledged event counted once");
    let rows = database.query("SELECT count(*) FROM events;");
    assert_eq!(rows, (WRITERS * EVENTS_PER_WRITER).to_string(), "every acknowledged event stored once");
    if let TestDatabase::Sqlite { path, .. } = &database {
        assert_eq!(sqlite3(path, "PRAGMA integrity_check;").trim(), "ok");
    }
    assert!(!api.log().contains("database is locked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outside_write_lock_gives_a_retryable_error_within_the_busy_timeout_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("locked.sqlite3");
    let api = start_api(&database, "http://127.0.0.1:9", &[]);
    let client = http_client();
    let item = admin_post(&api, "/api/admin/items", &json!({ "id": 1, "name": "one" })).await;
    assert_eq!(item.status(), StatusCode::CREATED);

    let mut holder = hold_write_lock(&database, 7, "UPDATE items SET name = 'held' WHERE id = 1;");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let blocked =
        client.post(http_url(&api, "/api/events")).json(&json!({ "item_id": 1, "kind": "view" })).send().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(blocked.status(), StatusCode::SERVICE_UNAVAILABLE, "{:?}", blocked.text().await);
    assert!(blocked.headers().contains_key("retry-after"));
    assert!(waited < Duration::from_millis(6500), "answered before the 7 s lock was released ({waited:?})");
    assert!(waited >= Duration::from_millis(4000), "waited for busy_timeout first ({waited:?})");

    holder.wait().unwrap();
    let after =
        client.post(http_url(&api, "/api/events")).json(&json!({ "item_id": 1, "kind": "view" })).send().await.unwrap();
    assert_eq!(after.status(), StatusCode::CREATED, "recovers once the lock is gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_committed_in_one_batch_are_answered_each_by_its_own_rule() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("batch.sqlite3");
    let api = start_api(&database, "http://127.0.0.1:9", &[]);
    let client = http_client();
    let items: Vec<Value> = (0..10).map(|id| json!({ "id": id, "name": format!("item {id}") })).collect();
    assert_eq!(admin_post(&api, "/api/admin/items/import", &json!({ "items": items })).await.status(), StatusCode::OK);
    let post = |body: Value| {
        let request = client.post(http_url(&api, "/api/events")).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, earlier) = post(json!({ "item_id": 1, "kind": "view", "client_key": "earlier" })).await;
    assert_eq!(status, StatusCode::CREATED);

    // While an outside writer holds the lock (less than busy_timeout), everything sent queues
    // behind the writer's first batch and is committed together in the next one.
    let mut holder = hold_write_lock(&database, 2, "UPDATE items SET name = name WHERE id = 0;");
    let good: Vec<Value> = (0..30)
        .map(|n| json!({ "item_id": n % 10, "kind": if n % 3 == 0 { "search" } else { "view" }, "client_key": format!("good-{n}") }))
        .collect();
    let odd = [
        json!({ "item_id": 2, "kind": "view", "client_key": "twice" }),
        json!({ "item_id": 2, "kind": "view", "client_key": "twice" }),
        json!({ "item_id": 1, "kind": "view", "client_key": "earlier" }),
        json!({ "item_id": 3, "kind": "view", "client_key": "earlier" }),
        json!({ "item_id": 999, "kind": "view", "client_key": "nowhere" }),
        json!({ "item_id": 4, "kind": "view", "client_key": "pair" }),
        json!({ "item_id": 5, "kind": "search", "client_key": "pair" }),
    ];
    let answers = futures_util::future::join_all(good.iter().chain(&odd).cloned().map(post)).await;
    holder.wait().unwrap();
    let (good_answers, odd_answers) = answers.split_at(good.len());

    let mut ids = BTreeSet::new();
    for (status, body) in good_answers {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
        assert!(ids.insert(body["event_id"].as_i64().unwrap()), "each event its own id: {body}");
    }
    let code = |answer: &(StatusCode, Value)| answer.1["error"]["code"].as_str().map(str::to_owned);
    // The same event twice in one batch: one is written, the other gets its answer.
    let mut twice = [&odd_answers[0], &odd_answers[1]];
    twice.sort_by_key(|(status, _)| *status);
    assert_eq!((twice[0].0, twice[1].0), (StatusCode::OK, StatusCode::CREATED), "{twice:?}");
    assert_eq!(twice[0].1["event_id"], twice[1].1["event_id"]);
    assert_eq!(twice[0].1["created"], false);
    // A key committed by an earlier batch: the same event answered as then, another refused.
    assert_eq!(odd_answers[2], (StatusCode::OK, json!({ "event_id": earlier["event_id"], "created": false })));
    assert_eq!((odd_answers[3].0, code(&odd_answers[3])), (StatusCode::CONFLICT, Some("key_reused".into())));
    assert_eq!((odd_answers[4].0, code(&odd_answers[4])), (StatusCode::NOT_FOUND, Some("not_found".into())));
    // Two different events under one new key: whichever came first is written, the other refused.
    let mut pair = [odd_answers[5].0, odd_answers[6].0];
    pair.sort();
    assert_eq!(pair, [StatusCode::CREATED, StatusCode::CONFLICT], "{odd_answers:?}");

    // They were committed together: a batch shares one timestamp, and at most the one batch that
    // waited for the lock came before the rest.
    let batches = sqlite3(&database, "SELECT count(DISTINCT created_at) FROM events WHERE client_key <> 'earlier';");
    assert!(batches.trim().parse::<u32>().unwrap() <= 2, "{batches} batches");
    // 1 earlier + 30 good + 1 twice + 1 pair, and the counts beside them agree.
    assert_eq!(sqlite3(&database, "SELECT count(*) FROM events;").trim(), "33");
    let counted = sqlite3(&database, "SELECT sum(views) + sum(searches) FROM item_stats;");
    assert_eq!(counted.trim(), "33");
    let searches = sqlite3(&database, "SELECT sum(searches) FROM item_stats;");
    let searched = sqlite3(&database, "SELECT count(*) FROM events WHERE kind = 2;");
    assert_eq!(searches, searched);
}

/// A gRPC-web call over HTTP/1.1, framed by hand as a browser client frames it.
async fn grpc_web_call(
    api: &ServiceProcess,
    path: &str,
    message: &impl Message,
    token: Option<&str>,
) -> reqwest::Response {
    grpc_web_call_on(api, GRPC, path, message, token).await
}

async fn grpc_web_call_on(
    api: &ServiceProcess,
    listener: &str,
    path: &str,
    message: &impl Message,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = grpc_web_request(api, listener, path)
        .header("x-grpc-web", "1")
        .header("origin", ALLOWED_ORIGIN)
        .body(grpc_web_frame(&message.encode_to_vec()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_web_over_http1_with_cors_for_allowed_origins_only() {
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("web.sqlite3"), "http://127.0.0.1:9", &[]);
    let path = "/embeddingmap.api.v1.StatsService/GetItemStats";

    // Trailers-only UNAUTHENTICATED: the status is in the headers, exposed to the page.
    let refused = grpc_web_call(&api, path, &pb::GetItemStatsRequest::default(), None).await;
    assert_eq!(refused.version(), reqwest::Version::HTTP_11);
    assert_eq!(refused.headers()["grpc-status"], "16", "{:?}", refused.headers());
    let exposed = refused.headers()["access-control-expose-headers"].to_str().unwrap().to_lowercase();
    for header in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(header), "{header} exposed: {exposed}");
    }

    // With the token: a data frame, then a trailer frame saying OK.
    let answered = grpc_web_call(&api, path, &pb::GetItemStatsRequest::default(), Some(ADMIN_TOKEN)).await;
    assert_eq!(answered.status(), StatusCode::OK);
    let body = answered.bytes().await.unwrap();
    assert_eq!(body[0], 0, "a data frame first");
    let length = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    pb::GetItemStatsResponse::decode(&body[5..5 + length]).expect("a GetItemStatsResponse");
    let trailer = &body[5 + length..];
    assert_eq!(trailer[0], 0x80, "then the trailer frame");
    assert!(String::from_utf8_lossy(&trailer[5..]).contains("grpc-status:0"));

    // The admin page's same-origin route on the HTTP port holds the same line.
    let map_path = "/embeddingmap.api.v1.AdminMapService/GetEmbeddingMap";
    let page_refused = grpc_web_call_on(&api, HTTP, map_path, &pb::GetAdminMapRequest::default(), None).await;
    assert_eq!(page_refused.headers()["grpc-status"], "16", "{:?}", page_refused.headers());
    let wrong =
        grpc_web_call_on(&api, HTTP, map_path, &pb::GetAdminMapRequest::default(), Some("wrong-token-0123456789"))
            .await;
    assert_eq!(wrong.headers()["grpc-status"], "16");

    // CORS preflight: allowed origin gets the allow header, any other origin does not.
    let preflight = |origin: &'static str| {
        http_client()
            .request(reqwest::Method::OPTIONS, format!("http://{}{path}", api.address_of(GRPC)))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type,x-grpc-web")
            .send()
    };
    let allowed = preflight(ALLOWED_ORIGIN).await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], ALLOWED_ORIGIN);
    let other = preflight("http://evil.example.test").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drops_readiness_first_and_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("shutdown.sqlite3");
    let mut api = start_api(&database, "http://127.0.0.1:9", &["--readiness-drain", "1s"]);
    let client = http_client();
    let item = admin_post(&api, "/api/admin/items", &json!({ "id": 1, "name": "one" })).await;
    assert_eq!(item.status(), StatusCode::CREATED);

    // An outside writer holds the lock for 2 s, so an event is in flight when SIGTERM arrives.
    let mut holder = hold_write_lock(&database, 2, "UPDATE items SET name = 'held' WHERE id = 1;");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_flight = tokio::spawn({
        let url = http_url(&api, "/api/events");
        let client = client.clone();
        async move { client.post(url).json(&json!({ "item_id": 1, "kind": "view", "client_key": "last" })).send().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let readiness = client.get(http_url(&api, "/readyz")).send().await.unwrap();
    assert_eq!(readiness.status(), StatusCode::SERVICE_UNAVAILABLE, "not ready once SIGTERM arrived");

    let finished = in_flight.await.unwrap().expect("the in-flight request got an answer");
    assert_eq!(finished.status(), StatusCode::CREATED, "the in-flight event was recorded");
    let (status, _) = api.wait_exit(Duration::from_secs(10)).expect("exits within the grace period");
    assert!(status.success(), "{status:?}");
    holder.wait().unwrap();
    assert_eq!(sqlite3(&database, "SELECT count(*) FROM events WHERE client_key = 'last';").trim(), "1");
}

/// Inside by the winding number (nonzero rule): a different method from the service's even-odd
/// crossing count, which agrees with it on a simple polygon.
fn winding_inside(polygon: &[[f64; 2]], x: f64, y: f64) -> bool {
    let mut winding = 0;
    for (i, a) in polygon.iter().enumerate() {
        let b = polygon[(i + 1) % polygon.len()];
        let side = (b[0] - a[0]) * (y - a[1]) - (x - a[0]) * (b[1] - a[1]);
        if a[1] <= y && b[1] > y && side > 0.0 {
            winding += 1;
        } else if a[1] > y && b[1] <= y && side < 0.0 {
            winding -= 1;
        }
    }
    winding != 0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_polygon_selects_exactly_the_points_inside_paged_and_exports_them_as_csv() {
    let embedding = start_embedding(&[]);
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("select.sqlite3"), &embedding.url(), &[]);
    import_digits(&api).await;
    // A name and a category a spreadsheet would run as formulas.
    let formula = "=HYPERLINK(\"http://example.test\",\"x\")";
    let renamed = http_client()
        .put(http_url(&api, "/api/admin/items/7"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": formula, "category": "-7" }))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), StatusCode::OK);
    let (ready, _) = wait_for_ready_map(&api).await;
    let map: Value = ready.json().await.unwrap();
    let generation = map["generation"].as_u64().unwrap();
    let points: Vec<(i64, f64, f64)> = map["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_i64().unwrap(), p["x"].as_f64().unwrap(), p["y"].as_f64().unwrap()))
        .collect();
    // The lower-left half of the map's bounding box, as a triangle.
    let (min_x, max_x) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let (min_y, max_y) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.2), hi.max(p.2)));
    let polygon = [[min_x - 1.0, min_y - 1.0], [max_x + 1.0, min_y - 1.0], [min_x - 1.0, max_y + 1.0]];
    let expected: Vec<i64> = points.iter().filter(|p| winding_inside(&polygon, p.1, p.2)).map(|p| p.0).collect();
    assert!(expected.len() > 100 && expected.len() < points.len() - 100, "{} inside", expected.len());

    // Paged: 100 a page, every page with the total, the last without a token.
    let select = |body: Value| {
        let request = http_client().post(http_url(&api, "/api/admin/embedding-map/select")).bearer_auth(ADMIN_TOKEN);
        async move { request.json(&body).send().await.unwrap() }
    };
    let (mut selected, mut token) = (Vec::new(), None::<String>);
    loop {
        let body = json!({ "generation": generation, "polygon": polygon, "page_size": 100, "page_token": token });
        let page: Value = select(body).await.json().await.unwrap();
        assert_eq!(page["count"].as_u64().unwrap() as usize, expected.len());
        assert_eq!(page["generation"], generation);
        selected.extend(page["points"].as_array().unwrap().iter().map(|p| p["id"].as_i64().unwrap()));
        match page["next_page_token"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(selected, expected, "the polygon query against a brute-force point-in-polygon");

    // The same over gRPC, paged the same way.
    let mut client = AdminMapServiceClient::new(grpc_channel(&api).await);
    let vertices: Vec<pb::MapCoordinate> = polygon.iter().map(|&[x, y]| pb::MapCoordinate { x, y }).collect();
    let (mut over_grpc, mut page_token) = (Vec::new(), String::new());
    loop {
        let request = pb::SelectMapPointsRequest { generation, polygon: vertices.clone(), page_size: 250, page_token };
        let page = client.select_map_points(admin(request)).await.unwrap().into_inner();
        assert_eq!(page.count as usize, expected.len());
        over_grpc.extend(page.points.iter().map(|p| p.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(over_grpc, expected, "gRPC selects what HTTP selects");
    // A lasso of 300 vertices (a circle about the middle): over gRPC as the brute force has it.
    let middle = ((min_x + max_x) / 2.0, (min_y + max_y) / 2.0);
    let radius = (max_x - min_x).min(max_y - min_y) * 0.3;
    let circle: Vec<[f64; 2]> = (0..300)
        .map(|i| {
            let angle = i as f64 * std::f64::consts::TAU / 300.0;
            [middle.0 + radius * angle.cos(), middle.1 + radius * angle.sin()]
        })
        .collect();
    let in_circle: Vec<i64> = points.iter().filter(|p| winding_inside(&circle, p.1, p.2)).map(|p| p.0).collect();
    let lasso = pb::SelectMapPointsRequest {
        generation,
        polygon: circle.iter().map(|&[x, y]| pb::MapCoordinate { x, y }).collect(),
        page_size: 10_000,
        page_token: String::new(),
    };
    let answer = client.select_map_points(admin(lasso)).await.unwrap().into_inner();
    assert!(!in_circle.is_empty());
    assert_eq!(answer.points.iter().map(|p| p.id).collect::<Vec<_>>(), in_circle, "a 300-vertex lasso over gRPC");
    let stale = pb::SelectMapPointsRequest { generation: generation + 1, polygon: vertices, ..Default::default() };
    let refused = client.select_map_points(admin(stale)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // Another generation is refused, saying which one is served; a bad polygon too.
    let stale = select(json!({ "generation": generation + 1, "polygon": polygon })).await;
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    let stale: Value = stale.json().await.unwrap();
    assert_eq!(stale["error"]["code"], "generation_not_served");
    assert!(stale["error"]["message"].as_str().unwrap().contains(&format!("now {generation}")), "{stale}");
    let line = select(json!({ "generation": generation, "polygon": [[0.0, 0.0], [1.0, 1.0]] })).await;
    assert_eq!(line.status(), StatusCode::BAD_REQUEST);

    // Export: the selection's rows, then the whole map, formulas escaped.
    let export = |body: Value| {
        let request = http_client().post(http_url(&api, "/api/admin/embedding-map/export")).bearer_auth(ADMIN_TOKEN);
        async move {
            let response = request.json(&body).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
            let text = response.text().await.unwrap();
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
            let rows: Vec<Vec<String>> =
                reader.records().map(|r| r.unwrap().iter().map(str::to_owned).collect()).collect();
            (header, rows)
        }
    };
    let (header, rows) = export(json!({ "generation": generation, "polygon": polygon })).await;
    assert_eq!(&header[..5], ["id", "name", "category", "x", "y"]);
    assert!(header[5].starts_with("cluster_level_0"), "{header:?}");
    assert_eq!(header.last().unwrap(), "generation");
    let exported: Vec<i64> = rows.iter().map(|row| row[0].parse().unwrap()).collect();
    assert_eq!(exported, expected, "the export's rows are the selection");
    let (_, all) = export(json!({ "generation": generation })).await;
    assert_eq!(all.len(), points.len());
    let seven = all.iter().find(|row| row[0] == "7").unwrap();
    assert_eq!((seven[1].as_str(), seven[2].as_str()), (format!("'{formula}").as_str(), "'-7"));
    assert!(all.iter().all(|row| row.last().unwrap() == &generation.to_string()));
    let labels = digits_labels();
    let three = all.iter().find(|row| row[0] == "3").unwrap();
    assert_eq!(three[1], format!("digit {} #3", labels[3]));

    // Colour by any field: the attribute names, and a field's values in the map's order, numbers
    // when every value is one.
    assert_eq!(
        admin_get_json(&api, "/api/admin/embedding-map/fields").await,
        json!({ "fields": ["digit", "parity", "row"] })
    );
    let row = admin_get_json(&api, &format!("/api/admin/embedding-map/fields/row?generation={generation}")).await;
    assert_eq!(
        (row["numeric"].as_bool(), row["min"].as_f64(), row["max"].as_f64()),
        (Some(true), Some(0.0), Some(1796.0))
    );
    // Item 7 lost its attributes when it was renamed above: null there.
    let rows: Vec<Option<i64>> =
        row["values"].as_array().unwrap().iter().map(|v| v.as_f64().map(|v| v as i64)).collect();
    let expected_rows: Vec<Option<i64>> = points.iter().map(|p| (p.0 != 7).then_some(p.0)).collect();
    assert_eq!(rows, expected_rows, "row i is item i, in the map's order");
    let parity = admin_get_json(&api, &format!("/api/admin/embedding-map/fields/parity?generation={generation}")).await;
    assert_eq!(parity["numeric"], false);
    for (value, point) in parity["values"].as_array().unwrap().iter().zip(&points) {
        let expected = if labels[point.0 as usize] % 2 == 0 { "even" } else { "odd" };
        assert_eq!(value, &if point.0 == 7 { Value::Null } else { Value::from(expected) });
    }
    let stale = http_client()
        .get(http_url(&api, &format!("/api/admin/embedding-map/fields/row?generation={}", generation + 1)))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::CONFLICT);
}
