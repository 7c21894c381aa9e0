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
    EmbeddingMapStatus, GetEmbeddingMapRequest, MapState, RefreshEmbeddingMapRequest,
    refresh_embedding_map_response::Start, refresh_outcome::Result as RefreshResult,
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

fn generation(status: &EmbeddingMapStatus) -> u64 {
    status.map.as_ref().map_or(0, |map| map.generation)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_corpus_gives_a_new_map_while_the_current_one_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (vectors, ids) = write_corpus(dir.path(), 6, 0);
    let service = start_embedding(&["--corpus", vectors.to_str().unwrap(), "--ids", ids.to_str().unwrap()]);
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
    let poller = tokio::spawn({
        let (stop, mut client) = (stop.clone(), client.clone());
        async move {
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
        }
    });
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
