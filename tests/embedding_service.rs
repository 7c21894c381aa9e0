//! The embedding service, end to end: the real binary on an ephemeral port.

use std::{collections::BTreeSet, time::Duration};

use embeddingmap_proto::v1::{EmbeddingMapStatus, GetEmbeddingMapRequest, MapState, Phase, WatchEmbeddingMapRequest};
use end_to_end_tests::{
    api::{ADMIN_TOKEN, authorized, http_client, http_url, start_api},
    corpus_files, digits_labels, eventually, fixtures_dir, health_status, knn10_accuracy, map_client, poll_until_final,
    start_embedding,
};
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;

const MAP_READY: &str = "embeddingmap.v1.MapReady";
const MAP_SERVICE: &str = "embeddingmap.v1.EmbeddingMapService";
const LIMIT: Duration = Duration::from_secs(120);

fn points(status: &EmbeddingMapStatus) -> Vec<(i64, f32, f32)> {
    status.map.as_ref().expect("map").points.iter().map(|p| (p.id, p.x, p.y)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_map_is_computing_first_then_ready_with_advancing_progress() {
    let service = start_embedding(&[]);
    let mut client = map_client(&service).await;
    let seen = poll_until_final(&mut client, LIMIT).await;

    assert_eq!(seen[0].state(), MapState::Computing, "the first answer comes before the map");
    let progress: Vec<_> = seen.iter().filter_map(|s| s.progress).collect();
    let iterations: BTreeSet<u32> = progress.iter().map(|p| p.iteration).collect();
    assert!(iterations.len() >= 2, "progress advanced through iterations: {iterations:?}");
    assert!(progress.iter().all(|p| p.total_iterations == 500));
    let phases: Vec<i32> = progress.iter().map(|p| p.phase).collect();
    assert!(phases.windows(2).all(|w| w[0] <= w[1]), "phases only move forward: {phases:?}");
    assert!(progress.iter().any(|p| p.phase() == Phase::Optimizing));

    let ready = seen.last().unwrap();
    assert_eq!(ready.state(), MapState::Ready);
    let map = ready.map.as_ref().unwrap();
    assert_eq!(map.count, 1797);
    assert_eq!(map.input_dimensions, 64);
    assert_eq!(map.corpus_fingerprint.len(), 64);
    assert!(map.computed_at.is_some() && map.compute_duration.is_some());
    let parameters = map.parameters.as_ref().unwrap();
    assert_eq!((parameters.perplexity, parameters.iterations, parameters.seed), (30.0, 500, 42));
    assert_eq!((parameters.learning_rate, parameters.final_learning_rate), (1797.0 / 12.0, 1797.0));
    assert_eq!(parameters.initialization, "pca");
    assert_eq!((parameters.exaggeration_iterations, parameters.early_exaggeration), (250, 12.0));
    assert_eq!((parameters.neighbors, parameters.pca_dimensions), (90, 64));

    let points = points(ready);
    let ids: Vec<i64> = points.iter().map(|p| p.0).collect();
    assert_eq!(ids, (0..1797).collect::<Vec<_>>());
    let accuracy = knn10_accuracy(&points.iter().map(|p| (p.1, p.2)).collect::<Vec<_>>(), &digits_labels());
    assert!(accuracy >= 0.95, "10-NN label accuracy {accuracy} below 0.95");

    let summary = client.get_embedding_map(GetEmbeddingMapRequest { omit_points: true }).await.unwrap().into_inner();
    let summary = summary.map.unwrap();
    assert_eq!((summary.points.len(), summary.count), (0, 1797));
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_streams_progress_then_the_ready_map_and_stays_open() {
    // More iterations than the default keep the map computing until the watch starts, on a
    // loaded machine too.
    let service = start_embedding(&["--iterations", "2000"]);
    let mut client = map_client(&service).await;
    let mut stream =
        client.watch_embedding_map(WatchEmbeddingMapRequest { omit_points: false }).await.unwrap().into_inner();
    let mut states = Vec::new();
    let mut last = None;
    while let Some(message) = tokio::time::timeout(LIMIT, stream.next()).await.expect("stream stalled") {
        let message = message.expect("stream item");
        states.push(message.state());
        let ready = message.state() == MapState::Ready;
        last = Some(message);
        if ready {
            break;
        }
    }
    assert_eq!(states.first(), Some(&MapState::Computing));
    assert!(states.len() >= 3, "several updates, not just the end: {states:?}");
    assert_eq!(states.last(), Some(&MapState::Ready));
    // The stream stays open for the next map.
    let more = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(more.is_err(), "nothing more until something changes, and no end: {more:?}");
    assert_eq!(points(&last.unwrap()).len(), 1797);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_boots_with_the_same_corpus_and_seed_give_identical_maps() {
    let (first, second) = (start_embedding(&[]), start_embedding(&[]));
    let (mut a, mut b) = (map_client(&first).await, map_client(&second).await);
    let (a, b) = tokio::join!(poll_until_final(&mut a, LIMIT), poll_until_final(&mut b, LIMIT));
    let (a, b) = (a.last().unwrap(), b.last().unwrap());
    assert_eq!(a.state(), MapState::Ready);
    assert_eq!(a.map.as_ref().unwrap().corpus_fingerprint, b.map.as_ref().unwrap().corpus_fingerprint);
    assert!(points(a) == points(b), "the maps differ");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_serves_at_once_and_names_map_readiness_separately() {
    // Computing long enough for the first checks to see it, on a loaded machine too.
    let service = start_embedding(&["--iterations", "2000"]);
    assert_eq!(health_status(&service, "").await, ServingStatus::Serving);
    assert_eq!(health_status(&service, MAP_SERVICE).await, ServingStatus::Serving);
    assert_eq!(health_status(&service, MAP_READY).await, ServingStatus::NotServing, "not ready while computing");
    let mut client = map_client(&service).await;
    assert_eq!(poll_until_final(&mut client, LIMIT).await.last().unwrap().state(), MapState::Ready);
    // The health flip follows the status board on its own task; give it a moment.
    eventually(&format!("{MAP_READY} became SERVING"), Duration::from_secs(2), Duration::from_millis(20), async || {
        (health_status(&service, MAP_READY).await == ServingStatus::Serving).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn faiss_index_written_by_python_with_an_id_map_keeps_its_ids() {
    let index = fixtures_dir().join("clusters_flat_ip_idmap.index");
    let service = start_embedding(&["--corpus", index.to_str().unwrap()]);
    let mut client = map_client(&service).await;
    let ready = poll_until_final(&mut client, LIMIT).await.pop().unwrap();
    assert_eq!(ready.state(), MapState::Ready, "{:?}", ready.failure);
    let points = points(&ready);
    let ids: Vec<i64> = points.iter().map(|p| p.0).collect();
    assert_eq!(ids, (0..240).map(|i| 10_000 + 7 * i).collect::<Vec<_>>());
    let labels: Vec<i64> = (0..240).map(|i| i / 60).collect();
    let accuracy = knn10_accuracy(&points.iter().map(|p| (p.1, p.2)).collect::<Vec<_>>(), &labels);
    assert!(accuracy > 0.99, "the four clusters stay apart: accuracy {accuracy}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_flat_index_uses_row_numbers_and_npy_uses_its_ids_file() {
    let flat = start_embedding(&["--corpus", fixtures_dir().join("clusters_flat_l2.index").to_str().unwrap()]);
    let mut client = map_client(&flat).await;
    let ready = poll_until_final(&mut client, LIMIT).await.pop().unwrap();
    assert_eq!(ready.state(), MapState::Ready, "{:?}", ready.failure);
    let ids: Vec<i64> = points(&ready).iter().map(|p| p.0).collect();
    assert_eq!(ids, (0..240).collect::<Vec<_>>(), "row numbers without an ID map");

    let dir = tempfile::tempdir().unwrap();
    let vectors = corpus_files::write_matrix(&dir.path().join("v.npy"), 40, 8, &corpus_files::clustered(4, 10, 8));
    let wanted: Vec<i64> = (0..40).map(|i| -5 + i * 1_000_000_007).collect();
    let ids_file = corpus_files::write_ids(&dir.path().join("ids.npy"), &wanted);
    let npy = start_embedding(&["--corpus", vectors.to_str().unwrap(), "--ids", ids_file.to_str().unwrap()]);
    let mut client = map_client(&npy).await;
    let ready = poll_until_final(&mut client, LIMIT).await.pop().unwrap();
    assert_eq!(ready.state(), MapState::Ready, "{:?}", ready.failure);
    assert_eq!(points(&ready).iter().map(|p| p.0).collect::<Vec<_>>(), wanted);
    assert!(ready.map.unwrap().parameters.unwrap().perplexity < 30.0, "perplexity clamped for 40 points");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_hnsw_index_gives_the_map_of_the_flat_index_of_its_vectors() {
    // The same 240 vectors, written by FAISS as IndexHNSWFlat and as IndexFlatL2: the graph is not
    // used, its storage is read in row order, so the maps are the same bit for bit.
    let mut maps = Vec::new();
    for fixture in ["clusters_hnsw.index", "clusters_flat_l2.index"] {
        let service = start_embedding(&["--corpus", fixtures_dir().join(fixture).to_str().unwrap()]);
        let mut client = map_client(&service).await;
        let ready = poll_until_final(&mut client, LIMIT).await.pop().unwrap();
        assert_eq!(ready.state(), MapState::Ready, "{fixture}: {:?}", ready.failure);
        maps.push(points(&ready).iter().map(|p| (p.0, p.1.to_bits(), p.2.to_bits())).collect::<Vec<_>>());
    }
    assert_eq!(maps[0].len(), 240);
    assert!(maps[0] == maps[1], "the HNSW index's map differs from the flat index's");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_float16_corpus_gives_the_map_of_the_same_values_in_float32() {
    // The values a float16 file can hold, written once as float16 and once widened to float32:
    // the same numbers, so the same map, point for point and bit for bit.
    let values: Vec<f32> =
        corpus_files::clustered(4, 30, 16).iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    let dir = tempfile::tempdir().unwrap();
    let halves = corpus_files::write_matrix_f16(&dir.path().join("half.npy"), 120, 16, &values);
    let singles = corpus_files::write_matrix(&dir.path().join("single.npy"), 120, 16, &values);
    let mut maps = Vec::new();
    for corpus in [halves, singles] {
        let service = start_embedding(&["--corpus", corpus.to_str().unwrap()]);
        let mut client = map_client(&service).await;
        let ready = poll_until_final(&mut client, LIMIT).await.pop().unwrap();
        assert_eq!(ready.state(), MapState::Ready, "{corpus:?}: {:?}", ready.failure);
        maps.push(points(&ready).iter().map(|p| (p.0, p.1.to_bits(), p.2.to_bits())).collect::<Vec<_>>());
    }
    assert_eq!(maps[0].len(), 120);
    assert_eq!(maps[0], maps[1], "float16 and float32 of the same values give the same map");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_corpora_fail_with_a_clear_message_while_health_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("garbage.index"), b"IxF2 this is not an index at all, just text").unwrap();
    let fixture = std::fs::read(fixtures_dir().join("clusters_flat_l2.index")).unwrap();
    std::fs::write(path("truncated.index"), &fixture[..fixture.len() / 2]).unwrap();
    std::fs::write(path("garbage.npy"), b"\x93NUMPY garbage").unwrap();
    std::fs::create_dir(path("directory.index")).unwrap();
    std::fs::write(path("ivf.index"), b"IwFl and an IVF index's lists would follow").unwrap();
    let mut with_nan = corpus_files::clustered(2, 10, 4);
    with_nan[13] = f32::NAN;
    corpus_files::write_matrix(&path("nan.npy"), 20, 4, &with_nan);
    corpus_files::write_matrix(&path("tiny.npy"), 3, 4, &[1.0; 12]);
    corpus_files::write_matrix(&path("fine.npy"), 20, 4, &corpus_files::clustered(2, 10, 4));
    let ids_path = fixtures_dir().join("clusters_ids.npy");

    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--corpus".into(), path("missing.npy").display().to_string()], "does not exist"),
        (vec!["--corpus".into(), path("directory.index").display().to_string()], "is a directory"),
        (vec!["--corpus".into(), path("garbage.index").display().to_string()], "is not a valid FAISS index"),
        (vec!["--corpus".into(), path("truncated.index").display().to_string()], "is not a valid FAISS index"),
        (vec!["--corpus".into(), path("garbage.npy").display().to_string()], "is not a valid .npy matrix"),
        (vec!["--corpus".into(), fixtures_dir().join("empty_flat.index").display().to_string()], "corpus is empty"),
        (vec!["--corpus".into(), path("ivf.index").display().to_string()], "IVF (IndexIVFFlat)"),
        (
            vec!["--corpus".into(), path("nan.npy").display().to_string()],
            "non-finite value (NaN or infinity) at row 3, column 1",
        ),
        (
            vec!["--corpus".into(), path("tiny.npy").display().to_string()],
            "corpus has 3 points; a map needs at least 7",
        ),
        (
            vec![
                "--corpus".into(),
                path("fine.npy").display().to_string(),
                "--ids".into(),
                ids_path.display().to_string(),
            ],
            "has 240 ids for 20 corpus rows",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let service = start_embedding(&args);
        let mut client = map_client(&service).await;
        let last = poll_until_final(&mut client, LIMIT).await.pop().unwrap();
        assert_eq!(last.state(), MapState::Failed, "{args:?} should fail");
        let message = last.failure.unwrap().message;
        assert!(message.contains(expected), "{args:?}: message {message:?} lacks {expected:?}");
        assert_eq!(health_status(&service, "").await, ServingStatus::Serving, "{args:?}: health still answers");
        assert_eq!(health_status(&service, MAP_READY).await, ServingStatus::NotServing);
        let log = service.log();
        assert!(log.contains(&message), "{args:?}: the log says the same; log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_computation_exits_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (clusters, per_cluster, dims) = (40, 750, 32);
    let corpus = corpus_files::write_matrix(
        &dir.path().join("large.npy"),
        clusters * per_cluster,
        dims,
        &corpus_files::clustered(clusters, per_cluster, dims),
    );
    let mut service = start_embedding(&["--corpus", corpus.to_str().unwrap()]);
    let mut client = map_client(&service).await;
    let first = client.get_embedding_map(GetEmbeddingMapRequest::default()).await.unwrap().into_inner();
    assert_eq!(first.state(), MapState::Computing, "the server answers before a 30k-point map is done");

    // Wait until the optimisation itself is running, with a watcher attached.
    let mut watch = client.watch_embedding_map(WatchEmbeddingMapRequest::default()).await.unwrap().into_inner();
    loop {
        let message = tokio::time::timeout(LIMIT, watch.next()).await.expect("watch stalled").unwrap().unwrap();
        assert_eq!(message.state(), MapState::Computing, "the map finished before the test could stop it");
        if message.progress.unwrap().phase() == Phase::Optimizing {
            break;
        }
    }
    service.signal("TERM");
    let (status, took) = service.wait_exit(Duration::from_secs(2)).expect("still running 2 s after SIGTERM");
    assert!(status.success(), "clean exit, got {status:?} after {took:?}");
    assert!(service.log().contains("SIGTERM"), "the log names the signal");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_only_health_answers_without_it_and_the_api_service_sends_it() {
    const TOKEN: &str = "embedding-token-0123456789";
    let service = start_embedding(&["--auth-token", TOKEN]);
    let mut client = map_client(&service).await;
    for (presented, expected) in [(None, false), (Some("wrong-token-0123456789"), false), (Some(TOKEN), true)] {
        let message = GetEmbeddingMapRequest { omit_points: true };
        let request = presented.map_or_else(|| tonic::Request::new(message), |token| authorized(message, token));
        let answer = client.get_embedding_map(request).await;
        match expected {
            true => assert!(answer.is_ok(), "{answer:?}"),
            false => assert_eq!(answer.unwrap_err().code(), tonic::Code::Unauthenticated, "{presented:?}"),
        }
    }
    let refresh = client.refresh_embedding_map(embeddingmap_proto::v1::RefreshEmbeddingMapRequest {}).await;
    assert_eq!(refresh.unwrap_err().code(), tonic::Code::Unauthenticated, "a refresh needs the token too");
    assert_eq!(health_status(&service, "").await, ServingStatus::Serving, "probes need no token");

    // The api-service with the token reaches the map; without it, it reports the refusal.
    let dir = tempfile::tempdir().unwrap();
    let status = async |extra: &[&str]| {
        let api = start_api(&dir.path().join("token.sqlite3"), &service.url(), extra);
        http_client()
            .get(http_url(&api, "/api/admin/embedding-map"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert!([200, 202].contains(&status(&["--embedding-token", TOKEN]).await));
    assert_eq!(status(&[]).await, 503);
}

/// Settings no corpus could make valid stop the service at once, naming the flag, rather than
/// leave it serving a map that can only fail.
#[test]
fn impossible_settings_stop_the_service_at_start_naming_the_flag() {
    for (flags, named) in [
        (&["--knn-probes", "0"][..], "--knn-probes"),
        (&["--iterations", "0"], "--iterations"),
        (&["--perplexity", "1"], "--perplexity"),
        (&["--refresh-fresh-above", "1.5"], "--refresh-fresh-above"),
    ] {
        let output = std::process::Command::new(end_to_end_tests::binary("embedding-service"))
            .args(["--listen", "127.0.0.1:0", "--map-store", ""])
            .args(flags)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flags:?} was accepted");
        assert!(said.contains(named), "{flags:?}: {said}");
        assert!(String::from_utf8_lossy(&output.stdout).is_empty(), "{flags:?}: it never listened");
    }
}

/// The embedding service answers as the api-service does where tonic's codes differ from the
/// gRPC spec: a request over the size limit is RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE).
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_request_is_resource_exhausted_as_on_the_api_service() {
    use embeddingmap_proto::v1::{
        FindNeighborsRequest, QueryVector, find_neighbors_request::Query,
        neighbor_service_client::NeighborServiceClient,
    };
    let service = start_embedding(&[]);
    let mut client = NeighborServiceClient::new(end_to_end_tests::connect(&service).await);
    let huge = FindNeighborsRequest { query: Some(Query::Vector(QueryVector { values: vec![0.5; 100_000] })), k: 1 };
    let error = client.find_neighbors(huge).await.expect_err("a 400 kB request");
    assert_eq!(error.code(), tonic::Code::ResourceExhausted, "{error:?}");
}
