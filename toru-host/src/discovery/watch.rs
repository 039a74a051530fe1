//! Watching the plugins folder (inotify, through the `notify` crate): any change to a
//! `*.binary` file wakes [`FolderWatch::changed`]. The scanner debounces the wake-ups and
//! rescans; a periodic rescan covers whatever a watch can miss (an overflowed event queue, a
//! folder on a file system without inotify).

use std::path::Path;
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

/// A watch on the plugins folder; dropping it stops watching.
pub(crate) struct FolderWatch {
    _watcher: notify::RecommendedWatcher,
    changed: Arc<Notify>,
}

impl FolderWatch {
    /// Starts watching `dir` (not its subfolders: `.metadata/` is the host's own).
    pub(crate) fn start(dir: &Path) -> notify::Result<FolderWatch> {
        let changed = Arc::new(Notify::new());
        let wake = Arc::clone(&changed);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    // Reading a file (the host hashing it, running it) changes nothing.
                    Ok(e) if e.kind.is_access() => false,
                    Ok(e) => e.need_rescan() || e.paths.iter().any(|p| super::is_plugin_file(p)),
                    // An error (an overflowed queue, say) may hide a change: look.
                    Err(_) => true,
                };
                if relevant {
                    // One stored permit: wake-ups while the scanner is busy fold into one.
                    wake.notify_one();
                }
            })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(FolderWatch {
            _watcher: watcher,
            changed,
        })
    }

    /// Waits for the next change to a plugin file (or one that happened since the last call).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_new_plugin_file_wakes_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let watch = FolderWatch::start(dir.path()).unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        std::fs::create_dir(dir.path().join(".metadata")).unwrap();
        std::fs::write(dir.path().join(".metadata/config.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("p.binary"), b"#!/bin/sh\n").unwrap();
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("a new *.binary file wakes the watch");
    }
}
