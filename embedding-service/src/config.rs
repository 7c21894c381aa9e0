//! Command-line flags and environment variables (every flag has an `EMBEDDING_*` twin).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use service_kit::{LogFormat, parse_duration};

use crate::pipeline::MapSettings;

service_kit::connection_args!("EMBEDDING_");

#[derive(Clone, Parser)]
#[command(name = "embedding-service", version, about)]
pub struct Config {
    /// Address the gRPC server binds; port 0 picks a free port (printed at start).
    #[arg(long, env = "EMBEDDING_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Prometheus metrics (`GET /metrics`) listen address; unset serves none. Not authenticated:
    /// keep it off the public network (deploy/ admits only the scraper).
    #[arg(long, env = "EMBEDDING_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Corpus to map: a FAISS index file (flat, IP or L2, HNSW over flat storage, or float16 codes;
    /// with or without an ID map) or a float16, float32 or float64 `.npy` matrix. Without one, the bundled demo corpus
    /// (scikit-learn's digits) is served.
    #[arg(long, env = "EMBEDDING_CORPUS")]
    pub corpus: Option<PathBuf>,

    /// Item ids for a `.npy` corpus: an integer `.npy` vector, one id per row (default: row numbers).
    #[arg(long, env = "EMBEDDING_IDS", requires = "corpus")]
    pub ids: Option<PathBuf>,

    /// Refresh the map when the corpus files change on disk (replaced or rewritten), noticed
    /// within about 2 s; `false` leaves refreshes to RefreshEmbeddingMap and SIGHUP.
    #[arg(long, env = "EMBEDDING_WATCH_CORPUS", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_corpus: bool,

    /// Where READY maps are kept, so a restart serves the last one at once and replicas sharing
    /// the directory agree; empty turns the store off.
    // An OS string parsed to a path: clap's path parser refuses the empty value that means "off".
    #[arg(long, env = "EMBEDDING_MAP_STORE", default_value = "data/maps",
          value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from))]
    pub map_store: PathBuf,

    #[command(flatten)]
    pub map: MapSettings,

    /// Largest gRPC message the server sends; a READY map of N points takes about 17 bytes per
    /// point. (Requests are a few bytes; larger ones are refused unread.)
    #[arg(long, env = "EMBEDDING_MAX_MESSAGE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Bearer token every call but gRPC health must carry (the api-service's
    /// `--embedding-token`). Without one the service is open to whoever can reach it: keep it
    /// behind the NetworkPolicy in `deploy/`.
    #[arg(long, env = "EMBEDDING_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,

    #[command(flatten)]
    pub connections: ConnectionArgs,

    /// Longest time from a call's arrival to its answer's headers (a watch stream then runs on).
    #[arg(long, env = "EMBEDDING_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// How long in-flight calls may run after SIGTERM before the server stops anyway.
    #[arg(long, env = "EMBEDDING_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "EMBEDDING_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl std::fmt::Debug for Config {
    // Written by hand so the token never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("corpus", &self.corpus)
            .field("ids", &self.ids)
            .field("map", &self.map)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_parses_from_its_defaults() {
        let config = Config::try_parse_from(["embedding-service"]).unwrap();
        assert_eq!(config.map_store, PathBuf::from("data/maps"));
        let off = Config::try_parse_from(["embedding-service", "--map-store", ""]).unwrap();
        assert!(off.map_store.as_os_str().is_empty(), "an empty store turns it off");
        assert_eq!(config.map.perplexity, 30.0);
        assert_eq!(config.map.iterations, 500);
        assert!(config.corpus.is_none());
        assert_eq!(config.map.learning_rate, 0.0);
        assert_eq!(config.map.exaggeration_iterations, 250);
    }

    #[test]
    fn configuration_reference_is_current() {
        let document = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let command = <Config as clap::CommandFactory>::command();
        service_kit::config_doc::check_section(&document, "embedding-service", &command).unwrap();
    }
}
