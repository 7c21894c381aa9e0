//! The one accept loop behind every listener of both services, with the limits that tonic's and
//! axum's own servers lack: a cap on open connections, a deadline for the first request's
//! headers, an idle timeout, and HTTP/2 stream, keepalive and reset-flood limits.
//!
//! At the cap, a new connection evicts the connection that has been idle longest (no request in
//! flight; one still sending its first headers counts as idle), so a crowd of idle or half-open
//! connections cannot lock out the kubelet's probes, which open a new connection each time. Only
//! when every open connection has a request in flight is the newcomer refused.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::TcpConnectInfo;
use tower::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connection limits for one listener. Each service's config flattens [`crate::connection_args!`]
/// into its flags and converts it to this.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub http2_max_streams: u32,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    pub http2_max_pending_resets: usize,
    pub http2_max_error_resets: usize,
}

/// The connection flags, with the service's environment prefix (`API_`, `EMBEDDING_`).
#[macro_export]
macro_rules! connection_args {
    ($prefix:literal) => {
        /// Limits on the connections each listener keeps open.
        #[derive(Debug, Clone, clap::Args)]
        pub struct ConnectionArgs {
            /// Open connections per listener. At the cap the longest-idle connection is closed to
            /// make room (so probes get in); lowered to fit the process's file-descriptor limit.
            #[arg(long, env = concat!($prefix, "MAX_CONNECTIONS"), default_value_t = 4096)]
            pub max_connections: usize,

            /// A new connection must send a request's headers within this, or is closed.
            #[arg(long, env = concat!($prefix, "HEADER_READ_TIMEOUT"), default_value = "10s", value_parser = $crate::parse_duration)]
            pub header_read_timeout: std::time::Duration,

            /// A connection with no request in flight for this long is closed (an open stream is
            /// a request in flight, so a quiet watch is never cut).
            #[arg(long, env = concat!($prefix, "IDLE_TIMEOUT"), default_value = "120s", value_parser = $crate::parse_duration)]
            pub idle_timeout: std::time::Duration,

            /// HTTP/2 streams a client may open at once on one connection (advertised; more are
            /// refused).
            #[arg(long, env = concat!($prefix, "HTTP2_MAX_STREAMS"), default_value_t = 100)]
            pub http2_max_streams: u32,

            /// HTTP/2 keepalive ping interval; a peer that does not answer within the same time
            /// again is dropped.
            #[arg(long, env = concat!($prefix, "HTTP2_KEEPALIVE"), default_value = "30s", value_parser = $crate::parse_duration)]
            pub http2_keepalive: std::time::Duration,

            /// HTTP/2 streams a client may reset before the server reads them before the connection
            /// is closed with GOAWAY (the rapid-reset flood); streams the server resets for
            /// protocol errors are allowed this or hyper's 1024, whichever is larger.
            #[arg(long, env = concat!($prefix, "HTTP2_MAX_RESETS"), default_value_t = 20)]
            pub http2_max_resets: usize,
        }

        impl From<&ConnectionArgs> for $crate::listener::ConnectionLimits {
            fn from(args: &ConnectionArgs) -> Self {
                $crate::listener::ConnectionLimits {
                    max_connections: args.max_connections,
                    header_read_timeout: args.header_read_timeout,
                    idle_timeout: args.idle_timeout,
                    http2_max_streams: args.http2_max_streams,
                    http2_keepalive_interval: args.http2_keepalive,
                    http2_keepalive_timeout: args.http2_keepalive,
                    http2_max_pending_resets: args.http2_max_resets,
                    http2_max_error_resets: args.http2_max_resets.max(1024),
                }
            }
        }
    };
}

/// How long a connection closed for being idle (or evicted) may take to say goodbye before it is
/// dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves `service` on `listener` until `shutdown`, then lets open connections finish (the caller
/// bounds that with its grace period). `name` labels the logs.
pub async fn serve<S, B>(
    name: &'static str,
    listener: TcpListener,
    service: S,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let max_connections = fit_to_descriptor_limit(name, limits.max_connections);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout)
        .max_pending_accept_reset_streams(limits.http2_max_pending_resets)
        .max_local_error_reset_streams(limits.http2_max_error_resets);
    let registry = Arc::new(Registry::default());
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors (or another transient accept error): wait instead of
                    // spinning; open connections keep being served meanwhile.
                    tracing::warn!(listener = name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(connection) = registry.admit(max_connections) else {
            tracing::debug!(listener = name, "connection refused: every open connection has a request in flight");
            closed(name, "refused_busy");
            continue;
        };
        let open = OpenConnection::new(registry.clone(), connection.id, name);
        let _ = stream.set_nodelay(true);
        // Where each request came from, for tonic's `Request::remote_addr` and axum's extractors.
        let peer = TcpConnectInfo { local_addr: stream.local_addr().ok(), remote_addr: stream.peer_addr().ok() };
        let service =
            TowerToHyperService::new(TrackRequests { inner: service.clone(), connection: connection.clone(), peer });
        let io = TokioIo::new(stream);
        let builder = builder.clone();
        let (shutdown, limits) = (shutdown.clone(), limits.clone());
        connections.spawn(async move {
            let served = builder.serve_connection(io, service);
            tokio::pin!(served);
            // Runs the connection to its end, closing it when idle, evicted or at shutdown. At
            // shutdown its requests may finish (the caller's grace period bounds that); a
            // connection closed for being idle or evicted has `CLOSE_GRACE` to say goodbye.
            let mut closing: Option<Instant> = None;
            let mut draining = false;
            loop {
                let deadline = match closing {
                    Some(since) => since + CLOSE_GRACE,
                    None => connection.idle_deadline(&limits),
                };
                tokio::select! {
                    _ = served.as_mut() => break,
                    _ = connection.evicted.cancelled(), if closing.is_none() => {
                        closed(name, "evicted");
                        // Chosen while it had nothing in flight; a request that began since then
                        // is let finish.
                        if connection.in_flight.load(Ordering::Acquire) == 0 {
                            break;
                        }
                        served.as_mut().graceful_shutdown();
                        closing = Some(Instant::now());
                    }
                    _ = shutdown.cancelled(), if !draining => {
                        draining = true;
                        if closing.is_none() {
                            served.as_mut().graceful_shutdown();
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        if closing.is_some() || connection.requests.load(Ordering::Acquire) == 0 {
                            // No complete request headers in time (slow or absent), or too slow
                            // to close: drop it.
                            if closing.is_none() {
                                closed(name, "header_timeout");
                            }
                            break;
                        }
                        if connection.is_idle_past(limits.idle_timeout) {
                            closed(name, "idle");
                            // While draining, graceful shutdown has been asked for already.
                            if !draining {
                                served.as_mut().graceful_shutdown();
                            }
                            closing = Some(Instant::now());
                        }
                    }
                }
            }
            drop(open);
        });
    }
    // New clients are refused from now on rather than left in the backlog.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// An admitted connection's place in the registry and in `listener_connections_open`, given
/// back when dropped: at the connection's end, and also if its task unwinds from a panic.
struct OpenConnection {
    registry: Arc<Registry>,
    id: u64,
    gauge: metrics::Gauge,
}

impl OpenConnection {
    fn new(registry: Arc<Registry>, id: u64, listener: &'static str) -> OpenConnection {
        let gauge = metrics::gauge!("listener_connections_open", "listener" => listener);
        gauge.increment(1.0);
        OpenConnection { registry, id, gauge }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.registry.remove(self.id);
        self.gauge.decrement(1.0);
    }
}

/// Counts a connection the server closed (or refused), by why.
fn closed(listener: &'static str, reason: &'static str) {
    metrics::counter!("listener_connections_closed_total", "listener" => listener, "reason" => reason).increment(1);
}

/// Open connections, so that the cap can find the longest-idle one.
#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
}

struct Connection {
    id: u64,
    accepted: Instant,
    /// Requests started on this connection; 0 means its first headers have not arrived.
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds after `accepted` when a request last started or finished.
    last_active_ms: AtomicU64,
    evicted: CancellationToken,
}

impl Registry {
    /// Registers a new connection, first evicting the longest-idle one if at the cap; `None`
    /// when at the cap with every connection busy.
    fn admit(&self, max_connections: usize) -> Option<Arc<Connection>> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if open.len() >= max_connections {
            let idlest = open
                .values()
                .filter(|c| c.in_flight.load(Ordering::Acquire) == 0)
                .min_by_key(|c| c.last_active())
                .map(|c| c.id)?;
            if let Some(evicted) = open.remove(&idlest) {
                evicted.evicted.cancel();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            id,
            accepted: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            evicted: CancellationToken::new(),
        });
        open.insert(id, connection.clone());
        Some(connection)
    }

    fn remove(&self, id: u64) {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&id);
    }
}

impl Connection {
    fn last_active(&self) -> Instant {
        self.accepted + Duration::from_millis(self.last_active_ms.load(Ordering::Acquire))
    }

    fn touch(&self) {
        let since = u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.fetch_max(since, Ordering::AcqRel);
    }

    /// When to look at this connection again: the first request's deadline, or when it will have
    /// been idle for the timeout (while a request is in flight, one timeout from now).
    fn idle_deadline(&self, limits: &ConnectionLimits) -> Instant {
        if self.requests.load(Ordering::Acquire) == 0 {
            self.accepted + limits.header_read_timeout
        } else if self.in_flight.load(Ordering::Acquire) > 0 {
            Instant::now() + limits.idle_timeout
        } else {
            self.last_active() + limits.idle_timeout
        }
    }

    fn is_idle_past(&self, timeout: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.last_active().elapsed() >= timeout
    }
}

/// Counts a connection's requests in flight, from the call until the response body is done.
#[derive(Clone)]
struct TrackRequests<S> {
    inner: S,
    connection: Arc<Connection>,
    peer: TcpConnectInfo,
}

/// Held while a request is in flight.
struct InFlight(Arc<Connection>);

impl InFlight {
    fn start(connection: &Arc<Connection>) -> Self {
        connection.requests.fetch_add(1, Ordering::AcqRel);
        connection.in_flight.fetch_add(1, Ordering::AcqRel);
        connection.touch();
        InFlight(connection.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, B> Service<Request<Incoming>> for TrackRequests<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.peer.clone());
        let guard = InFlight::start(&self.connection);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody { inner: Box::pin(body), _in_flight: guard }))
        })
    }
}

/// A response body that keeps its request counted as in flight until it is finished or dropped.
pub struct TrackedBody<B> {
    inner: Pin<Box<B>>,
    _in_flight: InFlight,
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Raises the soft open-file limit to the hard one (as Go's runtime does) and keeps the cap below
/// it, leaving room for the database, the listeners and the upstream channel; a cap above the
/// limit would turn the cap's eviction into accept errors.
fn fit_to_descriptor_limit(name: &str, wanted: usize) -> usize {
    const RESERVED: usize = 64;
    let Ok(available) = rlimit::increase_nofile_limit(u64::MAX) else { return wanted };
    let available = usize::try_from(available).unwrap_or(usize::MAX);
    // Both listeners of a process share the descriptor table.
    let fitting = (available.saturating_sub(RESERVED) / 2).max(1);
    if wanted > fitting {
        tracing::warn!(listener = name, wanted, fitting, "connection cap lowered to fit the open-file limit");
        fitting
    } else {
        wanted
    }
}
