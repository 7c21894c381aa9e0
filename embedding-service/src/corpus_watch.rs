//! Notices a changed corpus and asks for a refresh: the corpus files replaced (written elsewhere,
//! then renamed over them, as tools do) or rewritten in place.
//!
//! The files' directories are watched with inotify (through `notify`), which only wakes the loop;
//! what decides is each file's signature (length, modification time, inode), looked at on every
//! wake and, as a fallback that needs no inotify, on a timer. A change is acted on once the
//! signature has held still for `settle`, so a file still being written is not read half done
//! (and if it is, the refresh fails, the map stays, and the next change is read again).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::{files::FileSignature, job::RefreshRequests};

/// How long a changed corpus must stay unchanged before it is read.
pub const SETTLE: Duration = Duration::from_millis(500);
/// How often the files are looked at without an inotify wake (always: it is the fallback too).
pub const POLL: Duration = Duration::from_secs(1);

fn signatures(files: &[PathBuf]) -> Vec<Option<FileSignature>> {
    files.iter().map(|file| FileSignature::at(file)).collect()
}

/// Watches `files` until the task is dropped, asking `refreshes` for a refresh after each change.
pub async fn watch(files: Vec<PathBuf>, refreshes: RefreshRequests, settle: Duration, poll: Duration) {
    let (wake, mut woken) = mpsc::channel::<()>(1);
    // Kept alive for the loop's life; None when inotify is not to be had (polling alone then).
    let _watcher = start_inotify(&files, wake.clone());
    // Held here too, so the channel stays open (and `recv` waits) when inotify could not start.
    let _wake = wake;
    let mut last = signatures(&files);
    loop {
        tokio::select! {
            _ = woken.recv() => {}
            _ = tokio::time::sleep(poll) => {}
        }
        let mut seen = signatures(&files);
        if seen == last {
            continue;
        }
        // Changed: wait until it holds still.
        loop {
            tokio::time::sleep(settle).await;
            let again = signatures(&files);
            if again == seen {
                break;
            }
            seen = again;
        }
        last = seen;
        let start = refreshes.request();
        tracing::info!(?start, files = ?files, "the corpus changed on disk; refresh requested");
    }
}

fn start_inotify(files: &[PathBuf], wake: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
        // Full: a wake is already pending, which is all this says.
        let _ = wake.try_send(());
    })
    .map_err(|error| tracing::warn!("cannot watch the corpus with inotify ({error}); polling every {POLL:?}"))
    .ok()?;
    // The directories, not the files: a file renamed over is a new inode the old watch would miss.
    let mut directories: Vec<&Path> = files.iter().map(|file| file.parent().unwrap_or(Path::new("."))).collect();
    directories.dedup();
    for directory in directories {
        let directory = if directory.as_os_str().is_empty() { Path::new(".") } else { directory };
        if let Err(error) = watcher.watch(directory, RecursiveMode::NonRecursive) {
            tracing::warn!(directory = %directory.display(), "cannot watch with inotify ({error}); polling every {POLL:?}");
            return None;
        }
    }
    Some(watcher)
}
