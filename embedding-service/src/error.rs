//! Why a map could not be computed. Every variant reads as advice to the operator, because the
//! message is what `GetEmbeddingMap` reports as FAILED and what the log says.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("corpus file {path} does not exist: check --corpus / EMBEDDING_CORPUS")]
    CorpusMissing { path: PathBuf },

    #[error("corpus file {path} cannot be read: {reason}")]
    CorpusUnreadable { path: PathBuf, reason: String },

    #[error("corpus file {path} is not a valid {format}: {reason}")]
    CorpusCorrupt { path: PathBuf, format: &'static str, reason: String },

    #[error(
        "corpus file {path} holds a FAISS {found} index, which is not supported: write a flat \
         index (IndexFlatIP or IndexFlatL2), an IndexHNSWFlat or an SQfp16 IndexScalarQuantizer, \
         optionally inside IndexIDMap, or a float16, float32 or float64 .npy matrix"
    )]
    UnsupportedIndex { path: PathBuf, found: String },

    #[error("corpus is empty: it holds no vectors to map")]
    EmptyCorpus,

    #[error(
        "corpus has a non-finite value (NaN or infinity) at row {row}, column {column}: clean the vectors and restart"
    )]
    NonFinite { row: usize, column: usize },

    #[error("corpus has {points} points; a map needs at least {needed}")]
    TooFewPoints { points: usize, needed: usize },

    #[error("ids file {path} has {ids} ids for {rows} corpus rows: give one id per row")]
    IdCountMismatch { path: PathBuf, ids: usize, rows: usize },

    #[error(
        "{changed} changed but {unchanged} did not: a vectors file and its ids file are read only \
         once both have changed, so that no id lands on another item's vector (replace both; to \
         keep the ids, rename a copy of them over the ids file)"
    )]
    HalfChangedPair { changed: PathBuf, unchanged: PathBuf },

    #[error("item id {id} appears twice (rows {first} and {second}): ids must be unique")]
    DuplicateId { id: i64, first: usize, second: usize },

    #[error(
        "the served map is generation {generation}, the last one a map may carry: clear the map \
         store (--map-store) and restart to begin again at 1"
    )]
    GenerationsExhausted { generation: u64 },

    #[error("invalid map parameter: {0}")]
    InvalidParameter(String),

    #[error("FAISS failed during {step}: {reason}")]
    Faiss { step: &'static str, reason: String },

    #[error("the map computation crashed ({0}); this is a bug, please report it with the log")]
    Crashed(String),
}

impl MapError {
    /// The corpus could not be read as a corpus (missing, unreadable, corrupt, invalid), as
    /// opposed to a map that could not be computed from one.
    pub fn is_corpus_load_error(&self) -> bool {
        matches!(
            self,
            MapError::CorpusMissing { .. }
                | MapError::CorpusUnreadable { .. }
                | MapError::CorpusCorrupt { .. }
                | MapError::UnsupportedIndex { .. }
                | MapError::EmptyCorpus
                | MapError::NonFinite { .. }
                | MapError::IdCountMismatch { .. }
                | MapError::DuplicateId { .. }
                | MapError::HalfChangedPair { .. }
        )
    }

    pub fn faiss(step: &'static str, error: impl std::fmt::Display) -> Self {
        MapError::Faiss { step, reason: error.to_string() }
    }
}
