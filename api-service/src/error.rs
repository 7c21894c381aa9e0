//! The api-service's one error type, and its one mapping to gRPC codes and HTTP statuses.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tonic::Code;

/// Seconds a client should wait before retrying a retryable error.
pub const RETRY_AFTER_SECONDS: u64 = 2;

/// One row of the error table: how an error reads on each transport.
struct ErrorKind {
    grpc: Code,
    http: StatusCode,
    /// Stable, machine-readable: the HTTP body's `error.code`.
    name: &'static str,
    /// Worth retrying after a pause: HTTP says `Retry-After`, gRPC the same in `retry-after`
    /// metadata.
    retryable: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    #[error("malformed JSON body: {0}")]
    MalformedJson(String),

    #[error("expected a body with content type application/json")]
    UnsupportedMediaType,

    #[error("the request body is too large")]
    PayloadTooLarge,

    #[error("method not allowed on this path")]
    MethodNotAllowed,

    #[error("{what} not found")]
    NotFound { what: String },

    #[error("{what} already exists")]
    AlreadyExists { what: String },

    #[error("client_key was already used for a different event; send a new unique key (a UUID) per event")]
    KeyReused,

    #[error("too many events from this client; retry after the delay given")]
    RateLimited,

    #[error("missing or invalid admin token")]
    Unauthenticated,

    #[error("the database is busy; retry shortly")]
    DatabaseBusy,

    #[error("too many writes are waiting for the database; retry shortly")]
    Overloaded,

    #[error("the service is shutting down; retry shortly")]
    ShuttingDown,

    #[error("the embedding service cannot be reached: {0}")]
    EmbeddingUnavailable(String),

    #[error("generation {asked} is not the map served ({served}); ask again about the map served")]
    GenerationNotServed { asked: u64, served: String },

    #[error("the embedding map failed in {phase}: {message}")]
    MapFailed { phase: String, message: String },

    #[error("internal error; see the service log")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::NotFound { what: what.into() }
    }

    /// The mapping table: every variant's row.
    fn kind(&self) -> ErrorKind {
        let row = |grpc, http, name, retryable| ErrorKind { grpc, http, name, retryable };
        match self {
            ApiError::InvalidArgument { .. } => {
                row(Code::InvalidArgument, StatusCode::BAD_REQUEST, "invalid_argument", false)
            }
            ApiError::MalformedJson(_) => row(Code::InvalidArgument, StatusCode::BAD_REQUEST, "malformed_json", false),
            ApiError::UnsupportedMediaType => {
                row(Code::InvalidArgument, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", false)
            }
            ApiError::PayloadTooLarge => {
                row(Code::ResourceExhausted, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", false)
            }
            ApiError::MethodNotAllowed => {
                row(Code::Unimplemented, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", false)
            }
            ApiError::NotFound { .. } => row(Code::NotFound, StatusCode::NOT_FOUND, "not_found", false),
            ApiError::AlreadyExists { .. } => row(Code::AlreadyExists, StatusCode::CONFLICT, "already_exists", false),
            ApiError::KeyReused => row(Code::AlreadyExists, StatusCode::CONFLICT, "key_reused", false),
            ApiError::GenerationNotServed { .. } => {
                row(Code::FailedPrecondition, StatusCode::CONFLICT, "generation_not_served", false)
            }
            ApiError::RateLimited => row(Code::ResourceExhausted, StatusCode::TOO_MANY_REQUESTS, "rate_limited", true),
            ApiError::Unauthenticated => row(Code::Unauthenticated, StatusCode::UNAUTHORIZED, "unauthenticated", false),
            ApiError::DatabaseBusy => row(Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE, "database_busy", true),
            ApiError::Overloaded => row(Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE, "overloaded", true),
            ApiError::ShuttingDown => row(Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE, "shutting_down", true),
            ApiError::EmbeddingUnavailable(_) => {
                row(Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE, "embedding_unavailable", true)
            }
            ApiError::MapFailed { .. } => {
                row(Code::FailedPrecondition, StatusCode::INTERNAL_SERVER_ERROR, "map_failed", false)
            }
            ApiError::Internal(_) => row(Code::Internal, StatusCode::INTERNAL_SERVER_ERROR, "internal", false),
        }
    }

    /// Every answer an error becomes passes here once: counted by its code (a closed list, so a
    /// bounded label), and logged when it is ours.
    fn observe(&self) {
        metrics::counter!("api_errors_total", "code" => self.kind().name).increment(1);
        if let ApiError::Internal(detail) = self {
            tracing::error!("internal error: {detail}");
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if crate::db::is_busy(&error) {
            return ApiError::DatabaseBusy;
        }
        match error {
            sqlx::Error::RowNotFound => ApiError::not_found("row"),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        error.observe();
        let kind = error.kind();
        let mut status = tonic::Status::new(kind.grpc, error.to_string());
        if kind.retryable {
            status.metadata_mut().insert("retry-after", RETRY_AFTER_SECONDS.into());
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.observe();
        let ErrorKind { http: status, name, retryable, .. } = self.kind();
        let mut body = serde_json::json!({ "error": { "code": name, "message": self.to_string(), "field": null } });
        // What some errors say beyond their row: the field at fault; for a failed map, which is
        // still the map's answer, its state and the phase that failed.
        match &self {
            ApiError::InvalidArgument { field, .. } => body["error"]["field"] = field.as_str().into(),
            ApiError::KeyReused => body["error"]["field"] = "client_key".into(),
            ApiError::MapFailed { phase, .. } => {
                body["status"] = "failed".into();
                body["error"]["phase"] = phase.as_str().into();
            }
            _ => {}
        }
        let mut response = (status, Json(body)).into_response();
        if retryable {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
