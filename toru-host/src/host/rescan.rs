//! The live plugins folder: scans that turn what is on disk into plugins (new, replaced,
//! removed, back), and the scanner task that runs them when the folder changes (inotify,
//! debounced), when a retry is due, and now and then as a safety net.
//!
//! A scan lists the `*.binary` files, reuses what it knows of each file whose `stat` did not
//! change, hashes the others (a file is recognised by its contents) and asks the changed ones
//! for `--metadata`, a bounded number at a time, in name order. Each file is settled in that
//! order as soon as its metadata is in, so plugins come up while later files still load:
//!
//! - a new plugin is listed and, when enabled, started;
//! - a replaced file of a plugin is an upgrade (`supervisor`: the new version starts beside
//!   the old one, which drains), or, for a plugin that does not run, new metadata;
//! - a file whose id or route an installed plugin holds fails to load: the installed plugin
//!   keeps it, whatever the file names;
//! - a plugin whose file is gone is stopped and becomes `missing`; a file with its id brings it
//!   back.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use crate::discovery::watch::FolderWatch;
use crate::discovery::{self, Found, LoadError, Stamp, file_name};
use crate::error::ManageError;
use crate::events::{EventKind, PluginEvent};
use crate::state::{Entry, PluginState};

use super::PluginHost;
use super::changes::{Did, Op};

/// The longest wait before a file whose `--metadata` timed out is tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// What the scanner remembers between scans.
#[derive(Default)]
pub(crate) struct ScanState {
    /// The last load of each file, reused while the file's stamp does not change.
    files: HashMap<PathBuf, Found>,
    /// Files whose load is tried again: failures in a row, and when the next try is due.
    retries: HashMap<PathBuf, (u32, Instant)>,
}

/// What a scan of the plugins folder found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ScanReport {
    /// Plugins found for the first time, or whose file is back.
    pub discovered: Vec<String>,
    /// Plugins whose file went away (now `missing`), and files that had failed to load and
    /// went away (by file name).
    pub removed: Vec<String>,
    /// Plugins that run (or, when they do not run, will start) from their replaced file.
    pub upgraded: Vec<String>,
    /// Plugins whose replaced file could not be loaded or started; the old version serves on.
    pub upgrade_failed: Vec<String>,
    /// Files that cannot be loaded, by file name.
    pub load_failed: Vec<String>,
    /// Files still being written, or whose `--metadata` is tried again later, by file name.
    pub pending: Vec<String>,
}

/// What a file is this scan.
enum Step {
    /// Known, unchanged (or its retry is not due yet).
    Known(Found),
    /// Changed less than the settle time ago: left for a later scan.
    Unsettled(PathBuf),
    /// To load (what was known of it before, if anything).
    Load(PathBuf, Stamp, Option<Found>),
}

/// What a file turned out to be.
enum Seen {
    Found(Box<Found>),
    Unsettled(PathBuf),
}

impl PluginHost {
    /// Scans the plugins folder now, as the folder watcher does on its own: starts plugins that
    /// appeared, upgrades those whose file was replaced (without downtime when they run),
    /// stops those whose file went away (they are listed as `missing`, their settings and data
    /// kept), and brings back missing ones whose file is back. Unlike the watcher's scans, it
    /// also tries again a replaced file whose upgrade failed before. Returns once the scan's
    /// changes are done (an upgrade: once the new version serves or failed to start).
    ///
    /// # Errors
    /// [`ManageError::Scan`] when the folder cannot be read; [`ManageError::ShuttingDown`].
    pub async fn rescan(&self) -> Result<ScanReport, ManageError> {
        if self.shared.registry().shutting_down {
            return Err(ManageError::ShuttingDown);
        }
        let (report, _) = self
            .scan(true, false)
            .await
            .map_err(|source| ManageError::Scan {
                dir: self.shared.settings.plugin_dir.clone(),
                source,
            })?;
        Ok(report)
    }

    /// Waits until the first scan of the plugins folder after start has finished: every file
    /// found then is listed (with its metadata or why it failed to load) and every enabled
    /// plugin's start has begun. [`start`](crate::PluginHostBuilder::start) does not wait for
    /// it, so that an application can serve at once. Returns at once afterwards, and when the
    /// host shuts down first.
    pub async fn discovered(&self) {
        let mut done = self.shared.discovered.subscribe();
        tokio::select! {
            _ = done.wait_for(|d| *d) => {}
            _ = self.shared.shutdown.cancelled() => {}
        }
    }

    /// Starts the task that scans the folder at start, then whenever it changes.
    pub(super) fn spawn_scanner(&self) {
        let host = self.detached();
        self.shared.tasks.spawn(async move { host.scanner().await });
    }

    async fn scanner(self) {
        let settings = &self.shared.settings;
        let shutdown = self.shared.shutdown.clone();
        // Watch before the first scan, so that nothing written during it is missed.
        let watch = if settings.watch_plugins {
            match FolderWatch::start(&settings.plugin_dir) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(dir = %settings.plugin_dir.display(), error = %e, "cannot watch the plugins folder; it is scanned every {:?} instead", settings.rescan_interval);
                    None
                }
            }
        } else {
            None
        };
        // What is in the folder at start is taken as it is: nothing is being copied there yet.
        let mut due = self.scan_logged(false).await;
        self.shared.discovered.send_replace(true);
        let changed = async |watch: &Option<FolderWatch>| match watch {
            Some(w) => w.changed().await,
            None => std::future::pending().await,
        };
        loop {
            let wait = due.map_or(settings.rescan_interval, |d| {
                d.min(settings.rescan_interval)
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = changed(&watch) => {
                    // Debounce: wait until the folder has been quiet for a while, but not for
                    // ever (a file written to without pause must not hold every scan back).
                    let latest = tokio::time::Instant::now() + settings.watch_debounce * 10;
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = changed(&watch) => {}
                            _ = tokio::time::sleep(settings.watch_debounce) => break,
                            _ = tokio::time::sleep_until(latest) => break,
                        }
                    }
                }
            }
            due = self.scan_logged(true).await;
        }
    }

    async fn scan_logged(&self, settle: bool) -> Option<Duration> {
        match self.scan(false, settle).await {
            Ok((_, due)) => due,
            Err(e) => {
                tracing::warn!(dir = %self.shared.settings.plugin_dir.display(), error = %e, "cannot scan the plugins folder");
                Some(self.shared.settings.rescan_interval)
            }
        }
    }

    /// Scans the folder once. `forced` also retries upgrades that failed before; `settle` leaves
    /// files modified less than the debounce time ago for a later scan (they may still be being
    /// copied; a file still open for writing cannot be run anyway, and is tried again). Returns
    /// the report and, when some file needs another look (a retry due), how soon.
    pub(crate) async fn scan(
        &self,
        forced: bool,
        settle: bool,
    ) -> std::io::Result<(ScanReport, Option<Duration>)> {
        let shared = &self.shared;
        let settings = &shared.settings;
        let mut state = shared.scan.lock().await;
        let dir = settings.plugin_dir.clone();
        let files = match &settings.only_file {
            Some(file) => vec![file.clone()]
                .into_iter()
                .filter(|f| f.exists())
                .collect(),
            None => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || discovery::list(&dir))
                    .await
                    .map_err(std::io::Error::other)??
            }
        };
        let canonical = dir.canonicalize()?;
        let now = Instant::now();
        let quiet = settings.watch_debounce;
        let mut report = ScanReport::default();
        let mut again: Option<Duration> = None;

        let mut present = HashSet::new();
        let mut steps = Vec::new();
        for file in files {
            let Ok((stamp, modified)) = Stamp::of(&file) else {
                continue; // gone between the listing and now
            };
            present.insert(file.clone());
            let known = state.files.get(&file);
            let retry_due = state
                .retries
                .get(&file)
                .is_none_or(|(_, at)| forced || *at <= now);
            let step = match known {
                _ if settle && discovery::still_changing(modified, quiet) => Step::Unsettled(file),
                Some(f) if f.stamp == Some(stamp) && !(is_retried(f) && retry_due) => {
                    if is_retried(f)
                        && let Some((_, at)) = state.retries.get(&file)
                    {
                        soon(at.saturating_duration_since(now), &mut again);
                    }
                    Step::Known(f.clone())
                }
                other => Step::Load(file, stamp, other.cloned()),
            };
            steps.push(step);
        }

        let concurrency = settings.launch_concurrency.max(1);
        let timeout = settings.metadata_timeout;
        let canonical = &canonical;
        let mut loads = futures_util::stream::iter(steps)
            .map(|step| async move {
                match step {
                    Step::Load(file, stamp, previous) => Seen::Found(Box::new(
                        self.load(file, canonical, timeout, stamp, previous).await,
                    )),
                    Step::Known(found) => Seen::Found(Box::new(found)),
                    Step::Unsettled(file) => Seen::Unsettled(file),
                }
            })
            .buffered(concurrency * 2);

        let mut claimed = HashSet::new();
        let mut ops = Vec::new();
        let mut interrupted = false;
        loop {
            let step = tokio::select! {
                step = loads.next() => step,
                _ = shared.shutdown.cancelled() => { interrupted = true; None }
            };
            let Some(step) = step else { break };
            let found = match step {
                Seen::Found(found) => *found,
                Seen::Unsettled(file) => {
                    // Still being written: whatever it was, it stays until it settles.
                    if let Some(id) = self.owner_of(&file) {
                        claimed.insert(id);
                    }
                    report.pending.push(file_name(&file));
                    soon(quiet, &mut again);
                    continue;
                }
            };
            match &found.result {
                Err(e) if e.retried() => {
                    let (n, _) = state.retries.get(&found.file).copied().unwrap_or((0, now));
                    let delay = retry_delay(n + 1);
                    state
                        .retries
                        .insert(found.file.clone(), (n + 1, Instant::now() + delay));
                    soon(delay, &mut again);
                    report.pending.push(file_name(&found.file));
                }
                _ => {
                    state.retries.remove(&found.file);
                }
            }
            state.files.insert(found.file.clone(), found.clone());
            if let Some(op) = self.plan(found, &present, &mut claimed, &mut report) {
                ops.push(self.spawn_op(op, forced));
            }
        }
        drop(loads);
        if !interrupted {
            ops.extend(
                self.plan_removals(&present, &claimed, &mut report)
                    .into_iter()
                    .map(|op| self.spawn_op(op, forced)),
            );
        }
        state.files.retain(|f, _| present.contains(f));
        state.retries.retain(|f, _| present.contains(f));
        drop(state);

        for op in ops {
            match op.await {
                Ok(Did::Upgraded(id)) => report.upgraded.push(id),
                Ok(Did::UpgradeFailed(id)) => report.upgrade_failed.push(id),
                Ok(Did::LoadFailed(name)) => report.load_failed.push(name),
                Ok(Did::Nothing) | Err(_) => {}
            }
        }
        // A clash can clear up once another plugin is gone (a renamed id): look again soon.
        if !report.load_failed.is_empty() && !report.removed.is_empty() {
            soon(quiet, &mut again);
        }
        Ok((report, again))
    }

    /// Hashes a changed file and, unless its contents are known, asks it for its metadata.
    async fn load(
        &self,
        file: PathBuf,
        canonical: &Path,
        timeout: Duration,
        stamp: Stamp,
        previous: Option<Found>,
    ) -> Found {
        let hashed = {
            let file = file.clone();
            tokio::task::spawn_blocking(move || discovery::hash_file(&file)).await
        };
        let hash = match hashed {
            Ok(Ok(hash)) => hash,
            Ok(Err(e)) => {
                return Found {
                    file,
                    result: Err(LoadError::Invalid(format!("cannot read the file: {e}"))),
                    stamp: Some(stamp),
                    hash: None,
                };
            }
            Err(e) => {
                return Found {
                    file,
                    result: Err(LoadError::Transient(format!("cannot hash the file: {e}"))),
                    stamp: Some(stamp),
                    hash: None,
                };
            }
        };
        // The same contents (touched, copied with the same bytes): what was read stands.
        if let Some(mut known) = previous
            && known.hash == Some(hash)
            && !is_retried(&known)
        {
            known.stamp = Some(stamp);
            return known;
        }
        let result = {
            let _turn = self.shared.launch.acquire().await.expect("never closed");
            discovery::load_metadata(&file, canonical, timeout, &self.shared.containers).await
        };
        Found {
            file,
            result,
            stamp: Some(stamp),
            hash: Some(hash),
        }
    }

    /// The installed plugin whose file `file` is.
    fn owner_of(&self, file: &Path) -> Option<String> {
        self.shared
            .registry()
            .plugins
            .iter()
            .find(|(_, e)| e.installed() && e.found.file == file)
            .map(|(id, _)| id.clone())
    }

    /// Decides what a loaded file means, in name order: claims its plugin's id (and route) in
    /// the registry at once, and returns what else needs doing.
    fn plan(
        &self,
        found: Found,
        present: &HashSet<PathBuf>,
        claimed: &mut HashSet<String>,
        report: &mut ScanReport,
    ) -> Option<Op> {
        let shared = &self.shared;
        let name = file_name(&found.file);
        let mut reg = shared.registry();
        // A file that failed to load is judged afresh each time.
        let failed_before = match reg.plugins.get(&name) {
            Some(e) if !e.loaded() => reg
                .plugins
                .remove(&name)
                .and_then(|e| e.found.result.err())
                .map(|e| e.to_string()),
            _ => None,
        };
        let refuse = |reg: &mut crate::state::Registry, found: Found, report: &mut ScanReport| {
            let reason = match &found.result {
                Err(e) => e.to_string(),
                Ok(_) => unreachable!("only failures are refused"),
            };
            let retried = found.result.as_ref().err().is_some_and(LoadError::retried);
            if !retried {
                report.load_failed.push(name.clone());
            }
            let news = failed_before.as_deref() != Some(reason.as_str());
            if news {
                tracing::warn!(plugin.file = %found.file.display(), %reason, "plugin cannot be loaded");
            }
            reg.plugins.insert(name.clone(), Entry::new(found, false));
            news.then(|| {
                Op::LoadFailed(
                    name.clone(),
                    PluginEvent::new(&name, EventKind::LoadFailed).with_reason(reason),
                )
            })
        };

        // The installed plugin whose file this is.
        let owner = reg
            .plugins
            .iter()
            .find(|(_, e)| e.installed() && e.found.file == found.file)
            .map(|(id, _)| id.clone());
        if let Some(id) = owner {
            let entry = reg.plugins.get_mut(&id).expect("just found");
            if entry.found.hash == found.hash {
                entry.found.stamp = found.stamp;
                claimed.insert(id);
                return None;
            }
            match &found.result {
                Ok(meta) if meta.id == id => {
                    claimed.insert(id.clone());
                    return Some(Op::Upgrade(id, found));
                }
                // It holds another plugin now: this one keeps no file, unless another file
                // has its id.
                Ok(_) => {}
                // Tried again later; the running version serves meanwhile.
                Err(e) if e.retried() => {
                    claimed.insert(id);
                    return None;
                }
                Err(e) => {
                    claimed.insert(id.clone());
                    let reason = format!("the new file cannot be loaded: {e}");
                    return Some(Op::Reject(id, found, reason));
                }
            }
        }

        let meta = match &found.result {
            Err(_) => return refuse(&mut reg, found, report),
            Ok(meta) => meta.clone(),
        };
        let id = meta.id.clone();
        if let Some(e) = reg.plugins.get(&id) {
            // The installed plugin keeps its id, whatever the file names.
            let holds =
                e.installed() && e.found.file != found.file && present.contains(&e.found.file);
            if claimed.contains(&id) || holds {
                let reason = format!(
                    "plugin id {id:?} is already used by {}",
                    file_name(&e.found.file)
                );
                return refuse(&mut reg, found.refused(reason), report);
            }
            claimed.insert(id.clone());
            if e.state == PluginState::Missing {
                return Some(Op::Return(id, found));
            }
            // Its file was renamed, or replaced by this one.
            return Some(Op::Upgrade(id, found));
        }
        let holder = reg.plugins.iter().find(|(other, e)| {
            **other != id
                && e.installed()
                && e.metadata().is_some_and(|m| m.route == meta.route)
                && (claimed.contains(*other) || present.contains(&e.found.file))
        });
        if let Some((_, holder)) = holder {
            let reason = format!(
                "route {:?} is already used by {}",
                meta.route,
                file_name(&holder.found.file)
            );
            return refuse(&mut reg, found.refused(reason), report);
        }
        let enabled = shared
            .config()
            .plugin(&id)
            .and_then(|p| p.enabled)
            .unwrap_or(shared.settings.enable_new_plugins);
        reg.plugins.insert(id.clone(), Entry::new(found, enabled));
        claimed.insert(id.clone());
        report.discovered.push(id.clone());
        Some(Op::Discovered(id))
    }

    /// After every file: installed plugins no file claimed are gone; files that had failed to
    /// load and went away are forgotten.
    fn plan_removals(
        &self,
        present: &HashSet<PathBuf>,
        claimed: &HashSet<String>,
        report: &mut ScanReport,
    ) -> Vec<Op> {
        let mut reg = self.shared.registry();
        let gone_failures: Vec<String> = reg
            .plugins
            .iter()
            .filter(|(_, e)| !e.loaded() && !present.contains(&e.found.file))
            .map(|(k, _)| k.clone())
            .collect();
        let mut ops = Vec::new();
        for key in gone_failures {
            reg.plugins.remove(&key);
            report.removed.push(key.clone());
            ops.push(Op::LoadFailed(
                key.clone(),
                PluginEvent::new(&key, EventKind::Removed),
            ));
        }
        for (id, entry) in &reg.plugins {
            if entry.installed() && !claimed.contains(id) {
                report.removed.push(id.clone());
                ops.push(Op::Remove(id.clone()));
            }
        }
        ops
    }
}

/// Makes `again` no later than `d`.
fn soon(d: Duration, again: &mut Option<Duration>) {
    *again = Some(again.map_or(d, |a| a.min(d)));
}

/// Whether a file's failure to load is tried again.
fn is_retried(found: &Found) -> bool {
    found.result.as_ref().err().is_some_and(LoadError::retried)
}

/// The wait before trying a file again after `failures` failed loads in a row: 1, 2, 4 ... s,
/// at most a minute.
fn retry_delay(failures: u32) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_retries_back_off_to_a_minute() {
        let delays: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
    }
}
