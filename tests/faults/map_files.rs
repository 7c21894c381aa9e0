//! Files on disk that must never make the map wrong or the embedding service stall: a vectors
//! file and its ids replaced one at a time, a FIFO as the corpus, a `.npy` header that promises
//! more than its file holds, and stored maps that are not this corpus's (or not maps at all).

use std::path::{Path, PathBuf};

use embeddingmap_proto::v1::{
    self as map_pb, EmbeddingMapStatus, FindNeighborsRequest, GetEmbeddingMapRequest, MapState, QueryVector,
    RefreshEmbeddingMapRequest, embedding_map_service_client::EmbeddingMapServiceClient, find_neighbors_request::Query,
    neighbor_service_client::NeighborServiceClient, refresh_outcome::Result as RefreshResult,
};
use end_to_end_tests::{connect, corpus_files, fixtures_dir, health_status, map_client};
use prost::Message;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

use super::*;

const LIMIT: Duration = Duration::from_secs(120);

async fn status_of_map(client: &EmbeddingMapServiceClient<Channel>) -> EmbeddingMapStatus {
    client.clone().get_embedding_map(GetEmbeddingMapRequest { omit_points: true }).await.unwrap().into_inner()
}

fn generation(status: &EmbeddingMapStatus) -> u64 {
    status.map.as_ref().map_or(0, |map| map.generation)
}

/// The most memory the process has held, in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next().and_then(|kib| kib.parse::<u64>().ok()));
    kib.unwrap_or(0) / 1024
}

/// Starts the service on `corpus` and waits up to `limit` for FAILED: the failure's message
/// (empty if it never failed) and the process.
async fn boot_failure(corpus: &Path, limit: Duration) -> (String, end_to_end_tests::ServiceProcess) {
    let service = start_embedding(&["--corpus", corpus.to_str().unwrap()]);
    let client = map_client(&service).await;
    let failed = within(limit, Duration::from_millis(10), async || {
        let status = status_of_map(&client).await;
        (status.state() == MapState::Failed).then_some(status)
    })
    .await;
    (failed.and_then(|status| status.failure).map(|failure| failure.message).unwrap_or_default(), service)
}

fn mkfifo(path: &Path) {
    let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// The committed real corpus (1,200 sentence embeddings x 384), as rows.
fn docs1200() -> Vec<Vec<f32>> {
    let file = std::fs::File::open(fixtures_dir().join("docs1200_X.npy")).unwrap();
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file)).unwrap();
    let columns = npy.shape()[1] as usize;
    npy.into_vec::<f32>().unwrap().chunks(columns).map(<[f32]>::to_vec).collect()
}

/// Writes `rows` and `ids` beside `vectors` and `ids_path` (not over them).
fn write_pair_aside(vectors: &Path, ids_path: &Path, rows: &[Vec<f32>], ids: &[i64]) -> (PathBuf, PathBuf) {
    let (new_vectors, new_ids) = (vectors.with_extension("npy.new"), ids_path.with_extension("npy.new"));
    corpus_files::write_matrix(&new_vectors, rows.len(), rows[0].len(), &rows.concat());
    corpus_files::write_ids(&new_ids, ids);
    (new_vectors, new_ids)
}

/// The reproduction: a reordered vectors file renamed over the corpus, then 3 s later the
/// matching ids renamed over the ids file, with the corpus watch on. No map with ids on the wrong
/// vectors may be published; once both are there, the map is the new pair's.
pub async fn two_file_update(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let (vectors, ids_path) = (dir.path().join("corpus.npy"), dir.path().join("ids.npy"));
    let rows = docs1200();
    let ids: Vec<i64> = (1000..1000 + rows.len() as i64).collect();
    let (new_vectors, new_ids) = write_pair_aside(&vectors, &ids_path, &rows, &ids);
    std::fs::rename(new_vectors, &vectors).unwrap();
    std::fs::rename(new_ids, &ids_path).unwrap();
    let service = start_embedding(&["--corpus", vectors.to_str().unwrap(), "--ids", ids_path.to_str().unwrap()]);
    let client = map_client(&service).await;
    eventually("the first map", LIMIT, Duration::from_millis(50), async || {
        (generation(&status_of_map(&client).await) == 1).then_some(())
    })
    .await;
    let row = card.row("corpus files");

    // The new version: the rows reversed, each keeping its id.
    let reversed_rows: Vec<Vec<f32>> = rows.iter().rev().cloned().collect();
    let reversed_ids: Vec<i64> = ids.iter().rev().copied().collect();
    let (new_vectors, new_ids) = write_pair_aside(&vectors, &ids_path, &reversed_rows, &reversed_ids);
    std::fs::rename(new_vectors, &vectors).unwrap();
    let renamed = Instant::now();
    let (mut polls, mut published, mut refused) = (0, Vec::new(), None);
    while renamed.elapsed() < Duration::from_secs(3) {
        let status = status_of_map(&client).await;
        polls += 1;
        if generation(&status) != 1 {
            published.push(generation(&status));
        }
        if let Some(last) = status.last_refresh.filter(|last| last.result() == RefreshResult::Failed) {
            refused.get_or_insert((renamed.elapsed(), last.failure.unwrap_or_default().message));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::rename(new_ids, &ids_path).unwrap();
    let ids_renamed = Instant::now();
    let next = within(LIMIT, Duration::from_millis(50), async || {
        let status = status_of_map(&client).await;
        (generation(&status) >= 2 && status.refresh.is_none()).then_some(status)
    })
    .await;
    let took = ids_renamed.elapsed();
    row.operations += polls + 1;
    let mut survived =
        row.check(published.is_empty(), format!("no map published while only the vectors changed: {published:?}"));
    let refused_well = refused.as_ref().is_some_and(|(_, message)| message.contains("ids.npy did not"));
    survived &= row.check(refused_well, format!("the half-changed pair refused as a failed refresh: {refused:?}"));
    survived &= row.check(next.as_ref().is_some_and(|status| generation(status) == 2), "the pair mapped once whole");

    // Row 0's vector is now the last row, still id 1000: its nearest neighbour is itself.
    let mut neighbors = NeighborServiceClient::new(connect(&service).await);
    let query = FindNeighborsRequest { query: Some(Query::Vector(QueryVector { values: rows[0].clone() })), k: 1 };
    let nearest = neighbors.find_neighbors(query).await.map(|answer| answer.into_inner());
    let nearest = nearest.ok().and_then(|answer| Some((answer.generation, *answer.neighbors.first()?)));
    let right = nearest.as_ref().is_some_and(|(generation, first)| *generation == 2 && first.id == 1000);
    survived &= row.check(right, format!("row 0's vector answers id 1000 in generation 2, got {nearest:?}"));
    row.fault(survived);
    let refused_after =
        refused.map_or_else(|| "never".to_owned(), |(after, _)| format!("{:.1} s", after.as_secs_f64()));
    row.figures.push(format!(
        "two-file update, vectors then ids 3 s later: {polls} polls, maps published in between {}, refused after \
         {refused_after}, new map {:.1} s after the ids",
        published.len(),
        took.as_secs_f64()
    ));
}

/// A FIFO as the corpus: at boot FAILED, on a refresh a failed refresh, each within a second, and
/// a good file renamed over it afterwards is mapped.
pub async fn fifo_corpus(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.npy");
    mkfifo(&fifo);
    let row = card.row("corpus files");

    let booted = Instant::now();
    let (message, service) = boot_failure(&fifo, Duration::from_secs(5)).await;
    let at_boot = booted.elapsed();
    row.operations += 1;
    let mut survived = row.check(message.contains("FIFO"), format!("a FIFO corpus at boot is FAILED, got {message:?}"));
    survived &= row.check(at_boot < Duration::from_secs(1), format!("FAILED within a second of start ({at_boot:?})"));
    row.fault(survived);
    drop(service);

    // On a refresh: a good corpus, then a FIFO renamed over it.
    let corpus = dir.path().join("corpus.npy");
    corpus_files::write_matrix(&corpus, 900, 16, &corpus_files::clustered(3, 300, 16));
    let service = start_embedding(&["--corpus", corpus.to_str().unwrap(), "--watch-corpus", "false"]);
    let mut client = map_client(&service).await;
    eventually("the first map", LIMIT, Duration::from_millis(50), async || {
        (generation(&status_of_map(&client).await) == 1).then_some(())
    })
    .await;
    let swap = dir.path().join("swap.npy");
    mkfifo(&swap);
    std::fs::rename(&swap, &corpus).unwrap();
    let asked = Instant::now();
    client.refresh_embedding_map(RefreshEmbeddingMapRequest {}).await.unwrap();
    let outcome = within(Duration::from_secs(5), Duration::from_millis(10), async || {
        let status = status_of_map(&client).await;
        status.last_refresh.filter(|last| last.result() == RefreshResult::Failed && status.refresh.is_none())
    })
    .await;
    let on_refresh = asked.elapsed();
    let message = outcome.and_then(|last| last.failure).map(|failure| failure.message).unwrap_or_default();
    let mut survived =
        row.check(message.contains("FIFO"), format!("a FIFO corpus on refresh is refused, got {message:?}"));
    survived &= row.check(on_refresh < Duration::from_secs(1), format!("refused within a second ({on_refresh:?})"));
    // Not stuck: a good file renamed over the FIFO is mapped.
    corpus_files::write_matrix(&swap, 1200, 16, &corpus_files::clustered(4, 300, 16));
    std::fs::rename(&swap, &corpus).unwrap();
    client.refresh_embedding_map(RefreshEmbeddingMapRequest {}).await.unwrap();
    let mapped = within(LIMIT, Duration::from_millis(50), async || {
        (generation(&status_of_map(&client).await) == 2).then_some(())
    })
    .await;
    survived &= row.check(mapped.is_some(), "a good corpus renamed over the FIFO is mapped");
    row.operations += 2;
    row.fault(survived);
    row.figures.push(format!(
        "FIFO corpus: FAILED {:.0} ms after start, refresh refused {:.0} ms after the request",
        at_boot.as_secs_f64() * 1000.0,
        on_refresh.as_secs_f64() * 1000.0
    ));
}

/// A sparse file whose `.npy` header declares 2M x 384 float32 (3 GB) in 1.5 GB: refused from its
/// length alone, memory flat.
pub async fn oversized_npy_header(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("sparse.npy");
    let mut header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2000000, 384), }".to_vec();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header);
    std::fs::write(&corpus, &bytes).unwrap();
    std::fs::OpenOptions::new().write(true).open(&corpus).unwrap().set_len(1_500_000_000).unwrap();

    let (message, service) = boot_failure(&corpus, Duration::from_secs(10)).await;
    let peak = peak_rss_mib(service.pid());
    let row = card.row("corpus files");
    row.operations += 1;
    let named = message.contains("3072000000 bytes of data") && message.contains("1499999872 bytes");
    let mut survived = row.check(named, format!("refused, naming the declared and actual sizes, got {message:?}"));
    survived &= row.check(peak < 200, format!("memory flat: peak RSS {peak} MiB"));
    row.fault(survived);
    row.figures.push(format!("sparse 1.5 GB .npy declaring 2M x 384: refused, peak RSS {peak} MiB"));
}

/// The one directory a store holds after a map of one corpus was stored.
fn stored_dir(store: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(store).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "one corpus, one directory: {dirs:?}");
    dirs.remove(0)
}

fn read_stored(dir: &Path) -> Option<map_pb::EmbeddingMap> {
    map_pb::EmbeddingMap::decode(std::fs::read(dir.join("map.pb")).ok()?.as_slice()).ok()
}

/// Starts the service on `corpus` with `store`, polling from its first answer until it serves the
/// map `want` (points, generation) with no refresh under way, or is FAILED: every other map served
/// meanwhile (points, generation), the final status, and the peak RSS.
async fn boot_and_watch(corpus: &Path, store: &Path, want: (u64, u64)) -> (Vec<(u64, u64)>, EmbeddingMapStatus, u64) {
    let service = start_embedding(&["--corpus", corpus.to_str().unwrap(), "--map-store", store.to_str().unwrap()]);
    let client = map_client(&service).await;
    let mut others = Vec::new();
    let last = eventually("the map settled", LIMIT, Duration::from_millis(10), async || {
        let status = status_of_map(&client).await;
        let served = status.map.as_ref().map(|map| (map.count, map.generation));
        if let Some(other) = served.filter(|&served| served != want) {
            others.push(other);
        }
        let settled = (served == Some(want) && status.refresh.is_none()) || status.state() == MapState::Failed;
        settled.then_some(status)
    })
    .await;
    others.dedup();
    (others, last, peak_rss_mib(service.pid()))
}

/// Stored maps that must not be served: another key's, a device, a generation with no successor;
/// a later generation of another corpus, which must not block storing this corpus's map; and a
/// map with the right key whose corpus cannot be read. Each boot is watched from its first answer.
pub async fn planted_stored_maps(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, store) = (dir.path().join("corpus.npy"), dir.path().join("maps"));
    corpus_files::write_matrix(&corpus, 900, 16, &corpus_files::clustered(3, 300, 16));
    let (others, first, _) = boot_and_watch(&corpus, &store, (900, 1)).await;
    assert!(others.is_empty() && first.state() == MapState::Ready, "the first map: {first:?}");
    let map_dir = stored_dir(&store);
    let genuine = read_stored(&map_dir).expect("the first map was stored");
    let key = std::fs::read_to_string(map_dir.join("key.txt")).unwrap();
    let planted = map_pb::EmbeddingMap {
        points: (0..3).map(|id| map_pb::Point { id: 900_000 + id, x: id as f32, y: 0.0 }).collect(),
        count: 3,
        generation: 7,
        corpus_fingerprint: "planted".into(),
        ..Default::default()
    };
    let write_map = |map: &map_pb::EmbeddingMap| std::fs::write(map_dir.join("map.pb"), map.encode_to_vec()).unwrap();
    let row = card.row("stored maps");
    let mut peaks = Vec::new();

    // Each planted file, then a boot: never served, memory flat, this corpus's map computed anew
    // (generation 1) and stored over the planted file.
    let plants: [(&str, &dyn Fn()); 3] = [
        ("a foreign map under another key", &|| {
            write_map(&planted);
            std::fs::write(map_dir.join("key.txt"), "corpus: another\n").unwrap();
        }),
        ("the map file a link to /dev/zero", &|| {
            std::fs::remove_file(map_dir.join("map.pb")).unwrap();
            std::os::unix::fs::symlink("/dev/zero", map_dir.join("map.pb")).unwrap();
        }),
        ("a generation of u64::MAX", &|| write_map(&map_pb::EmbeddingMap { generation: u64::MAX, ..genuine.clone() })),
    ];
    for (what, plant) in plants {
        plant();
        let (others, last, peak) = boot_and_watch(&corpus, &store, (900, 1)).await;
        peaks.push(peak);
        row.operations += 1;
        let mut survived = row.check(others.is_empty(), format!("{what}: never served, saw {others:?}"));
        survived &= row.check(
            last.state() == MapState::Ready,
            format!("{what}: this corpus's map, got {:?} {:?}", last.state(), last.failure),
        );
        survived &= row.check(peak < 200, format!("{what}: memory flat, peak RSS {peak} MiB"));
        let stored = read_stored(&map_dir).map(|map| (map.count, map.generation));
        survived &= row.check(stored == Some((900, 1)), format!("{what}: the store took this map, holds {stored:?}"));
        row.fault(survived);
    }

    // A later generation of another corpus under this key: served until the corpus is read (the
    // key is all that can be checked before), then replaced by this corpus's map, which is
    // stored over it.
    write_map(&map_pb::EmbeddingMap { generation: 1000, ..planted.clone() });
    std::fs::write(map_dir.join("key.txt"), &key).unwrap();
    let (others, last, _) = boot_and_watch(&corpus, &store, (900, 1001)).await;
    let stored = read_stored(&map_dir).map(|map| (map.count, map.generation));
    row.operations += 1;
    let replaced = last.state() == MapState::Ready && stored == Some((900, 1001));
    let survived = row.check(replaced, format!("a later foreign generation is replaced and stored over: {stored:?}"));
    row.fault(survived);
    let provisional = others.len();

    // The right key, a corpus that opens but is not a corpus: the stored map is served until the
    // corpus is read, then withdrawn, and the map's readiness with it.
    write_map(&planted);
    std::fs::write(&corpus, b"not a numpy file").unwrap();
    let service = start_embedding(&["--corpus", corpus.to_str().unwrap(), "--map-store", store.to_str().unwrap()]);
    let client = map_client(&service).await;
    let booted = Instant::now();
    let failed = within(Duration::from_secs(10), Duration::from_millis(10), async || {
        let status = status_of_map(&client).await;
        (status.state() == MapState::Failed).then_some(status)
    })
    .await;
    let withdrawn_after = booted.elapsed();
    let message = failed.and_then(|status| status.failure).map(|failure| failure.message).unwrap_or_default();
    let ready_health = health_status(&service, "embeddingmap.v1.MapReady").await;
    row.operations += 1;
    let mut survived = row.check(
        message.contains("not a valid .npy matrix") && message.contains("withdrawn"),
        format!("a corrupt corpus withdraws the stored map, FAILED with the reason: {message:?}"),
    );
    survived &= row.check(
        ready_health == ServingStatus::NotServing,
        format!("MapReady health NOT_SERVING once withdrawn, got {ready_health:?}"),
    );
    row.fault(survived);
    drop(service);

    // The right key, a corpus that cannot be opened: the stored map is not served.
    write_map(&planted);
    std::fs::remove_file(&corpus).unwrap();
    let (served, last, _) = boot_and_watch(&corpus, &store, (900, 1)).await;
    let message = last.failure.as_ref().map(|failure| failure.message.clone()).unwrap_or_default();
    row.operations += 1;
    let mut survived = row.check(served.is_empty(), format!("no stored map served without its corpus: {served:?}"));
    survived &= row.check(
        last.state() == MapState::Failed && message.contains("does not exist"),
        format!("FAILED, naming the missing corpus: {message:?}"),
    );
    row.fault(survived);
    row.figures.push(format!(
        "planted maps (another key, /dev/zero, u64::MAX generation, right key without its corpus): never served, \
         peak RSS {peaks:?} MiB; a later foreign generation under the right key: served as {provisional} map(s) \
         until the corpus was read, then replaced and stored over; the right key with a corrupt corpus: withdrawn \
         {:.0} ms after start",
        withdrawn_after.as_secs_f64() * 1000.0
    ));
}
