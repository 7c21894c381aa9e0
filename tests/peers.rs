//! Clients no one here wrote, against the real services: Python's grpcio (with
//! grpcio-health-checking) over gRPC, Python's stock reflection client (grpcio-reflection), and
//! Connect's gRPC-web transport for Node over HTTP/1.1.
//! `scripts/test.sh` installs both (a venv and `npm ci` in tests/peers).

use std::process::Command;

use end_to_end_tests::{api::*, peers_dir, peers_python as python, start_embedding};

fn run_peer(program: &std::path::Path, script: &str, args: &[&str]) -> String {
    let output = Command::new(program).arg(peers_dir().join(script)).args(args).output().expect("start the peer");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{script} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn python_grpcio_and_node_grpc_web_clients_use_both_services() {
    assert!(peers_dir().join("node_modules").exists(), "run scripts/test.sh, which runs npm ci in tests/peers");
    let embedding = start_embedding(&[]);
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("peers.sqlite3"), &embedding.url(), &[]);
    import_digits(&api).await;

    let descriptors = dir.path().join("descriptors.bin");
    std::fs::write(&descriptors, embeddingmap_proto::FILE_DESCRIPTOR_SET).unwrap();
    let descriptors = descriptors.to_str().unwrap();
    let grpc_address = api.address_of(GRPC).to_string();

    let python_says = run_peer(&python(), "grpcio_peer.py", &[descriptors, &grpc_address, ADMIN_TOKEN]);
    assert!(python_says.contains("python grpcio peer: ok (1797 points)"), "{python_says}");
    let node_says = run_peer(
        std::path::Path::new("node"),
        "grpcweb_peer.mjs",
        &[descriptors, &format!("http://{grpc_address}"), ADMIN_TOKEN],
    );
    assert!(node_says.contains("grpc-web peer: ok (1797 points)"), "{node_says}");
}

/// The services a reflection peer's output lists, sorted.
fn listed_services(says: &str) -> Vec<String> {
    let line = says.lines().find_map(|line| line.strip_prefix("services: ")).unwrap_or_default();
    let mut services: Vec<String> = line.split(", ").filter(|name| !name.is_empty()).map(str::to_owned).collect();
    services.sort();
    services
}

/// Each server lists exactly the services it serves: the named ones, health and reflection.
fn served_with_health_and_reflection(named: &[&str]) -> Vec<String> {
    let common =
        ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];
    let mut services: Vec<String> = named.iter().chain(&common).map(|name| (*name).to_owned()).collect();
    services.sort();
    services
}

#[tokio::test(flavor = "multi_thread")]
async fn python_stock_reflection_client_lists_and_calls_both_services() {
    let embedding = start_embedding(&[]);
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("reflection.sqlite3"), &embedding.url(), &[]);

    let embedding_address = embedding.url().trim_start_matches("http://").to_owned();
    let says = run_peer(
        &python(),
        "reflection_peer.py",
        &[&embedding_address, "embeddingmap.v1.EmbeddingMapService", "GetEmbeddingMap"],
    );
    assert!(says.contains("reflection peer: ok (MAP_STATE_"), "{says}");
    let served = ["embeddingmap.v1.EmbeddingMapService", "embeddingmap.v1.NeighborService"];
    assert_eq!(
        listed_services(&says),
        served_with_health_and_reflection(&served),
        "the embedding service lists what it serves"
    );

    let api_address = api.address_of(GRPC).to_string();
    let service = "embeddingmap.api.v1.AdminMapService";
    let says = run_peer(&python(), "reflection_peer.py", &[&api_address, service, "GetEmbeddingMap", ADMIN_TOKEN]);
    assert!(says.contains("reflection peer: ok (MAP_STATE_"), "{says}");
    let served = [
        "embeddingmap.api.v1.AdminMapService",
        "embeddingmap.api.v1.AdminNeighborService",
        "embeddingmap.api.v1.EventService",
        "embeddingmap.api.v1.ItemService",
        "embeddingmap.api.v1.StatsService",
    ];
    assert_eq!(
        listed_services(&says),
        served_with_health_and_reflection(&served),
        "the api-service lists what it serves"
    );
}
