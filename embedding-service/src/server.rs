//! Boot order and lifecycle: start the map job, bind, serve, drain on a signal.

use anyhow::Context;
use embeddingmap_proto::v1::{
    embedding_map_service_server::EmbeddingMapServiceServer, neighbor_service_server::NeighborServiceServer,
};
use service_kit::{
    bearer::{BearerToken, RequireBearerLayer, service_of},
    grpc_conventions::GrpcConventionsLayer,
    listener::{self, ConnectionLimits},
    metrics::GrpcMetricsLayer,
    ready_answers::{MAP_REQUEST_BYTES, ReadyAnswersLayer},
    routes::ServedRoutes,
    shutdown, spawn_named,
    trace_context::TraceContextLayer,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::server::NamedService;
use tower::ServiceBuilder;

use crate::{
    config::Config,
    corpus::CorpusSource,
    corpus_watch,
    files::RegularFile,
    grpc::{MapService, NeighborSearch},
    health, job,
    map_store::MapStore,
    neighbor_batches::NeighborBatches,
    status, telemetry,
};

/// What the server serves, for reflection and the metrics' method labels.
const DESCRIPTOR_SETS: &[&[u8]] = &[embeddingmap_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET];

/// Largest `FindNeighbors` request (and answer) accepted.
const NEIGHBOR_REQUEST_BYTES: usize = 256 * 1024;

/// With `--auth-token`, every call needs it but health's (probes): a service added later is guarded
/// without a line changed.
fn needs_token(path: &str) -> bool {
    service_of(path) != tonic_health::pb::health_server::SERVICE_NAME
}

/// Runs the service until SIGTERM/SIGINT. The map job starts first, then the listener binds;
/// the address is printed on stdout as `embedding-service listening on ADDR`.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let settings = config.map.clone();
    // Impossible settings stop the service here, rather than serve a map that can only fail.
    settings.validate().context("invalid map settings")?;
    let source = CorpusSource::from_paths(config.corpus.clone(), config.ids.clone());
    let corpus_files = source.files();
    let (publisher, board) = status::status_channel(settings.iterations);
    // A stored map larger than the largest answer could not be sent anyway; reading one is bounded by it.
    let store = (!config.map_store.as_os_str().is_empty())
        .then(|| MapStore::new(&config.map_store, &source, &settings, config.max_message_bytes as u64));
    // The last map stored for this corpus and these parameters is served from the first RPC on,
    // if the corpus files are there to check it against (opened, not read: that is the job's);
    // the job then checks the corpus against it and refreshes from it if it changed.
    let corpus_there = corpus_files.iter().all(|file| RegularFile::open(file).is_ok());
    if let Some((store, stored)) =
        store.as_ref().filter(|_| corpus_there).and_then(|store| Some((store, store.load()?)))
    {
        let dir = store.dir().display();
        tracing::info!(generation = stored.generation, points = stored.count, store = %dir, "serving the stored map");
        let previous = store.load_previous(&stored);
        publisher.ready(stored, None, previous);
        // Checking the corpus against it shows as a refresh under way.
        publisher.computation_started();
    }
    let refreshes =
        job::spawn_map_job(source, settings, publisher, board.clone(), store).context("cannot start the map thread")?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    health::set_not_serving(&reporter).await;

    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("cannot bind {}", config.listen))?;
    let address = listener.local_addr()?;

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let limits = ConnectionLimits::from(&config.connections);
    if let Some(address) = config.metrics_listen {
        let handle = service_kit::metrics::install()?;
        telemetry::describe();
        let metrics = service_kit::metrics::serve("embedding-service", address, handle, &limits, shutdown.clone());
        spawn_named(&tasks, "metrics-server", metrics.await?, &shutdown);
        spawn_named(&tasks, "map-metrics", telemetry::follow_status(board.clone()), &shutdown);
    }
    spawn_named(&tasks, "map-readiness", health::follow_map_readiness(board.clone(), reporter.clone()), &shutdown);
    if config.watch_corpus && !corpus_files.is_empty() {
        let watch = corpus_watch::watch(corpus_files, refreshes.clone(), corpus_watch::SETTLE, corpus_watch::POLL);
        spawn_named(&tasks, "corpus-watch", watch, &shutdown);
    }
    let hangups = refreshes.clone();
    spawn_named(
        &tasks,
        "refresh-on-sighup",
        shutdown::on_hangup(move || {
            tracing::info!(start = ?hangups.request(), "refresh requested by SIGHUP");
        }),
        &shutdown,
    );

    let map_service = EmbeddingMapServiceServer::new(MapService::new(board.clone(), refreshes, shutdown.clone()))
        .max_encoding_message_size(config.max_message_bytes)
        .max_decoding_message_size(MAP_REQUEST_BYTES);
    // A query vector of up to 64k float dimensions.
    let batches = NeighborBatches::start().context("cannot start the neighbour search thread")?;
    let neighbors = NeighborServiceServer::new(NeighborSearch::new(board.clone(), batches))
        .max_decoding_message_size(NEIGHBOR_REQUEST_BYTES)
        .max_encoding_message_size(NEIGHBOR_REQUEST_BYTES);
    let ready_answers = ReadyAnswersLayer::new(
        board,
        <EmbeddingMapServiceServer<MapService> as NamedService>::NAME,
        "GetEmbeddingMap",
        config.max_message_bytes,
    );
    let routes = ServedRoutes::default()
        .serve(health_service)
        .serve(neighbors)
        .serve(ServiceBuilder::new().layer(ready_answers).service(map_service))
        .with_reflection(DESCRIPTOR_SETS)
        .context("cannot build the reflection services")?;
    let auth = config
        .auth_token
        .as_deref()
        .map(|token| BearerToken::new(token).map_err(|e| anyhow::anyhow!("--auth-token: {e}")))
        .transpose()?
        .map(|token| RequireBearerLayer::new(token, needs_token));
    // Each call counted by its final status; the deadline (the caller's, capped by the request
    // timeout) and the gRPC status conventions, as the api-service answers them.
    // Its callers are internal (the api-service, behind the network policy): their trace is
    // continued.
    let service = ServiceBuilder::new()
        .layer(TraceContextLayer::trusting_all("embedding-service"))
        .layer(GrpcMetricsLayer::new(DESCRIPTOR_SETS)?)
        .layer(GrpcConventionsLayer::new(config.request_timeout))
        .option_layer(auth)
        .service(routes);
    let server = listener::serve("grpc", listener, service, limits, shutdown.clone());

    health::set_serving(&reporter).await;
    tracing::info!(%address, "serving gRPC");
    println!("embedding-service listening on {address}");

    tokio::pin!(server);
    tokio::select! {
        _ = &mut server => return Ok(()),
        _ = shutdown::wait_for_signal() => {}
    }
    // Readiness drops first, then connections drain within the grace period.
    health::set_not_serving(&reporter).await;
    shutdown.cancel();
    tasks.close();
    match tokio::time::timeout(config.shutdown_grace, server).await {
        Ok(()) => {}
        Err(_) => tracing::warn!(grace = ?config.shutdown_grace, "grace period ran out; closing open calls"),
    }
    tasks.wait().await;
    tracing::info!("stopped");
    Ok(())
}
