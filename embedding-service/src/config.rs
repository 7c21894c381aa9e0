//! Command-line flags and environment variables (every flag has an `EMBEDDING_*` twin).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use service_kit::{LogFormat, parse_duration};

use crate::pipeline::{GradientMethod, Initialization, KnnMethod, MapSettings};

#[derive(Debug, Clone, Parser)]
#[command(name = "embedding-service", version, about)]
pub struct Config {
    /// Address the gRPC server binds; port 0 picks a free port (printed at start).
    #[arg(long, env = "EMBEDDING_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Corpus to map: a FAISS index file (flat, IP or L2, with or without an ID map) or a float32
    /// `.npy` matrix. Without one, the bundled demo corpus (scikit-learn's digits) is served.
    #[arg(long, env = "EMBEDDING_CORPUS")]
    pub corpus: Option<PathBuf>,

    /// Item ids for a `.npy` corpus: an integer `.npy` vector, one id per row (default: row numbers).
    #[arg(long, env = "EMBEDDING_IDS", requires = "corpus")]
    pub ids: Option<PathBuf>,

    #[command(flatten)]
    pub map: MapArgs,

    /// Largest gRPC message the server sends or accepts; a READY map of N points takes about
    /// 17 bytes per point.
    #[arg(long, env = "EMBEDDING_MAX_MESSAGE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// How long in-flight calls may run after SIGTERM before the server stops anyway.
    #[arg(long, env = "EMBEDDING_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "EMBEDDING_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The map's parameters; shared with the benchmark command so both run the same pipeline.
#[derive(Debug, Clone, clap::Args)]
pub struct MapArgs {
    /// t-SNE perplexity; clamped to (N - 1) / 3 for small corpora.
    #[arg(long, env = "EMBEDDING_PERPLEXITY", default_value_t = 30.0)]
    pub perplexity: f64,

    /// Optimisation iterations in all, early exaggeration included. With the learning rate raised
    /// after exaggeration, 400 reach the quality the usual 1000 do (see the README's figures).
    #[arg(long, env = "EMBEDDING_ITERATIONS", default_value_t = 400)]
    pub iterations: u32,

    /// Iterations with early exaggeration, at the start.
    #[arg(long, env = "EMBEDDING_EXAGGERATION_ITERATIONS", default_value_t = 200)]
    pub exaggeration_iterations: u32,

    /// Seed for every random choice (random initialisation); with PCA initialisation the map is
    /// a pure function of the corpus.
    #[arg(long, env = "EMBEDDING_SEED", default_value_t = 42)]
    pub seed: u64,

    /// Dimensions to project to with PCA before the neighbour search, when the corpus is wider.
    #[arg(long, env = "EMBEDDING_PCA_DIMS", default_value_t = 50)]
    pub pca_dims: u32,

    /// Worker threads for the computation (FAISS and t-SNE); 0 uses every core.
    #[arg(long, env = "EMBEDDING_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Learning rate during early exaggeration; 0 picks N / 12 (N / exaggeration, as openTSNE).
    #[arg(long, env = "EMBEDDING_LEARNING_RATE", default_value_t = 0.0)]
    pub learning_rate: f64,

    /// Learning rate once early exaggeration ends; 0 picks N / 4. Raising it there (openTSNE
    /// raises it to N) converges in fewer iterations; N / 4 with steps capped at 5 map units
    /// scored as well as N and keeps the map, and with it the FFT grid, smaller.
    #[arg(long, env = "EMBEDDING_FINAL_LEARNING_RATE", default_value_t = 0.0)]
    pub final_learning_rate: f64,

    /// Nearest-neighbour search.
    #[arg(long, env = "EMBEDDING_KNN", value_enum, default_value_t = KnnChoice::Auto)]
    pub knn: KnnChoice,

    /// With `--knn cells` (and auto), how many nearest cells each cell's points are searched
    /// among. 48 finds about the share of true neighbours openTSNE's Annoy search does.
    #[arg(long, env = "EMBEDDING_KNN_PROBES", default_value_t = 48)]
    pub knn_probes: usize,

    /// Repulsive-force approximation.
    #[arg(long, env = "EMBEDDING_GRADIENT", value_enum, default_value_t = GradientChoice::Auto)]
    pub gradient: GradientChoice,

    /// Initial layout.
    #[arg(long, env = "EMBEDDING_INIT", value_enum, default_value_t = Initialization::Pca)]
    pub init: Initialization,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KnnChoice {
    /// Exact while there are no more cells than --knn-probes (about probes squared points),
    /// cells above.
    Auto,
    /// FAISS flat: every pair compared.
    Exact,
    /// FAISS HNSW graph.
    Hnsw,
    /// k-means cells (about sqrt(N) points each), each searched exactly among its nearest cells.
    Cells,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GradientChoice {
    /// Barnes-Hut for small corpora, FFT interpolation above.
    Auto,
    Fft,
    BarnesHut,
}

impl MapArgs {
    pub fn settings(&self) -> MapSettings {
        MapSettings {
            perplexity: self.perplexity,
            iterations: self.iterations,
            exaggeration_iterations: self.exaggeration_iterations.min(self.iterations),
            early_exaggeration: 12.0,
            seed: self.seed,
            pca_dims: self.pca_dims,
            threads: self.threads,
            learning_rate: (self.learning_rate > 0.0).then_some(self.learning_rate),
            final_learning_rate: (self.final_learning_rate > 0.0).then_some(self.final_learning_rate),
            knn: match self.knn {
                KnnChoice::Auto => None,
                KnnChoice::Exact => Some(KnnMethod::Exact),
                KnnChoice::Hnsw => Some(KnnMethod::Hnsw),
                KnnChoice::Cells => Some(KnnMethod::Cells { probes: self.knn_probes }),
            },
            knn_probes: self.knn_probes,
            gradient: match self.gradient {
                GradientChoice::Auto => None,
                GradientChoice::Fft => Some(GradientMethod::Fft),
                GradientChoice::BarnesHut => Some(GradientMethod::BarnesHut),
            },
            init: self.init,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_parses_from_its_defaults() {
        let config = Config::try_parse_from(["embedding-service"]).unwrap();
        assert_eq!(config.map.perplexity, 30.0);
        assert_eq!(config.map.iterations, 400);
        assert!(config.corpus.is_none());
        let settings = config.map.settings();
        assert_eq!(settings.learning_rate, None);
        assert_eq!(settings.exaggeration_iterations, 200);
    }
}
