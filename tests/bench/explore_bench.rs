//! Latency of a point's true neighbours, measured against the real release binaries: for each
//! corpus given, `FindNeighbors` by id (k = 10) from 64 concurrent clients, straight to the
//! embedding service over gRPC and through the api-service over HTTP (names joined), with the
//! neighbour index's memory. The load generator shares the machine with the services.
//!
//!     cargo build --release --workspace --bins && $CARGO_TARGET_DIR/release/explore-bench X.npy [Y.npy ...]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use embeddingmap_proto::v1::{
    FindNeighborsRequest, find_neighbors_request::Query, neighbor_service_client::NeighborServiceClient,
};
use end_to_end_tests::{api::*, connect, eventually, start_embedding};
use serde_json::json;

const CLIENTS: usize = 64;
const QUERIES_PER_CLIENT: usize = 50;

#[tokio::main]
async fn main() {
    let corpora: Vec<String> = std::env::args().skip(1).collect();
    assert!(!corpora.is_empty(), "usage: explore-bench CORPUS.npy [...]");
    println!(
        "FindNeighbors, k = 10, {QUERIES_PER_CLIENT} queries per client (2-core machine, release build; the load generator shares the cores)"
    );
    println!("  corpus                  rows   dims  index MB   path           clients   queries/s   p50 ms   p99 ms");
    for corpus in corpora {
        let (rows, dims) = shape(&corpus);
        let embedding = start_embedding(&["--corpus", &corpus]);
        let dir = tempfile::tempdir().unwrap();
        let api = Arc::new(start_api(&dir.path().join("explore.sqlite3"), &embedding.url(), &[]));
        let items: Vec<_> = (0..rows).map(|id| json!({ "id": id, "name": format!("item {id}") })).collect();
        for chunk in items.chunks(10_000) {
            assert!(
                admin_post(&api, "/api/admin/items/import", &json!({ "items": chunk })).await.status().is_success()
            );
        }
        let channel = connect(&embedding).await;
        let request = |id: usize| FindNeighborsRequest { query: Some(Query::Id(id as i64)), k: 10 };
        // Measured once the map is READY, so the map's own computation does not share the cores.
        eventually("the map", Duration::from_secs(600), Duration::from_millis(200), async || {
            let status = http_client().get(http_url(&api, "/api/admin/embedding-map")).bearer_auth(ADMIN_TOKEN).send();
            (status.await.ok()?.status() == 200).then_some(())
        })
        .await;
        let index_mb = (rows * dims * 4) as f64 / 1e6;
        let name = std::path::Path::new(&corpus).file_name().unwrap().to_string_lossy().into_owned();
        for (path, clients) in [("gRPC, embedding", 1), ("gRPC, embedding", CLIENTS), ("HTTP, api-service", CLIENTS)] {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for client in 0..clients {
                let (channel, api, http) = (channel.clone(), api.clone(), http_client());
                tasks.push(tokio::spawn(async move {
                    let mut grpc = NeighborServiceClient::new(channel);
                    let mut latencies = Vec::with_capacity(QUERIES_PER_CLIENT);
                    for n in 0..QUERIES_PER_CLIENT {
                        let id = (client * 7919 + n * 104_729) % rows;
                        let sent = Instant::now();
                        if path.starts_with("gRPC") {
                            grpc.find_neighbors(request(id)).await.unwrap();
                        } else {
                            let url = http_url(&api, &format!("/api/admin/items/{id}/neighbors?k=10"));
                            let response = http.get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
                            assert_eq!(response.status(), 200);
                            response.bytes().await.unwrap();
                        }
                        latencies.push(sent.elapsed());
                    }
                    latencies
                }));
            }
            let mut latencies = Vec::new();
            for task in tasks {
                latencies.extend(task.await.unwrap());
            }
            let per_second = latencies.len() as f64 / started.elapsed().as_secs_f64();
            latencies.sort();
            let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
            println!(
                "  {name:<20} {rows:>7} {dims:>6} {index_mb:>9.1}   {path:<18} {clients:>3} {per_second:>11.0} {:>8.2} {:>8.2}",
                at(0.5),
                at(0.99)
            );
        }
    }
}

/// Rows and columns of a `.npy` matrix, from its header.
fn shape(path: &str) -> (usize, usize) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let npy = npyz::NpyFile::new(file).unwrap();
    (npy.shape()[0] as usize, npy.shape()[1] as usize)
}
