//! Replays and restarts: a client key names one event, and an ETag names one content, across
//! restarts; the ends of the id range are items like any other.

use embeddingmap_proto::api::event_service_client::EventServiceClient;

use super::*;

/// The same event retried gets its original answer; another event under a used key is refused
/// alone, on both transports; the counts keep only what was recorded.
pub async fn reused_keys(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("replays.sqlite3");
    let api = start_api(&database, "http://127.0.0.1:9", &[]);
    create_items(&api, 3).await;
    let client = http_client();
    let post = |body: Value| client.post(http_url(&api, "/api/events")).json(&body).send();
    let row = card.row("replays and restarts");

    let first = post(json!({ "item_id": 1, "kind": "view", "client_key": "k-1" })).await.unwrap();
    let first: Value = first.json().await.unwrap();
    let replay: Value =
        post(json!({ "item_id": 1, "kind": "view", "client_key": "k-1" })).await.unwrap().json().await.unwrap();
    row.operations += 2;
    row.check(
        replay["event_id"] == first["event_id"] && replay["created"] == false,
        format!("a replay gets the original answer: first {first}, replay {replay}"),
    );
    let other = post(json!({ "item_id": 2, "kind": "search", "client_key": "k-1" })).await.unwrap();
    let status = other.status();
    let body: Value = other.json().await.unwrap_or_default();
    row.bad_input(
        status == StatusCode::CONFLICT && body["error"]["field"] == "client_key",
        format!("another event under a used key (HTTP): got {status} {body}, expected 409 naming client_key"),
    );
    let mut events = EventServiceClient::new(grpc_channel(&api).await);
    let grpc_other =
        pb::RecordEventRequest { item_id: 1, kind: pb::EventKind::Search.into(), client_key: "k-1".into() };
    let answer = events.record_event(grpc_other).await.map(|r| r.into_inner());
    row.bad_input(
        matches!(&answer, Err(status) if status.code() == Code::AlreadyExists),
        format!("another event under a used key (gRPC): got {answer:?}, expected ALREADY_EXISTS"),
    );
    let grpc_replay = pb::RecordEventRequest { item_id: 1, kind: pb::EventKind::View.into(), client_key: "k-1".into() };
    let answer = events.record_event(grpc_replay).await.map(|r| r.into_inner());
    row.operations += 3;
    row.check(
        matches!(&answer, Ok(r) if first["event_id"] == r.event_id && !r.created),
        format!("a gRPC replay gets the original answer: {answer:?}"),
    );
    let stored = sqlite3(&database, "SELECT count(*) FROM events; SELECT views, searches FROM item_stats;");
    row.check(
        stored.split_whitespace().collect::<Vec<_>>() == ["1", "1|0"],
        format!("one event, one view: {stored:?}"),
    );
}

/// An ETag issued before a restart never matches content changed after it; items at both ends
/// of the id range are listed.
pub async fn etags_across_restarts(card: &mut Scorecard) {
    let embedding = start_embedding(&[]);
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("etags.sqlite3");
    let api = start_api(&database, &embedding.url(), &[]);
    import_digits(&api).await;
    let client = http_client();
    let map_ready = async || (map_status(&client, &api).await == Some(StatusCode::OK)).then_some(());
    eventually("the map became ready", Duration::from_secs(120), Duration::from_millis(50), map_ready).await;
    let map = |api: &ServiceProcess, etag: Option<String>| {
        let mut request = client.get(http_url(api, "/api/admin/embedding-map")).bearer_auth(ADMIN_TOKEN);
        if let Some(etag) = etag {
            request = request.header("if-none-match", etag);
        }
        request.send()
    };
    let etag = |response: &reqwest::Response| {
        response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_default()
    };
    let before = etag(&map(&api, None).await.unwrap());
    drop(api);
    // A rename right after a restart: the first item write of the new process.
    let api = start_api(&database, &embedding.url(), &[]);
    let renamed = client
        .put(http_url(&api, "/api/admin/items/7"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "renamed after the restart", "category": "7" }))
        .send()
        .await
        .unwrap();
    let row = card.row("replays and restarts");
    row.check(renamed.status().is_success(), format!("rename answered {}", renamed.status()));
    let after = map(&api, Some(before.clone())).await.unwrap();
    let after_status = after.status();
    row.operations += 3;
    row.check(
        after_status == StatusCode::OK && etag(&after) != before,
        format!("the pre-restart ETag {before} after a rename got {after_status}, expected 200 with a new ETag"),
    );
    let unchanged = map(&api, Some(etag(&after))).await.unwrap().status();
    row.check(unchanged == StatusCode::NOT_MODIFIED, format!("the current ETag got {unchanged}, expected 304"));

    // The ends of the id range, listed like any other item.
    for id in [i64::MIN, i64::MAX] {
        let created = admin_post(&api, "/api/admin/items", &json!({ "id": id, "name": format!("edge {id}") })).await;
        row.check(created.status().is_success(), format!("create item {id}: {}", created.status()));
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin_get_json(&api, &format!("/api/admin/items?page_size=1000&page_token={token}")).await;
        listed.extend(page["items"].as_array().into_iter().flatten().filter_map(|item| item["id"].as_i64()));
        token = page["next_page_token"].as_str().unwrap_or_default().to_owned();
        if token.is_empty() {
            break;
        }
    }
    row.operations += 3;
    row.check(
        listed.first() == Some(&i64::MIN) && listed.last() == Some(&i64::MAX) && listed.len() == 1797 + 2,
        format!(
            "listing holds both ends of the id range: {} items, first {:?}, last {:?}",
            listed.len(),
            listed.first(),
            listed.last()
        ),
    );
}
