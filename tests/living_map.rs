//! The living map: a changed corpus gives a new map while the current one is served, over the
//! real embedding service; refreshes by RPC and by SIGHUP.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use embeddingmap_proto::v1::{
    EmbeddingMapStatus, GetEmbeddingMapRequest, GetPreviousMapRequest, MapState, RefreshEmbeddingMapRequest,
    embedding_map_service_client::EmbeddingMapServiceClient, refresh_embedding_map_response::Start,
    refresh_outcome::Result as RefreshResult,
};
use end_to_end_tests::{corpus_files, eventually, map_client, start_embedding};

const LIMIT: Duration = Duration::from_secs(120);

/// A corpus of `clusters` x 300 rows with ids from `first_id` on, written beside its final place and
/// renamed over it, as tools replace files.
fn write_corpus(dir: &Path, clusters: usize, first_id: i64) -> (PathBuf, PathBuf) {
    let (vectors, ids) = (dir.join("corpus.npy"), dir.join("ids.npy"));
    let rows = clusters * 300;
    corpus_files::write_matrix(&dir.join("corpus.npy.new"), rows, 16, &corpus_files::clustered(clusters, 300, 16));
    corpus_files::write_ids(&dir.join("ids.npy.new"), &(first_id..first_id + rows as i64).collect::<Vec<_>>());
    std::fs::rename(dir.join("corpus.npy.new"), &vectors).unwrap();
    std::fs::rename(dir.join("ids.npy.new"), &ids).unwrap();
    (vectors, ids)
}

/// The embedding service on the corpus `write_corpus` wrote, its corpus watch off (refreshes come
/// only when a test asks), with `extra` flags.
fn start_on(vectors: &Path, ids: &Path, extra: &[&str]) -> end_to_end_tests::ServiceProcess {
    let (vectors, ids) = (vectors.to_str().unwrap(), ids.to_str().unwrap());
    let args = ["--corpus", vectors, "--ids", ids, "--watch-corpus", "false"];
    start_embedding(&args.iter().chain(extra).copied().collect::<Vec<_>>())
}

fn generation(status: &EmbeddingMapStatus) -> u64 {
    status.map.as_ref().map_or(0, |map| map.generation)
}

/// Polls GetEmbeddingMap every 50 ms until `stop`: how many answers, how many of them READY with
/// a refresh under way, and every answer that was not READY with a map.
fn poll_every_50ms(
    client: &EmbeddingMapServiceClient<tonic::transport::Channel>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize, Vec<String>)> {
    let mut client = client.clone();
    tokio::spawn(async move {
        let (mut answers, mut refreshing, mut dark) = (0, 0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match client.get_embedding_map(GetEmbeddingMapRequest { omit_points: true }).await {
                Ok(answer) if answer.get_ref().state() == MapState::Ready && answer.get_ref().map.is_some() => {
                    refreshing += usize::from(answer.get_ref().refresh.is_some());
                }
                other => dark.push(format!("{other:?}")),
            }
            answers += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (answers, refreshing, dark)
    })
}

/// Polls the api-service's `GET /api/admin/embedding-map` every 50 ms (with the last ETag, so
/// 304s come too) until `stop`: how many answers said a refresh was under way (the body's
/// `refreshing`, or a 304's `X-Map-Refresh`), and every answer that was not the map.
fn poll_http_every_50ms(
    api: &end_to_end_tests::ServiceProcess,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    use end_to_end_tests::api::{ADMIN_TOKEN, http_client, http_url};
    let (client, url) = (http_client(), http_url(api, "/api/admin/embedding-map"));
    tokio::spawn(async move {
        let (mut refreshing, mut dark, mut etag) = (0, Vec::new(), String::new());
        while !stop.load(Ordering::Relaxed) {
            let response =
                client.get(&url).bearer_auth(ADMIN_TOKEN).header("if-none-match", &etag).send().await.unwrap();
            let status = response.status();
            let header = response.headers().get("x-map-refresh").is_some();
            if let Some(tag) = response.headers().get("etag") {
                etag = tag.to_str().unwrap().to_owned();
            }
            match status.as_u16() {
                200 => {
                    let body: serde_json::Value = response.json().await.unwrap();
                    refreshing += usize::from(body["refreshing"].is_object());
                }
                304 => refreshing += usize::from(header),
                _ => dark.push(format!("{status}: {}", response.text().await.unwrap_or_default())),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (refreshing, dark)
    })
}

/// The corpus changed on disk, with no one asking: renamed over, then rewritten in place slowly.
#[tokio::test(flavor = "multi_thread")]
async fn a_corpus_replaced_or_rewritten_on_disk_is_noticed_and_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let (vectors, ids) = write_corpus(dir.path(), 6, 0);
    let service = start_embedding(&["--corpus", vectors.to_str().unwrap(), "--ids", ids.to_str().unwrap()]);
    let client = map_client(&service).await;
    let status = async || {
        client.clone().get_embedding_map(GetEmbeddingMapRequest { omit_points: true }).await.unwrap().into_inner()
    };
    eventually("the first map", LIMIT, Duration::from_millis(50), async || {
        (generation(&status().await) == 1).then_some(())
    })
    .await;
    // The api-service in front, polled over HTTP as the gRPC poller polls the embedding service.
    let api = end_to_end_tests::api::start_api(&dir.path().join("api.sqlite3"), &service.url(), &[]);
    let http_client = end_to_end_tests::api::http_client();
    let map_url = end_to_end_tests::api::http_url(&api, "/api/admin/embedding-map");
    eventually("the api-service's first map", LIMIT, Duration::from_millis(50), async || {
        let response = http_client.get(&map_url).bearer_auth(end_to_end_tests::api::ADMIN_TOKEN).send().await;
        response.is_ok_and(|r| r.status() == 200).then_some(())
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll_every_50ms(&client, stop.clone());
    let http_poller = poll_http_every_50ms(&api, stop.clone());

    // Renamed over: noticed (within 2 s of the change settling) and mapped.
    write_corpus(dir.path(), 8, 1000);
    let renamed = std::time::Instant::now();
    eventually("the replaced corpus's map", LIMIT, Duration::from_millis(50), async || {
        let status = status().await;
        (generation(&status) == 2).then_some(status)
    })
    .await;
    let noticed = renamed.elapsed();

    // Rewritten in place, slowly (the same shape, new values): read once it stops changing.
    let bytes = {
        let other = dir.path().join("other.npy");
        corpus_files::write_matrix(&other, 2400, 16, &corpus_files::clustered(12, 200, 16));
        std::fs::read(other).unwrap()
    };
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().write(true).truncate(true).open(&vectors).unwrap();
        for chunk in bytes.chunks(bytes.len() / 8 + 1) {
            file.write_all(chunk).unwrap();
            file.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    // The ids stay as they are, but a vectors file is read with its ids only once both changed
    // (a pair replaced one file at a time is never read half old and half new): touch them.
    std::fs::File::options().write(true).open(&ids).unwrap().set_modified(std::time::SystemTime::now()).unwrap();
    let rewritten = eventually("the rewritten corpus's map", LIMIT, Duration::from_millis(50), async || {
        let status = status().await;
        (generation(&status) == 3 && status.refresh.is_none()).then_some(status)
    })
    .await;
    assert_eq!(rewritten.map.unwrap().count, 2400);
    assert_eq!(rewritten.last_refresh.unwrap().result(), RefreshResult::Updated, "no half-written read won");

    stop.store(true, Ordering::Relaxed);
    let (answers, refreshing, dark) = poller.await.unwrap();
    assert!(dark.is_empty(), "every answer after the first map was READY with a map: {dark:?}");
    assert!(refreshing > 0, "the poller saw refreshes under way ({refreshing} of {answers})");
    let (refreshing, dark) = http_poller.await.unwrap();
    assert!(dark.is_empty(), "HTTP: every answer after the first map was the map: {dark:?}");
    assert!(refreshing > 0, "HTTP: the poller saw a refresh under way");
    println!("a renamed-over corpus became the map {noticed:?} after the rename");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_corpus_gives_a_new_map_while_the_current_one_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (vectors, ids) = write_corpus(dir.path(), 6, 0);
    let service = start_on(&vectors, &ids, &[]);
    let mut client = map_client(&service).await;
    let reader = client.clone();
    let get = move |omit_points| {
        let mut client = reader.clone();
        async move {
            client.get_embedding_map(GetEmbeddingMapRequest { omit_points }).await.map(|answer| answer.into_inner())
        }
    };
    eventually("the first map", LIMIT, Duration::from_millis(50), async || {
        (get(true).await.unwrap().state() == MapState::Ready).then_some(())
    })
    .await;

    // From now on every answer, polled every 50 ms, is READY with a map.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll_every_50ms(&client, stop.clone());
    let settled = async |want: &dyn Fn(&EmbeddingMapStatus) -> bool| {
        eventually("the refresh ended", LIMIT, Duration::from_millis(50), async || {
            let status = get(true).await.unwrap();
            (status.refresh.is_none() && want(&status)).then_some(status)
        })
        .await
    };

    // A new corpus, renamed over the old files: a new map of its ids, generation 2.
    write_corpus(dir.path(), 8, 1000);
    let start = client.refresh_embedding_map(RefreshEmbeddingMapRequest {}).await.unwrap().into_inner();
    assert_eq!(start.start(), Start::Started);
    let updated = settled(&|status| generation(status) == 2).await;
    assert_eq!(updated.last_refresh.unwrap().result(), RefreshResult::Updated);
    let full = get(false).await.unwrap();
    let mut ids: Vec<i64> = full.map.unwrap().points.iter().map(|point| point.id).collect();
    ids.sort();
    assert_eq!(ids, (1000..3400).collect::<Vec<_>>(), "the new map's points are the new corpus's ids");

    // The same corpus again: nothing recomputed, and the answer says so.
    client.refresh_embedding_map(RefreshEmbeddingMapRequest {}).await.unwrap();
    let unchanged =
        settled(&|status| status.last_refresh.as_ref().is_some_and(|last| last.result() == RefreshResult::Unchanged))
            .await;
    assert_eq!(generation(&unchanged), 2);

    // A corrupt replacement: the map stays, and the status says why.
    std::fs::write(dir.path().join("corpus.npy.new"), b"not a numpy file").unwrap();
    std::fs::rename(dir.path().join("corpus.npy.new"), &vectors).unwrap();
    client.refresh_embedding_map(RefreshEmbeddingMapRequest {}).await.unwrap();
    let failed =
        settled(&|status| status.last_refresh.as_ref().is_some_and(|last| last.result() == RefreshResult::Failed))
            .await;
    assert_eq!(generation(&failed), 2, "the last good map is still served");
    let failure = failed.last_refresh.unwrap().failure.unwrap();
    assert!(failure.message.contains("corpus.npy"), "the failure names the file: {}", failure.message);

    // SIGHUP refreshes too (and does not stop the process).
    write_corpus(dir.path(), 5, 5000);
    service.signal("HUP");
    let hup = settled(&|status| generation(status) == 3).await;
    assert_eq!(hup.map.unwrap().count, 1500);

    stop.store(true, Ordering::Relaxed);
    let (answers, refreshing, dark) = poller.await.unwrap();
    assert!(refreshing > 0, "the poller saw refreshes under way ({refreshing} of {answers} answers)");
    assert!(dark.is_empty(), "every answer after the first map was READY with a map: {dark:?}");
}

/// Through the api-service: HTTP stays 200 with a `refreshing` object, gRPC stays READY, the
/// admin watch stream carries the next map, and refreshes come by HTTP and by gRPC.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_service_serves_the_current_map_through_refreshes_on_every_transport() {
    use embeddingmap_proto::api::{self as api_pb, admin_map_service_client::AdminMapServiceClient};
    use end_to_end_tests::api::{ADMIN_TOKEN, admin, admin_post, grpc_channel, http_client, http_url, start_api};
    use tokio_stream::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let (vectors, ids) = write_corpus(dir.path(), 6, 0);
    let embedding = start_on(&vectors, &ids, &[]);
    let api = start_api(&dir.path().join("api.sqlite3"), &embedding.url(), &[]);
    let client = http_client();
    let map_url = http_url(&api, "/api/admin/embedding-map");
    let first: serde_json::Value = eventually("the first map", LIMIT, Duration::from_millis(50), async || {
        let response = client.get(&map_url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        (response.status() == 200).then_some(())?;
        response.json().await.ok()
    })
    .await;
    assert_eq!((first["generation"].as_u64(), &first["refreshing"]), (Some(1), &serde_json::Value::Null));
    let previous_url =
        |generation: u64| http_url(&api, &format!("/api/admin/embedding-map/previous?generation={generation}"));
    let previous_answer = async |generation: u64| {
        let response = client.get(previous_url(generation)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        (response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap())
    };
    let (status, body) = previous_answer(1).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "a first map has no previous one: {body}"
    );
    let mut admin_map = AdminMapServiceClient::new(grpc_channel(&api).await);
    let mut watch = admin_map
        .watch_embedding_map(admin(api_pb::GetAdminMapRequest { omit_points: true }))
        .await
        .unwrap()
        .into_inner();

    // Pollers on both transports, every 50 ms, from now on.
    let stop = Arc::new(AtomicBool::new(false));
    let http_poller = poll_http_every_50ms(&api, stop.clone());
    let grpc_poller = tokio::spawn({
        let (stop, mut admin_map) = (stop.clone(), admin_map.clone());
        async move {
            let (mut refreshing, mut dark) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match admin_map.get_embedding_map(admin(api_pb::GetAdminMapRequest { omit_points: true })).await {
                    Ok(answer) if answer.get_ref().state() == MapState::Ready => {
                        refreshing += usize::from(answer.get_ref().refresh.is_some());
                    }
                    other => dark.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (refreshing, dark)
        }
    });
    let generation_seen = async |watch: &mut tonic::Streaming<api_pb::AdminMapStatus>, generation: u64| {
        loop {
            let message = tokio::time::timeout(LIMIT, watch.next()).await.expect("the watch went quiet");
            let message = message.expect("the watch stream stays open").expect("a watch message");
            assert_eq!(message.state(), MapState::Ready, "the watch stays READY: {message:?}");
            if message.generation == generation && message.refresh.is_none() {
                return message;
            }
        }
    };

    // Refresh over HTTP: 202, and the same watch stream carries the next map.
    // 1,800 ids kept and 600 added: laid out from the first map.
    write_corpus(dir.path(), 8, 0);
    let refresh = admin_post(&api, "/api/admin/embedding-map/refresh", &serde_json::json!({})).await;
    assert_eq!(refresh.status(), 202);
    assert_eq!(refresh.json::<serde_json::Value>().await.unwrap()["refresh"], "started");
    let second = generation_seen(&mut watch, 2).await;
    assert_eq!(second.count, 2400);
    // The previous map's ids and positions (the page's comparison): generation 1's points, on
    // both transports, admin only; a generation no longer served is a conflict.
    let (status, previous) = previous_answer(2).await;
    assert_eq!(status, 200, "{previous}");
    assert_eq!((previous["generation"].as_u64(), previous["previous_generation"].as_u64()), (Some(2), Some(1)));
    let positions = |points: &serde_json::Value| -> Vec<(i64, f64, f64)> {
        let point =
            |p: &serde_json::Value| (p["id"].as_i64().unwrap(), p["x"].as_f64().unwrap(), p["y"].as_f64().unwrap());
        points.as_array().unwrap().iter().map(point).collect()
    };
    assert_eq!(positions(&previous["points"]), positions(&first["points"]));
    assert_eq!(previous["count"], 1800);
    let (status, stale) = previous_answer(1).await;
    assert_eq!((status, stale["error"]["code"].as_str()), (409, Some("generation_not_served")), "{stale}");
    let unauthenticated = client.get(previous_url(2)).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let previous_request = |generation| embeddingmap_proto::v1::GetPreviousMapRequest { generation };
    let over_grpc = admin_map.get_previous_map(admin(previous_request(2))).await.unwrap().into_inner();
    assert_eq!((over_grpc.previous_generation, over_grpc.points.len()), (1, 1800));
    let refused = admin_map.get_previous_map(previous_request(2)).await.expect_err("admin only");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let stale = admin_map.get_previous_map(admin(previous_request(1))).await.expect_err("stale");
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition, "{stale:?}");
    // Over gRPC (admin only): the next one.
    write_corpus(dir.path(), 5, 5000);
    let unauthenticated =
        admin_map.refresh_embedding_map(api_pb::RefreshAdminMapRequest {}).await.expect_err("admin only");
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);
    let start = admin_map.refresh_embedding_map(admin(api_pb::RefreshAdminMapRequest {})).await.unwrap();
    assert_eq!(start.get_ref().start(), Start::Started);
    generation_seen(&mut watch, 3).await;
    let latest: serde_json::Value =
        client.get(&map_url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!((latest["generation"].as_u64(), latest["last_refresh"]["result"].as_str()), (Some(3), Some("updated")));
    let mut ids: Vec<i64> = latest["points"].as_array().unwrap().iter().map(|p| p["id"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (5000..6500).collect::<Vec<_>>());
    // Every id new: laid out afresh, so no previous map is kept (its positions would not compare).
    assert_eq!(latest["layout"], "fresh");
    let (status, body) = previous_answer(3).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");

    stop.store(true, Ordering::Relaxed);
    for (transport, poller) in [("HTTP", http_poller), ("gRPC", grpc_poller)] {
        let (refreshing, dark) = poller.await.unwrap();
        assert!(dark.is_empty(), "{transport}: every answer after the first map was the map: {dark:?}");
        assert!(refreshing > 0, "{transport}: the poller saw a refresh under way");
    }
}

/// The admin page in Chromium swaps to the new map without a reload, keeping a hidden category
/// hidden and the zoom as it was.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_page_swaps_maps_in_place_and_keeps_what_the_admin_chose() {
    use end_to_end_tests::api::{ADMIN_TOKEN, admin_post, http_client, http_url, start_api};

    let dir = tempfile::tempdir().unwrap();
    let (vectors, ids) = write_corpus(dir.path(), 6, 0);
    let embedding = start_on(&vectors, &ids, &[]);
    let api = start_api(&dir.path().join("page.sqlite3"), &embedding.url(), &[]);
    // Items for both corpora (the second keeps the first's 1,800 ids and adds 300), in
    // categories by cluster.
    let items: Vec<_> = (0..2100)
        .map(|id: i64| serde_json::json!({ "id": id, "name": format!("item {id}"), "category": format!("c{}", id / 300) }))
        .collect();
    let imported = admin_post(&api, "/api/admin/items/import", &serde_json::json!({ "items": items })).await;
    assert!(imported.status().is_success(), "{:?}", imported.text().await);
    let client = http_client();
    eventually("the first map", LIMIT, Duration::from_millis(50), async || {
        let response = client.get(http_url(&api, "/api/admin/embedding-map")).bearer_auth(ADMIN_TOKEN).send().await;
        response.is_ok_and(|r| r.status() == 200).then_some(())
    })
    .await;
    // The corpus changes on disk (an incremental change); the page asks for the refresh.
    write_corpus(dir.path(), 7, 0);

    let seen =
        end_to_end_tests::browser::run_page_script("admin_refresh.mjs", &http_url(&api, "/admin/"), ADMIN_TOKEN, &[]);
    let (before, after) = (&seen["before"], &seen["after"]);
    assert_eq!(seen["stateWhileUpdating"], "ready", "the map stayed on screen while updating: {seen}");
    assert!(seen["updatingText"].as_str().unwrap().starts_with("updating: "), "{seen}");
    assert_eq!(after["sameDocument"], true, "no reload: {seen}");
    assert_eq!(seen["loads"], 1, "{seen}");
    assert_eq!(seen["transitions"], 1, "{seen}");
    assert!(seen["transitionFrames"].as_u64() > Some(0), "frames drawn mid-way: {seen}");
    assert_eq!(after["stillHidden"], true, "the hidden category stays hidden: {seen}");
    assert_eq!(after["total"], 2100, "{seen}");
    assert!(after["drawn"].as_u64() < after["total"].as_u64(), "{seen}");
    for field in ["scale", "offsetX", "offsetY"] {
        assert_eq!(before[field], after[field], "{field} kept: {seen}");
    }
    assert!(before["scale"].as_f64().unwrap() > 1.0, "{seen}");
    assert!(after["summary"].as_str().unwrap().contains("map 2"), "{seen}");
    // The comparison with map 1 marks exactly the 300 points the refresh added, draws every
    // point on the distance scale, and travels in the link.
    assert_eq!(seen["compareDisabledOnFirst"], true, "{seen}");
    let compared = &seen["compared"];
    let added: Vec<u64> = compared["addedIds"].as_array().unwrap().iter().map(|id| id.as_u64().unwrap()).collect();
    assert_eq!(added, (1800..2100).collect::<Vec<_>>(), "{seen}");
    assert_eq!((compared["added"].as_u64(), compared["removed"].as_u64()), (Some(300), Some(0)), "{seen}");
    assert_eq!(compared["field"], "moved since map 1");
    assert_eq!((compared["pressed"].as_str(), compared["gradients"].as_u64()), (Some("true"), Some(1)), "{seen}");
    assert!(compared["legend"].as_str().unwrap().contains("added: 300"), "{seen}");
    assert_eq!(compared["drawn"], 2100, "a comparison hides nothing: {seen}");
    assert_eq!(compared["inLink"], true, "{seen}");
    assert_eq!(
        seen["off"],
        serde_json::json!({ "colorBy": null, "compared": null, "stillHidden": true }),
        "the comparison ends with the category hidden before it hidden again: {seen}"
    );
    assert!(end_to_end_tests::browser::artifact_saved("admin-compare.png"));
}

/// Every point of a READY map, as (id, x bits, y bits): equal means the same bits.
fn bits(status: &EmbeddingMapStatus) -> Vec<(i64, u32, u32)> {
    status.map.as_ref().expect("a map").points.iter().map(|p| (p.id, p.x.to_bits(), p.y.to_bits())).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A restart serves the stored map on its first answer; processes sharing a store serve the same
/// bits whether a later one finds the refreshed map stored or refreshes from the parent itself.
#[tokio::test(flavor = "multi_thread")]
async fn stored_maps_survive_restarts_and_agree_across_processes_in_either_boot_order() {
    let dir = tempfile::tempdir().unwrap();
    let (vectors, ids) = write_corpus(dir.path(), 6, 0);
    let (store, parent_only) = (dir.path().join("store"), dir.path().join("store-with-the-parent-only"));
    let start = |store: &Path| start_on(&vectors, &ids, &["--map-store", store.to_str().unwrap()]);
    let first_answer = async |service: &end_to_end_tests::ServiceProcess| {
        map_client(service)
            .await
            .get_embedding_map(GetEmbeddingMapRequest { omit_points: false })
            .await
            .unwrap()
            .into_inner()
    };
    let ready = async |service: &end_to_end_tests::ServiceProcess, generation: u64| {
        let client = map_client(service).await;
        eventually("the map", LIMIT, Duration::from_millis(50), async || {
            let status = client.clone().get_embedding_map(GetEmbeddingMapRequest { omit_points: false }).await.unwrap();
            let status = status.into_inner();
            (self::generation(&status) == generation && status.refresh.is_none()).then_some(status)
        })
        .await
    };

    let a = start(&store);
    let first = ready(&a, 1).await;
    // A restart (another process on the same store) is READY on its very first answer.
    let restarted = start(&store);
    let answer = first_answer(&restarted).await;
    assert_eq!(answer.state(), MapState::Ready, "READY on the first answer after a restart: {:?}", answer.state());
    assert_eq!(bits(&answer), bits(&first));
    let checked = ready(&restarted, 1).await;
    assert!(checked.last_refresh.is_none(), "the check at boot is no refresh: {:?}", checked.last_refresh);
    drop(restarted);
    copy_dir(&store, &parent_only);

    // The corpus changes (its 1,800 ids kept, 300 added); A refreshes in place and stores
    // generation 2.
    write_corpus(dir.path(), 7, 0);
    map_client(&a).await.refresh_embedding_map(RefreshEmbeddingMapRequest {}).await.unwrap();
    let refreshed = ready(&a, 2).await;
    assert_eq!(refreshed.map.as_ref().unwrap().layout, "incremental");
    // Booted after: finds generation 2 stored.
    let later = start(&store);
    let answer = first_answer(&later).await;
    assert_eq!((answer.state(), generation(&answer)), (MapState::Ready, 2));
    assert_eq!(bits(&answer), bits(&refreshed), "the stored refresh, bit for bit");
    // With its parent's positions: generation 1's points, bit for bit, in A and after the restart.
    let previous_of = async |service: &end_to_end_tests::ServiceProcess| {
        let request = GetPreviousMapRequest { generation: 2 };
        let previous = map_client(service).await.get_previous_map(request).await.unwrap().into_inner();
        assert_eq!(previous.previous_generation, 1);
        previous.points.iter().map(|p| (p.id, p.x.to_bits(), p.y.to_bits())).collect::<Vec<_>>()
    };
    assert_eq!(previous_of(&a).await, bits(&first));
    assert_eq!(previous_of(&later).await, bits(&first), "the previous map survives a restart");
    // Booted on a store holding only generation 1: serves it, then refreshes from it to the same
    // bits as A's refresh in place.
    let other = start(&parent_only);
    assert_eq!(generation(&first_answer(&other).await), 1);
    let own = ready(&other, 2).await;
    assert_eq!(bits(&own), bits(&refreshed), "the same parent, corpus and parameters give the same map");
}
