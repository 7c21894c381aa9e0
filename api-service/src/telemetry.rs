//! What the api-service tells an operator: the HELP lines of its own metrics (the request and
//! connection metrics are service-kit's, recorded where they happen), and whose trace context it
//! continues.

use std::{net::IpAddr, sync::Arc};

use axum::http::header;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use service_kit::trace_context::TraceContextLayer;
use tonic::transport::server::TcpConnectInfo;

use crate::auth::AdminToken;

/// A caller's `traceparent` is taken from admin calls (the token checked here as the admin
/// layers will) and from the trusted proxies; a public client's would let anyone choose the trace
/// ids our logs carry, so its calls start traces of their own.
pub fn trace_layer(token: &AdminToken, trusted_proxies: &[IpAddr]) -> TraceContextLayer {
    let (token, proxies) = (token.clone(), trusted_proxies.to_vec());
    TraceContextLayer::new(
        "api-service",
        Arc::new(move |parts| {
            let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            let peer = parts.extensions.get::<TcpConnectInfo>().and_then(|info| info.remote_addr);
            token.check(authorization).is_ok() || peer.is_some_and(|peer| proxies.contains(&peer.ip()))
        }),
    )
}

pub fn describe() {
    describe_counter!(
        "api_errors_total",
        "Error answers on every transport, by the error table's code (database_busy, overloaded, key_reused, rate_limited, ...)."
    );
    describe_histogram!("event_writer_batch_size", "Events written in one transaction.");
    describe_gauge!("database_up", "1 while the database answers its once-a-second ping, 0 after a ping failed.");
    describe_gauge!(
        "event_writer_queue_depth",
        "Events waiting for the writer, as of its last batch taken or written."
    );
    describe_counter!(
        "event_writer_transactions_total",
        "Event transactions, by result: committed, busy (SQLite busy past busy_timeout, or PostgreSQL unreachable, failing over or in conflict) or failed."
    );
    describe_histogram!(
        "event_writer_transaction_seconds",
        Unit::Seconds,
        "Time to write and commit one batch of events."
    );
    describe_counter!(
        "map_gateway_answers_total",
        "Admin map answers, by outcome: ready, computing, failed, or unavailable (embedding service unreachable)."
    );
    describe_counter!(
        "map_gateway_joins_total",
        "READY maps joined to item names: cached (shared) or built (fetched and joined)."
    );
    // The series alerts watch exist from the start at 0, so that their first increase is an
    // increase (a series born at 1 is invisible to rate() and increase()).
    for result in ["committed", "busy", "failed"] {
        metrics::counter!("event_writer_transactions_total", "result" => result).absolute(0);
    }
    for code in ["database_busy", "overloaded", "rate_limited", "key_reused", "internal"] {
        metrics::counter!("api_errors_total", "code" => code).absolute(0);
    }
    for outcome in ["ready", "computing", "failed", "unavailable"] {
        metrics::counter!("map_gateway_answers_total", "outcome" => outcome).absolute(0);
    }
}
