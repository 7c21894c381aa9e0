//! The embedding service: computes a t-SNE map of an embedding corpus in the background and
//! serves its status (computing, ready, failed) over gRPC from the moment it starts.

pub mod clusters;
pub mod config;
pub mod corpus;
pub mod corpus_watch;
pub mod error;
mod faiss_ext;
mod faiss_layout;
pub mod files;
pub mod grpc;
pub mod health;
pub mod job;
pub mod map_store;
pub mod neighbor_batches;
pub mod neighbor_index;
pub mod pipeline;
pub mod server;
pub mod status;
pub mod telemetry;

/// Entry points for the fuzz targets in `fuzz/` and for replaying their corpus in tests.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    use crate::corpus::{Corpus, CorpusSource, read_npy_ids, read_npy_matrix};

    /// `data` as a `.npy` corpus matrix, then as an id vector; whatever parses is validated.
    pub fn npy_corpus(data: &[u8]) {
        let len = data.len() as u64;
        if let Ok(matrix) = read_npy_matrix(data, Path::new("<fuzz>"), len) {
            let rows = matrix.nrows();
            let _ = Corpus::new(matrix, None);
            let _ = read_npy_ids(data, Path::new("<fuzz>"), len, rows);
        }
    }

    /// `data` as a FAISS index file, loaded the way the service loads its corpus.
    pub fn faiss_index(data: &[u8]) {
        let Ok(file) = tempfile::NamedTempFile::new() else { return };
        if std::fs::write(file.path(), data).is_ok() {
            let _ = CorpusSource::FaissIndex(file.path().to_owned()).load();
        }
    }
}
