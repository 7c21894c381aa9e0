//! Signals: the one to stop, SIGTERM (Kubernetes) or SIGINT (Ctrl-C), logged by name; and SIGHUP,
//! which asks for a reload instead of killing the process as it would by default.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves when SIGTERM or SIGINT arrives and returns its name.
pub async fn wait_for_signal() -> &'static str {
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; the process will stop only when killed");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutdown requested");
    name
}

/// Installs the SIGHUP handler now (until it is installed, SIGHUP kills the process) and returns
/// the task that calls `reload` on each SIGHUP, for as long as it runs.
pub fn on_hangup(mut reload: impl FnMut() + Send) -> impl Future<Output = ()> + Send {
    let hangups = signal(SignalKind::hangup()).inspect_err(|error| {
        tracing::error!("cannot install the SIGHUP handler ({error}); SIGHUP will stop the process")
    });
    async move {
        let Ok(mut hangups) = hangups else { return };
        while hangups.recv().await.is_some() {
            reload();
        }
    }
}
