//! Command-line flags and environment variables (every flag has an `API_*` twin).

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use service_kit::{LogFormat, parse_duration};

service_kit::connection_args!("API_");

#[derive(Clone, Parser)]
#[command(name = "api-service", version, about)]
pub struct Config {
    /// gRPC and gRPC-web (HTTP/1.1 accepted) listen address; port 0 picks a free port.
    #[arg(long, env = "API_GRPC_LISTEN", default_value = "0.0.0.0:8080")]
    pub grpc_listen: SocketAddr,

    /// HTTP JSON and probes (/livez, /readyz) listen address.
    #[arg(long, env = "API_HTTP_LISTEN", default_value = "0.0.0.0:8081")]
    pub http_listen: SocketAddr,

    /// Prometheus metrics (`GET /metrics`) listen address; unset serves none. Not
    /// authenticated: keep it off the public network (deploy/ admits only the scraper). It carries
    /// no token, id or item data.
    #[arg(long, env = "API_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// The database: a SQLite file, created if missing (on a local filesystem: WAL), or a
    /// `postgres://user:password@host/db` URL, which several replicas may share. Any password is
    /// never logged.
    #[arg(
        long,
        env = "API_DATABASE",
        default_value = "data/api.sqlite3",
        hide_env_values = true,
        value_parser = crate::db::Target::parse
    )]
    pub database: crate::db::Target,

    /// Pooled database connections.
    #[arg(long, env = "API_DATABASE_CONNECTIONS", default_value_t = 8)]
    pub database_connections: u32,

    /// Who checkpoints the SQLite WAL: `sqlite` (its auto-checkpoint, every 1000 pages) or
    /// `replicator` (never the service: Litestream beside it checkpoints after shipping each
    /// frame, as its docs advise under write load; without a replicator the WAL grows).
    #[arg(long, env = "API_WAL_CHECKPOINTS", value_enum, default_value_t = crate::db::Checkpoints::Sqlite)]
    pub wal_checkpoints: crate::db::Checkpoints,

    /// The embedding service's gRPC URL.
    #[arg(long, env = "API_EMBEDDING_URL", default_value = "http://127.0.0.1:50051")]
    pub embedding_url: String,

    /// gRPC-web base URL the admin page calls; empty means the page's own origin (this HTTP
    /// port also serves the admin map service as gRPC-web).
    #[arg(long, env = "API_ADMIN_GRPC_WEB_URL", default_value = "")]
    pub admin_grpc_web_url: String,

    /// Bearer token for the admin routes.
    #[arg(long, env = "API_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,

    /// Origins allowed to call from a browser (gRPC-web and JSON), comma-separated.
    #[arg(long, env = "API_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Deadline for one request, database work included.
    #[arg(long, env = "API_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Bearer token the embedding service requires (its `--auth-token`), if it has one.
    #[arg(long, env = "API_EMBEDDING_TOKEN", hide_env_values = true)]
    pub embedding_token: Option<String>,

    /// Connect timeout towards the embedding service.
    #[arg(long, env = "API_EMBEDDING_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub embedding_connect_timeout: Duration,

    /// Per-call timeout towards the embedding service.
    #[arg(long, env = "API_EMBEDDING_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub embedding_timeout: Duration,

    /// Largest HTTP body and gRPC message accepted.
    #[arg(long, env = "API_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest gRPC message sent (a READY map of N points takes about 40 bytes a point).
    #[arg(long, env = "API_MAX_RESPONSE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_response_bytes: usize,

    /// Requests served at once per transport (one budget for the gRPC port, one for the HTTP
    /// port); more wait.
    #[arg(long, env = "API_CONCURRENCY_LIMIT", default_value_t = 512)]
    pub concurrency_limit: usize,

    /// Most events written in one transaction by the event writer (group commit).
    #[arg(long, env = "API_EVENT_BATCH_MAX", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub event_batch_max: u32,

    /// How long the event writer waits for more events once it has one; 0 writes what is
    /// queued at once (batches still grow with the load: events queue while a batch commits).
    #[arg(long, env = "API_EVENT_BATCH_WAIT", default_value = "0s", value_parser = parse_duration)]
    pub event_batch_wait: Duration,

    /// Events waiting for the writer at most; past it, 503 with Retry-After (gRPC UNAVAILABLE).
    #[arg(long, env = "API_EVENT_QUEUE", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub event_queue: u32,

    /// Events a client may record per second (token bucket); 0 turns the limit off. Over it: 429
    /// with Retry-After (gRPC RESOURCE_EXHAUSTED).
    #[arg(long, env = "API_EVENT_RATE_LIMIT", default_value_t = 0.0)]
    pub event_rate_limit: f64,

    /// Events a client may send at once before the rate applies; 0 means one second's worth.
    #[arg(long, env = "API_EVENT_RATE_BURST", default_value_t = 0)]
    pub event_rate_burst: u32,

    /// Proxies whose `X-Forwarded-For` names the client for the rate limit (comma-separated
    /// addresses); from anyone else the header is ignored.
    #[arg(long, env = "API_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// After SIGTERM, how long to keep accepting requests with /readyz at 503 before closing the
    /// listeners. Use when nothing else (a Kubernetes preStop hook) delays SIGTERM.
    #[arg(long, env = "API_READINESS_DRAIN", default_value = "0s", value_parser = parse_duration)]
    pub readiness_drain: Duration,

    /// How long a PostgreSQL database may fail to answer before /readyz does: shorter outages (a
    /// failover) are answered with retryable 503s while the replica stays in the Service, so a
    /// brief one never leaves it without endpoints. (SQLite's ping never gates readiness.)
    #[arg(long, env = "API_DATABASE_OUTAGE_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub database_outage_grace: Duration,

    /// How long in-flight requests may run after SIGTERM.
    #[arg(long, env = "API_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub connections: ConnectionArgs,

    /// Log format.
    #[arg(long, env = "API_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// The event writer's batches, as the flags set them.
    pub fn event_batches(&self) -> crate::event_writer::BatchSettings {
        crate::event_writer::BatchSettings {
            max_batch: self.event_batch_max as usize,
            max_wait: self.event_batch_wait,
            queue: self.event_queue as usize,
        }
    }
}

impl std::fmt::Debug for Config {
    // Written by hand so the admin token never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("grpc_listen", &self.grpc_listen)
            .field("http_listen", &self.http_listen)
            .field("database", &self.database)
            .field("embedding_url", &self.embedding_url)
            .field("admin_token", &"<redacted>")
            .field("embedding_token", &self.embedding_token.as_ref().map(|_| "<redacted>"))
            .field("cors_origins", &self.cors_origins)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_reference_is_current() {
        let document = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let command = <Config as clap::CommandFactory>::command();
        service_kit::config_doc::check_section(&document, "api-service", &command).unwrap();
    }
}
