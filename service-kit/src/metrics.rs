//! Prometheus metrics for both services: the recorder, the scrape endpoint on its own listener,
//! and the two request layers that count every gRPC call and every HTTP request.
//!
//! Built on the `metrics` facade with `metrics-exporter-prometheus`: domain code records a figure
//! where it happens (`metrics::counter!`) without a registry handed through every constructor,
//! and the exporter renders real histogram buckets, so `histogram_quantile` and aggregation
//! across replicas work (summaries cannot be aggregated).
//!
//! Labels are bounded by construction: gRPC services and methods come from the descriptor sets
//! (anything else is `unknown`), HTTP routes from the router's templates (`unmatched` otherwise),
//! codes and methods from closed lists. No id, token, key or raw path can become a label.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{MatchedPath, Request},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use http::{HeaderMap, Method, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use prost::Message;
use tokio::{net::TcpListener, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::listener::{self, ConnectionLimits};

/// Latency buckets in seconds: 1 ms to 5 min, for requests, queries and map phases alike.
const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Size buckets (items in a batch): powers of two up to 4096.
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];

/// How often histograms are folded and idle entries dropped between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the process-wide recorder, so that every `metrics::*!` call from here on is kept, and
/// returns the handle that renders them. Histograms named `*_seconds` and `*_size` get buckets.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed in this process"))?;
    describe();
    Ok(handle)
}

/// HELP lines for the metrics recorded here (each service describes its own).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("grpc_server_started_total", "gRPC calls started, by service and method.");
    describe_counter!("grpc_server_handled_total", "gRPC calls completed, by service, method and status code.");
    describe_histogram!(
        "grpc_server_handling_seconds",
        Unit::Seconds,
        "Time from a gRPC call's arrival to its last message and status."
    );
    describe_histogram!(
        "http_server_request_duration_seconds",
        Unit::Seconds,
        "Time from an HTTP request's arrival to its response headers, by route template."
    );
    describe_gauge!("listener_connections_open", "Connections open, per listener.");
    describe_counter!("listener_connections_closed_total", "Connections closed by the server, by listener and reason.");
}

/// Binds `address` and returns the server of `GET /metrics` there, to run until `shutdown`,
/// through the same accept loop as the service ports (`limits`, with room for a few scrapers).
/// Prints `{service} metrics listening on ADDR` once bound.
pub async fn serve(
    service: &'static str,
    address: SocketAddr,
    handle: PrometheusHandle,
    limits: &ConnectionLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let listener = TcpListener::bind(address).await.with_context(|| format!("cannot bind {address}"))?;
    let bound = listener.local_addr()?;
    println!("{service} metrics listening on {bound}");
    tracing::info!(address = %bound, "serving metrics");
    let upkeep = handle.clone();
    let scrape = move || {
        let handle = handle.clone();
        async move {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response()
        }
    };
    let router = Router::new().route("/metrics", get(scrape));
    // A scraper keeps one connection; a few spare admit a second scraper and a person with curl.
    let limits = ConnectionLimits { max_connections: 16, ..limits.clone() };
    Ok(async move {
        let upkeep = async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        };
        tokio::select! {
            _ = listener::serve("metrics", listener, router, limits, shutdown) => {}
            _ = upkeep => {}
        }
    })
}

/// The route template a request matched: set by `mark_route` inside the router, read by
/// `record_http` around the whole stack once the answer is known.
#[derive(Clone, Default)]
struct MatchedRoute(Arc<OnceLock<String>>);

/// Records `http_server_request_duration_seconds` for a request, labelled with the route
/// template axum matched (never the raw path), the method and the status code. Put it outside
/// the timeout and concurrency layers, so that time queued for a permit and the 503 of a timed
/// out request are counted too; `mark_route` on the router supplies the template.
pub async fn record_http(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = http_method_label(request.method());
    let matched = MatchedRoute::default();
    request.extensions_mut().insert(matched.clone());
    let response = next.run(request).await;
    let route = matched.0.get().map_or("unmatched", String::as_str).to_owned();
    metrics::histogram!(
        "http_server_request_duration_seconds",
        "http_request_method" => method,
        "http_route" => route,
        "http_response_status_code" => response.status().as_u16().to_string(),
    )
    .record(started.elapsed());
    response
}

/// Notes the route template axum matched for `record_http`. Put it on the router with
/// `Router::layer`, which wraps each route, so the template is known there.
pub async fn mark_route(request: Request, next: Next) -> Response {
    if let (Some(matched), Some(path)) =
        (request.extensions().get::<MatchedRoute>(), request.extensions().get::<MatchedPath>())
    {
        let _ = matched.0.set(path.as_str().to_owned());
    }
    next.run(request).await
}

/// OpenTelemetry's rule: known methods by name, anything else as `_OTHER`.
fn http_method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "_OTHER",
    }
}

/// One gRPC method's labels, as go-grpc-prometheus names them.
#[derive(Clone, Copy)]
struct MethodLabels {
    service: &'static str,
    method: &'static str,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    kind: &'static str,
}

const UNKNOWN_METHOD: MethodLabels = MethodLabels { service: "unknown", method: "unknown", kind: "unknown" };

/// Counts every gRPC call by service, method and status code, and times it to its status. Sits
/// inside gRPC-web translation, so gRPC-web calls are counted as the gRPC calls they become.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    /// Request path (`/package.Service/Method`) to its labels.
    methods: Arc<HashMap<String, MethodLabels>>,
}

impl GrpcMetricsLayer {
    /// The methods the encoded file descriptor sets describe, and reflection's; a call to any
    /// other path is counted as `unknown`.
    pub fn new(descriptor_sets: &[&[u8]]) -> anyhow::Result<Self> {
        let mut methods = HashMap::new();
        // Every server of ours serves reflection (`crate::reflection`).
        let reflection =
            [tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET, tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET];
        for set in descriptor_sets.iter().chain(&reflection) {
            let set = prost_types::FileDescriptorSet::decode(*set)?;
            for file in &set.file {
                for service in &file.service {
                    let full = match file.package() {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    // Leaked once at startup: a fixed set, and labels then cost no allocation.
                    let service_label: &'static str = Box::leak(full.clone().into_boxed_str());
                    for method in &service.method {
                        let kind = match (method.client_streaming(), method.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        let name: &'static str = Box::leak(method.name().to_owned().into_boxed_str());
                        methods.insert(
                            format!("/{full}/{name}"),
                            MethodLabels { service: service_label, method: name, kind },
                        );
                    }
                }
            }
        }
        Ok(GrpcMetricsLayer { methods: Arc::new(methods) })
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner, methods: self.methods.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    methods: Arc<HashMap<String, MethodLabels>>,
}

impl<S, B> Service<http::Request<B>> for GrpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let labels = self.methods.get(request.uri().path()).copied().unwrap_or(UNKNOWN_METHOD);
        metrics::counter!(
            "grpc_server_started_total",
            "grpc_type" => labels.kind, "grpc_service" => labels.service, "grpc_method" => labels.method,
        )
        .increment(1);
        let mut call = CallRecord { labels, started: Instant::now(), done: false };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(response) => response,
                Err(error) => {
                    // No gRPC answer at all: the connection is reset, which clients see as
                    // Internal (or Unavailable); counted here rather than as a cancellation.
                    call.finish("Internal");
                    return Err(error);
                }
            };
            // A trailers-only answer (most errors) carries its status in the headers.
            if let Some(code) = grpc_status(response.headers()) {
                call.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| Body::new(StatusWatch { inner: body, call })))
        })
    }
}

/// One call's labels and start, recorded once when its status is known.
struct CallRecord {
    labels: MethodLabels,
    started: Instant,
    done: bool,
}

impl CallRecord {
    fn finish(&mut self, code: &'static str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let MethodLabels { service, method, kind } = self.labels;
        metrics::counter!(
            "grpc_server_handled_total",
            "grpc_type" => kind, "grpc_service" => service, "grpc_method" => method, "grpc_code" => code,
        )
        .increment(1);
        metrics::histogram!(
            "grpc_server_handling_seconds",
            "grpc_type" => kind, "grpc_service" => service, "grpc_method" => method,
        )
        .record(self.started.elapsed());
    }
}

impl Drop for CallRecord {
    /// A response dropped before its status (the client went away, or the connection closed) is
    /// counted as cancelled, so started and handled always balance.
    fn drop(&mut self) {
        self.finish("Canceled");
    }
}

/// A response body that records the call when its trailers pass.
struct StatusWatch {
    inner: Body,
    call: CallRecord,
}

impl HttpBody for StatusWatch {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.call.finish("Internal"),
            // The body ended without a status: not a valid gRPC answer.
            Poll::Ready(None) => self.call.finish("Unknown"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-status` a header map carries, as go-grpc-prometheus spells its `grpc_code` label.
fn grpc_status(headers: &HeaderMap) -> Option<&'static str> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "Canceled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_the_descriptor_sets() {
        let layer = GrpcMetricsLayer::new(&[]).unwrap();
        let path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        let info = layer.methods.get(path).unwrap();
        assert_eq!(
            (info.service, info.method, info.kind),
            ("grpc.reflection.v1.ServerReflection", "ServerReflectionInfo", "bidi_stream")
        );
        assert!(!layer.methods.contains_key("/grpc.reflection.v1.ServerReflection/Nope"));
    }

    #[test]
    fn status_codes_read_as_go_grpc_prometheus_names_them() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some("OK"));
        headers.insert("grpc-status", "16".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some("Unauthenticated"));
        headers.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some("Unknown"));
    }
}
