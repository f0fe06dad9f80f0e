//! Runtime drains: the nodes an operator drained through the admin API (or the CLI), kept in
//! `server.state_dir` so that a restart or an upgrade keeps them.
//!
//! ```text
//!   POST /nodes/{name}/drain ─► Drains::set ─► flock drains.lock ─► read drains.json
//!                                                 ─► change ─► write tmp, fsync, rename ─► memory
//!   drains.json changed on disk (the other process of an upgrade) ─► Drains::reload ─► memory
//!                                                  (watched by tasks::drains_watch)
//!   start: Drains::open reads the file before the first connection is served
//!   memory ─► Shared::apply_drains ─► NodeRuntime::set_runtime_drain on every node
//! ```
//!
//! During an upgrade the old and the new process both serve the admin API for a few seconds
//! (pingora keeps the old one accepting after the hand-over). Both write through one lock and
//! both watch the file, so a drain set or lifted on either is seen by the other, and by the
//! new process after the old one is gone.
//!
//! Without `state_dir` the drains live in memory only and are lost on restart.
//!
//! With `[cluster]`, the cluster database holds the drains of every edge (`tasks/cluster_sync.rs`
//! brings them here): a drain is written there first, and the file is this edge's copy, for a
//! start while the database is away.
//!
//! How a runtime drain and `drain = true` in the config file combine: either one drains.
//! `undrain` lifts only the runtime drain; a node the file drains stays draining until the
//! file says otherwise (`GET /nodes` shows `drained_by`).

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use nakama_edge_config::watch::{watch_files, FileWatch, WatchError};

/// The file in `state_dir` that holds the runtime drains.
pub const FILE_NAME: &str = "drains.json";
const LOCK_NAME: &str = "drains.lock";

/// Why the drain state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DrainsError {
    /// The state directory or one of its files could not be used.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// The file is not what this program writes.
    #[error("{} is not a drain state file: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: serde_json::Error,
    },
    /// Watching the file failed.
    #[error(transparent)]
    Watch(#[from] WatchError),
}

/// What `drains.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    /// Names of the nodes drained at runtime.
    drained: BTreeSet<String>,
}

/// The state directory's files.
#[derive(Debug)]
struct Files {
    dir: PathBuf,
    state: PathBuf,
    lock: PathBuf,
}

/// The runtime drains of this edge.
pub struct Drains {
    files: Option<Files>,
    drained: Mutex<BTreeSet<String>>,
    changed: Arc<Notify>,
    watch: Mutex<Option<FileWatch>>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DrainsError + 'a {
    move |source| DrainsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl Drains {
    /// Drains kept in memory only.
    pub fn in_memory() -> Drains {
        Drains {
            files: None,
            drained: Mutex::default(),
            changed: Arc::default(),
            watch: Mutex::default(),
        }
    }

    /// Drains kept in `dir` (created, 0700, if missing). Nothing is read yet: call
    /// [`Drains::reload`]. An error here means the directory cannot be used at all.
    pub fn open(dir: &Path) -> Result<Drains, DrainsError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("cannot create the state directory", dir))?;
        let drains = Drains {
            files: Some(Files {
                dir: dir.to_path_buf(),
                state: dir.join(FILE_NAME),
                lock: dir.join(LOCK_NAME),
            }),
            ..Drains::in_memory()
        };
        if let Some(files) = &drains.files {
            files.lock()?;
        }
        Ok(drains)
    }

    /// The file the drains are kept in, if any.
    pub fn path(&self) -> Option<&Path> {
        self.files.as_ref().map(|f| f.state.as_path())
    }

    /// Whether `name` is drained at runtime.
    pub fn is_drained(&self, name: &str) -> bool {
        self.memory().contains(name)
    }

    /// Every node drained at runtime.
    pub fn drained(&self) -> BTreeSet<String> {
        self.memory().clone()
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.drained.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drain (`true`) or undrain `name`, saved before it takes effect: on an error nothing
    /// changed. Returns whether the set changed.
    pub fn set(&self, name: &str, drain: bool) -> Result<bool, DrainsError> {
        let change = |set: &mut BTreeSet<String>| {
            if drain {
                set.insert(name.to_string())
            } else {
                set.remove(name)
            }
        };
        let Some(files) = &self.files else {
            return Ok(change(&mut self.memory()));
        };
        let _lock = files.lock()?;
        let mut state = files.read()?;
        let changed = change(&mut state.drained);
        if changed {
            files.write(&state)?;
        }
        *self.memory() = state.drained;
        Ok(changed)
    }

    /// Make the runtime drains exactly `drained` (the cluster database's), kept in the file
    /// too. Returns whether the set changed. The set applies even when the file cannot be
    /// written (the error says so).
    pub fn replace(&self, drained: BTreeSet<String>) -> Result<bool, DrainsError> {
        let changed = *self.memory() != drained;
        if !changed {
            return Ok(false);
        }
        *self.memory() = drained.clone();
        if let Some(files) = &self.files {
            let _lock = files.lock()?;
            files.write(&StateFile { drained })?;
        }
        Ok(true)
    }

    /// Re-read the file (another process may have changed it). Returns whether the set
    /// changed; on an error the set in memory stays as it was.
    pub fn reload(&self) -> Result<bool, DrainsError> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let state = {
            let _lock = files.lock()?;
            files.read()?
        };
        let mut memory = self.memory();
        let changed = *memory != state.drained;
        *memory = state.drained;
        Ok(changed)
    }

    /// From now on, wake [`Drains::changed`] whenever the file changes on disk.
    pub fn watch(&self) -> Result<(), DrainsError> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        let changed = self.changed.clone();
        let watch = watch_files(std::slice::from_ref(&files.state), move || {
            changed.notify_one()
        })?;
        *self.watch.lock().unwrap_or_else(|e| e.into_inner()) = Some(watch);
        Ok(())
    }

    /// Wait until the file has changed on disk (at once if it changed since the last wait).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

impl Files {
    /// An exclusive lock between the processes of this edge (an upgrade's old and new one),
    /// released when the returned file is dropped.
    fn lock(&self) -> Result<File, DrainsError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock)
            .map_err(io("cannot open", &self.lock))?;
        file.lock().map_err(io("cannot lock", &self.lock))?;
        Ok(file)
    }

    /// The file's state; none drained when there is no file yet.
    fn read(&self) -> Result<StateFile, DrainsError> {
        match std::fs::read(&self.state) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| DrainsError::Corrupt {
                path: self.state.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
            Err(e) => Err(io("cannot read", &self.state)(e)),
        }
    }

    /// Replace the file atomically: a private temporary file, flushed, renamed over it.
    fn write(&self, state: &StateFile) -> Result<(), DrainsError> {
        let tmp = self.dir.join(format!(".{FILE_NAME}.tmp"));
        let mut bytes =
            serde_json::to_vec_pretty(state).map_err(|source| DrainsError::Corrupt {
                path: self.state.clone(),
                source,
            })?;
        bytes.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("cannot write", &tmp))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io("cannot write", &tmp))?;
        std::fs::rename(&tmp, &self.state).map_err(io("cannot replace", &self.state))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot flush", &self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("nakama-edge-drains-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn drains_survive_a_new_process_and_the_file_is_private() {
        let dir = temp_dir("survive");
        let first = Drains::open(&dir).unwrap();
        assert!(!first.reload().unwrap(), "no file yet: nothing drained");
        assert!(first.set("nakama-2", true).unwrap());
        assert!(!first.set("nakama-2", true).unwrap(), "already drained");
        first.set("nakama-3", true).unwrap();
        first.set("nakama-3", false).unwrap();

        let second = Drains::open(&dir).unwrap();
        assert!(second.reload().unwrap());
        assert!(second.is_drained("nakama-2"));
        assert!(!second.is_drained("nakama-3"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(FILE_NAME)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_processes_see_each_others_changes() {
        let dir = temp_dir("two");
        let old = Drains::open(&dir).unwrap();
        let new = Drains::open(&dir).unwrap();
        old.set("a", true).unwrap();
        // A change through the new one is made on top of the file, not of its stale memory.
        new.set("b", true).unwrap();
        assert!(old.reload().unwrap());
        assert_eq!(old.drained(), new.drained());
        assert_eq!(new.drained().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_an_error_and_changes_nothing() {
        let dir = temp_dir("corrupt");
        let drains = Drains::open(&dir).unwrap();
        drains.set("a", true).unwrap();
        std::fs::write(dir.join(FILE_NAME), b"{not json").unwrap();
        assert!(matches!(drains.reload(), Err(DrainsError::Corrupt { .. })));
        assert!(drains.is_drained("a"), "the last good state stays");
        assert!(
            drains.set("b", true).is_err(),
            "nothing written over a file it cannot read"
        );
        assert!(!drains.is_drained("b"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn in_memory_drains() {
        let drains = Drains::in_memory();
        assert!(drains.path().is_none());
        assert!(drains.set("a", true).unwrap());
        assert!(drains.is_drained("a"));
        assert!(!drains.reload().unwrap());
        assert!(drains.is_drained("a"));
    }
}
