//! Change notification for the files the running config depends on.
//!
//! Editors and deployment tools rarely write a file in place: they write a temporary file and
//! rename it over the old one, which replaces the inode. So the *directories* are watched and
//! events are filtered by file name.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path} for changes: {source}")]
pub struct WatchError {
    path: PathBuf,
    source: notify::Error,
}

/// Keeps the watch alive; dropping it stops the notifications.
pub struct FileWatch {
    _watcher: RecommendedWatcher,
}

/// Call `on_change` (on a background thread) whenever one of `files` is written, created,
/// renamed over or removed.
pub fn watch_files(
    files: &[PathBuf],
    on_change: impl Fn() + Send + 'static,
) -> Result<FileWatch, WatchError> {
    let files: HashSet<PathBuf> = files.iter().map(|f| absolute(f)).collect();
    let dirs: HashSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    let wanted = files.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| wanted.contains(p)) {
            on_change();
        }
    })
    .map_err(|source| WatchError {
        path: PathBuf::new(),
        source,
    })?;
    for dir in dirs {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                path: dir.clone(),
                source,
            })?;
    }
    Ok(FileWatch { _watcher: watcher })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
