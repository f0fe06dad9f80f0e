//! Change notification for the files the running config depends on.
//!
//! Editors and deployment tools rarely write a file in place: they write a temporary file and
//! rename it over the old one, which replaces the inode. So the *directories* are watched and
//! events are filtered by file name, or by what the file resolves to through symlinks (a
//! Kubernetes ConfigMap volume swaps a `..data` symlink and never touches the file's name).

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
    // Where each file leads through symlinks: Kubernetes updates a ConfigMap volume by swapping
    // a `..data` symlink beside the file, which changes what the file is without an event that
    // names it.
    let resolved = std::sync::Mutex::new(resolve(&wanted));
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let named = event.paths.iter().any(|p| wanted.contains(p));
        let now = resolve(&wanted);
        let mut last = resolved.lock().unwrap_or_else(|e| e.into_inner());
        let moved = *last != now;
        *last = now;
        if named || moved {
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

/// What each of `files` resolves to through symlinks (`None`: it does not exist now).
fn resolve(files: &HashSet<PathBuf>) -> Vec<(PathBuf, Option<PathBuf>)> {
    let mut resolved: Vec<_> = files
        .iter()
        .map(|f| (f.clone(), std::fs::canonicalize(f).ok()))
        .collect();
    resolved.sort();
    resolved
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A directory laid out as the kubelet lays out a ConfigMap volume.
    fn configmap(dir: &Path, version: &str, text: &str) {
        let data = dir.join(format!("..{version}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("edge.toml"), text).unwrap();
        let tmp = dir.join("..data_tmp");
        symlink(format!("..{version}"), &tmp).unwrap();
        // The kubelet's atomic swap: rename the new link over `..data`.
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        if !dir.join("edge.toml").exists() {
            symlink("..data/edge.toml", dir.join("edge.toml")).unwrap();
        }
    }

    #[test]
    fn a_configmap_update_is_a_change_of_the_file() {
        let dir = std::env::temp_dir().join(format!("nakama-edge-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        configmap(&dir, "2026_12_05_1", "[server]\n");
        let changes = Arc::new(AtomicUsize::new(0));
        let seen = changes.clone();
        let _watch = watch_files(&[dir.join("edge.toml")], move || {
            seen.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        configmap(&dir, "2026_12_05_2", "[server]\nthreads = 3\n");
        let deadline = Instant::now() + Duration::from_secs(30);
        while changes.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the swap went unseen");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
