//! Neighbour queries that arrive together are answered together. Callers queue their checked
//! query; one thread ("neighbor-search") takes everything waiting (up to `MAX_BATCH`), answers
//! it with one pass over the vectors (`NeighborIndex::search`) and replies to each. While a
//! batch computes, the next one gathers, so under load the vectors are read once per batch
//! instead of once per query, and a lone query is answered at once.

use std::{sync::Arc, time::Instant};

use tokio::sync::{mpsc, oneshot};

use crate::neighbor_index::{NeighborIndex, Query};

/// Most queries answered in one pass: past this a batch's product costs more than the memory
/// traffic it saves, and the first caller's wait grows with it.
pub const MAX_BATCH: usize = 64;
/// Queries waiting beyond this make callers wait to queue (the gRPC concurrency limits bound
/// them long before).
const QUEUE: usize = 4096;

/// One query, the index it was checked against, and where its answer goes.
struct Waiting {
    index: Arc<NeighborIndex>,
    query: Query,
    queued: Instant,
    reply: oneshot::Sender<Vec<(i64, f32)>>,
}

/// The queue of the batching thread; cloned into each service that asks.
#[derive(Clone)]
pub struct NeighborBatches {
    queue: mpsc::Sender<Waiting>,
}

#[derive(Debug, thiserror::Error)]
#[error("the neighbour search stopped")]
pub struct SearchStopped;

impl NeighborBatches {
    /// Starts the batching thread. It ends when the last `NeighborBatches` is dropped.
    pub fn start() -> std::io::Result<Self> {
        let (queue, waiting) = mpsc::channel(QUEUE);
        std::thread::Builder::new().name("neighbor-search".into()).spawn(move || answer_batches(waiting))?;
        Ok(NeighborBatches { queue })
    }

    /// `query`'s answer from `index`, computed in the next batch.
    pub async fn search(&self, index: Arc<NeighborIndex>, query: Query) -> Result<Vec<(i64, f32)>, SearchStopped> {
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting { index, query, queued: Instant::now(), reply };
        self.queue.send(waiting).await.map_err(|_| SearchStopped)?;
        answer.await.map_err(|_| SearchStopped)
    }
}

fn answer_batches(mut waiting: mpsc::Receiver<Waiting>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while waiting.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        // A caller that has gone (cancelled, or past its deadline) is not worth a scan.
        batch.retain(|item| !item.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        metrics::histogram!("embedding_neighbor_batch_size").record(batch.len() as f64);
        // A refresh may swap the index between queries of one batch: each index answers its own.
        while !batch.is_empty() {
            let index = batch[0].index.clone();
            let (same, rest): (Vec<Waiting>, Vec<Waiting>) =
                batch.drain(..).partition(|item| Arc::ptr_eq(&item.index, &index));
            batch = rest;
            let queries: Vec<Query> = same.iter().map(|item| item.query.clone()).collect();
            // A panic here would end the thread and every later query with it; it fails this
            // batch's callers (their replies are dropped) and the thread goes on.
            let Ok(answers) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| index.search(&queries))) else {
                tracing::error!(queries = same.len(), "the neighbour search panicked");
                continue;
            };
            for (item, answer) in same.into_iter().zip(answers) {
                metrics::histogram!("embedding_neighbor_query_seconds").record(item.queued.elapsed());
                let _ = item.reply.send(answer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;

    fn index(rows: usize) -> Arc<NeighborIndex> {
        let vectors = Array2::from_shape_fn((rows, 8), |(row, col)| ((row * 7 + col * 3) % 11) as f32 - 5.0);
        Arc::new(NeighborIndex::new((0..rows as i64).collect(), vectors))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_queries_get_their_own_answers_across_two_indexes() {
        let batches = NeighborBatches::start().unwrap();
        let (first, second) = (index(500), index(300));
        let mut asked = Vec::new();
        for id in 0..200i64 {
            let index = if id % 3 == 0 { second.clone() } else { first.clone() };
            let query = index.query_by_id(id, 5).unwrap();
            let expected = index.by_id(id, 5).unwrap();
            let batches = batches.clone();
            asked.push(tokio::spawn(async move { (batches.search(index, query).await.unwrap(), expected) }));
        }
        for task in asked {
            let (answer, expected) = task.await.unwrap();
            assert_eq!(answer, expected);
        }
        // A lone query, nothing else queued, is answered too.
        let lone = first.query_by_id(1, 3).unwrap();
        assert_eq!(batches.search(first.clone(), lone).await.unwrap(), first.by_id(1, 3).unwrap());
    }
}
