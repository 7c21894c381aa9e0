//! Boot order and lifecycle: open and migrate the database, bind both listeners, serve gRPC
//! (+ gRPC-web) and HTTP; on SIGTERM drop readiness first, then drain within the grace period.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use axum::http::{HeaderName, HeaderValue, Method, header};
use embeddingmap_proto::api::{
    admin_neighbor_service_server::AdminNeighborServiceServer, event_service_server::EventServiceServer,
    item_service_server::ItemServiceServer, stats_service_server::StatsServiceServer,
};
use service_kit::{
    listener::{self, ConnectionLimits},
    metrics::GrpcMetricsLayer,
    routes::ServedRoutes,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    admin_page,
    auth::AdminToken,
    config::Config,
    db,
    event_writer::EventWriter,
    grpc::{self, Api, CallLayers},
    http,
    items::ItemStore,
    map_gateway::MapGateway,
    rate_limit::RateLimiter,
    state::AppState,
    telemetry,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the gRPC port serves, for reflection and the metrics' method labels.
const DESCRIPTOR_SETS: &[&[u8]] = &[embeddingmap_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET];

/// Runs until SIGTERM/SIGINT. Prints `api-service grpc listening on ADDR` and
/// `api-service http listening on ADDR` once bound.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let token = AdminToken::new(&config.admin_token)?;
    let shutdown = CancellationToken::new();
    // The recorder before anything records: a series taken before it is installed (the event
    // writer's queue gauge, the database's ping) goes nowhere for the life of the process.
    let limits = ConnectionLimits::from(&config.connections);
    let metrics = match config.metrics_listen {
        Some(address) => {
            let handle = service_kit::metrics::install()?;
            telemetry::describe();
            Some(service_kit::metrics::serve("api-service", address, handle, &limits, shutdown.clone()).await?)
        }
        None => None,
    };
    let db = db::open(&config.database, config.database_connections, config.wal_checkpoints)
        .await
        .with_context(|| format!("cannot open the database {}", config.database))?;
    tracing::info!(backend = db.backend(), database = %config.database, "database open and migrated");
    let (events, event_writer) = EventWriter::start(db.clone(), config.event_batches());
    let items = ItemStore::new(db.clone(), events.clone());
    let map = MapGateway::new(
        &config.embedding_url,
        config.embedding_connect_timeout,
        config.embedding_timeout,
        config.max_response_bytes,
        config.embedding_token.as_deref(),
        items.clone(),
    )?;
    let rate_limit = RateLimiter::new(config.event_rate_limit, config.event_rate_burst, config.trusted_proxies.clone());
    let database_health =
        crate::database_health::DatabaseHealth::spawn(db.clone(), config.database_outage_grace, shutdown.clone());
    let state = AppState {
        db: db.clone(),
        events,
        items,
        map,
        token,
        rate_limit,
        ready: Arc::new(AtomicBool::new(false)),
        database_health,
    };

    let grpc_listener =
        TcpListener::bind(config.grpc_listen).await.with_context(|| format!("cannot bind {}", config.grpc_listen))?;
    let http_listener =
        TcpListener::bind(config.http_listen).await.with_context(|| format!("cannot bind {}", config.http_listen))?;
    let (grpc_address, http_address) = (grpc_listener.local_addr()?, http_listener.local_addr()?);

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let call_layers = grpc::call_layers(&state.token, config.request_timeout, GrpcMetricsLayer::new(DESCRIPTOR_SETS)?);
    let grpc_service = grpc_service(&config, &state, health_service, &call_layers)?;
    let admin_page = admin_page::routes(
        config.admin_grpc_web_url.clone(),
        grpc::admin_map_service(&state, config.max_response_bytes),
        AdminNeighborServiceServer::new(Api(state.clone())).max_decoding_message_size(config.max_body_bytes),
        &call_layers,
    );
    // Layered around the whole router, so the concurrency budget is one per transport (a
    // `Router::layer` would give each route its own).
    let http_service = ServiceBuilder::new()
        .layer(telemetry::trace_layer(&state.token, &config.trusted_proxies))
        // axum middleware takes axum's body type.
        .map_request(|request: axum::http::Request<hyper::body::Incoming>| request.map(axum::body::Body::new))
        .layer(axum::middleware::from_fn(service_kit::metrics::record_http))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            config.request_timeout,
        ))
        .layer(tower::limit::ConcurrencyLimitLayer::new(config.concurrency_limit))
        .layer(cors(&config.cors_origins)?)
        .service(http::router(state.clone(), config.max_body_bytes, admin_page));
    let grpc = listener::serve("grpc", grpc_listener, grpc_service, limits.clone(), shutdown.clone());
    let http = listener::serve("http", http_listener, http_service, limits, shutdown.clone());

    // SIGHUP would stop the process by default; the map is refreshed by the embedding service.
    tokio::spawn(service_kit::shutdown::on_hangup(|| {
        tracing::info!("SIGHUP: the api-service has nothing to reload (refresh the map with the embedding service)")
    }));
    state.ready.store(true, Ordering::Release);
    tracing::info!(grpc = %grpc_address, http = %http_address, database = %config.database, "serving");
    println!("api-service grpc listening on {grpc_address}");
    println!("api-service http listening on {http_address}");

    let metrics = async move {
        if let Some(metrics) = metrics {
            metrics.await
        }
    };
    let servers = async { tokio::join!(grpc, http, metrics) };
    tokio::pin!(servers);
    tokio::select! {
        _ = &mut servers => return Ok(()),
        _ = service_kit::shutdown::wait_for_signal() => {}
    }
    // Readiness drops first so load balancers stop sending; then connections drain.
    state.ready.store(false, Ordering::Release);
    reporter.set_service_status("", ServingStatus::NotServing).await;
    if !config.readiness_drain.is_zero() {
        tracing::info!(drain = ?config.readiness_drain, "not ready; still serving while load balancers notice");
        let _ = tokio::time::timeout(config.readiness_drain, &mut servers).await;
    }
    shutdown.cancel();
    let draining = tokio::time::Instant::now();
    match tokio::time::timeout(config.shutdown_grace, servers).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(grace = ?config.shutdown_grace, "grace period ran out; closing open requests"),
    }
    // Requests in flight have had their events and imports written; what is still queued is
    // written while the grace lasts, for callers still waiting.
    event_writer.drain(config.shutdown_grace.saturating_sub(draining.elapsed())).await;
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The gRPC port's one service: gRPC and gRPC-web (HTTP/1.1 too), one concurrency budget, admin
/// calls refused before their bodies are read, each service's messages sized to it.
fn grpc_service(
    config: &Config,
    state: &AppState,
    health_service: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    call_layers: &CallLayers,
) -> anyhow::Result<
    impl tower::Service<
        axum::http::Request<hyper::body::Incoming>,
        Response = axum::http::Response<
            impl http_body::Body<Data = bytes::Bytes, Error = impl Into<BoxError>> + Send + 'static,
        >,
        Error = impl Into<BoxError>,
        Future = impl Send + 'static,
    > + Clone
    + Send
    + 'static,
> {
    let (limit_in, limit_out) = (config.max_body_bytes, config.max_response_bytes);
    macro_rules! sized {
        ($server:expr) => {
            $server.max_decoding_message_size(limit_in).max_encoding_message_size(limit_out)
        };
    }
    let api = || Api(state.clone());
    let routes = ServedRoutes::default()
        .serve(health_service)
        .serve(sized!(EventServiceServer::new(api())))
        .serve(sized!(ItemServiceServer::new(api())))
        .serve(sized!(StatsServiceServer::new(api())))
        .serve(sized!(AdminNeighborServiceServer::new(api())))
        .serve(grpc::admin_map_service(state, limit_out))
        .with_reflection(DESCRIPTOR_SETS)
        .context("cannot build the reflection services")?;
    Ok(ServiceBuilder::new()
        .layer(telemetry::trace_layer(&state.token, &config.trusted_proxies))
        .layer(tower::limit::ConcurrencyLimitLayer::new(config.concurrency_limit))
        .layer(cors(&config.cors_origins)?)
        .layer(call_layers.clone().into_inner())
        .service(routes))
}

/// CORS for browsers: only the configured origins, and the gRPC trailers exposed so gRPC-web
/// clients can read statuses.
fn cors(origins: &[String]) -> anyhow::Result<CorsLayer> {
    let origins = origins
        .iter()
        .filter(|o| !o.is_empty())
        .map(|o| HeaderValue::from_str(o).with_context(|| format!("invalid CORS origin {o:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
            header::ETAG,
            header::RETRY_AFTER,
            HeaderName::from_static(crate::map_view::REFRESH_HEADER),
            HeaderName::from_static(crate::map_view::LAST_REFRESH_HEADER),
        ])
        .max_age(Duration::from_secs(600)))
}
