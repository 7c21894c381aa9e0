//! Exploring the map: a point's true neighbours (cosine similarity in the embedding), over the
//! real embedding service and api-service, checked against a brute-force search of the corpus.

use std::time::Duration;

use embeddingmap_proto::{
    api::{self as api_pb, admin_neighbor_service_client::AdminNeighborServiceClient},
    v1::{
        FindNeighborsRequest, QueryVector, find_neighbors_request::Query,
        neighbor_service_client::NeighborServiceClient,
    },
};
use end_to_end_tests::{api::*, eventually, fixtures_dir, start_embedding};
use serde_json::{Value, json};
use tonic::Code;

/// The committed real corpus: 1,200 sentence embeddings (384-d).
fn corpus() -> (std::path::PathBuf, Vec<Vec<f32>>) {
    let path = fixtures_dir().join("docs1200_X.npy");
    let bytes = std::fs::read(&path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let columns = npy.shape()[1] as usize;
    let values: Vec<f32> = npy.into_vec().unwrap();
    (path, values.chunks(columns).map(<[f32]>::to_vec).collect())
}

/// The committed corpus's label names, and each row's label.
fn labelled() -> (Vec<String>, Vec<i32>) {
    let names = std::fs::read_to_string(fixtures_dir().join("docs1200_labels.txt")).unwrap();
    let bytes = std::fs::read(fixtures_dir().join("docs1200_y.npy")).unwrap();
    (names.lines().map(str::to_owned).collect(), npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap())
}

/// The `k` rows most cosine-similar to `query`, other than `skip`: (row, similarity), best first.
fn brute_force(rows: &[Vec<f32>], query: &[f32], k: usize, skip: Option<usize>) -> Vec<(i64, f32)> {
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let mut all: Vec<(i64, f32)> = rows
        .iter()
        .enumerate()
        .filter(|(row, _)| Some(*row) != skip)
        .map(|(row, v)| {
            let dot: f64 = v.iter().zip(query).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            (row as i64, (dot / (norm(v) * norm(query))) as f32)
        })
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

fn assert_same(found: &[(i64, f32)], expected: &[(i64, f32)]) {
    let ids = |list: &[(i64, f32)]| list.iter().map(|(id, _)| *id).collect::<Vec<_>>();
    assert_eq!(ids(found), ids(expected));
    for ((_, got), (_, want)) in found.iter().zip(expected) {
        assert!((got - want).abs() < 1e-4, "similarity {got} against {want}");
    }
}

fn from_json(body: &Value) -> Vec<(i64, f32)> {
    body["neighbors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_i64().unwrap(), n["similarity"].as_f64().unwrap() as f32))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn neighbours_are_the_true_nearest_by_cosine_on_every_transport_and_bad_queries_are_refused() {
    let (path, rows) = corpus();
    let embedding = start_embedding(&["--corpus", path.to_str().unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("explore.sqlite3"), &embedding.url(), &[]);
    // Items for the first 1,000 rows only: the rest are corpus points without an item.
    let items: Vec<Value> =
        (0..1000).map(|id| json!({ "id": id, "name": format!("doc {id}"), "category": "docs" })).collect();
    assert!(admin_post(&api, "/api/admin/items/import", &json!({ "items": items })).await.status().is_success());

    // The embedding service answers as soon as its corpus is loaded.
    let mut direct = NeighborServiceClient::new(end_to_end_tests::connect(&embedding).await);
    let by_id = |id, k| FindNeighborsRequest { query: Some(Query::Id(id)), k };
    let found = eventually("the corpus loaded", Duration::from_secs(60), Duration::from_millis(20), async || {
        direct.find_neighbors(by_id(5, 10)).await.ok()
    })
    .await
    .into_inner();
    let expected = brute_force(&rows, &rows[5], 10, Some(5));
    assert_same(&found.neighbors.iter().map(|n| (n.id, n.similarity)).collect::<Vec<_>>(), &expected);

    // Through the api-service, over HTTP and gRPC, named where an item exists.
    let client = http_client();
    let get = |path: String| client.get(http_url(&api, &path)).bearer_auth(ADMIN_TOKEN).send();
    for id in [5, 640, 1150] {
        let response = get(format!("/api/admin/items/{id}/neighbors?k=20")).await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_same(&from_json(&body), &brute_force(&rows, &rows[id as usize], 20, Some(id as usize)));
        for neighbor in body["neighbors"].as_array().unwrap() {
            let has_item = neighbor["id"].as_i64().unwrap() < 1000;
            assert_eq!(neighbor["name"].is_string(), has_item, "{neighbor}");
            assert_eq!(neighbor["category"].is_null(), !has_item, "{neighbor}");
        }
    }
    let query: Vec<f32> = rows[7].iter().map(|v| v * 3.0).collect();
    let posted = client
        .post(http_url(&api, "/api/admin/neighbors"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "vector": query, "k": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let posted = from_json(&posted.json().await.unwrap());
    assert_same(&posted, &brute_force(&rows, &query, 5, None));
    assert_eq!(posted[0].0, 7, "a row's own vector finds the row first");
    let mut admin_grpc = AdminNeighborServiceClient::new(grpc_channel(&api).await);
    let grpc = admin_grpc
        .find_neighbors(admin(api_pb::FindAdminNeighborsRequest {
            query: Some(api_pb::find_admin_neighbors_request::Query::Vector(QueryVector { values: query.clone() })),
            k: 5,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_same(&grpc.neighbors.iter().map(|n| (n.id, n.similarity)).collect::<Vec<_>>(), &posted);

    // Bad queries: each refused with the reason, on each transport.
    let status = async |path: &str| get(path.to_owned()).await.unwrap().status().as_u16();
    assert_eq!(status("/api/admin/items/999999/neighbors").await, 404, "an id not in the corpus");
    assert_eq!(status("/api/admin/items/5/neighbors?k=101").await, 400);
    assert_eq!(status("/api/admin/items/5/neighbors?k=0").await, 400);
    assert_eq!(status("/api/admin/items/x/neighbors").await, 400);
    let wrong_dimension = client
        .post(http_url(&api, "/api/admin/neighbors"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "vector": [1.0, 2.0, 3.0] }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_dimension.status(), 400);
    let body: Value = wrong_dimension.json().await.unwrap();
    assert_eq!(body["error"]["field"], "vector", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("384"), "{body}");
    let refused = |query, k| {
        let mut admin_grpc = admin_grpc.clone();
        async move {
            admin_grpc
                .find_neighbors(admin(api_pb::FindAdminNeighborsRequest { query: Some(query), k }))
                .await
                .unwrap_err()
                .code()
        }
    };
    assert_eq!(refused(api_pb::find_admin_neighbors_request::Query::Id(999_999), 10).await, Code::NotFound);
    assert_eq!(refused(api_pb::find_admin_neighbors_request::Query::Id(5), 101).await, Code::InvalidArgument);
    let short = api_pb::find_admin_neighbors_request::Query::Vector(QueryVector { values: vec![1.0; 3] });
    assert_eq!(refused(short, 10).await, Code::InvalidArgument);
    assert_eq!(direct.find_neighbors(by_id(999_999, 10)).await.unwrap_err().code(), Code::NotFound);
}

/// Clusters on a real corpus's map: every point in one cluster per level, the same on a second
/// run, and labelled from the items (their categories and the words of their names).
#[tokio::test(flavor = "multi_thread")]
async fn clusters_cover_every_point_at_each_level_the_same_across_runs_and_are_labelled() {
    use embeddingmap_proto::v1::GetEmbeddingMapRequest;

    let (path, _) = corpus();
    let (label_names, labels) = labelled();
    let texts: Vec<String> =
        std::fs::read_to_string(fixtures_dir().join("docs1200_text.txt")).unwrap().lines().map(str::to_owned).collect();
    let map_of = async |service: &end_to_end_tests::ServiceProcess| {
        let mut client = end_to_end_tests::map_client(service).await;
        end_to_end_tests::poll_until_final(&mut client, Duration::from_secs(120)).await;
        client.get_embedding_map(GetEmbeddingMapRequest { omit_points: false }).await.unwrap().into_inner().map.unwrap()
    };
    let first = start_embedding(&["--corpus", path.to_str().unwrap()]);
    let map = map_of(&first).await;
    let again = map_of(&start_embedding(&["--corpus", path.to_str().unwrap()])).await;
    assert_eq!(map.cluster_levels, again.cluster_levels, "the same clusters on every run");
    assert_eq!(map.cluster_levels.len(), 3);
    for level in &map.cluster_levels {
        assert_eq!(level.assignment.len(), 1200, "every point in a cluster at level {}", level.level);
        assert_eq!(level.clusters.iter().map(|c| c.size).sum::<u64>(), 1200);
    }

    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("clusters.sqlite3"), &first.url(), &[]);
    let items: Vec<Value> = (0..1200)
        .map(|id| {
            let name: String = texts[id].chars().take(200).collect();
            json!({ "id": id, "name": name, "category": label_names[labels[id] as usize] })
        })
        .collect();
    let imported = admin_post(&api, "/api/admin/items/import", &json!({ "items": items })).await;
    assert!(imported.status().is_success(), "{:?}", imported.text().await);
    let body: Value = admin_get_json(&api, "/api/admin/embedding-map").await;
    let clusters = body["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), map.cluster_levels.iter().map(|l| l.clusters.len()).sum::<usize>());
    for cluster in clusters {
        let label = cluster["label"].as_str().unwrap();
        let category = cluster["category"].as_str().unwrap();
        assert!(label_names.iter().any(|name| name == category), "{cluster}");
        assert!(label.starts_with(category), "a label leads with its dominant category: {cluster}");
    }
    let coarse: Vec<&str> = clusters.iter().filter(|c| c["level"] == 0).map(|c| c["label"].as_str().unwrap()).collect();
    println!("the coarsest clusters' labels: {coarse:?}");
    // Over gRPC the same, also with the points omitted.
    let mut admin_map =
        embeddingmap_proto::api::admin_map_service_client::AdminMapServiceClient::new(grpc_channel(&api).await);
    let summary = admin_map
        .get_embedding_map(admin(api_pb::GetAdminMapRequest { omit_points: true }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.clusters.len(), clusters.len());
    assert_eq!(summary.clusters[0].label, clusters[0]["label"]);
}

/// 58 categories (a real corpus's 38 and 20 rare ones): the largest get distinct colours, the rest
/// one "Other" entry, so the legend is short and the map in view of a 1280x900 window.
#[tokio::test(flavor = "multi_thread")]
async fn many_categories_keep_distinct_colours_a_short_legend_and_the_map_in_view() {
    let (path, _) = corpus();
    let (label_names, labels) = labelled();
    let embedding = start_embedding(&["--corpus", path.to_str().unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("categories.sqlite3"), &embedding.url(), &[]);
    let items: Vec<Value> = (0..1200)
        .map(|id| {
            let category = if id < 20 { format!("rare {id}") } else { label_names[labels[id] as usize].clone() };
            json!({ "id": id, "name": format!("doc {id}"), "category": category })
        })
        .collect();
    assert!(admin_post(&api, "/api/admin/items/import", &json!({ "items": items })).await.status().is_success());
    let seen = end_to_end_tests::browser::run_page_script(
        "admin_categories.mjs",
        &http_url(&api, "/admin/"),
        ADMIN_TOKEN,
        &[],
    );
    let categories = seen["categories"].as_u64().unwrap();
    assert!(categories >= 58, "{seen}");
    assert_eq!(seen["buttons"], 16, "15 distinct categories and one Other: {seen}");
    assert_eq!(seen["other"][0], format!("Other ({} categories)", categories - 15), "{seen}");
    let colors: std::collections::HashSet<&str> =
        seen["colors"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(colors.len(), 15, "each of the 15 largest has a colour of its own: {seen}");
    assert!(seen["canvasTop"].as_f64().unwrap() < 300.0, "the map starts high on the page: {seen}");
    assert!(seen["canvasBottom"].as_f64().unwrap() <= 900.0 + 1.0, "the whole map fits the window: {seen}");
    assert!(!seen["placeholder"].as_str().unwrap().contains("digit"), "{seen}");
    assert!(
        seen["afterOther"].as_u64().unwrap() < seen["before"].as_u64().unwrap(),
        "Other hides the grouped categories: {seen}"
    );
    assert_eq!(seen["errors"], json!([]), "{seen}");
}
