//! [`AppSettings`]: the embedding application's own settings in the host's database.

use super::Store;
use super::error::StoreError;
use super::settings::INSTANCE_ID;

/// The embedding application's own settings, in the `settings` table of the host's database
/// (`<data dir>/toru.redb`): text values by name, durable like everything else there, for what
/// an application keeps beside its plugins (`toru-server` keeps its admin secret's hash here).
///
/// Get it from a running host with [`PluginHost::app_settings`](crate::PluginHost::app_settings),
/// or, while no host runs (a command that resets a setting), from [`Store::open`] and
/// [`Store::app_settings`]. It reaches nothing else in the database: not the plugins' KV data,
/// not their events, and not the host's own `instance_id`, which it may read but never write.
/// Cheap to clone; it keeps the database open while it lives, and fails with
/// [`StoreError::Closed`] once the host has shut down.
///
/// ```no_run
/// # async fn demo(host: toru_host::PluginHost) -> Result<(), toru_host::StoreError> {
/// let settings = host.app_settings();
/// settings.set("theme", "dark").await?;
/// assert_eq!(settings.get("theme")?.as_deref(), Some("dark"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AppSettings {
    store: Store,
}

impl std::fmt::Debug for AppSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppSettings")
            .field("path", &self.store.path())
            .finish_non_exhaustive()
    }
}

impl AppSettings {
    pub(crate) fn new(store: Store) -> AppSettings {
        AppSettings { store }
    }

    /// The setting `name`, if set. Reads inline: settings are few and small.
    ///
    /// # Errors
    /// [`StoreError::Closed`] once the host has shut down (or the store was closed);
    /// [`StoreError::Storage`] when the read fails.
    pub fn get(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.store.setting(name)
    }

    /// Sets the setting `name` to `value`, replacing what was there; returns once it is durable.
    /// `name` is 1 to [`KvLimits::max_key_len`](crate::KvLimits::max_key_len) bytes, `value`
    /// at most [`KvLimits::max_value_len`](crate::KvLimits::max_value_len) bytes (1 KiB and 1
    /// MiB by default).
    ///
    /// # Errors
    /// [`StoreError::Reserved`] for `instance_id`, the host's own; [`StoreError::Invalid`] for
    /// a name or value out of bounds; [`StoreError::Closed`] once the host has shut down;
    /// [`StoreError::Storage`] when the commit fails.
    pub async fn set(&self, name: &str, value: &str) -> Result<(), StoreError> {
        if name == INSTANCE_ID {
            return Err(StoreError::Reserved {
                name: name.to_owned(),
            });
        }
        let limits = self.store.limits();
        let invalid = |detail: String| StoreError::Invalid {
            what: "application setting",
            detail,
        };
        if name.is_empty() || name.len() > limits.max_key_len {
            return Err(invalid(format!(
                "its name is {} bytes long; it must be 1 to {}",
                name.len(),
                limits.max_key_len
            )));
        }
        if value.len() > limits.max_value_len {
            return Err(invalid(format!(
                "the value of {name:?} is {} bytes long; the limit is {}",
                value.len(),
                limits.max_value_len
            )));
        }
        self.store.set_setting(name, value).await
    }
}
