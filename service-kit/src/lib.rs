//! Lifecycle pieces both services share: the shutdown signal, logging, named background tasks
//! and duration flags.

pub mod bearer;
pub mod config_doc;
pub mod grpc_conventions;
pub mod listener;
pub mod metrics;
pub mod ready_answers;
pub mod reflection;
pub mod routes;
pub mod shutdown;
pub mod trace_context;

use std::{future::Future, io::IsTerminal, time::Duration};

use clap::ValueEnum;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr at the `RUST_LOG` level (default info); colours only on a terminal.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Spawns a named background task that stops at shutdown and logs how it ended; a panic is
/// logged as an error naming the task, since its duty is then no longer done.
pub fn spawn_named(
    tasks: &TaskTracker,
    name: &'static str,
    work: impl Future<Output = ()> + Send + 'static,
    shutdown: &CancellationToken,
) {
    let shutdown = shutdown.clone();
    let handle = tasks.spawn(async move {
        tokio::select! {
            _ = work => tracing::debug!(task = name, "task finished"),
            _ = shutdown.cancelled() => tracing::debug!(task = name, "task stopped for shutdown"),
        }
    });
    tasks.spawn(async move {
        if let Err(error) = handle.await
            && error.is_panic()
        {
            tracing::error!(task = name, "background task panicked; its duty is no longer done: {error}");
        }
    });
}

/// Accepts `250ms`, `10s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 =
        number.trim().parse().map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 10s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("invalid duration unit in {text:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
